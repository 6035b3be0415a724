/* attention.h - the HSTU attention contract (spec/model.md 1.3, 1.4).
 *
 * For each user (sequence) b and head h, for each computed row i:
 *     a_i = sum_{j visible from i} SiLU(alpha * <q_i, k_j> + rab_ij) / N * v_j
 * No softmax, no row normalisation.
 *
 * Rows are in absolute positions of the user's sequence: history rows
 * 0..hist-1, then cand candidate rows. Rows [0, c) were computed by earlier
 * requests; this call computes rows [c, hist) and the candidates, which sit
 * in the dense buffers at rows q0 .. q0 + (hist - c) + cand - 1.
 *   - history row i sees history columns j <= i (causal);
 *   - a candidate sees every history column and itself, no other candidate.
 * History K/V of rows [0, paged) are read from pages (row j in page
 * pages[j / P], slot j % P); rows [paged, hist) from the dense rows at
 * q0 + (j - c). Requires c <= paged when c > 0 (rows before c exist only in
 * pages) and paged <= hist.
 *
 * Relative attention bias (rab != NULL): with ts_next(i) = ts[i+1] for
 * i < hist-1 and ts_q otherwise (candidates use ts_q),
 *     rab_ij = pos_w[N-1 + max(j-i, -(N-1))] + ts_w[bucket(ts_next(i) - ts[j])]
 * (a candidate is at position hist with timestamp ts_q)
 *     bucket(t) = clamp(floor(ln(max(|t|,1)) / 0.301), 0, n_buckets)  (in double)
 * The clamp of j-i extends the published form (defined for i, j < N) to
 * longer sequences; see docs/numerics.md.
 *
 * Layouts (fp32): dense q/k/v rows have stride ld_qkv floats; head h's part
 * of a row starts at h*Dqk (q, k) or h*Dv (v). Page K rows are H*Dqk wide,
 * V rows H*Dv wide; a page's layer block starts at page_base + k_off / v_off.
 * out rows are H*Dv wide (stride ld_out). out is fully written for every
 * computed row (also rows that see nothing: zeros).
 */
#ifndef HSTU_KERNELS_ATTENTION_H
#define HSTU_KERNELS_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

typedef struct attn_seq {
    int c;                    /* first computed history row */
    int hist;                 /* history rows */
    int cand;                 /* candidate rows */
    int paged;                /* history rows read from pages */
    int q0;                   /* dense row of the first computed row */
    float *const *pages;      /* page base pointers in row order (NULL if paged == 0) */
    const int64_t *ts;        /* [hist] timestamps (rab only) */
    int64_t ts_q;             /* query time (rab only) */
} attn_seq;

typedef struct attn_rab {
    const float *pos_w;       /* [2N-1] */
    const float *ts_w;        /* [n_buckets+1] */
    int n_buckets;
} attn_rab;

typedef struct attn_params {
    int B, H, Dqk, Dv;
    const attn_seq *seqs;     /* [B] */
    const float *q, *k, *v;   /* dense rows, stride ld_qkv */
    int ld_qkv;
    int page_size;            /* P */
    size_t k_off, v_off;      /* float offsets of this layer's K / V block in a page */
    float alpha;
    int N;                    /* attn_scale_len */
    const attn_rab *rab;      /* NULL: no bias */
    float *out;               /* [rows, H*Dv], stride ld_out */
    int ld_out;
} attn_params;

/* Time bucket of spec 1.4 (shared by every backend). */
int attn_time_bucket(int64_t dt, int n_buckets);

void attn_fwd_ref(const attn_params *p);
void attn_fwd_cpu(const attn_params *p);

#endif
