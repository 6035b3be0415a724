/* embed.c - the input embedding of training: a gathered table row times
 * sqrt(d) plus a position row, and its scatter-add backward (ops.h).
 *
 * The backward adds many rows into few (an item seen by several users, every
 * user's position 0): threads split the columns, and each walks all rows in
 * order, so every sum is formed in the same order whatever the thread count.
 */
#include "train/ops.h"

#include <omp.h>

void tr_embed_fwd(int T, int d, const float *const *src, float scale, const float *pos,
                  const int32_t *pos_idx, float *x)
{
#pragma omp parallel for schedule(static) if (T >= 64)
    for (int r = 0; r < T; r++) {
        const float *e = src[r], *p = pos + (size_t)pos_idx[r] * d;
        float *xr = x + (size_t)r * d;
#pragma omp simd
        for (int c = 0; c < d; c++)
            xr[c] = e[c] * scale + p[c];
    }
}

void tr_embed_bwd(int T, int d, float *const *dsrc, float scale, float *dpos, const int32_t *pos_idx,
                  const float *dx)
{
#pragma omp parallel if ((size_t)T * d >= 8192)
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int c0 = (int)((long)d * t / nt), c1 = (int)((long)d * (t + 1) / nt);
        for (int r = 0; r < T; r++) {
            const float *g = dx + (size_t)r * d;
            float *e = dsrc[r], *p = dpos + (size_t)pos_idx[r] * d;
            for (int c = c0; c < c1; c++) {
                e[c] += scale * g[c];
                p[c] += g[c];
            }
        }
    }
}
