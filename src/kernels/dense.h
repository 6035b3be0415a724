/* dense.h - the dense ops of an HSTU layer and head: GEMM and row-wise ops.
 *
 * Every op has a reference twin (_ref: plain loops, the oracle) and a fast
 * CPU twin (_cpu: OpenBLAS and OpenMP). All tensors are fp32, row-major, with
 * an explicit row stride (ld*, in floats). Outputs may not alias inputs
 * unless an op says so.
 */
#ifndef HSTU_KERNELS_DENSE_H
#define HSTU_KERNELS_DENSE_H

#include <stdbool.h>

/* C[M,N] = A[M,K] @ B[K,N] + beta * C. beta = 1 adds into C (the residual);
 * beta = 0 ignores what C held (even NaN), as BLAS does. */
void gemm_ref(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc);
void gemm_cpu(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc);

/* y[r] = LN(x[r]) * w + b over `width` columns (biased variance); w, b may be
 * NULL (no affine). y may alias x. */
void layernorm_ref(int rows, int width, const float *x, int ldx, const float *w, const float *b,
                   float eps, float *y, int ldy);
void layernorm_cpu(int rows, int width, const float *x, int ldx, const float *w, const float *b,
                   float eps, float *y, int ldy);

/* In place: x[r, c] += bias[c] (bias may be NULL), then SiLU on columns
 * [0, silu_cols). The uvqk epilogue: silu_cols = W ("all") or H*Dv ("u"). */
void bias_silu_ref(int rows, int width, float *x, int ldx, const float *bias, int silu_cols);
void bias_silu_cpu(int rows, int width, float *x, int ldx, const float *bias, int silu_cols);

/* y[r] = u[r] * LN(a[r]) * w + b (LN over all `width` columns at once). */
void ln_mul_ref(int rows, int width, const float *a, int lda, const float *u, int ldu, const float *w,
                const float *b, float eps, float *y, int ldy);
void ln_mul_cpu(int rows, int width, const float *a, int lda, const float *u, int ldu, const float *w,
                const float *b, float eps, float *y, int ldy);

/* In place: x[r, c] += bias[c]; then max(x, 0) when relu. */
void bias_act_ref(int rows, int width, float *x, int ldx, const float *bias, bool relu);
void bias_act_cpu(int rows, int width, float *x, int ldx, const float *bias, bool relu);

/* In place: x[r] /= max(||x[r]||, 1e-6). */
void l2norm_ref(int rows, int width, float *x, int ldx);
void l2norm_cpu(int rows, int width, float *x, int ldx);

#endif
