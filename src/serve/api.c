/* api.c - the endpoints of spec/serving.md section 1, and the server's life.
 *
 * route() maps a whole HTTP request to one endpoint; every answer is JSON
 * (an error is {"error": "..."} with 400/404/405/413/503; 500 only for a
 * bug) except a binary infer reply and /metrics. infer() is the request
 * path: take the model (a reference), take a job slot (none: 503, the
 * queue is full), decode into it, queue it, wait, encode the reply into the
 * slot; the slot and the reference are given back once the reply is sent
 * (infer_reply_sent), or at once on an error. Nothing on it allocates
 * (docs/serving.md, "Memory").
 *
 * Shutdown: serve_begin_shutdown makes ready answer 400 and new infer
 * requests 503; serve_stop stops accepting connections, lets each batcher
 * finish what is queued (their handlers answer), then closes everything.
 */
#include "serve/serve.h"

#include "serve/http.h"
#include "serve/json_arena.h"
#include "serve/metrics.h"
#include "serve/protocol.h"
#include "serve/repository.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HSTU_SERVER_VERSION "0.1.0"

struct server {
    serve_options o;
    char repo_path[4096];
    repository repo;
    http_server *http, *metrics;
    atomic_bool stopping;
};

void serve_options_default(serve_options *o)
{
    memset(o, 0, sizeof *o);
    o->http_port = 8000;
    o->metrics_port = 8002;
    o->backend = HSTU_BACKEND_CPU;
    o->max_batch = 32;
    o->max_queue_delay_us = 100;
    o->token_budget = 0;
    o->queue_size = 64;
    o->timeout_us = 0;
    o->conn_timeout_s = 10;
    o->max_body = (size_t)64 << 20;
    o->body_buffers = 64;
    o->max_connections = 256;
    o->cache_bytes = (size_t)1 << 30;
    o->host_cache_bytes = 0;
    o->cuda_graphs = true;
    o->max_top_k = 1000;
}

/* ---- helpers ---------------------------------------------------------------- */

/* Metadata, statistics and index replies (not the infer path) use jansson
 * trees and malloc'd text. */
static void reply_json(http_reply *rep, int status, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        http_reply_error(rep, 503, "out of memory");
        return;
    }
    http_reply_take(rep, status, "application/json", text, strlen(text));
}

static void reply_empty(http_reply *rep, int status)
{
    http_reply_text(rep, status, NULL, "");
}

static bool method_is(const http_request *q, http_reply *rep, const char *want)
{
    if (!strcmp(q->method, want) || (!strcmp(want, "GET") && !strcmp(q->method, "HEAD")))
        return true;
    http_reply_error(rep, 405, "%s %s: method not allowed (use %s)", q->method, q->path, want);
    rep->header_name[0] = "Allow";
    snprintf(rep->header_value[0], sizeof rep->header_value[0], "%s", want);
    rep->n_headers = 1;
    return false;
}

static const char *backend_of(const server *s) { return hstu_backend_name(s->o.backend); }

/* ---- endpoints ------------------------------------------------------------- */

static void server_metadata(server *s, http_reply *rep)
{
    reply_json(rep, 200,
               json_pack("{ss ss s[ssss]}", "name", "hstu", "version", HSTU_SERVER_VERSION, "extensions",
                         "binary_tensor_data", "statistics", "model_configuration", "model_repository"));
}

static void model_info(server *s, const char *name, const char *version, bool config, http_reply *rep)
{
    int status;
    char msg[HSTU_MSG_MAX + 128];
    proto_iface iface;
    served_model *m = repo_acquire(&s->repo, name, version, &iface, &status, msg, sizeof msg);
    if (!m) {
        http_reply_error(rep, status, "%s", msg);
        return;
    }
    const char *shown = iface == PROTO_COMPAT ? "hstu_model" : m->name;
    if (config) {
        proto_limits lim = repo_limits(&s->repo, m);
        reply_json(rep, 200, proto_model_config(m->cfg, iface, shown, backend_of(s), &lim, s->o.queue_size));
    } else {
        reply_json(rep, 200, proto_model_metadata(m->cfg, iface, shown));
    }
    repo_release(&s->repo, m);
}

static void model_ready(server *s, const char *name, const char *version, http_reply *rep)
{
    proto_iface iface;
    served_model *m = repo_find(&s->repo, name, version, &iface);
    if (!m) {
        http_reply_error(rep, 404, "unknown model \"%s\"%s%s", name, version ? " version " : "", version ? version : "");
        return;
    }
    pthread_mutex_lock(&s->repo.mu);
    bool ready = m->state == MODEL_READY && !atomic_load(&s->stopping);
    pthread_mutex_unlock(&s->repo.mu);
    reply_empty(rep, ready ? 200 : 400);
}

static void model_stats_reply(server *s, const char *name, const char *version, http_reply *rep)
{
    json_t *list = json_array();
    if (name) {
        proto_iface iface;
        served_model *m = repo_find(&s->repo, name, version, &iface);
        if (!m) {
            json_decref(list);
            http_reply_error(rep, 404, "unknown model \"%s\"", name);
            return;
        }
        if (m->stats.batch_count)
            json_array_append_new(list, stats_json(&m->stats, m->name));
    } else {
        pthread_mutex_lock(&s->repo.mu);
        for (int i = 0; i < s->repo.n; i++)
            if (s->repo.models[i].stats.batch_count)
                json_array_append_new(list, stats_json(&s->repo.models[i].stats, s->repo.models[i].name));
        pthread_mutex_unlock(&s->repo.mu);
    }
    reply_json(rep, 200, json_pack("{so}", "model_stats", list));
}

/* The reply in a job slot was sent (or dropped): give back the slot, then
 * the model (which an unload waits for). */
static void infer_reply_sent(void *arg)
{
    job *j = arg;
    served_model *m = j->owner;
    repository *r = j->owner_ctx;
    batcher_release(m->batcher, j);
    repo_release(r, m);
}

static void infer(server *s, const char *name, const char *version, const http_request *q, http_reply *rep)
{
    uint64_t t0 = stats_now_ns();
    int status;
    char msg[HSTU_MSG_MAX + 128];
    if (atomic_load(&s->stopping)) {
        http_reply_error(rep, 503, "the server is shutting down");
        return;
    }
    proto_iface iface;
    served_model *m = repo_acquire(&s->repo, name, version, &iface, &status, msg, sizeof msg);
    if (!m) {
        http_reply_error(rep, status, "%s", msg);
        return;
    }
    long long header_len = -1;
    const char *hl = http_header(q, "Inference-Header-Content-Length");
    if (hl) {
        char *end;
        header_len = strtoll(hl, &end, 10);
        if (*end || end == hl || header_len < 0) {
            http_reply_error(rep, 400, "Inference-Header-Content-Length \"%s\" is not a non-negative integer", hl);
            stats_request_done(&m->stats, false, FAIL_REJECTED, stats_now_ns() - t0);
            repo_release(&s->repo, m);
            return;
        }
    }
    job *j = batcher_acquire(m->batcher);
    if (!j) {
        if (atomic_load(&s->stopping))
            http_reply_error(rep, 503, "the server is shutting down");
        else
            http_reply_error(rep, 503, "the queue is full (%d requests; --queue-size): try again later",
                             s->o.queue_size);
        stats_request_done(&m->stats, false, FAIL_REJECTED, stats_now_ns() - t0);
        repo_release(&s->repo, m);
        return;
    }
    infer_call call;
    proto_limits lim = repo_limits(&s->repo, m);
    status = proto_decode_infer(m->engine, m->cfg, iface, &lim, q->body, q->body_len, header_len, j, &call, msg,
                                sizeof msg);
    if (status != 200) {
        http_reply_error(rep, status, "%s", msg);
        stats_request_done(&m->stats, false, FAIL_REJECTED, stats_now_ns() - t0);
        goto out;
    }
    stats_pending_add(&m->stats, 1);
    if (!batcher_submit(m->batcher, j)) {
        stats_pending_add(&m->stats, -1);
        http_reply_error(rep, 503, "the server is shutting down");
        stats_request_done(&m->stats, false, FAIL_REJECTED, stats_now_ns() - t0);
        goto out;
    }
    batcher_wait(m->batcher, j);
    stats_pending_add(&m->stats, -1);
    if (j->http_status != 200) {
        http_reply_error(rep, j->http_status, "%s", j->msg);
        stats_request_done(&m->stats, false,
                           j->http_status == 503 ? FAIL_CANCELED : j->http_status == 400 ? FAIL_REJECTED : FAIL_BACKEND,
                           stats_now_ns() - t0);
        goto out;
    }
    uint64_t t1 = stats_now_ns();
    size_t json_len = 0;
    size_t len = proto_encode_infer(m->cfg, iface, iface == PROTO_COMPAT ? "hstu_model" : m->name, j, &call, &json_len);
    if (!len) {
        http_reply_error(rep, 500, "the reply does not fit its buffer of %zu bytes (a bug)", j->scratch_cap);
        stats_request_done(&m->stats, false, FAIL_OTHER, stats_now_ns() - t0);
        goto out;
    }
    stats_output(&m->stats, j->batch_users, stats_now_ns() - t1);
    j->owner = m;
    j->owner_ctx = &s->repo;
    http_reply_borrow(rep, 200, json_len != len ? "application/octet-stream" : "application/json", j->scratch, len,
                      infer_reply_sent, j);
    if (json_len != len) {
        rep->header_name[0] = "Inference-Header-Content-Length";
        snprintf(rep->header_value[0], sizeof rep->header_value[0], "%zu", json_len);
        rep->n_headers = 1;
    }
    stats_request_done(&m->stats, true, FAIL_OTHER, stats_now_ns() - t0);
    return; /* the slot and the model are given back once the reply is sent */
out:
    batcher_release(m->batcher, j);
    repo_release(&s->repo, m);
}

static void repository_index(server *s, const http_request *q, http_reply *rep)
{
    bool only_ready = false;
    if (q->body_len > 0) {
        json_error_t jerr;
        json_t *o = json_loadb(q->body, q->body_len, 0, &jerr);
        if (!json_is_object(o)) {
            json_decref(o);
            http_reply_error(rep, 400, "repository index: the body must be a JSON object");
            return;
        }
        json_t *r = json_object_get(o, "ready");
        only_ready = json_is_true(r);
        json_decref(o);
    }
    json_t *all = repo_index(&s->repo);
    if (only_ready) {
        json_t *keep = json_array();
        size_t i;
        json_t *x;
        json_array_foreach(all, i, x) {
            if (!strcmp(json_string_value(json_object_get(x, "state")), "READY"))
                json_array_append(keep, x);
        }
        json_decref(all);
        all = keep;
    }
    reply_json(rep, 200, all);
}

/* ---- routing ---------------------------------------------------------------- */

#define MAX_SEG 8

static void route(void *ctx, const http_request *q, http_reply *rep)
{
    server *s = ctx;
    char path[1024];
    char *seg[MAX_SEG];
    int n = 0;
    if (strlen(q->path) >= sizeof path) {
        http_reply_error(rep, 404, "no such path");
        return;
    }
    snprintf(path, sizeof path, "%s", q->path);
    for (char *save = NULL, *tok = strtok_r(path, "/", &save); tok; tok = strtok_r(NULL, "/", &save)) {
        if (n == MAX_SEG) {
            http_reply_error(rep, 404, "no such path: %s", q->path);
            return;
        }
        seg[n++] = tok;
    }
    if (n == 0 || strcmp(seg[0], "v2"))
        goto not_found;
    if (n == 1) {
        if (method_is(q, rep, "GET"))
            server_metadata(s, rep);
        return;
    }
    if (!strcmp(seg[1], "health") && n == 3 && (!strcmp(seg[2], "live") || !strcmp(seg[2], "ready"))) {
        if (method_is(q, rep, "GET"))
            reply_empty(rep, !strcmp(seg[2], "live") || !atomic_load(&s->stopping) ? 200 : 400);
        return;
    }
    if (!strcmp(seg[1], "models")) {
        if (n == 3 && !strcmp(seg[2], "stats")) {
            if (method_is(q, rep, "GET"))
                model_stats_reply(s, NULL, NULL, rep);
            return;
        }
        if (n < 3)
            goto not_found;
        const char *name = seg[2], *version = NULL;
        int i = 3;
        if (i < n && !strcmp(seg[i], "versions")) {
            if (i + 1 >= n)
                goto not_found;
            version = seg[i + 1];
            i += 2;
        }
        if (i == n) {
            if (method_is(q, rep, "GET"))
                model_info(s, name, version, false, rep);
            return;
        }
        if (i + 1 != n)
            goto not_found;
        if (!strcmp(seg[i], "ready")) {
            if (method_is(q, rep, "GET"))
                model_ready(s, name, version, rep);
        } else if (!strcmp(seg[i], "config")) {
            if (method_is(q, rep, "GET"))
                model_info(s, name, version, true, rep);
        } else if (!strcmp(seg[i], "stats")) {
            if (method_is(q, rep, "GET"))
                model_stats_reply(s, name, version, rep);
        } else if (!strcmp(seg[i], "infer")) {
            if (method_is(q, rep, "POST"))
                infer(s, name, version, q, rep);
        } else {
            goto not_found;
        }
        return;
    }
    if (!strcmp(seg[1], "repository")) {
        if (n == 3 && !strcmp(seg[2], "index")) {
            if (method_is(q, rep, "POST"))
                repository_index(s, q, rep);
            return;
        }
        if (n == 5 && !strcmp(seg[2], "models") && (!strcmp(seg[4], "load") || !strcmp(seg[4], "unload"))) {
            if (!method_is(q, rep, "POST"))
                return;
            if (atomic_load(&s->stopping)) {
                http_reply_error(rep, 503, "the server is shutting down");
                return;
            }
            char msg[HSTU_MSG_MAX + 256];
            int st = !strcmp(seg[4], "load") ? repo_load(&s->repo, seg[3], msg, sizeof msg)
                                             : repo_unload(&s->repo, seg[3], msg, sizeof msg);
            if (st == 200)
                reply_empty(rep, 200);
            else
                http_reply_error(rep, st, "%s", msg);
            return;
        }
    }
not_found:
    http_reply_error(rep, 404, "no such path: %s", q->path);
}

static void route_metrics(void *ctx, const http_request *q, http_reply *rep)
{
    server *s = ctx;
    if (strcmp(q->path, "/metrics")) {
        http_reply_error(rep, 404, "no such path: %s (metrics are at /metrics)", q->path);
        return;
    }
    if (!method_is(q, rep, "GET"))
        return;
    http_pool_stats ps;
    http_server_pool_stats(s->http, &ps);
    char *text = metrics_text(&s->repo, &ps);
    if (!text) {
        http_reply_error(rep, 503, "out of memory");
        return;
    }
    http_reply_take(rep, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
}

/* ---- lifecycle --------------------------------------------------------------- */

hstu_status serve_start(const serve_options *o, server **out, hstu_error *err)
{
    *out = NULL;
    if (!o->model_repository || o->max_batch < 1 || o->queue_size < 1 || o->max_body < 1 || o->body_buffers < 1 ||
        o->max_connections < 1 || o->max_top_k < 1 || o->max_queue_delay_us < 0 || o->conn_timeout_s < 1) {
        err->status = HSTU_ERR_ARG;
        snprintf(err->msg, sizeof err->msg, "serve: bad options (a model repository and positive limits are needed)");
        return HSTU_ERR_ARG;
    }
    server *s = calloc(1, sizeof *s);
    if (!s) {
        err->status = HSTU_ERR_NOMEM;
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return HSTU_ERR_NOMEM;
    }
    s->o = *o;
    snprintf(s->repo_path, sizeof s->repo_path, "%s", o->model_repository);
    s->o.model_repository = s->repo_path;
    atomic_init(&s->stopping, false);
    signal(SIGPIPE, SIG_IGN);
    json_arena_install(); /* before any handler parses a request */
    hstu_status st = repo_init(&s->repo, &s->o, err);
    if (st != HSTU_OK) {
        free(s);
        return st;
    }
    char msg[256];
    http_server_options ho = {
        .host = o->host,
        .port = o->http_port,
        .max_body = o->max_body,
        .body_buffers = o->body_buffers,
        .max_connections = o->max_connections,
        .conn_timeout_s = o->conn_timeout_s,
    };
    s->http = http_server_start(&ho, route, s, msg, sizeof msg);
    if (s->http && o->metrics_port >= 0) {
        http_server_options mo = ho;
        mo.port = o->metrics_port;
        mo.max_body = 4096;
        mo.body_buffers = 16;
        mo.max_connections = 16;
        s->metrics = http_server_start(&mo, route_metrics, s, msg, sizeof msg);
    }
    if (!s->http || (o->metrics_port >= 0 && !s->metrics)) {
        http_server_stop(s->http);
        repo_stop_all(&s->repo);
        repo_free(&s->repo);
        free(s);
        err->status = HSTU_ERR_IO;
        snprintf(err->msg, sizeof err->msg, "%s", msg);
        return HSTU_ERR_IO;
    }
    *out = s;
    return HSTU_OK;
}

int serve_http_port(const server *s) { return http_server_port(s->http); }
int serve_metrics_port(const server *s) { return s->metrics ? http_server_port(s->metrics) : -1; }

void serve_begin_shutdown(server *s) { atomic_store(&s->stopping, true); }

void serve_stop(server *s)
{
    if (!s)
        return;
    serve_begin_shutdown(s);
    http_server_quiesce(s->http);
    http_server_quiesce(s->metrics);
    repo_stop_all(&s->repo);     /* queued requests finish; their handlers answer */
    http_server_drain(s->http, s->o.conn_timeout_s * 1000); /* and their replies go out */
    http_server_stop(s->http);   /* then every connection closes */
    http_server_stop(s->metrics);
    repo_free(&s->repo);
    free(s);
}
