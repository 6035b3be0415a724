/* kv_cuda.cu - append and block copies of the GPU KV cache (kv_cuda.h). */
#include "kvcache/kv_cuda.h"

#include <cuda_runtime.h>

/* One CTA per (copy, layer); 16 bytes per thread per step. */
__global__ void kv_copy_kernel(const kv_copy *copies, size_t bytes, size_t src_lstride, size_t dst_lstride, int l0)
{
    const kv_copy c = copies[blockIdx.x];
    const size_t l = (size_t)(l0 + (int)blockIdx.y);
    const uint4 *src = reinterpret_cast<const uint4 *>(c.src + l * src_lstride);
    uint4 *dst = reinterpret_cast<uint4 *>(c.dst + l * dst_lstride);
    const size_t n = bytes / 16;
    size_t i = threadIdx.x;
    /* Four loads in flight per thread: host memory is far away. */
    for (; i + 3 * blockDim.x < n; i += 4 * blockDim.x) {
        uint4 a = src[i], b = src[i + blockDim.x], d = src[i + 2 * blockDim.x], e = src[i + 3 * blockDim.x];
        dst[i] = a;
        dst[i + blockDim.x] = b;
        dst[i + 2 * blockDim.x] = d;
        dst[i + 3 * blockDim.x] = e;
    }
    for (; i < n; i += blockDim.x)
        dst[i] = src[i];
}

extern "C" int kv_copy_cuda(const kv_copy *copies, int n, size_t bytes, size_t src_lstride, size_t dst_lstride,
                            int l0, int nl, void *stream)
{
    if (n <= 0 || nl <= 0 || bytes == 0)
        return 0;
    if (bytes % 16 || src_lstride % 16 || dst_lstride % 16 || nl > 65535)
        return (int)cudaErrorInvalidValue;
    kv_copy_kernel<<<dim3((unsigned)n, (unsigned)nl), 256, 0, (cudaStream_t)stream>>>(copies, bytes, src_lstride,
                                                                                     dst_lstride, l0);
    return (int)cudaGetLastError();
}

/* One thread per 16-byte chunk of a row's K|V: a few new rows still spread
 * over the whole GPU, and each thread has one load in flight (a warp per
 * row looped over its chunks, a load's latency each, 7 us for 128 rows). */
__global__ void kv_append_kernel(int n, const int *rows, const int64_t *slots, const uint16_t *uvqk, int ld,
                                 int k_col, int v_col, int kw, int vw, uint16_t *pool, size_t page_elems, int P,
                                 size_t k_off, size_t v_off)
{
    const int kc = kw / 8, cpr = kc + vw / 8;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * cpr)
        return;
    const int i = (int)(t / cpr), c = (int)(t - (long long)i * cpr);
    const int64_t s = slots[i];
    if (s < 0)
        return; /* padding (a CUDA graph's fixed-size list) */
    const uint16_t *row = uvqk + (size_t)rows[i] * ld;
    const int64_t page = s / P, slot = s - page * P;
    uint16_t *base = pool + (size_t)page * page_elems;
    if (c < kc)
        reinterpret_cast<uint4 *>(base + k_off + (size_t)slot * kw)[c] =
            reinterpret_cast<const uint4 *>(row + k_col)[c];
    else
        reinterpret_cast<uint4 *>(base + v_off + (size_t)slot * vw)[c - kc] =
            reinterpret_cast<const uint4 *>(row + v_col)[c - kc];
}

extern "C" int kv_append_cuda(int n, const int *rows, const int64_t *slots, const uint16_t *uvqk, int ld, int k_col,
                              int v_col, int kw, int vw, uint16_t *pool, size_t page_elems, int P, size_t k_off,
                              size_t v_off, void *stream)
{
    if (n <= 0)
        return 0;
    if (kw % 8 || vw % 8 || ld % 8 || k_col % 8 || v_col % 8 || page_elems % 8 || k_off % 8 || v_off % 8)
        return (int)cudaErrorInvalidValue;
    const long long chunks = (long long)n * ((kw + vw) / 8);
    kv_append_kernel<<<(unsigned)((chunks + 255) / 256), 256, 0, (cudaStream_t)stream>>>(
        n, rows, slots, uvqk, ld, k_col, v_col, kw, vw, pool, page_elems, P, k_off, v_off);
    return (int)cudaGetLastError();
}
