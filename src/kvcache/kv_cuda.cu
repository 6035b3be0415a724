/* kv_cuda.cu - block copies of the GPU KV cache (kv_cuda.h); the append of
 * new rows runs in the layer's bias+SiLU pass (bias_silu_cuda). */
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
