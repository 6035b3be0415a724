/* repository.h - the model repository: one folder per model.
 *
 * DIR/<name>/config.json + DIR/<name>/model.safetensors (as `hstu init`
 * writes) is model <name>, version "1". Each loaded model owns its weights,
 * an engine and a batcher thread. Handlers hold a reference while they use a
 * model; unload waits for those, drains the queue and frees everything.
 * A ranking model also answers as "hstu_model" (NVIDIA's Triton HSTU example
 * interface) when no folder of that name exists.
 */
#ifndef HSTU_SERVE_REPOSITORY_H
#define HSTU_SERVE_REPOSITORY_H

#include "hstu.h"
#include "serve/batcher.h"
#include "serve/protocol.h"
#include "serve/serve.h"
#include "serve/stats.h"

#include <jansson.h>
#include <pthread.h>

#define REPO_MAX_MODELS 64
#define REPO_NAME_MAX 128

typedef enum model_state { MODEL_UNAVAILABLE = 0, MODEL_LOADING, MODEL_READY, MODEL_UNLOADING } model_state;

typedef struct served_model {
    char name[REPO_NAME_MAX];
    model_state state;
    char reason[HSTU_MSG_MAX];  /* why it is unavailable */
    hstu_model *model;
    hstu_engine *engine;
    batcher *batcher;
    const hstu_config *cfg;
    model_stats stats;          /* kept across unload/load */
    int refs;                   /* handlers using it */
    int token_budget;           /* tokens per batch and per request */
} served_model;

typedef struct repository {
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* refs dropped, state changed */
    char root[4096];
    const serve_options *opts;
    served_model models[REPO_MAX_MODELS];
    int n;
    int compat;                 /* index of the model "hstu_model" aliases, or -1 */
} repository;

hstu_status repo_init(repository *r, const serve_options *o, hstu_error *err);
/* Unloads everything and frees. */
void repo_free(repository *r);
/* Names -> a READY model with a reference taken, or NULL with an HTTP
 * status (404 unknown, 503 not ready) and msg. version may be NULL. */
served_model *repo_acquire(repository *r, const char *name, const char *version, proto_iface *iface, int *status,
                           char *msg, size_t msg_size);
/* Any known model (ready or not), for ready/metadata checks; no reference. */
served_model *repo_find(repository *r, const char *name, const char *version, proto_iface *iface);
void repo_release(repository *r, served_model *m);
/* Repository control: HTTP status, msg on error. */
int repo_load(repository *r, const char *name, char *msg, size_t msg_size);
int repo_unload(repository *r, const char *name, char *msg, size_t msg_size);
json_t *repo_index(repository *r);
/* Stops every batcher (finishing what is queued): used at shutdown. */
void repo_stop_all(repository *r);
proto_limits repo_limits(const repository *r, const served_model *m);

#endif
