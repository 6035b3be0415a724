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

/* The load that brings C (4 or 8) consecutive fp16 values: 8 or 16 bytes. */
template <int C> struct PartsPiece;
template <> struct PartsPiece<4> { typedef uint2 T; };
template <> struct PartsPiece<8> { typedef uint4 T; };

/* C (4 or 8) consecutive values of a row summed over planes 0..S-1 (S <=
 * SMAX <= ATTN_PARTS_MAX) in that order, in fp32, into a: p at the first
 * plane's values (2C-byte aligned), sc at the first plane's scale for them.
 * Every plane's load is issued before the first add; SMAX sizes the
 * registers that hold them, so a reader of few planes is instantiated for
 * few. Not yet divided by N. */
template <int C, int SMAX = ATTN_PARTS_MAX>
__device__ __forceinline__ void parts_sum(const __half *p, size_t plane, const float *sc, size_t scale_plane, int S,
                                          float (&a)[C])
{
    static_assert(SMAX >= 1 && SMAX <= ATTN_PARTS_MAX, "planes a reader adds");
    typedef typename PartsPiece<C>::T Piece;
    Piece pv[SMAX];
    float sv[SMAX];
#pragma unroll
    for (int z = 0; z < SMAX; z++)
        if (z < S) {
            pv[z] = *reinterpret_cast<const Piece *>(p + z * plane);
            sv[z] = sc[z * scale_plane];
        }
#pragma unroll
    for (int j = 0; j < C; j++)
        a[j] = 0.0f;
#pragma unroll
    for (int z = 0; z < SMAX; z++)
        if (z < S) {
            const __half2 *h = reinterpret_cast<const __half2 *>(&pv[z]);
#pragma unroll
            for (int k = 0; k < C / 2; k++) {
                const float2 f = __half22float2(h[k]);
                a[2 * k] += f.x * sv[z], a[2 * k + 1] += f.y * sv[z];
            }
        }
}

#endif
