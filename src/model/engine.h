/* engine.h - the engine's internals: workspace, batch plan, forward pass.
 *
 * hstu_engine_run (engine.c) checks a batch, splits it into sub-batches that
 * fit the workspace, plans each user against the KV cache (cached rows c,
 * rows kept in pages after this call), and hands the plan to forward_run
 * (forward.c), which computes only the rows after the cached prefix.
 */
#ifndef HSTU_MODEL_ENGINE_H
#define HSTU_MODEL_ENGINE_H

#include "hstu.h"
#include "cuda/cuda_backend.h"
#include "kernels/ops.h"
#include "kvcache/host_tier.h"
#include "kvcache/kv_cache.h"
#include "kvcache/onload_plan.h"
#include "model/model.h"

/* Users per sub-batch; larger batches are split. */
#define ENGINE_MAX_USERS 1024

/* One user's plan for this call (absolute row numbers of its sequence). */
typedef struct user_plan {
    const hstu_request *req;
    hstu_result *res;
    int hist;       /* history rows h */
    int cand;       /* candidate rows m */
    int cacheable;  /* history rows whose K/V may be cached */
    int c;          /* rows reused from the cache (not computed) */
    int paged;      /* rows held in pages during this call (c <= paged <= cacheable) */
    int q0;         /* first dense row of this user's computed rows */
    int key0;       /* offset of this user's row keys in the keys scratch */
    int page0;      /* offset of this user's page pointers */
    int host;       /* rows brought up from the host tier in this call (0, or c on a host hit) */
    int host_found; /* rows the host tier held (a host hit: host may be fewer, hstu_onload) */
    uint64_t commit_hash; /* kv_hash_keys of rows [0, paged), made while the GPU runs */
    /* A deferred prefix check (hstu_prefix_check): the keys are made while
     * the GPU runs (keys_later), and a hit's hash of its c cached rows'
     * keys compared with the entry's (check_later: prefix_hash, prefix_ok). */
    bool keys_later, check_later, prefix_ok;
    uint64_t prefix_hash;
} user_plan;

struct hstu_engine {
    const hstu_model *model;
    hstu_engine_options opt;
    const hstu_ops *ops;   /* CPU backends: the kernel table (NULL for cuda) */
    cuda_backend *cuda;    /* the CUDA backend (NULL for CPU backends) */
    kv_cache *kv;          /* NULL without cache */
    host_tier *ht;         /* the host tier (CUDA backend with host_cache_bytes); NULL otherwise */
    int max_tokens;        /* workspace rows */
    int max_pages;         /* page pointers per sub-batch */
    bool defer_check;      /* prefix checks while the GPU runs (hstu_prefix_check) */

    /* Workspace (one allocation), rows = max_tokens. The activation buffers
     * (x .. users) exist only for CPU backends. */
    float *x;              /* [T, d] residual stream */
    float *xn;             /* [T, d] LN(x) */
    float *uvqk;           /* [T, W] u|v|q|k */
    float *attn;           /* [T, H*Dv] attention output */
    float *y;              /* [T, H*Dv] u * LN(attn) */
    float *head_a, *head_b;/* [T, head_width] MLP ping-pong */
    float *topk_scratch;   /* [ENGINE_MAX_USERS * TOPK_CHUNK] (retrieval) */
    float *users;          /* [ENGINE_MAX_USERS, d] (retrieval) */
    uint64_t *keys;        /* [T] row keys for the prefix hash */
    int64_t *exclude;      /* [T] sorted history ids (retrieval) */
    int *page_idx;         /* [max_pages] */
    float **page_ptr;      /* [max_pages] */
    user_plan *plans;      /* [ENGINE_MAX_USERS] */
    attn_seq *seqs;        /* [ENGINE_MAX_USERS] */
    cuda_onload *onload;   /* [max_pages] host-hit pages of a sub-batch (host tier) */
    int *off_slots;        /* [max chunks of one user] offload scratch */
    int64_t *done_users;   /* [offload_queue] users whose offload landed */
    /* hstu_onload (host tier): the cost model, the rates it learns from
     * the forwards, the users of the last batch planned (0: none yet; the
     * statistics report that class's rates), scratch */
    onload_model om;
    onload_learner learner;
    int last_batch;
    onload_user *on_users; /* [ENGINE_MAX_USERS] */
    int *on_order;         /* [ENGINE_MAX_USERS] */
    void *arena;
    size_t arena_bytes;

    hstu_cache_stats stats;
};

/* Computes the sub-batch plans[0..B) (c, paged, q0, pages set) and writes
 * results. Allocates nothing. */
void forward_run(hstu_engine *e, user_plan *plans, int B, bool logits);

/* For benchmarks and tests, between runs: keep only the first device_rows
 * cached rows of this request's user on the device and host_rows on the
 * host (0 drops the entry; neither may exceed what is cached; the request
 * gives the keys). Waits for the offloads in flight first. */
void engine_cache_set(hstu_engine *e, const hstu_request *r, int device_rows, int host_rows);

/* The keys of a request's first n cacheable rows (what each row's K/V
 * depend on beyond earlier rows), into keys[0..n). */
void forward_row_keys(const hstu_config *cfg, const hstu_request *r, int n, uint64_t *keys);

#endif
