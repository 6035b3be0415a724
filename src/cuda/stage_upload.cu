/* stage_upload.cu - the batch metadata's host-to-device copy (stage_upload.h). */
#include "cuda/stage_upload.h"

#include "kernels/pdl.cuh"

static_assert(sizeof(stage_upload_list) == 64, "the list is read as four 16-byte loads");

#define UPLOAD_THREADS 256
#define UPLOAD_INFLIGHT 4

__global__ void __launch_bounds__(UPLOAD_THREADS) stage_upload_kernel(const stage_upload_list *list,
                                                                      const uint4 *host, uint4 *dev)
{
    /* The list: one round trip over PCIe per CTA (four 16-byte loads),
     * shared through shared memory. */
    __shared__ union {
        uint4 raw[sizeof(stage_upload_list) / 16];
        stage_upload_list l;
    } sl;
    __shared__ uint32_t off[STAGE_UPLOAD_MAX], end[STAGE_UPLOAD_MAX + 1];
    __shared__ uint32_t n_regions;
    pdl_wait(); /* dev may still be read by the kernel before (an earlier call's) */
    if (threadIdx.x < sizeof(stage_upload_list) / 16)
        sl.raw[threadIdx.x] = reinterpret_cast<const uint4 *>(list)[threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t n = sl.l.n < STAGE_UPLOAD_MAX ? sl.l.n : STAGE_UPLOAD_MAX, units = 0;
        end[0] = 0;
        for (uint32_t i = 0; i < n; i++) {
            off[i] = sl.l.r[i].off / 16;
            units += (sl.l.r[i].bytes + 15) / 16;
            end[i + 1] = units; /* the regions' 16-byte units as a running count */
        }
        n_regions = n;
    }
    __syncthreads();
    pdl_trigger();
    const uint32_t n = n_regions, total = end[n];
    const uint32_t step = gridDim.x * UPLOAD_THREADS;
    for (uint32_t u0 = blockIdx.x * UPLOAD_THREADS * UPLOAD_INFLIGHT + threadIdx.x; u0 < total;
         u0 += step * UPLOAD_INFLIGHT) {
        uint4 v[UPLOAD_INFLIGHT];
        uint32_t at[UPLOAD_INFLIGHT];
#pragma unroll
        for (int k = 0; k < UPLOAD_INFLIGHT; k++) {
            uint32_t u = u0 + (uint32_t)k * UPLOAD_THREADS;
            at[k] = UINT32_MAX;
            if (u < total) {
                uint32_t i = 0;
                while (u >= end[i + 1])
                    i++;
                at[k] = off[i] + (u - end[i]);
                v[k] = host[at[k]]; /* all loads issued before any store: host memory is far */
            }
        }
#pragma unroll
        for (int k = 0; k < UPLOAD_INFLIGHT; k++)
            if (at[k] != UINT32_MAX)
                dev[at[k]] = v[k];
    }
}

extern "C" int stage_upload_ctas(size_t bytes, int cap)
{
    size_t per = (size_t)UPLOAD_THREADS * UPLOAD_INFLIGHT * 16;
    size_t n = (bytes + per - 1) / per;
    return n < 1 ? 1 : n > (size_t)cap ? cap : (int)n;
}

extern "C" int stage_upload_cuda(const stage_upload_list *list, const char *host, char *dev, int ctas, void *stream)
{
    if (ctas < 1 || ((uintptr_t)list | (uintptr_t)host | (uintptr_t)dev) % 16)
        return (int)cudaErrorInvalidValue;
    return (int)pdl_launch(stage_upload_kernel, dim3((unsigned)ctas), dim3(UPLOAD_THREADS), 0, (cudaStream_t)stream,
                           list, reinterpret_cast<const uint4 *>(host), reinterpret_cast<uint4 *>(dev));
}
