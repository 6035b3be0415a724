/* dense_cuda.h - the row-wise ops of an HSTU layer and head on NVIDIA GPUs.
 *
 * The CUDA twins of dense.h's row-wise ops, fused the way the CUDA forward
 * uses them (src/cuda/cuda_backend.cu). Activations are bf16; the residual
 * stream x is bf16 by default or fp32 (the backend's HSTU_CUDA_RESIDUAL=f32;
 * the output projection adds into it with beta = 1), so the ops that read or
 * write x come in both forms. Every sum and every LayerNorm statistic is fp32. bf16
 * tensors are passed as raw bits (bf16_t). All pointers are device memory,
 * row-major with an explicit row stride (ld*, in elements). Each call
 * launches on `stream` (a cudaStream_t, NULL = the default stream) and
 * returns a cudaError_t (0 = launched), checked after the launch. With
 * programmatic dependent launch on (pdl_cuda.h) a kernel may start before
 * the previous one in the stream ends, and waits for it before touching
 * memory: stream order holds.
 *
 * Rows are processed one warp per row. When a row is at most 2048 elements,
 * its width a multiple of 8 and its rows 16-byte aligned, the warp holds the
 * row in registers and moves 16 bytes per access (one pass over memory);
 * other shapes take a plain path that re-reads the row (correct for any
 * width, slower).
 */
#ifndef HSTU_KERNELS_DENSE_CUDA_H
#define HSTU_KERNELS_DENSE_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t bf16_t; /* bfloat16 bits: the high half of an fp32 */

/* Embedding: x[t, c] = table[rows[t], c] * scale + pos_table[pos[t], c] for
 * c < width (fp32 out); columns [width, ldx) of x are set to 0.
 * table [*, ld_table] and pos_table [*, ld_pos] bf16; rows, pos int [T]. */
int embed_cuda(int T, int width, const bf16_t *table, int ld_table, const int *rows, const bf16_t *pos_table,
               int ld_pos, const int *pos, float scale, float *x, int ldx, void *stream);

/* The same embedding into x of either type (x_f32: fp32, else bf16), and,
 * when xn is not NULL, the first layer's input LayerNorm in the same pass:
 * xn[t] = LN(x[t]) * w + b as layernorm_cuda computes it from the stored
 * (rounded) x; columns [width, ldxn) of xn set to 0. One read of the tables,
 * one write of x and xn. */
int embed_ln_cuda(int T, int width, const bf16_t *table, int ld_table, const int *rows, const bf16_t *pos_table,
                  int ld_pos, const int *pos, float scale, void *x, int x_f32, int ldx, const float *w,
                  const float *b, float eps, bf16_t *xn, int ldxn, void *stream);

/* y[r] = LN(x[r]) * w + b over `width` columns (biased variance, fp32
 * statistics), x fp32, y bf16; w, b fp32 [width] or both NULL. Columns
 * [width, ldy) of y are set to 0 (they feed GEMMs as zero padding). */
int layernorm_cuda(int rows, int width, const float *x, int ldx, const float *w, const float *b, float eps,
                   bf16_t *y, int ldy, void *stream);
/* The same with a bf16 x (the bf16 residual stream). */
int layernorm_bf16_cuda(int rows, int width, const bf16_t *x, int ldx, const float *w, const float *b, float eps,
                        bf16_t *y, int ldy, void *stream);

/* Where bias_silu_cuda also writes each row's result: the paged KV pool of
 * one layer. Row r with row_slot[r] >= 0 goes to page row_slot[r] / P, slot
 * row_slot[r] % P: the pass's columns [kv0, kv0 + vw) (V) to pool + page *
 * page_elems + v_off + slot * vw, columns [kv0 + vw, kv0 + vw + kw) (K) to
 * ... + k_off + slot * kw; columns before kv0 (q, when the pass activates it
 * too) are not appended. row_slot[r] < 0: not appended (cached rows,
 * candidates, padding). kv0, kw and vw multiples of 8, kv0 + vw + kw = the
 * pass's width, every address 16-byte aligned. (gemm_fused_cuda places V
 * by its epilogue's kv_col and ignores kv0.) */
typedef struct bias_silu_pages {
    const int64_t *row_slot; /* [rows], device-readable */
    bf16_t *pool;
    size_t page_elems, k_off, v_off;
    int P, kw, vw;
    int kv0; /* the pass's first appended column (V's first) */
} bias_silu_pages;

/* The input LayerNorm folded into the GEMM after it (docs/cuda.md, "The
 * LayerNorm folded into the uvqk GEMM"). The GEMM ran on the residual x
 * itself, with weights G[i][c] = bf16(g[i] W[i][c] - m[c]), m[c] the mean
 * over i of g[i] W[i][c] (g: LN's gain), so that column c of LN(x) W + b0
 * is
 *     rstd * (v[c] - mean * e[c]) + bias[c]
 * where v is the GEMM's output, mean and rstd are x's row statistics (as
 * layernorm_cuda takes them), e[c] = the sum over i of G[i][c] (what the
 * rounding left of the centring) and bias = LN's shift times W plus b0. */
typedef struct ln_fold {
    const float *e;  /* [width] from the op's first column: fp32, 16-byte aligned */
    float *stats;    /* [rows][2] each row's mean and rstd: bias_silu_cuda writes them, the others read */
    const bf16_t *x; /* bias_silu_cuda: the residual [rows, ldx] whose rows' statistics it takes */
    int ldx, d;      /* (d columns: a multiple of 8, at most 2048, ldx a multiple of 8, x 16-byte aligned) */
    float eps;
} ln_fold;

/* In place on bf16 x, columns [0, width): x += bias (fp32 [width], or
 * NULL), then SiLU when `silu`; with `pages` (or NULL), the rows that have
 * a slot are also written to the KV pool (they are, with neither bias nor
 * SiLU). The uvqk epilogue for the v|k columns and the cache's append, in
 * one pass. With `fold` (or NULL) each row's statistics of fold->x are
 * taken, written to fold->stats (when set), and every column is first
 * corrected as ln_fold says; the vector shapes only (width and ldx multiples
 * of 8, x and bias 16-byte aligned: cudaErrorInvalidValue otherwise). */
int bias_silu_cuda(int rows, int width, bf16_t *x, int ldx, const float *bias, int silu,
                   const bias_silu_pages *pages, const ln_fold *fold, void *stream);

/* y[r] = SiLU(u[r] + ubias) * (LN(a[r]) * w + b), LN over all `width`
 * columns; a, u, y bf16; ubias, w, b fp32 [width] or NULL (w and b
 * together). The HSTU layer's u * LN(attn), with u's bias and SiLU fused.
 * With ufold (or NULL), u is first corrected as ln_fold says, from
 * ufold->stats and ufold->e (ufold->x unused). */
int ln_mul_cuda(int rows, int width, const bf16_t *a, int lda, const bf16_t *u, int ldu, const float *ubias,
                const ln_fold *ufold, const float *w, const float *b, float eps, bf16_t *y, int ldy, void *stream);

/* Split-KV parts of the attention's output as attention_cuda.h's
 * attn_cuda_params.parts describes them: S planes of fp16 values, each row
 * of each head's slice (head_w columns) with a power-of-two scale. */
typedef struct ln_mul_parts_src {
    const void *parts;    /* fp16, plane z at + z * plane, row stride ld */
    const float *scales;  /* plane z at + z * scale_plane, [row * (width / head_w) + head] */
    size_t plane, scale_plane;
    int ld, head_w, S;
    float scale;          /* 1 / N */
} ln_mul_parts_src;

/* ln_mul_cuda with its a given as split-KV parts: a[r][c] = bf16(scale x
 * sum over planes z = 0..S-1, in that order, of fp16 x its scale) (the
 * attention's output as attn_parts_sum_cuda makes it), then y as
 * ln_mul_cuda. Every plane's load in flight: one block a row, each thread
 * 4 columns, as long as the GPU runs all the rows' blocks at once; for more
 * rows, each thread 8 columns and a block 2 rows or more, where width,
 * head_w, ldu and ldy are multiples of 8 and u and y 16-byte aligned.
 * Needs 1 <= S <= LN_MUL_PARTS_MAX, width a multiple of 4 and at most 1024
 * (256 threads), head_w a multiple of 4 dividing width,
 * ld and plane multiples of 8, ldu and ldy multiples of 4, parts 16-byte
 * and u, y 8-byte aligned, ubias, w and b 16-byte aligned
 * (cudaErrorInvalidValue otherwise; ln_mul_parts_supported says whether a
 * shape qualifies). ufold: as ln_mul_cuda's. */
#define LN_MUL_PARTS_MAX 16
bool ln_mul_parts_supported(int width, int head_w, int ld, int ldu, int ldy);
int ln_mul_parts_cuda(int rows, int width, const ln_mul_parts_src *src, const bf16_t *u, int ldu,
                      const float *ubias, const ln_fold *ufold, const float *w, const float *b, float eps, bf16_t *y,
                      int ldy, void *stream);
/* Tests: the form ln_mul_parts_cuda takes from now on: 1 one block a row,
 * 2 the 8-column one wherever the shapes allow it, 0 (default) the 8-column
 * one only for more rows than the other runs at once. */
void ln_mul_parts_force_form(int form);

/* y[i] = x[rows[i]] / max(||x[rows[i]]||, 1e-6), x fp32 (width columns,
 * stride ldx), y bf16 [n, ldy] with columns [width, ldy) set to 0. The
 * heads' gather of candidate rows (ranking) or newest rows (retrieval).
 * count (device memory, may be NULL): when set, only rows i < *count are
 * gathered (rows[] is not read past it) and rows [*count, n) of y are set
 * to 0, so a CUDA graph can hold the launch for n rows while the count
 * changes between replays. */
int gather_l2norm_cuda(int n, int width, const float *x, int ldx, const int *rows, bf16_t *y, int ldy,
                       const int *count, void *stream);
/* The same with a bf16 x. */
int gather_l2norm_bf16_cuda(int n, int width, const bf16_t *x, int ldx, const int *rows, bf16_t *y, int ldy,
                            const int *count, void *stream);

/* y[i * n + t] = sigmoid(x[i * ldx + t]) (or x itself, sigmoid 0) for i <
 * rows, t < n; x fp32, y fp32 packed. y may be pinned host memory (the
 * ranking head's scores go straight to the host: no copy, no host pass).
 * count (device memory, may be NULL): when set, only rows i < min(*count,
 * rows) are written (as gather_l2norm_cuda's count). */
int scores_out_cuda(int rows, int n, const float *x, int ldx, int sigmoid, float *y, const int *count, void *stream);

#ifdef __cplusplus
}
#endif
#endif
