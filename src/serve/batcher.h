/* batcher.h - the bounded queue and the one thread that owns an engine.
 *
 * A model has queue_size job slots, allocated once at start and reused: a
 * slot holds one HTTP request's decoded users (hstu_request[]), their id
 * arrays and their outputs, each sized for the limits below. A handler
 * takes a free slot (none free: 503), fills it, submits it and waits; the
 * batcher thread forms batches and answers. Limits of one slot (one request):
 *   users <= max_batch; tokens (engine's count) <= token_budget;
 *   ids <= users * n_context + 3 * token_budget; top_k <= max_top_k.
 * A slot also has scratch_bytes of scratch memory (reserved at create,
 * resident as used): the JSON parse arena while the request is decoded,
 * then the reply's text; the slot stays taken until the reply is sent.
 */
#ifndef HSTU_SERVE_BATCHER_H
#define HSTU_SERVE_BATCHER_H

#include "hstu.h"
#include "serve/json_arena.h"
#include "serve/stats.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct job {
    /* sized at start */
    hstu_request *reqs;   /* [max_batch] */
    hstu_result *res;     /* [max_batch] */
    int64_t *ids;         /* [ids_cap] */
    size_t ids_cap;
    float *scores;        /* [token_budget * n_tasks] ranking */
    size_t scores_cap;
    int64_t *topk_ids;    /* [max_batch * max_top_k] retrieval */
    float *topk_scores;
    char *scratch;        /* [scratch_cap]: parse arena, then the reply */
    size_t scratch_cap;
    json_arena arena;     /* over scratch */
    void *owner, *owner_ctx; /* the caller's, while it holds the slot (api.c: model, repository) */
    /* filled by the decoder */
    int B;                /* users in this request */
    int tokens;           /* engine tokens of its users */
    bool logits;
    uint64_t deadline_ns; /* 0: none */
    /* filled by the batcher */
    uint64_t enqueue_ns;
    int batch_users;      /* size of the batch it ran in */
    int http_status;      /* 200 or the error's status */
    char msg[HSTU_MSG_MAX];
    bool done;
    struct job *next;     /* queue link */
} job;

typedef struct batcher_options {
    int max_batch;
    int64_t max_queue_delay_us;
    int token_budget;
    int queue_size;
    int max_top_k;
    size_t scratch_bytes; /* per slot */
    int threads;          /* OpenMP threads of the engine's runs, 0: the default */
} batcher_options;

typedef struct batcher batcher;

/* Starts the thread. The engine and stats must outlive the batcher. */
hstu_status batcher_create(hstu_engine *e, const hstu_config *cfg, const batcher_options *o,
                           model_stats *stats, batcher **out, hstu_error *err);
/* A free slot, or NULL when every slot is taken (the queue is full). */
job *batcher_acquire(batcher *b);
void batcher_release(batcher *b, job *j);
/* Queues j. Returns false (j untouched) when the batcher is stopping. */
bool batcher_submit(batcher *b, job *j);
/* Blocks until j is answered (j->done). */
void batcher_wait(batcher *b, job *j);
/* Finishes what is queued, then joins the thread. Idempotent. */
void batcher_stop(batcher *b);
void batcher_destroy(batcher *b);
const batcher_options *batcher_opts(const batcher *b);
/* Bytes of the job slots and batch scratch, allocated at create (the
 * slots' scratch memory, reserved, not counted). */
size_t batcher_bytes(const batcher *b);
/* Ids one slot holds: max_batch * n_context + 3 * token_budget. */
size_t batcher_ids_cap(const hstu_config *cfg, int max_batch, int token_budget);

#endif
