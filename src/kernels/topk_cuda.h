/* topk_cuda.h - exact top-k selection over score rows on NVIDIA GPUs.
 *
 * The selection half of retrieval's top-k (spec 1.2): the scores of every
 * item for each user are already in device memory (one cuBLASLt GEMM of the
 * normalised user rows against the normalised item table); topk_cuda picks,
 * for each user b, the k[b] best items by score descending, ties toward the
 * smaller id, never id 0 and never an id in the user's exclusion list. Exact:
 * a radix select finds the k-th score, then one ordered pass collects every
 * item above it and the smallest ids among those equal to it. One block per
 * user. Results of at most TOPK_CUDA_SORT_MAX items are sorted on the GPU;
 * longer ones come back unsorted and the caller sorts them on the host
 * (topk_cuda_sort_host), since a k that large is rare and its copy dominates.
 *
 * All pointers are device memory except where said. Launches on `stream`
 * and returns a cudaError_t (0 = launched); with programmatic dependent
 * launch on (pdl_cuda.h) the kernel may start before the previous one in
 * the stream ends, and waits for it before touching memory.
 */
#ifndef HSTU_KERNELS_TOPK_CUDA_H
#define HSTU_KERNELS_TOPK_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

#define TOPK_CUDA_SORT_MAX 2048

typedef struct topk_cuda_params {
    int B;
    int n_items;           /* columns of scores (ids 0 .. n_items-1) */
    int ld;                /* row stride of scores (>= n_items) */
    float *scores;         /* [B, ld] fp32; id 0 and excluded ids are overwritten with -inf */
    const int *exclude;    /* ids to exclude (duplicates and out-of-range values allowed) */
    const int *excl_begin; /* [B]: user b excludes exclude[excl_begin[b] .. excl_end[b]) */
    const int *excl_end;   /* [B] */
    const int *k;          /* [B] wanted, 0 <= k[b] */
    const int *out_off;    /* [B] offset of user b's results in ids / vals */
    int *ids;              /* out: k[b] slots per user */
    float *vals;           /* out: k[b] slots per user */
    int *n_out;            /* out [B]: min(k[b], eligible items) */
} topk_cuda_params;

int topk_cuda(const topk_cuda_params *p, void *stream);

/* Host memory: sorts n results by score descending, ties to the smaller id. */
void topk_cuda_sort_host(int *ids, float *vals, int n);

#ifdef __cplusplus
}
#endif
#endif
