/* attention_cuda.h - the HSTU attention on NVIDIA GPUs (bf16, fp32 accumulation).
 *
 * The same function as attention.h (read its contract: rows, masks, rab,
 * pages), on device memory:
 *   a_i = sum_{j visible from i} SiLU(alpha * <q_i, k_j> + rab_ij) / N * v_j
 * q, k, v and out are bf16; scores and sums are fp32; no T x T matrix is
 * ever stored. Jagged: per-sequence metadata in a device array. History
 * K/V rows [0, paged) come from a bf16 page pool (the GPU KV cache,
 * docs/kvcache.md), rows [paged, hist) and the candidates' own K/V from the
 * dense rows. Tiles wholly in the pages (page sizes 16, 32, 64) load as
 * whole pages by TMA where attn_cuda_tma_form says so (batch 8: about 1.1x
 * the dense time), else with cp.async; other page sizes take a slower path.
 *
 * Supported head widths: Dqk and Dv multiples of 16, at most 256
 * (attn_cuda_supported says so for a config, with the reason).
 * Launches on `stream` and returns; errors of the launch are returned as a
 * cudaError_t value (0 = success) so the caller can report them. With
 * programmatic dependent launch on (pdl_cuda.h) the kernel may start before
 * the previous one in the stream ends, and waits for it before touching
 * memory: stream order holds.
 *
 * Alignment (checked; cudaErrorInvalidValue otherwise): q, k, v and pages
 * 16-byte aligned, ld_qkv, page_elems, k_off and v_off multiples of 8
 * elements; out 4-byte aligned with ld_out even. Every sequence needs
 * c <= paged <= hist (c == 0 allowed with any paged) and, when pages is
 * NULL, paged == 0. max_rows must be at least every sequence's row count
 * (rows past it are not computed) and at most 65535 x 128. Each sequence's
 * rows [q0, q0 + rows) of out are fully written, nothing else. Needs an
 * sm_90 device (the build is sm_90a). Design and numbers:
 * docs/attention_cuda.md.
 */
#ifndef HSTU_KERNELS_ATTENTION_CUDA_H
#define HSTU_KERNELS_ATTENTION_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct attn_cuda_seq {
    int c;          /* first computed history row */
    int hist;       /* history rows */
    int cand;       /* candidate rows */
    int paged;      /* history rows read from pages */
    int q0;         /* dense row of the first computed row */
    int page0;      /* this sequence's first entry in page_table */
    int ts0;        /* this sequence's first entry in ts (rab) */
    int pad_;
    int64_t ts_q;   /* query time (rab) */
} attn_cuda_seq;

typedef struct attn_cuda_params {
    int B, H, Dqk, Dv;
    const attn_cuda_seq *seqs;   /* device [B] */
    int max_rows;                /* max over seqs of (hist - c) + cand: grid sizing */
    const void *q, *k, *v;       /* device bf16, row stride ld_qkv elements */
    int ld_qkv;
    /* Rows q, k and v hold (every sequence's q0 + rows <= n_rows): bounds
     * the tensor maps of the TMA loads; 0 (unknown) keeps the kernel that
     * loads with cp.async. Rows below n_rows must hold finite values: a
     * tile loads whole 64-row boxes, and the weights of the rows it does
     * not see are 0 (0 x inf would not be). */
    int n_rows;
    /* q as the projection left it: each CTA applies q = phi(q + q_bias)
     * (q_bias device fp32 [H*Dqk] or NULL; phi = SiLU when q_silu, else
     * the identity) to its Q tile in shared memory, rounded to bf16, so that
     * no pass over q is needed before (k and v come activated). */
    const float *q_bias;
    int q_silu;
    /* With q_fold_e set, q came from a GEMM with the LayerNorm folded in
     * (dense_cuda.h, ln_fold), and the activation starts with q = rstd *
     * (q - mean * q_fold_e) (q_fold_e device fp32 [H*Dqk]; q_fold_stats
     * device fp32 [n_rows][2], each dense row's mean and rstd). */
    const float *q_fold_e, *q_fold_stats;
    /* Page pool (bf16), page p at pages + p * page_elems; layer block K at
     * + k_off, V at + v_off; rows H*Dqk (K) and H*Dv (V) wide. */
    const void *pages;
    const int *page_table;       /* device: page ids, per sequence from page0 */
    int page_size;
    size_t page_elems, k_off, v_off;
    /* Pages the pool holds (ids below it): bounds the pool's tensor map, so
     * that the TMA form can load whole pages (attn_cuda_tma_form); 0
     * (unknown) keeps the cp.async loads over pages. */
    int n_pages;
    float alpha;
    int N;                       /* attn_scale_len */
    const float *pos_w;          /* device [2N-1] or NULL (no rab) */
    const float *ts_w;           /* device [n_buckets+1] */
    int n_buckets;
    const int64_t *ts;           /* device timestamps, per sequence from ts0 */
    void *out;                   /* device bf16 [rows, H*Dv], stride ld_out */
    int ld_out;
    /* Split-KV: when few row blocks would leave most SMs idle, S (<=
     * ATTN_CUDA_MAX_SPLITS) CTAs of one thread-block cluster share a row
     * block's keys and add their fp32 parts in shared memory before the one
     * bf16 rounding: the same result up to the order of fp32 additions.
     * max_keys bounds hist + cand over the sequences (sizes the split). */
    int max_keys;
    int splits;                  /* 0: chosen from the sizes (attn_cuda_splits); else forced */
    /* Split-KV parts in global memory instead (docs/attention_cuda.md,
     * "Parts through L2"): with `parts` set, a split call launches no
     * cluster. Split z of a row block writes its sum (not yet divided by N)
     * of each of its rows as fp16 times a power of two per row and head:
     * row q0 + r of plane z holds at parts + z * parts_plane + (q0 + r) *
     * ld_parts + h * Dv + c the value v * 2^e (rounded to fp16; e puts the
     * row's largest |v| in [2^14, 2^15)), and parts_scale + z * scale_plane
     * + (q0 + r) * H + h holds 2^-e. A split with no key tile has zeros
     * there. `out` is not written: the reader adds fp16 x scale over planes
     * 0..S-1 in that order in fp32, multiplies by 1/N and rounds to bf16
     * (attn_parts_sum_cuda; ln_mul_parts_cuda in dense_cuda.h). fp16 keeps
     * 11 significant bits, below bf16's 8, and halves the bytes that go
     * through L2 (the time of this path). With no cluster to fit, S is
     * bounded by the SMs, the key tiles, ATTN_CUDA_MAX_PART_SPLITS and
     * parts_planes. parts 16-byte aligned, ld_parts and parts_plane
     * multiples of 8, scale_plane at least the rows x H. */
    void *parts;                 /* fp16 */
    float *parts_scale;
    int ld_parts;                /* fp16 values a row of a plane, >= H * Dv */
    size_t parts_plane;          /* fp16 values from one plane to the next */
    size_t scale_plane;          /* floats from one plane of scales to the next */
    int parts_planes;            /* planes `parts` and `parts_scale` hold */
    /* Profiling (bench_cache_gpu --attention): NULL, or device [CTAs *
     * ATTN_CUDA_TRACE_POINTS] where the default kernel's CTA i (x fastest,
     * then y, then z) stamps the global timer (ns) as it passes the points
     * of enum attn_cuda_trace_point. */
    unsigned long long *trace;
} attn_cuda_params;

#define ATTN_CUDA_MAX_SPLITS 8       /* in a cluster (the portable cluster size) */
#define ATTN_CUDA_MAX_PART_SPLITS 16 /* through parts in global memory */

enum attn_cuda_trace_point {
    ATTN_TRACE_START,     /* the CTA has passed its wait for the kernel ahead (pdl_wait) */
    ATTN_TRACE_Q_ISSUED,  /* the TMA form: Q's loads are issued (the loading thread) */
    ATTN_TRACE_Q_LANDED,  /* the Q tile is in shared memory (computing warpgroup 0) */
    ATTN_TRACE_Q_READY,   /* ... and activated */
    ATTN_TRACE_K0_LANDED, /* the first K tile is in shared memory (computing warpgroup 0) */
    ATTN_TRACE_FIRST_S,   /* the first tile's scores are in registers */
    ATTN_TRACE_LOOP_DONE, /* every tile but the last P V issued and done */
    ATTN_TRACE_PV_DONE,   /* the last P V is done */
    ATTN_TRACE_PART_STORED, /* split-KV: this CTA's part is in its shared memory (parts: staged) */
    ATTN_TRACE_SYNCED,    /* split-KV: ... and every CTA of the cluster's */
    ATTN_TRACE_REDUCED,   /* split-KV: this CTA's rows of the sum are stored */
    ATTN_TRACE_END,       /* the output is stored (after the split reduction, if any) */
    ATTN_CUDA_TRACE_POINTS
};

/* The split-KV factor attn_fwd_cuda picks for these sizes (1: no split;
 * the default kernel only). */
int attn_cuda_splits(const attn_cuda_params *p);

/* Whether the parts through global memory are the faster form for these
 * sizes (and the call has planes for them): where they allow more splits
 * than clusters do, and at the same S from 3 splits on (at 2 the cluster is
 * faster). A caller sets parts only when this says so (with parts set, a
 * split call always writes them). */
bool attn_cuda_parts_pay(const attn_cuda_params *p);

/* The S of a call that writes parts (attn_cuda_params.parts): S >= 2 when
 * attn_fwd_cuda(p) will write planes 0..S-1 instead of out, 0 when it
 * writes out (no split, no parts, or a forced kernel that does not split). */
int attn_cuda_parts_used(const attn_cuda_params *p);

/* out = bf16((plane 0 + ... + plane S-1) / N) (each plane's fp16 values
 * times their scale) on each sequence's rows and
 * columns [0, H * Dv), as attn_fwd_cuda writes out without parts: for
 * callers that want out itself (tests, benchmarks). */
int attn_parts_sum_cuda(const attn_cuda_params *p, int S, void *stream);

/* How many clusters of S CTAs of the split kernel for head width d
 * (Dqk, Dv <= d) the GPU holds at once (cudaOccupancyMaxActiveClusters;
 * clusters must sit inside one GPC, so this is not SMs / S); 0 if unknown. */
int attn_cuda_max_clusters(int S, int d);

/* True when the kernel handles these head widths; otherwise writes why. */
bool attn_cuda_supported(int Dqk, int Dv, char *why, size_t n);

/* Launches the attention; returns a cudaError_t (0 on success). */
int attn_fwd_cuda(const attn_cuda_params *p, void *stream);

/* True when a usable device (sm_90) is present; otherwise writes why.
 * Tests skip on false. */
bool attn_cuda_device_present(char *why, size_t n);

/* The kernels behind attn_fwd_cuda; tests and benchmarks force one
 * (process-wide setting, not thread-safe; AUTO restores the default: TMA
 * where it applies, WS otherwise). */
enum {
    ATTN_CUDA_KERNEL_AUTO = 0,
    ATTN_CUDA_KERNEL_MMA = 1,   /* mma.sync m16n8k16 + ldmatrix, 8 warps */
    ATTN_CUDA_KERNEL_WGMMA = 2, /* Hopper wgmma, 2 warpgroups, one tile at a time */
    ATTN_CUDA_KERNEL_WS = 3,    /* wgmma, warp-specialized: a loading warpgroup, two computing */
    /* WS with K and V loaded by TMA, where it applies (attn_cuda_tma_form);
     * WS otherwise. */
    ATTN_CUDA_KERNEL_TMA = 4,
};
void attn_cuda_force_kernel(int kind);

/* Whether the TMA form can run this call: n_rows set, Dqk == Dv in {64,
 * 128, 256} and, with pages, n_pages set, page_size 16, 32 or 64, and
 * page_elems, k_off and v_off multiples of H * Dqk (a page's blocks are
 * whole rows of the pool's map) with fewer than 2^31 such rows in the pool.
 * The default kernel takes it wherever it can, split or not. */
bool attn_cuda_tma_form(const attn_cuda_params *p);

/* The time-bucket boundaries the kernel uses: thr[b] is the smallest |dt|
 * with bucket >= b before the clamp (thr[0] = 0). Copies min(n, count)
 * entries and returns the count; tests check them against attn_time_bucket. */
int attn_cuda_time_thresholds(uint64_t *thr, int n);

#ifdef __cplusplus
}
#endif
#endif
