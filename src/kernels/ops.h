/* ops.h - a backend is a table of op implementations, chosen once.
 *
 * The forward pass (src/model/forward.c) calls only through this table, so
 * the reference and fast CPU backends run exactly the same orchestration
 * (embedding, cache, positions, masks) and differ only in the kernels.
 */
#ifndef HSTU_KERNELS_OPS_H
#define HSTU_KERNELS_OPS_H

#include "hstu.h"
#include "kernels/attention.h"
#include "kernels/topk.h"

#include <stdbool.h>

typedef struct hstu_ops {
    hstu_backend backend;
    void (*gemm)(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc);
    void (*layernorm)(int rows, int width, const float *x, int ldx, const float *w, const float *b,
                      float eps, float *y, int ldy);
    void (*bias_silu)(int rows, int width, float *x, int ldx, const float *bias, int silu_cols);
    void (*ln_mul)(int rows, int width, const float *a, int lda, const float *u, int ldu,
                   const float *w, const float *b, float eps, float *y, int ldy);
    void (*bias_act)(int rows, int width, float *x, int ldx, const float *bias, bool relu);
    void (*l2norm)(int rows, int width, float *x, int ldx);
    void (*attention)(const attn_params *p);
    void (*topk)(const topk_params *p);
} hstu_ops;

/* NULL when the backend is not built (CUDA without nvcc). */
const hstu_ops *ops_for(hstu_backend b);

#endif
