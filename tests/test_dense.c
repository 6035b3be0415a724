/* test_dense.c - the dense ops of dense.h: every _cpu twin against its _ref.
 *
 * Inputs are random (rng.h), never zeros; shapes cover one row, odd widths
 * (1, 3, 50, 129), strided rows whose padding columns must come out
 * untouched, and the sizes of the presets (kuairand-1k d 512 / uvqk 2048,
 * bench-8x1024 d 1024). Tolerances from spec 5: rel err <= 1e-4 for gemm,
 * 1e-5 for the row-wise ops (one row's worth of fp32 rounding, far below the
 * logits' 1e-4). The reference itself is checked against values worked out
 * by hand or in double precision, so the oracle is not only compared with its
 * twin.
 */
#include "core/rng.h"
#include "harness.h"
#include "kernels/dense.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_GEMM 1e-4
#define TOL_ROW 1e-5

/* ---- helpers ------------------------------------------------------------ */

static rng g_rng = {0x5eed0fde45eull};

static float *rand_buf(size_t n, float lo, float hi)
{
    float *p = malloc(sizeof *p * (n ? n : 1));
    if (!p)
        abort();
    for (size_t i = 0; i < n; i++)
        p[i] = rng_range(&g_rng, lo, hi);
    return p;
}

static float *dup_buf(const float *src, size_t n)
{
    float *p = malloc(sizeof *p * (n ? n : 1));
    if (!p)
        abort();
    memcpy(p, src, sizeof *p * n);
    return p;
}

/* Copies the first `width` columns of each row into a packed buffer. */
static float *pack(const float *x, int rows, int width, int ld)
{
    float *p = malloc(sizeof *p * ((size_t)rows * width + 1));
    if (!p)
        abort();
    for (int r = 0; r < rows; r++)
        memcpy(p + (size_t)r * width, x + (size_t)r * ld, sizeof *p * width);
    return p;
}

static double rel_err_strided(const float *out, const float *ref, int rows, int width, int ld)
{
    float *a = pack(out, rows, width, ld), *b = pack(ref, rows, width, ld);
    double e = t_rel_err(a, b, (size_t)rows * width);
    free(a);
    free(b);
    return e;
}

static bool nonfinite_strided(const float *x, int rows, int width, int ld)
{
    float *a = pack(x, rows, width, ld);
    bool bad = t_has_nonfinite(a, (size_t)rows * width);
    free(a);
    return bad;
}

/* Index of the first padding element (column >= width) that differs from
 * the original, or -1. Bitwise comparison. */
static long padding_changed(const float *x, const float *orig, int rows, int width, int ld)
{
    for (int r = 0; r < rows; r++)
        for (int c = width; c < ld; c++) {
            size_t i = (size_t)r * ld + c;
            if (memcmp(&x[i], &orig[i], sizeof x[i]) != 0)
                return (long)i;
        }
    return -1;
}

/* Checks cpu against ref over the width columns and that neither touched
 * the padding of the buffer they wrote. */
static void check_out(const char *op, const char *shape, const float *cpu, const float *ref,
                      const float *orig, int rows, int width, int ld, double tol)
{
    double e = rel_err_strided(cpu, ref, rows, width, ld);
    T_CHECK(e <= tol, "%s %s: rel err %.3g > %.1g", op, shape, e, tol);
    T_CHECK(!nonfinite_strided(ref, rows, width, ld), "%s %s: NaN/Inf in the reference output", op, shape);
    T_CHECK(!nonfinite_strided(cpu, rows, width, ld), "%s %s: NaN/Inf in the cpu output", op, shape);
    long i = padding_changed(cpu, orig, rows, width, ld);
    T_CHECK(i < 0, "%s %s: cpu wrote padding element %ld (ld %d, width %d)", op, shape, i, ld, width);
    i = padding_changed(ref, orig, rows, width, ld);
    T_CHECK(i < 0, "%s %s: ref wrote padding element %ld (ld %d, width %d)", op, shape, i, ld, width);
}

/* ---- gemm ---------------------------------------------------------------- */

typedef struct gemm_shape { int M, N, K, pad_a, pad_b, pad_c; } gemm_shape;

/* Edge shapes: one row, widths 1, 3, 50, 129, strided operands. */
static const gemm_shape gemm_small[] = {
    {1, 1, 1, 0, 0, 0},    {1, 3, 50, 0, 0, 0},   {3, 129, 1, 0, 0, 0}, {50, 3, 129, 0, 0, 0},
    {129, 50, 3, 2, 5, 7}, {1, 129, 50, 3, 1, 11}, {37, 129, 129, 1, 3, 2},
};
/* Preset sizes; the reference takes ~0.5 s on each, so each runs with one beta. */
static const gemm_shape gemm_big_beta0[] = {
    {300, 1024, 512, 0, 0, 0}, /* 300 rows, K = kuairand d 512, N = bench d 1024 */
};
static const gemm_shape gemm_big_beta1[] = {
    {300, 512, 512, 16, 8, 24}, /* kuairand proj + residual: H*Dv 512 -> d 512, strided */
    {64, 2048, 512, 0, 0, 0},   /* kuairand uvqk: d 512 -> 2048 */
};

static void run_gemm(const gemm_shape *shapes, size_t n, float beta, bool nan_c)
{
    for (size_t s = 0; s < n; s++) {
        gemm_shape g = shapes[s];
        int lda = g.K + g.pad_a, ldb = g.N + g.pad_b, ldc = g.N + g.pad_c;
        float *A = rand_buf((size_t)g.M * lda, -1, 1);
        float *B = rand_buf((size_t)g.K * ldb, -1, 1);
        float *C0 = rand_buf((size_t)g.M * ldc, -2, 2);
        if (nan_c)
            for (int r = 0; r < g.M; r++)
                for (int c = 0; c < g.N; c++)
                    C0[(size_t)r * ldc + c] = NAN;
        float *Cr = dup_buf(C0, (size_t)g.M * ldc), *Cc = dup_buf(C0, (size_t)g.M * ldc);
        float *A0 = dup_buf(A, (size_t)g.M * lda), *B0 = dup_buf(B, (size_t)g.K * ldb);
        gemm_ref(g.M, g.N, g.K, A, lda, B, ldb, beta, Cr, ldc);
        gemm_cpu(g.M, g.N, g.K, A, lda, B, ldb, beta, Cc, ldc);
        char shape[96];
        snprintf(shape, sizeof shape, "%dx%dx%d lda %d ldb %d ldc %d beta %g", g.M, g.N, g.K, lda, ldb, ldc,
                 beta);
        check_out("gemm", shape, Cc, Cr, C0, g.M, g.N, ldc, TOL_GEMM);
        T_CHECK(!memcmp(A, A0, sizeof *A * (size_t)g.M * lda) && !memcmp(B, B0, sizeof *B * (size_t)g.K * ldb),
                "gemm %s: an input changed", shape);
        free(A), free(B), free(C0), free(Cr), free(Cc), free(A0), free(B0);
    }
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
static void test_gemm_beta0(void) { run_gemm(gemm_small, COUNT(gemm_small), 0.0f, false); }
static void test_gemm_beta1(void) { run_gemm(gemm_small, COUNT(gemm_small), 1.0f, false); }
static void test_gemm_beta_half(void) { run_gemm(gemm_small, COUNT(gemm_small), 0.5f, false); }
static void test_gemm_big_beta0(void) { run_gemm(gemm_big_beta0, COUNT(gemm_big_beta0), 0.0f, false); }
static void test_gemm_big_beta1(void) { run_gemm(gemm_big_beta1, COUNT(gemm_big_beta1), 1.0f, false); }
/* beta 0 overwrites C without reading it (the BLAS convention): a workspace
 * holding NaN from an earlier use must not leak into the result. */
static void test_gemm_beta0_nan_c(void) { run_gemm(gemm_small, COUNT(gemm_small), 0.0f, true); }

/* M or N of 0: nothing to do, C untouched. K of 0: C = beta * C. */
static void test_gemm_empty(void)
{
    float A[4], B[4];
    for (int i = 0; i < 4; i++)
        A[i] = rng_range(&g_rng, -1, 1), B[i] = rng_range(&g_rng, -1, 1);
    float C0[6], Cr[6], Cc[6];
    for (int i = 0; i < 6; i++)
        C0[i] = rng_range(&g_rng, 1, 2);
    memcpy(Cr, C0, sizeof C0), memcpy(Cc, C0, sizeof C0);
    gemm_ref(0, 3, 2, A, 2, B, 3, 0.0f, Cr, 3);
    gemm_cpu(0, 3, 2, A, 2, B, 3, 0.0f, Cc, 3);
    T_CHECK(!memcmp(Cr, C0, sizeof C0) && !memcmp(Cc, C0, sizeof C0), "M = 0 changed C");
    gemm_ref(2, 0, 2, A, 2, B, 1, 0.0f, Cr, 3);
    gemm_cpu(2, 0, 2, A, 2, B, 1, 0.0f, Cc, 3);
    T_CHECK(!memcmp(Cr, C0, sizeof C0) && !memcmp(Cc, C0, sizeof C0), "N = 0 changed C");
    /* K = 0, beta 1: C unchanged; beta 0: C = 0 */
    gemm_ref(2, 3, 0, A, 1, B, 3, 1.0f, Cr, 3);
    gemm_cpu(2, 3, 0, A, 1, B, 3, 1.0f, Cc, 3);
    T_CHECK(!memcmp(Cr, C0, sizeof C0), "K = 0 beta 1: ref changed C");
    T_CHECK(!memcmp(Cc, C0, sizeof C0), "K = 0 beta 1: cpu changed C");
    gemm_ref(2, 3, 0, A, 1, B, 3, 0.0f, Cr, 3);
    gemm_cpu(2, 3, 0, A, 1, B, 3, 0.0f, Cc, 3);
    for (int i = 0; i < 6; i++) {
        T_CHECK(Cr[i] == 0.0f, "K = 0 beta 0: ref C[%d] = %g, expected 0", i, Cr[i]);
        T_CHECK(Cc[i] == 0.0f, "K = 0 beta 0: cpu C[%d] = %g, expected 0", i, Cc[i]);
    }
}

/* Hand-computed: [[1,2,3],[4,5,6]] @ [[7,8],[9,10],[11,12]] = [[58,64],[139,154]],
 * exact in fp32; with beta 1 and C = [[1,-1],[0.5,2]] the sum; strided C. */
static void test_gemm_hand(void)
{
    const float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {7, 8, 9, 10, 11, 12};
    const float want0[4] = {58, 64, 139, 154}, want1[4] = {59, 63, 139.5f, 156};
    for (int which = 0; which < 2; which++) {
        float C[2][6] = {{1, -1, 777, 0.5f, 2, 888}, {1, -1, 777, 0.5f, 2, 888}}; /* ldc 3 */
        gemm_ref(2, 2, 3, A, 3, B, 2, (float)which, C[0], 3);
        gemm_cpu(2, 2, 3, A, 3, B, 2, (float)which, C[1], 3);
        const float *want = which ? want1 : want0;
        for (int t = 0; t < 2; t++) {
            const char *who = t ? "cpu" : "ref";
            for (int r = 0; r < 2; r++)
                for (int c = 0; c < 2; c++)
                    T_CHECK(C[t][r * 3 + c] == want[r * 2 + c], "%s beta %d: C[%d,%d] = %g, expected %g", who,
                            which, r, c, C[t][r * 3 + c], want[r * 2 + c]);
            T_CHECK(C[t][2] == 777 && C[t][5] == 888, "%s beta %d: padding written", who, which);
        }
    }
}

/* The reference against a double-precision product on a random case. */
static void test_gemm_ref_vs_double(void)
{
    int M = 23, N = 129, K = 300, lda = K + 1, ldb = N + 3, ldc = N;
    float *A = rand_buf((size_t)M * lda, -1, 1), *B = rand_buf((size_t)K * ldb, -1, 1);
    float *C = rand_buf((size_t)M * ldc, -1, 1);
    float *C0 = dup_buf(C, (size_t)M * ldc);
    double *want = malloc(sizeof *want * (size_t)M * N);
    float *wantf = malloc(sizeof *wantf * (size_t)M * N);
    T_REQUIRE(want && wantf, "oom");
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int k = 0; k < K; k++)
                acc += (double)A[(size_t)i * lda + k] * B[(size_t)k * ldb + j];
            want[(size_t)i * N + j] = acc + C0[(size_t)i * ldc + j];
            wantf[(size_t)i * N + j] = (float)want[(size_t)i * N + j];
        }
    gemm_ref(M, N, K, A, lda, B, ldb, 1.0f, C, ldc);
    double e = t_rel_err(C, wantf, (size_t)M * N); /* ldc == N: packed */
    T_CHECK(e <= 1e-5, "gemm_ref vs double: rel err %.3g", e);
    free(A), free(B), free(C), free(C0), free(want), free(wantf);
}

/* ---- layernorm ----------------------------------------------------------- */

typedef struct row_shape { int rows, width, pad; } row_shape;

static const row_shape row_shapes[] = {
    {1, 1, 0},   {1, 3, 0},   {1, 50, 5},    {4, 1, 2},     {5, 3, 1},     {7, 50, 0},
    {17, 129, 3}, {33, 129, 0}, {300, 512, 16}, {300, 1024, 0}, {64, 2048, 7},
};
#define N_ROW_SHAPES (sizeof row_shapes / sizeof row_shapes[0])

/* Rows with an offset, so the mean matters, and a spread per row
 * (|mean| / std at most about 3.5; test_layernorm_offset goes further). */
static float *rand_rows(int rows, int ld)
{
    float *x = rand_buf((size_t)rows * ld, -2, 2);
    for (int r = 0; r < rows; r++) {
        float off = rng_range(&g_rng, -2, 2), scale = rng_range(&g_rng, 0.5f, 3);
        for (int c = 0; c < ld; c++)
            x[(size_t)r * ld + c] = x[(size_t)r * ld + c] * scale + off;
    }
    return x;
}

static void run_layernorm(bool affine, bool in_place)
{
    for (size_t s = 0; s < N_ROW_SHAPES; s++) {
        row_shape sh = row_shapes[s];
        int ldx = sh.width + sh.pad, ldy = in_place ? ldx : sh.width + 2 * sh.pad + 1;
        float *x = rand_rows(sh.rows, ldx);
        float *w = affine ? rand_buf((size_t)sh.width, 0.5f, 1.5f) : NULL;
        float *b = affine ? rand_buf((size_t)sh.width, -1, 1) : NULL;
        float eps = 1e-5f;
        char shape[80];
        snprintf(shape, sizeof shape, "%dx%d ldx %d ldy %d%s", sh.rows, sh.width, ldx, ldy,
                 affine ? " affine" : "");
        if (in_place) {
            float *x0 = dup_buf(x, (size_t)sh.rows * ldx), *xr = dup_buf(x, (size_t)sh.rows * ldx);
            layernorm_ref(sh.rows, sh.width, xr, ldx, w, b, eps, xr, ldx);
            layernorm_cpu(sh.rows, sh.width, x, ldx, w, b, eps, x, ldx);
            check_out("layernorm in place", shape, x, xr, x0, sh.rows, sh.width, ldx, TOL_ROW);
            free(x0), free(xr);
        } else {
            float *y0 = rand_buf((size_t)sh.rows * ldy, -9, 9);
            float *yr = dup_buf(y0, (size_t)sh.rows * ldy), *yc = dup_buf(y0, (size_t)sh.rows * ldy);
            float *x0 = dup_buf(x, (size_t)sh.rows * ldx);
            layernorm_ref(sh.rows, sh.width, x, ldx, w, b, eps, yr, ldy);
            layernorm_cpu(sh.rows, sh.width, x, ldx, w, b, eps, yc, ldy);
            check_out("layernorm", shape, yc, yr, y0, sh.rows, sh.width, ldy, TOL_ROW);
            T_CHECK(!memcmp(x, x0, sizeof *x * (size_t)sh.rows * ldx), "layernorm %s: input changed", shape);
            free(y0), free(yr), free(yc), free(x0);
        }
        free(x), free(w), free(b);
    }
}

static void test_layernorm_affine(void) { run_layernorm(true, false); }
static void test_layernorm_plain(void) { run_layernorm(false, false); }
static void test_layernorm_in_place(void)
{
    run_layernorm(true, true);
    run_layernorm(false, true);
}

/* LN([1,2,3,4]): mean 2.5, biased variance 1.25, so y = (x - 2.5) / sqrt(1.25 + eps);
 * affine w = [2, -1, 0.5, 3], b = [1, 0, -1, 0.25]. A second row [10, 10, 10, 10.5]
 * has mean 10.125, variance 0.046875. */
static void test_layernorm_hand(void)
{
    const float x[8] = {1, 2, 3, 4, 10, 10, 10, 10.5f};
    const float w[4] = {2, -1, 0.5f, 3}, b[4] = {1, 0, -1, 0.25f};
    const double mean[2] = {2.5, 10.125}, var[2] = {1.25, 0.046875};
    const float eps = 1e-5f;
    for (int affine = 0; affine < 2; affine++) {
        float y[2][8];
        layernorm_ref(2, 4, x, 4, affine ? w : NULL, affine ? b : NULL, eps, y[0], 4);
        layernorm_cpu(2, 4, x, 4, affine ? w : NULL, affine ? b : NULL, eps, y[1], 4);
        for (int t = 0; t < 2; t++)
            for (int r = 0; r < 2; r++)
                for (int c = 0; c < 4; c++) {
                    double v = (x[r * 4 + c] - mean[r]) / sqrt(var[r] + (double)eps);
                    if (affine)
                        v = v * w[c] + b[c];
                    T_CHECK(fabs(y[t][r * 4 + c] - v) <= 1e-5 * fmax(1, fabs(v)),
                            "%s affine %d: y[%d,%d] = %.7g, expected %.7g", t ? "cpu" : "ref", affine, r, c,
                            y[t][r * 4 + c], v);
                }
    }
}

/* Rows whose mean is far from zero next to their spread (offset 5, std
 * about 0.17 to 0.29: |mean| / std 17 to 29), width 1024 and 2048: both
 * twins against LayerNorm computed in double. Rounding the mean to fp32
 * alone moves outputs by ulp(5) / 2 / std, under 1.5e-6 here, so fp32 done
 * with care stays well inside the row-wise tolerance; a running fp32 sum of
 * 2048 values near 5 does not. */
static void test_layernorm_offset(void)
{
    const int widths[2] = {1024, 2048};
    for (int wi = 0; wi < 2; wi++) {
        int R = 32, W = widths[wi];
        size_t n = (size_t)R * W;
        float *x = malloc(sizeof *x * n), *u = rand_buf(n, -3, 3);
        float *y[4] = {malloc(sizeof(float) * n), malloc(sizeof(float) * n), malloc(sizeof(float) * n),
                       malloc(sizeof(float) * n)};
        float *want_ln = malloc(sizeof *want_ln * n), *want_mul = malloc(sizeof *want_mul * n);
        T_REQUIRE(x && y[0] && y[1] && y[2] && y[3] && want_ln && want_mul, "oom");
        for (int r = 0; r < R; r++) {
            float scale = rng_range(&g_rng, 0.15f, 0.25f);
            for (int c = 0; c < W; c++)
                x[(size_t)r * W + c] = 5.0f + scale * rng_range(&g_rng, -2, 2);
            double m = 0, v = 0;
            for (int c = 0; c < W; c++)
                m += x[(size_t)r * W + c];
            m /= W;
            for (int c = 0; c < W; c++)
                v += (x[(size_t)r * W + c] - m) * (x[(size_t)r * W + c] - m);
            v /= W;
            for (int c = 0; c < W; c++) {
                size_t i = (size_t)r * W + c;
                want_ln[i] = (float)((x[i] - m) / sqrt(v + 1e-5));
                want_mul[i] = (float)((x[i] - m) / sqrt(v + 1e-5) * u[i]);
            }
        }
        layernorm_ref(R, W, x, W, NULL, NULL, 1e-5f, y[0], W);
        layernorm_cpu(R, W, x, W, NULL, NULL, 1e-5f, y[1], W);
        ln_mul_ref(R, W, x, W, u, W, NULL, NULL, 1e-5f, y[2], W);
        ln_mul_cpu(R, W, x, W, u, W, NULL, NULL, 1e-5f, y[3], W);
        const char *who[4] = {"layernorm_ref", "layernorm_cpu", "ln_mul_ref", "ln_mul_cpu"};
        for (int t = 0; t < 4; t++) {
            double e = t_rel_err(y[t], t < 2 ? want_ln : want_mul, n);
            T_CHECK(e <= TOL_ROW, "%s %dx%d, |mean|/std ~ 20: rel err %.3g against double > %.1g", who[t], R, W,
                    e, TOL_ROW);
        }
        free(x), free(u), free(want_ln), free(want_mul);
        for (int t = 0; t < 4; t++)
            free(y[t]);
    }
}

/* ---- bias_silu ----------------------------------------------------------- */

static void run_bias_silu(bool bias_on, int silu_mode /* 0 all, 1 prefix, 2 none */)
{
    for (size_t s = 0; s < N_ROW_SHAPES; s++) {
        row_shape sh = row_shapes[s];
        int ld = sh.width + sh.pad;
        int silu_cols = silu_mode == 0 ? sh.width : silu_mode == 1 ? sh.width / 4 + (sh.width > 1) : 0;
        if (silu_mode == 1 && sh.width == 2048)
            silu_cols = 512; /* kuairand "u": H*Dv of 2048 */
        float *x0 = rand_buf((size_t)sh.rows * ld, -8, 8);
        /* a few extreme values: expf(-v) overflows for v < -88 */
        if (sh.width >= 3)
            x0[0] = -100.0f, x0[1] = 95.0f, x0[2] = -87.0f;
        float *b = bias_on ? rand_buf((size_t)sh.width, -1, 1) : NULL;
        float *xr = dup_buf(x0, (size_t)sh.rows * ld), *xc = dup_buf(x0, (size_t)sh.rows * ld);
        bias_silu_ref(sh.rows, sh.width, xr, ld, b, silu_cols);
        bias_silu_cpu(sh.rows, sh.width, xc, ld, b, silu_cols);
        char shape[96];
        snprintf(shape, sizeof shape, "%dx%d ld %d silu_cols %d%s", sh.rows, sh.width, ld, silu_cols,
                 bias_on ? " bias" : "");
        check_out("bias_silu", shape, xc, xr, x0, sh.rows, sh.width, ld, TOL_ROW);
        /* the columns past silu_cols are exactly x + bias in both */
        for (int r = 0; r < sh.rows && !t_case_failed(); r++)
            for (int c = silu_cols; c < sh.width; c++) {
                size_t i = (size_t)r * ld + c;
                float want = x0[i] + (b ? b[c] : 0.0f);
                T_CHECK(xr[i] == want && xc[i] == want, "bias_silu %s: column %d of row %d is %g / %g, expected %g",
                        shape, c, r, xr[i], xc[i], want);
            }
        free(x0), free(b), free(xr), free(xc);
    }
}

static void test_bias_silu_all_bias(void) { run_bias_silu(true, 0); }
static void test_bias_silu_all_nobias(void) { run_bias_silu(false, 0); }
static void test_bias_silu_prefix_bias(void) { run_bias_silu(true, 1); }
static void test_bias_silu_prefix_nobias(void) { run_bias_silu(false, 1); }
static void test_bias_silu_none(void) { run_bias_silu(true, 2); }

/* SiLU(1) = 1 / (1 + e^-1) = 0.7310586, SiLU(-1) = -0.2689414,
 * SiLU(2.5) = 2.5 / (1 + e^-2.5) = 2.3103545;
 * x = [1, -1, 2, 3] + bias [0, 0, 0.5, 0.5], silu on the first 3 columns:
 * [0.7310586, -0.2689414, 2.3103545, 3.5]. */
static void test_bias_silu_hand(void)
{
    const float x0[4] = {1, -1, 2, 3}, bias[4] = {0, 0, 0.5f, 0.5f};
    const double want[4] = {0.7310585786, -0.2689414214, 2.3103545499, 3.5};
    for (int t = 0; t < 2; t++) {
        float x[4];
        memcpy(x, x0, sizeof x);
        if (t)
            bias_silu_cpu(1, 4, x, 4, bias, 3);
        else
            bias_silu_ref(1, 4, x, 4, bias, 3);
        for (int c = 0; c < 4; c++)
            T_CHECK(fabs(x[c] - want[c]) <= 1e-6, "%s: x[%d] = %.8g, expected %.8g", t ? "cpu" : "ref", c, x[c],
                    want[c]);
    }
}

/* ---- ln_mul -------------------------------------------------------------- */

static void run_ln_mul(bool affine)
{
    for (size_t s = 0; s < N_ROW_SHAPES; s++) {
        row_shape sh = row_shapes[s];
        int lda = sh.width + sh.pad, ldu = sh.width + 2 * sh.pad, ldy = sh.width + sh.pad + 1;
        float *a = rand_rows(sh.rows, lda);
        float *u = rand_buf((size_t)sh.rows * ldu, -3, 3);
        float *w = affine ? rand_buf((size_t)sh.width, 0.5f, 1.5f) : NULL;
        float *b = affine ? rand_buf((size_t)sh.width, -1, 1) : NULL;
        float *y0 = rand_buf((size_t)sh.rows * ldy, -9, 9);
        float *yr = dup_buf(y0, (size_t)sh.rows * ldy), *yc = dup_buf(y0, (size_t)sh.rows * ldy);
        float *a0 = dup_buf(a, (size_t)sh.rows * lda), *u0 = dup_buf(u, (size_t)sh.rows * ldu);
        ln_mul_ref(sh.rows, sh.width, a, lda, u, ldu, w, b, 1e-5f, yr, ldy);
        ln_mul_cpu(sh.rows, sh.width, a, lda, u, ldu, w, b, 1e-5f, yc, ldy);
        char shape[96];
        snprintf(shape, sizeof shape, "%dx%d lda %d ldu %d ldy %d%s", sh.rows, sh.width, lda, ldu, ldy,
                 affine ? " affine" : "");
        check_out("ln_mul", shape, yc, yr, y0, sh.rows, sh.width, ldy, TOL_ROW);
        T_CHECK(!memcmp(a, a0, sizeof *a * (size_t)sh.rows * lda) && !memcmp(u, u0, sizeof *u * (size_t)sh.rows * ldu),
                "ln_mul %s: an input changed", shape);
        free(a), free(u), free(w), free(b), free(y0), free(yr), free(yc), free(a0), free(u0);
    }
}

static void test_ln_mul_affine(void) { run_ln_mul(true); }
static void test_ln_mul_plain(void) { run_ln_mul(false); }

/* a = [1,2,3,4] (LN: (a - 2.5) / sqrt(1.25 + eps)), u = [1, -1, 2, 0.5],
 * affine w = [2, 1, 1, 1], b = [0, 1, 0, 0]. */
static void test_ln_mul_hand(void)
{
    const float a[4] = {1, 2, 3, 4}, u[4] = {1, -1, 2, 0.5f}, w[4] = {2, 1, 1, 1}, b[4] = {0, 1, 0, 0};
    const float eps = 1e-5f;
    for (int affine = 0; affine < 2; affine++)
        for (int t = 0; t < 2; t++) {
            float y[4];
            if (t)
                ln_mul_cpu(1, 4, a, 4, u, 4, affine ? w : NULL, affine ? b : NULL, eps, y, 4);
            else
                ln_mul_ref(1, 4, a, 4, u, 4, affine ? w : NULL, affine ? b : NULL, eps, y, 4);
            for (int c = 0; c < 4; c++) {
                double v = (a[c] - 2.5) / sqrt(1.25 + (double)eps);
                if (affine)
                    v = v * w[c] + b[c];
                v *= u[c];
                T_CHECK(fabs(y[c] - v) <= 1e-5 * fmax(1, fabs(v)), "%s affine %d: y[%d] = %.7g, expected %.7g",
                        t ? "cpu" : "ref", affine, c, y[c], v);
            }
        }
}

/* ---- bias_act ------------------------------------------------------------ */

static void run_bias_act(bool bias_on, bool relu)
{
    for (size_t s = 0; s < N_ROW_SHAPES; s++) {
        row_shape sh = row_shapes[s];
        int ld = sh.width + sh.pad;
        float *x0 = rand_buf((size_t)sh.rows * ld, -3, 3);
        float *b = bias_on ? rand_buf((size_t)sh.width, -1, 1) : NULL;
        float *xr = dup_buf(x0, (size_t)sh.rows * ld), *xc = dup_buf(x0, (size_t)sh.rows * ld);
        bias_act_ref(sh.rows, sh.width, xr, ld, b, relu);
        bias_act_cpu(sh.rows, sh.width, xc, ld, b, relu);
        char shape[96];
        snprintf(shape, sizeof shape, "%dx%d ld %d%s%s", sh.rows, sh.width, ld, bias_on ? " bias" : "",
                 relu ? " relu" : "");
        check_out("bias_act", shape, xc, xr, x0, sh.rows, sh.width, ld, TOL_ROW);
        /* elementwise and exact: checked against the formula too */
        for (int r = 0; r < sh.rows && !t_case_failed(); r++)
            for (int c = 0; c < sh.width; c++) {
                size_t i = (size_t)r * ld + c;
                float v = x0[i] + (b ? b[c] : 0.0f);
                if (relu && v < 0)
                    v = 0;
                T_CHECK(xr[i] == v && xc[i] == v, "bias_act %s: [%d,%d] = %g / %g, expected %g", shape, r, c, xr[i],
                        xc[i], v);
            }
        free(x0), free(b), free(xr), free(xc);
    }
}

static void test_bias_act_relu_bias(void) { run_bias_act(true, true); }
static void test_bias_act_relu_nobias(void) { run_bias_act(false, true); }
static void test_bias_act_linear_bias(void) { run_bias_act(true, false); }
static void test_bias_act_linear_nobias(void) { run_bias_act(false, false); }

/* x = [-1, 0.5, 2] + bias [0.5, -1, 1]: relu gives [0, 0, 3], linear [-0.5, -0.5, 3]. */
static void test_bias_act_hand(void)
{
    const float x0[3] = {-1, 0.5f, 2}, bias[3] = {0.5f, -1, 1};
    const float want[2][3] = {{-0.5f, -0.5f, 3}, {0, 0, 3}};
    for (int relu = 0; relu < 2; relu++)
        for (int t = 0; t < 2; t++) {
            float x[3];
            memcpy(x, x0, sizeof x);
            if (t)
                bias_act_cpu(1, 3, x, 3, bias, relu);
            else
                bias_act_ref(1, 3, x, 3, bias, relu);
            for (int c = 0; c < 3; c++)
                T_CHECK(x[c] == want[relu][c], "%s relu %d: x[%d] = %g, expected %g", t ? "cpu" : "ref", relu, c,
                        x[c], want[relu][c]);
        }
}

/* A NaN that reaches the head must stay visible (spec 5: NaN anywhere fails):
 * both twins must give the same answer on it, and that answer is NaN. */
static void test_bias_act_nan(void)
{
    for (int relu = 0; relu < 2; relu++) {
        float xr[3] = {NAN, 1.0f, -1.0f}, xc[3] = {NAN, 1.0f, -1.0f};
        bias_act_ref(1, 3, xr, 3, NULL, relu);
        bias_act_cpu(1, 3, xc, 3, NULL, relu);
        T_CHECK(isnan(xr[0]), "ref relu %d: NaN input gave %g", relu, xr[0]);
        T_CHECK(isnan(xc[0]), "cpu relu %d: NaN input gave %g (ref gives %g)", relu, xc[0], xr[0]);
    }
}

/* ---- l2norm -------------------------------------------------------------- */

static void run_l2norm(void)
{
    for (size_t s = 0; s < N_ROW_SHAPES; s++) {
        row_shape sh = row_shapes[s];
        int ld = sh.width + sh.pad;
        float *x0 = rand_buf((size_t)sh.rows * ld, -2, 2);
        float *xr = dup_buf(x0, (size_t)sh.rows * ld), *xc = dup_buf(x0, (size_t)sh.rows * ld);
        l2norm_ref(sh.rows, sh.width, xr, ld);
        l2norm_cpu(sh.rows, sh.width, xc, ld);
        char shape[64];
        snprintf(shape, sizeof shape, "%dx%d ld %d", sh.rows, sh.width, ld);
        check_out("l2norm", shape, xc, xr, x0, sh.rows, sh.width, ld, TOL_ROW);
        /* independent: each row of the reference has unit norm and x's direction */
        for (int r = 0; r < sh.rows; r++) {
            double ss = 0, n0 = 0;
            for (int c = 0; c < sh.width; c++) {
                size_t i = (size_t)r * ld + c;
                ss += (double)xr[i] * xr[i];
                n0 += (double)x0[i] * x0[i];
            }
            if (sqrt(n0) < 1e-6)
                continue;
            T_CHECK(fabs(sqrt(ss) - 1) <= 1e-5, "l2norm_ref %s row %d: norm %.8g", shape, r, sqrt(ss));
            size_t i = (size_t)r * ld;
            T_CHECK(fabs(xr[i] - x0[i] / sqrt(n0)) <= 1e-5, "l2norm_ref %s row %d: %g, expected %g", shape, r,
                    xr[i], x0[i] / sqrt(n0));
            if (t_case_failed())
                break;
        }
        free(x0), free(xr), free(xc);
    }
}

static void test_l2norm(void) { run_l2norm(); }

/* Row 0 is ordinary, row 1 all tiny (norm below 1e-6: divided by 1e-6, so
 * multiplied by 1e6), row 2 all zero (stays zero, no NaN), row 3 has a norm
 * just above 1e-6 (true normalisation). */
static void test_l2norm_tiny(void)
{
    enum { R = 4, W = 50, LD = 53 };
    float x0[R * LD];
    for (int i = 0; i < R * LD; i++)
        x0[i] = rng_range(&g_rng, -1, 1);
    for (int c = 0; c < W; c++) {
        float sign = rng_uniform(&g_rng) < 0.5 ? -1.0f : 1.0f;
        x0[1 * LD + c] = sign * rng_range(&g_rng, 1e-9f, 1e-8f); /* norm <= 7.1e-8 */
        x0[2 * LD + c] = 0.0f;
        x0[3 * LD + c] = sign * rng_range(&g_rng, 2e-7f, 4e-7f); /* norm >= 1.4e-6 */
    }
    float xr[R * LD], xc[R * LD];
    memcpy(xr, x0, sizeof x0), memcpy(xc, x0, sizeof x0);
    l2norm_ref(R, W, xr, LD);
    l2norm_cpu(R, W, xc, LD);
    check_out("l2norm", "tiny rows", xc, xr, x0, R, W, LD, TOL_ROW);
    for (int t = 0; t < 2; t++) {
        const float *y = t ? xc : xr;
        const char *who = t ? "cpu" : "ref";
        double n3 = 0;
        for (int c = 0; c < W; c++)
            n3 += (double)x0[3 * LD + c] * x0[3 * LD + c];
        n3 = sqrt(n3);
        for (int c = 0; c < W; c++) {
            double want1 = x0[1 * LD + c] / 1e-6;
            T_CHECK(fabs(y[1 * LD + c] - want1) <= 1e-5 * fabs(want1), "%s tiny row: [%d] = %.8g, expected %.8g",
                    who, c, y[1 * LD + c], want1);
            T_CHECK(y[2 * LD + c] == 0.0f, "%s zero row: [%d] = %g", who, c, y[2 * LD + c]);
            double want3 = x0[3 * LD + c] / n3;
            T_CHECK(fabs(y[3 * LD + c] - want3) <= 1e-5, "%s row above 1e-6: [%d] = %.8g, expected %.8g", who, c,
                    y[3 * LD + c], want3);
            if (t_case_failed())
                return;
        }
    }
}

int main(void)
{
    t_run("gemm: hand-computed 2x3 @ 3x2, beta 0 and 1", test_gemm_hand);
    t_run("gemm_ref against a double-precision product", test_gemm_ref_vs_double);
    t_run("gemm cpu vs ref, edge shapes, beta 0 (C preloaded random)", test_gemm_beta0);
    t_run("gemm cpu vs ref, edge shapes, beta 1 (C preloaded random)", test_gemm_beta1);
    t_run("gemm cpu vs ref, edge shapes, beta 0.5", test_gemm_beta_half);
    t_run("gemm cpu vs ref, 300x1024x512, beta 0", test_gemm_big_beta0);
    t_run("gemm cpu vs ref, 300x512x512 strided and 64x2048x512, beta 1", test_gemm_big_beta1);
    t_run("gemm beta 0 ignores NaN in C", test_gemm_beta0_nan_c);
    t_run("gemm M, N or K of 0", test_gemm_empty);
    t_run("layernorm: hand-computed [1,2,3,4]", test_layernorm_hand);
    t_run("layernorm cpu vs ref, affine", test_layernorm_affine);
    t_run("layernorm cpu vs ref, no affine", test_layernorm_plain);
    t_run("layernorm cpu vs ref, in place (y == x)", test_layernorm_in_place);
    t_run("layernorm, ln_mul: both twins vs double, |mean| >> std", test_layernorm_offset);
    t_run("bias_silu: hand-computed SiLU(1) = 0.7310586, prefix", test_bias_silu_hand);
    t_run("bias_silu cpu vs ref, all columns, bias", test_bias_silu_all_bias);
    t_run("bias_silu cpu vs ref, all columns, no bias", test_bias_silu_all_nobias);
    t_run("bias_silu cpu vs ref, prefix, bias", test_bias_silu_prefix_bias);
    t_run("bias_silu cpu vs ref, prefix, no bias", test_bias_silu_prefix_nobias);
    t_run("bias_silu cpu vs ref, silu_cols 0 (bias only)", test_bias_silu_none);
    t_run("ln_mul: hand-computed", test_ln_mul_hand);
    t_run("ln_mul cpu vs ref, affine", test_ln_mul_affine);
    t_run("ln_mul cpu vs ref, no affine", test_ln_mul_plain);
    t_run("bias_act: hand-computed", test_bias_act_hand);
    t_run("bias_act cpu vs ref, relu, bias", test_bias_act_relu_bias);
    t_run("bias_act cpu vs ref, relu, no bias", test_bias_act_relu_nobias);
    t_run("bias_act cpu vs ref, linear, bias", test_bias_act_linear_bias);
    t_run("bias_act cpu vs ref, linear, no bias", test_bias_act_linear_nobias);
    t_run("bias_act: NaN input stays NaN in both twins", test_bias_act_nan);
    t_run("l2norm cpu vs ref, unit norms", test_l2norm);
    t_run("l2norm: tiny row / 1e-6, zero row, row just above", test_l2norm_tiny);
    return t_summary();
}
