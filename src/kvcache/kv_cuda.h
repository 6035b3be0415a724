/* kv_cuda.h - the GPU KV cache's data movement (spec/kvcache.md): the
 * page-block copies of the host tier (onload: host chunk -> device pages;
 * offload: the reverse). The append of new history rows' K/V into their
 * pages is part of the layer's bias+SiLU pass (bias_silu_cuda, dense_cuda.h).
 *
 * Page layout (kv_cache.h), in bf16 elements: page p at pool + p *
 * page_elems; layer l's block at + l * P * (kw + vw): P rows of K (kw wide)
 * then P rows of V (vw wide). The K|V block of one layer of one page is
 * therefore contiguous (blk = P * (kw + vw) elements), and the host tier
 * stores a chunk as its pages are on the device ([page of chunk][layer][blk]),
 * so every copy is a whole block or page. Host memory is pinned and mapped
 * (cudaMallocHost under unified addressing): the copy kernels read or write
 * it directly over PCIe, which lets one launch move any number of scattered
 * pages. The backend moves them by the copy engines by default
 * (cudaMemcpyBatchAsync); these kernels are its HSTU_CUDA_ONLOAD=kernel and
 * HSTU_CUDA_OFFLOAD=kernel paths.
 *
 * Each call launches on `stream` and returns a cudaError_t (0 = launched).
 */
#ifndef HSTU_KVCACHE_KV_CUDA_H
#define HSTU_KVCACHE_KV_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One block copy: byte addresses of layer 0's block on each side. */
typedef struct kv_copy {
    uint64_t src, dst;
} kv_copy;

/* For i < n and layer l in [l0, l0 + nl): copies `bytes` (a multiple of 16,
 * 16-byte aligned addresses) from copies[i].src + l * src_lstride to
 * copies[i].dst + l * dst_lstride. copies is device-readable. */
int kv_copy_cuda(const kv_copy *copies, int n, size_t bytes, size_t src_lstride, size_t dst_lstride, int l0,
                 int nl, void *stream);

#ifdef __cplusplus
}
#endif
#endif
