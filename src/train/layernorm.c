/* layernorm.c - LayerNorm forward with saved statistics and its backward
 * (ops.h).
 *
 * Forward: two passes per row (mean, then variance about it), as the
 * inference kernels do. Backward, with xhat = (x - mean) * rstd and
 * g = dy * w: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); the affine
 * gradients are column sums, split over columns (deterministic).
 */
#include "train/ops.h"

#include <math.h>
#include <omp.h>

void tr_layernorm_fwd(int rows, int width, const float *x, int ldx, const float *w, const float *b,
                      float eps, float *y, int ldy, float *mean, float *rstd)
{
#pragma omp parallel for schedule(static) if (rows >= 64)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        float s = 0.0f, ss = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < width; i++)
            s += xr[i];
        float mu = s / (float)width;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < width; i++)
            ss += (xr[i] - mu) * (xr[i] - mu);
        float inv = 1.0f / sqrtf(ss / (float)width + eps);
        mean[r] = mu;
        rstd[r] = inv;
        if (w) {
#pragma omp simd
            for (int i = 0; i < width; i++)
                yr[i] = (xr[i] - mu) * inv * w[i] + b[i];
        } else {
#pragma omp simd
            for (int i = 0; i < width; i++)
                yr[i] = (xr[i] - mu) * inv;
        }
    }
}

void tr_layernorm_bwd(int rows, int width, const float *x, int ldx, const float *w, const float *mean,
                      const float *rstd, const float *dy, int lddy, float *dx, int lddx, bool accum,
                      float *dw, float *db)
{
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * ldx, *g = dy + (size_t)r * lddy;
            float *o = dx + (size_t)r * lddx;
            float mu = mean[r], inv = rstd[r], sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
            for (int i = 0; i < width; i++) {
                float gi = w ? g[i] * w[i] : g[i];
                sg += gi;
                sgx += gi * (xr[i] - mu) * inv;
            }
            sg /= (float)width;
            sgx /= (float)width;
            if (accum) {
#pragma omp simd
                for (int i = 0; i < width; i++) {
                    float gi = w ? g[i] * w[i] : g[i];
                    o[i] += inv * (gi - sg - (xr[i] - mu) * inv * sgx);
                }
            } else {
#pragma omp simd
                for (int i = 0; i < width; i++) {
                    float gi = w ? g[i] * w[i] : g[i];
                    o[i] = inv * (gi - sg - (xr[i] - mu) * inv * sgx);
                }
            }
        }
        if (dw) {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int c0 = (int)((long)width * t / nt), c1 = (int)((long)width * (t + 1) / nt);
            for (int r = 0; r < rows; r++) {
                const float *xr = x + (size_t)r * ldx, *g = dy + (size_t)r * lddy;
                float mu = mean[r], inv = rstd[r];
                for (int i = c0; i < c1; i++) {
                    dw[i] += g[i] * (xr[i] - mu) * inv;
                    db[i] += g[i];
                }
            }
        }
    }
}
