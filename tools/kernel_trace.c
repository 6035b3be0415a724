/* kernel_trace.c - every kernel's start and end on the GPU, as run (CUDA
 * graphs' kernels one by one, programmatic dependent launch and all): a
 * CUPTI injection library for the GPU machine, where the CUPTI headers are.
 *
 *   gcc -O2 -shared -fPIC -I/usr/local/cuda/targets/x86_64-linux/include \
 *       -DKREC=CUpti_ActivityKernel<N> -DMREC=CUpti_ActivityMemcpy<N> \
 *       -DSREC=CUpti_ActivityMemset<N> tools/kernel_trace.c \
 *       -L/usr/local/cuda/targets/x86_64-linux/lib -lcupti -o /tmp/kernel_trace.so
 *   CUDA_INJECTION64_PATH=/tmp/kernel_trace.so KERNEL_TRACE_OUT=t.csv prog ...
 *
 * <N>: the newest record versions in cupti_activity.h (gpu_check.sh's
 * TRACE= finds them). Writes "start_ns,end_ns,grid,name" per kernel,
 * "start_ns,end_ns,<n>B,memcpy <kind>" per copy, "...,memset" per fill and
 * "start_ns,end_ns,api,<function>" per CUDA runtime call on the host (the
 * same clock: host work shows as the time between calls);
 * tools/kernel_trace.py reads it. KERNEL_TRACE_KINDS=api records the
 * runtime calls only, =gpu the GPU work only (tracing kernels slows graph
 * launches on the host; tracing calls adds a little to each call). ncu times kernels one at a time; this
 * shows them back to back, with the gaps between them. */
#include <cupti.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE *g_out;

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records)
{
    *size = (size_t)16 << 20;
    *buffer = aligned_alloc(8, *size);
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid)
{
    (void)ctx, (void)stream, (void)size;
    CUpti_Activity *rec = NULL;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            const KREC *k = (const KREC *)rec;
            fprintf(g_out, "%llu,%llu,%dx%dx%d,%s\n", (unsigned long long)k->start, (unsigned long long)k->end,
                    k->gridX, k->gridY, k->gridZ, k->name);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const MREC *m = (const MREC *)rec;
            static const char *kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD", "HtoH"};
            fprintf(g_out, "%llu,%llu,%lluB,memcpy %s\n", (unsigned long long)m->start, (unsigned long long)m->end,
                    (unsigned long long)m->bytes, m->copyKind < 10 ? kinds[m->copyKind] : "?");
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
            const CUpti_ActivityAPI *a = (const CUpti_ActivityAPI *)rec;
            const char *name = NULL;
            if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name) != CUPTI_SUCCESS || !name)
                name = "?";
            fprintf(g_out, "%llu,%llu,api,%s\n", (unsigned long long)a->start, (unsigned long long)a->end, name);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
            const SREC *m = (const SREC *)rec;
            fprintf(g_out, "%llu,%llu,%lluB,memset\n", (unsigned long long)m->start, (unsigned long long)m->end,
                    (unsigned long long)m->bytes);
        }
    }
    free(buffer);
}

static void flush_at_exit(void)
{
    cuptiActivityFlushAll(1);
    fflush(g_out);
}

int InitializeInjection(void)
{
    const char *path = getenv("KERNEL_TRACE_OUT");
    g_out = fopen(path ? path : "kernel_trace.csv", "w");
    if (!g_out)
        return 0;
    const char *kinds = getenv("KERNEL_TRACE_KINDS");
    bool api = !kinds || strcmp(kinds, "gpu") != 0, gpu = !kinds || strcmp(kinds, "api") != 0;
    if (gpu) {
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
    }
    if (api)
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME);
    cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    atexit(flush_at_exit);
    return 1;
}
