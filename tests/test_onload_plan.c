/* test_onload_plan.c - how much of the host hits to onload (onload_plan.h).
 *
 * The FLOP counts against a row-by-row sum; the plan against a brute force
 * over every split of small random batches (it must reach the modelled
 * optimum with prefix-shaped, page-aligned onloads within what the host
 * holds); its ends (a free link onloads all, a dead one nothing); and the
 * compute fit recovering a known line, refusing sizes that do not vary, and
 * forgetting an old regime; the extra's line; the learner keeping a line
 * and an extra per class of batch sizes, its link rate, and given rates.
 */
#include "harness.h"

#include "core/rng.h"
#include "kvcache/onload_plan.h"

#include <math.h>
#include <stdio.h>

/* bench-8x1024's shape */
static onload_model model(void) { return onload_model_make(8, 1024, 4096, 4, 256, 256, 2); }

static void test_flops(void)
{
    onload_model m = model();
    T_CHECK(m.row_bytes == 8.0 * 4 * 512 * 2, "row bytes %.0f", m.row_bytes);
    double sum = 0;
    for (int j = 100; j < 357; j++)
        sum += m.n_layers * (m.gemm_flops_row + m.attn_flops_key * (j + 1));
    double got = onload_flops_rows(&m, 100, 357);
    T_CHECK(fabs(got - sum) <= 1e-12 * sum, "rows: %.6g against %.6g", got, sum);
    T_CHECK(onload_flops_rows(&m, 5, 5) == 0 && onload_flops_rows(&m, 9, 3) == 0, "empty ranges");
    double c = onload_flops_cands(&m, 4096, 256);
    double want = 8.0 * 256 * (m.gemm_flops_row + m.attn_flops_key * 4097);
    T_CHECK(fabs(c - want) <= 1e-12 * want, "candidates: %.6g against %.6g", c, want);
}

/* The modelled time of one allocation. */
static double time_of(const onload_model *m, const onload_rates *r, double base, const int *host, const int *x,
                      int n)
{
    double flops = base, bytes = 0;
    for (int i = 0; i < n; i++) {
        flops += onload_flops_rows(m, x[i], host[i]);
        bytes += x[i] * m->row_bytes;
    }
    return onload_time(m, r, bytes, flops);
}

static void test_plan_brute_force(void)
{
    onload_model m = model();
    rng g = {7};
    const int P = 32;
    int cases = 0, partial = 0, none = 0, all = 0;
    for (int it = 0; it < 400; it++) {
        int n = 1 + (int)rng_below(&g, 3);
        int host[3], order[3], x[3];
        onload_user u[3];
        for (int i = 0; i < n; i++) {
            host[i] = P * (int)rng_below(&g, 9) + (it % 5 == 0 ? (int)rng_below(&g, P) : 0); /* some not aligned */
            u[i] = (onload_user){.host_rows = host[i], .onload = -1};
        }
        onload_rates r = {.bytes_per_ms = 1e6 * (0.5 + rng_below(&g, 100)), /* 0.5-100 GB/s */
                          .flops_per_ms = 1e9 * (50 + rng_below(&g, 800)), /* 50-850 TFLOP/s */
                          .fixed_ms = 0.01 * rng_below(&g, 50),
                          .extra_ms = it % 3 ? 0 : 0.01 * rng_below(&g, 30),
                          .extra_ms_per_gb = it % 4 ? 0 : 0.1 * rng_below(&g, 30)};
        double base = 1e9 * rng_below(&g, 200);
        double t = onload_plan(&m, &r, base, P, u, n, order);
        int aligned[3];
        for (int i = 0; i < n; i++) {
            aligned[i] = host[i] - host[i] % P;
            T_CHECK(u[i].onload >= 0 && u[i].onload <= aligned[i] && u[i].onload % P == 0,
                    "case %d user %d: onload %d of %d host rows", it, i, u[i].onload, host[i]);
            x[i] = u[i].onload;
        }
        double own = time_of(&m, &r, base, aligned, x, n);
        T_CHECK(fabs(own - t) <= 1e-9 * own, "case %d: returned %.9g, its plan models %.9g", it, t, own);
        /* every split, page by page */
        double best = INFINITY;
        int y[3] = {0, 0, 0};
        for (y[0] = 0; y[0] <= aligned[0]; y[0] += P)
            for (y[1] = 0; y[1] <= (n > 1 ? aligned[1] : 0); y[1] += P)
                for (y[2] = 0; y[2] <= (n > 2 ? aligned[2] : 0); y[2] += P) {
                    double b = time_of(&m, &r, base, aligned, y, n);
                    best = b < best ? b : best;
                }
        T_CHECK(own <= best * (1 + 1e-9), "case %d: plan %.9g ms, best split %.9g ms", it, own, best);
        int sum = 0, sum_host = 0;
        for (int i = 0; i < n; i++)
            sum += x[i], sum_host += aligned[i];
        partial += sum > 0 && sum < sum_host;
        none += sum == 0 && sum_host > 0;
        all += sum == sum_host && sum_host > 0;
        cases++;
    }
    printf("  %d cases: %d partial, %d nothing onloaded, %d all\n", cases, partial, none, all);
    T_CHECK(partial > 0 && none > 0 && all > 0, "the cases should reach every kind of plan");
}

static void test_plan_ends(void)
{
    onload_model m = model();
    onload_user u[2] = {{.host_rows = 3968}, {.host_rows = 1024}};
    int order[2];
    onload_rates fast = {.bytes_per_ms = 1e15, .flops_per_ms = 5e11, .fixed_ms = 0.3};
    onload_plan(&m, &fast, 1e9, 32, u, 2, order);
    T_CHECK(u[0].onload == 3968 && u[1].onload == 1024, "a free link: %d, %d", u[0].onload, u[1].onload);
    onload_rates dead = {.bytes_per_ms = 1, .flops_per_ms = 5e11, .fixed_ms = 0.3};
    onload_plan(&m, &dead, 1e9, 32, u, 2, order);
    T_CHECK(u[0].onload == 0 && u[1].onload == 0, "a dead link: %d, %d", u[0].onload, u[1].onload);
    /* H100-like: 50 GB/s, 500 TFLOP/s, 0.3 ms fixed; batch 1 at 4096 with
     * 3968 on the host: some of it, and longest first */
    onload_rates h100 = {.bytes_per_ms = 50e6, .flops_per_ms = 5e11, .fixed_ms = 0.3};
    onload_user one = {.host_rows = 3968};
    double t = onload_plan(&m, &h100, onload_flops_rows(&m, 3968, 4096) + onload_flops_cands(&m, 4096, 256), 32,
                           &one, 1, order);
    double t_all = onload_time(&m, &h100, 3968 * m.row_bytes,
                               onload_flops_rows(&m, 3968, 4096) + onload_flops_cands(&m, 4096, 256));
    double t_none = onload_time(&m, &h100, 0, onload_flops_rows(&m, 0, 4096) + onload_flops_cands(&m, 4096, 256));
    printf("  batch 1 at 4096, modelled: %d of 3968 rows onloaded, %.3f ms (all: %.3f, none: %.3f)\n", one.onload,
           t, t_all, t_none);
    T_CHECK(one.onload > 0 && one.onload < 3968 && t < t_all && t < t_none, "a split beats both ends");
    onload_user two[2] = {{.host_rows = 1024}, {.host_rows = 3072}};
    onload_rates mid = {.bytes_per_ms = 50e6, .flops_per_ms = 5e11, .fixed_ms = 0};
    onload_plan(&m, &mid, 0, 32, two, 2, order);
    T_CHECK(two[1].onload >= two[0].onload && (two[0].onload == 0 || two[1].onload == 3072),
            "longest first: %d of 1024, %d of 3072", two[0].onload, two[1].onload);
    onload_plan(&m, &h100, 0, 32, u, 0, order); /* no host hits: nothing to do */
}

static void test_fit(void)
{
    onload_fit f = {0};
    onload_rates r = {.flops_per_ms = -1, .fixed_ms = -1};
    for (int i = 0; i < 8; i++)
        onload_fit_add(&f, 50e9, 0.4, 0.98);
    T_CHECK(!onload_fit_get(&f, &r) && r.flops_per_ms == -1, "one size only: fitted");
    rng g = {3};
    for (int i = 0; i < 200; i++) { /* 0.35 ms + 400 TFLOP/s, 1% noise */
        double flops = 1e9 * (20 + rng_below(&g, 600));
        double ms = (0.35 + flops / 4e11) * (1 + 0.01 * ((double)rng_below(&g, 2001) / 1000 - 1));
        onload_fit_add(&f, flops, ms, 0.98);
    }
    T_REQUIRE(onload_fit_get(&f, &r), "no fit");
    printf("  fitted %.1f TFLOP/s, %.3f ms fixed (true 400, 0.350)\n", r.flops_per_ms * 1e-9, r.fixed_ms);
    T_CHECK(fabs(r.flops_per_ms / 4e11 - 1) < 0.03 && fabs(r.fixed_ms - 0.35) < 0.02, "fit off");
    for (int i = 0; i < 400; i++) { /* the GPU got twice as fast */
        double flops = 1e9 * (20 + rng_below(&g, 600));
        onload_fit_add(&f, flops, 0.35 + flops / 8e11, 0.98);
    }
    T_REQUIRE(onload_fit_get(&f, &r), "no fit");
    T_CHECK(fabs(r.flops_per_ms / 8e11 - 1) < 0.03, "did not forget: %.1f TFLOP/s", r.flops_per_ms * 1e-9);
    onload_fit neg = {0}; /* a line with a negative intercept: through the origin */
    for (int i = 1; i <= 10; i++)
        onload_fit_add(&neg, 1e10 * i, 0.02 * i - 0.01, 1);
    T_REQUIRE(onload_fit_get(&neg, &r), "no fit");
    T_CHECK(r.fixed_ms == 0 && r.flops_per_ms > 0, "fixed %.3f", r.fixed_ms);
}

static void test_extra_fit(void)
{
    onload_fit f = {0};
    onload_rates r = {.extra_ms = -1, .extra_ms_per_gb = -1};
    T_CHECK(!onload_fit_extra(&f, &r) && r.extra_ms == -1, "no forward: an extra");
    for (int i = 0; i < 8; i++) /* one size: the mean, flat */
        onload_fit_add(&f, 1e8, 0.3 + 0.01 * (i % 3), 1);
    T_REQUIRE(onload_fit_extra(&f, &r), "no extra");
    T_CHECK(fabs(r.extra_ms - 2.47 / 8) < 1e-9 && r.extra_ms_per_gb == 0, "one size: %.3f + %.3f/GB", r.extra_ms,
            r.extra_ms_per_gb);
    onload_fit line = {0}; /* 0.2 ms + 3 ms a GB, from 0.1 to 2 GB */
    for (int i = 1; i <= 20; i++)
        onload_fit_add(&line, 1e8 * i, 0.2 + 3 * 0.1 * i, 0.9);
    T_REQUIRE(onload_fit_extra(&line, &r), "no extra");
    T_CHECK(fabs(r.extra_ms - 0.2) < 1e-6 && fabs(r.extra_ms_per_gb - 3) < 1e-6, "line: %.4f + %.4f/GB",
            r.extra_ms, r.extra_ms_per_gb);
    onload_fit narrow = {0}; /* sizes within a few MB: no slope, however steep */
    for (int i = 1; i <= 20; i++)
        onload_fit_add(&narrow, 1e6 * i, 0.2 + 0.05 * i, 0.9);
    T_REQUIRE(onload_fit_extra(&narrow, &r), "no extra");
    T_CHECK(r.extra_ms_per_gb == 0, "a slope of %.1f ms/GB from 1-20 MB", r.extra_ms_per_gb);
    onload_fit down = {0}; /* falling with the bytes: the mean, flat */
    for (int i = 1; i <= 10; i++)
        onload_fit_add(&down, 1e8 * i, 1.0 - 0.05 * i, 1);
    T_REQUIRE(onload_fit_extra(&down, &r), "no extra");
    T_CHECK(fabs(r.extra_ms - 0.725) < 1e-6 && r.extra_ms_per_gb == 0, "falling: %.4f + %.4f/GB", r.extra_ms,
            r.extra_ms_per_gb);
    onload_fit neg = {0}; /* below zero at no bytes: through the origin */
    for (int i = 1; i <= 10; i++)
        onload_fit_add(&neg, 1e9 * i, 2.0 * i - 1.0, 1);
    T_REQUIRE(onload_fit_extra(&neg, &r), "no extra");
    T_CHECK(r.extra_ms == 0 && r.extra_ms_per_gb > 1.8, "through the origin: %.4f + %.4f/GB", r.extra_ms,
            r.extra_ms_per_gb);
    onload_model m = model();
    onload_rates t = {.bytes_per_ms = 50e6, .flops_per_ms = 5e11, .fixed_ms = 0.3, .extra_ms = -5}, t0 = t;
    t0.extra_ms = 0;
    T_CHECK(onload_time(&m, &t, 1e6, 1e9) == onload_time(&m, &t0, 1e6, 1e9), "a negative extra counted");
}

/* A forward of the learner's batch whose measured time is the model's plus
 * `extra`, its copies at the learner's link rate. */
static void add_onload(onload_learner *l, const onload_model *m, int batch, double bytes, double flops, double extra)
{
    onload_rates r = onload_learner_rates(l, batch);
    r.extra_ms = r.extra_ms_per_gb = 0;
    onload_learner_add(l, batch, flops, onload_time(m, &r, bytes, flops) + extra, bytes, bytes / r.bytes_per_ms);
}

static void test_learner(void)
{
    static const int batch[] = {1, 2, 3, 4, 5, 8, 9, 16, 17, 1000}, cls[] = {0, 1, 2, 2, 3, 3, 4, 4, 5, 5};
    for (int i = 0; i < 10; i++)
        T_CHECK(onload_class(batch[i]) == cls[i], "batch %d: class %d", batch[i], onload_class(batch[i]));
    onload_model m = model();
    onload_rates prior = {.bytes_per_ms = 50e6, .flops_per_ms = 3e11, .fixed_ms = 0.4};
    onload_learner l;
    onload_learner_init(&l, &m, &prior, false, false);
    onload_rates r = onload_learner_rates(&l, 4);
    T_CHECK(r.flops_per_ms == 3e11 && r.fixed_ms == 0.4 && r.extra_ms == 0, "before any forward: not the prior");
    /* batch 1: 0.40 ms + 250 TFLOP/s; batch 8: 1.5 ms + 600 TFLOP/s */
    rng g = {11};
    for (int i = 0; i < 60; i++) {
        double f1 = 1e9 * (20 + rng_below(&g, 100)), f8 = 1e9 * (200 + rng_below(&g, 800));
        onload_learner_add(&l, 1, f1, 0.40 + f1 / 2.5e11, 0, 0);
        onload_learner_add(&l, 8, f8, 1.5 + f8 / 6e11, 0, 0);
    }
    onload_rates r1 = onload_learner_rates(&l, 1), r8 = onload_learner_rates(&l, 8), r2 = onload_learner_rates(&l, 2);
    printf("  batch 1: %.0f TFLOP/s + %.3f ms; batch 8: %.0f + %.3f; batch 2 (every batch's line): %.0f + %.3f\n",
           r1.flops_per_ms * 1e-9, r1.fixed_ms, r8.flops_per_ms * 1e-9, r8.fixed_ms, r2.flops_per_ms * 1e-9,
           r2.fixed_ms);
    T_CHECK(fabs(r1.flops_per_ms / 2.5e11 - 1) < 1e-6 && fabs(r1.fixed_ms - 0.40) < 1e-6, "batch 1's line");
    T_CHECK(fabs(r8.flops_per_ms / 6e11 - 1) < 1e-6 && fabs(r8.fixed_ms - 1.5) < 1e-6, "batch 8's line");
    T_CHECK(r2.flops_per_ms != prior.flops_per_ms && r2.fixed_ms != prior.fixed_ms, "batch 2 kept the prior");
    /* the extras: 7 ms at batch 8 and 2 GB does not reach batch 1 (0.3 ms
     * at 80 MB); a class with none borrows every class's */
    for (int i = 0; i < 20; i++) {
        add_onload(&l, &m, 8, 2e9, 500e9, 7.0);
        add_onload(&l, &m, 1, 80e6, 50e9, 0.3);
    }
    r1 = onload_learner_rates(&l, 1), r8 = onload_learner_rates(&l, 8);
    double e1 = r1.extra_ms + r1.extra_ms_per_gb * 0.08, e8 = r8.extra_ms + r8.extra_ms_per_gb * 2;
    printf("  extras: batch 1 %.3f ms at 80 MB, batch 8 %.3f ms at 2 GB\n", e1, e8);
    T_CHECK(fabs(e1 - 0.3) < 1e-6 && fabs(e8 - 7.0) < 1e-6, "extras by class");
    r = onload_learner_rates(&l, 4);
    T_CHECK(r.extra_ms + r.extra_ms_per_gb * 2 > 0.3, "batch 4 borrowed no extra");
    /* the link: small onloads at a tenth of the rate change nothing, large
     * ones do */
    onload_learner_add(&l, 1, 50e9, 1.0, 1 << 20, (1 << 20) / 5e6);
    T_CHECK(fabs(onload_learner_rates(&l, 1).bytes_per_ms / 50e6 - 1) < 1e-9, "a 1 MiB onload set the link's rate");
    for (int i = 0; i < 100; i++)
        onload_learner_add(&l, 1, 50e9, 2.0, 100e6, 100e6 / 25e6);
    T_CHECK(fabs(onload_learner_rates(&l, 1).bytes_per_ms / 25e6 - 1) < 0.01, "the link's rate: %.1f GB/s",
            onload_learner_rates(&l, 1).bytes_per_ms * 1e-6);
    /* onloads taken while the compute line was still the prior: their
     * extra is measured against the line learned since */
    onload_rates bad = {.bytes_per_ms = 50e6, .flops_per_ms = 1e12, .fixed_ms = 0.1};
    onload_rates truth = {.bytes_per_ms = 50e6, .flops_per_ms = 2.5e11, .fixed_ms = 0.4};
    onload_learner_init(&l, &m, &bad, false, false);
    for (int i = 0; i < 10; i++) {
        double f = 1e9 * (40 + 10 * i), b = 1e6 * (1 + i);
        onload_learner_add(&l, 1, f, onload_time(&m, &truth, b, f) + 0.1, b, b / truth.bytes_per_ms);
    }
    r = onload_learner_rates(&l, 1);
    printf("  extra against the prior: %.3f ms; ", r.extra_ms);
    for (int i = 0; i < 20; i++) {
        double f = 1e9 * (20 + 10 * i);
        onload_learner_add(&l, 1, f, onload_time(&m, &truth, 0, f), 0, 0);
    }
    r = onload_learner_rates(&l, 1);
    printf("against the line learned since: %.3f ms (true 0.100)\n", r.extra_ms);
    T_CHECK(fabs(r.extra_ms - 0.1) < 1e-6 && r.extra_ms_per_gb == 0, "stale extra %.4f + %.4f/GB", r.extra_ms,
            r.extra_ms_per_gb);
    /* rates given: kept */
    onload_learner_init(&l, &m, &prior, true, true);
    for (int i = 0; i < 20; i++) {
        onload_learner_add(&l, 1, 1e9 * (10 + i), 5.0 + i, 0, 0);
        onload_learner_add(&l, 1, 50e9, 9.0, 100e6, 100);
    }
    r = onload_learner_rates(&l, 1);
    T_CHECK(r.bytes_per_ms == prior.bytes_per_ms && r.flops_per_ms == prior.flops_per_ms &&
                r.fixed_ms == prior.fixed_ms,
            "given rates were learned over");
    T_CHECK(r.extra_ms > 0, "the extra is learned even with the rates given");
}

int main(void)
{
    t_run("onload plan: FLOPs of rows and candidates", test_flops);
    t_run("onload plan: the modelled optimum, against every split", test_plan_brute_force);
    t_run("onload plan: free and dead links, a split at batch 1, longest first", test_plan_ends);
    t_run("onload plan: the compute fit", test_fit);
    t_run("onload plan: the extra's line", test_extra_fit);
    t_run("onload plan: rates learned per class of batch sizes", test_learner);
    return t_summary();
}
