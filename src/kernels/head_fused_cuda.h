/* head_fused_cuda.h - the ranking head of a model with one hidden layer, in
 * one kernel on Hopper.
 *
 * For each candidate i < M (M read from device memory at run time):
 *
 *   y   = bf16( x[rows[i]] / max(||x[rows[i]]||_2, 1e-6) )       over `width` columns, fp32 statistics
 *   h   = bf16( ReLU( y @ w1 + b1 ) )                            fp32 sums, [h8]
 *   z   = h @ w2 + b2                                            fp32 sums, [n_tasks8]
 *   out[i * n_tasks + t] = sigmoid(z[t]) (or z[t] when !sigmoid)  for t < n_tasks
 *
 * which is what the unfused head computes in four launches
 * (gather_l2norm_cuda, two cuBLASLt GEMMs with their bias epilogues,
 * scores_out_cuda; src/cuda/cuda_backend.cu, head_ranking), with the same
 * rounding points: y and h are rounded to bf16 exactly where the unfused
 * path stores them, everything else is fp32. Only the order of fp32 sums
 * differs, so results agree with the unfused path to within a bf16 rounding
 * of a hidden value here and there (docs/cuda.md, "The fused ranking head").
 * The result is deterministic: every sum runs in a fixed order (no float
 * atomics), so two launches on the same inputs give the same bits.
 *
 * Layouts (row-major, device memory unless said otherwise):
 *   x      fp32 (x_f32) or bf16 rows with stride ldx elements; only the
 *          first `width` columns of a row are read. 16-byte aligned, ldx a
 *          multiple of 4 (fp32) or 8 (bf16).
 *   rows   int [M]: the row of x of each candidate (any order, repeats
 *          allowed); entries at and past M are not read.
 *   n_rows int [1]: M, read by the kernel after it waits for the work
 *          before it in the stream, so a CUDA graph can hold the launch and
 *          the count change between replays. Values past max_rows are
 *          taken as max_rows, negative ones as 0.
 *   w1     bf16 [in8, h8], 16-byte aligned; rows >= width are zero (the
 *          engine's padding). b1 bf16 [h8].
 *   w2     bf16 [h8, n_tasks8]; b2 fp32 [n_tasks8].
 *   out    fp32 [M, n_tasks] packed; device-writable (in the engine,
 *          mapped pinned host memory). Entries past M * n_tasks are not
 *          written.
 *   scratch head_fused_scratch_bytes(max_rows, h8, n_tasks8) bytes of
 *          device memory, 16-byte aligned, zeroed once by the caller
 *          (cudaMemset) when it is created. It holds partial logits and
 *          arrival counters; every launch leaves the counters at zero, so
 *          launches and graph replays may follow each other freely on one
 *          stream. Two launches that may run at the same time (different
 *          streams) need two scratch buffers.
 *
 * Programmatic dependent launch (pdl.cuh) when it is on: the kernel may
 * start while the kernel ahead of it in the stream still runs, and loads
 * its slices of w1, b1 and w2 before it waits for that kernel. So the
 * weights must not be written by the kernel right before the call in the
 * stream (they are written once, at load); x, rows, n_rows, out and scratch
 * are touched only after the wait.
 *
 * Launches on `stream` (a cudaStream_t, NULL = the default stream) and
 * returns a cudaError_t value: 0 = launched; cudaErrorInvalidValue for
 * arguments the kernel does not take (unsupported shapes, misaligned
 * pointers, width outside [1, in8], n_tasks outside [1, n_tasks8], NULL
 * pointers), without launching anything. max_rows = 0 launches nothing.
 */
#ifndef HSTU_KERNELS_HEAD_FUSED_CUDA_H
#define HSTU_KERNELS_HEAD_FUSED_CUDA_H

#include "kernels/dense_cuda.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct head_fused_params {
    int width;           /* d: columns of x used; in [1, in8] */
    const void *x;       /* fp32 or bf16 [*, ldx] */
    int x_f32;           /* x is fp32 (1) or bf16 (0) */
    int ldx;             /* x's row stride, in elements */
    const int *rows;     /* [M]: x's row of each candidate */
    const int *n_rows;   /* [1]: M, read on the device */
    int max_rows;        /* launch bound: the grid is sized for M <= max_rows */
    const bf16_t *w1;    /* [in8, h8] */
    int in8, h8;         /* padded widths: multiples of 8 */
    const bf16_t *b1;    /* [h8] */
    const bf16_t *w2;    /* [h8, n_tasks8] */
    int n_tasks8;        /* 8 or 16 */
    const float *b2;     /* [n_tasks8] */
    int n_tasks;         /* out's row length, in [1, n_tasks8] */
    int sigmoid;         /* out = sigmoid(logit) (1) or the logit (0) */
    float *out;          /* [M, n_tasks] */
    void *scratch;       /* head_fused_scratch_bytes(max_rows, h8, n_tasks8) bytes, zeroed once */
} head_fused_params;

/* Whether the kernel takes these padded widths: in8 and h8 multiples of 8,
 * 8 <= in8 <= 1024, 8 <= h8 <= 16384, n_tasks8 8 or 16. Else the caller
 * runs the unfused head. */
int head_fused_supported(int in8, int h8, int n_tasks8);

/* The scratch a launch with these bounds needs, in bytes (0 for
 * unsupported widths or max_rows < 1). */
size_t head_fused_scratch_bytes(int max_rows, int h8, int n_tasks8);

/* How many unsigned arrival counters open the scratch (the rest holds
 * partial logits): all zero between launches. For tests. */
int head_fused_counters(int max_rows);

/* Sets the kernels' shared-memory limits; call once before the first
 * head_fused_cuda that a stream capture may record (head_fused_cuda calls
 * it too, which suffices outside a capture). Returns a cudaError_t value. */
int head_fused_prepare(void);

int head_fused_cuda(const head_fused_params *p, void *stream);

/* The tile a launch takes, for tests, benchmarks and docs: rb candidates by
 * cb hidden columns per cluster of ks CTAs that split the in8 rows of w1
 * between them (any pointer may be NULL). head_fused_force_tile(rb, cb, ks)
 * makes later launches take that tile (rb 32 or 64, cb 64 or 128, ks 1, 2,
 * 4 or 8) where its K slice, in8 / ks rounded up to 8, is at most 128
 * rows (else the automatic choice stands); (0, 0, 0), or any tile it
 * lacks, returns to the automatic choice. Not thread-safe: for tests and
 * benchmarks. */
void head_fused_tile(int max_rows, int in8, int h8, int *rb, int *cb, int *ks);
void head_fused_force_tile(int rb, int cb, int ks);

/* Profiling (benchmarks): with a device buffer set, later launches stamp
 * the GPU's global timer (ns) at these points of their first row block into
 * trace[cta * HEAD_FUSED_TRACE_POINTS + point], cta = blockIdx.y *
 * gridDim.x + blockIdx.x (thread 0 of each CTA); NULL stops it. */
enum head_fused_trace_point {
    HEAD_FUSED_TRACE_START,   /* the CTA starts */
    HEAD_FUSED_TRACE_WAITED,  /* its weights are asked for and the wait for the kernel ahead returned */
    HEAD_FUSED_TRACE_X,       /* its x tile read and its sums of squares taken */
    HEAD_FUSED_TRACE_NORM,    /* the cluster's sums of squares exchanged */
    HEAD_FUSED_TRACE_MMA,     /* the products with w1 done */
    HEAD_FUSED_TRACE_HIDDEN,  /* partial hidden sums exchanged */
    HEAD_FUSED_TRACE_LOGITS,  /* partial logits exchanged */
    HEAD_FUSED_TRACE_END,     /* the row block's logits written (or its partials handed on) */
    HEAD_FUSED_TRACE_POINTS
};
void head_fused_set_trace(unsigned long long *trace);

#ifdef __cplusplus
}
#endif
#endif
