/* eval.h - offline evaluation through the inference engine (docs/eval.md).
 *
 * One function evaluates a model on a dataset split by sending each user's
 * request through hstu_engine_run, exactly as `hstu infer` and `hstu serve`
 * do, and returns the metrics. `hstu eval` and the trainer both call it, so
 * the numbers training reports come from the same code.
 *
 * Retrieval (the HSTU paper's MovieLens protocol): leave-one-out, full
 * ranking over every item of the table (id 0 and the request's history
 * excluded, ties toward the smaller id as the engine's top-k orders them).
 * The engine is asked for top_k = every item (capped at the engine's 100000),
 * so the target's full rank r is its position in that list (r = infinity
 * when the target is absent, e.g. it is in the history). HR@K = mean[r <= K],
 * NDCG@K = mean[r <= K] / log2(r + 1), MRR = mean 1/r.
 *
 * Ranking: every candidate of every user of the split is scored; per task b,
 * the label is bit b of the candidate's action id, and AUC is the exact
 * Mann-Whitney statistic over the whole split (all users pooled), tied
 * scores counting one half (eval_auc in metrics.h).
 *
 * With a cached engine, evaluating the same users again (validation then
 * test, or the warm-up option below) reuses their K/V; the metrics equal the
 * uncached ones within the spec's tolerance (tests/test_eval.c holds 1e-4).
 */
#ifndef HSTU_EVAL_EVAL_H
#define HSTU_EVAL_EVAL_H

#include "data/dataset.h"
#include "hstu.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct eval_options {
    dataset_split split;     /* DATASET_TEST (default) or DATASET_VALID (retrieval only) */
    int batch;               /* users per hstu_engine_run call (default 32) */
    int64_t max_users;       /* evaluate at most this many eligible users, 0 = all (default) */
    bool warm_prefix;        /* before each scored request, run the same user with the first
                                half of its history (outputs discarded) so that a cached engine
                                reuses it: exercises the cache (default false) */
    bool progress;           /* a progress bar on stderr (default false) */
    int top_k_cap;           /* retrieval: at most this top_k (default 0: the engine's 100000; a
                                server's --max-top-k when scoring through it). A target ranked
                                below the cap counts as missing, so a cap under the item count
                                lowers MRR only (by less than 1/cap per such user) */
    hstu_engine_options engine; /* used by eval_model only (default: hstu_engine_options_default) */
} eval_options;

void eval_options_default(eval_options *o);

#define EVAL_MAX_TASKS HSTU_MAX_TASKS

typedef struct eval_metrics {
    hstu_family family;
    dataset_split split;
    int64_t n_users;          /* users evaluated */
    double seconds;           /* wall time of the evaluation */
    /* retrieval */
    double hr10, ndcg10, hr50, ndcg50, hr200, ndcg200, mrr;
    int64_t n_missing;        /* targets absent from the ranking (in the history) */
    /* ranking */
    int n_tasks;
    int64_t n_candidates;     /* scored candidates (examples per task) */
    int64_t positives[EVAL_MAX_TASKS];
    double auc[EVAL_MAX_TASKS]; /* NaN when a task has no positive or no negative */
    double mean_auc;          /* over tasks with a defined AUC; NaN if none */
} eval_metrics;

/* Evaluates m on ds with a fresh engine built from o->engine (destroyed on
 * return). Errors: the dataset does not fit the model (dataset_check_config's
 * message), a split the family does not have, out of memory, engine errors. */
hstu_status eval_model(const hstu_model *m, const dataset *ds, const eval_options *o,
                       eval_metrics *out, hstu_error *err);

/* The same on an engine the caller owns (its cache persists across calls:
 * evaluate valid then test on one engine to reuse the K/V). */
hstu_status eval_engine(hstu_engine *e, const hstu_model *m, const dataset *ds,
                        const eval_options *o, eval_metrics *out, hstu_error *err);

/* How a batch of requests is scored: hstu_engine_run's contract (distinct
 * users, results in caller storage, logits when asked). eval_engine passes
 * the engine; `hstu eval --url` passes an HTTP client of `hstu serve`. */
typedef hstu_status (*eval_run_fn)(void *ctx, const hstu_request *reqs, int n, hstu_result *res,
                                   bool logits, hstu_error *err);

/* The loop itself, for any runner; cfg is the scored model's config. */
hstu_status eval_run(eval_run_fn run, void *ctx, const hstu_config *cfg, const dataset *ds,
                     const eval_options *o, eval_metrics *out, hstu_error *err);

/* One line of text: "test: 6039 users  HR@10 0.0123  NDCG@10 ..." or
 * "test: 300 users, 30000 candidates  AUC is_click 0.7012 ... mean 0.6543". */
void eval_metrics_format(const eval_metrics *mt, const dataset *ds, char *buf, size_t cap);

#endif
