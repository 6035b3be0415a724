/* checkpoint.c - the training output directory: model export and the
 * resumable state file (checkpoint.h).
 *
 * The state file is a standard safetensors file written here (the shared
 * writer has no __metadata__, which carries the scalars); it is read back
 * with the shared validating reader plus a look at the header's metadata.
 */
#include "train/checkpoint.h"

#include "core/safetensors.h"
#include "core/status.h"
#include "model/model.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static hstu_status write_all(int fd, const void *p, size_t n, const char *path, hstu_error *err)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return hstu_fail(err, HSTU_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        c += w;
        n -= (size_t)w;
    }
    return HSTU_OK;
}

/* fsync the directory so that a rename inside it is durable (best effort). */
static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

hstu_status tr_write_safetensors(const char *path, const char *const *names, const float *const *data,
                                 const int64_t *numel, int n, const char *const *meta, int n_meta,
                                 hstu_error *err)
{
    json_t *h = json_object(), *mo = json_object();
    for (int i = 0; i < n_meta; i++)
        json_object_set_new(mo, meta[2 * i], json_string(meta[2 * i + 1]));
    json_object_set_new(h, "__metadata__", mo);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *t = json_object();
        size_t bytes = (size_t)numel[i] * sizeof(float);
        json_object_set_new(t, "dtype", json_string("F32"));
        json_object_set_new(t, "shape", json_pack("[I]", (json_int_t)numel[i]));
        json_object_set_new(t, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + bytes)));
        json_object_set_new(h, names[i], t);
        off += bytes;
    }
    char *text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!text)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for a safetensors header");
    size_t hl = strlen(text), padded = (hl + 7) & ~(size_t)7;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hstu_status s = HSTU_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        free(text);
        return hstu_fail(err, HSTU_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    if ((s = write_all(fd, len8, 8, tmp, err)) == HSTU_OK && (s = write_all(fd, text, hl, tmp, err)) == HSTU_OK &&
        (s = write_all(fd, spaces, padded - hl, tmp, err)) == HSTU_OK)
        for (int i = 0; i < n && s == HSTU_OK; i++) /* x86: fp32 is little-endian already */
            s = write_all(fd, data[i], (size_t)numel[i] * sizeof(float), tmp, err);
    free(text);
    if (s == HSTU_OK && fsync(fd) != 0)
        s = hstu_fail(err, HSTU_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && s == HSTU_OK)
        s = hstu_fail(err, HSTU_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (s == HSTU_OK && rename(tmp, path) != 0)
        s = hstu_fail(err, HSTU_ERR_IO, "%s: cannot rename %s over it: %s", path, tmp, strerror(errno));
    if (s != HSTU_OK)
        unlink(tmp);
    return s;
}

static hstu_status write_state(const char *dir, const hstu_model *m, const float *am, const float *av,
                               const tr_state *st, hstu_error *err)
{
    int64_t P = (int64_t)hstu_model_param_count(m);
    const char *names[3] = {"param", "adam.m", "adam.v"};
    const float *data[3] = {m->arena, am, av};
    int64_t numel[3] = {P, P, P};
    char v[9][32];
    snprintf(v[0], 32, "%lld", (long long)st->step);
    snprintf(v[1], 32, "%lld", (long long)st->epoch);
    snprintf(v[2], 32, "%lld", (long long)st->batch);
    snprintf(v[3], 32, "%llu", (unsigned long long)st->seed);
    snprintf(v[4], 32, "%d", st->batch_users);
    snprintf(v[5], 32, "%d", st->holdout);
    snprintf(v[6], 32, "%d", st->threads);
    snprintf(v[7], 32, "%lld", (long long)st->best_epoch);
    snprintf(v[8], 32, "%.17g", st->best_epoch > 0 ? st->best_metric : 0.0);
    const char *meta[] = {"format", TR_STATE_FORMAT, "step", v[0], "epoch", v[1], "batch", v[2], "seed", v[3],
                          "batch_users", v[4], "holdout", v[5], "threads", v[6], "best_epoch", v[7],
                          "best_metric", v[8]};
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, TR_STATE_FILE);
    return tr_write_safetensors(path, names, data, numel, 3, meta, 10, err);
}

hstu_status tr_checkpoint_save(const char *dir, const hstu_model *m, const float *adam_m, const float *adam_v,
                               const tr_state *st, hstu_error *err)
{
    hstu_status s = write_state(dir, m, adam_m, adam_v, st, err);
    if (s != HSTU_OK)
        return s;
    /* The model: saved into dir/.export, then each file renamed into dir. */
    char tmpdir[4096], from[4200], to[4200];
    snprintf(tmpdir, sizeof tmpdir, "%s/.export", dir);
    if ((s = hstu_model_save(m, tmpdir, HSTU_DTYPE_F32, err)) != HSTU_OK)
        return s;
    static const char *const files[2] = {"model.safetensors", "config.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(from, sizeof from, "%s/%s", tmpdir, files[i]);
        snprintf(to, sizeof to, "%s/%s", dir, files[i]);
        if (rename(from, to) != 0)
            return hstu_fail(err, HSTU_ERR_IO, "%s: cannot rename %s over it: %s", to, from, strerror(errno));
    }
    rmdir(tmpdir);
    sync_dir(dir);
    return HSTU_OK;
}

static hstu_status meta_int(json_t *meta, const char *key, const char *path, int64_t *out, hstu_error *err)
{
    const char *s = json_string_value(json_object_get(meta, key));
    char *end;
    if (!s || !*s)
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s: __metadata__ lacks \"%s\"", path, key);
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno)
        return hstu_fail(err, HSTU_ERR_FORMAT, "%s: __metadata__ \"%s\" is not an integer: \"%s\"", path, key, s);
    *out = v;
    return HSTU_OK;
}

hstu_status tr_checkpoint_load(const char *dir, hstu_model **mout, float **am, float **av, tr_state *st,
                               hstu_error *err)
{
    char path[4096];
    hstu_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    hstu_status s = hstu_config_load(path, &cfg, err);
    if (s != HSTU_OK)
        return s;
    hstu_model *m = NULL;
    float *mm = NULL, *vv = NULL;
    st_file f = {0};
    json_t *hdr = NULL;
    if ((s = hstu_model_create_random(&cfg, 0, &m, err)) != HSTU_OK)
        return s;
    snprintf(path, sizeof path, "%s/%s", dir, TR_STATE_FILE);
    if ((s = st_open(path, &f, err)) != HSTU_OK)
        goto fail;
    size_t P = hstu_model_param_count(m);
    mm = malloc(sizeof *mm * (P ? P : 1));
    vv = malloc(sizeof *vv * (P ? P : 1));
    if (!mm || !vv) {
        s = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for the optimizer state");
        goto fail;
    }
    const char *names[3] = {"param", "adam.m", "adam.v"};
    float *dst[3] = {m->arena, mm, vv};
    for (int i = 0; i < 3; i++) {
        const st_tensor *t = st_find(&f, names[i]);
        if (!t || st_numel(t) != (int64_t)P) {
            s = hstu_fail(err, HSTU_ERR_FORMAT,
                          "%s: tensor %s is missing or not %zu values (the state of another config?)", path,
                          names[i], P);
            goto fail;
        }
        if ((s = st_read_f32(&f, t, dst[i], P, err)) != HSTU_OK)
            goto fail;
    }
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)f.buf[i] << (8 * i);
    json_error_t je;
    hdr = json_loadb((const char *)f.buf + 8, (size_t)hl, 0, &je);
    json_t *meta = hdr ? json_object_get(hdr, "__metadata__") : NULL;
    const char *fmt = meta ? json_string_value(json_object_get(meta, "format")) : NULL;
    if (!fmt || strcmp(fmt, TR_STATE_FORMAT) != 0) {
        s = hstu_fail(err, HSTU_ERR_FORMAT, "%s: not a training state (__metadata__ format is not %s)", path,
                      TR_STATE_FORMAT);
        goto fail;
    }
    int64_t v[7];
    static const char *const keys[7] = {"step", "epoch", "batch", "seed", "batch_users", "holdout", "threads"};
    for (int i = 0; i < 7; i++)
        if ((s = meta_int(meta, keys[i], path, &v[i], err)) != HSTU_OK)
            goto fail;
    *st = (tr_state){.step = v[0], .epoch = v[1], .batch = v[2], .seed = (uint64_t)v[3],
                     .batch_users = (int)v[4], .holdout = (int)v[5], .threads = (int)v[6]};
    /* best_*: absent from states written before --keep-best existed (= no best yet) */
    if (json_object_get(meta, "best_epoch")) {
        const char *bm = json_string_value(json_object_get(meta, "best_metric"));
        char *end = NULL;
        if ((s = meta_int(meta, "best_epoch", path, &st->best_epoch, err)) != HSTU_OK)
            goto fail;
        st->best_metric = bm ? strtod(bm, &end) : 0;
        if (!bm || !*bm || *end || st->best_epoch < 0) {
            s = hstu_fail(err, HSTU_ERR_FORMAT, "%s: __metadata__ \"best_epoch\"/\"best_metric\" are not an "
                          "epoch and a number", path);
            goto fail;
        }
    }
    json_decref(hdr);
    st_close(&f);
    model_finish(m);
    *mout = m;
    *am = mm;
    *av = vv;
    return HSTU_OK;
fail:
    json_decref(hdr);
    st_close(&f);
    hstu_model_destroy(m);
    free(mm);
    free(vv);
    return s;
}

/* Removes a directory that holds plain files only (best/, its temporary). */
static void remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char p[4400];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static hstu_status write_best_json(const char *path, const tr_best *b, hstu_error *err)
{
    json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:f, s:s}", "epoch", (json_int_t)b->epoch, "step",
                          (json_int_t)b->step, "split", b->split, "metric", b->metric, "value", b->value, "eval",
                          b->eval_line ? b->eval_line : "");
    /* jansson prints reals with %.17g: the value reads back exactly */
    char *text = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (!text)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for %s", path);
    hstu_status s = HSTU_OK;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        s = hstu_fail(err, HSTU_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (s == HSTU_OK && (s = write_all(fd, text, strlen(text), path, err)) == HSTU_OK)
        s = write_all(fd, "\n", 1, path, err);
    if (fd >= 0 && s == HSTU_OK && fsync(fd) != 0)
        s = hstu_fail(err, HSTU_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && s == HSTU_OK)
        s = hstu_fail(err, HSTU_ERR_IO, "%s: close failed: %s", path, strerror(errno));
    free(text);
    return s;
}

hstu_status tr_best_save(const char *dir, const hstu_model *m, const tr_best *b, hstu_error *err)
{
    char tmp[4096], best[4096], old[4096], path[4200];
    snprintf(tmp, sizeof tmp, "%s/.best.tmp", dir);
    snprintf(best, sizeof best, "%s/best", dir);
    snprintf(old, sizeof old, "%s/.best.old", dir);
    remove_flat_dir(tmp); /* left by a run that died while writing it */
    hstu_status s = hstu_model_save(m, tmp, HSTU_DTYPE_F32, err);
    if (s != HSTU_OK)
        goto fail;
    snprintf(path, sizeof path, "%s/best.json", tmp);
    if ((s = write_best_json(path, b, err)) != HSTU_OK)
        goto fail;
    sync_dir(tmp);
    if (access(best, F_OK) != 0) {
        if (rename(tmp, best) != 0) {
            s = hstu_fail(err, HSTU_ERR_IO, "%s: cannot rename %s to it: %s", best, tmp, strerror(errno));
            goto fail;
        }
    } else if (renameat2(AT_FDCWD, tmp, AT_FDCWD, best, RENAME_EXCHANGE) == 0) {
        remove_flat_dir(tmp); /* now the previous best */
    } else if (errno == EINVAL || errno == ENOSYS) {
        /* a file system without RENAME_EXCHANGE: best/ is absent for a moment, never partial */
        remove_flat_dir(old);
        if (rename(best, old) != 0 || rename(tmp, best) != 0) {
            s = hstu_fail(err, HSTU_ERR_IO, "%s: cannot replace it with %s: %s", best, tmp, strerror(errno));
            goto fail;
        }
        remove_flat_dir(old);
    } else {
        s = hstu_fail(err, HSTU_ERR_IO, "%s: cannot exchange it with %s: %s", best, tmp, strerror(errno));
        goto fail;
    }
    sync_dir(dir);
    return HSTU_OK;
fail:
    remove_flat_dir(tmp);
    return s;
}

hstu_status tr_best_read(const char *dir, tr_best *b, hstu_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/best/best.json", dir);
    *b = (tr_best){0};
    if (access(path, F_OK) != 0)
        return HSTU_OK;
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    json_t *e = o ? json_object_get(o, "epoch") : NULL, *v = o ? json_object_get(o, "value") : NULL;
    json_t *st = o ? json_object_get(o, "step") : NULL;
    hstu_status s = HSTU_OK;
    if (!json_is_integer(e) || !json_is_number(v) || json_integer_value(e) < 1)
        s = hstu_fail(err, HSTU_ERR_FORMAT,
                      "%s: not a best.json of hstu train (needs an integer \"epoch\" >= 1 and a number \"value\"); "
                      "remove %s/best to start the selection afresh",
                      path, dir);
    else
        *b = (tr_best){.epoch = json_integer_value(e), .step = json_is_integer(st) ? json_integer_value(st) : 0,
                       .value = json_number_value(v)};
    json_decref(o);
    return s;
}
