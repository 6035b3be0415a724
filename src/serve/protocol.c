/* protocol.c - the HSTU models' tensors in the KServe v2 protocol.
 *
 * Decoding is in three steps, each failing with a 400 that names the tensor:
 *   1. read the inputs' names, datatypes, shapes and where their data is
 *      (a JSON "data" list, flat or nested, or binary_data_size bytes of the
 *      binary section after the JSON header, in input order);
 *   2. place each tensor in the job slot's id arena (sizes checked against
 *      the slot's capacity before any copy, products checked for overflow)
 *      and copy the values;
 *   3. check the tensors against each other (lengths, sums, the batch
 *      limits), build one hstu_request per user and run hstu_engine_check
 *      on each, so that a queued job is one the engine accepts.
 * Encoding writes JSON data lists, or raw little-endian tensors after the
 * JSON header when binary output is asked for.
 *
 * Memory: the request's JSON is parsed in the job slot's arena (bound to
 * this thread for the parse; the tree is never freed, the next bind resets
 * the arena), and the reply is written by hand into the slot's scratch,
 * whose size proto_scratch_bytes bounds from the limits. The tensors are
 * copied into the slot's id arena. Nothing here calls malloc.
 */
#include "serve/protocol.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the models' tensors ------------------------------------------------ */

typedef struct tensor_spec {
    const char *name;
    int ndim;       /* 1, or 2 for [B, k] */
    bool required;
} tensor_spec;

enum { R_USER, R_HLEN, R_ITEM, R_ACTION, R_CTX, R_CLEN, R_CAND, R_N };
static const tensor_spec rank_in[R_N] = {
    {"USER_IDS", 1, true},          {"HISTORY_LENGTHS", 1, true}, {"ITEM_IDS", 1, true},
    {"ACTION_IDS", 1, true},        {"CONTEXT_IDS", 2, false},    {"CANDIDATE_LENGTHS", 1, true},
    {"CANDIDATE_IDS", 1, true},
};
enum { Q_USER, Q_HLEN, Q_ITEM, Q_TS, Q_QT, Q_N };
static const tensor_spec retr_in[Q_N] = {
    {"USER_IDS", 1, true}, {"HISTORY_LENGTHS", 1, true}, {"ITEM_IDS", 1, true},
    {"TIMESTAMPS", 1, true}, {"QUERY_TIMES", 1, false},
};
enum { C_USER, C_TLEN, C_TOK, C_NCAND, C_N };
static const tensor_spec compat_in[C_N] = {
    {"USER_IDS", 1, true}, {"TOKEN_LENGTHS", 1, true}, {"TOKENS", 1, true}, {"NUM_CANDIDATES", 1, true},
};
#define MAX_IN 7

static const char *rank_out[] = {"SCORES"};
static const char *retr_out[] = {"TOPK_IDS", "TOPK_SCORES"};
static const char *compat_out[] = {"OUTPUT"};

static void inputs_of(const hstu_config *cfg, proto_iface iface, const tensor_spec **s, int *n)
{
    if (iface == PROTO_COMPAT)
        *s = compat_in, *n = C_N;
    else if (cfg->family == HSTU_FAMILY_RANKING)
        *s = rank_in, *n = R_N;
    else
        *s = retr_in, *n = Q_N;
}

static void outputs_of(const hstu_config *cfg, proto_iface iface, const char *const **s, int *n)
{
    if (iface == PROTO_COMPAT)
        *s = compat_out, *n = 1;
    else if (cfg->family == HSTU_FAMILY_RANKING)
        *s = rank_out, *n = 1;
    else
        *s = retr_out, *n = 2;
}

/* ---- decoding ------------------------------------------------------------ */

typedef struct tensor_in {
    bool present;
    int ndim;
    int64_t shape[2];
    int64_t n;                  /* elements */
    json_t *data;               /* JSON data, or NULL */
    const unsigned char *bin;   /* binary data, or NULL */
    int64_t *v;                 /* in the job's arena after placement */
} tensor_in;

static int bad(char *msg, size_t sz, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int bad(char *msg, size_t sz, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sz, fmt, ap);
    va_end(ap);
    return status;
}

/* Counts the integers of a (possibly nested) JSON list; -1 on a non-list
 * or a depth over 8. */
static int64_t count_values(json_t *v, int depth)
{
    if (!json_is_array(v))
        return -1;
    if (depth > 8)
        return -1;
    int64_t n = 0;
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
        if (json_is_array(x)) {
            int64_t k = count_values(x, depth + 1);
            if (k < 0)
                return -1;
            n += k;
        } else {
            n++;
        }
    }
    return n;
}

/* Copies a nested JSON list of integers; returns false at a non-integer. */
static bool copy_values(json_t *v, int64_t *dst, int64_t *pos)
{
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
        if (json_is_array(x)) {
            if (!copy_values(x, dst, pos))
                return false;
        } else if (json_is_integer(x)) {
            dst[(*pos)++] = json_integer_value(x);
        } else {
            return false;
        }
    }
    return true;
}

static bool get_bool_param(json_t *params, const char *key, bool dflt, bool *ok)
{
    json_t *v = params ? json_object_get(params, key) : NULL;
    if (!v)
        return dflt;
    if (!json_is_boolean(v)) {
        *ok = false;
        return dflt;
    }
    return json_is_true(v);
}

/* Reads the "inputs" list into t[] (indexed by the model's input order). */
static int read_inputs(json_t *inputs, const tensor_spec *spec, int nspec, const unsigned char *bin,
                       size_t bin_len, tensor_in *t, char *msg, size_t sz)
{
    if (!json_is_array(inputs))
        return bad(msg, sz, 400, "inputs: missing or not a list");
    size_t bin_pos = 0, i;
    json_t *in;
    json_array_foreach(inputs, i, in) {
        if (!json_is_object(in))
            return bad(msg, sz, 400, "inputs[%zu]: must be an object", i);
        const char *name = json_string_value(json_object_get(in, "name"));
        if (!name)
            return bad(msg, sz, 400, "inputs[%zu]: \"name\" missing or not a string", i);
        int k = 0;
        while (k < nspec && strcmp(spec[k].name, name))
            k++;
        if (k == nspec) {
            char names[256] = "";
            for (int s = 0; s < nspec; s++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", s ? ", " : "", spec[s].name);
            return bad(msg, sz, 400, "unknown input \"%s\" (the model's inputs: %s)", name, names);
        }
        tensor_in *x = &t[k];
        if (x->present)
            return bad(msg, sz, 400, "input %s: given twice", name);
        x->present = true;
        const char *dt = json_string_value(json_object_get(in, "datatype"));
        if (!dt)
            return bad(msg, sz, 400, "input %s: \"datatype\" missing or not a string", name);
        if (strcmp(dt, "INT64"))
            return bad(msg, sz, 400, "input %s: datatype %s, expected INT64", name, dt);
        json_t *shape = json_object_get(in, "shape");
        if (!json_is_array(shape))
            return bad(msg, sz, 400, "input %s: \"shape\" missing or not a list", name);
        if ((int)json_array_size(shape) != spec[k].ndim)
            return bad(msg, sz, 400, "input %s: shape has %zu dimensions, expected %d", name,
                       json_array_size(shape), spec[k].ndim);
        x->ndim = spec[k].ndim;
        int64_t n = 1;
        for (int d = 0; d < x->ndim; d++) {
            json_t *dim = json_array_get(shape, (size_t)d);
            if (!json_is_integer(dim) || json_integer_value(dim) < 0)
                return bad(msg, sz, 400, "input %s: shape[%d] must be a non-negative integer", name, d);
            x->shape[d] = json_integer_value(dim);
            if (x->shape[d] > (int64_t)1 << 40 || (x->shape[d] && n > INT64_MAX / 8 / x->shape[d]))
                return bad(msg, sz, 400, "input %s: shape is too large", name);
            n *= x->shape[d];
        }
        x->n = n;
        json_t *params = json_object_get(in, "parameters");
        json_t *bsz = params ? json_object_get(params, "binary_data_size") : NULL;
        json_t *data = json_object_get(in, "data");
        if (bsz && data)
            return bad(msg, sz, 400, "input %s: both \"data\" and binary_data_size given", name);
        if (bsz) {
            if (!json_is_integer(bsz) || json_integer_value(bsz) < 0)
                return bad(msg, sz, 400, "input %s: binary_data_size must be a non-negative integer", name);
            uint64_t nb = (uint64_t)json_integer_value(bsz);
            if (nb != (uint64_t)n * 8)
                return bad(msg, sz, 400, "input %s: binary_data_size %llu, but shape gives %lld INT64 values (%llu bytes)",
                           name, (unsigned long long)nb, (long long)n, (unsigned long long)n * 8);
            if (nb > bin_len - bin_pos)
                return bad(msg, sz, 400, "input %s: binary data truncated (%llu bytes needed, %zu left in the body)",
                           name, (unsigned long long)nb, bin_len - bin_pos);
            x->bin = bin + bin_pos;
            bin_pos += nb;
        } else {
            if (!data)
                return bad(msg, sz, 400, "input %s: no \"data\" and no binary_data_size", name);
            int64_t c = count_values(data, 0);
            if (c < 0)
                return bad(msg, sz, 400, "input %s: \"data\" must be a list of integers", name);
            if (c != n)
                return bad(msg, sz, 400, "input %s: shape holds %lld values, data has %lld", name, (long long)n,
                           (long long)c);
            x->data = data;
        }
    }
    if (bin_pos != bin_len)
        return bad(msg, sz, 400, "%zu bytes of binary data after the tensors that no input claims", bin_len - bin_pos);
    for (int k = 0; k < nspec; k++)
        if (spec[k].required && !t[k].present)
            return bad(msg, sz, 400, "input %s: missing", spec[k].name);
    return 200;
}

/* Places every present tensor in the arena and copies its values. */
static int place_inputs(const tensor_spec *spec, int nspec, tensor_in *t, job *j, size_t reserve, char *msg,
                        size_t sz)
{
    uint64_t total = reserve;
    for (int k = 0; k < nspec; k++)
        total += t[k].present ? (uint64_t)t[k].n : 0;
    if (total > j->ids_cap)
        return bad(msg, sz, 400, "the request holds %llu ids, over the server's limit of %zu per request "
                                 "(--token-budget, --max-batch)", (unsigned long long)total, j->ids_cap);
    int64_t *p = j->ids;
    for (int k = 0; k < nspec; k++) {
        tensor_in *x = &t[k];
        if (!x->present)
            continue;
        x->v = p;
        if (x->bin) {
            memcpy(p, x->bin, (size_t)x->n * 8); /* little-endian host (x86-64, aarch64) */
        } else {
            int64_t pos = 0;
            if (!copy_values(x->data, p, &pos))
                return bad(msg, sz, 400, "input %s: \"data\" must hold integers only", spec[k].name);
        }
        p += x->n;
    }
    return 200;
}

static int check_lengths(const char *name, const int64_t *v, int64_t B, int64_t lo, int64_t hi, const char *what,
                         int64_t *sum, char *msg, size_t sz)
{
    int64_t s = 0;
    for (int64_t b = 0; b < B; b++) {
        if (v[b] < lo || v[b] > hi)
            return bad(msg, sz, 400, "%s[%lld] = %lld: must be in %lld..%lld (%s)", name, (long long)b,
                       (long long)v[b], (long long)lo, (long long)hi, what);
        s += v[b]; /* no overflow: each term is within 0..hi and B is small */
    }
    *sum = s;
    return 200;
}

static int check_len(const char *name, const tensor_in *x, int64_t want, const char *why, char *msg, size_t sz)
{
    if (x->shape[0] != want)
        return bad(msg, sz, 400, "input %s: shape [%lld], expected [%lld] (%s)", name, (long long)x->shape[0],
                   (long long)want, why);
    return 200;
}

int proto_decode_infer(const hstu_engine *e, const hstu_config *cfg, proto_iface iface,
                       const proto_limits *lim, const char *body, size_t len, long long header_len,
                       job *j, infer_call *call, char *msg, size_t sz)
{
    memset(call, 0, sizeof *call);
    if (header_len > (long long)len)
        return bad(msg, sz, 400, "Inference-Header-Content-Length %lld is past the body's %zu bytes", header_len, len);
    size_t jlen = header_len >= 0 ? (size_t)header_len : len;
    json_error_t jerr;
    json_arena_bind(&j->arena);
    json_t *root = json_loadb(body, jlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        int st = j->arena.overflow
                     ? bad(msg, sz, 413,
                           "the request's JSON needs more than the %zu bytes of parse memory of a request (it holds "
                           "at most %zu ids, --token-budget and --max-batch): send fewer values, or the tensors as "
                           "binary data",
                           j->arena.cap, j->ids_cap)
                     : bad(msg, sz, 400, "malformed JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        json_arena_unbind(&j->arena);
        return st;
    }
    int st = 200;
    bool rank = cfg->family == HSTU_FAMILY_RANKING;
    const tensor_spec *spec;
    int nspec;
    inputs_of(cfg, iface, &spec, &nspec);
    tensor_in t[MAX_IN];
    memset(t, 0, sizeof t);
    if (!json_is_object(root)) {
        st = bad(msg, sz, 400, "the request must be a JSON object");
        goto done;
    }
    json_t *id = json_object_get(root, "id");
    if (id) {
        if (!json_is_string(id) || strlen(json_string_value(id)) >= PROTO_ID_MAX) {
            st = bad(msg, sz, 400, "id: must be a string of at most %d bytes", PROTO_ID_MAX - 1);
            goto done;
        }
        snprintf(call->id, sizeof call->id, "%s", json_string_value(id));
        call->has_id = true;
    }
    /* parameters */
    json_t *params = json_object_get(root, "parameters");
    if (params && !json_is_object(params)) {
        st = bad(msg, sz, 400, "parameters: must be an object");
        goto done;
    }
    bool ok = true;
    j->logits = get_bool_param(params, "logits", false, &ok);
    bool excl = get_bool_param(params, "exclude_history", true, &ok);
    bool bin_all = get_bool_param(params, "binary_data_output", false, &ok);
    if (!ok) {
        st = bad(msg, sz, 400, "parameters: logits, exclude_history and binary_data_output must be true or false");
        goto done;
    }
    json_t *tk = params ? json_object_get(params, "top_k") : NULL;
    call->top_k = 10;
    if (tk) {
        if (!json_is_integer(tk) || json_integer_value(tk) < 1 || json_integer_value(tk) > lim->max_top_k) {
            st = bad(msg, sz, 400, "parameters.top_k: must be an integer in 1..%d", lim->max_top_k);
            goto done;
        }
        call->top_k = (int)json_integer_value(tk);
    }
    int64_t timeout_us = lim->default_timeout_us;
    json_t *to = params ? json_object_get(params, "timeout") : NULL;
    if (to) {
        if (!json_is_integer(to) || json_integer_value(to) < 0 || json_integer_value(to) > ((int64_t)1 << 40)) {
            st = bad(msg, sz, 400, "parameters.timeout: must be a non-negative integer (microseconds)");
            goto done;
        }
        timeout_us = json_integer_value(to);
    }
    j->deadline_ns = timeout_us > 0 ? stats_now_ns() + (uint64_t)timeout_us * 1000u : 0;
    /* requested outputs */
    const char *const *outs;
    int nouts;
    outputs_of(cfg, iface, &outs, &nouts);
    json_t *req_out = json_object_get(root, "outputs");
    if (req_out) {
        if (!json_is_array(req_out) || json_array_size(req_out) > (size_t)nouts) {
            st = bad(msg, sz, 400, "outputs: must be a list of at most %d outputs", nouts);
            goto done;
        }
        size_t i;
        json_t *o;
        json_array_foreach(req_out, i, o) {
            const char *name = json_string_value(json_object_get(o, "name"));
            int k = 0;
            while (name && k < nouts && strcmp(outs[k], name))
                k++;
            if (!name || k == nouts) {
                st = bad(msg, sz, 400, "outputs[%zu]: unknown output \"%s\"", i, name ? name : "(no name)");
                goto done;
            }
            for (int q = 0; q < call->n_out; q++)
                if (call->out[q] == k) {
                    st = bad(msg, sz, 400, "outputs: %s asked twice", name);
                    goto done;
                }
            call->out[call->n_out] = k;
            call->out_binary[call->n_out] = get_bool_param(json_object_get(o, "parameters"), "binary_data", bin_all, &ok);
            if (!ok) {
                st = bad(msg, sz, 400, "outputs[%zu].parameters.binary_data: must be true or false", i);
                goto done;
            }
            call->n_out++;
        }
    } else {
        for (int k = 0; k < nouts; k++) {
            call->out[k] = k;
            call->out_binary[k] = bin_all;
        }
        call->n_out = nouts;
    }
    /* 1. inputs */
    st = read_inputs(json_object_get(root, "inputs"), spec, nspec, (const unsigned char *)body + jlen, len - jlen,
                     t, msg, sz);
    if (st != 200)
        goto done;
    int64_t B = t[0].shape[0]; /* USER_IDS [B] in every interface */
    if (B == 0) {
        st = bad(msg, sz, 400, "input USER_IDS: empty batch (at least one user)");
        goto done;
    }
    if (B > lim->max_batch) {
        st = bad(msg, sz, 400, "input USER_IDS: %lld users, over the server's --max-batch %d per request",
                 (long long)B, lim->max_batch);
        goto done;
    }
    int k = cfg->n_context;
    /* 2. placement (the compat interface needs B*k more for the context) */
    size_t reserve = iface == PROTO_COMPAT ? (size_t)B * (size_t)k : 0;
    if ((st = place_inputs(spec, nspec, t, j, reserve, msg, sz)) != 200)
        goto done;
    /* 3. cross-checks and the per-user requests */
    const int64_t *uid = t[0].v;
    const int64_t *hlen, *clen = NULL, *items, *actions = NULL, *ctx = NULL, *cands = NULL, *ts = NULL, *qt = NULL;
    int64_t N = 0, M = 0;
    const int64_t max_m = rank ? cfg->max_candidates : 0;
    if (iface == PROTO_COMPAT) {
        /* TOKEN_LENGTHS [(k+2)*B], key-major: k context keys (1 id each),
         * then items (history then candidates), then actions (history). */
        if ((st = check_len("TOKEN_LENGTHS", &t[C_TLEN], (int64_t)(k + 2) * B, "(k+2)*B, key-major", msg, sz)) != 200 ||
            (st = check_len("NUM_CANDIDATES", &t[C_NCAND], B, "one per user", msg, sz)) != 200)
            goto done;
        const int64_t *tl = t[C_TLEN].v, *nc = t[C_NCAND].v;
        if ((st = check_lengths("NUM_CANDIDATES", nc, B, 0, max_m, "max_candidates", &M, msg, sz)) != 200)
            goto done;
        int64_t total = 0, S;
        for (int key = 0; key < k; key++)
            for (int64_t b = 0; b < B; b++)
                if (tl[key * B + b] != 1) {
                    st = bad(msg, sz, 400, "TOKEN_LENGTHS[%lld] = %lld: contextual key %d has one id per user",
                             (long long)(key * B + b), (long long)tl[key * B + b], key);
                    goto done;
                }
        total = (int64_t)k * B;
        if ((st = check_lengths("TOKEN_LENGTHS", tl + (int64_t)k * B, B, 0, cfg->max_history + max_m,
                                "history + candidates", &S, msg, sz)) != 200)
            goto done;
        total += S;
        for (int64_t b = 0; b < B; b++) {
            int64_t n_b = tl[k * B + b] - nc[b];
            if (n_b < 0 || n_b > cfg->max_history || tl[(k + 1) * B + b] != n_b) {
                st = bad(msg, sz, 400, "user %lld: %lld item tokens, %lld candidates and %lld actions: the items "
                                       "key holds history then candidates, the actions key one per history item "
                                       "(at most %d)",
                         (long long)b, (long long)tl[k * B + b], (long long)nc[b], (long long)tl[(k + 1) * B + b],
                         cfg->max_history);
                goto done;
            }
            N += n_b;
        }
        total += N;
        if (t[C_TOK].shape[0] != total) {
            st = bad(msg, sz, 400, "input TOKENS: shape [%lld], TOKEN_LENGTHS sum to %lld", (long long)t[C_TOK].shape[0],
                     (long long)total);
            goto done;
        }
        /* context into the reserved rows, user-major */
        int64_t *cx = t[C_NCAND].v + t[C_NCAND].n;
        for (int key = 0; key < k; key++)
            for (int64_t b = 0; b < B; b++)
                cx[b * k + key] = t[C_TOK].v[key * B + b];
        ctx = cx;
        hlen = NULL;
        items = t[C_TOK].v + (int64_t)k * B;
        actions = items + S;
        int64_t io = 0, ao = 0, tokens = 0;
        for (int64_t b = 0; b < B; b++) {
            hstu_request *r = &j->reqs[b];
            memset(r, 0, sizeof *r);
            r->user_id = uid[b];
            r->n_context = k;
            r->context = ctx + b * k;
            r->n_items = (int)(tl[k * B + b] - nc[b]);
            r->items = items + io;
            r->n_candidates = (int)nc[b];
            r->candidates = items + io + r->n_items;
            r->actions = actions + ao;
            io += tl[k * B + b];
            ao += r->n_items;
            tokens += hstu_config_history_tokens(cfg, r->n_items) + r->n_candidates;
        }
        j->tokens = (int)(tokens < INT_MAX ? tokens : INT_MAX);
        if (tokens > lim->token_budget) {
            st = bad(msg, sz, 400, "the request needs %lld tokens, over the server's --token-budget %d",
                     (long long)tokens, lim->token_budget);
            goto done;
        }
    } else {
        hlen = t[1].v;
        if ((st = check_len("HISTORY_LENGTHS", &t[1], B, "one per user", msg, sz)) != 200)
            goto done;
        if ((st = check_lengths("HISTORY_LENGTHS", hlen, B, rank ? 0 : 1, cfg->max_history, "max_history", &N, msg,
                                sz)) != 200)
            goto done;
        if ((st = check_len("ITEM_IDS", &t[2], N, "the sum of HISTORY_LENGTHS", msg, sz)) != 200)
            goto done;
        items = t[2].v;
        if (rank) {
            if ((st = check_len("ACTION_IDS", &t[R_ACTION], N, "the sum of HISTORY_LENGTHS", msg, sz)) != 200 ||
                (st = check_len("CANDIDATE_LENGTHS", &t[R_CLEN], B, "one per user", msg, sz)) != 200)
                goto done;
            actions = t[R_ACTION].v;
            clen = t[R_CLEN].v;
            if ((st = check_lengths("CANDIDATE_LENGTHS", clen, B, 0, max_m, "max_candidates", &M, msg, sz)) != 200 ||
                (st = check_len("CANDIDATE_IDS", &t[R_CAND], M, "the sum of CANDIDATE_LENGTHS", msg, sz)) != 200)
                goto done;
            cands = t[R_CAND].v;
            if (k > 0 && !t[R_CTX].present) {
                st = bad(msg, sz, 400, "input CONTEXT_IDS: missing (the model has %d contextual features)", k);
                goto done;
            }
            if (t[R_CTX].present && (t[R_CTX].shape[0] != B || t[R_CTX].shape[1] != k)) {
                st = bad(msg, sz, 400, "input CONTEXT_IDS: shape [%lld, %lld], expected [%lld, %d]",
                         (long long)t[R_CTX].shape[0], (long long)t[R_CTX].shape[1], (long long)B, k);
                goto done;
            }
            ctx = t[R_CTX].present ? t[R_CTX].v : NULL;
        } else {
            if ((st = check_len("TIMESTAMPS", &t[Q_TS], N, "the sum of HISTORY_LENGTHS", msg, sz)) != 200)
                goto done;
            ts = t[Q_TS].v;
            if (t[Q_QT].present && (st = check_len("QUERY_TIMES", &t[Q_QT], B, "one per user", msg, sz)) != 200)
                goto done;
            qt = t[Q_QT].present ? t[Q_QT].v : NULL;
        }
        int64_t io = 0, co = 0, tokens = 0;
        for (int64_t b = 0; b < B; b++) {
            hstu_request *r = &j->reqs[b];
            memset(r, 0, sizeof *r);
            r->user_id = uid[b];
            r->n_items = (int)hlen[b];
            r->items = items + io;
            if (rank) {
                r->n_context = k;
                r->context = ctx ? ctx + b * k : NULL;
                r->actions = actions + io;
                r->n_candidates = (int)clen[b];
                r->candidates = cands + co;
                co += clen[b];
            } else {
                r->timestamps = ts + io;
                r->query_time = qt ? qt[b] : ts[io + hlen[b] - 1];
                r->top_k = call->top_k;
                r->exclude_history = excl;
            }
            io += hlen[b];
            tokens += hstu_config_history_tokens(cfg, r->n_items) + r->n_candidates;
        }
        j->tokens = (int)(tokens < INT_MAX ? tokens : INT_MAX);
        if (tokens > lim->token_budget) {
            st = bad(msg, sz, 400, "the request needs %lld tokens, over the server's --token-budget %d",
                     (long long)tokens, lim->token_budget);
            goto done;
        }
    }
    /* outputs' storage, then the engine's own checks, then one user once */
    j->B = (int)B;
    int64_t so = 0;
    for (int64_t b = 0; b < B; b++) {
        hstu_request *r = &j->reqs[b];
        hstu_result *res = &j->res[b];
        memset(res, 0, sizeof *res);
        if (rank) {
            res->scores = j->scores + so * cfg->n_tasks;
            so += r->n_candidates;
        } else {
            res->topk_ids = j->topk_ids + b * call->top_k;
            res->topk_scores = j->topk_scores + b * call->top_k;
        }
        hstu_error err = {0};
        if (hstu_engine_check(e, r, &err) != HSTU_OK) {
            st = bad(msg, sz, 400, "user %lld (USER_IDS[%lld] = %lld): %s", (long long)b, (long long)b,
                     (long long)r->user_id, err.msg);
            goto done;
        }
        for (int64_t a = 0; a < b; a++)
            if (j->reqs[a].user_id == r->user_id) {
                st = bad(msg, sz, 400, "USER_IDS[%lld] = %lld appears twice in one request (send a user's "
                                       "requests one after another)", (long long)b, (long long)r->user_id);
                goto done;
            }
    }
done:
    json_arena_unbind(&j->arena); /* the tree is dropped with the arena's next reset */
    return st;
}

/* ---- encoding ------------------------------------------------------------ */

typedef struct out_view {
    const char *name, *datatype;
    int ndim;
    int64_t shape[2];
    const void *data;     /* contiguous */
    bool is_float;
    int64_t n;
} out_view;

/* Gathers output k into a contiguous view; retrieval rows shorter than
 * top_k (a small table) are padded with id -1 and score 0. */
static void view_output(const hstu_config *cfg, proto_iface iface, job *j, const infer_call *c, int k,
                        out_view *v)
{
    memset(v, 0, sizeof *v);
    if (cfg->family == HSTU_FAMILY_RANKING) {
        int64_t M = 0;
        for (int b = 0; b < j->B; b++)
            M += j->reqs[b].n_candidates;
        v->datatype = "FP32";
        v->is_float = true;
        v->data = j->scores;
        v->n = M * cfg->n_tasks;
        if (iface == PROTO_COMPAT) {
            v->name = "OUTPUT";
            v->ndim = 1;
            v->shape[0] = v->n;
        } else {
            v->name = "SCORES";
            v->ndim = 2;
            v->shape[0] = M;
            v->shape[1] = cfg->n_tasks;
        }
        return;
    }
    v->ndim = 2;
    v->shape[0] = j->B;
    v->shape[1] = c->top_k;
    v->n = (int64_t)j->B * c->top_k;
    for (int b = 0; b < j->B; b++)
        for (int i = j->res[b].n_topk; i < c->top_k; i++) {
            j->res[b].topk_ids[i] = -1;
            j->res[b].topk_scores[i] = 0.0f;
        }
    if (k == 0) {
        v->name = "TOPK_IDS";
        v->datatype = "INT64";
        v->data = j->topk_ids;
    } else {
        v->name = "TOPK_SCORES";
        v->datatype = "FP32";
        v->is_float = true;
        v->data = j->topk_scores;
    }
}

/* A bounded text writer over the slot's scratch. */
typedef struct wbuf {
    char *p;
    size_t len, cap;
    bool full;
} wbuf;

static void w_raw(wbuf *w, const void *s, size_t n)
{
    if (w->full || n > w->cap - w->len) {
        w->full = true;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

static void w_str(wbuf *w, const char *s) { w_raw(w, s, strlen(s)); }

static void w_int(wbuf *w, int64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof t, "%lld", (long long)v);
    w_raw(w, t, (size_t)n);
}

/* %.9g gives the float back exactly; ".0" keeps an integral value a JSON
 * real, as jansson writes it; JSON has no NaN or Inf: null. */
static void w_float(wbuf *w, float f)
{
    if (!isfinite(f)) {
        w_raw(w, "null", 4);
        return;
    }
    char t[32];
    int n = snprintf(t, sizeof t, "%.9g", (double)f);
    if (!strpbrk(t, ".e")) {
        t[n++] = '.';
        t[n++] = '0';
    }
    w_raw(w, t, (size_t)n);
}

/* A JSON string: quotes, backslashes and control bytes escaped (at most 6
 * bytes out per byte in); the id came from a JSON string, so it is UTF-8. */
static void w_json_string(wbuf *w, const char *s)
{
    w_raw(w, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            w_raw(w, e, 2);
        } else if (ch < 0x20) {
            char e[8];
            int n = snprintf(e, sizeof e, "\\u%04x", ch);
            w_raw(w, e, (size_t)n);
        } else {
            w_raw(w, s, 1);
        }
    }
    w_raw(w, "\"", 1);
}

/* The reply's bound: the fixed part (names, the id escaped, shapes and
 * sizes of up to PROTO_MAX_OUT outputs) and at most REPLY_VALUE_BYTES per
 * value (an int64 is 20 characters and a comma; "%.9g" of a float at most
 * 15 and ".0" or a comma; binary 4 or 8 bytes). */
#define REPLY_FIXED 8192
#define REPLY_VALUE_BYTES 24

size_t proto_scratch_bytes(const hstu_config *cfg, const proto_limits *lim, size_t ids_cap)
{
    size_t mb = (size_t)lim->max_batch;
    size_t arena = (ids_cap + 4 * mb) * JSON_ARENA_VALUE_BYTES + JSON_ARENA_FIXED;
    size_t values;
    if (cfg->family == HSTU_FAMILY_RANKING) {
        size_t cands = mb * (size_t)cfg->max_candidates;
        if (cands > (size_t)lim->token_budget)
            cands = (size_t)lim->token_budget;
        values = cands * (size_t)cfg->n_tasks;
    } else {
        values = 2 * mb * (size_t)lim->max_top_k;
    }
    size_t reply = REPLY_FIXED + values * REPLY_VALUE_BYTES;
    return arena > reply ? arena : reply;
}

size_t proto_encode_infer(const hstu_config *cfg, proto_iface iface, const char *model_name, job *j,
                          const infer_call *c, size_t *json_len)
{
    wbuf w = {.p = j->scratch, .cap = j->scratch_cap};
    w_str(&w, "{\"model_name\":");
    w_json_string(&w, model_name);
    w_str(&w, ",\"model_version\":\"1\"");
    if (c->has_id) {
        w_str(&w, ",\"id\":");
        w_json_string(&w, c->id);
    }
    w_str(&w, ",\"outputs\":[");
    out_view views[PROTO_MAX_OUT];
    for (int q = 0; q < c->n_out; q++) {
        out_view *v = &views[q];
        view_output(cfg, iface, j, c, c->out[q], v);
        w_str(&w, q ? ",{\"name\":\"" : "{\"name\":\"");
        w_str(&w, v->name);
        w_str(&w, "\",\"datatype\":\"");
        w_str(&w, v->datatype);
        w_str(&w, "\",\"shape\":[");
        for (int d = 0; d < v->ndim; d++) {
            if (d)
                w_raw(&w, ",", 1);
            w_int(&w, v->shape[d]);
        }
        w_raw(&w, "]", 1);
        if (c->out_binary[q]) {
            w_str(&w, ",\"parameters\":{\"binary_data_size\":");
            w_int(&w, v->n * (v->is_float ? 4 : 8));
            w_raw(&w, "}}", 2);
            continue;
        }
        w_str(&w, ",\"data\":[");
        for (int64_t i = 0; i < v->n; i++) {
            if (i)
                w_raw(&w, ",", 1);
            if (v->is_float)
                w_float(&w, ((const float *)v->data)[i]);
            else
                w_int(&w, ((const int64_t *)v->data)[i]);
        }
        w_raw(&w, "]}", 2);
    }
    w_raw(&w, "]}", 2);
    *json_len = w.len;
    for (int q = 0; q < c->n_out; q++)
        if (c->out_binary[q]) /* little-endian host (x86-64, aarch64), as the protocol wants */
            w_raw(&w, views[q].data, (size_t)views[q].n * (views[q].is_float ? 4 : 8));
    return w.full ? 0 : w.len;
}

/* ---- metadata and config ------------------------------------------------- */

static json_t *dims_of(const hstu_config *cfg, proto_iface iface, const char *name, bool is_out)
{
    if (!is_out && !strcmp(name, "CONTEXT_IDS"))
        return json_pack("[ii]", -1, cfg->n_context);
    if (is_out && !strcmp(name, "SCORES"))
        return json_pack("[ii]", -1, cfg->n_tasks);
    if (is_out && strncmp(name, "TOPK", 4) == 0)
        return json_pack("[ii]", -1, -1);
    return json_pack("[i]", -1);
}

static const char *out_type(const char *name) { return !strcmp(name, "TOPK_IDS") ? "INT64" : "FP32"; }

static bool input_listed(const hstu_config *cfg, const tensor_spec *s)
{
    return strcmp(s->name, "CONTEXT_IDS") || cfg->n_context > 0;
}

json_t *proto_model_metadata(const hstu_config *cfg, proto_iface iface, const char *name)
{
    const tensor_spec *spec;
    int nspec, nouts;
    const char *const *outs;
    inputs_of(cfg, iface, &spec, &nspec);
    outputs_of(cfg, iface, &outs, &nouts);
    json_t *in = json_array(), *out = json_array();
    for (int k = 0; k < nspec; k++)
        if (input_listed(cfg, &spec[k]))
            json_array_append_new(in, json_pack("{ss ss so}", "name", spec[k].name, "datatype", "INT64", "shape",
                                                dims_of(cfg, iface, spec[k].name, false)));
    for (int k = 0; k < nouts; k++)
        json_array_append_new(out, json_pack("{ss ss so}", "name", outs[k], "datatype", out_type(outs[k]), "shape",
                                             dims_of(cfg, iface, outs[k], true)));
    return json_pack("{ss s[s] ss so so}", "name", name, "versions", "1", "platform", "hstu", "inputs", in,
                     "outputs", out);
}

json_t *proto_model_config(const hstu_config *cfg, proto_iface iface, const char *name, const char *backend,
                           const proto_limits *lim, int queue_size)
{
    const tensor_spec *spec;
    int nspec, nouts;
    const char *const *outs;
    inputs_of(cfg, iface, &spec, &nspec);
    outputs_of(cfg, iface, &outs, &nouts);
    json_t *in = json_array(), *out = json_array();
    for (int k = 0; k < nspec; k++)
        if (input_listed(cfg, &spec[k]))
            json_array_append_new(in, json_pack("{ss ss so sb}", "name", spec[k].name, "data_type", "TYPE_INT64",
                                                "dims", dims_of(cfg, iface, spec[k].name, false), "optional",
                                                !spec[k].required));
    for (int k = 0; k < nouts; k++)
        json_array_append_new(out, json_pack("{ss ss so}", "name", outs[k], "data_type",
                                             !strcmp(out_type(outs[k]), "INT64") ? "TYPE_INT64" : "TYPE_FP32",
                                             "dims", dims_of(cfg, iface, outs[k], true)));
    bool gpu = !strcmp(backend, "cuda");
    json_t *dyn = json_pack("{sI s{ss sI sb si}}", "max_queue_delay_microseconds", (json_int_t)lim->max_queue_delay_us,
                            "default_queue_policy", "timeout_action", "REJECT", "default_timeout_microseconds",
                            (json_int_t)lim->default_timeout_us, "allow_timeout_override", 1, "max_queue_size",
                            queue_size);
    /* What a client needs to form valid requests (loadgen reads these). */
    json_t *params = json_object();
    char buf[64];
    struct { const char *key; long long v; } nums[] = {
        {"max_history", cfg->max_history},
        {"max_candidates", cfg->family == HSTU_FAMILY_RANKING ? cfg->max_candidates : 0},
        {"item_rows", (long long)cfg->item_rows},
        {"action_rows", (long long)cfg->action_rows},
        {"n_tasks", cfg->family == HSTU_FAMILY_RANKING ? cfg->n_tasks : 0},
    };
    json_object_set_new(params, "family", json_pack("{ss}", "string_value",
                                                    cfg->family == HSTU_FAMILY_RANKING ? "ranking" : "retrieval"));
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        snprintf(buf, sizeof buf, "%lld", nums[i].v);
        json_object_set_new(params, nums[i].key, json_pack("{ss}", "string_value", buf));
    }
    char ctx[HSTU_MAX_CONTEXT * 24] = "";
    for (int i = 0; i < cfg->n_context; i++)
        snprintf(ctx + strlen(ctx), sizeof ctx - strlen(ctx), "%s%lld", i ? "," : "", (long long)cfg->context_rows[i]);
    json_object_set_new(params, "context_rows", json_pack("{ss}", "string_value", ctx));
    return json_pack("{ss ss ss si so so so s[{ss si ss}] so}", "name", name, "platform", "hstu", "backend", backend,
                     "max_batch_size", 0, "input", in, "output", out, "dynamic_batching", dyn, "instance_group",
                     "name", name, "count", 1, "kind", gpu ? "KIND_GPU" : "KIND_CPU", "parameters", params);
}
