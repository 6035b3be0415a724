/* engine.c - engine lifetime, request checks, batch planning with the cache.
 *
 * Sizes are fixed at create: the workspace holds max_batch_tokens rows, the
 * cache pool holds cache_bytes of pages. A run checks every request first
 * (a bad request changes nothing), then per sub-batch:
 *   kv_begin; per user: keys of its cacheable rows, kv_lookup (cached rows
 *   c, prefix hash checked), kv_reserve for the rows it will add (or run it
 *   without appending when no page can be had); forward_run; kv_commit;
 *   kv_end.
 * Cacheable rows: every history row (ranking); all but the newest
 * (retrieval: row r's K/V depend on ts_{r+1}). Candidates never.
 */
#include "model/engine.h"

#include "core/clock.h"
#include "core/status.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include(<cblas.h>)
#include <cblas.h>
#define HAVE_OPENBLAS_THREADS 1
#endif
#endif

const char *hstu_backend_name(hstu_backend b)
{
    switch (b) {
    case HSTU_BACKEND_REF: return "ref";
    case HSTU_BACKEND_CPU: return "cpu";
    case HSTU_BACKEND_CUDA: return "cuda";
    }
    return "?";
}

hstu_status hstu_backend_parse(const char *name, hstu_backend *out, hstu_error *err)
{
    if (!strcmp(name, "ref"))
        *out = HSTU_BACKEND_REF;
    else if (!strcmp(name, "cpu"))
        *out = HSTU_BACKEND_CPU;
    else if (!strcmp(name, "cuda"))
        *out = HSTU_BACKEND_CUDA;
    else
        return hstu_fail(err, HSTU_ERR_ARG, "unknown backend \"%s\" (choose cpu, ref or cuda)", name);
    return HSTU_OK;
}

hstu_status hstu_prefix_check_parse(const char *name, hstu_prefix_check *out, hstu_error *err)
{
    if (!strcmp(name, "auto"))
        *out = HSTU_PREFIX_CHECK_AUTO;
    else if (!strcmp(name, "eager"))
        *out = HSTU_PREFIX_CHECK_EAGER;
    else if (!strcmp(name, "deferred"))
        *out = HSTU_PREFIX_CHECK_DEFERRED;
    else
        return hstu_fail(err, HSTU_ERR_ARG, "unknown prefix check \"%s\" (choose auto, eager or deferred)", name);
    return HSTU_OK;
}

hstu_status hstu_onload_parse(const char *name, hstu_onload *out, hstu_error *err)
{
    if (!strcmp(name, "auto"))
        *out = HSTU_ONLOAD_AUTO;
    else if (!strcmp(name, "all"))
        *out = HSTU_ONLOAD_ALL;
    else if (!strcmp(name, "none"))
        *out = HSTU_ONLOAD_NONE;
    else
        return hstu_fail(err, HSTU_ERR_ARG, "unknown onload policy \"%s\" (choose auto, all or none)", name);
    return HSTU_OK;
}

void hstu_engine_options_default(hstu_engine_options *o)
{
    memset(o, 0, sizeof *o);
    o->backend = HSTU_BACKEND_CPU;
    o->use_cache = true;
    o->page_size = 32;
    o->cache_bytes = (size_t)1 << 30;
    o->max_batch_tokens = 0;
    o->threads = 0;
    o->host_cache_bytes = 0;
    o->chunk_tokens = 1024;
    o->offload_queue = 64;
    o->layerwise_onload = true;
    o->cuda_graphs = true;
    o->graph_max_tokens = 8192;
    o->graph_max_batch = 64;
}

/* The onload plan's prior for the forward's compute rate until the forwards
 * fit one (hstu_onload): this share of the uvqk GEMM's rate at max_tokens
 * rows (the whole forward at batch 8 runs at about 0.66 of the GEMMs' rate
 * on an H100, docs/perf.md). */
#define ONLOAD_PRIOR_SHARE 0.6
/* and this fixed cost per layer (a layer's cost at batch 1 beyond its FLOPs
 * on an H100: about 50 us, docs/perf.md) */
#define ONLOAD_PRIOR_LAYER_MS 0.05

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

hstu_status hstu_engine_create(const hstu_model *m, const hstu_engine_options *o, hstu_engine **out,
                               hstu_error *err)
{
    const hstu_config *cfg = &m->cfg;
    bool gpu = o->backend == HSTU_BACKEND_CUDA;
    const hstu_ops *ops = gpu ? NULL : ops_for(o->backend);
    if (o->page_size < 1 || o->page_size > 65536)
        return hstu_fail(err, HSTU_ERR_ARG, "page size %d: must be in 1..65536", o->page_size);
    if (o->max_batch_tokens < 0 || o->threads < 0)
        return hstu_fail(err, HSTU_ERR_ARG, "max batch tokens and threads must not be negative");
    bool host_tier = gpu && o->use_cache && o->host_cache_bytes > 0;
    if (host_tier && (o->chunk_tokens < o->page_size || o->chunk_tokens % o->page_size))
        return hstu_fail(err, HSTU_ERR_ARG, "chunk of %d tokens: must be a positive multiple of the page size %d",
                         o->chunk_tokens, o->page_size);
    if (o->prefix_check < HSTU_PREFIX_CHECK_AUTO || o->prefix_check > HSTU_PREFIX_CHECK_DEFERRED)
        return hstu_fail(err, HSTU_ERR_ARG, "prefix check %d: must be AUTO (0), EAGER (1) or DEFERRED (2)",
                         (int)o->prefix_check);
    if (o->onload < HSTU_ONLOAD_AUTO || o->onload > HSTU_ONLOAD_NONE)
        return hstu_fail(err, HSTU_ERR_ARG, "onload policy %d: must be AUTO (0), ALL (1) or NONE (2)",
                         (int)o->onload);
    if (!(o->onload_gbs >= 0 && o->onload_gbs < 1e6) || !(o->compute_tflops >= 0 && o->compute_tflops < 1e6))
        return hstu_fail(err, HSTU_ERR_ARG, "onload rates %g GB/s, %g TFLOP/s: must be 0 (measured) or positive",
                         o->onload_gbs, o->compute_tflops);
    if (host_tier && (o->offload_queue < 1 || o->offload_queue > 65536))
        return hstu_fail(err, HSTU_ERR_ARG, "offload queue of %d chunks: must be in 1..65536", o->offload_queue);
    int user_max = hstu_config_max_user_tokens(cfg);
    int T = o->max_batch_tokens ? o->max_batch_tokens : (user_max > 16384 ? user_max : 16384);
    if (T < user_max)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "max batch tokens %d is below one user at the model's maxima (%d tokens); "
                         "raise it or lower max_history/max_candidates",
                         T, user_max);

    hstu_engine *e = calloc(1, sizeof *e);
    if (!e)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    e->model = m;
    e->opt = *o;
    e->ops = ops;
    e->max_tokens = T;
    e->max_pages = T / o->page_size + ENGINE_MAX_USERS + 1;
    e->defer_check =
        o->prefix_check == HSTU_PREFIX_CHECK_DEFERRED || (o->prefix_check == HSTU_PREFIX_CHECK_AUTO && gpu);

    if (o->threads > 0) {
        omp_set_num_threads(o->threads);
#ifdef HAVE_OPENBLAS_THREADS
        openblas_set_num_threads(o->threads);
#endif
    }

    int d = cfg->d_model, W = hstu_config_uvqk_width(cfg), vw = cfg->n_heads * cfg->d_v;
    int head_w = d;
    for (int j = 0; j < cfg->n_hidden; j++)
        head_w = cfg->hidden[j] > head_w ? cfg->hidden[j] : head_w;
    head_w = cfg->n_tasks > head_w ? cfg->n_tasks : head_w;
    bool retr = cfg->family == HSTU_FAMILY_RETRIEVAL;
    size_t Tz = gpu ? 0 : (size_t)T; /* activations live on the GPU for cuda */
    size_t sizes[] = {
        Tz * d * 4, Tz * d * 4, Tz * W * 4, Tz * vw * 4, Tz * vw * 4,
        retr ? 0 : Tz * head_w * 4, retr ? 0 : Tz * head_w * 4,
        retr && !gpu ? (size_t)ENGINE_MAX_USERS * TOPK_CHUNK * 4 : 0,
        retr && !gpu ? (size_t)ENGINE_MAX_USERS * d * 4 : 0,
        (size_t)T * sizeof(uint64_t), retr ? (size_t)T * sizeof(int64_t) : 0,
        (size_t)e->max_pages * sizeof(int), (size_t)e->max_pages * sizeof(float *),
        ENGINE_MAX_USERS * sizeof(user_plan), ENGINE_MAX_USERS * sizeof(attn_seq),
        host_tier ? (size_t)e->max_pages * sizeof(cuda_onload) : 0,
        host_tier ? ((size_t)T / (size_t)o->chunk_tokens + 1) * sizeof(int) : 0,
        host_tier ? (size_t)o->offload_queue * sizeof(int64_t) : 0,
        host_tier ? ENGINE_MAX_USERS * sizeof(onload_user) : 0, host_tier ? ENGINE_MAX_USERS * sizeof(int) : 0,
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += align64(sizes[i]);
    e->arena = aligned_alloc(64, total);
    if (!e->arena) {
        free(e);
        return hstu_fail(err, HSTU_ERR_NOMEM,
                         "out of memory: the workspace for %d tokens needs %.1f MiB; lower --max-tokens", T,
                         total / 1048576.0);
    }
    e->arena_bytes = total;
    char *p = e->arena;
    void **slots[] = {
        (void **)&e->x, (void **)&e->xn, (void **)&e->uvqk, (void **)&e->attn, (void **)&e->y,
        (void **)&e->head_a, (void **)&e->head_b, (void **)&e->topk_scratch, (void **)&e->users,
        (void **)&e->keys, (void **)&e->exclude, (void **)&e->page_idx, (void **)&e->page_ptr,
        (void **)&e->plans, (void **)&e->seqs, (void **)&e->onload, (void **)&e->off_slots,
        (void **)&e->done_users, (void **)&e->on_users, (void **)&e->on_order,
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *slots[i] = sizes[i] ? p : NULL;
        p += align64(sizes[i]);
    }

    hstu_status st = HSTU_OK;
    if (o->use_cache) {
        /* One cache design, two places for the pages: host memory (fp32) for
         * the CPU backends, the GPU (bf16) for cuda, whose pool the backend
         * allocates from the bookkeeping's page count. */
        kv_options ko = {
            .n_layers = cfg->n_layers, .page_size = o->page_size,
            .k_width = cfg->n_heads * cfg->d_qk, .v_width = vw, .budget_bytes = o->cache_bytes,
            .elem_bytes = gpu ? 2 : 4, .external_pool = gpu,
        };
        st = kv_create(&ko, &e->kv, err);
    }
    cuda_cache_desc cc = {0};
    if (st == HSTU_OK && host_tier) {
        size_t chunk_bytes = kv_page_bytes(e->kv) * (size_t)(o->chunk_tokens / o->page_size);
        size_t slots = o->host_cache_bytes / chunk_bytes;
        if (slots < 1 || slots > (size_t)(1 << 24))
            st = hstu_fail(err, HSTU_ERR_ARG,
                           "host cache of %zu bytes: must hold 1 to %d chunks of %zu bytes (%d tokens); raise "
                           "--host-cache-mb or lower --chunk-tokens",
                           o->host_cache_bytes, 1 << 24, chunk_bytes, o->chunk_tokens);
        else {
            ht_options ho = {.n_slots = (int)slots, .chunk_rows = o->chunk_tokens, .max_pending = o->offload_queue};
            st = ht_create(&ho, &e->ht, err);
            cc.host_slots = (int)slots;
            cc.chunk_rows = o->chunk_tokens;
            cc.max_pending = o->offload_queue;
        }
    }
    if (st == HSTU_OK && gpu) {
        if (e->kv) {
            kv_stats ks;
            kv_get_stats(e->kv, &ks);
            cc.n_pages = ks.pages_total;
            cc.page_size = o->page_size;
            cc.page_elems = kv_page_elems(e->kv);
            cc.layerwise = o->layerwise_onload;
        }
        cc.graphs = o->cuda_graphs;
        cc.graph_max_tokens = o->graph_max_tokens;
        cc.graph_max_batch = o->graph_max_batch;
        st = cuda_backend_create(m, T, ENGINE_MAX_USERS, e->max_pages, &cc, &e->cuda, err);
    }
    if (st != HSTU_OK) {
        ht_destroy(e->ht);
        kv_destroy(e->kv);
        free(e->arena);
        free(e);
        return st;
    }
    if (e->ht) {
        /* The onload plan's priors: the link's rate measured at create and
         * a share of the uvqk GEMM's (until the forwards fit a line), or
         * the rates given. */
        double gbs = 0, tflops = 0;
        cuda_backend_rates(e->cuda, &gbs, &tflops);
        e->om = onload_model_make(cfg->n_layers, d, W, cfg->n_heads, cfg->d_qk, cfg->d_v, 2);
        onload_rates prior = {
            .bytes_per_ms = (o->onload_gbs > 0 ? o->onload_gbs : gbs) * 1e6,
            .flops_per_ms = (o->compute_tflops > 0 ? o->compute_tflops : ONLOAD_PRIOR_SHARE * tflops) * 1e9,
            .fixed_ms = o->compute_tflops > 0 ? 0 : ONLOAD_PRIOR_LAYER_MS * cfg->n_layers,
        };
        onload_learner_init(&e->learner, &e->om, &prior, o->onload_gbs > 0, o->compute_tflops > 0);
    }
    e->stats.page_size = o->page_size;
    *out = e;
    return HSTU_OK;
}

void hstu_engine_destroy(hstu_engine *e)
{
    if (!e)
        return;
    cuda_backend_destroy(e->cuda); /* waits for the offloads in flight */
    ht_destroy(e->ht);
    kv_destroy(e->kv);
    free(e->arena);
    free(e);
}

size_t hstu_engine_bytes(const hstu_engine *e)
{
    size_t pool = 0;
    if (e->kv) {
        kv_stats ks;
        kv_get_stats(e->kv, &ks);
        pool = e->cuda ? 0 : (size_t)ks.pages_total * kv_page_bytes(e->kv); /* cuda counts its own */
    }
    return e->arena_bytes + pool + (e->cuda ? cuda_backend_bytes(e->cuda) : 0);
}

static hstu_status check_ids(const int64_t *ids, int n, int64_t rows, const char *what, hstu_error *err)
{
    if (n > 0 && !ids)
        return hstu_fail(err, HSTU_ERR_ARG, "%s: missing", what);
    /* One pass without branches (it vectorises: every request's whole
     * history goes through here), then the first bad id only on failure;
     * a negative id is a huge unsigned one. */
    uint64_t bad = 0;
    for (int i = 0; i < n; i++)
        bad |= (uint64_t)ids[i] >= (uint64_t)rows;
    if (!bad)
        return HSTU_OK;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= rows)
            return hstu_fail(err, HSTU_ERR_ARG, "%s[%d] = %lld is outside the table (0..%lld)", what, i,
                             (long long)ids[i], (long long)rows - 1);
    return HSTU_OK;
}

hstu_status hstu_engine_check(const hstu_engine *e, const hstu_request *r, hstu_error *err)
{
    const hstu_config *c = &e->model->cfg;
    hstu_status st;
    if (r->n_items < 0 || r->n_items > c->max_history)
        return hstu_fail(err, HSTU_ERR_ARG, "history of %d items: must be in 0..%d (max_history)",
                         r->n_items, c->max_history);
    if ((st = check_ids(r->items, r->n_items, c->item_rows, "items", err)) != HSTU_OK)
        return st;
    if (c->family == HSTU_FAMILY_RANKING) {
        if (r->n_context != c->n_context)
            return hstu_fail(err, HSTU_ERR_ARG, "context: %d ids given, the model has %d contextual tables",
                             r->n_context, c->n_context);
        for (int j = 0; j < r->n_context; j++) {
            char what[32];
            snprintf(what, sizeof what, "context[%d]", j);
            if ((st = check_ids(r->context + j, 1, c->context_rows[j], what, err)) != HSTU_OK)
                return st;
        }
        if ((st = check_ids(r->actions, r->n_items, c->action_rows, "actions", err)) != HSTU_OK)
            return st;
        if (r->n_candidates < 0 || r->n_candidates > c->max_candidates)
            return hstu_fail(err, HSTU_ERR_ARG, "%d candidates: must be in 0..%d (max_candidates)",
                             r->n_candidates, c->max_candidates);
        if ((st = check_ids(r->candidates, r->n_candidates, c->item_rows, "candidates", err)) != HSTU_OK)
            return st;
    } else {
        if (r->n_items < 1)
            return hstu_fail(err, HSTU_ERR_ARG, "retrieval needs a history of at least 1 item");
        if (!r->timestamps)
            return hstu_fail(err, HSTU_ERR_ARG, "timestamps: missing (one per history item)");
        if (r->top_k < 1 || r->top_k > 100000)
            return hstu_fail(err, HSTU_ERR_ARG, "top_k %d: must be in 1..100000", r->top_k);
    }
    return HSTU_OK;
}

static int user_tokens(const hstu_config *c, const hstu_request *r)
{
    return hstu_config_history_tokens(c, r->n_items) +
           (c->family == HSTU_FAMILY_RANKING ? r->n_candidates : 0);
}

/* Offloads that have landed: their host chunks become usable and their
 * device pages evictable again. With wait, every offload in flight. */
static void offload_reap(hstu_engine *e, bool wait)
{
    if (!e->ht)
        return;
    int n;
    while ((n = cuda_offload_poll(e->cuda, e->done_users, e->opt.offload_queue, wait)) > 0)
        for (int i = 0; i < n; i++) {
            ht_offload_done(e->ht, e->done_users[i]);
            kv_release(e->kv, e->done_users[i]);
        }
}

/* After a committed forward: copy the newly completed chunks of each user
 * to the host tier in the background (skipped, never waited for, when the
 * queue is full). */
static hstu_status offload_start(hstu_engine *e, user_plan *plans, int B, hstu_error *err)
{
    int P = e->opt.page_size, ppc = e->opt.chunk_tokens / P;
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        if (p->paged < e->opt.chunk_tokens)
            continue;
        int first, max = p->paged / e->opt.chunk_tokens;
        int n = ht_offload_begin(e->ht, p->req->user_id, e->keys + p->key0, p->paged, &first, e->off_slots, max);
        if (n == 0)
            continue;
        kv_hold(e->kv, p->req->user_id);
        /* The chunks' pages: the user's pages from page first * ppc on. */
        hstu_status st = cuda_offload_submit(e->cuda, p->req->user_id, e->page_idx + p->page0 + first * ppc,
                                             e->off_slots, n, err);
        if (st != HSTU_OK)
            return st;
    }
    return HSTU_OK;
}

/* The host's passes over the batch's histories that can wait for the
 * forward (run by the CUDA backend while the GPU computes, else after it):
 * the keys of users planned without them, the deferred prefix checks, and
 * the hashes that kv_commit stores. */
typedef struct late_keys {
    const hstu_config *cfg;
    uint64_t *keys; /* the batch's row keys (user_plan.key0 into it) */
    user_plan *plans;
    int B;
    bool done;
} late_keys;

static void keys_after_launch(void *arg)
{
    late_keys *h = arg;
    for (int b = 0; b < h->B; b++) {
        user_plan *p = &h->plans[b];
        uint64_t *keys = h->keys + p->key0;
        if (p->keys_later)
            forward_row_keys(h->cfg, p->req, p->cacheable, keys);
        if (p->check_later)
            p->prefix_ok = kv_hash_keys(keys, p->c) == p->prefix_hash;
        if (p->paged > 0) /* (only those are committed) */
            p->commit_hash = kv_hash_keys(keys, p->paged);
    }
    h->done = true;
}

/* FLOPs of what plan p computes: its history rows after the c reused, and
 * its candidates (the onload plan's unit of compute). */
static double plan_flops(const hstu_engine *e, const user_plan *p)
{
    return onload_flops_rows(&e->om, p->c, p->hist) + onload_flops_cands(&e->om, p->hist, p->cand);
}

/* How much of each host hit to onload (hstu_onload): under AUTO, what the
 * cost model finds fastest for the batch (onload_plan.h); the rest of a host
 * hit's prefix is computed like new rows. Before the page tables. */
static void plan_onload(hstu_engine *e, user_plan *plans, int B)
{
    int n = 0;
    double base = 0; /* every other row the batch computes (a host hit's c is its host rows) */
    for (int b = 0; b < B; b++) {
        const user_plan *p = &plans[b];
        base += plan_flops(e, p);
        if (p->host > 0)
            e->on_users[n++] = (onload_user){.host_rows = p->host};
    }
    if (n == 0 || e->opt.onload == HSTU_ONLOAD_ALL)
        return;
    if (e->opt.onload == HSTU_ONLOAD_AUTO) {
        onload_rates r = onload_learner_rates(&e->learner, B);
        if (r.bytes_per_ms <= 0 || r.flops_per_ms <= 0)
            return;
        onload_plan(&e->om, &r, base, e->opt.page_size, e->on_users, n, e->on_order);
        e->last_batch = B;
    } else
        for (int i = 0; i < n; i++)
            e->on_users[i].onload = 0;
    for (int b = 0, i = 0; b < B; b++) {
        user_plan *p = &plans[b];
        if (p->host == 0)
            continue;
        int x = e->on_users[i++].onload;
        e->stats.host_rows_recomputed += (uint64_t)(p->host - x);
        p->c = p->host = x;
    }
}

/* What a forward taught the onload plan (onload_learner_add). */
static void learn_rates(hstu_engine *e, const cuda_cache_counters *before, const user_plan *plans, int B)
{
    cuda_cache_counters now;
    cuda_cache_get_counters(e->cuda, &now);
    if (now.forwards != before->forwards + 1)
        return;
    double flops = 0;
    for (int b = 0; b < B; b++)
        flops += plan_flops(e, &plans[b]);
    onload_learner_add(&e->learner, B, flops, now.gpu_ms - before->gpu_ms,
                       (double)(now.onload_bytes - before->onload_bytes), now.onload_ms - before->onload_ms);
}

/* Looks user p up in the cache: sets p->c, p->host and, for a deferred
 * check (defer), p->keys_later and p->check_later. */
static void plan_lookup(hstu_engine *e, user_plan *p, bool defer)
{
    const hstu_request *r = p->req;
    /* Deferred: a device hit, or a miss with no host tier to ask, needs no
     * keys before the forward. */
    int got = defer ? kv_lookup_deferred(e->kv, r->user_id, p->cacheable, &p->prefix_hash) : -1;
    if (got > 0 || (got == 0 && !e->ht)) {
        p->c = got;
        p->keys_later = true;
        p->check_later = got > 0;
        return;
    }
    uint64_t *keys = e->keys + p->key0;
    forward_row_keys(&e->model->cfg, r, p->cacheable, keys);
    if (got < 0) {
        /* A lookup may drop a rewritten entry, whose pages an offload may
         * still be reading: let that offload land first (rare). */
        if (e->ht && kv_held(e->kv, r->user_id) && kv_would_drop(e->kv, r->user_id, keys, p->cacheable))
            offload_reap(e, true);
        p->c = kv_lookup(e->kv, r->user_id, keys, p->cacheable);
    }
    if (p->c == 0 && e->ht)
        p->c = p->host = ht_lookup(e->ht, r->user_id, keys, p->cacheable);
}

/* Plans users [0, B) against the cache and runs them. With defer, prefix
 * checks wait for the forward (hstu_prefix_check); the users whose check
 * fails are run again, with eager checks, before this returns. */
static hstu_status run_sub_batch(hstu_engine *e, user_plan *plans, int B, bool logits, bool defer, double t_start,
                                 hstu_error *err)
{
    const hstu_config *cfg = &e->model->cfg;
    int key_off = 0;
    offload_reap(e, false);
    if (e->kv)
        kv_begin(e->kv);
    if (e->ht)
        ht_begin(e->ht);
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        const hstu_request *r = p->req;
        p->hist = hstu_config_history_tokens(cfg, r->n_items);
        p->cand = cfg->family == HSTU_FAMILY_RANKING ? r->n_candidates : 0;
        p->cacheable = cfg->family == HSTU_FAMILY_RANKING ? p->hist : p->hist - 1;
        p->c = 0;
        p->paged = 0;
        p->host = p->host_found = 0;
        p->key0 = key_off;
        p->keys_later = p->check_later = p->prefix_ok = false;
        if (!e->kv)
            continue;
        key_off += p->cacheable;
        plan_lookup(e, p, defer);
        if (p->check_later)
            continue; /* counted once checked */
        p->host_found = p->host;
        if (p->host > 0)
            e->stats.host_hits++;
        else if (p->c > 0)
            e->stats.device_hits++;
        else
            e->stats.misses++;
    }
    /* Reserve only after every lookup has pinned its user, so that making
     * room for one user never evicts another user of this batch. */
    for (int b = 0; b < B && e->kv; b++) {
        user_plan *p = &plans[b];
        if (kv_reserve(e->kv, p->req->user_id, p->cacheable))
            p->paged = p->cacheable;
        else {
            /* No room: reuse what is on the device, add nothing. A host hit
             * has no pages to land in: it is computed in full. */
            if (p->host > 0)
                p->c = p->host = p->host_found = 0;
            p->paged = p->c;
            e->stats.degraded++;
        }
    }
    if (e->ht)
        plan_onload(e, plans, B);
    /* Page tables, after every reserve (a reserve may evict only unpinned users). */
    int page_off = 0, n_onload = 0;
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        p->page0 = page_off;
        if (p->paged == 0)
            continue;
        int n = kv_pages(e->kv, p->req->user_id, e->page_idx + page_off, e->max_pages - page_off);
        HSTU_ASSERT(n <= e->max_pages - page_off);
        HSTU_ASSERT((int64_t)n * kv_page_size(e->kv) >= p->paged);
        if (!e->cuda)
            for (int i = 0; i < n; i++)
                e->page_ptr[page_off + i] = kv_page_ptr(e->kv, e->page_idx[page_off + i]);
        if (p->host > 0) {
            /* The host chunks' first host / P pages land in the user's first
             * pages (a whole number of pages: the rows after them are
             * appended by this forward). */
            int C = e->opt.chunk_tokens, P = e->opt.page_size, ppc = C / P, pages = p->host / P;
            HSTU_ASSERT(p->host % P == 0);
            int want = (p->host + C - 1) / C, chunks = ht_slots(e->ht, p->req->user_id, e->off_slots, want);
            HSTU_ASSERT(chunks == want);
            for (int i = 0; i < pages; i++)
                e->onload[n_onload++] = (cuda_onload){.slot = e->off_slots[i / ppc], .j = i % ppc,
                                                      .page = e->page_idx[page_off + i]};
        }
        page_off += n;
    }
    hstu_status st = HSTU_OK;
    late_keys lk = {.cfg = cfg, .keys = e->keys, .plans = plans, .B = B};
    e->stats.plan_ms += (core_now_s() - t_start) * 1e3;
    bool learn = e->ht && e->opt.onload == HSTU_ONLOAD_AUTO;
    cuda_cache_counters before;
    if (learn)
        cuda_cache_get_counters(e->cuda, &before);
    if (e->cuda) {
        cuda_batch_cache kc = {.page_idx = e->page_idx, .n_page_idx = page_off, .onload = e->onload,
                               .n_onload = n_onload, .overlap = e->kv ? keys_after_launch : NULL,
                               .overlap_arg = &lk};
        st = cuda_forward_run(e->cuda, plans, B, logits, &kc, err);
        if (st == HSTU_OK && learn)
            learn_rates(e, &before, plans, B);
    } else
        forward_run(e, plans, B, logits);
    if (e->kv && !lk.done)
        keys_after_launch(&lk);
    /* A failed deferred check: the cached rows were not this history's, so
     * the user's results and appended rows are wrong. Drop the entry, commit
     * nothing, and run the user again below. */
    int n_redo = 0;
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        if (!p->check_later)
            continue;
        if (p->prefix_ok) {
            e->stats.device_hits++;
            continue;
        }
        kv_reject(e->kv, p->req->user_id);
        p->paged = 0;
        n_redo++;
    }
    for (int b = 0; b < B && st == HSTU_OK; b++) {
        user_plan *p = &plans[b];
        if (p->check_later && !p->prefix_ok)
            continue;
        p->res->tier = p->host_found > 0 ? HSTU_TIER_HOST : p->c > 0 ? HSTU_TIER_DEVICE : HSTU_TIER_MISS;
        p->res->cached_tokens = p->c;
        p->res->computed_tokens = p->hist - p->c + p->cand;
        e->stats.tokens_reused += (uint64_t)p->c;
        e->stats.tokens_computed += (uint64_t)(p->hist - p->c + p->cand);
        if (e->kv && p->paged > 0)
            kv_commit_hashed(e->kv, p->req->user_id, p->paged, p->commit_hash);
    }
    /* A failed forward commits nothing: its users' new pages are dropped by
     * kv_end (entries reserved in this batch) or trimmed back. A host hit's
     * onload pages count as new rows of the batch: on failure the entry is
     * dropped with them. */
    if (st == HSTU_OK && e->ht)
        st = offload_start(e, plans, B, err);
    if (e->ht)
        ht_end(e->ht);
    if (e->kv)
        kv_end(e->kv);
    if (st == HSTU_OK && n_redo > 0) {
        /* Those users, to the front of plans (done with now), and again
         * with eager checks: nothing to redo in that run. */
        HSTU_ASSERT(defer);
        int n = 0;
        for (int b = 0; b < B; b++)
            if (plans[b].check_later && !plans[b].prefix_ok)
                plans[n++] = (user_plan){.req = plans[b].req, .res = plans[b].res};
        e->stats.redone += (uint64_t)n;
        st = run_sub_batch(e, plans, n, logits, false, core_now_s(), err);
    }
    return st;
}

hstu_status hstu_engine_run(hstu_engine *e, const hstu_request *reqs, int n, hstu_result *res,
                            bool logits, hstu_error *err)
{
    double t_start = core_now_s();
    if (n < 0)
        return hstu_fail(err, HSTU_ERR_ARG, "negative batch size %d", n);
    for (int i = 0; i < n; i++) {
        hstu_status st = hstu_engine_check(e, &reqs[i], err);
        if (st != HSTU_OK) {
            hstu_error_prefix(err, "request %d (user %lld)", i, (long long)reqs[i].user_id);
            return st;
        }
        for (int j = 0; j < i; j++)
            if (reqs[j].user_id == reqs[i].user_id)
                return hstu_fail(err, HSTU_ERR_ARG,
                                 "user %lld appears twice in one batch (requests %d and %d); "
                                 "send the second after the first",
                                 (long long)reqs[i].user_id, j, i);
    }
    /* Split into sub-batches that fit the workspace (each user fits: checked
     * against max_history/max_candidates at create). */
    const hstu_config *cfg = &e->model->cfg;
    int start = 0;
    while (start < n) {
        int B = 0, tokens = 0;
        while (start + B < n && B < ENGINE_MAX_USERS) {
            int t = user_tokens(cfg, &reqs[start + B]);
            if (B > 0 && tokens + t > e->max_tokens)
                break;
            tokens += t;
            e->plans[B].req = &reqs[start + B];
            e->plans[B].res = &res[start + B];
            B++;
        }
        hstu_status st = run_sub_batch(e, e->plans, B, logits, e->defer_check, t_start, err);
        if (st != HSTU_OK)
            return st;
        start += B;
        t_start = core_now_s();
    }
    return HSTU_OK;
}

void hstu_engine_cache_stats(const hstu_engine *e, hstu_cache_stats *s)
{
    *s = e->stats;
    if (e->ht) {
        ht_stats hs;
        ht_get_stats(e->ht, &hs);
        s->host_rewrites = hs.rewrites;
        s->host_evictions = hs.evictions;
        s->offloads = hs.offloads;
        s->offloads_skipped = hs.offloads_skipped;
        s->host_chunks_total = hs.slots_total;
        s->host_chunks_in_use = hs.slots_in_use;
        s->host_users = hs.users;
        s->chunk_bytes = kv_page_bytes(e->kv) * (size_t)(e->opt.chunk_tokens / e->opt.page_size);
        onload_rates r = onload_learner_rates(&e->learner, e->last_batch > 0 ? e->last_batch : 1);
        s->onload_model_batch = e->last_batch;
        s->onload_model_gbs = r.bytes_per_ms * 1e-6;
        s->onload_model_tflops = r.flops_per_ms * 1e-9;
        s->onload_model_fixed_ms = r.fixed_ms;
        s->onload_model_extra_ms = r.extra_ms;
        s->onload_model_extra_ms_per_gb = r.extra_ms_per_gb;
        s->host_bytes = (size_t)hs.slots_total * s->chunk_bytes;
    }
    if (e->cuda) {
        cuda_cache_counters cc;
        cuda_cache_get_counters(e->cuda, &cc);
        s->onload_bytes = cc.onload_bytes;
        s->offload_bytes = cc.offload_bytes;
        s->onload_ms = cc.onload_ms;
        s->offload_ms = cc.offload_ms;
        s->onload_issue_ms = cc.onload_issue_ms;
        s->offload_issue_ms = cc.offload_issue_ms;
        s->graph_runs = cc.graph_runs;
        s->graph_layered_runs = cc.graph_layered_runs;
        s->graph_captures = cc.graph_captures;
        s->graph_gemm_edges = cc.gemm_edges;
        s->eager_runs = cc.eager_runs;
        s->gpu_forwards = cc.forwards;
        s->gpu_host_ms = cc.forward_ms;
        s->gpu_busy_ms = cc.gpu_ms;
        s->gpu_stage_ms = cc.stage_ms;
        s->gpu_launch_ms = cc.launch_ms;
        s->gpu_stack_ms = cc.stack_ms;
    }
    if (e->kv) {
        kv_stats ks;
        kv_get_stats(e->kv, &ks);
        s->evictions = ks.evictions;
        s->rewrites = ks.rewrites;
        s->pages_total = ks.pages_total;
        s->pages_in_use = ks.pages_in_use;
        s->users = ks.users;
        s->page_bytes = kv_page_bytes(e->kv);
        s->pool_bytes = (size_t)ks.pages_total * s->page_bytes;
    }
}

void engine_cache_set(hstu_engine *e, const hstu_request *r, int device_rows, int host_rows)
{
    if (!e->kv)
        return;
    offload_reap(e, true);
    int n = device_rows > host_rows ? device_rows : host_rows;
    forward_row_keys(&e->model->cfg, r, n, e->keys);
    kv_commit(e->kv, r->user_id, device_rows, e->keys);
    if (e->ht)
        ht_trim(e->ht, r->user_id, host_rows, e->keys);
}

void hstu_engine_cache_clear(hstu_engine *e)
{
    offload_reap(e, true); /* nothing may read pages that are being dropped */
    if (e->ht)
        ht_clear(e->ht);
    if (e->kv)
        kv_clear(e->kv);
}
