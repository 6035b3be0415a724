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
    return (onload > compute ? onload : compute) + r->onload_extra_ms;
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

void onload_fit_add(onload_fit *f, double flops, double ms, double decay)
{
    double x = flops * 1e-9;
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
