/* gemm_pdl.cu - programmatic edges into cuBLASLt's GEMMs inside CUDA graphs:
 * the probe that tells whether a GEMM's kernel waits, and the edge changes
 * (see gemm_pdl_cuda.h for the contract and why).
 */
#include "kernels/gemm_pdl_cuda.h"
#include "kernels/pdl.cuh"
#include "kernels/sm90.cuh"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace {

constexpr uint64_t PROBE_DELAY_NS = 50000; /* far longer than any GEMM takes to launch and start reading */
constexpr int FILL_BLOCKS = 264, FILL_THREADS = 256; /* grid-stride fills: two CTAs an SM on an H100 */
constexpr bf16_t BF16_ONE = 0x3f80;

/* Element `at` of A or C = v (bf16 by truncation: exact for the 0, 1 and
 * small sums written here). */
__device__ __forceinline__ void put_a(const gemm_pdl_operands &op, size_t at, float v)
{
    op.A[at] = (bf16_t)(__float_as_uint(v) >> 16);
}
__device__ __forceinline__ void put_c(const gemm_pdl_operands &op, size_t at, float v)
{
    if (op.c_f32)
        ((float *)op.C)[at] = v;
    else
        ((bf16_t *)op.C)[at] = (bf16_t)(__float_as_uint(v) >> 16);
}

/* A = a_v and C = c_v, grid-stride. */
__global__ void probe_fill_kernel(gemm_pdl_operands op, float a_v, float c_v)
{
    size_t step = (size_t)gridDim.x * blockDim.x, first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (size_t i = first; i < (size_t)op.rows * op.cols; i += step)
        put_a(op, i / op.cols * op.lda + i % op.cols, a_v);
    for (size_t i = first; i < (size_t)op.rows * op.c_cols; i += step)
        put_c(op, i / op.c_cols * op.ldc + i % op.c_cols, c_v);
}

/* Rows 0 and rows - 1 of A and C = v, by the threads of one CTA. */
__device__ void fill_ends(const gemm_pdl_operands &op, float v)
{
    for (int e = 0; e < 2; e++) {
        size_t r = e ? (size_t)op.rows - 1 : 0;
        for (int k = threadIdx.x; k < op.cols; k += blockDim.x)
            put_a(op, r * op.lda + k, v);
        for (int j = threadIdx.x; j < op.c_cols; j += blockDim.x)
            put_c(op, r * op.ldc + j, v);
    }
}

__global__ void probe_zero_ends_kernel(gemm_pdl_operands op) { fill_ends(op, 0.0f); }

/* One small CTA (so that the GEMM's CTAs find room on every other SM and
 * start at once): lets the next grid launch, then after PROBE_DELAY_NS
 * writes rows 0 and rows - 1 of A and C back to 1. A GEMM that reads them
 * before its wait sees zeros; one that writes C's before it has its result
 * overwritten. Launched plainly: the trigger only matters once the edge
 * after it is made programmatic. */
__global__ void probe_late_fill_kernel(gemm_pdl_operands op)
{
    pdl_trigger();
    if (threadIdx.x == 0) {
        uint64_t t0 = sm90::global_timer_ns();
        while (sm90::global_timer_ns() - t0 < PROBE_DELAY_NS)
            ;
    }
    __syncthreads();
    fill_ends(op, 1.0f);
}

/* gemm_pdl_control's stand-in GEMM: one thread per element of C. */
__global__ void control_kernel(gemm_pdl_operands op, int wait)
{
    if (wait)
        pdl_wait();
    size_t n = (size_t)op.rows * op.c_cols, step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        size_t r = i / op.c_cols, j = i % op.c_cols;
        float sum = (float)j;
        for (int k = 0; k < op.cols; k++)
            sum += __uint_as_float((unsigned)op.A[r * op.lda + k] << 16);
        put_c(op, r * op.ldc + j, sum);
    }
}

int fail(char *why, size_t n, const char *what, cudaError_t e)
{
    if (why && n)
        snprintf(why, n, "PDL probe: %s failed: %s", what, cudaGetErrorString(e));
    return -1;
}

/* Rows 0 and rows - 1 of C into out (2 * c_cols elements of C's type). */
cudaError_t copy_rows(const gemm_pdl_operands *op, unsigned char *out, cudaStream_t s)
{
    size_t es = op->c_f32 ? 4 : 2, row = (size_t)op->c_cols * es;
    const unsigned char *c = (const unsigned char *)op->C;
    cudaError_t e = cudaMemcpyAsync(out, c, row, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(out + row, c + (size_t)(op->rows - 1) * op->ldc * es, row, cudaMemcpyDeviceToHost, s);
    return e == cudaSuccess ? cudaStreamSynchronize(s) : e;
}

bool is_kernel(cudaGraphNode_t node)
{
    cudaGraphNodeType t;
    return cudaGraphNodeGetType(node, &t) == cudaSuccess && t == cudaGraphNodeTypeKernel;
}

/* Whether `to` depends on `from` alone, through a plain edge, both kernels. */
bool plain_kernel_edge(cudaGraphNode_t from, cudaGraphNode_t to)
{
    cudaGraphNode_t dep[2];
    cudaGraphEdgeData ed[2];
    size_t n = 2;
    return is_kernel(from) && is_kernel(to) && cudaGraphNodeGetDependencies(to, dep, ed, &n) == cudaSuccess &&
           n == 1 && dep[0] == from && ed[0].type == cudaGraphDependencyTypeDefault;
}

cudaError_t make_programmatic(cudaGraph_t graph, cudaGraphNode_t from, cudaGraphNode_t to)
{
    cudaGraphEdgeData plain = {}, prog = {};
    prog.type = cudaGraphDependencyTypeProgrammatic;
    prog.from_port = cudaGraphKernelNodePortProgrammatic; /* at the trigger, or as each CTA exits */
    cudaError_t e = cudaGraphRemoveDependencies(graph, &from, &to, &plain, 1);
    return e == cudaSuccess ? cudaGraphAddDependencies(graph, &from, &to, &prog, 1) : e;
}

} // namespace

int gemm_pdl_control_launch(void *ctx, cudaStream_t s)
{
    const gemm_pdl_control *c = (const gemm_pdl_control *)ctx;
    control_kernel<<<FILL_BLOCKS, FILL_THREADS, 0, s>>>(c->op, c->wait);
    return cudaGetLastError() != cudaSuccess;
}

cudaGraphNode_t gemm_pdl_tail(cudaStream_t s)
{
    cudaStreamCaptureStatus cs;
    const cudaGraphNode_t *deps = NULL;
    size_t n = 0;
    if (cudaStreamGetCaptureInfo(s, &cs, NULL, NULL, &deps, NULL, &n) != cudaSuccess ||
        cs != cudaStreamCaptureStatusActive || n != 1)
        return NULL;
    return deps[0];
}

int gemm_pdl_note(gemm_pdl_edges *e, cudaGraphNode_t from, cudaStream_t s)
{
    cudaGraphNode_t to = gemm_pdl_tail(s);
    if (!from || !to || to == from)
        return 0;
    if (e->n == e->cap) {
        int cap = e->cap ? 2 * e->cap : 32;
        void *v = realloc(e->v, (size_t)cap * sizeof *e->v);
        if (!v)
            return -1;
        e->v = (gemm_pdl_pair *)v;
        e->cap = cap;
    }
    e->v[e->n].from = from;
    e->v[e->n].to = to;
    e->n++;
    return 0;
}

int gemm_pdl_apply(gemm_pdl_edges *e, cudaGraph_t graph)
{
    int changed = 0;
    for (int i = 0; graph && i < e->n; i++) {
        /* The GEMM's node depends on the noted node alone: the GEMM is one
         * kernel (a second node, as a split-K reduction, is not noted) */
        if (!plain_kernel_edge(e->v[i].from, e->v[i].to))
            continue;
        if (make_programmatic(graph, e->v[i].from, e->v[i].to) != cudaSuccess) {
            e->n = 0;
            return -1;
        }
        changed++;
    }
    e->n = 0;
    e->applied += changed;
    return changed;
}

void gemm_pdl_free(gemm_pdl_edges *e)
{
    free(e->v);
    memset(e, 0, sizeof *e);
}

int gemm_pdl_probe(const gemm_pdl_operands *op, gemm_pdl_launch_fn launch, void *ctx, cudaStream_t s, char *why,
                   size_t n)
{
    size_t row = (size_t)op->c_cols * (op->c_f32 ? 4 : 2);
    unsigned char *ref = (unsigned char *)malloc(4 * row), *got = ref ? ref + 2 * row : NULL;
    if (!ref) {
        if (why && n)
            snprintf(why, n, "PDL probe: out of host memory");
        return -1;
    }
    int rc = -1, waits = 0;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    gemm_pdl_edges edges = {};
    cudaError_t e;
    /* the reference, in stream order */
    probe_fill_kernel<<<FILL_BLOCKS, FILL_THREADS, 0, s>>>(*op, 1.0f, 1.0f);
    if ((e = cudaGetLastError()) != cudaSuccess) {
        rc = fail(why, n, "the fill kernel", e);
        goto out;
    }
    if (launch(ctx, s)) {
        rc = fail(why, n, "the GEMM", cudaErrorUnknown);
        goto out;
    }
    if ((e = copy_rows(op, ref, s)) != cudaSuccess) {
        rc = fail(why, n, "the reference run", e);
        goto out;
    }
    /* A result of all ones could not be told from the late fill's C. */
    {
        bool all_ones = true;
        for (size_t i = 0; all_ones && i < 2 * (size_t)op->c_cols; i++)
            all_ones = op->c_f32 ? ((const float *)ref)[i] == 1.0f : ((const bf16_t *)ref)[i] == BF16_ONE;
        if (all_ones) {
            rc = 0;
            goto out;
        }
    }
    /* the same GEMM behind a programmatic edge from the late fill */
    if ((e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal)) != cudaSuccess) {
        rc = fail(why, n, "cudaStreamBeginCapture", e);
        goto out;
    }
    {
        probe_fill_kernel<<<FILL_BLOCKS, FILL_THREADS, 0, s>>>(*op, 1.0f, 1.0f);
        probe_zero_ends_kernel<<<1, 128, 0, s>>>(*op);
        probe_late_fill_kernel<<<1, 32, 0, s>>>(*op);
        cudaGraphNode_t from = gemm_pdl_tail(s);
        int lrc = launch(ctx, s);
        int nrc = lrc ? 0 : gemm_pdl_note(&edges, from, s);
        e = cudaStreamEndCapture(s, &graph);
        if (lrc || nrc || e != cudaSuccess) {
            rc = fail(why, n, "capturing the GEMM", e != cudaSuccess ? e : cudaErrorUnknown);
            goto out;
        }
    }
    if (gemm_pdl_apply(&edges, graph) != 1) { /* not one kernel node behind a kernel: no edge would change */
        rc = 0;
        goto out;
    }
    if ((e = cudaGraphInstantiate(&exec, graph, 0)) != cudaSuccess || (e = cudaGraphLaunch(exec, s)) != cudaSuccess ||
        (e = copy_rows(op, got, s)) != cudaSuccess) {
        rc = fail(why, n, "the probe's graph", e);
        goto out;
    }
    waits = !memcmp(ref, got, 2 * row);
    rc = waits;
out:
    cudaGetLastError(); /* a failure was reported above; leave no sticky launch error behind */
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    gemm_pdl_free(&edges);
    free(ref);
    return rc;
}
