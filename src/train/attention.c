/* attention.c - the HSTU attention of training (spec 1.3, 1.4), forward and
 * backward, one user and head at a time (ops.h).
 *
 * Training sequences are short (MovieLens: at most 200 rows), so each user
 * and head materialises its scores in a per-thread workspace (n x n at
 * most), in row blocks that skip the columns no row of the block sees: one
 * sgemm for alpha Q K^T, the bias, SiLU, mask and 1/N in one pass, one sgemm
 * for P V. Users run in parallel (dynamic schedule: lengths vary); each
 * writes only its own rows, so the schedule never changes a result.
 *
 * Backward recomputes S = alpha Q K^T + rab and P, then with dA:
 *   dP = dA V^T,  dV = P^T dA,  dS = dP * SiLU'(S) / N (masked),
 *   dQ = alpha dS K,  dK = alpha dS^T Q,  d rab_ij = dS_ij.
 * The bias gradients go to per-user slots of the workspace first and are
 * summed in user order at the end: the same sums for any thread count.
 */
#include "train/ops.h"

#include "core/status.h"
#include "kernels/attention.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

static inline float sigmoidf(float z) { return 1.0f / (1.0f + expf(-z)); }

static size_t rab_slot(const tr_attn *p) { return p->pos_w ? (size_t)(2 * p->N - 1) + p->n_buckets : 0; }

size_t tr_attn_workspace_floats(const tr_attn *p, int threads)
{
    size_t nn = (size_t)p->max_n * p->max_n;
    return (size_t)threads * 3 * nn + (size_t)p->B * rab_slot(p) + 1;
}

/* Is column j visible from row i of a user with h history rows? */
static inline bool allowed(int i, int j, int h) { return i < h ? j <= i : (j < h || j == i); }

/* Every column row i may see is <= i (history: causal; a candidate: the
 * history and itself), so loops over visible columns stop at i + 1. */

/* Rows are processed in blocks of ATTN_BLOCK: every column a row may see is
 * <= the row (see allowed), so block [r0, r1) needs only columns [0, r1):
 * about 40% of the n x n products and element-wise work skipped at n = 200. */
#define ATTN_BLOCK 64

/* S[r1 - r0, r1] (ld r1) = alpha Q[r0:r1] K[0:r1]^T + rab, bias only on
 * visible pairs. */
static void scores(const tr_attn *p, int b, int n, int r0, int r1, const float *q, const float *k, int ldu,
                   float *S)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, r1, p->Dqk, p->alpha, q + (size_t)r0 * ldu,
                ldu, k, ldu, 0.0f, S, r1);
    if (!p->pos_w)
        return;
    const uint16_t *bk = p->buckets + p->bucket_off[b];
    int N = p->N;
    for (int i = r0; i < r1; i++) {
        float *s = S + (size_t)(i - r0) * r1;
        const uint16_t *bi = bk + (size_t)i * n;
        for (int j = 0; j <= i; j++) {
            int rel = j - i;
            if (rel < -(N - 1))
                rel = -(N - 1);
            s[j] += p->pos_w[N - 1 + rel] + p->ts_w[bi[j]];
        }
    }
}

void tr_attn_fwd(const tr_attn *p, const float *uvqk, int ldu, float *a, int lda, float *work)
{
    int H = p->H, Dqk = p->Dqk, Dv = p->Dv;
    size_t nn = (size_t)p->max_n * p->max_n;
    float invN = 1.0f / (float)p->N;
#pragma omp parallel
    {
        float *S = work + (size_t)omp_get_thread_num() * 3 * nn;
#pragma omp for schedule(dynamic, 1)
        for (int bh = 0; bh < p->B * H; bh++) {
            int b = bh / H, hd = bh % H;
            int u0 = p->offsets[b], n = p->offsets[b + 1] - u0;
            int h = p->hist ? p->hist[b] : n;
            const float *row0 = uvqk + (size_t)u0 * ldu;
            const float *v = row0 + H * Dv + hd * Dv, *q = row0 + 2 * H * Dv + hd * Dqk,
                        *k = row0 + 2 * H * Dv + H * Dqk + hd * Dqk;
            for (int r0 = 0; r0 < n; r0 += ATTN_BLOCK) {
                int r1 = r0 + ATTN_BLOCK < n ? r0 + ATTN_BLOCK : n;
                scores(p, b, n, r0, r1, q, k, ldu, S);
                for (int i = r0; i < r1; i++) {
                    float *s = S + (size_t)(i - r0) * r1;
                    for (int j = 0; j <= i; j++) {
                        float x = s[j];
                        s[j] = allowed(i, j, h) ? x * sigmoidf(x) * invN : 0.0f;
                    }
                    for (int j = i + 1; j < r1; j++)
                        s[j] = 0.0f;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, Dv, r1, 1.0f, S, r1, v, ldu,
                            0.0f, a + (size_t)(u0 + r0) * lda + hd * Dv, lda);
            }
        }
    }
}

void tr_attn_bwd(const tr_attn *p, const float *uvqk, int ldu, const float *da, int lda, float *duvqk,
                 float *dpos_w, float *dts_w, float *work)
{
    int H = p->H, Dqk = p->Dqk, Dv = p->Dv, N = p->N;
    size_t nn = (size_t)p->max_n * p->max_n, slot = rab_slot(p);
    int threads = 1;
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
    }
    float *rab_g = work + (size_t)threads * 3 * nn;
    if (slot)
        memset(rab_g, 0, sizeof(float) * slot * p->B);
    float invN = 1.0f / (float)N;
    /* One task per user (not per head): a user's bias gradient slot is then
     * written by one thread only. */
#pragma omp parallel num_threads(threads)
    {
        float *S = work + (size_t)omp_get_thread_num() * 3 * nn, *P = S + nn, *dP = P + nn;
#pragma omp for schedule(dynamic, 1)
        for (int b = 0; b < p->B; b++) {
            int u0 = p->offsets[b], n = p->offsets[b + 1] - u0;
            int h = p->hist ? p->hist[b] : n;
            float *gpos = slot ? rab_g + slot * b : NULL, *gts = gpos ? gpos + 2 * N - 1 : NULL;
            const uint16_t *bk = slot ? p->buckets + p->bucket_off[b] : NULL;
            for (int hd = 0; hd < H; hd++) {
                const float *row0 = uvqk + (size_t)u0 * ldu;
                const float *v = row0 + H * Dv + hd * Dv, *q = row0 + 2 * H * Dv + hd * Dqk,
                            *k = row0 + 2 * H * Dv + H * Dqk + hd * Dqk;
                float *drow0 = duvqk + (size_t)u0 * ldu;
                float *dv = drow0 + H * Dv + hd * Dv, *dq = drow0 + 2 * H * Dv + hd * Dqk,
                      *dk = drow0 + 2 * H * Dv + H * Dqk + hd * Dqk;
                const float *dA = da + (size_t)u0 * lda + hd * Dv;
                /* dV and dK gather from every later block: start them at 0 */
                for (int i = 0; i < n; i++) {
                    memset(dv + (size_t)i * ldu, 0, sizeof(float) * Dv);
                    memset(dk + (size_t)i * ldu, 0, sizeof(float) * Dqk);
                }
                for (int r0 = 0; r0 < n; r0 += ATTN_BLOCK) {
                    int r1 = r0 + ATTN_BLOCK < n ? r0 + ATTN_BLOCK : n, rb = r1 - r0;
                    scores(p, b, n, r0, r1, q, k, ldu, S);
                    /* dP = dA[r0:r1] V[0:r1]^T */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rb, r1, Dv, 1.0f, dA + (size_t)r0 * lda,
                                lda, v, ldu, 0.0f, dP, r1);
                    for (int i = r0; i < r1; i++) {
                        float *s = S + (size_t)(i - r0) * r1, *pp = P + (size_t)(i - r0) * r1,
                              *g = dP + (size_t)(i - r0) * r1;
                        for (int j = 0; j <= i; j++) {
                            if (allowed(i, j, h)) {
                                float x = s[j], sg = sigmoidf(x);
                                pp[j] = x * sg * invN;
                                g[j] *= sg * (1.0f + x * (1.0f - sg)) * invN;
                            } else {
                                pp[j] = 0.0f;
                                g[j] = 0.0f;
                            }
                        }
                        for (int j = i + 1; j < r1; j++)
                            pp[j] = g[j] = 0.0f;
                        if (gpos) {
                            const uint16_t *bi = bk + (size_t)i * n;
                            for (int j = 0; j <= i; j++) {
                                int rel = j - i;
                                if (rel < -(N - 1))
                                    rel = -(N - 1);
                                gpos[N - 1 + rel] += g[j];
                                gts[bi[j]] += g[j];
                            }
                        }
                    }
                    /* dV[0:r1] += P^T dA[r0:r1]; dQ[r0:r1] = alpha dS K[0:r1];
                     * dK[0:r1] += alpha dS^T Q[r0:r1] */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, Dv, rb, 1.0f, P, r1,
                                dA + (size_t)r0 * lda, lda, 1.0f, dv, ldu);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rb, Dqk, r1, p->alpha, dP, r1, k, ldu,
                                0.0f, dq + (size_t)r0 * ldu, ldu);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, Dqk, rb, p->alpha, dP, r1,
                                q + (size_t)r0 * ldu, ldu, 1.0f, dk, ldu);
                }
            }
        }
    }
    if (slot) {
        for (int b = 0; b < p->B; b++) {
            const float *g = rab_g + slot * b;
            for (int i = 0; i < 2 * N - 1; i++)
                dpos_w[i] += g[i];
            for (int i = 0; i < p->n_buckets; i++)
                dts_w[i] += g[2 * N - 1 + i];
        }
    }
}

void tr_attn_buckets(int n, const int64_t *ts, int64_t query_time, int n_buckets_max, uint16_t *out)
{
    HSTU_ASSERT(n_buckets_max <= 65535);
    for (int i = 0; i < n; i++) {
        int64_t next = i + 1 < n ? ts[i + 1] : query_time;
        for (int j = 0; j < n; j++)
            out[(size_t)i * n + j] = (uint16_t)attn_time_bucket(next - ts[j], n_buckets_max);
    }
}
