/* attention.cu - the HSTU attention on Hopper GPUs: attn_fwd_cuda.
 *
 * One CTA computes one block of 128 query rows of one head of one sequence
 * and streams that row block's visible key tiles (64 keys each) through
 * shared memory, FlashAttention-2 style: S = Q K^T in fp32 on the tensor
 * cores, then in registers the mask, the bias and SiLU turn S into the
 * weights P (bf16), and O += P V accumulates in fp32 registers; O / N is
 * written once as bf16. There is no softmax, so no running maximum and no
 * rescaling: a tile's weights are final as soon as they are computed.
 *
 * Rows and keys use one "virtual" index per sequence: history rows and keys
 * 0..hist-1, candidates hist..hist+cand-1, and the computed row r (0-based
 * among the call's rows) is qv = c + r. Then a key jv is visible from qv iff
 * jv <= qv and (jv < hist or jv == qv) - causal, plus each candidate's own
 * column - and the dense K/V row of any key jv >= paged is q0 + jv - c, the
 * same formula for history and candidates. A row block visits the history
 * tiles [0, min(hist, last row + 1)) and, if it holds candidates, the few
 * tiles over its own candidates' diagonal; only tiles that cross the
 * diagonal or an end need the elementwise mask.
 *
 * Three kernels compute the same thing (attn_fwd_cuda runs the last, in
 * one of two forms; tests and benchmarks force the others):
 *   - attn_mma_kernel: 8 warps of 16 rows each, mma.sync m16n8k16 with
 *     ldmatrix, loads and compute in the same threads: the simple,
 *     FlashAttention-2-shaped form, kept as a reference GPU path;
 *   - attn_wgmma_kernel: the same loop on Hopper's wgmma, two warpgroups of
 *     64 rows, Q and K (K-major) and V (MN-major) read by the tensor cores
 *     straight from shared memory, P from registers;
 *   - attn_ws_kernel (the default): FlashAttention-3's structure, a loading
 *     warpgroup feeding two computing warpgroups through mbarriers, the
 *     next tile's Q K^T in flight while this tile's SiLU runs, and the two
 *     computing warpgroups taking turns on the tensor cores. About 1.8x the
 *     mma.sync kernel and 1.1x the plain wgmma one (docs/attention_cuda.md).
 *     Where Dqk == Dv is 64, 128 or 256 (and, over pages, the pool's
 *     layout allows: tma_pages_ok), it runs as attn_tma_kernel: K and V
 *     loaded by TMA instead of cp.async, from the dense rows and from the
 *     pages alike, split or not; 1.1-1.35x faster. A split whose parts
 *     go to global memory runs its own form of it, with that epilogue
 *     only (a smaller path through cold code: docs/attention_cuda.md).
 * Each is launched with programmatic dependent launch when it is on
 * (pdl.cuh) and waits for the kernel before it ahead of everything else.
 * All keep tiles in shared memory in the 128-byte-swizzled layout that
 * wgmma reads (64-column blocks, 16-byte chunks XOR the row), loaded with
 * cp.async (or TMA, whose 128-byte swizzle is that layout). Head widths
 * are padded to 64, 128 or 256 with zero-filled columns, so any multiple of
 * 16 up to 256 works; Dqk != Dv is padded to the larger.
 *
 * q may come before its bias and SiLU (q_bias, q_silu): each CTA activates
 * its Q tile in shared memory after loading it. Few row blocks over long
 * keys split the keys across the CTAs of a cluster (the default kernel
 * only); their fp32 parts add up in shared memory (split_reduce).
 *
 * SiLU(x) = h + h tanh(h) with h = x/2, one MUFU op (tanh.approx, relative
 * error ~2^-11, below the bf16 rounding of P). Time buckets use a table of
 * the exact bucket boundaries computed from the CPU's attn_time_bucket, so
 * the GPU's buckets equal the reference's (the test checks the table).
 */
#include "kernels/attention_cuda.h"
#include "kernels/attn_parts.cuh"
#include "kernels/ln_fold.cuh"
#include "kernels/pdl.cuh"
#include "kernels/sm90.cuh"
#include "kernels/sm_count_cuda.h"
#include "kernels/tma.cuh"

#include <atomic>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

namespace {

using namespace sm90;

/* Profiling stamp (attn_cuda_params.trace): one thread per CTA and point. */
__device__ __forceinline__ void trace_stamp(const attn_cuda_params &p, int point)
{
    if (p.trace) {
        const unsigned long long t = global_timer_ns();
        const size_t cta = blockIdx.x + (size_t)gridDim.x * (blockIdx.y + (size_t)gridDim.y * blockIdx.z);
        p.trace[cta * ATTN_CUDA_TRACE_POINTS + point] = t;
    }
}

constexpr int BN = 64;       /* keys per tile */
constexpr int BM = 128;      /* query rows per CTA */
constexpr int NTHREADS = 256;
constexpr int THR_N = 146;   /* time-bucket boundaries 0..145 (|dt| <= 2^63 gives bucket <= 145) */

/* kThr[b] = the smallest |dt| whose bucket (before the clamp to n_buckets)
 * is >= b, for b = 1..145; kThr[0] = 0. Generated with attn_time_bucket
 * (binary search over [1, 2^63]); tests/test_attention_cuda.c checks every
 * entry against it. Bucket 1 is never reached: |dt| = 2 is already in 2. */
#define ATTN_THR_TABLE \
    0ull, 2ull, 2ull, 3ull, 4ull, \
    5ull, 7ull, 9ull, 12ull, \
    16ull, 21ull, 28ull, 38ull, \
    51ull, 68ull, 92ull, 124ull, \
    167ull, 226ull, 305ull, 412ull, \
    557ull, 752ull, 1016ull, 1372ull, \
    1854ull, 2505ull, 3385ull, 4574ull, \
    6180ull, 8350ull, 11283ull, 15245ull, \
    20600ull, 27834ull, 37610ull, 50818ull, \
    68666ull, 92782ull, 125367ull, 169397ull, \
    228891ull, 309280ull, 417902ull, 564672ull, \
    762990ull, 1030960ull, 1393042ull, 1882291ull, \
    2543369ull, 3436624ull, 4643598ull, 6274473ull, \
    8478127ull, 11455724ull, 15479081ull, 20915478ull, \
    28261189ull, 38186783ull, 51598337ull, 69720155ull, \
    94206525ull, 127292737ull, 171999135ull, 232406837ull, \
    314030289ull, 424320660ull, 573346040ull, 774710524ull, \
    1046796097ull, 1414440665ull, 1911205440ull, 2582438644ull, \
    3489415219ull, 4714930440ull, 6370858056ull, 8608362918ull, \
    11631700390ull, 15716862225ull, 21236771058ull, 28695323438ull, \
    38773389087ull, 52390965538ull, 70791162047ull, 95653679456ull, \
    129248145233ull, 174641301215ull, 235976957620ull, 318854269524ull, \
    430838867570ull, 582153502558ull, 786611250865ull, 1062876470327ull, \
    1436168615607ull, 1940564449431ull, 2622108811928ull, 3543017921206ull, \
    4787358912370ull, 6468724083690ull, 8740600409714ull, 11810380924256ull, \
    15958297031977ull, 21563000024645ull, 29136127064885ull, 39369007066311ull, \
    53195770115075ull, 71878621509799ull, 97123064840915ull, 131233592491847ull, \
    177324056098576ull, 239601921079807ull, 323752354013490ull, 437457205087951ull, \
    591096262037947ull, 798694791013878ull, 1079203862655707ull, 1458230340644293ull, \
    1970374458392736ull, 2662388374508177ull, 3597444042437669ull, 4860899995802034ull, \
    6568093482609822ull, 8874869269797366ull, 11991806262278891ull, 16203440643505230ull, \
    21894240362561062ull, 29583702103771238ull, 39973774639893333ull, 54012937709959404ull, \
    72982785997608233ull, 98615022211437624ull, 133249539228073673ull, 180048022160609745ull, \
    243282569468860016ull, 328725680499693217ull, 444177210294627424ull, 600176395848397377ull, \
    810963952640968128ull, 1095782068459071168ull, 1480630967191749249ull, 2000642394239962496ull, \
    2703286692174004992ull, 3652706231320924417ull, 4935570781654962689ull, 6668989345994283521ull, \
    9011200702924931585ull,
__device__ const unsigned long long kThr[THR_N] = {ATTN_THR_TABLE};

/* ---- small device helpers (the rest: sm90.cuh) --------------------------- */

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
/* c += a * b, m16n8k16, bf16 inputs, fp32 accumulators. */
__device__ __forceinline__ void mma_bf16(float *c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ---- the block's rows and key tiles ------------------------------------ */

struct Blk {
    attn_cuda_seq s;
    int h;
    int r0, nr;        /* first computed row of the block (0-based in the call's rows), row count */
    int qv0, qv1;      /* virtual index of the block's first and last row */
    int hist_end;      /* history keys [0, hist_end) are visited */
    int nh, cand_lo;   /* history tiles; first candidate key visited */
    int nt;            /* tiles this CTA visits */
    int tb;            /* its first tile (split-KV: CTAs of one row block share the tiles) */

    __device__ int k0(int t) const { t += tb; return t < nh ? t * BN : cand_lo + (t - nh) * BN; }
    __device__ int kend(int t) const { t += tb; return t < nh ? hist_end : qv1 + 1; }
    /* False only when every key of the tile is visible from every row. */
    __device__ bool masked(int t) const
    {
        t += tb;
        return t >= nh || t * BN + BN - 1 > qv0 || t * BN + BN > hist_end;
    }
};

/* The row block's key tiles (all splits together): its history tiles,
 * then those of the candidates it sees. */
__device__ __forceinline__ int blk_tiles(const Blk &k)
{
    return k.nh + (k.qv1 >= k.s.hist ? (k.qv1 + 1 - k.cand_lo + BN - 1) / BN : 0);
}

/* Fills the row-block fields of k (k.s set) for the block of rows
 * [r0, r0 + BM) of the sequence's computed rows; returns its key tiles in
 * all (before any split). */
__device__ __forceinline__ int blk_rows(Blk &k, int r0, int rows)
{
    k.r0 = r0;
    k.nr = min(BM, rows - k.r0);
    k.qv0 = k.s.c + k.r0;
    k.qv1 = k.qv0 + k.nr - 1;
    k.hist_end = min(k.s.hist, k.qv1 + 1);
    k.nh = (k.hist_end + BN - 1) / BN;
    k.cand_lo = max(k.qv0, k.s.hist);
    return blk_tiles(k);
}

/* Split z of S of a row block's `all` tiles: its first tile and count. */
__device__ __forceinline__ int split_first(int all, int z, int S) { return all * z / S; }
__device__ __forceinline__ int split_tiles(int all, int z, int S) { return all * (z + 1) / S - all * z / S; }

/* Fills k for this CTA; false when the CTA has no rows (grid padding,
 * the same for every split of a row block). A split may get no tile
 * (k.nt == 0): it adds nothing.
 * Grid: x = (sequence, head) pair, y = rank of the row block, heaviest
 * first (rank 0 = the sequence's last row block, which sees the most keys),
 * so CTAs start in order of decreasing work across the whole batch. */
__device__ __forceinline__ bool blk_init(Blk &k, const attn_cuda_params &p)
{
    const int b = blockIdx.x / p.H;
    k.h = blockIdx.x - b * p.H;
    k.s = p.seqs[b];
    const int rows = k.s.hist - k.s.c + k.s.cand;
    const int nmb = (rows + BM - 1) / BM;
    if ((int)blockIdx.y >= nmb)
        return false;
    const int m = nmb - 1 - (int)blockIdx.y;
    const int all = blk_rows(k, m * BM, rows), z = (int)blockIdx.z, S = (int)gridDim.z;
    k.tb = split_first(all, z, S);
    k.nt = split_tiles(all, z, S);
    return true;
}

/* ---- tile loads (cp.async, zero-filled outside the data) --------------- */

template <int D, int NT>
__device__ __forceinline__ void load_q(uint32_t sq, const attn_cuda_params &p, const Blk &k, int tid)
{
    constexpr int CPR = D / 8; /* 16-byte chunks per row */
    const int ch = tid % CPR;
    const bool col_ok = ch * 8 < p.Dqk;
    const bf16 *q = static_cast<const bf16 *>(p.q);
    const bf16 *base = q + (size_t)(k.s.q0 + k.r0) * p.ld_qkv + (size_t)k.h * p.Dqk + ch * 8;
#pragma unroll 4
    for (int r = tid / CPR; r < BM; r += NT / CPR) {
        const bool ok = col_ok && r < k.nr;
        cp_async16(sq + tile_off<BM>(r, ch), ok ? base + (size_t)r * p.ld_qkv : q, ok);
    }
}

/* q = phi(q + q_bias) on rows [r_lo, r_lo + n) of the Q tile in shared
 * memory (attn_cuda_params.q_bias, q_silu), threads tid = 0 .. nthreads-1;
 * rows past the block's and columns past Dqk stay as loaded. With the
 * LayerNorm folded into q's GEMM (q_fold_e) the row's mean and rstd come
 * first: a warp meets the same 32 * n / nthreads rows (16 at both call
 * sites) whatever D, so each lane loads one row's pair at the start and the
 * iterations take theirs by shuffle (a load a row inside the loop would be
 * 16 round trips in a row). The caller orders it after the tile's load and
 * before the products (a barrier, and a proxy fence where wgmma reads the
 * tile). */
template <int D>
__device__ __forceinline__ void q_activate(uint32_t sq, int r_lo, int n, const attn_cuda_params &p, const Blk &k,
                                           int tid, int nthreads)
{
    constexpr int CPR = D / 8, RPW = 32 / CPR; /* 16-byte chunks a row; rows a warp takes an iteration */
    static_assert(32 % CPR == 0, "a warp holds whole rows"); /* (n <= nthreads at the call sites: 16 rows a warp) */
    const int ch = tid % CPR, lane = tid % 32, rpi = nthreads / CPR;
    const int w_r0 = r_lo + (tid - lane) / CPR; /* the warp's first row */
    const bool col_on = ch * 8 < p.Dqk;
    float b[8], e[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        b[j] = p.q_bias && col_on ? p.q_bias[k.h * p.Dqk + ch * 8 + j] : 0.0f;
        e[j] = p.q_fold_e && col_on ? p.q_fold_e[k.h * p.Dqk + ch * 8 + j] : 0.0f;
    }
    const int r_hi = min(r_lo + n, k.nr);
    float2 mine = make_float2(0.0f, 1.0f); /* lane j: the pair of the warp's j-th row */
    if (p.q_fold_e) {
        const int rj = w_r0 + lane % RPW + lane / RPW * rpi;
        if (rj < r_hi)
            mine = *reinterpret_cast<const float2 *>(p.q_fold_stats + 2 * (size_t)(k.s.q0 + k.r0 + rj));
    }
    for (int it = 0; w_r0 + it * rpi < r_hi; it++) { /* (the same trips for the whole warp) */
        const int r = w_r0 + it * rpi + lane / CPR;
        float2 st = mine;
        if (p.q_fold_e) {
            const int src = (it * RPW + lane / CPR) & 31;
            st.x = __shfl_sync(0xffffffffu, mine.x, src);
            st.y = __shfl_sync(0xffffffffu, mine.y, src);
        }
        if (r >= r_hi || !col_on)
            continue;
        const uint32_t a = sq + tile_off<BM>(r, ch);
        uint32_t w[4];
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                     : "r"(a));
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float x0 = __uint_as_float(w[j] << 16), x1 = __uint_as_float(w[j] & 0xffff0000u);
            x0 = fold_one(x0, st, e[2 * j]) + b[2 * j];
            x1 = fold_one(x1, st, e[2 * j + 1]) + b[2 * j + 1];
            if (p.q_silu) {
                x0 = __fdividef(x0, 1.0f + __expf(-x0));
                x1 = __fdividef(x1, 1.0f + __expf(-x1));
            }
            w[j] = pack_bf16(x0, x1);
        }
        asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(a), "r"(w[0]), "r"(w[1]), "r"(w[2]),
                     "r"(w[3])
                     : "memory");
    }
}

/* Whether the kernel activates q itself (q_activate has something to do). */
__device__ __forceinline__ bool q_activated_here(const attn_cuda_params &p)
{
    return p.q_bias || p.q_silu || p.q_fold_e;
}

/* The Q tile by all NTHREADS threads of the single-role kernels (mma.sync,
 * plain wgmma); with q_bias or q_silu it waits for the tile and activates
 * it in place, and the caller's next barrier orders that before any read. */
template <int D>
__device__ __forceinline__ void load_q_whole(uint32_t sq, const attn_cuda_params &p, const Blk &k)
{
    load_q<D, NTHREADS>(sq, p, k, threadIdx.x);
    if (q_activated_here(p)) {
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        q_activate<D>(sq, 0, BM, p, k, threadIdx.x, NTHREADS);
    }
}

/* A tile wholly inside the pages, starting on a page boundary, for a page
 * size PS known at compile time (16, 32, 64) that this thread's row step
 * divides: its BN / PS page ids are loaded once and every row's address is
 * affine, as in the dense case. (The general path below costs the loading
 * warps about twice the issue slots, which made paged tiles 2.3x slower.) */
template <int D, bool LOAD_K, bool LOAD_V, int NT, int PS>
__device__ __forceinline__ void load_kv_pages(uint32_t sk, uint32_t sv, const attn_cuda_params &p, const Blk &k,
                                              int k0, int tid)
{
    constexpr int CPR = D / 8, RSTEP = NT / CPR, NPG = BN / PS;
    static_assert(PS % RSTEP == 0 && BN % PS == 0, "rows of one thread stay in step with the pages");
    const int ch = tid % CPR, r0 = tid / CPR;
    const bool kcol = ch * 8 < p.Dqk, vcol = ch * 8 < p.Dv;
    const int kstride = p.H * p.Dqk, vstride = p.H * p.Dv;
    const int *pt = p.page_table + k.s.page0 + k0 / PS;
    const bf16 *kb[NPG], *vb[NPG];
#pragma unroll
    for (int q = 0; q < NPG; q++) {
        const bf16 *base = static_cast<const bf16 *>(p.pages) + (size_t)__ldg(pt + q) * p.page_elems;
        kb[q] = base + p.k_off + (size_t)r0 * kstride + (size_t)k.h * p.Dqk + ch * 8;
        vb[q] = base + p.v_off + (size_t)r0 * vstride + (size_t)k.h * p.Dv + ch * 8;
    }
#pragma unroll
    for (int i = 0; i < BN / RSTEP; i++) {
        const int q = (i * RSTEP) / PS, so = (i * RSTEP) % PS;
        if (LOAD_K)
            cp_async16(sk + tile_off<BN>(r0 + i * RSTEP, ch), kb[q] + so * kstride, kcol);
        if (LOAD_V)
            cp_async16(sv + tile_off<BN>(r0 + i * RSTEP, ch), vb[q] + so * vstride, vcol);
    }
}

/* Key rows [k0, k0 + BN) of K (into sk) and/or V (into sv); rows >= kend
 * are zero. History rows below paged come from the page pool. A tile
 * wholly past the pages (the common case) steps one row stride at a time. */
template <int D, bool LOAD_K, bool LOAD_V, int NT>
__device__ __forceinline__ void load_kv(uint32_t sk, uint32_t sv, const attn_cuda_params &p, const Blk &k, int k0,
                                        int kend, int tid)
{
    constexpr int CPR = D / 8;
    constexpr int RSTEP = NT / CPR; /* rows apart of one thread's chunks */
    const int ch = tid % CPR, r0 = tid / CPR;
    const bool kcol = ch * 8 < p.Dqk, vcol = ch * 8 < p.Dv;
    const bf16 *K = static_cast<const bf16 *>(p.k), *V = static_cast<const bf16 *>(p.v);
    if (k0 >= k.s.paged) {
        const size_t row0 = (size_t)(k.s.q0 + k0 - k.s.c + r0) * p.ld_qkv;
        const bf16 *kp = K + row0 + (size_t)k.h * p.Dqk + ch * 8;
        const bf16 *vp = V + row0 + (size_t)k.h * p.Dv + ch * 8;
        const size_t step = (size_t)RSTEP * p.ld_qkv;
        const int nvalid = kend - k0;
#pragma unroll
        for (int i = 0; i < BN / RSTEP; i++) {
            const int r = r0 + i * RSTEP;
            const bool ok = r < nvalid;
            if (LOAD_K)
                cp_async16(sk + tile_off<BN>(r, ch), ok ? kp + i * step : K, ok && kcol);
            if (LOAD_V)
                cp_async16(sv + tile_off<BN>(r, ch), ok ? vp + i * step : V, ok && vcol);
        }
        return;
    }
    if (k0 + BN <= min(kend, k.s.paged) && k0 % p.page_size == 0) {
        if constexpr (16 % RSTEP == 0)
            if (p.page_size == 16)
                return load_kv_pages<D, LOAD_K, LOAD_V, NT, 16>(sk, sv, p, k, k0, tid);
        if constexpr (32 % RSTEP == 0)
            if (p.page_size == 32)
                return load_kv_pages<D, LOAD_K, LOAD_V, NT, 32>(sk, sv, p, k, k0, tid);
        if constexpr (64 % RSTEP == 0)
            if (p.page_size == 64)
                return load_kv_pages<D, LOAD_K, LOAD_V, NT, 64>(sk, sv, p, k, k0, tid);
    }
    /* Rows below `paged` come from the pages. This thread's rows step by
     * RSTEP; it follows its position (page, slot) incrementally, and the few
     * page ids it needs are loaded up front, independently. (A division and
     * a dependent page-table load per row made paged tiles 3x slower than
     * dense ones: the loading warps ran out of issue slots.) */
    const int P = p.page_size;
    const int pend = min(kend, k.s.paged);
    int pi = (k0 + r0) / P, slot = k0 + r0 - pi * P;
    const int pf = pi;
    const int pl = pend > k0 + r0 ? min(k0 + r0 + BN - RSTEP, pend - 1) / P : pf - 1;
    const int *pt = p.page_table + k.s.page0;
    const int pg0 = pf <= pl ? __ldg(pt + pf) : 0, pg1 = pf + 1 <= pl ? __ldg(pt + pf + 1) : 0;
    const int pg2 = pf + 2 <= pl ? __ldg(pt + pf + 2) : 0, pg3 = pf + 3 <= pl ? __ldg(pt + pf + 3) : 0;
    const int kstride = p.H * p.Dqk, vstride = p.H * p.Dv;
    const bf16 *pages = static_cast<const bf16 *>(p.pages);
    const bf16 *kpage = K, *vpage = V; /* the current page's row 0 of this head and chunk */
    auto enter = [&](int q, int page_index) {
        const int pg = q == 0 ? pg0 : q == 1 ? pg1 : q == 2 ? pg2 : q == 3 ? pg3 : __ldg(pt + page_index);
        const bf16 *base = pages + (size_t)pg * p.page_elems;
        kpage = base + p.k_off + (size_t)k.h * p.Dqk + ch * 8;
        vpage = base + p.v_off + (size_t)k.h * p.Dv + ch * 8;
    };
    if (pf <= pl)
        enter(0, pf);
#pragma unroll 4
    for (int r = r0; r < BN; r += RSTEP) {
        const int jv = k0 + r;
        const bool ok = jv < kend;
        const bf16 *kp = K, *vp = V; /* valid dummies for zero-filled chunks */
        if (ok) {
            if (jv < k.s.paged) {
                kp = kpage + slot * kstride;
                vp = vpage + slot * vstride;
            } else {
                const size_t row = (size_t)(k.s.q0 + jv - k.s.c) * p.ld_qkv;
                kp = K + row + (size_t)k.h * p.Dqk + ch * 8;
                vp = V + row + (size_t)k.h * p.Dv + ch * 8;
            }
        }
        if (LOAD_K)
            cp_async16(sk + tile_off<BN>(r, ch), kp, ok && kcol);
        if (LOAD_V)
            cp_async16(sv + tile_off<BN>(r, ch), vp, ok && vcol);
        slot += RSTEP;
        if (slot >= P) {
            const int adv = slot / P;
            slot -= adv * P;
            pi += adv;
            if (pi <= pl)
                enter(pi - pf, pi);
        }
    }
}

/* ---- scores -> weights -------------------------------------------------- */

/* What the bias needs, per CTA. */
struct Rab {
    const float *pos_w, *ts_w;
    const int64_t *ts; /* this sequence's timestamps */
    int64_t ts_q;
    int N, n_buckets, hist;
    const unsigned long long *thr; /* kThr, copied to shared memory */
};

/* Bucket of |dt| = a: a float estimate, then the exact boundaries. */
__device__ __forceinline__ int time_bucket(unsigned long long a, const Rab &rb)
{
    int b = 0;
    if (a >= 2)
        b = min((int)(__log2f((float)a) * 2.3028141f), THR_N - 1); /* ln 2 / 0.301 */
    while (b < THR_N - 1 && a >= rb.thr[b + 1])
        b++;
    while (b > 0 && a < rb.thr[b])
        b--;
    return min(b, rb.n_buckets);
}

/* ts_next of the row at virtual index qv (a candidate sits at hist). */
__device__ __forceinline__ int64_t ts_next(const Rab &rb, int qv)
{
    const int i = min(qv, rb.hist);
    return i < rb.hist - 1 ? rb.ts[i + 1] : rb.ts_q;
}

/* s: a thread's NB x 4 accumulator fragment of a (rows x 64 keys) score tile
 * in the mma/wgmma layout: s[4j + 2r + c] is row qv[r], key colbase + 8j + c.
 * Replaces each score by its weight SiLU(alpha s + rab) (times N: O is
 * divided by N once at the end), or, when MASKED, 0 where the key is not
 * visible. Tiles that every row sees whole take MASKED = false. */
template <int NB, bool RAB, bool MASKED>
__device__ __forceinline__ void hstu_weights(float *s, const int (&qv)[2], const int64_t (&tsn)[2], int colbase,
                                             int kend, int hist, float half_alpha, const Rab &rb)
{
    /* Row r sees keys jv < lim[r] (history, causal, loaded) and its own
     * column jv == self[r] if it is a candidate (-1 otherwise). */
    int lim[2] = {0, 0}, self[2] = {-1, -1};
    if (MASKED)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            lim[r] = min(kend, min(hist, qv[r] + 1));
            self[r] = qv[r] >= hist && qv[r] < kend ? qv[r] : -1;
        }
#pragma unroll
    for (int j = 0; j < NB; j++) {
#pragma unroll
        for (int c = 0; c < 2; c++) {
            const int jv = colbase + 8 * j + c;
            int64_t tj = 0;
            if (RAB)
                tj = jv < hist ? rb.ts[jv] : rb.ts_q;
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float h = s[4 * j + 2 * r + c] * half_alpha;
                if (RAB) {
                    const int rel = min(max(min(jv, hist) - min(qv[r], hist), 1 - rb.N), rb.N - 1);
                    const unsigned long long dt = (unsigned long long)tsn[r] - (unsigned long long)tj;
                    const unsigned long long a = (long long)dt < 0 ? 0ull - dt : dt;
                    const float bias = __ldg(rb.pos_w + rb.N - 1 + rel) + __ldg(rb.ts_w + time_bucket(a, rb));
                    h = fmaf(bias, 0.5f, h);
                }
                float y = fmaf(h, tanh_approx(h), h); /* SiLU(2h) */
                if (MASKED)
                    y = jv < lim[r] || jv == self[r] ? y : 0.0f;
                s[4 * j + 2 * r + c] = y;
            }
        }
    }
}

/* hstu_weights for tile t of block k. */
template <int NB, bool RAB>
__device__ __forceinline__ void tile_weights(float *s, const Blk &k, int t, const int (&qv)[2],
                                             const int64_t (&tsn)[2], int t4, float half_alpha, const Rab &rb)
{
    if (k.masked(t))
        hstu_weights<NB, RAB, true>(s, qv, tsn, k.k0(t) + 2 * t4, k.kend(t), k.s.hist, half_alpha, rb);
    else
        hstu_weights<NB, RAB, false>(s, qv, tsn, k.k0(t) + 2 * t4, k.kend(t), k.s.hist, half_alpha, rb);
}

/* The weights as bf16 pairs, pk[2j + r] = (s[4j + 2r], s[4j + 2r + 1]).
 * For a 64-key tile pk[4kk .. 4kk+3] is then the A fragment of k-step kk
 * (keys 16kk..16kk+15) of the P V product, for mma.sync and wgmma alike. */
template <int NB> __device__ __forceinline__ void pack_p(uint32_t *pk, const float *s)
{
#pragma unroll
    for (int i = 0; i < 2 * NB; i++)
        pk[i] = pack_bf16(s[2 * i], s[2 * i + 1]);
}

/* Writes a thread's O fragment (NB x 4, same layout as s) times inv_n as
 * bf16: rows lr[0], lr[1] of the block, columns 8j + 2 t4 (+1). */
template <int NB>
__device__ __forceinline__ void store_o(const float *o, const attn_cuda_params &p, const Blk &k, const int (&lr)[2],
                                        int t4)
{
    const float inv_n = 1.0f / (float)p.N;
    bf16 *out = static_cast<bf16 *>(p.out) + (size_t)(k.s.q0 + k.r0) * p.ld_out + (size_t)k.h * p.Dv;
#pragma unroll
    for (int j = 0; j < NB; j++) {
        const int col = 8 * j + 2 * t4;
        if (col < p.Dv) {
#pragma unroll
            for (int r = 0; r < 2; r++)
                if (lr[r] < k.nr)
                    *reinterpret_cast<uint32_t *>(out + (size_t)lr[r] * p.ld_out + col) =
                        pack_bf16(o[4 * j + 2 * r] * inv_n, o[4 * j + 2 * r + 1] * inv_n);
        }
    }
}

__device__ __forceinline__ void rab_init(Rab &rb, const attn_cuda_params &p, const Blk &k,
                                         unsigned long long *s_thr)
{
    for (int i = threadIdx.x; i < THR_N; i += NTHREADS)
        s_thr[i] = kThr[i];
    rb.pos_w = p.pos_w;
    rb.ts_w = p.ts_w;
    rb.ts = p.ts + k.s.ts0;
    rb.ts_q = k.s.ts_q;
    rb.N = p.N;
    rb.n_buckets = p.n_buckets;
    rb.hist = k.s.hist;
    rb.thr = s_thr;
}

/* Dynamic shared memory of both kernels: Q, two K and two V tiles, plus
 * slack to align the start to 1024 bytes (the swizzle's period). */
template <int D> constexpr int smem_bytes() { return 2 * D * (BM + 4 * BN) + 1024; }

/* ---- split-KV: the parts of a row block add up across a cluster -------- */

/* The S CTAs of one row block (grid z, one thread-block cluster of 1 x 1 x S)
 * each sum their share of the key tiles; the parts then meet in shared
 * memory instead of global scratch: every CTA writes its fp32 part over its
 * own (now idle) Q/K/V buffers, and CTA z adds rows [z*BM/S, (z+1)*BM/S) of
 * all S parts through distributed shared memory and writes them as bf16.
 * No part leaves the SMs and no second kernel runs. */
template <int D> __host__ __device__ constexpr int part_stride() { return D + 8; } /* floats; +8 spreads the rows over the banks */
template <int D> __host__ __device__ constexpr int part_bytes() { return BM * part_stride<D>() * 4; }

/* (No memory clobber: the loads of one row may all be in flight at once;
 * the cluster barriers around them order them against the writes.) */
__device__ __forceinline__ float4 cluster_ld4(uint32_t a)
{
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(a));
    return v;
}
__device__ __forceinline__ int cluster_ld_s32(uint32_t a)
{
    int v;
    asm volatile("ld.shared::cluster.s32 %0, [%1];\n" : "=r"(v) : "r"(a) : "memory");
    return v;
}

/* A computing thread's O fragment (NB x 4, as store_o) into this CTA's part. */
template <int D>
__device__ __forceinline__ void split_store(const float *o, float *part, const int (&lr)[2], int t4)
{
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int r = 0; r < 2; r++)
            *reinterpret_cast<float2 *>(part + lr[r] * part_stride<D>() + 8 * j + 2 * t4) =
                make_float2(o[4 * j + 2 * r], o[4 * j + 2 * r + 1]);
}

/* After every CTA of the cluster wrote its part (or flagged it empty):
 * threads tid = 0 .. nthreads-1 of this CTA add its share of the rows over
 * the parts, in rank order, and store them times 1/N as bf16; the rows are
 * shared among the CTAs with a part. Every thread of every CTA of the
 * cluster calls cluster_sync twice (this function does; the loading warps
 * and the CTAs with no part call it bare: doing their share here cost the
 * kernel registers), the second time so that no CTA leaves while another
 * still reads its shared memory. */
template <int D>
__device__ __forceinline__ void split_reduce(const attn_cuda_params &p, const Blk &k, uint32_t part, uint32_t empty,
                                             int tid, int nthreads)
{
    cluster_sync();
    const int S = (int)gridDim.z, z = (int)blockIdx.z;
    unsigned live = 0; /* ranks with a part (this one among them) */
    for (int r = 0; r < S; r++)
        live |= cluster_ld_s32(cluster_addr(empty, r)) ? 0u : 1u << r;
    if (tid == 0)
        trace_stamp(p, ATTN_TRACE_SYNCED);
    const int n = __popc(live), j = __popc(live & ((1u << z) - 1u)); /* this CTA's share: j of n */
    const int lo = j * BM / n, hi = min((j + 1) * BM / n, k.nr), cpr = p.Dv / 4;
    const float inv_n = 1.0f / (float)p.N;
    bf16 *out = static_cast<bf16 *>(p.out) + (size_t)(k.s.q0 + k.r0) * p.ld_out + (size_t)k.h * p.Dv;
    for (int i = tid; i < (hi - lo) * cpr; i += nthreads) {
        const int row = lo + i / cpr, col = 4 * (i % cpr);
        const uint32_t off = part + (uint32_t)(row * part_stride<D>() + col) * 4u;
        /* every part's load issued before the first add (one remote latency
         * per item, not S: a loop of load-then-add took 8 us of a 25 us
         * kernel at S = 8), then added in rank order */
        float4 v[ATTN_CUDA_MAX_SPLITS];
#pragma unroll
        for (int r = 0; r < ATTN_CUDA_MAX_SPLITS; r++)
            if (r < S && (live >> r & 1u))
                v[r] = cluster_ld4(cluster_addr(off, r));
        float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int r = 0; r < ATTN_CUDA_MAX_SPLITS; r++)
            if (r < S && (live >> r & 1u))
                a.x += v[r].x, a.y += v[r].y, a.z += v[r].z, a.w += v[r].w;
        uint32_t *dst = reinterpret_cast<uint32_t *>(out + (size_t)row * p.ld_out + col);
        dst[0] = pack_bf16(a.x * inv_n, a.y * inv_n);
        dst[1] = pack_bf16(a.z * inv_n, a.w * inv_n);
    }
    if (tid == 0)
        trace_stamp(p, ATTN_TRACE_REDUCED);
    cluster_sync();
}

/* Rows 0..nr-1 of a tile staged in shared memory (row stride SR elements)
 * to dst (row stride ld) in 16-byte pieces, cols (a multiple of 8) 2-byte
 * values a row, threads tid = 0..255: the staged stores' second half. */
template <int SR, int COLS = 0, typename T>
__device__ __forceinline__ void staged_rows_out(T *dst, size_t ld, const T *stage, int nr, int cols, int tid)
{
    static_assert(sizeof(T) == 2 && COLS % 8 == 0, "8 values a piece");
    /* COLS (when set) = cols, known at compile time: the row and column of
     * a piece are then a shift and a mask, not a division by a run-time
     * count, on the path every CTA ends with */
    const int cpr = COLS ? COLS / 8 : cols / 8;
    for (int i = tid; i < nr * cpr; i += 256) {
        const int row = i / cpr, c = 8 * (i - row * cpr);
        *reinterpret_cast<uint4 *>(dst + (size_t)row * ld + c) = *reinterpret_cast<const uint4 *>(stage + row * SR + c);
    }
}

/* ---- split-KV through global memory: planes of parts -------------------- */

/* With attn_cuda_params.parts: this CTA's part, straight from the computing
 * threads' O fragments (as store_o holds them), to its rows of plane
 * blockIdx.z as fp16 with a power of two per row (attention_cuda.h), threads
 * tid = 0 .. nthreads-1 (256). A row's values sit in the four threads of a
 * quad, so its largest |v| is two shuffles away; each thread scales its
 * values and writes them as fp16 into the idle Q/K/V buffers (rows D + 8
 * halves apart: no bank conflicts), the quad's first thread the row's
 * multiplier's inverse to the scales, and after a barrier the rows leave in
 * 16-byte pieces (store_o_staged's pattern). The reader adds the planes (no
 * cluster, no wait for the other splits). A split with no key tile adds
 * nothing, but its plane must hold zeros: such splits leave at once, and
 * the next split with tiles zeroes their planes (split_first gives the last
 * split of a row block at least one tile, so every empty split has one
 * after it; zeroing in the empty CTA itself, before the roles part, cost
 * the computing warpgroups 56 more bytes of spills at D 256). (Before: the
 * fp32 part went to shared memory first and two threads a row found its
 * largest value there: 4.3-4.5 us from the last P V to the stores' end
 * against this form's 2.8-3.2, batch 1 over 3968 cached rows, S 8 and 11.)
 * Columns past Dv hold zeros (V's loads zero-fill them), so the row's
 * largest value is the head slice's. */
template <int D>
__device__ __forceinline__ void parts_write(const float *o, const attn_cuda_params &p, const Blk &k,
                                            const int (&lr)[2], int t4, __half *stage, int tid)
{
    constexpr int SR = D + 8;
    const int z = (int)blockIdx.z;
    const size_t sat = (size_t)(k.s.q0 + k.r0) * p.H + (size_t)k.h;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float m = 0.0f;
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            m = fmaxf(m, fmaxf(fabsf(o[4 * j + 2 * r]), fabsf(o[4 * j + 2 * r + 1])));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        const float mul = pow2f(parts_exp(m));
#pragma unroll
        for (int j = 0; j < D / 8; j++)
            *reinterpret_cast<__half2 *>(stage + lr[r] * SR + 8 * j + 2 * t4) =
                __floats2half2_rn(o[4 * j + 2 * r] * mul, o[4 * j + 2 * r + 1] * mul);
        if (t4 == 0 && lr[r] < k.nr) /* 2^-e: exact */
            p.parts_scale[(size_t)z * p.scale_plane + sat + (size_t)lr[r] * p.H] = 1.0f / mul;
    }
    bar_sync(3, 256);
    if (tid == 0)
        trace_stamp(p, ATTN_TRACE_PART_STORED);
    const size_t at = (size_t)(k.s.q0 + k.r0) * p.ld_parts + (size_t)k.h * p.Dv;
    __half *dst = static_cast<__half *>(p.parts) + (size_t)z * p.parts_plane + at;
    if (p.Dv == D) /* (the head's width is the padded one, as at every model width that is a multiple of 64) */
        staged_rows_out<SR, D>(dst, p.ld_parts, stage, k.nr, D, tid);
    else
        staged_rows_out<SR>(dst, p.ld_parts, stage, k.nr, p.Dv, tid);
    const int cpr = p.Dv / 8, all = blk_tiles(k);
    for (int y = z - 1; y >= 0 && split_tiles(all, y, (int)gridDim.z) == 0; y--) {
        __half *zd = static_cast<__half *>(p.parts) + (size_t)y * p.parts_plane + at;
        for (int i = tid; i < k.nr * cpr; i += 256) {
            const int row = i / cpr, col = 8 * (i - row * cpr);
            *reinterpret_cast<uint4 *>(zd + (size_t)row * p.ld_parts + col) = make_uint4(0u, 0u, 0u, 0u);
        }
        for (int row = tid; row < k.nr; row += 256)
            p.parts_scale[(size_t)y * p.scale_plane + sat + (size_t)row * p.H] = 1.0f;
    }
}

static_assert(ATTN_CUDA_MAX_PART_SPLITS <= ATTN_PARTS_MAX, "parts_sum adds every plane");

/* attn_parts_sum_cuda: one warp per computed row of a sequence (grid y),
 * each lane 4 columns at a time over H * Dv, the planes added in order. */
__global__ void parts_sum_kernel(const attn_cuda_params p, int S)
{
    const int b = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const attn_cuda_seq sq = p.seqs[b];
    const int rows = sq.hist - sq.c + sq.cand, r = blockIdx.x * (blockDim.x / 32) + warp;
    if (r >= rows)
        return;
    const float inv_n = 1.0f / (float)p.N;
    const size_t at = (size_t)(sq.q0 + r) * p.ld_parts, sat = (size_t)(sq.q0 + r) * p.H;
    bf16 *out = static_cast<bf16 *>(p.out) + (size_t)(sq.q0 + r) * p.ld_out;
    for (int c = 4 * lane; c < p.H * p.Dv; c += 128) {
        float a[4];
        parts_sum<4>(static_cast<const __half *>(p.parts) + at + c, p.parts_plane, p.parts_scale + sat + c / p.Dv,
                     p.scale_plane, S, a);
        uint32_t *dst = reinterpret_cast<uint32_t *>(out + c);
        dst[0] = pack_bf16(a[0] * inv_n, a[1] * inv_n);
        dst[1] = pack_bf16(a[2] * inv_n, a[3] * inv_n);
    }
}

/* ---- kernel 1: mma.sync ------------------------------------------------- */

template <int D, bool RAB>
__global__ void __launch_bounds__(NTHREADS, 1) attn_mma_kernel(const attn_cuda_params p)
{
    extern __shared__ uint8_t smem_raw[];
    __shared__ unsigned long long s_thr[THR_N];
    pdl_wait(); /* before blk_init's first read (pdl.cuh; see attn_ws_kernel) */
    pdl_trigger();
    Blk k;
    if (!blk_init(k, p)) /* never split (gridDim.z == 1): every row block has tiles */
        return;
    const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const uint32_t sK = sQ + BM * D * 2, sV = sK + 2 * BN * D * 2; /* two buffers each */
    constexpr uint32_t KV_BYTES = BN * D * 2;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int lr[2] = {warp * 16 + g, warp * 16 + g + 8};
    const int qv[2] = {k.qv0 + lr[0], k.qv0 + lr[1]};
    Rab rb = {};
    int64_t tsn[2] = {0, 0};
    if (RAB) {
        rab_init(rb, p, k, s_thr);
        tsn[0] = ts_next(rb, qv[0]);
        tsn[1] = ts_next(rb, qv[1]);
    }
    const float half_alpha = 0.5f * p.alpha;

    load_q_whole<D>(sQ, p, k); /* the loop's first barrier (and fence) orders it before the products */
    load_kv<D, true, true, NTHREADS>(sK, sV, p, k, k.k0(0), k.kend(0), threadIdx.x);
    cp_async_commit();

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++)
        o[i] = 0.0f;

    for (int t = 0; t < k.nt; t++) {
        const uint32_t kb = sK + (t & 1) * KV_BYTES, vb = sV + (t & 1) * KV_BYTES;
        if (t + 1 < k.nt)
            load_kv<D, true, true, NTHREADS>(sK + ((t + 1) & 1) * KV_BYTES, sV + ((t + 1) & 1) * KV_BYTES, p, k,
                                             k.k0(t + 1), k.kend(t + 1), threadIdx.x);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        float s[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++)
            s[i] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t a[4];
            ldsm_x4(a, sQ + tile_off<BM>(warp * 16 + (lane & 15), 2 * kk + (lane >> 4)));
#pragma unroll
            for (int nb2 = 0; nb2 < BN / 16; nb2++) {
                uint32_t b[4];
                ldsm_x4(b, kb + tile_off<BN>(16 * nb2 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1)));
                mma_bf16(&s[8 * nb2], a, b[0], b[1]);
                mma_bf16(&s[8 * nb2 + 4], a, b[2], b[3]);
            }
        }

        tile_weights<BN / 8, RAB>(s, k, t, qv, tsn, t4, half_alpha, rb);
        uint32_t pk[BN / 4];
        pack_p<BN / 8>(pk, s);

#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) {
            const uint32_t a[4] = {pk[4 * kk], pk[4 * kk + 1], pk[4 * kk + 2], pk[4 * kk + 3]};
#pragma unroll
            for (int nb2 = 0; nb2 < D / 16; nb2++) {
                uint32_t b[4];
                ldsm_x4_t(b, vb + tile_off<BN>(16 * kk + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * nb2 + (lane >> 4)));
                mma_bf16(&o[8 * nb2], a, b[0], b[1]);
                mma_bf16(&o[8 * nb2 + 4], a, b[2], b[3]);
            }
        }
        __syncthreads();
    }
    store_o<D / 8>(o, p, k, lr, t4);
}

/* ---- kernel 2: wgmma ---------------------------------------------------- */

/* wgmma wrappers (accumulator lists from sm90.cuh): m64n64k16 with both
 * operands in shared memory; m64nNk16 with A in registers and B = V
 * transposed, N = 64, 128, 256. */
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t da, uint64_t db, int scale_d)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SM90_ACC_REGS_32 "}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : SM90_ACC_32(d)
        : "l"(da), "l"(db), "r"(scale_d));
}

__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t *a, uint64_t db)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SM90_ACC_REGS_32 "}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : SM90_ACC_32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t *a, uint64_t db)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SM90_ACC_REGS_64 "}, "
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : SM90_ACC_64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

__device__ __forceinline__ void wgmma_m64n256k16_rs(float (&d)[128], const uint32_t *a, uint64_t db)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" SM90_ACC_REGS_128 "}, "
        "{%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
        : SM90_ACC_128(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <int N> struct Rs;
template <> struct Rs<64> {
    static __device__ __forceinline__ void run(float (&d)[32], const uint32_t *a, uint64_t db)
    {
        wgmma_m64n64k16_rs(d, a, db);
    }
};
template <> struct Rs<128> {
    static __device__ __forceinline__ void run(float (&d)[64], const uint32_t *a, uint64_t db)
    {
        wgmma_m64n128k16_rs(d, a, db);
    }
};
template <> struct Rs<256> {
    static __device__ __forceinline__ void run(float (&d)[128], const uint32_t *a, uint64_t db)
    {
        wgmma_m64n256k16_rs(d, a, db);
    }
};

/* s = Q_wg K^T: this warpgroup's 64 rows against the tile's 64 keys. */
template <int D> __device__ __forceinline__ void wg_qk(float (&s)[32], uint32_t sq_wg, uint32_t sk)
{
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const uint64_t da = gmma_desc(sq_wg + (kk >> 2) * (BM * 128) + (kk & 3) * 32, 16, 1024);
        const uint64_t db = gmma_desc(sk + (kk >> 2) * (BN * 128) + (kk & 3) * 32, 16, 1024);
        wgmma_m64n64k16_ss(s, da, db, kk > 0);
    }
}

/* o += P V: P from registers (4 k-steps of 16 keys), V MN-major. */
template <int D> __device__ __forceinline__ void wg_pv(float (&o)[D / 2], const uint32_t (&pf)[16], uint32_t sv)
{
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++)
        Rs<D>::run(o, pf + 4 * kk, gmma_desc(sv + kk * 16 * 128, BN * 128, 1024));
}

template <int D, bool RAB>
__global__ void __launch_bounds__(NTHREADS, 1) attn_wgmma_kernel(const attn_cuda_params p)
{
    extern __shared__ uint8_t smem_raw[];
    __shared__ unsigned long long s_thr[THR_N];
    pdl_wait(); /* before blk_init's first read (pdl.cuh; see attn_ws_kernel) */
    pdl_trigger();
    Blk k;
    if (!blk_init(k, p)) /* never split (gridDim.z == 1): every row block has tiles */
        return;
    const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const uint32_t sK = sQ + BM * D * 2, sV = sK + 2 * BN * D * 2;
    constexpr uint32_t KV_BYTES = BN * D * 2;

    const int wg = threadIdx.x / 128, ww = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    const int lr[2] = {64 * wg + 16 * ww + g, 64 * wg + 16 * ww + g + 8};
    const int qv[2] = {k.qv0 + lr[0], k.qv0 + lr[1]};
    const uint32_t sQw = sQ + wg * 64 * 128; /* this warpgroup's rows in each column block */
    Rab rb = {};
    int64_t tsn[2] = {0, 0};
    if (RAB) {
        rab_init(rb, p, k, s_thr);
        tsn[0] = ts_next(rb, qv[0]);
        tsn[1] = ts_next(rb, qv[1]);
    }
    const float half_alpha = 0.5f * p.alpha;

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++)
        o[i] = 0.0f;
    float s[32];
    uint32_t pf[16]; /* the tile's weights as A fragments */

    /* Iteration t: wait for tile t, start S = Q K^T, load tile t+1 into the
     * other buffers (free: iteration t-1 finished with them before the
     * barrier) while it runs, then the weights and O += P V. */
    load_q_whole<D>(sQ, p, k); /* the loop's first barrier (and fence) orders it before the products */
    load_kv<D, true, true, NTHREADS>(sK, sV, p, k, k.k0(0), k.kend(0), threadIdx.x);
    cp_async_commit();
    for (int t = 0; t < k.nt; t++) {
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();

        wg_fence();
        wg_qk<D>(s, sQw, sK + (t & 1) * KV_BYTES);
        wg_commit();
        if (t + 1 < k.nt) {
            load_kv<D, true, true, NTHREADS>(sK + ((t + 1) & 1) * KV_BYTES, sV + ((t + 1) & 1) * KV_BYTES, p, k,
                                             k.k0(t + 1), k.kend(t + 1), threadIdx.x);
            cp_async_commit();
        }
        wg_wait<0>();
        fence_regs(s);
        tile_weights<8, RAB>(s, k, t, qv, tsn, t4, half_alpha, rb);
        pack_p<8>(pf, s);
        wg_fence();
        wg_pv<D>(o, pf, sV + (t & 1) * KV_BYTES);
        wg_commit();
        wg_wait<0>();
        fence_regs(o);
    }
    store_o<D / 8>(o, p, k, lr, t4);
}

/* ---- kernel 3: warp-specialized wgmma ------------------------------------ */

/* store_o through shared memory, for the warp-specialised kernel (its 256
 * computing threads, tid 0..255, after both are done with Q, K and V): the
 * fragments go to a bf16 tile at `stage` (rows D + 8 elements apart: the
 * fragment writes meet no bank conflict), then whole rows leave as 16-byte
 * stores (the fragment stores wrote 16 bytes per row and instruction and
 * took 4.5 us of a CTA). The output must allow it (out_vec16). */
template <int D>
__device__ __forceinline__ void store_o_staged(const float *o, const attn_cuda_params &p, const Blk &k,
                                               const int (&lr)[2], int t4, bf16 *stage, int tid)
{
    constexpr int SR = D + 8;
    const float inv_n = 1.0f / (float)p.N;
#pragma unroll
    for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int r = 0; r < 2; r++)
            *reinterpret_cast<uint32_t *>(stage + lr[r] * SR + 8 * j + 2 * t4) =
                pack_bf16(o[4 * j + 2 * r] * inv_n, o[4 * j + 2 * r + 1] * inv_n);
    bar_sync(3, 256);
    staged_rows_out<SR>(static_cast<bf16 *>(p.out) + (size_t)(k.s.q0 + k.r0) * p.ld_out + (size_t)k.h * p.Dv,
                        p.ld_out, stage, k.nr, p.Dv, tid);
}

/* Whether every output row of attention p starts 16-byte aligned. */
__device__ __forceinline__ bool out_vec16(const attn_cuda_params &p)
{
    return p.ld_out % 8 == 0 && p.Dv % 8 == 0 && ((uintptr_t)p.out & 15) == 0;
}

constexpr int WS_THREADS = 384; /* a loading warpgroup + two computing warpgroups */
constexpr int WS_PRODUCER_REGS = 56, WS_CONSUMER_REGS = 224; /* 128 x 56 + 256 x 224 = 384 x 168 */

/* Buffers of the warp-specialized kernel after Q: WS_KS K tiles and WS_VS
 * V tiles, 224 KB at D 256 (the limit is 227 KB). The third V buffer gave
 * 3% at D 256 and 11% at D 128 over two; deeper buffers at D <= 128 (3 K
 * and 4 V, 4 K and 6 V) gave nothing more (docs/attention_cuda.md). */
constexpr int WS_KS = 2, WS_VS = 3;
template <int D> __host__ __device__ constexpr int ws_smem_bytes() { return 2 * D * (BM + (WS_KS + WS_VS) * BN) + 1024; }

/* ---- K and V through TMA ----------------------------------------------- */

/* Where Dqk = Dv = D, the loads of K and V can be TMA copies instead of
 * cp.async: one thread issues each tile's boxes (the 128-byte swizzle lands
 * them in wgmma's layout), counted in bytes on the tile's mbarrier; the rest
 * of the loading warpgroup only loads Q (cp.async, as before), and the maps
 * are prefetched at the start. The loads had been the limit: without them
 * (the same kernel reading garbage) 8 x 4096 at D 256 took 0.39 ms against
 * 0.55, while keeping every load in L2 gained 2-6% and sharing each tile
 * between two row blocks (TMA multicast, halving the L2 traffic) 2%. With
 * TMA: 0.465 ms (docs/attention_cuda.md). A tile's rows past the keys it
 * needs arrive as they are: masked, and finite (attn_cuda_params.n_rows).
 *
 * Over pages the pool is one more map: rows of H * D values (K and V blocks
 * alike, as kw == vw), in boxes of a page (P = 16, 32 or 64 rows). A tile
 * wholly below `paged` is BN / P pages of D / 64 boxes each; page p's K
 * block of this layer starts at pool row p * page_rows + k_row. Only the
 * tile that holds both the last cached keys and this call's first (paged
 * not a multiple of 64: one a row block at most) is not whole boxes of
 * either; every loading thread brings it with cp.async, as the cp.async
 * form does. */

/* The TMA form's maps and the pool's geometry in rows (tma_launch). */
struct TmaArgs {
    CUtensorMap tk, tv; /* K and V: [n_rows, H*D] in 64 x 64 boxes */
    CUtensorMap tq;     /* Q: [n_rows, H*D] in BM x 64 boxes */
    CUtensorMap tp;     /* the page pool (pages set): [n_pages * page_rows, H*D] in P x 64 boxes */
    int page_rows;      /* pool rows a page: page_elems / (H*D) */
    int k_row, v_row;   /* this layer's K and V blocks: rows past a page's first */
    attn_cuda_params p;
};

/* The warp-specialised kernel's mbarriers, at offsets from `base`. */
template <int KS, int VS> struct WsBars {
    uint32_t base;
    __device__ uint32_t q() const { return base; }
    __device__ uint32_t kfull(int i) const { return base + 8u * (1 + i); }
    __device__ uint32_t kempty(int i) const { return base + 8u * (1 + KS + i); }
    __device__ uint32_t vfull(int i) const { return base + 8u * (1 + 2 * KS + i); }
    __device__ uint32_t vempty(int i) const { return base + 8u * (1 + 2 * KS + VS + i); }
};

/* One tile of 64 keys from dense row `row` into buffer dst: D/64 boxes. */
template <int D>
__device__ __forceinline__ void tma_load_tile(const CUtensorMap *map, uint32_t dst, uint32_t full, int col, int row)
{
#pragma unroll
    for (int j = 0; j < D / 64; j++)
        tma_load_2d(dst + (uint32_t)(j * BN * 128), map, full, col + 64 * j, row);
}

/* One tile of 64 cached keys from its BN / P pages (ids[0 .. BN/P)) into
 * buffer dst: each page's P rows land P * 128 bytes after the last's (a
 * multiple of 1024, so the swizzle is the whole tile's). */
template <int D>
__device__ __forceinline__ void tma_load_pages(const CUtensorMap *pool, uint32_t dst, uint32_t full, int col,
                                               const int (&ids)[4], int P, int page_rows, int row_off)
{
#pragma unroll
    for (int q = 0; q < 4; q++)
        if (q * P < BN)
#pragma unroll
            for (int j = 0; j < D / 64; j++)
                tma_load_2d(dst + (uint32_t)(j * BN * 128 + q * P * 128), pool, full, col + 64 * j,
                            ids[q] * page_rows + row_off);
}

/* Tile t of every loading thread with cp.async (the tile across `paged`).
 * Only thread 0 waits for the buffer's release: it comes to tile t in
 * order, while the others come straight here, and a parity wait from more
 * than one phase behind would pass at once. It tells them through barrier 6
 * (reached by thread 0 from its loop and by the others from a call of
 * their own: warp 0 has diverged, so the barrier is the unaligned one).
 * Each thread's copies are counted on the buffer's mbarrier (one pending
 * arrival added now, taken when they land), and thread 0 makes the phase's
 * one expected arrival once every thread has added its own. */
template <int D, int KS, int VS>
__device__ __forceinline__ void tma_form_mixed_tile(const attn_cuda_params &p, const Blk &k, int t, uint32_t sK,
                                                    uint32_t sV, WsBars<KS, VS> b, int tid)
{
    constexpr uint32_t KV_BYTES = BN * D * 2;
    const int kb = t % KS, vb = t % VS;
    if (tid == 0 && t >= KS)
        mbar_wait(b.kempty(kb), (t / KS - 1) & 1);
    bar_sync_diverged(6, 128); /* the K buffer is free */
    load_kv<D, true, false, 128>(sK + kb * KV_BYTES, 0, p, k, k.k0(t), k.kend(t), tid);
    mbar_track_cp_async(b.kfull(kb));
    bar_sync_diverged(6, 128); /* every thread's pending arrival is in */
    if (tid == 0) {
        mbar_arrive(b.kfull(kb));
        if (t >= VS)
            mbar_wait(b.vempty(vb), (t / VS - 1) & 1);
    }
    bar_sync_diverged(6, 128); /* the V buffer is free */
    load_kv<D, false, true, 128>(0, sV + vb * KV_BYTES, p, k, k.k0(t), k.kend(t), tid);
    mbar_track_cp_async(b.vfull(vb));
    bar_sync_diverged(6, 128);
    if (tid == 0)
        mbar_arrive(b.vfull(vb));
}

/* The loading warpgroup's tiles in the TMA form (every thread calls it).
 * Thread 0 issues every tile's K, then its V, from the dense rows or the
 * pages; the next paged tile's ids are read while it waits for a buffer.
 * Use u >= 1 of a buffer waits for the computing warps' release of use u - 1. */
template <int D, int KS, int VS>
__device__ __forceinline__ void tma_load_kv(const attn_cuda_params &p, const Blk &k, const TmaArgs &a, uint32_t sQ,
                                            uint32_t sK, uint32_t sV, WsBars<KS, VS> b, int tid)
{
    constexpr uint32_t KV_BYTES = BN * D * 2;
    const int col = k.h * D, paged = k.s.paged;
    /* The tile across `paged` (its index among this CTA's tiles), if any. */
    const int mixed = paged % BN != 0 && paged / BN < k.nh ? paged / BN - k.tb : -1;
    const bool has_mixed = mixed >= 0 && mixed < k.nt;
    if (tid != 0) {
        if (has_mixed)
            tma_form_mixed_tile<D, KS, VS>(p, k, mixed, sK, sV, b, tid);
        return;
    }
    const int P = p.page_size;
    int ids[4] = {0, 0, 0, 0}; /* the next paged tile's pages */
    auto fetch = [&](int t) {
        if (t < k.nt && t != mixed && k.k0(t) < paged) {
            const int *pt = p.page_table + k.s.page0 + k.k0(t) / P;
#pragma unroll
            for (int q = 0; q < 4; q++)
                if (q * P < BN)
                    ids[q] = __ldg(pt + q);
        }
    };
    fetch(0);
    /* Q while the first page ids are on their way: the block's BM rows from
     * its first, D/64 boxes (rows past the block's are another sequence's or
     * past n_rows, zeros: their products are never stored). */
    mbar_arrive_expect_tx(b.q(), (uint32_t)(BM * D * 2));
#pragma unroll
    for (int j = 0; j < D / 64; j++)
        tma_load_2d(sQ + (uint32_t)(j * BM * 128), &a.tq, b.q(), col + 64 * j, k.s.q0 + k.r0);
    trace_stamp(p, ATTN_TRACE_Q_ISSUED);
    for (int t = 0; t < k.nt; t++) {
        if (t == mixed) {
            tma_form_mixed_tile<D, KS, VS>(p, k, t, sK, sV, b, tid);
            fetch(t + 1);
            continue;
        }
        const int k0 = k.k0(t), kb = t % KS, vb = t % VS;
        const bool dense = k0 >= paged;
        const int cur[4] = {ids[0], ids[1], ids[2], ids[3]};
        fetch(t + 1);
        const int row = k.s.q0 + k0 - k.s.c; /* dense row of the tile's first key */
        if (t >= KS)
            mbar_wait(b.kempty(kb), (t / KS - 1) & 1);
        mbar_arrive_expect_tx(b.kfull(kb), KV_BYTES);
        if (dense)
            tma_load_tile<D>(&a.tk, sK + kb * KV_BYTES, b.kfull(kb), col, row);
        else
            tma_load_pages<D>(&a.tp, sK + kb * KV_BYTES, b.kfull(kb), col, cur, P, a.page_rows, a.k_row);
        if (t >= VS)
            mbar_wait(b.vempty(vb), (t / VS - 1) & 1);
        mbar_arrive_expect_tx(b.vfull(vb), KV_BYTES);
        if (dense)
            tma_load_tile<D>(&a.tv, sV + vb * KV_BYTES, b.vfull(vb), col, row);
        else
            tma_load_pages<D>(&a.tp, sV + vb * KV_BYTES, b.vfull(vb), col, cur, P, a.page_rows, a.v_row);
    }
}

/* FlashAttention-3's structure. Warpgroup 0 only loads: Q, then for each
 * tile K into buffer t % KS and V into buffer t % VS, with cp.async, each
 * buffer's mbarrier completing when every loading thread's copies have
 * landed; a buffer is reused once the computing warps have released it.
 * Warpgroups 1 and 2 only compute, 64 rows each: tile t+1's S = Q K^T and
 * tile t's O += P V are issued together and tile t+1's weights computed
 * while they run; a K (V) buffer is released as soon as the Q K^T (P V)
 * that read it is done. The two computing warpgroups take turns at issuing
 * their products (named barriers 1 and 2), so that one's SiLU runs while
 * the other's products keep the tensor cores busy. Registers move from the
 * loader to the computing warpgroups with setmaxnreg. */
template <int D, bool RAB, bool TMA, bool PARTS>
__device__ __forceinline__ void ws_body(const attn_cuda_params &p, const TmaArgs *a)
{
    constexpr int KS = WS_KS, VS = WS_VS;
    extern __shared__ uint8_t smem_raw[];
    __shared__ unsigned long long s_thr[THR_N];
    __shared__ __align__(8) uint64_t bars[1 + 2 * (KS + VS)]; /* Q; K full, empty; V full, empty */
    __shared__ int s_empty; /* split-KV: this CTA's split has no tile */
    static_assert(part_bytes<D>() + 1024 <= ws_smem_bytes<D>(), "the split part fits over Q, K and V");
    static_assert(BM * (D + 8) * 2 + 1024 <= ws_smem_bytes<D>(), "the staged output fits over Q, K and V");
    /* Programmatic dependent launch (pdl.cuh): all 384 threads wait here,
     * before the roles part and before any global access (the trace stamp,
     * blk_init's read of the sequences, the tile loads, the stores, the
     * path of a split with no tile), then let the next kernel launch. Only
     * the mbarrier init could go above the wait, and it is short next to
     * what the overlap hides: the launch and the CTAs' start. */
    pdl_wait();
    pdl_trigger();
    if (threadIdx.x == 0)
        trace_stamp(p, ATTN_TRACE_START);
    if (TMA && threadIdx.x == 0) { /* the maps are kernel parameters: nothing to wait for */
        tma_prefetch_map(&a->tq);
        tma_prefetch_map(&a->tk);
        tma_prefetch_map(&a->tv);
        if (p.pages)
            tma_prefetch_map(&a->tp);
    }
    Blk k;
    if (!blk_init(k, p))
        return; /* grid padding: the whole cluster leaves */
    const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const uint32_t sK = sQ + BM * D * 2, sV = sK + KS * BN * D * 2;
    constexpr uint32_t KV_BYTES = BN * D * 2;
    const WsBars<KS, VS> wb = {smem_u32(&bars[0])};
    const uint32_t qfull = wb.q();
    if (threadIdx.x == 0) {
        mbar_init(qfull, TMA ? 1 : 128); /* Q by TMA (thread 0), or every loading thread's copies */
        for (int i = 0; i < KS; i++) {
            mbar_init(wb.kfull(i), TMA ? 1 : 128); /* the TMA issuer, or every loading thread's copies */
            mbar_init(wb.kempty(i), 8);            /* every computing warp */
        }
        for (int i = 0; i < VS; i++) {
            mbar_init(wb.vfull(i), TMA ? 1 : 128);
            mbar_init(wb.vempty(i), 8);
        }
        s_empty = k.nt == 0;
    }
    Rab rb = {};
    if (RAB)
        rab_init(rb, p, k, s_thr);
    __syncthreads();
    /* (parts: p.parts is set only when the call splits; read from the
     * parameters at each use, so that no register holds it over the loop.
     * PARTS: the caller splits and sets p.parts, and the kernel holds that
     * epilogue alone: the code a CTA runs is smaller and in one piece.) */
    const bool split = PARTS || gridDim.z > 1;
    if (k.nt == 0) { /* a split with no tile: it only keeps the cluster's count (see split_reduce) */
        if (PARTS || p.parts) /* (the next split with tiles zeroes this one's plane: parts_write) */
            return;
        cluster_sync();
        cluster_sync();
        return;
    }

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        /* Use u of a buffer waits for the release of use u-1 (phase u-1). */
        reg_dealloc<WS_PRODUCER_REGS>();
        const int tid = threadIdx.x;
        if constexpr (TMA) {
            tma_load_kv<D, KS, VS>(p, k, *a, sQ, sK, sV, wb, tid);
            __syncwarp(); /* thread 0 issued alone: warp 0 meets again before the aligned cluster barriers */
        } else {
            load_q<D, 128>(sQ, p, k, tid);
            mbar_arrive_cp_async(qfull);
            for (int t = 0; t < k.nt; t++) {
                const int kb = t % KS, vb = t % VS;
                if (t >= KS)
                    mbar_wait(wb.kempty(kb), (t / KS - 1) & 1);
                load_kv<D, true, false, 128>(sK + kb * KV_BYTES, 0, p, k, k.k0(t), k.kend(t), tid);
                mbar_arrive_cp_async(wb.kfull(kb));
                if (t >= VS)
                    mbar_wait(wb.vempty(vb), (t / VS - 1) & 1);
                load_kv<D, false, true, 128>(0, sV + vb * KV_BYTES, p, k, k.k0(t), k.kend(t), tid);
                mbar_arrive_cp_async(wb.vfull(vb));
            }
        }
        if (split && !(PARTS || p.parts)) { /* the loading warps (few registers left) only keep the cluster's count */
            cluster_sync();
            cluster_sync();
        }
        return;
    }

    reg_alloc<WS_CONSUMER_REGS>();
    const int cw = wg - 1, ww = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    const bool lead = lane == 0;
    const int lr[2] = {64 * cw + 16 * ww + g, 64 * cw + 16 * ww + g + 8};
    const int qv[2] = {k.qv0 + lr[0], k.qv0 + lr[1]};
    const uint32_t sQw = sQ + cw * 64 * 128;
    int64_t tsn[2] = {0, 0};
    if (RAB) {
        tsn[0] = ts_next(rb, qv[0]);
        tsn[1] = ts_next(rb, qv[1]);
    }
    const float half_alpha = 0.5f * p.alpha;
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++)
        o[i] = 0.0f;
    float s[32];
    uint32_t pf[16]; /* the weights of the tile whose P V is next, as A fragments */
    /* Turns: warpgroup cw issues after bar_sync(1 + cw), then lets the
     * other go with bar_arrive(2 - cw); warpgroup 1 lets 0 go first. Each
     * issues nt + 1 times, so 1 skips its last bar_arrive. */
    if (cw == 1)
        bar_arrive(1, 256);

    /* cp.async writes through the generic proxy and wgmma reads through the
     * async one: after acquiring a buffer, a proxy fence before the reads. */
    mbar_wait(qfull, 0);
    const bool stamp = threadIdx.x == 128;
    if (stamp)
        trace_stamp(p, ATTN_TRACE_Q_LANDED);
    if (q_activated_here(p)) { /* each computing warpgroup its own 64 rows */
        q_activate<D>(sQ, 64 * cw, 64, p, k, threadIdx.x % 128, 128);
        fence_proxy_async();
        bar_sync(4 + cw, 128);
    }
    if (stamp)
        trace_stamp(p, ATTN_TRACE_Q_READY);
    mbar_wait(wb.kfull(0), 0);
    if (stamp)
        trace_stamp(p, ATTN_TRACE_K0_LANDED);
    fence_proxy_async();
    bar_sync(1 + cw, 256);
    wg_fence();
    wg_qk<D>(s, sQw, sK);
    wg_commit();
    bar_arrive(2 - cw, 256);
    wg_wait<0>();
    if (lead)
        mbar_arrive(wb.kempty(0));
    fence_regs(s);
    if (stamp)
        trace_stamp(p, ATTN_TRACE_FIRST_S);
    tile_weights<8, RAB>(s, k, 0, qv, tsn, t4, half_alpha, rb);
    pack_p<8>(pf, s);

    for (int t = 0; t + 1 < k.nt; t++) {
        const int kb = (t + 1) % KS, vb = t % VS;
        mbar_wait(wb.kfull(kb), ((t + 1) / KS) & 1);
        mbar_wait(wb.vfull(vb), (t / VS) & 1);
        fence_proxy_async();
        bar_sync(1 + cw, 256);
        wg_fence();
        wg_qk<D>(s, sQw, sK + kb * KV_BYTES);
        wg_commit();
        wg_pv<D>(o, pf, sV + vb * KV_BYTES);
        wg_commit();
        bar_arrive(2 - cw, 256);
        wg_wait<1>();
        if (lead)
            mbar_arrive(wb.kempty(kb));
        fence_regs(s);
        tile_weights<8, RAB>(s, k, t + 1, qv, tsn, t4, half_alpha, rb);
        wg_wait<0>();
        if (lead)
            mbar_arrive(wb.vempty(vb));
        fence_regs(o);
        fence_frags(pf);
        pack_p<8>(pf, s);
    }
    if (stamp)
        trace_stamp(p, ATTN_TRACE_LOOP_DONE);
    const int vb = (k.nt - 1) % VS;
    mbar_wait(wb.vfull(vb), ((k.nt - 1) / VS) & 1);
    fence_proxy_async();
    bar_sync(1 + cw, 256);
    wg_fence();
    wg_pv<D>(o, pf, sV + vb * KV_BYTES);
    wg_commit();
    if (cw == 0)
        bar_arrive(2 - cw, 256);
    wg_wait<0>();
    fence_regs(o);
    if (stamp)
        trace_stamp(p, ATTN_TRACE_PV_DONE);
    uint8_t *free_smem = smem_raw + (sQ - smem_u32(smem_raw)); /* Q, K, V: idle after the barrier */
    if (split) {
        bar_sync(3, 256); /* both computing warpgroups are done reading Q, K and V */
        if (PARTS || p.parts) {
            parts_write<D>(o, p, k, lr, t4, reinterpret_cast<__half *>(free_smem), threadIdx.x - 128);
        } else {
            split_store<D>(o, reinterpret_cast<float *>(free_smem), lr, t4);
            if (stamp)
                trace_stamp(p, ATTN_TRACE_PART_STORED);
            split_reduce<D>(p, k, sQ, smem_u32(&s_empty), threadIdx.x - 128, 256);
        }
    } else if (out_vec16(p)) {
        bar_sync(3, 256);
        store_o_staged<D>(o, p, k, lr, t4, reinterpret_cast<bf16 *>(free_smem), threadIdx.x - 128);
    } else
        store_o<D / 8>(o, p, k, lr, t4);
    if (stamp)
        trace_stamp(p, ATTN_TRACE_END);
}

template <int D, bool RAB>
__global__ void __launch_bounds__(WS_THREADS, 1) attn_ws_kernel(const attn_cuda_params p)
{
    ws_body<D, RAB, false, false>(p, nullptr);
}

/* The same with K and V through TMA (above); PARTS: the form for a split
 * whose parts go to global memory (p.parts set), with no other epilogue. */
template <int D, bool RAB, bool PARTS>
__global__ void __launch_bounds__(WS_THREADS, 1) attn_tma_kernel(const __grid_constant__ TmaArgs a)
{
    ws_body<D, RAB, true, PARTS>(a.p, &a);
}

} /* namespace */

/* ---- host side ---------------------------------------------------------- */

/* The kernel attn_fwd_cuda runs unless a test forces another. */
#define ATTN_CUDA_KERNEL_DEFAULT ATTN_CUDA_KERNEL_TMA /* WS where TMA does not apply */

static int g_forced_kernel = ATTN_CUDA_KERNEL_AUTO;

extern "C" void attn_cuda_force_kernel(int kind) { g_forced_kernel = kind; }

extern "C" int attn_cuda_time_thresholds(uint64_t *thr, int n)
{
    static const uint64_t host_thr[THR_N] = {ATTN_THR_TABLE};
    for (int i = 0; i < n && i < THR_N; i++)
        thr[i] = host_thr[i];
    return THR_N;
}

extern "C" bool attn_cuda_device_present(char *why, size_t n)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        snprintf(why, n, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "count is 0");
        cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return false;
    }
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0) {
        snprintf(why, n, "device %d is sm_%d%d; this build holds sm_90a code only (H100/H200)", dev, major, minor);
        return false;
    }
    return true;
}

extern "C" bool attn_cuda_supported(int Dqk, int Dv, char *why, size_t n)
{
    if (Dqk < 16 || Dqk > 256 || Dqk % 16 || Dv < 16 || Dv > 256 || Dv % 16) {
        snprintf(why, n, "attention on CUDA needs Dqk and Dv multiples of 16 in [16, 256], got Dqk %d, Dv %d", Dqk,
                 Dv);
        return false;
    }
    return true;
}

typedef void (*attn_kernel_fn)(attn_cuda_params);

/* The kernel of `kind` for padded width D, its dynamic shared memory and
 * threads per CTA. */
template <int D> static attn_kernel_fn pick_kernel(int kind, bool rab, int *smem, int *threads)
{
    *threads = NTHREADS;
    *smem = smem_bytes<D>();
    switch (kind) {
    case ATTN_CUDA_KERNEL_MMA:
        return rab ? attn_mma_kernel<D, true> : attn_mma_kernel<D, false>;
    case ATTN_CUDA_KERNEL_WGMMA:
        return rab ? attn_wgmma_kernel<D, true> : attn_wgmma_kernel<D, false>;
    default:
        *threads = WS_THREADS;
        *smem = ws_smem_bytes<D>();
        return rab ? attn_ws_kernel<D, true> : attn_ws_kernel<D, false>;
    }
}

/* pick_kernel for head width d (Dqk, Dv <= d <= 256), padded to 64, 128 or 256. */
static attn_kernel_fn pick_kernel_for(int d, int kind, bool rab, int *smem, int *threads)
{
    return d <= 64    ? pick_kernel<64>(kind, rab, smem, threads)
           : d <= 128 ? pick_kernel<128>(kind, rab, smem, threads)
                      : pick_kernel<256>(kind, rab, smem, threads);
}

static bool aligned(const void *ptr, size_t a) { return ((uintptr_t)ptr & (a - 1)) == 0; }

typedef void (*tma_kernel_fn)(TmaArgs);

/* attn_tma_kernel for head width d (64, 128 or 256), with or without rab. */
template <bool PARTS> static tma_kernel_fn tma_kernel_for(int d, bool rab)
{
    if (d == 64)
        return rab ? attn_tma_kernel<64, true, PARTS> : attn_tma_kernel<64, false, PARTS>;
    if (d == 128)
        return rab ? attn_tma_kernel<128, true, PARTS> : attn_tma_kernel<128, false, PARTS>;
    return rab ? attn_tma_kernel<256, true, PARTS> : attn_tma_kernel<256, false, PARTS>;
}

/* The pool's layout in rows of H * Dqk values, as the TMA form reads it:
 * every block a whole number of rows, page sizes that tile 64 keys. */
static bool tma_pages_ok(const attn_cuda_params *p)
{
    if (!p->pages)
        return true;
    const size_t w = (size_t)p->H * (size_t)p->Dqk;
    const int P = p->page_size;
    if (p->n_pages < 1 || (P != 16 && P != 32 && P != 64) || p->page_elems % w || p->k_off % w || p->v_off % w)
        return false;
    const size_t rows = p->page_elems / w;
    return p->k_off / w + (size_t)P <= rows && p->v_off / w + (size_t)P <= rows &&
           (unsigned long long)p->n_pages * rows < (1ull << 31);
}

extern "C" bool attn_cuda_tma_form(const attn_cuda_params *p)
{
    const int d = p->Dqk;
    return p->n_rows > 0 && p->Dqk == p->Dv && (d == 64 || d == 128 || d == 256) && tma_pages_ok(p);
}

/* attn_tma_kernel, after attn_fwd_cuda's checks and attn_cuda_tma_form's,
 * d = Dqk = Dv: S splits (a cluster of S unless the parts go to global
 * memory: p->parts set exactly then). */
static int tma_launch(const attn_cuda_params *p, int d, bool rab, int S, cudaStream_t s)
{
    TmaArgs a;
    memset(&a, 0, sizeof a);
    a.p = *p;
    const uint64_t w = (uint64_t)p->H * d;
    int e = tma::encode_matrix(&a.tk, p->k, (uint64_t)p->n_rows, w, (uint64_t)p->ld_qkv, BN);
    if (e == 0)
        e = tma::encode_matrix(&a.tq, p->q, (uint64_t)p->n_rows, w, (uint64_t)p->ld_qkv, BM);
    if (e == 0)
        e = tma::encode_matrix(&a.tv, p->v, (uint64_t)p->n_rows, w, (uint64_t)p->ld_qkv, BN);
    if (e == 0 && p->pages) {
        a.page_rows = (int)(p->page_elems / w);
        a.k_row = (int)(p->k_off / w);
        a.v_row = (int)(p->v_off / w);
        e = tma::encode_matrix(&a.tp, p->pages, (uint64_t)p->n_pages * (uint64_t)a.page_rows, w, w,
                               (uint32_t)p->page_size);
    }
    if (e != 0)
        return e;
    tma_kernel_fn fn = p->parts ? tma_kernel_for<true>(d, rab) : tma_kernel_for<false>(d, rab);
    const int smem = d == 64 ? ws_smem_bytes<64>() : d == 128 ? ws_smem_bytes<128>() : ws_smem_bytes<256>();
    cudaError_t ce = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (ce != cudaSuccess)
        return (int)ce;
    const long long rb = ((long long)p->max_rows + BM - 1) / BM;
    const dim3 grid((unsigned)(p->B * p->H), (unsigned)rb, (unsigned)S), block(WS_THREADS);
    if (S == 1 || p->parts)
        return (int)pdl_launch(fn, grid, block, (size_t)smem, s, a);
    const cudaLaunchAttribute cluster = cluster_attribute(1, 1, (unsigned)S);
    return (int)pdl_launch_attrs(fn, grid, block, (size_t)smem, s, &cluster, 1, a);
}

extern "C" int attn_cuda_max_clusters(int S, int d)
{
    if (S < 1 || S > ATTN_CUDA_MAX_SPLITS || d < 1 || d > 256)
        return 0;
    int smem, threads;
    attn_kernel_fn fn = pick_kernel_for(d, ATTN_CUDA_KERNEL_WS, false, &smem, &threads);
    if (cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
        return 0;
    cudaLaunchConfig_t lc = {};
    const cudaLaunchAttribute cluster = cluster_attribute(1, 1, (unsigned)S);
    lc.gridDim = dim3(1, 1, (unsigned)S);
    lc.blockDim = dim3((unsigned)threads);
    lc.dynamicSmemBytes = (size_t)smem;
    lc.attrs = const_cast<cudaLaunchAttribute *>(&cluster);
    lc.numAttrs = 1;
    int n = 0;
    if (cudaOccupancyMaxActiveClusters(&n, fn, &lc) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

/* attn_cuda_max_clusters per padded width (64, 128, 256) and S, asked once
 * each, stored plus one (0: not asked yet). */
static std::atomic<int> g_max_clusters[3][ATTN_CUDA_MAX_SPLITS + 1];

static int max_clusters_cached(int S, int d)
{
    std::atomic<int> &slot = g_max_clusters[d <= 64 ? 0 : d <= 128 ? 1 : 2][S];
    int n = slot.load(std::memory_order_relaxed) - 1;
    if (n < 0) {
        n = attn_cuda_max_clusters(S, d);
        slot.store(n + 1, std::memory_order_relaxed);
    }
    return n;
}

/* Split-KV when the row blocks alone leave SMs idle (a few new rows over a
 * long cached history): S CTAs per row block (one cluster; at most 8, the
 * portable cluster size) share its key tiles, at least 3 tiles each (batch
 * 1, 128 new rows + 256 candidates over 896 cached: S = 5 0.023 ms, 6 0.021;
 * over 384 cached: S = 3 0.022, 4 0.020; the rule was 4 tiles), and
 * add their parts in fp32 through shared memory (no softmax: the parts
 * simply sum). S fills one wave, no more: a cluster's CTAs wait for each
 * other, so a second wave costs more than the split gains (H100, D 256,
 * 3968 cached + 384 rows per user: batch 8, 96 row blocks, S = 1 0.129 ms,
 * 2 0.144, 3 0.176; batch 1, 12 row blocks, S = 1 0.124, 4 0.044, 8 0.032).
 * One wave is counted in clusters, not SMs: a cluster's CTAs share a GPC,
 * and an H100 holds 22 clusters of 5 of these CTAs, not 132 / 5 = 26 (15
 * of 7 or 8); batch 2 over 1920 cached rows (24 row blocks) took 0.050 ms
 * at S = 5, two waves, against 0.032 at S = 4. */
/* Whether a call may write split parts to global memory (planes for 2 splits at least). */
static bool parts_possible(const attn_cuda_params *p) { return p->parts && p->parts_planes >= 2; }

/* Whether the planes' layout is what their writer and readers take (attention_cuda.h). */
static bool parts_layout_ok(const attn_cuda_params *p)
{
    return p->parts && p->parts_scale && aligned(p->parts, 16) && p->ld_parts % 8 == 0 &&
           p->ld_parts >= p->H * p->Dv && p->parts_plane % 8 == 0 && p->Dv % 8 == 0;
}

/* The split factor by a rule (1: none): enough CTAs of a row block to fill
 * the SMs, each with at least 3 key tiles in a cluster (parts false), 2 with
 * the parts in global memory; in a cluster at most ATTN_CUDA_MAX_SPLITS and
 * lowered until the clusters fit at once; with the parts at most
 * ATTN_CUDA_MAX_PART_SPLITS and the planes the call has. (Parts with 3 tiles
 * each, as the clusters, held batch 1 at short histories below the SMs' S:
 * 128 new rows + 256 candidates over 256, 384, 640, 896 cached rows took S
 * = 3, 4, 5, 6, and their forwards 0.302, 0.297, 0.302, 0.302 ms against
 * 0.287, 0.288, 0.299, 0.294 at S = 6, 6, 8, 10 (H200, one call); from
 * 1408 cached rows on, and at batch 2, the rule gives the SMs' S either
 * way.) */
static int split_rule(const attn_cuda_params *p, bool parts)
{
    const int n_sm = cuda_sm_count() > 0 ? cuda_sm_count() : 1;
    const long long rb = ((long long)p->max_rows + BM - 1) / BM;
    long long ctas = (long long)p->B * p->H * rb;
    if (ctas <= 0 || ctas >= n_sm)
        return 1;
    long long by_sm = n_sm / ctas, by_keys = p->max_keys / ((parts ? 2 : 3) * BN);
    long long S = by_sm < by_keys ? by_sm : by_keys;
    if (parts) { /* no cluster to fit */
        S = S > ATTN_CUDA_MAX_PART_SPLITS ? ATTN_CUDA_MAX_PART_SPLITS : S;
        S = S > p->parts_planes ? p->parts_planes : S;
        return (int)(S < 2 ? 1 : S);
    }
    S = S > ATTN_CUDA_MAX_SPLITS ? ATTN_CUDA_MAX_SPLITS : S;
    const int d = p->Dqk > p->Dv ? p->Dqk : p->Dv;
    for (; S >= 2; S--) { /* the largest S whose clusters fit at once (0: not known, trust the count of SMs) */
        const int fit = max_clusters_cached((int)S, d);
        if (fit <= 0 || ctas <= fit)
            break;
    }
    return (int)(S < 2 ? 1 : S);
}

/* Parts through global memory pay where they allow more splits than the
 * clusters do, and at the same S from 3 splits on: the cluster's reduction
 * waits at a barrier for its slowest CTA and reads (S - 1) / S of every
 * fp32 part through distributed shared memory, while a part leaves its SM
 * as fp16 straight from the registers, and SiLU(u) * LN(attn) reads the S
 * planes. At S = 2 the cluster's exchange is small and the planes' read
 * costs more (batch 4 over 896 cached rows: 0.722-0.730 against 0.744-0.761
 * ms a request with parts; batch 1 over 512 and 896, S = 4 and 6:
 * 0.321-0.331 against 0.336-0.346 ms with the cluster; docs/attention_cuda.md,
 * "Parts through L2"). */
extern "C" bool attn_cuda_parts_pay(const attn_cuda_params *p)
{
    if (!parts_possible(p))
        return false;
    const int S = split_rule(p, true);
    return S > split_rule(p, false) || S >= 3;
}

extern "C" int attn_cuda_splits(const attn_cuda_params *p) { return split_rule(p, parts_possible(p)); }

/* The kernel attn_fwd_cuda runs: the forced one, or the default. */
static int call_kind(void)
{
    return g_forced_kernel != ATTN_CUDA_KERNEL_AUTO ? g_forced_kernel : ATTN_CUDA_KERNEL_DEFAULT;
}

/* The S attn_fwd_cuda launches: 1 unless the kernel is the warp-specialised
 * one (either form); forced or chosen, at most what its form holds. */
static int call_splits(const attn_cuda_params *p)
{
    const int kind = call_kind();
    if (kind != ATTN_CUDA_KERNEL_WS && kind != ATTN_CUDA_KERNEL_TMA)
        return 1;
    int S = p->splits > 0 ? p->splits : attn_cuda_splits(p);
    const int most = parts_possible(p) ? (p->parts_planes < ATTN_CUDA_MAX_PART_SPLITS ? p->parts_planes
                                                                                       : ATTN_CUDA_MAX_PART_SPLITS)
                                       : ATTN_CUDA_MAX_SPLITS;
    return S > most ? most : S;
}

extern "C" int attn_cuda_parts_used(const attn_cuda_params *p)
{
    if (!p || p->B <= 0 || p->max_rows <= 0 || !parts_possible(p))
        return 0;
    const int S = call_splits(p);
    return S > 1 ? S : 0;
}

extern "C" int attn_parts_sum_cuda(const attn_cuda_params *p, int S, void *stream)
{
    if (!p || S < 1 || S > ATTN_CUDA_MAX_PART_SPLITS || !parts_layout_ok(p) || !p->out || p->ld_out % 2 ||
        !aligned(p->out, 4))
        return (int)cudaErrorInvalidValue;
    if (p->B <= 0 || p->max_rows <= 0)
        return (int)cudaSuccess;
    const dim3 grid((unsigned)((p->max_rows + 7) / 8), (unsigned)p->B);
    parts_sum_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(*p, S);
    return (int)cudaGetLastError();
}

extern "C" int attn_fwd_cuda(const attn_cuda_params *p, void *stream)
{
    char why[160];
    if (!p || p->B < 0 || p->H < 1 || p->N < 1 || !attn_cuda_supported(p->Dqk, p->Dv, why, sizeof why))
        return (int)cudaErrorInvalidValue;
    if (p->B == 0 || p->max_rows <= 0)
        return (int)cudaSuccess;
    /* 16-byte row chunks (cp.async) and 4-byte output pairs. */
    if (!p->seqs || !p->q || !p->k || !p->v || !p->out || !aligned(p->q, 16) || !aligned(p->k, 16) ||
        !aligned(p->v, 16) || p->ld_qkv % 8 || !aligned(p->out, 4) || p->ld_out % 2)
        return (int)cudaErrorInvalidValue;
    if (p->pages && (!aligned(p->pages, 16) || !p->page_table || p->page_size < 1 || p->page_elems % 8 ||
                     p->k_off % 8 || p->v_off % 8))
        return (int)cudaErrorInvalidValue;
    const bool rab = p->pos_w != NULL;
    if (rab && (!p->ts_w || !p->ts || p->n_buckets < 0))
        return (int)cudaErrorInvalidValue;
    if (p->q_fold_e && (!p->q_fold_stats || !aligned(p->q_fold_stats, 8))) /* (read as pairs) */
        return (int)cudaErrorInvalidValue;
    const long long rb = ((long long)p->max_rows + BM - 1) / BM; /* row blocks: grid y */
    if (rb > 65535 || (long long)p->B * p->H > 0x7fffffffLL)
        return (int)cudaErrorInvalidValue;

    const int d = p->Dqk > p->Dv ? p->Dqk : p->Dv;
    const int S = call_splits(p);
    const bool parts = S > 1 && parts_possible(p);
    cudaStream_t s = (cudaStream_t)stream;
    if (S > 1 && ((p->H * p->Dv) % 4 || p->ld_out % 2))
        return (int)cudaErrorInvalidValue;
    if (parts && !parts_layout_ok(p))
        return (int)cudaErrorInvalidValue;
    const int kind = call_kind();
    attn_cuda_params q = *p;
    if (!parts)
        q.parts = NULL; /* the kernel writes parts exactly when it is given them and splits */
    /* The TMA form wherever it applies (the default). */
    if (kind == ATTN_CUDA_KERNEL_TMA && attn_cuda_tma_form(p))
        return tma_launch(&q, d, rab, S, s);
    int smem, threads;
    attn_kernel_fn fn = pick_kernel_for(d, kind, rab, &smem, &threads);
    cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess)
        return (int)e;
    /* With programmatic dependent launch when it is on (pdl.cuh); a split
     * launches its row blocks' CTAs as clusters of 1 x 1 x S, unless its
     * parts go to global memory. */
    const dim3 grid((unsigned)(p->B * p->H), (unsigned)rb, (unsigned)S), block((unsigned)threads);
    if (S == 1 || parts)
        return (int)pdl_launch(fn, grid, block, (size_t)smem, s, q);
    const cudaLaunchAttribute cluster = cluster_attribute(1, 1, (unsigned)S);
    return (int)pdl_launch_attrs(fn, grid, block, (size_t)smem, s, &cluster, 1, q);
}
