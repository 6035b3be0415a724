/* harness.c - see harness.h. */
#if !defined(_GNU_SOURCE) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */
#endif
#include "harness.h"

#include <errno.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#ifdef HSTU_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

static int n_pass, n_fail, n_skip;
static int case_failures;

void t_fail_at(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stdout, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    case_failures++;
}

bool t_case_failed(void) { return case_failures > 0; }

void t_run(const char *name, void (*fn)(void))
{
    case_failures = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    fn();
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    if (case_failures) {
        n_fail++;
        printf("FAIL  %s (%.0f ms)\n", name, ms);
    } else {
        n_pass++;
        printf("ok    %s (%.0f ms)\n", name, ms);
    }
    fflush(stdout);
}

void t_skip(const char *name, const char *why)
{
    n_skip++;
    printf("skip  %s: %s\n", name, why);
    fflush(stdout);
}

int t_run_all(const t_case *cases, size_t n, const char *why)
{
    for (size_t i = 0; i < n; i++) {
        if (why)
            t_skip(cases[i].name, why);
        else
            t_run(cases[i].name, cases[i].fn);
    }
    return t_summary();
}

int t_summary(void)
{
    printf("%d passed, %d failed, %d skipped\n", n_pass, n_fail, n_skip);
    return n_fail ? 1 : 0;
}

double t_rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num || isnan(d))
            num = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > den)
            den = fabs((double)b[i]);
    }
    return num / (den > 1e-30 ? den : 1e-30);
}

bool t_has_nonfinite(const float *a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i]))
            return true;
    return false;
}

uint16_t t_f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float t_bf2f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void *t_xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of host memory (%zu bytes)\n", bytes);
        abort();
    }
    return p;
}

#ifdef HSTU_HAVE_CUDA
void *t_dpoison(size_t bytes)
{
    void *p = NULL;
    if (bytes < 16)
        bytes = 16;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc(%zu) failed\n", bytes);
        abort();
    }
    cudaMemset(p, 0xff, bytes);
    return p;
}
#endif

bool t_tmpdir(char *dir, size_t n, const char *name)
{
    snprintf(dir, n, "/tmp/hstu_test_%s_XXXXXX", name);
    if (!mkdtemp(dir)) {
        printf("FAIL  setup: mkdtemp %s: %s\n", dir, strerror(errno));
        return false;
    }
    return true;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

void t_rmtree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }
