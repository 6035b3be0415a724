/* adamw.c - AdamW, PyTorch's formulation (adamw.h). */
#include "train/adamw.h"

#include <math.h>

void adamw_options_default(adamw_options *o)
{
    o->lr = 1e-3f;
    o->beta1 = 0.9f;
    o->beta2 = 0.98f;
    o->eps = 1e-8f;
    o->weight_decay = 0.0f;
}

void adamw_step(const adamw_options *o, int64_t t, size_t n, float *p, const float *g, float *m, float *v)
{
    double bc1 = 1.0 - pow(o->beta1, (double)t), bc2 = 1.0 - pow(o->beta2, (double)t);
    float step = (float)(o->lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    float decay = 1.0f - o->lr * o->weight_decay, b1 = o->beta1, b2 = o->beta2, eps = o->eps;
#pragma omp parallel for simd schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}
