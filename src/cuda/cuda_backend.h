/* cuda_backend.h - the CUDA backend's C interface to the engine.
 *
 * The engine (src/model/engine.c) plans a sub-batch exactly as for the CPU
 * backends (user_plan: rows, cached prefix, pages) and hands it to
 * cuda_forward_run, which runs the whole forward on the GPU in bf16 with
 * fp32 accumulation and writes each user's results (scores / top-k) into
 * its hstu_result in host memory before returning.
 *
 * Memory plan: cuda_backend_create uploads the weights once (bf16; the
 * LayerNorm parameters, biases and rab tables may stay fp32) and allocates
 * activations for max_tokens rows and max_users users, plus pinned host
 * staging for per-batch metadata and results. cuda_forward_run allocates
 * nothing. Everything runs on one stream owned by the backend.
 *
 * Without a GPU (or in a build without nvcc) create fails with
 * HSTU_ERR_UNSUPPORTED and a message that says why.
 */
#ifndef HSTU_CUDA_BACKEND_H
#define HSTU_CUDA_BACKEND_H

#include "hstu.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct user_plan;
typedef struct cuda_backend cuda_backend;

/* True when this build has CUDA and a device is usable; otherwise writes
 * the reason (for test skips and error messages). */
bool cuda_available(char *why, size_t n);

hstu_status cuda_backend_create(const hstu_model *m, int max_tokens, int max_users, cuda_backend **out,
                                hstu_error *err);
void cuda_backend_destroy(cuda_backend *cb);
size_t cuda_backend_bytes(const cuda_backend *cb);

/* Runs plans[0..B). Until the GPU KV cache exists (issue 4) every plan has
 * c == 0 and paged == 0. */
hstu_status cuda_forward_run(cuda_backend *cb, struct user_plan *plans, int B, bool logits,
                             hstu_error *err);

#ifdef __cplusplus
}
#endif
#endif
