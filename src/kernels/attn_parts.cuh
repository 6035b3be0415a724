/* attn_parts.cuh - the format of the attention's split-KV parts in global
 * memory (attention_cuda.h, attn_cuda_params.parts), both sides of it: the
 * writer's power of two per row and head (attention.cu) and the reader's
 * sum over the planes (attention.cu's attn_parts_sum_cuda, dense.cu's
 * ln_mul_parts_cuda), so that every reader adds them the same way. */
#ifndef HSTU_KERNELS_ATTN_PARTS_CUH
#define HSTU_KERNELS_ATTN_PARTS_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#define ATTN_PARTS_MAX 16 /* planes a reader adds (ATTN_CUDA_MAX_PART_SPLITS, LN_MUL_PARTS_MAX) */

/* The exponent e that puts m (> 0, finite) in [2^14, 2^15), within fp32's
 * normal exponents; 0 for 0, Inf or NaN (they pass as they are). */
__device__ __forceinline__ int parts_exp(float m)
{
    if (!(m > 0.0f) || !(m < 3.0e38f))
        return 0;
    const int ex = ((__float_as_int(m) >> 23) & 255) - 127; /* floor(log2 m) for normal m */
    const int e = 14 - (ex < -126 ? -126 : ex);
    return e > 126 ? 126 : e < -126 ? -126 : e;
}

/* 2^e for e in [-126, 127], exactly. */
__device__ __forceinline__ float pow2f(int e) { return __int_as_float((e + 127) << 23); }

/* Four consecutive values of a row summed over planes 0..S-1 (S <=
 * ATTN_PARTS_MAX) in that order, in fp32: p at the first plane's values
 * (8-byte aligned), sc at the first plane's scale for them. Every plane's
 * load is issued before the first add. Not yet divided by N. */
__device__ __forceinline__ float4 parts_sum4(const __half *p, size_t plane, const float *sc, size_t scale_plane,
                                             int S)
{
    uint2 pv[ATTN_PARTS_MAX];
    float sv[ATTN_PARTS_MAX];
#pragma unroll
    for (int z = 0; z < ATTN_PARTS_MAX; z++)
        if (z < S) {
            pv[z] = *reinterpret_cast<const uint2 *>(p + z * plane);
            sv[z] = sc[z * scale_plane];
        }
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int z = 0; z < ATTN_PARTS_MAX; z++)
        if (z < S) {
            const float2 lo = __half22float2(*reinterpret_cast<const __half2 *>(&pv[z].x));
            const float2 hi = __half22float2(*reinterpret_cast<const __half2 *>(&pv[z].y));
            a.x += lo.x * sv[z], a.y += lo.y * sv[z], a.z += hi.x * sv[z], a.w += hi.y * sv[z];
        }
    return a;
}

/* Eight consecutive values of a row summed over planes 0..S-1 as
 * parts_sum4 adds four (the same products, the same order), into a: p at
 * the first plane's values (16-byte aligned), S <= SMAX <= ATTN_PARTS_MAX.
 * SMAX sizes the registers that hold the loads in flight, so a reader of
 * few planes is instantiated for few. */
template <int SMAX>
__device__ __forceinline__ void parts_sum8(const __half *p, size_t plane, const float *sc, size_t scale_plane, int S,
                                           float (&a)[8])
{
    static_assert(SMAX >= 1 && SMAX <= ATTN_PARTS_MAX, "planes a reader adds");
    uint4 pv[SMAX];
    float sv[SMAX];
#pragma unroll
    for (int z = 0; z < SMAX; z++)
        if (z < S) {
            pv[z] = *reinterpret_cast<const uint4 *>(p + z * plane);
            sv[z] = sc[z * scale_plane];
        }
#pragma unroll
    for (int j = 0; j < 8; j++)
        a[j] = 0.0f;
#pragma unroll
    for (int z = 0; z < SMAX; z++)
        if (z < S) {
            const uint32_t w[4] = {pv[z].x, pv[z].y, pv[z].z, pv[z].w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float2 f = __half22float2(*reinterpret_cast<const __half2 *>(&w[k]));
                a[2 * k] += f.x * sv[z], a[2 * k + 1] += f.y * sv[z];
            }
        }
}

#endif
