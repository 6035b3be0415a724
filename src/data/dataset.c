/* dataset.c - mapping and validating a dataset file; per-user views; the
 * split and config helpers. See dataset.h (contract) and format.h (bytes).
 *
 * Validation order: size and magic, version, header fields, section table
 * (each section inside the file, sized for the counts, none overlapping),
 * checksum, then the contents (offsets monotonic, ids in their tables, times
 * non-decreasing per user, split ranges), then the metadata JSON. The first
 * failure is the error; its message names the path and the field.
 */
#include "data/dataset.h"

#include "core/status.h"
#include "data/format.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct dataset {
    dataset_info info;
    const uint8_t *buf;
    size_t size;
    void *map;
    const int64_t *offsets, *user_raw, *split, *items, *actions, *ts, *context, *item_raw;
    const char *meta;
};

const char *dataset_split_name(dataset_split s)
{
    switch (s) {
    case DATASET_TRAIN: return "train";
    case DATASET_VALID: return "valid";
    case DATASET_TEST: return "test";
    }
    return "?";
}

hstu_status dataset_split_parse(const char *name, dataset_split *out, hstu_error *err)
{
    if (!strcmp(name, "train"))
        *out = DATASET_TRAIN;
    else if (!strcmp(name, "valid"))
        *out = DATASET_VALID;
    else if (!strcmp(name, "test"))
        *out = DATASET_TEST;
    else
        return hstu_fail(err, HSTU_ERR_ARG, "unknown split \"%s\" (choose train, valid or test)", name);
    return HSTU_OK;
}

static hstu_status bad(hstu_error *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static hstu_status bad(hstu_error *err, const char *path, const char *fmt, ...)
{
    char msg[HSTU_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return hstu_fail(err, HSTU_ERR_FORMAT, "%s: not a valid dataset: %s", path, msg);
}

static const char *section_name(int s)
{
    static const char *names[FMT_N_SECTIONS] = {"user offsets", "user ids",  "user splits", "items",
                                                "actions",      "timestamps", "context",    "context rows",
                                                "item ids",     "metadata"};
    return names[s];
}

static hstu_status check_sections(dataset *ds, const char *path, const uint64_t want[FMT_N_SECTIONS],
                                  hstu_error *err)
{
    const uint8_t *h = ds->buf;
    uint64_t lo[FMT_N_SECTIONS], hi[FMT_N_SECTIONS];
    for (int s = 0; s < FMT_N_SECTIONS; s++) {
        uint64_t off = fmt_rd64(h + FMT_OFF_SECTIONS + 16 * s);
        uint64_t bytes = fmt_rd64(h + FMT_OFF_SECTIONS + 16 * s + 8);
        if (s == FMT_META ? (bytes < 3 || bytes > ((uint64_t)1 << 30)) : bytes != want[s])
            return bad(err, path, "section %s holds %llu bytes, the counts in the header need %llu",
                       section_name(s), (unsigned long long)bytes,
                       (unsigned long long)(s == FMT_META ? 3 : want[s]));
        if (bytes == 0) {
            lo[s] = hi[s] = 0;
            continue;
        }
        if (off % FMT_ALIGN || off < FMT_HEADER_BYTES || off > ds->size || bytes > ds->size - off)
            return bad(err, path, "section %s at offset %llu (+%llu bytes) lies outside the %zu-byte file",
                       section_name(s), (unsigned long long)off, (unsigned long long)bytes, ds->size);
        lo[s] = off;
        hi[s] = off + bytes;
        for (int t = 0; t < s; t++)
            if (hi[t] > lo[t] && lo[s] < hi[t] && lo[t] < hi[s])
                return bad(err, path, "sections %s and %s overlap", section_name(t), section_name(s));
    }
    for (int s = FMT_N_SECTIONS; s < FMT_MAX_SECTIONS; s++)
        if (fmt_rd64(h + FMT_OFF_SECTIONS + 16 * s) || fmt_rd64(h + FMT_OFF_SECTIONS + 16 * s + 8))
            return bad(err, path, "section %d is set but this version has %d sections", s, FMT_N_SECTIONS);
    return HSTU_OK;
}

static const int64_t *sec_ptr(const dataset *ds, int s)
{
    uint64_t off = fmt_rd64(ds->buf + FMT_OFF_SECTIONS + 16 * s);
    return off ? (const int64_t *)(ds->buf + off) : NULL;
}

static hstu_status check_contents(dataset *ds, const char *path, hstu_error *err)
{
    const dataset_info *in = &ds->info;
    const int64_t U = in->n_users, E = in->n_events;
    if (ds->offsets[0] != 0 || ds->offsets[U] != E)
        return bad(err, path, "user offsets run from %lld to %lld, expected 0 to %lld (interactions)",
                   (long long)ds->offsets[0], (long long)ds->offsets[U], (long long)E);
    int longest = 0;
    for (int64_t u = 0; u < U; u++) {
        int64_t b = ds->offsets[u], e = ds->offsets[u + 1];
        if (e < b || e - b > 0x7fffffff)
            return bad(err, path, "user %lld: offsets %lld..%lld are not a valid range", (long long)u,
                       (long long)b, (long long)e);
        if (e - b > longest)
            longest = (int)(e - b);
        if (u > 0 && ds->user_raw[u] <= ds->user_raw[u - 1])
            return bad(err, path, "user ids are not strictly ascending at user %lld", (long long)u);
        const int64_t *sp = ds->split + 3 * u;
        int64_t len = e - b;
        if (in->family == HSTU_FAMILY_RANKING) {
            if ((sp[0] != DATASET_TRAIN && sp[0] != DATASET_TEST) || sp[1] < 0 || sp[1] > sp[2] ||
                sp[2] > len)
                return bad(err, path, "user %lld: split %lld with candidates %lld..%lld of %lld items",
                           (long long)u, (long long)sp[0], (long long)sp[1], (long long)sp[2],
                           (long long)len);
        } else if ((sp[0] != DATASET_TRAIN && sp[0] != DATASET_TEST) || sp[1] || sp[2] ||
                   (sp[0] == DATASET_TEST && len < 3)) {
            return bad(err, path, "user %lld: retrieval split %lld (%lld items) is invalid", (long long)u,
                       (long long)sp[0], (long long)len);
        }
        if (ds->ts)
            for (int64_t j = b + 1; j < e; j++)
                if (ds->ts[j] < ds->ts[j - 1])
                    return bad(err, path, "user %lld: timestamps go back in time at interaction %lld",
                               (long long)u, (long long)(j - b));
        for (int j = 0; j < in->n_context; j++) {
            int64_t c = ds->context[u * in->n_context + j];
            if (c < 0 || c >= in->context_rows[j])
                return bad(err, path, "user %lld: context[%d] = %lld is outside its table (0..%lld)",
                           (long long)u, j, (long long)c, (long long)in->context_rows[j] - 1);
        }
    }
    ds->info.max_user_items = longest;
    for (int64_t i = 0; i < E; i++) {
        if (ds->items[i] < 1 || ds->items[i] > in->n_items)
            return bad(err, path, "interaction %lld: item %lld is outside 1..%lld", (long long)i,
                       (long long)ds->items[i], (long long)in->n_items);
        if (ds->actions && (ds->actions[i] < 0 || ds->actions[i] >= in->action_rows))
            return bad(err, path, "interaction %lld: action %lld is outside 0..%lld", (long long)i,
                       (long long)ds->actions[i], (long long)in->action_rows - 1);
    }
    if (ds->item_raw[0] != 0)
        return bad(err, path, "item id 0 (padding) maps to source id %lld, expected 0",
                   (long long)ds->item_raw[0]);
    return HSTU_OK;
}

static void copy_name(char *dst, json_t *v)
{
    const char *s = json_is_string(v) ? json_string_value(v) : "";
    snprintf(dst, HSTU_NAME_MAX, "%s", s);
}

static hstu_status read_meta(dataset *ds, const char *path, hstu_error *err)
{
    uint64_t bytes = fmt_rd64(ds->buf + FMT_OFF_SECTIONS + 16 * FMT_META + 8);
    const char *text = (const char *)sec_ptr(ds, FMT_META);
    if (text[bytes - 1] != 0 || strlen(text) != bytes - 1)
        return bad(err, path, "the metadata is not one NUL-terminated text");
    json_error_t je;
    json_t *m = json_loads(text, 0, &je);
    if (!m || !json_is_object(m)) {
        json_decref(m);
        return bad(err, path, "the metadata is not a JSON object (line %d: %s)", je.line, je.text);
    }
    hstu_status st = HSTU_OK;
    json_t *cn = json_object_get(m, "context_names"), *tn = json_object_get(m, "task_names");
    if (ds->info.n_context > 0 &&
        (!json_is_array(cn) || (int)json_array_size(cn) != ds->info.n_context)) {
        st = bad(err, path, "metadata context_names must list the %d contextual tables", ds->info.n_context);
        goto done;
    }
    for (int j = 0; j < ds->info.n_context; j++)
        copy_name(ds->info.context_names[j], json_array_get(cn, (size_t)j));
    if (json_is_array(tn))
        for (int t = 0; t < ds->info.n_tasks && t < (int)json_array_size(tn); t++)
            copy_name(ds->info.task_names[t], json_array_get(tn, (size_t)t));
    for (int t = 0; t < ds->info.n_tasks; t++)
        if (!ds->info.task_names[t][0])
            snprintf(ds->info.task_names[t], HSTU_NAME_MAX, "task%d", t);
    json_t *src = json_object_get(m, "source");
    snprintf(ds->info.source, sizeof ds->info.source, "%s",
             json_is_string(src) ? json_string_value(src) : "unknown");
done:
    json_decref(m);
    return st;
}

hstu_status dataset_open(const char *path, dataset **out, hstu_error *err)
{
    *out = NULL;
    hstu_status st;
    dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        st = hstu_fail(err, HSTU_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    ds->size = (size_t)sb.st_size;
    if (ds->size < FMT_HEADER_BYTES) {
        close(fd);
        st = bad(err, path, "%zu bytes, shorter than the %d-byte header (truncated, or not a dataset)",
                 ds->size, FMT_HEADER_BYTES);
        goto fail;
    }
    void *p = mmap(NULL, ds->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
        goto fail;
    }
    ds->map = p;
    ds->buf = p;
    const uint8_t *h = ds->buf;
    if (memcmp(h, DATASET_MAGIC, 8) != 0) {
        st = bad(err, path, "no \"HSTUDATA\" magic at the start (write datasets with hstu prep)");
        goto fail;
    }
    uint32_t version = fmt_rd32(h + 8);
    if (version != DATASET_VERSION) {
        st = bad(err, path, "format version %u; this build reads version %d (prep it again)", version,
                 DATASET_VERSION);
        goto fail;
    }
    uint64_t file_bytes = fmt_rd64(h + 80);
    if (fmt_rd32(h + 12) != FMT_HEADER_BYTES) {
        st = bad(err, path, "header size %u, expected %d", fmt_rd32(h + 12), FMT_HEADER_BYTES);
        goto fail;
    }
    if (file_bytes != ds->size) {
        st = bad(err, path, "the header says %llu bytes but the file has %zu (%s)",
                 (unsigned long long)file_bytes, ds->size,
                 file_bytes > ds->size ? "truncated" : "trailing bytes");
        goto fail;
    }
    if (ds->size % 8) {
        st = bad(err, path, "size %zu is not a multiple of 8", ds->size);
        goto fail;
    }
    dataset_info *in = &ds->info;
    uint32_t family = fmt_rd32(h + 16), flags = fmt_rd32(h + 20);
    in->version = (int)version;
    in->n_users = (int64_t)fmt_rd64(h + 24);
    in->n_events = (int64_t)fmt_rd64(h + 32);
    in->n_items = (int64_t)fmt_rd64(h + 40);
    in->action_rows = (int64_t)fmt_rd64(h + 48);
    in->n_tasks = (int)fmt_rd32(h + 56);
    in->n_context = (int)fmt_rd32(h + 60);
    in->num_candidates = (int)fmt_rd32(h + 64);
    in->max_items = (int)fmt_rd32(h + 68);
    in->n_train_users = (int64_t)fmt_rd64(h + 72);
    in->has_timestamps = flags & 1;
    const int64_t lim = (int64_t)(ds->size / 8);
    if (family > 1 || flags > 1) {
        st = bad(err, path, "family %u / flags %u unknown", family, flags);
        goto fail;
    }
    in->family = family == 0 ? HSTU_FAMILY_RANKING : HSTU_FAMILY_RETRIEVAL;
    bool rank = in->family == HSTU_FAMILY_RANKING;
    if (in->n_users < 1 || in->n_users > lim || in->n_events < 1 || in->n_events > lim ||
        in->n_items < 1 || in->n_items > lim || in->n_train_users < 0 || in->n_train_users > in->n_users) {
        st = bad(err, path, "counts out of range (%lld users, %lld interactions, %lld items, %lld train users)",
                 (long long)in->n_users, (long long)in->n_events, (long long)in->n_items,
                 (long long)in->n_train_users);
        goto fail;
    }
    if (rank ? (in->n_tasks < 1 || in->n_tasks > 16 || in->action_rows != (int64_t)1 << in->n_tasks ||
                in->n_context < 0 || in->n_context > HSTU_MAX_CONTEXT || in->num_candidates < 1 ||
                in->max_items <= in->num_candidates)
             : (in->n_tasks || in->action_rows || in->n_context || in->num_candidates || in->max_items)) {
        st = bad(err, path, "%s header fields inconsistent (tasks %d, action rows %lld, context %d, "
                 "candidates %d, max items %d)", rank ? "ranking" : "retrieval", in->n_tasks,
                 (long long)in->action_rows, in->n_context, in->num_candidates, in->max_items);
        goto fail;
    }
    uint64_t U = (uint64_t)in->n_users, E = (uint64_t)in->n_events, I = (uint64_t)in->n_items,
             K = (uint64_t)in->n_context;
    uint64_t want[FMT_N_SECTIONS] = {
        [FMT_USER_OFFSETS] = 8 * (U + 1), [FMT_USER_RAW] = 8 * U, [FMT_USER_SPLIT] = 24 * U,
        [FMT_ITEMS] = 8 * E, [FMT_ACTIONS] = rank ? 8 * E : 0,
        [FMT_TIMESTAMPS] = in->has_timestamps ? 8 * E : 0, [FMT_CONTEXT] = 8 * U * K,
        [FMT_CONTEXT_ROWS] = 8 * K, [FMT_ITEM_RAW] = 8 * (I + 1), [FMT_META] = 0,
    };
    if ((st = check_sections(ds, path, want, err)) != HSTU_OK)
        goto fail;
    uint8_t zero[8] = {0};
    uint64_t hash = fmt_hash_words(FMT_HASH_SEED, h, FMT_OFF_CHECKSUM);
    hash = fmt_hash_words(hash, zero, 8);
    hash = fmt_hash_words(hash, h + FMT_OFF_CHECKSUM + 8, ds->size - FMT_OFF_CHECKSUM - 8);
    if (hash != fmt_rd64(h + FMT_OFF_CHECKSUM)) {
        st = bad(err, path, "checksum mismatch (the file is corrupt: prep it again)");
        goto fail;
    }
    ds->offsets = sec_ptr(ds, FMT_USER_OFFSETS);
    ds->user_raw = sec_ptr(ds, FMT_USER_RAW);
    ds->split = sec_ptr(ds, FMT_USER_SPLIT);
    ds->items = sec_ptr(ds, FMT_ITEMS);
    ds->actions = sec_ptr(ds, FMT_ACTIONS);
    ds->ts = sec_ptr(ds, FMT_TIMESTAMPS);
    ds->context = sec_ptr(ds, FMT_CONTEXT);
    ds->item_raw = sec_ptr(ds, FMT_ITEM_RAW);
    ds->meta = (const char *)sec_ptr(ds, FMT_META);
    const int64_t *rows = sec_ptr(ds, FMT_CONTEXT_ROWS);
    for (int j = 0; j < in->n_context; j++) {
        if (rows[j] < 1) {
            st = bad(err, path, "context table %d has %lld rows", j, (long long)rows[j]);
            goto fail;
        }
        in->context_rows[j] = rows[j];
    }
    if ((st = check_contents(ds, path, err)) != HSTU_OK)
        goto fail;
    if ((st = read_meta(ds, path, err)) != HSTU_OK)
        goto fail;
    *out = ds;
    return HSTU_OK;
fail:
    dataset_close(ds);
    return st;
}

void dataset_close(dataset *ds)
{
    if (!ds)
        return;
    if (ds->map)
        munmap(ds->map, ds->size);
    free(ds);
}

const dataset_info *dataset_get_info(const dataset *ds) { return &ds->info; }

void dataset_get_user(const dataset *ds, int64_t u, dataset_user *out)
{
    HSTU_ASSERT(u >= 0 && u < ds->info.n_users);
    int64_t b = ds->offsets[u];
    out->index = u;
    out->raw_id = ds->user_raw[u];
    out->n_items = (int)(ds->offsets[u + 1] - b);
    out->items = ds->items + b;
    out->actions = ds->actions ? ds->actions + b : NULL;
    out->timestamps = ds->ts ? ds->ts + b : NULL;
    out->n_context = ds->info.n_context;
    out->context = ds->info.n_context ? ds->context + u * ds->info.n_context : NULL;
    out->split = (dataset_split)ds->split[3 * u];
    out->cand_begin = (int)ds->split[3 * u + 1];
    out->cand_end = (int)ds->split[3 * u + 2];
}

int64_t dataset_item_raw_id(const dataset *ds, int64_t item)
{
    HSTU_ASSERT(item >= 0 && item <= ds->info.n_items);
    return ds->item_raw[item];
}

const char *dataset_meta_json(const dataset *ds) { return ds->meta; }

bool dataset_retrieval_example(const dataset_user *u, dataset_split split, int *hist_len,
                               int64_t *target, int64_t *query_time)
{
    if (u->split != DATASET_TEST || u->n_items < 3 || u->actions) /* actions: a ranking user */
        return false;
    int t;
    if (split == DATASET_TEST)
        t = u->n_items - 1;
    else if (split == DATASET_VALID)
        t = u->n_items - 2;
    else
        return false;
    *hist_len = t;
    *target = u->items[t];
    *query_time = u->timestamps ? u->timestamps[t] : 0;
    return true;
}

hstu_status dataset_check_config(const dataset *ds, const hstu_config *cfg, hstu_error *err)
{
    const dataset_info *in = &ds->info;
    const char *fam = in->family == HSTU_FAMILY_RANKING ? "ranking" : "retrieval";
    if (cfg->family != in->family)
        return hstu_fail(err, HSTU_ERR_ARG, "the dataset is %s data but the model is a %s model", fam,
                         cfg->family == HSTU_FAMILY_RANKING ? "ranking" : "retrieval");
    if (cfg->item_rows < in->n_items + 1)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "the dataset has item ids 1..%lld but the model's item table has %lld rows: "
                         "set tables.item to at least %lld",
                         (long long)in->n_items, (long long)cfg->item_rows, (long long)in->n_items + 1);
    if (in->family == HSTU_FAMILY_RETRIEVAL)
        return HSTU_OK;
    if (cfg->action_rows < in->action_rows)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "the dataset's action ids need %lld rows but tables.action is %lld",
                         (long long)in->action_rows, (long long)cfg->action_rows);
    if (cfg->n_tasks != in->n_tasks)
        return hstu_fail(err, HSTU_ERR_ARG, "the dataset has %d tasks but head.n_tasks is %d",
                         in->n_tasks, cfg->n_tasks);
    if (cfg->n_context != in->n_context)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "the dataset has %d contextual tables but tables.context lists %d",
                         in->n_context, cfg->n_context);
    for (int j = 0; j < in->n_context; j++)
        if (cfg->context_rows[j] < in->context_rows[j])
            return hstu_fail(err, HSTU_ERR_ARG,
                             "contextual table %d (%s) needs %lld rows but tables.context[%d] is %lld",
                             j, in->context_names[j], (long long)in->context_rows[j], j,
                             (long long)cfg->context_rows[j]);
    if (cfg->max_candidates < in->num_candidates)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "the dataset has up to %d candidates per user but max_candidates is %d",
                         in->num_candidates, cfg->max_candidates);
    return HSTU_OK;
}

void dataset_fill_config(const dataset *ds, hstu_config *cfg)
{
    const dataset_info *in = &ds->info;
    cfg->family = in->family;
    cfg->item_rows = in->n_items + 1;
    if (in->family == HSTU_FAMILY_RANKING) {
        cfg->action_rows = in->action_rows;
        cfg->n_context = in->n_context;
        for (int j = 0; j < in->n_context; j++)
            cfg->context_rows[j] = in->context_rows[j];
        cfg->n_tasks = in->n_tasks;
        for (int t = 0; t < in->n_tasks; t++)
            memcpy(cfg->task_names[t], in->task_names[t], HSTU_NAME_MAX);
        if (cfg->max_candidates < in->num_candidates)
            cfg->max_candidates = in->num_candidates;
    }
}
