/* metrics.h - the Prometheus text of /metrics on the metrics port. */
#ifndef HSTU_SERVE_METRICS_H
#define HSTU_SERVE_METRICS_H

#include "serve/http.h"
#include "serve/repository.h"

/* Triton's nv_* metric names per model, this engine's hstu_* ones and the
 * HTTP layer's buffers (ps). Returns a malloc'd text (caller frees), NULL
 * when out of memory. */
char *metrics_text(repository *r, const http_pool_stats *ps);

#endif
