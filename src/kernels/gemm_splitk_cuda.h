/* gemm_splitk_cuda.h - the layer's output projection for a few hundred rows,
 * on Hopper: K split across the CTAs of a thread-block cluster.
 *
 *   C[M, N] += A[M, K] @ W[K, N] + bias[N]
 *
 * That is the proj GEMM of a layer (x += SiLU(u)*LN(attn) @ W_proj + b),
 * which cuBLASLt runs with beta = 1. A is bf16 (row stride lda), W bf16 in
 * the model's x @ W layout (ldw), C bf16 or fp32 (c_f32; ldc), the bias of
 * C's type or NULL. Accumulation is fp32; the sum of the products, the bias
 * and C's old value are added in fp32 and rounded once to C's type.
 * M >= 0; N and K positive multiples of 8; strides multiples of 8 elements
 * that hold a row; A, W and C 16-byte aligned, the bias 8-byte aligned; M
 * small enough that gemm_splitk_shape finds a split (at most 1024 rows at
 * N = 1024). gemm_splitk_supported says whether a call qualifies (with the
 * reason); the caller runs cuBLASLt otherwise.
 *
 * Why: at 384 rows (one returning user: 128 new rows and 256 candidates)
 * the product is 24 tiles of 128 x 128 over K = 1024: cuBLASLt's kernels
 * leave most SMs idle and walk 16 K slices one after another (about 5 us on
 * an H100 for 0.8 GFLOP). Here each tile is computed by a cluster of KS CTAs
 * (up to 8), each over K / KS; each CTA sends its partial rows to the CTA
 * that finishes them (distributed shared memory), which adds up the KS
 * partials of its 128 / KS rows, the bias and C in a fixed order (results
 * are the same run to run). And unlike cuBLASLt's kernels this one waits for
 * the kernel ahead with programmatic dependent launch, so its launch and
 * its loads of W overlap the end of the kernel before it. Measured on an
 * H100 it is still slower than cuBLASLt (0.56-0.72x at 384-768 rows alone,
 * 2-5% slower forwards: the partials' trip between SMs takes 2-3 us), so
 * the backend takes it only with HSTU_CUDA_SPLITK=1.
 *
 * Programmatic dependent launch (pdl.cuh) when it is on: the kernel may
 * start while the kernel ahead of it in the stream still runs, and asks
 * for its first W slices before it waits for that kernel. So W must not be
 * written by the kernel right before the call in its stream (weights); A,
 * the bias and C are only touched after the wait.
 *
 * sm_90a only. Launches on `stream` and returns a cudaError_t value
 * (0 = launched; cudaErrorInvalidValue for arguments it does not support).
 */
#ifndef HSTU_KERNELS_GEMM_SPLITK_CUDA_H
#define HSTU_KERNELS_GEMM_SPLITK_CUDA_H

#include "kernels/dense_cuda.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The split of a call of M rows, N columns and K: tiles of 128 x 128 in
 * clusters of *ks CTAs along K (8, 4 or 2: the most that keep every CTA
 * on an SM of its own, 132 on an H100, with a 64-wide K slice at least
 * each), or *ks = 0 when even pairs would not fit (then the call is not
 * supported). *tiles: the number of output tiles. Either pointer may be
 * NULL. gemm_splitk_force(ks) makes later calls take that split (2, 4 or
 * 8; tests, benchmarks) where K has a slice for each CTA, in as many waves
 * as it takes; 0 goes back to the choice above. */
void gemm_splitk_shape(int M, int N, int K, int *tiles, int *ks);
void gemm_splitk_force(int ks);

bool gemm_splitk_supported(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw, const void *C,
                           int c_f32, int ldc, const void *bias, char *why, size_t n);

/* Sets the kernels' launch attributes; call once before the first
 * gemm_splitk_cuda that a stream capture may record (the backend does at
 * create). Returns a cudaError_t value. */
int gemm_splitk_prepare(void);

int gemm_splitk_cuda(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw, void *C, int c_f32,
                     int ldc, const void *bias, void *stream);

/* Profiling (bench_gpu --proj): with a device buffer set, each CTA of later
 * calls writes the GPU's timer (ns) at these points to trace[cta *
 * GEMM_SPLITK_TRACE_POINTS + point], cta = x + KS (y + tiles_n z); NULL
 * (the default) turns it off. */
enum {
    GEMM_SPLITK_TRACE_START,  /* the loading thread starts */
    GEMM_SPLITK_TRACE_WAITED, /* its wait for the kernel ahead returned */
    GEMM_SPLITK_TRACE_FIRST,  /* the first slice landed (computing thread 0) */
    GEMM_SPLITK_TRACE_LOOP,   /* the products are done */
    GEMM_SPLITK_TRACE_MET,    /* the cluster's partials are all written */
    GEMM_SPLITK_TRACE_END,    /* this CTA's rows are stored */
    GEMM_SPLITK_TRACE_POINTS
};
void gemm_splitk_set_trace(unsigned long long *trace);

#ifdef __cplusplus
}
#endif

#endif
