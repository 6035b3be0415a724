/* sm_count_cuda.h - the GPU's SM count, for the launch rules that size
 * grids and splits by it (attention's split rule, the fused head's and
 * fused GEMM's grids, SiLU(u)·LN's form, the backend's parts buffer).
 */
#ifndef HSTU_KERNELS_SM_COUNT_CUDA_H
#define HSTU_KERNELS_SM_COUNT_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

/* The current device's multiprocessors, queried once per process (the
 * engine runs on one device); 0 when the query fails. Thread-safe. */
int cuda_sm_count(void);

#ifdef __cplusplus
}
#endif
#endif
