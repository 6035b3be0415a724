/* config.c - config.json parsing, validation and serialisation (spec 2).
 *
 * Parsing is strict: every key is known, every value has the right type and
 * range, and an error names the key ("config.json: n_heads: must be >= 1,
 * got 0"). Defaults are filled after parsing so that a written config reads
 * back to the same struct. Derived sizes live here too.
 */
#include "core/status.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits that keep sizes far from int overflow; see docs/config.md. */
#define CFG_MAX_WIDTH 65536
#define CFG_MAX_LAYERS 1024
#define CFG_MAX_ROWS ((int64_t)1 << 31)
#define CFG_MAX_LEN (1 << 24)

int hstu_config_uvqk_width(const hstu_config *c)
{
    return 2 * c->n_heads * c->d_v + 2 * c->n_heads * c->d_qk;
}

int hstu_config_history_tokens(const hstu_config *c, int n_items)
{
    if (c->family == HSTU_FAMILY_RANKING)
        return c->n_context + 2 * n_items;
    return n_items;
}

int hstu_config_max_user_tokens(const hstu_config *c)
{
    int m = c->family == HSTU_FAMILY_RANKING ? c->max_candidates : 0;
    return hstu_config_history_tokens(c, c->max_history) + m;
}

/* ---- parsing helpers ---------------------------------------------------- */

static hstu_status get_int(json_t *v, const char *key, int64_t lo, int64_t hi, int64_t *out,
                           hstu_error *err)
{
    if (!json_is_integer(v))
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s: must be an integer", key);
    int64_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s: must be in [%lld, %lld], got %lld", key,
                         (long long)lo, (long long)hi, (long long)x);
    *out = x;
    return HSTU_OK;
}

static hstu_status get_int32(json_t *v, const char *key, int lo, int hi, int *out, hstu_error *err)
{
    int64_t x = 0;
    hstu_status st = get_int(v, key, lo, hi, &x, err);
    if (st == HSTU_OK)
        *out = (int)x;
    return st;
}

static hstu_status get_bool(json_t *v, const char *key, bool *out, hstu_error *err)
{
    if (!json_is_boolean(v))
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s: must be true or false", key);
    *out = json_is_true(v);
    return HSTU_OK;
}

static hstu_status get_float(json_t *v, const char *key, float lo, float hi, float *out,
                             hstu_error *err)
{
    if (!json_is_number(v))
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s: must be a number", key);
    double x = json_number_value(v);
    if (!(x > lo && x <= hi))
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s: must be in (%g, %g], got %g", key, lo, hi, x);
    *out = (float)x;
    return HSTU_OK;
}

static hstu_status parse_tables(json_t *t, hstu_config *c, bool *have_action, hstu_error *err)
{
    if (!json_is_object(t))
        return hstu_fail(err, HSTU_ERR_FORMAT, "tables: must be an object");
    const char *key;
    json_t *v;
    bool have_item = false;
    json_object_foreach(t, key, v) {
        hstu_status st = HSTU_OK;
        if (!strcmp(key, "item")) {
            st = get_int(v, "tables.item", 1, CFG_MAX_ROWS, &c->item_rows, err);
            have_item = true;
        } else if (!strcmp(key, "action")) {
            st = get_int(v, "tables.action", 1, CFG_MAX_ROWS, &c->action_rows, err);
            *have_action = true;
        } else if (!strcmp(key, "context")) {
            if (!json_is_array(v))
                return hstu_fail(err, HSTU_ERR_FORMAT, "tables.context: must be a list of row counts");
            if (json_array_size(v) > HSTU_MAX_CONTEXT)
                return hstu_fail(err, HSTU_ERR_FORMAT, "tables.context: at most %d tables, got %zu",
                                 HSTU_MAX_CONTEXT, json_array_size(v));
            c->n_context = (int)json_array_size(v);
            for (int j = 0; j < c->n_context && st == HSTU_OK; j++) {
                char name[48];
                snprintf(name, sizeof name, "tables.context[%d]", j);
                st = get_int(json_array_get(v, j), name, 1, CFG_MAX_ROWS, &c->context_rows[j], err);
            }
        } else {
            return hstu_fail(err, HSTU_ERR_FORMAT, "tables.%s: unknown key (expected item, action, context)",
                             key);
        }
        if (st != HSTU_OK)
            return st;
    }
    if (!have_item)
        return hstu_fail(err, HSTU_ERR_FORMAT, "tables.item: missing (the item table's row count)");
    return HSTU_OK;
}

static hstu_status parse_head(json_t *h, hstu_config *c, hstu_error *err)
{
    if (!json_is_object(h))
        return hstu_fail(err, HSTU_ERR_FORMAT, "head: must be an object");
    const char *key;
    json_t *v;
    json_t *names = NULL;
    bool have_tasks = false;
    json_object_foreach(h, key, v) {
        hstu_status st = HSTU_OK;
        if (!strcmp(key, "hidden")) {
            if (!json_is_array(v))
                return hstu_fail(err, HSTU_ERR_FORMAT, "head.hidden: must be a list of widths");
            if (json_array_size(v) > HSTU_MAX_HIDDEN)
                return hstu_fail(err, HSTU_ERR_FORMAT, "head.hidden: at most %d layers", HSTU_MAX_HIDDEN);
            c->n_hidden = (int)json_array_size(v);
            for (int j = 0; j < c->n_hidden && st == HSTU_OK; j++) {
                char name[48];
                snprintf(name, sizeof name, "head.hidden[%d]", j);
                st = get_int32(json_array_get(v, j), name, 1, CFG_MAX_WIDTH, &c->hidden[j], err);
            }
        } else if (!strcmp(key, "n_tasks")) {
            st = get_int32(v, "head.n_tasks", 1, HSTU_MAX_TASKS, &c->n_tasks, err);
            have_tasks = true;
        } else if (!strcmp(key, "task_names")) {
            names = v;
        } else {
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "head.%s: unknown key (expected hidden, n_tasks, task_names)", key);
        }
        if (st != HSTU_OK)
            return st;
    }
    if (!have_tasks)
        return hstu_fail(err, HSTU_ERR_FORMAT, "head.n_tasks: missing");
    if (names) {
        if (!json_is_array(names) || (int)json_array_size(names) != c->n_tasks)
            return hstu_fail(err, HSTU_ERR_FORMAT, "head.task_names: must be a list of %d names",
                             c->n_tasks);
        for (int j = 0; j < c->n_tasks; j++) {
            json_t *s = json_array_get(names, j);
            if (!json_is_string(s) || json_string_length(s) == 0 ||
                json_string_length(s) >= HSTU_NAME_MAX)
                return hstu_fail(err, HSTU_ERR_FORMAT,
                                 "head.task_names[%d]: must be a string of 1..%d characters", j,
                                 HSTU_NAME_MAX - 1);
            snprintf(c->task_names[j], HSTU_NAME_MAX, "%s", json_string_value(s));
        }
    }
    return HSTU_OK;
}

/* Fills defaults and checks what involves several keys. */
static hstu_status finish(hstu_config *c, const bool *seen, bool have_action, hstu_error *err)
{
    enum { K_ALPHA, K_EPS, K_AFFINE, K_UVQKB, K_PROJB, K_SILU, K_RAB, K_BUCKETS, K_MAXH, K_MAXC };
    if (!seen[K_ALPHA])
        c->alpha = 1.0f / sqrtf((float)c->d_qk);
    if (!seen[K_EPS])
        c->ln_eps = 1e-5f;
    if (!seen[K_AFFINE])
        c->ln_affine = true;
    if (!seen[K_UVQKB])
        c->uvqk_bias = true;
    if (!seen[K_PROJB])
        c->proj_bias = false;
    if (!seen[K_SILU])
        c->silu_uvqk = HSTU_SILU_ALL;
    if (!seen[K_RAB])
        c->rab = c->family == HSTU_FAMILY_RETRIEVAL ? HSTU_RAB_POS_TIME : HSTU_RAB_NONE;
    if (!seen[K_BUCKETS])
        c->rab_buckets = 128;

    if (c->family == HSTU_FAMILY_RANKING) {
        if (!have_action)
            return hstu_fail(err, HSTU_ERR_FORMAT, "tables.action: missing (ranking needs the action table)");
        if (c->n_tasks == 0)
            return hstu_fail(err, HSTU_ERR_FORMAT, "head: missing (ranking needs the task head)");
        if (c->rab != HSTU_RAB_NONE)
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "rab: \"pos_time\" needs timestamps, which ranking requests do not carry; "
                             "use \"none\" for the ranking family");
        if (!seen[K_MAXH])
            c->max_history = (c->max_positions - 1 - c->n_context) / 2;
        if (!seen[K_MAXC])
            c->max_candidates = 1024;
        if (c->max_history < 0)
            c->max_history = 0;
    } else {
        if (have_action || c->n_context > 0)
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "tables: the retrieval family has only the item table (remove action/context)");
        if (c->n_tasks > 0)
            return hstu_fail(err, HSTU_ERR_FORMAT, "head: the retrieval family has no task head");
        if (!seen[K_MAXH])
            c->max_history = c->max_positions;
        if (c->max_history > c->max_positions)
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "max_history: %d exceeds max_positions %d (retrieval positions are not clamped)",
                             c->max_history, c->max_positions);
        if (c->max_history < 1)
            return hstu_fail(err, HSTU_ERR_FORMAT, "max_history: retrieval needs at least 1");
        c->max_candidates = 0;
    }
    if ((int64_t)hstu_config_history_tokens(c, c->max_history) + c->max_candidates > CFG_MAX_LEN)
        return hstu_fail(err, HSTU_ERR_FORMAT, "max_history/max_candidates: a user's tokens exceed %d",
                         CFG_MAX_LEN);
    return HSTU_OK;
}

hstu_status hstu_config_parse(const char *text, size_t len, hstu_config *out, hstu_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return hstu_fail(err, HSTU_ERR_FORMAT, "invalid JSON at line %d column %d: %s", jerr.line,
                         jerr.column, jerr.text);
    hstu_config c;
    memset(&c, 0, sizeof c);
    hstu_status st = HSTU_OK;
    bool seen[10] = {false};
    bool have_family = false, have_tables = false, have_action = false;
    int required = 0; /* bit per required scalar key */
    static const char *const req_names[] = {"d_model", "n_layers", "n_heads", "d_qk",
                                            "d_v", "attn_scale_len", "max_positions"};
    if (!json_is_object(root)) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "the config must be a JSON object");
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "family")) {
            const char *s = json_string_value(v);
            if (s && !strcmp(s, "ranking"))
                c.family = HSTU_FAMILY_RANKING;
            else if (s && !strcmp(s, "retrieval"))
                c.family = HSTU_FAMILY_RETRIEVAL;
            else
                st = hstu_fail(err, HSTU_ERR_FORMAT, "family: must be \"ranking\" or \"retrieval\"");
            have_family = true;
        } else if (!strcmp(key, "d_model")) {
            st = get_int32(v, key, 1, CFG_MAX_WIDTH, &c.d_model, err), required |= 1;
        } else if (!strcmp(key, "n_layers")) {
            st = get_int32(v, key, 1, CFG_MAX_LAYERS, &c.n_layers, err), required |= 2;
        } else if (!strcmp(key, "n_heads")) {
            st = get_int32(v, key, 1, 1024, &c.n_heads, err), required |= 4;
        } else if (!strcmp(key, "d_qk")) {
            st = get_int32(v, key, 1, CFG_MAX_WIDTH, &c.d_qk, err), required |= 8;
        } else if (!strcmp(key, "d_v")) {
            st = get_int32(v, key, 1, CFG_MAX_WIDTH, &c.d_v, err), required |= 16;
        } else if (!strcmp(key, "attn_scale_len")) {
            st = get_int32(v, key, 1, CFG_MAX_LEN, &c.attn_scale_len, err), required |= 32;
        } else if (!strcmp(key, "max_positions")) {
            st = get_int32(v, key, 1, CFG_MAX_LEN, &c.max_positions, err), required |= 64;
        } else if (!strcmp(key, "tables")) {
            st = parse_tables(v, &c, &have_action, err);
            have_tables = true;
        } else if (!strcmp(key, "head")) {
            st = parse_head(v, &c, err);
        } else if (!strcmp(key, "alpha")) {
            st = get_float(v, key, 0.0f, 1e6f, &c.alpha, err), seen[0] = true;
        } else if (!strcmp(key, "ln_eps")) {
            st = get_float(v, key, 0.0f, 1.0f, &c.ln_eps, err), seen[1] = true;
        } else if (!strcmp(key, "ln_affine")) {
            st = get_bool(v, key, &c.ln_affine, err), seen[2] = true;
        } else if (!strcmp(key, "uvqk_bias")) {
            st = get_bool(v, key, &c.uvqk_bias, err), seen[3] = true;
        } else if (!strcmp(key, "proj_bias")) {
            st = get_bool(v, key, &c.proj_bias, err), seen[4] = true;
        } else if (!strcmp(key, "silu_uvqk")) {
            const char *s = json_string_value(v);
            if (s && !strcmp(s, "all"))
                c.silu_uvqk = HSTU_SILU_ALL;
            else if (s && !strcmp(s, "u"))
                c.silu_uvqk = HSTU_SILU_U;
            else
                st = hstu_fail(err, HSTU_ERR_FORMAT, "silu_uvqk: must be \"all\" or \"u\"");
            seen[5] = true;
        } else if (!strcmp(key, "rab")) {
            const char *s = json_string_value(v);
            if (s && !strcmp(s, "none"))
                c.rab = HSTU_RAB_NONE;
            else if (s && !strcmp(s, "pos_time"))
                c.rab = HSTU_RAB_POS_TIME;
            else
                st = hstu_fail(err, HSTU_ERR_FORMAT, "rab: must be \"none\" or \"pos_time\"");
            seen[6] = true;
        } else if (!strcmp(key, "rab_buckets")) {
            st = get_int32(v, key, 1, 4096, &c.rab_buckets, err), seen[7] = true;
        } else if (!strcmp(key, "max_history")) {
            st = get_int32(v, key, 0, CFG_MAX_LEN, &c.max_history, err), seen[8] = true;
        } else if (!strcmp(key, "max_candidates")) {
            st = get_int32(v, key, 0, CFG_MAX_LEN, &c.max_candidates, err), seen[9] = true;
        } else {
            st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: unknown key (see docs/config.md for the keys)", key);
        }
        if (st != HSTU_OK)
            goto done;
    }
    if (!have_family) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "family: missing (\"ranking\" or \"retrieval\")");
        goto done;
    }
    for (int i = 0; i < 7; i++)
        if (!(required & (1 << i))) {
            st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: missing (required)", req_names[i]);
            goto done;
        }
    if (!have_tables) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "tables: missing (required)");
        goto done;
    }
    st = finish(&c, seen, have_action, err);
    if (st == HSTU_OK)
        *out = c;
done:
    json_decref(root);
    return st;
}

hstu_status hstu_config_load(const char *path, hstu_config *cfg, hstu_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return hstu_fail(err, HSTU_ERR_IO, "%s: cannot open (does the model directory hold config.json?)",
                         path);
    char *buf = NULL;
    hstu_status st = HSTU_OK;
    if (fseek(f, 0, SEEK_END) != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot seek", path);
        goto close_file;
    }
    long n = ftell(f);
    if (n < 0 || n > (1 << 20)) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: size %ld is not that of a config (at most 1 MiB)", path, n);
        goto close_file;
    }
    rewind(f);
    buf = malloc((size_t)n + 1);
    if (!buf) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "%s: out of memory", path);
        goto close_file;
    }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: read failed", path);
        goto free_buf;
    }
    st = hstu_config_parse(buf, (size_t)n, cfg, err);
    if (st != HSTU_OK)
        hstu_error_prefix(err, "%s", path);
free_buf:
    free(buf);
close_file:
    fclose(f);
    return st;
}

char *hstu_config_to_json(const hstu_config *c)
{
    json_t *o = json_object();
    bool rank = c->family == HSTU_FAMILY_RANKING;
    json_object_set_new(o, "family", json_string(rank ? "ranking" : "retrieval"));
    json_object_set_new(o, "d_model", json_integer(c->d_model));
    json_object_set_new(o, "n_layers", json_integer(c->n_layers));
    json_object_set_new(o, "n_heads", json_integer(c->n_heads));
    json_object_set_new(o, "d_qk", json_integer(c->d_qk));
    json_object_set_new(o, "d_v", json_integer(c->d_v));
    json_object_set_new(o, "attn_scale_len", json_integer(c->attn_scale_len));
    json_object_set_new(o, "max_positions", json_integer(c->max_positions));
    json_t *t = json_object();
    json_object_set_new(t, "item", json_integer(c->item_rows));
    if (rank) {
        json_object_set_new(t, "action", json_integer(c->action_rows));
        json_t *ctx = json_array();
        for (int j = 0; j < c->n_context; j++)
            json_array_append_new(ctx, json_integer(c->context_rows[j]));
        json_object_set_new(t, "context", ctx);
    }
    json_object_set_new(o, "tables", t);
    if (rank) {
        json_t *h = json_object();
        json_t *hid = json_array();
        for (int j = 0; j < c->n_hidden; j++)
            json_array_append_new(hid, json_integer(c->hidden[j]));
        json_object_set_new(h, "hidden", hid);
        json_object_set_new(h, "n_tasks", json_integer(c->n_tasks));
        if (c->task_names[0][0]) {
            json_t *names = json_array();
            for (int j = 0; j < c->n_tasks; j++)
                json_array_append_new(names, json_string(c->task_names[j]));
            json_object_set_new(h, "task_names", names);
        }
        json_object_set_new(o, "head", h);
    }
    json_object_set_new(o, "alpha", json_real(c->alpha));
    json_object_set_new(o, "ln_eps", json_real(c->ln_eps));
    json_object_set_new(o, "ln_affine", json_boolean(c->ln_affine));
    json_object_set_new(o, "uvqk_bias", json_boolean(c->uvqk_bias));
    json_object_set_new(o, "proj_bias", json_boolean(c->proj_bias));
    json_object_set_new(o, "silu_uvqk", json_string(c->silu_uvqk == HSTU_SILU_ALL ? "all" : "u"));
    json_object_set_new(o, "rab", json_string(c->rab == HSTU_RAB_NONE ? "none" : "pos_time"));
    json_object_set_new(o, "rab_buckets", json_integer(c->rab_buckets));
    json_object_set_new(o, "max_history", json_integer(c->max_history));
    if (rank)
        json_object_set_new(o, "max_candidates", json_integer(c->max_candidates));
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}
