/* tma.cuh - host side of the tensor memory accelerator: describing a bf16
 * matrix in global memory as a CUtensorMap whose boxes land in shared memory
 * in wgmma's 128-byte-swizzled layout (sm90.cuh's tile_off, one 64-column
 * block of rows x 128 bytes per box). The device side is sm90::tma_load_2d and tma_store_2d.
 *
 * cuTensorMapEncodeTiled is a driver function; it is reached through the
 * runtime's cudaGetDriverEntryPointByVersion, so nothing links libcuda.
 * Encoding is host work only (no GPU call), cheap enough per launch.
 */
#ifndef HSTU_KERNELS_TMA_CUH
#define HSTU_KERNELS_TMA_CUH

#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace tma {

typedef CUresult (*encode_tiled_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                    const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                                    CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* The driver's encoder, looked up once (NULL when the driver lacks it). */
static inline encode_tiled_fn encoder()
{
    static encode_tiled_fn fn = NULL;
    static bool looked = false;
    if (!looked) {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
                cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (encode_tiled_fn)p;
        looked = true;
    }
    return fn;
}

/* A row-major bf16 matrix of `rows` x `cols` (row stride ld elements) in
 * boxes of box_rows x 64 columns (128 bytes, the 128-byte swizzle), zeros
 * outside the matrix. Returns a cudaError_t value (cudaErrorNotSupported
 * without the driver's encoder, cudaErrorInvalidValue when it refuses). */
static inline int encode_matrix(CUtensorMap *map, const void *base, uint64_t rows, uint64_t cols, uint64_t ld,
                                uint32_t box_rows)
{
    encode_tiled_fn fn = encoder();
    if (!fn)
        return (int)cudaErrorNotSupported;
    const cuuint64_t dim[2] = {cols, rows}, stride[1] = {ld * 2};
    const cuuint32_t box[2] = {64, box_rows}, step[2] = {1, 1};
    CUresult r = fn(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(base), dim, stride, box, step,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? 0 : (int)cudaErrorInvalidValue;
}

} /* namespace tma */

#endif
