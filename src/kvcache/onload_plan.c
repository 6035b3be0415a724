/* onload_plan.c - how much of the host hits' prefixes to onload (onload_plan.h). */
#include "kvcache/onload_plan.h"

onload_model onload_model_make(int n_layers, int d, int W, int H, int Dqk, int Dv, int elem_bytes)
{
    return (onload_model){
        .n_layers = n_layers,
        .gemm_flops_row = 2.0 * d * W + 2.0 * H * Dv * d,
        .attn_flops_key = 2.0 * H * (Dqk + Dv),
        .row_bytes = (double)n_layers * H * (Dqk + Dv) * elem_bytes,
    };
}

double onload_flops_rows(const onload_model *m, int first, int end)
{
    if (end <= first)
        return 0;
    double n = end - first, keys = n * ((double)first + 1 + end) / 2; /* sum of j + 1 over [first, end) */
    return m->n_layers * (m->gemm_flops_row * n + m->attn_flops_key * keys);
}

double onload_flops_cands(const onload_model *m, int hist, int n)
{
    return n > 0 ? m->n_layers * (double)n * (m->gemm_flops_row + m->attn_flops_key * (hist + 1.0)) : 0;
}

double onload_time(const onload_model *m, const onload_rates *r, double bytes, double flops)
{
    double compute = r->fixed_ms + flops / r->flops_per_ms;
    if (bytes <= 0)
        return compute;
    double onload = bytes / r->bytes_per_ms + compute / m->n_layers;
    double extra = r->extra_ms + r->extra_ms_per_gb * bytes * 1e-9;
    return (onload > compute ? onload : compute) + (extra > 0 ? extra : 0);
}

double onload_plan(const onload_model *m, const onload_rates *r, double base_flops, int page, onload_user *u,
                   int n, int *order)
{
    /* Longest first (insertion sort: a batch's host hits are few). */
    double flops = base_flops;
    for (int i = 0; i < n; i++) {
        u[i].onload = 0;
        u[i].host_rows -= u[i].host_rows % page;
        flops += onload_flops_rows(m, 0, u[i].host_rows);
        int j = i;
        for (; j > 0 && u[order[j - 1]].host_rows < u[i].host_rows; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    /* Walk the onload a page at a time along that order; keep the best
     * point (k users whole, then x rows of the next). */
    double bytes = 0, best = onload_time(m, r, 0, flops);
    int best_k = 0, best_x = 0;
    for (int k = 0; k < n; k++) {
        int rows = u[order[k]].host_rows;
        for (int x = page; x <= rows; x += page) {
            flops -= onload_flops_rows(m, x - page, x);
            bytes += page * m->row_bytes;
            double t = onload_time(m, r, bytes, flops);
            if (t <= best) {
                best = t;
                best_k = k;
                best_x = x;
            }
        }
    }
    for (int k = 0; k < best_k; k++)
        u[order[k]].onload = u[order[k]].host_rows;
    if (n > 0)
        u[order[best_k]].onload = best_x;
    return best;
}

void onload_fit_add(onload_fit *f, double x_raw, double ms, double decay)
{
    double x = x_raw * 1e-9;
    f->s0 = f->s0 * decay + 1;
    f->s1 = f->s1 * decay + x;
    f->s2 = f->s2 * decay + x * x;
    f->t1 = f->t1 * decay + ms;
    f->t2 = f->t2 * decay + x * ms;
}

bool onload_fit_get(const onload_fit *f, onload_rates *r)
{
    /* At least a few forwards, whose sizes spread by more than a tenth of
     * their root mean square (otherwise the slope is noise). */
    double det = f->s0 * f->s2 - f->s1 * f->s1;
    if (f->s0 < 4 || f->s2 <= 0 || det <= 0.01 * f->s0 * f->s2)
        return false;
    double slope = (f->s0 * f->t2 - f->s1 * f->t1) / det; /* ms per GFLOP */
    double fixed = (f->t1 - slope * f->s1) / f->s0;
    if (fixed < 0) { /* through the origin instead */
        fixed = 0;
        slope = f->t2 / f->s2;
    }
    if (!(slope > 0))
        return false;
    r->flops_per_ms = 1e9 / slope;
    r->fixed_ms = fixed;
    return true;
}

bool onload_fit_extra(const onload_fit *f, onload_rates *r)
{
    if (!(f->s0 > 0))
        return false;
    /* A slope only from onloads whose sizes spread by ONLOAD_EXTRA_SPREAD_GB
     * (a standard deviation): one fitted over a few MB of noise, carried to
     * a GB, would forbid every large onload, and a plan that never onloads
     * much never learns otherwise. */
    double a = f->t1 / f->s0, b = 0; /* the mean */
    double det = f->s0 * f->s2 - f->s1 * f->s1;
    if (f->s0 >= 4 && det >= ONLOAD_EXTRA_SPREAD_GB * ONLOAD_EXTRA_SPREAD_GB * f->s0 * f->s0) {
        double slope = (f->s0 * f->t2 - f->s1 * f->t1) / det;
        if (slope > 0) {
            b = slope;
            a = (f->t1 - slope * f->s1) / f->s0;
            if (a < 0) { /* through the origin instead */
                a = 0;
                b = f->t2 / f->s2;
            }
        }
    }
    r->extra_ms = a > 0 ? a : 0;
    r->extra_ms_per_gb = b > 0 ? b : 0;
    return true;
}

int onload_class(int batch)
{
    int c = 0;
    for (int n = 1; n < batch && c < ONLOAD_CLASSES - 1; n *= 2)
        c++;
    return c;
}

void onload_learner_init(onload_learner *l, const onload_model *m, const onload_rates *prior, bool fixed_link,
                         bool fixed_compute)
{
    *l = (onload_learner){.m = *m, .prior = *prior, .fixed_link = fixed_link, .fixed_compute = fixed_compute};
    l->prior.extra_ms = l->prior.extra_ms_per_gb = 0;
}

/* The extra's line through a ring of onload samples, each measured against
 * r's compute (newer ones weigh more); false when the ring is empty. */
static bool extra_from(const onload_learner *l, int k, onload_rates *r)
{
    int n = l->n_onloads[k] < ONLOAD_EXTRA_SAMPLES ? (int)l->n_onloads[k] : ONLOAD_EXTRA_SAMPLES;
    onload_rates bare = *r;
    bare.extra_ms = bare.extra_ms_per_gb = 0;
    onload_fit f = {0};
    for (int i = n; i >= 1; i--) { /* oldest first */
        const onload_sample *x = &l->onloads[k][(l->n_onloads[k] - i) % ONLOAD_EXTRA_SAMPLES];
        onload_fit_add(&f, x->bytes, x->ms - onload_time(&l->m, &bare, x->bytes, x->flops), 0.9);
    }
    return onload_fit_extra(&f, r);
}

onload_rates onload_learner_rates(const onload_learner *l, int batch)
{
    onload_rates r = l->prior;
    int c = onload_class(batch);
    if (!l->fixed_link && l->link_ms > 0)
        r.bytes_per_ms = l->link_bytes / l->link_ms;
    if (!l->fixed_compute && !onload_fit_get(&l->compute[c], &r))
        onload_fit_get(&l->compute[ONLOAD_CLASSES], &r);
    if (!extra_from(l, c, &r))
        extra_from(l, ONLOAD_CLASSES, &r);
    return r;
}

void onload_learner_add(onload_learner *l, int batch, double flops, double ms, double bytes, double copy_ms)
{
    int c = onload_class(batch);
    if (bytes > 0) {
        if (!l->fixed_link && bytes >= ONLOAD_LINK_MIN_BYTES && copy_ms > 0) {
            l->link_bytes = 0.9 * l->link_bytes + bytes;
            l->link_ms = 0.9 * l->link_ms + copy_ms;
        }
        const int ks[2] = {c, ONLOAD_CLASSES};
        for (int i = 0; i < 2; i++)
            l->onloads[ks[i]][l->n_onloads[ks[i]]++ % ONLOAD_EXTRA_SAMPLES] =
                (onload_sample){.bytes = bytes, .flops = flops, .ms = ms};
        return;
    }
    if (l->fixed_compute)
        return;
    onload_fit_add(&l->compute[c], flops, ms, 0.98);
    onload_fit_add(&l->compute[ONLOAD_CLASSES], flops, ms, 0.98);
}
