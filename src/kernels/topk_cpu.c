/* topk_cpu.c - fast exact top-k: item scores by sgemm in chunks of
 * TOPK_CHUNK items (users x chunk, so the table streams through cache once
 * per batch). Users are split across threads for the per-user work, which
 * takes one of two paths:
 *   - k below the user's eligible item count: a bounded min-heap of its k
 *     best (most items fail the comparison with the root and cost one test);
 *   - k at least the eligible count (`hstu eval` asks for every item): every
 *     eligible item is appended to the output, with the exclusion list walked
 *     in step with the ids instead of searched, and sorted once at the end.
 * Either way the k kept items end in (score descending, id ascending) order
 * by one introsort (quicksort, insertion sort on short ranges, the heap as
 * the fallback past a depth limit); the keys are distinct (ids are), so the
 * order, ties included, is the one topk_ref's full sort gives. No memory
 * beyond the caller's. See topk.h. */
#include "kernels/topk.h"

#include <cblas.h>
#include <stdbool.h>
#include <string.h>

/* Min-heap by rank: the root is the worst of the kept items. */
static void heap_sift_down(float *s, int64_t *id, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && topk_before(s[w], id[w], s[l], id[l]))
            w = l;
        if (r < n && topk_before(s[w], id[w], s[r], id[r]))
            w = r;
        if (w == i)
            return;
        float ts = s[i]; s[i] = s[w]; s[w] = ts;
        int64_t ti = id[i]; id[i] = id[w]; id[w] = ti;
        i = w;
    }
}

static void heap_push(float *s, int64_t *id, int *n, int k, float sv, int64_t iv)
{
    if (*n < k) {
        int i = (*n)++;
        s[i] = sv;
        id[i] = iv;
        while (i > 0) { /* sift up: parent must be the worse one */
            int parent = (i - 1) / 2;
            if (!topk_before(s[parent], id[parent], s[i], id[i]))
                break;
            float ts = s[i]; s[i] = s[parent]; s[parent] = ts;
            int64_t ti = id[i]; id[i] = id[parent]; id[parent] = ti;
            i = parent;
        }
    } else if (k > 0 && topk_before(sv, iv, s[0], id[0])) {
        s[0] = sv;
        id[0] = iv;
        heap_sift_down(s, id, *n, 0);
    }
}

/* Heap sort of n kept items into (score desc, id asc): build the min-heap by
 * rank, then pop the worst to the back. */
static void heap_sort(float *s, int64_t *id, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--)
        heap_sift_down(s, id, n, i);
    for (; n > 1; n--) {
        float ts = s[0]; s[0] = s[n - 1]; s[n - 1] = ts;
        int64_t ti = id[0]; id[0] = id[n - 1]; id[n - 1] = ti;
        heap_sift_down(s, id, n - 1, 0);
    }
}

static inline void swap2(float *s, int64_t *id, int i, int j)
{
    float ts = s[i]; s[i] = s[j]; s[j] = ts;
    int64_t ti = id[i]; id[i] = id[j]; id[j] = ti;
}

/* Introsort of s[0..n) / id[0..n) into topk_before order (best first). */
static void sort_best_first(float *s, int64_t *id, int n, int depth)
{
    while (n > 16) {
        if (depth-- == 0) {
            heap_sort(s, id, n);
            return;
        }
        /* median of three to position 0, then Hoare partition around it */
        int m = n / 2, l = n - 1;
        if (topk_before(s[m], id[m], s[0], id[0]))
            swap2(s, id, m, 0);
        if (topk_before(s[l], id[l], s[0], id[0]))
            swap2(s, id, l, 0);
        if (topk_before(s[l], id[l], s[m], id[m]))
            swap2(s, id, l, m);
        swap2(s, id, 0, m); /* pivot (the median) at 0 */
        float ps = s[0];
        int64_t pi = id[0];
        int i = 0, j = n;
        for (;;) {
            do
                i++;
            while (i < n && topk_before(s[i], id[i], ps, pi));
            do
                j--;
            while (topk_before(ps, pi, s[j], id[j]));
            if (i >= j)
                break;
            swap2(s, id, i, j);
        }
        swap2(s, id, 0, j); /* pivot to its final place j */
        /* recurse into the smaller side, loop on the larger */
        if (j < n - j - 1) {
            sort_best_first(s, id, j, depth);
            s += j + 1, id += j + 1, n -= j + 1;
        } else {
            sort_best_first(s + j + 1, id + j + 1, n - j - 1, depth);
            n = j;
        }
    }
    for (int i = 1; i < n; i++) { /* insertion sort */
        float vs = s[i];
        int64_t vi = id[i];
        int j = i;
        for (; j > 0 && topk_before(vs, vi, s[j - 1], id[j - 1]); j--)
            s[j] = s[j - 1], id[j] = id[j - 1];
        s[j] = vs, id[j] = vi;
    }
}

/* The same order on one 64-bit key per item, for ids below 2^32: the
 * score's bits made monotone in the high half, the id reversed in the low
 * half, so that a larger key is topk_before the smaller. -0 is keyed as +0
 * (they compare equal); the score comes back from the key bit for bit. */
static inline uint64_t key_of(float s, int64_t id)
{
    uint32_t u;
    if (s == 0.0f)
        s = 0.0f;
    memcpy(&u, &s, sizeof u);
    u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
    return (uint64_t)u << 32 | (uint32_t)(0xFFFFFFFFu - (uint32_t)id);
}

static inline void key_split(uint64_t k, float *s, int64_t *id)
{
    uint32_t u = (uint32_t)(k >> 32);
    u = (u & 0x80000000u) ? u & 0x7FFFFFFFu : ~u;
    memcpy(s, &u, sizeof u);
    *id = (int64_t)(0xFFFFFFFFu - (uint32_t)k);
}

/* Keys into descending order: an in-place MSD radix sort (American flag
 * sort, 8-bit digits from the top), insertion sort on short buckets. Without
 * data-dependent branches in the counting and permuting, it runs several
 * times faster than a quicksort on random scores, and at most 8 levels deep
 * whatever the data. */
static void sort_keys_desc(uint64_t *a, int n, int shift)
{
    if (n <= 32 || shift < 0) {
        for (int i = 1; i < n; i++) {
            uint64_t v = a[i];
            int j = i;
            for (; j > 0 && a[j - 1] < v; j--)
                a[j] = a[j - 1];
            a[j] = v;
        }
        return;
    }
    int count[256] = {0}, next[256], end[256];
    for (int i = 0; i < n; i++)
        count[255 - (int)((a[i] >> shift) & 255)]++; /* bucket 0: the largest digit */
    for (int d = 0, at = 0; d < 256; d++) {
        next[d] = at;
        at += count[d];
        end[d] = at;
    }
    for (int d = 0; d < 256; d++) /* cycle each bucket's misplaced keys home */
        while (next[d] < end[d]) {
            uint64_t v = a[next[d]];
            int dv = 255 - (int)((v >> shift) & 255);
            while (dv != d) {
                uint64_t t = a[next[dv]];
                a[next[dv]++] = v;
                v = t;
                dv = 255 - (int)((v >> shift) & 255);
            }
            a[next[d]++] = v;
        }
    for (int d = 0, at = 0; d < 256; at += count[d], d++)
        if (count[d] > 1)
            sort_keys_desc(a + at, count[d], shift - 8);
}

/* Sorts one user's n kept items into topk_before order. */
static void finish_user(float *s, int64_t *id, int n, bool keyed)
{
    if (!keyed) {
        int depth = 0;
        for (int m = n; m > 1; m >>= 1)
            depth += 2;
        sort_best_first(s, id, n, depth);
        return;
    }
    uint64_t *k = (uint64_t *)id; /* same size: keys in place of the ids */
    for (int i = 0; i < n; i++)
        k[i] = key_of(s[i], id[i]);
    sort_keys_desc(k, n, 56);
    for (int i = 0; i < n; i++)
        key_split(k[i], &s[i], &id[i]);
}

/* Items of 1..n_items-1 not excluded: the distinct in-range ids of the list
 * are subtracted (the list is sorted, duplicates allowed). */
static int64_t eligible_count(const int64_t *ex, int n_ex, int64_t n_items)
{
    int64_t n = n_items > 1 ? n_items - 1 : 0;
    for (int i = 0; ex && i < n_ex; i++)
        if (ex[i] >= 1 && ex[i] < n_items && (i == 0 || ex[i] != ex[i - 1]))
            n--;
    return n;
}

/* First index of the sorted list holding an id >= v. */
static int lower_bound(const int64_t *ex, int n, int64_t v)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (ex[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void topk_cpu(const topk_params *p)
{
    /* n_out < 0 marks the append-everything path until the end (its count
     * is kept as -1 - n); a user whose k is 0 takes neither */
    for (int b = 0; b < p->B; b++)
        p->n_out[b] = p->k[b] > 0 && p->k[b] >= eligible_count(p->exclude[b], p->n_exclude[b], p->n_items) ? -1 : 0;
    for (int64_t j0 = 0; j0 < p->n_items; j0 += TOPK_CHUNK) {
        int len = (int)(p->n_items - j0 < TOPK_CHUNK ? p->n_items - j0 : TOPK_CHUNK);
        /* scratch[b, c] = <users[b], items[j0 + c]> */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->B, len, p->d, 1.0f, p->users, p->d,
                    p->items + (size_t)j0 * p->d, p->d, 0.0f, p->scratch, len);
#pragma omp parallel for schedule(dynamic, 1) if (p->B > 1)
        for (int b = 0; b < p->B; b++) {
            const float *row = p->scratch + (size_t)b * len;
            if (p->n_out[b] < 0) { /* every eligible item fits: append */
                const int64_t *ex = p->exclude[b];
                int ne = ex ? p->n_exclude[b] : 0, e = ne ? lower_bound(ex, ne, j0) : 0;
                int n = -1 - p->n_out[b];
                float *os = p->scores[b];
                int64_t *oi = p->ids[b];
                for (int c = j0 == 0 ? 1 : 0; c < len; c++) {
                    int64_t id = j0 + c;
                    while (e < ne && ex[e] < id)
                        e++;
                    if (e < ne && ex[e] == id)
                        continue;
                    os[n] = row[c];
                    oi[n] = id;
                    n++;
                }
                p->n_out[b] = -1 - n;
                continue;
            }
            for (int c = 0; c < len; c++) {
                int64_t id = j0 + c;
                if (id == 0)
                    continue;
                if (p->k[b] == 0)
                    break;
                if (p->n_out[b] == p->k[b] && !topk_before(row[c], id, p->scores[b][0], p->ids[b][0]))
                    continue; /* cheaper than the exclusion search for most items */
                if (p->exclude[b] && topk_excluded(p->exclude[b], p->n_exclude[b], id))
                    continue;
                heap_push(p->scores[b], p->ids[b], &p->n_out[b], p->k[b], row[c], id);
            }
        }
    }
    /* The kept items (a heap or the appended list) to sorted order. */
#pragma omp parallel for schedule(dynamic, 1) if (p->B > 1)
    for (int b = 0; b < p->B; b++) {
        if (p->n_out[b] < 0)
            p->n_out[b] = -1 - p->n_out[b];
        finish_user(p->scores[b], p->ids[b], p->n_out[b], p->n_items <= ((int64_t)1 << 32));
    }
}
