/* attention_cpu.c - the fast CPU HSTU attention: blocked, OpenMP, sgemm.
 *
 * Computes the function of attention.h (the same as attention_ref.c) the way
 * flash attention does, minus the softmax. A work item is one query block of
 * up to ATTN_BQ_MAX rows of one sequence and a group of heads. For each key block of at
 * most ATTN_BK rows the item computes
 *     S = alpha * Q K^T                  (cblas_sgemm)
 *     W = SiLU(S + rab), 0 where masked  (one vectorised pass, own expf)
 *     O += (1/N) * W V                   (cblas_sgemm)
 * with O in per-thread scratch, written to out once at the end. Without a
 * softmax there is no running max or rescale: blocks simply add up.
 *
 * Masking: a history query block [i0, i1) visits keys [0, i1) only; a key
 * block needs the elementwise mask only where it reaches past i0, and rows
 * that see none of it are left out of both GEMMs. Candidate blocks see every
 * history key unmasked; their own column is one dot product per row and
 * head, added after the blocks.
 *
 * Keys: rows [0, paged) come from pages, [paged, hist) from the dense rows.
 * A key block never mixes the two. Inside the paged part a block that stays
 * in one page is read in place (a page's rows of one head are a matrix with
 * leading dimension H*D); with pages smaller than ATTN_PAGE_DIRECT rows the
 * block's rows are first gathered into scratch, so that page size 1 still
 * runs full-size GEMMs.
 *
 * Relative attention bias: the bias tile of a key block is computed once per
 * item and shared by the item's heads (which is why items then span several
 * heads). The time bucket needs a logarithm per (i, j); a vectorised float
 * logarithm gives it, and the few pairs that lie within a hair of a bucket
 * boundary are redone with attn_time_bucket, so the buckets equal the
 * reference's.
 *
 * SiLU: x / (1 + e^-x) with a branch-free polynomial e^x (relative error
 * below 1e-7) that gcc vectorises at -O2; glibc's vector expf is only used
 * under -ffast-math, which this file refuses.
 *
 * Threads: `omp parallel for schedule(dynamic)` over the work items, sequence
 * by sequence and the costliest first within each. OpenBLAS (its OpenMP
 * build) runs single-threaded inside the parallel region. Each item depends
 * only on its own sequence, so a user's output does not depend on the rest
 * of the batch or on the thread count.
 *
 * Memory: each thread keeps its block scratch (and the calling thread its
 * list of work items) in thread-local buffers that grow when a call needs
 * more (wider heads, more items) and are reused otherwise, so a steady-state
 * call does not allocate. A thread's buffers are freed when the thread exits
 * (a pthread key destructor); those of threads that live to the end of the
 * process (the main thread, the OpenMP pool) are released by the operating
 * system. Allocation failure aborts: the contract returns no status.
 */
#include "kernels/attention.h"

#include "core/status.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef __FAST_MATH__
#error "attention_cpu.c needs IEEE float arithmetic (exp_fast rounds by adding 1.5 * 2^23); build without -ffast-math"
#endif

/* Query rows per work item: ATTN_BQ_MAX when that leaves enough items for
 * the threads, else halved down to ATTN_BQ_MIN. Every key block re-packs K
 * and V inside sgemm, so taller blocks run faster (with OpenBLAS's AVX-512
 * kernels 128 rows beat 64 by ~20%), while 64 gives one 2k-row user ~35
 * blocks per head to spread over many cores. */
#ifndef ATTN_BQ_MAX
#define ATTN_BQ_MAX 128
#endif
#ifndef ATTN_BQ_MIN
#define ATTN_BQ_MIN 64
#endif
/* Key rows per block: S is at most 128 x 256 floats (128 KiB, in L2), long
 * enough for the GEMMs to run near their peak. */
#ifndef ATTN_BK
#define ATTN_BK 256
#endif
/* Pages of at least this many rows are read in place (blocks cut at page
 * ends); smaller pages are gathered into full ATTN_BK-row blocks. */
#ifndef ATTN_PAGE_DIRECT
#define ATTN_PAGE_DIRECT 64
#endif
/* Work items wanted per thread before query blocks shrink and heads of a
 * rab item are split up. */
#define ATTN_ITEMS_PER_THREAD 4

/* ---- scratch ----------------------------------------------------------- */

typedef struct attn_scratch {
    void *buf;
    size_t cap; /* bytes */
} attn_scratch;

static _Thread_local attn_scratch tl_work;  /* per-thread block scratch */
static _Thread_local attn_scratch tl_items; /* the calling thread's item list */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

/* Thread exit: free the thread's two buffers (stored as one small array). */
static void scratch_destroy(void *arg)
{
    void **bufs = arg;
    free(bufs[0]);
    free(bufs[1]);
    free(bufs);
}

static void scratch_key_init(void)
{
    HSTU_ASSERT(pthread_key_create(&scratch_key, scratch_destroy) == 0);
}

/* Returns a buffer of at least `bytes`, 64-byte aligned, owned by the thread;
 * `which` 0 is tl_work, 1 is tl_items. */
static void *scratch_get(int which, size_t bytes)
{
    attn_scratch *s = which ? &tl_items : &tl_work;
    if (s->cap >= bytes)
        return s->buf;
    pthread_once(&scratch_once, scratch_key_init);
    void **bufs = pthread_getspecific(scratch_key);
    if (!bufs) {
        bufs = calloc(2, sizeof(void *));
        HSTU_ASSERT(bufs != NULL);
        HSTU_ASSERT(pthread_setspecific(scratch_key, bufs) == 0);
    }
    free(s->buf);
    bytes = (bytes + 63) / 64 * 64;
    s->buf = aligned_alloc(64, bytes);
    HSTU_ASSERT(s->buf != NULL);
    s->cap = bytes;
    bufs[which] = s->buf;
    return s->buf;
}

/* Floats, rounded up to whole cache lines. */
static size_t pad16(size_t n) { return (n + 15) / 16 * 16; }

/* ---- elementwise ------------------------------------------------------- */

typedef union { float f; uint32_t u; } attn_f32;

/* e^x, |relative error| < 2e-7 on [-87, 88] (Cephes' expf polynomial after
 * the reduction x = n ln2 + r); inputs are clamped to that range, which only
 * moves SiLU's far tail (values below 1e-36). Branch-free so that an
 * `omp simd` loop vectorises it without libmvec or -ffast-math. */
static inline float exp_fast(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln2) by the 1.5 * 2^23 trick: floorf, or a rounding
     * written with a branch, keeps gcc from vectorising the loop. */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    int32_t ni = (int32_t)n;
    float r = x - n * 0.693359375f; /* ln2 split in two for an exact n*hi */
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    attn_f32 scale = { .u = (uint32_t)(ni + 127) << 23 };
    return p * scale.f;
}

/* s[0, nv) <- SiLU(s + bias) (bias may be NULL), s[nv, n) <- 0. */
static void weights_row(float *restrict s, const float *restrict bias, int nv, int n)
{
    if (bias) {
#pragma omp simd
        for (int j = 0; j < nv; j++) {
            float x = s[j] + bias[j];
            s[j] = x / (1.0f + exp_fast(-x));
        }
    } else {
#pragma omp simd
        for (int j = 0; j < nv; j++) {
            float x = s[j];
            s[j] = x / (1.0f + exp_fast(-x));
        }
    }
    for (int j = nv; j < n; j++)
        s[j] = 0.0f;
}

/* ln(t) for t >= 1, absolute error < 1e-5 over the float range (range
 * reduction to m in [sqrt(1/2), sqrt(2)), then the atanh series). */
static inline float log_fast(float t)
{
    attn_f32 v = { .f = t };
    int32_t e = (int32_t)(v.u >> 23) - 127;
    attn_f32 m = { .u = (v.u & 0x007fffffu) | 0x3f800000u };
    int big = m.f > 1.41421356f;
    float mf = m.f * (1.0f - 0.5f * (float)big);
    float ef = (float)(e + big);
    float s = (mf - 1.0f) / (mf + 1.0f);
    float s2 = s * s;
    float q = 1.0f / 9.0f;
    q = q * s2 + 1.0f / 7.0f;
    q = q * s2 + 1.0f / 5.0f;
    q = q * s2 + 1.0f / 3.0f;
    q = q * s2 + 1.0f;
    return ef * 0.693359375f + (ef * -2.12194440e-4f + 2.0f * s * q);
}

/* Distance from a bucket boundary (in units of ln / 0.301) below which the
 * float estimate is not trusted; its error was measured below 1.7e-5 for
 * |dt| < 2^63, so the guard leaves a margin of ten. */
#define ATTN_BUCKET_GUARD 2e-4f

/* bk[j] = attn_time_bucket(next - ts[j], nb) for j in [0, n). */
static void time_buckets(int32_t *restrict bk, int64_t next, const int64_t *restrict ts, int n, int nb)
{
#pragma omp simd
    for (int j = 0; j < n; j++) {
        int64_t dt = next - ts[j];
        uint64_t a = dt < 0 ? (uint64_t)0 - (uint64_t)dt : (uint64_t)dt;
        /* Bitwise logic below, not && or ?:, so that the loop stays
         * branch-free for the vectoriser. */
        float x = log_fast((float)(a | (a == 0))) * (float)(1.0 / 0.301);
        int32_t b = (int32_t)x; /* floor: x >= 0 */
        float fr = x - (float)b;
        int32_t near = (a > 1) & ((fr < ATTN_BUCKET_GUARD) | (fr > 1.0f - ATTN_BUCKET_GUARD));
        b = b > nb ? nb : b;
        b &= -(int32_t)(a > 1);
        bk[j] = b | -near;
    }
    for (int j = 0; j < n; j++)
        if (bk[j] < 0)
            bk[j] = attn_time_bucket(next - ts[j], nb);
}

/* bias[j] = rab of (row i with ts_next(i) = next, column j0 + j), j < n. */
static void bias_row(float *restrict bias, int32_t *restrict bk, const attn_params *p,
                     const attn_seq *s, int i, int64_t next, int j0, int n)
{
    const attn_rab *rab = p->rab;
    int N = p->N;
    time_buckets(bk, next, s->ts + j0, n, rab->n_buckets);
    const float *pos = rab->pos_w + (N - 1);
    const float *tsw = rab->ts_w;
#pragma omp simd
    for (int j = 0; j < n; j++) {
        int rel = j0 + j - i;
        rel = rel < -(N - 1) ? -(N - 1) : rel;
        rel = rel > N - 1 ? N - 1 : rel;
        bias[j] = pos[rel] + tsw[bk[j]];
    }
}

/* ---- key blocks -------------------------------------------------------- */

/* End of the key block starting at j0 (keys below kend); *gather says
 * whether its rows must be copied out of several pages. */
static int kblock_end(const attn_params *p, const attn_seq *s, int j0, int kend, int *gather)
{
    *gather = 0;
    int end = kend - j0 < ATTN_BK ? kend : j0 + ATTN_BK;
    if (j0 >= s->paged)
        return end;
    if (end > s->paged)
        end = s->paged;
    int P = p->page_size;
    int page_end = (j0 / P + 1) * P;
    if (end <= page_end)
        return end;
    if (P >= ATTN_PAGE_DIRECT)
        return page_end;
    *gather = 1;
    return end;
}

/* Start of key row j (head 0) and the row stride, K (is_v 0) or V. */
static const float *key_row(const attn_params *p, const attn_seq *s, int j, int is_v, int *ld)
{
    if (j < s->paged) {
        *ld = p->H * (is_v ? p->Dv : p->Dqk);
        const float *page = s->pages[j / p->page_size];
        return page + (is_v ? p->v_off : p->k_off) + (size_t)(j % p->page_size) * *ld;
    }
    *ld = p->ld_qkv;
    return (is_v ? p->v : p->k) + (size_t)(s->q0 + (j - s->c)) * p->ld_qkv;
}

/* Head h's K or V rows [j0, j1) as a matrix: in place, or gathered into g. */
static const float *kblock_mat(const attn_params *p, const attn_seq *s, int j0, int j1, int h,
                               int is_v, int gather, float *g, int *ld)
{
    int D = is_v ? p->Dv : p->Dqk;
    if (!gather)
        return key_row(p, s, j0, is_v, ld) + (size_t)h * D;
    for (int j = j0; j < j1; j++) {
        int ldr;
        const float *row = key_row(p, s, j, is_v, &ldr) + (size_t)h * D;
        memcpy(g + (size_t)(j - j0) * D, row, sizeof(float) * D);
    }
    *ld = D;
    return g;
}

/* ---- work items -------------------------------------------------------- */

typedef struct attn_item {
    int b;      /* sequence */
    int r0, r1; /* computed rows [r0, r1) of the sequence (dense q0 + r) */
    int h0, h1; /* heads */
    int64_t cost;
} attn_item;

/* Sequence by sequence, so that the threads share one user's K/V in cache;
 * the costliest items of each first, so that the last items are small. */
static int item_cmp(const void *a, const void *b)
{
    const attn_item *x = a, *y = b;
    if (x->b != y->b)
        return x->b - y->b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    if (x->r0 != y->r0)
        return x->r0 - y->r0;
    return x->h0 - y->h0;
}

/* How a call splits its work: query rows per block, heads per item. */
typedef struct attn_plan {
    int bq, hg;
} attn_plan;

/* Query blocks of sequence s: history rows in blocks of bq, then the
 * candidates in blocks of their own. Returns the count; fills it when `it`
 * is not NULL (cost in row x key pairs). */
static int seq_blocks(const attn_seq *s, int b, int bq, attn_item *it)
{
    int n = 0, nh = s->hist - s->c;
    for (int r0 = 0; r0 < nh; r0 += bq, n++) {
        int r1 = nh - r0 < bq ? nh : r0 + bq;
        if (it) {
            int64_t i0 = s->c + r0, i1 = s->c + r1;
            it[n] = (attn_item){ b, r0, r1, 0, 0, (i1 - i0) * ((i0 + i1) / 2 + 1) };
        }
    }
    for (int r0 = nh; r0 < nh + s->cand; r0 += bq, n++) {
        int r1 = nh + s->cand - r0 < bq ? nh + s->cand : r0 + bq;
        if (it)
            it[n] = (attn_item){ b, r0, r1, 0, 0, (int64_t)(r1 - r0) * (s->hist + 1) };
    }
    return n;
}

/* Scratch floats one thread needs for the items of a plan. */
static size_t work_floats(const attn_params *p, attn_plan pl)
{
    size_t n = pad16((size_t)pl.bq * ATTN_BK);            /* S */
    n += pad16((size_t)ATTN_BK * p->Dqk);                 /* gathered K */
    n += pad16((size_t)ATTN_BK * p->Dv);                  /* gathered V */
    n += pad16((size_t)pl.bq * pl.hg * p->Dv);            /* O */
    if (p->rab)
        n += pad16((size_t)pl.bq * ATTN_BK) + pad16(ATTN_BK); /* bias tile, buckets */
    return n;
}

/* One work item: rows [r0, r1) of sequence b, heads [h0, h1). */
static void attn_item_run(const attn_params *p, attn_plan pl, const attn_item *it)
{
    const attn_seq *s = &p->seqs[it->b];
    int hg = it->h1 - it->h0, Dqk = p->Dqk, Dv = p->Dv;
    int rows = it->r1 - it->r0;
    int nh = s->hist - s->c;
    int is_cand = it->r0 >= nh;
    int i0 = is_cand ? s->hist : s->c + it->r0;   /* absolute row of the block's first row */
    int kend = is_cand ? s->hist : s->c + it->r1; /* keys [0, kend) */
    float inv_n = 1.0f / (float)p->N;

    float *S = scratch_get(0, sizeof(float) * work_floats(p, pl)); /* [bq, ATTN_BK] */
    float *kg = S + pad16((size_t)pl.bq * ATTN_BK);           /* [ATTN_BK, Dqk] */
    float *vg = kg + pad16((size_t)ATTN_BK * Dqk);            /* [ATTN_BK, Dv] */
    float *O = vg + pad16((size_t)ATTN_BK * Dv);              /* [rows, hg*Dv] */
    float *bias = O + pad16((size_t)pl.bq * pl.hg * Dv);      /* [bq, ATTN_BK], rab only */
    int32_t *bk = (int32_t *)(bias + pad16((size_t)pl.bq * ATTN_BK)); /* [ATTN_BK] */
    int ldo = hg * Dv;
    memset(O, 0, sizeof(float) * rows * ldo);

    const float *q_blk = p->q + (size_t)(s->q0 + it->r0) * p->ld_qkv;
    for (int j0 = 0; j0 < kend;) {
        int gather;
        int j1 = kblock_end(p, s, j0, kend, &gather);
        int nk = j1 - j0;
        /* Rows before j0 see nothing of this block (history only). */
        int rs = !is_cand && j0 > i0 ? j0 - i0 : 0;
        int m = rows - rs;
        int bias_ld = 0;
        if (p->rab) {
            if (is_cand) { /* every candidate row has the same bias */
                bias_row(bias, bk, p, s, s->hist, s->ts_q, j0, nk);
            } else {
                bias_ld = ATTN_BK;
                for (int r = rs; r < rows; r++) {
                    int i = i0 + r;
                    int nv = i + 1 - j0 < nk ? i + 1 - j0 : nk;
                    int64_t next = i < s->hist - 1 ? s->ts[i + 1] : s->ts_q;
                    bias_row(bias + (size_t)(r - rs) * ATTN_BK, bk, p, s, i, next, j0, nv);
                }
            }
        }
        for (int h = it->h0; h < it->h1; h++) {
            int ldk, ldv;
            const float *K = kblock_mat(p, s, j0, j1, h, 0, gather, kg, &ldk);
            const float *V = kblock_mat(p, s, j0, j1, h, 1, gather, vg, &ldv);
            const float *Q = q_blk + (size_t)rs * p->ld_qkv + (size_t)h * Dqk;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, Dqk, p->alpha, Q,
                        p->ld_qkv, K, ldk, 0.0f, S, ATTN_BK);
            for (int r = 0; r < m; r++) {
                int nv = nk;
                if (!is_cand) {
                    int i = i0 + rs + r;
                    nv = i + 1 - j0 < nk ? i + 1 - j0 : nk;
                }
                weights_row(S + (size_t)r * ATTN_BK, p->rab ? bias + (size_t)r * bias_ld : NULL,
                            nv, nk);
            }
            float *Oh = O + (size_t)rs * ldo + (size_t)(h - it->h0) * Dv;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, Dv, nk, inv_n, S, ATTN_BK,
                        V, ldv, 1.0f, Oh, ldo);
        }
        j0 = j1;
    }

    if (is_cand) { /* each candidate's own column: dense row q0 + r */
        float self_bias = 0.0f;
        if (p->rab)
            self_bias = p->rab->pos_w[p->N - 1] + p->rab->ts_w[attn_time_bucket(0, p->rab->n_buckets)];
        for (int r = 0; r < rows; r++) {
            size_t row = (size_t)(s->q0 + it->r0 + r) * p->ld_qkv;
            for (int h = it->h0; h < it->h1; h++) {
                const float *q = p->q + row + (size_t)h * Dqk;
                const float *k = p->k + row + (size_t)h * Dqk;
                const float *v = p->v + row + (size_t)h * Dv;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (int d = 0; d < Dqk; d++)
                    dot += q[d] * k[d];
                float x = p->alpha * dot + self_bias;
                float w = x / (1.0f + exp_fast(-x)) * inv_n;
                float *o = O + (size_t)r * ldo + (size_t)(h - it->h0) * Dv;
#pragma omp simd
                for (int d = 0; d < Dv; d++)
                    o[d] += w * v[d];
            }
        }
    }

    for (int r = 0; r < rows; r++)
        memcpy(p->out + (size_t)(s->q0 + it->r0 + r) * p->ld_out + (size_t)it->h0 * Dv,
               O + (size_t)r * ldo, sizeof(float) * ldo);
}

/* Query blocks of the whole batch with blocks of bq rows. */
static int batch_blocks(const attn_params *p, int bq)
{
    int n = 0;
    for (int b = 0; b < p->B; b++)
        n += seq_blocks(&p->seqs[b], b, bq, NULL);
    return n;
}

void attn_fwd_cpu(const attn_params *p)
{
    if (p->H <= 0)
        return;
    for (int b = 0; b < p->B; b++) {
        const attn_seq *s = &p->seqs[b];
        HSTU_ASSERT(s->c >= 0 && s->c <= s->hist && s->cand >= 0);
        HSTU_ASSERT(s->paged >= 0 && s->paged <= s->hist && (s->c == 0 || s->c <= s->paged));
        HSTU_ASSERT(s->paged == 0 || (s->pages && p->page_size > 0));
        HSTU_ASSERT(!p->rab || s->hist == 0 || s->ts);
    }

    /* Tall query blocks when there are items enough for the threads. Then
     * heads per item: all of them when a bias tile is there to share, unless
     * that leaves too few items; one without a bias. */
    int64_t want = (int64_t)ATTN_ITEMS_PER_THREAD * omp_get_max_threads();
    attn_plan pl = { ATTN_BQ_MAX, 1 };
    int nqb = batch_blocks(p, pl.bq);
    while (pl.bq > ATTN_BQ_MIN && (int64_t)nqb * p->H < want) {
        pl.bq /= 2;
        nqb = batch_blocks(p, pl.bq);
    }
    if (nqb == 0)
        return;
    if (p->rab) {
        pl.hg = p->H;
        while (pl.hg > 1 && (int64_t)nqb * ((p->H + pl.hg - 1) / pl.hg) < want)
            pl.hg = (pl.hg + 1) / 2;
    }
    int ngroups = (p->H + pl.hg - 1) / pl.hg;
    int nitems = nqb * ngroups;

    attn_item *items = scratch_get(1, sizeof(attn_item) * (size_t)nitems);
    attn_item *blk = items + (size_t)nitems - nqb; /* blocks first, expanded downwards */
    for (int b = 0, n = 0; b < p->B; b++)
        n += seq_blocks(&p->seqs[b], b, pl.bq, blk + n);
    for (int q = 0, n = 0; q < nqb; q++) {
        attn_item base = blk[q];
        for (int g = 0; g < ngroups; g++, n++) {
            items[n] = base;
            items[n].h0 = g * pl.hg;
            items[n].h1 = g * pl.hg + pl.hg < p->H ? g * pl.hg + pl.hg : p->H;
        }
    }
    qsort(items, (size_t)nitems, sizeof(attn_item), item_cmp);

#pragma omp parallel for schedule(dynamic)
    for (int n = 0; n < nitems; n++)
        attn_item_run(p, pl, &items[n]);
}
