/* gemm_ws_cuda.h - the layer GEMMs for few rows on Hopper, weight-stationary:
 *
 *   C[M, N] = A[M, K] @ W[K, N]  (+ C[M, N] when accumulate)  (+ bias[N])
 *
 * in fp32, rounded once to C's type (bf16, or fp32 with c_f32). A and W are
 * bf16 (W in the model's x @ W layout, [K, N] row-major), the bias has C's
 * type. That is the layer's uvqk projection (beta 0, no bias) and its output
 * projection with the residual (accumulate, bias) at a batch of one or two
 * returning users: a few hundred rows.
 *
 * Why: at 384 rows cuBLASLt's GEMMs are bound by latency, not bandwidth or
 * arithmetic (docs/cuda.md, "The weight-stationary GEMM"), and they cannot
 * start before the kernel ahead of them has ended. Here each CTA owns 64
 * columns of W for the whole of K (up to 1024: 128 KB of shared memory) and
 * loads them before it waits for the kernel ahead (programmatic dependent
 * launch, pdl.cuh), while that kernel still runs; after the wait it streams
 * only A through a ring of 64-wide K slices, each slice loaded once per
 * cluster of CTAs along N and multicast into all of them. A CTA takes row
 * tiles g, g + G, ... of its columns, so W stays put however many rows
 * there are; the plan (gemm_ws_plan) picks the row tile (64, 128 or 192
 * rows), the cluster and G so that the grid fits on the GPU at once.
 *
 * Requirements (gemm_ws_supported says which one fails): M >= 0; N and K
 * positive multiples of 8, K at most GEMM_WS_MAX_K; row strides multiples
 * of 8 elements that hold a row; A, W, C 16-byte aligned, the bias 8-byte
 * aligned; and a grid of at most one CTA per SM for N's column tiles
 * (N <= 64 x the SMs). W must not be written by the kernel right before the
 * call in its stream (it is read before the wait: weights are written once,
 * at load); A, C and the bias are touched only after it.
 *
 * sm_90a only. Launches on `stream` and returns a cudaError_t value (0 =
 * launched; cudaErrorInvalidValue for arguments it does not support).
 */
#ifndef HSTU_KERNELS_GEMM_WS_CUDA_H
#define HSTU_KERNELS_GEMM_WS_CUDA_H

#include "kernels/dense_cuda.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GEMM_WS_MAX_K 1024 /* W's 64 columns by K must fit in shared memory with A's ring */

typedef struct gemm_ws_args {
    int M, N, K;
    const bf16_t *A; /* [M, K], row stride lda */
    int lda;
    const bf16_t *W; /* [K, N], row stride ldw */
    int ldw;
    void *C; /* [M, N], row stride ldc; bf16, or fp32 with c_f32 */
    int ldc, c_f32;
    int accumulate;   /* C += A @ W (beta 1) instead of C = A @ W */
    const void *bias; /* [N] in C's type, or NULL */
} gemm_ws_args;

/* How a call runs: row tiles of bm rows (64, 128 or 192), clusters of cl
 * CTAs along N sharing A's loads, `groups` CTAs per 64 columns (the grid is
 * groups x ceil(N / 64) CTAs), each taking at most tiles_per_cta row tiles,
 * with a ring of `stages` K slices of A. */
typedef struct gemm_ws_plan {
    int bm, cl, groups, ctas, tiles_per_cta, stages;
} gemm_ws_plan;

/* Sets the kernels' launch attributes and measures how many CTAs fit at
 * once; call once before the first gemm_ws_cuda that a stream capture may
 * record (the backend does at create). Returns a cudaError_t value. */
int gemm_ws_prepare(void);

bool gemm_ws_supported(const gemm_ws_args *a, char *why, size_t n);

/* The plan of a call of M x N x K (after gemm_ws_prepare; 0, or -1 when the
 * shape is not supported). Unless forced, the row tile that gives the
 * busiest CTA the fewest rows (the larger tile on a tie: fewer loads of W),
 * then the widest cluster that divides the column tiles and fits. */
int gemm_ws_plan_of(int M, int N, int K, gemm_ws_plan *p);

/* Makes later calls take bm-row tiles in clusters of cl (tests,
 * benchmarks); (0, 0) returns to the automatic choice, as does a shape the
 * kernel lacks. */
void gemm_ws_force(int bm, int cl);

int gemm_ws_cuda(const gemm_ws_args *a, void *stream);

/* Profiling (benchmarks): with a device buffer set, later calls stamp the
 * GPU's global timer (ns) at these points into trace[cta *
 * GEMM_WS_TRACE_POINTS + point], one thread per CTA (the first row tile's
 * points); NULL stops it. */
enum gemm_ws_trace_point {
    GEMM_WS_TRACE_START,     /* the loading thread starts */
    GEMM_WS_TRACE_W_ISSUED,  /* it has issued the loads of W */
    GEMM_WS_TRACE_W_LANDED,  /* W's last slice landed (another thread of the loading warp) */
    GEMM_WS_TRACE_WAITED,    /* the loading thread's wait for the kernel ahead returned */
    GEMM_WS_TRACE_FIRST_A,   /* the first slice of A landed (computing thread 0) */
    GEMM_WS_TRACE_LOOP_DONE, /* the first tile's products are done */
    GEMM_WS_TRACE_END,       /* the CTA's last store is issued */
    GEMM_WS_TRACE_POINTS
};
void gemm_ws_set_trace(unsigned long long *trace);

#ifdef __cplusplus
}
#endif
#endif
