/* test_gemm_ws_cuda.c - gemm_ws_cuda (the weight-stationary GEMM for few
 * rows) against the CPU: gemm_cpu (OpenBLAS, itself checked against the
 * plain-loop gemm_ref in test_dense) in fp32 on the same bf16 inputs, plus
 * the old C and the bias in double.
 *
 * Every case runs on every kernel whose cluster divides the case's column
 * tiles: row tiles of 64, 128 and 192, alone and in clusters of 2 and 4 CTAs
 * that share A's loads, on outputs poisoned with NaN bits, and checks:
 *   - every value is within the output's rounding of the reference: bf16
 *     |out - ref| <= |ref| / 256 + 1e-3, fp32 |out - ref| <= |ref| / 4096 +
 *     1e-3 (products of bf16 values are exact in fp32, so only the
 *     summation order and the final rounding differ);
 *   - the row stride's padding columns still hold the poison.
 * Shapes: one row, rows and columns off the tiles, K off the 64-wide
 * slices, padded strides, row tiles looping over many tiles per CTA (the
 * ring running on across them), and the bench-8x1024 layer shapes at 384
 * and 768 rows. Then: the automatic plans for those shapes; the
 * programmatic-edge probe (gemm_pdl_probe: the kernel waits before it reads
 * A or C, or writes C); and a LayerNorm -> GEMM graph whose replays equal
 * the eager run bit for bit, for two inputs in turn.
 *
 * Without CUDA in the build, or without a usable GPU, every case is skipped
 * with the reason.
 */
#include "gpu_main.h"

#include "core/rng.h"
#include "kernels/dense.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEMM_WS_TESTS(X)                                                                   \
    X("weight-stationary GEMM: argument checks and plans", test_args)                      \
    X("weight-stationary GEMM: shapes off the tiles, C = A W", test_plain)                 \
    X("weight-stationary GEMM: C += A W + bias, bf16 and fp32 C", test_accumulate)         \
    X("weight-stationary GEMM: many row tiles per CTA", test_many_tiles)                   \
    X("weight-stationary GEMM: the bench-8x1024 layer shapes", test_layers)                \
    X("weight-stationary GEMM: waits at a programmatic edge (probe)", test_probe)          \
    X("weight-stationary GEMM: LayerNorm -> GEMM graph replays exact", test_graph)

#ifdef HSTU_HAVE_CUDA

#include "kernels/gemm_pdl_cuda.h"
#include "kernels/gemm_ws_cuda.h"
#include "kernels/pdl_cuda.h"

#include <cuda_runtime_api.h>

#define POISON 0xFFFFu

static rng g_rng = {0x51ed270b27a1f3c5ull};

static void *upload(const void *h, size_t bytes)
{
    void *d = t_dpoison(bytes);
    cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}

/* n random bf16 values in [-s, s): as bits (for the GPU) and as floats. */
static void rand_bf16(size_t n, float s, uint16_t *bits, float *vals)
{
    for (size_t i = 0; i < n; i++) {
        bits[i] = t_f2bf(rng_range(&g_rng, -s, s));
        vals[i] = t_bf2f(bits[i]);
    }
}

static bool prepared(void)
{
    int rc = gemm_ws_prepare();
    T_CHECK(rc == 0, "gemm_ws_prepare: %s", cudaGetErrorString((cudaError_t)rc));
    return rc == 0;
}

typedef struct wcase {
    int M, N, K, pad; /* pad: extra elements in every row stride */
    bool accumulate, bias, f32;
} wcase;

/* The kernels: row tiles of 64, 128, 192 in clusters of 1, 2, 4. */
static const int kShapes[][2] = {{64, 1}, {64, 2}, {64, 4}, {128, 1}, {128, 2}, {128, 4},
                                 {192, 1}, {192, 2}, {192, 4}};

/* Runs one case with bm-row tiles in clusters of cl (0, 0: the automatic
 * plan); returns the largest |out - ref| / tolerance, or -1 when that
 * kernel cannot take the shape (its cluster does not divide the column
 * tiles). */
static double run_case(const wcase *wc, int bm, int cl)
{
    const int M = wc->M, N = wc->N, K = wc->K, lda = K + wc->pad, ldw = N + wc->pad, ldc = N + wc->pad;
    const size_t esz = wc->f32 ? 4 : 2;
    gemm_ws_force(bm, cl);
    gemm_ws_plan plan;
    if (gemm_ws_plan_of(M, N, K, &plan)) {
        gemm_ws_force(0, 0);
        return -1;
    }
    uint16_t *hA = t_xmalloc((size_t)M * lda * 2 + 2), *hW = t_xmalloc((size_t)K * ldw * 2);
    float *A = t_xmalloc((size_t)M * lda * 4 + 4), *W = t_xmalloc((size_t)K * ldw * 4);
    float *bias = t_xmalloc((size_t)N * 4), *old = t_xmalloc((size_t)M * ldc * 4 + 4);
    float *ref = t_xmalloc((size_t)M * N * 4 + 4);
    uint16_t *bias16 = t_xmalloc((size_t)N * 2), *old16 = t_xmalloc((size_t)M * ldc * 2 + 2);
    rand_bf16((size_t)M * lda, 1.0f, hA, A);
    rand_bf16((size_t)K * ldw, 1.0f, hW, W);
    rand_bf16((size_t)N, 1.0f, bias16, bias);               /* bf16-exact either way */
    rand_bf16((size_t)M * ldc, 4.0f, old16, old);
    if (M > 0)
        gemm_cpu(M, N, K, A, lda, W, ldw, 0.0f, ref, N);
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) {
            double v = ref[(size_t)r * N + c];
            v += wc->accumulate ? old[(size_t)r * ldc + c] : 0.0;
            v += wc->bias ? bias[c] : 0.0;
            ref[(size_t)r * N + c] = (float)v;
        }

    void *d_A = upload(hA, (size_t)M * lda * 2 + 2), *d_W = upload(hW, (size_t)K * ldw * 2);
    void *d_bias = wc->f32 ? upload(bias, (size_t)N * 4) : upload(bias16, (size_t)N * 2);
    void *d_C = t_dpoison((size_t)M * ldc * esz + 16);
    if (wc->accumulate) { /* the old C; the padding keeps its poison */
        unsigned char *img = t_xmalloc((size_t)M * ldc * esz + 4);
        memset(img, 0xff, (size_t)M * ldc * esz);
        for (int r = 0; r < M; r++)
            for (int c = 0; c < N; c++) {
                size_t at = (size_t)r * ldc + c;
                if (wc->f32)
                    memcpy(img + at * 4, &old[at], 4);
                else
                    memcpy(img + at * 2, &old16[at], 2);
            }
        cudaMemcpy(d_C, img, (size_t)M * ldc * esz, cudaMemcpyHostToDevice);
        free(img);
    }
    gemm_ws_args ga = {M, N, K, d_A, lda, d_W, ldw, d_C, ldc, wc->f32, wc->accumulate, wc->bias ? d_bias : NULL};
    char what[160];
    snprintf(what, sizeof what, "%dx%dx%d pad %d tile %d cluster %d (%d CTAs, %d tiles each)%s%s%s", M, N, K,
             wc->pad, plan.bm, plan.cl, plan.ctas, plan.tiles_per_cta, wc->accumulate ? " accumulate" : "",
             wc->bias ? " bias" : "", wc->f32 ? " fp32" : " bf16");
    char why[256] = "";
    double worst = 0;
    T_CHECK(gemm_ws_supported(&ga, why, sizeof why), "%s: %s", what, why);
    int rc = gemm_ws_cuda(&ga, NULL);
    gemm_ws_force(0, 0);
    cudaError_t e = cudaDeviceSynchronize();
    T_CHECK(rc == 0 && e == cudaSuccess, "%s: launch %d, sync %s", what, rc, cudaGetErrorString(e));
    if (rc == 0 && e == cudaSuccess) {
        unsigned char *out = t_xmalloc((size_t)M * ldc * esz + 4);
        cudaMemcpy(out, d_C, (size_t)M * ldc * esz, cudaMemcpyDeviceToHost);
        int bad = 0, pad_written = 0;
        for (int r = 0; r < M; r++) {
            for (int c = 0; c < ldc; c++) {
                size_t at = (size_t)r * ldc + c;
                uint32_t bits = wc->f32 ? ((uint32_t *)out)[at] : ((uint16_t *)out)[at];
                if (c >= N) {
                    pad_written += bits != (wc->f32 ? 0xFFFFFFFFu : POISON);
                    continue;
                }
                double o = wc->f32 ? ((float *)out)[at] : t_bf2f((uint16_t)bits), x = ref[(size_t)r * N + c];
                double q = fabs(o - x) / (fabs(x) / (wc->f32 ? 4096 : 256) + 1e-3);
                if (!(q <= 1.0) && bad++ < 3)
                    t_fail_at(__FILE__, __LINE__, "%s: C[%d][%d] = %g, reference %g", what, r, c, o, x);
                worst = isnan(q) ? INFINITY : fmax(worst, q);
            }
        }
        T_CHECK(bad == 0, "%s: %d values off", what, bad);
        T_CHECK(pad_written == 0, "%s: %d padding values written", what, pad_written);
        free(out);
    }
    cudaFree(d_A), cudaFree(d_W), cudaFree(d_bias), cudaFree(d_C);
    free(hA), free(hW), free(A), free(W), free(bias), free(old), free(ref), free(bias16), free(old16);
    return worst;
}

/* Each case on every kernel that takes it, then on the automatic plan. */
static void run_cases(const wcase *cs, int n)
{
    double worst = 0;
    int runs = 0;
    for (int i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof kShapes / sizeof kShapes[0]; k++) {
            double w = run_case(&cs[i], kShapes[k][0], kShapes[k][1]);
            if (w >= 0)
                worst = fmax(worst, w), runs++;
        }
        double w = run_case(&cs[i], 0, 0);
        T_CHECK(w >= 0, "case %d: no automatic plan", i);
        worst = fmax(worst, w), runs++;
    }
    printf("    %d shapes, %d runs over the row tiles and clusters: worst error %.2f of the bound\n", n, runs,
           worst);
}

static void test_args(void)
{
    if (!prepared())
        return;
    char why[256];
    void *d = t_dpoison(1 << 20);
    const bf16_t *p = d;
    gemm_ws_args a = {0, 128, 64, p, 64, p, 128, d, 128, 0, 0, NULL};
    T_CHECK(gemm_ws_supported(&a, why, sizeof why), "M 0: %s", why);
    T_CHECK(gemm_ws_cuda(&a, NULL) == 0, "M 0 is a no-op");
    a.M = 4, a.N = 100, a.ldw = 100, a.ldc = 100;
    T_CHECK(!gemm_ws_supported(&a, why, sizeof why) && strstr(why, "multiples of 8"), "N 100 refused: %s", why);
    T_CHECK(gemm_ws_cuda(&a, NULL) == cudaErrorInvalidValue, "an unsupported call returns cudaErrorInvalidValue");
    a.N = 128, a.ldw = 128, a.ldc = 128, a.K = 1032, a.lda = 1032;
    T_CHECK(!gemm_ws_supported(&a, why, sizeof why) && strstr(why, "1024"), "K 1032 refused: %s", why);
    a.K = 64, a.lda = 64, a.A = p + 1;
    T_CHECK(!gemm_ws_supported(&a, why, sizeof why) && strstr(why, "aligned"), "unaligned A refused: %s", why);
    a.A = p, a.lda = 60;
    T_CHECK(!gemm_ws_supported(&a, why, sizeof why) && strstr(why, "strides"), "lda < K refused: %s", why);
    a.lda = 64, a.N = 64 * 4096, a.ldw = a.N, a.ldc = a.N;
    T_CHECK(!gemm_ws_supported(&a, why, sizeof why) && strstr(why, "at once"), "N 262144 refused: %s", why);

    /* the layer shapes: one CTA per 64 columns and row tile, one wave */
    static const int shapes[][3] = {{384, 4096, 1024}, {384, 1024, 1024}, {768, 4096, 1024}, {768, 1024, 1024},
                                    {3072, 4096, 1024}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        gemm_ws_plan pl;
        int rc = gemm_ws_plan_of(shapes[i][0], shapes[i][1], shapes[i][2], &pl);
        T_CHECK(rc == 0, "a plan for %d x %d x %d", shapes[i][0], shapes[i][1], shapes[i][2]);
        if (rc == 0)
            printf("    %4d x %4d x %4d: tiles of %d rows, clusters of %d, %d CTAs, %d tiles each, %d stages\n",
                   shapes[i][0], shapes[i][1], shapes[i][2], pl.bm, pl.cl, pl.ctas, pl.tiles_per_cta, pl.stages);
    }
    gemm_ws_plan u, pr;
    if (!gemm_ws_plan_of(384, 4096, 1024, &u) && !gemm_ws_plan_of(384, 1024, 1024, &pr))
        T_CHECK(u.tiles_per_cta * u.bm == 192 && pr.tiles_per_cta * pr.bm == 64,
                "384 rows: uvqk's busiest CTA takes 192 rows (%d), proj's 64 (%d)", u.tiles_per_cta * u.bm,
                pr.tiles_per_cta * pr.bm);
    gemm_ws_force(64, 3);
    gemm_ws_plan f;
    T_CHECK(gemm_ws_plan_of(384, 1024, 1024, &f) == 0 && f.cl != 3, "a cluster of 3 is not a kernel: automatic");
    gemm_ws_force(0, 0);
    cudaFree(d);
}

static void test_plain(void)
{
    if (!prepared())
        return;
    static const wcase cs[] = {
        {.M = 1, .N = 8, .K = 8},        {.M = 5, .N = 136, .K = 72, .pad = 8},
        {.M = 63, .N = 256, .K = 64},    {.M = 130, .N = 264, .K = 200, .pad = 16},
        {.M = 300, .N = 520, .K = 1024}, {.M = 193, .N = 512, .K = 1000, .pad = 8},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_accumulate(void)
{
    if (!prepared())
        return;
    static const wcase cs[] = {
        {.M = 3, .N = 64, .K = 64, .accumulate = true, .bias = true},
        {.M = 77, .N = 256, .K = 136, .pad = 8, .accumulate = true},
        {.M = 129, .N = 200, .K = 96, .bias = true, .f32 = true},
        {.M = 250, .N = 512, .K = 512, .pad = 8, .accumulate = true, .bias = true, .f32 = true},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

/* N = 4096 is 64 column tiles, so at most two CTAs per column tile fit:
 * 700 rows are 11 tiles of 64 (6 per CTA) or 4 of 192 (2 per CTA). */
static void test_many_tiles(void)
{
    if (!prepared())
        return;
    static const wcase cs[] = {
        {.M = 700, .N = 4096, .K = 256, .accumulate = true, .bias = true},
        {.M = 1100, .N = 4096, .K = 128, .pad = 8},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_layers(void)
{
    if (!prepared())
        return;
    static const wcase cs[] = {
        {.M = 384, .N = 4096, .K = 1024},
        {.M = 384, .N = 1024, .K = 1024, .accumulate = true, .bias = true},
        {.M = 384, .N = 1024, .K = 1024, .accumulate = true, .bias = true, .f32 = true},
        {.M = 768, .N = 4096, .K = 1024},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static bf16_t *dev_rand_bf16(size_t n, float scale)
{
    uint16_t *h = t_xmalloc(n * 2);
    float *v = t_xmalloc(n * 4);
    rand_bf16(n, scale, h, v);
    bf16_t *d = upload(h, n * 2);
    free(h), free(v);
    return d;
}

static int ws_launch(void *ctx, cudaStream_t s) { return gemm_ws_cuda(ctx, s); }

static void test_probe(void)
{
    if (!prepared())
        return;
    cudaStream_t s;
    T_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    /* launched plainly: the probe turns the edge into the GEMM programmatic itself */
    int pdl_was = cuda_pdl_on();
    cuda_pdl_set(0);
    const int M = 384, K = 1024, lda = 1032, ldc = 1032;
    /* W random: a result of all ones (W = 0 with accumulate) is one the probe cannot judge */
    bf16_t *A = t_dpoison((size_t)M * lda * 2), *W = dev_rand_bf16((size_t)K * 4096, 0.03f);
    void *C = t_dpoison((size_t)M * 4096 * 4), *bias = t_dpoison(4096 * 4);
    cudaMemset(bias, 0, 4096 * 4);
    static const int Ns[] = {4096, 1024};
    for (int i = 0; i < 2; i++)
        for (int f32 = 0; f32 < 2; f32++) {
            const int N = Ns[i], acc = N == 1024;
            gemm_ws_args ga = {M, N, K, A, lda, W, N, C, acc ? ldc : N, f32, acc, acc ? bias : NULL};
            gemm_pdl_operands op = {A, M, K, lda, C, N, ga.ldc, f32};
            char why[256] = "";
            int rc = gemm_pdl_probe(&op, ws_launch, &ga, s, why, sizeof why);
            printf("    %d x %d x %d%s, %s C: probe %d %s\n", M, N, K, acc ? " accumulate + bias" : "",
                   f32 ? "fp32" : "bf16", rc, why);
            T_CHECK(rc == 1, "the probe says %d (%s)", rc, why);
        }
    cuda_pdl_set(pdl_was);
    cudaFree(A), cudaFree(W), cudaFree(C), cudaFree(bias);
    cudaStreamDestroy(s);
}

/* LN(x) -> xn, then out = xn @ W (uvqk) and x += xn[:, :1024] @ Wp + b
 * (proj): the layer's GEMMs behind the kernels that feed them, captured
 * with programmatic edges; replays equal the eager run bit for bit. */
static void test_graph(void)
{
    if (!prepared())
        return;
    cudaStream_t s;
    T_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    int pdl_was = cuda_pdl_on();
    cuda_pdl_set(1);
    const int M = 384, d = 1024, N = 4096;
    bf16_t *x1 = dev_rand_bf16((size_t)M * d, 2.0f), *x2 = dev_rand_bf16((size_t)M * d, 2.0f);
    bf16_t *x = t_dpoison((size_t)M * d * 2), *xn = t_dpoison((size_t)M * d * 2);
    bf16_t *W = dev_rand_bf16((size_t)d * N, 0.03f), *Wp = dev_rand_bf16((size_t)d * d, 0.03f);
    bf16_t *b = dev_rand_bf16(d, 0.5f), *out = t_dpoison((size_t)M * N * 2);
    const size_t out_bytes = (size_t)M * N * 2, x_bytes = (size_t)M * d * 2;
    unsigned char *want = t_xmalloc(out_bytes + x_bytes), *got = t_xmalloc(out_bytes + x_bytes);
    gemm_ws_args uv = {M, N, d, xn, d, W, N, out, N, 0, 0, NULL};
    gemm_ws_args pj = {M, d, d, xn, d, Wp, d, x, d, 0, 1, b};
    char why[256] = "";
    T_CHECK(gemm_ws_supported(&uv, why, sizeof why) && gemm_ws_supported(&pj, why, sizeof why), "%s", why);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    T_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "capture");
    int rc1 = layernorm_bf16_cuda(M, d, x, d, NULL, NULL, 1e-5f, xn, d, s);
    int rc2 = gemm_ws_cuda(&uv, s), rc3 = gemm_ws_cuda(&pj, s);
    T_CHECK(cudaStreamEndCapture(s, &graph) == cudaSuccess && !rc1 && !rc2 && !rc3, "capture: %d %d %d", rc1, rc2,
            rc3);
    T_CHECK(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess, "instantiate");
    for (int round = 0; round < 2 && exec; round++) {
        cudaMemcpy(x, round ? x2 : x1, x_bytes, cudaMemcpyDeviceToDevice);
        layernorm_bf16_cuda(M, d, x, d, NULL, NULL, 1e-5f, xn, d, s);
        gemm_ws_cuda(&uv, s);
        gemm_ws_cuda(&pj, s);
        cudaStreamSynchronize(s);
        cudaMemcpy(want, out, out_bytes, cudaMemcpyDeviceToHost);
        cudaMemcpy(want + out_bytes, x, x_bytes, cudaMemcpyDeviceToHost);
        for (int rep = 0; rep < 3; rep++) {
            cudaMemcpyAsync(x, round ? x2 : x1, x_bytes, cudaMemcpyDeviceToDevice, s);
            cudaMemsetAsync(out, 0xff, out_bytes, s);
            cudaMemsetAsync(xn, 0xff, x_bytes, s);
            T_CHECK(cudaGraphLaunch(exec, s) == cudaSuccess, "launch");
            cudaStreamSynchronize(s);
            cudaMemcpy(got, out, out_bytes, cudaMemcpyDeviceToHost);
            cudaMemcpy(got + out_bytes, x, x_bytes, cudaMemcpyDeviceToHost);
            T_CHECK(!memcmp(want, got, out_bytes), "input %d, replay %d: uvqk differs from the eager run", round,
                    rep);
            T_CHECK(!memcmp(want + out_bytes, got + out_bytes, x_bytes),
                    "input %d, replay %d: proj's x differs from the eager run", round, rep);
        }
    }
    T_CHECK(cudaGetLastError() == cudaSuccess, "CUDA error");
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    cuda_pdl_set(pdl_was);
    free(want), free(got);
    cudaFree(x1), cudaFree(x2), cudaFree(x), cudaFree(xn), cudaFree(W), cudaFree(Wp), cudaFree(b), cudaFree(out);
    cudaStreamDestroy(s);
}

#endif /* HSTU_HAVE_CUDA */

T_GPU_MAIN(GEMM_WS_TESTS)
