/* test_gemm_splitk_cuda.c - gemm_splitk_cuda (the proj GEMM, C += A @ W +
 * bias, K split across a cluster) against the CPU: gemm_cpu (OpenBLAS,
 * itself checked against the plain-loop gemm_ref in test_dense) in fp32 on
 * the same bf16 inputs, plus the bias and C's old values in double.
 *
 * Every case runs at every split (clusters of 2, 4 and 8 CTAs, as K allows)
 * and with the split the kernel picks, with C in bf16 and in fp32, on
 * outputs whose row padding holds NaN bits, and checks:
 *   - every output value is within the rounding of the reference: for
 *     bf16, |out - ref| <= |ref| / 256 + 1e-3 (products of bf16 values are
 *     exact in fp32, so the summation order and the one final rounding
 *     are all that differ); for fp32, 1e-5 |ref| + 4e-4 K / 1024 (the
 *     summation order only, on K products of magnitude 1 at most);
 *   - the row stride's padding columns still hold the poison;
 *   - a second run from the same C gives the same bits (a fixed order of
 *     the partials' sum).
 * Shapes: one row, rows and columns off the 128 x 128 tiles, K off the
 * 64-wide slices and shares of K that do not divide evenly, padded
 * strides, and the bench-8x1024 proj shape at 384 and 768 rows (one and
 * two returning users). Without CUDA in the build, or without a usable GPU,
 * every case is skipped with the reason.
 */
#include "gpu_main.h"

#include "core/rng.h"
#include "kernels/dense.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEMM_SPLITK_TESTS(X)                                                  \
    X("split-K GEMM: argument checks and the split it picks", test_args)      \
    X("split-K GEMM: shapes off the tiles and slices, every split", test_shapes) \
    X("split-K GEMM: the bench-8x1024 proj shape at 384 and 768 rows", test_proj)

#ifdef HSTU_HAVE_CUDA

#include "kernels/gemm_splitk_cuda.h"

#include <cuda_runtime_api.h>

static rng g_rng = {0x2545f4914f6cdd1dull};

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

typedef struct scase {
    int M, N, K, pad; /* pad: extra elements in every row stride */
    bool bias;
} scase;

/* Runs one case with clusters of ks (0: the kernel's choice) and C in fp32
 * or bf16; returns the largest |out - ref| / tolerance. */
static double run_case(const scase *sc, int ks, bool f32)
{
    const int M = sc->M, N = sc->N, K = sc->K, lda = K + sc->pad, ldw = N + sc->pad, ldc = N + sc->pad;
    const size_t esz = f32 ? 4 : 2, cn = (size_t)M * ldc;
    uint16_t *hA = t_xmalloc((size_t)M * lda * 2 + 2), *hW = t_xmalloc((size_t)K * ldw * 2);
    float *A = t_xmalloc((size_t)M * lda * 4 + 4), *W = t_xmalloc((size_t)K * ldw * 4);
    float *bias = t_xmalloc((size_t)N * 4), *old = t_xmalloc(cn * 4 + 4), *ref = t_xmalloc((size_t)M * N * 4 + 4);
    uint8_t *hC = t_xmalloc(cn * esz + 4), *hb = t_xmalloc((size_t)N * esz);
    rand_bf16((size_t)M * lda, hA, A);
    rand_bf16((size_t)K * ldw, hW, W);
    /* bias and C's old values: bf16-representable either way */
    for (int c = 0; c < N; c++) {
        uint16_t b = t_f2bf(rng_range(&g_rng, -1.0f, 1.0f));
        bias[c] = t_bf2f(b);
        if (f32)
            memcpy(hb + (size_t)c * 4, &bias[c], 4);
        else
            memcpy(hb + (size_t)c * 2, &b, 2);
    }
    for (size_t i = 0; i < cn; i++) {
        uint16_t b = (size_t)(i % ldc) < (size_t)N ? t_f2bf(rng_range(&g_rng, -2.0f, 2.0f)) : 0xFFFFu;
        old[i] = t_bf2f(b);
        if (f32) {
            uint32_t u = b == 0xFFFFu ? 0xFFFFFFFFu : (uint32_t)b << 16;
            memcpy(hC + i * 4, &u, 4);
        } else {
            memcpy(hC + i * 2, &b, 2);
        }
    }
    if (M > 0)
        gemm_cpu(M, N, K, A, lda, W, ldw, 0.0f, ref, N);
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            ref[(size_t)r * N + c] =
                (float)((double)ref[(size_t)r * N + c] + (sc->bias ? bias[c] : 0.0) + old[(size_t)r * ldc + c]);

    void *d_A = upload(hA, (size_t)M * lda * 2 + 2), *d_W = upload(hW, (size_t)K * ldw * 2);
    void *d_b = upload(hb, (size_t)N * esz), *d_C = upload(hC, cn * esz + 4);
    char what[160];
    snprintf(what, sizeof what, "%dx%dx%d pad %d, clusters of %d, C %s%s", M, N, K, sc->pad, ks,
             f32 ? "fp32" : "bf16", sc->bias ? ", bias" : "");
    char why[256] = "";
    double worst = 0;
    gemm_splitk_force(ks);
    T_CHECK(gemm_splitk_supported(M, N, K, d_A, lda, d_W, ldw, d_C, f32, ldc, sc->bias ? d_b : NULL, why,
                                  sizeof why),
            "%s: %s", what, why);
    uint8_t *out = t_xmalloc(cn * esz + 4), *again = t_xmalloc(cn * esz + 4);
    int rc = gemm_splitk_cuda(M, N, K, d_A, lda, d_W, ldw, d_C, f32, ldc, sc->bias ? d_b : NULL, NULL);
    cudaError_t e = cudaDeviceSynchronize();
    T_CHECK(rc == 0 && e == cudaSuccess, "%s: launch %d, sync %s", what, rc, cudaGetErrorString(e));
    cudaMemcpy(out, d_C, cn * esz, cudaMemcpyDeviceToHost);
    /* again from the same C: the same bits */
    cudaMemcpy(d_C, hC, cn * esz, cudaMemcpyHostToDevice);
    rc = gemm_splitk_cuda(M, N, K, d_A, lda, d_W, ldw, d_C, f32, ldc, sc->bias ? d_b : NULL, NULL);
    e = cudaDeviceSynchronize();
    gemm_splitk_force(0);
    cudaMemcpy(again, d_C, cn * esz, cudaMemcpyDeviceToHost);
    T_CHECK(rc == 0 && e == cudaSuccess && memcmp(out, again, cn * esz) == 0, "%s: a second run gives the same bits",
            what);
    int bad = 0, pad_written = 0;
    for (int r = 0; r < M; r++) {
        for (int c = 0; c < N; c++) {
            const size_t i = (size_t)r * ldc + c;
            double o, x = ref[(size_t)r * N + c], tol;
            if (f32) {
                float f;
                memcpy(&f, out + i * 4, 4);
                o = f;
                tol = 1e-5 * fabs(x) + 4e-4 * K / 1024;
            } else {
                uint16_t b;
                memcpy(&b, out + i * 2, 2);
                o = t_bf2f(b);
                tol = fabs(x) / 256 + 1e-3;
            }
            double q = fabs(o - x) / tol;
            if (!(q <= 1.0) && bad++ < 3)
                t_fail_at(__FILE__, __LINE__, "%s: C[%d][%d] = %g, reference %g", what, r, c, o, x);
            worst = isnan(q) ? INFINITY : fmax(worst, q);
        }
        for (int c = N; c < ldc; c++)
            pad_written += memcmp(out + ((size_t)r * ldc + c) * esz, hC + ((size_t)r * ldc + c) * esz, esz) != 0;
    }
    T_CHECK(bad == 0, "%s: %d values off", what, bad);
    T_CHECK(pad_written == 0, "%s: %d padding values written", what, pad_written);
    cudaFree(d_A), cudaFree(d_W), cudaFree(d_b), cudaFree(d_C);
    free(hA), free(hW), free(A), free(W), free(bias), free(old), free(ref), free(hC), free(hb);
    free(out), free(again);
    return worst;
}

/* Every case at every split its K allows and at the kernel's own choice
 * (where it makes one), both types of C. */
static void run_cases(const scase *cs, int n)
{
    double worst = 0;
    int runs = 0;
    for (int i = 0; i < n; i++)
        for (int ks = 0; ks <= 8; ks = ks ? 2 * ks : 2) {
            int pick = 0;
            gemm_splitk_force(ks);
            gemm_splitk_shape(cs[i].M, cs[i].N, cs[i].K, NULL, &pick);
            gemm_splitk_force(0);
            if (pick == 0)
                continue;
            for (int f = 0; f < 2; f++, runs++)
                worst = fmax(worst, run_case(&cs[i], ks, f == 1));
        }
    printf("    %d shapes, %d runs (clusters of 2, 4, 8 and the kernel's pick; C bf16 and fp32): worst error %.2f of "
           "the bound\n", n, runs, worst);
}

static void test_args(void)
{
    char why[256];
    void *d = t_dpoison(1 << 20);
    const bf16_t *p = d;
    T_CHECK(gemm_splitk_supported(0, 128, 128, p, 128, p, 128, p, 0, 128, NULL, why, sizeof why), "M 0: %s", why);
    T_CHECK(gemm_splitk_cuda(0, 128, 128, p, 128, p, 128, d, 0, 128, NULL, NULL) == 0, "M 0 is a no-op");
    T_CHECK(!gemm_splitk_supported(4, 100, 128, p, 128, p, 100, p, 0, 100, NULL, why, sizeof why) &&
                strstr(why, "N"),
            "N 100 refused: %s", why);
    T_CHECK(!gemm_splitk_supported(4, 128, 128, p + 1, 128, p, 128, p, 0, 128, NULL, why, sizeof why) &&
                strstr(why, "aligned"),
            "unaligned A refused: %s", why);
    T_CHECK(!gemm_splitk_supported(4, 128, 128, p, 120, p, 128, p, 0, 128, NULL, why, sizeof why),
            "lda < K refused");
    T_CHECK(!gemm_splitk_supported(4, 128, 128, p, 128, p, 128, p, 1, 128, p + 4, why, sizeof why) &&
                strstr(why, "bias"),
            "an fp32 bias off 16 bytes refused: %s", why);
    T_CHECK(!gemm_splitk_supported(4, 128, 64, p, 64, p, 128, p, 0, 128, NULL, why, sizeof why) &&
                strstr(why, "split"),
            "K of one slice refused: %s", why);
    T_CHECK(!gemm_splitk_supported(8192, 1024, 1024, p, 1024, p, 1024, p, 0, 1024, NULL, why, sizeof why) &&
                strstr(why, "wave"),
            "8192 rows refused (cuBLASLt's): %s", why);
    T_CHECK(gemm_splitk_cuda(4, 100, 128, p, 128, p, 100, d, 0, 100, NULL, NULL) == cudaErrorInvalidValue,
            "an unsupported call returns cudaErrorInvalidValue");
    int t384 = 0, k384 = 0, k768 = 0, k128 = 0;
    gemm_splitk_shape(384, 1024, 1024, &t384, &k384);
    gemm_splitk_shape(768, 1024, 1024, NULL, &k768);
    gemm_splitk_shape(128, 1024, 1024, NULL, &k128);
    T_CHECK(t384 == 24 && k384 == 4 && k768 == 2 && k128 == 8,
            "splits at N = K = 1024: 384 rows %d tiles in clusters of %d (24, 4), 768 rows %d (2), 128 rows %d (8)",
            t384, k384, k768, k128);
    gemm_splitk_force(8);
    int k2 = 0;
    gemm_splitk_shape(384, 1024, 128, NULL, &k2);
    gemm_splitk_force(0);
    T_CHECK(k2 == 0, "a forced split of 8 at K = 128 (2 slices) is not taken: %d", k2);
    cudaFree(d);
}

static void test_shapes(void)
{
    static const scase cs[] = {
        {.M = 1, .N = 8, .K = 136},
        {.M = 5, .N = 136, .K = 200, .pad = 8, .bias = true},
        {.M = 127, .N = 256, .K = 520},
        {.M = 129, .N = 264, .K = 1032, .pad = 16, .bias = true},
        {.M = 300, .N = 392, .K = 1000, .bias = true},
        {.M = 256, .N = 128, .K = 2048, .pad = 8},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

static void test_proj(void)
{
    static const scase cs[] = {
        {.M = 384, .N = 1024, .K = 1024, .bias = true},
        {.M = 768, .N = 1024, .K = 1024, .bias = true},
    };
    run_cases(cs, (int)(sizeof cs / sizeof cs[0]));
}

#endif /* HSTU_HAVE_CUDA */

T_GPU_MAIN(GEMM_SPLITK_TESTS)
