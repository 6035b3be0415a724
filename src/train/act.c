/* act.c - SiLU, ReLU and inverted dropout, forward and backward (ops.h).
 *
 * Dropout draws no random stream: element i of a site is kept when a
 * splitmix64 hash of (key, i) falls above the rate, so the backward
 * recomputes the same mask and any thread may handle any element.
 */
#include "train/ops.h"

#include "core/rng.h"

#include <math.h>

static inline float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

void tr_silu_fwd(int rows, int width, int silu_cols, const float *z, float *y)
{
#pragma omp parallel for schedule(static) if (rows >= 64)
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * width;
        float *yr = y + (size_t)r * width;
#pragma omp simd
        for (int c = 0; c < silu_cols; c++)
            yr[c] = zr[c] * sigmoidf(zr[c]);
        for (int c = silu_cols; c < width; c++)
            yr[c] = zr[c];
    }
}

void tr_silu_bwd(int rows, int width, int silu_cols, const float *z, const float *dy, float *dz)
{
#pragma omp parallel for schedule(static) if (rows >= 64)
    for (int r = 0; r < rows; r++) {
        const float *zr = z + (size_t)r * width, *g = dy + (size_t)r * width;
        float *o = dz + (size_t)r * width;
#pragma omp simd
        for (int c = 0; c < silu_cols; c++) {
            float s = sigmoidf(zr[c]);
            o[c] = g[c] * s * (1.0f + zr[c] * (1.0f - s));
        }
        if (o != g)
            for (int c = silu_cols; c < width; c++)
                o[c] = g[c];
    }
}

void tr_relu_fwd(size_t n, float *x)
{
#pragma omp parallel for simd schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void tr_relu_bwd(size_t n, const float *y, float *dy)
{
#pragma omp parallel for simd schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++)
        dy[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

uint64_t tr_dropout_key(uint64_t seed, uint64_t step, int layer, int site)
{
    uint64_t k = rng_mix64(seed + 0x9e3779b97f4a7c15ull);
    k = rng_mix64(k ^ (step + 1) * 0xd1b54a32d192ed03ull);
    return rng_mix64(k ^ ((uint64_t)(layer + 1) << 8 | (uint64_t)site));
}

void tr_dropout(size_t n, float rate, uint64_t key, float *x)
{
    if (rate <= 0.0f)
        return;
    /* keep when the hash's top 32 bits >= rate * 2^32 */
    uint64_t cut = (uint64_t)((double)rate * 4294967296.0);
    float scale = 1.0f / (1.0f - rate);
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) {
        uint64_t h = rng_mix64(key + i * 0x9e3779b97f4a7c15ull) >> 32;
        x[i] = h >= cut ? x[i] * scale : 0.0f;
    }
}
