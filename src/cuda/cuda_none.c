/* cuda_none.c - the CUDA backend's entry points in a build without nvcc.
 *
 * Compiled in every build; empty when HSTU_HAVE_CUDA is defined (the real
 * backend is in the .cu files). Here every entry point says why the backend
 * cannot run, so `--backend cuda` is a clear error, not a link failure.
 */
#include "cuda/cuda_backend.h"

#include "core/status.h"

#ifndef HSTU_HAVE_CUDA

#include <stdio.h>

bool cuda_available(char *why, size_t n)
{
    snprintf(why, n, "this build has no CUDA (nvcc was not found when it was built)");
    return false;
}

hstu_status cuda_backend_create(const hstu_model *m, int max_tokens, int max_users, int max_pages,
                                const cuda_cache_desc *cache, cuda_backend **out, hstu_error *err)
{
    *out = NULL;
    return hstu_fail(err, HSTU_ERR_UNSUPPORTED,
                     "backend cuda: this build has no CUDA (install the CUDA toolkit so that nvcc is "
                     "found, then rebuild), or use --backend cpu");
}

void cuda_backend_destroy(cuda_backend *cb) { (void)cb; }

size_t cuda_backend_bytes(const cuda_backend *cb) { return 0; }

hstu_status cuda_forward_run(cuda_backend *cb, struct user_plan *plans, int B, bool logits,
                             const cuda_batch_cache *kc, hstu_error *err)
{
    return hstu_fail(err, HSTU_ERR_UNSUPPORTED, "backend cuda: not in this build");
}

hstu_status cuda_offload_submit(cuda_backend *cb, int64_t user, const int *pages, const int *slots, int n_chunks,
                                hstu_error *err)
{
    return hstu_fail(err, HSTU_ERR_UNSUPPORTED, "backend cuda: not in this build");
}

int cuda_offload_poll(cuda_backend *cb, int64_t *users, int max, bool wait) { return 0; }

void cuda_cache_get_counters(const cuda_backend *cb, cuda_cache_counters *c)
{
    *c = (cuda_cache_counters){0};
}

void cuda_backend_rates(const cuda_backend *cb, double *h2d_gbs, double *gemm_tflops)
{
    *h2d_gbs = *gemm_tflops = 0;
}

size_t cuda_backend_attn_trace(const cuda_backend *cb, unsigned long long *h, size_t n) { return 0; }

void cuda_backend_attn_trace_clear(cuda_backend *cb) {}

#endif
