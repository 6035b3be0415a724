/* pdl_cuda.h - the switch for programmatic dependent launch (PDL) of the
 * engine's own kernels (src/kernels/pdl.cuh; docs/cuda.md, "Programmatic
 * dependent launch").
 *
 * One process-wide setting: on by default, off when the environment holds
 * HSTU_CUDA_PDL=0 at the first query (it is read once). Every launch reads
 * the setting as it is launched, so a change applies to the launches after
 * it; a CUDA graph keeps the dependencies it was captured with, so an
 * engine's graphs follow the setting of their capture (their first batch of
 * a bucket). Results do not depend on it, only when kernels start.
 * Thread-safe.
 */
#ifndef HSTU_KERNELS_PDL_CUDA_H
#define HSTU_KERNELS_PDL_CUDA_H

#ifdef __cplusplus
extern "C" {
#endif

/* Whether launches use PDL now (1) or not (0). */
int cuda_pdl_on(void);

/* Turns PDL on (on != 0) or off for the launches that follow; for tests and
 * benchmarks (it overrides the environment). */
void cuda_pdl_set(int on);

#ifdef __cplusplus
}
#endif
#endif
