/* cuda_backend.cu - the CUDA backend: weights on the GPU, the forward pass of
 * a planned sub-batch in bf16 with fp32 accumulation (spec 1, 5).
 *
 * Memory plan. Everything is sized at create and carved out of one device
 * allocation and one pinned host allocation (layout() walks the same list
 * twice: once to size, once to point), so a forward allocates nothing:
 *   weights   bf16 matrices (every embedding table in one [rows, d8] table,
 *             positions, uvqk and proj weights, head weights, the normalised
 *             item table); LayerNorm parameters, biases and rab tables fp32;
 *   activations for max_tokens rows: x (the residual stream: bf16 by
 *             default, fp32 with HSTU_CUDA_RESIDUAL=f32; the output projection
 *             adds into it with beta = 1), xn, uvqk, attn, y bf16; the head's
 *             buffers; retrieval's score rows;
 *   staging   per-batch metadata (token rows, positions, attention
 *             sequences, timestamps, head rows, top-k bookkeeping) packed on
 *             the host and sent in one copy; results come back the same way.
 * Widths: d is padded to d8 (a multiple of 8) with zero weight rows and
 * columns so every GEMM operand is 16-byte aligned; head widths likewise.
 * At create, the two layer GEMMs are tuned (cuBLASLt's candidates timed)
 * for M = max_tokens, max_tokens / 2, ... on the scratch activations.
 *
 * A forward, on one stream: embedding gather of the rows after each user's
 * cached prefix (x = e * sqrt(d) + pos, and layer 0's LN(x) in the same
 * pass), then per layer (replayed as a CUDA graph of its bucket, or eagerly)
 * LN (from layer 1 on) -> uvqk GEMM (columns u|q|v|k) -> bias+SiLU on v|k (q|v|k for a split
 * attention) -> append of the new history K/V to the page pool -> [wait for this layer's onload] ->
 * attention (else q's bias+SiLU as it loads Q; cached rows from the pages) -> SiLU(u + b_u) * LN(attn) ->
 * proj GEMM into x (beta = 1, bias epilogue);
 * then the head. Ranking: candidate rows gathered and L2-normalised, the MLP
 * as GEMMs with bias(+ReLU) epilogues, logits copied back, sigmoid on the
 * host. Retrieval: each user's newest row normalised, scores against the
 * whole normalised item table by one GEMM, exact top-k on the GPU
 * (topk.cu), ids and scores copied back. One synchronisation per forward
 * (per group of users when retrieval's score rows must be split).
 */
#include "cuda/cuda_backend.h"
#include "cuda/stage_upload.h"

#include "kernels/attention_cuda.h"
#include "kernels/dense_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/gemm_fused_cuda.h"
#include "kernels/head_fused_cuda.h"
#include "kernels/pdl_cuda.h"
#include "kernels/sm_count_cuda.h"
#include "kernels/topk_cuda.h"
#include "kvcache/kv_cuda.h"

extern "C" {
#include "core/clock.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "model/engine.h"
#include "model/model.h"
}

#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEMM_WORKSPACE ((size_t)32 << 20) /* cuBLASLt's suggestion for Hopper */
#define SCORE_FLOATS ((size_t)64 << 20)   /* retrieval score rows: 256 MiB, or one row if larger */
#define TOPK_OUT_MIN ((size_t)1 << 20)    /* retrieval results held per group */
#define TOPK_MAX_K 100000                 /* the engine's bound on top_k */
#define UPLOAD_CHUNK ((size_t)4 << 20)    /* elements converted per upload step at create */
#define UPLOAD_MAX_CTAS 264                /* metadata upload: 2 per SM of an H100 at most */
#define FUSED_HEAD_ROWS 384                /* the fused head's default bound (rows of a bucket) */
#define HEAD_GRAPH_ROWS 1024               /* the four-launch head in the stack's graph up to this bucket */

typedef struct layer_dev {
    float *ln_in_w, *ln_in_b;   /* [d8] (NULL without ln_affine) */
    bf16_t *uvqk_w;             /* [d8, W] columns u|q|v|k (upload_uvqk; rows d..d8 zero) */
    float *uvqk_b;              /* [W] u|q|v|k (NULL without uvqk_bias and fold) */
    float *fold_e;              /* [W] LN folded into uvqk_w (ln_fold, upload_folded): e; NULL: not folded */
    float *ln_out_w, *ln_out_b; /* [vw] (NULL without ln_affine) */
    bf16_t *proj_w;             /* [vw, d8] (columns d..d8 zero) */
    void *proj_b;               /* [d8], x's type (the GEMM's bias is C's type); NULL without proj_bias */
    float *rab_pos, *rab_time;  /* [2N-1], [buckets+1] (NULL without rab) */
} layer_dev;

struct cuda_backend {
    const hstu_model *model;
    int max_tokens, max_users;
    int d, d8, W, vw, kw, n_tasks8, head_w8;
    int64_t emb_rows, action_off, ctx_off[HSTU_MAX_CONTEXT];
    int n_items8;      /* item_unit rows, padded (retrieval) */
    bool x_f32;        /* residual stream in fp32 (HSTU_CUDA_RESIDUAL=f32) instead of bf16 */
    bool fused_uvqk;   /* the uvqk GEMM with its v|k epilogue in one kernel (HSTU_CUDA_FUSED_GEMM=1) */
    bool ln_fold;      /* layers 1.. fold their input LayerNorm into the uvqk GEMM (HSTU_CUDA_LN_FOLD=0: not) */
    int fused_head_rows; /* the ranking head in one kernel for at most this many candidate rows
                          * (one hidden layer; 0: never; HSTU_CUDA_FUSED_HEAD) */
    int score_rows;    /* users per top-k group: score rows that fit SCORE_FLOATS */
    size_t topk_cap;   /* result slots per top-k group */
    cudaStream_t stream;
    gemm_cuda *gemm;

    /* device memory: one allocation */
    void *d_arena;
    size_t d_bytes;
    bf16_t *d_emb;        /* [emb_rows, d8]: item | action | context 0 | ... */
    bf16_t *d_pos;        /* [max_positions, d8] */
    layer_dev *layers;    /* host array [L] of device pointers */
    bf16_t *d_head_w[HSTU_MAX_HIDDEN + 1]; /* [in8, out8] */
    void *d_head_b[HSTU_MAX_HIDDEN + 1];   /* [out8]: bf16 (hidden, ReLU epilogue on bf16), fp32 (last) */
    int head_in8[HSTU_MAX_HIDDEN + 1], head_out8[HSTU_MAX_HIDDEN + 1];
    bf16_t *d_item_unit;  /* [n_items8, d8] normalised items (retrieval) */
    void *d_x;            /* [T, d8] residual stream, bf16 or fp32 (x_f32) */
    bf16_t *d_xn;         /* [T, d8] LN(x) */
    float *d_ln_stats;    /* [T][2] x's rows' mean and rstd, for a folded layer's consumers (ln_fold) */
    bf16_t *d_uvqk;       /* [T, W] u|q|v|k (upload_uvqk) */
    bf16_t *d_attn;       /* [T, vw] */
    bf16_t *d_y;          /* [T, vw] SiLU(u) * LN(attn) */
    bf16_t *d_mlp_a, *d_mlp_b;   /* [T, head_w8] ranking MLP ping-pong */
    float *d_logits;      /* [T, n_tasks8] */
    void *d_head_scratch; /* the fused head's partial logits and counters (zeroed at create) */
    /* Split-KV parts of the attention (attention_cuda.h, attn_cuda_params.parts),
     * added up by ln_mul_parts_cuda; NULL with HSTU_CUDA_ATTN_PARTS=0 or a
     * width that kernel does not take (then the parts meet in a cluster). */
    void *d_parts;        /* fp16 values */
    float *d_parts_scale; /* a power of two per row, head and plane */
    size_t parts_halves, parts_scales;
    bool parts_always;   /* HSTU_CUDA_ATTN_PARTS=all: parts whenever the call splits (to measure the rule) */
    bool attn_tma_pages; /* the attention may load pages by TMA (off: HSTU_CUDA_ATTN_TMA_PAGES=0) */
    /* HSTU_CUDA_ATTN_TRACE=l: layer l's attention stamps its CTAs' phases
     * (attn_cuda_params.trace) into this buffer at every forward, graphs
     * included (cuda_backend_attn_trace reads it); NULL otherwise. */
    unsigned long long *d_attn_trace;
    size_t attn_trace_n;
    int attn_trace_layer;
    bf16_t *d_users;      /* [max_users, d8] retrieval user rows */
    float *d_scores;      /* [score_rows, n_items8] */
    int *d_topk_ids;      /* [topk_cap] */
    float *d_topk_vals;   /* [topk_cap] */
    int *d_topk_n;        /* [max_users] */
    char *d_stage;        /* [stage_cap] device mirror of h_stage */

    /* pinned host memory: one allocation */
    void *h_arena;
    size_t h_bytes;
    char *h_stage;        /* [stage_cap] per-batch metadata */
    char *dh_stage;       /* h_stage as the device addresses it (the upload kernel reads it) */
    size_t stage_cap;
    float *h_logits;      /* [T, n_tasks] scores, written by the GPU (mapped pinned memory) */
    float *dh_logits;     /* h_logits as the device addresses it */
    int *h_topk_ids;      /* [topk_cap] */
    float *h_topk_vals;   /* [topk_cap] */
    int *h_topk_n;        /* [max_users] */

    /* The KV cache (docs/kvcache.md): a device page pool and a pinned host
     * pool of chunk slots, each its own allocation, sized at create. */
    cuda_cache_desc cc;
    int max_pages;        /* page-table entries per forward */
    bf16_t *d_pool;       /* [n_pages, page_elems] */
    size_t pool_bytes, page_bytes, blk_bytes; /* blk: one layer's K|V block of a page */
    char *h_pool;         /* [host_slots, chunk_bytes] pinned, mapped; a chunk is its pages as on the device */
    size_t host_bytes, chunk_bytes;
    int ppc;              /* pages per chunk */
    cudaStream_t s_onload, s_offload;
    cudaEvent_t ev_submit, ev_on_start;
    cudaEvent_t ev_fwd_start, ev_fwd_end; /* a forward's GPU span (counters' gpu_ms) */
    cudaEvent_t ev_stack[2]; /* its embedding and layer stack (counters' stack_ms) */
    cudaStream_t s_mark;     /* a graph's stack marks branch off on it (stack_mark) */
    cudaEvent_t ev_mark_fork, ev_mark_join;
    cudaEvent_t *ev_on;   /* [L] layer l's onload has landed */
    /* The onload and the offload by the copy engines (cudaMemcpyBatchAsync:
     * the onload one batch a layer, an offload one batch), or by
     * kv_copy_cuda's kernel (HSTU_CUDA_ONLOAD=kernel, HSTU_CUDA_OFFLOAD=kernel),
     * whose CTAs take SMs from the layers they overlap. The copy lists (both
     * directions share them): [max_pages], read by the calls as they are made. */
    bool onload_dma, offload_dma;
    void **cp_dst;
    const void **cp_src;
    size_t *cp_size;
    kv_copy *h_off_desc;  /* [host_slots * ppc] offload copies, by slot (pinned, read by the kernel) */
    struct off_job {
        int64_t user;
        uint64_t bytes;
        cudaEvent_t start, done;
    } *jobs;              /* ring of max_pending */
    int job_head, job_n;
    bool onload_pending;  /* this forward has host pages to bring up */
    /* Its copies by the copy engines, layer-wise: issued a layer at a time
     * (issue_onload); the list, its length and the layers issued so far. */
    const struct staged *on_sg;
    int on_n, on_issued;
    cuda_cache_counters ctr;
    double h2d_gbs, gemm_tflops; /* measured at create with a host tier (cuda_backend_rates) */

    /* Staging: the upload's region list first, then the arrays the layer
     * kernels read at fixed offsets (a CUDA graph holds their addresses);
     * the rest is packed after fx_end. */
    size_t fx_scalars, fx_seqs, fx_pt, fx_row_slot, fx_ts, fx_end;
    stage_upload_list *h_upload; /* at offset 0 of h_stage */
    /* CUDA graphs of the layers, per (batch, tokens, splits, paged, parts, layered) bucket. */
    struct graph_entry {
        int B, T, S;
        bool paged;   /* the attention reads pages (some user had cached rows) */
        bool parts;   /* its splits meet as parts in global memory, not in a cluster */
        bool layered; /* one graph per layer (exec[l]); else the whole stack in two (graph_part) */
        bool logits;  /* the fused head, in the whole stack's graph, leaves the logits (no sigmoid) */
        int n_exec;
        cudaGraphExec_t *exec; /* [L] */
        uint64_t used;
    } graphs[32];
    int n_graphs;
    uint64_t graph_clock;

    bool in_flight; /* a forward's work may still run (a call failed before its last wait) */
    void (*overlap)(void *); /* this forward's cuda_batch_cache.overlap, until called */
    void *overlap_arg;
};

/* One batch's metadata, packed in h_stage (device copy at the same offsets). */
typedef struct staged {
    int *tok_row;        /* [T] embedding-table row of each token (retrieval: the item id) */
    int *tok_pos;        /* [T] position */
    attn_cuda_seq *seqs; /* [B] */
    int64_t *ts;         /* [T] timestamps (retrieval) */
    int *rows;           /* head rows: [M] candidates (ranking), [B] newest rows (retrieval) */
    int *n_rows;         /* [1] M: the fused head reads it on the device */
    int *k, *off;        /* [B] top-k wanted, offset in its group's results (retrieval) */
    int *excl_b, *excl_e;/* [B] the user's exclusion list in excl (retrieval) */
    int *excl;           /* [sum hist] every history item (retrieval) */
    int *page_table;     /* [n_page_idx] device page ids */
    int64_t *row_slot;   /* [T] page * P + slot of a dense row appended to the pages, or -1 */
    kv_copy *onload;     /* [n_onload] layer 0's blocks of the host hits */
} staged;

/* ---- small helpers ------------------------------------------------------ */

static int pad8(int64_t n) { return (int)((n + 7) / 8 * 8); }

static hstu_status cuda_fail(hstu_error *err, const char *what, int code)
{
    return hstu_fail(err, HSTU_ERR_DEVICE, "backend cuda: %s failed: %s", what,
                     cudaGetErrorString((cudaError_t)code));
}

/* Checks a launch's or a CUDA call's return code. */
static hstu_status ck(int code, const char *what, hstu_error *err)
{
    return code == 0 ? HSTU_OK : cuda_fail(err, what, code);
}

static hstu_status ck_gemm(cuda_backend *cb, int M, int N, int K, const bf16_t *A, int lda, const bf16_t *B,
                           int ldb, int b_trans, float beta, void *C, int c_f32, int ldc, gemm_epilogue epi,
                           const void *bias, const char *what, hstu_error *err)
{
    char why[256];
    if (gemm_cuda_run(cb->gemm, M, N, K, A, lda, B, ldb, b_trans, beta, C, c_f32, ldc, epi, bias, cb->stream, why,
                      sizeof why) == 0)
        return HSTU_OK;
    return hstu_fail(err, HSTU_ERR_DEVICE, "backend cuda: %s GEMM: %s", what, why);
}

static uint16_t f2bf_host(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);     /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* Bump allocator over a base address: run once with base 0 to size, then
 * with the real base to point. 256-byte alignment (cuBLASLt's default). */
typedef struct carver {
    uintptr_t base;
    size_t used;
} carver;

static void *carve(carver *c, size_t bytes)
{
    size_t off = (c->used + 255) & ~(size_t)255;
    c->used = off + bytes;
    return bytes ? (void *)(c->base + off) : NULL;
}

/* ---- memory layout ------------------------------------------------------ */

static void layout_device(cuda_backend *cb, carver *c)
{
    const hstu_config *cfg = &cb->model->cfg;
    size_t T = (size_t)cb->max_tokens, U = (size_t)cb->max_users;
    int d8 = cb->d8, W = cb->W, vw = cb->vw;
    bool retr = cfg->family == HSTU_FAMILY_RETRIEVAL;
    cb->d_emb = (bf16_t *)carve(c, (size_t)cb->emb_rows * d8 * 2);
    cb->d_pos = (bf16_t *)carve(c, (size_t)cfg->max_positions * d8 * 2);
    for (int l = 0; l < cfg->n_layers; l++) {
        layer_dev *L = &cb->layers[l];
        L->ln_in_w = cfg->ln_affine ? (float *)carve(c, (size_t)d8 * 4) : NULL;
        L->ln_in_b = cfg->ln_affine ? (float *)carve(c, (size_t)d8 * 4) : NULL;
        const bool fold = cb->ln_fold && l > 0; /* (layer 0's LayerNorm comes with the embedding) */
        L->uvqk_w = (bf16_t *)carve(c, (size_t)d8 * W * 2);
        L->uvqk_b = cfg->uvqk_bias || fold ? (float *)carve(c, (size_t)W * 4) : NULL;
        L->fold_e = fold ? (float *)carve(c, (size_t)W * 4) : NULL;
        L->ln_out_w = cfg->ln_affine ? (float *)carve(c, (size_t)vw * 4) : NULL;
        L->ln_out_b = cfg->ln_affine ? (float *)carve(c, (size_t)vw * 4) : NULL;
        L->proj_w = (bf16_t *)carve(c, (size_t)vw * d8 * 2);
        L->proj_b = cfg->proj_bias ? carve(c, (size_t)d8 * (cb->x_f32 ? 4 : 2)) : NULL;
        bool rab = cfg->rab == HSTU_RAB_POS_TIME;
        L->rab_pos = rab ? (float *)carve(c, (size_t)(2 * cfg->attn_scale_len - 1) * 4) : NULL;
        L->rab_time = rab ? (float *)carve(c, (size_t)(cfg->rab_buckets + 1) * 4) : NULL;
    }
    int n_head = retr ? 0 : cb->model->n_head;
    for (int j = 0; j < n_head; j++) {
        bool last = j == n_head - 1;
        cb->d_head_w[j] = (bf16_t *)carve(c, (size_t)cb->head_in8[j] * cb->head_out8[j] * 2);
        cb->d_head_b[j] = carve(c, (size_t)cb->head_out8[j] * (last ? 4 : 2));
    }
    cb->d_item_unit = retr ? (bf16_t *)carve(c, (size_t)cb->n_items8 * d8 * 2) : NULL;
    cb->d_x = carve(c, T * d8 * (cb->x_f32 ? 4 : 2));
    cb->d_xn = (bf16_t *)carve(c, T * d8 * 2);
    cb->d_ln_stats = cb->ln_fold ? (float *)carve(c, T * 2 * 4) : NULL;
    cb->d_uvqk = (bf16_t *)carve(c, T * W * 2);
    cb->d_attn = (bf16_t *)carve(c, T * vw * 2);
    cb->d_y = (bf16_t *)carve(c, T * vw * 2);
    cb->d_mlp_a = retr ? NULL : (bf16_t *)carve(c, T * cb->head_w8 * 2);
    cb->d_mlp_b = retr ? NULL : (bf16_t *)carve(c, T * cb->head_w8 * 2);
    cb->d_logits = retr ? NULL : (float *)carve(c, T * cb->n_tasks8 * 4);
    cb->d_head_scratch =
        cb->fused_head_rows > 0 ? carve(c, head_fused_scratch_bytes((int)T, cb->head_out8[0], cb->n_tasks8))
                                : NULL;
    cb->d_parts = cb->parts_halves ? carve(c, cb->parts_halves * 2) : NULL;
    cb->d_parts_scale = cb->parts_halves ? (float *)carve(c, cb->parts_scales * 4) : NULL;
    cb->d_users = retr ? (bf16_t *)carve(c, U * d8 * 2) : NULL;
    cb->d_scores = retr ? (float *)carve(c, (size_t)cb->score_rows * cb->n_items8 * 4) : NULL;
    cb->d_topk_ids = retr ? (int *)carve(c, cb->topk_cap * 4) : NULL;
    cb->d_topk_vals = retr ? (float *)carve(c, cb->topk_cap * 4) : NULL;
    cb->d_topk_n = retr ? (int *)carve(c, U * 4) : NULL;
    cb->d_stage = (char *)carve(c, cb->stage_cap);
}

static void layout_host(cuda_backend *cb, carver *c)
{
    bool retr = cb->model->cfg.family == HSTU_FAMILY_RETRIEVAL;
    size_t T = (size_t)cb->max_tokens, U = (size_t)cb->max_users;
    cb->h_stage = (char *)carve(c, cb->stage_cap);
    cb->h_logits = retr ? NULL : (float *)carve(c, T * cb->n_tasks8 * 4);
    cb->h_topk_ids = retr ? (int *)carve(c, cb->topk_cap * 4) : NULL;
    cb->h_topk_vals = retr ? (float *)carve(c, cb->topk_cap * 4) : NULL;
    cb->h_topk_n = retr ? (int *)carve(c, U * 4) : NULL;
}

/* Per-batch staging: sub-arrays packed from the start of h_stage, each
 * 16-byte aligned; the device copy has the same offsets. */
typedef struct stage {
    char *base;
    size_t used, cap;
} stage;

static void *stage_take(stage *s, size_t bytes)
{
    size_t off = (s->used + 15) & ~(size_t)15;
    HSTU_ASSERT(off + bytes <= s->cap); /* sized at create for max_tokens / max_users */
    s->used = off + bytes;
    return s->base + off;
}

static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

/* The fixed-offset part of the staging buffer. */
static void stage_fixed(cuda_backend *cb)
{
    size_t T = (size_t)cb->max_tokens, U = (size_t)cb->max_users;
    HSTU_ASSERT(cb->stage_cap <= UINT32_MAX); /* the upload's offsets are 32-bit */
    cb->fx_scalars = align16(sizeof(stage_upload_list)); /* 4 ints: [0] the head's rows */
    cb->fx_seqs = cb->fx_scalars + 16;
    cb->fx_pt = align16(cb->fx_seqs + U * sizeof(attn_cuda_seq));
    cb->fx_row_slot = align16(cb->fx_pt + (size_t)cb->max_pages * 4);
    cb->fx_ts = align16(cb->fx_row_slot + T * 8);
    cb->fx_end = align16(cb->fx_ts + T * 8);
}

static size_t stage_capacity(size_t T, size_t U, size_t pages)
{
    /* tok_row, tok_pos, ts, head rows (T or U), excl, row slots; seqs, 4
     * top-k arrays; page table, onload copies; alignment */
    return sizeof(stage_upload_list) + 16 + T * (4 + 4 + 8 + 4 + 4 + 8) + U * 4 + U * sizeof(attn_cuda_seq) +
           U * 4 * 4 + pages * (4 + sizeof(kv_copy)) + 16 * 32;
}

#define DEV(cb, hp) ((cb)->d_stage + ((const char *)(hp) - (cb)->h_stage))
/* The same host array as the device reads it over PCIe (pinned, mapped). */
#define MAPPED(cb, hp) ((cb)->dh_stage + ((const char *)(hp) - (cb)->h_stage))

/* ---- weight upload ------------------------------------------------------ */

/* dst [rows_pad, ld] bf16 <- src [rows, cols] fp32 (row stride ld_src), zero
 * elsewhere. Converted through a bounded host buffer. */
static hstu_status upload_bf16(bf16_t *dst, int64_t rows, int cols, int64_t rows_pad, int ld, const float *src,
                               int ld_src, uint16_t *buf, hstu_error *err)
{
    int64_t rows_per = (int64_t)(UPLOAD_CHUNK / (size_t)ld); /* the buffer holds max(UPLOAD_CHUNK, ld) */
    if (rows_per < 1)
        rows_per = 1;
    for (int64_t r0 = 0; r0 < rows_pad; r0 += rows_per) {
        int64_t n = rows_pad - r0 < rows_per ? rows_pad - r0 : rows_per;
        for (int64_t r = 0; r < n; r++)
            for (int c = 0; c < ld; c++)
                buf[r * ld + c] = (r0 + r < rows && c < cols) ? f2bf_host(src[(r0 + r) * ld_src + c]) : 0;
        hstu_status st = ck(cudaMemcpy(dst + r0 * ld, buf, (size_t)n * ld * 2, cudaMemcpyHostToDevice),
                            "weight upload (cudaMemcpy)", err);
        if (st != HSTU_OK)
            return st;
    }
    return HSTU_OK;
}

/* dst [n_pad] fp32 <- src [n], zero padded, through the same buffer. */
static hstu_status upload_f32(float *dst, const float *src, int64_t n, int64_t n_pad, uint16_t *buf,
                              hstu_error *err)
{
    float *f = (float *)buf;
    int64_t per = (int64_t)(UPLOAD_CHUNK / 2); /* the buffer holds UPLOAD_CHUNK bf16 = UPLOAD_CHUNK / 2 floats */
    for (int64_t i0 = 0; i0 < n_pad; i0 += per) {
        int64_t m = n_pad - i0 < per ? n_pad - i0 : per;
        for (int64_t i = 0; i < m; i++)
            f[i] = i0 + i < n ? src[i0 + i] : 0.0f;
        hstu_status st = ck(cudaMemcpy(dst + i0, f, (size_t)m * 4, cudaMemcpyHostToDevice),
                            "weight upload (cudaMemcpy)", err);
        if (st != HSTU_OK)
            return st;
    }
    return HSTU_OK;
}

/* The device keeps the projection's columns as u|q|v|k, not the
 * checkpoint's u|v|q|k: v and k, the two that need activating in a pass
 * of their own (q is activated by the attention as it loads Q, u by
 * ln_mul), are then one contiguous range, and q|v|k too (the pass takes q
 * when the attention splits, layer_forward). Column c of the device's
 * layout comes from column uvqk_src(c) of the model's. */
static int uvqk_src(const cuda_backend *cb, int c)
{
    int vw = cb->vw, kw = cb->kw;
    if (c < vw)
        return c;                           /* u */
    if (c < vw + kw)
        return c - vw + 2 * vw;             /* q */
    if (c < 2 * vw + kw)
        return c - (vw + kw) + vw;          /* v */
    return c;                               /* k */
}

static hstu_status upload_uvqk(const cuda_backend *cb, bf16_t *dst, const float *src, uint16_t *buf,
                               hstu_error *err)
{
    int d = cb->d, W = cb->W;
    for (int r = 0; r < cb->d8; r++) { /* one row at a time: the buffer holds a row of W */
        for (int c = 0; c < W; c++)
            buf[c] = r < d ? f2bf_host(src[(size_t)r * W + uvqk_src(cb, c)]) : 0;
        hstu_status st = ck(cudaMemcpy(dst + (size_t)r * W, buf, (size_t)W * 2, cudaMemcpyHostToDevice),
                            "weight upload (cudaMemcpy)", err);
        if (st != HSTU_OK)
            return st;
    }
    return HSTU_OK;
}

/* A folded layer's uvqk weights, bias and e (ln_fold in dense_cuda.h;
 * docs/cuda.md, "The LayerNorm folded into the uvqk GEMM"), from the
 * checkpoint's W, LN's gain g and shift s (1 and 0 without ln_affine) and
 * the projection's bias b0 (0 without): G[i][c] = bf16(g[i] W[i][c] - m[c])
 * with m[c] the mean over i of g[i] W[i][c]; e[c] the sum over i of the
 * stored G[i][c]; bias[c] = sum over i of s[i] W[i][c], + b0[c]. Sums in
 * double, columns in the device's order (uvqk_src). */
static hstu_status upload_folded(const cuda_backend *cb, layer_dev *L, const layer_weights *w, uint16_t *buf,
                                 hstu_error *err)
{
    int d = cb->d, W = cb->W;
    double *m = (double *)calloc((size_t)3 * W, sizeof(double)), *e = m + W, *bias = m + 2 * (size_t)W;
    float *f = (float *)malloc((size_t)2 * W * 4); /* e, then bias, as uploaded */
    if (!m || !f) {
        free(m);
        free(f);
        return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory for the weight upload");
    }
    for (int i = 0; i < d; i++) {
        const double g = w->ln_in_w ? w->ln_in_w[i] : 1.0, sh = w->ln_in_b ? w->ln_in_b[i] : 0.0;
        const float *row = w->uvqk_w + (size_t)i * W;
        for (int c = 0; c < W; c++) {
            const double x = row[uvqk_src(cb, c)];
            m[c] += g * x;
            bias[c] += sh * x;
        }
    }
    for (int c = 0; c < W; c++) {
        m[c] /= d;
        bias[c] += w->uvqk_b ? w->uvqk_b[uvqk_src(cb, c)] : 0.0;
    }
    hstu_status st = HSTU_OK;
    for (int i = 0; i < d && st == HSTU_OK; i++) { /* (d8 == d: ln_fold's condition) */
        const double g = w->ln_in_w ? w->ln_in_w[i] : 1.0;
        const float *row = w->uvqk_w + (size_t)i * W;
        for (int c = 0; c < W; c++) {
            buf[c] = f2bf_host((float)(g * row[uvqk_src(cb, c)] - m[c]));
            e[c] += st_bf16_to_f32(buf[c]);
        }
        st = ck(cudaMemcpy(L->uvqk_w + (size_t)i * W, buf, (size_t)W * 2, cudaMemcpyHostToDevice),
                "weight upload (cudaMemcpy)", err);
    }
    for (int c = 0; c < W; c++)
        f[c] = (float)e[c], f[W + c] = (float)bias[c];
    if (st == HSTU_OK)
        st = upload_f32(L->fold_e, f, W, W, buf, err);
    if (st == HSTU_OK)
        st = upload_f32(L->uvqk_b, f + W, W, W, buf, err);
    free(m);
    free(f);
    return st;
}

static hstu_status upload_uvqk_bias(const cuda_backend *cb, float *dst, const float *src, hstu_error *err)
{
    float *f = (float *)malloc((size_t)cb->W * 4);
    if (!f)
        return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory for the weight upload");
    for (int c = 0; c < cb->W; c++)
        f[c] = src[uvqk_src(cb, c)];
    hstu_status st =
        ck(cudaMemcpy(dst, f, (size_t)cb->W * 4, cudaMemcpyHostToDevice), "weight upload (cudaMemcpy)", err);
    free(f);
    return st;
}

static hstu_status upload_weights(cuda_backend *cb, hstu_error *err)
{
    const hstu_model *m = cb->model;
    const hstu_config *cfg = &m->cfg;
    int d = cb->d, d8 = cb->d8, W = cb->W, vw = cb->vw;
    /* A conversion buffer of UPLOAD_CHUNK elements, or one row of the widest matrix. */
    size_t widest = (size_t)(W > d8 ? W : d8);
    for (int j = 0; cfg->family == HSTU_FAMILY_RANKING && j < m->n_head; j++)
        widest = (size_t)cb->head_out8[j] > widest ? (size_t)cb->head_out8[j] : widest;
    uint16_t *buf = (uint16_t *)malloc((widest > UPLOAD_CHUNK ? widest : UPLOAD_CHUNK) * 2);
    if (!buf)
        return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory for the weight upload");
    hstu_status st = upload_bf16(cb->d_emb, cfg->item_rows, d, cfg->item_rows, d8, m->item, d, buf, err);
    if (st == HSTU_OK && cfg->family == HSTU_FAMILY_RANKING) {
        st = upload_bf16(cb->d_emb + cb->action_off * d8, cfg->action_rows, d, cfg->action_rows, d8, m->action, d,
                         buf, err);
        for (int j = 0; j < cfg->n_context && st == HSTU_OK; j++)
            st = upload_bf16(cb->d_emb + cb->ctx_off[j] * d8, cfg->context_rows[j], d, cfg->context_rows[j], d8,
                             m->context[j], d, buf, err);
    }
    if (st == HSTU_OK)
        st = upload_bf16(cb->d_pos, cfg->max_positions, d, cfg->max_positions, d8, m->pos, d, buf, err);
    for (int l = 0; l < cfg->n_layers && st == HSTU_OK; l++) {
        const layer_weights *w = &m->layers[l];
        layer_dev *L = &cb->layers[l];
        st = L->fold_e ? upload_folded(cb, L, w, buf, err) : upload_uvqk(cb, L->uvqk_w, w->uvqk_w, buf, err);
        if (st == HSTU_OK)
            st = upload_bf16(L->proj_w, vw, d, vw, d8, w->proj_w, d, buf, err);
        if (st == HSTU_OK && L->ln_in_w)
            st = upload_f32(L->ln_in_w, w->ln_in_w, d, d8, buf, err);
        if (st == HSTU_OK && L->ln_in_b)
            st = upload_f32(L->ln_in_b, w->ln_in_b, d, d8, buf, err);
        if (st == HSTU_OK && L->uvqk_b && !L->fold_e)
            st = upload_uvqk_bias(cb, L->uvqk_b, w->uvqk_b, err);
        if (st == HSTU_OK && L->ln_out_w)
            st = upload_f32(L->ln_out_w, w->ln_out_w, vw, vw, buf, err);
        if (st == HSTU_OK && L->ln_out_b)
            st = upload_f32(L->ln_out_b, w->ln_out_b, vw, vw, buf, err);
        if (st == HSTU_OK && L->proj_b)
            st = cb->x_f32 ? upload_f32((float *)L->proj_b, w->proj_b, d, d8, buf, err)
                           : upload_bf16((bf16_t *)L->proj_b, 1, d, 1, d8, w->proj_b, d, buf, err);
        if (st == HSTU_OK && L->rab_pos)
            st = upload_f32(L->rab_pos, w->rab_pos, 2 * cfg->attn_scale_len - 1, 2 * cfg->attn_scale_len - 1, buf,
                            err);
        if (st == HSTU_OK && L->rab_time)
            st = upload_f32(L->rab_time, w->rab_time, cfg->rab_buckets + 1, cfg->rab_buckets + 1, buf, err);
    }
    if (cfg->family == HSTU_FAMILY_RANKING) {
        int in_w = d;
        for (int j = 0; j < m->n_head && st == HSTU_OK; j++) {
            int out_w = j < cfg->n_hidden ? cfg->hidden[j] : cfg->n_tasks;
            st = upload_bf16(cb->d_head_w[j], in_w, out_w, cb->head_in8[j], cb->head_out8[j], m->head_w[j], out_w,
                             buf, err);
            if (st != HSTU_OK)
                break;
            if (j == m->n_head - 1)
                st = upload_f32((float *)cb->d_head_b[j], m->head_b[j], out_w, cb->head_out8[j], buf, err);
            else
                st = upload_bf16((bf16_t *)cb->d_head_b[j], 1, out_w, 1, cb->head_out8[j], m->head_b[j], out_w, buf,
                                 err);
            in_w = out_w;
        }
    } else if (st == HSTU_OK) {
        st = upload_bf16(cb->d_item_unit, cfg->item_rows, d, cb->n_items8, d8, m->item_unit, d, buf, err);
    }
    free(buf);
    return st;
}

/* ---- GEMM tuning at create ---------------------------------------------- */

/* x[i] = a uniform value in [-1, 1) from a hash of (seed, i), as bf16. */
__global__ void fill_uniform_kernel(bf16_t *x, size_t n, uint32_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 0x9e3779b1u ^ (uint32_t)(i >> 32) * 0x85ebca6bu ^ seed;
        h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
        float v = (float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f;
        x[i] = (bf16_t)(__float_as_uint(v) >> 16);
    }
}

/* Best of three timed runs of a stream's work (after one untimed). */
template <typename F> static hstu_status best_ms(cudaStream_t s, F run, float *ms, hstu_error *err)
{
    cudaEvent_t a = NULL, b = NULL;
    hstu_status st = ck(cudaEventCreate(&a), "cudaEventCreate", err);
    if (st == HSTU_OK)
        st = ck(cudaEventCreate(&b), "cudaEventCreate", err);
    *ms = 0;
    for (int i = 0; i < 4 && st == HSTU_OK; i++) {
        float t = 0;
        if ((st = ck(cudaEventRecord(a, s), "cudaEventRecord", err)) != HSTU_OK || (st = run()) != HSTU_OK ||
            (st = ck(cudaEventRecord(b, s), "cudaEventRecord", err)) != HSTU_OK ||
            (st = ck(cudaEventSynchronize(b), "rate measurement", err)) != HSTU_OK ||
            (st = ck(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime", err)) != HSTU_OK)
            break;
        if (i > 0 && (*ms == 0 || t < *ms))
            *ms = t;
    }
    if (a)
        cudaEventDestroy(a);
    if (b)
        cudaEventDestroy(b);
    return st;
}

/* The uvqk GEMM at max_tokens rows on the tuning's random activations: the
 * compute rate behind the onload plan's prior (cuda_backend_rates). */
static hstu_status time_gemm(cuda_backend *cb, hstu_error *err)
{
    const layer_dev *L = &cb->layers[0];
    int M = cb->max_tokens, W = cb->W, d8 = cb->d8;
    float ms = 0;
    hstu_status st = best_ms(
        cb->stream,
        [&]() {
            return ck_gemm(cb, M, W, d8, cb->d_xn, d8, L->uvqk_w, W, 0, 0.0f, cb->d_uvqk, 0, W, GEMM_EPI_NONE, NULL,
                           "uvqk (rate)", err);
        },
        &ms, err);
    if (st == HSTU_OK && ms > 0)
        cb->gemm_tflops = 2.0 * M * W * d8 / (ms * 1e9);
    return st;
}

/* A pinned copy from the host tier to the page pool (at most 64 MiB, before
 * either holds anything): the link's rate behind the onload plan's prior. */
static hstu_status time_h2d(cuda_backend *cb, hstu_error *err)
{
    size_t n = cb->host_bytes < cb->pool_bytes ? cb->host_bytes : cb->pool_bytes;
    n = n < ((size_t)64 << 20) ? n : ((size_t)64 << 20);
    float ms = 0;
    hstu_status st = best_ms(
        cb->stream,
        [&]() {
            return ck(cudaMemcpyAsync(cb->d_pool, cb->h_pool, n, cudaMemcpyHostToDevice, cb->stream), "cudaMemcpy",
                      err);
        },
        &ms, err);
    if (st == HSTU_OK && ms > 0)
        cb->h2d_gbs = n / (ms * 1e6);
    return st;
}

/* Times cuBLASLt's candidates for the two layer GEMMs at the row counts a
 * forward runs (calls at other M take the nearest tuned M's; see gemm.cu),
 * on the activation buffers, filled with random values for the purpose (they
 * are scratch until the first forward), then clears them again. */
static hstu_status tune_gemms(cuda_backend *cb, hstu_error *err)
{
    const layer_dev *L = &cb->layers[0];
    size_t T = (size_t)cb->max_tokens;
    int d8 = cb->d8, W = cb->W, vw = cb->vw;
    cudaStream_t s = cb->stream;
    fill_uniform_kernel<<<1024, 256, 0, s>>>(cb->d_xn, T * d8, 1u);
    fill_uniform_kernel<<<1024, 256, 0, s>>>(cb->d_y, T * vw, 2u);
    hstu_status st = ck(cudaGetLastError(), "GEMM tuning (fill)", err);
    char why[256];
    /* B from every layer's weights in turn (the region from layer 0's uvqk
     * weights to the last layer's proj weights): cold, as in a forward */
    const layer_dev *Ll = &cb->layers[cb->model->cfg.n_layers - 1];
    const char *w0 = (const char *)L->uvqk_w, *w1 = (const char *)(Ll->proj_w + (size_t)vw * d8);
    gemm_cuda_tune_cold(cb->gemm, w0, (size_t)(w1 - w0));
    /* M: the graphs' row buckets up to 1024 (64, then 128-row steps: forward()),
     * then max_tokens, max_tokens / 2, ... down to above 1024 */
    int Ms[24], nm = 0;
    for (int M = 64; M <= 1024 && M <= cb->max_tokens; M += M < 128 ? 64 : 128)
        Ms[nm++] = M;
    for (int M = cb->max_tokens; M > 1024 && nm < 24; M /= 2)
        Ms[nm++] = M;
    if (nm == 0)
        Ms[nm++] = cb->max_tokens;
    for (int i = 0; i < nm && st == HSTU_OK; i++) {
        int M = Ms[i];
        /* the uvqk GEMM goes to cuBLASLt unless the fused kernel takes it */
        bool fused = cb->fused_uvqk &&
                     gemm_fused_supported(M, W, d8, cb->d_xn, d8, L->uvqk_w, W, cb->d_uvqk, W, NULL, NULL, 0);
        if ((!fused && gemm_cuda_tune(cb->gemm, M, W, d8, cb->d_xn, d8, L->uvqk_w, W, 0, 0.0f, cb->d_uvqk, 0, W,
                                      GEMM_EPI_NONE, NULL, s, why, sizeof why)) ||
            gemm_cuda_tune(cb->gemm, M, d8, vw, cb->d_y, vw, L->proj_w, d8, 0, 1.0f, cb->d_x, cb->x_f32, d8,
                           L->proj_b ? GEMM_EPI_BIAS : GEMM_EPI_NONE, L->proj_b, s, why, sizeof why))
            st = hstu_fail(err, HSTU_ERR_DEVICE, "backend cuda: GEMM tuning: %s", why);
    }
    gemm_cuda_tune_cold(cb->gemm, NULL, 0);
    if (st == HSTU_OK && cb->cc.host_slots > 0)
        st = time_gemm(cb, err);
    size_t act = (size_t)((char *)(cb->d_y + T * vw) - (char *)cb->d_x); /* x, xn, uvqk, attn, y: contiguous */
    if (st == HSTU_OK)
        st = ck(cudaMemsetAsync(cb->d_x, 0, act, s), "cudaMemset", err);
    if (st == HSTU_OK)
        st = ck(cudaStreamSynchronize(s), "GEMM tuning", err);
    return st;
}

/* ---- lifetime ----------------------------------------------------------- */

bool cuda_available(char *why, size_t n)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(why, n, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return false;
    }
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, 0);
    if (e != cudaSuccess) {
        snprintf(why, n, "cannot read the CUDA device's properties (%s)", cudaGetErrorString(e));
        return false;
    }
    if (prop.major != 9 || prop.minor != 0) {
        snprintf(why, n, "this build's kernels are for sm_90a (H100/H200); device 0 (%s) is sm_%d%d", prop.name,
                 prop.major, prop.minor);
        return false;
    }
    return true;
}

void cuda_backend_destroy(cuda_backend *cb)
{
    if (!cb)
        return;
    gemm_cuda_destroy(cb->gemm);
    cudaFree(cb->d_arena);
    cudaFreeHost(cb->h_arena);
    if (cb->stream)
        cudaStreamDestroy(cb->stream);
    if (cb->jobs) {
        cuda_offload_poll(cb, NULL, 0, true);
        for (int i = 0; i < cb->cc.max_pending; i++) {
            if (cb->jobs[i].start)
                cudaEventDestroy(cb->jobs[i].start);
            if (cb->jobs[i].done)
                cudaEventDestroy(cb->jobs[i].done);
        }
        free(cb->jobs);
    }
    for (int l = 0; cb->ev_on && l < cb->model->cfg.n_layers; l++)
        if (cb->ev_on[l])
            cudaEventDestroy(cb->ev_on[l]);
    free(cb->ev_on);
    free(cb->cp_dst);
    free(cb->cp_src);
    free(cb->cp_size);
    if (cb->ev_submit)
        cudaEventDestroy(cb->ev_submit);
    if (cb->ev_on_start)
        cudaEventDestroy(cb->ev_on_start);
    if (cb->ev_fwd_start)
        cudaEventDestroy(cb->ev_fwd_start);
    if (cb->ev_fwd_end)
        cudaEventDestroy(cb->ev_fwd_end);
    for (int i = 0; i < 2; i++)
        if (cb->ev_stack[i])
            cudaEventDestroy(cb->ev_stack[i]);
    if (cb->ev_mark_fork)
        cudaEventDestroy(cb->ev_mark_fork);
    if (cb->ev_mark_join)
        cudaEventDestroy(cb->ev_mark_join);
    if (cb->s_mark)
        cudaStreamDestroy(cb->s_mark);
    if (cb->s_onload)
        cudaStreamDestroy(cb->s_onload);
    if (cb->s_offload)
        cudaStreamDestroy(cb->s_offload);
    for (int i = 0; i < cb->n_graphs; i++) {
        for (int l = 0; cb->graphs[i].exec && l < cb->model->cfg.n_layers; l++)
            if (cb->graphs[i].exec[l])
                cudaGraphExecDestroy(cb->graphs[i].exec[l]);
        free(cb->graphs[i].exec);
    }
    cudaFree(cb->d_pool);
    cudaFree(cb->d_attn_trace);
    cudaFreeHost(cb->h_pool);
    cudaFreeHost(cb->h_off_desc);
    free(cb->layers);
    free(cb);
}

size_t cuda_backend_bytes(const cuda_backend *cb)
{
    return cb ? cb->d_bytes + cb->h_bytes + gemm_cuda_bytes(cb->gemm) + cb->pool_bytes + cb->host_bytes : 0;
}

/* The cache's memory, streams and events (after the arena exists). */
static hstu_status create_cache(cuda_backend *cb, hstu_error *err)
{
    const cuda_cache_desc *cc = &cb->cc;
    int L = cb->model->cfg.n_layers;
    if (cc->n_pages <= 0)
        return HSTU_OK;
    cb->page_bytes = cc->page_elems * 2;
    cb->blk_bytes = cb->page_bytes / (size_t)L;
    cb->pool_bytes = (size_t)cc->n_pages * cb->page_bytes;
    cudaError_t e = cudaMalloc(&cb->d_pool, cb->pool_bytes);
    if (e != cudaSuccess)
        return hstu_fail(err, HSTU_ERR_NOMEM,
                         "backend cuda: cannot allocate the KV page pool: %d pages of %.2f MiB = %.1f MiB of GPU "
                         "memory (%s); lower --cache-mb",
                         cc->n_pages, cb->page_bytes / 1048576.0, cb->pool_bytes / 1048576.0, cudaGetErrorString(e));
    hstu_status st;
    if ((st = ck(cudaStreamCreateWithFlags(&cb->s_onload, cudaStreamNonBlocking), "cudaStreamCreate", err)) ||
        (st = ck(cudaEventCreate(&cb->ev_on_start), "cudaEventCreate", err)))
        return st;
    cb->ev_on = (cudaEvent_t *)calloc((size_t)L, sizeof *cb->ev_on);
    if (!cb->ev_on)
        return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory");
    for (int l = 0; l < L; l++)
        if ((st = ck(cudaEventCreate(&cb->ev_on[l]), "cudaEventCreate", err)) != HSTU_OK)
            return st;
    if (cc->host_slots <= 0)
        return HSTU_OK;
    HSTU_ASSERT(cc->chunk_rows % cc->page_size == 0 && cc->max_pending >= 1);
    const char *ok = getenv("HSTU_CUDA_ONLOAD"), *fk = getenv("HSTU_CUDA_OFFLOAD");
    cb->onload_dma = !(ok && !strcmp(ok, "kernel"));
    cb->offload_dma = !(fk && !strcmp(fk, "kernel"));
    /* (an offload's pages are one user's: at most max_pages too) */
    cb->cp_dst = (void **)calloc((size_t)cb->max_pages, sizeof *cb->cp_dst);
    cb->cp_src = (const void **)calloc((size_t)cb->max_pages, sizeof *cb->cp_src);
    cb->cp_size = (size_t *)calloc((size_t)cb->max_pages, sizeof *cb->cp_size);
    if (!cb->cp_dst || !cb->cp_src || !cb->cp_size)
        return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory");
    cb->ppc = cc->chunk_rows / cc->page_size;
    cb->chunk_bytes = (size_t)cb->ppc * cb->page_bytes;
    cb->host_bytes = (size_t)cc->host_slots * cb->chunk_bytes;
    e = cudaMallocHost(&cb->h_pool, cb->host_bytes);
    if (e != cudaSuccess)
        return hstu_fail(err, HSTU_ERR_NOMEM,
                         "backend cuda: cannot allocate the host tier: %d chunks of %.1f MiB = %.1f MiB of pinned "
                         "host memory (%s); lower --host-cache-mb",
                         cc->host_slots, cb->chunk_bytes / 1048576.0, cb->host_bytes / 1048576.0,
                         cudaGetErrorString(e));
    e = cudaMallocHost(&cb->h_off_desc, (size_t)cc->host_slots * cb->ppc * sizeof(kv_copy));
    if (e != cudaSuccess)
        return cuda_fail(err, "cudaMallocHost", e);
    cb->jobs = (struct cuda_backend::off_job *)calloc((size_t)cc->max_pending, sizeof *cb->jobs);
    if (!cb->jobs)
        return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory");
    for (int i = 0; i < cc->max_pending; i++)
        if ((st = ck(cudaEventCreate(&cb->jobs[i].start), "cudaEventCreate", err)) ||
            (st = ck(cudaEventCreate(&cb->jobs[i].done), "cudaEventCreate", err)))
            return st;
    if ((st = ck(cudaStreamCreateWithFlags(&cb->s_offload, cudaStreamNonBlocking), "cudaStreamCreate", err)) ||
        (st = ck(cudaEventCreateWithFlags(&cb->ev_submit, cudaEventDisableTiming), "cudaEventCreate", err)))
        return st;
    return HSTU_OK;
}

/* HSTU_CUDA_ATTN_TRACE=l, a diagnostic (bench_cache_gpu --profile prints
 * it): layer l's attention stamps its CTAs' phases at every forward. The
 * buffer holds the largest grid: (users x heads) x row blocks x splits. */
static hstu_status create_attn_trace(cuda_backend *cb, int max_tokens, int max_users, hstu_error *err)
{
    static_assert(ATTN_CUDA_MAX_PART_SPLITS >= ATTN_CUDA_MAX_SPLITS, "the parts' splits bound both");
    const char *at = getenv("HSTU_CUDA_ATTN_TRACE");
    if (!at || !*at)
        return HSTU_OK;
    const int L = cb->model->cfg.n_layers;
    char *end = NULL;
    long l = strtol(at, &end, 10);
    if (*end || l < 0 || l >= L)
        return hstu_fail(err, HSTU_ERR_ARG, "HSTU_CUDA_ATTN_TRACE=%s: give a layer index from 0 to %d, or unset it",
                         at, L - 1);
    cb->attn_trace_layer = (int)l;
    const size_t ctas = (size_t)max_users * (size_t)cb->model->cfg.n_heads * (size_t)(max_tokens / 128 + 1) *
                        ATTN_CUDA_MAX_PART_SPLITS;
    cb->attn_trace_n = ctas * ATTN_CUDA_TRACE_POINTS;
    hstu_status st = ck(cudaMalloc((void **)&cb->d_attn_trace, cb->attn_trace_n * 8), "the attention trace", err);
    return st != HSTU_OK ? st : ck(cudaMemset(cb->d_attn_trace, 0, cb->attn_trace_n * 8), "the attention trace", err);
}

hstu_status cuda_backend_create(const hstu_model *m, int max_tokens, int max_users, int max_pages,
                                const cuda_cache_desc *cache, cuda_backend **out, hstu_error *err)
{
    *out = NULL;
    const hstu_config *cfg = &m->cfg;
    char why[256];
    if (!cuda_available(why, sizeof why))
        return hstu_fail(err, HSTU_ERR_UNSUPPORTED, "backend cuda: %s", why);
    if (!attn_cuda_supported(cfg->d_qk, cfg->d_v, why, sizeof why))
        return hstu_fail(err, HSTU_ERR_UNSUPPORTED,
                         "backend cuda: this model's head widths (d_qk %d, d_v %d) are not supported by the CUDA "
                         "attention: %s; use --backend cpu",
                         cfg->d_qk, cfg->d_v, why);
    int W = hstu_config_uvqk_width(cfg), vw = cfg->n_heads * cfg->d_v;
    if (W % 8 || vw % 8)
        return hstu_fail(err, HSTU_ERR_UNSUPPORTED,
                         "backend cuda: uvqk width %d and H*d_v %d must be multiples of 8", W, vw);
    int64_t emb_rows = cfg->item_rows + (cfg->family == HSTU_FAMILY_RANKING ? cfg->action_rows : 0);
    for (int j = 0; cfg->family == HSTU_FAMILY_RANKING && j < cfg->n_context; j++)
        emb_rows += cfg->context_rows[j];
    if (emb_rows > INT32_MAX - 8)
        return hstu_fail(err, HSTU_ERR_UNSUPPORTED,
                         "backend cuda: %lld embedding rows in all tables; at most %d are supported",
                         (long long)emb_rows, INT32_MAX - 8);
    if (cudaSetDevice(0) != cudaSuccess)
        return hstu_fail(err, HSTU_ERR_DEVICE, "backend cuda: cannot use device 0");

    cuda_backend *cb = (cuda_backend *)calloc(1, sizeof *cb);
    if (!cb)
        return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory");
    hstu_status st = HSTU_OK;
    cb->model = m;
    cb->max_tokens = max_tokens;
    cb->max_users = max_users;
    cb->max_pages = max_pages;
    if (cache)
        cb->cc = *cache;
    cb->d = cfg->d_model;
    cb->d8 = pad8(cfg->d_model);
    cb->W = W;
    cb->vw = vw;
    cb->kw = cfg->n_heads * cfg->d_qk;
    cb->emb_rows = emb_rows;
    {
        /* The residual stream's type: bf16 unless HSTU_CUDA_RESIDUAL=f32
         * (docs/cuda.md: accuracy of both, and the time bf16 saves). */
        const char *res = getenv("HSTU_CUDA_RESIDUAL");
        cb->x_f32 = res && (!strcmp(res, "f32") || !strcmp(res, "fp32"));
        /* The fused uvqk GEMM only with HSTU_CUDA_FUSED_GEMM=1: it is
         * slower than cuBLASLt + the bias_silu pass today (docs/cuda.md,
         * "The fused uvqk GEMM"). */
        const char *fg = getenv("HSTU_CUDA_FUSED_GEMM");
        cb->fused_uvqk = fg && !strcmp(fg, "1");
        /* Layers 1.. fold their input LayerNorm into the uvqk GEMM (docs/cuda.md,
         * "The LayerNorm folded into the uvqk GEMM"), unless HSTU_CUDA_LN_FOLD=0:
         * it reads the bf16 residual itself, and its consumers take the rows'
         * statistics from the v|k pass (which the fused GEMM's epilogue and the
         * pass's vector shapes would not give them). */
        const char *lf = getenv("HSTU_CUDA_LN_FOLD");
        cb->ln_fold = !(lf && !strcmp(lf, "0")) && !cb->x_f32 && !cb->fused_uvqk && cb->d8 == cb->d && cb->d <= 2048;
        /* The attention's TMA form over pages (docs/attention_cuda.md, "Pages
         * by TMA"), unless HSTU_CUDA_ATTN_TMA_PAGES=0 (the cp.async loads). */
        const char *tp = getenv("HSTU_CUDA_ATTN_TMA_PAGES");
        cb->attn_tma_pages = !(tp && !strcmp(tp, "0"));
        /* Split-KV parts through L2 into SiLU(u) * LN(attn) (docs/cuda.md,
         * "The attention's split parts"), unless HSTU_CUDA_ATTN_PARTS=0.
         * A split call's planes hold S x T x H x Dv values and S x T x H
         * scales: S x (row blocks x H) is at most the SMs, so SMs x 128 x Dv
         * values and SMs x 128 scales hold any call's (attn_cuda_splits
         * takes fewer splits where a call's do not fit). */
        const char *ap = getenv("HSTU_CUDA_ATTN_PARTS");
        const int n_sm = cuda_sm_count() > 0 ? cuda_sm_count() : 1;
        size_t most = (size_t)n_sm * 128 * (size_t)cfg->d_v, all = (size_t)ATTN_CUDA_MAX_PART_SPLITS * max_tokens * vw;
        bool on = !(ap && !strcmp(ap, "0")) && ln_mul_parts_supported(vw, cfg->d_v, vw, W, vw) && vw % 8 == 0;
        cb->parts_halves = on ? (most < all ? most : all) : 0;
        cb->parts_scales = on ? (size_t)n_sm * 128 : 0;
        cb->parts_always = on && ap && !strcmp(ap, "all");
    }
    if (cfg->family == HSTU_FAMILY_RANKING) {
        cb->action_off = cfg->item_rows;
        int64_t off = cfg->item_rows + cfg->action_rows;
        for (int j = 0; j < cfg->n_context; j++) {
            cb->ctx_off[j] = off;
            off += cfg->context_rows[j];
        }
        int in_w = cfg->d_model;
        cb->head_w8 = cb->d8;
        for (int j = 0; j < m->n_head; j++) {
            int out_w = j < cfg->n_hidden ? cfg->hidden[j] : cfg->n_tasks;
            cb->head_in8[j] = pad8(in_w);
            cb->head_out8[j] = pad8(out_w);
            if (cb->head_out8[j] > cb->head_w8)
                cb->head_w8 = cb->head_out8[j];
            in_w = out_w;
        }
        cb->n_tasks8 = pad8(cfg->n_tasks);
        /* The head in one kernel (one hidden layer of widths the kernel
         * takes), at the end of the whole stack's graph, for batches of at
         * most FUSED_HEAD_ROWS rows: faster than the four launches at
         * batch 1 (256 candidates in 384 rows), slower at batch 2 (512
         * candidates: 32 clusters of 8, two waves) and 8 (docs/cuda.md,
         * "The fused ranking head").
         * HSTU_CUDA_FUSED_HEAD=1: at any size; 0: never. */
        const char *fh = getenv("HSTU_CUDA_FUSED_HEAD");
        bool fits = m->n_head == 2 && head_fused_supported(cb->head_in8[0], cb->head_out8[0], cb->n_tasks8);
        cb->fused_head_rows = !fits || (fh && !strcmp(fh, "0")) ? 0
                              : fh && !strcmp(fh, "1")          ? INT_MAX
                                                                : FUSED_HEAD_ROWS;
    } else {
        cb->n_items8 = pad8(cfg->item_rows);
        size_t rows = SCORE_FLOATS / (size_t)cb->n_items8;
        cb->score_rows = rows < 1 ? 1 : rows > (size_t)max_users ? max_users : (int)rows;
        size_t k_one = (size_t)(cfg->item_rows - 1 < TOPK_MAX_K ? cfg->item_rows - 1 : TOPK_MAX_K);
        size_t all = (size_t)max_users * k_one;
        cb->topk_cap = all < TOPK_OUT_MIN ? all : TOPK_OUT_MIN;
        if (cb->topk_cap < k_one)
            cb->topk_cap = k_one;
        if (cb->topk_cap < 1)
            cb->topk_cap = 1;
    }
    cb->stage_cap = stage_capacity((size_t)max_tokens, (size_t)max_users, (size_t)max_pages);
    stage_fixed(cb);
    cb->layers = (layer_dev *)calloc((size_t)cfg->n_layers, sizeof *cb->layers);
    if (!cb->layers) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory");
        goto fail;
    }

    {
        carver c = {0, 0};
        layout_device(cb, &c);
        cb->d_bytes = c.used;
        cudaError_t e = cudaMalloc(&cb->d_arena, cb->d_bytes);
        if (e != cudaSuccess) {
            st = hstu_fail(err, HSTU_ERR_NOMEM,
                           "backend cuda: cannot allocate %.1f MiB of GPU memory for the weights and activations "
                           "of %d tokens (%s); lower --max-tokens",
                           cb->d_bytes / 1048576.0, max_tokens, cudaGetErrorString(e));
            goto fail;
        }
        c.base = (uintptr_t)cb->d_arena;
        c.used = 0;
        layout_device(cb, &c);

        carver h = {0, 0};
        layout_host(cb, &h);
        cb->h_bytes = h.used;
        e = cudaMallocHost(&cb->h_arena, cb->h_bytes);
        if (e != cudaSuccess) {
            st = hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: cannot allocate %.1f MiB of pinned host memory (%s)",
                           cb->h_bytes / 1048576.0, cudaGetErrorString(e));
            goto fail;
        }
        h.base = (uintptr_t)cb->h_arena;
        h.used = 0;
        layout_host(cb, &h);
        if (cb->h_logits &&
            (st = ck(cudaHostGetDevicePointer((void **)&cb->dh_logits, cb->h_logits, 0), "mapping the scores",
                     err)) != HSTU_OK)
            goto fail;
        if ((st = ck(cudaHostGetDevicePointer((void **)&cb->dh_stage, cb->h_stage, 0), "mapping the staging",
                     err)) != HSTU_OK)
            goto fail;
        cb->h_upload = (stage_upload_list *)cb->h_stage;
    }
    /* Padding columns of the activations must hold finite values (zeros):
     * GEMMs read them against zero weight rows. */
    if ((st = ck(cudaMemset(cb->d_arena, 0, cb->d_bytes), "cudaMemset", err)) != HSTU_OK)
        goto fail;
    if ((st = ck(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking), "cudaStreamCreate", err)) !=
            HSTU_OK ||
        (st = ck(cudaEventCreate(&cb->ev_fwd_start), "cudaEventCreate", err)) != HSTU_OK ||
        (st = ck(cudaEventCreate(&cb->ev_fwd_end), "cudaEventCreate", err)) != HSTU_OK ||
        (st = ck(cudaEventCreate(&cb->ev_stack[0]), "cudaEventCreate", err)) != HSTU_OK ||
        (st = ck(cudaEventCreate(&cb->ev_stack[1]), "cudaEventCreate", err)) != HSTU_OK ||
        (st = ck(cudaStreamCreateWithFlags(&cb->s_mark, cudaStreamNonBlocking), "cudaStreamCreate", err)) !=
            HSTU_OK ||
        (st = ck(cudaEventCreateWithFlags(&cb->ev_mark_fork, cudaEventDisableTiming), "cudaEventCreate", err)) !=
            HSTU_OK ||
        (st = ck(cudaEventCreateWithFlags(&cb->ev_mark_join, cudaEventDisableTiming), "cudaEventCreate", err)) !=
            HSTU_OK)
        goto fail;
    /* (the fused head's shared-memory limits, before any capture records it) */
    if (cb->fused_head_rows > 0 && (st = ck(head_fused_prepare(), "the fused head's setup", err)) != HSTU_OK)
        goto fail;
    if (gemm_cuda_create(GEMM_WORKSPACE, &cb->gemm, why, sizeof why) != 0) {
        st = hstu_fail(err, HSTU_ERR_DEVICE, "backend cuda: %s", why);
        goto fail;
    }
    {
        /* Programmatic edges into the layers' cuBLASLt GEMMs inside the
         * graphs, for the GEMMs whose kernels were seen to wait (docs/cuda.md,
         * "Programmatic edges into the GEMMs"); off with HSTU_CUDA_PDL_GEMM=0
         * or HSTU_CUDA_PDL=0. Before tune_gemms, which probes. */
        const char *pg = getenv("HSTU_CUDA_PDL_GEMM");
        gemm_cuda_set_graph_pdl(cb->gemm, cb->cc.graphs && !(pg && !strcmp(pg, "0")) && cuda_pdl_on());
    }
    if (cb->fused_uvqk && (st = ck(gemm_fused_prepare(), "the fused GEMM's launch attributes", err)) != HSTU_OK)
        goto fail;
    if ((st = upload_weights(cb, err)) != HSTU_OK)
        goto fail;
    /* The uploads and the memset ran on the legacy stream (a pageable
     * cudaMemcpy may return before its DMA lands); the forward's stream does
     * not wait for it, so wait here, once. */
    if ((st = ck(cudaDeviceSynchronize(), "weight upload", err)) != HSTU_OK)
        goto fail;
    if ((st = tune_gemms(cb, err)) != HSTU_OK)
        goto fail;
    if ((st = create_cache(cb, err)) != HSTU_OK)
        goto fail;
    if (cb->h_pool && (st = time_h2d(cb, err)) != HSTU_OK)
        goto fail;
    if ((st = create_attn_trace(cb, max_tokens, max_users, err)) != HSTU_OK)
        goto fail;
    *out = cb;
    return HSTU_OK;
fail:
    cuda_backend_destroy(cb);
    return st;
}

/* ---- the forward pass --------------------------------------------------- */

/* The batch's metadata to the device (stage_upload.h): the regions that
 * h_upload lists, read when the kernel runs. */
static hstu_status upload_stage(cuda_backend *cb, int ctas, hstu_error *err)
{
    return ck(stage_upload_cuda((const stage_upload_list *)cb->dh_stage, cb->dh_stage, cb->d_stage, ctas,
                                cb->stream),
              "metadata upload", err);
}

/* Marks the start (i = 0) or end (1) of the embedding and layer stack in
 * the stream. In a capture the mark is a branch of the graph: an event
 * record node (external: recorded at every replay) after the node before
 * it, on s_mark, which nothing waits for until the capture's end
 * (stack_mark_join). In the chain itself such a node held the next kernel
 * about 4 us (traced at batch 1: from the upload's end to the embedding's
 * start) and cut the programmatic edge between them. */
static hstu_status stack_mark(cuda_backend *cb, int i, bool capture, hstu_error *err)
{
    if (!capture)
        return ck(cudaEventRecord(cb->ev_stack[i], cb->stream), "cudaEventRecord", err);
    hstu_status st = ck(cudaEventRecord(cb->ev_mark_fork, cb->stream), "cudaEventRecord", err);
    if (st == HSTU_OK)
        st = ck(cudaStreamWaitEvent(cb->s_mark, cb->ev_mark_fork, 0), "cudaStreamWaitEvent", err);
    if (st == HSTU_OK)
        st = ck(cudaEventRecordWithFlags(cb->ev_stack[i], cb->s_mark, cudaEventRecordExternal), "cudaEventRecord",
                err);
    return st;
}

/* A capture that branched off a stack mark joins the branch back as its
 * last dependency (a capture must end with every stream it forked joined). */
static hstu_status stack_mark_join(cuda_backend *cb, hstu_error *err)
{
    hstu_status st = ck(cudaEventRecord(cb->ev_mark_join, cb->s_mark), "cudaEventRecord", err);
    return st != HSTU_OK ? st : ck(cudaStreamWaitEvent(cb->stream, cb->ev_mark_join, 0), "cudaStreamWaitEvent", err);
}

/* The embedding and layer 0's LayerNorm of T rows. */
static hstu_status embed_forward(cuda_backend *cb, int T, const staged *sg, hstu_error *err)
{
    const hstu_config *cfg = &cb->model->cfg;
    const layer_dev *L0 = &cb->layers[0]; /* every model has a layer */
    return ck(embed_ln_cuda(T, cb->d, cb->d_emb, cb->d8, (const int *)DEV(cb, sg->tok_row), cb->d_pos, cb->d8,
                            (const int *)DEV(cb, sg->tok_pos), sqrtf((float)cb->d), cb->d_x, cb->x_f32, cb->d8,
                            L0->ln_in_w, L0->ln_in_b, cfg->ln_eps, cb->d_xn, cb->d8, cb->stream),
              "embedding + LayerNorm", err);
}

static hstu_status issue_onload(cuda_backend *cb, int through, hstu_error *err);

/* Layer l's onloaded pages must have landed before its attention (layer-wise
 * onload only; otherwise the compute stream waited for all of it at start).
 * By the copy engines, layer l's copies are issued here, just before the
 * wait (issue_onload). */
static hstu_status wait_onload_layer(cuda_backend *cb, int l, hstu_error *err)
{
    if (!cb->onload_pending || !cb->cc.layerwise)
        return HSTU_OK;
    hstu_status st = cb->onload_dma ? issue_onload(cb, l, err) : HSTU_OK;
    return st != HSTU_OK ? st : ck(cudaStreamWaitEvent(cb->stream, cb->ev_on[l], 0), "cudaStreamWaitEvent", err);
}

static hstu_status layer_forward(cuda_backend *cb, int T, int l, const attn_cuda_params *ap_base, const staged *sg,
                                 bool append, bool wait_onload, hstu_error *err)
{
    const hstu_config *cfg = &cb->model->cfg;
    const layer_dev *L = &cb->layers[l];
    int d = cb->d, d8 = cb->d8, W = cb->W, vw = cb->vw, kw = cb->kw;
    cudaStream_t s = cb->stream;
    hstu_status st;
    /* layer 0's LN(x) came with the embedding; a folded layer's GEMM reads x
     * itself, and the pass below takes the rows' statistics (ln_fold) */
    const bool folded = L->fold_e != NULL;
    const ln_fold fold = {L->fold_e, cb->d_ln_stats, (const bf16_t *)cb->d_x, d8, d, cfg->ln_eps};
    if (l > 0 && !folded &&
        (st = ck(cb->x_f32 ? layernorm_cuda(T, d, (const float *)cb->d_x, d8, L->ln_in_w, L->ln_in_b, cfg->ln_eps,
                                            cb->d_xn, d8, s)
                           : layernorm_bf16_cuda(T, d, (const bf16_t *)cb->d_x, d8, L->ln_in_w, L->ln_in_b,
                                                 cfg->ln_eps, cb->d_xn, d8, s),
                 "LayerNorm", err)) != HSTU_OK)
        return st;
    /* Columns u|q|v|k (upload_uvqk). v|k: bias, and SiLU when silu_uvqk =
     * all, with the new history rows' append to their pages: in one pass
     * after cuBLASLt's GEMM, or with HSTU_CUDA_FUSED_GEMM=1 (where its
     * shapes allow) in the fused GEMM's epilogue. The attention below reads the cached
     * rows from the pages and this call's rows from the dense activations, so
     * the two do not wait for each other. u's bias and SiLU are applied where
     * u is read (ln_mul). q's are applied by the attention as it loads Q,
     * except when it splits each row block 3 ways or more (a few rows over
     * long histories): every split would apply them to the same Q tile on
     * its critical path, and this pass (or epilogue) takes q's columns
     * instead, at little cost for so few rows (docs/cuda.md, "Where q is
     * activated"). */
    const bool silu_all = cfg->silu_uvqk == HSTU_SILU_ALL, q_here = ap_base->splits >= 3;
    const int act0 = q_here ? vw : vw + kw; /* the first column activated here */
    size_t P = (size_t)cb->cc.page_size, k_off = (size_t)l * P * (size_t)(kw + vw), v_off = k_off + P * (size_t)kw;
    bias_silu_pages pages = {(const int64_t *)DEV(cb, sg->row_slot), cb->d_pool, cb->cc.page_elems, k_off, v_off,
                             (int)P, kw, vw, vw + kw - act0};
    gemm_fused_epilogue fe = {L->uvqk_b, act0, silu_all, append ? &pages : NULL, vw + kw};
    ln_fold pass_fold = fold;
    pass_fold.e = folded ? L->fold_e + act0 : NULL;
    const bf16_t *gemm_a = folded ? (const bf16_t *)cb->d_x : cb->d_xn;
    if (!folded && cb->fused_uvqk &&
        gemm_fused_supported(T, W, d8, cb->d_xn, d8, L->uvqk_w, W, cb->d_uvqk, W, &fe, NULL, 0)) {
        if ((st = ck(gemm_fused_cuda(T, W, d8, cb->d_xn, d8, L->uvqk_w, W, cb->d_uvqk, W, &fe, s),
                     "uvqk GEMM with bias+SiLU and KV append", err)) != HSTU_OK)
            return st;
    } else if ((st = ck_gemm(cb, T, W, d8, gemm_a, d8, L->uvqk_w, W, 0, 0.0f, cb->d_uvqk, 0, W, GEMM_EPI_NONE,
                             NULL, "uvqk", err)) != HSTU_OK ||
               (st = ck(bias_silu_cuda(T, W - act0, cb->d_uvqk + act0, W, L->uvqk_b ? L->uvqk_b + act0 : NULL,
                                       silu_all, append ? &pages : NULL, folded ? &pass_fold : NULL, s),
                        "bias+SiLU and KV append", err)) != HSTU_OK)
        return st;
    if (wait_onload && (st = wait_onload_layer(cb, l, err)) != HSTU_OK)
        return st;
    attn_cuda_params ap = *ap_base;
    ap.q = cb->d_uvqk + vw;
    ap.q_bias = L->uvqk_b && !q_here ? L->uvqk_b + vw : NULL;
    ap.q_silu = silu_all && !q_here;
    ap.q_fold_e = folded && !q_here ? L->fold_e + vw : NULL;
    ap.q_fold_stats = folded && !q_here ? cb->d_ln_stats : NULL;
    ap.k = cb->d_uvqk + 2 * vw + kw;
    ap.v = cb->d_uvqk + vw + kw;
    ap.ld_qkv = W;
    ap.n_rows = T;
    ap.pos_w = L->rab_pos;
    ap.ts_w = L->rab_time;
    ap.out = cb->d_attn;
    ap.ld_out = vw;
    if (cb->d_attn_trace && l == cb->attn_trace_layer)
        ap.trace = cb->d_attn_trace;
    if (cb->d_pool) {
        ap.k_off = k_off;
        ap.v_off = v_off;
    }
    if ((st = ck(attn_fwd_cuda(&ap, s), "attention", err)) != HSTU_OK)
        return st;
    /* A split's parts (planes 0..S-1) are added here instead of in a cluster */
    const ln_mul_parts_src src = {ap.parts, ap.parts_scale, ap.parts_plane, ap.scale_plane, ap.ld_parts, ap.Dv,
                                  attn_cuda_parts_used(&ap), 1.0f / (float)ap.N};
    const ln_fold *uf = folded ? &fold : NULL; /* (u: the first columns) */
    if ((st = ck(src.S > 0 ? ln_mul_parts_cuda(T, vw, &src, cb->d_uvqk, W, L->uvqk_b, uf, L->ln_out_w, L->ln_out_b,
                                               cfg->ln_eps, cb->d_y, vw, s)
                             : ln_mul_cuda(T, vw, cb->d_attn, vw, cb->d_uvqk, W, L->uvqk_b, uf, L->ln_out_w,
                                           L->ln_out_b, cfg->ln_eps, cb->d_y, vw, s),
                 "u * LN(attn)", err)) != HSTU_OK)
        return st;
    return ck_gemm(cb, T, d8, vw, cb->d_y, vw, L->proj_w, d8, 0, 1.0f, cb->d_x, cb->x_f32, d8,
                   L->proj_b ? GEMM_EPI_BIAS : GEMM_EPI_NONE, L->proj_b, "proj", err);
}

/* The end of a forward's GPU work: waits for it and marks its span's end. */
static hstu_status sync_forward(cuda_backend *cb, hstu_error *err)
{
    hstu_status st = ck(cudaEventRecord(cb->ev_fwd_end, cb->stream), "cudaEventRecord", err);
    if (st == HSTU_OK && cb->overlap) { /* the caller's host work, while the GPU runs */
        void (*fn)(void *) = cb->overlap;
        cb->overlap = NULL;
        fn(cb->overlap_arg);
    }
    return st != HSTU_OK ? st : ck(cudaStreamSynchronize(cb->stream), "the forward pass", err);
}

/* Whether the whole stack's graph of a bucket of T rows ends with the
 * ranking head: the fused head (up to fused_head_rows), else the four
 * launches run for the bucket's T rows with the candidates' count read on the
 * device, up to HEAD_GRAPH_ROWS rows (past it the padded rows' GEMM work
 * outweighs the 4-5 us of launch gaps a graph saves). */
static bool head_in_graph(const cuda_backend *cb, bool layered, int T)
{
    return !layered && (T <= cb->fused_head_rows || T <= HEAD_GRAPH_ROWS);
}

/* The ranking head in one kernel (head_fused_cuda.h) for up to max_rows
 * candidates; it reads their count from the staging (sg->n_rows), so a
 * graph can hold it. Scores (or logits) go straight to mapped host memory. */
static hstu_status head_fused_launch(cuda_backend *cb, int max_rows, const staged *sg, bool logits, hstu_error *err)
{
    head_fused_params hp = {
        .width = cb->d, .x = cb->d_x, .x_f32 = cb->x_f32, .ldx = cb->d8,
        .rows = (const int *)DEV(cb, sg->rows), .n_rows = (const int *)DEV(cb, sg->n_rows), .max_rows = max_rows,
        .w1 = cb->d_head_w[0], .in8 = cb->head_in8[0], .h8 = cb->head_out8[0],
        .b1 = (const bf16_t *)cb->d_head_b[0], .w2 = cb->d_head_w[1], .n_tasks8 = cb->n_tasks8,
        .b2 = (const float *)cb->d_head_b[1], .n_tasks = cb->model->cfg.n_tasks, .sigmoid = !logits,
        .out = cb->dh_logits, .scratch = cb->d_head_scratch,
    };
    return ck(head_fused_cuda(&hp, cb->stream), "the fused ranking head", err);
}

/* The ranking head as four launches: the candidates' gather and L2 norm,
 * one cuBLASLt GEMM per MLP layer (bias and ReLU in their epilogues), the
 * scores into mapped host memory. Any number of hidden layers. In a graph
 * (on_device) it runs for M = the bucket's rows, and the gather and the
 * scores read the candidates' count from the staging (rows past it are
 * zeros through the GEMMs, and no score of theirs is written). */
static hstu_status head_ranking_gemms(cuda_backend *cb, int M, const staged *sg, bool logits, bool on_device,
                                      hstu_error *err)
{
    const hstu_model *m = cb->model;
    const hstu_config *cfg = &m->cfg;
    cudaStream_t s = cb->stream;
    hstu_status st;
    const int *rows = (const int *)DEV(cb, sg->rows), *count = on_device ? (const int *)DEV(cb, sg->n_rows) : NULL;
    if ((st = ck(cb->x_f32 ? gather_l2norm_cuda(M, cb->d, (const float *)cb->d_x, cb->d8, rows, cb->d_mlp_a,
                                                cb->head_in8[0], count, s)
                           : gather_l2norm_bf16_cuda(M, cb->d, (const bf16_t *)cb->d_x, cb->d8, rows, cb->d_mlp_a,
                                                     cb->head_in8[0], count, s),
                 "candidate gather + L2 norm", err)) != HSTU_OK)
        return st;
    bf16_t *in = cb->d_mlp_a, *out = cb->d_mlp_b;
    for (int j = 0; j < m->n_head; j++) {
        bool last = j == m->n_head - 1;
        if (last)
            st = ck_gemm(cb, M, cb->head_out8[j], cb->head_in8[j], in, cb->head_in8[j], cb->d_head_w[j],
                         cb->head_out8[j], 0, 0.0f, cb->d_logits, 1, cb->n_tasks8, GEMM_EPI_BIAS, cb->d_head_b[j],
                         "head", err);
        else
            st = ck_gemm(cb, M, cb->head_out8[j], cb->head_in8[j], in, cb->head_in8[j], cb->d_head_w[j],
                         cb->head_out8[j], 0, 0.0f, out, 0, cb->head_out8[j], GEMM_EPI_RELU_BIAS, cb->d_head_b[j],
                         "head", err);
        if (st != HSTU_OK)
            return st;
        bf16_t *t = in;
        in = out;
        out = t;
    }
    /* The scores go straight into pinned host memory (a copy after the
     * GEMM would start 6 us after it), sigmoid on the GPU. */
    return ck(scores_out_cuda(M, cfg->n_tasks, cb->d_logits, cb->n_tasks8, !logits, cb->dh_logits, count, s),
              "scores", err);
}

/* The ranking head's launches for M rows: the fused kernel up to
 * fused_head_rows, else the four launches (on_device: inside a graph, with
 * the candidates' count read from the staging). */
static hstu_status head_ranking_launch(cuda_backend *cb, int M, const staged *sg, bool logits, bool on_device,
                                       hstu_error *err)
{
    return M <= cb->fused_head_rows ? head_fused_launch(cb, M, sg, logits, err)
                                    : head_ranking_gemms(cb, M, sg, logits, on_device, err);
}

/* The ranking head (unless the whole stack's graph ran it: in_graph), then
 * the wait for the GPU and the scores into each user's result. */
static hstu_status head_ranking(cuda_backend *cb, user_plan *plans, int B, int M, const staged *sg, bool logits,
                                bool in_graph, hstu_error *err)
{
    const int nt = cb->model->cfg.n_tasks;
    hstu_status st = HSTU_OK;
    if (!in_graph)
        st = head_ranking_launch(cb, M, sg, logits, false, err);
    if (st != HSTU_OK || (st = sync_forward(cb, err)) != HSTU_OK)
        return st;
    const float *z = cb->h_logits;
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        memcpy(p->res->scores, z, sizeof(float) * (size_t)p->cand * nt);
        z += (size_t)p->cand * nt;
    }
    return HSTU_OK;
}

/* Top-k for users [0, B): groups of at most score_rows users whose results
 * fit topk_cap; one GEMM, one selection and one copy back per group. */
static hstu_status head_retrieval(cuda_backend *cb, user_plan *plans, int B, const staged *sg, hstu_error *err)
{
    const int *h_k = sg->k, *h_off = sg->off;
    const hstu_config *cfg = &cb->model->cfg;
    cudaStream_t s = cb->stream;
    hstu_status st;
    int d8 = cb->d8;
    const int *rows = (const int *)DEV(cb, sg->rows);
    if ((st = ck(cb->x_f32 ? gather_l2norm_cuda(B, cb->d, (const float *)cb->d_x, d8, rows, cb->d_users, d8, NULL, s)
                           : gather_l2norm_bf16_cuda(B, cb->d, (const bf16_t *)cb->d_x, d8, rows, cb->d_users, d8,
                                                     NULL, s),
                 "user gather + L2 norm", err)) != HSTU_OK)
        return st;
    for (int g0 = 0; g0 < B;) {
        int g1 = g0 + 1;
        size_t total = (size_t)h_k[g0];
        while (g1 < B && g1 - g0 < cb->score_rows && h_off[g1] != 0) {
            total += (size_t)h_k[g1];
            g1++;
        }
        int G = g1 - g0;
        if ((st = ck_gemm(cb, G, cb->n_items8, d8, cb->d_users + (size_t)g0 * d8, d8, cb->d_item_unit, d8, 1, 0.0f,
                          cb->d_scores, 1, cb->n_items8, GEMM_EPI_NONE, NULL, "top-k scores", err)) != HSTU_OK)
            return st;
        topk_cuda_params tp = {
            .B = G, .n_items = (int)cfg->item_rows, .ld = cb->n_items8, .scores = cb->d_scores,
            .exclude = (const int *)DEV(cb, sg->excl),
            .excl_begin = (const int *)DEV(cb, sg->excl_b + g0), .excl_end = (const int *)DEV(cb, sg->excl_e + g0),
            .k = (const int *)DEV(cb, h_k + g0), .out_off = (const int *)DEV(cb, h_off + g0),
            .ids = cb->d_topk_ids, .vals = cb->d_topk_vals, .n_out = cb->d_topk_n,
        };
        if ((st = ck(topk_cuda(&tp, s), "top-k", err)) != HSTU_OK)
            return st;
        if ((st = ck(cudaMemcpyAsync(cb->h_topk_ids, cb->d_topk_ids, total * 4, cudaMemcpyDeviceToHost, s),
                     "top-k copy", err)) != HSTU_OK ||
            (st = ck(cudaMemcpyAsync(cb->h_topk_vals, cb->d_topk_vals, total * 4, cudaMemcpyDeviceToHost, s),
                     "top-k copy", err)) != HSTU_OK ||
            (st = ck(cudaMemcpyAsync(cb->h_topk_n, cb->d_topk_n, (size_t)G * 4, cudaMemcpyDeviceToHost, s),
                     "top-k copy", err)) != HSTU_OK)
            return st;
        if ((st = sync_forward(cb, err)) != HSTU_OK)
            return st;
        for (int b = g0; b < g1; b++) {
            hstu_result *r = plans[b].res;
            int n = cb->h_topk_n[b - g0];
            int *ids = cb->h_topk_ids + h_off[b];
            float *vals = cb->h_topk_vals + h_off[b];
            if (n > TOPK_CUDA_SORT_MAX)
                topk_cuda_sort_host(ids, vals, n);
            for (int i = 0; i < n; i++) {
                r->topk_ids[i] = ids[i];
                r->topk_scores[i] = vals[i];
            }
            r->n_topk = n;
        }
        g0 = g1;
    }
    return HSTU_OK;
}

/* The embedding-table rows and positions of one user's history rows
 * [c, hist), into row[0..) and pos[0..). Retrieval's rows are its items;
 * ranking's are its context features, then item and action in turns (the
 * pairs written two at a time: at a batch of eight 4096-token users this
 * loop is on the forward's critical path, the GPU waiting for it). */
static void pack_history(const cuda_backend *cb, const hstu_request *r, bool retr, int c, int hist, int max_pos,
                         int *row, int *pos)
{
    int i = c;
    if (retr) {
        for (; i < hist; i++)
            row[i - c] = (int)r->items[i];
    } else {
        const int k = cb->model->cfg.n_context, act = (int)cb->action_off;
        for (; i < hist && i < k; i++)
            row[i - c] = (int)(cb->ctx_off[i] + r->context[i]);
        if (i < hist && (i - k) % 2) { /* starts on an action */
            row[i - c] = act + (int)r->actions[(i - k) / 2];
            i++;
        }
        const int64_t *items = r->items + (i - k) / 2, *actions = r->actions + (i - k) / 2;
        int *out = row + (i - c);
        const int pairs = (hist - i) / 2;
        for (int j = 0; j < pairs; j++) {
            out[2 * j] = (int)items[j];
            out[2 * j + 1] = act + (int)actions[j];
        }
        i += 2 * pairs;
        if (i < hist) /* ends on an item */
            row[i - c] = (int)r->items[(i - k) / 2];
    }
    for (i = c; i < hist && i < max_pos; i++)
        pos[i - c] = i;
    for (; i < hist; i++)
        pos[i - c] = max_pos;
}

/* The layers [lo, hi) of a bucket's graph i. A layered entry has one graph
 * per layer. The whole stack comes in two graphs: the embedding and layer
 * 0, then the other layers. Launching a graph takes the host about 0.5 us
 * per kernel before the GPU starts it, so the GPU starts on the short first
 * graph while the host launches the long second one. */
static void graph_part(const cuda_backend::graph_entry *g, int L, int i, int *lo, int *hi)
{
    *lo = g->layered || i == 0 ? i : 1;
    *hi = g->layered || i == 0 ? i + 1 : L;
}

/* The graphs of bucket (Bg, Tg, ap->splits, ap->pages != NULL, parts used, layered),
 * captured on first use (the least recently used bucket makes room when the
 * table is full): the embedding and the whole layer stack in two graphs
 * (graph_part), or (layered, for a layer-wise onload whose waits sit
 * between layers) one graph per layer, the embedding left to the caller.
 * Few graphs save the GPU a few microseconds at every layer boundary (an
 * H100 at batch 1: 2.2-3.2 us between graphs, 0.1-0.5 us between kernels of
 * one graph) and the host launches.
 * *out stays NULL when capture fails: the caller runs eagerly, and graphs
 * are switched off for this backend (counted). */
static hstu_status graph_get(cuda_backend *cb, int Bg, int Tg, const attn_cuda_params *ap_in, const staged *sg,
                             bool layered, bool logits, cuda_backend::graph_entry **out, hstu_error *err)
{
    int L = cb->model->cfg.n_layers, S = ap_in->splits;
    const bool paged = ap_in->pages != NULL; /* the attention's kernel differs */
    const bool parts = attn_cuda_parts_used(ap_in) > 0; /* so do its launch and ln_mul's */
    const bool head = head_in_graph(cb, layered, Tg);
    logits = head && logits;
    *out = NULL;
    for (int i = 0; i < cb->n_graphs; i++) {
        cuda_backend::graph_entry *g = &cb->graphs[i];
        if (g->B == Bg && g->T == Tg && g->S == S && g->paged == paged && g->parts == parts &&
            g->layered == layered && g->logits == logits) {
            g->used = ++cb->graph_clock;
            *out = g;
            return HSTU_OK;
        }
    }
    cuda_backend::graph_entry *g;
    const int cap = (int)(sizeof cb->graphs / sizeof cb->graphs[0]);
    if (cb->n_graphs < cap) {
        g = &cb->graphs[cb->n_graphs++];
        memset(g, 0, sizeof *g);
        g->exec = (cudaGraphExec_t *)calloc((size_t)L, sizeof *g->exec);
        if (!g->exec) {
            cb->n_graphs--;
            return hstu_fail(err, HSTU_ERR_NOMEM, "backend cuda: out of host memory");
        }
    } else {
        g = &cb->graphs[0];
        for (int i = 1; i < cap; i++)
            if (cb->graphs[i].used < g->used)
                g = &cb->graphs[i];
        for (int l = 0; l < L; l++)
            if (g->exec[l]) {
                cudaGraphExecDestroy(g->exec[l]);
                g->exec[l] = NULL;
            }
    }
    g->B = Bg, g->T = Tg, g->S = S, g->paged = paged, g->parts = parts, g->layered = layered, g->logits = logits;
    g->used = ++cb->graph_clock;
    attn_cuda_params ap = *ap_in;
    ap.B = Bg;
    ap.max_rows = Tg;
    bool ok = true;
    g->n_exec = layered ? L : L > 1 ? 2 : 1;
    for (int i = 0; i < g->n_exec && ok; i++) {
        int lo, hi;
        graph_part(g, L, i, &lo, &hi);
        cudaGraph_t graph = NULL;
        hstu_error cap_err;
        memset(&cap_err, 0, sizeof cap_err);
        ok = cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
        hstu_status st = ok ? HSTU_OK : HSTU_ERR_UNSUPPORTED;
        if (st == HSTU_OK && !layered && i == 0) { /* the whole stack's graph: the upload, the embedding */
            /* (CTAs for the most a batch of the bucket can stage) */
            size_t most = stage_capacity((size_t)Tg, (size_t)Bg, (size_t)cb->max_pages);
            st = upload_stage(cb, stage_upload_ctas(most, UPLOAD_MAX_CTAS), &cap_err);
            if (st == HSTU_OK)
                st = stack_mark(cb, 0, true, &cap_err);
            if (st == HSTU_OK)
                st = embed_forward(cb, Tg, sg, &cap_err);
        }
        for (int l = lo; l < hi && st == HSTU_OK; l++)
            st = layer_forward(cb, Tg, l, &ap, sg, cb->d_pool != NULL, false, &cap_err);
        if (st == HSTU_OK && !layered && i == g->n_exec - 1)
            st = stack_mark(cb, 1, true, &cap_err);
        if (st == HSTU_OK && head && i == g->n_exec - 1) /* then the head, for any M up to the bucket's rows */
            st = head_ranking_launch(cb, Tg, sg, logits, true, &cap_err);
        if (st == HSTU_OK && !layered) /* (each part of the whole stack's graph has a mark) */
            st = stack_mark_join(cb, &cap_err);
        if (ok)
            ok = cudaStreamEndCapture(cb->stream, &graph) == cudaSuccess && st == HSTU_OK;
        /* the edges into the GEMMs, when PDL is on now (else only forgotten) */
        if (gemm_cuda_graph_edges(cb->gemm, ok && cuda_pdl_on() ? graph : NULL) < 0)
            ok = false;
        if (ok)
            ok = cudaGraphInstantiate(&g->exec[i], graph, 0) == cudaSuccess;
        if (graph)
            cudaGraphDestroy(graph);
    }
    if (!ok) {
        cudaGetLastError(); /* clear a capture error; the eager path reports real ones */
        for (int l = 0; l < L; l++)
            if (g->exec[l]) {
                cudaGraphExecDestroy(g->exec[l]);
                g->exec[l] = NULL;
            }
        g->B = g->T = -1;
        cb->cc.graphs = false;
        return HSTU_OK;
    }
    cb->ctr.graph_captures++;
    cb->ctr.graphs_held = cb->n_graphs;
    *out = g;
    return HSTU_OK;
}

/* The first n copies of the copy lists (cp_dst, cp_src, cp_size) as one batch on
 * the copy engines, in stream s's order, with the hint to overlap compute. */
static hstu_status copy_batch(cuda_backend *cb, size_t n, cudaStream_t s, const char *what, hstu_error *err)
{
    cudaMemcpyAttributes a;
    memset(&a, 0, sizeof a);
    a.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    a.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    size_t first = 0;
    return ck(cudaMemcpyBatchAsync(cb->cp_dst, cb->cp_src, cb->cp_size, n, &a, &first, 1, s), what, err);
}

/* Layer l's blocks of the n pages in sg->onload (l < 0: the whole pages),
 * host tier to page pool, by the copy engines: one batch of n copies. */
static hstu_status onload_dma(cuda_backend *cb, const staged *sg, int n, int l, hstu_error *err)
{
    const double t0 = core_now_s();
    for (int i = 0; i < n; i++) {
        uint64_t off = l < 0 ? 0 : (uint64_t)l * cb->blk_bytes;
        cb->cp_src[i] = (const void *)(uintptr_t)(sg->onload[i].src + off);
        cb->cp_dst[i] = (void *)(uintptr_t)(sg->onload[i].dst + off);
        cb->cp_size[i] = l < 0 ? cb->page_bytes : cb->blk_bytes;
    }
    hstu_status st = copy_batch(cb, (size_t)n, cb->s_onload, "KV onload (cudaMemcpyBatchAsync)", err);
    cb->ctr.onload_issue_ms += (core_now_s() - t0) * 1e3;
    return st;
}

/* Issues the layer-wise onload's copies of every layer up to `through` not
 * issued yet, each layer's followed by its event. A copy costs 0.5-1 us of
 * host time to issue: all layers' at once, before the first
 * layer's launch, held the compute back (8 ms at batch 8 and 8192 rows).
 * Issued a layer at a time as the layers are launched, they overlap the
 * compute of the layers before, and the copy engines still never wait (a
 * copy takes longer to run than to issue). */
static hstu_status issue_onload(cuda_backend *cb, int through, hstu_error *err)
{
    hstu_status st = HSTU_OK;
    while (st == HSTU_OK && cb->on_issued <= through) {
        int l = cb->on_issued++;
        if ((st = onload_dma(cb, cb->on_sg, cb->on_n, l, err)) == HSTU_OK)
            st = ck(cudaEventRecord(cb->ev_on[l], cb->s_onload), "cudaEventRecord", err);
    }
    return st;
}

/* Starts the host-tier onload of this forward's host hits on the side
 * stream: per layer (an event each) or all layers at once, then the compute
 * stream waits for all of it. By the copy engines (onload_dma), or by a
 * kernel that reads its copy list from the host staging (mapped), so it
 * need not wait for the metadata's upload; the compute stream has nothing
 * in flight (each forward ends with a wait for it). */
static hstu_status start_onload(cuda_backend *cb, const staged *sg, int n, hstu_error *err)
{
    int L = cb->model->cfg.n_layers;
    cudaStream_t so = cb->s_onload;
    const kv_copy *d = (const kv_copy *)MAPPED(cb, sg->onload);
    size_t src_l = cb->blk_bytes, dst_l = cb->blk_bytes; /* a page's layers, on either side */
    hstu_status st;
    if ((st = ck(cudaEventRecord(cb->ev_on_start, so), "cudaEventRecord", err)))
        return st;
    if (cb->onload_dma) {
        if (cb->cc.layerwise) { /* layer 0 now, the others as the layers are launched */
            cb->on_sg = sg;
            cb->on_n = n;
            cb->on_issued = 0;
            return issue_onload(cb, 0, err);
        }
        if ((st = onload_dma(cb, sg, n, -1, err)) != HSTU_OK ||
            (st = ck(cudaEventRecord(cb->ev_on[L - 1], so), "cudaEventRecord", err)))
            return st;
        return ck(cudaStreamWaitEvent(cb->stream, cb->ev_on[L - 1], 0), "cudaStreamWaitEvent", err);
    }
    const double t0 = core_now_s();
    if (cb->cc.layerwise) {
        for (int l = 0; l < L; l++)
            if ((st = ck(kv_copy_cuda(d, n, cb->blk_bytes, src_l, dst_l, l, 1, so), "KV onload", err)) ||
                (st = ck(cudaEventRecord(cb->ev_on[l], so), "cudaEventRecord", err)))
                return st;
        cb->ctr.onload_issue_ms += (core_now_s() - t0) * 1e3;
        return HSTU_OK;
    }
    if ((st = ck(kv_copy_cuda(d, n, cb->blk_bytes, src_l, dst_l, 0, L, so), "KV onload", err)) ||
        (st = ck(cudaEventRecord(cb->ev_on[L - 1], so), "cudaEventRecord", err)))
        return st;
    cb->ctr.onload_issue_ms += (core_now_s() - t0) * 1e3;
    return ck(cudaStreamWaitEvent(cb->stream, cb->ev_on[L - 1], 0), "cudaStreamWaitEvent", err);
}

static hstu_status forward(cuda_backend *cb, user_plan *plans, int B, bool logits, const cuda_batch_cache *kc,
                           hstu_error *err)
{
    const hstu_config *cfg = &cb->model->cfg;
    bool retr = cfg->family == HSTU_FAMILY_RETRIEVAL;
    HSTU_ASSERT(B >= 0 && B <= cb->max_users);
    int T = 0, M = 0, max_rows = 0, hist_total = 0, n_app = 0, max_keys = 0, cached = 0;
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        HSTU_ASSERT(p->c >= 0 && p->c <= p->paged && p->paged <= p->hist);
        HSTU_ASSERT(p->paged == 0 || (cb->d_pool && kc));
        p->q0 = T;
        int rows = p->hist - p->c + p->cand;
        T += rows;
        M += p->cand;
        hist_total += p->hist;
        n_app += p->paged - p->c;
        cached += p->c;
        max_rows = rows > max_rows ? rows : max_rows;
        max_keys = p->hist + p->cand > max_keys ? p->hist + p->cand : max_keys;
    }
    HSTU_ASSERT(T <= cb->max_tokens && hist_total <= cb->max_tokens);
    int n_onload = kc ? kc->n_onload : 0;
    HSTU_ASSERT(!kc || kc->n_page_idx <= cb->max_pages);
    HSTU_ASSERT(n_onload == 0 || cb->h_pool);
    if (T == 0 || (!retr && M == 0))
        return HSTU_OK; /* nothing to score (a plan with T == 0 has no rows to append either) */
    /* A call that failed midway may have left work in flight that reads the
     * staging buffer; it must be done before the buffer is rewritten (a call
     * that returned OK waited for all of its work). */
    hstu_status st = HSTU_OK;
    if (cb->in_flight) {
        st = ck(cudaStreamSynchronize(cb->stream), "an earlier forward pass", err);
        if (st == HSTU_OK && cb->s_onload)
            st = ck(cudaStreamSynchronize(cb->s_onload), "an earlier onload", err);
        if (st != HSTU_OK)
            return st;
    }
    cb->in_flight = true; /* until this call's last wait has returned */
    if ((st = ck(cudaEventRecord(cb->ev_fwd_start, cb->stream), "cudaEventRecord", err)) != HSTU_OK)
        return st;
    const double t_stage = core_now_s();

    /* CUDA graphs: the layer stack of this (batch, tokens) bucket, padded. */
    int Bg = 0, Tg = 0;
    if (cb->cc.graphs && T <= cb->cc.graph_max_tokens && B <= cb->cc.graph_max_batch) {
        Bg = 1;
        while (Bg < B)
            Bg *= 2;
        /* Padding costs every GEMM and row-wise pass of every layer: 128-row
         * steps up to 1024 (a batch-1 cached call's 384 rows ran as 512 with
         * powers of two), 512-row steps above. */
        Tg = T <= 64 ? 64 : T <= 1024 ? (T + 127) / 128 * 128 : (T + 511) / 512 * 512;
        if (Bg > cb->max_users || Tg > cb->max_tokens || Bg > cb->cc.graph_max_batch)
            Bg = Tg = 0;
    }

    /* Stage the batch's metadata: the arrays the layers read at their fixed
     * offsets, the rest packed after them. */
    stage sgb = {cb->h_stage, cb->fx_end, cb->stage_cap};
    staged sg;
    memset(&sg, 0, sizeof sg);
    sg.n_rows = (int *)(cb->h_stage + cb->fx_scalars);
    *sg.n_rows = M;
    sg.seqs = (attn_cuda_seq *)(cb->h_stage + cb->fx_seqs);
    sg.page_table = (int *)(cb->h_stage + cb->fx_pt);
    sg.row_slot = (int64_t *)(cb->h_stage + cb->fx_row_slot);
    sg.ts = retr ? (int64_t *)(cb->h_stage + cb->fx_ts) : NULL;
    /* The rows the layers run (a graph's padded bucket); padding rows append
     * nothing, and embed item 0 at position 0 (a graph embeds them too, so
     * tok_pos sits at an offset fixed by the bucket). */
    const int T_run = Bg > 0 ? Tg : T;
    sg.tok_row = (int *)stage_take(&sgb, (size_t)T_run * 4);
    sg.tok_pos = (int *)stage_take(&sgb, (size_t)T_run * 4);
    for (int i = T; i < T_run; i++)
        sg.tok_row[i] = sg.tok_pos[i] = 0;
    sg.rows = (int *)stage_take(&sgb, (size_t)(retr ? B : M) * 4);
    if (retr) {
        sg.excl = (int *)stage_take(&sgb, (size_t)hist_total * 4);
        sg.k = (int *)stage_take(&sgb, (size_t)B * 4);
        sg.off = (int *)stage_take(&sgb, (size_t)B * 4);
        sg.excl_b = (int *)stage_take(&sgb, (size_t)B * 4);
        sg.excl_e = (int *)stage_take(&sgb, (size_t)B * 4);
    }
    int n_pt = kc ? kc->n_page_idx : 0;
    if (n_pt > 0)
        memcpy(sg.page_table, kc->page_idx, (size_t)n_pt * 4);
    if (n_onload > 0) {
        sg.onload = (kv_copy *)stage_take(&sgb, (size_t)n_onload * sizeof(kv_copy));
        for (int i = 0; i < n_onload; i++) {
            const cuda_onload *o = &kc->onload[i];
            /* chunk layout [page of chunk][layer][block]: page j */
            sg.onload[i].src =
                (uint64_t)(uintptr_t)(cb->h_pool + (size_t)o->slot * cb->chunk_bytes + (size_t)o->j * cb->page_bytes);
            sg.onload[i].dst = (uint64_t)(uintptr_t)((char *)cb->d_pool + (size_t)o->page * cb->page_bytes);
        }
    }
    int max_pos = cfg->max_positions - 1, cand_i = 0, ts_off = 0, P = cb->cc.page_size;
    if (cb->d_pool) /* (a graph's layers append whenever the cache is on) */
        for (int i = 0; i < T_run; i++)
            sg.row_slot[i] = -1;
    size_t group_total = 0;
    int group_users = 0;
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        const hstu_request *r = p->req;
        int c = p->c, q0 = p->q0;
        pack_history(cb, r, retr, c, p->hist, max_pos, sg.tok_row + q0, sg.tok_pos + q0);
        for (int i = c; i < p->paged;) { /* page by page */
            const int64_t base = (int64_t)kc->page_idx[p->page0 + i / P] * P - (i / P) * P;
            const int end = (i / P + 1) * P < p->paged ? (i / P + 1) * P : p->paged;
            for (; i < end; i++)
                sg.row_slot[q0 + i - c] = base + i;
        }
        int cq = q0 + p->hist - c; /* dense row of the first candidate */
        int cpos = p->hist < max_pos ? p->hist : max_pos; /* every candidate sits at position h */
        for (int i = 0; i < p->cand; i++) {
            sg.tok_row[cq + i] = (int)r->candidates[i];
            sg.tok_pos[cq + i] = cpos;
            sg.rows[cand_i++] = cq + i;
        }
        attn_cuda_seq *sq = &sg.seqs[b];
        memset(sq, 0, sizeof *sq);
        sq->c = c;
        sq->paged = c; /* cached rows from the pages; this call's rows from the dense activations */
        sq->hist = p->hist;
        sq->cand = p->cand;
        sq->q0 = q0;
        sq->page0 = p->page0;
        sq->ts0 = ts_off;
        sq->ts_q = retr ? r->query_time : 0;
        if (retr) {
            for (int i = 0; i < p->hist; i++) {
                sg.ts[ts_off + i] = r->timestamps[i];
                sg.excl[ts_off + i] = (int)r->items[i];
            }
            sg.rows[b] = q0 + p->hist - 1 - c; /* the newest row (never cached) */
            int64_t k = r->top_k < cfg->item_rows - 1 ? r->top_k : cfg->item_rows - 1;
            sg.k[b] = (int)(k > 0 ? k : 0);
            /* A new top-k group starts (offset 0) when this user's score row
             * or results would not fit the current one. */
            if (group_users == cb->score_rows || group_total + (size_t)sg.k[b] > cb->topk_cap) {
                group_total = 0;
                group_users = 0;
            }
            sg.off[b] = (int)group_total;
            group_total += (size_t)sg.k[b];
            group_users++;
            sg.excl_b[b] = ts_off;
            sg.excl_e[b] = r->exclude_history ? ts_off + p->hist : ts_off;
            ts_off += p->hist;
        }
    }
    int n_seq = B;
    if (Bg > 0) { /* padding: users of length 0 */
        for (int b = B; b < Bg; b++)
            memset(&sg.seqs[b], 0, sizeof sg.seqs[b]);
        n_seq = Bg;
    }
    attn_cuda_params ap;
    memset(&ap, 0, sizeof ap);
    ap.B = B;
    ap.H = cfg->n_heads;
    ap.Dqk = cfg->d_qk;
    ap.Dv = cfg->d_v;
    ap.seqs = (const attn_cuda_seq *)DEV(cb, sg.seqs);
    ap.max_rows = max_rows;
    ap.max_keys = max_keys;
    ap.ld_out = cb->vw; /* (layer_forward sets it too; attn_cuda_splits reads it) */
    ap.page_size = cb->d_pool ? P : 1;
    /* Pages only when some user reads cached rows: with none, every key is
     * in the dense rows and the attention may take its TMA kernel. */
    if (cb->d_pool && sg.page_table && cached > 0) {
        ap.pages = cb->d_pool;
        ap.page_table = (const int *)DEV(cb, sg.page_table);
        ap.page_elems = cb->cc.page_elems;
        ap.n_pages = cb->attn_tma_pages ? cb->cc.n_pages : 0; /* 0: the cp.async loads */
    }
    ap.alpha = cfg->alpha;
    ap.N = cfg->attn_scale_len;
    ap.n_buckets = cfg->rab_buckets;
    ap.ts = retr ? (const int64_t *)DEV(cb, sg.ts) : NULL;
    if (cb->d_parts) { /* planes of the rows the layers run */
        ap.parts = cb->d_parts;
        ap.parts_scale = cb->d_parts_scale;
        ap.ld_parts = cb->vw;
        ap.parts_plane = (size_t)T_run * (size_t)cb->vw;
        ap.scale_plane = (size_t)T_run * (size_t)cfg->n_heads;
        size_t planes = cb->parts_halves / ap.parts_plane, by_scales = cb->parts_scales / ap.scale_plane;
        planes = planes < by_scales ? planes : by_scales;
        ap.parts_planes = planes > ATTN_CUDA_MAX_PART_SPLITS ? ATTN_CUDA_MAX_PART_SPLITS : (int)planes;
        /* decided here, on the batch's own sizes (a graph's are padded) */
        if (!cb->parts_always && !attn_cuda_parts_pay(&ap))
            ap.parts = NULL, ap.parts_scale = NULL, ap.parts_planes = 0;
    }
    ap.splits = attn_cuda_splits(&ap); /* from this batch's sizes, graph or not */
    /* The bucket's graphs (captured on first use) are looked up before the
     * copies, so that the launches follow the copies without a wait for the
     * host. */
    const double t_packed = core_now_s();
    cuda_backend::graph_entry *g = NULL;
    if (Bg > 0 &&
        (st = graph_get(cb, Bg, Tg, &ap, &sg, n_onload > 0 && cb->cc.layerwise, logits, &g, err)) != HSTU_OK)
        return st;
    const double t_copy = core_now_s();
    cudaStream_t s = cb->stream;
    /* What the upload moves: the used part of each fixed-offset array, and
     * the packed tail. The whole stack's graph starts with the upload; other
     * runs launch it here. */
    struct { size_t off, bytes; } cp[5] = {
        {cb->fx_scalars, 16 + (size_t)n_seq * sizeof(attn_cuda_seq)}, {cb->fx_pt, (size_t)n_pt * 4},
        {cb->fx_row_slot, cb->d_pool ? (size_t)T_run * 8 : 0}, {cb->fx_ts, retr ? (size_t)hist_total * 8 : 0},
        {cb->fx_end, sgb.used - cb->fx_end},
    };
    stage_upload_list *ul = cb->h_upload;
    ul->n = 0;
    for (int i = 0; i < 5; i++)
        if (cp[i].bytes > 0) {
            ul->r[ul->n].off = (uint32_t)cp[i].off;
            ul->r[ul->n].bytes = (uint32_t)cp[i].bytes;
            ul->n++;
        }
    /* the whole stack's graph runs the upload, the stack marks and the embedding */
    const bool whole_graph = g && !g->layered;
    if (!whole_graph && (st = upload_stage(cb, stage_upload_ctas(sgb.used, UPLOAD_MAX_CTAS), err)) != HSTU_OK)
        return st;
    cb->ctr.stage_ms += (t_packed - t_stage + core_now_s() - t_copy) * 1e3;
    cb->onload_pending = n_onload > 0;
    if (n_onload > 0 && (st = start_onload(cb, &sg, n_onload, err)) != HSTU_OK)
        return st;

    /* (the whole stack's graph embeds its bucket's rows itself) */
    const double t_launch = core_now_s();
    if (!whole_graph &&
        ((st = stack_mark(cb, 0, false, err)) != HSTU_OK || (st = embed_forward(cb, T, &sg, err)) != HSTU_OK))
        return st;
    if (g) {
        for (int l = 0; l < g->n_exec; l++) {
            /* layered: a graph holds one layer, and the wait sits between graphs */
            if (g->layered && (st = wait_onload_layer(cb, l, err)) != HSTU_OK)
                return st;
            if ((st = ck(cudaGraphLaunch(g->exec[l], s), "cudaGraphLaunch", err)) != HSTU_OK)
                return st;
        }
        cb->ctr.graph_runs++;
        cb->ctr.graph_layered_runs += g->layered;
    } else {
        cb->ctr.eager_runs++;
        for (int l = 0; l < cfg->n_layers; l++)
            if ((st = layer_forward(cb, T, l, &ap, &sg, n_app > 0, true, err)) != HSTU_OK)
                return st;
    }
    /* (every layer waited for its onload, so every layer's copies are issued) */
    HSTU_ASSERT(!cb->onload_pending || !cb->onload_dma || !cb->cc.layerwise || cb->on_issued == cfg->n_layers);
    if (!whole_graph && (st = stack_mark(cb, 1, false, err)) != HSTU_OK)
        return st;
    cb->ctr.launch_ms += (core_now_s() - t_launch) * 1e3;
    if (retr)
        st = head_retrieval(cb, plans, B, &sg, err);
    else
        st = head_ranking(cb, plans, B, M, &sg, logits, g && head_in_graph(cb, g->layered, g->T), err);
    if (st == HSTU_OK && n_onload > 0) {
        /* The head synchronised the compute stream, which waited for the onload. */
        float ms = 0;
        if (cudaEventElapsedTime(&ms, cb->ev_on_start, cb->ev_on[cfg->n_layers - 1]) == cudaSuccess)
            cb->ctr.onload_ms += ms;
        cb->ctr.onload_bytes += (uint64_t)n_onload * cb->page_bytes;
    }
    cb->in_flight = st != HSTU_OK;
    float ms = 0;
    if (st == HSTU_OK && cudaEventElapsedTime(&ms, cb->ev_stack[0], cb->ev_stack[1]) == cudaSuccess)
        cb->ctr.stack_ms += ms;
    if (st == HSTU_OK && cudaEventElapsedTime(&ms, cb->ev_fwd_start, cb->ev_fwd_end) == cudaSuccess) {
        cb->ctr.gpu_ms += ms;
        cb->ctr.forwards++;
    }
    return st;
}

hstu_status cuda_forward_run(cuda_backend *cb, user_plan *plans, int B, bool logits, const cuda_batch_cache *kc,
                             hstu_error *err)
{
    double t0 = core_now_s();
    cb->overlap = kc ? kc->overlap : NULL;
    cb->overlap_arg = kc ? kc->overlap_arg : NULL;
    hstu_status st = forward(cb, plans, B, logits, kc, err);
    cb->overlap = NULL;
    cb->ctr.forward_ms += (core_now_s() - t0) * 1e3;
    return st;
}

/* An offload's copies by the copy engines, one batch: a host chunk holds
 * its pages as the device does, so each page is one copy, and pages that
 * follow each other on both sides are one. Few copies matter: the call's
 * host time grows with their number, and it is spent on the request path. */
static hstu_status offload_dma(cuda_backend *cb, const int *pages, const int *slots, int n_chunks, hstu_error *err)
{
    size_t n = 0;
    for (int k = 0; k < n_chunks; k++)
        for (int i = 0; i < cb->ppc; i++) {
            const char *page = (const char *)cb->d_pool + (size_t)pages[k * cb->ppc + i] * cb->page_bytes;
            char *host = cb->h_pool + (size_t)slots[k] * cb->chunk_bytes + (size_t)i * cb->page_bytes;
            if (n > 0 && (const char *)cb->cp_src[n - 1] + cb->cp_size[n - 1] == page &&
                (char *)cb->cp_dst[n - 1] + cb->cp_size[n - 1] == host) {
                cb->cp_size[n - 1] += cb->page_bytes;
                continue;
            }
            cb->cp_src[n] = page;
            cb->cp_dst[n] = host;
            cb->cp_size[n++] = cb->page_bytes;
        }
    HSTU_ASSERT(n <= (size_t)cb->max_pages);
    return copy_batch(cb, n, cb->s_offload, "KV offload (cudaMemcpyBatchAsync)", err);
}

/* The same by kv_copy_cuda's kernel, one launch a chunk (HSTU_CUDA_OFFLOAD=kernel). */
static hstu_status offload_kernel(cuda_backend *cb, const int *pages, const int *slots, int n_chunks,
                                  hstu_error *err)
{
    int L = cb->model->cfg.n_layers;
    hstu_status st = HSTU_OK;
    for (int k = 0; k < n_chunks && st == HSTU_OK; k++) {
        kv_copy *d = cb->h_off_desc + (size_t)slots[k] * cb->ppc; /* the slot's own copies: free while it is pending */
        for (int i = 0; i < cb->ppc; i++) {
            d[i].src = (uint64_t)(uintptr_t)((char *)cb->d_pool + (size_t)pages[k * cb->ppc + i] * cb->page_bytes);
            d[i].dst =
                (uint64_t)(uintptr_t)(cb->h_pool + (size_t)slots[k] * cb->chunk_bytes + (size_t)i * cb->page_bytes);
        }
        st = ck(kv_copy_cuda(d, cb->ppc, cb->blk_bytes, cb->blk_bytes, cb->blk_bytes, 0, L, cb->s_offload),
                "KV offload", err);
    }
    return st;
}

hstu_status cuda_offload_submit(cuda_backend *cb, int64_t user, const int *pages, const int *slots, int n_chunks,
                                hstu_error *err)
{
    HSTU_ASSERT(cb->h_pool && n_chunks >= 1 && cb->job_n < cb->cc.max_pending);
    const double t0 = core_now_s();
    cudaStream_t so = cb->s_offload;
    hstu_status st;
    struct cuda_backend::off_job *j = &cb->jobs[(cb->job_head + cb->job_n) % cb->cc.max_pending];
    /* After everything on the compute stream so far: the pages are written. */
    if ((st = ck(cudaEventRecord(cb->ev_submit, cb->stream), "cudaEventRecord", err)) ||
        (st = ck(cudaStreamWaitEvent(so, cb->ev_submit, 0), "cudaStreamWaitEvent", err)) ||
        (st = ck(cudaEventRecord(j->start, so), "cudaEventRecord", err)))
        return st;
    if ((st = cb->offload_dma ? offload_dma(cb, pages, slots, n_chunks, err)
                              : offload_kernel(cb, pages, slots, n_chunks, err)) != HSTU_OK ||
        (st = ck(cudaEventRecord(j->done, so), "cudaEventRecord", err)) != HSTU_OK)
        return st;
    j->user = user;
    j->bytes = (uint64_t)n_chunks * cb->chunk_bytes;
    cb->ctr.offload_issue_ms += (core_now_s() - t0) * 1e3;
    cb->job_n++;
    cb->ctr.offload_jobs++;
    cb->ctr.offload_bytes += j->bytes;
    return HSTU_OK;
}

int cuda_offload_poll(cuda_backend *cb, int64_t *users, int max, bool wait)
{
    int n = 0;
    while (cb->job_n > 0 && (users == NULL || n < max)) {
        struct cuda_backend::off_job *j = &cb->jobs[cb->job_head];
        if (wait)
            cudaEventSynchronize(j->done);
        else if (cudaEventQuery(j->done) != cudaSuccess)
            break;
        float ms = 0;
        if (cudaEventElapsedTime(&ms, j->start, j->done) == cudaSuccess)
            cb->ctr.offload_ms += ms;
        if (users)
            users[n] = j->user;
        n++;
        cb->job_head = (cb->job_head + 1) % cb->cc.max_pending;
        cb->job_n--;
    }
    return n;
}

void cuda_backend_rates(const cuda_backend *cb, double *h2d_gbs, double *gemm_tflops)
{
    *h2d_gbs = cb->h2d_gbs;
    *gemm_tflops = cb->gemm_tflops;
}

void cuda_cache_get_counters(const cuda_backend *cb, cuda_cache_counters *c)
{
    *c = cb->ctr;
    int probed, waits, edges;
    gemm_cuda_pdl_counts(cb->gemm, &probed, &waits, &edges);
    c->gemm_edges = (uint64_t)edges;
}

size_t cuda_backend_attn_trace(const cuda_backend *cb, unsigned long long *h, size_t n)
{
    if (!cb->d_attn_trace)
        return 0;
    n = n < cb->attn_trace_n ? n : cb->attn_trace_n;
    if (h && cudaMemcpy(h, cb->d_attn_trace, n * 8, cudaMemcpyDeviceToHost) != cudaSuccess)
        return 0;
    return h ? n : cb->attn_trace_n;
}

void cuda_backend_attn_trace_clear(cuda_backend *cb)
{
    if (cb->d_attn_trace)
        cudaMemset(cb->d_attn_trace, 0, cb->attn_trace_n * 8);
}
