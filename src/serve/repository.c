/* repository.c - the model repository: scan, load, unload, index.
 *
 * The repository lock guards the table of models and their states only;
 * loading and unloading (seconds) run outside it, with the model marked
 * LOADING or UNLOADING so that requests get 503 meanwhile. A model's
 * statistics survive an unload and a reload, as in Triton.
 */
#include "serve/repository.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_model_dir(const char *root, const char *name)
{
    char path[8192];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s/config.json", root, name);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool valid_name(const char *name)
{
    if (!name[0] || strlen(name) >= REPO_NAME_MAX || name[0] == '.')
        return false;
    for (const char *p = name; *p; p++)
        if (!(*p == '_' || *p == '-' || *p == '.' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
              (*p >= 'A' && *p <= 'Z')))
            return false;
    return true;
}

static served_model *find_locked(repository *r, const char *name)
{
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->models[i].name, name))
            return &r->models[i];
    return NULL;
}

static int cmp_models(const void *a, const void *b)
{
    return strcmp(((const served_model *)a)->name, ((const served_model *)b)->name);
}

/* Loads m's files and starts its engine and batcher; called without the lock
 * while m is LOADING. Fills m->reason on failure. */
static hstu_status load_model(repository *r, served_model *m)
{
    const serve_options *o = r->opts;
    char dir[8192];
    snprintf(dir, sizeof dir, "%s/%s", r->root, m->name);
    hstu_error err = {0};
    hstu_model *model = NULL;
    hstu_engine *engine = NULL;
    batcher *b = NULL;
    if (hstu_model_load(dir, &model, &err) != HSTU_OK)
        goto fail;
    const hstu_config *cfg = hstu_model_config(model);
    int user_max = hstu_config_max_user_tokens(cfg);
    int budget = o->token_budget > 0 ? o->token_budget : (user_max > 16384 ? user_max : 16384);
    hstu_engine_options eo;
    hstu_engine_options_default(&eo);
    eo.backend = o->backend;
    eo.cache_bytes = o->cache_bytes;
    eo.host_cache_bytes = o->host_cache_bytes;
    eo.cuda_graphs = o->cuda_graphs;
    eo.prefix_check = o->prefix_check;
    eo.onload = o->onload;
    eo.threads = o->threads;
    eo.max_batch_tokens = budget > user_max ? budget : user_max;
    if (hstu_engine_create(model, &eo, &engine, &err) != HSTU_OK)
        goto fail;
    batcher_options bo = {
        .max_batch = o->max_batch,
        .max_queue_delay_us = o->max_queue_delay_us,
        .token_budget = budget,
        .queue_size = o->queue_size,
        .max_top_k = o->max_top_k,
        .threads = o->threads,
    };
    proto_limits lim = {.max_batch = o->max_batch, .token_budget = budget, .max_top_k = o->max_top_k};
    bo.scratch_bytes = proto_scratch_bytes(cfg, &lim, batcher_ids_cap(cfg, o->max_batch, budget));
    if (!m->stats.batch_count && stats_init(&m->stats, o->max_batch) != 0) {
        snprintf(err.msg, sizeof err.msg, "out of memory for statistics");
        goto fail;
    }
    if (batcher_create(engine, cfg, &bo, &m->stats, &b, &err) != HSTU_OK)
        goto fail;
    m->model = model;
    m->engine = engine;
    m->batcher = b;
    m->cfg = cfg;
    m->token_budget = budget;
    m->reason[0] = 0;
    /* Memory of the model, counted once here (docs/serving.md, Limits). */
    fprintf(stderr,
            "hstu serve: model %s loaded: %zu parameters (%.1f MiB), engine %.1f MiB (workspace + KV pool), "
            "%d job slots + batch scratch %.1f MiB, + %.1f MiB reserved per slot for parsing and replies\n",
            m->name, hstu_model_param_count(model), (double)hstu_model_param_count(model) * 4 / 1048576.0,
            (double)hstu_engine_bytes(engine) / 1048576.0, o->queue_size, (double)batcher_bytes(b) / 1048576.0,
            (double)bo.scratch_bytes / 1048576.0);
    return HSTU_OK;
fail:
    hstu_engine_destroy(engine);
    hstu_model_destroy(model);
    snprintf(m->reason, sizeof m->reason, "%s", err.msg);
    return err.status ? err.status : HSTU_ERR_IO;
}

static void unload_model(served_model *m)
{
    batcher_destroy(m->batcher); /* finishes what is queued */
    hstu_engine_destroy(m->engine);
    hstu_model_destroy(m->model);
    m->batcher = NULL;
    m->engine = NULL;
    m->model = NULL;
    m->cfg = NULL;
}

static void pick_compat(repository *r)
{
    r->compat = -1;
    if (find_locked(r, "hstu_model"))
        return; /* a real model of that name wins */
    for (int i = 0; i < r->n; i++) {
        served_model *m = &r->models[i];
        if (m->state == MODEL_READY && m->cfg->family == HSTU_FAMILY_RANKING &&
            (r->compat < 0 || !strcmp(m->name, "hstu")))
            r->compat = i;
    }
}

hstu_status repo_init(repository *r, const serve_options *o, hstu_error *err)
{
    memset(r, 0, sizeof *r);
    r->opts = o;
    r->compat = -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    snprintf(r->root, sizeof r->root, "%s", o->model_repository);
    DIR *d = opendir(r->root);
    if (!d) {
        err->status = HSTU_ERR_IO;
        snprintf(err->msg, sizeof err->msg, "%.400s: cannot open the model repository", r->root);
        return HSTU_ERR_IO;
    }
    struct dirent *de;
    while ((de = readdir(d)) && r->n < REPO_MAX_MODELS)
        if (valid_name(de->d_name) && is_model_dir(r->root, de->d_name))
            memcpy(r->models[r->n++].name, de->d_name, strlen(de->d_name) + 1); /* valid_name: fits */
    closedir(d);
    qsort(r->models, (size_t)r->n, sizeof r->models[0], cmp_models);
    for (int i = 0; i < r->n; i++) {
        served_model *m = &r->models[i];
        if (load_model(r, m) == HSTU_OK) {
            m->state = MODEL_READY;
        } else {
            m->state = MODEL_UNAVAILABLE;
            fprintf(stderr, "hstu serve: model %s not loaded: %s\n", m->name, m->reason);
        }
    }
    pick_compat(r);
    return HSTU_OK;
}

void repo_stop_all(repository *r)
{
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++)
        if (r->models[i].batcher)
            batcher_stop(r->models[i].batcher);
    pthread_mutex_unlock(&r->mu);
}

void repo_free(repository *r)
{
    for (int i = 0; i < r->n; i++) {
        served_model *m = &r->models[i];
        if (m->batcher || m->engine)
            unload_model(m);
        stats_free(&m->stats);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

static served_model *lookup_locked(repository *r, const char *name, const char *version, proto_iface *iface)
{
    if (version && strcmp(version, "1"))
        return NULL;
    served_model *m = find_locked(r, name);
    *iface = PROTO_NATIVE;
    if (!m && !strcmp(name, "hstu_model") && r->compat >= 0) {
        m = &r->models[r->compat];
        *iface = PROTO_COMPAT;
    }
    return m;
}

served_model *repo_find(repository *r, const char *name, const char *version, proto_iface *iface)
{
    pthread_mutex_lock(&r->mu);
    served_model *m = lookup_locked(r, name, version, iface);
    pthread_mutex_unlock(&r->mu);
    return m;
}

served_model *repo_acquire(repository *r, const char *name, const char *version, proto_iface *iface, int *status,
                           char *msg, size_t msg_size)
{
    pthread_mutex_lock(&r->mu);
    served_model *m = lookup_locked(r, name, version, iface);
    if (!m) {
        *status = 404;
        if (version && strcmp(version, "1") && find_locked(r, name))
            snprintf(msg, msg_size, "model %s has no version %s (only version 1)", name, version);
        else
            snprintf(msg, msg_size, "unknown model \"%s\"", name);
    } else if (m->state != MODEL_READY) {
        *status = 503;
        snprintf(msg, msg_size, "model %s is not ready%s%s", name, m->reason[0] ? ": " : "", m->reason);
        m = NULL;
    } else {
        m->refs++;
    }
    pthread_mutex_unlock(&r->mu);
    return m;
}

void repo_release(repository *r, served_model *m)
{
    pthread_mutex_lock(&r->mu);
    m->refs--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

int repo_load(repository *r, const char *name, char *msg, size_t msg_size)
{
    if (!valid_name(name)) {
        snprintf(msg, msg_size, "\"%s\" is not a model name (letters, digits, '_', '-', '.')", name);
        return 400;
    }
    pthread_mutex_lock(&r->mu);
    served_model *m = find_locked(r, name);
    if (!is_model_dir(r->root, name)) {
        pthread_mutex_unlock(&r->mu);
        snprintf(msg, msg_size, "no model \"%s\" in the repository (%s/%s/config.json)", name, r->root, name);
        return 404;
    }
    if (!m) {
        if (r->n == REPO_MAX_MODELS) {
            pthread_mutex_unlock(&r->mu);
            snprintf(msg, msg_size, "the repository holds %d models already", REPO_MAX_MODELS);
            return 400;
        }
        m = &r->models[r->n++];
        memset(m, 0, sizeof *m);
        snprintf(m->name, sizeof m->name, "%s", name);
    }
    if (m->state == MODEL_LOADING || m->state == MODEL_UNLOADING) {
        pthread_mutex_unlock(&r->mu);
        snprintf(msg, msg_size, "model %s is being loaded or unloaded", name);
        return 503;
    }
    bool reload = m->state == MODEL_READY;
    m->state = reload ? MODEL_UNLOADING : MODEL_LOADING;
    while (m->refs > 0)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    if (reload)
        unload_model(m);
    hstu_status st = load_model(r, m);
    pthread_mutex_lock(&r->mu);
    m->state = st == HSTU_OK ? MODEL_READY : MODEL_UNAVAILABLE;
    pick_compat(r);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (st != HSTU_OK) {
        snprintf(msg, msg_size, "model %s failed to load: %s", name, m->reason);
        return 400;
    }
    return 200;
}

int repo_unload(repository *r, const char *name, char *msg, size_t msg_size)
{
    pthread_mutex_lock(&r->mu);
    served_model *m = find_locked(r, name);
    if (!m) {
        pthread_mutex_unlock(&r->mu);
        snprintf(msg, msg_size, "unknown model \"%s\"", name);
        return 404;
    }
    if (m->state != MODEL_READY) {
        pthread_mutex_unlock(&r->mu);
        return 200; /* already unloaded (or on its way): nothing to do */
    }
    m->state = MODEL_UNLOADING;
    while (m->refs > 0)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    unload_model(m);
    pthread_mutex_lock(&r->mu);
    m->state = MODEL_UNAVAILABLE;
    snprintf(m->reason, sizeof m->reason, "unloaded");
    pick_compat(r);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 200;
}

static const char *state_name(model_state s)
{
    switch (s) {
    case MODEL_READY: return "READY";
    case MODEL_LOADING: return "LOADING";
    case MODEL_UNLOADING: return "UNLOADING";
    default: return "UNAVAILABLE";
    }
}

json_t *repo_index(repository *r)
{
    json_t *a = json_array();
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++) {
        served_model *m = &r->models[i];
        json_t *o = json_pack("{ss ss ss}", "name", m->name, "version", "1", "state", state_name(m->state));
        if (m->state != MODEL_READY && m->reason[0])
            json_object_set_new(o, "reason", json_string(m->reason));
        json_array_append_new(a, o);
    }
    pthread_mutex_unlock(&r->mu);
    return a;
}

proto_limits repo_limits(const repository *r, const served_model *m)
{
    proto_limits l = {
        .max_batch = r->opts->max_batch,
        .token_budget = m->token_budget,
        .max_top_k = r->opts->max_top_k,
        .default_timeout_us = r->opts->timeout_us,
        .max_queue_delay_us = r->opts->max_queue_delay_us,
    };
    return l;
}
