/* runtime.c - process settings that libraries read when they load.
 *
 * Two settings matter enough to re-execute for, and both are read by a
 * library's constructor, before main can change them:
 * - OMP_WAIT_POLICY=passive: spinning OpenMP threads collapse when cores
 *   are shared (50x slower measured on a busy 2-core machine);
 * - OPENBLAS_CORETYPE=SkylakeX when OpenBLAS fell back to its AVX2
 *   (Haswell) kernels on a CPU with AVX-512 that it does not recognise
 *   (Debian's 0.3.21 on AMD Zen 5): sgemm runs twice as fast.
 * A setting the user made is never overridden. See docs/perf.md.
 */
#include "hstu.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static bool cpu_has_avx512(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return false;
#endif
}

void hstu_runtime_init(char **argv)
{
    if (getenv("HSTU_RUNTIME_SET"))
        return; /* already chosen (or the user opted out) */
    bool change = false;
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        change = true;
    }
    const char *core = openblas_get_corename();
    if (!getenv("OPENBLAS_CORETYPE") && core &&
        (!strcasecmp(core, "haswell") || !strcasecmp(core, "zen")) && cpu_has_avx512()) {
        setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
        change = true;
    }
    setenv("HSTU_RUNTIME_SET", "1", 1);
    if (change)
        execv("/proc/self/exe", argv); /* on failure, go on as we are */
}
