/* serve.h - `hstu serve`: a KServe v2 / Triton-compatible HTTP server.
 *
 * One process serves a model repository (one folder per model, as `hstu
 * init` writes). Each loaded model owns one engine driven by one batcher
 * thread; HTTP handler threads decode requests into preallocated job slots,
 * queue them and wait. docs/serving.md describes threads, queue and limits.
 *
 * serve_start returns once both ports listen; serve_stop drains the queues
 * (queued requests are finished, new ones refused with 503) and frees all.
 */
#ifndef HSTU_SERVE_H
#define HSTU_SERVE_H

#include "hstu.h"

#include <stddef.h>
#include <stdint.h>

typedef struct serve_options {
    const char *model_repository; /* required */
    int http_port;                /* 8000; 0 picks a free port */
    int metrics_port;             /* 8002; 0 picks a free port; -1 disables */
    const char *host;             /* bind address, default 0.0.0.0 */
    hstu_backend backend;         /* cpu */
    int max_batch;                /* users per batch (and per request), 32 */
    int64_t max_queue_delay_us;   /* Triton's max_queue_delay_microseconds, 100 */
    int token_budget;             /* tokens per batch; 0: the engine's workspace rows */
    int queue_size;               /* job slots: queued + being decoded/encoded, 64 */
    int64_t timeout_us;           /* default per-request timeout, 0 = none */
    int64_t conn_timeout_s;       /* idle/slow connection timeout, 10 s */
    size_t max_body;              /* request body limit, 64 MiB */
    int body_buffers;             /* requests with a body held at once, 64 */
    int max_connections;          /* 256 */
    size_t cache_bytes;           /* KV cache per model, 1 GiB */
    size_t host_cache_bytes;      /* cuda: host tier per model, 0 = none */
    bool cuda_graphs;             /* cuda: CUDA graphs of the layers, true */
    hstu_prefix_check prefix_check; /* when cached prefixes are checked, AUTO */
    hstu_onload onload;           /* how much of a host hit to onload, AUTO */
    int max_top_k;                /* 1000 */
    int threads;                  /* engine threads, 0 = all cores */
    int verbose;
} serve_options;

void serve_options_default(serve_options *o);

typedef struct server server;

/* Loads every model of the repository and starts listening. */
hstu_status serve_start(const serve_options *o, server **out, hstu_error *err);
int serve_http_port(const server *s);
int serve_metrics_port(const server *s);
/* True once serve_begin_shutdown was called: health/ready answer 400. */
void serve_begin_shutdown(server *s);
/* Stops accepting, finishes queued requests, stops threads, frees everything. */
void serve_stop(server *s);

#endif
