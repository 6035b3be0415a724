/* onload_plan.h - how much of the host hits' prefixes to bring up from the
 * host tier, and how much to compute again (hstu_onload, docs/kvcache.md,
 * "How much to onload").
 *
 * A host hit's rows can be moved over PCIe (row_bytes each, all layers) or
 * computed again with the rest of the batch. The onload runs beside the
 * compute, layer by layer, so a batch takes about
 *
 *   max(onload + compute / layers, compute)
 *
 * (the last layer's attention waits for the last layer's rows). The plan
 * picks the onloaded rows that minimise it. Computing a history row costs
 * more the later it sits (it attends to every row before it), so for a given
 * number of onloaded rows the compute saved is largest when they fill whole
 * prefixes, the longest first: the plan walks the host hits longest first,
 * a page at a time, and keeps the best point (ties go to more onload: the
 * GPU is the scarcer resource under load).
 *
 * The compute model: t = fixed_ms + flops / flops_per_ms, with the forward's
 * FLOPs counted from the rows (the layer GEMMs per row, the attention per
 * visible key). Its two rates come from onload_fit, a least-squares line
 * through the forwards' measured times that forgets old ones, or from a
 * prior until the forwards have varied enough to fit one.
 *
 * Pure host code, no allocation: tests/test_onload_plan.c holds it in CI.
 */
#ifndef HSTU_KVCACHE_ONLOAD_PLAN_H
#define HSTU_KVCACHE_ONLOAD_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The model's costs per row. */
typedef struct onload_model {
    int n_layers;
    double gemm_flops_row; /* per computed row and layer: the uvqk and proj GEMMs */
    double attn_flops_key; /* per computed row, visible key and layer: Q K^T and P V */
    double row_bytes;      /* one cached row's K and V, every layer */
} onload_model;

/* From the config's shape: d, the uvqk width W, H heads of Dqk and Dv. */
onload_model onload_model_make(int n_layers, int d, int W, int H, int Dqk, int Dv, int elem_bytes);

/* FLOPs of computing history rows [first, end) (row j sees j + 1 keys) and
 * of n candidates after a history of hist rows (each sees hist + 1). */
double onload_flops_rows(const onload_model *m, int first, int end);
double onload_flops_cands(const onload_model *m, int hist, int n);

/* The link and the GPU, in the units the plan adds up. */
typedef struct onload_rates {
    double bytes_per_ms; /* host to device */
    double flops_per_ms; /* the forward's marginal rate */
    double fixed_ms;     /* a forward's cost at no FLOPs */
    /* measured minus modelled time of the forwards that onloaded (what the
     * model misses of the onload's path: its waits between the layers'
     * graphs, the copies' setup, the copies slowing the layers), as a line
     * in the bytes onloaded: extra_ms + extra_ms_per_gb x GB */
    double extra_ms, extra_ms_per_gb;
} onload_rates;

/* One host hit: in, the rows the host holds; out, the rows to onload (a
 * multiple of the page size, at most host_rows). */
typedef struct onload_user {
    int host_rows;
    int onload;
} onload_user;

/* Sets u[i].onload for n host hits whose compute beside them (every other
 * computed row of the batch, and their rows past host_rows) is base_flops.
 * order: scratch for n ints. Returns the modelled time of the batch (ms). */
double onload_plan(const onload_model *m, const onload_rates *r, double base_flops, int page, onload_user *u,
                   int n, int *order);

/* The modelled time of a batch that onloads `bytes` and computes `flops`
 * (plus the extra line when bytes > 0, never below 0). */
double onload_time(const onload_model *m, const onload_rates *r, double bytes, double flops);

/* Least squares of a line y = a + b x over the forwards seen, each older
 * one weighing `decay` as much as the next: ms against FLOPs (the compute)
 * or against bytes (the extra). */
typedef struct onload_fit {
    double s0, s1, s2, t1, t2; /* sums of w, w x, w x^2, w y, w x y (x in units of 1e9) */
} onload_fit;

void onload_fit_add(onload_fit *f, double x, double ms, double decay);
/* Sets the rates' compute part and returns true once the forwards seen
 * spread enough to fit a line with a positive rate and no negative fixed
 * cost; otherwise leaves r alone and returns false. */
bool onload_fit_get(const onload_fit *f, onload_rates *r);
/* The extra's line (r->extra_ms, r->extra_ms_per_gb), both >= 0: the fit
 * where the sizes spread by ONLOAD_EXTRA_SPREAD_GB and the slope is
 * positive, else the mean (a flat line); false, leaving r alone, before any
 * forward. */
#define ONLOAD_EXTRA_SPREAD_GB 0.05
bool onload_fit_extra(const onload_fit *f, onload_rates *r);

/* ---- the rates learned from the forwards (AUTO) ------------------------ */

/* A batch of one user and one of sixteen do not share a fixed cost, a
 * marginal rate or an extra: each class of batch sizes (1, 2, 3-4, 5-8,
 * 9-16, 17 and more) learns its own, and a class that has not seen enough
 * borrows the line of every batch, then the prior. The extra comes from the
 * class's last ONLOAD_EXTRA_SAMPLES forwards that onloaded, measured against
 * the compute line of the moment it is asked for (a sample taken while the
 * line was still the prior would otherwise keep its error, and a plan it
 * stops from onloading never takes the sample that would mend it). The
 * link's rate is one, learned from onloads of at least
 * ONLOAD_LINK_MIN_BYTES (in smaller ones the latency shows, and a plan
 * that onloads little would see a slow link and onload less still). */
#define ONLOAD_CLASSES 6
#define ONLOAD_EXTRA_SAMPLES 16
#define ONLOAD_LINK_MIN_BYTES ((double)(4 << 20))

int onload_class(int batch);

typedef struct onload_sample {
    double bytes, flops, ms;
} onload_sample;

typedef struct onload_learner {
    onload_model m;
    onload_rates prior;                     /* the link's and compute's start; no extra */
    bool fixed_link, fixed_compute;         /* given by the user: kept */
    double link_bytes, link_ms;             /* the large onloads, decayed */
    onload_fit compute[ONLOAD_CLASSES + 1]; /* forwards with no onload; the last: every class */
    onload_sample onloads[ONLOAD_CLASSES + 1][ONLOAD_EXTRA_SAMPLES]; /* rings of those with one */
    uint64_t n_onloads[ONLOAD_CLASSES + 1]; /* taken so far (the ring holds the last ones) */
} onload_learner;

void onload_learner_init(onload_learner *l, const onload_model *m, const onload_rates *prior, bool fixed_link,
                         bool fixed_compute);
/* The rates for a batch of `batch` users. */
onload_rates onload_learner_rates(const onload_learner *l, int batch);
/* One forward of `batch` users that computed `flops` in `ms` and onloaded
 * `bytes` (0: none) whose copies took copy_ms on their stream. */
void onload_learner_add(onload_learner *l, int batch, double flops, double ms, double bytes, double copy_ms);

#ifdef __cplusplus
}
#endif
#endif
