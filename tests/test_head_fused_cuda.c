/* test_head_fused_cuda.c - head_fused_cuda (the whole ranking head with one
 * hidden layer in one kernel) against a CPU reference in double.
 *
 * The reference takes the GPU's rounding points: y = bf16(x / max(||x||,
 * 1e-6)) and h = bf16(ReLU(y @ w1 + b1)), each rounded from the exact
 * (double) value; z = h @ w2 + b2 and sigmoid in double. The GPU does the
 * same in fp32, in its own summation order. The bound on |out - ref| for
 * each output follows the error through those points:
 *   - y: the GPU's fp32 x * (1 / max(norm, 1e-6)) is within a relative
 *     (width / 2 + 8) * 2^-24 of the exact y (the fp32 sum of width squares,
 *     the square root, the reciprocal, the product). Where that interval
 *     holds a bf16 rounding boundary, the GPU's y_k may be the neighbour of
 *     the reference's: dy_k = the largest distance from the reference's
 *     bf16 to the roundings of the interval's ends (0 almost everywhere).
 *   - h before rounding: products of bf16 values are exact in fp32, so the
 *     GPU differs from the exact sum by sum_k dy_k |w1_kj| plus the fp32
 *     summation error, at most (in8 + 10) * 2^-22 * (sum_k |y_k w1_kj| +
 *     |b1_j|) in any order (one rounding of at most 2 ulp, to cover the
 *     tensor cores' truncation, per addition; in8 + 10 additions at most):
 *     E_j. The GPU's h_j is then one of the bf16 values between
 *     bf16(ReLU(hd_j - E_j)) and bf16(ReLU(hd_j + E_j)) (rounding is
 *     monotone): dev_j = the difference of those two, usually one ulp of
 *     h_j or 0.
 *   - logits: sum_j |w2_jt| dev_j + (h8 + 10) * 2^-22 * (sum_j max|h_j|
 *     |w2_jt| + |b2_t|); sigmoid: a quarter of that (its slope is at most
 *     1/4) + 1e-6 for expf and the division.
 * That is the bound "sum_j |w2_jt| ulp(h_j) + a small term" made exact.
 * Every output must be within its bound; and since rounding flips are rare
 * in practice, the mean error over a case must stay under a quarter of the
 * mean bound (an error that sits at the bound everywhere would be a
 * systematic one, such as a bias off by one ulp).
 *
 * Besides values: outputs past M (and past n_tasks in each row) stay
 * poisoned; M comes from device memory (a count past max_rows is clamped);
 * every forced tile shape (row blocks 32/64, column blocks 64/128, K over
 * 1-8 CTAs) on shapes off the tiles; two launches give the same bits and
 * leave the scratch's counters at zero; a CUDA graph replayed with a new M
 * between replays; bad arguments are refused without a launch.
 *
 * Timing: the bench-8x1024 head (1024 -> 512 -> 8, bf16 x) at 256 and 100
 * candidates with the scores in mapped pinned host memory, against the
 * unfused path (gather_l2norm + two cuBLASLt GEMMs + scores_out) on the
 * same inputs: each as ten heads back to back in one CUDA graph, the
 * median over 20 replays, per head. HEAD_FUSED_BENCH=1 also times the
 * tile shapes that take that head (clusters of 8), PDL off, one head a
 * graph, and prints when the CTAs pass each step (head_fused_set_trace).
 *
 * Without CUDA in the build, or without a usable GPU, every case is skipped
 * with the reason.
 */
#include "gpu_main.h"

#include "core/rng.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEAD_FUSED_TESTS(X)                                                                              \
    X("fused head: argument and shape checks", test_args)                                              \
    X("fused head: bench shape 1024 -> 512 -> 8, fp32 and bf16 x, M 1 7 100 256", test_bench_shape)    \
    X("fused head: width 50 (in8 56), hidden 40, n_tasks 1 / 8 / 12, padded x rows", test_small)       \
    X("fused head: M read on the device, M < max_rows, clamped past it, outputs past M untouched", test_m) \
    X("fused head: every tile shape, forced", test_tiles)                                              \
    X("fused head: two launches bit-identical, counters back at zero", test_determinism)                \
    X("fused head: CUDA graph replayed with M changed between replays", test_graph)                      \
    X("fused head: timing against the unfused head, mapped host output", test_timing)

#ifdef HSTU_HAVE_CUDA

#include "kernels/gemm_cuda.h"
#include "kernels/head_fused_cuda.h"
#include "kernels/pdl_cuda.h"

#include <cuda_runtime_api.h>

#define POISON_BITS 0xFFFFFFFFu

static rng g_rng = {0x5eed0f4eadull};

typedef struct hshape {
    int width, in8;     /* x's used columns, w1's padded rows */
    int hidden, h8;     /* hidden width, padded */
    int n_tasks, n_tasks8;
    int ldx;            /* x's row stride */
} hshape;

/* One head's inputs: values on the host (bf16-exact where the GPU has
 * bf16), bits on the device. */
typedef struct hhead {
    hshape s;
    int x_f32, T, max_rows; /* x has T rows; rows[] has max_rows entries */
    float *x, *w1, *b1, *w2, *b2;
    int *rows;
    void *d_x, *d_scratch;
    int *d_rows, *d_n;
    bf16_t *d_w1, *d_b1, *d_w2;
    float *d_b2;
} hhead;

static float rand_bf16(float lo, float hi) { return t_bf2f(t_f2bf(rng_range(&g_rng, lo, hi))); }

static void *upload(const void *h, size_t bytes)
{
    void *d = t_dpoison(bytes);
    cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice);
    return d;
}

static bf16_t *upload_bf16(const float *v, size_t n)
{
    uint16_t *b = t_xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        b[i] = t_f2bf(v[i]);
    bf16_t *d = upload(b, n * 2);
    free(b);
    return d;
}

/* Random inputs: x in [-1, 1) with 1000 in the columns past width (never
 * to be read), w1 in [-1, 1) on every row (rows past width meet only x's
 * zeros) and zero in the columns past `hidden`, b1 in [-0.5, 0.5), w2 in
 * [-0.25, 0.25) (logits of a few units: sigmoid not saturated), b2 in
 * [-0.5, 0.5); rows drawn with repeats from T = max_rows + 5 rows. */
static void head_make(hhead *h, const hshape *s, int x_f32, int max_rows)
{
    memset(h, 0, sizeof *h);
    h->s = *s, h->x_f32 = x_f32, h->max_rows = max_rows, h->T = max_rows + 5;
    const size_t nx = (size_t)h->T * s->ldx, nw1 = (size_t)s->in8 * s->h8, nw2 = (size_t)s->h8 * s->n_tasks8;
    h->x = t_xmalloc(nx * 4), h->w1 = t_xmalloc(nw1 * 4), h->b1 = t_xmalloc((size_t)s->h8 * 4);
    h->w2 = t_xmalloc(nw2 * 4), h->b2 = t_xmalloc((size_t)s->n_tasks8 * 4);
    h->rows = t_xmalloc(sizeof(int) * (size_t)(max_rows + 1));
    for (int r = 0; r < h->T; r++)
        for (int c = 0; c < s->ldx; c++) {
            float v = c < s->width ? rng_range(&g_rng, -1.0f, 1.0f) : 1000.0f;
            h->x[(size_t)r * s->ldx + c] = x_f32 ? v : t_bf2f(t_f2bf(v));
        }
    for (int k = 0; k < s->in8; k++)
        for (int j = 0; j < s->h8; j++)
            h->w1[(size_t)k * s->h8 + j] = j < s->hidden ? rand_bf16(-1.0f, 1.0f) : 0.0f;
    for (int j = 0; j < s->h8; j++)
        h->b1[j] = j < s->hidden ? rand_bf16(-0.5f, 0.5f) : 0.0f;
    for (size_t i = 0; i < nw2; i++)
        h->w2[i] = rand_bf16(-0.25f, 0.25f);
    for (int t = 0; t < s->n_tasks8; t++)
        h->b2[t] = rng_range(&g_rng, -0.5f, 0.5f);
    for (int i = 0; i < max_rows; i++)
        h->rows[i] = (int)rng_below(&g_rng, h->T);

    if (x_f32) {
        h->d_x = upload(h->x, nx * 4);
    } else {
        h->d_x = upload_bf16(h->x, nx);
    }
    h->d_w1 = upload_bf16(h->w1, nw1), h->d_b1 = upload_bf16(h->b1, (size_t)s->h8);
    h->d_w2 = upload_bf16(h->w2, nw2), h->d_b2 = upload(h->b2, (size_t)s->n_tasks8 * 4);
    h->d_rows = upload(h->rows, sizeof(int) * (size_t)max_rows);
    h->d_n = t_dpoison(sizeof(int));
    size_t sb = head_fused_scratch_bytes(max_rows, s->h8, s->n_tasks8);
    h->d_scratch = t_dpoison(sb);
    cudaMemset(h->d_scratch, 0, sb);
}

static void head_free(hhead *h)
{
    free(h->x), free(h->w1), free(h->b1), free(h->w2), free(h->b2), free(h->rows);
    cudaFree(h->d_x), cudaFree(h->d_scratch), cudaFree(h->d_rows), cudaFree(h->d_n);
    cudaFree(h->d_w1), cudaFree(h->d_b1), cudaFree(h->d_w2), cudaFree(h->d_b2);
}

/* Writes M where the kernel reads it; the copy has landed on return. */
static void head_set_m(hhead *h, int M)
{
    cudaMemcpy(h->d_n, &M, sizeof M, cudaMemcpyHostToDevice);
    cudaDeviceSynchronize();
}

static head_fused_params head_params(const hhead *h, float *d_out, int sigmoid)
{
    const hshape *s = &h->s;
    head_fused_params p = {
        .width = s->width, .x = h->d_x, .x_f32 = h->x_f32, .ldx = s->ldx, .rows = h->d_rows, .n_rows = h->d_n,
        .max_rows = h->max_rows, .w1 = h->d_w1, .in8 = s->in8, .h8 = s->h8, .b1 = h->d_b1, .w2 = h->d_w2,
        .n_tasks8 = s->n_tasks8, .b2 = h->d_b2, .n_tasks = s->n_tasks, .sigmoid = sigmoid, .out = d_out,
        .scratch = h->d_scratch,
    };
    return p;
}

/* v rounded to the nearest bf16 (ties to even), from double. */
static double bf16_round(double v)
{
    if (v == 0.0 || !isfinite(v))
        return v;
    int e;
    frexp(v, &e); /* |v| in [2^(e-1), 2^e): bf16's 8 significant bits step by 2^(e-8) */
    const double q = ldexp(1.0, e - 8);
    return nearbyint(v / q) * q;
}

/* ref and bound [M, n_tasks] as the header comment derives them. */
static void head_ref(const hhead *h, int M, int sigmoid, double *ref, double *bound)
{
    const hshape *s = &h->s;
    const int W = s->width, H = s->h8, NT = s->n_tasks8;
    double *y = t_xmalloc(sizeof(double) * W), *dy = t_xmalloc(sizeof(double) * W);
    double *hb = t_xmalloc(sizeof(double) * H), *dev = t_xmalloc(sizeof(double) * H);
    double *hmax = t_xmalloc(sizeof(double) * H);
    const double rel_y = (W / 2.0 + 8.0) * 0x1p-24;
    for (int i = 0; i < M; i++) {
        const float *xr = h->x + (size_t)h->rows[i] * s->ldx;
        double ss = 0.0;
        for (int k = 0; k < W; k++)
            ss += (double)xr[k] * xr[k];
        const double den = fmax(sqrt(ss), 1e-6);
        for (int k = 0; k < W; k++) {
            const double e = xr[k] / den;
            y[k] = bf16_round(e);
            const double lo = bf16_round(e - fabs(e) * rel_y), hi = bf16_round(e + fabs(e) * rel_y);
            dy[k] = fmax(fabs(lo - y[k]), fabs(hi - y[k]));
        }
        for (int j = 0; j < H; j++) {
            double acc = h->b1[j], mag = fabs(h->b1[j]), flip = 0.0;
            for (int k = 0; k < W; k++) {
                const double w = h->w1[(size_t)k * H + j];
                acc += y[k] * w;
                mag += (fabs(y[k]) + dy[k]) * fabs(w);
                flip += dy[k] * fabs(w);
            }
            const double E = flip + (s->in8 + 10) * 0x1p-22 * mag;
            const double lo = bf16_round(fmax(acc - E, 0.0)), hi = bf16_round(fmax(acc + E, 0.0));
            hb[j] = bf16_round(fmax(acc, 0.0));
            dev[j] = hi - lo;
            hmax[j] = hi;
        }
        for (int t = 0; t < s->n_tasks; t++) {
            double z = h->b2[t], b = 0.0, mag = fabs(h->b2[t]);
            for (int j = 0; j < H; j++) {
                const double w = h->w2[(size_t)j * NT + t];
                z += hb[j] * w;
                b += dev[j] * fabs(w);
                mag += hmax[j] * fabs(w);
            }
            b += (H + 10) * 0x1p-22 * mag;
            ref[(size_t)i * s->n_tasks + t] = sigmoid ? 1.0 / (1.0 + exp(-z)) : z;
            bound[(size_t)i * s->n_tasks + t] = sigmoid ? b / 4 + 1e-6 : b + 1e-6;
        }
    }
    free(y), free(dy), free(hb), free(dev), free(hmax);
}

/* Compares out (n entries read back; the first M * n_tasks are results,
 * the rest must hold the poison) with the reference; returns the worst
 * |out - ref| / bound and adds the case's mean error and mean bound. */
static double check_out(const char *what, const float *out, size_t n, const hhead *h, int M, int sigmoid,
                        double *sum_err, double *sum_bound)
{
    const size_t nr = (size_t)M * h->s.n_tasks;
    double *ref = t_xmalloc(sizeof(double) * (nr + 1)), *bound = t_xmalloc(sizeof(double) * (nr + 1));
    head_ref(h, M, sigmoid, ref, bound);
    double worst = 0.0, e_sum = 0.0, b_sum = 0.0;
    int bad = 0;
    for (size_t i = 0; i < nr; i++) {
        const double err = fabs((double)out[i] - ref[i]), q = err / bound[i];
        if (!(q <= 1.0) && bad++ < 3)
            t_fail_at(__FILE__, __LINE__, "%s: out[%zu] (candidate %zu, task %zu) = %.9g, reference %.9g, bound %.3g",
                      what, i, i / h->s.n_tasks, i % h->s.n_tasks, out[i], ref[i], bound[i]);
        worst = isnan(q) ? INFINITY : fmax(worst, q);
        e_sum += isnan(err) ? INFINITY : err;
        b_sum += bound[i];
    }
    T_CHECK(bad == 0, "%s: %d of %zu outputs off", what, bad, nr);
    T_CHECK(nr == 0 || e_sum <= 0.25 * b_sum, "%s: mean error %.3g is over a quarter of the mean bound %.3g", what,
            e_sum / (double)nr, b_sum / (double)nr);
    size_t written = 0;
    for (size_t i = nr; i < n; i++) {
        uint32_t u;
        memcpy(&u, &out[i], 4);
        written += u != POISON_BITS;
    }
    T_CHECK(written == 0, "%s: %zu outputs past M * n_tasks = %zu written", what, written, nr);
    if (sum_err)
        *sum_err += e_sum, *sum_bound += b_sum;
    free(ref), free(bound);
    return worst;
}

/* Scratch counters read back: all zero? */
static bool counters_zero(const hhead *h)
{
    const int n = head_fused_counters(h->max_rows);
    unsigned *c = t_xmalloc(sizeof(unsigned) * (size_t)n);
    cudaMemcpy(c, h->d_scratch, sizeof(unsigned) * (size_t)n, cudaMemcpyDeviceToHost);
    int nonzero = 0;
    for (int i = 0; i < n; i++)
        nonzero += c[i] != 0;
    free(c);
    return nonzero == 0;
}

/* One launch of M candidates (out has room for `room` rows, poisoned);
 * checks values, the poison past M and the counters. Returns the worst
 * error / bound. */
static double run_head(hhead *h, int M, int room, int sigmoid, const char *what)
{
    const size_t n = (size_t)room * h->s.n_tasks;
    float *d_out = t_dpoison(n * 4), *out = t_xmalloc(n * 4 + 4);
    head_set_m(h, M);
    head_fused_params p = head_params(h, d_out, sigmoid);
    int rc = head_fused_cuda(&p, NULL);
    cudaError_t e = cudaDeviceSynchronize();
    double worst = INFINITY;
    T_CHECK(rc == 0 && e == cudaSuccess, "%s: launch %d, sync %s", what, rc, cudaGetErrorString(e));
    if (rc == 0 && e == cudaSuccess) {
        cudaMemcpy(out, d_out, n * 4, cudaMemcpyDeviceToHost);
        int m = M < 0 ? 0 : M > h->max_rows ? h->max_rows : M;
        worst = check_out(what, out, n, h, m, sigmoid, NULL, NULL);
        T_CHECK(counters_zero(h), "%s: scratch counters not back at zero", what);
    }
    cudaFree(d_out), free(out);
    return worst;
}

static const hshape BENCH = {.width = 1024, .in8 = 1024, .hidden = 512, .h8 = 512, .n_tasks = 8, .n_tasks8 = 8,
                             .ldx = 1024};
static const hshape KUAIRAND = {.width = 512, .in8 = 512, .hidden = 512, .h8 = 512, .n_tasks = 8, .n_tasks8 = 8,
                                .ldx = 512};

static void test_args(void)
{
    T_CHECK(head_fused_supported(1024, 512, 8) && head_fused_supported(56, 40, 8) &&
                head_fused_supported(1024, 16384, 16) && head_fused_supported(8, 8, 8),
            "supported shapes");
    T_CHECK(!head_fused_supported(1020, 512, 8) && !head_fused_supported(1032, 512, 8) &&
                !head_fused_supported(1024, 500, 8) && !head_fused_supported(1024, 512, 24) &&
                !head_fused_supported(1024, 512, 0) && !head_fused_supported(0, 512, 8) &&
                !head_fused_supported(1024, 0, 8) && !head_fused_supported(1024, 16392, 8),
            "unsupported shapes refused");
    T_CHECK(head_fused_scratch_bytes(0, 512, 8) == 0 && head_fused_scratch_bytes(256, 500, 8) == 0 &&
                head_fused_scratch_bytes(256, 512, 8) >= (size_t)256 * 8 * 8 * 4,
            "scratch sizes");
    int rb, cb, ks;
    head_fused_tile(256, 1024, 512, &rb, &cb, &ks);
    T_CHECK(rb == 64 && cb == 128 && ks == 8, "bench shape at 256 rows: tile %d x %d over %d CTAs", rb, cb, ks);
    head_fused_tile(100, 512, 512, &rb, &cb, &ks);
    T_CHECK(rb == 32 && cb == 128 && ks == 8, "kuairand at 100 rows: tile %d x %d over %d CTAs", rb, cb, ks);
    head_fused_tile(7, 56, 40, &rb, &cb, &ks);
    T_CHECK(rb == 32 && cb == 64 && ks == 1, "width 50 at 7 rows: tile %d x %d over %d CTAs", rb, cb, ks);

    hhead h;
    const hshape s = {.width = 64, .in8 = 64, .hidden = 64, .h8 = 64, .n_tasks = 8, .n_tasks8 = 8, .ldx = 64};
    head_make(&h, &s, 1, 16);
    head_set_m(&h, 16);
    float *d_out = t_dpoison(16 * 8 * 4);
    const head_fused_params good = head_params(&h, d_out, 1);
    head_fused_params p;
    T_CHECK(head_fused_cuda(NULL, NULL) == cudaErrorInvalidValue, "NULL params refused");
#define REFUSED(field, value, what)                                                    \
    p = good;                                                                          \
    p.field = value;                                                                   \
    T_CHECK(head_fused_cuda(&p, NULL) == cudaErrorInvalidValue, "%s refused", what)
    REFUSED(in8, 60, "in8 60");
    REFUSED(in8, 4096, "in8 4096");
    REFUSED(h8, 60, "h8 60");
    REFUSED(n_tasks8, 12, "n_tasks8 12");
    REFUSED(width, 0, "width 0");
    REFUSED(width, 72, "width past in8");
    REFUSED(n_tasks, 9, "n_tasks past n_tasks8");
    REFUSED(n_tasks, 0, "n_tasks 0");
    REFUSED(max_rows, -1, "max_rows -1");
    REFUSED(ldx, 60, "ldx < width");
    REFUSED(ldx, 66, "fp32 ldx not a multiple of 4");
    REFUSED(x, (const float *)h.d_x + 1, "x not 16-byte aligned");
    REFUSED(w1, h.d_w1 + 1, "w1 not 16-byte aligned");
    REFUSED(scratch, NULL, "NULL scratch");
    REFUSED(out, NULL, "NULL out");
    REFUSED(n_rows, NULL, "NULL n_rows");
    p = good;
    p.x_f32 = 0, p.ldx = 68;
    T_CHECK(head_fused_cuda(&p, NULL) == cudaErrorInvalidValue, "bf16 ldx not a multiple of 8 refused");
#undef REFUSED
    p = good;
    p.max_rows = 0;
    T_CHECK(head_fused_cuda(&p, NULL) == 0, "max_rows 0 launches nothing and succeeds");
    cudaError_t e = cudaDeviceSynchronize();
    T_CHECK(e == cudaSuccess && cudaGetLastError() == cudaSuccess, "no error left behind: %s",
            cudaGetErrorString(e));
    float out[16 * 8];
    cudaMemcpy(out, d_out, sizeof out, cudaMemcpyDeviceToHost);
    uint32_t u;
    memcpy(&u, &out[0], 4);
    T_CHECK(u == POISON_BITS, "nothing written by refused calls");
    cudaFree(d_out);
    head_free(&h);
}

static void test_bench_shape(void)
{
    static const int Ms[] = {1, 7, 100, 256};
    double worst = 0.0;
    for (int x_f32 = 1; x_f32 >= 0; x_f32--) {
        hhead h;
        head_make(&h, &BENCH, x_f32, 256);
        for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++) {
            /* max_rows = M: the grid the engine would size for this batch */
            h.max_rows = Ms[i];
            char what[96];
            snprintf(what, sizeof what, "bench %s x, M %d, %s", x_f32 ? "fp32" : "bf16", Ms[i],
                     x_f32 ? "sigmoid" : "logits");
            worst = fmax(worst, run_head(&h, Ms[i], Ms[i] + 3, x_f32, what));
        }
        h.max_rows = 256;
        worst = fmax(worst, run_head(&h, 256, 259, !x_f32, x_f32 ? "bench fp32 x, logits" : "bench bf16, sigmoid"));
        head_free(&h);
    }
    printf("    worst error %.3f of the bound\n", worst);
}

static void test_small(void)
{
    static const hshape shapes[] = {
        {.width = 50, .in8 = 56, .hidden = 40, .h8 = 40, .n_tasks = 1, .n_tasks8 = 8, .ldx = 64},
        {.width = 50, .in8 = 56, .hidden = 40, .h8 = 40, .n_tasks = 8, .n_tasks8 = 8, .ldx = 56},
        {.width = 50, .in8 = 56, .hidden = 37, .h8 = 40, .n_tasks = 12, .n_tasks8 = 16, .ldx = 72},
        {.width = 300, .in8 = 304, .hidden = 200, .h8 = 200, .n_tasks = 3, .n_tasks8 = 8, .ldx = 304},
    };
    double worst = 0.0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int x_f32 = 0; x_f32 <= 1; x_f32++)
            for (int sig = 0; sig <= 1; sig++) {
                hhead h;
                head_make(&h, &shapes[i], x_f32, 100);
                const int M = sig ? 7 : 100;
                char what[128];
                snprintf(what, sizeof what, "width %d, hidden %d, %d tasks, %s x, M %d, %s", shapes[i].width,
                         shapes[i].hidden, shapes[i].n_tasks, x_f32 ? "fp32" : "bf16", M, sig ? "sigmoid" : "logits");
                worst = fmax(worst, run_head(&h, M, 100, sig, what));
                head_free(&h);
            }
    printf("    worst error %.3f of the bound\n", worst);
}

static void test_m(void)
{
    hhead h;
    head_make(&h, &BENCH, 0, 256);
    double worst = 0.0;
    worst = fmax(worst, run_head(&h, 100, 256, 1, "max_rows 256, M 100"));
    worst = fmax(worst, run_head(&h, 0, 256, 1, "max_rows 256, M 0"));
    worst = fmax(worst, run_head(&h, 255, 256, 1, "max_rows 256, M 255"));
    worst = fmax(worst, run_head(&h, 300, 310, 1, "max_rows 256, M 300 (clamped to 256)"));
    head_free(&h);
    /* More row blocks than the grid has (8 of 64 rows here): the CTAs loop */
    head_make(&h, &KUAIRAND, 1, 1100);
    worst = fmax(worst, run_head(&h, 1000, 1100, 1, "kuairand, max_rows 1100, M 1000"));
    head_free(&h);
    printf("    worst error %.3f of the bound\n", worst);
}

static void test_tiles(void)
{
    static const int tiles[][3] = {{32, 64, 1},  {32, 64, 2},  {32, 64, 4},  {32, 64, 8},
                                   {32, 128, 1}, {32, 128, 2}, {32, 128, 4}, {32, 128, 8},
                                   {64, 64, 1},  {64, 64, 2},  {64, 64, 4},  {64, 64, 8},
                                   {64, 128, 1}, {64, 128, 2}, {64, 128, 4}, {64, 128, 8}};
    /* h8 200: column blocks past h8; in8 120 over 8 CTAs: 16-row slices, the last one half empty */
    static const hshape odd = {.width = 114, .in8 = 120, .hidden = 190, .h8 = 200, .n_tasks = 5, .n_tasks8 = 8,
                               .ldx = 120};
    double worst = 0.0;
    for (size_t i = 0; i < sizeof tiles / sizeof tiles[0]; i++) {
        const int rb = tiles[i][0], cb = tiles[i][1], ks = tiles[i][2];
        head_fused_force_tile(rb, cb, ks);
        for (int x_f32 = 0; x_f32 <= 1; x_f32++) {
            const hshape *shapes[2] = {&odd, &KUAIRAND};
            for (int j = 0; j < 2; j++) {
                if (((shapes[j]->in8 + ks - 1) / ks + 7) / 8 * 8 > 128) /* a K slice past 128 rows: not taken */
                    continue;
                int r, c, k;
                head_fused_tile(77, shapes[j]->in8, shapes[j]->h8, &r, &c, &k);
                T_CHECK(r == rb && c == cb && k == ks, "forced tile %d x %d / %d taken (got %d x %d / %d)", rb, cb,
                        ks, r, c, k);
                hhead h;
                head_make(&h, shapes[j], x_f32, 90);
                char what[128];
                snprintf(what, sizeof what, "tile %d x %d over %d, in8 %d, h8 %d, %s x, M 77", rb, cb, ks,
                         shapes[j]->in8, shapes[j]->h8, x_f32 ? "fp32" : "bf16");
                worst = fmax(worst, run_head(&h, 77, 90, x_f32, what));
                head_free(&h);
            }
        }
    }
    head_fused_force_tile(0, 0, 0);
    int r, c, k;
    head_fused_tile(256, 1024, 512, &r, &c, &k);
    T_CHECK(r == 64 && c == 128 && k == 8, "back to the automatic tile");
    printf("    16 tiles on 2 shapes (where their K slices fit), fp32 and bf16 x: worst error %.3f of the bound\n",
           worst);
}

static void test_determinism(void)
{
    hhead h;
    head_make(&h, &BENCH, 0, 256);
    const size_t n = (size_t)256 * 8;
    float *d_out = t_dpoison(n * 4), *a = t_xmalloc(n * 4), *b = t_xmalloc(n * 4);
    head_fused_params p = head_params(&h, d_out, 0);
    head_set_m(&h, 256);
    int rc = head_fused_cuda(&p, NULL);
    cudaDeviceSynchronize();
    cudaMemcpy(a, d_out, n * 4, cudaMemcpyDeviceToHost);
    T_CHECK(counters_zero(&h), "counters zero after the first launch");
    cudaMemset(d_out, 0xff, n * 4);
    head_set_m(&h, 100); /* a launch of another M in between */
    rc |= head_fused_cuda(&p, NULL);
    head_set_m(&h, 256);
    rc |= head_fused_cuda(&p, NULL);
    cudaError_t e = cudaDeviceSynchronize();
    T_REQUIRE(rc == 0 && e == cudaSuccess, "launches %d, sync %s", rc, cudaGetErrorString(e));
    cudaMemcpy(b, d_out, n * 4, cudaMemcpyDeviceToHost);
    T_CHECK(memcmp(a, b, n * 4) == 0, "two launches of M 256 give different bits");
    T_CHECK(counters_zero(&h), "counters zero after three launches");
    check_out("determinism", b, n, &h, 256, 0, NULL, NULL);
    cudaFree(d_out), free(a), free(b);
    head_free(&h);
}

static void test_graph(void)
{
    hhead h;
    head_make(&h, &BENCH, 1, 256);
    const size_t n = (size_t)256 * 8;
    float *d_out = t_dpoison(n * 4), *out = t_xmalloc(n * 4);
    T_REQUIRE(head_fused_prepare() == 0, "prepare");
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    head_fused_params p = head_params(&h, d_out, 1);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    T_REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "capture");
    int rc = head_fused_cuda(&p, s);
    cudaError_t e = cudaStreamEndCapture(s, &graph);
    T_REQUIRE(rc == 0 && e == cudaSuccess, "captured launch %d, end capture %s", rc, cudaGetErrorString(e));
    T_REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess, "instantiate");
    static const int Ms[] = {256, 100, 1, 256};
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++) {
        head_set_m(&h, Ms[i]);
        cudaMemset(d_out, 0xff, n * 4);
        cudaDeviceSynchronize(); /* s does not wait for the default stream */
        e = cudaGraphLaunch(exec, s);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(s);
        T_CHECK(e == cudaSuccess, "replay %zu: %s", i, cudaGetErrorString(e));
        cudaMemcpy(out, d_out, n * 4, cudaMemcpyDeviceToHost);
        char what[64];
        snprintf(what, sizeof what, "graph replay %zu, M %d", i, Ms[i]);
        check_out(what, out, n, &h, Ms[i], 1, NULL, NULL);
        T_CHECK(counters_zero(&h), "%s: counters not back at zero", what);
    }
    cudaGraphExecDestroy(exec), cudaGraphDestroy(graph), cudaStreamDestroy(s);
    cudaFree(d_out), free(out);
    head_free(&h);
}

/* ---- timing --------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef struct unfused {
    gemm_cuda *g;
    bf16_t *d_y, *d_hid; /* [M, in8], [M, h8] */
    float *d_logits;     /* [M, n_tasks8] */
} unfused;

/* The backend's head_ranking, minus the engine: four launches. */
static int unfused_run(unfused *u, const hhead *h, int M, float *out, int sigmoid, cudaStream_t s)
{
    const hshape *sh = &h->s;
    char why[256];
    int rc = h->x_f32 ? gather_l2norm_cuda(M, sh->width, h->d_x, sh->ldx, h->d_rows, u->d_y, sh->in8, NULL, s)
                      : gather_l2norm_bf16_cuda(M, sh->width, h->d_x, sh->ldx, h->d_rows, u->d_y, sh->in8, NULL, s);
    if (!rc)
        rc = gemm_cuda_run(u->g, M, sh->h8, sh->in8, u->d_y, sh->in8, h->d_w1, sh->h8, 0, 0.0f, u->d_hid, 0, sh->h8,
                           GEMM_EPI_RELU_BIAS, h->d_b1, s, why, sizeof why);
    if (!rc)
        rc = gemm_cuda_run(u->g, M, sh->n_tasks8, sh->h8, u->d_hid, sh->h8, h->d_w2, sh->n_tasks8, 0, 0.0f,
                           u->d_logits, 1, sh->n_tasks8, GEMM_EPI_BIAS, h->d_b2, s, why, sizeof why);
    if (!rc)
        rc = scores_out_cuda(M, sh->n_tasks, u->d_logits, sh->n_tasks8, sigmoid, out, NULL, s);
    return rc;
}

/* Median time of one head (us), as `reps` heads back to back in a CUDA
 * graph, over `rounds` replays; fused (head_fused_cuda) or not. */
static float time_heads(const hhead *h, int M, float *out, int fused, unfused *u, cudaStream_t s, int reps,
                        int rounds)
{
    head_fused_params p = head_params(h, out, 1);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    int rc = 0;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
        return -1.0f;
    for (int i = 0; i < reps && !rc; i++)
        rc = fused ? head_fused_cuda(&p, s) : unfused_run(u, h, M, out, 1, s);
    if (cudaStreamEndCapture(s, &graph) != cudaSuccess || rc || cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess)
        return -1.0f;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    float *t = t_xmalloc(sizeof(float) * (size_t)rounds);
    cudaGraphLaunch(exec, s); /* warm-up */
    cudaStreamSynchronize(s);
    for (int r = 0; r < rounds; r++) {
        cudaEventRecord(e0, s);
        cudaGraphLaunch(exec, s);
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[r], e0, e1);
    }
    qsort(t, (size_t)rounds, sizeof(float), cmp_float);
    const float us = t[rounds / 2] * 1000.0f / (float)reps;
    free(t);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaGraphExecDestroy(exec), cudaGraphDestroy(graph);
    return cudaStreamSynchronize(s) == cudaSuccess ? us : -1.0f;
}

static int cmp_u64(const void *a, const void *b)
{
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

/* HEAD_FUSED_BENCH: when the CTAs of the last of ten chained heads (or of
 * one head alone) pass each point, in us from the first CTA's start: the
 * first, median and last CTA. */
static void trace_heads(const hhead *h, int M, float *out, cudaStream_t s, int reps)
{
    static const char *names[HEAD_FUSED_TRACE_POINTS] = {"start", "waited", "x landed", "norm", "mma",
                                                         "hidden", "logits", "end"};
    const size_t cap = (size_t)4096 * HEAD_FUSED_TRACE_POINTS;
    unsigned long long *d_trace = t_dpoison(cap * 8), *tr = t_xmalloc(cap * 8);
    head_fused_set_trace(d_trace);
    const float us = time_heads(h, M, out, 1, NULL, s, reps, 3);
    head_fused_set_trace(NULL);
    int rb, cb, ks;
    head_fused_tile(h->max_rows, h->s.in8, h->s.h8, &rb, &cb, &ks);
    const int gx = (h->s.h8 + cb - 1) / cb * ks, gy_max = (h->max_rows + rb - 1) / rb;
    const int n_rb = (M + rb - 1) / rb;
    cudaMemcpy(tr, d_trace, cap * 8, cudaMemcpyDeviceToHost);
    unsigned long long t0 = ~0ull, *col = t_xmalloc(sizeof(unsigned long long) * 4096);
    for (int c = 0; c < gx * n_rb && c < 4096; c++)
        t0 = tr[(size_t)c * HEAD_FUSED_TRACE_POINTS] < t0 ? tr[(size_t)c * HEAD_FUSED_TRACE_POINTS] : t0;
    printf("      trace, %s, M %d (%d x %d CTAs that work, of %d rows of blocks), %.2f us a head:", reps > 1 ?
           "last of ten chained heads" : "one head", M, gx, n_rb, gy_max, us);
    for (int pt = 0; pt < HEAD_FUSED_TRACE_POINTS; pt++) {
        int n = 0;
        for (int c = 0; c < gx * n_rb && c < 4096; c++)
            col[n++] = tr[(size_t)c * HEAD_FUSED_TRACE_POINTS + pt] - t0;
        qsort(col, (size_t)n, sizeof *col, cmp_u64);
        printf("%s %s %.2f/%.2f/%.2f", pt ? "," : "", names[pt], col[0] / 1e3, col[n / 2] / 1e3, col[n - 1] / 1e3);
    }
    printf("\n");
    cudaFree(d_trace), free(tr), free(col);
}

static void test_timing(void)
{
    const char *env = getenv("HEAD_FUSED_BENCH");
    const bool sweep = env && atoi(env) != 0;
    T_REQUIRE(head_fused_prepare() == 0, "prepare");
    hhead h;
    head_make(&h, &BENCH, 0, 256);
    const size_t n = (size_t)256 * 8;
    float *h_out = NULL, *d_out = NULL;
    T_REQUIRE(cudaHostAlloc((void **)&h_out, n * 4, cudaHostAllocMapped) == cudaSuccess &&
                  cudaHostGetDevicePointer((void **)&d_out, h_out, 0) == cudaSuccess,
              "mapped pinned output");
    unfused u = {0};
    char why[256];
    T_REQUIRE(gemm_cuda_create((size_t)32 << 20, &u.g, why, sizeof why) == 0, "gemm_cuda_create: %s", why);
    u.d_y = t_dpoison((size_t)256 * 1024 * 2), u.d_hid = t_dpoison((size_t)256 * 512 * 2);
    u.d_logits = t_dpoison(n * 4);
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    static const int Ms[] = {256, 100};
    for (size_t i = 0; i < 2; i++) {
        const int M = Ms[i];
        h.max_rows = M;
        head_set_m(&h, M);
        /* the unfused GEMMs tuned as the backend tunes them, once per shape */
        T_CHECK(gemm_cuda_tune(u.g, M, 512, 1024, u.d_y, 1024, h.d_w1, 512, 0, 0.0f, u.d_hid, 0, 512,
                               GEMM_EPI_RELU_BIAS, h.d_b1, s, why, sizeof why) == 0 &&
                    gemm_cuda_tune(u.g, M, 8, 512, u.d_hid, 512, h.d_w2, 8, 0, 0.0f, u.d_logits, 1, 8, GEMM_EPI_BIAS,
                                   h.d_b2, s, why, sizeof why) == 0,
                "tune: %s", why);
        double es = 0.0, bs = 0.0;
        char what[64];
        for (int fused = 1; fused >= 0; fused--) {
            memset(h_out, 0xff, n * 4);
            const float us = time_heads(&h, M, d_out, fused, &u, s, 10, 20);
            T_CHECK(us > 0.0f, "timing M %d %s failed", M, fused ? "fused" : "unfused");
            snprintf(what, sizeof what, "%s head, M %d, mapped output", fused ? "fused" : "unfused", M);
            check_out(what, h_out, n, &h, M, 1, &es, &bs);
            int rb, cb, ks;
            head_fused_tile(M, 1024, 512, &rb, &cb, &ks);
            if (fused)
                printf("    bench-8x1024 head, M %3d: fused %6.2f us (tile %d x %d over %d CTAs)", M, us, rb, cb, ks);
            else
                printf(", unfused %6.2f us (per head, 10 back to back in a CUDA graph, median of 20)\n", us);
        }
        if (sweep) {
            /* in8 1024 takes K slices of 128 rows: clusters of 8 */
            static const int tiles[][3] = {{32, 64, 8}, {32, 128, 8}, {64, 64, 8}, {64, 128, 8}};
            for (size_t k = 0; k < sizeof tiles / sizeof tiles[0]; k++) {
                head_fused_force_tile(tiles[k][0], tiles[k][1], tiles[k][2]);
                memset(h_out, 0xff, n * 4);
                const float us = time_heads(&h, M, d_out, 1, &u, s, 10, 20);
                snprintf(what, sizeof what, "tile %d x %d / %d, M %d", tiles[k][0], tiles[k][1], tiles[k][2], M);
                check_out(what, h_out, n, &h, M, 1, NULL, NULL);
                printf("      %s: %6.2f us\n", what, us);
            }
            head_fused_force_tile(0, 0, 0);
            trace_heads(&h, M, d_out, s, 10);
            trace_heads(&h, M, d_out, s, 1);
            cuda_pdl_set(0);
            const float off = time_heads(&h, M, d_out, 1, &u, s, 10, 20);
            const float off_u = time_heads(&h, M, d_out, 0, &u, s, 10, 20);
            cuda_pdl_set(1);
            printf("      PDL off: fused %6.2f us, unfused %6.2f us\n", off, off_u);
            const float one = time_heads(&h, M, d_out, 1, &u, s, 1, 200);
            const float one_u = time_heads(&h, M, d_out, 0, &u, s, 1, 200);
            printf("      one head a graph (median of 200 replays): fused %6.2f us, unfused %6.2f us\n", one, one_u);
        }
    }
    cudaStreamDestroy(s);
    cudaFree(u.d_y), cudaFree(u.d_hid), cudaFree(u.d_logits);
    gemm_cuda_destroy(u.g);
    cudaFreeHost(h_out);
    head_free(&h);
}

#endif /* HSTU_HAVE_CUDA */

T_GPU_MAIN(HEAD_FUSED_TESTS)
