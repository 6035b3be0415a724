/* hstu.h - the public C API of the hstu inference engine.
 *
 * An HSTU model (config + weights) is loaded once; an engine binds it to a
 * backend (plain reference loops, fast CPU, later CUDA), a per-user KV cache
 * and a workspace sized for the largest batch. Requests are jagged: each user
 * brings its whole history; the engine reuses cached K/V of the history
 * prefix it has seen before and computes only the new rows.
 *
 * Errors: every fallible call returns an hstu_status and, when err is not
 * NULL, fills err->msg with a sentence that says what was wrong and where.
 * Tools and the server include only this header.
 */
#ifndef HSTU_H
#define HSTU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status and errors ------------------------------------------------ */

typedef enum hstu_status {
    HSTU_OK = 0,
    HSTU_ERR_ARG,          /* a bad argument or request field */
    HSTU_ERR_IO,           /* a file could not be opened, read or written */
    HSTU_ERR_FORMAT,       /* a config or checkpoint is malformed */
    HSTU_ERR_NOMEM,        /* an allocation failed */
    HSTU_ERR_UNSUPPORTED,  /* a valid input this build cannot run */
    HSTU_ERR_DEVICE,       /* a GPU runtime call failed (launch, copy, sync); the
                            * message names the step and the CUDA error */
} hstu_status;

#define HSTU_MSG_MAX 512

typedef struct hstu_error {
    hstu_status status;
    char msg[HSTU_MSG_MAX];
} hstu_error;

const char *hstu_status_name(hstu_status s);

/* ---- process setup ----------------------------------------------------- */

/* Call first in main(argv). Sets OMP_WAIT_POLICY=passive (unless the user
 * set a policy) and re-executes the program once, since libgomp reads it
 * when it loads. HSTU_RUNTIME_SET=1 skips it. */
void hstu_runtime_init(char **argv);

/* ---- configuration (spec/model.md section 2) -------------------------- */

typedef enum hstu_family { HSTU_FAMILY_RANKING = 0, HSTU_FAMILY_RETRIEVAL } hstu_family;
typedef enum hstu_silu { HSTU_SILU_ALL = 0, HSTU_SILU_U } hstu_silu;
typedef enum hstu_rab { HSTU_RAB_NONE = 0, HSTU_RAB_POS_TIME } hstu_rab;

#define HSTU_MAX_CONTEXT 64  /* contextual feature tables */
#define HSTU_MAX_HIDDEN 16   /* hidden layers of the ranking head MLP */
#define HSTU_MAX_TASKS 64
#define HSTU_NAME_MAX 32

typedef struct hstu_config {
    hstu_family family;
    int d_model;          /* d */
    int n_layers;         /* L */
    int n_heads;          /* H */
    int d_qk;             /* Dqk per head */
    int d_v;              /* Dv per head */
    int attn_scale_len;   /* N: the constant divisor of attention scores */
    int max_positions;    /* rows of the position table */
    int64_t item_rows;
    int64_t action_rows;  /* ranking only; 0 in retrieval */
    int n_context;        /* k: contextual tables (ranking) */
    int64_t context_rows[HSTU_MAX_CONTEXT];
    int n_hidden;         /* ranking head: hidden layer widths */
    int hidden[HSTU_MAX_HIDDEN];
    int n_tasks;          /* ranking head: T task logits */
    char task_names[HSTU_MAX_TASKS][HSTU_NAME_MAX];
    float alpha;          /* default 1/sqrt(d_qk) */
    float ln_eps;         /* default 1e-5 */
    bool ln_affine;       /* default true */
    bool uvqk_bias;       /* default true */
    bool proj_bias;       /* default false */
    hstu_silu silu_uvqk;  /* default all */
    hstu_rab rab;         /* default none (ranking), pos_time (retrieval) */
    int rab_buckets;      /* default 128 */
    int max_history;      /* items per user (n); see docs/config.md for defaults */
    int max_candidates;   /* candidates per user (m), ranking */
} hstu_config;

/* Parses a config.json text. Unknown keys and out-of-range values are
 * errors that name the key. */
hstu_status hstu_config_parse(const char *json, size_t len, hstu_config *cfg, hstu_error *err);
hstu_status hstu_config_load(const char *path, hstu_config *cfg, hstu_error *err);
/* Returns a malloc'd JSON text (caller frees) that hstu_config_parse reads back. */
char *hstu_config_to_json(const hstu_config *cfg);
/* Presets: kuairand-1k, bench-8x1024, ml-1m, ml-1m-large. */
hstu_status hstu_config_preset(const char *name, hstu_config *cfg, hstu_error *err);
/* NULL-terminated list of preset names. */
const char *const *hstu_preset_names(void);

/* Derived sizes. */
int hstu_config_uvqk_width(const hstu_config *cfg);        /* 2*H*Dv + 2*H*Dqk */
int hstu_config_history_tokens(const hstu_config *cfg, int n_items); /* h for n items */
int hstu_config_max_user_tokens(const hstu_config *cfg);   /* h + m at the maxima */

/* ---- model (weights) -------------------------------------------------- */

typedef enum hstu_dtype { HSTU_DTYPE_F32 = 0, HSTU_DTYPE_BF16, HSTU_DTYPE_F16 } hstu_dtype;

typedef struct hstu_model hstu_model;

/* Loads DIR/config.json and DIR/model.safetensors, validating every tensor. */
hstu_status hstu_model_load(const char *dir, hstu_model **out, hstu_error *err);
/* Seeded random weights (deterministic for a seed, whatever the machine). */
hstu_status hstu_model_create_random(const hstu_config *cfg, uint64_t seed, hstu_model **out,
                                     hstu_error *err);
/* Writes DIR/config.json and DIR/model.safetensors (DIR is created). */
hstu_status hstu_model_save(const hstu_model *m, const char *dir, hstu_dtype dtype, hstu_error *err);
void hstu_model_destroy(hstu_model *m);
const hstu_config *hstu_model_config(const hstu_model *m);
size_t hstu_model_param_count(const hstu_model *m);

/* ---- engine ------------------------------------------------------------ */

typedef enum hstu_backend { HSTU_BACKEND_REF = 0, HSTU_BACKEND_CPU, HSTU_BACKEND_CUDA } hstu_backend;

const char *hstu_backend_name(hstu_backend b);
hstu_status hstu_backend_parse(const char *name, hstu_backend *out, hstu_error *err);

/* When a returning user's cached prefix is checked against the request's
 * history (the hash of its rows' keys, docs/kvcache.md): before the forward
 * (EAGER), or while the GPU runs it (DEFERRED: the host's pass over the
 * history leaves the request's critical path; a history found rewritten
 * then has its user computed again, in full, before the call returns).
 * AUTO: DEFERRED on the CUDA backend, EAGER on the CPU backends. */
typedef enum hstu_prefix_check {
    HSTU_PREFIX_CHECK_AUTO = 0,
    HSTU_PREFIX_CHECK_EAGER,
    HSTU_PREFIX_CHECK_DEFERRED,
} hstu_prefix_check;

/* "auto", "eager" or "deferred"; HSTU_ERR_ARG with the choices otherwise. */
hstu_status hstu_prefix_check_parse(const char *name, hstu_prefix_check *out, hstu_error *err);

/* How much of a host hit's prefix comes up from the host tier (CUDA backend,
 * docs/kvcache.md, "How much to onload"). Moving a row over PCIe can cost
 * more than computing it again: AUTO onloads, per batch, the rows whose
 * transfer the GPU's recomputation of the rest hides (a cost model from the
 * measured host-to-device rate and the forwards' measured compute rate, per
 * class of batch sizes; where it still costs more than a miss: the doc);
 * ALL onloads every row the host holds; NONE recomputes host hits (for
 * comparisons). */
typedef enum hstu_onload {
    HSTU_ONLOAD_AUTO = 0,
    HSTU_ONLOAD_ALL,
    HSTU_ONLOAD_NONE,
} hstu_onload;

/* "auto", "all" or "none"; HSTU_ERR_ARG with the choices otherwise. */
hstu_status hstu_onload_parse(const char *name, hstu_onload *out, hstu_error *err);

typedef struct hstu_engine_options {
    hstu_backend backend;   /* default CPU */
    bool use_cache;         /* default true */
    int page_size;          /* KV page size in tokens, default 32 */
    size_t cache_bytes;     /* KV page pool budget, default 1 GiB */
    int max_batch_tokens;   /* workspace rows; default max(16384, one user at the maxima) */
    int threads;            /* 0 = all cores */
    hstu_prefix_check prefix_check; /* default AUTO */
    /* CUDA backend only (docs/kvcache.md): the host tier, pinned host memory
     * holding offloaded chunks of users' K/V (0 = no host tier). */
    size_t host_cache_bytes;  /* default 0 */
    int chunk_tokens;         /* rows per host chunk, a multiple of page_size; default 1024 */
    int offload_queue;        /* chunks in flight to the host at most; default 64 */
    bool layerwise_onload;    /* host hits: layer l waits only for layer l's K/V (default true) */
    hstu_onload onload;       /* default AUTO */
    /* AUTO's rates, fixed instead of measured (0: measured at create, then
     * from the forwards, per class of batch sizes): host-to-device GB/s,
     * and the forward's marginal compute rate in TFLOP/s (with no fixed
     * cost). The extra time of onloading is learned either way. */
    double onload_gbs, compute_tflops;
    /* CUDA backend: CUDA graphs of the layer stack per (batch, tokens)
     * bucket (docs/cuda.md); batches over the largest bucket run eagerly. */
    bool cuda_graphs;         /* default true */
    int graph_max_tokens;     /* largest token bucket, default 8192 */
    int graph_max_batch;      /* largest batch bucket, default 64 */
} hstu_engine_options;

void hstu_engine_options_default(hstu_engine_options *o);

typedef struct hstu_engine hstu_engine;

/* The engine keeps a pointer to the model: the model must outlive it. */
hstu_status hstu_engine_create(const hstu_model *m, const hstu_engine_options *o,
                               hstu_engine **out, hstu_error *err);
void hstu_engine_destroy(hstu_engine *e);

/* One user's request. Arrays are borrowed for the duration of the call.
 * Ranking: context[n_context] (n_context must equal the config's), items and
 * actions [n_items], candidates [n_candidates].
 * Retrieval: items and timestamps [n_items] (n_items >= 1), query_time,
 * top_k >= 1, exclude_history (default true). */
typedef struct hstu_request {
    int64_t user_id;
    int n_context;
    const int64_t *context;
    int n_items;
    const int64_t *items;
    const int64_t *actions;
    const int64_t *timestamps;
    int64_t query_time;
    int n_candidates;
    const int64_t *candidates;
    int top_k;
    bool exclude_history;
} hstu_request;

typedef enum hstu_cache_tier { HSTU_TIER_MISS = 0, HSTU_TIER_DEVICE, HSTU_TIER_HOST } hstu_cache_tier;

/* Outputs, in caller storage. Ranking: scores [n_candidates * n_tasks],
 * row-major per candidate (probabilities, or logits when asked). Retrieval:
 * topk_ids / topk_scores [top_k]; n_topk says how many were filled (fewer
 * than top_k when the table has fewer eligible items). */
typedef struct hstu_result {
    float *scores;
    int64_t *topk_ids;
    float *topk_scores;
    int n_topk;
    /* filled by the engine */
    hstu_cache_tier tier;  /* where the reused prefix came from */
    int cached_tokens;     /* history rows reused from the cache */
    int computed_tokens;   /* rows computed in this call (new history + candidates) */
} hstu_result;

/* Checks one request against the model (ids in range, lengths within the
 * maxima, family fields present). Changes nothing. */
hstu_status hstu_engine_check(const hstu_engine *e, const hstu_request *r, hstu_error *err);

/* Runs a batch of requests of distinct users. Every request is checked
 * first; if any is bad, nothing runs and nothing changes. logits=true
 * returns ranking logits instead of probabilities. */
hstu_status hstu_engine_run(hstu_engine *e, const hstu_request *reqs, int n, hstu_result *res,
                            bool logits, hstu_error *err);

typedef struct hstu_cache_stats {
    uint64_t device_hits, host_hits, misses;
    uint64_t tokens_reused, tokens_computed;
    uint64_t evictions, rewrites;  /* rewrites: prefix-hash mismatches */
    uint64_t degraded;             /* users run uncached because no page was free */
    uint64_t redone;               /* users run again: a deferred prefix check failed */
    int pages_total, pages_in_use, page_size, users;
    size_t page_bytes, pool_bytes;
    /* host tier (CUDA backend with host_cache_bytes > 0) */
    uint64_t host_rewrites, host_evictions, offloads, offloads_skipped;
    uint64_t onload_bytes, offload_bytes;
    double onload_ms, offload_ms;  /* time the copies took on their streams */
    double onload_issue_ms, offload_issue_ms; /* host time issuing them (on the request path) */
    /* host hits' rows computed again instead of onloaded (hstu_onload), and
     * the cost model's rates now for batches the size of the last it planned
     * (onload_model_batch users, 0 before any; each class of batch sizes
     * learns its own):
     * host-to-device GB/s, the forward's marginal TFLOP/s and fixed ms, and
     * the measured minus the modelled time of the forwards that onloaded,
     * as ms + ms per GB onloaded */
    uint64_t host_rows_recomputed;
    int onload_model_batch;
    double onload_model_gbs, onload_model_tflops, onload_model_fixed_ms, onload_model_extra_ms,
        onload_model_extra_ms_per_gb;
    int host_chunks_total, host_chunks_in_use, host_users;
    size_t chunk_bytes, host_bytes;
    /* CUDA graphs: forwards replayed, buckets captured, forwards run eagerly;
     * of the replays, those run as one graph per layer (a layer-wise onload
     * waits between layers; otherwise one graph holds the whole stack) */
    uint64_t graph_runs, graph_captures, eager_runs, graph_layered_runs;
    /* edges into the layers' cuBLASLt GEMMs made programmatic in the graphs
     * captured (docs/cuda.md, "Programmatic edges into the GEMMs") */
    uint64_t graph_gemm_edges;
    /* CUDA forwards: how many, host time inside the backend, GPU time from
     * the first copy to the last kernel; host time beyond the GPU's is
     * launch and staging work the GPU waited for. gpu_stage_ms: the part of
     * gpu_busy_ms spent packing the batch's metadata on the host;
     * gpu_launch_ms: host time in the layer stack's launches (graphs or
     * kernels); gpu_stack_ms: GPU time from the embedding's start to the
     * last layer's end (no metadata copies, head or host work: the HSTU
     * block as NVIDIA's paged benchmark times it) */
    uint64_t gpu_forwards;
    double gpu_host_ms, gpu_busy_ms, gpu_stage_ms, gpu_launch_ms, gpu_stack_ms;
    /* host time from hstu_engine_run's start to the backend's first call:
     * checking the requests and planning them against the cache */
    double plan_ms;
} hstu_cache_stats;

void hstu_engine_cache_stats(const hstu_engine *e, hstu_cache_stats *s);
/* Drops every cached entry. */
void hstu_engine_cache_clear(hstu_engine *e);
/* Bytes the engine holds (workspace + cache pool), excluding the model. */
size_t hstu_engine_bytes(const hstu_engine *e);

#ifdef __cplusplus
}
#endif
#endif
