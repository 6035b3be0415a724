/* harness.h - the test harness: one line per case, a closing count.
 *
 * A test binary's main runs cases with t_run and returns t_summary(), which
 * prints "N passed, N failed, N skipped" and gives a non-zero exit code when
 * anything failed. Inside a case, T_CHECK records a failure (with file:line
 * and a message) and lets the case go on; T_REQUIRE also returns from it.
 */
#ifndef HSTU_TESTS_HARNESS_H
#define HSTU_TESTS_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void t_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void t_run(const char *name, void (*fn)(void));
void t_skip(const char *name, const char *why);
int t_summary(void);
bool t_case_failed(void);

/* A list of cases (name, function) run by t_run_all: every one, or with
 * why non-NULL every one skipped with that reason (a GPU test file without
 * a device, or a build without CUDA: fn may be NULL there); returns
 * t_summary(). */
typedef struct t_case {
    const char *name;
    void (*fn)(void);
} t_case;
int t_run_all(const t_case *cases, size_t n, const char *why);

/* Creates a fresh directory /tmp/hstu_test_<name>_XXXXXX into dir (n >=
 * 64 bytes); false (with the reason printed) when it cannot. */
bool t_tmpdir(char *dir, size_t n, const char *name);
/* Removes dir and everything under it. */
void t_rmtree(const char *dir);

/* malloc that aborts the test binary (with a message) when memory runs out;
 * 0 bytes gives a valid pointer. */
void *t_xmalloc(size_t bytes);
#ifdef HSTU_HAVE_CUDA
/* cudaMalloc of at least 16 bytes filled with 0xFF bytes (bf16 NaN bits):
 * an output a kernel should write and did not stays NaN. Aborts on failure. */
void *t_dpoison(size_t bytes);
#endif

/* max|a-b| / max(max|b|, tiny): the spec's per-tensor relative error. */
double t_rel_err(const float *a, const float *b, size_t n);
/* True when any value is NaN or Inf. */
bool t_has_nonfinite(const float *a, size_t n);

/* bf16 bits <-> float: round to nearest even (NaN stays NaN), and exact widening. */
uint16_t t_f2bf(float f);
float t_bf2f(uint16_t b);

#define T_CHECK(cond, ...)                                     \
    do {                                                       \
        if (!(cond))                                           \
            t_fail_at(__FILE__, __LINE__, __VA_ARGS__);        \
    } while (0)

#define T_REQUIRE(cond, ...)                                   \
    do {                                                       \
        if (!(cond)) {                                         \
            t_fail_at(__FILE__, __LINE__, __VA_ARGS__);        \
            return;                                            \
        }                                                      \
    } while (0)

#endif
