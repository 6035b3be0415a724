/* batcher.c - the bounded queue and the batcher thread that owns an engine.
 *
 * Handlers append jobs to a FIFO; one thread per model takes them out in
 * batches and runs hstu_engine_run. A batch is formed by scanning the queue
 * in order and taking each job whose users are neither in the batch nor in
 * an earlier job passed over (so one user's requests keep their order and
 * never share a batch: the second sees the first one's cache), until the
 * next job would pass max_batch users or the token budget. Like Triton's
 * dynamic batcher, a batch that is not full waits until the oldest queued
 * job has waited max_queue_delay_us; a full batch runs at once. A job whose
 * deadline passed is answered 503 and never computed.
 *
 * Job slots and the batch scratch arrays are allocated in batcher_create,
 * the slots' scratch memory is one mapping reserved there; nothing here
 * allocates per request.
 */
#include "serve/batcher.h"

#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct batcher {
    hstu_engine *e;
    const hstu_config *cfg;
    batcher_options o;
    model_stats *stats;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    job *slots;            /* [queue_size] */
    job **free_slots;      /* stack of free slots */
    int n_free;
    job *head, *tail;      /* the queue */
    bool stopping, joined;
    pthread_t thread;
    /* scratch of one batch */
    job **bjobs;           /* [max_batch] */
    hstu_request *breqs;   /* [max_batch] */
    hstu_result *bres;     /* [max_batch] */
    int64_t *busers;       /* [max_batch] users in the batch */
    int64_t *blocked;      /* [queue_size * max_batch] users of passed-over jobs */
    size_t bytes;          /* all of the above */
    char *scratch;         /* [queue_size][scratch_stride], mmap'd */
    size_t scratch_stride, scratch_map;
};

size_t batcher_bytes(const batcher *b) { return b->bytes; }

size_t batcher_ids_cap(const hstu_config *cfg, int max_batch, int token_budget)
{
    return (size_t)max_batch * (size_t)cfg->n_context + 3 * (size_t)token_budget;
}

const batcher_options *batcher_opts(const batcher *b) { return &b->o; }

static bool has_user(const int64_t *set, int n, int64_t u)
{
    for (int i = 0; i < n; i++)
        if (set[i] == u)
            return true;
    return false;
}

static void answer(batcher *b, job *j, int status, const char *msg)
{
    j->http_status = status;
    if (msg)
        snprintf(j->msg, sizeof j->msg, "%s", msg);
    j->done = true;
}

/* Runs the jobs of one batch; called without the lock. */
static void run_batch(batcher *b, job **jobs, int nj)
{
    uint64_t t0 = stats_now_ns();
    int n = 0, tokens = 0;
    for (int k = 0; k < nj; k++) {
        job *j = jobs[k];
        stats_queue(b->stats, t0 - j->enqueue_ns);
        for (int i = 0; i < j->B; i++) {
            b->breqs[n] = j->reqs[i];
            b->bres[n] = j->res[i];
            n++;
        }
        tokens += j->tokens;
    }
    /* The same logits flag for the whole batch: jobs are grouped by it. */
    bool logits = jobs[0]->logits;
    uint64_t t1 = stats_now_ns();
    hstu_error err = {0};
    hstu_status st = n ? hstu_engine_run(b->e, b->breqs, n, b->bres, logits, &err) : HSTU_OK;
    uint64_t t2 = stats_now_ns();
    if (st == HSTU_OK) {
        int hits = 0, misses = 0;
        uint64_t reused = 0, computed = 0;
        for (int i = 0; i < n; i++) {
            hits += b->bres[i].tier != HSTU_TIER_MISS;
            misses += b->bres[i].tier == HSTU_TIER_MISS;
            reused += (uint64_t)b->bres[i].cached_tokens;
            computed += (uint64_t)b->bres[i].computed_tokens;
        }
        stats_execution(b->stats, n, tokens, t1 - t0, t2 - t1);
        stats_users(b->stats, hits, misses, reused, computed);
        n = 0;
        for (int k = 0; k < nj; k++)
            for (int i = 0; i < jobs[k]->B; i++)
                jobs[k]->res[i] = b->bres[n++];
        for (int k = 0; k < nj; k++)
            jobs[k]->batch_users = n, jobs[k]->http_status = 200;
        return;
    }
    /* Every job was checked on its own before it was queued, so a batch
     * error is unexpected: run the jobs one by one so that one bad job
     * cannot fail the others. */
    stats_batch_retry(b->stats);
    fprintf(stderr, "hstu serve: a batch of %d users was refused (%s); running its requests one by one\n", n, err.msg);
    for (int k = 0; k < nj; k++) {
        job *j = jobs[k];
        uint64_t s0 = stats_now_ns();
        st = hstu_engine_run(b->e, j->reqs, j->B, j->res, j->logits, &err);
        if (st == HSTU_OK) {
            stats_execution(b->stats, j->B, j->tokens, 0, stats_now_ns() - s0);
            j->batch_users = j->B;
            j->http_status = 200;
        } else {
            j->http_status = st == HSTU_ERR_ARG ? 400 : 500;
            snprintf(j->msg, sizeof j->msg, "%s", err.msg);
        }
    }
}

static void *batcher_main(void *arg)
{
    batcher *b = arg;
    /* OpenMP's thread count is per thread: the engine set it on the thread
     * that created it, and this thread, which runs the engine, starts from
     * the process default (all cores) unless it sets it too. */
    if (b->o.threads > 0)
        omp_set_num_threads(b->o.threads);
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->head && !b->stopping)
            pthread_cond_wait(&b->cv_work, &b->mu);
        if (!b->head)
            break; /* stopping and drained */
        uint64_t now = stats_now_ns();
        /* Expired jobs are answered, never computed. */
        uint64_t next_deadline = 0;
        for (job **pp = &b->head; *pp;) {
            job *j = *pp;
            if (j->deadline_ns && now >= j->deadline_ns) {
                *pp = j->next;
                snprintf(j->msg, sizeof j->msg, "request timed out after %llu us in the queue (timeout parameter)",
                         (unsigned long long)((now - j->enqueue_ns) / 1000));
                answer(b, j, 503, NULL);
                stats_queue(b->stats, now - j->enqueue_ns);
                continue;
            }
            if (j->deadline_ns && (!next_deadline || j->deadline_ns < next_deadline))
                next_deadline = j->deadline_ns;
            pp = &j->next;
        }
        b->tail = NULL;
        for (job *j = b->head; j; j = j->next)
            b->tail = j;
        pthread_cond_broadcast(&b->cv_done);
        if (!b->head)
            continue;
        /* Form a batch in queue order. */
        int nj = 0, nu = 0, nblocked = 0, tokens = 0;
        bool full = false, logits = b->head->logits;
        for (job *j = b->head; j && !full; j = j->next) {
            bool conflict = j->logits != logits;
            for (int i = 0; i < j->B && !conflict; i++)
                conflict = has_user(b->busers, nu, j->reqs[i].user_id) ||
                           has_user(b->blocked, nblocked, j->reqs[i].user_id);
            if (!conflict && (nu + j->B > b->o.max_batch || tokens + j->tokens > b->o.token_budget)) {
                full = true;
                break;
            }
            if (conflict) {
                for (int i = 0; i < j->B; i++)
                    b->blocked[nblocked++] = j->reqs[i].user_id;
                continue;
            }
            for (int i = 0; i < j->B; i++)
                b->busers[nu++] = j->reqs[i].user_id;
            tokens += j->tokens;
            b->bjobs[nj++] = j;
            if (nu == b->o.max_batch)
                full = true;
        }
        uint64_t wait_until = b->head->enqueue_ns + (uint64_t)b->o.max_queue_delay_us * 1000u;
        if (!full && !b->stopping && now < wait_until) {
            if (next_deadline && next_deadline < wait_until)
                wait_until = next_deadline;
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t abs_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + (wait_until - now);
            ts.tv_sec = (time_t)(abs_ns / 1000000000ull);
            ts.tv_nsec = (long)(abs_ns % 1000000000ull);
            pthread_cond_timedwait(&b->cv_work, &b->mu, &ts);
            continue; /* rescan: more jobs may have come */
        }
        /* Take the batch's jobs out of the queue. */
        for (int k = 0; k < nj; k++) {
            for (job **pp = &b->head; *pp; pp = &(*pp)->next)
                if (*pp == b->bjobs[k]) {
                    *pp = b->bjobs[k]->next;
                    break;
                }
        }
        b->tail = NULL;
        for (job *j = b->head; j; j = j->next)
            b->tail = j;
        pthread_mutex_unlock(&b->mu);
        run_batch(b, b->bjobs, nj);
        hstu_cache_stats cs;
        hstu_engine_cache_stats(b->e, &cs);
        stats_set_cache(b->stats, &cs);
        pthread_mutex_lock(&b->mu);
        for (int k = 0; k < nj; k++)
            b->bjobs[k]->done = true;
        pthread_cond_broadcast(&b->cv_done);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

static void slot_free(job *j)
{
    free(j->reqs);
    free(j->res);
    free(j->ids);
    free(j->scores);
    free(j->topk_ids);
    free(j->topk_scores);
}

hstu_status batcher_create(hstu_engine *e, const hstu_config *cfg, const batcher_options *o,
                           model_stats *stats, batcher **out, hstu_error *err)
{
    *out = NULL;
    batcher *b = calloc(1, sizeof *b);
    if (!b)
        goto nomem;
    b->e = e;
    b->cfg = cfg;
    b->o = *o;
    b->stats = stats;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv_work, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&b->cv_done, NULL);
    size_t mb = (size_t)o->max_batch, qs = (size_t)o->queue_size;
    b->slots = calloc(qs, sizeof *b->slots);
    b->free_slots = calloc(qs, sizeof *b->free_slots);
    b->bjobs = calloc(mb, sizeof *b->bjobs);
    b->breqs = calloc(mb, sizeof *b->breqs);
    b->bres = calloc(mb, sizeof *b->bres);
    b->busers = calloc(mb, sizeof *b->busers);
    b->blocked = calloc(mb * qs, sizeof *b->blocked);
    if (!b->slots || !b->free_slots || !b->bjobs || !b->breqs || !b->bres || !b->busers || !b->blocked)
        goto nomem;
    bool rank = cfg->family == HSTU_FAMILY_RANKING;
    size_t topk = rank ? 0 : mb * (size_t)o->max_top_k;
    /* Scratch: address space only, resident as requests use it. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    b->scratch_stride = (o->scratch_bytes + page - 1) / page * page;
    b->scratch_map = b->scratch_stride * qs;
    if (b->scratch_map) {
        void *m = mmap(NULL, b->scratch_map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED)
            goto nomem;
        b->scratch = m;
    }
    b->bytes = qs * (sizeof(job) + sizeof(job *) + mb * (sizeof(hstu_request) + sizeof(hstu_result) + sizeof(int64_t))) +
               mb * (sizeof(job *) + sizeof(hstu_request) + sizeof(hstu_result) + sizeof(int64_t));
    for (size_t s = 0; s < qs; s++) {
        job *j = &b->slots[s];
        j->ids_cap = batcher_ids_cap(cfg, o->max_batch, o->token_budget);
        j->scratch = b->scratch + s * b->scratch_stride;
        j->scratch_cap = o->scratch_bytes;
        json_arena_init(&j->arena, j->scratch, j->scratch_cap);
        j->scores_cap = rank ? (size_t)o->token_budget * (size_t)cfg->n_tasks : 0;
        j->reqs = calloc(mb, sizeof *j->reqs);
        j->res = calloc(mb, sizeof *j->res);
        j->ids = malloc(j->ids_cap * sizeof *j->ids);
        j->scores = rank ? malloc(j->scores_cap * sizeof *j->scores) : NULL;
        j->topk_ids = rank ? NULL : malloc(mb * (size_t)o->max_top_k * sizeof *j->topk_ids);
        j->topk_scores = rank ? NULL : malloc(mb * (size_t)o->max_top_k * sizeof *j->topk_scores);
        if (!j->reqs || !j->res || !j->ids || (rank ? !j->scores : (!j->topk_ids || !j->topk_scores)))
            goto nomem;
        b->bytes += j->ids_cap * sizeof(int64_t) + j->scores_cap * sizeof(float) + topk * (sizeof(int64_t) + sizeof(float));
        b->free_slots[b->n_free++] = j;
    }
    hstu_cache_stats cs;
    hstu_engine_cache_stats(e, &cs);
    stats_set_cache(stats, &cs);
    if (pthread_create(&b->thread, NULL, batcher_main, b) != 0) {
        b->joined = true;
        batcher_destroy(b);
        err->status = HSTU_ERR_NOMEM;
        snprintf(err->msg, sizeof err->msg, "cannot start the batcher thread");
        return HSTU_ERR_NOMEM;
    }
    *out = b;
    return HSTU_OK;
nomem:
    if (b)
        b->joined = true;
    batcher_destroy(b);
    err->status = HSTU_ERR_NOMEM;
    snprintf(err->msg, sizeof err->msg, "out of memory for %d job slots (--queue-size, --max-batch, --token-budget)",
             o->queue_size);
    return HSTU_ERR_NOMEM;
}

job *batcher_acquire(batcher *b)
{
    job *j = NULL;
    pthread_mutex_lock(&b->mu);
    if (b->n_free > 0 && !b->stopping)
        j = b->free_slots[--b->n_free];
    pthread_mutex_unlock(&b->mu);
    if (j) {
        j->B = 0;
        j->tokens = 0;
        j->logits = false;
        j->deadline_ns = 0;
        j->http_status = 0;
        j->msg[0] = 0;
        j->done = false;
        j->next = NULL;
        j->batch_users = 0;
        j->owner = j->owner_ctx = NULL;
    }
    return j;
}

void batcher_release(batcher *b, job *j)
{
    pthread_mutex_lock(&b->mu);
    b->free_slots[b->n_free++] = j;
    pthread_mutex_unlock(&b->mu);
}

bool batcher_submit(batcher *b, job *j)
{
    pthread_mutex_lock(&b->mu);
    if (b->stopping) {
        pthread_mutex_unlock(&b->mu);
        return false;
    }
    j->enqueue_ns = stats_now_ns();
    j->next = NULL;
    if (b->tail)
        b->tail->next = j;
    else
        b->head = j;
    b->tail = j;
    pthread_cond_signal(&b->cv_work);
    pthread_mutex_unlock(&b->mu);
    return true;
}

void batcher_wait(batcher *b, job *j)
{
    pthread_mutex_lock(&b->mu);
    while (!j->done)
        pthread_cond_wait(&b->cv_done, &b->mu);
    pthread_mutex_unlock(&b->mu);
}

void batcher_stop(batcher *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stopping = true;
    pthread_cond_broadcast(&b->cv_work);
    pthread_mutex_unlock(&b->mu);
    if (!b->joined) {
        pthread_join(b->thread, NULL);
        b->joined = true;
    }
}

void batcher_destroy(batcher *b)
{
    if (!b)
        return;
    batcher_stop(b);
    if (b->slots)
        for (int s = 0; s < b->o.queue_size; s++)
            slot_free(&b->slots[s]);
    free(b->slots);
    free(b->free_slots);
    free(b->bjobs);
    free(b->breqs);
    free(b->bres);
    free(b->busers);
    free(b->blocked);
    if (b->scratch)
        munmap(b->scratch, b->scratch_map);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv_work);
    pthread_cond_destroy(&b->cv_done);
    free(b);
}
