/* pdl.cuh - programmatic dependent launch (Hopper's griddepcontrol) for the
 * engine's own kernels: a kernel's launch and prologue overlap the end of
 * the kernel before it in the same stream, also inside CUDA graphs captured
 * from the stream (docs/cuda.md, "Programmatic dependent launch").
 *
 * A kernel launched with pdl_launch may start while the previous kernel in
 * its stream still runs: once every CTA of that kernel has called
 * pdl_trigger (or exited). So every such kernel calls pdl_wait before its
 * first global-memory access, read or write, in every thread that makes
 * one: griddepcontrol.wait returns when the previous grid has completed and
 * its writes are visible, whenever it triggered. Since each kernel waits
 * before it can end, waiting for the previous one means waiting for all the
 * work before it in the stream; so the wait also comes before any early
 * return (a grid whose CTAs all left without waiting could end before the
 * one ahead of it, and the kernel after it would wait for too little).
 * Then pdl_trigger lets the next kernel's launch begin.
 *
 * Both instructions do nothing when the kernel was launched without the
 * attribute (PDL off, cuda_pdl_set) or has no dependent. Kernels launched
 * without it (cuBLASLt's, the copy and fill kernels) keep
 * the full stream order on both sides: they start when the kernel before
 * them has completed, and a kernel after them waits for their completion.
 */
#ifndef HSTU_KERNELS_PDL_CUH
#define HSTU_KERNELS_PDL_CUH

#include "kernels/pdl_cuda.h"

#include <cuda_runtime.h>
#include <utility>

/* Blocks until the previous grid in the stream has completed and its memory
 * is visible; returns at once when there is none to wait for. */
__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Lets the next grid in the stream launch once every CTA of this one has
 * called it or exited; says nothing about this grid's memory. */
__device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

constexpr int PDL_MAX_EXTRA = 3; /* caller attributes of one launch */

/* The launch attribute of a thread-block cluster of x * y * z CTAs (an
 * extra attribute for pdl_launch_attrs, or for an occupancy query). */
inline cudaLaunchAttribute cluster_attribute(unsigned x, unsigned y, unsigned z)
{
    cudaLaunchAttribute at = {};
    at.id = cudaLaunchAttributeClusterDimension;
    at.val.clusterDim.x = x;
    at.val.clusterDim.y = y;
    at.val.clusterDim.z = z;
    return at;
}

/* kernel<<<grid, block, smem, stream>>>(args...) through cudaLaunchKernelEx,
 * with the attributes extra[0 .. n_extra) (a cluster shape, say) and, when
 * PDL is on (cuda_pdl_on), programmatic stream serialization. Returns the
 * launch's error, else the last error (which it clears), as the check after
 * a <<<>>> launch would. */
template <typename... Params, typename... Args>
inline cudaError_t pdl_launch_attrs(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                    cudaStream_t stream, const cudaLaunchAttribute *extra, int n_extra,
                                    Args &&...args)
{
    if (n_extra < 0 || n_extra > PDL_MAX_EXTRA)
        return cudaErrorInvalidValue;
    cudaLaunchAttribute at[PDL_MAX_EXTRA + 1] = {};
    int n = 0;
    for (; n < n_extra; n++)
        at[n] = extra[n];
    if (cuda_pdl_on()) {
        at[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    cudaLaunchConfig_t lc = {};
    lc.gridDim = grid;
    lc.blockDim = block;
    lc.dynamicSmemBytes = smem;
    lc.stream = stream;
    lc.attrs = n > 0 ? at : NULL;
    lc.numAttrs = (unsigned)n;
    const cudaError_t e = cudaLaunchKernelEx(&lc, kernel, std::forward<Args>(args)...);
    const cudaError_t last = cudaGetLastError();
    return e != cudaSuccess ? e : last;
}

/* pdl_launch_attrs with no other attribute. */
template <typename... Params, typename... Args>
inline cudaError_t pdl_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                              Args &&...args)
{
    return pdl_launch_attrs(kernel, grid, block, smem, stream, NULL, 0, std::forward<Args>(args)...);
}

#endif
