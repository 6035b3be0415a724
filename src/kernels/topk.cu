/* topk.cu - exact top-k selection over score rows (see topk_cuda.h).
 *
 * One block of 1024 threads per user:
 *   1. id 0 and the user's excluded ids are set to -inf in its score row
 *      (every writer writes the same value, so duplicates are harmless);
 *   2. radix select: scores map to order-preserving 32-bit keys; four passes
 *      of 8 bits, each a 256-bin histogram of the keys that match the digits
 *      chosen so far, find the key of the k-th best eligible item (-inf is
 *      not eligible: real scores of unit vectors are finite). The first pass
 *      also counts the eligible items; when k covers them all, every one is
 *      taken and the passes stop;
 *   3. one pass in id order collects every item above that key (any order)
 *      and, through a block-wide prefix count, the `need` smallest ids equal
 *      to it: the ties the spec breaks toward the smaller id;
 *   4. when k <= TOPK_CUDA_SORT_MAX, a bitonic sort in shared memory of
 *      (key, ~id) pairs orders them: score descending, then id ascending.
 * Histogram increments are aggregated per warp (__match_any_sync): scores of
 * one user share few leading bytes, and plain shared atomics would
 * serialise on those bins. Launched with programmatic dependent launch
 * (pdl.cuh): the kernel waits for the scores GEMM before anything else.
 */
#include "kernels/topk_cuda.h"
#include "kernels/pdl.cuh"

#include <cub/block/block_scan.cuh>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#define THREADS 1024
#define KEY_EXCLUDED 0x007fffffu /* the key of -inf: below every finite score */

/* Order-preserving map float -> uint32 (larger float, larger key); -0 is 0. */
__device__ __forceinline__ uint32_t score_key(float f)
{
    uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_score(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__global__ void __launch_bounds__(THREADS) topk_kernel(topk_cuda_params p)
{
    typedef cub::BlockScan<int, THREADS> scan_t;
    __shared__ typename scan_t::TempStorage scan_tmp;
    __shared__ unsigned hist[256];
    __shared__ uint32_t s_prefix, s_mask;
    __shared__ int s_remaining, s_keff, s_take_all, s_gt, s_eq_base;
    __shared__ unsigned long long sorted[TOPK_CUDA_SORT_MAX];

    pdl_wait(); /* the scores and the exclusion lists come from earlier work in the stream */
    pdl_trigger();
    const int b = blockIdx.x, tid = threadIdx.x, lane = tid % 32;
    const int n = p.n_items;
    float *row = p.scores + (size_t)b * p.ld;

    /* 1. exclusions */
    if (tid == 0)
        row[0] = -INFINITY;
    for (int i = p.excl_begin[b] + tid; i < p.excl_end[b]; i += THREADS) {
        int id = p.exclude[i];
        if (id >= 0 && id < n)
            row[id] = -INFINITY;
    }
    if (tid == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_remaining = p.k[b];
        s_take_all = 0;
        s_gt = 0;
        s_eq_base = 0;
    }
    __syncthreads();

    /* 2. radix select */
    for (int pass = 0; pass < 4; pass++) {
        int shift = 24 - 8 * pass;
        for (int i = tid; i < 256; i += THREADS)
            hist[i] = 0;
        __syncthreads();
        uint32_t prefix = s_prefix, mask = s_mask;
        for (int base = 0; base < n; base += THREADS) {
            int j = base + tid;
            uint32_t key = j < n ? score_key(row[j]) : 0;
            bool in = j < n && key > KEY_EXCLUDED && (key & mask) == prefix;
            unsigned digit = in ? (key >> shift) & 255u : 256u + lane; /* out-of-set lanes never match */
            unsigned peers = __match_any_sync(0xffffffffu, digit);
            if (in && (__ffs(peers) - 1) == lane)
                atomicAdd(&hist[digit], (unsigned)__popc(peers));
        }
        __syncthreads();
        if (tid == 0) {
            if (pass == 0) {
                unsigned eligible = 0;
                for (int i = 0; i < 256; i++)
                    eligible += hist[i];
                int k = s_remaining < 0 ? 0 : s_remaining;
                if ((unsigned)k >= eligible) {
                    k = (int)eligible;
                    s_take_all = 1;
                }
                s_keff = k;
                s_remaining = k;
            }
            if (!s_take_all && s_remaining > 0) {
                unsigned cum = 0;
                int bin = 255;
                for (; bin > 0; bin--) {
                    if (cum + hist[bin] >= (unsigned)s_remaining)
                        break;
                    cum += hist[bin];
                }
                s_remaining -= (int)cum;
                s_prefix |= (uint32_t)bin << shift;
                s_mask |= 255u << shift;
            }
        }
        __syncthreads();
        if (s_take_all || s_keff == 0)
            break;
    }

    /* 3. collect: keys above the threshold, then the `need` smallest ids equal to it */
    const int keff = s_keff;
    const uint32_t thr = s_take_all ? KEY_EXCLUDED : s_prefix;
    const int need = s_take_all ? 0 : s_remaining;
    const int n_gt = keff - need; /* slots [0, n_gt) for keys above, [n_gt, keff) for ties */
    int *ids = p.ids + p.out_off[b];
    float *vals = p.vals + p.out_off[b];
    if (keff > 0) {
        for (int base = 0; base < n; base += THREADS) {
            int j = base + tid;
            uint32_t key = j < n ? score_key(row[j]) : 0;
            if (j < n && key > thr) {
                int slot = atomicAdd(&s_gt, 1);
                ids[slot] = j;
                vals[slot] = row[j];
            }
            if (need > 0) {
                int eq = j < n && key == thr, rank, total;
                scan_t(scan_tmp).ExclusiveSum(eq, rank, total);
                int eq_base = s_eq_base;
                if (eq && eq_base + rank < need) {
                    ids[n_gt + eq_base + rank] = j;
                    vals[n_gt + eq_base + rank] = row[j];
                }
                __syncthreads(); /* everyone has read s_eq_base and scan_tmp */
                if (tid == 0)
                    s_eq_base = eq_base + total;
                __syncthreads();
            }
        }
    }
    if (tid == 0)
        p.n_out[b] = keff;
    if (keff <= 1 || keff > TOPK_CUDA_SORT_MAX)
        return;
    __syncthreads(); /* the collected results are visible to the block */

    /* 4. bitonic sort, descending on (key, ~id): score down, then id up */
    int P = 1;
    while (P < keff)
        P *= 2;
    for (int i = tid; i < P; i += THREADS)
        sorted[i] = i < keff ? ((unsigned long long)score_key(vals[i]) << 32) | (0xffffffffu - (uint32_t)ids[i])
                             : 0ull;
    __syncthreads();
    for (int size = 2; size <= P; size *= 2)
        for (int stride = size / 2; stride > 0; stride /= 2) {
            for (int i = tid; i < P; i += THREADS) {
                int j = i ^ stride;
                if (j > i) {
                    unsigned long long a = sorted[i], c = sorted[j];
                    bool desc = (i & size) == 0;
                    if ((a < c) == desc) {
                        sorted[i] = c;
                        sorted[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    for (int i = tid; i < keff; i += THREADS) {
        unsigned long long v = sorted[i];
        ids[i] = (int)(0xffffffffu - (uint32_t)(v & 0xffffffffu));
        vals[i] = key_score((uint32_t)(v >> 32));
    }
}

extern "C" int topk_cuda(const topk_cuda_params *p, void *stream)
{
    if (p->B <= 0)
        return 0;
    return (int)pdl_launch(topk_kernel, dim3((unsigned)p->B), dim3(THREADS), 0, (cudaStream_t)stream, *p);
}

/* ---- host sort for long results ---------------------------------------- */

/* True when result a ranks after result b (lower score, or same and larger id). */
static int ranks_after(const float *vals, const int *ids, int a, int b)
{
    return vals[a] < vals[b] || (vals[a] == vals[b] && ids[a] > ids[b]);
}

static void swap_result(int *ids, float *vals, int a, int b)
{
    int ti = ids[a];
    float tv = vals[a];
    ids[a] = ids[b], vals[a] = vals[b];
    ids[b] = ti, vals[b] = tv;
}

static void sift_down(int *ids, float *vals, int root, int n)
{
    for (;;) {
        int child = 2 * root + 1;
        if (child >= n)
            return;
        /* a min-heap in rank order: the root ranks last, so it goes to the back */
        if (child + 1 < n && ranks_after(vals, ids, child + 1, child))
            child++;
        if (!ranks_after(vals, ids, child, root))
            return;
        swap_result(ids, vals, root, child);
        root = child;
    }
}

/* Heapsort in place: no allocation on the request path. */
extern "C" void topk_cuda_sort_host(int *ids, float *vals, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--)
        sift_down(ids, vals, i, n);
    for (int end = n - 1; end > 0; end--) {
        swap_result(ids, vals, 0, end);
        sift_down(ids, vals, 0, end);
    }
}
