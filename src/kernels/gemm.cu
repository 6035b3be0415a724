/* gemm.cu - row-major bf16 GEMMs through cuBLASLt (see gemm_cuda.h).
 *
 * cuBLASLt is column-major; a row-major C[M,N] is the column-major C^T[N,M],
 * so each call computes C^T = op(B)^T @ A^T with the operands swapped: the
 * library's "A" is our B and its "B" is our A, m = N, n = M, and the bias
 * (one value per row of the library's D) is one value per column of C.
 *
 * Descriptors are initialised in caller storage (the *Init forms), so a call
 * allocates nothing. Algorithms, per exact shape, come from (in order):
 *   1. the cache of shapes already run;
 *   2. the tuned choice for the same shape at the nearest tuned M
 *      (gemm_cuda_tune, run at create for the M the forward runs: it times
 *      cuBLASLt's candidates, since its heuristic's first choice measured
 *      up to 13% slower on the forward's shapes), if cublasLtMatmulAlgoCheck
 *      accepts it for this M;
 *   3. cuBLASLt's heuristic.
 *
 * With gemm_cuda_set_graph_pdl on, each tuned choice is also probed for
 * whether its kernel waits at a programmatic edge (gemm_pdl_cuda.h), and the
 * calls captured into a CUDA graph with such a choice are noted, so that
 * gemm_cuda_graph_edges can make the edges into them programmatic.
 */
#include "kernels/gemm_cuda.h"
#include "kernels/gemm_pdl_cuda.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEMM_CACHE 256 /* exact shapes remembered; a forward uses fewer than 10 per batch size */
#define GEMM_TUNED 64  /* tuned (shape, M) choices */
#define TUNE_ALGOS 8   /* candidates timed per tuned shape */
#define TUNE_ROUNDS 6  /* rounds over the candidates (the first warms up) */
#define TUNE_BATCH 8   /* calls back to back per timing, for small GEMMs (below) */
#define TUNE_BATCH_FLOPS 4e10 /* ... of at most this many FLOPs (about 50 us on an H100) */

typedef struct gemm_key {
    int M, N, K, lda, ldb, ldc, b_trans, c_f32, epi, beta_nonzero;
    unsigned align; /* the smallest alignment among the pointers, up to 256 */
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    cublasLtMatmulAlgo_t algo;
    int waits; /* its kernel passed gemm_pdl_probe (tuned choices only) */
} gemm_entry;

struct gemm_cuda {
    cublasLtHandle_t lt;
    void *d_workspace;
    size_t workspace_bytes;
    gemm_entry cache[GEMM_CACHE];
    int n_cached, next_evict;
    gemm_entry tuned[GEMM_TUNED];
    int n_tuned;
    const char *cold;  /* gemm_cuda_tune_cold: B operands are read from here, slice by slice */
    size_t cold_bytes;
    int graph_pdl;         /* gemm_cuda_set_graph_pdl */
    int probed, passed;    /* tuned choices probed, and those whose kernel waits */
    gemm_pdl_edges edges;  /* noted during the capture under way */
};

/* One call's descriptors, in caller storage. */
typedef struct gemm_call {
    cublasLtMatmulDescOpaque_t desc_s;
    cublasLtMatrixLayoutOpaque_t la_s, lb_s, lc_s;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    gemm_key key;
} gemm_call;

static unsigned ptr_align(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    unsigned al = 256;
    while (al > 1 && (a % al))
        al /= 2;
    return al;
}

/* How far apart two row counts are, as the ratio of the larger to the smaller. */
static double m_ratio(int a, int b) { return a > b ? (double)a / b : (double)b / a; }

static int fail(char *why, size_t n, const char *what, int code)
{
    if (why && n)
        snprintf(why, n, "%s (status %d)", what, code);
    return code ? code : -1;
}

int gemm_cuda_create(size_t workspace_bytes, gemm_cuda **out, char *why, size_t n)
{
    *out = NULL;
    gemm_cuda *g = (gemm_cuda *)calloc(1, sizeof *g);
    if (!g)
        return fail(why, n, "gemm_cuda: out of host memory", -1);
    cublasStatus_t st = cublasLtCreate(&g->lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return fail(why, n, "cublasLtCreate failed", (int)st);
    }
    cudaError_t ce = cudaMalloc(&g->d_workspace, workspace_bytes);
    if (ce != cudaSuccess) {
        cublasLtDestroy(g->lt);
        free(g);
        return fail(why, n, "gemm_cuda: cudaMalloc of the cuBLASLt workspace failed", (int)ce);
    }
    g->workspace_bytes = workspace_bytes;
    *out = g;
    return 0;
}

void gemm_cuda_destroy(gemm_cuda *g)
{
    if (!g)
        return;
    cudaFree(g->d_workspace);
    cublasLtDestroy(g->lt);
    gemm_pdl_free(&g->edges);
    free(g);
}

size_t gemm_cuda_bytes(const gemm_cuda *g) { return g ? g->workspace_bytes : 0; }

static cublasStatus_t call_init(gemm_call *c, int M, int N, int K, const bf16_t *A, int lda, const bf16_t *B,
                                int ldb, int b_trans, float beta, const void *C, int c_f32, int ldc,
                                gemm_epilogue epi, const void *bias)
{
    cudaDataType_t ct = c_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasOperation_t ta = b_trans ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t e = epi == GEMM_EPI_BIAS        ? CUBLASLT_EPILOGUE_BIAS
                           : epi == GEMM_EPI_RELU_BIAS ? CUBLASLT_EPILOGUE_RELU_BIAS
                                                       : CUBLASLT_EPILOGUE_DEFAULT;
    c->desc = &c->desc_s;
    c->la = &c->la_s, c->lb = &c->lb_s, c->lc = &c->lc_s;
    /* Library operands: "A" = our B (op(B)^T, N x K), "B" = our A^T (K x M). */
    cublasStatus_t s = cublasLtMatmulDescInit(c->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!s)
        s = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!s)
        s = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (!s)
        s = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e);
    if (!s && epi != GEMM_EPI_NONE)
        s = cublasLtMatmulDescSetAttribute(c->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    if (!s)
        s = b_trans ? cublasLtMatrixLayoutInit(c->la, CUDA_R_16BF, K, N, ldb)
                    : cublasLtMatrixLayoutInit(c->la, CUDA_R_16BF, N, K, ldb);
    if (!s)
        s = cublasLtMatrixLayoutInit(c->lb, CUDA_R_16BF, K, M, lda);
    if (!s)
        s = cublasLtMatrixLayoutInit(c->lc, ct, N, M, ldc);
    gemm_key *k = &c->key;
    memset(k, 0, sizeof *k);
    k->M = M, k->N = N, k->K = K, k->lda = lda, k->ldb = ldb, k->ldc = ldc;
    k->b_trans = b_trans, k->c_f32 = c_f32, k->epi = (int)epi, k->beta_nonzero = beta != 0.0f;
    unsigned al = ptr_align(A);
    if (ptr_align(B) < al)
        al = ptr_align(B);
    if (ptr_align(C) < al)
        al = ptr_align(C);
    k->align = al;
    return s;
}

/* Up to `want` candidates from the heuristic, best guess first. */
static cublasStatus_t heuristic(gemm_cuda *g, gemm_call *c, int want, cublasLtMatmulHeuristicResult_t *res,
                                int *found)
{
    cublasLtMatmulPreferenceOpaque_t pref_s;
    cublasLtMatmulPreference_t pref = &pref_s;
    uint32_t a32 = c->key.align;
    cublasLtMatmulPreferenceAttributes_t which[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    *found = 0;
    cublasStatus_t s = cublasLtMatmulPreferenceInit(pref);
    if (!s)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g->workspace_bytes,
                                                 sizeof g->workspace_bytes);
    for (int i = 0; i < 4 && !s; i++)
        s = cublasLtMatmulPreferenceSetAttribute(pref, which[i], &a32, sizeof a32);
    if (!s)
        s = cublasLtMatmulAlgoGetHeuristic(g->lt, c->desc, c->la, c->lb, c->lc, c->lc, pref, want, res, found);
    return s;
}

static const gemm_entry *remember(gemm_cuda *g, const gemm_key *key, const cublasLtMatmulAlgo_t *algo, int waits)
{
    int slot = g->n_cached < GEMM_CACHE ? g->n_cached++ : (g->next_evict++ % GEMM_CACHE);
    g->cache[slot].key = *key;
    g->cache[slot].algo = *algo;
    g->cache[slot].waits = waits;
    return &g->cache[slot];
}

/* The algorithm for this call: cached, tuned at the nearest M, or the heuristic's. */
static int find_algo(gemm_cuda *g, gemm_call *c, const gemm_entry **out, char *why, size_t n)
{
    for (int i = 0; i < g->n_cached; i++)
        if (!memcmp(&g->cache[i].key, &c->key, sizeof c->key)) {
            *out = &g->cache[i];
            return 0;
        }
    gemm_key bk = c->key;
    int near = -1;
    for (int i = 0; i < g->n_tuned; i++) {
        bk.M = g->tuned[i].key.M;
        if (!memcmp(&g->tuned[i].key, &bk, sizeof bk) &&
            (near < 0 || m_ratio(bk.M, c->key.M) < m_ratio(g->tuned[near].key.M, c->key.M)))
            near = i;
    }
    if (near >= 0) {
        cublasLtMatmulHeuristicResult_t chk;
        if (cublasLtMatmulAlgoCheck(g->lt, c->desc, c->la, c->lb, c->lc, c->lc, &g->tuned[near].algo, &chk) ==
                CUBLAS_STATUS_SUCCESS &&
            chk.workspaceSize <= g->workspace_bytes) {
            *out = remember(g, &c->key, &g->tuned[near].algo, g->tuned[near].waits);
            return 0;
        }
    }
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t s = heuristic(g, c, 1, &res, &found);
    if (s)
        return fail(why, n, "cuBLASLt heuristic query failed", (int)s);
    if (found < 1) {
        if (why && n)
            snprintf(why, n, "cuBLASLt has no algorithm for a %dx%dx%d bf16 GEMM (ld %d/%d/%d)", c->key.M, c->key.N,
                     c->key.K, c->key.lda, c->key.ldb, c->key.ldc);
        return -1;
    }
    *out = remember(g, &c->key, &res.algo, 0);
    return 0;
}

int gemm_cuda_run(gemm_cuda *g, int M, int N, int K, const bf16_t *A, int lda, const bf16_t *B, int ldb,
                  int b_trans, float beta, void *C, int c_f32, int ldc, gemm_epilogue epi, const void *bias,
                  void *stream, char *why, size_t n)
{
    if (M <= 0 || N <= 0)
        return 0;
    gemm_call c;
    cublasStatus_t s = call_init(&c, M, N, K, A, lda, B, ldb, b_trans, beta, C, c_f32, ldc, epi, bias);
    if (s)
        return fail(why, n, "cuBLASLt descriptor setup failed", (int)s);
    const gemm_entry *e = NULL;
    int rc = find_algo(g, &c, &e, why, n);
    if (rc)
        return rc;
    /* in a capture, the node this GEMM will hang on (NULL when not capturing) */
    cudaGraphNode_t from = g->graph_pdl && e->waits ? gemm_pdl_tail((cudaStream_t)stream) : NULL;
    float alpha = 1.0f;
    s = cublasLtMatmul(g->lt, c.desc, &alpha, B, c.la, A, c.lb, &beta, C, c.lc, C, c.lc, &e->algo, g->d_workspace,
                       g->workspace_bytes, (cudaStream_t)stream);
    if (s)
        return fail(why, n, "cublasLtMatmul failed", (int)s);
    if (from && gemm_pdl_note(&g->edges, from, (cudaStream_t)stream))
        return fail(why, n, "gemm_cuda: out of host memory", -1);
    return 0;
}

/* One tuned call, for gemm_pdl_probe. */
typedef struct probe_call {
    gemm_cuda *g;
    gemm_call *c;
    const cublasLtMatmulAlgo_t *algo;
    const void *A, *B;
    void *C;
    float beta;
} probe_call;

static int probe_launch(void *ctx, cudaStream_t s)
{
    probe_call *p = (probe_call *)ctx;
    float alpha = 1.0f;
    return cublasLtMatmul(p->g->lt, p->c->desc, &alpha, p->B, p->c->la, p->A, p->c->lb, &p->beta, p->C, p->c->lc,
                          p->C, p->c->lc, p->algo, p->g->d_workspace, p->g->workspace_bytes, s) != CUBLAS_STATUS_SUCCESS;
}

int gemm_cuda_tune(gemm_cuda *g, int M, int N, int K, const bf16_t *A, int lda, const bf16_t *B, int ldb,
                   int b_trans, float beta, void *C, int c_f32, int ldc, gemm_epilogue epi, const void *bias,
                   void *stream, char *why, size_t n)
{
    if (M <= 0 || N <= 0 || g->n_tuned >= GEMM_TUNED)
        return 0;
    cudaStream_t st = (cudaStream_t)stream;
    gemm_call c;
    cublasStatus_t s = call_init(&c, M, N, K, A, lda, B, ldb, b_trans, beta, C, c_f32, ldc, epi, bias);
    if (s)
        return fail(why, n, "cuBLASLt descriptor setup failed", (int)s);
    cublasLtMatmulHeuristicResult_t res[TUNE_ALGOS];
    int found = 0;
    s = heuristic(g, &c, TUNE_ALGOS, res, &found);
    if (s)
        return fail(why, n, "cuBLASLt heuristic query failed", (int)s);
    if (found < 1)
        return 0; /* gemm_cuda_run will say so, with the shape */
    cudaEvent_t e0, e1;
    if (cudaEventCreate(&e0) != cudaSuccess)
        return fail(why, n, "cudaEventCreate failed", -1);
    if (cudaEventCreate(&e1) != cudaSuccess) {
        cudaEventDestroy(e0);
        return fail(why, n, "cudaEventCreate failed", -1);
    }
    float alpha = 1.0f, fastest[TUNE_ALGOS];
    int ok[TUNE_ALGOS];
    for (int i = 0; i < found; i++)
        fastest[i] = 1e30f, ok[i] = 1;
    /* With a cold region, each run reads its B from the next slice of it,
     * so that B comes from DRAM as the layer's weights do in a forward. */
    size_t b_bytes = ((size_t)(b_trans ? N : K) * (size_t)ldb * 2 + 255) & ~(size_t)255;
    size_t slices = g->cold && b_bytes ? g->cold_bytes / b_bytes : 0, next = 0;
    /* Each candidate's timed calls are a CUDA graph with the two events
     * inside it, so that the GPU runs the calls back to back as a forward's
     * graph does, the host out of the loop: a cublasLtMatmul call costs the
     * host 5-14 us, more than a 384-row GEMM takes on the GPU, and timed
     * from the host every candidate took about that long (10-11.6 us at 384
     * rows for kernels of 5-9 us), so the choice was noise: a proj GEMM
     * 4 us slower in the forward than the best one (docs/cuda.md, "GEMM
     * tuning"). A small GEMM is TUNE_BATCH calls, each B from the next cold
     * slice. Round by round, each round timing every candidate once: a GPU
     * whose clock is still ramping up (it idles before create) slows every
     * candidate alike instead of the first ones timed. Round 0 warms up;
     * each candidate keeps its fastest time (noise only ever adds time). */
    const int batch = 2.0 * M * N * K <= TUNE_BATCH_FLOPS ? TUNE_BATCH : 1;
    cudaGraphExec_t ex[TUNE_ALGOS];
    for (int i = 0; i < found; i++) {
        ex[i] = NULL;
        cudaGraph_t graph = NULL;
        if (cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
            ok[i] = 0;
            continue;
        }
        bool fine = cudaEventRecordWithFlags(e0, st, cudaEventRecordExternal) == cudaSuccess;
        for (int k = 0; k < batch && fine; k++) {
            const void *b = slices >= 2 ? (const void *)(g->cold + (next++ % slices) * b_bytes) : (const void *)B;
            fine = cublasLtMatmul(g->lt, c.desc, &alpha, b, c.la, A, c.lb, &beta, C, c.lc, C, c.lc, &res[i].algo,
                                  g->d_workspace, g->workspace_bytes, st) == CUBLAS_STATUS_SUCCESS;
        }
        fine = fine && cudaEventRecordWithFlags(e1, st, cudaEventRecordExternal) == cudaSuccess;
        fine = cudaStreamEndCapture(st, &graph) == cudaSuccess && fine;
        ok[i] = fine && cudaGraphInstantiate(&ex[i], graph, 0) == cudaSuccess;
        if (graph)
            cudaGraphDestroy(graph);
        if (!ok[i])
            cudaGetLastError(); /* (a candidate that cannot be captured is left out) */
    }
    for (int rep = 0; rep < TUNE_ROUNDS; rep++)
        for (int i = 0; i < found; i++) {
            if (!ok[i])
                continue;
            ok[i] = cudaGraphLaunch(ex[i], st) == cudaSuccess;
            float ms = 0;
            if (ok[i] && cudaEventSynchronize(e1) == cudaSuccess && cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess &&
                rep > 0 && ms / batch < fastest[i])
                fastest[i] = ms / batch;
        }
    for (int i = 0; i < found; i++)
        if (ex[i])
            cudaGraphExecDestroy(ex[i]);
    int best = 0;
    for (int i = 1; i < found; i++)
        if (ok[i] && (!ok[best] || fastest[i] < fastest[best]))
            best = i;
    /* HSTU_GEMM_TUNE_LOG=1: every candidate's time, the choice starred (docs/cuda.md) */
    if (getenv("HSTU_GEMM_TUNE_LOG"))
        for (int i = 0; i < found; i++) {
            int tile = -1, stages = -1, algo_id = -1;
            size_t w;
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages,
                                                 &w);
            cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_ID, &algo_id, sizeof algo_id, &w);
            fprintf(stderr, "gemm tune M %d N %d K %d: %d algo %d tile %d stages %d: %.2f us (batch %d)%s\n", M, N,
                    K, i, algo_id, tile, stages, fastest[i] * 1e3, batch, i == best ? " *" : "");
        }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess)
        return fail(why, n, cudaGetErrorString(ce), (int)ce);
    int waits = 0;
    if (g->graph_pdl) {
        probe_call pc = {g, &c, &res[best].algo, A, B, C, beta};
        gemm_pdl_operands op = {(bf16_t *)A, M, K, lda, C, N, ldc, c_f32};
        char pwhy[160];
        waits = gemm_pdl_probe(&op, probe_launch, &pc, st, pwhy, sizeof pwhy);
        if (waits < 0) /* the probe could not run: its edges stay plain, the GEMM is as good */
            waits = 0;
        g->probed++;
        g->passed += waits;
    }
    gemm_entry *t = &g->tuned[g->n_tuned++];
    t->key = c.key;
    t->algo = res[best].algo;
    t->waits = waits;
    remember(g, &c.key, &res[best].algo, waits);
    return 0;
}

void gemm_cuda_tune_cold(gemm_cuda *g, const void *region, size_t bytes)
{
    g->cold = ((uintptr_t)region & 255) ? NULL : (const char *)region;
    g->cold_bytes = g->cold ? bytes : 0;
}

void gemm_cuda_set_graph_pdl(gemm_cuda *g, int on) { g->graph_pdl = on != 0; }

int gemm_cuda_graph_edges(gemm_cuda *g, void *graph) { return gemm_pdl_apply(&g->edges, (cudaGraph_t)graph); }

void gemm_cuda_pdl_counts(const gemm_cuda *g, int *probed, int *passed, int *edges)
{
    *probed = g->probed;
    *passed = g->passed;
    *edges = g->edges.applied;
}
