/* metrics.h - the metric formulas, free of any model (docs/eval.md).
 *
 * Exact AUC with ties, and the retrieval metrics from a target's rank. The
 * evaluation loop (eval.c) and the tests use these; the trainer may too when
 * it has scores of its own.
 */
#ifndef HSTU_EVAL_METRICS_H
#define HSTU_EVAL_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Exact ROC AUC of scores[n] against labels[n] (0 or non-zero): the
 * probability that a random positive scores above a random negative, a tie
 * counting one half (Mann-Whitney U / (P * N), with mid-ranks for tied
 * scores). Returns NaN when there is no positive or no negative. scratch
 * holds n entries of eval_auc_scratch_bytes(1) bytes (caller storage, so
 * that repeated calls allocate nothing); NaN scores are an error the caller
 * must prevent (asserted). O(n log n). */
size_t eval_auc_scratch_bytes(size_t n);
double eval_auc(const float *scores, const uint8_t *labels, size_t n, void *scratch);

/* Rank of the target under the engine's order (score descending, then id
 * ascending), among ids 1..n-1 of scores[n] minus the excluded ids
 * (exclude[n_exclude], any order): 1 + #{j: j better than target}. Returns 0
 * when the target itself is excluded or out of range. For tests and for
 * scores computed outside the engine. */
int64_t eval_rank_of(const float *scores, int64_t n, int64_t target, const int64_t *exclude,
                     int n_exclude);

/* Running retrieval metrics over ranks (rank 0 = absent). */
typedef struct eval_rank_acc {
    int64_t n, missing;
    double hr10, ndcg10, hr50, ndcg50, hr200, ndcg200, rr;
} eval_rank_acc;

void eval_rank_add(eval_rank_acc *a, int64_t rank);
/* Means: HR@K = hits / n, NDCG@K = sum 1/log2(r+1) over r <= K / n, MRR. */
void eval_rank_means(const eval_rank_acc *a, double *hr10, double *ndcg10, double *hr50,
                     double *ndcg50, double *hr200, double *ndcg200, double *mrr);

#endif
