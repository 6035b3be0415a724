/* checkpoint.h - what `hstu train` writes to its output directory, and
 * reading it back to resume.
 *
 *   DIR/config.json, DIR/model.safetensors   the model in the spec's layout
 *       (section 3), F32: what `hstu infer`, `hstu eval` and `hstu serve` load.
 *   DIR/train_state.safetensors   everything a resumed run needs: tensors
 *       "param" (every parameter, flat, in model.h's tensor order), "adam.m"
 *       and "adam.v" (AdamW moments, same layout), and in the header's
 *       __metadata__ the step, epoch, position inside the epoch and the
 *       options that must not change across a resume (seed, batch, holdout,
 *       threads) and the best validation epoch and metric so far (best_epoch,
 *       best_metric; --keep-best), as decimal strings.
 *
 *   DIR/best/   (`hstu train --keep-best`) the model of the best validation
 *       evaluation so far: config.json and model.safetensors as above, plus
 *       best.json {"epoch", "step", "split", "metric", "value", "eval"}
 *       (value: the metric, printed exactly; eval: the evaluation's line).
 *
 * Every file is written to a temporary name, flushed, fsynced and renamed
 * over the old one, so a crash leaves the previous file or the new one,
 * never a torn file. The state file is written first and holds the
 * parameters itself: a resume reads only it, so it is consistent even if
 * the process died between the two writes. best/ is replaced as a whole:
 * written complete into DIR/.best.tmp, then exchanged with best/ in one
 * renameat2(RENAME_EXCHANGE), so a reader sees the old best/ or the new one.
 */
#ifndef HSTU_TRAIN_CHECKPOINT_H
#define HSTU_TRAIN_CHECKPOINT_H

#include "hstu.h"

#include <stddef.h>
#include <stdint.h>

#define TR_STATE_FILE "train_state.safetensors"
#define TR_STATE_FORMAT "hstu-train-state-1"

typedef struct tr_state {
    int64_t step;          /* optimizer steps done */
    int64_t epoch;         /* the epoch the next step belongs to (0-based) */
    int64_t batch;         /* batches of that epoch already done */
    uint64_t seed;
    int batch_users;
    int holdout;
    int threads;
    int64_t best_epoch;    /* --keep-best: 1-based epoch of the best validation metric so far, 0 = none
                              (also 0 when read from a state written before --keep-best existed) */
    double best_metric;    /* its value (HR@10), saved exactly ("%.17g") */
    double seconds;        /* step time of this process (not saved: the file must not depend on
                              the wall clock, so that equal runs write equal files) */
} tr_state;

/* A safetensors file of F32 tensors with string metadata (meta: pairs of
 * key, value; n_meta pairs), written atomically like the others. */
hstu_status tr_write_safetensors(const char *path, const char *const *names, const float *const *data,
                                 const int64_t *numel, int n, const char *const *meta, int n_meta,
                                 hstu_error *err);

/* Writes the state file, then the model files, into dir (which must exist). */
hstu_status tr_checkpoint_save(const char *dir, const hstu_model *m, const float *adam_m, const float *adam_v,
                               const tr_state *st, hstu_error *err);

/* Reads dir/config.json and dir/train_state.safetensors: a new model (caller
 * destroys) with the saved parameters, the moments into adam_m/adam_v
 * (malloc'd, caller frees), the scalars into st. */
hstu_status tr_checkpoint_load(const char *dir, hstu_model **m, float **adam_m, float **adam_v, tr_state *st,
                               hstu_error *err);

/* What DIR/best/best.json records. */
typedef struct tr_best {
    int64_t epoch;         /* 1-based; 0 = no best/ */
    int64_t step;
    const char *split;     /* "valid" */
    const char *metric;    /* "HR@10" */
    double value;
    const char *eval_line; /* the evaluation's line as the trainer logged it */
} tr_best;

/* Writes m and b into dir/best/, replacing the old best/ atomically (above). */
hstu_status tr_best_save(const char *dir, const hstu_model *m, const tr_best *b, hstu_error *err);

/* Reads dir/best/best.json's epoch and value into b (the strings are left
 * NULL); b->epoch = 0 when there is no best/. Errors: a best.json that is
 * not one this code wrote (names the file). */
hstu_status tr_best_read(const char *dir, tr_best *b, hstu_error *err);

#endif
