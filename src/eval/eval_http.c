/* eval_http.c - evaluation requests through `hstu serve`. See eval_http.h. */
#include "eval/eval_http.h"

#include "core/status.h"
#include "serve/http_client.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOST_MAX 128

struct eval_http {
    char host[HOST_MAX];
    int port;
    char path[300];
    int fd;
    const hstu_config *cfg;
    char *buf;
    size_t len, cap;
};

static bool hb_put(eval_http *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool hb_put(eval_http *h, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(h->buf + h->len, h->cap - h->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < h->cap - h->len) {
            h->len += (size_t)n;
            return true;
        }
        size_t cap = h->cap ? 2 * h->cap : 1 << 16;
        char *nb = realloc(h->buf, cap);
        if (!nb)
            return false;
        h->buf = nb;
        h->cap = cap;
    }
}

/* One INT64 input tensor with its values. */
static bool hb_tensor(eval_http *h, bool first, const char *name, int64_t d0, int64_t d1, const int64_t *v,
                      int64_t nv)
{
    bool ok = hb_put(h, "%s{\"name\":\"%s\",\"datatype\":\"INT64\",\"shape\":", first ? "" : ",", name);
    ok = ok && (d1 >= 0 ? hb_put(h, "[%lld,%lld],\"data\":[", (long long)d0, (long long)d1)
                        : hb_put(h, "[%lld],\"data\":[", (long long)d0));
    for (int64_t i = 0; ok && i < nv; i++)
        ok = hb_put(h, i ? ",%lld" : "%lld", (long long)v[i]);
    return ok && hb_put(h, "]}");
}

hstu_status eval_http_run(void *ctx, const hstu_request *reqs, int n, hstu_result *res, bool logits,
                            hstu_error *err)
{
    eval_http *h = ctx;
    const hstu_config *cfg = h->cfg;
    bool rank = cfg->family == HSTU_FAMILY_RANKING;
    if (n <= 0)
        return HSTU_OK;
    int64_t N = 0, M = 0;
    for (int b = 0; b < n; b++) {
        N += reqs[b].n_items;
        M += reqs[b].n_candidates;
    }
    int k = rank ? cfg->n_context : 0;
    int64_t *v = malloc(sizeof(int64_t) * (size_t)(N + M + (int64_t)n * (k + 1) + 1));
    if (!v)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    h->len = 0;
    bool ok = hb_put(h, "{\"inputs\":[");
#define GATHER(expr_n, ptr)                                                        \
    do {                                                                           \
        int64_t o_ = 0;                                                            \
        for (int b = 0; b < n; b++)                                                \
            for (int i = 0; i < (expr_n); i++)                                     \
                v[o_++] = (ptr)[i];                                                \
    } while (0)
    for (int b = 0; b < n; b++)
        v[b] = reqs[b].user_id;
    ok = ok && hb_tensor(h, true, "USER_IDS", n, -1, v, n);
    for (int b = 0; b < n; b++)
        v[b] = reqs[b].n_items;
    ok = ok && hb_tensor(h, false, "HISTORY_LENGTHS", n, -1, v, n);
    GATHER(reqs[b].n_items, reqs[b].items);
    ok = ok && hb_tensor(h, false, "ITEM_IDS", N, -1, v, N);
    if (rank) {
        GATHER(reqs[b].n_items, reqs[b].actions);
        ok = ok && hb_tensor(h, false, "ACTION_IDS", N, -1, v, N);
        if (k > 0) {
            GATHER(k, reqs[b].context);
            ok = ok && hb_tensor(h, false, "CONTEXT_IDS", n, k, v, (int64_t)n * k);
        }
        for (int b = 0; b < n; b++)
            v[b] = reqs[b].n_candidates;
        ok = ok && hb_tensor(h, false, "CANDIDATE_LENGTHS", n, -1, v, n);
        GATHER(reqs[b].n_candidates, reqs[b].candidates);
        ok = ok && hb_tensor(h, false, "CANDIDATE_IDS", M, -1, v, M);
        ok = ok && hb_put(h, "],\"parameters\":{\"logits\":%s}}", logits ? "true" : "false");
    } else {
        GATHER(reqs[b].n_items, reqs[b].timestamps);
        ok = ok && hb_tensor(h, false, "TIMESTAMPS", N, -1, v, N);
        for (int b = 0; b < n; b++)
            v[b] = reqs[b].query_time;
        ok = ok && hb_tensor(h, false, "QUERY_TIMES", n, -1, v, n);
        ok = ok && hb_put(h, "],\"parameters\":{\"top_k\":%d,\"exclude_history\":true}}", reqs[0].top_k);
    }
#undef GATHER
    free(v);
    if (!ok)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for a request body");
    hc_response r = {0};
    int rc = h->fd >= 0 ? hc_request(h->fd, "POST", h->path, NULL, h->buf, h->len, &r) : -1;
    if (rc != 0) { /* one reconnect: keep-alive connections may be closed by the server */
        hc_response_free(&r);
        if (h->fd >= 0)
            close(h->fd);
        h->fd = hc_connect(h->host, h->port, 600000);
        if (h->fd < 0 || hc_request(h->fd, "POST", h->path, NULL, h->buf, h->len, &r) != 0) {
            hc_response_free(&r);
            return hstu_fail(err, HSTU_ERR_IO, "cannot reach the server at %s:%d", h->host, h->port);
        }
    }
    hstu_status st = HSTU_OK;
    json_error_t je;
    json_t *root = r.status == 200 ? json_loadb(r.body, r.len, 0, &je) : NULL;
    if (!root) {
        st = hstu_fail(err, HSTU_ERR_IO, "server answered %d: %.300s", r.status, r.body ? r.body : "");
        goto done;
    }
    json_t *outs = json_object_get(root, "outputs"), *o;
    size_t i;
    json_t *scores = NULL, *ids = NULL, *tsc = NULL;
    json_array_foreach(outs, i, o) {
        const char *name = json_string_value(json_object_get(o, "name"));
        json_t *data = json_object_get(o, "data");
        if (!name || !json_is_array(data))
            continue;
        if (!strcmp(name, "SCORES"))
            scores = data;
        else if (!strcmp(name, "TOPK_IDS"))
            ids = data;
        else if (!strcmp(name, "TOPK_SCORES"))
            tsc = data;
    }
    if (rank) {
        if (!scores || (int64_t)json_array_size(scores) != M * cfg->n_tasks) {
            st = hstu_fail(err, HSTU_ERR_FORMAT, "server reply: no SCORES of %lld values",
                           (long long)(M * cfg->n_tasks));
            goto done;
        }
        size_t at = 0;
        for (int b = 0; b < n; b++)
            for (int j = 0; j < reqs[b].n_candidates * cfg->n_tasks; j++)
                res[b].scores[j] = (float)json_number_value(json_array_get(scores, at++));
    } else {
        int K = reqs[0].top_k;
        if (!ids || !tsc || (int64_t)json_array_size(ids) != (int64_t)n * K ||
            json_array_size(tsc) != json_array_size(ids)) {
            st = hstu_fail(err, HSTU_ERR_FORMAT, "server reply: no TOPK_IDS / TOPK_SCORES of %d x %d", n, K);
            goto done;
        }
        for (int b = 0; b < n; b++) {
            res[b].n_topk = 0;
            for (int j = 0; j < K; j++) {
                int64_t id = json_integer_value(json_array_get(ids, (size_t)b * K + j));
                if (id < 0)
                    break;
                res[b].topk_ids[j] = id;
                res[b].topk_scores[j] = (float)json_number_value(json_array_get(tsc, (size_t)b * K + j));
                res[b].n_topk = j + 1;
            }
        }
    }
done:
    json_decref(root);
    hc_response_free(&r);
    return st;
}


hstu_status eval_http_create(const char *url, const char *model, const hstu_config *cfg, eval_http **out,
                             hstu_error *err)
{
    *out = NULL;
    const char *hp = !strncmp(url, "http://", 7) ? url + 7 : url;
    const char *colon = strrchr(hp, ':');
    size_t hl = colon ? (size_t)(colon - hp) : 0;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || hl == 0 || hl >= HOST_MAX || !end || (*end && strcmp(end, "/")) ||
        port < 1 || port > 65535)
        return hstu_fail(err, HSTU_ERR_ARG, "url \"%s\": expected http://host:port", url);
    eval_http *h = calloc(1, sizeof *h);
    if (!h)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    memcpy(h->host, hp, hl);
    h->port = (int)port;
    h->fd = -1;
    h->cfg = cfg;
    snprintf(h->path, sizeof h->path, "/v2/models/%s/infer", model);
    *out = h;
    return HSTU_OK;
}

void eval_http_destroy(eval_http *h)
{
    if (!h)
        return;
    if (h->fd >= 0)
        close(h->fd);
    free(h->buf);
    free(h);
}
