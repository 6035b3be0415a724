/* bench_attention.c - times attn_fwd_cpu on the kuairand-1k shape.
 *
 * One layer's attention of the kuairand-1k preset's full forward (H 4,
 * Dqk = Dv = 128, a 2054-row history and 100 candidates, nothing cached),
 * for one user and for eight, plus the same with rab and with the history
 * read from 32-row pages. Prints the time and the GFLOP/s of useful work
 * (visible pairs * H * (Dqk + Dv) * 2; masked pairs do not count) beside
 * this machine's cblas_sgemm rate on 2048^3, the ceiling a blocked
 * attention built on sgemm can approach. Rates come twice: by wall time,
 * and per core by CPU time, which a busy shared machine disturbs less.
 *
 * Build (from the repository root):
 *   gcc -std=c17 -D_GNU_SOURCE -O2 -march=native -fopenmp -Iinclude -Isrc \
 *     -I/usr/include/x86_64-linux-gnu/openblas-openmp bench/bench_attention.c \
 *     src/kernels/attention_cpu.c src/kernels/attention_ref.c \
 *     -L/usr/lib/x86_64-linux-gnu/openblas-openmp \
 *     -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-openmp -lopenblas -lm -o /tmp/bench_attn
 */
#include "core/rng.h"
#include "kernels/attention.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { H = 4, DQK = 128, DV = 128, HIST = 2054, CAND = 100, MAXB = 8, PAGE = 32 };
#define MIN_SECONDS 1.0 /* repeat each measurement at least this long */

static float *random_floats(rng *r, size_t n)
{
    float *x = malloc(sizeof(float) * n);
    if (!x) {
        fprintf(stderr, "bench_attention: out of memory (%zu floats)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = rng_range(r, -1.0f, 1.0f);
    return x;
}

/* Process CPU time in seconds (all threads). */
static double cpu_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* A measurement: the best wall time of repeated runs and the least CPU time
 * (all threads) of a run. On a shared machine the wall time suffers when the
 * threads are descheduled; the CPU time much less, so per-core rates (flop /
 * CPU second) compare fairly with sgemm's taken the same way. */
typedef struct timing { double wall_s, cpu_s; } timing;

static void timing_add(timing *t, double wall, double cpu)
{
    t->wall_s = wall < t->wall_s ? wall : t->wall_s;
    t->cpu_s = cpu < t->cpu_s ? cpu : t->cpu_s;
}

static timing time_attention(const attn_params *p)
{
    attn_fwd_cpu(p); /* warm up: thread pool, scratch, caches */
    timing t = { INFINITY, INFINITY };
    double start = omp_get_wtime();
    do {
        double w0 = omp_get_wtime(), c0 = cpu_seconds();
        attn_fwd_cpu(p);
        timing_add(&t, omp_get_wtime() - w0, cpu_seconds() - c0);
    } while (omp_get_wtime() - start < MIN_SECONDS);
    return t;
}

static timing time_sgemm(int n)
{
    rng r = { 3 };
    float *a = random_floats(&r, (size_t)n * n);
    float *b = random_floats(&r, (size_t)n * n);
    float *c = random_floats(&r, (size_t)n * n);
    timing t = { INFINITY, INFINITY };
    double start = omp_get_wtime();
    int runs = 0;
    do {
        double w0 = omp_get_wtime(), c0 = cpu_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        if (runs++ > 0) /* the first run warms up */
            timing_add(&t, omp_get_wtime() - w0, cpu_seconds() - c0);
    } while (runs < 3 || omp_get_wtime() - start < MIN_SECONDS);
    free(a);
    free(b);
    free(c);
    return t;
}

int main(void)
{
    rng r = { 1 };
    /* The layer's uvqk output, u | v | q | k per row, as the model lays it out. */
    int ld = 2 * H * DV + 2 * H * DQK;
    int rows_per_seq = HIST + CAND;
    float *uvqk = random_floats(&r, (size_t)MAXB * rows_per_seq * ld);
    float *out = malloc(sizeof(float) * (size_t)MAXB * rows_per_seq * H * DV);
    int npages = (HIST + PAGE - 1) / PAGE;
    size_t page_floats = (size_t)PAGE * H * (DQK + DV);
    float *page_mem = random_floats(&r, page_floats * npages);
    float *pages[(HIST + PAGE - 1) / PAGE];
    for (int i = 0; i < npages; i++)
        pages[i] = page_mem + page_floats * i;
    float *pos_w = random_floats(&r, 2 * 4096 - 1);
    float *ts_w = random_floats(&r, 129);
    int64_t *ts = malloc(sizeof(int64_t) * HIST);
    int64_t t = 1700000000;
    for (int j = 0; j < HIST; j++)
        ts[j] = t += rng_below(&r, 100000);
    attn_rab rab = { pos_w, ts_w, 128 };

    attn_seq seqs[MAXB];
    for (int b = 0; b < MAXB; b++)
        seqs[b] = (attn_seq){ .c = 0, .hist = HIST, .cand = CAND, .paged = 0,
                              .q0 = b * rows_per_seq, .pages = pages, .ts = ts, .ts_q = t + 60 };
    attn_params p = { .H = H, .Dqk = DQK, .Dv = DV, .seqs = seqs,
                      .q = uvqk + 2 * H * DV, .k = uvqk + 2 * H * DV + H * DQK, .v = uvqk + H * DV,
                      .ld_qkv = ld, .page_size = PAGE, .k_off = 0, .v_off = (size_t)PAGE * H * DQK,
                      .alpha = 1.0f / sqrtf((float)DQK), .N = 4096, .out = out, .ld_out = H * DV };

    double pairs = (double)HIST * (HIST + 1) / 2 + (double)CAND * (HIST + 1);
    double flop_per_seq = pairs * H * (DQK + DV) * 2;
    int nt = omp_get_max_threads();
    const int n = 2048;
    timing g = time_sgemm(n);
    double gemm_flop = 2.0 * n * n * (double)n;
    double gemm = gemm_flop / g.wall_s / 1e9, gemm_core = gemm_flop / g.cpu_s / 1e9;
    printf("threads %d, H %d, Dqk %d, Dv %d, hist %d + cand %d per user\n", nt, H, DQK, DV, HIST, CAND);
    printf("%-46s %8.2f ms %7.1f GFLOP/s  per core %6.1f GFLOP/s\n", "cblas_sgemm 2048^3", g.wall_s * 1e3,
           gemm, gemm_core);

    static const struct { int B, rab, paged; const char *what; } runs[] = {
        { 1, 0, 0, "1 user" },
        { 8, 0, 0, "8 users" },
        { 1, 1, 0, "1 user, rab" },
        { 8, 1, 0, "8 users, rab" },
        { 1, 0, HIST, "1 user, history in 32-row pages" },
    };
    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        p.B = runs[i].B;
        p.rab = runs[i].rab ? &rab : NULL;
        for (int b = 0; b < MAXB; b++)
            seqs[b].paged = runs[i].paged;
        timing t = time_attention(&p);
        double gf = flop_per_seq * p.B / t.wall_s / 1e9, gf_core = flop_per_seq * p.B / t.cpu_s / 1e9;
        printf("attn_fwd_cpu %-33s %8.2f ms %7.1f GFLOP/s  per core %6.1f GFLOP/s  "
               "(%.0f%% of sgemm, per core %.0f%%)\n",
               runs[i].what, t.wall_s * 1e3, gf, gf_core, 100.0 * gf / gemm, 100.0 * gf_core / gemm_core);
    }

    free(uvqk);
    free(out);
    free(page_mem);
    free(pos_w);
    free(ts_w);
    free(ts);
    return 0;
}
