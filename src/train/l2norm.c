/* l2norm.c - row L2 normalisation x / max(||x||, 1e-6) and its backward
 * (ops.h). The clamp's constant is the spec's (1.2) and the paper code's
 * l2_norm_eps; below it the map is x / 1e-6, a plain scale. */
#include "train/ops.h"

#include <math.h>

#define L2_EPS 1e-6f

void tr_l2norm_fwd(int rows, int width, const float *x, int ldx, float *y, int ldy, float *norm)
{
#pragma omp parallel for schedule(static) if (rows >= 64)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        double ss = 0;
        for (int i = 0; i < width; i++)
            ss += (double)xr[i] * xr[i];
        float nrm = (float)sqrt(ss);
        norm[r] = nrm;
        float inv = 1.0f / fmaxf(nrm, L2_EPS);
        for (int i = 0; i < width; i++)
            yr[i] = xr[i] * inv;
    }
}

void tr_l2norm_bwd(int rows, int width, const float *y, int ldy, const float *norm, const float *dy,
                   int lddy, float *dx, int lddx, bool accum)
{
#pragma omp parallel for schedule(static) if (rows >= 64)
    for (int r = 0; r < rows; r++) {
        const float *yr = y + (size_t)r * ldy, *g = dy + (size_t)r * lddy;
        float *o = dx + (size_t)r * lddx;
        float dot = 0.0f;
        bool clamped = !(norm[r] > L2_EPS);
        if (!clamped)
            for (int i = 0; i < width; i++)
                dot += yr[i] * g[i];
        float inv = 1.0f / fmaxf(norm[r], L2_EPS);
        for (int i = 0; i < width; i++) {
            float v = (g[i] - yr[i] * dot) * inv;
            o[i] = accum ? o[i] + v : v;
        }
    }
}
