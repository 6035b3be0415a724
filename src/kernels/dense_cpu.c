/* dense_cpu.c - fast CPU dense ops: OpenBLAS sgemm and OpenMP row loops.
 *
 * Row-wise ops are memory bound: one pass per row where the math allows
 * (LayerNorm needs two: mean/variance, then the scaled write), rows split
 * across threads, inner loops written to vectorise. See dense.h.
 */
#include "kernels/dense.h"

#include <cblas.h>
#include <math.h>

/* Rows below this run on one thread: forking costs more than they do. */
#define PAR_MIN_ROWS 16

void gemm_cpu(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc)
{
    if (M <= 0 || N <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

static inline void ln_stats(int width, const float *x, float eps, float *mean_out, float *inv_out)
{
    float s = 0.0f, ss = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < width; i++)
        s += x[i];
    float mean = s / (float)width;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < width; i++)
        ss += (x[i] - mean) * (x[i] - mean);
    *mean_out = mean;
    *inv_out = 1.0f / sqrtf(ss / (float)width + eps);
}

void layernorm_cpu(int rows, int width, const float *x, int ldx, const float *w, const float *b,
                   float eps, float *y, int ldy)
{
#pragma omp parallel for schedule(static) if (rows >= PAR_MIN_ROWS)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        float mean, inv;
        ln_stats(width, xr, eps, &mean, &inv);
        if (w) {
#pragma omp simd
            for (int i = 0; i < width; i++)
                yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
        } else {
#pragma omp simd
            for (int i = 0; i < width; i++)
                yr[i] = (xr[i] - mean) * inv;
        }
    }
}

void bias_silu_cpu(int rows, int width, float *x, int ldx, const float *bias, int silu_cols)
{
#pragma omp parallel for schedule(static) if (rows >= PAR_MIN_ROWS)
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * ldx;
        if (bias) {
#pragma omp simd
            for (int c = 0; c < width; c++)
                xr[c] += bias[c];
        }
#pragma omp simd
        for (int c = 0; c < silu_cols; c++)
            xr[c] = xr[c] / (1.0f + expf(-xr[c]));
    }
}

void ln_mul_cpu(int rows, int width, const float *a, int lda, const float *u, int ldu, const float *w,
                const float *b, float eps, float *y, int ldy)
{
#pragma omp parallel for schedule(static) if (rows >= PAR_MIN_ROWS)
    for (int r = 0; r < rows; r++) {
        const float *ar = a + (size_t)r * lda;
        const float *ur = u + (size_t)r * ldu;
        float *yr = y + (size_t)r * ldy;
        float mean, inv;
        ln_stats(width, ar, eps, &mean, &inv);
        if (w) {
#pragma omp simd
            for (int i = 0; i < width; i++)
                yr[i] = ((ar[i] - mean) * inv * w[i] + b[i]) * ur[i];
        } else {
#pragma omp simd
            for (int i = 0; i < width; i++)
                yr[i] = (ar[i] - mean) * inv * ur[i];
        }
    }
}

void bias_act_cpu(int rows, int width, float *x, int ldx, const float *bias, bool relu)
{
#pragma omp parallel for schedule(static) if (rows >= PAR_MIN_ROWS)
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * ldx;
#pragma omp simd
        for (int c = 0; c < width; c++) {
            float v = xr[c] + (bias ? bias[c] : 0.0f);
            xr[c] = relu && v < 0.0f ? 0.0f : v; /* NaN stays NaN */
        }
    }
}

void l2norm_cpu(int rows, int width, float *x, int ldx)
{
#pragma omp parallel for schedule(static) if (rows >= PAR_MIN_ROWS)
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * ldx;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < width; c++)
            ss += xr[c] * xr[c];
        float inv = 1.0f / fmaxf(sqrtf(ss), 1e-6f);
#pragma omp simd
        for (int c = 0; c < width; c++)
            xr[c] *= inv;
    }
}
