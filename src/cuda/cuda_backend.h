/* cuda_backend.h - the CUDA backend's C interface to the engine.
 *
 * The engine (src/model/engine.c) plans a sub-batch exactly as for the CPU
 * backends (user_plan: rows, cached prefix, pages) and hands it to
 * cuda_forward_run, which runs the whole forward on the GPU in bf16 with
 * fp32 accumulation and writes each user's results (scores / top-k) into
 * its hstu_result in host memory before returning.
 *
 * Memory plan: cuda_backend_create uploads the weights once (bf16; the
 * LayerNorm parameters, biases and rab tables may stay fp32) and allocates
 * activations for max_tokens rows and max_users users, plus pinned host
 * staging for per-batch metadata and results, plus the KV cache's device
 * page pool and host tier when the engine asks for them. cuda_forward_run
 * allocates nothing. The forward runs on the backend's compute stream (the
 * layers as CUDA graphs per bucket when enabled); the host tier's onload and
 * offload run on two side streams ordered against it by events.
 *
 * Without a GPU (or in a build without nvcc) create fails with
 * HSTU_ERR_UNSUPPORTED and a message that says why.
 */
#ifndef HSTU_CUDA_BACKEND_H
#define HSTU_CUDA_BACKEND_H

#include "hstu.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct user_plan;
typedef struct cuda_backend cuda_backend;

/* The KV cache's device side, sized by the engine from its options
 * (docs/kvcache.md). The bookkeeping (which page or slot holds what) stays
 * in the engine (kv_cache.h, host_tier.h); the backend owns the memory and
 * moves the data. */
typedef struct cuda_cache_desc {
    int n_pages;        /* device pool pages of page_elems bf16 (0: no cache) */
    int page_size;      /* P */
    size_t page_elems;  /* L * P * (H*Dqk + H*Dv) */
    int host_slots;     /* host tier chunk slots in pinned memory (0: no host tier) */
    int chunk_rows;     /* rows per chunk, a multiple of P */
    int max_pending;    /* offload queue: chunks in flight at most */
    bool layerwise;     /* onload layer by layer, layer l's attention waiting for
                         * layer l only (true), or every layer before the forward */
    /* CUDA graphs of the layer stack (docs/cuda.md): one graph per layer per
     * (batch, token) bucket, captured on first use; batches over the
     * largest bucket run eagerly. */
    bool graphs;
    int graph_max_tokens, graph_max_batch;
} cuda_cache_desc;

/* One page to bring up from the host tier: chunk slot, page index inside the
 * chunk, device page id. */
typedef struct cuda_onload {
    int slot, j, page;
} cuda_onload;

/* Per-forward cache inputs (host memory, read before cuda_forward_run returns). */
typedef struct cuda_batch_cache {
    const int *page_idx;          /* device page ids; plan b's from plans[b].page0 */
    int n_page_idx;
    const cuda_onload *onload;    /* pages of host hits, filled before their layer's attention */
    int n_onload;
    /* Host work to run while the GPU computes (the cache's commit hashes):
     * called once, after the launches and before the first wait for the
     * GPU, or not at all when the call fails first or has nothing to run. */
    void (*overlap)(void *arg);
    void *overlap_arg;
} cuda_batch_cache;

/* Transfer counters since create. */
typedef struct cuda_cache_counters {
    uint64_t onload_bytes, offload_bytes, offload_jobs;
    double onload_ms, offload_ms;
    double onload_issue_ms, offload_issue_ms; /* host time issuing those copies */
    uint64_t graph_runs, graph_captures, eager_runs, graph_layered_runs;
    int graphs_held;
    /* edges into the GEMMs made programmatic in the graphs captured so far
     * (HSTU_CUDA_PDL_GEMM) */
    uint64_t gemm_edges;
    /* Forwards that ran (T > 0), the host time inside cuda_forward_run and
     * the GPU time from its first copy to its last kernel (CUDA events):
     * their difference is host work the GPU waited for. */
    uint64_t forwards;
    double forward_ms, gpu_ms;
    double stage_ms; /* host time packing and sending the metadata (inside gpu_ms: the GPU waits for it) */
    double launch_ms; /* host time launching the layer stack (graphs or kernels) */
    /* GPU time from the embedding's start to the last layer's end: the HSTU
     * block as NVIDIA's paged benchmark times it (theirs starts from rows
     * already embedded) */
    double stack_ms;
} cuda_cache_counters;

/* True when this build has CUDA and a device is usable; otherwise writes
 * the reason (for test skips and error messages). */
bool cuda_available(char *why, size_t n);

hstu_status cuda_backend_create(const hstu_model *m, int max_tokens, int max_users, int max_pages,
                                const cuda_cache_desc *cache, cuda_backend **out, hstu_error *err);
void cuda_backend_destroy(cuda_backend *cb);
size_t cuda_backend_bytes(const cuda_backend *cb);

/* Runs plans[0..B). A plan with c > 0 reuses rows [0, c) from its pages
 * (filled by an earlier forward, or by this call's onload); rows
 * [c, paged) are computed and appended to their pages. kc may be NULL when
 * no plan has paged > 0. */
hstu_status cuda_forward_run(cuda_backend *cb, struct user_plan *plans, int B, bool logits,
                             const cuda_batch_cache *kc, hstu_error *err);

/* Starts the background copy of n_chunks chunks of one user from device
 * pages to host slots: pages[k * ppc .. (k + 1) * ppc) (ppc = chunk_rows / P)
 * go to slots[k]. It runs on a side stream after everything launched so
 * far on the compute stream. At most max_pending chunks in flight (the
 * engine's host tier guarantees it). */
hstu_status cuda_offload_submit(cuda_backend *cb, int64_t user, const int *pages, const int *slots, int n_chunks,
                                hstu_error *err);
/* Users whose offloads have landed, oldest first, into users[0..max)
 * (returns the count); with wait, waits for every offload in flight first. */
int cuda_offload_poll(cuda_backend *cb, int64_t *users, int max, bool wait);
void cuda_cache_get_counters(const cuda_backend *cb, cuda_cache_counters *c);
/* Rates measured at create when there is a host tier (0 otherwise): a
 * pinned host-to-device copy in GB/s, and the uvqk GEMM at max_tokens rows
 * in TFLOP/s. The priors of the engine's onload plan (hstu_onload). */
void cuda_backend_rates(const cuda_backend *cb, double *h2d_gbs, double *gemm_tflops);
/* The attention trace of HSTU_CUDA_ATTN_TRACE=l (layer l's CTAs' phase
 * stamps at the last forward, attention_cuda.h's layout): with h NULL its
 * length in values (0 when not tracing), else copies up to n into h and
 * returns how many. A diagnostic for the benchmarks. */
size_t cuda_backend_attn_trace(const cuda_backend *cb, unsigned long long *h, size_t n);
void cuda_backend_attn_trace_clear(cuda_backend *cb);

#ifdef __cplusplus
}
#endif
#endif
