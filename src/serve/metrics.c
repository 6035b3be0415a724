/* metrics.c - Prometheus exposition of every model's counters.
 *
 * Triton's names and meanings: nv_inference_request_success / _failure
 * {reason}, nv_inference_count, nv_inference_exec_count, the pending gauge
 * and the cumulative *_duration_us counters. This engine's own, prefixed
 * hstu_: KV cache hits and misses (users), tokens reused and computed,
 * pages, evictions, rewrites, degraded runs, and the batch-size histogram;
 * the server's request buffers and JSON arena overflows (no model label).
 * GPU metrics and the host/persistent cache tiers are not here yet.
 */
#include "serve/metrics.h"

#include "serve/json_arena.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct text {
    char *p;
    size_t len, cap;
    bool oom;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
    if (t->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *np = realloc(t->p, cap);
        if (!np) {
            t->oom = true;
            return;
        }
        t->p = np;
        t->cap = cap;
    }
}

typedef struct metric {
    const char *name, *type, *help;
} metric;

/* Each model's copy, taken under its lock, so one scrape is consistent. */
typedef struct snap {
    const char *name;
    model_stats s;
    uint64_t *batch_count;
} snap;

char *metrics_text(repository *r, const http_pool_stats *ps)
{
    text t = {.p = malloc(16384), .cap = 16384};
    if (!t.p)
        return NULL;
    t.p[0] = 0;
    snap *sn = calloc(REPO_MAX_MODELS, sizeof *sn);
    int n = 0;
    if (!sn) {
        free(t.p);
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++) {
        served_model *m = &r->models[i];
        if (!m->stats.batch_count)
            continue;
        pthread_mutex_lock(&m->stats.mu);
        sn[n].name = m->name;
        sn[n].s = m->stats;
        sn[n].batch_count = calloc((size_t)m->stats.max_batch + 1, sizeof(uint64_t));
        if (sn[n].batch_count)
            memcpy(sn[n].batch_count, m->stats.batch_count, ((size_t)m->stats.max_batch + 1) * sizeof(uint64_t));
        pthread_mutex_unlock(&m->stats.mu);
        n++;
    }
    pthread_mutex_unlock(&r->mu);

#define FAMILY(nm, ty, hp) put(&t, "# HELP %s %s\n# TYPE %s %s\n", nm, hp, nm, ty)
#define EACH(nm, fmtval, expr)                                                                  \
    for (int i = 0; i < n; i++) {                                                               \
        const model_stats *s = &sn[i].s;                                                        \
        (void)s;                                                                                \
        put(&t, "%s{model=\"%s\",version=\"1\"} " fmtval "\n", nm, sn[i].name, expr);           \
    }
    FAMILY("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes");
    EACH("nv_inference_request_success", "%llu", (unsigned long long)s->success.count);
    FAMILY("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes");
    static const char *reasons[FAIL_N] = {"REJECTED", "CANCELED", "BACKEND", "OTHER"};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < FAIL_N; k++)
            put(&t, "nv_inference_request_failure{model=\"%s\",reason=\"%s\",version=\"1\"} %llu\n", sn[i].name,
                reasons[k], (unsigned long long)sn[i].s.fail_reason[k]);
    FAMILY("nv_inference_count", "counter", "Number of inferences performed (users computed)");
    EACH("nv_inference_count", "%llu", (unsigned long long)s->inference_count);
    FAMILY("nv_inference_exec_count", "counter", "Number of model executions performed (batches)");
    EACH("nv_inference_exec_count", "%llu", (unsigned long long)s->execution_count);
    FAMILY("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests");
    EACH("nv_inference_pending_request_count", "%d", s->pending);
    FAMILY("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds");
    EACH("nv_inference_request_duration_us", "%llu", (unsigned long long)((s->success.ns + s->fail.ns) / 1000));
    FAMILY("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds");
    EACH("nv_inference_queue_duration_us", "%llu", (unsigned long long)(s->queue.ns / 1000));
    FAMILY("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds");
    EACH("nv_inference_compute_input_duration_us", "%llu", (unsigned long long)(s->compute_input.ns / 1000));
    FAMILY("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds");
    EACH("nv_inference_compute_infer_duration_us", "%llu", (unsigned long long)(s->compute_infer.ns / 1000));
    FAMILY("nv_inference_compute_output_duration_us", "counter", "Cumulative inference compute output duration in microseconds");
    EACH("nv_inference_compute_output_duration_us", "%llu", (unsigned long long)(s->compute_output.ns / 1000));

    FAMILY("hstu_kv_cache_hits_total", "counter", "Users whose cached K/V prefix was reused, by tier");
    for (int i = 0; i < n; i++) {
        put(&t, "hstu_kv_cache_hits_total{model=\"%s\",tier=\"device\",version=\"1\"} %llu\n", sn[i].name,
            (unsigned long long)sn[i].s.cache.device_hits);
        put(&t, "hstu_kv_cache_hits_total{model=\"%s\",tier=\"host\",version=\"1\"} %llu\n", sn[i].name,
            (unsigned long long)sn[i].s.cache.host_hits);
    }
    FAMILY("hstu_kv_cache_misses_total", "counter", "Users computed from scratch");
    EACH("hstu_kv_cache_misses_total", "%llu", (unsigned long long)s->cache.misses);
    FAMILY("hstu_kv_cache_tokens_reused_total", "counter", "History tokens read from the KV cache");
    EACH("hstu_kv_cache_tokens_reused_total", "%llu", (unsigned long long)s->cache.tokens_reused);
    FAMILY("hstu_kv_cache_tokens_computed_total", "counter", "Tokens computed (new history and candidates)");
    EACH("hstu_kv_cache_tokens_computed_total", "%llu", (unsigned long long)s->cache.tokens_computed);
    FAMILY("hstu_kv_cache_evictions_total", "counter", "Users evicted from the KV cache");
    EACH("hstu_kv_cache_evictions_total", "%llu", (unsigned long long)s->cache.evictions);
    FAMILY("hstu_kv_cache_rewrites_total", "counter", "Cached histories dropped because the history changed");
    EACH("hstu_kv_cache_rewrites_total", "%llu", (unsigned long long)s->cache.rewrites);
    FAMILY("hstu_kv_cache_redone_total", "counter",
           "Users run again because a deferred prefix check found their history rewritten");
    EACH("hstu_kv_cache_redone_total", "%llu", (unsigned long long)s->cache.redone);
    FAMILY("hstu_kv_cache_degraded_total", "counter", "Users run without caching because no page was free");
    EACH("hstu_kv_cache_degraded_total", "%llu", (unsigned long long)s->cache.degraded);
    FAMILY("hstu_kv_cache_pages_in_use", "gauge", "KV pages holding cached rows");
    EACH("hstu_kv_cache_pages_in_use", "%d", s->cache.pages_in_use);
    FAMILY("hstu_kv_cache_pages_total", "gauge", "KV pages in the pool");
    EACH("hstu_kv_cache_pages_total", "%d", s->cache.pages_total);
    FAMILY("hstu_kv_cache_users", "gauge", "Users with cached rows");
    EACH("hstu_kv_cache_users", "%d", s->cache.users);
    FAMILY("hstu_kv_host_chunks_in_use", "gauge", "Host tier chunks holding offloaded K/V (cuda)");
    EACH("hstu_kv_host_chunks_in_use", "%d", s->cache.host_chunks_in_use);
    FAMILY("hstu_kv_host_chunks_total", "gauge", "Host tier chunk slots (cuda, --host-cache-mb)");
    EACH("hstu_kv_host_chunks_total", "%d", s->cache.host_chunks_total);
    FAMILY("hstu_kv_onload_bytes_total", "counter", "K/V bytes brought up from the host tier");
    EACH("hstu_kv_onload_bytes_total", "%llu", (unsigned long long)s->cache.onload_bytes);
    FAMILY("hstu_kv_host_rows_recomputed_total", "counter",
           "Rows of host hits computed again instead of onloaded (--onload)");
    EACH("hstu_kv_host_rows_recomputed_total", "%llu", (unsigned long long)s->cache.host_rows_recomputed);
    FAMILY("hstu_kv_offload_bytes_total", "counter", "K/V bytes copied to the host tier");
    EACH("hstu_kv_offload_bytes_total", "%llu", (unsigned long long)s->cache.offload_bytes);
    FAMILY("hstu_kv_offloads_skipped_total", "counter", "Offloads skipped because the offload queue was full");
    EACH("hstu_kv_offloads_skipped_total", "%llu", (unsigned long long)s->cache.offloads_skipped);
    FAMILY("hstu_cuda_graph_replays_total", "counter", "Forwards whose layers ran as replayed CUDA graphs");
    EACH("hstu_cuda_graph_replays_total", "%llu", (unsigned long long)s->cache.graph_runs);
    FAMILY("hstu_batch_retries_total", "counter", "Batches the engine refused and the batcher ran job by job (0 unless a bug)");
    EACH("hstu_batch_retries_total", "%llu", (unsigned long long)s->batch_retries);
    FAMILY("hstu_batch_tokens_total", "counter", "Tokens in executed batches");
    EACH("hstu_batch_tokens_total", "%llu", (unsigned long long)s->batch_tokens);
    FAMILY("hstu_batch_size", "histogram", "Users per executed batch");
    for (int i = 0; i < n; i++) {
        uint64_t cum = 0, sum = 0;
        int mb = sn[i].s.max_batch;
        for (int le = 1;; le *= 2) {
            for (int b = le / 2 + 1; b <= le && b <= mb; b++) {
                uint64_t c = sn[i].batch_count ? sn[i].batch_count[b] : 0;
                cum += c;
                sum += c * (uint64_t)b;
            }
            put(&t, "hstu_batch_size_bucket{model=\"%s\",version=\"1\",le=\"%d\"} %llu\n", sn[i].name, le,
                (unsigned long long)cum);
            if (le >= mb)
                break;
        }
        put(&t, "hstu_batch_size_bucket{model=\"%s\",version=\"1\",le=\"+Inf\"} %llu\n", sn[i].name,
            (unsigned long long)cum);
        put(&t, "hstu_batch_size_sum{model=\"%s\",version=\"1\"} %llu\n", sn[i].name, (unsigned long long)sum);
        put(&t, "hstu_batch_size_count{model=\"%s\",version=\"1\"} %llu\n", sn[i].name, (unsigned long long)cum);
    }
    FAMILY("hstu_request_buffers", "gauge", "Request body buffers (--body-buffers), by state");
    put(&t, "hstu_request_buffers{state=\"in_use\"} %d\n", ps->in_use);
    put(&t, "hstu_request_buffers{state=\"total\"} %d\n", ps->buffers);
    put(&t, "hstu_request_buffers{state=\"max_in_use\"} %d\n", ps->in_use_max);
    FAMILY("hstu_request_buffer_refusals_total", "counter", "Requests answered 503 because no body buffer was free");
    put(&t, "hstu_request_buffer_refusals_total %llu\n", (unsigned long long)ps->refused);
    FAMILY("hstu_json_arena_overflows_total", "counter", "Requests whose JSON needed more than a slot's parse memory (413)");
    put(&t, "hstu_json_arena_overflows_total %llu\n", (unsigned long long)json_arena_overflows());
#undef FAMILY
#undef EACH
    for (int i = 0; i < n; i++)
        free(sn[i].batch_count);
    free(sn);
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    return t.p;
}
