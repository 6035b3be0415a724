/* linear.c - y = x @ W (+ b) and its backward through OpenBLAS (ops.h).
 *
 * dW += x^T @ dy is one sgemm over all rows; the bias gradient is a column
 * sum split over columns (the same sum whatever the thread count).
 */
#include "train/ops.h"

#include <cblas.h>
#include <omp.h>

void tr_linear_fwd(int rows, int in, int out, const float *x, int ldx, const float *W, const float *b,
                   float beta, float *y, int ldy)
{
    if (rows <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, out, in, 1.0f, x, ldx, W, out, beta, y,
                ldy);
    if (b) {
#pragma omp parallel for schedule(static) if (rows >= 64)
        for (int r = 0; r < rows; r++) {
            float *yr = y + (size_t)r * ldy;
#pragma omp simd
            for (int c = 0; c < out; c++)
                yr[c] += b[c];
        }
    }
}

void tr_linear_bwd(int rows, int in, int out, const float *x, int ldx, const float *W, const float *dy,
                   int lddy, float *dx, int lddx, bool accum, float *dW, float *db)
{
    if (rows <= 0)
        return;
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, in, out, 1.0f, dy, lddy, W, out,
                    accum ? 1.0f : 0.0f, dx, lddx);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, out, rows, 1.0f, x, ldx, dy, lddy, 1.0f, dW,
                out);
    if (db) {
#pragma omp parallel if ((size_t)rows * out >= 8192)
        {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int c0 = (int)((long)out * t / nt), c1 = (int)((long)out * (t + 1) / nt);
            for (int r = 0; r < rows; r++) {
                const float *g = dy + (size_t)r * lddy;
                for (int c = c0; c < c1; c++)
                    db[c] += g[c];
            }
        }
    }
}
