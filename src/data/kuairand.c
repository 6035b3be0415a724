/* kuairand.c - KuaiRand CSV logs and user features to ranking rows.
 *
 * log_standard_*.csv: a header naming the columns (user_id, video_id, date,
 * hourmin, time_ms, is_click, is_like, is_follow, is_comment, is_forward,
 * is_hate, long_view, play_time_ms, duration_ms, profile_stay_time,
 * comment_stay_time, is_profile_enter, is_rand, tab), then one impression
 * per line. Columns are found by name; every row must have as many fields as
 * the header. The action id is the bitmask of the eight events in the order
 * of kuairand_events (bit b set when that column is non-zero, as NVIDIA's
 * preprocessing does). Rows sort by time_ms; the file stores seconds.
 *
 * user_features_*.csv: a header with user_id and the chosen columns (by
 * default NVIDIA's five plus user_id itself). Each chosen column becomes a
 * contextual table: its distinct non-empty values sorted (as integers when
 * they all are, else as bytes) get ids 1..V, an empty value or a user with
 * no row gets 0. The vocabularies go into the metadata.
 */
#include "data/prep.h"
#include "data/progress.h"
#include "data/textfile.h"

#include "core/status.h"

#include <stdlib.h>
#include <string.h>

#define KR_MAX_COLS 256

static int find_col(const text_field *h, int n, const char *name)
{
    size_t len = strlen(name);
    for (int i = 0; i < n; i++)
        if (h[i].len == len && !memcmp(h[i].s, name, len))
            return i;
    return -1;
}

static void list_cols(const text_field *h, int n, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o + 2 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%.*s", i ? "," : "", (int)h[i].len, h[i].s);
}

hstu_status prep_kuairand_log(builder *b, const char *path, const prep_options *o, prep_report *rep,
                              hstu_error *err)
{
    text_file f;
    hstu_status st = text_open(path, &f, err);
    if (st != HSTU_OK)
        return st;
    b->ts_div = 1000;
    text_bad bad = {o->skip_bad, 0};
    progress pg;
    char label[128];
    snprintf(label, sizeof label, "prep %s", path);
    progress_init(&pg, label, f.size, o->progress);
    text_field hdr[KR_MAX_COLS + 1], fl[KR_MAX_COLS + 1];
    const char *line;
    size_t len;
    if (!text_next_line(&f, &line, &len)) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: empty file (expected a KuaiRand log header)", path);
        goto done;
    }
    int nh = text_split(line, len, ',', hdr, KR_MAX_COLS);
    if (nh > KR_MAX_COLS) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "%s:1: more than %d columns", path, KR_MAX_COLS);
        goto done;
    }
    int c_user = find_col(hdr, nh, "user_id"), c_item = find_col(hdr, nh, "video_id"),
        c_time = find_col(hdr, nh, "time_ms");
    int c_ev[KUAIRAND_TASKS];
    const char *missing = c_user < 0 ? "user_id" : c_item < 0 ? "video_id" : c_time < 0 ? "time_ms" : NULL;
    for (int t = 0; t < KUAIRAND_TASKS; t++)
        if ((c_ev[t] = find_col(hdr, nh, kuairand_events[t])) < 0 && !missing)
            missing = kuairand_events[t];
    if (missing) {
        char cols[400];
        list_cols(hdr, nh, cols, sizeof cols);
        st = hstu_fail(err, HSTU_ERR_FORMAT, "%s:1: no column \"%s\" in the header (%s): not a KuaiRand "
                       "log_standard file", path, missing, cols);
        goto done;
    }
    while (text_next_line(&f, &line, &len)) {
        progress_update(&pg, f.pos);
        if (len == 0)
            continue;
        int n = text_split(line, len, ',', fl, KR_MAX_COLS);
        if (n != nh) {
            if ((st = text_bad_row(&bad, &f, err, "%d fields, the header has %d", n, nh)) != HSTU_OK)
                goto done;
            continue;
        }
        int64_t user, item, tms, action = 0, v;
        const char *what = NULL;
        int col = -1;
        if (!text_parse_i64(fl[c_user], &user) || user < 0)
            what = "user_id", col = c_user;
        else if (!text_parse_i64(fl[c_item], &item) || item < 0)
            what = "video_id", col = c_item;
        else if (!text_parse_i64(fl[c_time], &tms) || tms < 0)
            what = "time_ms", col = c_time;
        for (int t = 0; !what && t < KUAIRAND_TASKS; t++) {
            if (!text_parse_i64(fl[c_ev[t]], &v) || v < 0)
                what = kuairand_events[t], col = c_ev[t];
            else if (v)
                action |= (int64_t)1 << t;
        }
        if (what) {
            int shown = fl[col].len > 40 ? 40 : (int)fl[col].len;
            if ((st = text_bad_row(&bad, &f, err, "%s \"%.*s\" is not a non-negative integer", what, shown,
                                   fl[col].s)) != HSTU_OK)
                goto done;
            continue;
        }
        if ((st = builder_add(b, user, item, tms, action, err)) != HSTU_OK)
            goto done;
        rep->rows++;
    }
    progress_finish(&pg);
done:
    rep->bad_rows += bad.count;
    text_close(&f);
    return st;
}

/* ---- user features --------------------------------------------------------- */

typedef struct kr_value {
    text_field v;
    int64_t row;
} kr_value;

static int cmp_bytes(const void *a, const void *b)
{
    const kr_value *x = a, *y = b;
    size_t n = x->v.len < y->v.len ? x->v.len : y->v.len;
    int c = memcmp(x->v.s, y->v.s, n);
    if (c)
        return c;
    return (x->v.len > y->v.len) - (x->v.len < y->v.len);
}

static int cmp_int(const void *a, const void *b)
{
    const kr_value *x = a, *y = b;
    int64_t p = 0, q = 0;
    text_parse_i64(x->v, &p);
    text_parse_i64(y->v, &q);
    return (p > q) - (p < q);
}

typedef struct kr_dup {
    int64_t user, line, row;
} kr_dup;

static int cmp_dup(const void *a, const void *b)
{
    const kr_dup *x = a, *y = b;
    if (x->user != y->user)
        return (x->user > y->user) - (x->user < y->user);
    return (x->line > y->line) - (x->line < y->line);
}

static text_field trim_field(text_field f)
{
    while (f.len && (f.s[0] == ' ' || f.s[0] == '\t'))
        f.s++, f.len--;
    while (f.len && (f.s[f.len - 1] == ' ' || f.s[f.len - 1] == '\t'))
        f.len--;
    return f;
}

hstu_status prep_kuairand_users(builder *b, const char *path, const prep_options *o,
                                prep_report *rep, hstu_error *err)
{
    const char *cols = o->context ? o->context : KUAIRAND_DEFAULT_CONTEXT;
    json_t *tasks = json_array();
    for (int t = 0; t < KUAIRAND_TASKS; t++)
        json_array_append_new(tasks, json_string(kuairand_events[t]));
    json_object_set_new(b->meta, "task_names", tasks);
    if (!path || !cols[0]) {
        json_object_set_new(b->meta, "context_names", json_array());
        return HSTU_OK;
    }
    /* the chosen column names */
    char names[HSTU_MAX_CONTEXT][HSTU_NAME_MAX];
    int k = 0;
    for (const char *p = cols; *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || n >= HSTU_NAME_MAX || k == HSTU_MAX_CONTEXT)
            return hstu_fail(err, HSTU_ERR_ARG, "--context \"%s\": a comma-separated list of at most %d "
                             "column names", cols, HSTU_MAX_CONTEXT);
        memcpy(names[k], p, n);
        names[k++][n] = 0;
        p += n + (e ? 1 : 0);
    }
    text_file f;
    hstu_status st = text_open(path, &f, err);
    if (st != HSTU_OK)
        return st;
    text_bad bad = {o->skip_bad, 0};
    int64_t *users = NULL, *ids = NULL, *lines = NULL;
    kr_value *vals = NULL;
    size_t n_rows = 0, cap = 0;
    text_field hdr[KR_MAX_COLS + 1], fl[KR_MAX_COLS + 1];
    const char *line;
    size_t len;
    if (!text_next_line(&f, &line, &len)) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: empty file (expected a user_features header)", path);
        goto done;
    }
    int nh = text_split(line, len, ',', hdr, KR_MAX_COLS);
    if (nh > KR_MAX_COLS) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "%s:1: more than %d columns", path, KR_MAX_COLS);
        goto done;
    }
    int c_user = find_col(hdr, nh, "user_id"), c[HSTU_MAX_CONTEXT];
    for (int j = 0; j < k; j++)
        if ((c[j] = find_col(hdr, nh, names[j])) < 0 || c_user < 0) {
            char have[600];
            list_cols(hdr, nh, have, sizeof have);
            st = hstu_fail(err, HSTU_ERR_FORMAT, "%s:1: no column \"%s\" in the header (%s)", path,
                           c_user < 0 ? "user_id" : names[j], have);
            goto done;
        }
    while (text_next_line(&f, &line, &len)) {
        if (len == 0)
            continue;
        int n = text_split(line, len, ',', fl, KR_MAX_COLS);
        int64_t user;
        if (n != nh) {
            if ((st = text_bad_row(&bad, &f, err, "%d fields, the header has %d", n, nh)) != HSTU_OK)
                goto done;
            continue;
        }
        if (!text_parse_i64(fl[c_user], &user) || user < 0) {
            if ((st = text_bad_row(&bad, &f, err, "user_id \"%.*s\" is not a non-negative integer",
                                   (int)(fl[c_user].len > 40 ? 40 : fl[c_user].len), fl[c_user].s)) != HSTU_OK)
                goto done;
            continue;
        }
        if (n_rows == cap) {
            cap = cap ? 2 * cap : 1024;
            int64_t *u2 = realloc(users, cap * sizeof *u2);
            if (u2)
                users = u2;
            kr_value *v2 = realloc(vals, cap * (size_t)(k ? k : 1) * sizeof *v2);
            if (v2)
                vals = v2;
            int64_t *l2 = realloc(lines, cap * sizeof *l2);
            if (l2)
                lines = l2;
            if (!u2 || !v2 || !l2) {
                st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
                goto done;
            }
        }
        users[n_rows] = user;
        for (int j = 0; j < k; j++)
            vals[n_rows * (size_t)k + (size_t)j] = (kr_value){trim_field(fl[c[j]]), (int64_t)n_rows};
        lines[n_rows] = f.line;
        n_rows++;
    }
    /* a user with two rows is malformed: the first row wins under --skip-bad */
    {
        kr_dup *d = malloc(sizeof *d * (n_rows ? n_rows : 1));
        if (!d) {
            st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (size_t r = 0; r < n_rows; r++)
            d[r] = (kr_dup){users[r], lines[r], (int64_t)r};
        qsort(d, n_rows, sizeof *d, cmp_dup);
        for (size_t r = 1; r < n_rows && st == HSTU_OK; r++)
            if (d[r].user == d[r - 1].user) {
                f.line = d[r].line;
                st = text_bad_row(&bad, &f, err, "user_id %lld already has a row (line %lld)",
                                  (long long)d[r].user, (long long)d[r - 1].line);
                users[d[r].row] = -1; /* dropped below */
            }
        free(d);
        if (st != HSTU_OK)
            goto done;
        size_t w = 0;
        for (size_t r = 0; r < n_rows; r++) {
            if (users[r] < 0)
                continue;
            users[w] = users[r];
            for (int j = 0; j < k; j++) {
                vals[w * (size_t)k + (size_t)j] = vals[r * (size_t)k + (size_t)j];
                vals[w * (size_t)k + (size_t)j].row = (int64_t)w;
            }
            w++;
        }
        n_rows = w;
    }
    ids = calloc(n_rows * (size_t)k + 1, sizeof *ids);
    kr_value *col = malloc(sizeof *col * (n_rows + 1));
    if (!ids || !col) {
        free(col);
        st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
        goto done;
    }
    int64_t rows[HSTU_MAX_CONTEXT];
    json_t *vocab = json_object(), *cn = json_array();
    for (int j = 0; j < k; j++) {
        size_t m = 0;
        bool numeric = true;
        for (size_t r = 0; r < n_rows; r++) {
            kr_value v = vals[r * (size_t)k + (size_t)j];
            int64_t x;
            if (v.v.len == 0)
                continue; /* unknown: id 0 */
            numeric = numeric && text_parse_i64(v.v, &x);
            col[m++] = v;
        }
        qsort(col, m, sizeof *col, numeric ? cmp_int : cmp_bytes);
        json_t *list = json_array();
        int64_t id = 0;
        for (size_t i = 0; i < m; i++) {
            if (i == 0 || (numeric ? cmp_int : cmp_bytes)(&col[i - 1], &col[i]) != 0) {
                id++;
                json_array_append_new(list, json_stringn(col[i].v.s, col[i].v.len));
            }
            ids[(size_t)col[i].row * (size_t)k + (size_t)j] = id;
        }
        rows[j] = id + 1;
        json_object_set_new(vocab, names[j], list);
        json_array_append_new(cn, json_string(names[j]));
    }
    free(col);
    json_object_set_new(b->meta, "context_names", cn);
    json_object_set_new(b->meta, "context_vocab", vocab);
    json_object_set_new(b->meta, "user_features", json_string(path));
    st = builder_set_context(b, k, rows, (int64_t)n_rows, users, ids, err);
done:
    rep->bad_rows += bad.count;
    free(users);
    free(lines);
    free(ids);
    free(vals);
    text_close(&f);
    return st;
}
