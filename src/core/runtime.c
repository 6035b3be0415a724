/* runtime.c - process settings that a library reads when it loads.
 *
 * OMP_WAIT_POLICY=passive: OpenMP threads that spin while they wait collapse
 * when cores are shared (a server's own threads, other processes): measured
 * 50x slower on a busy 2-core machine (docs/perf.md). libgomp reads the
 * policy in its constructor, before main, so the process re-executes itself
 * once with it set. A policy the user chose is kept.
 */
#include "hstu.h"

#include <stdlib.h>
#include <unistd.h>

void hstu_runtime_init(char **argv)
{
    if (getenv("HSTU_RUNTIME_SET") || getenv("OMP_WAIT_POLICY"))
        return; /* already chosen, by us or by the user */
    setenv("OMP_WAIT_POLICY", "passive", 1);
    setenv("HSTU_RUNTIME_SET", "1", 1);
    execv("/proc/self/exe", argv); /* on failure, go on as we are */
}
