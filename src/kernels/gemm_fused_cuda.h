/* gemm_fused_cuda.h - the uvqk projection on Hopper with its row-wise
 * epilogue in the same kernel.
 *
 *   C[M, N] = A[M, K] @ W[K, N], then on columns c >= act_from:
 *             C[:, c] = act(C[:, c] + bias[c])     (act = SiLU when silu, else none)
 *
 * and, when `pages` is given, each row r with pages->row_slot[r] >= 0 also
 * goes to its slot of the KV page pool: columns [kv_col, kv_col + vw) as V,
 * [kv_col + vw, kv_col + vw + kw) as K (the values after bias and SiLU,
 * exactly what C holds). That is the layer's uvqk GEMM (cuBLASLt, gemm_cuda.h)
 * followed by its v|k bias+SiLU+append pass (bias_silu_cuda, dense_cuda.h)
 * in one kernel: the accumulators get the bias and SiLU in registers and
 * leave once, rounded to bf16 once, instead of being written, read back and
 * written again.
 *
 * A is bf16 [M, K] (row stride lda), W bf16 [K, N] (the model's x @ W
 * convention, row stride ldw), C bf16 [M, N] (ldc), bias fp32 indexed by
 * column (the whole row of biases; entries below act_from are not read),
 * accumulation fp32. Any M >= 0; K, N and act_from multiples of 8; strides multiples
 * of 8 elements; A, W, C 16-byte aligned, bias 8-byte aligned; with pages
 * the same rules as bias_silu_cuda plus kv_col a multiple of 8.
 * gemm_fused_supported says whether a call's shapes and pointers qualify
 * (with the reason); the caller falls back to cuBLASLt + bias_silu_cuda
 * otherwise.
 *
 * Why: a few hundred rows (a batch of returning users' new rows and
 * candidates) are 48 of cuBLASLt's 128 x 256 tiles on 132 SMs; this kernel
 * takes 128 x 128 tiles there (96 CTAs) and 128 x 256 tiles once there are
 * enough rows to fill the GPU, and saves the pass over v|k. Measured on an
 * H100 it is not there yet: TMA-fed and persistent, it runs at 0.75-0.9x
 * the speed of cuBLASLt plus the pass (docs/cuda.md, "The fused uvqk
 * GEMM"); the backend uses it only with HSTU_CUDA_FUSED_GEMM=1.
 *
 * Programmatic dependent launch (pdl.cuh) when it is on: the kernel may
 * start while the kernel ahead of it in the stream still runs, and it asks
 * for its first tile's first W slices before it waits for that kernel. So
 * W must not be written by the kernel right before the call in its stream
 * (weights: written once, at load); A, the bias, C and the pool are only
 * touched after the wait.
 *
 * sm_90a only. Launches on `stream` and returns a cudaError_t value
 * (0 = launched; cudaErrorInvalidValue for arguments it does not support).
 */
#ifndef HSTU_KERNELS_GEMM_FUSED_CUDA_H
#define HSTU_KERNELS_GEMM_FUSED_CUDA_H

#include "kernels/dense_cuda.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gemm_fused_epilogue {
    const float *bias;            /* [N] by column, or NULL: no bias */
    int act_from;                 /* the first column that gets bias and SiLU (N or more: none) */
    int silu;                     /* SiLU after the bias on those columns */
    const bias_silu_pages *pages; /* or NULL: no append */
    int kv_col;                   /* with pages: V's first column (K's follows at kv_col + vw) */
} gemm_fused_epilogue;

bool gemm_fused_supported(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw,
                          const bf16_t *C, int ldc, const gemm_fused_epilogue *epi, char *why, size_t n);

/* Sets the kernels' launch attributes; call once before the first
 * gemm_fused_cuda that a stream capture may record (the backend does at
 * create). Returns a cudaError_t value. */
int gemm_fused_prepare(void);

int gemm_fused_cuda(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw, bf16_t *C, int ldc,
                    const gemm_fused_epilogue *epi, void *stream);

/* The tile a call of M rows and N columns takes, for benchmarks and docs:
 * bm x bn (128 x 128, 128 x 256, or 96 x 128 computed transposed)
 * in clusters of cl CTAs (1, or 2 with 128-row tiles: pairs of row blocks
 * sharing W's loads by TMA multicast); any pointer may be NULL.
 * gemm_fused_force_tile(bm, bn, cl) makes later calls take that shape
 * (tests, benchmarks); a shape the kernel lacks, such as (0, 0, 0), returns
 * to the automatic choice. */
void gemm_fused_tile(int M, int N, int *bm, int *bn, int *cl);
void gemm_fused_force_tile(int bm, int bn, int cl);

/* Profiling (benchmarks): with a device buffer set, later calls stamp the
 * GPU's global timer (ns) at these points into trace[cta *
 * GEMM_FUSED_TRACE_POINTS + point], one CTA of the persistent grid each
 * (the first tile's points only); NULL stops it. */
enum gemm_fused_trace_point {
    GEMM_FUSED_TRACE_START,       /* the loading thread starts */
    GEMM_FUSED_TRACE_WAITED,      /* its wait for the kernel ahead returned */
    GEMM_FUSED_TRACE_FIRST_SLICE, /* the first slice landed (computing thread 0) */
    GEMM_FUSED_TRACE_LOOP_DONE,   /* the first tile's products are done */
    GEMM_FUSED_TRACE_END,         /* the CTA's last store has read its shared memory */
    GEMM_FUSED_TRACE_POINTS
};
void gemm_fused_set_trace(unsigned long long *trace);

#ifdef __cplusplus
}
#endif
#endif
