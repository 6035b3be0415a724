/* ops.h - the training ops: each op's forward (saving what its backward
 * needs) and its backward, fp32 on the CPU (OpenBLAS sgemm + OpenMP).
 *
 * Conventions. Tensors are row-major fp32 with an explicit row stride (ld*,
 * in floats) where an op reads or writes column slices of a wider buffer.
 * Parameter gradients (dW, db, dw, ...) are always accumulated (+=), so a
 * caller zeroes them once per step; activation gradients are written (=)
 * unless an op takes `accum`. Every reduction over rows (column sums,
 * scatter-adds) is split over columns, never over rows, so results do not
 * depend on the thread count; sgemm's own split is fixed for a given thread
 * count, which is why training is deterministic for a seed AND a thread
 * count (docs/train.md).
 *
 * One file per op: embed.c, layernorm.c, linear.c, act.c (SiLU, ReLU,
 * dropout), l2norm.c, attention.c; the losses are in loss.h. Each backward is
 * held against finite differences in tests/test_train_ops.c.
 */
#ifndef HSTU_TRAIN_OPS_H
#define HSTU_TRAIN_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- embedding ---------------------------------------------------------
 * x[r] = src[r] * scale + pos[pos_idx[r]]   (src[r]: a row of some table).
 * Backward scatter-adds: dsrc[r] += scale * dx[r], dpos[pos_idx[r]] += dx[r]
 * (dsrc[r] points at the matching row of the table's gradient; rows that
 * share a table row add up). Rows are visited in order for every column, so
 * the sums are the same whatever the thread count. */
void tr_embed_fwd(int T, int d, const float *const *src, float scale, const float *pos,
                  const int32_t *pos_idx, float *x);
void tr_embed_bwd(int T, int d, float *const *dsrc, float scale, float *dpos, const int32_t *pos_idx,
                  const float *dx);

/* ---- LayerNorm (biased variance over `width` columns) -----------------
 * y = (x - mean) * rstd * w + b; w, b NULL without affine. Saves mean[rows]
 * and rstd[rows]. Backward: dx (= or += with accum), dw += sum dy * xhat,
 * db += sum dy (dw, db NULL without affine). */
void tr_layernorm_fwd(int rows, int width, const float *x, int ldx, const float *w, const float *b,
                      float eps, float *y, int ldy, float *mean, float *rstd);
void tr_layernorm_bwd(int rows, int width, const float *x, int ldx, const float *w, const float *mean,
                      const float *rstd, const float *dy, int lddy, float *dx, int lddx, bool accum,
                      float *dw, float *db);

/* ---- linear: y[rows, out] = x[rows, in] @ W[in, out] (+ b) -------------
 * beta = 1 adds into y (a residual), 0 overwrites. Backward: dx = dy @ W^T
 * (+= with accum; dx NULL to skip), dW += x^T @ dy, db += colsum(dy) (db
 * NULL without bias). */
void tr_linear_fwd(int rows, int in, int out, const float *x, int ldx, const float *W, const float *b,
                   float beta, float *y, int ldy);
void tr_linear_bwd(int rows, int in, int out, const float *x, int ldx, const float *W, const float *dy,
                   int lddy, float *dx, int lddx, bool accum, float *dW, float *db);

/* ---- activations -------------------------------------------------------
 * SiLU on columns [0, silu_cols) of a [rows, width] pre-activation z, the
 * rest copied: y = z * sigmoid(z). Backward from z: dz = dy * sigmoid(z) *
 * (1 + z * (1 - sigmoid(z))) on those columns, dy elsewhere; dz may alias dy.
 * ReLU in place; its backward reads the output y (dy zeroed where y <= 0). */
void tr_silu_fwd(int rows, int width, int silu_cols, const float *z, float *y);
void tr_silu_bwd(int rows, int width, int silu_cols, const float *z, const float *dy, float *dz);
void tr_relu_fwd(size_t n, float *x);
void tr_relu_bwd(size_t n, const float *y, float *dy);

/* ---- dropout (inverted; training only) ---------------------------------
 * x[i] *= keep(key, i) / (1 - rate), where keep is a counter-based hash of
 * (key, i): no mask is stored, the backward recomputes it, and the mask does
 * not depend on threads. key names the site (seed, step, layer, which).
 * rate 0 is a no-op. The backward is the same call on dy. */
void tr_dropout(size_t n, float rate, uint64_t key, float *x);
/* The key of dropout site `site` of layer `layer` at step `step`. */
uint64_t tr_dropout_key(uint64_t seed, uint64_t step, int layer, int site);

/* ---- L2 normalisation: y = x / max(||x||, 1e-6) ------------------------
 * Saves norm[rows] (the unclamped norm). Backward from y: dx = (dy - y (y .
 * dy)) / ||x|| where ||x|| > 1e-6, dy / 1e-6 below; dx (= or += accum). */
void tr_l2norm_fwd(int rows, int width, const float *x, int ldx, float *y, int ldy, float *norm);
void tr_l2norm_bwd(int rows, int width, const float *y, int ldy, const float *norm, const float *dy,
                   int lddy, float *dx, int lddx, bool accum);

/* ---- HSTU attention (spec 1.3, 1.4) ------------------------------------
 * Per user b (rows offsets[b] .. offsets[b+1]-1, n_b of them, the first h_b
 * history rows) and head: s_ij = SiLU(alpha <q_i, k_j> + rab_ij) / N on the
 * allowed (i, j), a_i = sum_j s_ij v_j. Allowed: history row i sees columns
 * j <= i; a row i >= h_b (a candidate) sees j < h_b and j = i.
 * q, k, v are column slices of the u|v|q|k activation uvqk[T, W] (W = ldu).
 * rab (optional: pos_w NULL for none): rab_ij = pos_w[N-1 + clamp(j-i)] +
 * ts_w[bucket_b[i*n_b + j]], buckets precomputed per user by the caller
 * (tr_attn_buckets).
 * The forward saves nothing: the backward recomputes the scores (one GEMM
 * per user and head), which costs less than storing T x T per head.
 * Backward: d(uvqk) on the q, k, v columns is written (the u columns are
 * left alone); dpos_w and dts_w are accumulated in user order (deterministic).
 * Workspace: tr_attn_workspace_floats() floats, caller-owned. */
typedef struct tr_attn {
    int B;
    const int *offsets;        /* [B+1] row offsets, offsets[0] = 0 */
    const int *hist;           /* [B] history rows h_b (= n_b when NULL: all causal) */
    int H, Dqk, Dv;
    float alpha;
    int N;                     /* attn_scale_len */
    const float *pos_w;        /* [2N-1] or NULL */
    const float *ts_w;         /* [buckets+1] or NULL */
    int n_buckets;             /* rab_buckets + 1 */
    const uint16_t *buckets;   /* per user, n_b*n_b, at bucket_off[b] */
    const size_t *bucket_off;  /* [B] */
    int max_n;                 /* the largest n_b */
} tr_attn;

size_t tr_attn_workspace_floats(const tr_attn *p, int threads);
/* a[T, H*Dv] (lda) = attention of uvqk (ldu). */
void tr_attn_fwd(const tr_attn *p, const float *uvqk, int ldu, float *a, int lda, float *work);
/* duvqk (ldu): q, k, v columns written from da (lda). dpos_w[2N-1] and
 * dts_w[n_buckets] accumulated when rab is on. */
void tr_attn_bwd(const tr_attn *p, const float *uvqk, int ldu, const float *da, int lda, float *duvqk,
                 float *dpos_w, float *dts_w, float *work);
/* bucket(ts_next(i) - ts_j) for one user's n rows (spec 1.4): ts[n] and the
 * query time; out[n*n]. */
void tr_attn_buckets(int n, const int64_t *ts, int64_t query_time, int n_buckets_max, uint16_t *out);

#endif
