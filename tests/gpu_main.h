/* gpu_main.h - the main of a test file whose cases all need a GPU.
 *
 * T_GPU_MAIN(LIST), with LIST an X-macro of (name, function) pairs, runs
 * every case when a usable GPU is present and skips every one with the
 * reason otherwise, or when the build has no CUDA (then the functions are
 * never named, so the file may leave them out of such a build). */
#ifndef HSTU_TESTS_GPU_MAIN_H
#define HSTU_TESTS_GPU_MAIN_H

#include "harness.h"

#define T_GPU_CASE(name, fn) {name, fn},
#define T_GPU_NAME(name, fn) {name, NULL},

#ifdef HSTU_HAVE_CUDA
#include "kernels/attention_cuda.h"

#define T_GPU_MAIN(LIST)                                                            \
    int main(void)                                                                  \
    {                                                                               \
        static const t_case cases[] = {LIST(T_GPU_CASE)};                           \
        char why[256];                                                              \
        bool gpu = attn_cuda_device_present(why, sizeof why);                       \
        return t_run_all(cases, sizeof cases / sizeof cases[0], gpu ? NULL : why); \
    }
#else
#define T_GPU_MAIN(LIST)                                                            \
    int main(void)                                                                  \
    {                                                                               \
        static const t_case cases[] = {LIST(T_GPU_NAME)};                           \
        return t_run_all(cases, sizeof cases / sizeof cases[0],                     \
                         "this build has no CUDA (nvcc was not found when it was built)");  \
    }
#endif

#endif
