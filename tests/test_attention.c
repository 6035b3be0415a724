/* test_attention.c - the fast CPU attention (attn_fwd_cpu) against the
 * reference (attn_fwd_ref) on random inputs.
 *
 * Every case builds a jagged batch from a table of sequences (c, hist, cand,
 * paged): dense q/k/v rows interleaved in one buffer (ld_qkv wider than the
 * heads), gaps between the sequences' dense rows, pages holding two layers
 * (the kernel reads layer 1, so a wrong k_off/v_off shows), and out filled
 * with a sentinel. Both backends run; computed rows must agree to the spec's
 * fp32 rule (max|out-ref|/max|ref| <= 1e-4), hold no NaN/Inf, and rows of no
 * sequence must keep the sentinel. Each sequence draws its data from its own
 * seed, so the same user can be placed in different batches.
 */
#include "harness.h"

#include "core/rng.h"
#include "kernels/attention.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TOL_FP32 1e-4 /* spec 5: fp32 backend against an fp32 reference */
#define SENTINEL 1234.5f
#define GAP 2         /* dense rows left between two sequences */
#define LAYERS 2      /* layers in a page; the kernel reads the last */

typedef struct seq_spec {
    int c, hist, cand, paged;
    uint64_t seed; /* 0: derived from the case seed and the index */
} seq_spec;

typedef struct case_spec {
    int H, Dqk, Dv, P;
    int rab, N, n_buckets;
    float alpha;     /* 0: 1/sqrt(Dqk) */
    float scale;     /* q/k values uniform in [-scale, scale]; 0: 1 */
    int ts_mode;     /* 0: increasing with small gaps, 1: spread over 1e12 s,
                        2: at bucket boundaries (see make_ts) */
    int nseq;
    seq_spec seqs[8];
} case_spec;

typedef struct problem {
    attn_params p;
    attn_seq seqs[8];
    attn_rab rab;
    float *qkv;         /* [rows, ld_qkv]: q | k | v | pad per row */
    float *out_cpu, *out_ref;
    size_t out_rows;
    float *pos_w, *ts_w;
    int64_t *ts[8];
    float **page_ptrs[8];
    float *page_mem[8];
} problem;

static void fill(rng *r, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = rng_range(r, -scale, scale);
}

/* Timestamps of one sequence (seconds); returns ts_q. */
static int64_t make_ts(rng *r, int64_t *ts, int n, int mode, int n_buckets)
{
    int64_t t = 1700000000;
    if (mode == 2) {
        /* ts_q = 0 and ts[j] = -(bucket boundary + {-1, 0, +1}): every
         * candidate pair lands on or next to a boundary of the bucket. */
        for (int j = 0; j < n; j++) {
            int b = 1 + j / 3 % n_buckets;
            int64_t thr = (int64_t)ceil(exp(0.301 * b));
            ts[j] = -(thr + (j % 3) - 1);
        }
        return 0;
    }
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
    free(pb->out_cpu);
    free(pb->out_ref);
    free(pb->pos_w);
    free(pb->ts_w);
    for (int b = 0; b < 8; b++) {
        free(pb->ts[b]);
        free(pb->page_ptrs[b]);
        free(pb->page_mem[b]);
    }
}

static void problem_init(problem *pb, const case_spec *cs, uint64_t seed)
{
    memset(pb, 0, sizeof(*pb));
    int H = cs->H, Dqk = cs->Dqk, Dv = cs->Dv, P = cs->P;
    attn_params *p = &pb->p;
    p->B = cs->nseq;
    p->H = H;
    p->Dqk = Dqk;
    p->Dv = Dv;
    p->ld_qkv = 2 * H * Dqk + H * Dv + 3;
    p->page_size = P;
    size_t kw = (size_t)P * H * Dqk, vw = (size_t)P * H * Dv;
    p->k_off = (LAYERS - 1) * (kw + vw);
    p->v_off = p->k_off + kw;
    p->alpha = cs->alpha != 0 ? cs->alpha : 1.0f / sqrtf((float)Dqk);
    p->N = cs->N;
    p->ld_out = H * Dv + 5;
    float scale = cs->scale != 0 ? cs->scale : 1.0f;

    size_t rows = GAP;
    for (int b = 0; b < cs->nseq; b++) {
        const seq_spec *ss = &cs->seqs[b];
        rows += (size_t)(ss->hist - ss->c) + ss->cand + GAP;
    }
    pb->out_rows = rows;
    pb->qkv = malloc(sizeof(float) * rows * p->ld_qkv);
    pb->out_cpu = malloc(sizeof(float) * rows * p->ld_out);
    pb->out_ref = malloc(sizeof(float) * rows * p->ld_out);
    rng r0 = { seed };
    fill(&r0, pb->qkv, rows * p->ld_qkv, scale);
    for (size_t i = 0; i < rows * p->ld_out; i++)
        pb->out_cpu[i] = pb->out_ref[i] = SENTINEL;
    p->q = pb->qkv;
    p->k = pb->qkv + (size_t)H * Dqk;
    p->v = pb->qkv + (size_t)2 * H * Dqk;

    if (cs->rab) {
        pb->pos_w = malloc(sizeof(float) * (2 * cs->N - 1));
        pb->ts_w = malloc(sizeof(float) * (cs->n_buckets + 1));
        rng rr = { seed ^ 0x5151 };
        fill(&rr, pb->pos_w, 2 * cs->N - 1, 1.0f);
        fill(&rr, pb->ts_w, cs->n_buckets + 1, 1.0f);
        pb->rab = (attn_rab){ pb->pos_w, pb->ts_w, cs->n_buckets };
        p->rab = &pb->rab;
    }

    int q0 = GAP;
    for (int b = 0; b < cs->nseq; b++) {
        const seq_spec *ss = &cs->seqs[b];
        attn_seq *s = &pb->seqs[b];
        rng r = { ss->seed ? ss->seed : seed * 31 + (uint64_t)b + 1 };
        s->c = ss->c;
        s->hist = ss->hist;
        s->cand = ss->cand;
        s->paged = ss->paged;
        s->q0 = q0;
        int n = (ss->hist - ss->c) + ss->cand;
        /* The sequence's own dense rows, from its own seed. */
        fill(&r, pb->qkv + (size_t)q0 * p->ld_qkv, (size_t)n * p->ld_qkv, scale);
        q0 += n + GAP;
        if (ss->paged > 0) {
            int np = (ss->paged + P - 1) / P;
            size_t page_floats = LAYERS * (kw + vw);
            pb->page_mem[b] = malloc(sizeof(float) * page_floats * np);
            pb->page_ptrs[b] = malloc(sizeof(float *) * np);
            fill(&r, pb->page_mem[b], page_floats * np, scale);
            /* Pages out of order in memory, as a pool would hand them out. */
            for (int i = 0; i < np; i++)
                pb->page_ptrs[b][i] = pb->page_mem[b] + page_floats * (size_t)((i * 7 + 3) % np);
            if (np % 7 == 0) /* (i*7+3) % np is a permutation only when gcd(7, np) = 1 */
                for (int i = 0; i < np; i++)
                    pb->page_ptrs[b][i] = pb->page_mem[b] + page_floats * (size_t)(np - 1 - i);
            s->pages = pb->page_ptrs[b];
        }
        if (cs->rab) {
            pb->ts[b] = malloc(sizeof(int64_t) * (ss->hist > 0 ? ss->hist : 1));
            s->ts = pb->ts[b];
            s->ts_q = make_ts(&r, pb->ts[b], ss->hist, cs->ts_mode, cs->n_buckets);
        }
    }
    p->seqs = pb->seqs;
}

/* Rows [r, r + n) of out, H*Dv floats each, copied to a packed array. */
static float *pack_rows(const problem *pb, const float *out, int r, int n)
{
    size_t w = (size_t)pb->p.H * pb->p.Dv;
    float *x = malloc(sizeof(float) * (n > 0 ? n : 1) * w);
    for (int i = 0; i < n; i++)
        memcpy(x + i * w, out + (size_t)(r + i) * pb->p.ld_out, sizeof(float) * w);
    return x;
}

/* Runs both backends and checks: error, finiteness, sentinel rows. Returns
 * the relative error over all computed rows. */
static double run_and_compare(problem *pb, double tol)
{
    pb->p.out = pb->out_ref;
    attn_fwd_ref(&pb->p);
    pb->p.out = pb->out_cpu;
    attn_fwd_cpu(&pb->p);

    size_t w = (size_t)pb->p.H * pb->p.Dv;
    int computed = 0;
    for (int b = 0; b < pb->p.B; b++)
        computed += pb->seqs[b].hist - pb->seqs[b].c + pb->seqs[b].cand;
    float *a = malloc(sizeof(float) * (computed > 0 ? computed : 1) * w);
    float *e = malloc(sizeof(float) * (computed > 0 ? computed : 1) * w);
    size_t n = 0;
    int untouched_ok = 1;
    char *is_row = calloc(pb->out_rows, 1);
    for (int b = 0; b < pb->p.B; b++) {
        const attn_seq *s = &pb->seqs[b];
        int rows = s->hist - s->c + s->cand;
        float *x = pack_rows(pb, pb->out_cpu, s->q0, rows);
        float *y = pack_rows(pb, pb->out_ref, s->q0, rows);
        memcpy(a + n, x, sizeof(float) * rows * w);
        memcpy(e + n, y, sizeof(float) * rows * w);
        n += (size_t)rows * w;
        free(x);
        free(y);
        memset(is_row + s->q0, 1, rows);
    }
    for (size_t r = 0; r < pb->out_rows; r++)
        for (int d = 0; d < pb->p.ld_out; d++) {
            int inside = is_row[r] && d < (int)w;
            if (!inside && pb->out_cpu[r * pb->p.ld_out + d] != SENTINEL)
                untouched_ok = 0;
        }
    double err = t_rel_err(a, e, n);
    T_CHECK(!t_has_nonfinite(a, n), "attn_fwd_cpu produced NaN/Inf");
    T_CHECK(!t_has_nonfinite(e, n), "attn_fwd_ref produced NaN/Inf");
    T_CHECK(err <= tol, "rel err %.3g > %.1g", err, tol);
    T_CHECK(untouched_ok, "attn_fwd_cpu wrote outside the computed rows");
    free(a);
    free(e);
    free(is_row);
    return err;
}

static void check_case(const case_spec *cs, uint64_t seed)
{
    problem pb;
    problem_init(&pb, cs, seed);
    run_and_compare(&pb, TOL_FP32);
    problem_free(&pb);
}

/* ---- cases -------------------------------------------------------------- */

#define SEQ(c_, hist_, cand_, paged_) \
    ((seq_spec){ .c = (c_), .hist = (hist_), .cand = (cand_), .paged = (paged_) })
#define SEQ_SEEDED(c_, hist_, cand_, paged_, seed_) \
    ((seq_spec){ .c = (c_), .hist = (hist_), .cand = (cand_), .paged = (paged_), .seed = (seed_) })

static void case_jagged_dense(void)
{
    case_spec cs = { .H = 2, .Dqk = 64, .Dv = 64, .P = 32, .N = 512, .nseq = 4,
                     .seqs = { SEQ(0, 100, 7, 0), SEQ(0, 1, 3, 0), SEQ(0, 300, 0, 0),
                               SEQ(0, 65, 64, 0) } };
    check_case(&cs, 1);
}

static void case_jagged_dense_rab(void)
{
    case_spec cs = { .H = 3, .Dqk = 64, .Dv = 64, .P = 32, .rab = 1, .N = 512, .n_buckets = 128,
                     .nseq = 4,
                     .seqs = { SEQ(0, 100, 7, 0), SEQ(0, 1, 3, 0), SEQ(0, 300, 0, 0),
                               SEQ(0, 65, 64, 0) } };
    check_case(&cs, 2);
}

static void case_empty_history(void)
{
    case_spec cs = { .H = 2, .Dqk = 50, .Dv = 50, .P = 8, .N = 64, .nseq = 3,
                     .seqs = { SEQ(0, 0, 5, 0), SEQ(0, 0, 70, 0), SEQ(0, 10, 2, 0) } };
    check_case(&cs, 3);
    cs.rab = 1;
    cs.n_buckets = 128;
    check_case(&cs, 4);
}

static void case_only_candidates(void)
{
    /* c = hist: everything cached in pages, nothing new but candidates. */
    case_spec cs = { .H = 2, .Dqk = 64, .Dv = 64, .P = 32, .N = 256, .nseq = 3,
                     .seqs = { SEQ(77, 77, 5, 77), SEQ(300, 300, 100, 300), SEQ(1, 1, 1, 1) } };
    check_case(&cs, 5);
    cs.rab = 1;
    cs.n_buckets = 128;
    check_case(&cs, 6);
}

static void case_no_candidates(void)
{
    case_spec cs = { .H = 4, .Dqk = 32, .Dv = 32, .P = 16, .N = 300, .nseq = 3,
                     .seqs = { SEQ(0, 257, 0, 0), SEQ(40, 190, 0, 64), SEQ(0, 1, 0, 1) } };
    check_case(&cs, 7);
    cs.rab = 1;
    cs.n_buckets = 128;
    check_case(&cs, 8);
}

static void case_paged_layouts(void)
{
    /* paged = hist with c = 0 (new rows already in pages too), paged between
     * c and hist, paged = c, for page sizes that do and do not divide. */
    static const int sizes[] = { 1, 7, 32, 64, 100, 300 };
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        case_spec cs = { .H = 2, .Dqk = 64, .Dv = 32, .P = sizes[k], .N = 600, .nseq = 4,
                         .seqs = { SEQ(0, 333, 4, 333), SEQ(40, 450, 9, 290),
                                   SEQ(128, 260, 3, 128), SEQ(0, 520, 0, 65) } };
        check_case(&cs, 10 + k);
        if (t_case_failed())
            return;
    }
}

static void case_paged_rab(void)
{
    /* Cached rows from pages plus new rows, rab on, N shorter than the
     * sequence (the clamp of j - i is active), gather and in-place pages. */
    case_spec cs = { .H = 4, .Dqk = 64, .Dv = 64, .P = 32, .rab = 1, .N = 257, .n_buckets = 128,
                     .nseq = 3,
                     .seqs = { SEQ(123, 700, 70, 200), SEQ(0, 31, 1, 31), SEQ(64, 65, 2, 65) } };
    check_case(&cs, 20);
    cs.P = 100;
    check_case(&cs, 21);
}

static void case_head_widths(void)
{
    static const int dims[][2] = { { 25, 25 }, { 50, 50 }, { 64, 64 }, { 128, 128 },
                                   { 256, 256 }, { 128, 64 }, { 25, 50 }, { 256, 25 } };
    for (size_t k = 0; k < sizeof(dims) / sizeof(dims[0]); k++) {
        case_spec cs = { .H = 2, .Dqk = dims[k][0], .Dv = dims[k][1], .P = 16, .rab = (int)(k & 1),
                         .N = 200, .n_buckets = 128, .nseq = 2,
                         .seqs = { SEQ(20, 150, 10, 40), SEQ(0, 90, 3, 0) } };
        check_case(&cs, 30 + k);
        if (t_case_failed())
            return;
    }
}

static void case_rab_time_extremes(void)
{
    /* Gaps of 0 s to 1e12 s with few buckets (the top clamp), then pairs
     * that sit on bucket boundaries, where a float log would go astray. */
    case_spec cs = { .H = 2, .Dqk = 32, .Dv = 32, .P = 8, .rab = 1, .N = 400, .n_buckets = 20,
                     .ts_mode = 1, .nseq = 2,
                     .seqs = { SEQ(0, 300, 20, 0), SEQ(24, 200, 5, 100) } };
    check_case(&cs, 40);
    cs.n_buckets = 128;
    check_case(&cs, 41);
    /* Boundaries: only the candidates see them (ts_q = 0), so they carry
     * the whole output; ts_w spread wide makes a wrong bucket show. */
    case_spec cb = { .H = 1, .Dqk = 16, .Dv = 16, .P = 8, .rab = 1, .N = 400, .n_buckets = 128,
                     .ts_mode = 2, .nseq = 1, .seqs = { SEQ(384, 384, 64, 384) } };
    problem pb;
    problem_init(&pb, &cb, 42);
    for (int b = 0; b <= cb.n_buckets; b++)
        pb.ts_w[b] = (float)(b % 2 ? b : -b) * 0.05f;
    run_and_compare(&pb, 1e-5);
    problem_free(&pb);
}

static void case_silu_tails(void)
{
    /* Large logits (|x| up to ~60): both tails of SiLU and the exp clamp. */
    case_spec cs = { .H = 2, .Dqk = 64, .Dv = 64, .P = 32, .rab = 1, .N = 128, .n_buckets = 128,
                     .alpha = 1.0f, .scale = 1.0f, .nseq = 2,
                     .seqs = { SEQ(0, 200, 8, 0), SEQ(10, 150, 4, 60) } };
    check_case(&cs, 50);
    cs.alpha = 3.0f;
    check_case(&cs, 51);
}

static void case_long_sequence(void)
{
    /* Several key blocks per query block, query blocks not aligned with the
     * key blocks (c = 37), candidates over a long history. */
    case_spec cs = { .H = 2, .Dqk = 64, .Dv = 64, .P = 32, .N = 2048, .nseq = 2,
                     .seqs = { SEQ(37, 1100, 130, 300), SEQ(0, 777, 1, 0) } };
    check_case(&cs, 60);
}

/* A sequence's output must not depend on the rest of the batch, nor on the
 * thread count. X alone on 8 threads (64-row query blocks, one head per
 * item), X between two others on the default threads and on one (128-row
 * blocks, with rab all heads per item). */
static void batch_independence(int rab)
{
    seq_spec x = SEQ_SEEDED(30, 200, 17, 96, 0xabcdef);
    case_spec alone = { .H = 4, .Dqk = 64, .Dv = 64, .P = 32, .rab = rab, .N = 256,
                        .n_buckets = 128, .nseq = 1, .seqs = { x } };
    case_spec crowd = alone;
    crowd.nseq = 3;
    crowd.seqs[0] = SEQ_SEEDED(0, 500, 50, 0, 0x1111);
    crowd.seqs[1] = x;
    crowd.seqs[2] = SEQ_SEEDED(64, 900, 3, 64, 0x2222);
    problem a, c;
    problem_init(&a, &alone, 70); /* same case seed: the same rab weights */
    problem_init(&c, &crowd, 70);
    int nt = omp_get_max_threads();
    omp_set_num_threads(8);
    run_and_compare(&a, TOL_FP32);
    omp_set_num_threads(nt);
    run_and_compare(&c, TOL_FP32);
    int rows = x.hist - x.c + x.cand;
    size_t n = (size_t)rows * alone.H * alone.Dv;
    float *xa = pack_rows(&a, a.out_cpu, a.seqs[0].q0, rows);
    float *xc = pack_rows(&c, c.out_cpu, c.seqs[1].q0, rows);
    double err = t_rel_err(xc, xa, n);
    T_CHECK(err <= 1e-6, "alone vs in a batch: rel err %.3g", err);

    omp_set_num_threads(1);
    c.p.out = c.out_cpu;
    attn_fwd_cpu(&c.p);
    omp_set_num_threads(nt);
    float *x1 = pack_rows(&c, c.out_cpu, c.seqs[1].q0, rows);
    err = t_rel_err(x1, xa, n);
    T_CHECK(err <= 1e-6, "alone on 8 threads vs in a batch on 1: rel err %.3g", err);
    free(xa);
    free(xc);
    free(x1);
    problem_free(&a);
    problem_free(&c);
}

static void case_batch_independence(void) { batch_independence(0); }
static void case_batch_independence_rab(void) { batch_independence(1); }

static void case_repeat_calls(void)
{
    /* The thread-local scratch grows from small to large heads and back. */
    case_spec cs = { .H = 1, .Dqk = 25, .Dv = 25, .P = 4, .N = 64, .nseq = 1,
                     .seqs = { SEQ(0, 60, 3, 13) } };
    check_case(&cs, 80);
    cs.H = 4;
    cs.Dqk = cs.Dv = 256;
    check_case(&cs, 81);
    cs.H = 2;
    cs.Dqk = cs.Dv = 32;
    cs.rab = 1;
    cs.n_buckets = 128;
    check_case(&cs, 82);
}

int main(void)
{
    t_run("attention: jagged dense batch", case_jagged_dense);
    t_run("attention: jagged dense batch, rab", case_jagged_dense_rab);
    t_run("attention: hist = 0 (candidates only see themselves)", case_empty_history);
    t_run("attention: c = hist (only candidates, history cached)", case_only_candidates);
    t_run("attention: cand = 0", case_no_candidates);
    t_run("attention: paged layouts, page sizes 1 7 32 64 100 300", case_paged_layouts);
    t_run("attention: cached pages + new rows, rab, N < length", case_paged_rab);
    t_run("attention: head widths 25..256, Dqk != Dv", case_head_widths);
    t_run("attention: rab time extremes and bucket boundaries", case_rab_time_extremes);
    t_run("attention: SiLU tails (large logits)", case_silu_tails);
    t_run("attention: long sequence, unaligned blocks", case_long_sequence);
    t_run("attention: output independent of the batch and threads", case_batch_independence);
    t_run("attention: output independent of the batch and threads, rab", case_batch_independence_rab);
    t_run("attention: repeated calls, scratch growth", case_repeat_calls);
    return t_summary();
}
