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

hstu_status cuda_backend_create(const hstu_model *m, int max_tokens, int max_users, cuda_backend **out,
                                hstu_error *err)
{
    *out = NULL;
    return hstu_fail(err, HSTU_ERR_UNSUPPORTED,
                     "backend cuda: this build has no CUDA (install the CUDA toolkit so that nvcc is "
                     "found, then rebuild), or use --backend cpu");
}

void cuda_backend_destroy(cuda_backend *cb) { (void)cb; }

size_t cuda_backend_bytes(const cuda_backend *cb) { return 0; }

hstu_status cuda_forward_run(cuda_backend *cb, struct user_plan *plans, int B, bool logits,
                             hstu_error *err)
{
    return hstu_fail(err, HSTU_ERR_UNSUPPORTED, "backend cuda: not in this build");
}

#endif
