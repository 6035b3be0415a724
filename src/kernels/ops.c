/* ops.c - the backend tables. */
#include "kernels/ops.h"

#include "kernels/dense.h"

static const hstu_ops ops_ref = {
    .backend = HSTU_BACKEND_REF,
    .gemm = gemm_ref,
    .layernorm = layernorm_ref,
    .bias_silu = bias_silu_ref,
    .ln_mul = ln_mul_ref,
    .bias_act = bias_act_ref,
    .l2norm = l2norm_ref,
    .attention = attn_fwd_ref,
    .topk = topk_ref,
};

static const hstu_ops ops_cpu = {
    .backend = HSTU_BACKEND_CPU,
    .gemm = gemm_cpu,
    .layernorm = layernorm_cpu,
    .bias_silu = bias_silu_cpu,
    .ln_mul = ln_mul_cpu,
    .bias_act = bias_act_cpu,
    .l2norm = l2norm_cpu,
    .attention = attn_fwd_cpu,
    .topk = topk_cpu,
};

const hstu_ops *ops_for(hstu_backend b)
{
    switch (b) {
    case HSTU_BACKEND_REF: return &ops_ref;
    case HSTU_BACKEND_CPU: return &ops_cpu;
    case HSTU_BACKEND_CUDA: return NULL;
    }
    return NULL;
}
