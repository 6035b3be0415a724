/* metrics.h - the Prometheus text of /metrics on the metrics port. */
#ifndef HSTU_SERVE_METRICS_H
#define HSTU_SERVE_METRICS_H

#include "serve/repository.h"

/* Triton's nv_* metric names per model, and this engine's hstu_* ones.
 * Returns a malloc'd text (caller frees), NULL when out of memory. */
char *metrics_text(repository *r);

#endif
