/* topk_cpu.c - fast exact top-k: item scores by sgemm in chunks of
 * TOPK_CHUNK items (users x chunk, so the table streams through cache once
 * per batch), each user keeping a bounded min-heap of its k best. Users are
 * split across threads for the heap updates. See topk.h. */
#include "kernels/topk.h"

#include <cblas.h>

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

void topk_cpu(const topk_params *p)
{
    for (int b = 0; b < p->B; b++)
        p->n_out[b] = 0;
    for (int64_t j0 = 0; j0 < p->n_items; j0 += TOPK_CHUNK) {
        int len = (int)(p->n_items - j0 < TOPK_CHUNK ? p->n_items - j0 : TOPK_CHUNK);
        /* scratch[b, c] = <users[b], items[j0 + c]> */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->B, len, p->d, 1.0f, p->users, p->d,
                    p->items + (size_t)j0 * p->d, p->d, 0.0f, p->scratch, len);
#pragma omp parallel for schedule(dynamic, 1) if (p->B > 1)
        for (int b = 0; b < p->B; b++) {
            const float *row = p->scratch + (size_t)b * len;
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
    /* Heap to sorted order: pop the worst to the back. */
    for (int b = 0; b < p->B; b++) {
        float *s = p->scores[b];
        int64_t *id = p->ids[b];
        for (int n = p->n_out[b]; n > 1; n--) {
            float ts = s[0]; s[0] = s[n - 1]; s[n - 1] = ts;
            int64_t ti = id[0]; id[0] = id[n - 1]; id[n - 1] = ti;
            heap_sift_down(s, id, n - 1, 0);
        }
    }
}
