/* loss.c - sampled softmax and binary cross-entropy with their gradients
 * (loss.h). Sums of the loss run in double; each row's softmax uses the
 * max-shifted logsumexp. */
#include "train/loss.h"

#include <math.h>
#include <stdbool.h>
#include <omp.h>

double tr_softmax_fwd_bwd(int R, int d, int K, const float *q, const float *unit, const int64_t *pos_ids,
                          const int64_t *neg_ids, float temperature, float scale, float *dq, float *coef)
{
    double total = 0;
    float inv_t = 1.0f / temperature;
#pragma omp parallel for schedule(static) reduction(+ : total) if (R >= 16)
    for (int r = 0; r < R; r++) {
        const float *qr = q + (size_t)r * d;
        float *c = coef + (size_t)r * (K + 1);
        const int64_t *neg = neg_ids + (size_t)r * K;
        float mx = -INFINITY;
        for (int k = 0; k <= K; k++) {
            int64_t id = k == 0 ? pos_ids[r] : neg[k - 1];
            float l;
            if (k > 0 && id == pos_ids[r]) {
                l = TR_SOFTMAX_MASKED;
            } else {
                const float *e = unit + (size_t)id * d;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int i = 0; i < d; i++)
                    dot += qr[i] * e[i];
                l = dot * inv_t;
            }
            c[k] = l;
            mx = fmaxf(mx, l);
        }
        double se = 0;
        for (int k = 0; k <= K; k++)
            se += exp((double)(c[k] - mx));
        double lse = mx + log(se);
        total += lse - c[0];
        float *g = dq + (size_t)r * d;
        for (int i = 0; i < d; i++)
            g[i] = 0.0f;
        for (int k = 0; k <= K; k++) {
            int64_t id = k == 0 ? pos_ids[r] : neg[k - 1];
            bool masked = k > 0 && id == pos_ids[r];
            float p = (float)exp((double)c[k] - lse);
            float dl = masked ? 0.0f : (p - (k == 0 ? 1.0f : 0.0f)) * scale * inv_t;
            c[k] = dl;
            if (dl != 0.0f) {
                const float *e = unit + (size_t)id * d;
#pragma omp simd
                for (int i = 0; i < d; i++)
                    g[i] += dl * e[i];
            }
        }
    }
    return total * scale;
}

void tr_softmax_scatter(int R, int d, int K, const float *q, const int64_t *pos_ids, const int64_t *neg_ids,
                        const float *coef, float *dunit)
{
#pragma omp parallel if ((size_t)R * K >= 4096)
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int c0 = (int)((long)d * t / nt), c1 = (int)((long)d * (t + 1) / nt);
        for (int r = 0; r < R; r++) {
            const float *qr = q + (size_t)r * d, *c = coef + (size_t)r * (K + 1);
            const int64_t *neg = neg_ids + (size_t)r * K;
            for (int k = 0; k <= K; k++) {
                float g = c[k];
                if (g == 0.0f)
                    continue;
                float *e = dunit + (size_t)(k == 0 ? pos_ids[r] : neg[k - 1]) * d;
                for (int i = c0; i < c1; i++)
                    e[i] += g * qr[i];
            }
        }
    }
}

double tr_bce_fwd_bwd(size_t n, const float *x, const float *labels, float scale, float *dx)
{
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        float v = x[i], y = labels[i];
        /* softplus(v) - y v, stable for large |v| */
        double sp = v > 0 ? v + log1p(exp(-(double)v)) : log1p(exp((double)v));
        total += sp - (double)y * v;
        float s = 1.0f / (1.0f + expf(-v));
        dx[i] = scale * (s - y);
    }
    return total * scale;
}
