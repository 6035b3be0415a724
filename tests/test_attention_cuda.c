/* test_attention_cuda.c - attn_fwd_cuda (bf16 on the GPU) against the fp32
 * reference attn_fwd_ref on random inputs.
 *
 * Every case builds a jagged batch from a table of sequences (c, hist, cand,
 * paged; the pool is passed only when some sequence has paged > 0): q/k/v
 * rows interleaved in one dense buffer (ld_qkv wider than the heads), gaps
 * between the sequences' rows, history pages in a shared bf16 pool under
 * shuffled page ids (each page holds two layers; the kernel reads
 * the second, so a wrong k_off/v_off shows), timestamps per sequence. Inputs
 * are drawn in fp32 and rounded to bf16; the reference runs in fp32 on the
 * rounded values. Each case runs every kernel (mma.sync, wgmma,
 * warp-specialized wgmma, and the same with K and V loaded by TMA where
 * that applies) on an output poisoned with NaN bits and checks,
 * per kernel:
 *   - every computed value is finite (so it was written) and every other
 *     value of the output buffer still holds the poison;
 *   - max|out - ref| <= 2x max|emul - ref|, where emul is the same math with
 *     the kernel's two roundings (each weight SiLU(x)/N to bf16 before it
 *     multiplies v, and the output to bf16): spec 5's "2x the error of the
 *     same math done in bf16" (docs/numerics.md);
 *   - and the stricter max|out - ref| <= 2x max|bf16(ref) - ref|, 2x the
 *     error of the reference's own result merely rounded to bf16;
 *   - ||out - ref|| / ||ref|| <= 1e-2.
 * The line under each case prints the error, its ratio to that bound and to
 * the error of the reference merely rounded to bf16.
 *
 * Without CUDA in the build, or without a usable GPU, every GPU case is
 * reported as skipped with the reason. HSTU_TEST_QUICK=1 runs a small subset
 * (for compute-sanitizer); HSTU_TEST_KERNELS=mma,wgmma,ws,tma (any of them)
 * limits the kernels, e.g. to run each in its own process. The TMA form's
 * output must equal the cp.async form's (ws) bit for bit, over pages too;
 * HSTU_TEST_DIFF=1 prints the first values where they differ.
 */
#include "harness.h"

#include "core/rng.h"
#include "kernels/attention.h"
#include "kernels/attention_cuda.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef HSTU_HAVE_CUDA
#include <cuda_runtime.h>

#define GAP 3      /* dense rows left between two sequences */
#define LAYERS 2   /* layers in a page; the kernel reads the last */
#define POISON 0xFFFFu
#define MAXSEQ 8

static const int kAllKernels[] = {ATTN_CUDA_KERNEL_MMA, ATTN_CUDA_KERNEL_WGMMA, ATTN_CUDA_KERNEL_WS,
                                  ATTN_CUDA_KERNEL_TMA};
static const char *const kAllNames[] = {"mma.sync", "wgmma", "ws", "tma"};
static const char *const kAllKeys[] = {"mma", "wgmma", "ws", "tma"};
#define NALL 4
static int kKernels[NALL];
static const char *kKernelNames[NALL];
static int NKERNELS;

/* The kernels to run: all, or those HSTU_TEST_KERNELS names. */
static void select_kernels(void)
{
    const char *sel = getenv("HSTU_TEST_KERNELS");
    for (int i = 0; i < NALL; i++) {
        bool on = !sel || !*sel;
        if (!on) {
            char list[64];
            snprintf(list, sizeof list, ",%s,", sel);
            char key[16];
            snprintf(key, sizeof key, ",%s,", kAllKeys[i]);
            on = strstr(list, key) != NULL;
        }
        if (on) {
            kKernels[NKERNELS] = kAllKernels[i];
            kKernelNames[NKERNELS++] = kAllNames[i];
        }
    }
}

/* ---- bf16 on the host --------------------------------------------------- */

static float round_bf16(float f) { return t_bf2f(t_f2bf(f)); }

/* ---- problems ------------------------------------------------------------- */

typedef struct seq_spec {
    int c, hist, cand, paged;
    uint64_t seed; /* 0: derived from the case seed and the index */
} seq_spec;

typedef struct case_spec {
    int H, Dqk, Dv, P;
    int rab, N, n_buckets;
    float alpha;  /* 0: 1/sqrt(Dqk) */
    float scale;  /* q/k values uniform in [-scale, scale]; 0: 1 */
    int ts_mode;  /* 0: increasing, small gaps; 1: gaps up to 1e12 s; 2: on bucket boundaries */
    int nseq;
    seq_spec seqs[MAXSEQ];
} case_spec;

typedef struct problem {
    case_spec cs;
    attn_params p; /* host fp32 view, for the references */
    attn_seq seqs[MAXSEQ];
    attn_rab rab;
    attn_cuda_seq cseqs[MAXSEQ];
    size_t rows;            /* dense rows, gaps included */
    float *qkv;             /* [rows, ld_qkv], bf16 values */
    uint16_t *qkv_bf;
    int npages;             /* pages in the pool */
    size_t page_elems;
    float *pool;            /* [npages, page_elems] */
    uint16_t *pool_bf;
    int *page_table;        /* per sequence from cseqs[b].page0 */
    int npt;
    const float **page_ptrs; /* the same ids as pointers, for the reference */
    int64_t *ts;            /* per sequence from cseqs[b].ts0 */
    int nts;
    float *pos_w, *ts_w;
    float *out_ref, *out_emul; /* [rows, ld_out] */
    int max_rows;
} problem;

/* Head widths the attention's TMA form takes (attn_cuda_tma_form). */
static bool tma_widths(int Dqk, int Dv) { return Dqk == Dv && (Dqk == 64 || Dqk == 128 || Dqk == 256); }

static void fill(rng *r, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = round_bf16(rng_range(r, -scale, scale));
}

/* Timestamps of one sequence; returns ts_q. */
static int64_t make_ts(rng *r, int64_t *ts, int n, int mode)
{
    if (mode == 2) {
        /* ts_q = 0 and ts[j] = -(boundary of bucket b + {-1, 0, +1}), b over
         * every bucket: the candidates' gaps sit on and beside each exact
         * boundary, up to |dt| ~ 9e18. */
        uint64_t thr[256];
        int nt = attn_cuda_time_thresholds(thr, 256);
        for (int j = 0; j < n; j++) {
            int b = 1 + (j / 3) % (nt - 1);
            ts[j] = -(int64_t)(thr[b] + (uint64_t)(j % 3) - 1);
        }
        return 0;
    }
    int64_t t = 1700000000;
    for (int j = 0; j < n; j++) {
        int64_t gap;
        if (mode == 1)
            gap = rng_below(r, 4) == 0 ? rng_below(r, 2) : rng_below(r, 1000000000000ll);
        else
            gap = rng_below(r, 5) == 0 ? 0 : rng_below(r, 100000);
        t += gap;
        ts[j] = t;
    }
    return t + rng_below(r, 3600 * 24 * 30);
}

static void problem_free(problem *pb)
{
    free(pb->qkv);
    free(pb->qkv_bf);
    free(pb->pool);
    free(pb->pool_bf);
    free(pb->page_table);
    free(pb->page_ptrs);
    free(pb->ts);
    free(pb->pos_w);
    free(pb->ts_w);
    free(pb->out_ref);
    free(pb->out_emul);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "test_attention_cuda: out of memory\n");
        exit(2);
    }
    return p;
}

static void problem_init(problem *pb, const case_spec *cs, uint64_t seed)
{
    memset(pb, 0, sizeof(*pb));
    pb->cs = *cs;
    const int H = cs->H, Dqk = cs->Dqk, Dv = cs->Dv, P = cs->P;
    attn_params *p = &pb->p;
    p->B = cs->nseq;
    p->H = H;
    p->Dqk = Dqk;
    p->Dv = Dv;
    p->ld_qkv = 2 * H * Dqk + H * Dv + 8; /* q | k | v | pad, a multiple of 8 */
    p->page_size = P;
    const size_t kw = (size_t)P * H * Dqk, vw = (size_t)P * H * Dv;
    p->k_off = (LAYERS - 1) * (kw + vw);
    p->v_off = p->k_off + kw;
    /* Pages of whole rows where the TMA form can read them (attn_cuda_tma_form),
     * 8 values longer otherwise: the cp.async loads take any multiple of 8. */
    pb->page_elems = LAYERS * (kw + vw) + (tma_widths(Dqk, Dv) ? 0 : 8);
    p->alpha = cs->alpha != 0 ? cs->alpha : 1.0f / sqrtf((float)Dqk);
    p->N = cs->N;
    p->ld_out = H * Dv + 6; /* even, wider than the heads */
    const float scale = cs->scale != 0 ? cs->scale : 1.0f;

    size_t rows = GAP;
    int npages = 3, npt = 0, nts = 0; /* 3 pages nobody uses */
    for (int b = 0; b < cs->nseq; b++) {
        const seq_spec *ss = &cs->seqs[b];
        int n = ss->hist - ss->c + ss->cand;
        rows += (size_t)n + GAP;
        npt += (ss->paged + P - 1) / P;
        nts += ss->hist;
        if (n > pb->max_rows)
            pb->max_rows = n;
    }
    npages += npt;
    pb->rows = rows;
    pb->npages = npages;
    pb->npt = npt;
    pb->nts = nts;
    pb->qkv = xcalloc(rows * p->ld_qkv, sizeof(float));
    pb->qkv_bf = xcalloc(rows * p->ld_qkv, sizeof(uint16_t));
    pb->pool = xcalloc((size_t)npages * pb->page_elems, sizeof(float));
    pb->pool_bf = xcalloc((size_t)npages * pb->page_elems, sizeof(uint16_t));
    pb->page_table = xcalloc(npt, sizeof(int));
    pb->page_ptrs = xcalloc(npt, sizeof(float *));
    pb->ts = xcalloc(nts, sizeof(int64_t));
    pb->out_ref = xcalloc(rows * p->ld_out, sizeof(float));
    pb->out_emul = xcalloc(rows * p->ld_out, sizeof(float));

    rng r0 = {seed};
    fill(&r0, pb->qkv, rows * p->ld_qkv, scale);           /* gap rows too: never read */
    fill(&r0, pb->pool, (size_t)npages * pb->page_elems, scale); /* unused pages too */
    p->q = pb->qkv;
    p->k = pb->qkv + (size_t)H * Dqk;
    p->v = pb->qkv + (size_t)2 * H * Dqk;

    /* Page ids: a shuffled permutation of the pool. */
    int *perm = xcalloc(npages, sizeof(int));
    for (int i = 0; i < npages; i++)
        perm[i] = i;
    for (int i = npages - 1; i > 0; i--) {
        int j = (int)rng_below(&r0, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }

    if (cs->rab) {
        pb->pos_w = xcalloc(2 * cs->N - 1, sizeof(float));
        pb->ts_w = xcalloc(cs->n_buckets + 1, sizeof(float));
        rng rr = {seed ^ 0x5151};
        for (int i = 0; i < 2 * cs->N - 1; i++)
            pb->pos_w[i] = rng_range(&rr, -1.0f, 1.0f);
        for (int i = 0; i <= cs->n_buckets; i++)
            pb->ts_w[i] = rng_range(&rr, -1.0f, 1.0f);
        pb->rab = (attn_rab){pb->pos_w, pb->ts_w, cs->n_buckets};
        p->rab = &pb->rab;
    }

    int q0 = GAP, pt = 0, ts0 = 0;
    for (int b = 0; b < cs->nseq; b++) {
        const seq_spec *ss = &cs->seqs[b];
        attn_seq *s = &pb->seqs[b];
        attn_cuda_seq *g = &pb->cseqs[b];
        rng r = {ss->seed ? ss->seed : seed * 31 + (uint64_t)b + 1};
        s->c = g->c = ss->c;
        s->hist = g->hist = ss->hist;
        s->cand = g->cand = ss->cand;
        s->paged = g->paged = ss->paged;
        s->q0 = g->q0 = q0;
        int n = ss->hist - ss->c + ss->cand;
        fill(&r, pb->qkv + (size_t)q0 * p->ld_qkv, (size_t)n * p->ld_qkv, scale);
        q0 += n + GAP;
        g->page0 = pt;
        int np = (ss->paged + P - 1) / P;
        for (int i = 0; i < np; i++) {
            int id = perm[pt + i];
            pb->page_table[pt + i] = id;
            pb->page_ptrs[pt + i] = pb->pool + (size_t)id * pb->page_elems;
            fill(&r, pb->pool + (size_t)id * pb->page_elems, pb->page_elems, scale); /* the user's own data */
        }
        s->pages = np ? (float *const *)(pb->page_ptrs + pt) : NULL;
        pt += np;
        g->ts0 = ts0;
        if (cs->rab) {
            s->ts = pb->ts + ts0;
            s->ts_q = g->ts_q = make_ts(&r, pb->ts + ts0, ss->hist, cs->ts_mode);
        }
        ts0 += ss->hist;
    }
    p->seqs = pb->seqs;
    free(perm);
    for (size_t i = 0; i < rows * p->ld_qkv; i++)
        pb->qkv_bf[i] = t_f2bf(pb->qkv[i]);
    for (size_t i = 0; i < (size_t)npages * pb->page_elems; i++)
        pb->pool_bf[i] = t_f2bf(pb->pool[i]);
}

/* ---- the bf16-emulating reference ----------------------------------------- */

static const float *kv_row(const attn_params *p, const attn_seq *s, int j, int h, int is_v)
{
    int width = is_v ? p->H * p->Dv : p->H * p->Dqk;
    int hd = is_v ? p->Dv : p->Dqk;
    if (j < s->paged)
        return s->pages[j / p->page_size] + (is_v ? p->v_off : p->k_off) + (size_t)(j % p->page_size) * width +
               (size_t)h * hd;
    return (is_v ? p->v : p->k) + (size_t)(s->q0 + (j - s->c)) * p->ld_qkv + (size_t)h * hd;
}

static float rab_value(const attn_params *p, const attn_seq *s, int i, int j)
{
    if (!p->rab)
        return 0.0f;
    int N = p->N, rel = j - i;
    rel = rel < -(N - 1) ? -(N - 1) : rel > N - 1 ? N - 1 : rel;
    int64_t next = i < s->hist - 1 ? s->ts[i + 1] : s->ts_q;
    int64_t tj = j < s->hist ? s->ts[j] : s->ts_q;
    int64_t dt = (int64_t)((uint64_t)next - (uint64_t)tj);
    return p->rab->pos_w[N - 1 + rel] + p->rab->ts_w[attn_time_bucket(dt, p->rab->n_buckets)];
}

/* The weight of one pair, rounded to bf16 as the kernel rounds it. */
static float weight_bf16(const attn_params *p, const float *q, const float *k, float rab)
{
    float dot = 0.0f;
    for (int d = 0; d < p->Dqk; d++)
        dot += q[d] * k[d];
    float x = p->alpha * dot + rab;
    return round_bf16(x / (1.0f + expf(-x)) / (float)p->N);
}

/* attn_fwd_ref's loops with the kernel's roundings: weights and output. */
static void ref_emul(const attn_params *p, float *out)
{
    float *acc = xcalloc(p->Dv, sizeof(float));
    for (int b = 0; b < p->B; b++) {
        const attn_seq *s = &p->seqs[b];
        int rows = (s->hist - s->c) + s->cand;
        for (int r = 0; r < rows; r++) {
            int dense = s->q0 + r, is_cand = r >= s->hist - s->c;
            int i = is_cand ? s->hist : s->c + r;
            for (int h = 0; h < p->H; h++) {
                const float *q = p->q + (size_t)dense * p->ld_qkv + (size_t)h * p->Dqk;
                memset(acc, 0, sizeof(float) * p->Dv);
                int last = is_cand ? s->hist - 1 : i;
                for (int j = 0; j <= last; j++) {
                    float w = weight_bf16(p, q, kv_row(p, s, j, h, 0), rab_value(p, s, i, j));
                    const float *v = kv_row(p, s, j, h, 1);
                    for (int d = 0; d < p->Dv; d++)
                        acc[d] += w * v[d];
                }
                if (is_cand) {
                    const float *k = p->k + (size_t)dense * p->ld_qkv + (size_t)h * p->Dqk;
                    const float *v = p->v + (size_t)dense * p->ld_qkv + (size_t)h * p->Dv;
                    float w = weight_bf16(p, q, k, rab_value(p, s, i, i));
                    for (int d = 0; d < p->Dv; d++)
                        acc[d] += w * v[d];
                }
                float *o = out + (size_t)dense * p->ld_out + (size_t)h * p->Dv;
                for (int d = 0; d < p->Dv; d++)
                    o[d] = round_bf16(acc[d]);
            }
        }
    }
    free(acc);
}

static void problem_reference(problem *pb)
{
    pb->p.out = pb->out_ref;
    attn_fwd_ref(&pb->p);
    ref_emul(&pb->p, pb->out_emul);
}

/* ---- the GPU side ----------------------------------------------------------- */

typedef struct gpu_problem {
    uint16_t *d_qkv, *d_pool, *d_out;
    uint16_t *d_parts; /* g_parts: ATTN_CUDA_MAX_PART_SPLITS planes of fp16, and their scales */
    float *d_scales;
    size_t parts_bytes, scales_bytes;
    int *d_pt;
    attn_cuda_seq *d_seqs;
    int64_t *d_ts;
    float *d_pos, *d_tsw;
    cudaStream_t stream;
    attn_cuda_params cp;
    size_t out_bytes;
} gpu_problem;

/* Split-KV (case_split): 0 none, -1 the kernel's own choice, else forced. */
static int g_splits;
/* Split-KV parts in global memory (attn_cuda_params.parts), added up by
 * attn_parts_sum_cuda into the output the checks read. */
static bool g_parts;

/* Records a failed CUDA call as a test failure; true when it succeeded. */
static bool cuda_ok(cudaError_t e, const char *what, int line)
{
    if (e != cudaSuccess)
        t_fail_at(__FILE__, line, "%s: %s", what, cudaGetErrorString(e));
    return e == cudaSuccess;
}
#define CUDA_OK(call) cuda_ok((call), #call, __LINE__)

static void gpu_free(gpu_problem *g)
{
    cudaFree(g->d_qkv);
    cudaFree(g->d_pool);
    cudaFree(g->d_out);
    cudaFree(g->d_parts);
    cudaFree(g->d_scales);
    cudaFree(g->d_pt);
    cudaFree(g->d_seqs);
    cudaFree(g->d_ts);
    cudaFree(g->d_pos);
    cudaFree(g->d_tsw);
    if (g->stream)
        cudaStreamDestroy(g->stream);
    memset(g, 0, sizeof(*g));
}

static bool gpu_init(gpu_problem *g, const problem *pb)
{
    const attn_params *p = &pb->p;
    memset(g, 0, sizeof(*g));
    size_t qkv_bytes = pb->rows * p->ld_qkv * sizeof(uint16_t);
    size_t pool_bytes = (size_t)pb->npages * pb->page_elems * sizeof(uint16_t);
    g->out_bytes = pb->rows * p->ld_out * sizeof(uint16_t);
    if (!CUDA_OK(cudaStreamCreate(&g->stream)) || !CUDA_OK(cudaMalloc((void **)&g->d_qkv, qkv_bytes)) ||
        !CUDA_OK(cudaMalloc((void **)&g->d_pool, pool_bytes)) ||
        !CUDA_OK(cudaMalloc((void **)&g->d_out, g->out_bytes)) ||
        !CUDA_OK(cudaMalloc((void **)&g->d_pt, sizeof(int) * (pb->npt ? pb->npt : 1))) ||
        !CUDA_OK(cudaMalloc((void **)&g->d_seqs, sizeof(attn_cuda_seq) * MAXSEQ)) ||
        !CUDA_OK(cudaMemcpy(g->d_qkv, pb->qkv_bf, qkv_bytes, cudaMemcpyHostToDevice)) ||
        !CUDA_OK(cudaMemcpy(g->d_pool, pb->pool_bf, pool_bytes, cudaMemcpyHostToDevice)) ||
        (pb->npt && !CUDA_OK(cudaMemcpy(g->d_pt, pb->page_table, sizeof(int) * pb->npt, cudaMemcpyHostToDevice))) ||
        !CUDA_OK(cudaMemcpy(g->d_seqs, pb->cseqs, sizeof(attn_cuda_seq) * pb->cs.nseq, cudaMemcpyHostToDevice)))
        goto fail;
    if (pb->cs.rab) {
        size_t npos = (size_t)2 * p->N - 1, nb = (size_t)pb->cs.n_buckets + 1;
        if (!CUDA_OK(cudaMalloc((void **)&g->d_ts, sizeof(int64_t) * (pb->nts ? pb->nts : 1))) ||
            !CUDA_OK(cudaMalloc((void **)&g->d_pos, sizeof(float) * npos)) ||
            !CUDA_OK(cudaMalloc((void **)&g->d_tsw, sizeof(float) * nb)) ||
            (pb->nts && !CUDA_OK(cudaMemcpy(g->d_ts, pb->ts, sizeof(int64_t) * pb->nts, cudaMemcpyHostToDevice))) ||
            !CUDA_OK(cudaMemcpy(g->d_pos, pb->pos_w, sizeof(float) * npos, cudaMemcpyHostToDevice)) ||
            !CUDA_OK(cudaMemcpy(g->d_tsw, pb->ts_w, sizeof(float) * nb, cudaMemcpyHostToDevice)))
            goto fail;
    }
    attn_cuda_params *c = &g->cp;
    c->B = p->B;
    c->H = p->H;
    c->Dqk = p->Dqk;
    c->Dv = p->Dv;
    c->seqs = g->d_seqs;
    c->max_rows = pb->max_rows;
    c->q = g->d_qkv;
    c->k = g->d_qkv + (size_t)p->H * p->Dqk;
    c->v = g->d_qkv + (size_t)2 * p->H * p->Dqk;
    c->ld_qkv = p->ld_qkv;
    c->n_rows = (int)pb->rows;
    /* The pool only when some sequence reads it: without, the TMA form
     * of the warp-specialized kernel applies. */
    bool paged = false;
    for (int b = 0; b < pb->cs.nseq; b++)
        paged |= pb->cseqs[b].paged > 0;
    c->pages = paged ? g->d_pool : NULL;
    c->page_table = g->d_pt;
    c->page_size = p->page_size;
    c->page_elems = pb->page_elems;
    c->n_pages = pb->npages;
    c->k_off = p->k_off;
    c->v_off = p->v_off;
    c->alpha = p->alpha;
    c->N = p->N;
    c->pos_w = pb->cs.rab ? g->d_pos : NULL;
    c->ts_w = g->d_tsw;
    c->n_buckets = pb->cs.n_buckets;
    c->ts = g->d_ts;
    c->out = g->d_out;
    c->ld_out = p->ld_out;
    if (g_splits) {
        c->splits = g_splits > 0 ? g_splits : 0;
        for (int b = 0; b < pb->cs.nseq; b++)
            if (pb->cseqs[b].hist + pb->cseqs[b].cand > c->max_keys)
                c->max_keys = pb->cseqs[b].hist + pb->cseqs[b].cand;
    }
    if (g_parts) { /* rows 8 values wider than the heads, planes 8 values (scales 3) apart beyond the rows */
        c->ld_parts = p->H * p->Dv + 8;
        c->parts_plane = pb->rows * (size_t)c->ld_parts + 8;
        c->scale_plane = pb->rows * (size_t)p->H + 3;
        c->parts_planes = ATTN_CUDA_MAX_PART_SPLITS;
        g->parts_bytes = c->parts_plane * ATTN_CUDA_MAX_PART_SPLITS * sizeof(uint16_t);
        g->scales_bytes = c->scale_plane * ATTN_CUDA_MAX_PART_SPLITS * sizeof(float);
        if (!CUDA_OK(cudaMalloc((void **)&g->d_parts, g->parts_bytes)) ||
            !CUDA_OK(cudaMalloc((void **)&g->d_scales, g->scales_bytes)))
            goto fail;
        c->parts = g->d_parts;
        c->parts_scale = g->d_scales;
    }
    return true;
fail:
    gpu_free(g);
    return false;
}

/* Poisons the output, runs kernel `kind`, copies the output to out. */
static bool gpu_run(gpu_problem *g, int kind, uint16_t *out)
{
    if (!CUDA_OK(cudaMemset(g->d_out, 0xFF, g->out_bytes))) /* 0xFFFF: a bf16 NaN */
        return false;
    if (g->d_parts && (!CUDA_OK(cudaMemset(g->d_parts, 0xFF, g->parts_bytes)) || /* NaN: what is left unwritten shows */
                       !CUDA_OK(cudaMemset(g->d_scales, 0xFF, g->scales_bytes))))
        return false;
    attn_cuda_force_kernel(kind);
    int rc = attn_fwd_cuda(&g->cp, g->stream);
    const int S = attn_cuda_parts_used(&g->cp); /* (under the forced kernel: the one that ran) */
    attn_cuda_force_kernel(ATTN_CUDA_KERNEL_AUTO);
    if (rc == 0 && S > 0)
        rc = attn_parts_sum_cuda(&g->cp, S, g->stream);
    return CUDA_OK((cudaError_t)rc) && CUDA_OK(cudaStreamSynchronize(g->stream)) &&
           CUDA_OK(cudaMemcpy(out, g->d_out, g->out_bytes, cudaMemcpyDeviceToHost));
}

/* The checks of the header comment for one kernel's output. */
static void check_output(const problem *pb, const uint16_t *out, const char *kname)
{
    const attn_params *p = &pb->p;
    const int w = p->H * p->Dv;
    double err = 0, e_round = 0, e_emul = 0, num = 0, den = 0;
    long bad = 0, poison_broken = 0;
    char *is_row = xcalloc(pb->rows, 1);
    for (int b = 0; b < p->B; b++) {
        const attn_seq *s = &pb->seqs[b];
        int n = s->hist - s->c + s->cand;
        memset(is_row + s->q0, 1, n);
    }
    for (size_t r = 0; r < pb->rows; r++)
        for (int d = 0; d < p->ld_out; d++) {
            size_t i = r * p->ld_out + d;
            if (!is_row[r] || d >= w) {
                poison_broken += out[i] != POISON;
                continue;
            }
            double g = t_bf2f(out[i]), e = pb->out_ref[i], m = pb->out_emul[i];
            if (!isfinite(g)) {
                bad++;
                continue;
            }
            err = fmax(err, fabs(g - e));
            e_round = fmax(e_round, fabs((double)round_bf16((float)e) - e));
            e_emul = fmax(e_emul, fabs(m - e));
            num += (g - e) * (g - e);
            den += e * e;
        }
    free(is_row);
    double l2 = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("    %-10s max err %.3g = %.2fx bf16 math (%.3g), %.2fx rounding alone (%.3g); rel l2 %.2g\n", kname, err,
           e_emul > 0 ? err / e_emul : 0.0, e_emul, e_round > 0 ? err / e_round : 0.0, e_round, l2);
    T_CHECK(bad == 0, "%s: %ld computed outputs are NaN/Inf or were not written", kname, bad);
    T_CHECK(poison_broken == 0, "%s: %ld values written outside the computed rows", kname, poison_broken);
    T_CHECK(err <= 2 * e_emul, "%s: max err %.3g > 2 x %.3g (the same math in bf16)", kname, err, e_emul);
    T_CHECK(err <= 2 * e_round, "%s: max err %.3g > 2 x %.3g (the reference rounded to bf16)", kname, err, e_round);
    T_CHECK(l2 <= 1e-2, "%s: rel l2 err %.3g > 1e-2", kname, l2);
}

/* Builds the problem, runs the references once, then every kernel. */
static void check_problem(problem *pb)
{
    problem_reference(pb);
    gpu_problem g;
    if (!gpu_init(&g, pb))
        return;
    const size_t n = pb->rows * pb->p.ld_out;
    uint16_t *out = xcalloc(n, sizeof(uint16_t)), *ws = NULL;
    /* Widths the TMA form takes run it, over pages of 16, 32 and 64 rows too */
    const int P = pb->p.page_size;
    const bool tma = tma_widths(pb->p.Dqk, pb->p.Dv) && (!g.cp.pages || P == 16 || P == 32 || P == 64);
    T_CHECK(attn_cuda_tma_form(&g.cp) == tma,
            "TMA form %d at Dqk %d, Dv %d, pages %d", (int)attn_cuda_tma_form(&g.cp), pb->p.Dqk, pb->p.Dv,
            g.cp.pages != NULL);
    for (int k = 0; k < NKERNELS; k++) {
        if (!gpu_run(&g, kKernels[k], out))
            continue;
        check_output(pb, out, kKernelNames[k]);
        /* The TMA form is the cp.async form with other loads: bit for bit */
        if (kKernels[k] == ATTN_CUDA_KERNEL_WS)
            ws = (uint16_t *)memcpy(xcalloc(n, sizeof(uint16_t)), out, n * sizeof(uint16_t));
        if (kKernels[k] == ATTN_CUDA_KERNEL_TMA && ws) {
            size_t diff = 0;
            for (size_t i = 0; i < n; i++) {
                if (out[i] != ws[i] && diff < 12 && getenv("HSTU_TEST_DIFF"))
                    fprintf(stderr, "DIFF row %zu col %zu: ws %g tma %g\n", i / pb->p.ld_out, i % pb->p.ld_out,
                            t_bf2f(ws[i]), t_bf2f(out[i]));
                diff += out[i] != ws[i];
            }
            T_CHECK(diff == 0, "tma and ws differ in %zu of %zu values (pages %d)", diff, n, g.cp.pages != NULL);
        }
    }
    free(ws);
    free(out);
    gpu_free(&g);
}

static void check_case(const case_spec *cs, uint64_t seed)
{
    problem pb;
    problem_init(&pb, cs, seed);
    check_problem(&pb);
    problem_free(&pb);
}

/* ---- cases ----------------------------------------------------------------- */

#define SEQ(c_, hist_, cand_, paged_) \
    ((seq_spec){.c = (c_), .hist = (hist_), .cand = (cand_), .paged = (paged_)})
#define SEQ_SEEDED(c_, hist_, cand_, paged_, seed_) \
    ((seq_spec){.c = (c_), .hist = (hist_), .cand = (cand_), .paged = (paged_), .seed = (seed_)})

static void case_jagged(int rab)
{
    /* Lengths around the 64-key tiles and 128-row blocks, cand 0 and > 0. */
    case_spec cs = {.H = 2, .Dqk = 64, .Dv = 64, .P = 16, .rab = rab, .N = 512, .n_buckets = 128, .nseq = 7,
                    .seqs = {SEQ(0, 100, 7, 0), SEQ(0, 1, 3, 0), SEQ(0, 300, 0, 0), SEQ(0, 65, 64, 0),
                             SEQ(0, 0, 5, 0), SEQ(0, 129, 130, 0), SEQ(0, 127, 1, 0)}};
    check_case(&cs, 1 + rab);
}
static void case_jagged_plain(void) { case_jagged(0); }
static void case_jagged_rab(void) { case_jagged(1); }

static void case_short_histories(void)
{
    /* hist 0 (candidates see only themselves) and hist 1, cached or not. */
    case_spec cs = {.H = 3, .Dqk = 64, .Dv = 64, .P = 16, .N = 64, .n_buckets = 128, .nseq = 6,
                    .seqs = {SEQ(0, 0, 1, 0), SEQ(0, 0, 130, 0), SEQ(0, 1, 0, 0), SEQ(0, 1, 1, 0), SEQ(1, 1, 2, 1),
                             SEQ(0, 1, 200, 1)}};
    check_case(&cs, 3);
    if (t_case_failed())
        return;
    cs.rab = 1;
    check_case(&cs, 4);
}

static void case_only_candidates(void)
{
    /* c = hist: the whole history cached in pages, only candidates new. */
    case_spec cs = {.H = 2, .Dqk = 128, .Dv = 128, .P = 16, .rab = 1, .N = 256, .n_buckets = 128, .nseq = 3,
                    .seqs = {SEQ(77, 77, 5, 77), SEQ(300, 300, 100, 300), SEQ(1, 1, 1, 1)}};
    check_case(&cs, 5);
}

static void case_pages(void)
{
    /* paged = hist (c = 0: the new rows are in pages too) and c < paged <
     * hist, page sizes 16, 32 and 64 (the TMA form) and 48 (cp.async
     * only), shuffled page ids. */
    static const int sizes[] = {16, 32, 64, 48};
    for (int k = 0; k < 4; k++) {
        case_spec cs = {.H = 2, .Dqk = 64, .Dv = 64, .P = sizes[k], .N = 600, .nseq = 5,
                        .seqs = {SEQ(0, 333, 4, 333), SEQ(40, 450, 9, 290), SEQ(128, 260, 3, 128),
                                 SEQ(0, 520, 0, 64), SEQ(17, 200, 30, 100)}};
        check_case(&cs, k < 2 ? 10 + k : 20 + k);
        if (t_case_failed())
            return;
    }
    case_spec cs = {.H = 2, .Dqk = 128, .Dv = 128, .P = 32, .rab = 1, .N = 257, .n_buckets = 128, .nseq = 3,
                    .seqs = {SEQ(123, 700, 70, 200), SEQ(0, 31, 1, 31), SEQ(64, 65, 2, 65)}};
    check_case(&cs, 12);
}

static void case_head_widths(void)
{
    /* The fast widths 64, 128, 256; Dqk != Dv; other multiples of 16
     * (zero-padded to the next kernel width). */
    static const int dims[][2] = {{64, 64}, {128, 128}, {256, 256}, {128, 64},
                                  {64, 256}, {48, 80}, {16, 16}, {256, 32}, {192, 192}};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        case_spec cs = {.H = 2, .Dqk = dims[k][0], .Dv = dims[k][1], .P = 16, .rab = (int)(k & 1), .N = 200,
                        .n_buckets = 128, .nseq = 3,
                        .seqs = {SEQ(20, 150, 10, 40), SEQ(0, 90, 3, 0), SEQ(0, 200, 70, 0)}};
        printf("    Dqk %d, Dv %d, rab %d\n", cs.Dqk, cs.Dv, cs.rab);
        check_case(&cs, 30 + k);
        if (t_case_failed())
            return;
    }
}

static void case_rab_time(void)
{
    /* Gaps of 0 s to 1e12 s with few buckets (the top clamp) and with 128. */
    case_spec cs = {.H = 2, .Dqk = 64, .Dv = 64, .P = 16, .rab = 1, .N = 400, .n_buckets = 20, .ts_mode = 1,
                    .nseq = 2, .seqs = {SEQ(0, 300, 20, 0), SEQ(24, 200, 5, 100)}};
    check_case(&cs, 40);
    if (t_case_failed())
        return;
    cs.n_buckets = 128;
    check_case(&cs, 41);
    if (t_case_failed())
        return;
    /* Candidates' gaps on and beside every exact bucket boundary (up to
     * 9e18 s), 145 buckets so none is clamped, and bucket weights far apart
     * so a bucket off by one shows far beyond bf16 rounding. */
    case_spec cb = {.H = 1, .Dqk = 64, .Dv = 64, .P = 16, .rab = 1, .N = 500, .n_buckets = 145, .ts_mode = 2,
                    .nseq = 1, .seqs = {SEQ(438, 438, 128, 438)}};
    problem pb;
    problem_init(&pb, &cb, 42);
    for (int b = 0; b <= cb.n_buckets; b++)
        pb.ts_w[b] = (float)(b % 2 ? b : -b) * 0.05f;
    check_problem(&pb);
    problem_free(&pb);
}

static void case_long(void)
{
    /* D 256, many key tiles per row block, row blocks not aligned with the
     * key tiles (c = 37), a long history under many candidates. */
    case_spec cs = {.H = 2, .Dqk = 256, .Dv = 256, .P = 32, .N = 2048, .nseq = 2,
                    .seqs = {SEQ(37, 1100, 130, 300), SEQ(0, 777, 1, 0)}};
    check_case(&cs, 60);
}

static void case_silu_tails(void)
{
    /* Large logits (|x| up to ~60): both tails of SiLU. */
    case_spec cs = {.H = 2, .Dqk = 64, .Dv = 64, .P = 32, .rab = 1, .N = 128, .n_buckets = 128, .alpha = 1.0f,
                    .nseq = 2, .seqs = {SEQ(0, 200, 8, 0), SEQ(10, 150, 4, 64)}};
    check_case(&cs, 50);
    if (t_case_failed())
        return;
    cs.alpha = 3.0f;
    check_case(&cs, 51);
}

/* Split-KV problems: one user alone (the batch-1 case, D 256, rab), three
 * users (D 128), and two short users (more splits than tiles: empty
 * splits). */
static const case_spec kSplitOne = {.H = 2, .Dqk = 256, .Dv = 256, .P = 32, .rab = 1, .N = 4096, .n_buckets = 128,
                                    .nseq = 1, .seqs = {SEQ(3000, 3128, 40, 3000)}};
static const case_spec kSplitThree = {
    .H = 4, .Dqk = 128, .Dv = 128, .P = 16, .N = 2048, .nseq = 3,
    .seqs = {SEQ(1500, 1700, 30, 1500), SEQ(0, 900, 10, 0), SEQ(777, 800, 1, 790)}};
static const case_spec kSplitFew = {.H = 1, .Dqk = 64, .Dv = 64, .P = 16, .N = 512, .nseq = 2,
                                    .seqs = {SEQ(0, 100, 5, 0), SEQ(96, 130, 3, 96)}};

/* The three problems: the kernel's own split, then four forced splits of
 * the first, then the most splits on the short users. */
static void split_cases(const int forced[4], int most)
{
    g_splits = -1;
    check_case(&kSplitOne, 80);
    if (!t_case_failed())
        check_case(&kSplitThree, 81);
    for (int i = 0; i < 4 && !t_case_failed(); i++) {
        g_splits = forced[i];
        check_case(&kSplitOne, 82 + i);
    }
    g_splits = most;
    if (!t_case_failed())
        check_case(&kSplitFew, 86);
    g_splits = 0;
}

static void case_split(void)
{
    /* Few new rows over long cached histories: a handful of row blocks, so
     * several CTAs (one cluster) share each block's key tiles and add in
     * fp32 through shared memory. Pages, rab, candidates; forced splits that
     * do not divide the 128 rows of a block, and more splits than a block
     * has tiles (empty parts). */
    static const int forced[4] = {3, 7, ATTN_CUDA_MAX_SPLITS, 2};
    split_cases(forced, ATTN_CUDA_MAX_SPLITS);
}

/* The same problems with the parts in global memory (no cluster): S up to
 * ATTN_CUDA_MAX_PART_SPLITS (more than a cluster holds), and empty splits,
 * whose planes the next split zeroes (the planes start as NaN). */
static void case_split_parts(void)
{
    static const int forced[4] = {3, 11, ATTN_CUDA_MAX_PART_SPLITS, 2};
    g_parts = true;
    split_cases(forced, ATTN_CUDA_MAX_PART_SPLITS);
    g_parts = false;
}

/* Parts added up give the cluster's output at the same S but for the
 * parts' fp16 rounding (11 significant bits, relative to the largest value
 * of the row's head slice: the per-row scale): every value within a bf16
 * step of its own plus 1/64 of its slice's largest. */
static void case_split_parts_vs_cluster(void)
{
    const case_spec *cases[2] = {&kSplitOne, &kSplitThree};
    static const int forced[3] = {3, 8, 5};
    for (int ci = 0; ci < 2; ci++)
        for (int fi = 0; fi < 3 && !t_case_failed(); fi++) {
            problem pb;
            problem_init(&pb, cases[ci], 200 + ci);
            gpu_problem gc, gp;
            g_splits = forced[fi];
            g_parts = false;
            bool ok = gpu_init(&gc, &pb);
            g_parts = true;
            ok = ok && gpu_init(&gp, &pb);
            g_parts = false;
            g_splits = 0;
            if (!ok) {
                problem_free(&pb);
                return;
            }
            size_t n = pb.rows * pb.p.ld_out;
            uint16_t *oc = xcalloc(n, sizeof(uint16_t)), *op = xcalloc(n, sizeof(uint16_t));
            if (gpu_run(&gc, ATTN_CUDA_KERNEL_WS, oc) && gpu_run(&gp, ATTN_CUDA_KERNEL_WS, op)) {
                T_CHECK(attn_cuda_parts_used(&gp.cp) == forced[fi], "S %d: parts used %d", forced[fi],
                        attn_cuda_parts_used(&gp.cp));
                size_t diff = 0, same = 0;
                const int Dv = pb.p.Dv;
                for (size_t i = 0; i < n; i++) {
                    const size_t s0 = i - (i % (size_t)pb.p.ld_out) % (size_t)Dv; /* the slice's first value */
                    double big = 0;
                    for (int d = 0; d < Dv && s0 + d < n; d++)
                        if (isfinite(t_bf2f(oc[s0 + d])))
                            big = fmax(big, fabs(t_bf2f(oc[s0 + d])));
                    const double a = t_bf2f(oc[i]), b = t_bf2f(op[i]);
                    same += oc[i] == op[i];
                    diff += !(fabs(a - b) <= ldexp(fabs(a), -7) + ldexp(big, -6)) && oc[i] != op[i];
                }
                T_CHECK(diff == 0, "case %d, S %d: %zu of %zu values more than one bf16 step from the cluster's", ci,
                        forced[fi], diff, n);
                printf("    case %d, S %d: %.1f%% of the values bit for bit the cluster's\n", ci, forced[fi],
                       100.0 * same / n);
            }
            free(oc), free(op);
            gpu_free(&gc);
            gpu_free(&gp);
            problem_free(&pb);
        }
}

/* The split factor fills one wave of clusters, never two: for every count of
 * row blocks a few new rows give (1 to 16 users of 384 rows, 4 heads) and
 * long or short histories, the chosen S's clusters fit at once on this GPU
 * (attn_cuda_max_clusters), and S + 1 would not have fit or had too few
 * key tiles, or S is the most there is. Parts through global memory split
 * as far as the SMs allow with 2 key tiles a split at least, and pay exactly
 * where they split more than the clusters or at least 3 ways. */
static void case_split_rule(void)
{
    int dev = 0, n_sm = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev);
    for (int d = 64; d <= 256; d *= 2)
        for (int B = 1; B <= 16; B++)
            for (int keys = 512; keys <= 8192; keys *= 2) {
                attn_cuda_params p = {.B = B, .H = 4, .Dqk = d, .Dv = d, .max_rows = 384, .max_keys = keys + 256};
                const int S = attn_cuda_splits(&p), ctas = B * 4 * 3;
                T_CHECK(S >= 1 && S <= ATTN_CUDA_MAX_SPLITS, "d %d, B %d, keys %d: S %d", d, B, keys, S);
                if (S > 1)
                    T_CHECK(ctas <= attn_cuda_max_clusters(S, d), "d %d, B %d, keys %d: %d clusters of %d, %d fit",
                            d, B, keys, ctas, S, attn_cuda_max_clusters(S, d));
                const bool room = (S + 1) * ctas <= n_sm && (keys + 256) / 192 >= S + 1;
                if (S < ATTN_CUDA_MAX_SPLITS && room)
                    T_CHECK(ctas > attn_cuda_max_clusters(S + 1, d), "d %d, B %d, keys %d: S %d, but %d fit at %d",
                            d, B, keys, S, attn_cuda_max_clusters(S + 1, d), S + 1);
                /* parts through global memory: where they split more, or 3 ways or more (never 2 against 2) */
                attn_cuda_params pp = p;
                pp.parts = &pp; /* (a call with planes; nothing runs) */
                pp.parts_planes = ATTN_CUDA_MAX_PART_SPLITS;
                const int Sp = attn_cuda_splits(&pp);
                /* (parts: as many as the SMs hold, 2 key tiles each at least) */
                int want = n_sm / ctas < (keys + 256) / 128 ? n_sm / ctas : (keys + 256) / 128;
                want = want > ATTN_CUDA_MAX_PART_SPLITS ? ATTN_CUDA_MAX_PART_SPLITS : want < 2 ? 1 : want;
                T_CHECK(Sp == want, "d %d, B %d, keys %d: parts S %d, want %d", d, B, keys, Sp, want);
                const bool pay = attn_cuda_parts_pay(&pp);
                T_CHECK(pay == (Sp > S || Sp >= 3), "d %d, B %d, keys %d: parts S %d, cluster S %d, pay %d", d, B,
                        keys, Sp, S, pay);
                pp.parts_planes = 1;
                T_CHECK(!attn_cuda_parts_pay(&pp), "d %d, B %d, keys %d: parts pay with one plane", d, B, keys);
                if (t_case_failed())
                    return;
            }
    /* the end-to-end benchmark's shapes on an H100-sized GPU: batch 1 takes parts, batch 4 (S = 2) the cluster */
    if (n_sm >= 132) {
        attn_cuda_params one = {.B = 1, .H = 4, .Dqk = 256, .Dv = 256, .max_rows = 384, .max_keys = 896,
                                .parts_planes = ATTN_CUDA_MAX_PART_SPLITS};
        one.parts = &one;
        attn_cuda_params four = one;
        four.B = 4;
        T_CHECK(attn_cuda_parts_pay(&one) && attn_cuda_splits(&one) == 7, "batch 1 over 896 keys: parts at S 7");
        T_CHECK(!attn_cuda_parts_pay(&four) && attn_cuda_splits(&four) == 2, "batch 4: the cluster at S 2");
    }
}

static void case_batch_independence(void)
{
    /* A user's rows are bit-identical alone and inside a batch. */
    seq_spec x = SEQ_SEEDED(30, 200, 17, 96, 0xabcdef);
    case_spec alone = {.H = 2, .Dqk = 128, .Dv = 128, .P = 32, .rab = 1, .N = 256, .n_buckets = 128, .nseq = 1,
                       .seqs = {x}};
    case_spec crowd = alone;
    crowd.nseq = 3;
    crowd.seqs[0] = SEQ_SEEDED(0, 500, 50, 0, 0x1111);
    crowd.seqs[1] = x;
    crowd.seqs[2] = SEQ_SEEDED(64, 900, 3, 64, 0x2222);
    problem a, c;
    problem_init(&a, &alone, 70); /* same case seed: the same rab weights */
    problem_init(&c, &crowd, 70);
    gpu_problem ga, gc;
    if (!gpu_init(&ga, &a))
        goto free_problems;
    if (!gpu_init(&gc, &c))
        goto free_ga;
    uint16_t *oa = xcalloc(a.rows * a.p.ld_out, sizeof(uint16_t));
    uint16_t *oc = xcalloc(c.rows * c.p.ld_out, sizeof(uint16_t));
    int rows = x.hist - x.c + x.cand, w = alone.H * alone.Dv;
    for (int k = 0; k < NKERNELS; k++) {
        if (!gpu_run(&ga, kKernels[k], oa) || !gpu_run(&gc, kKernels[k], oc))
            break;
        long diff = 0;
        for (int r = 0; r < rows; r++)
            diff += memcmp(oa + (size_t)(a.seqs[0].q0 + r) * a.p.ld_out, oc + (size_t)(c.seqs[1].q0 + r) * c.p.ld_out,
                           sizeof(uint16_t) * w) != 0;
        T_CHECK(diff == 0, "%s: %ld of %d rows differ between alone and in a batch", kKernelNames[k], diff, rows);
    }
    free(oa);
    free(oc);
    gpu_free(&gc);
free_ga:
    gpu_free(&ga);
free_problems:
    problem_free(&a);
    problem_free(&c);
}

static void case_sanitizer_set(void)
{
    /* Small shapes for compute-sanitizer: every kernel width, with and
     * without rab, pages, candidates, hist 0. The fourth sequence has whole
     * page tiles, then the tile across `paged` in a reused buffer (the TMA
     * form's cp.async tile after two TMA ones). */
    static const int dims[] = {64, 128, 256};
    for (int k = 0; k < 3; k++)
        for (int rab = 0; rab < 2; rab++) {
            case_spec cs = {.H = 1, .Dqk = dims[k], .Dv = dims[k], .P = 16, .rab = rab, .N = 210, .n_buckets = 128,
                            .nseq = 4,
                            .seqs = {SEQ(0, 70, 5, 0), SEQ(20, 90, 3, 40), SEQ(0, 0, 3, 0), SEQ(70, 200, 4, 150)}};
            check_case(&cs, 90 + 2 * k + rab);
            if (t_case_failed())
                return;
            /* no pages: the TMA form too */
            case_spec dense = {.H = 2, .Dqk = dims[k], .Dv = dims[k], .P = 16, .rab = rab, .N = 300,
                               .n_buckets = 128, .nseq = 3,
                               .seqs = {SEQ(0, 270, 5, 0), SEQ(0, 0, 3, 0), SEQ(0, 1, 1, 0)}};
            check_case(&dense, 120 + 2 * k + rab);
            if (t_case_failed())
                return;
        }
}

static void case_tma(void)
{
    /* Every key in the dense rows: K and V loaded by TMA (whole 64-row
     * boxes past the sequence's end, masked), lengths off the tiles,
     * candidates, only candidates, rows at the end of the buffer (boxes
     * past it arrive as zeros); widths 256 and 128, rab off and on; width
     * 64 in the small set. */
    case_spec cs = {.H = 2, .Dqk = 256, .Dv = 256, .P = 32, .N = 1500, .n_buckets = 128, .nseq = 5,
                    .seqs = {SEQ(0, 1100, 130, 0), SEQ(0, 777, 1, 0), SEQ(0, 0, 200, 0), SEQ(0, 129, 0, 0),
                             SEQ(0, 250, 6, 0)}};
    check_case(&cs, 100);
    if (t_case_failed())
        return;
    cs.Dqk = cs.Dv = 128;
    cs.rab = 1;
    cs.H = 3;
    check_case(&cs, 101);
}

static void case_bucket_table(void)
{
    /* The kernel's bucket boundaries against the CPU's attn_time_bucket. */
    uint64_t thr[256];
    int n = attn_cuda_time_thresholds(thr, 256);
    T_REQUIRE(n > 100 && n < 256 && thr[0] == 0, "table of %d entries, thr[0] = %llu", n,
              (unsigned long long)thr[0]);
    for (int b = 1; b < n; b++) {
        int at = attn_time_bucket((int64_t)thr[b], 1 << 30), below = attn_time_bucket((int64_t)thr[b] - 1, 1 << 30);
        T_CHECK(at >= b && below < b, "bucket %d: boundary %llu gives %d, one less gives %d", b,
                (unsigned long long)thr[b], at, below);
    }
    T_CHECK(attn_time_bucket(INT64_MIN, 1 << 30) == n - 1, "largest gap gives bucket %d, table ends at %d",
            attn_time_bucket(INT64_MIN, 1 << 30), n - 1);
}

static void case_arguments(void)
{
    /* Refusals happen before any launch (no GPU needed). */
    char why[200];
    T_CHECK(attn_cuda_supported(64, 64, why, sizeof why), "64/64 refused");
    T_CHECK(attn_cuda_supported(16, 256, why, sizeof why), "16/256 refused");
    T_CHECK(!attn_cuda_supported(24, 64, why, sizeof why) && strstr(why, "24"), "24 accepted or no reason");
    T_CHECK(!attn_cuda_supported(64, 272, why, sizeof why), "272 accepted");
    static uint16_t buf[64] __attribute__((aligned(16)));
    static attn_cuda_seq seq;
    attn_cuda_params p = {.B = 1, .H = 1, .Dqk = 16, .Dv = 16, .seqs = &seq, .max_rows = 1, .q = buf, .k = buf,
                          .v = buf, .ld_qkv = 48, .page_size = 16, .alpha = 1, .N = 1, .out = buf, .ld_out = 16};
    attn_cuda_params bad = p;
    bad.ld_qkv = 44;
    T_CHECK(attn_fwd_cuda(&bad, NULL) == (int)cudaErrorInvalidValue, "ld_qkv 44 accepted");
    bad = p;
    bad.k = buf + 1;
    T_CHECK(attn_fwd_cuda(&bad, NULL) == (int)cudaErrorInvalidValue, "misaligned k accepted");
    bad = p;
    bad.Dv = 24;
    T_CHECK(attn_fwd_cuda(&bad, NULL) == (int)cudaErrorInvalidValue, "Dv 24 accepted");
    bad = p;
    bad.pos_w = (const float *)buf; /* rab without ts */
    T_CHECK(attn_fwd_cuda(&bad, NULL) == (int)cudaErrorInvalidValue, "rab without timestamps accepted");
    bad = p;
    bad.B = 0;
    T_CHECK(attn_fwd_cuda(&bad, NULL) == 0, "B = 0 refused");
}

/* q activated in the kernel (attn_cuda_params.q_bias, q_fold_e,
 * q_fold_stats: the LayerNorm folded into q's GEMM, dense_cuda.h's ln_fold)
 * against the same activation done on the host and given to the kernel as
 * its q, with no activation fields: every kernel's whole output bit for
 * bit. Per dense row a mean k/16 (|k| <= 40) and an rstd of 1/4 to 2, per
 * column e = i/64 (|i| <= 64) and a bias j/32 (|j| <= 32): mean x e and
 * rstd x (q - mean x e) are exact in fp32, so the kernel's q = bf16(rstd *
 * (q - mean * e) + bias) is the host's whatever FMA contraction does. With
 * the bias and without (q_bias NULL); q_silu stays 0. */
static void q_fold_problem(problem *pb, uint64_t seed)
{
    gpu_problem g;
    if (!gpu_init(&g, pb))
        return;
    const attn_params *p = &pb->p;
    const int qw = p->H * p->Dqk;
    const size_t nq = pb->rows * p->ld_qkv, n = pb->rows * p->ld_out;
    rng r = {seed};
    float *stats = xcalloc(2 * pb->rows, sizeof(float)), *e = xcalloc(qw, sizeof(float));
    float *bias = xcalloc(qw, sizeof(float));
    for (size_t i = 0; i < pb->rows; i++) {
        stats[2 * i] = (float)(rng_below(&r, 81) - 40) / 16.0f;
        stats[2 * i + 1] = ldexpf(1.0f, (int)rng_below(&r, 4) - 2);
    }
    for (int c = 0; c < qw; c++) {
        e[c] = (float)(rng_below(&r, 129) - 64) / 64.0f;
        bias[c] = (float)(rng_below(&r, 65) - 32) / 32.0f;
    }
    size_t computed = 0; /* output values the kernels write */
    for (int b = 0; b < p->B; b++)
        computed += (size_t)(pb->seqs[b].hist - pb->seqs[b].c + pb->seqs[b].cand) * p->H * p->Dv;
    float *d_stats = NULL, *d_e = NULL, *d_bias = NULL;
    uint16_t *act = xcalloc(nq, sizeof(uint16_t)), *o_host = xcalloc(n, sizeof(uint16_t));
    uint16_t *o_kernel = xcalloc(n, sizeof(uint16_t));
    if (!CUDA_OK(cudaMalloc((void **)&d_stats, sizeof(float) * 2 * pb->rows)) ||
        !CUDA_OK(cudaMalloc((void **)&d_e, sizeof(float) * qw)) ||
        !CUDA_OK(cudaMalloc((void **)&d_bias, sizeof(float) * qw)) ||
        !CUDA_OK(cudaMemcpy(d_stats, stats, sizeof(float) * 2 * pb->rows, cudaMemcpyHostToDevice)) ||
        !CUDA_OK(cudaMemcpy(d_e, e, sizeof(float) * qw, cudaMemcpyHostToDevice)) ||
        !CUDA_OK(cudaMemcpy(d_bias, bias, sizeof(float) * qw, cudaMemcpyHostToDevice)))
        goto free_buffers;
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        /* q activated on the host, every dense row (gaps too: the kernels see only their own rows) */
        memcpy(act, pb->qkv_bf, nq * sizeof(uint16_t));
        for (size_t i = 0; i < pb->rows; i++)
            for (int c = 0; c < qw; c++) {
                uint16_t *q = act + i * p->ld_qkv + c;
                const float b = with_bias ? bias[c] : 0.0f;
                *q = t_f2bf(stats[2 * i + 1] * (t_bf2f(*q) - stats[2 * i] * e[c]) + b);
            }
        for (int k = 0; k < NKERNELS; k++) {
            /* (a) the host's q, no activation in the kernel */
            g.cp.q_bias = NULL;
            g.cp.q_fold_e = g.cp.q_fold_stats = NULL;
            if (!CUDA_OK(cudaMemcpy(g.d_qkv, act, nq * sizeof(uint16_t), cudaMemcpyHostToDevice)) ||
                !gpu_run(&g, kKernels[k], o_host))
                goto free_buffers;
            /* (b) the raw q, activated by the kernel */
            g.cp.q_bias = with_bias ? d_bias : NULL;
            g.cp.q_fold_e = d_e;
            g.cp.q_fold_stats = d_stats;
            if (!CUDA_OK(cudaMemcpy(g.d_qkv, pb->qkv_bf, nq * sizeof(uint16_t), cudaMemcpyHostToDevice)) ||
                !gpu_run(&g, kKernels[k], o_kernel))
                goto free_buffers;
            size_t diff = 0, written = 0;
            for (size_t i = 0; i < n; i++) {
                diff += o_host[i] != o_kernel[i];
                written += o_kernel[i] != POISON;
            }
            T_CHECK(written == computed, "%s, bias %d: %zu of the %zu computed values written", kKernelNames[k],
                    with_bias, written, computed);
            T_CHECK(diff == 0, "%s, bias %d: %zu of %zu values differ between q activated before and in the kernel",
                    kKernelNames[k], with_bias, diff, n);
        }
    }
    printf("    Dqk %d, Dv %d, splits %s%s: %d kernels, with and without the bias, %zu values each\n", p->Dqk, p->Dv,
           g_splits < 0 ? "the kernel's choice" : g_splits > 0 ? "forced" : "none", g_parts ? " (parts)" : "",
           NKERNELS, computed);
free_buffers:
    cudaFree(d_stats);
    cudaFree(d_e);
    cudaFree(d_bias);
    free(stats), free(e), free(bias), free(act), free(o_host), free(o_kernel);
    gpu_free(&g);
}

/* The problems of q_fold_problem: one and two users at D 64 (no split),
 * head widths 48 and 80 (zero-padded to the kernel's 64 and 128: columns
 * past Dqk stay as loaded), and the batch-1 split-KV problem at D 256 with
 * the kernel's split, in a cluster and through parts in global memory. */
static bool g_quick; /* HSTU_TEST_QUICK */

static void case_q_fold(void)
{
    static const case_spec heads = {.H = 2, .Dqk = 48, .Dv = 80, .P = 16, .rab = 1, .N = 200, .n_buckets = 128,
                                    .nseq = 3, .seqs = {SEQ(20, 150, 10, 40), SEQ(0, 90, 3, 0), SEQ(0, 200, 70, 0)}};
    const struct {
        const case_spec *cs;
        int splits;
        bool parts;
    } runs[] = {{&kSplitFew, 0, false}, {&heads, 0, false}, {&kSplitOne, -1, false}, {&kSplitOne, -1, true}};
    /* (the quick subset, which the sanitizers run, only the first two: D 256 over 4096 keys is minutes there) */
    const size_t n_runs = g_quick ? 2 : sizeof runs / sizeof runs[0];
    for (size_t i = 0; i < n_runs && !t_case_failed(); i++) {
        problem pb;
        problem_init(&pb, runs[i].cs, 300 + i);
        g_splits = runs[i].splits;
        g_parts = runs[i].parts;
        q_fold_problem(&pb, 310 + i);
        g_splits = 0;
        g_parts = false;
        problem_free(&pb);
    }
}

typedef struct test_case {
    const char *name;
    void (*fn)(void);
    int quick;  /* in the HSTU_TEST_QUICK subset */
    int gpu;    /* needs the device */
} test_case;

static const test_case kCases[] = {
    {"attention cuda: bucket boundaries equal attn_time_bucket's", case_bucket_table, 1, 0},
    {"attention cuda: argument checks", case_arguments, 1, 0},
    {"attention cuda: small shapes, every width, rab on/off, pages or none (sanitizer set)", case_sanitizer_set, 1, 1},
    {"attention cuda: jagged batch, lengths off the tiles, cand 0 and > 0", case_jagged_plain, 0, 1},
    {"attention cuda: jagged batch, rab", case_jagged_rab, 0, 1},
    {"attention cuda: hist 0 and 1", case_short_histories, 0, 1},
    {"attention cuda: c = hist (only candidates, history in pages)", case_only_candidates, 0, 1},
    {"attention cuda: pages 16 and 32, shuffled, paged = hist and c < paged < hist", case_pages, 0, 1},
    {"attention cuda: head widths 16..256, Dqk != Dv", case_head_widths, 0, 1},
    {"attention cuda: rab time gaps to 1e12 s and exact bucket boundaries", case_rab_time, 0, 1},
    {"attention cuda: D 256, long history, unaligned blocks", case_long, 0, 1},
    {"attention cuda: SiLU tails (large logits)", case_silu_tails, 0, 1},
    {"attention cuda: a user's rows alone = in a batch (bitwise)", case_batch_independence, 0, 1},
    {"attention cuda: split-KV (few rows, long cached histories), fp32 sums in a cluster", case_split, 1, 1},
    {"attention cuda: the split factor's clusters fit in one wave; when parts pay", case_split_rule, 1, 1},
    {"attention cuda: split-KV with fp16 parts in global memory (no cluster, S up to 16)", case_split_parts, 1, 1},
    {"attention cuda: split-KV parts added up = the cluster's output within a bf16 step", case_split_parts_vs_cluster, 0, 1},
    {"attention cuda: no pages: K and V loaded by TMA", case_tma, 0, 1},
    {"attention cuda: q activated in the kernel, bias and folded LayerNorm = q activated before (bitwise)",
     case_q_fold, 1, 1},
};

int main(void)
{
    char why[256];
    bool gpu = attn_cuda_device_present(why, sizeof why);
    select_kernels();
    const char *q = getenv("HSTU_TEST_QUICK");
    bool quick = q && *q && strcmp(q, "0") != 0;
    g_quick = quick;
    for (size_t i = 0; i < sizeof kCases / sizeof kCases[0]; i++) {
        const test_case *tc = &kCases[i];
        if (quick && !tc->quick)
            continue;
        if (tc->gpu && !gpu)
            t_skip(tc->name, why);
        else
            t_run(tc->name, tc->fn);
    }
    return t_summary();
}

#else /* no CUDA in this build */

static const char *const kNames[] = {
    "attention cuda: bucket boundaries equal attn_time_bucket's",
    "attention cuda: argument checks",
    "attention cuda: small shapes, every width, rab on/off, pages or none (sanitizer set)",
    "attention cuda: jagged batch, lengths off the tiles, cand 0 and > 0",
    "attention cuda: jagged batch, rab",
    "attention cuda: hist 0 and 1",
    "attention cuda: c = hist (only candidates, history in pages)",
    "attention cuda: pages 16 and 32, shuffled, paged = hist and c < paged < hist",
    "attention cuda: head widths 16..256, Dqk != Dv",
    "attention cuda: rab time gaps to 1e12 s and exact bucket boundaries",
    "attention cuda: D 256, long history, unaligned blocks",
    "attention cuda: SiLU tails (large logits)",
    "attention cuda: a user's rows alone = in a batch (bitwise)",
    "attention cuda: split-KV (few rows, long cached histories), fp32 sums in a cluster",
    "attention cuda: the split factor's clusters fit in one wave; when parts pay",
    "attention cuda: split-KV with fp16 parts in global memory (no cluster, S up to 16)",
    "attention cuda: split-KV parts added up = the cluster's output within a bf16 step",
    "attention cuda: no pages: K and V loaded by TMA",
    "attention cuda: q activated in the kernel, bias and folded LayerNorm = q activated before (bitwise)",
};

int main(void)
{
    for (size_t i = 0; i < sizeof kNames / sizeof kNames[0]; i++)
        t_skip(kNames[i], "this build has no CUDA (nvcc was not found when it was built)");
    return t_summary();
}

#endif
