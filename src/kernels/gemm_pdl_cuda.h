/* gemm_pdl_cuda.h - programmatic edges into cuBLASLt's GEMM kernels inside CUDA
 * graphs (used by gemm.cu; docs/cuda.md, "Programmatic edges into the GEMMs").
 *
 * The engine's own kernels are launched with programmatic dependent launch,
 * so a graph captured from the stream holds a programmatic edge into each of
 * them; cuBLASLt's kernels are launched by the library, so the edge into a
 * GEMM is a plain one and the GEMM starts only once the kernel before it has
 * completed. A programmatic edge into a GEMM is safe only if the GEMM's
 * kernel runs griddepcontrol.wait before it touches memory, which nothing
 * documents; so it is measured, per algorithm, by gemm_pdl_probe, and only
 * edges into GEMMs whose algorithm passed are changed.
 *
 * During a capture, gemm.cu takes the stream's capture tail before a GEMM
 * (gemm_pdl_tail) and notes the pair (tail, the GEMM's node) after it
 * (gemm_pdl_note) when the GEMM added exactly one node. After the capture
 * ends, gemm_pdl_apply turns each noted edge programmatic where the graph
 * shows exactly that edge between two kernel nodes.
 */
#ifndef HSTU_KERNELS_GEMM_PDL_CUDA_H
#define HSTU_KERNELS_GEMM_PDL_CUDA_H

#include "kernels/dense_cuda.h"

#include <cuda_runtime.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Launches the GEMM under test on s; returns 0 or non-zero on failure. */
typedef int (*gemm_pdl_launch_fn)(void *ctx, cudaStream_t s);

/* The GEMM's operands that the probe writes: A (bf16, rows x cols at stride
 * lda) and the output C (c_cols wide at stride ldc, fp32 or bf16, rows rows;
 * read too when the GEMM's beta is not 0). */
typedef struct gemm_pdl_operands {
    bf16_t *A;
    int rows, cols, lda;
    void *C;
    int c_cols, ldc, c_f32;
} gemm_pdl_operands;

/* Whether the GEMM that launch() runs waits for the kernel before it at a
 * programmatic edge: 1 yes, 0 no (or it is not one kernel node, so no edge
 * into it would be changed), -1 a CUDA call failed (the reason in why).
 * Runs it once in stream order with A = 1 and C = 1 for the reference,
 * then in a graph with rows 0 and rows - 1 of A and C zeroed, behind one
 * small CTA that lets the GEMM launch at once (its CTAs find room on the
 * other SMs) and writes those rows back to 1 only after 50 us: a GEMM that
 * reads A or C before its wait sees zeros, one that writes C before it has
 * its result overwritten. Rows 0 and rows - 1 of C must equal the
 * reference bit for bit. Overwrites A and C; synchronises s. */
int gemm_pdl_probe(const gemm_pdl_operands *op, gemm_pdl_launch_fn launch, void *ctx, cudaStream_t s, char *why,
                   size_t n);

/* Edges noted during a capture, in caller storage (zero it to init). */
typedef struct gemm_pdl_pair {
    cudaGraphNode_t from, to;
} gemm_pdl_pair;
typedef struct gemm_pdl_edges {
    gemm_pdl_pair *v;
    int n, cap;
    int applied; /* edges made programmatic so far (all graphs) */
} gemm_pdl_edges;

/* The one node the capture on s would make the next work depend on, or
 * NULL (s is not capturing, or the tail is not one node). */
cudaGraphNode_t gemm_pdl_tail(cudaStream_t s);

/* After a GEMM captured behind `from` (gemm_pdl_tail's node): notes the
 * pair (from, the GEMM's node) when the GEMM added one node. Returns 0, or
 * -1 when out of host memory (nothing noted; the edge stays plain). */
int gemm_pdl_note(gemm_pdl_edges *e, cudaGraphNode_t from, cudaStream_t s);

/* Makes each noted edge of graph programmatic where the graph holds exactly
 * that plain edge into the GEMM's node and both nodes are kernels; forgets
 * the noted pairs (graph NULL: only forgets, after a failed capture).
 * Returns the number of edges changed, or -1 when a graph call failed
 * (edges already changed stay valid). */
int gemm_pdl_apply(gemm_pdl_edges *e, cudaGraph_t graph);

void gemm_pdl_free(gemm_pdl_edges *e);

/* For the probe's test: a stand-in GEMM, C[r][j] = (sum of row r of A) + j
 * (fp32 accumulation, truncated to C's type), launched plainly on s; with
 * wait != 0 its kernel runs griddepcontrol.wait first, as a GEMM that
 * passes the probe must. ctx points to a gemm_pdl_control. */
typedef struct gemm_pdl_control {
    gemm_pdl_operands op;
    int wait;
} gemm_pdl_control;
int gemm_pdl_control_launch(void *ctx, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
