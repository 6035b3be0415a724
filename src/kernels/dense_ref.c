/* dense_ref.c - reference dense ops: plain loops, fp32 accumulation.
 * The oracle for dense_cpu.c and the CUDA kernels; see dense.h. */
#include "kernels/dense.h"

#include <math.h>
#include <stdlib.h>

void gemm_ref(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc += A[(size_t)i * lda + k] * B[(size_t)k * ldb + j];
            float *c = &C[(size_t)i * ldc + j];
            *c = beta == 0.0f ? acc : acc + beta * *c;
        }
}

/* Mean and variance summed in double: the oracle must be more accurate than
 * the kernels it checks, also on rows whose mean is large next to their
 * spread (float sums there err by ~2e-5, beyond the 1e-5 row-wise bound). */
static void ln_row(int width, const float *x, const float *w, const float *b, float eps, float *y)
{
    double mean = 0.0;
    for (int i = 0; i < width; i++)
        mean += x[i];
    mean /= width;
    double var = 0.0;
    for (int i = 0; i < width; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= width;
    double inv = 1.0 / sqrt(var + eps);
    for (int i = 0; i < width; i++) {
        float v = (float)((x[i] - mean) * inv);
        y[i] = w ? v * w[i] + b[i] : v;
    }
}

void layernorm_ref(int rows, int width, const float *x, int ldx, const float *w, const float *b,
                   float eps, float *y, int ldy)
{
    for (int r = 0; r < rows; r++)
        ln_row(width, x + (size_t)r * ldx, w, b, eps, y + (size_t)r * ldy);
}

void bias_silu_ref(int rows, int width, float *x, int ldx, const float *bias, int silu_cols)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < width; c++) {
            float v = x[(size_t)r * ldx + c] + (bias ? bias[c] : 0.0f);
            x[(size_t)r * ldx + c] = c < silu_cols ? v / (1.0f + expf(-v)) : v;
        }
}

void ln_mul_ref(int rows, int width, const float *a, int lda, const float *u, int ldu, const float *w,
                const float *b, float eps, float *y, int ldy)
{
    for (int r = 0; r < rows; r++) {
        float *yr = y + (size_t)r * ldy;
        ln_row(width, a + (size_t)r * lda, w, b, eps, yr);
        for (int c = 0; c < width; c++)
            yr[c] *= u[(size_t)r * ldu + c];
    }
}

void bias_act_ref(int rows, int width, float *x, int ldx, const float *bias, bool relu)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < width; c++) {
            float v = x[(size_t)r * ldx + c] + (bias ? bias[c] : 0.0f);
            x[(size_t)r * ldx + c] = relu && v < 0.0f ? 0.0f : v;
        }
}

void l2norm_ref(int rows, int width, float *x, int ldx)
{
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * ldx;
        float ss = 0.0f;
        for (int c = 0; c < width; c++)
            ss += xr[c] * xr[c];
        float inv = 1.0f / fmaxf(sqrtf(ss), 1e-6f);
        for (int c = 0; c < width; c++)
            xr[c] *= inv;
    }
}
