/* stats.c - per-model counters: Triton's statistics JSON.
 *
 * Counters are plain integers behind the model's mutex; the batch-size
 * arrays are sized once from --max-batch. Metrics (metrics.c) read the same
 * structure, so /stats and /metrics never disagree.
 */
#include "serve/stats.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t stats_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

int stats_init(model_stats *s, int max_batch)
{
    memset(s, 0, sizeof *s);
    s->max_batch = max_batch;
    size_t n = (size_t)max_batch + 1;
    s->batch_count = calloc(n, sizeof *s->batch_count);
    s->batch_input = calloc(n, sizeof *s->batch_input);
    s->batch_infer = calloc(n, sizeof *s->batch_infer);
    s->batch_output = calloc(n, sizeof *s->batch_output);
    pthread_mutex_init(&s->mu, NULL);
    if (!s->batch_count || !s->batch_input || !s->batch_infer || !s->batch_output) {
        stats_free(s);
        return -1;
    }
    return 0;
}

void stats_free(model_stats *s)
{
    if (!s || !s->batch_count)
        return;
    free(s->batch_count);
    free(s->batch_input);
    free(s->batch_infer);
    free(s->batch_output);
    s->batch_count = NULL;
    pthread_mutex_destroy(&s->mu);
}

static void add(stat_dur *d, uint64_t ns)
{
    d->count++;
    d->ns += ns;
}

static int clamp_batch(const model_stats *s, int b) { return b < 0 ? 0 : b > s->max_batch ? s->max_batch : b; }

void stats_pending_add(model_stats *s, int d)
{
    pthread_mutex_lock(&s->mu);
    s->pending += d;
    pthread_mutex_unlock(&s->mu);
}

void stats_request_done(model_stats *s, bool ok, fail_reason why, uint64_t total_ns)
{
    pthread_mutex_lock(&s->mu);
    if (ok) {
        add(&s->success, total_ns);
        s->last_inference_ms = wall_ms();
    } else {
        add(&s->fail, total_ns);
        s->fail_reason[why < FAIL_N ? why : FAIL_OTHER]++;
    }
    pthread_mutex_unlock(&s->mu);
}

void stats_output(model_stats *s, int batch_users, uint64_t ns)
{
    pthread_mutex_lock(&s->mu);
    add(&s->compute_output, ns);
    add(&s->batch_output[clamp_batch(s, batch_users)], ns);
    pthread_mutex_unlock(&s->mu);
}

void stats_execution(model_stats *s, int batch_users, int tokens, uint64_t input_ns, uint64_t infer_ns)
{
    pthread_mutex_lock(&s->mu);
    int b = clamp_batch(s, batch_users);
    s->execution_count++;
    s->inference_count += (uint64_t)batch_users;
    s->batch_tokens += (uint64_t)tokens;
    s->batch_count[b]++;
    add(&s->batch_input[b], input_ns);
    add(&s->batch_infer[b], infer_ns);
    add(&s->compute_input, input_ns);
    add(&s->compute_infer, infer_ns);
    pthread_mutex_unlock(&s->mu);
}

void stats_batch_retry(model_stats *s)
{
    pthread_mutex_lock(&s->mu);
    s->batch_retries++;
    pthread_mutex_unlock(&s->mu);
}

void stats_queue(model_stats *s, uint64_t ns)
{
    pthread_mutex_lock(&s->mu);
    add(&s->queue, ns);
    pthread_mutex_unlock(&s->mu);
}

void stats_users(model_stats *s, int hits, int misses, uint64_t reused, uint64_t computed)
{
    pthread_mutex_lock(&s->mu);
    s->users_hit += (uint64_t)hits;
    s->users_miss += (uint64_t)misses;
    s->tokens_reused += reused;
    s->tokens_computed += computed;
    pthread_mutex_unlock(&s->mu);
}

void stats_set_cache(model_stats *s, const hstu_cache_stats *c)
{
    pthread_mutex_lock(&s->mu);
    s->cache = *c;
    pthread_mutex_unlock(&s->mu);
}

static json_t *dur(stat_dur d)
{
    return json_pack("{sI sI}", "count", (json_int_t)d.count, "ns", (json_int_t)d.ns);
}

json_t *stats_json(model_stats *s, const char *name)
{
    pthread_mutex_lock(&s->mu);
    json_t *batches = json_array();
    for (int b = 1; b <= s->max_batch; b++)
        if (s->batch_count[b])
            json_array_append_new(batches,
                                  json_pack("{sI so so so}", "batch_size", (json_int_t)b, "compute_input",
                                            dur(s->batch_input[b]), "compute_infer", dur(s->batch_infer[b]),
                                            "compute_output", dur(s->batch_output[b])));
    json_t *inf = json_pack("{so so so so so so so so}", "success", dur(s->success), "fail", dur(s->fail),
                            "queue", dur(s->queue), "compute_input", dur(s->compute_input), "compute_infer",
                            dur(s->compute_infer), "compute_output", dur(s->compute_output), "cache_hit",
                            dur(s->cache_hit), "cache_miss", dur(s->cache_miss));
    json_t *o = json_pack("{ss ss sI sI sI so so}", "name", name, "version", "1", "last_inference",
                          (json_int_t)s->last_inference_ms, "inference_count", (json_int_t)s->inference_count,
                          "execution_count", (json_int_t)s->execution_count, "inference_stats", inf,
                          "batch_stats", batches);
    pthread_mutex_unlock(&s->mu);
    return o;
}
