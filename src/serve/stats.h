/* stats.h - per-model counters behind /v2/models/.../stats and /metrics.
 *
 * All counters of one model sit behind one mutex, updated by the batcher
 * (queue, compute) and the HTTP handlers (success/fail, output encoding).
 * Durations follow Triton's statistics extension: a count and total ns.
 */
#ifndef HSTU_SERVE_STATS_H
#define HSTU_SERVE_STATS_H

#include "hstu.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

typedef struct stat_dur {
    uint64_t count, ns;
} stat_dur;

/* Triton's failure reasons of nv_inference_request_failure. */
typedef enum fail_reason { FAIL_REJECTED = 0, FAIL_CANCELED, FAIL_BACKEND, FAIL_OTHER, FAIL_N } fail_reason;

typedef struct model_stats {
    pthread_mutex_t mu;
    uint64_t last_inference_ms;
    uint64_t inference_count;  /* users computed */
    uint64_t execution_count;  /* engine runs */
    stat_dur success, fail, queue, compute_input, compute_infer, compute_output, cache_hit, cache_miss;
    uint64_t fail_reason[FAIL_N];
    int max_batch;             /* batch_* arrays hold [0, max_batch] */
    uint64_t *batch_count;
    stat_dur *batch_input, *batch_infer, *batch_output;
    /* this engine's own */
    uint64_t users_hit, users_miss, tokens_reused, tokens_computed, batch_tokens;
    uint64_t batch_retries;    /* batches the engine refused, rerun job by job (a bug if not 0) */
    int pending;               /* requests queued or running */
    hstu_cache_stats cache;    /* the engine's, copied by the batcher after each batch */
} model_stats;

int stats_init(model_stats *s, int max_batch);
void stats_free(model_stats *s);
void stats_pending_add(model_stats *s, int d);
/* A request finished (ok or not) after total_ns in the server. */
void stats_request_done(model_stats *s, bool ok, fail_reason why, uint64_t total_ns);
void stats_output(model_stats *s, int batch_users, uint64_t ns);
/* One engine run of batch_users users and tokens tokens. */
void stats_execution(model_stats *s, int batch_users, int tokens, uint64_t input_ns, uint64_t infer_ns);
void stats_queue(model_stats *s, uint64_t ns);
void stats_batch_retry(model_stats *s);
/* Called by the engine's thread only (the engine is not thread-safe). */
void stats_set_cache(model_stats *s, const hstu_cache_stats *c);
void stats_users(model_stats *s, int hits, int misses, uint64_t reused, uint64_t computed);
/* The Triton $model_stat object. */
json_t *stats_json(model_stats *s, const char *name);

uint64_t stats_now_ns(void);

#endif
