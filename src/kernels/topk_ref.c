/* topk_ref.c - reference top-k: every score by a plain dot product, then a
 * full sort of the eligible items. The oracle for topk_cpu.c. */
#include "kernels/topk.h"

#include <stdlib.h>

typedef struct scored { float s; int64_t id; } scored;

static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (topk_before(x->s, x->id, y->s, y->id))
        return -1;
    if (topk_before(y->s, y->id, x->s, x->id))
        return 1;
    return 0;
}

void topk_ref(const topk_params *p)
{
    scored *all = malloc(sizeof *all * (size_t)(p->n_items > 0 ? p->n_items : 1));
    if (!all) { /* the oracle is a test tool: fail loudly */
        abort();
    }
    for (int b = 0; b < p->B; b++) {
        int64_t n = 0;
        for (int64_t j = 1; j < p->n_items; j++) {
            if (p->exclude[b] && topk_excluded(p->exclude[b], p->n_exclude[b], j))
                continue;
            float s = 0.0f;
            for (int c = 0; c < p->d; c++)
                s += p->users[(size_t)b * p->d + c] * p->items[(size_t)j * p->d + c];
            all[n].s = s;
            all[n].id = j;
            n++;
        }
        qsort(all, (size_t)n, sizeof *all, cmp_scored);
        int k = p->k[b] < n ? p->k[b] : (int)n;
        for (int i = 0; i < k; i++) {
            p->ids[b][i] = all[i].id;
            p->scores[b][i] = all[i].s;
        }
        p->n_out[b] = k;
    }
    free(all);
}
