/* sm_count.cu - the GPU's SM count, read once (see sm_count_cuda.h). */
#include "kernels/sm_count_cuda.h"

#include <cuda_runtime.h>

extern "C" int cuda_sm_count(void)
{
    static const int n = [] {
        int dev = 0, sms = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            return 0;
        return sms;
    }();
    return n;
}
