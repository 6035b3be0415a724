/* head_fused.cu - the ranking head (gather, L2 norm, one hidden layer,
 * logits, sigmoid) in one kernel on Hopper; head_fused_cuda.h has the
 * contract.
 *
 * The work is small (M = 256 candidates, 1024 -> 512 -> 8: 0.27 GFLOP) and
 * the bytes are few (w1 1 MB, x rows 0.5-1 MB), so what costs is moving
 * them into SMs and the chain of dependent steps, not the arithmetic. Each
 * CTA takes RB candidates by CB hidden columns by a slice of w1's rows (K),
 * and a cluster of KS CTAs (consecutive in grid x) splits K between them:
 * every CTA loads only its x[RB, K/KS] and w1[K/KS, CB] (for 1024 -> 512 at
 * 256 rows: 4 x 4 clusters of 8 CTAs, 48 KB each from L2 instead of the
 * 128 KB a 2-D grid of the same 128 CTAs would need). Each CTA, 8 warps:
 *
 *   1. starts cp.async copies of its w1 tile and reads its slices of b1 and
 *      w2 (weights: before pdl_wait), then waits for the kernel ahead;
 *   2. reads M and its rows' indices, loads its x tile into registers
 *      (zeros past `width`, past its slice and for rows past M);
 *   3. sums the squares of its slice of each row and sends the partial
 *      sums to every CTA of the cluster; each adds the KS of them in rank
 *      order, so all get the same norm;
 *   4. writes y = bf16(x * (1 / max(norm, 1e-6))) to shared memory and
 *      multiplies it by its w1 tile with mma.sync m16n8k16 (bf16 in, fp32
 *      accumulators; operands by ldmatrix, w1 transposed by it);
 *   5. sends each fp32 partial hidden sum to the CTA that finishes its
 *      column (rank s owns columns [s * CB / KS, (s + 1) * CB / KS) of the
 *      tile), which adds the KS partials in rank order, adds b1, applies
 *      ReLU, rounds to bf16 (the unfused path's rounding points) and
 *      multiplies by its rows of w2: partial logits over its columns;
 *   6. sends those to the CTA that finishes their row (rank s owns rows
 *      [s * RB / KS, (s + 1) * RB / KS)), which adds them in rank order;
 *      with one column block that is the logit: + b2, sigmoid, out. With
 *      several, each cluster writes its partial logits to scratch, and the
 *      last cluster of a row block to arrive (an arrival counter per row
 *      block and rank, behind a GPU-scope fence) adds the column blocks'
 *      partials in index order, writes out and sets the counter back to 0.
 *
 * The exchanges inside a cluster are pushed into the receiver's shared
 * memory with st.async and waited for on an mbarrier (push_f32): a first
 * version pulled through distributed shared memory after cluster barriers,
 * whose release compiles to a GPU-scope fence (MEMBAR.ALL.GPU), and its
 * warps stalled there. The per-warp instruction count is what the rest of
 * the time follows (8 warps an SM: latency-bound), hence the fixed
 * thread-to-row mapping of x and no runtime divisions (docs/cuda.md, "The
 * fused ranking head").
 *
 * Every sum has a fixed order, so the results are bit-identical run to run.
 * When M is more than the grid's row blocks, CTAs loop over row blocks,
 * keeping their w1 tile; CTAs past M exit after the wait.
 */
#include "kernels/head_fused_cuda.h"
#include "kernels/pdl.cuh"
#include "kernels/sm90.cuh"
#include "kernels/sm_count_cuda.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

using sm90::smem_u32;

constexpr int NTHREADS = 256; /* 8 warps: 2 (rows) x 4 (columns) over the MMA tile */
constexpr int NT_MAX = 16;    /* the largest n_tasks8 */
constexpr int KT_MAX = 128;   /* the largest K slice a CTA holds (in8 1024 over 8 CTAs) */
constexpr int MAX_SMEM = 227 * 1024;

struct Args {
    head_fused_params p;
    int kt;       /* the K slice's rows in shared memory: a power of two, 32..KT_MAX */
    int ks;       /* the K slice's rows of w1 (a multiple of 8, <= kt); rank s starts at s * ks */
    int rows_cap; /* the scratch's rows per column block */
    int part_off; /* where the partial logits start in scratch, in floats (the counters come first) */
    unsigned long long *trace; /* or NULL: head_fused_set_trace */

    /* Column block cb's partial logit t of candidate `row`, in floats from scratch's start. */
    __device__ size_t scratch_part(int cb, int row, int t) const
    {
        return (size_t)part_off + ((size_t)cb * rows_cap + row) * p.n_tasks8 + t;
    }
};

/* Shared-memory layout (byte offsets), the same on host and device. The
 * bf16 tiles have rows padded by 16 bytes so that ldmatrix's 8 rows fall in
 * 8 different bank groups. The r* buffers receive the cluster's exchanges,
 * one slot per sending rank. */
struct Plan {
    int w, a, rh, hid, w2, b1, rl, rss, row, bar, flag, bytes;
};
__host__ __device__ inline int carve(int *o, int bytes)
{
    const int at = *o;
    *o += (bytes + 15) & ~15;
    return at;
}
__host__ __device__ inline Plan plan(int rb, int cb, int ks_ctas, int kt)
{
    const int cr = cb / ks_ctas;
    Plan p;
    int o = 0;
    p.w = carve(&o, kt * (cb + 8) * 2);          /* w1 tile [kt][cb + 8] bf16 */
    p.a = carve(&o, rb * (kt + 8) * 2);          /* y tile [rb][kt + 8] bf16 */
    p.rh = carve(&o, rb * cb * 4);               /* partial hidden sums [ks][rb][cr] fp32 */
    p.hid = carve(&o, rb * cr * 4);              /* finished hidden values [rb][cr] */
    p.w2 = carve(&o, cr * NT_MAX * 4);           /* w2 rows [cr][16] */
    p.b1 = carve(&o, cr * 4);                    /* b1 [cr] */
    p.rl = carve(&o, rb * NT_MAX * 4);           /* partial logits [ks][rb / ks][16] */
    p.rss = carve(&o, ks_ctas * rb * 4);         /* partial sums of squares [ks][rb] */
    p.row = carve(&o, rb * 4);                   /* x's row of each candidate, -1 past M */
    p.bar = carve(&o, 3 * 8);                    /* mbarriers: sums of squares, hidden, logits */
    p.flag = carve(&o, 4);
    p.bytes = o;
    return p;
}

__device__ __forceinline__ float bf2f(bf16_t b) { return __uint_as_float((uint32_t)b << 16); }
__device__ __forceinline__ float round_bf16(float f) { return __bfloat162float(__float2bfloat16_rn(f)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
/* d += a (16 x 16, row-major) * b (16 x 8, column-major), fp32 accumulators. */
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* The cluster's exchanges are pushed, not pulled: a sender stores into the
 * receiver's shared memory with st.async, which counts the bytes on the
 * receiver's mbarrier, and the receiver waits on that barrier
 * (exchange_wait). Reading a peer's shared memory after a cluster barrier
 * costs a GPU-scope memory fence per barrier (barrier.cluster's release);
 * this costs none. dst and bar are this CTA's shared-memory offsets, the
 * same in every CTA of the cluster. With KS = 1 there is no cluster: plain
 * shared-memory stores, and a CTA barrier for the wait. */
/* The address of shared-memory offset a in the cluster's CTA `rank`: a
 * pure function (not volatile), so repeated ones are computed once. */
__device__ __forceinline__ uint32_t cluster_map(uint32_t a, int rank)
{
    uint32_t d;
    asm("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(d) : "r"(a), "r"(rank));
    return d;
}
template <int KS> __device__ __forceinline__ void push_f32(uint32_t dst, uint32_t bar, int rank, float v)
{
    if (KS == 1)
        asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(dst), "f"(v) : "memory");
    else
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::"r"(
                         cluster_map(dst, rank)),
                     "r"(__float_as_uint(v)), "r"(cluster_map(bar, rank))
                     : "memory");
}
template <int KS>
__device__ __forceinline__ void push_f32x2(uint32_t dst, uint32_t bar, int rank, float v0, float v1)
{
    if (KS == 1)
        asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(dst), "f"(v0), "f"(v1) : "memory");
    else
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.b32 [%0], {%1, %2}, [%3];\n" ::"r"(
                         cluster_map(dst, rank)),
                     "r"(__float_as_uint(v0)), "r"(__float_as_uint(v1)), "r"(cluster_map(bar, rank))
                     : "memory");
}
template <int KS> __device__ __forceinline__ void exchange_wait(uint32_t bar, uint32_t parity)
{
    if (KS == 1)
        __syncthreads();
    else
        sm90::mbar_wait(bar, parity);
}
/* The cluster barrier without a memory fence (every CTA has started; with
 * fence_mbar_init before it, the mbarriers are initialised). */
__device__ __forceinline__ void cluster_arrive_relaxed()
{
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }
/* Release and acquire at GPU scope, for the partial logits handed between
 * clusters through global memory (one thread, after or before a CTA barrier). */
__device__ __forceinline__ void fence_gpu() { asm volatile("fence.acq_rel.gpu;\n" ::: "memory"); }

/* Four elements of x's row from global memory, as floats; those at and past
 * `valid` are zeros (valid >= 4: an aligned vector load). */
__device__ __forceinline__ void load4(const float *p, int valid, float (&v)[4])
{
    if (valid >= 4) {
        const float4 q = *reinterpret_cast<const float4 *>(p);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++)
            v[e] = e < valid ? p[e] : 0.0f;
    }
}
__device__ __forceinline__ void load4(const bf16_t *p, int valid, float (&v)[4])
{
    if (valid >= 4) {
        const uint2 q = *reinterpret_cast<const uint2 *>(p);
        v[0] = __uint_as_float(q.x << 16), v[1] = __uint_as_float(q.x & 0xffff0000u);
        v[2] = __uint_as_float(q.y << 16), v[3] = __uint_as_float(q.y & 0xffff0000u);
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++)
            v[e] = e < valid ? bf2f(p[e]) : 0.0f;
    }
}

/* Profiling stamp (head_fused_set_trace): thread 0 of each CTA, first row block. */
__device__ __forceinline__ void trace_stamp(const Args &a, bool first, int point)
{
    if (a.trace && first && threadIdx.x == 0)
        a.trace[(blockIdx.y * gridDim.x + blockIdx.x) * HEAD_FUSED_TRACE_POINTS + point] = sm90::global_timer_ns();
}

__device__ __forceinline__ float activate(float z, int sigmoid) { return sigmoid ? 1.0f / (1.0f + expf(-z)) : z; }

template <int RB, int CB, int KS, typename X>
__global__ void __launch_bounds__(NTHREADS, 2) head_fused_kernel(const Args a)
{
    constexpr int CR = CB / KS;                /* hidden columns a CTA finishes */
    constexpr int RS = RB / KS;                /* rows of logits a CTA finishes */
    constexpr int WLD = CB + 8;                /* w1 tile row stride (bf16) */
    constexpr int MT = RB / 32, NTL = CB / 32; /* a warp's m16 and n8 tiles */
    constexpr int TPR = NTHREADS / RB;         /* threads a row of x */
    constexpr int MAXQ = KT_MAX / 4 / TPR;     /* x quads a thread holds, at most */
    static_assert(CR % 4 == 0 && RS >= 1 && RB % 32 == 0 && CB % 32 == 0, "a tile the kernel has");

    const head_fused_params &p = a.p;
    const int kt = a.kt, alda = kt + 8;
    extern __shared__ __align__(16) unsigned char smem[];
    const Plan pl = plan(RB, CB, KS, kt);
    bf16_t *sW = reinterpret_cast<bf16_t *>(smem + pl.w);
    bf16_t *sA = reinterpret_cast<bf16_t *>(smem + pl.a);
    const float *rH = reinterpret_cast<const float *>(smem + pl.rh);
    float *sHid = reinterpret_cast<float *>(smem + pl.hid);
    float *sW2 = reinterpret_cast<float *>(smem + pl.w2);
    float *sB1 = reinterpret_cast<float *>(smem + pl.b1);
    const float *rL = reinterpret_cast<const float *>(smem + pl.rl);
    const float *rSS = reinterpret_cast<const float *>(smem + pl.rss);
    int *sRow = reinterpret_cast<int *>(smem + pl.row);
    int *sFlag = reinterpret_cast<int *>(smem + pl.flag);
    const uint32_t smem0 = smem_u32(smem);
    const uint32_t bar_ss = smem0 + pl.bar, bar_h = bar_ss + 8, bar_l = bar_ss + 16;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int rank = KS > 1 ? (int)sm90::cluster_ctarank() : 0;
    const int cblk = blockIdx.x / KS, n_cblk = gridDim.x / KS, c0 = cblk * CB;
    const int h8 = p.h8, nt8 = p.n_tasks8, lnt = nt8 == 16 ? 4 : 3; /* n_tasks8 = 1 << lnt */
    const int k0 = rank * a.ks, kend = min(k0 + a.ks, p.in8);
    const int cr0 = c0 + rank * CR; /* the first hidden column this CTA finishes */
    trace_stamp(a, true, HEAD_FUSED_TRACE_START);

    /* 1. The weights: w1 [k0, kend) x [c0, c0 + CB) by cp.async (zeros
     * elsewhere in the kt x CB tile), this CTA's rows of w2 and b1; the
     * exchanges' barriers, each expecting the first row block's bytes. */
    constexpr int WCH = CB / 8, WSTEP = NTHREADS / WCH; /* 16-byte chunks a row; rows a pass */
    {
        const int ch = tid % WCH, cg = c0 + ch * 8;
        for (int k = tid / WCH; k < kt; k += WSTEP) {
            const int kg = k0 + k;
            const bool ok = kg < kend && cg < h8;
            sm90::cp_async16(smem_u32(sW + k * WLD + ch * 8), ok ? p.w1 + (size_t)kg * h8 + cg : p.w1, ok);
        }
    }
    sm90::cp_async_commit();
    for (int i = tid; i < CR * NT_MAX; i += NTHREADS) {
        const int c = i / NT_MAX, t = i % NT_MAX, cg = cr0 + c;
        sW2[i] = cg < h8 && t < nt8 ? bf2f(p.w2[(size_t)cg * nt8 + t]) : 0.0f;
    }
    for (int i = tid; i < CR; i += NTHREADS)
        sB1[i] = cr0 + i < h8 ? bf2f(p.b1[cr0 + i]) : 0.0f;
    const uint32_t bytes_ss = KS * RB * 4, bytes_h = RB * CB * 4, bytes_l = (uint32_t)(RB * nt8 * 4);
    if (KS > 1) {
        if (tid == 0) {
            sm90::mbar_init(bar_ss, 1), sm90::mbar_init(bar_h, 1), sm90::mbar_init(bar_l, 1);
            sm90::fence_mbar_init();
            sm90::mbar_arrive_expect_tx(bar_ss, bytes_ss);
            sm90::mbar_arrive_expect_tx(bar_h, bytes_h);
            sm90::mbar_arrive_expect_tx(bar_l, bytes_l);
        }
        cluster_arrive_relaxed(); /* no one pushes into a CTA before its barriers exist */
        cluster_wait();
    }

    pdl_wait();
    pdl_trigger();
    int M = *p.n_rows;
    M = M < 0 ? 0 : M > p.max_rows ? p.max_rows : M;
    const int n_rb = (M + RB - 1) / RB;
    const X *x = static_cast<const X *>(p.x);
    const int width_end = min(kend, p.width); /* x's columns this CTA reads end here */
    trace_stamp(a, true, HEAD_FUSED_TRACE_WAITED);

    uint32_t parity = 0;
    for (int rb = blockIdx.y; rb < n_rb; rb += gridDim.y, parity ^= 1) {
        const int row0 = rb * RB;
        const bool first = rb == (int)blockIdx.y;
        if (KS > 1 && !first && tid == 0) { /* the barriers' next phase (the last completed for all threads) */
            sm90::mbar_arrive_expect_tx(bar_ss, bytes_ss);
            sm90::mbar_arrive_expect_tx(bar_h, bytes_h);
            sm90::mbar_arrive_expect_tx(bar_l, bytes_l);
        }
        /* 2. Row indices, then the x tile [RB, kt] into registers: TPR
         * consecutive threads a row (row tid / TPR), thread t = tid % TPR
         * holding quads j = 0, 1, ... at columns k0 + 4 (j * TPR + t) .. + 3
         * (the row's threads read neighbouring 16-byte pieces); zeros past
         * width, past the slice and for rows past M. */
        if (tid < RB)
            sRow[tid] = row0 + tid < M ? p.rows[row0 + tid] : -1;
        __syncthreads();
        const int xrow = tid / TPR, xpart = tid % TPR, nqt = kt / (4 * TPR), idx = sRow[xrow];
        const int cvalid = idx >= 0 ? width_end - (k0 + 4 * xpart) : 0; /* columns left at quad 0 */
        const X *xr = x + (cvalid > 0 ? (size_t)idx * p.ldx + k0 + 4 * xpart : 0);
        float xv[MAXQ][4];
#pragma unroll
        for (int j = 0; j < MAXQ; j++)
            if (j < nqt)
                load4(xr + j * TPR * 4, cvalid - j * TPR * 4, xv[j]);

        /* 3. The row's sum of squares: this thread's quads, then the TPR
         * threads' by shuffles; it goes to every CTA of the cluster (each
         * of the row's threads sends some), and every thread then adds the
         * KS of them in rank order, so all CTAs get the same norm. */
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < MAXQ; j++)
            if (j < nqt)
                ss += xv[j][0] * xv[j][0] + xv[j][1] * xv[j][1] + xv[j][2] * xv[j][2] + xv[j][3] * xv[j][3];
#pragma unroll
        for (int o = 1; o < TPR; o <<= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, o);
        trace_stamp(a, first, HEAD_FUSED_TRACE_X);
        for (int s = xpart; s < KS; s += TPR)
            push_f32<KS>(smem0 + pl.rss + (rank * RB + xrow) * 4, bar_ss, s, ss);
        exchange_wait<KS>(bar_ss, parity);
        ss = 0.0f;
#pragma unroll
        for (int s = 0; s < KS; s++)
            ss += rSS[s * RB + xrow];
        const float inv = 1.0f / fmaxf(sqrtf(ss), 1e-6f);
        trace_stamp(a, first, HEAD_FUSED_TRACE_NORM);

        /* 4. y = bf16(x * inv), then the products with the w1 tile. */
        bf16_t *yr = sA + xrow * alda + 4 * xpart;
#pragma unroll
        for (int j = 0; j < MAXQ; j++) {
            if (j < nqt) {
                uint2 y;
                y.x = sm90::pack_bf16(xv[j][0] * inv, xv[j][1] * inv);
                y.y = sm90::pack_bf16(xv[j][2] * inv, xv[j][3] * inv);
                *reinterpret_cast<uint2 *>(yr + j * TPR * 4) = y;
            }
        }
        sm90::cp_async_wait<0>(); /* the w1 tile (long since landed) */
        __syncthreads();
        const int wr0 = (warp >> 2) * (RB / 2), wc0 = (warp & 3) * (CB / 4);
        float acc[MT][NTL][4];
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int n = 0; n < NTL; n++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    acc[m][n][e] = 0.0f;
        for (int kk = 0; kk < kt; kk += 16) {
            uint32_t af[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++)
                ldsm_x4(af[m], smem_u32(sA + (wr0 + m * 16 + (lane & 15)) * alda + kk + (lane >> 4) * 8));
#pragma unroll
            for (int n = 0; n < NTL; n += 2) {
                uint32_t bf[4]; /* k 0-7 and 8-15 of n-tile n, then of n-tile n + 1 */
                ldsm_x4_trans(bf, smem_u32(sW + (kk + (lane & 15)) * WLD + wc0 + n * 8 + (lane >> 4) * 8));
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    mma_bf16(acc[m][n], af[m], bf[0], bf[1]);
                    mma_bf16(acc[m][n + 1], af[m], bf[2], bf[3]);
                }
            }
        }
        trace_stamp(a, first, HEAD_FUSED_TRACE_MMA);

        /* 5. Each partial hidden sum goes to the CTA that finishes its
         * column (rank c / CR, slot [this rank][row][c % CR]); then this
         * CTA's CR columns: the KS partials in rank order, + b1, ReLU, bf16,
         * and its partial logits, each pushed to the CTA that finishes its
         * row (rank r / RS, slot [this rank][r % RS][t]). */
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int n = 0; n < NTL; n++) {
                const int r = wr0 + m * 16 + (lane >> 2), c = wc0 + n * 8 + (lane & 3) * 2;
                const uint32_t dst = smem0 + pl.rh + ((rank * RB + r) * CR + c % CR) * 4;
                push_f32x2<KS>(dst, bar_h, c / CR, acc[m][n][0], acc[m][n][1]);
                push_f32x2<KS>(dst + 8 * CR * 4, bar_h, c / CR, acc[m][n][2], acc[m][n][3]);
            }
        exchange_wait<KS>(bar_h, parity);
        trace_stamp(a, first, HEAD_FUSED_TRACE_HIDDEN);
        for (int i = tid; i < RB * (CR / 4); i += NTHREADS) {
            const int r = i / (CR / 4), c = (i % (CR / 4)) * 4;
            float4 v = *reinterpret_cast<const float4 *>(rH + r * CR + c);
#pragma unroll
            for (int s = 1; s < KS; s++) {
                const float4 w = *reinterpret_cast<const float4 *>(rH + (s * RB + r) * CR + c);
                v.x += w.x, v.y += w.y, v.z += w.z, v.w += w.w;
            }
            sHid[r * CR + c + 0] = round_bf16(fmaxf(v.x + sB1[c + 0], 0.0f));
            sHid[r * CR + c + 1] = round_bf16(fmaxf(v.y + sB1[c + 1], 0.0f));
            sHid[r * CR + c + 2] = round_bf16(fmaxf(v.z + sB1[c + 2], 0.0f));
            sHid[r * CR + c + 3] = round_bf16(fmaxf(v.w + sB1[c + 3], 0.0f));
        }
        __syncthreads();
        for (int i = tid; i < RB * nt8; i += NTHREADS) {
            const int r = i >> lnt, t = i & (nt8 - 1);
            float z = 0.0f;
#pragma unroll
            for (int c = 0; c < CR; c += 4) {
                const float4 hv = *reinterpret_cast<const float4 *>(sHid + r * CR + c);
                z = fmaf(hv.x, sW2[(c + 0) * NT_MAX + t], z);
                z = fmaf(hv.y, sW2[(c + 1) * NT_MAX + t], z);
                z = fmaf(hv.z, sW2[(c + 2) * NT_MAX + t], z);
                z = fmaf(hv.w, sW2[(c + 3) * NT_MAX + t], z);
            }
            push_f32<KS>(smem0 + pl.rl + ((rank * RS + r % RS) * nt8 + t) * 4, bar_l, r / RS, z);
        }
        exchange_wait<KS>(bar_l, parity);
        trace_stamp(a, first, HEAD_FUSED_TRACE_LOGITS);

        /* 6. This CTA's RS rows of logits: the cluster's partials in rank
         * order; then the logit, or this column block's share of it. */
        for (int i = tid; i < RS * nt8; i += NTHREADS) {
            const int rr = i >> lnt, t = i & (nt8 - 1), row = row0 + rank * RS + rr;
            float z = 0.0f;
#pragma unroll
            for (int s = 0; s < KS; s++)
                z += rL[(s * RS + rr) * nt8 + t];
            if (n_cblk == 1) {
                if (row < M && t < p.n_tasks)
                    p.out[(size_t)row * p.n_tasks + t] = activate(z + p.b2[t], p.sigmoid);
            } else {
                __stcg(reinterpret_cast<float *>(p.scratch) + a.scratch_part(cblk, row, t), z);
            }
        }
        if (n_cblk > 1) {
            unsigned *count = reinterpret_cast<unsigned *>(p.scratch) + rb * 8 + rank;
            __syncthreads();
            if (tid == 0) {
                fence_gpu(); /* the CTA's partials (ordered before by the CTA barrier) before the count */
                const unsigned before = atomicAdd(count, 1u);
                const int last = before == (unsigned)n_cblk - 1;
                if (last) {
                    atomicExch(count, 0u);
                    fence_gpu(); /* the other clusters' partials after their counts */
                }
                *sFlag = last;
            }
            __syncthreads();
            if (*sFlag) {
                const float *part = reinterpret_cast<const float *>(p.scratch);
                for (int i = tid; i < RS * nt8; i += NTHREADS) {
                    const int row = row0 + rank * RS + (i >> lnt), t = i & (nt8 - 1);
                    if (row >= M || t >= p.n_tasks)
                        continue;
                    float z = 0.0f;
                    for (int cb = 0; cb < n_cblk; cb++)
                        z += __ldcg(part + a.scratch_part(cb, row, t));
                    p.out[(size_t)row * p.n_tasks + t] = activate(z + p.b2[t], p.sigmoid);
                }
            }
        }
        trace_stamp(a, first, HEAD_FUSED_TRACE_END);
    }
    sm90::cp_async_wait<0>(); /* a CTA past M leaves with no copy in flight */
    if (KS > 1) { /* every CTA has received all it waits for: no push into a CTA that has left */
        cluster_arrive_relaxed();
        cluster_wait();
    }
}

/* ---- host side ------------------------------------------------------------ */

struct Tile {
    int rb, cb, ks, f32;
    void (*kernel)(const Args);
};
#define TILE(RB, CB, KS) \
    {RB, CB, KS, 1, head_fused_kernel<RB, CB, KS, float>}, {RB, CB, KS, 0, head_fused_kernel<RB, CB, KS, bf16_t>}
const Tile kTiles[] = {TILE(32, 64, 1),  TILE(32, 64, 2),  TILE(32, 64, 4),  TILE(32, 64, 8),
                       TILE(32, 128, 1), TILE(32, 128, 2), TILE(32, 128, 4), TILE(32, 128, 8),
                       TILE(64, 64, 1),  TILE(64, 64, 2),  TILE(64, 64, 4),  TILE(64, 64, 8),
                       TILE(64, 128, 1), TILE(64, 128, 2), TILE(64, 128, 4), TILE(64, 128, 8)};
#undef TILE

int g_forced_rb = 0, g_forced_cb = 0, g_forced_ks = 0;
int g_sms = 0; /* the device's SM count, set by prepare */
unsigned long long *g_trace = NULL;

const Tile *find_tile(int rb, int cb, int ks, int f32)
{
    for (const Tile &t : kTiles)
        if (t.rb == rb && t.cb == cb && t.ks == ks && t.f32 == f32)
            return &t;
    return NULL;
}

/* The K slice of one of ks CTAs: its rows of w1 (a multiple of 8) and the
 * power of two >= 32 that holds them in shared memory. */
void k_slice(int in8, int ks, int *rows, int *kt)
{
    const int r = ((in8 + ks - 1) / ks + 7) / 8 * 8;
    int t = 32;
    while (t < r)
        t *= 2;
    *rows = r, *kt = t;
}

/* Unless forced: K slices of 64-128 rows (clusters of up to 8), 64-row
 * blocks once there are more than 128 rows to cover, and 128-column blocks
 * when that still gives ~100 CTAs (fewer, larger tiles load fewer bytes:
 * each row block reads all of w1, each column block all of x), else 64. */
void choose(int max_rows, int in8, int h8, int *rb, int *cb, int *ks)
{
    int r = g_forced_rb, c = g_forced_cb, k = g_forced_ks, rows = 0, kt = 0;
    if (r)
        k_slice(in8, k, &rows, &kt);
    if (!r || kt > KT_MAX) {
        k = in8 >= 512 ? 8 : in8 >= 256 ? 4 : in8 >= 128 ? 2 : 1;
        r = max_rows > 128 ? 64 : 32;
        const long ctas = (long)((max_rows + r - 1) / r) * ((h8 + 127) / 128) * k;
        c = ctas >= 96 ? 128 : 64;
    }
    *rb = r, *cb = c, *ks = k;
}

} /* namespace */

extern "C" int head_fused_supported(int in8, int h8, int n_tasks8)
{
    return in8 >= 8 && in8 <= 8 * KT_MAX && in8 % 8 == 0 && h8 >= 8 && h8 <= 16384 && h8 % 8 == 0 &&
           (n_tasks8 == 8 || n_tasks8 == NT_MAX);
}

/* The counters (one per 32-row block and rank: the most any tile uses),
 * then the partial logits [h8 / 64 column blocks][rows_cap][n_tasks8]. */
static size_t counter_bytes(int max_rows) { return ((size_t)(max_rows + 31) / 32 * 8 * 4 + 255) / 256 * 256; }
static int rows_cap(int max_rows) { return (max_rows + 63) / 64 * 64; }

extern "C" int head_fused_counters(int max_rows)
{
    return max_rows < 1 || max_rows > (1 << 24) ? 0 : (max_rows + 31) / 32 * 8;
}

extern "C" size_t head_fused_scratch_bytes(int max_rows, int h8, int n_tasks8)
{
    if (max_rows < 1 || max_rows > (1 << 24) || !head_fused_supported(8, h8, n_tasks8))
        return 0;
    return counter_bytes(max_rows) + (size_t)(h8 + 63) / 64 * rows_cap(max_rows) * n_tasks8 * 4;
}

/* The kernels' shared-memory limit is per function, set once, before the
 * first launch and outside any stream capture; with it the SM count, which
 * sizes the grid. */
extern "C" int head_fused_prepare(void)
{
    static const int rc = [] {
        for (const Tile &t : kTiles) {
            const int bytes = plan(t.rb, t.cb, t.ks, KT_MAX).bytes;
            if (bytes > MAX_SMEM)
                return (int)cudaErrorInvalidConfiguration;
            cudaError_t e = cudaFuncSetAttribute(t.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
            if (e != cudaSuccess)
                return (int)e;
        }
        g_sms = cuda_sm_count();
        return g_sms > 0 ? 0 : (int)cudaErrorNoDevice;
    }();
    return rc;
}

extern "C" void head_fused_tile(int max_rows, int in8, int h8, int *rb, int *cb, int *ks)
{
    int r, c, k;
    choose(max_rows, in8, h8, &r, &c, &k);
    if (rb)
        *rb = r;
    if (cb)
        *cb = c;
    if (ks)
        *ks = k;
}

extern "C" void head_fused_force_tile(int rb, int cb, int ks)
{
    const bool have = find_tile(rb, cb, ks, 1) != NULL;
    g_forced_rb = have ? rb : 0, g_forced_cb = have ? cb : 0, g_forced_ks = have ? ks : 0;
}

extern "C" void head_fused_set_trace(unsigned long long *trace) { g_trace = trace; }

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

extern "C" int head_fused_cuda(const head_fused_params *p, void *stream)
{
    if (!p || !head_fused_supported(p->in8, p->h8, p->n_tasks8) || p->width < 1 || p->width > p->in8 ||
        p->n_tasks < 1 || p->n_tasks > p->n_tasks8 || p->max_rows < 0 || p->max_rows > (1 << 24))
        return (int)cudaErrorInvalidValue;
    if (!p->x || !p->rows || !p->n_rows || !p->w1 || !p->b1 || !p->w2 || !p->b2 || !p->out || !p->scratch)
        return (int)cudaErrorInvalidValue;
    if (!aligned16(p->x) || !aligned16(p->w1) || !aligned16(p->scratch) || p->ldx < p->width ||
        p->ldx % (p->x_f32 ? 4 : 8))
        return (int)cudaErrorInvalidValue;
    if (p->max_rows == 0)
        return 0;
    int rc = head_fused_prepare();
    if (rc)
        return rc;
    int rb, cb, ks, slice, kt;
    choose(p->max_rows, p->in8, p->h8, &rb, &cb, &ks);
    k_slice(p->in8, ks, &slice, &kt);
    const Tile *t = find_tile(rb, cb, ks, p->x_f32 ? 1 : 0);
    if (!t || kt > KT_MAX)
        return (int)cudaErrorInvalidValue;
    Args a;
    a.p = *p;
    a.kt = kt, a.ks = slice, a.rows_cap = rows_cap(p->max_rows);
    a.part_off = (int)(counter_bytes(p->max_rows) / 4);
    a.trace = g_trace;
    /* Row blocks beyond two CTAs an SM are taken by the CTAs' loop. */
    const int n_cblk = (p->h8 + cb - 1) / cb, n_rb = (p->max_rows + rb - 1) / rb;
    int gy = 2 * g_sms / (n_cblk * ks);
    gy = gy < 1 ? 1 : gy > n_rb ? n_rb : gy;
    const dim3 grid((unsigned)(n_cblk * ks), (unsigned)gy);
    const int smem = plan(rb, cb, ks, kt).bytes;
    cudaStream_t s = (cudaStream_t)stream;
    if (ks == 1)
        return (int)pdl_launch(t->kernel, grid, dim3(NTHREADS), (size_t)smem, s, a);
    const cudaLaunchAttribute at = cluster_attribute((unsigned)ks, 1, 1);
    return (int)pdl_launch_attrs(t->kernel, grid, dim3(NTHREADS), (size_t)smem, s, &at, 1, a);
}
