/* test_gemm_fused_cuda.c - gemm_fused_cuda (the uvqk GEMM with its bias, SiLU and
 * KV append) against the CPU: gemm_cpu (OpenBLAS, itself checked against the
 * plain-loop gemm_ref in test_dense) in fp32 on the same bf16 inputs, then
 * the bias and an exact SiLU in double.
 *
 * Every case runs on every tile shape: 128-row tiles of both widths (128
 * and 256 columns), alone and in clusters of two CTAs that share W's loads
 * (an odd count of row blocks leaves the second CTA of the last pair past
 * M) and the 96 x 128 tiles computed transposed, on outputs and a page
 * pool poisoned with NaN bits, and checks:
 *   - every output value is within bf16's rounding of the reference:
 *     |out - ref| <= |ref| / 256 + 1e-3 (products of bf16 values are exact
 *     in fp32, so only the summation order and the one final rounding
 *     differ; the absolute term covers sums that cancel to near zero);
 *   - the row stride's padding columns still hold the poison;
 *   - with the append: each row with a slot has its V and K columns in its
 *     page slot, bit for bit what C holds, and nothing else in the pool was
 *     written.
 * Shapes: one row, rows and columns off the 128-row and 128/256-column
 * tiles, K off the 64-wide slices, padded strides, and the bench-8x1024
 * uvqk shape at 384 and 3072 rows (a returning user, a batch of eight).
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

#define GEMM_FUSED_TESTS(X)                                                             \
    X("fused GEMM: argument checks", test_args)                                         \
    X("fused GEMM: shapes off the tiles, plain", test_plain)                            \
    X("fused GEMM: bias and SiLU from a column on", test_bias_silu)                     \
    X("fused GEMM: KV append to shuffled page slots, nothing else written", test_append) \
    X("fused GEMM: the bench-8x1024 uvqk shape at 384 and 3072 rows", test_uvqk)

#ifdef HSTU_HAVE_CUDA

#include "kernels/gemm_fused_cuda.h"

#include <cuda_runtime_api.h>

#define POISON 0xFFFFu

static rng g_rng = {0x9e3779b97f4a7c15ull};

static void *upload(const void *h, size_t bytes)
{
    void *d = t_dpoison(bytes);
    cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}

/* n random bf16 values in [-1, 1): as bits (for the GPU) and as floats. */
static void rand_bf16(size_t n, uint16_t *bits, float *vals)
{
    for (size_t i = 0; i < n; i++) {
        bits[i] = t_f2bf(rng_range(&g_rng, -1.0f, 1.0f));
        vals[i] = t_bf2f(bits[i]);
    }
}

typedef struct fcase {
    int M, N, K, pad;   /* pad: extra elements in every row stride */
    bool bias, silu;
    int act_from;       /* with bias or silu */
    bool append;        /* the V|K columns are [kv_col, kv_col + vw + kw) */
    int kv_col, vw, kw; /* with append */
} fcase;

/* Runs one case on bm x bn tiles in clusters of cl; returns the largest
 * |out - ref| / tolerance. */
static double run_case(const fcase *fc, int bm, int bn, int cl)
{
    const int M = fc->M, N = fc->N, K = fc->K, lda = K + fc->pad, ldw = N + fc->pad, ldc = N + fc->pad;
    uint16_t *hA = t_xmalloc((size_t)M * lda * 2 + 2), *hW = t_xmalloc((size_t)K * ldw * 2);
    float *A = t_xmalloc((size_t)M * lda * 4 + 4), *W = t_xmalloc((size_t)K * ldw * 4);
    float *bias = t_xmalloc((size_t)N * 4), *ref = t_xmalloc((size_t)M * N * 4 + 4);
    rand_bf16((size_t)M * lda, hA, A);
    rand_bf16((size_t)K * ldw, hW, W);
    for (int c = 0; c < N; c++)
        bias[c] = rng_range(&g_rng, -1.0f, 1.0f);
    if (M > 0)
        gemm_cpu(M, N, K, A, lda, W, ldw, 0.0f, ref, N);
    for (int r = 0; r < M; r++)
        for (int c = fc->act_from; c < N && (fc->bias || fc->silu); c++) {
            double v = (double)ref[(size_t)r * N + c] + (fc->bias ? bias[c] : 0.0);
            ref[(size_t)r * N + c] = (float)(fc->silu ? v / (1.0 + exp(-v)) : v);
        }

    /* the page pool: 3 layers of P slots per page, the kernel writes layer 1 */
    const int P = 4, n_pages = M / P + 3;
    const size_t page_elems = (size_t)3 * P * (fc->vw + fc->kw), k_off = (size_t)P * (fc->vw + fc->kw),
                 v_off = k_off + (size_t)P * fc->kw;
    int64_t *slot = t_xmalloc(sizeof(int64_t) * (M + 1));
    int *perm = t_xmalloc(sizeof(int) * n_pages);
    for (int p = 0; p < n_pages; p++)
        perm[p] = p;
    for (int p = n_pages - 1; p > 0; p--) {
        int q = (int)rng_below(&g_rng, p + 1), t = perm[p];
        perm[p] = perm[q], perm[q] = t;
    }
    for (int r = 0; r < M; r++) /* every third row (a candidate) has none */
        slot[r] = r % 3 == 2 ? -1 : (int64_t)perm[r / P] * P + r % P;

    void *d_A = upload(hA, (size_t)M * lda * 2 + 2), *d_W = upload(hW, (size_t)K * ldw * 2);
    void *d_bias = upload(bias, (size_t)N * 4), *d_C = t_dpoison((size_t)M * ldc * 2 + 16);
    void *d_slot = upload(slot, sizeof(int64_t) * (M + 1));
    void *d_pool = fc->append ? t_dpoison((size_t)n_pages * page_elems * 2) : NULL;
    bias_silu_pages pg = {d_slot, d_pool, page_elems, k_off, v_off, P, fc->kw, fc->vw, 0};
    gemm_fused_epilogue epi = {fc->bias ? d_bias : NULL, fc->bias || fc->silu ? fc->act_from : N, fc->silu,
                               fc->append ? &pg : NULL, fc->kv_col};
    char what[160];
    snprintf(what, sizeof what, "%dx%dx%d pad %d tile %dx%d cluster %d%s%s%s", M, N, K, fc->pad, bm, bn, cl,
             fc->bias ? " bias" : "", fc->silu ? " silu" : "", fc->append ? " append" : "");
    char why[256] = "";
    double worst = 0;
    T_CHECK(gemm_fused_supported(M, N, K, d_A, lda, d_W, ldw, d_C, ldc, &epi, why, sizeof why), "%s: %s", what,
            why);
    gemm_fused_force_tile(bm, bn, cl);
    int tm = 0, tn = 0, tc = 0;
    gemm_fused_tile(M, N, &tm, &tn, &tc);
    T_CHECK(tm == bm && tn == bn && tc == cl, "%s: the forced tile is taken", what);
    int rc = gemm_fused_cuda(M, N, K, d_A, lda, d_W, ldw, d_C, ldc, &epi, NULL);
    gemm_fused_force_tile(0, 0, 0);
    cudaError_t e = cudaDeviceSynchronize();
    T_CHECK(rc == 0 && e == cudaSuccess, "%s: launch %d, sync %s", what, rc, cudaGetErrorString(e));
    if (rc == 0 && e == cudaSuccess) {
        uint16_t *out = t_xmalloc((size_t)M * ldc * 2 + 2);
        cudaMemcpy(out, d_C, (size_t)M * ldc * 2, cudaMemcpyDeviceToHost);
        int bad = 0, pad_written = 0;
        for (int r = 0; r < M; r++) {
            for (int c = 0; c < N; c++) {
                double o = t_bf2f(out[(size_t)r * ldc + c]), x = ref[(size_t)r * N + c];
                double q = fabs(o - x) / (fabs(x) / 256 + 1e-3);
                if (!(q <= 1.0) && bad++ < 3)
                    t_fail_at(__FILE__, __LINE__, "%s: C[%d][%d] = %g, reference %g", what, r, c, o, x);
                worst = isnan(q) ? INFINITY : fmax(worst, q);
            }
            for (int c = N; c < ldc; c++)
                pad_written += out[(size_t)r * ldc + c] != POISON;
        }
        T_CHECK(bad == 0, "%s: %d values off", what, bad);
        T_CHECK(pad_written == 0, "%s: %d padding values written", what, pad_written);
        if (fc->append) {
            size_t n = (size_t)n_pages * page_elems;
            uint16_t *pool = t_xmalloc(n * 2), *expect = t_xmalloc(n * 2);
            cudaMemcpy(pool, d_pool, n * 2, cudaMemcpyDeviceToHost);
            for (size_t i = 0; i < n; i++)
                expect[i] = POISON;
            for (int r = 0; r < M; r++) {
                if (slot[r] < 0)
                    continue;
                uint16_t *base = expect + (size_t)(slot[r] / P) * page_elems;
                int in_page = (int)(slot[r] % P);
                for (int c = 0; c < fc->vw; c++)
                    base[v_off + (size_t)in_page * fc->vw + c] = out[(size_t)r * ldc + fc->kv_col + c];
                for (int c = 0; c < fc->kw; c++)
                    base[k_off + (size_t)in_page * fc->kw + c] = out[(size_t)r * ldc + fc->kv_col + fc->vw + c];
            }
            size_t diff = 0;
            for (size_t i = 0; i < n; i++)
                diff += pool[i] != expect[i];
            T_CHECK(diff == 0, "%s: %zu pool values differ from C's rows (or were written outside them)", what,
                    diff);
            free(pool), free(expect);
        }
        free(out);
    }
    cudaFree(d_A), cudaFree(d_W), cudaFree(d_bias), cudaFree(d_C), cudaFree(d_slot), cudaFree(d_pool);
    free(hA), free(hW), free(A), free(W), free(bias), free(ref), free(slot), free(perm);
    return worst;
}

static void run_cases(const fcase *cs, int n)
{
    static const int shapes[][3] = {{128, 128, 1}, {128, 128, 2}, {128, 256, 1}, {128, 256, 2}, {96, 128, 1}};
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
            worst = fmax(worst, run_case(&cs[i], shapes[k][0], shapes[k][1], shapes[k][2]));
    printf("    %d shapes x tiles 128 x 128 and 128 x 256 (alone and in pairs) and 96 x 128: worst error %.2f of "
           "the bound\n", n, worst);
}

static void test_args(void)
{
    char why[256];
    void *d = t_dpoison(1 << 20);
    const bf16_t *p = d;
    T_CHECK(gemm_fused_supported(0, 128, 64, p, 64, p, 128, p, 128, NULL, why, sizeof why), "M 0: %s", why);
    T_CHECK(gemm_fused_cuda(0, 128, 64, p, 64, p, 128, d, 128, NULL, NULL) == 0, "M 0 is a no-op");
    T_CHECK(!gemm_fused_supported(4, 100, 64, p, 64, p, 100, p, 100, NULL, why, sizeof why) && strstr(why, "N"),
            "N 100 refused: %s", why);
    T_CHECK(!gemm_fused_supported(4, 128, 64, p + 1, 64, p, 128, p, 128, NULL, why, sizeof why) &&
                strstr(why, "aligned"),
            "unaligned A refused: %s", why);
    T_CHECK(!gemm_fused_supported(4, 128, 64, p, 60, p, 128, p, 128, NULL, why, sizeof why), "lda < K refused");
    gemm_fused_epilogue e = {NULL, 4, 1, NULL, 0};
    T_CHECK(!gemm_fused_supported(4, 128, 64, p, 64, p, 128, p, 128, &e, why, sizeof why), "act_from 4 refused");
    bias_silu_pages pg = {NULL, d, 96, 0, 48, 4, 8, 16, 0};
    e = (gemm_fused_epilogue){NULL, 128, 0, &pg, 120};
    T_CHECK(!gemm_fused_supported(4, 128, 64, p, 64, p, 128, p, 128, &e, why, sizeof why), "V|K past N refused");
    T_CHECK(gemm_fused_cuda(4, 100, 64, p, 64, p, 100, d, 100, NULL, NULL) == cudaErrorInvalidValue,
            "an unsupported call returns cudaErrorInvalidValue");
    int bm = 0, bn = 0, cl = 0, bm8 = 0, bn8 = 0;
    gemm_fused_tile(384, 4096, &bm, &bn, &cl);
    gemm_fused_tile(3072, 4096, &bm8, &bn8, NULL);
    T_CHECK(bm == 96 && bn == 128 && cl == 1 && bm8 == 128 && bn8 == 256,
            "tiles: 96 x 128 at 384 rows (%d x %d), 128 x 256 at 3072 (%d x %d)", bm, bn, bm8, bn8);
    cudaFree(d);
}

static void test_plain(void)
{
    static const fcase cs[] = {
        {.M = 1, .N = 8, .K = 8},         {.M = 5, .N = 136, .K = 72, .pad = 8},
        {.M = 127, .N = 256, .K = 64},    {.M = 129, .N = 264, .K = 200, .pad = 16},
        {.M = 300, .N = 520, .K = 1032},  {.M = 128, .N = 384, .K = 1024},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_bias_silu(void)
{
    static const fcase cs[] = {
        {.M = 3, .N = 128, .K = 64, .bias = true, .silu = true, .act_from = 0},
        {.M = 130, .N = 392, .K = 136, .pad = 8, .bias = true, .silu = true, .act_from = 200},
        {.M = 77, .N = 256, .K = 96, .bias = true, .act_from = 64},
        {.M = 250, .N = 520, .K = 256, .silu = true, .act_from = 8},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_append(void)
{
    static const fcase cs[] = {
        {.M = 37, .N = 160, .K = 64, .bias = true, .silu = true, .act_from = 64, .append = true, .kv_col = 64,
         .vw = 48, .kw = 32},
        {.M = 200, .N = 512, .K = 128, .pad = 8, .bias = true, .silu = true, .act_from = 256, .append = true,
         .kv_col = 256, .vw = 128, .kw = 128},
        {.M = 9, .N = 96, .K = 40, .append = true, .kv_col = 40, .vw = 24, .kw = 32},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_uvqk(void)
{
    /* u|q|v|k, 4 heads of 256: v|k from column 2048 get bias, SiLU and the append */
    static const fcase cs[] = {
        {.M = 384, .N = 4096, .K = 1024, .bias = true, .silu = true, .act_from = 2048, .append = true,
         .kv_col = 2048, .vw = 1024, .kw = 1024},
        {.M = 3072, .N = 4096, .K = 1024, .bias = true, .silu = true, .act_from = 2048, .append = true,
         .kv_col = 2048, .vw = 1024, .kw = 1024},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

#endif /* HSTU_HAVE_CUDA */

T_GPU_MAIN(GEMM_FUSED_TESTS)
