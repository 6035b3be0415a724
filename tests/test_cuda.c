/* test_cuda.c - the CUDA backend against the CPU reference.
 *
 * - every row-wise kernel of dense_cuda.h against its twin in dense.h, the
 *   bf16 GEMM wrapper against gemm_ref, and the top-k selection against
 *   topk_ref, on random inputs with edge shapes (one row, odd widths, rows
 *   too wide for the register path, padded strides, the presets' widths);
 * - the whole model: an engine with backend cuda against the reference
 *   engine on random models of both families (two small rankings, one small
 *   retrieval, the kuairand-1k preset with shorter histories), jagged batches
 *   with 0- and 1-item histories and the maxima;
 * - programmatic dependent launch (src/kernels/pdl.cuh) off, then on: the
 *   whole model, with and without the KV cache, to the same rule both ways.
 *
 * Tolerance (spec 5, docs/numerics.md): a bf16 result's error against the
 * fp32 reference must be at most 2x the error of the same math done in bf16
 * (the "emulated" result: the reference computation with bf16 weights and
 * every stored activation rounded to bf16), and ||out - ref|| / ||ref|| <=
 * 1e-2; NaN or Inf fails. fp32 results (embedding, fp32-output GEMMs) are
 * held to fp32 bounds. Retrieval: top-k scores by the same rule; ids may
 * differ from the reference only where the reference's scores are within
 * bf16 noise (2x the emulated score error) of each other.
 *
 * Without CUDA in the build, or without a usable GPU, every case is skipped
 * with the reason. HSTU_TEST_SMALL=1 keeps only small shapes (for
 * compute-sanitizer, which runs kernels far slower).
 */
#include "harness.h"

#include "core/rng.h"
#include "core/status.h"
#include "cuda/cuda_backend.h"
#include "kernels/dense.h"
#include "kernels/topk.h"
#include "model/engine.h"
#include "model/model.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CUDA_TESTS(X)                                                                             \
    X("cuda: embedding gather", test_embed)                                                       \
    X("cuda: layernorm", test_layernorm)                                                          \
    X("cuda: bias + SiLU", test_bias_silu)                                                        \
    X("cuda: SiLU(u + b) * LN(a)", test_ln_mul)                                                   \
    X("cuda: SiLU(u + b) * LN(a) with a as split-KV parts", test_ln_mul_parts)                    \
    X("cuda: the LayerNorm folded into the uvqk GEMM (ln_fold)", test_ln_fold)                    \
    X("cuda: gather + L2 norm", test_gather_l2norm)                                               \
    X("cuda: scores (sigmoid or logits) into pinned host or device memory", test_scores_out)      \
    X("cuda: bf16 GEMM (cuBLASLt)", test_gemm)                                                    \
    X("cuda: top-k selection vs topk_ref", test_topk)                                             \
    X("cuda: unsupported head widths are refused", test_unsupported)                              \
    X("cuda: engine vs reference, small ranking", test_model_ranking)                             \
    X("cuda: engine vs reference, small ranking (silu u, proj bias, no affine, no hidden)",       \
      test_model_ranking_variant)                                                                 \
    X("cuda: engine vs reference, small retrieval", test_model_retrieval)                         \
    X("cuda: engine vs reference, retrieval over 600k items, 120 users (two top-k groups)",       \
      test_model_retrieval_groups)                                                                \
    X("cuda: engine vs reference, kuairand-1k (histories <= 256 items)", test_model_kuairand)        \
    X("cuda: KV append and block copy kernels", test_kv_kernels)                                  \
    X("cuda: engine vs reference, GPU KV cache + host tier, ranking (churn, rewrites)",            \
      test_cache_ranking)                                                                         \
    X("cuda: engine vs reference, GPU KV cache + host tier, retrieval (churn, rewrites, partial onloads)", \
      test_cache_retrieval)                                                                       \
    X("cuda: engine vs reference, GPU KV cache, onload all layers first, no CUDA graphs",         \
      test_cache_no_overlap)                                                                      \
    X("cuda: engine vs reference, GPU KV cache, host hits partly onloaded, recomputed, all onloaded", \
      test_cache_onload)                                                                          \
    X("cuda: engine vs reference, programmatic dependent launch off, then on", test_model_pdl)

#ifdef HSTU_HAVE_CUDA

#include "kernels/dense_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/pdl_cuda.h"
#include "kernels/topk_cuda.h"
#include "kvcache/kv_cuda.h"

#include <cblas.h>
#include <cuda_runtime_api.h>

static rng g_rng = {0xc0da5eedull};
static bool g_small;
static bool g_kernels_only;

/* ---- bf16 and device helpers -------------------------------------------- */

static float rbf(float f) { return t_bf2f(t_f2bf(f)); }

static void round_bf16(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = rbf(x[i]);
}

/* Uniform values from r (the _r forms: a case's own stream, which leaves
 * g_rng's, and so every later case's inputs, as they were). */
static float *rand_f32_r(rng *r, size_t n, float lo, float hi)
{
    float *p = t_xmalloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        p[i] = rng_range(r, lo, hi);
    return p;
}

static float *rand_f32(size_t n, float lo, float hi) { return rand_f32_r(&g_rng, n, lo, hi); }

/* Random values already representable in bf16 (inputs the GPU reads as bf16). */
static float *rand_bf_r(rng *r, size_t n, float lo, float hi)
{
    float *p = rand_f32_r(r, n, lo, hi);
    round_bf16(p, n);
    return p;
}

static float *rand_bf(size_t n, float lo, float hi) { return rand_bf_r(&g_rng, n, lo, hi); }

static float *up_f32(const float *h, size_t n)
{
    float *d = t_dpoison(n * 4);
    cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice);
    return d;
}

static uint16_t *up_bf16(const float *h, size_t n)
{
    uint16_t *t = t_xmalloc(n * 2 + 2), *d = t_dpoison(n * 2);
    for (size_t i = 0; i < n; i++)
        t[i] = t_f2bf(h[i]);
    cudaMemcpy(d, t, n * 2, cudaMemcpyHostToDevice);
    free(t);
    return d;
}

static int *up_int(const int *h, size_t n)
{
    int *d = t_dpoison(n * 4);
    cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice);
    return d;
}

static void down_bf16(float *h, const uint16_t *d, size_t n)
{
    uint16_t *t = t_xmalloc(n * 2 + 2);
    cudaMemcpy(t, d, n * 2, cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < n; i++)
        h[i] = t_bf2f(t[i]);
    free(t);
}

static void down_f32(float *h, const float *d, size_t n) { cudaMemcpy(h, d, n * 4, cudaMemcpyDeviceToHost); }

/* Synchronises and fails the case on any CUDA error so far. */
static bool sync_ok(const char *what)
{
    cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess)
        e = cudaGetLastError();
    if (e != cudaSuccess)
        t_fail_at(__FILE__, __LINE__, "%s: CUDA error %s", what, cudaGetErrorString(e));
    return e == cudaSuccess;
}

/* ---- error measures ----------------------------------------------------- */

static double l2_rel(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Packs rows x width of a strided buffer. */
static float *pack(const float *x, int rows, int width, int ld)
{
    float *p = t_xmalloc(sizeof(float) * ((size_t)rows * width + 1));
    for (int r = 0; r < rows; r++)
        memcpy(p + (size_t)r * width, x + (size_t)r * ld, sizeof(float) * width);
    return p;
}

typedef struct bf16_check {
    double err, emu_err, l2;
} bf16_check;

/* Spec 5's bf16 rule: out's error against the fp32 ref at most 2x that of
 * emu (the same math in bf16), its relative L2 error at most 1e-2, all
 * finite. Errors are max|. - ref| / max|ref| over the tensor. */
static bf16_check check_bf16(const char *what, const float *out, const float *ref, const float *emu, size_t n)
{
    bf16_check c = {t_rel_err(out, ref, n), t_rel_err(emu, ref, n), l2_rel(out, ref, n)};
    T_CHECK(!t_has_nonfinite(out, n), "%s: NaN or Inf in the output", what);
    T_CHECK(c.err <= 2.0 * c.emu_err + 1e-7, "%s: error %.3g > 2x bf16 emulation's %.3g", what, c.err,
            c.emu_err);
    T_CHECK(c.l2 <= 1e-2, "%s: relative L2 error %.3g > 1e-2", what, c.l2);
    return c;
}

/* Same, for a strided rows x width result; also checks that the padding
 * columns [width, ld) came out zero (they feed GEMMs). */
static bf16_check check_rows_bf16(const char *what, const float *out, const float *ref, int rows, int width,
                                  int ld)
{
    float *o = pack(out, rows, width, ld), *r = pack(ref, rows, width, width);
    float *e = pack(ref, rows, width, width);
    round_bf16(e, (size_t)rows * width);
    bf16_check c = check_bf16(what, o, r, e, (size_t)rows * width);
    for (int i = 0; i < rows; i++)
        for (int j = width; j < ld; j++)
            if (out[(size_t)i * ld + j] != 0.0f) {
                t_fail_at(__FILE__, __LINE__, "%s: padding [%d, %d] = %g, expected 0", what, i, j,
                          out[(size_t)i * ld + j]);
                i = rows;
                break;
            }
    free(o);
    free(r);
    free(e);
    return c;
}

/* ---- dense kernels ------------------------------------------------------ */

static const int widths[] = {1, 3, 24, 50, 129, 512, 1024, 2048, 2056};
#define N_WIDTHS ((int)(sizeof widths / sizeof widths[0]))
/* 1100 rows take the row-wise kernels' plain forms, fewer their early forms
 * (dense.cu's header) */
static const int row_counts[] = {1, 7, 300, 1100};

static int pad8(int n) { return (n + 7) / 8 * 8; }

/* embed_cuda (fp32 x) and embed_ln_cuda: x fp32 or bf16, with or without
 * the fused LayerNorm (checked against layernorm_ref on the x it stored);
 * 257 rows take the early form, 1100 the plain one. */
static void test_embed(void)
{
    int rows_tab = 40, n_pos = 30;
    double worst_x = 0, worst_ln = 0;
    for (int T = 257; T <= 1100; T += 1100 - 257)
    for (int wi = 0; wi < N_WIDTHS; wi++)
        for (int padded = 0; padded < 2; padded++)
            for (int mode = 0; mode < 4; mode++) { /* 0: embed_cuda; 1: f32 + LN; 2: bf16 + LN; 3: bf16 */
                int d = widths[wi], ld = padded ? pad8(d) + 8 : d, ldn = pad8(d) + (padded ? 0 : 8);
                bool x_f32 = mode < 2, ln = mode == 1 || mode == 2, affine = padded == 0;
                float *tab = rand_bf((size_t)rows_tab * ld, -1, 1), *pos = rand_bf((size_t)n_pos * ld, -0.5f, 0.5f);
                float *gw = rand_f32((size_t)d, 0.5f, 1.5f), *gb = rand_f32((size_t)d, -0.5f, 0.5f);
                int *rows = t_xmalloc(sizeof(int) * T), *p = t_xmalloc(sizeof(int) * T);
                for (int t = 0; t < T; t++) {
                    rows[t] = (int)rng_below(&g_rng, rows_tab);
                    p[t] = (int)rng_below(&g_rng, n_pos);
                }
                float scale = sqrtf((float)d);
                uint16_t *d_tab = up_bf16(tab, (size_t)rows_tab * ld), *d_pos = up_bf16(pos, (size_t)n_pos * ld);
                int *d_rows = up_int(rows, T), *d_p = up_int(p, T);
                float *d_w = up_f32(gw, d), *d_b = up_f32(gb, d);
                void *d_x = t_dpoison((size_t)T * ld * (x_f32 ? 4 : 2));
                uint16_t *d_xn = t_dpoison((size_t)T * ldn * 2);
                if (mode == 0)
                    T_CHECK(embed_cuda(T, d, d_tab, ld, d_rows, d_pos, ld, d_p, scale, d_x, ld, NULL) == 0, "launch");
                else
                    T_CHECK(embed_ln_cuda(T, d, d_tab, ld, d_rows, d_pos, ld, d_p, scale, d_x, x_f32, ld,
                                          affine ? d_w : NULL, affine ? d_b : NULL, 1e-5f, ln ? d_xn : NULL, ldn,
                                          NULL) == 0,
                            "launch");
                if (sync_ok("embed")) {
                    float *x = t_xmalloc(sizeof(float) * T * ld), *ref = t_xmalloc(sizeof(float) * T * ld);
                    if (x_f32)
                        down_f32(x, d_x, (size_t)T * ld);
                    else
                        down_bf16(x, d_x, (size_t)T * ld);
                    for (int t = 0; t < T; t++)
                        for (int c = 0; c < ld; c++)
                            ref[(size_t)t * ld + c] =
                                c < d ? tab[(size_t)rows[t] * ld + c] * scale + pos[(size_t)p[t] * ld + c] : 0.0f;
                    char what[96];
                    snprintf(what, sizeof what, "embed %d rows width %d ld %d mode %d", T, d, ld, mode);
                    if (x_f32) {
                        double e = t_rel_err(x, ref, (size_t)T * ld);
                        T_CHECK(e <= 1e-6 && !t_has_nonfinite(x, (size_t)T * ld), "%s: error %.3g", what, e);
                    } else {
                        float *r = pack(ref, T, d, ld);
                        bf16_check c = check_rows_bf16(what, x, r, T, d, ld);
                        worst_x = fmax(worst_x, c.err);
                        free(r);
                    }
                    if (ln) {
                        float *y = t_xmalloc(sizeof(float) * T * ldn), *lr = t_xmalloc(sizeof(float) * T * d);
                        down_bf16(y, d_xn, (size_t)T * ldn);
                        layernorm_ref(T, d, x, ld, affine ? gw : NULL, affine ? gb : NULL, 1e-5f, lr, d);
                        snprintf(what, sizeof what, "embed + LN width %d ld %d x %s", d, ld, x_f32 ? "f32" : "bf16");
                        bf16_check c = check_rows_bf16(what, y, lr, T, d, ldn);
                        worst_ln = fmax(worst_ln, c.err);
                        free(y), free(lr);
                    }
                    free(x);
                    free(ref);
                }
                cudaFree(d_tab), cudaFree(d_pos), cudaFree(d_rows), cudaFree(d_p), cudaFree(d_x), cudaFree(d_xn);
                cudaFree(d_w), cudaFree(d_b);
                free(tab), free(pos), free(rows), free(p), free(gw), free(gb);
            }
    printf("    worst error: bf16 x %.3g, fused LN %.3g\n", worst_x, worst_ln);
}

static void test_layernorm(void)
{
    double worst = 0, worst_emu = 0;
    for (int ri = 0; ri < 3; ri++)
        for (int wi = 0; wi < N_WIDTHS; wi++)
            for (int variant = 0; variant < 4; variant++) { /* variants 2, 3: bf16 x */
                int rows = row_counts[ri], w = widths[wi];
                bool affine = variant % 2 == 0, x16 = variant >= 2;
                int ldx = variant % 2 ? w : pad8(w) + 8, ldy = pad8(w) + (variant % 2 ? 0 : 8);
                float *x = x16 ? rand_bf((size_t)rows * ldx, -1.0f, 3.0f)  /* a mean far from 0 */
                               : rand_f32((size_t)rows * ldx, -1.0f, 3.0f);
                float *gw = rand_f32((size_t)w, 0.5f, 1.5f), *gb = rand_f32((size_t)w, -0.5f, 0.5f);
                void *d_x = x16 ? (void *)up_bf16(x, (size_t)rows * ldx) : (void *)up_f32(x, (size_t)rows * ldx);
                float *d_w = up_f32(gw, w), *d_b = up_f32(gb, w);
                uint16_t *d_y = t_dpoison((size_t)rows * ldy * 2);
                if (x16)
                    T_CHECK(layernorm_bf16_cuda(rows, w, d_x, ldx, affine ? d_w : NULL, affine ? d_b : NULL, 1e-5f,
                                                d_y, ldy, NULL) == 0,
                            "launch");
                else
                    T_CHECK(layernorm_cuda(rows, w, d_x, ldx, affine ? d_w : NULL, affine ? d_b : NULL, 1e-5f, d_y,
                                           ldy, NULL) == 0,
                            "launch");
                if (sync_ok("layernorm")) {
                    float *y = t_xmalloc(sizeof(float) * rows * ldy), *ref = t_xmalloc(sizeof(float) * rows * w);
                    down_bf16(y, d_y, (size_t)rows * ldy);
                    layernorm_ref(rows, w, x, ldx, affine ? gw : NULL, affine ? gb : NULL, 1e-5f, ref, w);
                    char what[96];
                    snprintf(what, sizeof what, "layernorm rows %d width %d %s x %s", rows, w,
                             affine ? "affine" : "plain", x16 ? "bf16" : "f32");
                    bf16_check c = check_rows_bf16(what, y, ref, rows, w, ldy);
                    worst = fmax(worst, c.err), worst_emu = fmax(worst_emu, c.emu_err);
                    free(y);
                    free(ref);
                }
                cudaFree(d_x), cudaFree(d_w), cudaFree(d_b), cudaFree(d_y);
                free(x), free(gw), free(gb);
            }
    printf("    worst error %.3g (bf16 rounding alone: %.3g)\n", worst, worst_emu);
}

static void test_bias_silu(void)
{
    static const int w_silu[] = {1, 3, 24, 50, 1536, 3072};
    double worst = 0;
    for (int ri = 0; ri < 3; ri++)
        for (int wi = 0; wi < 6; wi++)
            for (int variant = 0; variant < 3; variant++) {
                int rows = row_counts[ri], w = w_silu[wi], ld = variant == 2 ? w : pad8(w) + 16;
                bool bias = variant != 1, silu_on = variant != 2 || w % 2;
                float *x = rand_bf((size_t)rows * ld, -6, 6), *b = rand_f32((size_t)w, -1, 1);
                uint16_t *d_x = up_bf16(x, (size_t)rows * ld);
                float *d_b = up_f32(b, w);
                T_CHECK(bias_silu_cuda(rows, w, d_x, ld, bias ? d_b : NULL, silu_on, NULL, NULL, NULL) == 0, "launch");
                if (sync_ok("bias_silu")) {
                    float *y = t_xmalloc(sizeof(float) * rows * ld), *ref = t_xmalloc(sizeof(float) * rows * ld);
                    down_bf16(y, d_x, (size_t)rows * ld);
                    memcpy(ref, x, sizeof(float) * rows * ld);
                    bias_silu_ref(rows, w, ref, ld, bias ? b : NULL, silu_on ? w : 0);
                    float *o = pack(y, rows, w, ld), *r = pack(ref, rows, w, ld), *e = pack(ref, rows, w, ld);
                    round_bf16(e, (size_t)rows * w);
                    char what[96];
                    snprintf(what, sizeof what, "bias_silu rows %d width %d ld %d bias %d silu %d", rows, w, ld, bias,
                             silu_on);
                    bf16_check c = check_bf16(what, o, r, e, (size_t)rows * w);
                    worst = fmax(worst, c.err);
                    /* columns past width are untouched */
                    for (int i = 0; i < rows; i++)
                        for (int j = w; j < ld; j++)
                            if (y[(size_t)i * ld + j] != x[(size_t)i * ld + j]) {
                                t_fail_at(__FILE__, __LINE__, "%s: column %d beyond the width changed", what, j);
                                i = rows;
                                break;
                            }
                    free(o), free(r), free(e), free(y), free(ref);
                }
                cudaFree(d_x), cudaFree(d_b);
                free(x), free(b);
            }
    printf("    worst error %.3g\n", worst);
}

/* The correction a consumer of a folded LayerNorm applies (ln_fold):
 * u[r][c] = rstd_r * (u[r][c] - mean_r * e[c]), stats [rows][2] holding
 * each row's mean and rstd; in double, in place. */
static void fold_ref(int rows, int width, float *u, int ldu, const float *e, const float *stats)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < width; c++) {
            float *v = u + (size_t)r * ldu + c;
            *v = (float)(stats[2 * r + 1] * ((double)*v - (double)stats[2 * r] * e[c]));
        }
}

/* Random statistics of a folded LayerNorm's rows (ln_fold.stats): means in
 * [-3, 3], rstd in [0.2, 2]. */
static float *rand_stats(rng *r, int rows)
{
    float *st = t_xmalloc(sizeof(float) * 2 * rows);
    for (int i = 0; i < rows; i++) {
        st[2 * i] = rng_range(r, -3.0f, 3.0f);
        st[2 * i + 1] = rng_range(r, 0.2f, 2.0f);
    }
    return st;
}

/* Variant 3: u through the folded LayerNorm (ufold: random e and row
 * statistics, the reference corrects u first), also at 1100 rows (the
 * plain forms; the other variants stop at 300). */
static void test_ln_mul(void)
{
    double worst = 0, worst_fold = 0;
    rng fr = {0xf01dull}; /* (variant 3's inputs: g_rng's stream, and so the other variants', as it was) */
    for (int ri = 0; ri < 4; ri++)
        for (int wi = 0; wi < N_WIDTHS; wi++)
            for (int variant = 0; variant < 4; variant++) {
                if (ri == 3 && variant != 3)
                    continue;
                int rows = row_counts[ri], w = widths[wi];
                bool affine = variant != 1, ubias = variant != 2, fold = variant == 3;
                int lda = variant == 2 ? w : pad8(w) + 8, ldu = pad8(w) * 4 + 8, ldy = pad8(w);
                rng *gen = fold ? &fr : &g_rng;
                float *a = rand_bf_r(gen, (size_t)rows * lda, -2, 3), *u = rand_bf_r(gen, (size_t)rows * ldu, -4, 4);
                float *ub = rand_f32_r(gen, w, -1, 1), *gw = rand_f32_r(gen, w, 0.5f, 1.5f);
                float *gb = rand_f32_r(gen, w, -0.5f, 0.5f);
                float *fe = fold ? rand_f32_r(&fr, w, -1, 1) : NULL, *st = fold ? rand_stats(&fr, rows) : NULL;
                uint16_t *d_a = up_bf16(a, (size_t)rows * lda), *d_u = up_bf16(u, (size_t)rows * ldu);
                float *d_ub = up_f32(ub, w), *d_w = up_f32(gw, w), *d_b = up_f32(gb, w);
                float *d_fe = fold ? up_f32(fe, w) : NULL, *d_st = fold ? up_f32(st, (size_t)2 * rows) : NULL;
                uint16_t *d_y = t_dpoison((size_t)rows * ldy * 2);
                const ln_fold uf = {.e = d_fe, .stats = d_st};
                T_CHECK(ln_mul_cuda(rows, w, d_a, lda, d_u, ldu, ubias ? d_ub : NULL, fold ? &uf : NULL,
                                    affine ? d_w : NULL, affine ? d_b : NULL, 1e-5f, d_y, ldy, NULL) == 0,
                        "launch");
                if (sync_ok("ln_mul")) {
                    float *y = t_xmalloc(sizeof(float) * rows * ldy), *ref = t_xmalloc(sizeof(float) * rows * w);
                    down_bf16(y, d_y, (size_t)rows * ldy);
                    /* the reference formulas: u' = SiLU(u + ub) (bias_silu_ref), then ln_mul_ref */
                    float *us = pack(u, rows, w, ldu);
                    if (fold)
                        fold_ref(rows, w, us, w, fe, st);
                    bias_silu_ref(rows, w, us, w, ubias ? ub : NULL, w);
                    ln_mul_ref(rows, w, a, lda, us, w, affine ? gw : NULL, affine ? gb : NULL, 1e-5f, ref, w);
                    char what[96];
                    snprintf(what, sizeof what, "ln_mul rows %d width %d affine %d ubias %d fold %d", rows, w, affine,
                             ubias, fold);
                    bf16_check c = check_rows_bf16(what, y, ref, rows, w, ldy);
                    if (fold)
                        worst_fold = fmax(worst_fold, c.err);
                    else
                        worst = fmax(worst, c.err);
                    free(y), free(ref), free(us);
                }
                cudaFree(d_a), cudaFree(d_u), cudaFree(d_ub), cudaFree(d_w), cudaFree(d_b), cudaFree(d_y);
                cudaFree(d_fe), cudaFree(d_st);
                free(a), free(u), free(ub), free(gw), free(gb), free(fe), free(st);
            }
    printf("    worst error %.3g; with the folded LayerNorm's correction %.3g\n", worst, worst_fold);
}

/* fp16 bits of k / 16 for an integer |k| <= 2047 (exact in fp16's 11
 * significant bits), and back. */
static uint16_t half_of_sixteenths(int k)
{
    if (k == 0)
        return 0;
    uint16_t sign = k < 0 ? 0x8000 : 0;
    int m = k < 0 ? -k : k, e = 10;
    while (m < 1024)
        m <<= 1, e--;
    return (uint16_t)(sign | (uint16_t)((e - 4 + 15) << 10) | (uint16_t)(m & 1023));
}
static float half_value(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e ? ldexpf((float)(m | 1024), e - 25) : ldexpf((float)m, -24);
    return (h & 0x8000) ? -v : v;
}

/* ln_mul_parts_cuda: a = bf16(scale * sum over planes, in order, of fp16 x
 * its power-of-two scale per row and head), then ln_mul_ref. Both of its
 * forms: y's stride a multiple of 8 (and head widths of 8) takes the
 * 8-column one, with its registers sized for 4, 8 or 16 planes by S. Each
 * form without and with u through the folded LayerNorm (ufold: random e
 * and row statistics, the reference corrects u first). */
static void test_ln_mul_parts(void)
{
    static const int pw[] = {4, 24, 512, 1024}, ph[] = {4, 8, 128, 256}, ps[] = {1, 3, 5, 8, 11, 16};
    double worst = 0, worst_fold = 0;
    rng r = {77}, fr = {78}; /* (fr: the fold's values, r's stream as it was without them) */
    for (int ri = 0; ri < 3; ri++)
        for (int wi = 0; wi < 4; wi++)
            for (int si = 0; si < 6; si++) {
                int rows = row_counts[ri], w = pw[wi], hw = ph[wi], H = w / hw, S = ps[si], affine = (wi + si) % 2;
                int ldp = pad8(w) + 8, ldu = w * 4 + 8, ldy = w + ((wi + si + ri) % 3 ? 8 : 4);
                size_t plane = (size_t)rows * ldp + 8, np = plane * S, splane = (size_t)rows * H + 1;
                uint16_t *hp = t_xmalloc(np * 2);
                float *sc = t_xmalloc(sizeof(float) * splane * S);
                for (size_t i = 0; i < np; i++)
                    hp[i] = half_of_sixteenths((int)rng_below(&r, 4095) - 2047);
                for (size_t i = 0; i < splane * S; i++)
                    sc[i] = ldexpf(1.0f, -(int)rng_below(&r, 12));
                float *u = rand_bf((size_t)rows * ldu, -4, 4);
                float *ub = rand_f32(w, -1, 1), *gw = rand_f32(w, 0.5f, 1.5f), *gb = rand_f32(w, -0.5f, 0.5f);
                const float scale = 1.0f / 4096.0f;
                uint16_t *d_hp = NULL;
                cudaMalloc((void **)&d_hp, np * 2);
                cudaMemcpy(d_hp, hp, np * 2, cudaMemcpyHostToDevice);
                float *d_sc = up_f32(sc, splane * S), *d_ub = up_f32(ub, w), *d_w = up_f32(gw, w),
                      *d_b = up_f32(gb, w);
                uint16_t *d_u = up_bf16(u, (size_t)rows * ldu), *d_y = t_dpoison((size_t)rows * ldy * 2);
                float *fe = rand_f32_r(&fr, w, -1, 1), *st = rand_stats(&fr, rows);
                float *d_fe = up_f32(fe, w), *d_st = up_f32(st, (size_t)2 * rows);
                const ln_fold uf = {.e = d_fe, .stats = d_st};
                ln_mul_parts_src src = {d_hp, d_sc, plane, splane, ldp, hw, S, scale};
                /* the references (without the fold, with it), once for both forms */
                float *ref = t_xmalloc(sizeof(float) * rows * w), *a = t_xmalloc(sizeof(float) * rows * w);
                float *ref_fold = t_xmalloc(sizeof(float) * rows * w);
                for (int q = 0; q < rows; q++)
                    for (int c = 0; c < w; c++) {
                        float acc = 0.0f;
                        for (int z = 0; z < S; z++)
                            acc += half_value(hp[z * plane + (size_t)q * ldp + c]) *
                                   sc[z * splane + (size_t)q * H + c / hw];
                        a[(size_t)q * w + c] = acc * scale;
                    }
                round_bf16(a, (size_t)rows * w);
                float *us = pack(u, rows, w, ldu), *usf = pack(u, rows, w, ldu);
                bias_silu_ref(rows, w, us, w, ub, w);
                ln_mul_ref(rows, w, a, w, us, w, affine ? gw : NULL, affine ? gb : NULL, 1e-5f, ref, w);
                fold_ref(rows, w, usf, w, fe, st);
                bias_silu_ref(rows, w, usf, w, ub, w);
                ln_mul_ref(rows, w, a, w, usf, w, affine ? gw : NULL, affine ? gb : NULL, 1e-5f, ref_fold, w);
                for (int form = 1; form <= 2; form++) /* (form 2 where the shapes allow it) */
                    for (int fold = 0; fold < 2; fold++) {
                        cudaMemset(d_y, 0xff, (size_t)rows * ldy * 2); /* NaN: what a form leaves shows */
                        ln_mul_parts_force_form(form);
                        T_CHECK(ln_mul_parts_cuda(rows, w, &src, d_u, ldu, d_ub, fold ? &uf : NULL,
                                                  affine ? d_w : NULL, affine ? d_b : NULL, 1e-5f, d_y, ldy,
                                                  NULL) == 0,
                                "launch");
                        ln_mul_parts_force_form(0);
                        if (sync_ok("ln_mul_parts")) {
                            float *y = t_xmalloc(sizeof(float) * rows * ldy);
                            down_bf16(y, d_y, (size_t)rows * ldy);
                            char what[112];
                            snprintf(what, sizeof what,
                                     "ln_mul_parts form %d rows %d width %d S %d affine %d ldy %d fold %d", form, rows,
                                     w, S, affine, ldy, fold);
                            bf16_check c = check_rows_bf16(what, y, fold ? ref_fold : ref, rows, w, ldy);
                            if (fold)
                                worst_fold = fmax(worst_fold, c.err);
                            else
                                worst = fmax(worst, c.err);
                            free(y);
                        }
                    }
                free(ref), free(ref_fold), free(a), free(us), free(usf);
                cudaFree(d_hp), cudaFree(d_sc), cudaFree(d_u), cudaFree(d_ub), cudaFree(d_w), cudaFree(d_b),
                    cudaFree(d_y), cudaFree(d_fe), cudaFree(d_st);
                free(hp), free(sc), free(u), free(ub), free(gw), free(gb), free(fe), free(st);
            }
    ln_mul_parts_src wide = {NULL, NULL, 0, 0, 1032, 4, 1, 1.0f};
    T_CHECK(ln_mul_parts_cuda(1, 1028, &wide, NULL, 1028, NULL, NULL, NULL, NULL, 1e-5f, NULL, 1028, NULL) != 0,
            "width 1028 (over 1024) must be refused");
    printf("    worst error %.3g; with the folded LayerNorm's correction %.3g\n", worst, worst_fold);
}

/* ---- the LayerNorm folded into the uvqk GEMM (ln_fold) ------------------- */

#define FOLD_W 2304 /* the GEMM's columns: the pass's three 1024-column slices, the last partial */
#define FOLD_UW 256 /* its first columns, u for ln_mul_cuda */

static double silu_d(double v) { return v / (1.0 + exp(-v)); }

/* One layer on the host: LN's gain g and shift s [d], W [d, FOLD_W] and b0
 * [FOLD_W] (fp32), and what ln_fold makes of them, written here from its
 * definition (not the backend's upload): G[i][c] = bf16(g[i] W[i][c] -
 * m[c]) with m[c] the mean over i of g[i] W[i][c], e[c] the sum over i of
 * G[i][c], bias[c] the sum over i of s[i] W[i][c], + b0[c] (sums in
 * double). wd: W in double (the truth's weights); wb: bf16(W) (the unfolded
 * path's). */
typedef struct fold_layer {
    int d;
    float *g, *s, *w, *b0, *G, *e, *bias, *wb;
    double *wd;
} fold_layer;

static void fold_layer_init(fold_layer *L, rng *r, int d)
{
    const int n = FOLD_W;
    const float lim = 1.0f / sqrtf((float)d);
    L->d = d;
    L->g = rand_f32_r(r, d, 0.5f, 1.5f);
    L->s = rand_f32_r(r, d, -0.5f, 0.5f);
    L->w = rand_f32_r(r, (size_t)d * n, -lim, lim);
    L->b0 = rand_f32_r(r, n, -1.0f, 1.0f);
    L->G = t_xmalloc(sizeof(float) * d * n);
    L->wb = t_xmalloc(sizeof(float) * d * n);
    L->wd = t_xmalloc(sizeof(double) * d * n);
    L->e = t_xmalloc(sizeof(float) * n);
    L->bias = t_xmalloc(sizeof(float) * n);
    double *m = t_xmalloc(sizeof(double) * 3 * n), *se = m + n, *sb = m + 2 * n;
    memset(m, 0, sizeof(double) * 3 * n);
    for (int i = 0; i < d; i++)
        for (int c = 0; c < n; c++) {
            const size_t k = (size_t)i * n + c;
            m[c] += (double)L->g[i] * L->w[k];
            sb[c] += (double)L->s[i] * L->w[k];
            L->wd[k] = L->w[k];
            L->wb[k] = rbf(L->w[k]);
        }
    for (int c = 0; c < n; c++)
        m[c] /= d;
    for (int i = 0; i < d; i++)
        for (int c = 0; c < n; c++) {
            const size_t k = (size_t)i * n + c;
            L->G[k] = rbf((float)((double)L->g[i] * L->w[k] - m[c]));
            se[c] += L->G[k];
        }
    for (int c = 0; c < n; c++) {
        L->e[c] = (float)se[c];
        L->bias[c] = (float)(sb[c] + L->b0[c]);
    }
    free(m);
}

static void fold_layer_free(fold_layer *L)
{
    free(L->g), free(L->s), free(L->w), free(L->b0), free(L->G), free(L->e), free(L->bias), free(L->wb), free(L->wd);
}

typedef struct fold_worst {
    double stat;         /* the statistics' largest relative error */
    double pass, pass_r; /* the pass's error against the truth, and its ratio to the bf16 math's */
    double mul, mul_r;   /* the same for SiLU(u) * LN(a) */
} fold_worst;

/* One residual x of `rows` rows, offset + uniform[-2, 2] in bf16, through
 * the folded layer L (G, e and bias on the device): x @ G (cuBLASLt, bf16
 * out), then bias_silu_cuda with the fold (bias, SiLU), and ln_mul_cuda on
 * the first FOLD_UW columns of x @ G as the pass found them, with the
 * statistics the pass wrote. The checks of test_ln_fold. */
static void fold_case(gemm_cuda *gm, const fold_layer *L, const uint16_t *d_G, const float *d_e, const float *d_bias,
                      int rows, float offset, rng *r, fold_worst *worst)
{
    const int d = L->d, n = FOLD_W, uw = FOLD_UW, ldx = d + 8, ldc = n + 16, lda = uw + 8, ldy = uw + 8;
    const float eps = 1e-5f;
    float *x = rand_bf_r(r, (size_t)rows * ldx, offset - 2.0f, offset + 2.0f); /* (columns d.. never read) */
    float *a = rand_bf_r(r, (size_t)rows * lda, -2.0f, 3.0f);
    float *lw = rand_f32_r(r, uw, 0.5f, 1.5f), *lb = rand_f32_r(r, uw, -0.5f, 0.5f);
    uint16_t *d_x = up_bf16(x, (size_t)rows * ldx), *d_a = up_bf16(a, (size_t)rows * lda);
    float *d_lw = up_f32(lw, uw), *d_lb = up_f32(lb, uw), *d_st = t_dpoison(sizeof(float) * 2 * rows);
    uint16_t *d_c = t_dpoison((size_t)rows * ldc * 2), *d_u = t_dpoison((size_t)rows * ldc * 2);
    uint16_t *d_y = t_dpoison((size_t)rows * ldy * 2);
    char why[256], what[112];
    snprintf(what, sizeof what, "ln_fold rows %d d %d offset %g", rows, d, offset);
    int rc = 0;
    if (g_small) { /* (the sanitizer runs: racecheck reports hazards inside cuBLASLt's own kernel at these shapes) */
        float *c = t_xmalloc(sizeof(float) * rows * ldc);
        memset(c, 0, sizeof(float) * rows * ldc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n, d, 1.0f, x, ldx, L->G, n, 0.0f, c, ldc);
        uint16_t *h = t_xmalloc(sizeof(uint16_t) * rows * ldc);
        for (size_t i = 0; i < (size_t)rows * ldc; i++)
            h[i] = t_f2bf(c[i]);
        cudaMemcpy(d_c, h, sizeof(uint16_t) * rows * ldc, cudaMemcpyHostToDevice);
        free(c), free(h);
    } else {
        rc = gemm_cuda_run(gm, rows, n, d, d_x, ldx, d_G, n, 0, 0.0f, d_c, 0, ldc, GEMM_EPI_NONE, NULL, NULL, why,
                           sizeof why);
        T_CHECK(rc == 0, "%s: GEMM: %s", what, why);
    }
    cudaMemcpy(d_u, d_c, (size_t)rows * ldc * 2, cudaMemcpyDeviceToDevice); /* (the pass works in place) */
    const ln_fold fold = {.e = d_e, .stats = d_st, .x = d_x, .ldx = ldx, .d = d, .eps = eps};
    const ln_fold ufold = {.e = d_e, .stats = d_st};
    T_CHECK(bias_silu_cuda(rows, n, d_c, ldc, d_bias, 1, NULL, &fold, NULL) == 0, "%s: pass launch", what);
    T_CHECK(ln_mul_cuda(rows, uw, d_a, lda, d_u, ldc, d_bias, &ufold, d_lw, d_lb, eps, d_y, ldy, NULL) == 0,
            "%s: ln_mul launch", what);
    if (rc == 0 && sync_ok(what)) {
        float *v = t_xmalloc(sizeof(float) * rows * ldc), *out = t_xmalloc(sizeof(float) * rows * ldc);
        float *y = t_xmalloc(sizeof(float) * rows * ldy), *st = t_xmalloc(sizeof(float) * 2 * rows);
        down_bf16(v, d_u, (size_t)rows * ldc);
        down_bf16(out, d_c, (size_t)rows * ldc);
        down_bf16(y, d_y, (size_t)rows * ldy);
        down_f32(st, d_st, (size_t)2 * rows);
        /* (i) the statistics the pass wrote against the host's (double, biased variance) */
        double *mean = t_xmalloc(sizeof(double) * rows), *rstd = t_xmalloc(sizeof(double) * rows);
        int bad_stats = 0;
        for (int i = 0; i < rows; i++) {
            const float *xr = x + (size_t)i * ldx;
            double s = 0, ss = 0;
            for (int k = 0; k < d; k++)
                s += xr[k];
            mean[i] = s / d;
            for (int k = 0; k < d; k++)
                ss += (xr[k] - mean[i]) * (xr[k] - mean[i]);
            rstd[i] = 1.0 / sqrt(ss / d + (double)eps);
            const double em = fabs(st[2 * i] - mean[i]) / (fabs(mean[i]) + 1);
            const double er = fabs(st[2 * i + 1] - rstd[i]) / rstd[i];
            bad_stats += !(em <= 1e-5 && er <= 1e-5);
            worst->stat = fmax(worst->stat, fmax(em, er));
        }
        T_CHECK(bad_stats == 0, "%s: %d of %d rows' statistics off by more than 1e-5 (worst %.3g)", what, bad_stats,
                rows, worst->stat);
        /* the truth z = LN(x) W (+ b0 below) in double, and the unfolded path in
         * bf16: xn = bf16(LN(x) g + s), ve = xn @ bf16(W) (rounded below) */
        double *xt = t_xmalloc(sizeof(double) * rows * d), *z = t_xmalloc(sizeof(double) * rows * n);
        float *xn = t_xmalloc(sizeof(float) * rows * d), *ve = t_xmalloc(sizeof(float) * rows * n);
        for (int i = 0; i < rows; i++)
            for (int k = 0; k < d; k++) {
                const double t = (x[(size_t)i * ldx + k] - mean[i]) * rstd[i] * L->g[k] + L->s[k];
                xt[(size_t)i * d + k] = t;
                xn[(size_t)i * d + k] = rbf((float)t);
            }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n, d, 1.0, xt, d, L->wd, n, 0.0, z, n);
        gemm_cpu(rows, n, d, xn, d, L->wb, n, 0.0f, ve, n);
        /* (ii) the pass: against the truth SiLU(z + b0), the bf16 math being
         * bf16(SiLU(bf16(ve) + b0)); and against its own inputs (the GEMM's
         * output, the statistics it wrote, e and bias) merely rounded */
        const size_t nn = (size_t)rows * n;
        float *o = pack(out, rows, n, ldc), *tru = t_xmalloc(sizeof(float) * nn), *emu = t_xmalloc(sizeof(float) * nn);
        float *own = t_xmalloc(sizeof(float) * nn), *own_e = t_xmalloc(sizeof(float) * nn);
        for (int i = 0; i < rows; i++)
            for (int c = 0; c < n; c++) {
                const size_t k = (size_t)i * n + c;
                const double u = st[2 * i + 1] * ((double)v[(size_t)i * ldc + c] - (double)st[2 * i] * L->e[c]);
                tru[k] = (float)silu_d(z[k] + L->b0[c]);
                emu[k] = rbf((float)silu_d((double)rbf(ve[k]) + L->b0[c]));
                own[k] = (float)silu_d(u + L->bias[c]);
                own_e[k] = rbf(own[k]);
            }
        char w2[160];
        snprintf(w2, sizeof w2, "%s: SiLU(LN(x) W + b0) against the truth", what);
        bf16_check cp = check_bf16(w2, o, tru, emu, nn);
        snprintf(w2, sizeof w2, "%s: the pass against its own inputs", what);
        check_bf16(w2, o, own, own_e, nn);
        /* (iii) y = SiLU(u) * (LN(a) lw + lb) on u's columns, the same two ways */
        const size_t nu = (size_t)rows * uw;
        float *ytru = t_xmalloc(sizeof(float) * nu), *yemu = t_xmalloc(sizeof(float) * nu);
        float *yown = t_xmalloc(sizeof(float) * nu), *yp = pack(y, rows, uw, ldy);
        for (int i = 0; i < rows; i++) {
            const float *ar = a + (size_t)i * lda;
            double s = 0, ss = 0;
            for (int c = 0; c < uw; c++)
                s += ar[c];
            const double ma = s / uw;
            for (int c = 0; c < uw; c++)
                ss += (ar[c] - ma) * (ar[c] - ma);
            const double ra = 1.0 / sqrt(ss / uw + (double)eps);
            for (int c = 0; c < uw; c++) {
                const size_t k = (size_t)i * n + c, j = (size_t)i * uw + c;
                const double oa = (ar[c] - ma) * ra * lw[c] + lb[c];
                const double u = st[2 * i + 1] * ((double)v[(size_t)i * ldc + c] - (double)st[2 * i] * L->e[c]);
                ytru[j] = (float)(silu_d(z[k] + L->b0[c]) * oa);
                yemu[j] = rbf((float)(silu_d((double)rbf(ve[k]) + L->b0[c]) * oa));
                yown[j] = (float)(silu_d(u + L->bias[c]) * oa);
            }
        }
        snprintf(w2, sizeof w2, "%s: SiLU(u) * LN(a) against the truth", what);
        bf16_check cm = check_bf16(w2, yp, ytru, yemu, nu);
        snprintf(w2, sizeof w2, "%s: SiLU(u) * LN(a) against its own inputs", what);
        check_rows_bf16(w2, y, yown, rows, uw, ldy);
        worst->pass = fmax(worst->pass, cp.err);
        worst->pass_r = fmax(worst->pass_r, cp.emu_err > 0 ? cp.err / cp.emu_err : 0.0);
        worst->mul = fmax(worst->mul, cm.err);
        worst->mul_r = fmax(worst->mul_r, cm.emu_err > 0 ? cm.err / cm.emu_err : 0.0);
        free(v), free(out), free(y), free(st), free(mean), free(rstd), free(xt), free(z), free(xn), free(ve);
        free(o), free(tru), free(emu), free(own), free(own_e), free(ytru), free(yemu), free(yown), free(yp);
    }
    cudaFree(d_x), cudaFree(d_a), cudaFree(d_lw), cudaFree(d_lb), cudaFree(d_st), cudaFree(d_c), cudaFree(d_u),
        cudaFree(d_y);
    free(x), free(a), free(lw), free(lb);
}

/* The fold's refusals, each beside the same call with a good fold (which
 * must be taken, so that what is refused is the fold): bias_silu_cuda with
 * d not a multiple of 8, d over 2048, no x; ln_mul_cuda and
 * ln_mul_parts_cuda with a ufold without e. */
static void fold_refusals(void)
{
    const int rows = 8, w = 64;
    uint16_t *d_v = t_dpoison((size_t)rows * w * 2), *d_x = t_dpoison((size_t)rows * w * 2);
    uint16_t *d_y = t_dpoison((size_t)rows * w * 2), *d_p = t_dpoison((size_t)rows * w * 2);
    float *d_e = t_dpoison(sizeof(float) * w), *d_st = t_dpoison(sizeof(float) * 2 * rows);
    float *d_sc = t_dpoison(sizeof(float) * rows);
    const ln_fold good = {.e = d_e, .stats = d_st, .x = d_x, .ldx = w, .d = w, .eps = 1e-5f};
    ln_fold bad = good;
    T_CHECK(bias_silu_cuda(rows, w, d_v, w, NULL, 1, NULL, &good, NULL) == 0, "bias_silu_cuda refused a good fold");
    bad.d = 60;
    T_CHECK(bias_silu_cuda(rows, w, d_v, w, NULL, 1, NULL, &bad, NULL) != 0,
            "a fold of d 60 (not a multiple of 8) must be refused");
    bad = good;
    bad.d = bad.ldx = 2056;
    T_CHECK(bias_silu_cuda(rows, w, d_v, w, NULL, 1, NULL, &bad, NULL) != 0,
            "a fold of d 2056 (over 2048) must be refused");
    bad = good;
    bad.x = NULL;
    T_CHECK(bias_silu_cuda(rows, w, d_v, w, NULL, 1, NULL, &bad, NULL) != 0, "a fold without x must be refused");
    const ln_fold ugood = {.e = d_e, .stats = d_st}, no_e = {.stats = d_st};
    T_CHECK(ln_mul_cuda(rows, w, d_x, w, d_v, w, NULL, &ugood, NULL, NULL, 1e-5f, d_y, w, NULL) == 0,
            "ln_mul_cuda refused a good ufold");
    T_CHECK(ln_mul_cuda(rows, w, d_x, w, d_v, w, NULL, &no_e, NULL, NULL, 1e-5f, d_y, w, NULL) != 0,
            "ln_mul_cuda: a ufold without e must be refused");
    const ln_mul_parts_src src = {d_p, d_sc, (size_t)rows * w, (size_t)rows, w, w, 1, 1.0f};
    T_CHECK(ln_mul_parts_cuda(rows, w, &src, d_v, w, NULL, &ugood, NULL, NULL, 1e-5f, d_y, w, NULL) == 0,
            "ln_mul_parts_cuda refused a good ufold");
    T_CHECK(ln_mul_parts_cuda(rows, w, &src, d_v, w, NULL, &no_e, NULL, NULL, 1e-5f, d_y, w, NULL) != 0,
            "ln_mul_parts_cuda: a ufold without e must be refused");
    sync_ok("the good folds beside the refusals");
    cudaFree(d_v), cudaFree(d_x), cudaFree(d_y), cudaFree(d_p), cudaFree(d_e), cudaFree(d_st), cudaFree(d_sc);
}

/* The input LayerNorm folded into the uvqk GEMM (dense_cuda.h, ln_fold): a
 * layer's G, e and bias made on the host (fold_layer_init), then per
 * residual (fold_case) the GEMM x @ G on the bf16 x itself, the pass
 * bias_silu_cuda with the fold and ln_mul_cuda with ufold, as the backend
 * runs them. Rows 1 to 1100 (the passes' early and plain forms), d 64, 1024
 * and 2048 (the residual's row in 4 or 8 chunks a lane), x = offset +
 * uniform[-2, 2] with offset 0 and 8 (the mean far from the spread: what the
 * fold's e must cancel). Checked: (i) the row statistics the pass writes
 * against the host's in double, within 1e-5 (rstd relative, the mean
 * relative to |mean| + 1); (ii) the pass's output against the truth
 * SiLU(LN(x) W + b0) in double by the spec's rule, the same math in bf16
 * being the unfolded path (xn = bf16(LN(x) g + s), bf16(xn @ bf16(W)) + b0,
 * SiLU, rounded), and against its own inputs within 2x the rounding (as
 * test_bias_silu); (iii) ln_mul_cuda's y = SiLU(u) * (LN(a) w + b) on the
 * first FOLD_UW columns the same two ways (its own inputs: as test_ln_mul).
 * Then the argument refusals. */
static void test_ln_fold(void)
{
    static const int dims[] = {64, 1024, 2048};
    rng r = {0x1f01dull}; /* (its own stream: g_rng's, and the later cases' inputs, as they were) */
    gemm_cuda *gm = NULL;
    char why[256];
    T_REQUIRE(gemm_cuda_create((size_t)32 << 20, &gm, why, sizeof why) == 0, "%s", why);
    for (int oi = 0; oi < 2 && !t_case_failed(); oi++) {
        const float offset = oi ? 8.0f : 0.0f;
        fold_worst w = {0};
        for (int di = 0; di < 3; di++) {
            if (g_small && dims[di] > 1024)
                continue;
            fold_layer L;
            fold_layer_init(&L, &r, dims[di]);
            uint16_t *d_G = up_bf16(L.G, (size_t)L.d * FOLD_W);
            float *d_e = up_f32(L.e, FOLD_W), *d_bias = up_f32(L.bias, FOLD_W);
            for (int ri = 0; ri < 4; ri++)
                if (!g_small || row_counts[ri] <= 300)
                    fold_case(gm, &L, d_G, d_e, d_bias, row_counts[ri], offset, &r, &w);
            cudaFree(d_G), cudaFree(d_e), cudaFree(d_bias);
            fold_layer_free(&L);
        }
        printf("    offset %g: statistics within %.2g; SiLU(LN(x) W + b0) error %.3g = %.2fx the bf16 math's, "
               "SiLU(u) * LN(a) %.3g = %.2fx\n",
               offset, w.stat, w.pass, w.pass_r, w.mul, w.mul_r);
    }
    fold_refusals();
    gemm_cuda_destroy(gm);
}

/* With a device count (cnt 1): 20 of 33 rows gathered, the rest zeros,
 * and rows[] past the count holds indices no x has (it must not be read). */
static void test_gather_l2norm(void)
{
    for (int cnt = 0; cnt < 2; cnt++)
        for (int x16 = 0; x16 < 2; x16++)
            for (int wi = 0; wi < N_WIDTHS; wi++) {
                int w = widths[wi], ldx = w + 5, ldy = pad8(w), src_rows = 50, n = 33, m = cnt ? 20 : n;
                float *x = x16 ? rand_bf((size_t)src_rows * ldx, -1, 1) : rand_f32((size_t)src_rows * ldx, -1, 1);
                for (int c = 0; c < w; c++)
                    x[(size_t)7 * ldx + c] = 0.0f; /* one zero row: the 1e-6 clamp */
                int *rows = t_xmalloc(sizeof(int) * n);
                for (int i = 0; i < n; i++)
                    rows[i] = i >= m ? 1 << 30 : i == 0 ? 7 : (int)rng_below(&g_rng, src_rows);
                size_t nx = (size_t)src_rows * ldx;
                void *d_x = x16 ? (void *)up_bf16(x, nx) : (void *)up_f32(x, nx);
                int *d_rows = up_int(rows, n), *d_m = cnt ? up_int(&m, 1) : NULL;
                uint16_t *d_y = t_dpoison((size_t)n * ldy * 2);
                if (x16)
                    T_CHECK(gather_l2norm_bf16_cuda(n, w, d_x, ldx, d_rows, d_y, ldy, d_m, NULL) == 0, "launch");
                else
                    T_CHECK(gather_l2norm_cuda(n, w, d_x, ldx, d_rows, d_y, ldy, d_m, NULL) == 0, "launch");
                if (sync_ok("gather_l2norm")) {
                    float *y = t_xmalloc(sizeof(float) * n * ldy), *ref = t_xmalloc(sizeof(float) * n * w);
                    memset(ref, 0, sizeof(float) * n * w);
                    down_bf16(y, d_y, (size_t)n * ldy);
                    for (int i = 0; i < m; i++)
                        memcpy(ref + (size_t)i * w, x + (size_t)rows[i] * ldx, sizeof(float) * w);
                    l2norm_ref(m, w, ref, w);
                    char what[80];
                    snprintf(what, sizeof what, "gather_l2norm width %d x %s rows %d of %d", w, x16 ? "bf16" : "f32",
                             m, n);
                    check_rows_bf16(what, y, ref, n, w, ldy);
                    free(y), free(ref);
                }
                cudaFree(d_x), cudaFree(d_rows), cudaFree(d_y), cudaFree(d_m);
                free(x), free(rows);
            }
}

static void test_scores_out(void)
{
    const int rows = 300, n = 5, ldx = 8;
    float *x = rand_f32((size_t)rows * ldx, -12, 12);
    x[0] = 90.0f, x[1] = -90.0f; /* saturated ends: exactly 1 and 0, no NaN */
    float *d_x = up_f32(x, (size_t)rows * ldx), *h = NULL, *d_y = t_dpoison((size_t)rows * n * 4);
    float *y = t_xmalloc(sizeof(float) * rows * n);
    T_CHECK(cudaMallocHost((void **)&h, sizeof(float) * rows * n) == cudaSuccess, "cudaMallocHost");
    /* counts: none, 123 rows of 300 (only those written), more than rows (clamped) */
    const int counts[3] = {-1, 123, 400};
    int *d_cnt[3] = {NULL, up_int(&counts[1], 1), up_int(&counts[2], 1)};
    for (int ci = 0; ci < 3; ci++)
        for (int host = 0; host < 2 && h; host++)
            for (int sig = 0; sig < 2; sig++) {
                float *dst = d_y;
                const int m = ci == 1 ? counts[1] : rows;
                if (host) {
                    memset(h, 0xff, sizeof(float) * rows * n); /* NaN bits: every value must be written */
                    T_CHECK(cudaHostGetDevicePointer((void **)&dst, h, 0) == cudaSuccess, "mapping");
                } else {
                    cudaMemset(d_y, 0xff, sizeof(float) * rows * n);
                }
                T_CHECK(scores_out_cuda(rows, n, d_x, ldx, sig, dst, d_cnt[ci], NULL) == 0, "launch");
                if (!sync_ok("scores_out"))
                    continue;
                if (host)
                    memcpy(y, h, sizeof(float) * rows * n);
                else
                    down_f32(y, d_y, (size_t)rows * n);
                double worst = 0;
                int unwritten = 0;
                for (int i = 0; i < rows; i++)
                    for (int t = 0; t < n; t++) {
                        double z = x[(size_t)i * ldx + t], want = sig ? 1.0 / (1.0 + exp(-z)) : z;
                        double got = y[(size_t)i * n + t], e = fabs(got - want);
                        if (i >= m) {
                            unwritten += isnan(got);
                            continue;
                        }
                        T_CHECK(isfinite(got), "score %d,%d is not finite", i, t);
                        worst = e > worst ? e : worst;
                    }
                T_CHECK(unwritten == (rows - m) * n, "count %d: %d of %d entries past it were written", counts[ci],
                        (rows - m) * n - unwritten, (rows - m) * n);
                T_CHECK(worst <= 1e-6, "%s %s count %d: worst error %.3g", host ? "host" : "device",
                        sig ? "sigmoid" : "logits", counts[ci], worst);
            }
    cudaFreeHost(h);
    cudaFree(d_x), cudaFree(d_y), cudaFree(d_cnt[1]), cudaFree(d_cnt[2]);
    free(x), free(y);
}

static void test_gemm(void)
{
    gemm_cuda *g = NULL;
    char why[256];
    T_REQUIRE(gemm_cuda_create((size_t)32 << 20, &g, why, sizeof why) == 0, "%s", why);
    static const int shapes[][3] = {{1, 8, 8}, {3, 24, 40}, {1, 2048, 1024}, {77, 16, 1032},
                                    {1000, 2048, 512}, {257, 1024, 1024}, {5, 3424, 56}};
    int n_shapes = g_small ? 3 : (int)(sizeof shapes / sizeof shapes[0]);
    double worst_bf = 0, worst_f32 = 0;
    for (int si = 0; si < n_shapes; si++)
        for (int variant = 0; variant < 6; variant++) {
            int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            int b_trans = variant % 2, c_f32 = variant >= 2;
            float beta = variant >= 4 ? 1.0f : 0.0f;
            gemm_epilogue epi = variant == 2 ? GEMM_EPI_BIAS : variant == 1 ? GEMM_EPI_RELU_BIAS
                                : variant == 5                ? GEMM_EPI_BIAS
                                                              : GEMM_EPI_NONE;
            int lda = K + 8, ldb = (b_trans ? K : N) + 8, ldc = N + 8;
            float *A = rand_bf((size_t)M * lda, -1, 1), *Bm = rand_bf((size_t)(b_trans ? N : K) * ldb, -1, 1);
            float *C0 = rand_f32((size_t)M * ldc, -2, 2), *bias = rand_f32(N, -1, 1);
            if (!c_f32) {
                round_bf16(C0, (size_t)M * ldc);
                round_bf16(bias, N);
            }
            uint16_t *d_A = up_bf16(A, (size_t)M * lda), *d_B = up_bf16(Bm, (size_t)(b_trans ? N : K) * ldb);
            /* beta = 0 must ignore C: it starts as NaN (dmalloc's poison) */
            void *d_C = beta == 0.0f ? t_dpoison((size_t)M * ldc * (c_f32 ? 4 : 2))
                        : c_f32      ? (void *)up_f32(C0, (size_t)M * ldc)
                                     : (void *)up_bf16(C0, (size_t)M * ldc);
            void *d_bias = c_f32 ? (void *)up_f32(bias, N) : (void *)up_bf16(bias, N);
            int rc = gemm_cuda_run(g, M, N, K, d_A, lda, d_B, ldb, b_trans, beta, d_C, c_f32, ldc, epi,
                                   epi == GEMM_EPI_NONE ? NULL : d_bias, NULL, why, sizeof why);
            char what[128];
            snprintf(what, sizeof what, "gemm %dx%dx%d trans %d %s beta %g epilogue %d", M, N, K, b_trans,
                     c_f32 ? "f32" : "bf16", beta, (int)epi);
            T_CHECK(rc == 0, "%s: %s", what, why);
            if (rc == 0 && sync_ok(what)) {
                /* reference: op(B) as [K, N], then gemm_ref on the same bf16 values */
                float *Bk = t_xmalloc(sizeof(float) * K * N);
                for (int k = 0; k < K; k++)
                    for (int n = 0; n < N; n++)
                        Bk[(size_t)k * N + n] = b_trans ? Bm[(size_t)n * ldb + k] : Bm[(size_t)k * ldb + n];
                float *ref = pack(C0, M, N, ldc);
                /* the plain-loop oracle where it is quick, its OpenBLAS twin (checked
                 * against it in test_dense) on the large shapes */
                if ((double)M * N * K < 5e7)
                    gemm_ref(M, N, K, A, lda, Bk, N, beta, ref, N);
                else
                    gemm_cpu(M, N, K, A, lda, Bk, N, beta, ref, N);
                if (epi != GEMM_EPI_NONE)
                    bias_act_ref(M, N, ref, N, bias, epi == GEMM_EPI_RELU_BIAS);
                float *out = t_xmalloc(sizeof(float) * M * ldc);
                if (c_f32)
                    down_f32(out, d_C, (size_t)M * ldc);
                else
                    down_bf16(out, d_C, (size_t)M * ldc);
                float *o = pack(out, M, N, ldc);
                if (c_f32) {
                    double e = t_rel_err(o, ref, (size_t)M * N);
                    /* products of bf16 values are exact in fp32: only the summation order differs */
                    T_CHECK(e <= 1e-5 && !t_has_nonfinite(o, (size_t)M * N), "%s: error %.3g > 1e-5", what, e);
                    worst_f32 = fmax(worst_f32, e);
                } else {
                    float *emu = pack(ref, M, N, N);
                    round_bf16(emu, (size_t)M * N);
                    bf16_check c = check_bf16(what, o, ref, emu, (size_t)M * N);
                    worst_bf = fmax(worst_bf, c.err);
                    free(emu);
                }
                free(Bk), free(ref), free(out), free(o);
            }
            cudaFree(d_A), cudaFree(d_B), cudaFree(d_C), cudaFree(d_bias);
            free(A), free(Bm), free(C0), free(bias);
        }
    gemm_cuda_destroy(g);
    printf("    worst error: bf16 out %.3g, fp32 out %.3g\n", worst_bf, worst_f32);
}

/* Scores from small integer-valued vectors: exact in fp32, full of ties.
 * The GPU selects from the same scores topk_ref computes. */
static void test_topk(void)
{
    static const int cases[][3] = {/* n_items, B, max k */ {2, 3, 4}, {10, 4, 12}, {1000, 5, 50},
                                   {5000, 3, 3000}, {100000, 6, 100}, {3417, 8, 3416}};
    int n_cases = g_small ? 3 : 6;
    for (int ci = 0; ci < n_cases; ci++) {
        int n = cases[ci][0], B = cases[ci][1], kmax = cases[ci][2], d = 4, ld = n + 3;
        float *users = t_xmalloc(sizeof(float) * B * d), *items = t_xmalloc(sizeof(float) * (size_t)n * d);
        for (int i = 0; i < B * d; i++)
            users[i] = (float)(rng_below(&g_rng, 9) - 4);
        for (size_t i = 0; i < (size_t)n * d; i++)
            items[i] = (float)(rng_below(&g_rng, 7) - 3) / 4.0f;
        int k[16], n_excl[16], excl_b[16], excl_e[16], out_off[16], total = 0, n_ex = 0;
        int *excl = t_xmalloc(sizeof(int) * (B * 64 + 1));
        int64_t *excl64 = t_xmalloc(sizeof(int64_t) * (B * 64 + 1));
        const int64_t *ex_ptr[16];
        for (int b = 0; b < B; b++) {
            k[b] = b == 0 ? kmax : b == 1 ? 1 : 1 + (int)rng_below(&g_rng, kmax);
            if (k[b] > n - 1)
                k[b] = n - 1;
            out_off[b] = total;
            total += k[b];
            n_excl[b] = b == 2 ? 0 : (int)rng_below(&g_rng, 64);
            excl_b[b] = n_ex;
            for (int i = 0; i < n_excl[b]; i++) /* with duplicates and id 0 */
                excl[n_ex + i] = (int)rng_below(&g_rng, n < 20 ? n : 20 + (int)rng_below(&g_rng, n - 19));
            /* topk_ref wants each list sorted */
            for (int i = 0; i < n_excl[b]; i++)
                excl64[n_ex + i] = excl[n_ex + i];
            for (int i = 1; i < n_excl[b]; i++)
                for (int j = i; j > 0 && excl64[n_ex + j - 1] > excl64[n_ex + j]; j--) {
                    int64_t t = excl64[n_ex + j];
                    excl64[n_ex + j] = excl64[n_ex + j - 1];
                    excl64[n_ex + j - 1] = t;
                }
            ex_ptr[b] = n_excl[b] ? excl64 + n_ex : NULL;
            n_ex += n_excl[b];
            excl_e[b] = n_ex;
        }
        /* scores exactly as topk_ref computes them */
        float *scores = t_xmalloc(sizeof(float) * (size_t)B * ld);
        for (int b = 0; b < B; b++)
            for (int j = 0; j < ld; j++) {
                float s = 0.0f;
                for (int c = 0; c < d && j < n; c++)
                    s += users[b * d + c] * items[(size_t)j * d + c];
                scores[(size_t)b * ld + j] = j < n ? s : NAN; /* past n_items: never read */
            }
        float *d_scores = up_f32(scores, (size_t)B * ld);
        int *d_excl = up_int(excl, n_ex + 1), *d_eb = up_int(excl_b, B), *d_ee = up_int(excl_e, B);
        int *d_k = up_int(k, B), *d_off = up_int(out_off, B);
        int *d_ids = t_dpoison((size_t)(total + 1) * 4), *d_n = t_dpoison((size_t)B * 4);
        float *d_vals = t_dpoison((size_t)(total + 1) * 4);
        topk_cuda_params tp = {.B = B, .n_items = n, .ld = ld, .scores = d_scores, .exclude = d_excl,
                               .excl_begin = d_eb, .excl_end = d_ee, .k = d_k, .out_off = d_off,
                               .ids = d_ids, .vals = d_vals, .n_out = d_n};
        T_CHECK(topk_cuda(&tp, NULL) == 0, "launch");
        if (sync_ok("topk")) {
            int *ids = t_xmalloc(sizeof(int) * (total + 1)), nout[16];
            float *vals = t_xmalloc(sizeof(float) * (total + 1));
            cudaMemcpy(ids, d_ids, (size_t)total * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(vals, d_vals, (size_t)total * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(nout, d_n, (size_t)B * 4, cudaMemcpyDeviceToHost);
            int64_t *rid[16];
            float *rsc[16];
            int rn[16];
            for (int b = 0; b < B; b++) {
                rid[b] = t_xmalloc(sizeof(int64_t) * (k[b] + 1));
                rsc[b] = t_xmalloc(sizeof(float) * (k[b] + 1));
            }
            topk_params rp = {.B = B, .d = d, .users = users, .items = items, .n_items = n,
                              .exclude = ex_ptr, .n_exclude = n_excl, .k = k, .ids = rid, .scores = rsc,
                              .n_out = rn};
            topk_ref(&rp);
            for (int b = 0; b < B; b++) {
                T_CHECK(nout[b] == rn[b], "n %d user %d: %d results, reference %d", n, b, nout[b], rn[b]);
                int *gi = ids + out_off[b];
                float *gv = vals + out_off[b];
                if (nout[b] > TOPK_CUDA_SORT_MAX)
                    topk_cuda_sort_host(gi, gv, nout[b]);
                for (int i = 0; i < nout[b] && i < rn[b]; i++)
                    if (gi[i] != rid[b][i] || gv[i] != rsc[b][i]) {
                        t_fail_at(__FILE__, __LINE__, "n %d user %d k %d rank %d: (%d, %g) vs reference (%lld, %g)",
                                  n, b, k[b], i, gi[i], gv[i], (long long)rid[b][i], rsc[b][i]);
                        break;
                    }
                free(rid[b]), free(rsc[b]);
            }
            free(ids), free(vals);
        }
        cudaFree(d_scores), cudaFree(d_excl), cudaFree(d_eb), cudaFree(d_ee), cudaFree(d_k), cudaFree(d_off);
        cudaFree(d_ids), cudaFree(d_n), cudaFree(d_vals);
        free(users), free(items), free(excl), free(excl64), free(scores);
    }
}

/* ---- whole model -------------------------------------------------------- */

#define MAXU 128
#define MAXN 600   /* history items */
#define MAXM 128   /* candidates */
#define MAXT 8     /* tasks */
#define MAXK 64    /* top-k asked of the CUDA engine */
#define REF_EXTRA 32 /* the reference is asked for this many more, to place swapped ids */

static const char *ranking_json =
    "{\"family\":\"ranking\",\"d_model\":40,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":32,"
    "\"attn_scale_len\":150,\"max_positions\":90,"
    "\"tables\":{\"item\":500,\"action\":16,\"context\":[7,5]},"
    "\"head\":{\"hidden\":[24],\"n_tasks\":3},\"max_history\":48,\"max_candidates\":9}";

static const char *ranking_variant_json =
    "{\"family\":\"ranking\",\"d_model\":64,\"n_layers\":3,\"n_heads\":1,\"d_qk\":32,\"d_v\":48,"
    "\"attn_scale_len\":100,\"max_positions\":200,\"silu_uvqk\":\"u\",\"proj_bias\":true,"
    "\"uvqk_bias\":false,\"ln_affine\":false,"
    "\"tables\":{\"item\":300,\"action\":8,\"context\":[]},"
    "\"head\":{\"hidden\":[],\"n_tasks\":5},\"max_history\":40,\"max_candidates\":12}";

static const char *retrieval_json =
    "{\"family\":\"retrieval\",\"d_model\":48,\"n_layers\":3,\"n_heads\":2,\"d_qk\":16,\"d_v\":16,"
    "\"attn_scale_len\":20,\"max_positions\":96,\"tables\":{\"item\":3000},\"max_history\":96}";

typedef struct sim_user {
    int64_t ctx[HSTU_MAX_CONTEXT], items[MAXN], actions[MAXN], ts[MAXN], cands[MAXM];
    int n, m;
} sim_user;

typedef struct outputs {
    float scores[MAXU][MAXM * MAXT];
    int64_t ids[MAXU][MAXK + REF_EXTRA];
    float tscores[MAXU][MAXK + REF_EXTRA];
    hstu_result res[MAXU];
} outputs;

static void bind_outputs(outputs *o, int B)
{
    for (int b = 0; b < B; b++) {
        memset(&o->res[b], 0, sizeof o->res[b]);
        o->res[b].scores = o->scores[b];
        o->res[b].topk_ids = o->ids[b];
        o->res[b].topk_scores = o->tscores[b];
    }
}

/* The emulated bf16 backend: the fast CPU kernels, every stored result
 * rounded to bf16 (weights are rounded in its model copy). */
static void rows_bf16(float *x, int rows, int width, int ld)
{
    for (int r = 0; r < rows; r++)
        round_bf16(x + (size_t)r * ld, (size_t)width);
}
static void gemm_emu(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc)
{
    gemm_cpu(M, N, K, A, lda, B, ldb, beta, C, ldc);
    rows_bf16(C, M, N, ldc);
}
static void layernorm_emu(int rows, int width, const float *x, int ldx, const float *w, const float *b, float eps,
                          float *y, int ldy)
{
    layernorm_cpu(rows, width, x, ldx, w, b, eps, y, ldy);
    rows_bf16(y, rows, width, ldy);
}
static void bias_silu_emu(int rows, int width, float *x, int ldx, const float *bias, int silu_cols)
{
    bias_silu_cpu(rows, width, x, ldx, bias, silu_cols);
    rows_bf16(x, rows, width, ldx);
}
static void ln_mul_emu(int rows, int width, const float *a, int lda, const float *u, int ldu, const float *w,
                       const float *b, float eps, float *y, int ldy)
{
    ln_mul_cpu(rows, width, a, lda, u, ldu, w, b, eps, y, ldy);
    rows_bf16(y, rows, width, ldy);
}
static void bias_act_emu(int rows, int width, float *x, int ldx, const float *bias, bool relu)
{
    bias_act_cpu(rows, width, x, ldx, bias, relu);
    rows_bf16(x, rows, width, ldx);
}
static void l2norm_emu(int rows, int width, float *x, int ldx)
{
    l2norm_cpu(rows, width, x, ldx);
    rows_bf16(x, rows, width, ldx);
}
static void attention_emu(const attn_params *p)
{
    attn_fwd_cpu(p);
    for (int b = 0; b < p->B; b++) {
        const attn_seq *s = &p->seqs[b];
        rows_bf16(p->out + (size_t)s->q0 * p->ld_out, s->hist - s->c + s->cand, p->H * p->Dv, p->ld_out);
    }
}
static const hstu_ops ops_emu = {
    .backend = HSTU_BACKEND_CPU, .gemm = gemm_emu, .layernorm = layernorm_emu, .bias_silu = bias_silu_emu,
    .ln_mul = ln_mul_emu, .bias_act = bias_act_emu, .l2norm = l2norm_emu, .attention = attention_emu,
    .topk = topk_cpu,
};

static hstu_model *make_model(const hstu_config *cfg, uint64_t seed, bool bf16)
{
    hstu_model *m = NULL;
    hstu_error err = {0};
    if (hstu_model_create_random(cfg, seed, &m, &err) != HSTU_OK) {
        t_fail_at(__FILE__, __LINE__, "model: %s", err.msg);
        return NULL;
    }
    if (bf16) {
        round_bf16(m->arena, m->arena_floats);
        model_finish(m);
        if (m->item_unit)
            round_bf16(m->item_unit, (size_t)m->cfg.item_rows * m->cfg.d_model);
    }
    return m;
}

static hstu_engine *make_engine(const hstu_model *m, hstu_backend b)
{
    hstu_engine_options o;
    hstu_engine_options_default(&o);
    o.backend = b;
    o.use_cache = false;
    hstu_engine *e = NULL;
    hstu_error err = {0};
    if (hstu_engine_create(m, &o, &e, &err) != HSTU_OK)
        t_fail_at(__FILE__, __LINE__, "engine (%s): %s", hstu_backend_name(b), err.msg);
    return e;
}

static void user_fill(sim_user *u, const hstu_config *c, int n, int m, rng *r)
{
    for (int j = 0; j < c->n_context; j++)
        u->ctx[j] = rng_below(r, c->context_rows[j]);
    int64_t t = 1000000 + rng_below(r, 1000);
    for (int i = 0; i < n; i++) {
        u->items[i] = rng_below(r, c->item_rows);
        u->actions[i] = c->action_rows ? rng_below(r, c->action_rows) : 0;
        t += rng_below(r, 3) == 0 ? rng_below(r, 10000000) : rng_below(r, 100);
        u->ts[i] = t;
    }
    for (int i = 0; i < m; i++)
        u->cands[i] = rng_below(r, c->item_rows);
    u->n = n;
    u->m = m;
}

static hstu_request user_request(const sim_user *u, const hstu_config *c, int64_t id, int top_k)
{
    hstu_request q = {.user_id = id, .n_context = c->n_context, .context = u->ctx, .n_items = u->n,
                      .items = u->items, .actions = u->actions, .timestamps = u->ts,
                      .query_time = u->n ? u->ts[u->n - 1] + 77 : 0, .n_candidates = u->m,
                      .candidates = u->cands, .top_k = top_k, .exclude_history = id % 4 != 3};
    return q;
}

typedef struct model_worst {
    double err, emu_err, l2, id_swaps;
} model_worst;

/* Ranking: the batch's logits as one tensor. */
static void compare_ranking(const hstu_config *c, const hstu_request *q, int B, const outputs *g, const outputs *r,
                            const outputs *e, model_worst *w, int round)
{
    size_t n = 0;
    for (int b = 0; b < B; b++)
        n += (size_t)q[b].n_candidates * c->n_tasks;
    if (n == 0)
        return;
    float *fg = t_xmalloc(sizeof(float) * n), *fr = t_xmalloc(sizeof(float) * n), *fe = t_xmalloc(sizeof(float) * n);
    size_t off = 0;
    for (int b = 0; b < B; b++) {
        size_t k = (size_t)q[b].n_candidates * c->n_tasks;
        memcpy(fg + off, g->scores[b], sizeof(float) * k);
        memcpy(fr + off, r->scores[b], sizeof(float) * k);
        memcpy(fe + off, e->scores[b], sizeof(float) * k);
        off += k;
    }
    char what[64];
    snprintf(what, sizeof what, "batch %d logits", round);
    bf16_check ck = check_bf16(what, fg, fr, fe, n);
    w->err = fmax(w->err, ck.err), w->emu_err = fmax(w->emu_err, ck.emu_err), w->l2 = fmax(w->l2, ck.l2);
    free(fg), free(fr), free(fe);
}

/* Retrieval: scores by rank as one tensor; ids equal except on near-ties. */
static void compare_retrieval(const hstu_config *c, const hstu_request *q, int B, const outputs *g,
                              const outputs *r, const outputs *e, model_worst *w, int round)
{
    size_t n = 0;
    for (int b = 0; b < B; b++) {
        T_CHECK(g->res[b].n_topk == q[b].top_k, "batch %d user %d: %d results for top_k %d", round, b,
                g->res[b].n_topk, q[b].top_k);
        n += (size_t)g->res[b].n_topk;
    }
    float *fg = t_xmalloc(sizeof(float) * (n + 1)), *fr = t_xmalloc(sizeof(float) * (n + 1));
    float *fe = t_xmalloc(sizeof(float) * (n + 1));
    size_t off = 0;
    double noise = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < g->res[b].n_topk; i++, off++) {
            fg[off] = g->tscores[b][i];
            fr[off] = r->tscores[b][i];
            fe[off] = e->tscores[b][i];
            noise = fmax(noise, fabs((double)fe[off] - fr[off]));
        }
    char what[64];
    snprintf(what, sizeof what, "batch %d top-k scores", round);
    bf16_check ck = check_bf16(what, fg, fr, fe, n);
    w->err = fmax(w->err, ck.err), w->emu_err = fmax(w->emu_err, ck.emu_err), w->l2 = fmax(w->l2, ck.l2);
    noise = 2 * noise + 1e-6;
    for (int b = 0; b < B; b++) {
        const hstu_request *rq = &q[b];
        int k = g->res[b].n_topk, kr = r->res[b].n_topk;
        for (int i = 0; i < k; i++) {
            int64_t id = g->ids[b][i];
            bool valid = id >= 1 && id < c->item_rows;
            for (int j = 0; j < i && valid; j++)
                valid = g->ids[b][j] != id;
            for (int j = 0; j < rq->n_items && valid && rq->exclude_history; j++)
                valid = rq->items[j] != id;
            T_CHECK(valid, "batch %d user %d rank %d: id %lld is padding, repeated or in the history", round, b, i,
                    (long long)id);
            if (i > 0)
                T_CHECK(g->tscores[b][i] < g->tscores[b][i - 1] ||
                            (g->tscores[b][i] == g->tscores[b][i - 1] && id > g->ids[b][i - 1]),
                        "batch %d user %d rank %d: out of order", round, b, i);
            if (id == r->ids[b][i])
                continue;
            w->id_swaps++;
            /* where does the reference rank this id? */
            int j = 0;
            while (j < kr && r->ids[b][j] != id)
                j++;
            double gap = j < kr ? fabs((double)r->tscores[b][j] - r->tscores[b][i])
                                : (double)r->tscores[b][i] - r->tscores[b][kr - 1];
            T_CHECK(gap <= noise, "batch %d user %d rank %d: id %lld (reference rank %d) vs %lld: scores %.6g apart, "
                    "bf16 noise %.3g", round, b, i, (long long)id, j, (long long)r->ids[b][i], gap, noise);
        }
    }
    free(fg), free(fr), free(fe);
}

/* The CUDA engine against the fp32 reference (ref backend, or the fast CPU
 * backend for the larger preset) and the bf16 emulation, over `rounds`
 * jagged batches; round 0 has the edge lengths. */
/* A CUDA engine with the backend's settings (read from the environment at
 * create): the defaults (var NULL), or one variable set (HSTU_CUDA_RESIDUAL=f32:
 * the fp32 residual stream). */
static hstu_engine *make_cuda_engine(const hstu_model *m, const char *var, const char *val)
{
    static const char *const vars[] = {"HSTU_CUDA_RESIDUAL"};
    char *saved[1];
    for (int i = 0; i < 1; i++) {
        const char *was = getenv(vars[i]);
        saved[i] = was ? strdup(was) : NULL;
        unsetenv(vars[i]);
    }
    if (var)
        setenv(var, val, 1);
    hstu_engine *e = make_engine(m, HSTU_BACKEND_CUDA);
    for (int i = 0; i < 1; i++) {
        if (saved[i])
            setenv(vars[i], saved[i], 1);
        else
            unsetenv(vars[i]);
        free(saved[i]);
    }
    return e;
}

static void model_vs_ref(const hstu_config *cfg, hstu_backend ref_backend, int rounds, int max_b)
{
    hstu_model *m = make_model(cfg, 31, false), *mb = make_model(cfg, 31, true);
    T_REQUIRE(m && mb, "no model");
    const hstu_config *c = hstu_model_config(m);
    /* gpu: the default (bf16 residual); gpu32: the fp32 residual, both held to
     * the rule (gpu32 not under HSTU_TEST_SMALL: the sanitizer runs, where a
     * second engine only doubles the time and memory) */
    hstu_engine *gpu = make_cuda_engine(m, NULL, NULL);
    hstu_engine *gpu32 = g_small ? NULL : make_cuda_engine(m, "HSTU_CUDA_RESIDUAL", "f32");
    hstu_engine *ref = make_engine(m, ref_backend);
    hstu_engine *emu = make_engine(mb, HSTU_BACKEND_CPU);
    if (!gpu || (!gpu32 && !g_small) || !ref || !emu)
        goto done;
    emu->ops = &ops_emu;
    T_CHECK(c->max_history <= MAXN && c->max_candidates <= MAXM && c->n_tasks <= MAXT, "test buffers too small");
    bool retr = c->family == HSTU_FAMILY_RETRIEVAL;
    static sim_user users[MAXU];
    static outputs og, orf, oe, o32;
    hstu_request qg[MAXU], qr[MAXU];
    rng r = {77};
    model_worst w = {0}, w32 = {0};
    int lens[] = {0, 1, 2, c->max_history, 31, 33, 7, 5};
    for (int round = 0; round < rounds; round++) {
        int B = round == 0 ? max_b : 1 + (int)rng_below(&r, max_b);
        for (int b = 0; b < B; b++) {
            int n = round == 0 ? lens[b % 8] : (int)rng_below(&r, c->max_history + 1);
            if (n > c->max_history)
                n = c->max_history;
            if (retr && n == 0)
                n = 1;
            int mc = retr ? 0 : round == 0 && b < 2 ? c->max_candidates : (int)rng_below(&r, c->max_candidates + 1);
            user_fill(&users[b], c, n, mc, &r);
            int k = retr ? 1 + (int)rng_below(&r, MAXK) : 1;
            qg[b] = user_request(&users[b], c, 1000 * round + b, k);
            qr[b] = qg[b];
            qr[b].top_k = k + REF_EXTRA;
        }
        hstu_error err = {0};
        bind_outputs(&og, B), bind_outputs(&orf, B), bind_outputs(&oe, B), bind_outputs(&o32, B);
        T_REQUIRE(hstu_engine_run(gpu, qg, B, og.res, true, &err) == HSTU_OK, "cuda: %s", err.msg);
        if (gpu32)
            T_REQUIRE(hstu_engine_run(gpu32, qg, B, o32.res, true, &err) == HSTU_OK, "cuda (f32 x): %s", err.msg);
        T_REQUIRE(hstu_engine_run(ref, qr, B, orf.res, true, &err) == HSTU_OK, "ref: %s", err.msg);
        T_REQUIRE(hstu_engine_run(emu, qr, B, oe.res, true, &err) == HSTU_OK, "emu: %s", err.msg);
        if (retr) {
            compare_retrieval(c, qg, B, &og, &orf, &oe, &w, round);
            if (gpu32)
                compare_retrieval(c, qg, B, &o32, &orf, &oe, &w32, round);
        } else {
            compare_ranking(c, qg, B, &og, &orf, &oe, &w, round);
            if (gpu32)
                compare_ranking(c, qg, B, &o32, &orf, &oe, &w32, round);
        }
        if (!retr && round == 1) { /* probabilities: sigmoid of the same logits */
            static outputs op;
            bind_outputs(&op, B);
            T_REQUIRE(hstu_engine_run(gpu, qg, B, op.res, false, &err) == HSTU_OK, "cuda: %s", err.msg);
            for (int b = 0; b < B; b++)
                for (int i = 0; i < qg[b].n_candidates * c->n_tasks; i++) {
                    float p = 1.0f / (1.0f + expf(-og.scores[b][i]));
                    if (fabsf(op.scores[b][i] - p) > 1e-6f) {
                        t_fail_at(__FILE__, __LINE__, "probability %g vs sigmoid(logit) %g", op.scores[b][i], p);
                        b = B;
                        break;
                    }
                }
        }
        if (t_case_failed())
            break;
    }
    printf("    %d batches: error %.3g, bf16 emulation %.3g (ratio %.2f, bound 2), L2 %.3g", rounds, w.err,
           w.emu_err, w.emu_err > 0 ? w.err / w.emu_err : 0.0, w.l2);
    if (retr)
        printf(", %g ids swapped on near-ties", w.id_swaps);
    if (gpu32) {
        printf("\n    fp32 residual: error %.3g (ratio %.2f), L2 %.3g", w32.err,
               w32.emu_err > 0 ? w32.err / w32.emu_err : 0.0, w32.l2);
        if (retr)
            printf(", %g ids swapped", w32.id_swaps);
    }
    printf("\n");
done:
    hstu_engine_destroy(gpu);
    hstu_engine_destroy(gpu32);
    hstu_engine_destroy(ref);
    hstu_engine_destroy(emu);
    hstu_model_destroy(m);
    hstu_model_destroy(mb);
}

static void parse(const char *json, hstu_config *cfg)
{
    hstu_error err = {0};
    hstu_status st = hstu_config_parse(json, strlen(json), cfg, &err);
    HSTU_ASSERT(st == HSTU_OK);
}

static void test_model_ranking(void)
{
    hstu_config c;
    parse(ranking_json, &c);
    model_vs_ref(&c, HSTU_BACKEND_REF, g_small ? 2 : 8, 8);
}

static void test_model_ranking_variant(void)
{
    hstu_config c;
    parse(ranking_variant_json, &c);
    model_vs_ref(&c, HSTU_BACKEND_REF, g_small ? 2 : 6, 6);
}

static void test_model_retrieval(void)
{
    hstu_config c;
    parse(retrieval_json, &c);
    model_vs_ref(&c, HSTU_BACKEND_REF, g_small ? 2 : 8, 8);
}

/* 600k items: the backend's score rows hold 111 users at a time (256 MiB),
 * so 120 users take two top-k groups. */
static const char *retrieval_big_json =
    "{\"family\":\"retrieval\",\"d_model\":32,\"n_layers\":1,\"n_heads\":1,\"d_qk\":16,\"d_v\":16,"
    "\"attn_scale_len\":20,\"max_positions\":16,\"tables\":{\"item\":600000},\"max_history\":8}";

static void test_model_retrieval_groups(void)
{
    if (g_small) {
        printf("    (HSTU_TEST_SMALL: skipped inside the case)\n");
        return;
    }
    hstu_config c;
    parse(retrieval_big_json, &c);
    model_vs_ref(&c, HSTU_BACKEND_CPU, 1, 120);
}

static void test_model_kuairand(void)
{
    if (g_small) {
        printf("    (HSTU_TEST_SMALL: skipped inside the case)\n");
        return;
    }
    hstu_config c;
    hstu_error err = {0};
    HSTU_ASSERT(hstu_config_preset("kuairand-1k", &c, &err) == HSTU_OK);
    c.max_history = 256; /* shorter histories: the fp32 references run on the CPU */
    model_vs_ref(&c, HSTU_BACKEND_CPU, 3, 4);
}

/* ---- the GPU KV cache ---------------------------------------------------- */

/* The append (bias_silu_cuda with pages) writes exactly what the pass
 * leaves in the activations; kv_copy_cuda copies: exact. */
static void test_kv_kernels(void)
{
    const int P = 4, L = 3, kw = 32, vw = 48, W = 2 * vw + 2 * kw, T = 37, n_pages = 20;
    size_t page_elems = (size_t)L * P * (kw + vw), blk = (size_t)P * (kw + vw);
    float *act = rand_f32((size_t)T * W, -4, 4), *bias = rand_f32((size_t)W, -1, 1);
    float *d_bias = up_f32(bias, W);
    uint16_t *d_pool = t_dpoison((size_t)n_pages * page_elems * 2);
    float *pool = t_xmalloc((size_t)n_pages * page_elems * 4), *out = t_xmalloc((size_t)T * W * 4);
    /* rows T-1, T-2, ... to consecutive slots of shuffled pages, layer 1; every
     * third row (a candidate, a cached row) has none */
    int perm[n_pages];
    int64_t row_slot[T];
    for (int p = 0; p < n_pages; p++)
        perm[p] = p;
    rng r = {5};
    for (int p = n_pages - 1; p > 0; p--) {
        int q = (int)rng_below(&r, p + 1), t = perm[p];
        perm[p] = perm[q], perm[q] = t;
    }
    for (int i = 0; i < T; i++)
        row_slot[T - 1 - i] = i % 3 == 2 ? -1 : (int64_t)perm[i / P] * P + i % P;
    int64_t *d_slots = t_dpoison(sizeof row_slot);
    cudaMemcpy(d_slots, row_slot, sizeof row_slot, cudaMemcpyHostToDevice);
    size_t k_off = 1 * blk, v_off = k_off + (size_t)P * kw;
    bias_silu_pages pages = {d_slots, d_pool, page_elems, k_off, v_off, P, kw, vw, 0};
    /* variants: v|k with bias + SiLU; v|k with neither (a copy); q|v|k with
     * bias + SiLU (the pass also activating q, whose columns precede V's:
     * kv0 = kw), whose activations must equal the same pass without pages */
    for (int variant = 0; variant < 3; variant++) {
        uint16_t *d_act = up_bf16(act, (size_t)T * W);
        cudaMemset(d_pool, 0, (size_t)n_pages * page_elems * 2);
        const int c0 = variant == 2 ? vw : vw + kw; /* the pass's first column */
        bias_silu_pages pg = pages;
        pg.kv0 = vw + kw - c0;
        T_CHECK(bias_silu_cuda(T, W - c0, d_act + c0, W, variant == 1 ? NULL : d_bias + c0, variant != 1, &pg,
                               NULL, NULL) == 0,
                "append launch");
        T_REQUIRE(sync_ok("append"), "append failed");
        down_bf16(pool, d_pool, (size_t)n_pages * page_elems);
        down_bf16(out, d_act, (size_t)T * W);
        if (variant == 2) {
            uint16_t *d_ref = up_bf16(act, (size_t)T * W);
            T_CHECK(bias_silu_cuda(T, W - c0, d_ref + c0, W, d_bias + c0, 1, NULL, NULL, NULL) == 0, "pass launch");
            T_REQUIRE(sync_ok("pass"), "pass failed");
            float *ref = t_xmalloc((size_t)T * W * 4);
            down_bf16(ref, d_ref, (size_t)T * W);
            int differ = 0;
            for (size_t e = 0; e < (size_t)T * W; e++)
                differ += out[e] != ref[e];
            T_CHECK(differ == 0, "q|v|k pass with pages: %d activations differ from the pass without", differ);
            free(ref);
            cudaFree(d_ref);
        }
        int bad = 0, moved = 0;
        for (int row = 0; row < T; row++) {
            int64_t sl = row_slot[row];
            if (sl < 0)
                continue;
            const float *page = pool + (size_t)(sl / P) * page_elems, *o = out + (size_t)row * W;
            for (int c = 0; c < kw; c++)
                bad += page[k_off + (size_t)(sl % P) * kw + c] != o[2 * vw + kw + c];
            for (int c = 0; c < vw; c++)
                bad += page[v_off + (size_t)(sl % P) * vw + c] != o[vw + kw + c];
            for (int c = 0; c < W && variant == 1; c++)
                moved += o[c] != rbf(act[(size_t)row * W + c]);
        }
        T_CHECK(bad == 0, "append (variant %d): %d elements differ from the pass's output", variant, bad);
        T_CHECK(moved == 0, "append without bias or SiLU changed the activations (%d elements)", moved);
        /* nothing else in the pool was written: count the nonzero elements */
        size_t nonzero = 0, want = 0;
        for (size_t e = 0; e < (size_t)n_pages * page_elems; e++)
            nonzero += pool[e] != 0.0f;
        for (int row = 0; row < T; row++)
            if (row_slot[row] >= 0)
                for (int c = vw + kw; c < W; c++)
                    want += out[(size_t)row * W + c] != 0.0f;
        T_CHECK(nonzero == want, "append (variant %d): %zu pool elements written, want %zu", variant, nonzero, want);
        cudaFree(d_act);
    }
    /* a width other than kv0 + vw + kw is refused, and so is a negative kv0 */
    T_CHECK(bias_silu_cuda(T, vw, d_pool, W, NULL, 1, &pages, NULL, NULL) != 0, "a bad width is refused");
    bias_silu_pages odd = pages;
    odd.kv0 = 8;
    T_CHECK(bias_silu_cuda(T, vw + kw, d_pool, W, NULL, 1, &odd, NULL, NULL) != 0, "kv0 + vw + kw != width is refused");
    odd.kv0 = -8;
    T_CHECK(bias_silu_cuda(T, vw + kw - 8, d_pool, W, NULL, 1, &odd, NULL, NULL) != 0, "a negative kv0 is refused");
    cudaGetLastError();
    int bad;
    /* block copy, with strides the kernel must honour: pages -> pinned host chunks laid out
     * [layer][page][blk] and back into other pages */
    const int ppc = 2, n_chunks = 3;
    uint16_t *host = NULL;
    T_REQUIRE(cudaMallocHost((void **)&host, (size_t)n_chunks * ppc * page_elems * 2) == cudaSuccess, "pinned");
    kv_copy *cp = NULL;
    T_REQUIRE(cudaMallocHost((void **)&cp, sizeof(kv_copy) * n_chunks * ppc) == cudaSuccess, "pinned");
    for (int k = 0; k < n_chunks * ppc; k++) {
        cp[k].src = (uint64_t)(uintptr_t)(d_pool + (size_t)perm[k] * page_elems);
        cp[k].dst = (uint64_t)(uintptr_t)(host + (size_t)(k / ppc) * ppc * page_elems + (size_t)(k % ppc) * blk);
    }
    for (int k = 0; k < n_chunks; k++)
        T_CHECK(kv_copy_cuda(cp + k * ppc, ppc, blk * 2, blk * 2, (size_t)ppc * blk * 2, 0, L, NULL) == 0, "offload");
    T_REQUIRE(sync_ok("offload"), "offload failed");
    bad = 0;
    for (int k = 0; k < n_chunks * ppc; k++)
        for (int l = 0; l < L; l++)
            for (size_t e = 0; e < blk; e++) {
                float want = pool[(size_t)perm[k] * page_elems + (size_t)l * blk + e];
                float got = t_bf2f(host[(size_t)(k / ppc) * ppc * page_elems + ((size_t)l * ppc + k % ppc) * blk + e]);
                bad += got != want;
            }
    T_CHECK(bad == 0, "offload: %d elements differ", bad);
    /* onload layer by layer into pages 19, 18, ... */
    for (int k = 0; k < n_chunks * ppc; k++) {
        cp[k].src = (uint64_t)(uintptr_t)(host + (size_t)(k / ppc) * ppc * page_elems + (size_t)(k % ppc) * blk);
        cp[k].dst = (uint64_t)(uintptr_t)(d_pool + (size_t)(n_pages - 1 - k) * page_elems);
    }
    for (int l = 0; l < L; l++)
        T_CHECK(kv_copy_cuda(cp, n_chunks * ppc, blk * 2, (size_t)ppc * blk * 2, blk * 2, l, 1, NULL) == 0, "onload");
    T_REQUIRE(sync_ok("onload"), "onload failed");
    float *pool2 = t_xmalloc((size_t)n_pages * page_elems * 4);
    down_bf16(pool2, d_pool, (size_t)n_pages * page_elems);
    bad = 0;
    for (int k = 0; k < n_chunks * ppc; k++)
        for (size_t e = 0; e < page_elems; e++)
            bad += pool2[(size_t)(n_pages - 1 - k) * page_elems + e] != pool[(size_t)perm[k] * page_elems + e];
    T_CHECK(bad == 0, "onload: %d elements differ", bad);
    cudaFreeHost(host), cudaFreeHost(cp);
    cudaFree(d_pool), cudaFree(d_slots), cudaFree(d_bias);
    free(act), free(bias), free(out), free(pool), free(pool2);
}

/* A cached CUDA engine against a full-recompute CUDA engine, the fp32
 * reference and the bf16 emulation, over a population of returning users
 * whose histories grow (sometimes rewritten), in random mixed batches. The
 * device pool is small (evictions, degraded users) and the host tier holds
 * chunks of 4 pages, so users come back as device hits, host hits and
 * misses. After every batch the cache invariants hold. */
#define CACHE_USERS 16

/* How much of a host hit to onload (hstu_onload): AUTO with the measured
 * rates, ALL, NONE, or AUTO with rates that make a row's transfer cost about
 * what computing a middle row does (partial onloads). */
typedef enum { ONLOAD_MEASURED, ONLOAD_ALL, ONLOAD_NONE, ONLOAD_PARTIAL } onload_case;

static void cache_vs_full(const hstu_config *cfg, int rounds, bool layerwise, bool graphs, onload_case oc_kind)
{
    hstu_model *m = make_model(cfg, 41, false), *mb = make_model(cfg, 41, true);
    T_REQUIRE(m && mb, "no model");
    const hstu_config *c = hstu_model_config(m);
    bool retr = c->family == HSTU_FAMILY_RETRIEVAL;
    int P = 4;
    hstu_engine_options o;
    hstu_engine_options_default(&o);
    o.backend = HSTU_BACKEND_CUDA;
    o.page_size = P;
    o.chunk_tokens = 4 * P;
    o.offload_queue = 6;
    o.layerwise_onload = layerwise;
    o.cuda_graphs = graphs;
    size_t page_bytes = (size_t)c->n_layers * P * c->n_heads * (c->d_qk + c->d_v) * 2;
    int user_pages = hstu_config_history_tokens(c, c->max_history) / P + 1;
    o.cache_bytes = page_bytes * (size_t)(2 * user_pages);          /* about two users */
    o.host_cache_bytes = page_bytes * 4 * (size_t)(3 * user_pages / 4); /* about three users' chunks */
    o.onload = oc_kind == ONLOAD_ALL ? HSTU_ONLOAD_ALL : oc_kind == ONLOAD_NONE ? HSTU_ONLOAD_NONE : HSTU_ONLOAD_AUTO;
    if (oc_kind == ONLOAD_PARTIAL) {
        onload_model om = onload_model_make(c->n_layers, c->d_model, hstu_config_uvqk_width(c), c->n_heads, c->d_qk,
                                            c->d_v, 2);
        double mid = om.n_layers * (om.gemm_flops_row + om.attn_flops_key * (c->max_history / 4 + 1));
        o.compute_tflops = 1;
        o.onload_gbs = om.row_bytes * 1e12 / mid / 1e9; /* a row's bytes in the time of a middle row's FLOPs */
    }
    hstu_engine *gc = NULL, *gpu = make_cuda_engine(m, NULL, NULL), *ref = make_engine(m, HSTU_BACKEND_REF);
    hstu_engine *emu = make_engine(mb, HSTU_BACKEND_CPU);
    hstu_error err = {0};
    T_CHECK(hstu_engine_create(m, &o, &gc, &err) == HSTU_OK, "cached engine: %s", err.msg);
    if (!gc || !gpu || !ref || !emu)
        goto done;
    emu->ops = &ops_emu;
    static sim_user users[CACHE_USERS];
    static outputs oc, og, orf, oe;
    hstu_request qc[CACHE_USERS], qr[CACHE_USERS];
    rng r = {99};
    int max_n = c->max_history;
    for (int u = 0; u < CACHE_USERS; u++)
        user_fill(&users[u], c, 1 + (int)rng_below(&r, max_n / 2), 0, &r);
    model_worst w = {0}, wf = {0};
    int tiers[3] = {0}, rewrites = 0, nocache_diff = 0;
    /* ranking: every round's logits, one tensor per engine (the bf16 rule
     * on a batch of a few logits is a coin toss) */
    size_t cap = (size_t)rounds * 5 * MAXM * MAXT, nl = 0;
    float *lc = t_xmalloc(cap * 4), *lg = t_xmalloc(cap * 4), *lr = t_xmalloc(cap * 4), *le = t_xmalloc(cap * 4);
    double cached_vs_full = 0;
    for (int round = 0; round < rounds; round++) {
        int B = 1 + (int)rng_below(&r, 5), pick[5];
        for (int b = 0; b < B; b++) {
            int u;
            bool dup;
            do {
                u = (int)rng_below(&r, CACHE_USERS);
                dup = false;
                for (int j = 0; j < b; j++)
                    dup |= pick[j] == u;
            } while (dup);
            pick[b] = u;
            sim_user *su = &users[u];
            /* the history grows (or restarts when full); now and then an old item changes */
            sim_user grown;
            int add = (int)rng_below(&r, 12);
            if (su->n + add > max_n)
                su->n = 1 + (int)rng_below(&r, 8), add = 0;
            user_fill(&grown, c, su->n + add, retr ? 0 : 1 + (int)rng_below(&r, c->max_candidates), &r);
            memcpy(grown.items, su->items, sizeof(int64_t) * su->n);
            memcpy(grown.actions, su->actions, sizeof(int64_t) * su->n);
            memcpy(grown.ctx, su->ctx, sizeof su->ctx);
            int64_t t0 = su->n ? su->ts[su->n - 1] : 0;
            memcpy(grown.ts, su->ts, sizeof(int64_t) * su->n);
            for (int i = su->n; i < grown.n; i++)
                grown.ts[i] = t0 += 1 + (int64_t)rng_below(&r, 5000);
            if (su->n > 2 && rng_below(&r, 10) == 0) {
                grown.items[rng_below(&r, su->n)] = 1 + (int64_t)rng_below(&r, c->item_rows - 1);
                rewrites++;
            }
            *su = grown;
            int k = retr ? 1 + (int)rng_below(&r, MAXK) : 1;
            qc[b] = user_request(su, c, 500 + u, k);
            qr[b] = qc[b];
            qr[b].top_k = k + REF_EXTRA;
        }
        bind_outputs(&oc, B), bind_outputs(&og, B), bind_outputs(&orf, B), bind_outputs(&oe, B);
        T_REQUIRE(hstu_engine_run(gc, qc, B, oc.res, true, &err) == HSTU_OK, "cached: %s", err.msg);
        T_REQUIRE(hstu_engine_run(gpu, qc, B, og.res, true, &err) == HSTU_OK, "full: %s", err.msg);
        T_REQUIRE(hstu_engine_run(ref, qr, B, orf.res, true, &err) == HSTU_OK, "ref: %s", err.msg);
        T_REQUIRE(hstu_engine_run(emu, qr, B, oe.res, true, &err) == HSTU_OK, "emu: %s", err.msg);
        for (int b = 0; b < B; b++) {
            tiers[oc.res[b].tier]++;
            if (oc.res[b].tier == HSTU_TIER_MISS && oc.res[b].cached_tokens != 0)
                nocache_diff++;
            if (retr)
                continue;
            for (int i = 0; i < qc[b].n_candidates * c->n_tasks; i++, nl++) {
                double d = fabs((double)oc.scores[b][i] - og.scores[b][i]);
                cached_vs_full = d > cached_vs_full ? d : cached_vs_full;
                lc[nl] = oc.scores[b][i], lg[nl] = og.scores[b][i], lr[nl] = orf.scores[b][i];
                le[nl] = oe.scores[b][i];
            }
        }
        if (retr) {
            compare_retrieval(c, qc, B, &oc, &orf, &oe, &w, round);
            compare_retrieval(c, qc, B, &og, &orf, &oe, &wf, round);
        }
        char why[256];
        T_CHECK(kv_check(gc->kv, why, sizeof why), "round %d: device cache: %s", round, why);
        T_CHECK(!gc->ht || ht_check(gc->ht, why, sizeof why), "round %d: host tier: %s", round, why);
        if (t_case_failed())
            break;
    }
    if (!retr && nl > 0) {
        bf16_check k1 = check_bf16("cached logits", lc, lr, le, nl), k2 = check_bf16("full logits", lg, lr, le, nl);
        w.err = k1.err, w.emu_err = k1.emu_err, w.l2 = k1.l2;
        wf.err = k2.err, wf.emu_err = k2.emu_err, wf.l2 = k2.l2;
    }
    hstu_cache_stats cs;
    hstu_engine_cache_stats(gc, &cs);
    printf("    %d batches: %d device hits, %d host hits, %d misses; %d rewrites planted, %llu found after the "
           "forward (users run again); %llu evictions, %llu degraded, %llu offloads (%llu skipped), %.1f KiB "
           "onloaded\n",
           rounds, tiers[HSTU_TIER_DEVICE], tiers[HSTU_TIER_HOST], tiers[HSTU_TIER_MISS], rewrites,
           (unsigned long long)cs.redone, (unsigned long long)cs.evictions, (unsigned long long)cs.degraded, (unsigned long long)cs.offloads,
           (unsigned long long)cs.offloads_skipped, cs.onload_bytes / 1024.0);
    printf("    onload %s: %llu host rows recomputed instead of onloaded; model %.3g GB/s, %.3g TFLOP/s + %.3f ms, "
           "+ %.3f ms + %.3f ms/GB onloading\n",
           oc_kind == ONLOAD_ALL ? "all" : oc_kind == ONLOAD_NONE ? "none" : oc_kind == ONLOAD_PARTIAL ? "auto (rates set)"
                                                                                                    : "auto",
           (unsigned long long)cs.host_rows_recomputed, cs.onload_model_gbs, cs.onload_model_tflops,
           cs.onload_model_fixed_ms, cs.onload_model_extra_ms, cs.onload_model_extra_ms_per_gb);
    if (!g_small && tiers[HSTU_TIER_HOST] > 0) {
        if (oc_kind == ONLOAD_ALL)
            T_CHECK(cs.host_rows_recomputed == 0 && cs.onload_bytes > 0, "onload all: %llu rows recomputed",
                    (unsigned long long)cs.host_rows_recomputed);
        if (oc_kind == ONLOAD_NONE)
            T_CHECK(cs.host_rows_recomputed > 0 && cs.onload_bytes == 0, "onload none: %.0f bytes onloaded",
                    (double)cs.onload_bytes);
        if (oc_kind == ONLOAD_PARTIAL)
            T_CHECK(cs.host_rows_recomputed > 0 && cs.onload_bytes > 0,
                    "partial onloads: %llu rows recomputed, %.0f bytes onloaded",
                    (unsigned long long)cs.host_rows_recomputed, (double)cs.onload_bytes);
    }
    printf("    CUDA graphs: %llu forwards replayed (%llu one graph per layer), %llu buckets captured, %llu eager\n",
           (unsigned long long)cs.graph_runs, (unsigned long long)cs.graph_layered_runs,
           (unsigned long long)cs.graph_captures, (unsigned long long)cs.eager_runs);
    T_CHECK(graphs ? cs.graph_runs > 0 && cs.graph_captures > 1 : cs.graph_runs == 0,
            "graphs %s but %llu replays", graphs ? "on" : "off", (unsigned long long)cs.graph_runs);
    /* the stack's GPU span (its marks inside the graphs or around the eager
     * launches) lies inside the forwards' */
    T_CHECK(cs.gpu_forwards > 0 && cs.gpu_stack_ms > 0 && cs.gpu_stack_ms <= cs.gpu_busy_ms && cs.plan_ms > 0,
            "stack %.3f ms of %.3f ms over %llu forwards, planning %.3f ms", cs.gpu_stack_ms, cs.gpu_busy_ms,
            (unsigned long long)cs.gpu_forwards, cs.plan_ms);
    /* a layer-wise onload replays one graph per layer; every other replay
     * runs the whole stack as one graph: both kinds replayed and checked */
    if (graphs && layerwise && cs.onload_bytes > 0 && !g_small)
        T_CHECK(cs.graph_layered_runs > 0 && cs.graph_layered_runs < cs.graph_runs,
                "%llu of %llu replays one graph per layer: want both kinds", (unsigned long long)cs.graph_layered_runs,
                (unsigned long long)cs.graph_runs);
    printf("    cached: error %.3g (ratio %.2f, bound 2), L2 %.3g; full: error %.3g (ratio %.2f)", w.err,
           w.emu_err > 0 ? w.err / w.emu_err : 0.0, w.l2, wf.err, wf.emu_err > 0 ? wf.err / wf.emu_err : 0.0);
    if (!retr)
        printf("; max |cached - full| logit %.3g", cached_vs_full);
    printf("\n");
    T_CHECK(nocache_diff == 0, "%d misses reported cached tokens", nocache_diff);
    /* (the sanitizer's few rounds need not reach every tier) */
    T_CHECK(g_small || (tiers[HSTU_TIER_DEVICE] > 0 && tiers[HSTU_TIER_HOST] > 0 && tiers[HSTU_TIER_MISS] > 0),
            "the sequence should reach every tier (device %d, host %d, miss %d)", tiers[HSTU_TIER_DEVICE],
            tiers[HSTU_TIER_HOST], tiers[HSTU_TIER_MISS]);
    T_CHECK(g_small || cs.evictions > 0, "no eviction: the pool is too large for the test");
    hstu_engine_cache_clear(gc);
    hstu_engine_cache_stats(gc, &cs);
    T_CHECK(cs.pages_in_use == 0 && cs.host_chunks_in_use == 0, "after clear: %d pages, %d chunks in use",
            cs.pages_in_use, cs.host_chunks_in_use);
    free(lc), free(lg), free(lr), free(le);
done:
    hstu_engine_destroy(gc);
    hstu_engine_destroy(gpu);
    hstu_engine_destroy(ref);
    hstu_engine_destroy(emu);
    hstu_model_destroy(m);
    hstu_model_destroy(mb);
}

static void test_cache_ranking(void)
{
    hstu_config c;
    parse(ranking_json, &c);
    cache_vs_full(&c, g_small ? 6 : 60, true, true, ONLOAD_MEASURED);
}

static void test_cache_retrieval(void)
{
    hstu_config c;
    parse(retrieval_json, &c);
    cache_vs_full(&c, g_small ? 6 : 60, true, true, ONLOAD_PARTIAL);
}

static void test_cache_no_overlap(void)
{
    hstu_config c;
    parse(ranking_json, &c);
    cache_vs_full(&c, g_small ? 4 : 30, false, false, ONLOAD_ALL);
}

static void test_cache_onload(void)
{
    hstu_config c;
    parse(ranking_json, &c);
    cache_vs_full(&c, g_small ? 4 : 40, true, true, ONLOAD_PARTIAL);
    if (!t_case_failed())
        cache_vs_full(&c, g_small ? 4 : 20, true, true, ONLOAD_NONE);
    if (!t_case_failed())
        cache_vs_full(&c, g_small ? 4 : 20, true, true, ONLOAD_ALL);
}

/* Programmatic dependent launch off, then on (cuda_pdl_set), each setting
 * with its own engines, created, captured and run under it: the switch is
 * read at each launch and a CUDA graph keeps what it was captured with. A
 * kernel touching memory before its pdl_wait could race only with PDL on;
 * the run with it off tells such a failure from the model's. Every other
 * case runs with the process's setting (on unless HSTU_CUDA_PDL=0). */
static void test_model_pdl(void)
{
    const int was = cuda_pdl_on();
    for (int on = 0; on < 2 && !t_case_failed(); on++) {
        cuda_pdl_set(on);
        printf("    PDL %s:\n", on ? "on" : "off");
        hstu_config c;
        parse(ranking_json, &c);
        model_vs_ref(&c, HSTU_BACKEND_REF, g_small ? 2 : 4, 8);
        parse(retrieval_json, &c);
        model_vs_ref(&c, HSTU_BACKEND_REF, g_small ? 2 : 4, 8);
        parse(ranking_json, &c);
        cache_vs_full(&c, g_small ? 4 : 20, true, true, ONLOAD_ALL);
    }
    cuda_pdl_set(was);
}

static void test_unsupported(void)
{
    hstu_config c;
    hstu_error err = {0};
    HSTU_ASSERT(hstu_config_preset("ml-1m", &c, &err) == HSTU_OK); /* d_qk = d_v = 50 */
    hstu_model *m = make_model(&c, 1, false);
    T_REQUIRE(m, "no model");
    hstu_engine_options o;
    hstu_engine_options_default(&o);
    o.backend = HSTU_BACKEND_CUDA;
    hstu_engine *e = NULL;
    T_CHECK(hstu_engine_create(m, &o, &e, &err) == HSTU_ERR_UNSUPPORTED && !e, "ml-1m's head widths accepted");
    T_CHECK(strstr(err.msg, "d_qk 50") != NULL, "message: %s", err.msg);
    printf("    %s\n", err.msg);
    hstu_engine_destroy(e);
    hstu_model_destroy(m);
}

/* HSTU_TEST_KERNELS_ONLY=1 leaves the whole-model cases out (they are not
 * run, not skipped): racecheck runs out of memory on them. */
#define RUN_CASE(name, fn)                                  \
    if (!(g_kernels_only && strstr(name, "engine vs reference"))) \
        t_run(name, fn);
#endif /* HSTU_HAVE_CUDA */

#define SKIP_CASE(name, fn) t_skip(name, why);

int main(void)
{
    char why[256];
    if (!cuda_available(why, sizeof why)) {
        CUDA_TESTS(SKIP_CASE)
        return t_summary();
    }
#ifdef HSTU_HAVE_CUDA
    const char *small = getenv("HSTU_TEST_SMALL");
    g_small = small && *small && strcmp(small, "0") != 0;
    const char *konly = getenv("HSTU_TEST_KERNELS_ONLY");
    g_kernels_only = konly && *konly && strcmp(konly, "0") != 0;
    CUDA_TESTS(RUN_CASE)
#endif
    return t_summary();
}
