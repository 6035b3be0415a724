/* topk.h - retrieval's exact top-k over the whole item table (spec 1.2).
 *
 * For each user b: score(j) = <users[b], items[j]> for every item j >= 1 (id
 * 0 is padding) not in exclude[b]; return the k best in order of score
 * descending, ties toward the smaller id. users and items rows are already
 * L2-normalised. exclude[b] is sorted ascending (duplicates allowed).
 * k[b] may be 0 (nothing is written).
 */
#ifndef HSTU_KERNELS_TOPK_H
#define HSTU_KERNELS_TOPK_H

#include <stdint.h>

typedef struct topk_params {
    int B, d;
    const float *users;            /* [B, d] */
    const float *items;            /* [n_items, d] */
    int64_t n_items;
    const int64_t *const *exclude; /* [B] sorted id lists (NULL entry: none) */
    const int *n_exclude;          /* [B] */
    const int *k;                  /* [B] wanted per user */
    int64_t *const *ids;           /* [B] outputs, k[b] each */
    float *const *scores;          /* [B] outputs, k[b] each */
    int *n_out;                    /* [B] how many were found (<= k[b]) */
    float *scratch;                /* [B * TOPK_CHUNK] floats (cpu only) */
} topk_params;

#define TOPK_CHUNK 4096

void topk_ref(const topk_params *p);
void topk_cpu(const topk_params *p);

/* True when (sa, ia) ranks before (sb, ib): higher score, then smaller id. */
static inline int topk_before(float sa, int64_t ia, float sb, int64_t ib)
{
    return sa > sb || (sa == sb && ia < ib);
}

/* Binary search in a sorted list. */
static inline int topk_excluded(const int64_t *ex, int n, int64_t id)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (ex[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && ex[lo] == id;
}

#endif
