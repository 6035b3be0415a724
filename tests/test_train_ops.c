/* test_train_ops.c - every training op's backward against finite differences.
 *
 * For an op y = f(x, params) the test draws random inputs (never zeros) and a
 * random weight tensor w, and takes the objective J = sum(w * y) in double.
 * The op's backward, fed dy = w, gives dJ/dx and dJ/dparams; each is held
 * against central differences (J(p + h) - J(p - h)) / 2h of the fp32 forward,
 * h = 1e-2, element by element (every element of small tensors, a sample
 * of larger ones). The error measure is max|num - ana| / max|ana| over the
 * tensor; the tolerance, 2e-3, sits well above the method's own error (h^2
 * truncation ~1e-5, fp32 rounding of J divided by h ~1e-4 at these sizes)
 * and far below what a wrong term gives (O(1)). Shapes are small and odd,
 * with several users of different lengths, both attention masks, and the
 * relative bias. docs/train.md lists the tolerance with its reason.
 */
#include "core/rng.h"
#include "harness.h"
#include "train/loss.h"
#include "train/ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FD_H 1e-2
#define FD_TOL 2e-3

static rng g_rng = {0x7a11e5eedull};

static float *rnd(size_t n, float lo, float hi)
{
    float *p = malloc(sizeof *p * (n ? n : 1));
    if (!p)
        abort();
    for (size_t i = 0; i < n; i++)
        p[i] = rng_range(&g_rng, lo, hi);
    return p;
}

static float *zeros(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    if (!p)
        abort();
    return p;
}

static double dotw(const float *w, const float *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)w[i] * y[i];
    return s;
}

/* The objective as a function of the op's current inputs. */
typedef double (*objective)(void *ctx);

/* Holds grad[n] (analytic dJ/dparam) against central differences of f,
 * perturbing param in place. At most `limit` elements (spread evenly). */
static double fd_err(objective f, void *ctx, float *param, const float *grad, size_t n, size_t limit)
{
    double num_max = 0, ana_max = 0;
    size_t stride = n > limit ? n / limit : 1;
    for (size_t i = 0; i < n; i += stride) {
        float keep = param[i];
        param[i] = keep + (float)FD_H;
        double jp = f(ctx);
        param[i] = keep - (float)FD_H;
        double jm = f(ctx);
        param[i] = keep;
        double h2 = (double)(keep + (float)FD_H) - (double)(keep - (float)FD_H);
        double num = (jp - jm) / h2;
        double diff = fabs(num - grad[i]);
        if (diff > num_max || isnan(diff))
            num_max = isnan(diff) ? INFINITY : diff;
    }
    for (size_t i = 0; i < n; i++)
        if (fabs(grad[i]) > ana_max)
            ana_max = fabs(grad[i]);
    return num_max / (ana_max > 1e-12 ? ana_max : 1e-12);
}

#define CHECK_FD(name, f, ctx, param, grad, n)                                                    \
    do {                                                                                          \
        double e_ = fd_err(f, ctx, param, grad, n, 400);                                          \
        if (getenv("FD_VERBOSE"))                                                                 \
            printf("    %-28s rel err %.2e\n", name, e_);                                           \
        T_CHECK(e_ <= FD_TOL, "%s: finite-difference rel err %.2e > %.0e", name, e_, FD_TOL);    \
    } while (0)

/* ---- embedding ---------------------------------------------------------- */

typedef struct { int T, d, rows, npos; float *table, *pos, *x, *w; const float **src; int32_t *pidx; int64_t *ids; } emb_ctx;

static double emb_obj(void *p)
{
    emb_ctx *c = p;
    for (int r = 0; r < c->T; r++)
        c->src[r] = c->table + c->ids[r] * c->d;
    tr_embed_fwd(c->T, c->d, c->src, 1.7f, c->pos, c->pidx, c->x);
    return dotw(c->w, c->x, (size_t)c->T * c->d);
}

static void test_embed(void)
{
    emb_ctx c = {.T = 23, .d = 7, .rows = 5, .npos = 4};
    c.table = rnd((size_t)c.rows * c.d, -1, 1);
    c.pos = rnd((size_t)c.npos * c.d, -1, 1);
    c.x = zeros((size_t)c.T * c.d);
    c.w = rnd((size_t)c.T * c.d, -1, 1);
    c.src = malloc(sizeof *c.src * c.T);
    c.pidx = malloc(sizeof *c.pidx * c.T);
    c.ids = malloc(sizeof *c.ids * c.T);
    float **dsrc = malloc(sizeof *dsrc * c.T);
    float *dtab = zeros((size_t)c.rows * c.d), *dpos = zeros((size_t)c.npos * c.d);
    for (int r = 0; r < c.T; r++) {
        c.ids[r] = rng_below(&g_rng, c.rows); /* repeats: the scatter must add */
        c.pidx[r] = (int32_t)rng_below(&g_rng, c.npos);
        dsrc[r] = dtab + c.ids[r] * c.d;
    }
    emb_obj(&c);
    tr_embed_bwd(c.T, c.d, dsrc, 1.7f, dpos, c.pidx, c.w);
    CHECK_FD("d table", emb_obj, &c, c.table, dtab, (size_t)c.rows * c.d);
    CHECK_FD("d pos", emb_obj, &c, c.pos, dpos, (size_t)c.npos * c.d);
    free(c.table), free(c.pos), free(c.x), free(c.w), free(c.src), free(c.pidx), free(c.ids);
    free(dsrc), free(dtab), free(dpos);
}

/* ---- LayerNorm ---------------------------------------------------------- */

typedef struct { int rows, width, ld; float *x, *lw, *lb, *y, *w, *mean, *rstd; } ln_ctx;

static double ln_obj(void *p)
{
    ln_ctx *c = p;
    tr_layernorm_fwd(c->rows, c->width, c->x, c->ld, c->lw, c->lb, 1e-5f, c->y, c->width, c->mean, c->rstd);
    return dotw(c->w, c->y, (size_t)c->rows * c->width);
}

static void ln_case(bool affine, bool accum)
{
    ln_ctx c = {.rows = 9, .width = 13, .ld = 16};
    c.x = rnd((size_t)c.rows * c.ld, -2, 2);
    c.lw = affine ? rnd(c.width, 0.5f, 1.5f) : NULL;
    c.lb = affine ? rnd(c.width, -0.5f, 0.5f) : NULL;
    c.y = zeros((size_t)c.rows * c.width);
    c.w = rnd((size_t)c.rows * c.width, -1, 1);
    c.mean = zeros(c.rows);
    c.rstd = zeros(c.rows);
    float *dx = rnd((size_t)c.rows * c.ld, -1, 1), *dx0 = malloc(sizeof *dx0 * c.rows * c.ld);
    memcpy(dx0, dx, sizeof *dx0 * c.rows * c.ld);
    float *dw = affine ? zeros(c.width) : NULL, *db = affine ? zeros(c.width) : NULL;
    ln_obj(&c);
    tr_layernorm_bwd(c.rows, c.width, c.x, c.ld, c.lw, c.mean, c.rstd, c.w, c.width, dx, c.ld, accum, dw, db);
    if (accum) /* the op added to what dx held: take it off again */
        for (size_t i = 0; i < (size_t)c.rows * c.ld; i++)
            dx[i] -= dx0[i];
    /* padding columns of x carry no gradient: compare the real ones */
    for (int r = 0; r < c.rows; r++)
        for (int i = c.width; i < c.ld; i++)
            dx[(size_t)r * c.ld + i] = 0.0f;
    CHECK_FD("dx", ln_obj, &c, c.x, dx, (size_t)c.rows * c.ld);
    if (affine) {
        CHECK_FD("dw", ln_obj, &c, c.lw, dw, c.width);
        CHECK_FD("db", ln_obj, &c, c.lb, db, c.width);
    }
    free(c.x), free(c.lw), free(c.lb), free(c.y), free(c.w), free(c.mean), free(c.rstd);
    free(dx), free(dx0), free(dw), free(db);
}

static void test_layernorm_affine(void) { ln_case(true, false); }
static void test_layernorm_plain_accum(void) { ln_case(false, true); }

/* ---- linear ------------------------------------------------------------- */

typedef struct { int rows, in, out; float *x, *W, *b, *y, *w; } lin_ctx;

static double lin_obj(void *p)
{
    lin_ctx *c = p;
    tr_linear_fwd(c->rows, c->in, c->out, c->x, c->in, c->W, c->b, 0.0f, c->y, c->out);
    return dotw(c->w, c->y, (size_t)c->rows * c->out);
}

static void test_linear(void)
{
    lin_ctx c = {.rows = 11, .in = 6, .out = 9};
    c.x = rnd((size_t)c.rows * c.in, -1, 1);
    c.W = rnd((size_t)c.in * c.out, -1, 1);
    c.b = rnd(c.out, -1, 1);
    c.y = zeros((size_t)c.rows * c.out);
    c.w = rnd((size_t)c.rows * c.out, -1, 1);
    float *dx = zeros((size_t)c.rows * c.in), *dW = zeros((size_t)c.in * c.out), *db = zeros(c.out);
    lin_obj(&c);
    tr_linear_bwd(c.rows, c.in, c.out, c.x, c.in, c.W, c.w, c.out, dx, c.in, false, dW, db);
    CHECK_FD("dx", lin_obj, &c, c.x, dx, (size_t)c.rows * c.in);
    CHECK_FD("dW", lin_obj, &c, c.W, dW, (size_t)c.in * c.out);
    CHECK_FD("db", lin_obj, &c, c.b, db, c.out);
    /* beta = 1 adds into y */
    lin_obj(&c); /* c.y as of the unperturbed inputs */
    float *y2 = rnd((size_t)c.rows * c.out, -1, 1), *y0 = malloc(sizeof *y0 * c.rows * c.out);
    memcpy(y0, y2, sizeof *y0 * c.rows * c.out);
    tr_linear_fwd(c.rows, c.in, c.out, c.x, c.in, c.W, c.b, 1.0f, y2, c.out);
    double worst = 0;
    for (size_t i = 0; i < (size_t)c.rows * c.out; i++)
        worst = fmax(worst, fabs(y2[i] - y0[i] - c.y[i]));
    T_CHECK(worst < 1e-5, "beta 1: y - y0 differs from x W + b by %.2e", worst);
    free(c.x), free(c.W), free(c.b), free(c.y), free(c.w), free(dx), free(dW), free(db), free(y2), free(y0);
}

/* ---- SiLU, ReLU, dropout ----------------------------------------------- */

typedef struct { int rows, width, cols; float *z, *y, *w; } act_ctx;

static double silu_obj(void *p)
{
    act_ctx *c = p;
    tr_silu_fwd(c->rows, c->width, c->cols, c->z, c->y);
    return dotw(c->w, c->y, (size_t)c->rows * c->width);
}

static void silu_case(int cols)
{
    act_ctx c = {.rows = 7, .width = 10, .cols = cols};
    c.z = rnd((size_t)c.rows * c.width, -4, 4);
    c.y = zeros((size_t)c.rows * c.width);
    c.w = rnd((size_t)c.rows * c.width, -1, 1);
    float *dz = zeros((size_t)c.rows * c.width);
    silu_obj(&c);
    tr_silu_bwd(c.rows, c.width, c.cols, c.z, c.w, dz);
    CHECK_FD("dz", silu_obj, &c, c.z, dz, (size_t)c.rows * c.width);
    /* in place (dz aliases dy) gives the same */
    float *g = malloc(sizeof *g * c.rows * c.width);
    memcpy(g, c.w, sizeof *g * c.rows * c.width);
    tr_silu_bwd(c.rows, c.width, c.cols, c.z, g, g);
    T_CHECK(memcmp(g, dz, sizeof *g * c.rows * c.width) == 0, "in-place backward differs");
    T_CHECK(fabsf(c.y[0] - c.z[0] / (1.0f + expf(-c.z[0]))) < 1e-6f || c.cols == 0, "SiLU value");
    free(c.z), free(c.y), free(c.w), free(dz), free(g);
}

static void test_silu_all(void) { silu_case(10); }
static void test_silu_u_only(void) { silu_case(3); }

typedef struct { size_t n; float *x, *y, *w; float rate; uint64_t key; } relu_ctx;

static double relu_obj(void *p)
{
    relu_ctx *c = p;
    memcpy(c->y, c->x, sizeof *c->y * c->n);
    tr_relu_fwd(c->n, c->y);
    return dotw(c->w, c->y, c->n);
}

static void test_relu(void)
{
    relu_ctx c = {.n = 60};
    c.x = rnd(c.n, -1, 1);
    for (size_t i = 0; i < c.n; i++) /* keep clear of the kink, where FD is undefined */
        c.x[i] += c.x[i] > 0 ? 0.05f : -0.05f;
    c.y = zeros(c.n);
    c.w = rnd(c.n, -1, 1);
    relu_obj(&c);
    float *g = malloc(sizeof *g * c.n);
    memcpy(g, c.w, sizeof *g * c.n);
    tr_relu_bwd(c.n, c.y, g);
    CHECK_FD("dx", relu_obj, &c, c.x, g, c.n);
    free(c.x), free(c.y), free(c.w), free(g);
}

static double drop_obj(void *p)
{
    relu_ctx *c = p;
    memcpy(c->y, c->x, sizeof *c->y * c->n);
    tr_dropout(c->n, c->rate, c->key, c->y);
    return dotw(c->w, c->y, c->n);
}

static void test_dropout(void)
{
    relu_ctx c = {.n = 200000, .rate = 0.2f, .key = tr_dropout_key(7, 3, 1, 1)};
    c.x = rnd(c.n, 0.5f, 1.5f);
    c.y = zeros(c.n);
    c.w = rnd(c.n, -1, 1);
    drop_obj(&c);
    size_t dropped = 0;
    double kept_ratio = 0;
    for (size_t i = 0; i < c.n; i++) {
        if (c.y[i] == 0.0f)
            dropped++;
        else
            kept_ratio = fmax(kept_ratio, fabs(c.y[i] / c.x[i] - 1.25));
    }
    double frac = (double)dropped / c.n;
    T_CHECK(fabs(frac - 0.2) < 0.005, "dropped fraction %.4f, expected 0.2", frac);
    T_CHECK(kept_ratio < 1e-6, "kept values not scaled by 1/(1-rate): off by %.2e", kept_ratio);
    /* the backward is the same call on dy: the mask is recomputed */
    float *g = malloc(sizeof *g * c.n);
    memcpy(g, c.w, sizeof *g * c.n);
    tr_dropout(c.n, c.rate, c.key, g);
    c.n = 300; /* finite differences on a prefix (the mask depends on the index only) */
    CHECK_FD("dx", drop_obj, &c, c.x, g, c.n);
    /* another key gives another mask; rate 0 is the identity */
    float *y2 = malloc(sizeof *y2 * 1000);
    memcpy(y2, c.x, sizeof *y2 * 1000);
    tr_dropout(1000, 0.2f, tr_dropout_key(7, 4, 1, 1), y2);
    int same = 0;
    for (int i = 0; i < 1000; i++) {
        float a = c.x[i];
        tr_dropout(1, 0.0f, 1, &a);
        T_REQUIRE(a == c.x[i], "rate 0 changed a value");
        memcpy(c.y, c.x, sizeof *c.y * 1000);
    }
    tr_dropout(1000, 0.2f, c.key, c.y);
    for (int i = 0; i < 1000; i++)
        same += (y2[i] == 0.0f) == (c.y[i] == 0.0f);
    T_CHECK(same < 1000, "two steps drew the same mask");
    free(c.x), free(c.y), free(c.w), free(g), free(y2);
}

/* ---- L2 normalisation --------------------------------------------------- */

typedef struct { int rows, width; float *x, *y, *w, *norm; } l2_ctx;

static double l2_obj(void *p)
{
    l2_ctx *c = p;
    tr_l2norm_fwd(c->rows, c->width, c->x, c->width, c->y, c->width, c->norm);
    return dotw(c->w, c->y, (size_t)c->rows * c->width);
}

static void test_l2norm(void)
{
    l2_ctx c = {.rows = 8, .width = 11};
    c.x = rnd((size_t)c.rows * c.width, -1, 1);
    c.y = zeros((size_t)c.rows * c.width);
    c.w = rnd((size_t)c.rows * c.width, -1, 1);
    c.norm = zeros(c.rows);
    float *dx = zeros((size_t)c.rows * c.width);
    l2_obj(&c);
    tr_l2norm_bwd(c.rows, c.width, c.y, c.width, c.norm, c.w, c.width, dx, c.width, false);
    CHECK_FD("dx", l2_obj, &c, c.x, dx, (size_t)c.rows * c.width);
    double nrm = 0;
    for (int i = 0; i < c.width; i++)
        nrm += (double)c.y[i] * c.y[i];
    T_CHECK(fabs(nrm - 1) < 1e-6, "row norm %.8f after normalisation", nrm);
    free(c.x), free(c.y), free(c.w), free(c.norm), free(dx);
}

/* ---- attention ---------------------------------------------------------- */

typedef struct {
    tr_attn p;
    int T, W, HDv;
    float *uvqk, *a, *w, *work, *pos_w, *ts_w;
} attn_ctx;

static double attn_obj(void *pc)
{
    attn_ctx *c = pc;
    tr_attn_fwd(&c->p, c->uvqk, c->W, c->a, c->HDv, c->work);
    return dotw(c->w, c->a, (size_t)c->T * c->HDv);
}

static void attn_case(bool ranking, bool rab)
{
    enum { B = 3 };
    static int offsets[B + 1], hist[B];
    int lens[B] = {5, 1, 70}; /* 70: two row blocks of the kernel */
    int H = 2, Dqk = 3, Dv = 4, N = 12, nb = 6;
    attn_ctx c = {0};
    offsets[0] = 0;
    for (int b = 0; b < B; b++) {
        offsets[b + 1] = offsets[b] + lens[b];
        hist[b] = ranking ? (lens[b] > 2 ? lens[b] - 3 : lens[b]) : lens[b]; /* last 3 rows candidates */
    }
    c.T = offsets[B];
    c.W = 2 * H * Dv + 2 * H * Dqk;
    c.HDv = H * Dv;
    c.uvqk = rnd((size_t)c.T * c.W, -1, 1);
    c.a = zeros((size_t)c.T * c.HDv);
    c.w = rnd((size_t)c.T * c.HDv, -1, 1);
    c.pos_w = rab ? rnd(2 * N - 1, -0.5f, 0.5f) : NULL;
    c.ts_w = rab ? rnd(nb, -0.5f, 0.5f) : NULL;
    uint16_t *buckets = malloc(sizeof *buckets * 5000);
    static size_t boff[B];
    size_t off = 0;
    for (int b = 0; b < B; b++) {
        int n = lens[b];
        int64_t ts[80];
        for (int i = 0; i < n; i++)
            ts[i] = 1000 + i * 7 + (int64_t)rng_below(&g_rng, 40); /* gaps of many buckets */
        boff[b] = off;
        tr_attn_buckets(n, ts, ts[n - 1] + 3, nb - 1, buckets + off);
        off += (size_t)n * n;
    }
    c.p = (tr_attn){.B = B, .offsets = offsets, .hist = ranking ? hist : NULL, .H = H, .Dqk = Dqk, .Dv = Dv,
                    .alpha = 0.7f, .N = N, .pos_w = c.pos_w, .ts_w = c.ts_w, .n_buckets = nb,
                    .buckets = buckets, .bucket_off = boff, .max_n = 70};
    c.work = zeros(tr_attn_workspace_floats(&c.p, 64));
    attn_obj(&c);
    float *d = zeros((size_t)c.T * c.W), *dpos = zeros(2 * N - 1), *dts = zeros(nb);
    tr_attn_bwd(&c.p, c.uvqk, c.W, c.w, c.HDv, d, dpos, dts, c.work);
    /* u columns carry no attention gradient: the op leaves them alone */
    CHECK_FD("d uvqk (q, k, v columns)", attn_obj, &c, c.uvqk, d, (size_t)c.T * c.W);
    if (rab) {
        CHECK_FD("d pos_w", attn_obj, &c, c.pos_w, dpos, 2 * N - 1);
        CHECK_FD("d ts_w", attn_obj, &c, c.ts_w, dts, nb);
        double s = 0;
        for (int i = 0; i < nb; i++)
            s += fabs(dts[i]);
        T_CHECK(s > 0, "ts_w got no gradient");
    }
    /* masked columns: a history row's output ignores later rows */
    float keep = c.uvqk[(size_t)4 * c.W + c.HDv]; /* user 0, row 4's v */
    double j0 = attn_obj(&c);
    float a0 = c.a[0];
    c.uvqk[(size_t)4 * c.W + c.HDv] += 1.0f;
    attn_obj(&c);
    T_CHECK(c.a[0] == a0, "row 0 changed when row 4's v did");
    c.uvqk[(size_t)4 * c.W + c.HDv] = keep;
    (void)j0;
    free(c.uvqk), free(c.a), free(c.w), free(c.pos_w), free(c.ts_w), free(buckets), free(c.work);
    free(d), free(dpos), free(dts);
}

static void test_attn_causal(void) { attn_case(false, false); }
static void test_attn_causal_rab(void) { attn_case(false, true); }
static void test_attn_candidates(void) { attn_case(true, false); }

static void test_attn_buckets(void)
{
    int64_t ts[3] = {0, 10, 1000};
    uint16_t out[9];
    tr_attn_buckets(3, ts, 1000000, 128, out);
    /* row 0: ts_next = 10; |10 - 0| = 10 -> floor(ln 10 / 0.301) = 7 */
    T_CHECK(out[0] == 7, "bucket(10) = %d, expected 7", out[0]);
    /* row 2: ts_next = query 1e6; 1e6 - 1000 -> floor(ln(999000)/0.301) = 45 */
    T_CHECK(out[8] == 45, "bucket(999000) = %d, expected 45", out[8]);
    /* row 1: ts_next = 1000, column 2 is 1000: |0| -> bucket 0 */
    T_CHECK(out[5] == 0, "bucket(0) = %d, expected 0", out[5]);
}

/* ---- losses ------------------------------------------------------------- */

typedef struct { int R, d, K, items; float *x, *q, *norm, *table, *unit, *unorm, *dq, *coef; int64_t *pos, *neg; } sm_ctx;

/* J = the loss itself, as a function of the raw (unnormalised) output rows
 * and item table: both normalisations are part of what is checked. */
static double sm_obj(void *p)
{
    sm_ctx *c = p;
    tr_l2norm_fwd(c->R, c->d, c->x, c->d, c->q, c->d, c->norm);
    tr_l2norm_fwd(c->items, c->d, c->table, c->d, c->unit, c->d, c->unorm);
    return tr_softmax_fwd_bwd(c->R, c->d, c->K, c->q, c->unit, c->pos, c->neg, 0.05f, 1.0f / c->R, c->dq,
                              c->coef);
}

static void test_sampled_softmax(void)
{
    sm_ctx c = {.R = 6, .d = 5, .K = 9, .items = 12};
    c.x = rnd((size_t)c.R * c.d, -1, 1);
    c.q = zeros((size_t)c.R * c.d);
    c.norm = zeros(c.R);
    c.table = rnd((size_t)c.items * c.d, -1, 1);
    c.unit = zeros((size_t)c.items * c.d);
    c.unorm = zeros(c.items);
    c.dq = zeros((size_t)c.R * c.d);
    c.coef = zeros((size_t)c.R * (c.K + 1));
    c.pos = malloc(sizeof *c.pos * c.R);
    c.neg = malloc(sizeof *c.neg * c.R * c.K);
    for (int r = 0; r < c.R; r++) {
        c.pos[r] = 1 + rng_below(&g_rng, c.items - 1);
        for (int k = 0; k < c.K; k++)
            c.neg[r * c.K + k] = 1 + rng_below(&g_rng, c.items - 1);
    }
    c.neg[0] = c.pos[0]; /* a collision: masked, no gradient through it */
    double loss = sm_obj(&c);
    /* independent value: row losses in double from the definition */
    double want = 0;
    for (int r = 0; r < c.R; r++) {
        double l[32], mx = -1e300, se = 0;
        for (int k = 0; k <= c.K; k++) {
            int64_t id = k ? c.neg[r * c.K + k - 1] : c.pos[r];
            double dot = 0;
            for (int i = 0; i < c.d; i++)
                dot += (double)c.q[r * c.d + i] * c.unit[id * c.d + i];
            l[k] = (k && id == c.pos[r]) ? -5e4 : dot / 0.05;
            mx = fmax(mx, l[k]);
        }
        for (int k = 0; k <= c.K; k++)
            se += exp(l[k] - mx);
        want += (mx + log(se) - l[0]) / c.R;
    }
    T_CHECK(fabs(loss - want) < 1e-4 * fabs(want), "loss %.7f, expected %.7f", loss, want);
    float *dx = zeros((size_t)c.R * c.d), *dunit = zeros((size_t)c.items * c.d),
          *dtable = zeros((size_t)c.items * c.d);
    tr_softmax_scatter(c.R, c.d, c.K, c.q, c.pos, c.neg, c.coef, dunit);
    tr_l2norm_bwd(c.R, c.d, c.q, c.d, c.norm, c.dq, c.d, dx, c.d, false);
    tr_l2norm_bwd(c.items, c.d, c.unit, c.d, c.unorm, dunit, c.d, dtable, c.d, false);
    /* FD with a smaller step: logits are scaled by 1/0.05 */
    sm_ctx *pc = &c;
    CHECK_FD("d output rows", sm_obj, pc, c.x, dx, (size_t)c.R * c.d);
    CHECK_FD("d item table", sm_obj, pc, c.table, dtable, (size_t)c.items * c.d);
    free(c.x), free(c.q), free(c.norm), free(c.table), free(c.unit), free(c.unorm), free(c.dq), free(c.coef);
    free(c.pos), free(c.neg), free(dx), free(dunit), free(dtable);
}

typedef struct { size_t n; float *x, *y, *dx; } bce_ctx;

static double bce_obj(void *p)
{
    bce_ctx *c = p;
    return tr_bce_fwd_bwd(c->n, c->x, c->y, 0.25f, c->dx);
}

static void test_bce(void)
{
    bce_ctx c = {.n = 40};
    c.x = rnd(c.n, -6, 6);
    c.y = zeros(c.n);
    c.dx = zeros(c.n);
    for (size_t i = 0; i < c.n; i++)
        c.y[i] = (float)rng_below(&g_rng, 2);
    c.x[0] = 60.0f; /* far out: softplus must not overflow */
    c.y[0] = 0.0f;
    double loss = bce_obj(&c);
    double want = 0;
    for (size_t i = 0; i < c.n; i++) {
        double p = 1.0 / (1.0 + exp(-(double)c.x[i]));
        want += -(c.y[i] ? log(p) : (i == 0 ? -60.0 : log1p(-p)));
    }
    want *= 0.25;
    T_CHECK(fabs(loss - want) < 1e-6 * fabs(want), "loss %.8f, expected %.8f", loss, want);
    float *g = malloc(sizeof *g * c.n);
    memcpy(g, c.dx, sizeof *g * c.n);
    CHECK_FD("dx", bce_obj, &c, c.x, g, c.n);
    free(c.x), free(c.y), free(c.dx), free(g);
}

int main(void)
{
    t_run("embedding: gather * scale + position, scatter-add backward (repeated ids)", test_embed);
    t_run("layernorm affine: dx, dw, db vs finite differences (strided x)", test_layernorm_affine);
    t_run("layernorm plain: dx accumulated", test_layernorm_plain_accum);
    t_run("linear + bias: dx, dW, db; beta 1 adds", test_linear);
    t_run("silu on all columns", test_silu_all);
    t_run("silu on u only (prefix columns)", test_silu_u_only);
    t_run("relu", test_relu);
    t_run("dropout: rate, scale, recomputed mask, backward", test_dropout);
    t_run("l2 normalisation", test_l2norm);
    t_run("attention causal, 3 users, 2 heads", test_attn_causal);
    t_run("attention causal + relative bias (pos_w, ts_w)", test_attn_causal_rab);
    t_run("attention ranking mask (candidates)", test_attn_candidates);
    t_run("attention time buckets: hand-computed", test_attn_buckets);
    t_run("sampled softmax: value vs double, d rows and d table through both L2 norms", test_sampled_softmax);
    t_run("bce: value vs double, dx", test_bce);
    return t_summary();
}
