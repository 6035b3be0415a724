/* gemm_cuda.h - row-major bf16 GEMMs with fp32 accumulation through cuBLASLt.
 *
 *   C[M, N] = A[M, K] @ op(B) + beta * C   (then + bias[N], then ReLU)
 *
 * A is bf16 [M, K] with row stride lda. B is bf16, either [K, N] (b_trans =
 * 0: a weight in the model's x @ W convention) or [N, K] (b_trans = 1: a
 * table whose rows are the columns of op(B), as in scores = users @ items^T).
 * C is fp32 or bf16 (c_f32); the bias, when the epilogue has one, has C's
 * type and N entries. Accumulation and alpha/beta are fp32. beta = 0 ignores
 * what C held; beta = 1 adds into it (the residual stream).
 *
 * All pointers are device memory, 16-byte aligned, and every stride a
 * multiple of 8 elements (callers pad; cuBLASLt's fast kernels need it).
 * A gemm_cuda object owns a cuBLASLt handle, a workspace allocated once at
 * create, and a cache of the algorithm chosen per shape, so a call allocates
 * nothing (descriptors live on the stack). Calls launch on `stream`
 * (a cudaStream_t) and return 0, or non-zero with the reason in `why`.
 * Not thread-safe: one object per stream of calls.
 */
#ifndef HSTU_KERNELS_GEMM_CUDA_H
#define HSTU_KERNELS_GEMM_CUDA_H

#include "kernels/dense_cuda.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gemm_cuda gemm_cuda;

typedef enum gemm_epilogue {
    GEMM_EPI_NONE = 0,
    GEMM_EPI_BIAS,      /* + bias[N] */
    GEMM_EPI_RELU_BIAS, /* max(. + bias[N], 0) */
} gemm_epilogue;

/* Creates the handle and its workspace (workspace_bytes; 32 MiB suits
 * Hopper). Returns 0, or non-zero with the reason in why. */
int gemm_cuda_create(size_t workspace_bytes, gemm_cuda **out, char *why, size_t n);
void gemm_cuda_destroy(gemm_cuda *g);
size_t gemm_cuda_bytes(const gemm_cuda *g);

int gemm_cuda_run(gemm_cuda *g, int M, int N, int K, const bf16_t *A, int lda, const bf16_t *B, int ldb,
                  int b_trans, float beta, void *C, int c_f32, int ldc, gemm_epilogue epi, const void *bias,
                  void *stream, char *why, size_t n);

/* Times cuBLASLt's candidate algorithms (up to 8) for this call's shape on
 * these buffers and remembers the fastest for every later call of the same
 * shape whose nearest tuned M (by ratio) is this M. Runs the GEMM some 50 times
 * (six rounds over the candidates, the first a warm-up)
 * and synchronises the stream: for setup time, on scratch buffers (C is
 * overwritten, or accumulated into when beta != 0). Fill the inputs with
 * realistic (random) values: GEMMs on zeros run faster than on data. */
int gemm_cuda_tune(gemm_cuda *g, int M, int N, int K, const bf16_t *A, int lda, const bf16_t *B, int ldb,
                   int b_trans, float beta, void *C, int c_f32, int ldc, gemm_epilogue epi, const void *bias,
                   void *stream, char *why, size_t n);

/* Makes later gemm_cuda_tune calls read B from consecutive B-sized slices
 * of a device region (256-byte aligned) instead of the B given, one slice
 * per timed run: give it more bytes than the L2 cache (a model's layer
 * weights) and every run reads B from DRAM, as a forward reads a layer's
 * weights once; the same B would sit in L2 after the first run and favour
 * the tiles that suit a warm cache. NULL: back to the B given. */
void gemm_cuda_tune_cold(gemm_cuda *g, const void *region, size_t bytes);

/* Programmatic edges into the GEMMs of CUDA graphs (docs/cuda.md,
 * "Programmatic edges into the GEMMs"). With on != 0, set before tuning:
 * gemm_cuda_tune also probes the algorithm it picks for whether its kernel
 * waits for the kernel before it at a programmatic edge (it then overwrites
 * A as well as C), and a gemm_cuda_run captured into a graph whose
 * algorithm passed notes the edge into it. */
void gemm_cuda_set_graph_pdl(gemm_cuda *g, int on);
/* After cudaStreamEndCapture of the stream those calls were captured on:
 * makes the noted edges of `graph` (a cudaGraph_t) programmatic where the
 * graph holds exactly that plain edge from one kernel into the GEMM's one
 * kernel, and forgets them (graph NULL, after a failed capture: only
 * forgets). Returns the number of edges changed, or -1 when a graph call
 * failed (the edges changed so far stay valid). */
int gemm_cuda_graph_edges(gemm_cuda *g, void *graph);
/* Tuned algorithms probed, those that passed, edges made programmatic so far. */
void gemm_cuda_pdl_counts(const gemm_cuda *g, int *probed, int *passed, int *edges);

#ifdef __cplusplus
}
#endif
#endif
