/* bench_cache_gpu.c - the GPU KV cache on the bench-8x1024 preset (issue 4).
 *
 * Three parts, each case the median of repeated hstu_engine_run calls
 * (synchronous: staging, every launch, the copy back), timed with CUDA
 * events, after warm-up; every user has 256 candidates:
 *   1. block: batch 1 and 8, total history L = 1024, 2048, 4096 tokens, of
 *      which 0, L/2, 3L/4, L-256, L-128 are cached on the GPU (NVIDIA's paged
 *      HSTU benchmark). Before each timed call every user's cache is cut
 *      back to the cached length (engine_cache_set), so each call computes
 *      exactly the new rows. Useful TFLOP/s and the floor:
 *      max(FLOPs / GEMM ceiling, bytes / copy ceiling), bytes = the weights
 *      plus the cached K/V read once per layer. median_ms is the whole
 *      request; stack_ms (its median) the GPU time from the embedding's
 *      start to the last layer's end, which is what NVIDIA's benchmark
 *      times (its HSTU block from embedded rows, metadata already on the
 *      GPU, calls back to back): no host planning, metadata copies, head
 *      or copy back.
 *   2. tiers: where the prefix (L - 128 rows) lives: GPU hit, host hit with
 *      the layer-wise overlap, host hit with every layer onloaded first, and
 *      miss; batch 1 and 8; L = 1024 .. 8192. Host chunks of 128 rows here
 *      so that the host holds the same prefix as the GPU. Beside each host
 *      hit: the PCIe floor (bytes moved / the measured host-to-device rate).
 *   3. end to end: users whose histories grow by 128 tokens (64
 *      item/action pairs) per request from 256 to 4096 tokens, batch
 *      1, 2, 4, 8, 16: the whole sequence of requests without cache and with
 *      the cache; the speedup.
 * Ceilings measured in the same process: bf16 GEMM 8192^3 (cuBLASLt), device
 * copy (1 GiB), pinned host-to-device copy (256 MiB).
 *
 * --profile B L C runs only one block case (batch B, history L, C cached),
 * warm, then once between cudaProfilerStart and cudaProfilerStop: for
 * `ncu --profile-from-start off`, which then times each kernel of that one
 * forward (PROFILE in scripts/gpu_check.sh). With HSTU_CUDA_PDL=0 in the
 * environment it runs with programmatic dependent launch off, as any engine
 * would; the line it prints says which. With HSTU_CUDA_ATTN_TRACE=l it then
 * prints the trace of layer l's attention in that forward (its CTAs'
 * phases; docs/attention_cuda.md).
 *
 * Build: scripts/gpu_pack.sh.
 * --attention runs part 0 only (the attention alone, with its split-KV
 * factors by hand); --tiers part 2 only; --e2e part 3 only.
 *
 * --profile B L C --host puts the C cached rows in the host tier instead
 * (a host hit that onloads every row, layer by layer).
 *
 * Usage: bench_cache_gpu [--iters N] [--quick] [--attention | --tiers | --e2e] |
 *        --profile B L C [--no-graphs] [--host]
 */
#include "hstu.h"
#include "kernels/attention_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/pdl_cuda.h"
#include "model/engine.h"
#include "trace_print.h"

#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANDS 256
#define MAX_B 16
#define MAX_TOK 8192

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "bench_cache_gpu: %s: %s\n", what, msg);
    exit(1);
}

static void cuda_ok(cudaError_t e, const char *what)
{
    if (e != cudaSuccess)
        die(what, cudaGetErrorString(e));
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float median(float *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    return v[n / 2];
}

/* ---- ceilings ------------------------------------------------------------- */

static void *dev_fill(size_t bytes)
{
    void *p = NULL;
    cuda_ok(cudaMalloc(&p, bytes), "cudaMalloc");
    cuda_ok(cudaMemset(p, 0x3c, bytes), "cudaMemset"); /* bf16 1.15: finite, not zero */
    return p;
}

/* Median ms of n copies (after 3 unmeasured), n <= 10. */
static float time_memcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, int n)
{
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    float t[10], ms;
    for (int i = 0; i < n + 3; i++) {
        cudaEventRecord(a, 0);
        cudaMemcpyAsync(dst, src, bytes, kind, 0);
        cudaEventRecord(b, 0);
        cudaEventSynchronize(b);
        cudaEventElapsedTime(&ms, a, b);
        if (i >= 3)
            t[i - 3] = ms;
    }
    cudaEventDestroy(a), cudaEventDestroy(b);
    return median(t, n);
}

typedef struct ceilings {
    double gemm_tflops, copy_tbs, h2d_gbs;
} ceilings;

static ceilings measure_ceilings(void)
{
    ceilings c;
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    float t[10], ms;
    gemm_cuda *g = NULL;
    char why[256];
    if (gemm_cuda_create((size_t)32 << 20, &g, why, sizeof why))
        die("gemm_cuda_create", why);
    int n = 8192;
    void *A = dev_fill((size_t)n * n * 2), *B = dev_fill((size_t)n * n * 2), *C = dev_fill((size_t)n * n * 2);
    for (int i = 0; i < 13; i++) {
        cudaEventRecord(a, 0);
        if (gemm_cuda_run(g, n, n, n, A, n, B, n, 0, 0.0f, C, 0, n, GEMM_EPI_NONE, NULL, 0, why, sizeof why))
            die("gemm", why);
        cudaEventRecord(b, 0);
        cudaEventSynchronize(b);
        cudaEventElapsedTime(&ms, a, b);
        if (i >= 3)
            t[i - 3] = ms;
    }
    c.gemm_tflops = 2.0 * n * n * (double)n / (median(t, 10) * 1e-3) / 1e12;
    cudaFree(A), cudaFree(B), cudaFree(C);
    gemm_cuda_destroy(g);
    size_t cb = (size_t)1 << 29;
    void *src = dev_fill(cb), *dst = dev_fill(cb);
    c.copy_tbs = 2.0 * cb / (time_memcpy(dst, src, cb, cudaMemcpyDeviceToDevice, 10) * 1e-3) / 1e12;
    void *h = NULL;
    size_t hb = (size_t)256 << 20;
    cuda_ok(cudaMallocHost(&h, hb), "cudaMallocHost");
    memset(h, 1, hb);
    c.h2d_gbs = hb / (time_memcpy(dst, h, hb, cudaMemcpyHostToDevice, 5) * 1e-3) / 1e9;
    cudaFreeHost(h), cudaFree(src), cudaFree(dst);
    cudaEventDestroy(a), cudaEventDestroy(b);
    return c;
}

/* ---- requests -------------------------------------------------------------- */

static int64_t g_items[MAX_B][MAX_TOK / 2], g_actions[MAX_B][MAX_TOK / 2], g_cands[CANDS];
static float g_scores[MAX_B][CANDS * 16];

static void make_histories(const hstu_config *cfg)
{
    uint64_t r = 12345;
    for (int b = 0; b < MAX_B; b++)
        for (int i = 0; i < MAX_TOK / 2; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            g_items[b][i] = (int64_t)((r >> 33) % (uint64_t)cfg->item_rows);
            g_actions[b][i] = (int64_t)((r >> 20) % (uint64_t)cfg->action_rows);
        }
    for (int i = 0; i < CANDS; i++)
        g_cands[i] = (int64_t)((i * 7919 + 13) % cfg->item_rows);
}

/* B users (ids base + b) with `tokens` history tokens each. */
static void make_batch(hstu_request *q, hstu_result *res, int B, int tokens, int64_t base)
{
    for (int b = 0; b < B; b++) {
        q[b] = (hstu_request){.user_id = base + b, .n_items = tokens / 2, .items = g_items[b],
                              .actions = g_actions[b], .n_candidates = CANDS, .candidates = g_cands};
        memset(&res[b], 0, sizeof res[b]);
        res[b].scores = g_scores[b];
    }
}

static float timed_run(hstu_engine *e, const hstu_request *q, hstu_result *res, int B)
{
    static cudaEvent_t a, b;
    if (!a)
        cudaEventCreate(&a), cudaEventCreate(&b);
    hstu_error err = {0};
    cudaEventRecord(a, 0);
    if (hstu_engine_run(e, q, B, res, false, &err) != HSTU_OK)
        die("hstu_engine_run", err.msg);
    cudaEventRecord(b, 0);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    return ms;
}

/* Median ms of one attention launch (iters timed after 2 warm-up); with
 * `flush` set, 256 MB are written before each launch, so that its keys
 * come from DRAM as in a forward (the weights of a layer's GEMMs pass
 * through L2 between two attentions of the same layer). */
static float time_attention_l2(const attn_cuda_params *ap, int iters, float *t, bool flush)
{
    static void *junk = NULL;
    const size_t junk_bytes = (size_t)256 << 20;
    if (flush && !junk)
        cuda_ok(cudaMalloc(&junk, junk_bytes), "cudaMalloc");
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    for (int it = 0; it < iters + 2; it++) {
        if (flush)
            cudaMemsetAsync(junk, it & 0xff, junk_bytes, 0);
        cudaEventRecord(a, 0);
        if (attn_fwd_cuda(ap, 0))
            die("attention", "launch failed");
        cudaEventRecord(b, 0);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (it >= 2)
            t[it - 2] = ms;
    }
    cudaEventDestroy(a), cudaEventDestroy(b);
    return median(t, iters);
}

static float time_attention(const attn_cuda_params *ap, int iters, float *t)
{
    return time_attention_l2(ap, iters, t, false);
}

static const char *const trace_names[ATTN_CUDA_TRACE_POINTS] = {
    "start", "Q issued", "Q landed", "Q activated", "K0 landed", "first S", "loop done", "last PV done",
    "part staged", "parts synced", "reduced", "stored"};

/* One traced run of the attention (attn_cuda_params.trace), printed by
 * print_trace. */
static void trace_attention(attn_cuda_params ap, const char *label)
{
    const size_t max_ctas = (size_t)ap.B * ap.H * (size_t)((ap.max_rows + 63) / 64) * ATTN_CUDA_MAX_SPLITS;
    const size_t n = max_ctas * ATTN_CUDA_TRACE_POINTS;
    unsigned long long *d = NULL, *h = calloc(n, sizeof *h);
    cuda_ok(cudaMalloc((void **)&d, n * sizeof *d), "cudaMalloc");
    cudaMemset(d, 0, n * sizeof *d);
    ap.trace = d;
    if (attn_fwd_cuda(&ap, 0) || cudaDeviceSynchronize() != cudaSuccess)
        die("attention", "traced launch failed");
    cudaMemcpy(h, d, n * sizeof *d, cudaMemcpyDeviceToHost);
    print_trace(label, h, max_ctas, ATTN_CUDA_TRACE_POINTS, trace_names);
    cudaFree(d);
    free(h);
}

/* The attention at every split factor (ms), then the one attn_cuda_splits chooses. */
static void split_sweep(attn_cuda_params ap, int iters, float *t)
{
    for (int S = 1; S <= ATTN_CUDA_MAX_SPLITS; S++) {
        ap.splits = S;
        printf(" %d: %.4f", S, time_attention(&ap, iters, t));
    }
    ap.splits = 0;
    printf(" ms (chosen: %d)\n", attn_cuda_splits(&ap));
}

/* The split parts through global memory (attn_cuda_params.parts) at batch
 * 1: the attention alone by S, the same plus the planes' sum
 * (attn_parts_sum_cuda, as ln_mul_parts_cuda reads them), and the trace. */
static void parts_splits(attn_cuda_params ap, int rows_u, int vw, int iters, float *t)
{
    void *parts = NULL;
    float *scales = NULL;
    cuda_ok(cudaMalloc(&parts, (size_t)ATTN_CUDA_MAX_PART_SPLITS * rows_u * vw * 2), "cudaMalloc");
    cuda_ok(cudaMalloc((void **)&scales, (size_t)ATTN_CUDA_MAX_PART_SPLITS * rows_u * ap.H * 4), "cudaMalloc");
    ap.parts = parts;
    ap.parts_scale = scales;
    ap.ld_parts = vw;
    ap.parts_plane = (size_t)rows_u * vw;
    ap.scale_plane = (size_t)rows_u * ap.H;
    ap.parts_planes = ATTN_CUDA_MAX_PART_SPLITS;
    static const int Ss[6] = {4, 6, 8, 11, 12, 16};
    printf("    batch 1, parts in global memory, splits");
    for (int i = 0; i < 6; i++) {
        ap.splits = Ss[i];
        printf(" %d: %.4f", Ss[i], time_attention(&ap, iters, t));
    }
    ap.splits = 0;
    printf(" ms (chosen: %d)\n", attn_cuda_splits(&ap));
    for (int S = 8; S <= 11; S += 3) {
        ap.splits = S;
        char label[64];
        snprintf(label, sizeof label, "batch 1, parts, splits %d", S);
        trace_attention(ap, label);
    }
    if (attn_cuda_tma_form(&ap)) { /* the cp.async loads at the chosen S, for comparison */
        ap.splits = 0;
        attn_cuda_force_kernel(ATTN_CUDA_KERNEL_WS);
        printf("    batch 1, parts, chosen splits, cp.async form: %.4f ms\n", time_attention(&ap, iters, t));
        trace_attention(ap, "batch 1, parts, chosen splits, cp.async form");
        attn_cuda_force_kernel(ATTN_CUDA_KERNEL_AUTO);
    }
    cudaFree(parts);
    cudaFree(scales);
}

/* The clusters the GPU holds by split factor, then the split sweep for 128
 * new rows + the candidates a user (the end-to-end benchmark's requests):
 * batch 1 over 384, 896 and 1920 cached rows, batches 2 and 4 over 1920
 * (with the trace, and the grid padded as a graph's bucket launches it).
 * Writes sequences 0-3 (from hs) to d_seqs; the caller restores them. */
static void short_history_splits(attn_cuda_params ap, const attn_cuda_seq *hs, attn_cuda_seq *d_seqs, int iters,
                                 float *t)
{
    printf("    clusters held at once by S:");
    for (int S = 1; S <= ATTN_CUDA_MAX_SPLITS; S++)
        printf(" %d: %d", S, attn_cuda_max_clusters(S, ap.Dqk > ap.Dv ? ap.Dqk : ap.Dv));
    printf("\n");
    for (int nb = 1; nb <= 4; nb *= 2)
        for (int h = nb == 1 ? 512 : 2048; h <= 2048; h *= 2) {
            attn_cuda_seq s[4];
            for (int u = 0; u < nb; u++) {
                s[u] = hs[u];
                s[u].c = s[u].paged = h - 128;
                s[u].hist = h;
                s[u].q0 = u * (128 + CANDS);
            }
            cudaMemcpy(d_seqs, s, sizeof s[0] * nb, cudaMemcpyHostToDevice);
            ap.B = nb;
            ap.max_rows = 128 + CANDS;
            ap.max_keys = h + CANDS;
            printf("    batch %d, history %d, cached %d, splits", nb, h, h - 128);
            split_sweep(ap, iters, t);
            if (nb > 1) {
                char label[80];
                snprintf(label, sizeof label, "batch %d, history %d, splits %d", nb, h, attn_cuda_splits(&ap));
                trace_attention(ap, label);
                /* as a graph's bucket launches it: a grid for rows up to the bucket's total */
                attn_cuda_params pad = ap;
                pad.splits = attn_cuda_splits(&ap);
                pad.max_rows = nb * (128 + CANDS);
                printf("    batch %d, history %d, grid padded to %d rows a sequence: %.4f ms\n", nb, h, pad.max_rows,
                       time_attention(&pad, iters, t));
                snprintf(label, sizeof label, "batch %d, history %d, padded grid", nb, h);
                trace_attention(pad, label);
            }
        }
}

static bool g_graphs = true; /* CUDA graphs in the engines make_engine creates */

static hstu_onload g_onload = HSTU_ONLOAD_ALL; /* the host tier's onload policy in the engines make_engine creates */

static hstu_engine *make_engine(const hstu_model *m, int max_tok, size_t cache, size_t host, int chunk, bool lw)
{
    hstu_engine_options o;
    hstu_engine_options_default(&o);
    o.onload = g_onload;
    o.backend = HSTU_BACKEND_CUDA;
    o.use_cache = cache > 0;
    o.cache_bytes = cache;
    o.host_cache_bytes = host;
    o.chunk_tokens = chunk;
    o.offload_queue = 4096;
    o.layerwise_onload = lw;
    o.max_batch_tokens = max_tok;
    o.cuda_graphs = g_graphs;
    hstu_engine *e = NULL;
    hstu_error err = {0};
    if (hstu_engine_create(m, &o, &e, &err) != HSTU_OK)
        die("engine", err.msg);
    return e;
}

/* Useful FLOPs of a forward computing rows [c, L) + CANDS per user. */
static double flops_of(const hstu_config *cfg, int B, int L, int c)
{
    int d = cfg->d_model, W = hstu_config_uvqk_width(cfg), vw = cfg->n_heads * cfg->d_v;
    double rows = (double)(L - c + CANDS);
    double pairs = 0.5 * ((double)L * (L + 1) - (double)c * (c + 1)) + (double)CANDS * (L + 1);
    double per_layer = rows * (2.0 * d * W + 2.0 * vw * d) + pairs * cfg->n_heads * 2.0 * (cfg->d_qk + cfg->d_v);
    return B * (cfg->n_layers * per_layer + CANDS * 2.0 * (d * cfg->hidden[0] + cfg->hidden[0] * cfg->n_tasks));
}

/* The engine's own accounting between two snapshots, as a mean per forward
 * (nothing if none ran): where a request's time goes. */
static void print_forward_means(const hstu_cache_stats *s0, const hstu_cache_stats *s1)
{
    double nf = (double)(s1->gpu_forwards - s0->gpu_forwards);
    if (nf <= 0)
        return;
    printf("mean per forward: planning %.3f ms, backend host %.3f ms, GPU %.3f ms of which metadata packing %.3f ms "
           "and launching the layers %.3f ms; embedding and layers on the GPU %.3f ms",
           (s1->plan_ms - s0->plan_ms) / nf, (s1->gpu_host_ms - s0->gpu_host_ms) / nf,
           (s1->gpu_busy_ms - s0->gpu_busy_ms) / nf, (s1->gpu_stage_ms - s0->gpu_stage_ms) / nf,
           (s1->gpu_launch_ms - s0->gpu_launch_ms) / nf, (s1->gpu_stack_ms - s0->gpu_stack_ms) / nf);
}

/* --profile: one block case, warm, then once inside the profiler's range. */
static void profile_case(const hstu_model *m, size_t kv_row_bytes, int B, int L, int c, bool host)
{
    static hstu_request q[MAX_B];
    static hstu_result res[MAX_B];
    size_t cache = (size_t)(B * (L + 64) / 32 + 16) * (size_t)(kv_row_bytes * 32);
    /* --host: the c rows in the host tier only (chunks of 128 rows, the
     * layer-wise onload of every row, as part 2's "all") */
    hstu_engine *e = make_engine(m, 8 * (4096 + CANDS), cache, host ? cache : 0, host ? 128 : 1024, true);
    make_batch(q, res, B, L, 0);
    if (host) /* prime: the prefix on the device and, after its offload, the host */
        for (int b = 0; b < B; b++)
            q[b].n_items = c / 2;
    timed_run(e, q, res, B); /* the cache now holds every user's L (host: c) rows */
    for (int b = 0; b < B; b++)
        q[b].n_items = L / 2;
    float t[20];
    hstu_cache_stats s0, s1;
    hstu_engine_cache_stats(e, &s0);
    for (int it = 0; it < 20; it++) {
        for (int b = 0; b < B; b++)
            engine_cache_set(e, &q[b], host ? 0 : c, host ? c : 0);
        t[it] = timed_run(e, q, res, B);
    }
    hstu_engine_cache_stats(e, &s1);
    for (int b = 0; b < B; b++)
        engine_cache_set(e, &q[b], host ? 0 : c, host ? c : 0);
    cuda_backend_attn_trace_clear(e->cuda);
    cudaProfilerStart();
    float ms = timed_run(e, q, res, B);
    cudaProfilerStop();
    printf("profile: batch %d, history %d, cached %d%s, graphs %s, PDL %s (%llu GEMM edges): median %.3f ms warm (",
           B, L, c, host ? " in the host tier" : "", g_graphs ? "on" : "off", cuda_pdl_on() ? "on" : "off",
           (unsigned long long)s1.graph_gemm_edges, median(t, 20));
    print_forward_means(&s0, &s1);
    printf("), %.3f ms profiled\n", ms);
    /* HSTU_CUDA_ATTN_TRACE=l: that layer's attention in the profiled forward */
    size_t n = cuda_backend_attn_trace(e->cuda, NULL, 0);
    if (n > 0) { /* (stamps of CTAs past this forward's grid are an earlier forward's: zero them first) */
        unsigned long long *h = calloc(n, sizeof *h);
        if (h && cuda_backend_attn_trace(e->cuda, h, n) == n)
            print_trace("the attention of layer $HSTU_CUDA_ATTN_TRACE, inside the forward", h,
                        n / ATTN_CUDA_TRACE_POINTS, ATTN_CUDA_TRACE_POINTS, trace_names);
        free(h);
    }
    hstu_engine_destroy(e);
}

int main(int argc, char **argv)
{
    int iters = 15, prof[3] = {0, 0, -1};
    bool prof_host = false;
    bool quick = false, attention_only = false, tiers_only = false, e2e_only = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--iters") && i + 1 < argc)
            iters = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--attention"))
            attention_only = true;
        else if (!strcmp(argv[i], "--tiers"))
            tiers_only = true;
        else if (!strcmp(argv[i], "--e2e"))
            e2e_only = true;
        else if (!strcmp(argv[i], "--no-graphs"))
            g_graphs = false;
        else if (!strcmp(argv[i], "--host"))
            prof_host = true;
        else if (!strcmp(argv[i], "--profile") && i + 3 < argc) {
            for (int k = 0; k < 3; k++)
                prof[k] = atoi(argv[++i]);
            if (prof[0] < 1 || prof[0] > MAX_B || prof[1] < 2 || prof[1] > 4096 || prof[2] < 0 || prof[2] >= prof[1]) {
                fprintf(stderr, "bench_cache_gpu: --profile B L C: 1 <= B <= %d, 2 <= L <= 4096, 0 <= C < L\n",
                        MAX_B);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: bench_cache_gpu [--iters N] [--quick] [--attention | --tiers | --e2e] | "
                            "--profile B L C [--no-graphs] [--host]\n");
            return 2;
        }
    }
    if ((!g_graphs || prof_host) && prof[2] < 0) {
        fprintf(stderr, "bench_cache_gpu: --no-graphs and --host go with --profile (parts 1 and 2 time both)\n");
        return 2;
    }
    if (prof_host && prof[2] < 128) {
        fprintf(stderr, "bench_cache_gpu: --profile B L C --host: C >= 128 (the host tier's chunk)\n");
        return 2;
    }
    if (iters < 3)
        iters = 3;
    hstu_error err = {0};
    hstu_config cfg;
    if (hstu_config_preset("bench-8x1024", &cfg, &err) != HSTU_OK)
        die("preset", err.msg);
    cfg.max_history = MAX_TOK / 2; /* up to 8192 tokens for the tier part */
    cfg.max_positions = MAX_TOK + 1;
    int d = cfg.d_model, W = hstu_config_uvqk_width(&cfg), vw = cfg.n_heads * cfg.d_v;
    int kw = cfg.n_heads * cfg.d_qk;
    hstu_model *m = NULL;
    if (hstu_model_create_random(&cfg, 1, &m, &err) != HSTU_OK)
        die("model", err.msg);
    make_histories(&cfg);
    if (prof[2] >= 0) {
        profile_case(m, cfg.n_layers * 2 * (size_t)(kw + vw), prof[0], prof[1], prof[2], prof_host);
        hstu_model_destroy(m);
        return 0;
    }
    struct cudaDeviceProp prop;
    cuda_ok(cudaGetDeviceProperties(&prop, 0), "device properties");
    ceilings ce = measure_ceilings();
    printf("device: %s, %d SMs; ceilings: bf16 GEMM %.0f TFLOP/s, device copy %.2f TB/s, pinned host->device "
           "%.1f GB/s\n",
           prop.name, prop.multiProcessorCount, ce.gemm_tflops, ce.copy_tbs, ce.h2d_gbs);
    double weight_bytes = cfg.n_layers * 2.0 * ((double)d * W + (double)vw * d);
    double kv_row_bytes = cfg.n_layers * 2.0 * (kw + vw); /* one row's K and V, every layer */
    static hstu_request q[MAX_B];
    static hstu_result res[MAX_B];
    float t[64];

    if (tiers_only)
        goto tiers;
    if (e2e_only)
        goto e2e;
    /* 0. the attention alone: cached keys from pages vs the same keys dense */
    printf("\n0. attention alone, one layer (batch 8, hist 4096, 256 candidates): cached keys from pages vs dense\n");
    {
        const int B = 8, hist = 4096, H = cfg.n_heads, D = cfg.d_qk, P = 32, rows_u = hist + CANDS;
        size_t page_elems = (size_t)cfg.n_layers * P * (kw + vw), n_pages = (size_t)B * (hist / P);
        void *qkv = dev_fill((size_t)B * rows_u * W * 2), *pool = dev_fill(n_pages * page_elems * 2);
        void *out = dev_fill((size_t)B * rows_u * vw * 2);
        int *pt = malloc(sizeof(int) * n_pages), *d_pt = NULL;
        for (size_t i = 0; i < n_pages; i++)
            pt[i] = (int)((i * 7919) % n_pages); /* scattered */
        cuda_ok(cudaMalloc((void **)&d_pt, sizeof(int) * n_pages), "cudaMalloc");
        cudaMemcpy(d_pt, pt, sizeof(int) * n_pages, cudaMemcpyHostToDevice);
        attn_cuda_seq *d_seqs = NULL, hs[8];
        cuda_ok(cudaMalloc((void **)&d_seqs, sizeof hs), "cudaMalloc");
        int cs[3] = {2048, 3840, 3968};
        int *d_pt_seq = NULL;
        for (size_t i = 0; i < n_pages; i++)
            pt[i] = (int)i;
        cuda_ok(cudaMalloc((void **)&d_pt_seq, sizeof(int) * n_pages), "cudaMalloc");
        cudaMemcpy(d_pt_seq, pt, sizeof(int) * n_pages, cudaMemcpyHostToDevice);
        /* variants: 3 scattered pages of all layers, 2 consecutive pages,
         * 1 scattered pages of one layer each (layer-major pool), 0 dense */
        static const char *vname[4] = {"dense", "paged, layer-major", "paged, in order", "paged"};
        for (int ci = 0; ci < 3; ci++)
            for (int var = 3; var >= 0; var--) {
                int c = cs[ci], paged = var > 0;
                for (int u = 0; u < B; u++)
                    hs[u] = (attn_cuda_seq){.c = c, .hist = hist, .cand = CANDS, .paged = paged ? c : 0,
                                            .q0 = u * rows_u + (paged ? 0 : c), .page0 = u * (hist / P)};
                cudaMemcpy(d_seqs, hs, sizeof hs, cudaMemcpyHostToDevice);
                attn_cuda_params ap = {.B = B, .H = H, .Dqk = D, .Dv = cfg.d_v, .seqs = d_seqs,
                                       .max_rows = hist - c + CANDS, .q = (char *)qkv + 2 * vw * 2,
                                       .k = (char *)qkv + (2 * vw + kw) * 2, .v = (char *)qkv + vw * 2, .ld_qkv = W,
                                       .n_rows = B * rows_u, .pages = paged ? pool : NULL,
                                       .page_table = var == 2 ? d_pt_seq : d_pt, .page_size = P,
                                       .page_elems = var == 1 ? (size_t)P * (kw + vw) : page_elems,
                                       .n_pages = (int)(var == 1 ? n_pages * (size_t)cfg.n_layers : n_pages),
                                       .k_off = var == 1 ? 0 : 3 * (size_t)P * (kw + vw),
                                       .v_off = (var == 1 ? 0 : 3 * (size_t)P * (kw + vw)) + P * kw,
                                       .alpha = cfg.alpha, .N = cfg.attn_scale_len, .out = out, .ld_out = vw,
                                       .max_keys = rows_u};
                float ms = time_attention(&ap, iters, t);
                double pairs = 0.5 * ((double)hist * (hist + 1) - (double)c * (c + 1)) + (double)CANDS * (hist + 1);
                double fl = B * pairs * H * 2.0 * (cfg.d_qk + cfg.d_v);
                printf("  cached %4d, keys %-20s %8.3f ms %7.0f TFLOP/s (splits %d)", c, vname[var],
                       ms, fl / (ms * 1e-3) / 1e12, attn_cuda_splits(&ap));
                if (paged && attn_cuda_tma_form(&ap)) { /* the same call with the cp.async loads */
                    attn_cuda_force_kernel(ATTN_CUDA_KERNEL_WS);
                    const float ms_cp = time_attention(&ap, iters, t);
                    attn_cuda_force_kernel(ATTN_CUDA_KERNEL_AUTO);
                    printf("; cp.async form %.3f ms (TMA %.2fx)", ms_cp, ms_cp / ms);
                }
                printf("\n");
                if (c != 3968 || var != 3)
                    continue;
                /* the split-KV factor by hand, batch 8 and 1 */
                for (int nb = 8; nb >= 1; nb -= 7) {
                    printf("    batch %d, splits", nb);
                    ap.B = nb;
                    split_sweep(ap, iters, t);
                    printf("    batch %d, chosen splits, keys from DRAM (L2 written over before each launch): %.3f ms\n",
                           nb, time_attention_l2(&ap, iters, t, true));
                    char label[64];
                    snprintf(label, sizeof label, "batch %d, splits %d", nb, attn_cuda_splits(&ap));
                    trace_attention(ap, label);
                    if (nb == 1) {
                        ap.splits = 1;
                        trace_attention(ap, "batch 1, splits 1");
                        ap.splits = 0;
                        parts_splits(ap, rows_u, vw, iters, t);
                        short_history_splits(ap, hs, d_seqs, iters, t);
                        cudaMemcpy(d_seqs, hs, sizeof hs, cudaMemcpyHostToDevice);
                    }
                    ap.B = B;
                }
            }
        cudaFree(qkv), cudaFree(pool), cudaFree(out), cudaFree(d_pt), cudaFree(d_seqs);
        cudaFree(d_pt_seq);
        free(pt);
    }

    if (attention_only) {
        hstu_model_destroy(m);
        return 0;
    }

    /* 1. block ---------------------------------------------------------------- */
    printf("\n1. HSTU block, GPU-resident cache (bench-8x1024, %d candidates per user)\n", CANDS);
    printf("%-5s %6s %7s %8s %9s %8s %8s %8s %7s %10s %9s\n", "batch", "hist", "cached", "computed", "median_ms",
           "TFLOP/s", "floor_ms", "floor%", "vs c=0", "no_graph", "stack_ms");
    {
        size_t cache = (size_t)(8 * (4096 + 64) / 32 + 16) * (size_t)(kv_row_bytes * 32);
        hstu_engine *e = make_engine(m, 8 * (4096 + CANDS), cache, 0, 1024, true);
        g_graphs = false;
        hstu_engine *eg = make_engine(m, 8 * (4096 + CANDS), cache, 0, 1024, true);
        g_graphs = true;
        int bs[2] = {1, 8}, Ls[3] = {1024, 2048, 4096};
        for (int bi = 0; bi < 2; bi++)
            for (int li = quick ? 2 : 0; li < 3; li++) {
                int B = bs[bi], L = Ls[li];
                int cs[5] = {0, L / 2, 3 * L / 4, L - 256, L - 128};
                float base = 0, ng = 0, stack[64];
                make_batch(q, res, B, L, 100 * (bi * 3 + li));
                timed_run(e, q, res, B); /* the cache now holds every user's L rows */
                timed_run(eg, q, res, B);
                for (int ci = 0; ci < 5; ci++) {
                    int c = cs[ci];
                    for (int k = 1; k >= 0; k--) {
                        hstu_engine *x = k ? eg : e;
                        for (int it = 0; it < iters + 2; it++) {
                            for (int b = 0; b < B; b++)
                                engine_cache_set(x, &q[b], c, 0);
                            hstu_cache_stats s0, s1;
                            hstu_engine_cache_stats(x, &s0);
                            float ms = timed_run(x, q, res, B);
                            hstu_engine_cache_stats(x, &s1);
                            if (it >= 2) {
                                t[it - 2] = ms;
                                stack[it - 2] = (float)(s1.gpu_stack_ms - s0.gpu_stack_ms);
                            }
                        }
                        if (k)
                            ng = median(t, iters);
                    }
                    float ms = median(t, iters);
                    if (ci == 0)
                        base = ms;
                    double fl = flops_of(&cfg, B, L, c);
                    double bytes = weight_bytes + B * (double)c * kv_row_bytes;
                    double floor_ms = fmax(fl / (ce.gemm_tflops * 1e12), bytes / (ce.copy_tbs * 1e12)) * 1e3;
                    printf("%-5d %6d %7d %8d %9.3f %8.1f %8.3f %7.0f%% %6.2fx %10.3f %9.3f\n", B, L, c,
                           B * (L - c + CANDS), ms, fl / (ms * 1e-3) / 1e12, floor_ms, 100 * floor_ms / ms, base / ms, ng,
                           median(stack, iters));
                    fflush(stdout);
                }
            }
        hstu_engine_destroy(e);
        hstu_engine_destroy(eg);
    }
    printf("targets (issue, H100): batch 8 at 4096 with 3968 cached <= 2.5 ms, batch 1 <= 0.5 ms; NVIDIA (L20): "
           "2.7 / 9.3 ms; Meta cached_forward (H100): 21 / 16.3 ms\n");

tiers:
    /* 2. tiers ---------------------------------------------------------------- */
    printf("\n2. where the prefix lives (L - 128 rows cached; host chunks of 128 rows). host: the default onload\n"
           "   (auto: the rows whose transfer the recompute of the rest hides); all: every row onloaded, layer by\n"
           "   layer; first: every row onloaded before the forward; pcie: all's bytes at the pinned copy rate;\n"
           "   on_iss, off_iss: host ms issuing the copies, a forward (all's onload; a miss's offload after it)\n");
    printf("%-5s %6s %8s %8s %8s %8s %8s %8s %8s %8s %9s %9s %8s %8s\n", "batch", "hist", "gpu_ms", "host_ms",
           "host/gpu", "all_ms", "all/gpu", "first_ms", "miss_ms", "pcie_ms", "host_GB", "recomp", "on_iss", "off_iss");
    {
        int Ls[4] = {1024, 2048, 4096, 8192};
        int maxL = quick ? 4096 : 8192;
        size_t per_user = (size_t)(maxL / 32 + 2) * (size_t)(kv_row_bytes * 32);
        hstu_engine *lw = make_engine(m, 8 * (maxL + CANDS), per_user * 8, per_user * 8, 128, true);
        hstu_engine *al = make_engine(m, 8 * (maxL + CANDS), per_user * 8, per_user * 8, 128, false);
        g_onload = HSTU_ONLOAD_AUTO;
        hstu_engine *au = make_engine(m, 8 * (maxL + CANDS), per_user * 8, per_user * 8, 128, true);
        g_onload = HSTU_ONLOAD_ALL;
        int bs[2] = {1, 8};
        for (int bi = 0; bi < 2; bi++)
            for (int li = 0; li < 4 && Ls[li] <= maxL; li++) {
                int B = bs[bi], L = Ls[li], c = L - 128;
                float r[5];
                hstu_cache_stats s0, s1, s3, a0, a1;
                hstu_engine_cache_stats(lw, &s0);
                hstu_engine_cache_stats(au, &a0);
                /* kinds: GPU hit, host hit (all, layer-wise), host hit (all
                 * first), miss, host hit (auto) */
                for (int kind = 0; kind < 5; kind++) {
                    hstu_engine *e = kind == 2 ? al : kind == 4 ? au : lw;
                    make_batch(q, res, B, L, 10000 + 100 * (bi * 4 + li) + (kind == 2 ? 50 : kind == 4 ? 70 : 0));
                    /* prime: prefix on the device and (after its offload) the host */
                    for (int b = 0; b < B; b++)
                        q[b].n_items = c / 2;
                    timed_run(e, q, res, B);
                    for (int b = 0; b < B; b++)
                        q[b].n_items = L / 2;
                    for (int it = 0; it < iters + 2; it++) {
                        for (int b = 0; b < B; b++)
                            engine_cache_set(e, &q[b], kind == 0 ? c : 0, kind == 3 ? 0 : c);
                        float ms = timed_run(e, q, res, B);
                        if (it >= 2)
                            t[it - 2] = ms;
                    }
                    r[kind] = median(t, iters);
                    if (kind == 1)
                        hstu_engine_cache_stats(lw, &s1);
                    if (kind == 3)
                        hstu_engine_cache_stats(lw, &s3);
                    if (kind == 4)
                        hstu_engine_cache_stats(au, &a1);
                    for (int b = 0; b < B; b++)
                        engine_cache_set(e, &q[b], 0, 0);
                }
                double moved = (s1.onload_bytes - s0.onload_bytes) / (double)(iters + 2);
                double moved_au = (a1.onload_bytes - a0.onload_bytes) / (double)(iters + 2);
                double recomp = (a1.host_rows_recomputed - a0.host_rows_recomputed) / (double)(iters + 2) / B;
                /* host time issuing the copies, a forward: all's onload, and a miss's offload after it */
                double on_iss = (s1.onload_issue_ms - s0.onload_issue_ms) / (iters + 2);
                double off_iss = (s3.offload_issue_ms - s1.offload_issue_ms) / (iters + 2);
                printf("%-5d %6d %8.3f %8.3f %7.2fx %8.3f %7.2fx %8.3f %8.3f %8.3f %9.3f %9.0f %8.3f %8.3f\n", B, L,
                       r[0], r[4], r[4] / r[0], r[1], r[1] / r[0], r[2], r[3], moved / (ce.h2d_gbs * 1e9) * 1e3,
                       moved_au / 1e9, recomp, on_iss, off_iss);
                if (li == 3 || Ls[li + 1] > maxL) { /* the batch size's last row: what auto learned for it */
                    printf("      auto's model for batch %d: %.1f GB/s, %.0f TFLOP/s + %.3f ms a forward, + %.3f ms "
                           "+ %.3f ms/GB when onloading\n",
                           a1.onload_model_batch, a1.onload_model_gbs, a1.onload_model_tflops,
                           a1.onload_model_fixed_ms, a1.onload_model_extra_ms, a1.onload_model_extra_ms_per_gb);
                }
                fflush(stdout);
            }
        printf("(recomp: host rows a user computed instead of onloaded)\n");
        hstu_engine_destroy(au);
        hstu_cache_stats cs;
        hstu_engine_cache_stats(lw, &cs);
        printf("layer-wise engine: %.2f GB onloaded in %.1f ms of copy time (%.1f GB/s), %.2f GB offloaded in %.1f ms "
               "(%.1f GB/s), %llu offloads skipped\n",
               cs.onload_bytes / 1e9, cs.onload_ms, cs.onload_bytes / 1e6 / (cs.onload_ms + 1e-9),
               cs.offload_bytes / 1e9, cs.offload_ms, cs.offload_bytes / 1e6 / (cs.offload_ms + 1e-9),
               (unsigned long long)cs.offloads_skipped);
        hstu_engine_destroy(lw);
        hstu_engine_destroy(al);
    }
    printf("target (issue): host hit <= 1.3x GPU hit at 4096 (NVIDIA FlexKV: 1.26x at 4K, 1.5x at 8K)\n");

    if (tiers_only) {
        hstu_model_destroy(m);
        return 0;
    }
e2e:
    /* 3. end to end -------------------------------------------------------- */
    printf("\n3. end to end: histories grow by 128 tokens per request, 256 -> 4096 (31 requests per user)\n");
    printf("%-5s %12s %12s %14s %9s %9s %12s\n", "batch", "nocache_ms", "cache_ms", "cache+graph_ms", "cache_x",
           "c+g_x", "ms/request");
    {
        size_t per_user = (size_t)(4096 / 32 + 2) * (size_t)(kv_row_bytes * 32);
        g_graphs = false;
        hstu_engine *nc = make_engine(m, 16 * (4096 + CANDS), 0, 0, 1024, true);
        hstu_engine *ca = make_engine(m, 16 * (4096 + CANDS), per_user * 16, 0, 1024, true);
        g_graphs = true;
        hstu_engine *cg = make_engine(m, 16 * (4096 + CANDS), per_user * 16, 0, 1024, true);
        int bs[5] = {1, 2, 4, 8, 16};
        for (int bi = 0; bi < 5; bi++) {
            int B = bs[bi];
            float tot[3] = {0, 0, 0};
            int reps = quick ? 1 : 3;
            float runs[3][3];
            hstu_cache_stats s0, s1; /* cache + graphs, around its last repetition */
            float slowest = 0;
            int slowest_L = 0;
            for (int rep = 0; rep < reps; rep++)
                for (int k = 0; k < 3; k++) {
                    hstu_engine *e = k == 2 ? cg : k ? ca : nc;
                    hstu_engine_cache_clear(e);
                    if (k == 2)
                        hstu_engine_cache_stats(e, &s0);
                    float sum = 0;
                    int64_t base = 100000 + 1000 * bi + 100 * rep;
                    for (int L = 256; L <= 4096; L += 128) {
                        make_batch(q, res, B, L, base);
                        float ms = timed_run(e, q, res, B);
                        sum += ms;
                        if (k == 2 && rep == reps - 1 && ms > slowest)
                            slowest = ms, slowest_L = L;
                    }
                    runs[k][rep] = sum;
                    if (k == 2)
                        hstu_engine_cache_stats(e, &s1);
                }
            const float last_cg = runs[2][reps - 1]; /* (median() sorts the runs) */
            for (int k = 0; k < 3; k++)
                tot[k] = median(runs[k], reps);
            printf("%-5d %12.1f %12.1f %14.1f %8.2fx %8.2fx %12.3f\n", B, tot[0], tot[1], tot[2], tot[0] / tot[1],
                   tot[0] / tot[2], tot[2] / 31.0);
            /* where a cache + graphs request's time goes (its last repetition) */
            printf("      cache + graphs, last repetition: %.3f ms a request, slowest %.3f ms (history %d), %llu "
                   "graph captures; ",
                   last_cg / 31.0, slowest, slowest_L, (unsigned long long)(s1.graph_captures - s0.graph_captures));
            print_forward_means(&s0, &s1);
            printf("\n");
            fflush(stdout);
        }
        hstu_engine_destroy(nc);
        hstu_engine_destroy(ca);
        hstu_engine_destroy(cg);
    }
    printf("target (issue): cache + graphs >= 3x over no cache (NVIDIA, L20: 1.3x - 2.7x)\n");
    hstu_model_destroy(m);
    return 0;
}
