/* ln_fold.cuh - the folded LayerNorm's correction (dense_cuda.h, ln_fold),
 * one formula for every consumer of a folded GEMM's columns: the v|k pass
 * and SiLU(u)·LN(attn) (dense.cu) and the attention's q activation
 * (attention.cu), so that they correct a column the same way. */
#ifndef HSTU_KERNELS_LN_FOLD_CUH
#define HSTU_KERNELS_LN_FOLD_CUH

/* rstd * (v - mean * e): column value v of a folded GEMM, corrected (st =
 * the row's mean and rstd; e: the column's sum of the stored weights). */
__device__ __forceinline__ float fold_one(float v, float2 st, float e) { return st.y * (v - st.x * e); }

#endif
