/* builder.c - parsed rows to a dataset file: remap, group, sort, split, write.
 * See builder.h for the steps and format.h for the bytes. */
#include "data/builder.h"

#include "core/status.h"
#include "data/format.h"
#include "data/progress.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void builder_options_default(builder_options *o)
{
    o->num_candidates = 100;
    o->max_items = 4196;
    o->train_frac = 0.7;
}

hstu_status builder_init(builder *b, hstu_family family, bool has_timestamps, int n_tasks,
                         hstu_error *err)
{
    memset(b, 0, sizeof *b);
    b->family = family;
    b->has_timestamps = has_timestamps;
    b->n_tasks = n_tasks;
    b->ts_div = 1;
    b->meta = json_object();
    if (!b->meta)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    json_object_set_new(b->meta, "family",
                        json_string(family == HSTU_FAMILY_RANKING ? "ranking" : "retrieval"));
    json_object_set_new(b->meta, "timestamps", json_boolean(has_timestamps));
    return HSTU_OK;
}

void builder_free(builder *b)
{
    free(b->rows);
    free(b->ctx_user_raw);
    free(b->ctx_ids);
    json_decref(b->meta);
    memset(b, 0, sizeof *b);
}

hstu_status builder_add(builder *b, int64_t user, int64_t item, int64_t ts, int64_t action,
                        hstu_error *err)
{
    if (b->n_rows == b->cap_rows) {
        size_t cap = b->cap_rows ? b->cap_rows * 2 : 1 << 16;
        builder_row *r = realloc(b->rows, cap * sizeof *r);
        if (!r)
            return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory after %zu interactions", b->n_rows);
        b->rows = r;
        b->cap_rows = cap;
    }
    b->rows[b->n_rows++] = (builder_row){user, item, ts, action};
    return HSTU_OK;
}

hstu_status builder_set_context(builder *b, int k, const int64_t *rows, int64_t n,
                                const int64_t *users, const int64_t *ids, hstu_error *err)
{
    if (k < 0 || k > HSTU_MAX_CONTEXT)
        return hstu_fail(err, HSTU_ERR_ARG, "%d contextual tables: at most %d", k, HSTU_MAX_CONTEXT);
    free(b->ctx_user_raw);
    free(b->ctx_ids);
    b->ctx_user_raw = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    b->ctx_ids = malloc(sizeof(int64_t) * (size_t)(n * k > 0 ? n * k : 1));
    if (!b->ctx_user_raw || !b->ctx_ids)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for user features");
    memcpy(b->ctx_user_raw, users, sizeof(int64_t) * (size_t)n);
    memcpy(b->ctx_ids, ids, sizeof(int64_t) * (size_t)(n * k));
    memcpy(b->context_rows, rows, sizeof(int64_t) * (size_t)k);
    b->n_context = k;
    b->n_ctx_users = n;
    return HSTU_OK;
}

/* ---- id remapping: open-addressing hash of source id -> slot -------------- */

typedef struct idmap {
    int64_t *keys;
    int64_t *vals;
    uint8_t *used;
    size_t cap, n;
} idmap;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static bool idmap_init(idmap *m, size_t expect)
{
    size_t cap = 1024;
    while (cap < expect * 2)
        cap *= 2;
    m->cap = cap;
    m->n = 0;
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    m->used = calloc(cap, 1);
    return m->keys && m->vals && m->used;
}

static void idmap_free(idmap *m)
{
    free(m->keys);
    free(m->vals);
    free(m->used);
}

static size_t idmap_slot(const idmap *m, int64_t key)
{
    size_t i = mix64((uint64_t)key) & (m->cap - 1);
    while (m->used[i] && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static bool idmap_grow(idmap *m)
{
    idmap g;
    if (!idmap_init(&g, m->cap))
        return false;
    for (size_t i = 0; i < m->cap; i++)
        if (m->used[i]) {
            size_t j = idmap_slot(&g, m->keys[i]);
            g.used[j] = 1;
            g.keys[j] = m->keys[i];
            g.vals[j] = m->vals[i];
            g.n++;
        }
    idmap_free(m);
    *m = g;
    return true;
}

/* Inserts key (value -1) if absent. */
static bool idmap_put(idmap *m, int64_t key)
{
    size_t i = idmap_slot(m, key);
    if (m->used[i])
        return true;
    m->used[i] = 1;
    m->keys[i] = key;
    m->vals[i] = -1;
    if (++m->n * 2 > m->cap)
        return idmap_grow(m);
    return true;
}

static int64_t idmap_get(const idmap *m, int64_t key)
{
    size_t i = idmap_slot(m, key);
    return m->used[i] ? m->vals[i] : -1;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorted distinct keys of m into *out (malloc'd), and vals = rank + base. */
static bool idmap_number(idmap *m, int64_t base, int64_t **out)
{
    int64_t *k = malloc(sizeof(int64_t) * (m->n ? m->n : 1));
    if (!k)
        return false;
    size_t n = 0;
    for (size_t i = 0; i < m->cap; i++)
        if (m->used[i])
            k[n++] = m->keys[i];
    qsort(k, n, sizeof *k, cmp_i64);
    for (size_t r = 0; r < n; r++)
        m->vals[idmap_slot(m, k[r])] = (int64_t)r + base;
    *out = k;
    return true;
}

/* ---- writing ------------------------------------------------------------- */

typedef struct writer {
    FILE *fp;
    uint64_t hash;
    uint64_t off;
    bool ok;
} writer;

static void w_bytes(writer *w, const void *p, size_t n)
{
    /* every call writes a multiple of 8 bytes, so words never straddle calls */
    w->hash = fmt_hash_words(w->hash, p, n);
    if (w->ok && fwrite(p, 1, n, w->fp) != n)
        w->ok = false;
    w->off += n;
}

static void w_pad(writer *w)
{
    static const uint8_t zero[FMT_ALIGN];
    size_t r = (size_t)(w->off % FMT_ALIGN);
    if (r)
        w_bytes(w, zero, FMT_ALIGN - r);
}

static size_t padded(size_t n) { return (n + FMT_ALIGN - 1) / FMT_ALIGN * FMT_ALIGN; }

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static void sync_parent_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir)
        d = "/";
    else if (slash) {
        *slash = 0;
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Stable sort of one user's rows by time: rows are (ts, file position). */
typedef struct ts_pos {
    int64_t ts;
    int64_t pos;
} ts_pos;

static int cmp_ts_pos(const void *a, const void *b)
{
    const ts_pos *x = a, *y = b;
    if (x->ts != y->ts)
        return (x->ts > y->ts) - (x->ts < y->ts);
    return (x->pos > y->pos) - (x->pos < y->pos);
}

hstu_status builder_write(builder *b, const builder_options *o, const char *path,
                          builder_stats *stats, hstu_error *err)
{
    hstu_status st = HSTU_OK;
    bool rank = b->family == HSTU_FAMILY_RANKING;
    const int k = rank ? b->n_context : 0;
    const size_t n = b->n_rows;
    idmap um = {0}, im = {0}, cm = {0};
    int64_t *user_raw = NULL, *item_sorted = NULL, *offsets = NULL, *order = NULL, *fill = NULL;
    int64_t *items = NULL, *actions = NULL, *ts = NULL, *split = NULL, *ctx = NULL, *item_raw = NULL;
    ts_pos *tsp = NULL;
    char *meta_text = NULL, *tmp = NULL;
    FILE *fp = NULL;
    bool created = false;
    memset(stats, 0, sizeof *stats);

    if (n == 0)
        return hstu_fail(err, HSTU_ERR_FORMAT, "no interactions were read: nothing to write");
    if (rank && (o->num_candidates < 1 || o->max_items < 2 || o->num_candidates >= o->max_items))
        return hstu_fail(err, HSTU_ERR_ARG,
                         "--candidates %d and --max-items %d: need 1 <= candidates < max items",
                         o->num_candidates, o->max_items);
    if (rank && !(o->train_frac >= 0 && o->train_frac <= 1))
        return hstu_fail(err, HSTU_ERR_ARG, "train fraction %g: must be in [0, 1]", o->train_frac);

    /* 1. dense ids */
    if (!idmap_init(&um, 1024) || !idmap_init(&im, 1024))
        goto oom;
    for (size_t i = 0; i < n; i++)
        if (!idmap_put(&um, b->rows[i].user) || !idmap_put(&im, b->rows[i].item))
            goto oom;
    if (!idmap_number(&um, 0, &user_raw) || !idmap_number(&im, 1, &item_sorted))
        goto oom;
    const int64_t U = (int64_t)um.n, I = (int64_t)im.n;

    /* 2. group by user (counting sort, stable), then time order */
    offsets = calloc((size_t)U + 1, sizeof *offsets);
    fill = malloc(sizeof(int64_t) * (size_t)U);
    order = malloc(sizeof(int64_t) * n);
    if (!offsets || !fill || !order)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        int64_t u = idmap_get(&um, b->rows[i].user);
        b->rows[i].user = u; /* from here on, rows hold dense user indices */
        offsets[u + 1]++;
    }
    int64_t longest = 0;
    for (int64_t u = 0; u < U; u++) {
        if (offsets[u + 1] > longest)
            longest = offsets[u + 1];
        offsets[u + 1] += offsets[u];
    }
    if (longest > 0x7fffffff) {
        st = hstu_fail(err, HSTU_ERR_UNSUPPORTED, "a user has %lld interactions: at most 2^31-1",
                       (long long)longest);
        goto done;
    }
    memcpy(fill, offsets, sizeof(int64_t) * (size_t)U);
    for (size_t i = 0; i < n; i++)
        order[fill[b->rows[i].user]++] = (int64_t)i;
    if (b->has_timestamps) {
        if (!(tsp = malloc(sizeof *tsp * (size_t)(longest ? longest : 1))))
            goto oom;
        for (int64_t u = 0; u < U; u++) {
            int64_t b0 = offsets[u], len = offsets[u + 1] - b0;
            bool sorted = true;
            for (int64_t j = 1; j < len && sorted; j++)
                sorted = b->rows[order[b0 + j - 1]].ts <= b->rows[order[b0 + j]].ts;
            if (sorted)
                continue;
            stats->unsorted_users++;
            for (int64_t j = 0; j < len; j++)
                tsp[j] = (ts_pos){b->rows[order[b0 + j]].ts, order[b0 + j]};
            qsort(tsp, (size_t)len, sizeof *tsp, cmp_ts_pos);
            for (int64_t j = 0; j < len; j++)
                order[b0 + j] = tsp[j].pos;
        }
    }
    items = malloc(sizeof(int64_t) * n);
    actions = rank ? malloc(sizeof(int64_t) * n) : NULL;
    ts = b->has_timestamps ? malloc(sizeof(int64_t) * n) : NULL;
    item_raw = malloc(sizeof(int64_t) * (size_t)(I + 1));
    split = malloc(sizeof(int64_t) * 3 * (size_t)U);
    ctx = malloc(sizeof(int64_t) * (size_t)(U * k > 0 ? U * k : 1));
    if (!items || (rank && !actions) || (b->has_timestamps && !ts) || !item_raw || !split || !ctx)
        goto oom;
    for (size_t j = 0; j < n; j++) {
        const builder_row *r = &b->rows[order[j]];
        items[j] = idmap_get(&im, r->item);
        if (actions)
            actions[j] = r->action;
        if (ts)
            ts[j] = r->ts / b->ts_div;
    }
    item_raw[0] = 0;
    memcpy(item_raw + 1, item_sorted, sizeof(int64_t) * (size_t)I);

    /* 3. split */
    int64_t n_train = rank ? (int64_t)((double)U * o->train_frac) : 0;
    for (int64_t u = 0; u < U; u++) {
        int64_t len = offsets[u + 1] - offsets[u];
        int64_t *s = split + 3 * u;
        if (rank) {
            int64_t m = len < o->max_items ? len : o->max_items;
            int64_t c = m - 1 < o->num_candidates ? m - 1 : o->num_candidates;
            if (c < 0)
                c = 0;
            s[0] = u < n_train ? DATASET_TRAIN : DATASET_TEST;
            s[1] = m - c;
            s[2] = m;
        } else {
            s[0] = len >= 3 ? DATASET_TEST : DATASET_TRAIN;
            s[1] = s[2] = 0;
        }
    }

    /* contextual ids by user */
    if (k > 0) {
        if (!idmap_init(&cm, (size_t)b->n_ctx_users))
            goto oom;
        for (int64_t i = 0; i < b->n_ctx_users; i++) {
            if (!idmap_put(&cm, b->ctx_user_raw[i]))
                goto oom;
            cm.vals[idmap_slot(&cm, b->ctx_user_raw[i])] = i;
        }
        for (int64_t u = 0; u < U; u++) {
            int64_t row = idmap_get(&cm, user_raw[u]);
            if (row < 0)
                stats->users_without_features++;
            for (int j = 0; j < k; j++)
                ctx[u * k + j] = row < 0 ? 0 : b->ctx_ids[row * k + j];
        }
        json_object_set_new(b->meta, "users_without_features",
                            json_integer(stats->users_without_features));
    }

    stats->n_users = U;
    stats->n_items = I;
    stats->n_events = (int64_t)n;
    stats->n_train_users = n_train;
    json_object_set_new(b->meta, "unsorted_users", json_integer(stats->unsorted_users));
    if (rank) {
        json_object_set_new(b->meta, "split",
                            json_pack("{s:s,s:f,s:i,s:i}", "rule", "nvidia-user-split", "train_frac",
                                      o->train_frac, "num_candidates", o->num_candidates,
                                      "max_items", o->max_items));
    } else {
        json_object_set_new(b->meta, "split", json_pack("{s:s}", "rule", "leave-one-out"));
    }
    if (!(meta_text = json_dumps(b->meta, JSON_INDENT(1) | JSON_SORT_KEYS)))
        goto oom;
    size_t meta_len = strlen(meta_text) + 1;

    /* 4. lay out and write */
    struct {
        const void *p;
        size_t bytes;
    } sec[FMT_N_SECTIONS] = {
        [FMT_USER_OFFSETS] = {offsets, sizeof(int64_t) * (size_t)(U + 1)},
        [FMT_USER_RAW] = {user_raw, sizeof(int64_t) * (size_t)U},
        [FMT_USER_SPLIT] = {split, sizeof(int64_t) * 3 * (size_t)U},
        [FMT_ITEMS] = {items, sizeof(int64_t) * n},
        [FMT_ACTIONS] = {actions, actions ? sizeof(int64_t) * n : 0},
        [FMT_TIMESTAMPS] = {ts, ts ? sizeof(int64_t) * n : 0},
        [FMT_CONTEXT] = {ctx, sizeof(int64_t) * (size_t)(U * k)},
        [FMT_CONTEXT_ROWS] = {b->context_rows, sizeof(int64_t) * (size_t)k},
        [FMT_ITEM_RAW] = {item_raw, sizeof(int64_t) * (size_t)(I + 1)},
        [FMT_META] = {meta_text, meta_len},
    };
    uint8_t hdr[FMT_HEADER_BYTES] = {0};
    uint64_t off = FMT_HEADER_BYTES;
    for (int s = 0; s < FMT_N_SECTIONS; s++) {
        put64(hdr + FMT_OFF_SECTIONS + 16 * s, sec[s].bytes ? off : 0);
        put64(hdr + FMT_OFF_SECTIONS + 16 * s + 8, sec[s].bytes);
        off += padded(sec[s].bytes);
    }
    memcpy(hdr, DATASET_MAGIC, 8);
    put32(hdr + 8, DATASET_VERSION);
    put32(hdr + 12, FMT_HEADER_BYTES);
    put32(hdr + 16, rank ? 0 : 1);
    put32(hdr + 20, b->has_timestamps ? 1 : 0);
    put64(hdr + 24, (uint64_t)U);
    put64(hdr + 32, (uint64_t)n);
    put64(hdr + 40, (uint64_t)I);
    put64(hdr + 48, rank ? (uint64_t)1 << b->n_tasks : 0);
    put32(hdr + 56, (uint32_t)(rank ? b->n_tasks : 0));
    put32(hdr + 60, (uint32_t)k);
    put32(hdr + 64, (uint32_t)(rank ? o->num_candidates : 0));
    put32(hdr + 68, (uint32_t)(rank ? o->max_items : 0));
    put64(hdr + 72, (uint64_t)n_train);
    put64(hdr + 80, off);

    size_t plen = strlen(path);
    if (!(tmp = malloc(plen + 5)))
        goto oom;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    if (!(fp = fopen(tmp, "wb"))) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    created = true;
    writer w = {fp, FMT_HASH_SEED, 0, true};
    w_bytes(&w, hdr, sizeof hdr);
    for (int s = 0; s < FMT_N_SECTIONS; s++) {
        if (sec[s].bytes % 8 == 0) {
            w_bytes(&w, sec[s].p, sec[s].bytes);
        } else { /* the metadata text: whole words, then the tail padded with zeros */
            size_t whole = sec[s].bytes / 8 * 8;
            uint8_t tail[8] = {0};
            w_bytes(&w, sec[s].p, whole);
            memcpy(tail, (const uint8_t *)sec[s].p + whole, sec[s].bytes - whole);
            w_bytes(&w, tail, 8);
        }
        w_pad(&w);
    }
    HSTU_ASSERT(w.off == off);
    put64(hdr + FMT_OFF_CHECKSUM, w.hash);
    if (w.ok && (fseek(fp, FMT_OFF_CHECKSUM, SEEK_SET) != 0 ||
                 fwrite(hdr + FMT_OFF_CHECKSUM, 1, 8, fp) != 8))
        w.ok = false;
    if (!w.ok || fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        goto done;
    }
    int rc = fclose(fp);
    fp = NULL;
    if (rc != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot rename %s over it: %s", path, tmp, strerror(errno));
        goto done;
    }
    created = false;
    sync_parent_dir(path);
    goto done;
oom:
    st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory while building the dataset (%zu interactions)", n);
done:
    if (fp)
        fclose(fp);
    if (created)
        unlink(tmp);
    free(tmp);
    free(meta_text);
    idmap_free(&um);
    idmap_free(&im);
    idmap_free(&cm);
    free(user_raw);
    free(item_sorted);
    free(offsets);
    free(fill);
    free(order);
    free(tsp);
    free(items);
    free(actions);
    free(ts);
    free(split);
    free(ctx);
    free(item_raw);
    return st;
}
