/* trainer.h - the training loop behind `hstu train`.
 *
 * Reads a dataset written by `hstu prep` (data/dataset.h), makes batches of
 * users, runs tr_net_step and AdamW, reports progress, evaluates through
 * src/eval (the inference engine's own path, so that the numbers equal
 * `hstu eval`'s) and writes resumable checkpoints (checkpoint.h).
 *
 * Examples per family:
 *   retrieval: each user's training sequence is its items minus the last
 *     `holdout` (1: only the test target is held out, the HSTU paper's
 *     protocol; 2: the validation target too, SASRec's), of which the
 *     newest max_history + 1 are kept; every position predicts the next
 *     item. Users with fewer than 3 items have no held-out target and train
 *     on all their items.
 *   ranking: the DATASET_TRAIN users; the history is the newest max_history
 *     items before the candidates, the candidates' action bits are the labels.
 * An epoch visits every training user once, in an order drawn from (seed,
 * epoch); a batch is batch_users consecutive users of that order. Dropout
 * masks and negatives are functions of (seed, step, row): a resumed run
 * continues bit for bit as if never stopped, given the same thread count.
 */
#ifndef HSTU_TRAIN_TRAINER_H
#define HSTU_TRAIN_TRAINER_H

#include "hstu.h"
#include "train/adamw.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct trainer_options {
    int epochs;              /* default 1 */
    int batch_users;         /* default 128 */
    uint64_t seed;           /* default 1 */
    int threads;             /* 0 = all cores */
    int holdout;             /* retrieval: 1 (default) or 2 */
    float dropout;           /* default 0.2 */
    float temperature;       /* default 0.05 */
    int negatives;           /* default 128 */
    adamw_options adam;      /* lr 1e-3, betas 0.9/0.98, wd 0 */
    int eval_every;          /* evaluate every N epochs and after the last; 0 = never (default 1) */
    int64_t eval_users;      /* evaluate at most this many users, 0 = all (default) */
    int64_t save_every;      /* also checkpoint every N steps, 0 = at epoch ends only (default) */
    int64_t max_steps;       /* stop after this many steps in all, 0 = no limit (tests) */
    bool resume;             /* continue from out_dir's checkpoint */
    bool keep_best;          /* after each evaluation whose validation HR@10 beats every earlier one,
                                write the model to out_dir/best/ (checkpoint.h); retrieval with
                                holdout 2 and eval_every >= 1 only: ranking data has no validation
                                split, and selecting on test would overstate the test metric */
    bool progress;           /* the progress line on stderr (default true) */
    bool init_random;        /* start from hstu_model_create_random, not the paper's init */
    const char *dump_path;   /* tools/check_train_torch.py: run the first step only and write its
                                inputs (batch, negatives, dropout masks, weights) and outputs (loss,
                                every gradient) to this safetensors file; no update, no checkpoint */
} trainer_options;

void trainer_options_default(trainer_options *o);

/* What a run did (for tests and the command's last line). */
typedef struct trainer_report {
    int64_t steps;           /* steps done in all (including before a resume) */
    double last_loss;        /* mean loss of the last epoch (or partial epoch) */
    double tokens_per_s;     /* rows per second of this run's steps */
    double seconds;          /* wall time of this run's steps */
    bool evaluated;
    double metric;           /* the last evaluation: HR@10 (retrieval) or mean AUC (ranking) */
    int n_tasks;             /* ranking: tasks of the last evaluation (0 for retrieval) */
    double auc[HSTU_MAX_TASKS]; /* ranking: its per-task AUC (eval_metrics.auc, NaN if undefined) */
    int64_t best_epoch;      /* keep_best: 1-based epoch of out_dir/best/ (across resumes), 0 = none */
    double best_metric;      /* its validation HR@10 */
} trainer_report;

/* Trains on the dataset at data_path and writes out_dir (created). cfg is
 * the model's config (ignored with resume: the checkpoint's is used).
 * Progress goes to stderr, epoch and evaluation lines to log (and to
 * out_dir/train_log.txt). Errors name the file or option to fix. */
hstu_status trainer_run(const char *data_path, const hstu_config *cfg, const char *out_dir,
                        const trainer_options *o, FILE *log, trainer_report *rep, hstu_error *err);

#endif
