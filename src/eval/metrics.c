/* metrics.c - exact AUC with ties, ranks, HR/NDCG/MRR. See metrics.h and
 * docs/eval.md for the formulas.
 *
 * AUC: sort (score, label) ascending, walk groups of equal scores keeping the
 * count of negatives seen below; a group with p positives and q negatives
 * adds 2 p * below + p q (twice the pairs it wins plus its ties), so the
 * numerator is an exact integer and AUC = num / (2 P N).
 */
#include "eval/metrics.h"

#include "core/status.h"

#include <math.h>
#include <stdlib.h>

typedef struct scored {
    float s;
    uint8_t y;
} scored;

size_t eval_auc_scratch_bytes(size_t n) { return n * sizeof(scored); }

static int cmp_scored(const void *a, const void *b)
{
    float x = ((const scored *)a)->s, y = ((const scored *)b)->s;
    return (x > y) - (x < y);
}

double eval_auc(const float *scores, const uint8_t *labels, size_t n, void *scratch)
{
    scored *v = scratch;
    uint64_t P = 0;
    for (size_t i = 0; i < n; i++) {
        HSTU_ASSERT(!isnan(scores[i]));
        v[i].s = scores[i];
        v[i].y = labels[i] != 0;
        P += v[i].y;
    }
    uint64_t N = n - P;
    if (P == 0 || N == 0)
        return NAN;
    qsort(v, n, sizeof *v, cmp_scored);
    unsigned __int128 num = 0;
    uint64_t below = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        uint64_t p = 0;
        while (j < n && v[j].s == v[i].s)
            p += v[j++].y;
        uint64_t q = (uint64_t)(j - i) - p;
        num += (unsigned __int128)2 * p * below + (unsigned __int128)p * q;
        below += q;
        i = j;
    }
    return (double)num / (2.0 * (double)P * (double)N);
}

int64_t eval_rank_of(const float *scores, int64_t n, int64_t target, const int64_t *exclude,
                     int n_exclude)
{
    if (target < 1 || target >= n)
        return 0;
    for (int e = 0; e < n_exclude; e++)
        if (exclude[e] == target)
            return 0;
    float st = scores[target];
    int64_t rank = 1;
    for (int64_t j = 1; j < n; j++) {
        if (j == target || !(scores[j] > st || (scores[j] == st && j < target)))
            continue;
        bool ex = false;
        for (int e = 0; e < n_exclude && !ex; e++)
            ex = exclude[e] == j;
        rank += !ex;
    }
    return rank;
}

void eval_rank_add(eval_rank_acc *a, int64_t rank)
{
    a->n++;
    if (rank < 1) {
        a->missing++;
        return;
    }
    double g = 1.0 / log2((double)rank + 1.0);
    if (rank <= 10) {
        a->hr10 += 1;
        a->ndcg10 += g;
    }
    if (rank <= 50) {
        a->hr50 += 1;
        a->ndcg50 += g;
    }
    if (rank <= 200) {
        a->hr200 += 1;
        a->ndcg200 += g;
    }
    a->rr += 1.0 / (double)rank;
}

void eval_rank_means(const eval_rank_acc *a, double *hr10, double *ndcg10, double *hr50,
                     double *ndcg50, double *hr200, double *ndcg200, double *mrr)
{
    double n = a->n > 0 ? (double)a->n : NAN;
    *hr10 = a->hr10 / n;
    *ndcg10 = a->ndcg10 / n;
    *hr50 = a->hr50 / n;
    *ndcg50 = a->ndcg50 / n;
    *hr200 = a->hr200 / n;
    *ndcg200 = a->ndcg200 / n;
    *mrr = a->rr / n;
}
