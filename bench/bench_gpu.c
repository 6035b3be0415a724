/* bench_gpu.c - the CUDA backend's full forward on the bench-8x1024 preset.
 *
 * For batch 1 and 8 users of 1024, 2048 and 4096 history tokens (512, 1024,
 * 2048 item/action pairs) and 256 candidates each, times hstu_engine_run with
 * backend cuda (random weights, no cache): warm-up, then the median of
 * repeated runs, bracketed by CUDA events (the call is synchronous, so this
 * is the end-to-end latency a caller sees: staging, every launch, the copy
 * back). Beside it:
 *   - the useful FLOPs (GEMMs, and attention over the visible pairs only)
 *     and the achieved TFLOP/s;
 *   - two ceilings measured in the same process: a large bf16 GEMM through
 *     cuBLASLt (8192^3) and a device-to-device copy (1 GiB, read + write);
 *   - the floor: max(FLOPs / GEMM ceiling, minimal bytes / copy ceiling),
 *     minimal bytes being the weights and the embedding rows read once;
 *   - where the time goes: each stage of the forward timed alone on the same
 *     shapes (GEMMs, attention, row-wise kernels), summed over the layers;
 *   - per kernel, for the 4096+256 cases: time, and TFLOP/s or TB/s;
 *   - the GEMM shapes swept over cuBLASLt's candidate algorithms (does its
 *     heuristic's first choice leave time on the table?).
 * Every timed buffer holds random data (never zeros or constants).
 *
 * Build: scripts/gpu_pack.sh (links against build/libhstu.a).
 * Usage: bench_gpu [--iters N] [--warmup N] [--quick] [--gemm M[,M...]]
 */
#include "hstu.h"
#include "kernels/attention_cuda.h"
#include "kernels/dense_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/gemm_fused_cuda.h"
#include "kernels/pdl_cuda.h"
#include "trace_print.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANDS 256
#define MAX_B 8

static const int hist_tokens[] = {1024, 2048, 4096};
static const int batches[] = {1, 8};

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_gpu: %s: %s\n", what, msg);
    exit(1);
}

static void cuda_ok(cudaError_t e, const char *what)
{
    if (e != cudaSuccess)
        die(what, cudaGetErrorString(e));
}

/* ---- random device buffers ---------------------------------------------- */

static uint64_t g_seed = 88172645463325252ull;

static float rnd_unit(void) /* uniform in [-1, 1) */
{
    g_seed ^= g_seed << 13, g_seed ^= g_seed >> 7, g_seed ^= g_seed << 17;
    return (float)((int32_t)(g_seed >> 40) - 0x800000) / (float)0x800000;
}

/* n elements of random values in [-1, 1): fp32 (f32) or bf16. */
static void *dev_rand(size_t n, int f32)
{
    size_t es = f32 ? 4 : 2, chunk = (size_t)16 << 20;
    void *p = NULL;
    cuda_ok(cudaMalloc(&p, n * es), "cudaMalloc");
    unsigned char *h = malloc(chunk * es);
    if (!h)
        die("malloc", "out of host memory");
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        for (size_t i = 0; i < m; i++) {
            float v = rnd_unit();
            uint32_t u;
            memcpy(&u, &v, 4);
            if (f32)
                memcpy(h + 4 * i, &u, 4);
            else {
                uint16_t b = (uint16_t)(u >> 16);
                memcpy(h + 2 * i, &b, 2);
            }
        }
        cuda_ok(cudaMemcpy((char *)p + off * es, h, m * es, cudaMemcpyHostToDevice), "fill");
    }
    free(h);
    return p;
}

/* ---- timing ------------------------------------------------------------- */

/* Median ms of `iters` timed calls of fn(arg) on `stream`, after `warmup`. */
typedef void (*timed_fn)(void *arg);
static float time_median(timed_fn fn, void *arg, cudaStream_t stream, int warmup, int iters)
{
    cudaEvent_t a, b;
    cuda_ok(cudaEventCreate(&a), "event");
    cuda_ok(cudaEventCreate(&b), "event");
    float *t = malloc(sizeof(float) * iters);
    for (int i = 0; i < warmup; i++)
        fn(arg);
    for (int i = 0; i < iters; i++) {
        cuda_ok(cudaEventRecord(a, stream), "event record");
        fn(arg);
        cuda_ok(cudaEventRecord(b, stream), "event record");
        cuda_ok(cudaEventSynchronize(b), "event sync");
        cuda_ok(cudaEventElapsedTime(&t[i], a, b), "event time");
    }
    qsort(t, iters, sizeof *t, cmp_float);
    float med = t[iters / 2];
    free(t);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return med;
}

/* ---- ceilings ------------------------------------------------------------ */

typedef struct gemm_arg {
    gemm_cuda *g;
    int M, N, K, c_f32;
    void *A, *B, *C;
    float beta;
    cudaStream_t s;
} gemm_arg;

static void run_gemm(void *p)
{
    gemm_arg *a = p;
    char why[256];
    if (gemm_cuda_run(a->g, a->M, a->N, a->K, a->A, a->K, a->B, a->N, 0, a->beta, a->C, a->c_f32, a->N,
                      GEMM_EPI_NONE, NULL, a->s, why, sizeof why))
        die("gemm", why);
}

typedef struct copy_arg {
    void *dst, *src;
    size_t bytes;
    cudaStream_t s;
} copy_arg;

static void run_copy(void *p)
{
    copy_arg *a = p;
    cuda_ok(cudaMemcpyAsync(a->dst, a->src, a->bytes, cudaMemcpyDeviceToDevice, a->s), "copy");
}

/* ---- the engine ------------------------------------------------------------ */

typedef struct engine_arg {
    hstu_engine *e;
    hstu_request *reqs;
    hstu_result *res;
    int B;
} engine_arg;

static void run_engine(void *p)
{
    engine_arg *a = p;
    hstu_error err = {0};
    if (hstu_engine_run(a->e, a->reqs, a->B, a->res, false, &err) != HSTU_OK)
        die("hstu_engine_run", err.msg);
}

/* ---- stages and kernels alone -------------------------------------------- */

enum { K_EMBED, K_LN, K_UVQK, K_SILU, K_ATTN, K_LNMUL, K_PROJ, K_PROJ_F32, K_LN_F32, N_KERNELS,
       K_ALL_GEMM = N_KERNELS, K_ALL_ROWS, K_ALL_ATTN };

typedef struct stage_arg {
    int kind, reps; /* what to run, how many times (layers) */
    int T, d, W, vw;
    gemm_cuda *g;
    attn_cuda_params ap;
    float *x;
    bf16_t *x16, *xn, *uvqk, *attn, *y, *w_uvqk, *w_proj, *emb, *pos;
    int *rows, *positions;
    float *ln_w, *ln_b, *bias;
    cudaStream_t s;
} stage_arg;

static void gemm_or_die(int rc, const char *why)
{
    if (rc)
        die("gemm", why);
}

static void run_kernel(stage_arg *a, int kind)
{
    char why[256];
    switch (kind) {
    case K_EMBED: /* the forward's: bf16 x and layer 0's LayerNorm in one pass */
        cuda_ok((cudaError_t)embed_ln_cuda(a->T, a->d, a->emb, a->d, a->rows, a->pos, a->d, a->positions, 32.0f,
                                           a->x16, 0, a->d, a->ln_w, a->ln_b, 1e-5f, a->xn, a->d, a->s),
                "embed");
        break;
    case K_LN: /* bf16 x (the default residual) */
        cuda_ok((cudaError_t)layernorm_bf16_cuda(a->T, a->d, a->x16, a->d, a->ln_w, a->ln_b, 1e-5f, a->xn, a->d,
                                                 a->s),
                "layernorm");
        break;
    case K_LN_F32:
        cuda_ok((cudaError_t)layernorm_cuda(a->T, a->d, a->x, a->d, a->ln_w, a->ln_b, 1e-5f, a->xn, a->d, a->s),
                "layernorm");
        break;
    case K_UVQK:
        gemm_or_die(gemm_cuda_run(a->g, a->T, a->W, a->d, a->xn, a->d, a->w_uvqk, a->W, 0, 0.0f, a->uvqk, 0, a->W,
                                  GEMM_EPI_NONE, NULL, a->s, why, sizeof why),
                    why);
        break;
    case K_SILU:
        /* v|k, the last half of the backend's u|q|v|k columns (q is activated in the attention) */
        cuda_ok((cudaError_t)bias_silu_cuda(a->T, a->W / 2, a->uvqk + a->W / 2, a->W, a->bias, 1, NULL, NULL, a->s),
                "bias_silu");
        break;
    case K_ATTN: cuda_ok((cudaError_t)attn_fwd_cuda(&a->ap, a->s), "attention"); break;
    case K_LNMUL:
        cuda_ok((cudaError_t)ln_mul_cuda(a->T, a->vw, a->attn, a->vw, a->uvqk, a->W, a->bias, NULL, a->ln_w, a->ln_b,
                                         1e-5f, a->y, a->vw, a->s),
                "ln_mul");
        break;
    case K_PROJ: /* into the bf16 residual (the default) */
        gemm_or_die(gemm_cuda_run(a->g, a->T, a->d, a->vw, a->y, a->vw, a->w_proj, a->d, 0, 1.0f, a->x16, 0, a->d,
                                  GEMM_EPI_NONE, NULL, a->s, why, sizeof why),
                    why);
        break;
    case K_PROJ_F32: /* the same into an fp32 residual (HSTU_CUDA_RESIDUAL=f32), for comparison */
        gemm_or_die(gemm_cuda_run(a->g, a->T, a->d, a->vw, a->y, a->vw, a->w_proj, a->d, 0, 1.0f, a->x, 1, a->d,
                                  GEMM_EPI_NONE, NULL, a->s, why, sizeof why),
                    why);
        break;
    }
}

static void run_stage(void *p)
{
    stage_arg *a = p;
    for (int l = 0; l < a->reps; l++) {
        if (a->kind == K_ALL_GEMM) {
            run_kernel(a, K_UVQK);
            run_kernel(a, K_PROJ);
        } else if (a->kind == K_ALL_ROWS) {
            run_kernel(a, K_LN);
            run_kernel(a, K_SILU);
            run_kernel(a, K_LNMUL);
        } else if (a->kind == K_ALL_ATTN) {
            run_kernel(a, K_ATTN);
        } else {
            run_kernel(a, a->kind);
        }
    }
}

/* ---- cuBLASLt algorithm sweep -------------------------------------------- */

typedef struct sweep_arg {
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    const cublasLtMatmulAlgo_t *algo;
    void *A, *B, *C, *ws;
    size_t ws_bytes;
    float beta;
    cudaStream_t s;
    int failed;
} sweep_arg;

static void run_sweep(void *p)
{
    sweep_arg *a = p;
    float alpha = 1.0f;
    if (cublasLtMatmul(a->lt, a->desc, &alpha, a->B, a->la, a->A, a->lb, &a->beta, a->C, a->lc, a->C, a->lc, a->algo,
                       a->ws, a->ws_bytes, a->s) != CUBLAS_STATUS_SUCCESS)
        a->failed = 1;
}

/* Row-major C[M,N] (+)= A[M,K] @ B[K,N]: times every algorithm cuBLASLt's
 * heuristic offers (up to 32) and prints the first choice and the best; with
 * `detail`, every candidate with its tile, stages and split-K, plus each
 * split-K variant (2, 3, 4) of the candidates that allow one. A time is the
 * median over `iters` of the mean of 20 calls in a CUDA graph, so that host
 * time and the events do not dominate the few-microsecond shapes. */
typedef struct graph_arg {
    cudaGraphExec_t exec;
    cudaStream_t s;
} graph_arg;

static void run_graph(void *p)
{
    graph_arg *g = p;
    cuda_ok(cudaGraphLaunch(g->exec, g->s), "cudaGraphLaunch");
}

/* Median ms of one call of fn(arg), timed as 20 calls captured in a CUDA
 * graph: cuBLASLt's host time per call (several us) would otherwise be
 * what is measured for the small shapes. */
static float time_graph20(timed_fn fn, void *arg, cudaStream_t s, int iters)
{
    cudaGraph_t graph;
    graph_arg g = {NULL, s};
    cuda_ok(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "capture");
    for (int i = 0; i < 20; i++)
        fn(arg);
    cuda_ok(cudaStreamEndCapture(s, &graph), "capture");
    cuda_ok(cudaGraphInstantiate(&g.exec, graph, 0), "instantiate");
    float ms = time_median(run_graph, &g, s, 1, iters) / 20.0f;
    cudaGraphExecDestroy(g.exec);
    cudaGraphDestroy(graph);
    return ms;
}

static int algo_attr(const cublasLtMatmulAlgo_t *a, cublasLtMatmulAlgoConfigAttributes_t which)
{
    int32_t v = 0;
    size_t got = 0;
    cublasLtMatmulAlgoConfigGetAttribute(a, which, &v, sizeof v, &got);
    return (int)v;
}

static void sweep(const char *name, int M, int N, int K, int c_f32, float beta, cudaStream_t s, int iters,
                  int detail)
{
    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS)
        die("cublasLtCreate", "failed");
    size_t ws_bytes = (size_t)32 << 20;
    void *ws = NULL;
    cuda_ok(cudaMalloc(&ws, ws_bytes), "cudaMalloc");
    void *A = dev_rand((size_t)M * K, 0), *B = dev_rand((size_t)K * N, 0), *C = dev_rand((size_t)M * N, c_f32);
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, N, K, N);
    cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K);
    cublasLtMatrixLayoutCreate(&lc, c_f32 ? CUDA_R_32F : CUDA_R_16BF, N, M, N);
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes);
    cublasLtMatmulHeuristicResult_t res[32];
    int found = 0;
    cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 32, res, &found);
    double flops = 2.0 * M * (double)N * K;
    float first = 0, best = 1e30f;
    int best_i = -1;
    char best_cfg[96] = "";
    for (int i = 0; i < found; i++) {
        for (int split = 1; split <= (detail ? 4 : 1); split++) {
            cublasLtMatmulAlgo_t algo = res[i].algo;
            if (split > 1) {
                if (algo_attr(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) > 1)
                    break; /* the heuristic's own split-K choice */
                int32_t sk = split;
                uint32_t red = CUBLASLT_REDUCTION_SCHEME_INPLACE;
                cublasLtMatmulHeuristicResult_t chk;
                if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &sk, sizeof sk) ||
                    cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red,
                                                         sizeof red) ||
                    cublasLtMatmulAlgoCheck(lt, desc, la, lb, lc, lc, &algo, &chk) ||
                    chk.workspaceSize > ws_bytes)
                    continue;
            }
            sweep_arg sa = {lt, desc, la, lb, lc, &algo, A, B, C, ws, ws_bytes, beta, s, 0};
            float ms = time_graph20(run_sweep, &sa, s, iters);
            if (sa.failed)
                continue;
            char cfg[96];
            snprintf(cfg, sizeof cfg, "id %d tile %d stages %d split-K %d red %d swizzle %d", 
                     algo_attr(&algo, CUBLASLT_ALGO_CONFIG_ID), algo_attr(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                     algo_attr(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                     algo_attr(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                     algo_attr(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
                     algo_attr(&algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING));
            if (detail)
                printf("    #%-2d %8.4f ms %5.0f TFLOP/s  %s\n", i, ms, flops / (ms * 1e-3) / 1e12, cfg);
            if (i == 0 && split == 1)
                first = ms;
            if (ms < best)
                best = ms, best_i = i, snprintf(best_cfg, sizeof best_cfg, "%s", cfg);
        }
    }
    printf("%-22s %6d %5d %5d %-4s %3d algos: first %.4f ms (%.0f TFLOP/s), best #%d %.4f ms (%.0f TFLOP/s) %s\n",
           name, M, N, K, c_f32 ? "f32" : "bf16", found, first, flops / (first * 1e-3) / 1e12, best_i, best,
           flops / (best * 1e-3) / 1e12, best_cfg);
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(desc);
    cudaFree(A), cudaFree(B), cudaFree(C), cudaFree(ws);
    cublasLtDestroy(lt);
}

/* The uvqk projection with its v|k epilogue (bias + SiLU on the last half of
 * the columns), two ways: cuBLASLt's GEMM (its heuristic's choice, tuned as
 * the backend tunes it) then the bias_silu pass; the fused kernel at each
 * tile width, alone and in clusters of two CTAs sharing W's loads. Each
 * timed as 20 calls in a CUDA graph. */
typedef struct fused_arg {
    gemm_cuda *g;
    int M, N, K, bm, bn, cl;
    bf16_t *A, *W, *C;
    float *bias;
    cudaStream_t s;
} fused_arg;

static void run_cublas_silu(void *p)
{
    fused_arg *a = p;
    char why[256];
    if (gemm_cuda_run(a->g, a->M, a->N, a->K, a->A, a->K, a->W, a->N, 0, 0.0f, a->C, 0, a->N, GEMM_EPI_NONE, NULL,
                      a->s, why, sizeof why))
        die("gemm", why);
    cuda_ok((cudaError_t)bias_silu_cuda(a->M, a->N / 2, a->C + a->N / 2, a->N, a->bias + a->N / 2, 1, NULL, NULL, a->s),
            "bias_silu");
}

static void run_fused(void *p)
{
    fused_arg *a = p;
    gemm_fused_epilogue e = {a->bias, a->N / 2, 1, NULL, 0};
    gemm_fused_force_tile(a->bm, a->bn, a->cl);
    cuda_ok((cudaError_t)gemm_fused_cuda(a->M, a->N, a->K, a->A, a->K, a->W, a->N, a->C, a->N, &e, a->s),
            "gemm_fused");
    gemm_fused_force_tile(0, 0, 0);
}

/* One traced call of the fused kernel queued right behind an untraced one
 * (as in a forward, with programmatic dependent launch), printed by
 * print_trace. */
static void trace_fused(fused_arg *a, int bm, int bn, int cl)
{
    const size_t n = 1024 * GEMM_FUSED_TRACE_POINTS;
    unsigned long long *d = NULL, *h = calloc(n, sizeof *h);
    cuda_ok(cudaMalloc((void **)&d, n * sizeof *d), "cudaMalloc");
    cudaMemset(d, 0, n * sizeof *d);
    a->bm = bm, a->bn = bn, a->cl = cl;
    run_fused(a);
    gemm_fused_set_trace(d);
    run_fused(a);
    gemm_fused_set_trace(NULL);
    cuda_ok(cudaStreamSynchronize(a->s), "traced gemm_fused");
    cudaMemcpy(h, d, n * sizeof *d, cudaMemcpyDeviceToHost);
    static const char *names[GEMM_FUSED_TRACE_POINTS] = {"start", "waited", "first slice", "loop done", "end"};
    char label[64];
    snprintf(label, sizeof label, "%d x %d, clusters of %d", bm, bn, cl);
    print_trace(label, h, 1024, GEMM_FUSED_TRACE_POINTS, names);
    cudaFree(d);
    free(h);
}

static void fused_vs_cublas(int M, int N, int K, cudaStream_t s, int iters)
{
    char why[256];
    fused_arg a = {NULL, M, N, K, 0, 0, 0, dev_rand((size_t)M * K, 0), dev_rand((size_t)K * N, 0),
                   dev_rand((size_t)M * N, 0), dev_rand(N, 1), s};
    if (gemm_cuda_create((size_t)32 << 20, &a.g, why, sizeof why) ||
        gemm_cuda_tune(a.g, M, N, K, a.A, K, a.W, N, 0, 0.0f, a.C, 0, N, GEMM_EPI_NONE, NULL, s, why, sizeof why))
        die("gemm_cuda", why);
    cuda_ok((cudaError_t)gemm_fused_prepare(), "gemm_fused_prepare");
    double fl = 2.0 * M * (double)N * K;
    float t0 = time_graph20(run_cublas_silu, &a, s, iters);
    printf("uvqk + v|k bias+SiLU   %6d %5d %5d: cuBLASLt + pass %.4f ms (%.0f TFLOP/s); fused:", M, N, K, t0,
           fl / (t0 * 1e-3) / 1e12);
    static const int shapes[][3] = {{128, 128, 1}, {128, 128, 2}, {128, 256, 1}, {128, 256, 2}, {96, 128, 1}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        a.bm = shapes[k][0], a.bn = shapes[k][1], a.cl = shapes[k][2];
        float t = time_graph20(run_fused, &a, s, iters);
        printf(" %d x %d%s %.4f ms (%.0f);", a.bm, a.bn, a.cl > 1 ? " in pairs" : "", t, fl / (t * 1e-3) / 1e12);
    }
    int bm = 0, bn = 0, cl = 0;
    gemm_fused_tile(M, N, &bm, &bn, &cl);
    printf(" the backend's choice: %d x %d, clusters of %d\n", bm, bn, cl);
    trace_fused(&a, 128, 128, 1);
    trace_fused(&a, 96, 128, 1);
    gemm_cuda_destroy(a.g);
    cudaFree(a.A), cudaFree(a.W), cudaFree(a.C), cudaFree(a.bias);
}

int main(int argc, char **argv)
{
    int iters = 20, warmup = 3;
    bool quick = false;
    const char *gemm_ms_list = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--gemm") && i + 1 < argc)
            gemm_ms_list = argv[++i];
        else {
            fprintf(stderr, "usage: bench_gpu [--iters N] [--warmup N] [--quick] [--gemm M[,M...]]\n"
                            "  --gemm: only sweep cuBLASLt's algorithms (and their split-K variants)\n"
                            "          for the layer GEMMs at these row counts, every candidate shown\n");
            return 2;
        }
    }
    if (iters < 1)
        iters = 1;
    hstu_error err = {0};
    hstu_config cfg;
    if (hstu_config_preset("bench-8x1024", &cfg, &err) != HSTU_OK)
        die("preset", err.msg);
    int d = cfg.d_model, L = cfg.n_layers, H = cfg.n_heads, W = hstu_config_uvqk_width(&cfg);
    int vw = H * cfg.d_v;
    struct cudaDeviceProp prop;
    cuda_ok(cudaGetDeviceProperties(&prop, 0), "device properties");
    cudaStream_t s;
    cuda_ok(cudaStreamCreate(&s), "stream");
    if (gemm_ms_list) {
        printf("device: %s, %d SMs; cuBLASLt algorithms (row-major C[M,N] = A[M,K] @ B[K,N]):\n", prop.name,
               prop.multiProcessorCount);
        for (const char *p = gemm_ms_list; *p;) {
            int M = atoi(p);
            if (M < 1)
                die("--gemm", "expected row counts such as 384,1024");
            sweep("uvqk", M, W, d, 0, 0.0f, s, 5, 1);
            fused_vs_cublas(M, W, d, s, 5);
            sweep("proj, f32 residual", M, d, vw, 1, 1.0f, s, 5, 1);
            sweep("proj, bf16 residual", M, d, vw, 0, 1.0f, s, 5, 1);
            p = strchr(p, ',');
            if (!p)
                break;
            p++;
        }
        return 0;
    }

    /* Ceilings. */
    gemm_cuda *g = NULL;
    char why[256];
    if (gemm_cuda_create((size_t)32 << 20, &g, why, sizeof why))
        die("gemm_cuda_create", why);
    int n = 8192;
    gemm_arg ga = {g, n, n, n, 0, dev_rand((size_t)n * n, 0), dev_rand((size_t)n * n, 0),
                   dev_rand((size_t)n * n, 0), 0.0f, s};
    float gemm_ms = time_median(run_gemm, &ga, s, 3, 10);
    double gemm_tflops = 2.0 * n * n * (double)n / (gemm_ms * 1e-3) / 1e12;
    cudaFree(ga.A), cudaFree(ga.B), cudaFree(ga.C);
    size_t cb = (size_t)1 << 30;
    copy_arg ca = {dev_rand(cb / 2, 0), dev_rand(cb / 2, 0), cb, s};
    float copy_ms = time_median(run_copy, &ca, s, 3, 10);
    double copy_tbs = 2.0 * cb / (copy_ms * 1e-3) / 1e12;
    cudaFree(ca.dst), cudaFree(ca.src);
    printf("device: %s, %d SMs; ceilings: bf16 GEMM %d^3 %.0f TFLOP/s (cuBLASLt), device copy %.2f TB/s "
           "(read + write)\n",
           prop.name, prop.multiProcessorCount, n, gemm_tflops, copy_tbs);

    /* The model and one engine sized for the largest case. */
    hstu_model *m = NULL;
    if (hstu_model_create_random(&cfg, 1, &m, &err) != HSTU_OK)
        die("model", err.msg);
    int max_tok = MAX_B * (hist_tokens[2] + CANDS);
    hstu_engine_options eo;
    hstu_engine_options_default(&eo);
    eo.backend = HSTU_BACKEND_CUDA;
    eo.use_cache = false;
    eo.max_batch_tokens = max_tok;
    hstu_engine *e = NULL;
    if (hstu_engine_create(m, &eo, &e, &err) != HSTU_OK)
        die("engine", err.msg);
    /* Engines with the backend's other settings, timed beside the default on
     * the 4096+256 cases: a variable the backend reads at create (var_env,
     * set around the engine's create), or the programmatic dependent launch
     * switch (var_pdl: 0 or 1, -1 leaves it), which every launch reads, so
     * it is set around the variant's runs (where its graphs are captured)
     * through cuda_pdl_set; HSTU_CUDA_PDL is read once per process. */
    static const char *var_name[] = {"fp32 residual (HSTU_CUDA_RESIDUAL=f32)",
                                     "fused uvqk GEMM (HSTU_CUDA_FUSED_GEMM=1)", "PDL off (HSTU_CUDA_PDL=0)"};
    static const char *var_env[][2] = {{"HSTU_CUDA_RESIDUAL", "f32"}, {"HSTU_CUDA_FUSED_GEMM", "1"}, {NULL, NULL}};
    static const int var_pdl[] = {-1, -1, 0};
    enum { N_VAR = sizeof var_name / sizeof var_name[0] };
    const int pdl = cuda_pdl_on(); /* the default engine's setting */
    hstu_engine *ev[N_VAR];
    for (int v = 0; v < N_VAR; v++) {
        if (var_env[v][0])
            setenv(var_env[v][0], var_env[v][1], 1);
        if (hstu_engine_create(m, &eo, &ev[v], &err) != HSTU_OK)
            die("engine", err.msg);
        if (var_env[v][0])
            unsetenv(var_env[v][0]);
    }

    int max_items = hist_tokens[2] / 2;
    int64_t *items = malloc(sizeof(int64_t) * max_items), *actions = malloc(sizeof(int64_t) * max_items);
    int64_t *cands = malloc(sizeof(int64_t) * CANDS);
    uint64_t r = 12345;
    for (int i = 0; i < max_items; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        items[i] = (int64_t)((r >> 33) % (uint64_t)cfg.item_rows);
        actions[i] = (int64_t)((r >> 20) % (uint64_t)cfg.action_rows);
    }
    for (int i = 0; i < CANDS; i++)
        cands[i] = (int64_t)((i * 7919 + 13) % cfg.item_rows);
    hstu_request reqs[MAX_B];
    hstu_result res[MAX_B];
    float *scores = malloc(sizeof(float) * MAX_B * CANDS * cfg.n_tasks);

    /* Buffers for the stages timed alone (the largest case). */
    stage_arg sa = {.g = g, .d = d, .W = W, .vw = vw, .s = s};
    sa.x = dev_rand((size_t)max_tok * d, 1);
    sa.x16 = dev_rand((size_t)max_tok * d, 0);
    sa.xn = dev_rand((size_t)max_tok * d, 0);
    sa.uvqk = dev_rand((size_t)max_tok * W, 0);
    sa.attn = dev_rand((size_t)max_tok * vw, 0);
    sa.y = dev_rand((size_t)max_tok * vw, 0);
    sa.w_uvqk = dev_rand((size_t)d * W, 0);
    sa.w_proj = dev_rand((size_t)vw * d, 0);
    sa.emb = dev_rand((size_t)1000 * d, 0);
    sa.pos = dev_rand((size_t)(hist_tokens[2] + 1) * d, 0);
    sa.ln_w = dev_rand((size_t)W, 1);
    sa.ln_b = dev_rand((size_t)W, 1);
    sa.bias = dev_rand((size_t)W, 1);
    int *h_rows = malloc(sizeof(int) * max_tok), *h_pos = malloc(sizeof(int) * max_tok);
    for (int i = 0; i < max_tok; i++)
        h_rows[i] = (i * 37) % 1000, h_pos[i] = i % (hist_tokens[2] + 1);
    cuda_ok(cudaMalloc((void **)&sa.rows, sizeof(int) * max_tok), "cudaMalloc");
    cuda_ok(cudaMalloc((void **)&sa.positions, sizeof(int) * max_tok), "cudaMalloc");
    cuda_ok(cudaMemcpy(sa.rows, h_rows, sizeof(int) * max_tok, cudaMemcpyHostToDevice), "copy");
    cuda_ok(cudaMemcpy(sa.positions, h_pos, sizeof(int) * max_tok, cudaMemcpyHostToDevice), "copy");
    /* GEMM tuning as the engine does at create (src/cuda/cuda_backend.cu), at
     * the row counts of the cases below; with B warm, since the stage loops
     * below call the same weights again and again */
    for (int i = 0; i < 6; i++) {
        int M = batches[i / 3] * (hist_tokens[i % 3] + CANDS);
        if (gemm_cuda_tune(g, M, W, d, sa.xn, d, sa.w_uvqk, W, 0, 0.0f, sa.uvqk, 0, W, GEMM_EPI_NONE, NULL, s, why,
                           sizeof why) ||
            gemm_cuda_tune(g, M, d, vw, sa.y, vw, sa.w_proj, d, 0, 1.0f, sa.x, 1, d, GEMM_EPI_NONE, NULL, s, why,
                           sizeof why) ||
            gemm_cuda_tune(g, M, d, vw, sa.y, vw, sa.w_proj, d, 0, 1.0f, sa.x16, 0, d, GEMM_EPI_NONE, NULL, s, why,
                           sizeof why))
            die("gemm_cuda_tune", why);
    }
    attn_cuda_seq *h_seqs = malloc(sizeof(attn_cuda_seq) * MAX_B);
    attn_cuda_seq *d_seqs = NULL;
    cuda_ok(cudaMalloc((void **)&d_seqs, sizeof(attn_cuda_seq) * MAX_B), "cudaMalloc");

    printf("\n%-5s %-10s %7s %9s %8s %8s %8s %7s | %7s %7s %7s\n", "batch", "tokens", "rows", "median_ms",
           "TFLOP", "TFLOP/s", "floor_ms", "floor%", "gemm_ms", "attn_ms", "rows_ms");
    int n_hist = quick ? 1 : 3;
    char detail[2][4096], variants[2][1024];
    int nvar[2] = {0, 0};
    for (int bi = 0; bi < 2; bi++)
        for (int hi = 3 - n_hist; hi < 3; hi++) {
            int B = batches[bi], ht = hist_tokens[hi], n_items = ht / 2;
            for (int b = 0; b < B; b++) {
                reqs[b] = (hstu_request){.user_id = b + 1, .n_items = n_items, .items = items, .actions = actions,
                                         .n_candidates = CANDS, .candidates = cands};
                memset(&res[b], 0, sizeof res[b]);
                res[b].scores = scores + (size_t)b * CANDS * cfg.n_tasks;
            }
            engine_arg ea = {e, reqs, res, B};
            float ms = time_median(run_engine, &ea, s, warmup, iters);
            int T = B * (ht + CANDS);
            /* useful work: GEMMs on every row, attention on visible pairs */
            double pairs = (double)ht * (ht + 1) / 2 + (double)CANDS * (ht + 1);
            double gemm_fl = (double)T * (2.0 * d * W + 2.0 * vw * d);
            double attn_fl = B * pairs * H * 2.0 * (cfg.d_qk + cfg.d_v);
            double flops = L * (gemm_fl + attn_fl);
            flops += (double)B * CANDS * 2.0 * (d * cfg.hidden[0] + cfg.hidden[0] * cfg.n_tasks);
            double bytes = L * 2.0 * ((double)d * W + (double)vw * d) + (double)T * d * 2 * 2; /* weights, rows */
            double floor_ms = fmax(flops / (gemm_tflops * 1e12), bytes / (copy_tbs * 1e12)) * 1e3;
            /* stages alone, on this case's shapes */
            sa.T = T;
            for (int b = 0; b < B; b++)
                h_seqs[b] = (attn_cuda_seq){.hist = ht, .cand = CANDS, .q0 = b * (ht + CANDS)};
            cuda_ok(cudaMemcpy(d_seqs, h_seqs, sizeof(attn_cuda_seq) * B, cudaMemcpyHostToDevice), "seqs");
            sa.ap = (attn_cuda_params){.B = B, .H = H, .Dqk = cfg.d_qk, .Dv = cfg.d_v, .seqs = d_seqs,
                                       .max_rows = ht + CANDS, .q = sa.uvqk + 2 * vw,
                                       .k = sa.uvqk + 2 * vw + H * cfg.d_qk, .v = sa.uvqk + vw, .ld_qkv = W,
                                       .n_rows = B * (ht + CANDS), .page_size = 1, .alpha = cfg.alpha,
                                       .N = cfg.attn_scale_len,
                                       .out = sa.attn, .ld_out = vw};
            float st_ms[3];
            int kinds[3] = {K_ALL_GEMM, K_ALL_ATTN, K_ALL_ROWS};
            for (int k = 0; k < 3; k++) {
                sa.kind = kinds[k];
                sa.reps = L;
                st_ms[k] = time_median(run_stage, &sa, s, 2, iters);
            }
            printf("%-5d %4d+%-5d %7d %9.3f %8.2f %8.1f %8.3f %6.0f%% | %7.3f %7.3f %7.3f\n", B, ht, CANDS, T, ms,
                   flops / 1e12, flops / (ms * 1e-3) / 1e12, floor_ms, 100.0 * floor_ms / ms, st_ms[0], st_ms[1],
                   st_ms[2]);
            fflush(stdout);
            if (hi != 2)
                continue;
            for (int v = 0; v < N_VAR; v++) {
                engine_arg va = {ev[v], reqs, res, B};
                if (var_pdl[v] >= 0)
                    cuda_pdl_set(var_pdl[v]);
                float vms = time_median(run_engine, &va, s, warmup, iters);
                cuda_pdl_set(pdl);
                nvar[bi] += snprintf(variants[bi] + nvar[bi], sizeof variants[bi] - nvar[bi],
                                     "  %-40s %8.3f ms (default %.3f ms)\n", var_name[v], vms, ms);
            }
            /* per kernel, one call each (a layer's worth) */
            static const char *names[N_KERNELS] = {
                "embed + LN (bf16 x)", "layernorm (bf16 x)", "uvqk GEMM",         "bias+SiLU v|k",
                "attention",           "SiLU(u)*LN(attn)",   "proj GEMM (bf16 x)", "proj GEMM (f32 x)",
                "layernorm (f32 x)"};
            double kb[N_KERNELS] = {
                (double)T * d * (2 + 2 + 2 + 2), (double)T * d * (2 + 2), 0, 2.0 * T * (W / 2) * 2, 0,
                (double)T * vw * 2 * 3,          0,                       0, (double)T * d * (4 + 2),
            };
            double kf[N_KERNELS] = {0, 0, (double)T * 2.0 * d * W, 0, attn_fl, 0, (double)T * 2.0 * vw * d,
                                    (double)T * 2.0 * vw * d, 0};
            int len = snprintf(detail[bi], sizeof detail[bi], "batch %d, %d+%d tokens (T = %d), one call each:\n",
                               B, ht, CANDS, T);
            for (int k = 0; k < N_KERNELS; k++) {
                sa.kind = k;
                sa.reps = 1;
                float t = time_median(run_stage, &sa, s, 2, iters);
                if (kf[k] > 0)
                    len += snprintf(detail[bi] + len, sizeof detail[bi] - len, "  %-20s %8.3f ms %7.0f TFLOP/s\n",
                                    names[k], t, kf[k] / (t * 1e-3) / 1e12);
                else
                    len += snprintf(detail[bi] + len, sizeof detail[bi] - len,
                                    "  %-20s %8.3f ms %7.2f TB/s (%.0f%% of copy)\n", names[k], t,
                                    kb[k] / (t * 1e-3) / 1e12, 100.0 * kb[k] / (t * 1e-3) / 1e12 / copy_tbs);
            }
        }
    printf("\n%s\n%s", detail[0], detail[1]);
    for (int bi = 0; bi < 2; bi++)
        if (nvar[bi])
            printf("\nbatch %d, %d+%d tokens, other settings, whole forward (default: PDL %s):\n%s", batches[bi],
                   hist_tokens[2], CANDS, pdl ? "on" : "off", variants[bi]);
    if (!quick) {
        printf("\ncuBLASLt algorithms (row-major C[M,N] = A[M,K] @ B[K,N]):\n");
        int Ms[2] = {MAX_B * (hist_tokens[2] + CANDS), hist_tokens[2] + CANDS};
        for (int i = 0; i < 2; i++) {
            sweep("uvqk", Ms[i], W, d, 0, 0.0f, s, 5, 0);
            sweep("proj, f32 residual", Ms[i], d, vw, 1, 1.0f, s, 5, 0);
            sweep("proj, bf16 residual", Ms[i], d, vw, 0, 1.0f, s, 5, 0);
        }
    }
    printf("\ntargets (issue, H100): batch 8 at 4096+256 <= 11 ms, batch 1 at 4096+256 <= 3 ms; "
           "Meta's reference: 16.7 ms (b8), 10.3 ms (b1)\n");
    hstu_engine_destroy(e);
    for (int v = 0; v < N_VAR; v++)
        hstu_engine_destroy(ev[v]);
    hstu_model_destroy(m);
    gemm_cuda_destroy(g);
    return 0;
}
