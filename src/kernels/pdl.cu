/* pdl.cu - the process-wide switch for programmatic dependent launch (see
 * pdl_cuda.h). -1 until the first query reads HSTU_CUDA_PDL; an atomic, as
 * launches on several threads may ask at once. */
#include "kernels/pdl_cuda.h"

#include <atomic>
#include <stdlib.h>
#include <string.h>

static std::atomic<int> g_pdl{-1};

extern "C" int cuda_pdl_on(void)
{
    int on = g_pdl.load(std::memory_order_relaxed);
    if (on < 0) {
        const char *v = getenv("HSTU_CUDA_PDL");
        on = !(v && !strcmp(v, "0"));
        /* a cuda_pdl_set that got in first wins */
        int unread = -1;
        if (!g_pdl.compare_exchange_strong(unread, on, std::memory_order_relaxed))
            on = unread;
    }
    return on;
}

extern "C" void cuda_pdl_set(int on) { g_pdl.store(on != 0, std::memory_order_relaxed); }
