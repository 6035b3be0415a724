/* cli_common.c - JSON request lines in, JSON result lines out.
 *
 * The request format is the one `hstu infer` documents (README, docs/cli.md):
 * ranking {"user_id","context","items","actions","candidates"}, retrieval
 * {"user_id","items","timestamps","query_time","top_k","exclude_history"}.
 * Parsing is strict: unknown or wrong-family keys, wrong types and length
 * mismatches are errors that name the key.
 */
#include "cli.h"

#include "core/clock.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static hstu_status fail(hstu_error *err, const char *fmt, const char *key)
{
    err->status = HSTU_ERR_ARG;
    snprintf(err->msg, sizeof err->msg, fmt, key);
    return HSTU_ERR_ARG;
}

static hstu_status get_array_len(json_t *v, const char *key, int *n, hstu_error *err)
{
    if (!json_is_array(v))
        return fail(err, "%s: must be a list of integer ids", key);
    if (json_array_size(v) > (1u << 24))
        return fail(err, "%s: too long", key);
    *n = (int)json_array_size(v);
    return HSTU_OK;
}

static hstu_status copy_ints(json_t *v, const char *key, int64_t *dst, hstu_error *err)
{
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
        if (!json_is_integer(x)) {
            err->status = HSTU_ERR_ARG;
            snprintf(err->msg, sizeof err->msg, "%s[%zu]: must be an integer", key, i);
            return HSTU_ERR_ARG;
        }
        dst[i] = json_integer_value(x);
    }
    return HSTU_OK;
}

hstu_status cli_request_parse(const hstu_config *cfg, const char *line, size_t len, cli_request *r,
                              hstu_error *err)
{
    json_error_t jerr;
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o) {
        err->status = HSTU_ERR_ARG;
        snprintf(err->msg, sizeof err->msg, "invalid JSON at column %d: %s", jerr.column, jerr.text);
        return HSTU_ERR_ARG;
    }
    hstu_status st = HSTU_OK;
    bool rank = cfg->family == HSTU_FAMILY_RANKING;
    json_t *uid = NULL, *ctx = NULL, *items = NULL, *actions = NULL, *cands = NULL, *ts = NULL;
    json_t *qt = NULL, *topk = NULL, *excl = NULL;
    if (!json_is_object(o)) {
        st = fail(err, "%s", "a request must be a JSON object");
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        json_t **slot = NULL;
        if (!strcmp(key, "user_id"))
            slot = &uid;
        else if (!strcmp(key, "items"))
            slot = &items;
        else if (rank && !strcmp(key, "context"))
            slot = &ctx;
        else if (rank && !strcmp(key, "actions"))
            slot = &actions;
        else if (rank && !strcmp(key, "candidates"))
            slot = &cands;
        else if (!rank && !strcmp(key, "timestamps"))
            slot = &ts;
        else if (!rank && !strcmp(key, "query_time"))
            slot = &qt;
        else if (!rank && !strcmp(key, "top_k"))
            slot = &topk;
        else if (!rank && !strcmp(key, "exclude_history"))
            slot = &excl;
        if (!slot) {
            err->status = HSTU_ERR_ARG;
            snprintf(err->msg, sizeof err->msg, "%s: not a field of a %s request (fields: %s)", key,
                     rank ? "ranking" : "retrieval",
                     rank ? "user_id, context, items, actions, candidates"
                          : "user_id, items, timestamps, query_time, top_k, exclude_history");
            st = HSTU_ERR_ARG;
            goto done;
        }
        *slot = v;
    }
    if (!json_is_integer(uid)) {
        st = fail(err, "%s: missing or not an integer", "user_id");
        goto done;
    }
    int n_items = 0, n_ctx = 0, n_act = 0, n_cand = 0, n_ts = 0;
    if (!items) {
        st = fail(err, "%s: missing (the user's whole history, oldest first)", "items");
        goto done;
    }
    if ((st = get_array_len(items, "items", &n_items, err)) != HSTU_OK)
        goto done;
    if (rank) {
        if (ctx && (st = get_array_len(ctx, "context", &n_ctx, err)) != HSTU_OK)
            goto done;
        if (!actions) {
            st = fail(err, "%s: missing (one action per history item)", "actions");
            goto done;
        }
        if ((st = get_array_len(actions, "actions", &n_act, err)) != HSTU_OK)
            goto done;
        if (n_act != n_items) {
            err->status = st = HSTU_ERR_ARG;
            snprintf(err->msg, sizeof err->msg, "actions: %d given for %d items (one per item)", n_act,
                     n_items);
            goto done;
        }
        if (cands && (st = get_array_len(cands, "candidates", &n_cand, err)) != HSTU_OK)
            goto done;
    } else {
        if (!ts) {
            st = fail(err, "%s: missing (one unix time per history item)", "timestamps");
            goto done;
        }
        if ((st = get_array_len(ts, "timestamps", &n_ts, err)) != HSTU_OK)
            goto done;
        if (n_ts != n_items) {
            err->status = st = HSTU_ERR_ARG;
            snprintf(err->msg, sizeof err->msg, "timestamps: %d given for %d items (one per item)", n_ts,
                     n_items);
            goto done;
        }
        if (qt && !json_is_integer(qt)) {
            st = fail(err, "%s: must be an integer (unix seconds)", "query_time");
            goto done;
        }
        if (topk && !json_is_integer(topk)) {
            st = fail(err, "%s: must be an integer", "top_k");
            goto done;
        }
        if (excl && !json_is_boolean(excl)) {
            st = fail(err, "%s: must be true or false", "exclude_history");
            goto done;
        }
    }
    size_t need = (size_t)n_ctx + 2 * (size_t)n_items + (size_t)n_cand + (size_t)n_ts + 1;
    if (need > r->buf_cap) {
        int64_t *nb = realloc(r->buf, need * sizeof *nb);
        if (!nb) {
            err->status = st = HSTU_ERR_NOMEM;
            snprintf(err->msg, sizeof err->msg, "out of memory");
            goto done;
        }
        r->buf = nb;
        r->buf_cap = need;
    }
    int64_t *p = r->buf;
    hstu_request *q = &r->req;
    memset(q, 0, sizeof *q);
    q->user_id = json_integer_value(uid);
    q->n_items = n_items;
    q->items = p;
    if ((st = copy_ints(items, "items", p, err)) != HSTU_OK)
        goto done;
    p += n_items;
    if (rank) {
        q->n_context = n_ctx;
        q->context = p;
        if (ctx && (st = copy_ints(ctx, "context", p, err)) != HSTU_OK)
            goto done;
        p += n_ctx;
        q->actions = p;
        if ((st = copy_ints(actions, "actions", p, err)) != HSTU_OK)
            goto done;
        p += n_items;
        q->n_candidates = n_cand;
        q->candidates = p;
        if (cands && (st = copy_ints(cands, "candidates", p, err)) != HSTU_OK)
            goto done;
    } else {
        q->timestamps = p;
        if ((st = copy_ints(ts, "timestamps", p, err)) != HSTU_OK)
            goto done;
        q->query_time = qt ? json_integer_value(qt) : (n_items > 0 ? p[n_items - 1] : 0);
        json_int_t k = topk ? json_integer_value(topk) : 10;
        q->top_k = k < 0 ? -1 : k > 1000000 ? 1000000 : (int)k; /* range checked by the engine */
        q->exclude_history = excl ? json_is_true(excl) : true;
    }
done:
    json_decref(o);
    return st;
}

void cli_request_free(cli_request *r)
{
    free(r->buf);
    r->buf = NULL;
    r->buf_cap = 0;
}

hstu_status cli_result_alloc(const hstu_config *cfg, const hstu_request *req, hstu_result *res,
                             hstu_error *err)
{
    memset(res, 0, sizeof *res);
    if (cfg->family == HSTU_FAMILY_RANKING) {
        size_t n = (size_t)req->n_candidates * cfg->n_tasks;
        res->scores = malloc(sizeof(float) * (n ? n : 1));
        if (!res->scores)
            goto oom;
    } else {
        size_t k = req->top_k > 0 ? (size_t)req->top_k : 1;
        res->topk_ids = malloc(sizeof(int64_t) * k);
        res->topk_scores = malloc(sizeof(float) * k);
        if (!res->topk_ids || !res->topk_scores)
            goto oom;
    }
    return HSTU_OK;
oom:
    cli_result_free(res);
    err->status = HSTU_ERR_NOMEM;
    snprintf(err->msg, sizeof err->msg, "out of memory for results");
    return HSTU_ERR_NOMEM;
}

void cli_result_free(hstu_result *res)
{
    free(res->scores);
    free(res->topk_ids);
    free(res->topk_scores);
    memset(res, 0, sizeof *res);
}

void cli_result_print(FILE *out, const hstu_config *cfg, const hstu_request *req,
                      const hstu_result *res)
{
    fprintf(out, "{\"user_id\":%lld,", (long long)req->user_id);
    if (cfg->family == HSTU_FAMILY_RANKING) {
        fputs("\"scores\":[", out);
        for (int i = 0; i < req->n_candidates; i++) {
            fputs(i ? ",[" : "[", out);
            for (int t = 0; t < cfg->n_tasks; t++)
                fprintf(out, t ? ",%.9g" : "%.9g", res->scores[(size_t)i * cfg->n_tasks + t]);
            fputc(']', out);
        }
        fputs("]}\n", out);
    } else {
        fputs("\"items\":[", out);
        for (int i = 0; i < res->n_topk; i++)
            fprintf(out, i ? ",%lld" : "%lld", (long long)res->topk_ids[i]);
        fputs("],\"scores\":[", out);
        for (int i = 0; i < res->n_topk; i++)
            fprintf(out, i ? ",%.9g" : "%.9g", res->topk_scores[i]);
        fputs("]}\n", out);
    }
}

void cli_error_print(FILE *out, const char *msg)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    fprintf(out, "%s\n", s ? s : "{\"error\":\"unprintable error\"}");
    free(s);
    json_decref(o);
}

double cli_now_ms(void) { return core_now_s() * 1e3; }

double cli_peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;
}

long cli_parse_long(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "hstu: %s: expected an integer in %ld..%ld, got \"%s\"\n", opt, lo, hi, s);
        exit(2);
    }
    return v;
}

double cli_parse_double(const char *opt, const char *s, double lo, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "hstu: %s: expected a number in [%g, %g], got \"%s\"\n", opt, lo, hi, s);
        exit(2);
    }
    return v;
}

void cli_parse_choice(const char *opt, hstu_status st, const hstu_error *err)
{
    if (st != HSTU_OK) {
        fprintf(stderr, "hstu: %s: %s\n", opt, err->msg);
        exit(2);
    }
}
