/* trace_print.h - prints a kernel's per-CTA timer trace (the GPU
 * benchmarks; header-only, each benchmark is one program).
 *
 * h holds ctas rows of `points` GPU timer stamps (ns; 0 where a CTA did not
 * reach the point, or does not exist). For each point: when the CTAs reach
 * it after the first CTA's start (us: mean and latest), and the mean length
 * of the phase that ends there (from the last point the CTA passed before). */
#ifndef HSTU_BENCH_TRACE_PRINT_H
#define HSTU_BENCH_TRACE_PRINT_H

#include <stddef.h>
#include <stdio.h>

static void print_trace(const char *label, const unsigned long long *h, size_t ctas, int points,
                        const char *const *names)
{
    unsigned long long t0 = ~0ull;
    int n = 0;
    for (size_t c = 0; c < ctas; c++)
        if (h[c * points])
            n++, t0 = h[c * points] < t0 ? h[c * points] : t0;
    printf("    trace, %s, %d CTAs (us after the first CTA's start: mean, latest; phase: mean):\n     ", label, n);
    for (int k = 0; k < points; k++) {
        double sum = 0, last = 0, dsum = 0;
        int cnt = 0;
        for (size_t c = 0; c < ctas; c++) {
            const unsigned long long *r = h + c * points;
            int prev = k - 1; /* the phase starts at the last point this CTA passed */
            while (prev > 0 && !r[prev])
                prev--;
            if (!r[k] || !r[0])
                continue;
            double at = (double)(r[k] - t0) * 1e-3;
            sum += at, cnt++;
            last = at > last ? at : last;
            dsum += k > 0 ? (double)(r[k] - r[prev]) * 1e-3 : 0;
        }
        if (cnt)
            printf(" %s %.1f, %.1f (%.1f);", names[k], sum / cnt, last, dsum / cnt);
    }
    printf("\n");
}

#endif
