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
    char v[7][32];
    snprintf(v[0], 32, "%lld", (long long)st->step);
    snprintf(v[1], 32, "%lld", (long long)st->epoch);
    snprintf(v[2], 32, "%lld", (long long)st->batch);
    snprintf(v[3], 32, "%llu", (unsigned long long)st->seed);
    snprintf(v[4], 32, "%d", st->batch_users);
    snprintf(v[5], 32, "%d", st->holdout);
    snprintf(v[6], 32, "%d", st->threads);
    const char *meta[] = {"format", TR_STATE_FORMAT, "step", v[0], "epoch", v[1], "batch", v[2], "seed", v[3],
                          "batch_users", v[4], "holdout", v[5], "threads", v[6]};
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, TR_STATE_FILE);
    return tr_write_safetensors(path, names, data, numel, 3, meta, 8, err);
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
        if (i == 1) { /* hstu_model_save does not fsync config.json: do it before the rename */
            int fd = open(from, O_RDONLY);
            if (fd >= 0) {
                fsync(fd);
                close(fd);
            }
        }
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
