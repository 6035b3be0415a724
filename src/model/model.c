/* model.c - model weights: layout, random init, load and save.
 *
 * Loading validates the checkpoint against the config before any use:
 * every expected tensor present with the expected shape, no extra tensor,
 * dtypes F32/BF16/F16 converted to fp32 (the safetensors reader has already
 * checked offsets and sizes). Errors name the file and the tensor.
 */
#include "model/model.h"

#include "core/rng.h"
#include "core/safetensors.h"
#include "core/paths.h"
#include "core/status.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void add(model_tensor *list, int *n, float **slot, tensor_init init, int64_t d0, int64_t d1,
                const char *fmt, int idx)
{
    HSTU_ASSERT(*n < MODEL_MAX_TENSORS);
    model_tensor *t = &list[(*n)++];
    snprintf(t->name, sizeof t->name, fmt, idx);
    t->slot = slot;
    t->init = init;
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1 > 0 ? d1 : 0;
}

int model_tensors(hstu_model *m, model_tensor *list)
{
    const hstu_config *c = &m->cfg;
    int n = 0;
    int64_t d = c->d_model, W = hstu_config_uvqk_width(c), hv = (int64_t)c->n_heads * c->d_v;
    add(list, &n, &m->item, INIT_EMBED, c->item_rows, d, "emb.item", 0);
    if (c->family == HSTU_FAMILY_RANKING) {
        add(list, &n, &m->action, INIT_EMBED, c->action_rows, d, "emb.action", 0);
        for (int j = 0; j < c->n_context; j++)
            add(list, &n, &m->context[j], INIT_EMBED, c->context_rows[j], d, "emb.context.%d", j);
    }
    add(list, &n, &m->pos, INIT_POS, c->max_positions, d, "pos", 0);
    for (int l = 0; l < c->n_layers; l++) {
        layer_weights *w = &m->layers[l];
        if (c->ln_affine) {
            add(list, &n, &w->ln_in_w, INIT_LN_W, d, 0, "layers.%d.ln_in.weight", l);
            add(list, &n, &w->ln_in_b, INIT_BIAS, d, 0, "layers.%d.ln_in.bias", l);
        }
        add(list, &n, &w->uvqk_w, INIT_LINEAR, d, W, "layers.%d.uvqk.weight", l);
        if (c->uvqk_bias)
            add(list, &n, &w->uvqk_b, INIT_BIAS, W, 0, "layers.%d.uvqk.bias", l);
        if (c->ln_affine) {
            add(list, &n, &w->ln_out_w, INIT_LN_W, hv, 0, "layers.%d.ln_out.weight", l);
            add(list, &n, &w->ln_out_b, INIT_BIAS, hv, 0, "layers.%d.ln_out.bias", l);
        }
        add(list, &n, &w->proj_w, INIT_LINEAR, hv, d, "layers.%d.proj.weight", l);
        if (c->proj_bias)
            add(list, &n, &w->proj_b, INIT_BIAS, d, 0, "layers.%d.proj.bias", l);
        if (c->rab == HSTU_RAB_POS_TIME) {
            add(list, &n, &w->rab_pos, INIT_RAB, 2 * (int64_t)c->attn_scale_len - 1, 0,
                "layers.%d.rab.pos", l);
            add(list, &n, &w->rab_time, INIT_RAB, c->rab_buckets + 1, 0, "layers.%d.rab.time", l);
        }
    }
    if (c->family == HSTU_FAMILY_RANKING) {
        int64_t in = d;
        m->n_head = c->n_hidden + 1;
        for (int j = 0; j < m->n_head; j++) {
            int64_t out = j < c->n_hidden ? c->hidden[j] : c->n_tasks;
            add(list, &n, &m->head_w[j], INIT_LINEAR, in, out, "head.%d.weight", j);
            add(list, &n, &m->head_b[j], INIT_BIAS, out, 0, "head.%d.bias", j);
            in = out;
        }
    }
    return n;
}

int64_t model_tensor_numel(const model_tensor *t)
{
    return t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
}

hstu_status model_alloc(hstu_model *m, hstu_error *err)
{
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof *m->layers);
    model_tensor *list = malloc(sizeof *list * MODEL_MAX_TENSORS);
    if (!m->layers || !list) {
        free(list);
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for the model's tensor table");
    }
    int n = model_tensors(m, list);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (size_t)model_tensor_numel(&list[i]);
    size_t unit = m->cfg.family == HSTU_FAMILY_RETRIEVAL ? (size_t)m->cfg.item_rows * m->cfg.d_model : 0;
    m->arena_floats = total + unit;
    m->arena = malloc(sizeof(float) * (m->arena_floats ? m->arena_floats : 1));
    if (!m->arena) {
        free(list);
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory: the model needs %.1f MiB",
                         m->arena_floats * 4.0 / (1 << 20));
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        *list[i].slot = m->arena + off;
        off += (size_t)model_tensor_numel(&list[i]);
    }
    m->item_unit = unit ? m->arena + off : NULL;
    free(list);
    return HSTU_OK;
}

void model_finish(hstu_model *m)
{
    if (!m->item_unit)
        return;
    int d = m->cfg.d_model;
    for (int64_t r = 0; r < m->cfg.item_rows; r++) {
        const float *x = m->item + r * d;
        float *y = m->item_unit + r * d;
        double ss = 0;
        for (int i = 0; i < d; i++)
            ss += (double)x[i] * x[i];
        float inv = 1.0f / fmaxf((float)sqrt(ss), 1e-6f);
        for (int i = 0; i < d; i++)
            y[i] = x[i] * inv;
    }
}

static hstu_model *model_new(const hstu_config *cfg)
{
    hstu_model *m = calloc(1, sizeof *m);
    if (m)
        m->cfg = *cfg;
    return m;
}

void hstu_model_destroy(hstu_model *m)
{
    if (!m)
        return;
    free(m->arena);
    free(m->layers);
    free(m);
}

const hstu_config *hstu_model_config(const hstu_model *m) { return &m->cfg; }

size_t hstu_model_param_count(const hstu_model *m)
{
    return m->arena_floats - (m->item_unit ? (size_t)m->cfg.item_rows * m->cfg.d_model : 0);
}

hstu_status hstu_model_create_random(const hstu_config *cfg, uint64_t seed, hstu_model **out,
                                     hstu_error *err)
{
    hstu_model *m = model_new(cfg);
    if (!m)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    hstu_status st = model_alloc(m, err);
    if (st != HSTU_OK) {
        hstu_model_destroy(m);
        return st;
    }
    model_tensor *list = malloc(sizeof *list * MODEL_MAX_TENSORS);
    if (!list) {
        hstu_model_destroy(m);
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    }
    int n = model_tensors(m, list);
    float d = (float)cfg->d_model;
    for (int i = 0; i < n; i++) {
        model_tensor *t = &list[i];
        /* One stream per tensor, keyed by its index: stable across machines. */
        rng r = {seed * 0x9e3779b97f4a7c15ull + (uint64_t)i * 0xd1b54a32d192ed03ull + 1};
        float lo = -1, hi = 1, scale = 1, shift = 0;
        switch (t->init) {
        case INIT_EMBED: scale = 1.0f / sqrtf(d); break;   /* e*sqrt(d) ~ U(-1, 1) */
        case INIT_POS: scale = 0.2f; break;
        case INIT_LINEAR: scale = 1.0f / sqrtf((float)t->shape[0]); break;
        case INIT_BIAS: scale = 0.1f; break;
        case INIT_LN_W: scale = 0.1f, shift = 1.0f; break;
        case INIT_RAB: scale = 0.5f; break;
        }
        float *p = *t->slot;
        int64_t cnt = model_tensor_numel(t);
        for (int64_t k = 0; k < cnt; k++)
            p[k] = shift + scale * rng_range(&r, lo, hi);
    }
    free(list);
    model_finish(m);
    *out = m;
    return HSTU_OK;
}

hstu_status hstu_model_load(const char *dir, hstu_model **out, hstu_error *err)
{
    char path[4096];
    hstu_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    hstu_status st = hstu_config_load(path, &cfg, err);
    if (st != HSTU_OK)
        return st;
    hstu_model *m = model_new(&cfg);
    if (!m)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    model_tensor *list = NULL;
    st_file f = {0};
    st = model_alloc(m, err);
    if (st != HSTU_OK)
        goto fail;
    list = malloc(sizeof *list * MODEL_MAX_TENSORS);
    if (!list) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
        goto fail;
    }
    int n = model_tensors(m, list);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st = st_open(path, &f, err);
    if (st != HSTU_OK)
        goto fail;
    for (int i = 0; i < n; i++) {
        const model_tensor *t = &list[i];
        const st_tensor *s = st_find(&f, t->name);
        if (!s) {
            st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: tensor %s is missing (the config expects it)", path,
                           t->name);
            goto fail;
        }
        bool same = s->ndim == t->ndim;
        for (int k = 0; same && k < t->ndim; k++)
            same = s->shape[k] == t->shape[k];
        if (!same) {
            char got[128] = "", want[64];
            size_t used = 0;
            for (int k = 0; k < s->ndim && used < sizeof got - 24; k++)
                used += (size_t)snprintf(got + used, sizeof got - used, "%s%lld", k ? "," : "",
                                         (long long)s->shape[k]);
            if (t->ndim == 2)
                snprintf(want, sizeof want, "%lld,%lld", (long long)t->shape[0], (long long)t->shape[1]);
            else
                snprintf(want, sizeof want, "%lld", (long long)t->shape[0]);
            st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%s]", path,
                           t->name, got, want);
            goto fail;
        }
        st = st_read_f32(&f, s, *t->slot, (size_t)model_tensor_numel(t), err);
        if (st != HSTU_OK) {
            hstu_error_prefix(err, "%s", path);
            goto fail;
        }
    }
    if (f.n_tensors != n) {
        /* Some tensor in the file is not one the config expects: name it. */
        for (int k = 0; k < f.n_tensors; k++) {
            bool known = false;
            for (int i = 0; i < n && !known; i++)
                known = strcmp(f.tensors[k].name, list[i].name) == 0;
            if (!known) {
                st = hstu_fail(err, HSTU_ERR_FORMAT,
                               "%s: unexpected tensor %s (not part of this config's model)", path,
                               f.tensors[k].name);
                goto fail;
            }
        }
    }
    st_close(&f);
    free(list);
    model_finish(m);
    *out = m;
    return HSTU_OK;
fail:
    st_close(&f);
    free(list);
    hstu_model_destroy(m);
    return st;
}

hstu_status hstu_model_save(const hstu_model *mc, const char *dir, hstu_dtype dtype, hstu_error *err)
{
    hstu_status mk = core_mkdir_p(dir, err);
    if (mk != HSTU_OK)
        return mk;
    hstu_model *m = (hstu_model *)mc; /* model_tensors fills slots; the values stay as they are */
    hstu_model view = *m;              /* slots are written into a copy, the model is untouched */
    layer_weights *layers = calloc((size_t)m->cfg.n_layers, sizeof *layers);
    model_tensor *list = malloc(sizeof *list * MODEL_MAX_TENSORS);
    st_write_tensor *ws = malloc(sizeof *ws * MODEL_MAX_TENSORS);
    hstu_status st = HSTU_OK;
    if (!layers || !list || !ws) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
        goto done;
    }
    view.layers = layers;
    int n = model_tensors(&view, list);
    /* Point the copy's slots at the real data, tensor by tensor, in arena order. */
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        ws[i].name = list[i].name;
        ws[i].data = m->arena + off;
        ws[i].ndim = list[i].ndim;
        ws[i].shape[0] = list[i].shape[0];
        ws[i].shape[1] = list[i].shape[1];
        off += (size_t)model_tensor_numel(&list[i]);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_dtype sd = dtype == HSTU_DTYPE_BF16 ? ST_BF16 : dtype == HSTU_DTYPE_F16 ? ST_F16 : ST_F32;
    st = st_write(path, ws, n, sd, err);
    if (st != HSTU_OK)
        goto done;
    char *json = hstu_config_to_json(&m->cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = json ? fopen(path, "wb") : NULL;
    /* flushed to disk like model.safetensors (st_write), so that callers
     * may rename the directory's files into place at once */
    if (!f || fputs(json, f) < 0 || fputc('\n', f) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0)
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot write", path);
    if (f && fclose(f) != 0 && st == HSTU_OK)
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot write", path);
    free(json);
done:
    free(ws);
    free(list);
    free(layers);
    return st;
}
