/* gemm_fused.cu - C = act(A @ W + bias) with the KV append, on Hopper (see
 * gemm_fused_cuda.h for the contract).
 *
 * Persistent and warp-specialised: one CTA per SM walks the BM x BN tiles
 * of C (128 x 128, 128 x 256, or 96 x 128 computed transposed: Cfg). One
 * thread of the loading warp issues TMA copies of 64-wide K slices of A
 * (BM x 64, K-major) and W (64 x BN, MN-major) into a ring of stages that
 * runs on across tiles. In clusters of two CTAs (CL = 2, 128-row tiles, when
 * forced: it measured no faster) the pair takes two row blocks of the same
 * columns: each CTA loads its own A and half of W's boxes, multicast into
 * both, so W's share of the L2 traffic halves (a stage is free again once
 * the computing warps of both CTAs are done with it). Two computing
 * warpgroups, each 64 rows (64 columns when transposed), run wgmma reading
 * both operands from shared memory (W, MN-major, transposed by the
 * instruction), one slice's products in flight while the previous slice's
 * buffer is released. The epilogue adds the bias and applies SiLU in
 * registers, stages the tile as bf16 in the loads' swizzled layout, and one
 * thread stores it with TMA; rows with a page slot also go to the pool in
 * 16-byte pieces.
 *
 * Rows past M and columns past K or N load as zeros (TMA's fill outside the
 * tensor) and are not stored (TMA stores clip to the tensor).
 */
#include "kernels/gemm_fused_cuda.h"
#include "kernels/pdl.cuh"
#include "kernels/sm90.cuh"
#include "kernels/sm_count_cuda.h"
#include "kernels/tma.cuh"

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

namespace {

using namespace sm90;

constexpr int BK = 64;

/* A tile is BM rows of C by BN columns, computed by one warpgroup per 64
 * rows, plus a loading warp. T (transposed products) computes the tile as
 * its transpose, W^T A^T: each warpgroup takes 64 of the BN = 128 columns as
 * wgmma's M and all BM = 96 rows as its N (wgmma's M is 64 per warpgroup,
 * its N any multiple of 8). Small row counts want small tiles: 384 rows (a
 * batch-1 forward) are 128 tiles of 96 x 128 against 96 of 128 x 128. */
template <int BM_, int BN, bool T> struct Cfg {
    static constexpr int BM = BM_;
    static constexpr int WG = T ? BN / 64 : BM / 64;  /* computing warpgroups */
    static constexpr int COMPUTE = WG * 128, NTHREADS = COMPUTE + 32;
    static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BK * BN * 2, STAGE = A_BYTES + B_BYTES;
    /* The output leaves in parts of at most 128 columns through a staging
     * buffer of that size, which leaves room for 4 stages at BN 256. */
    static constexpr int OUT_COLS = BN < 128 ? BN : 128, PARTS = BN / OUT_COLS;
    static constexpr int OUT_BYTES = BM * OUT_COLS * 2;
    /* 6 at 128 x 128, 4 at 128 x 256, 7 at 96 x 128 */
    static constexpr int STAGES = (224 * 1024 - OUT_BYTES) / STAGE;
    static constexpr int SMEM = STAGES * STAGE + OUT_BYTES + 1024; /* + the 1024-byte alignment */
    static constexpr int ACC = T ? BM / 2 : BN / 2;                /* accumulators a thread */
    static_assert(T ? BM == 96 && BN == 128 : BM % 64 == 0 && BN % 64 == 0, "a tile shape the kernel has");
};

__device__ __forceinline__ void wgmma_m64n128k16_ss_tb(float (&d)[64], uint64_t da, uint64_t db, int scale_d)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SM90_ACC_REGS_64 "}, "
        "%64, %65, p, 1, 1, 0, 1;\n}\n"
        : SM90_ACC_64(d)
        : "l"(da), "l"(db), "r"(scale_d));
}

__device__ __forceinline__ void wgmma_m64n256k16_ss_tb(float (&d)[128], uint64_t da, uint64_t db, int scale_d)
{
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" SM90_ACC_REGS_128 "}, "
        "%128, %129, p, 1, 1, 0, 1;\n}\n"
        : SM90_ACC_128(d)
        : "l"(da), "l"(db), "r"(scale_d));
}

/* W^T A^T: A operand W's 64 x 16 box, MN-major (transposed by the
 * instruction); B operand 96 rows of A, K-major. */
__device__ __forceinline__ void wgmma_m64n96k16_ss_ta(float (&d)[48], uint64_t da, uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {" SM90_ACC_REGS_48 "}, "
                 "%48, %49, 1, 1, 1, 1, 0;\n"
                 : SM90_ACC_48(d)
                 : "l"(da), "l"(db));
}

template <int BN> struct Mma;
template <> struct Mma<128> {
    static __device__ __forceinline__ void run(float (&d)[64], uint64_t da, uint64_t db)
    {
        wgmma_m64n128k16_ss_tb(d, da, db, 1);
    }
};
template <> struct Mma<256> {
    static __device__ __forceinline__ void run(float (&d)[128], uint64_t da, uint64_t db)
    {
        wgmma_m64n256k16_ss_tb(d, da, db, 1);
    }
};

struct Args {
    CUtensorMap ta; /* A [M, K] in BM x 64 boxes */
    CUtensorMap tw; /* W [K, N] in 64 x 64 boxes */
    CUtensorMap tc; /* C [M, N] in BM x 64 boxes (stores) */
    int M, N, K;
    int tiles_n, units; /* tiles along N; units of work: CL row blocks of one column block */
    gemm_fused_epilogue epi;
    bias_silu_pages pg; /* valid when epi.pages */
    unsigned long long *trace; /* or NULL: gemm_fused_set_trace */
};

/* Profiling stamp (gemm_fused_set_trace): one thread per CTA and point. */
__device__ __forceinline__ void trace_stamp(const Args &a, int point)
{
    if (a.trace)
        a.trace[blockIdx.x * GEMM_FUSED_TRACE_POINTS + point] = global_timer_ns();
}

/* The computing warpgroups' part of gemm_fused_kernel: every unit's main
 * loop and epilogue (threads 0-255). */
template <int BM, int BN, int CL, bool T>
__device__ __forceinline__ void gemm_fused_compute(const Args &a, uint32_t ring, uint32_t full0, uint32_t empty0,
                                                   int nk, int cid, int ncl, int rank)
{
    typedef Cfg<BM, BN, T> C;
    constexpr int S = C::STAGES;
    auto sa = [&](int s) { return ring + (uint32_t)(s * C::STAGE); };
    auto sb = [&](int s) { return ring + (uint32_t)(s * C::STAGE + C::A_BYTES); };
    const uint32_t out = ring + S * C::STAGE;
    const int cw = threadIdx.x / 128, ww = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    /* A warp's release of a stage: lane r arrives on CTA r's barrier (both
     * CTAs' loads write into this CTA's buffer). */
    auto release = [&](uint32_t bar) {
        if (CL == 1) {
            if (lane == 0)
                mbar_arrive(bar);
        } else if (lane < CL) {
            mbar_arrive_remote(bar, lane);
        }
    };
    const int g = lane / 4, t4 = lane % 4, lr = 64 * cw + 16 * ww + g;
    const gemm_fused_epilogue &e = a.epi;
    const int kv_lo = e.kv_col, kv_mid = kv_lo + a.pg.vw, kv_hi = kv_mid + a.pg.kw;
    int it = 0;
    for (int u = cid; u < a.units; u += ncl) {
        const int m0 = (u / a.tiles_n * CL + rank) * BM, n0 = u % a.tiles_n * BN;
        float acc[C::ACC];
#pragma unroll
        for (int i = 0; i < C::ACC; i++)
            acc[i] = 0.0f;
        for (int kt = 0; kt < nk; kt++, it++) {
            const int s = it % S;
            mbar_wait(full0 + 8u * s, (it / S) & 1); /* TMA and wgmma are both the async proxy: no fence */
            if (it == 0 && threadIdx.x == 0)
                trace_stamp(a, GEMM_FUSED_TRACE_FIRST_SLICE);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                if constexpr (T) { /* this warpgroup's 64 columns of W; all BM rows of A */
                    const uint64_t da = gmma_desc(sb(s) + cw * (BK * 128) + kk * 16 * 128, BK * 128, 1024);
                    wgmma_m64n96k16_ss_ta(acc, da, gmma_desc(sa(s) + kk * 32, 16, 1024));
                } else {
                    const uint64_t da = gmma_desc(sa(s) + cw * 64 * 128 + kk * 32, 16, 1024);
                    const uint64_t db = gmma_desc(sb(s) + kk * 16 * 128, BK * 128, 1024);
                    Mma<BN>::run(acc, da, db);
                }
            }
            wg_commit();
            wg_wait<1>(); /* slice it - 1's products are done: its buffer goes back */
            if (kt > 0)
                release(empty0 + 8u * ((it - 1) % S));
        }
        wg_wait<0>();
        fence_regs(acc);
        release(empty0 + 8u * ((it - 1) % S)); /* the tile's last slice */
        if (u == cid && threadIdx.x == 0)
            trace_stamp(a, GEMM_FUSED_TRACE_LOOP_DONE);

        /* bias and SiLU in registers: acc[4j + 2h + x] is row lr + 8h,
         * column n0 + 8j + 2 t4 + x; with T, column nc + 8h, row m0 + 8j +
         * 2 t4 + x */
        if constexpr (T) {
            const int nc = n0 + 64 * cw + 16 * ww + g;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int c = nc + 8 * h;
                if (c >= e.act_from && c < a.N) {
                    const float b = e.bias ? e.bias[c] : 0.0f;
#pragma unroll
                    for (int j = 0; j < BM / 8; j++)
#pragma unroll
                        for (int x = 0; x < 2; x++) {
                            const float v = acc[4 * j + 2 * h + x] + b;
                            acc[4 * j + 2 * h + x] = e.silu ? silu_fast(v) : v;
                        }
                }
            }
        } else {
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                const int c = n0 + 8 * j + 2 * t4;
                if (c >= e.act_from && c < a.N) {
                    float2 b = e.bias ? *reinterpret_cast<const float2 *>(e.bias + c) : make_float2(0.0f, 0.0f);
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        float v0 = acc[4 * j + 2 * h] + b.x, v1 = acc[4 * j + 2 * h + 1] + b.y;
                        if (e.silu)
                            v0 = silu_fast(v0), v1 = silu_fast(v1);
                        acc[4 * j + 2 * h] = v0, acc[4 * j + 2 * h + 1] = v1;
                    }
                }
            }
        }
        /* Part by part: the staging buffer is free once the last part's
         * store has read it (thread 0 waits) and its appends are done
         * (every thread: the barrier). */
#pragma unroll
        for (int part = 0; part < C::PARTS; part++) {
            constexpr int JP = C::OUT_COLS / 8; /* 8-column groups of a part */
            const int np = n0 + part * C::OUT_COLS;
            if (threadIdx.x == 0)
                bulk_wait_read<0>();
            bar_sync(1, C::COMPUTE);
            if constexpr (T) { /* one part; each value to its row (2 bytes: lanes g, g + 1 share a word) */
#pragma unroll
                for (int j = 0; j < BM / 8; j++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
#pragma unroll
                        for (int x = 0; x < 2; x++)
                            asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(out +
                                                                          tile_off<BM>(8 * j + 2 * t4 + x,
                                                                                       8 * cw + 2 * ww + h) +
                                                                          2 * g),
                                         "h"((unsigned short)(pack_bf16(acc[4 * j + 2 * h + x], 0.0f) & 0xFFFFu))
                                         : "memory");
            } else {
#pragma unroll
                for (int j = 0; j < JP; j++)
#pragma unroll
                    for (int h = 0; h < 2; h++)
                        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(out + tile_off<BM>(lr + 8 * h, j) + 4 * t4),
                                     "r"(pack_bf16(acc[4 * (part * JP + j) + 2 * h],
                                                   acc[4 * (part * JP + j) + 2 * h + 1]))
                                     : "memory");
            }
            fence_proxy_async(); /* the TMA store reads through the async proxy */
            bar_sync(1, C::COMPUTE);
            if (threadIdx.x == 0) {
#pragma unroll
                for (int j = 0; j < C::OUT_COLS / 64; j++)
                    if (np + 64 * j < a.N)
                        tma_store_2d(&a.tc, out + j * (BM * 128), np + 64 * j, m0);
                bulk_commit();
            }
            /* the appends: rows with a page slot, the part's V and K columns */
            if (e.pages && np < kv_hi && np + C::OUT_COLS > kv_lo) {
                const int rows = min(BM, a.M - m0);
                for (int i = threadIdx.x; i < rows * JP; i += C::COMPUTE) {
                    const int r = i / JP, ch = i - r * JP, c = np + 8 * ch;
                    if (c < kv_lo || c >= kv_hi)
                        continue;
                    const int64_t slot = a.pg.row_slot[m0 + r];
                    if (slot < 0)
                        continue;
                    uint4 v;
                    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                                 : "r"(out + tile_off<BM>(r, ch)));
                    const int64_t page = slot / a.pg.P, in_page = slot - page * a.pg.P;
                    bf16_t *base = a.pg.pool + (size_t)page * a.pg.page_elems;
                    bf16_t *dst = c < kv_mid ? base + a.pg.v_off + (size_t)in_page * a.pg.vw + (c - kv_lo)
                                             : base + a.pg.k_off + (size_t)in_page * a.pg.kw + (c - kv_mid);
                    *reinterpret_cast<uint4 *>(dst) = v;
                }
            }
        }
    }
}

/* Persistent: cluster c takes units c, c + clusters, ... (unit u is row
 * blocks CL (u / tiles_n) + rank of column block u % tiles_n, so CTAs
 * running together share A's rows and W's columns in L2). The loading
 * thread runs through every tile's K slices in one ring of S stages
 * (full[s]: its bytes landed, the peer's multicast included; empty[s]: every
 * computing warp of the cluster is done with it), so the next tile's loads
 * go on during an epilogue. The epilogue stages the tile as bf16 in its own
 * buffer (up to 128 columns at a time), in the layout of the loads, and one
 * thread stores each part with TMA while the appends read it. A row block
 * past M (the second of a pair) loads zeros and stores nothing. */
template <int BM, int BN, int CL, bool T>
__global__ void __launch_bounds__(Cfg<BM, BN, T>::NTHREADS, 1) gemm_fused_kernel(const __grid_constant__ Args a)
{
    typedef Cfg<BM, BN, T> C;
    constexpr int S = C::STAGES;
    extern __shared__ uint8_t smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * S];
    const uint32_t ring = (smem_u32(smem_raw) + 1023u) & ~1023u;
    auto sa = [&](int s) { return ring + (uint32_t)(s * C::STAGE); };
    auto sb = [&](int s) { return ring + (uint32_t)(s * C::STAGE + C::A_BYTES); };
    const uint32_t full0 = smem_u32(&bars[0]), empty0 = full0 + 8u * S;
    const int nk = (a.K + BK - 1) / BK;
    const int rank = CL > 1 ? (int)cluster_ctarank() : 0, cid = blockIdx.x / CL, ncl = gridDim.x / CL;
    auto tile_m0 = [&](int u) { return (u / a.tiles_n * CL + rank) * BM; };
    auto tile_n0 = [&](int u) { return u % a.tiles_n * BN; };
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; s++) {
            mbar_init(full0 + 8u * s, 1);       /* the loading thread's arrival, plus the stage's bytes */
            mbar_init(empty0 + 8u * s, 4 * C::WG * CL); /* every computing warp of the cluster */
        }
        if (CL > 1)
            fence_mbar_init();
    }
    if (CL > 1)
        cluster_sync(); /* the peer's barriers are ready before anything lands in them */
    else
        __syncthreads();

    /* W's slices of one stage (this CTA's share of them, in a cluster). */
    auto load_w = [&](int s, uint32_t full, int n0, int kt) {
#pragma unroll
        for (int j = 0; j < BN / 64; j++) {
            if (CL == 1)
                tma_load_2d(sb(s) + j * (BK * 128), &a.tw, full, n0 + 64 * j, kt * BK);
            else if (j % CL == rank)
                tma_load_2d_multicast(sb(s) + j * (BK * 128), &a.tw, full, n0 + 64 * j, kt * BK,
                                      (uint16_t)((1u << CL) - 1));
        }
    };
    if (threadIdx.x == C::COMPUTE) { /* one thread issues every copy */
        trace_stamp(a, GEMM_FUSED_TRACE_START);
        tma_prefetch_map(&a.ta);
        tma_prefetch_map(&a.tw);
        /* Programmatic dependent launch (pdl.cuh): W is no kernel's output,
         * so the first tile's first S slices of it are asked for before the
         * wait for the kernel ahead (whose output A is); the weights then
         * stream in while that kernel ends. */
        const int pre = cid < a.units ? min(S, nk) : 0;
        for (int kt = 0; kt < pre; kt++) {
            mbar_arrive_expect_tx(full0 + 8u * kt, C::STAGE);
            load_w(kt, full0 + 8u * kt, tile_n0(cid), kt);
        }
        pdl_wait();
        pdl_trigger();
        trace_stamp(a, GEMM_FUSED_TRACE_WAITED);
        int it = 0; /* slices issued, over all tiles: use it / S of buffer it % S */
        for (int u = cid; u < a.units; u += ncl) {
            const int m0 = tile_m0(u), n0 = tile_n0(u);
            for (int kt = 0; kt < nk; kt++, it++) {
                const int s = it % S;
                const uint32_t full = full0 + 8u * s;
                if (it >= S) /* use u of a buffer waits for the release of use u - 1 */
                    mbar_wait(empty0 + 8u * s, (it / S - 1) & 1);
                if (it >= pre) {
                    mbar_arrive_expect_tx(full, C::STAGE);
                    load_w(s, full, n0, kt);
                }
                tma_load_2d(sa(s), &a.ta, full, kt * BK, m0);
            }
        }
    } else {
        /* every other thread before its first global access (the bias,
         * the stores, the appends): see pdl.cuh */
        pdl_wait();
        pdl_trigger();
        if (threadIdx.x < C::COMPUTE)
            gemm_fused_compute<BM, BN, CL, T>(a, ring, full0, empty0, nk, cid, ncl, rank);
    }
    if (threadIdx.x == 0) {
        bulk_wait_all<0>(); /* the shared memory stays until the last store has read it */
        trace_stamp(a, GEMM_FUSED_TRACE_END);
    }
    if (CL > 1)
        cluster_sync(); /* and until the peer's last arrivals on this CTA's barriers */
}

/* A launch of `ctas` CTAs in clusters of CL along x; *at holds the cluster
 * attribute the configuration points to. */
template <int BM, int BN, int CL, bool T>
cudaLaunchConfig_t cluster_config(int ctas, cudaStream_t s, cudaLaunchAttribute *at)
{
    cudaLaunchConfig_t lc = {};
    lc.gridDim = dim3((unsigned)ctas);
    lc.blockDim = dim3(Cfg<BM, BN, T>::NTHREADS);
    lc.dynamicSmemBytes = Cfg<BM, BN, T>::SMEM;
    lc.stream = s;
    *at = cluster_attribute(CL, 1, 1);
    lc.attrs = at;
    lc.numAttrs = 1;
    return lc;
}

/* The kernels' shared-memory limit is per function, set once: before the
 * first launch, outside any stream capture (gemm_fused_prepare). With it,
 * how many clusters of CL fit on the device at once: the persistent grid. */
template <int BM, int BN, int CL, bool T> int prepare(int *max_ctas)
{
    static int ctas = 0;
    if (!ctas) {
        cudaError_t e = cudaFuncSetAttribute(gemm_fused_kernel<BM, BN, CL, T>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg<BM, BN, T>::SMEM);
        const int sms = cuda_sm_count();
        if (e == cudaSuccess && sms < 1)
            e = cudaErrorNoDevice;
        int n = sms / CL;
        if (e == cudaSuccess && CL > 1) {
            cudaLaunchAttribute at;
            const cudaLaunchConfig_t lc = cluster_config<BM, BN, CL, T>(sms / CL * CL, NULL, &at);
            e = cudaOccupancyMaxActiveClusters(&n, gemm_fused_kernel<BM, BN, CL, T>, &lc);
        }
        if (e != cudaSuccess)
            return (int)e;
        if (n < 1)
            return (int)cudaErrorInvalidConfiguration;
        ctas = n * CL;
    }
    if (max_ctas)
        *max_ctas = ctas;
    return 0;
}

template <int BM, int BN, int CL, bool T> int launch(Args &a, cudaStream_t s)
{
    typedef Cfg<BM, BN, T> C;
    int max_ctas = 0, rc = prepare<BM, BN, CL, T>(&max_ctas);
    if (rc)
        return rc;
    a.tiles_n = (a.N + BN - 1) / BN;
    a.units = a.tiles_n * ((a.M + BM * CL - 1) / (BM * CL));
    const int clusters = a.units < max_ctas / CL ? a.units : max_ctas / CL;
    /* With programmatic dependent launch when it is on (pdl.cuh). */
    if (CL == 1)
        return (int)pdl_launch(gemm_fused_kernel<BM, BN, 1, T>, dim3(clusters), dim3(C::NTHREADS), C::SMEM, s, a);
    const cudaLaunchAttribute at = cluster_attribute(CL, 1, 1);
    return (int)pdl_launch_attrs(gemm_fused_kernel<BM, BN, CL, T>, dim3(clusters * CL), dim3(C::NTHREADS), C::SMEM,
                                 s, &at, 1, a);
}

int g_forced_bm = 0, g_forced_bn = 0, g_forced_cl = 0;
unsigned long long *g_trace = NULL;

bool aligned(const void *p, uintptr_t n) { return ((uintptr_t)p & (n - 1)) == 0; }

/* The kernels a call can launch: tile bm x bn, clusters of cl. */
struct Shape {
    int bm, bn, cl;
    int (*prepare)(int *);
    int (*launch)(Args &, cudaStream_t);
};
#define SHAPE(BM, BN, CL, T) {BM, BN, CL, prepare<BM, BN, CL, T>, launch<BM, BN, CL, T>}
const Shape kShapes[] = {SHAPE(128, 128, 1, false), SHAPE(128, 128, 2, false), SHAPE(128, 256, 1, false),
                         SHAPE(128, 256, 2, false), SHAPE(96, 128, 1, true)};
#undef SHAPE

const Shape *find_shape(int bm, int bn, int cl)
{
    for (const Shape &sh : kShapes)
        if (sh.bm == bm && sh.bn == bn && sh.cl == cl)
            return &sh;
    return NULL;
}

/* The most tile area one SM computes: rounds of 132 tiles times a tile's. */
long busiest_sm(int M, int N, int bm, int bn)
{
    const long tiles = (long)((M + bm - 1) / bm) * ((N + bn - 1) / bn);
    return (tiles + 131) / 132 * bm * bn;
}

} /* namespace */

extern "C" int gemm_fused_prepare(void)
{
    for (const Shape &sh : kShapes) {
        int rc = sh.prepare(NULL);
        if (rc)
            return rc;
    }
    return 0;
}

extern "C" void gemm_fused_force_tile(int bm, int bn, int cl)
{
    const Shape *sh = find_shape(bm, bn, cl);
    g_forced_bm = sh ? bm : 0, g_forced_bn = sh ? bn : 0, g_forced_cl = sh ? cl : 0;
}

extern "C" void gemm_fused_set_trace(unsigned long long *trace) { g_trace = trace; }

/* Unless forced: among 128-row tiles, 256 wide once they fill the GPU (132
 * SMs) at least once; then 96 x 128 if the busiest SM has less area to
 * compute with it (up to 1536 rows at N = 4096; the larger tile on a tie:
 * more products per byte loaded). One CTA
 * per cluster: the pairs sharing W's loads were no faster on an H100
 * (34816 rows: 0.514 ms either way; 3072 rows: 0.061 against 0.054 ms), so
 * W's L2 traffic is not what limits this kernel (docs/cuda.md). */
extern "C" void gemm_fused_tile(int M, int N, int *bm, int *bn, int *cl)
{
    int m = g_forced_bm, n = g_forced_bn, c = g_forced_cl;
    if (!m) {
        const long tiles256 = (long)((M + 127) / 128) * ((N + 255) / 256);
        m = 128, n = tiles256 >= 132 ? 256 : 128, c = 1;
        if (busiest_sm(M, N, 96, 128) < busiest_sm(M, N, m, n))
            m = 96, n = 128;
    }
    if (bm)
        *bm = m;
    if (bn)
        *bn = n;
    if (cl)
        *cl = c;
}

extern "C" bool gemm_fused_supported(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw,
                                     const bf16_t *C, int ldc, const gemm_fused_epilogue *epi, char *why, size_t n)
{
    const char *bad = NULL;
    if (M < 0 || N < 8 || K < 8 || N % 8 || K % 8)
        bad = "needs M >= 0 and N, K positive multiples of 8";
    else if (lda % 8 || ldw % 8 || ldc % 8 || lda < K || ldw < N || ldc < N)
        bad = "needs row strides that are multiples of 8 elements and hold a row";
    else if (!aligned(A, 16) || !aligned(W, 16) || !aligned(C, 16))
        bad = "needs A, W and C 16-byte aligned";
    else if (epi && epi->bias && !aligned(epi->bias, 8))
        bad = "needs the bias 8-byte aligned";
    else if (epi && epi->act_from < N && (epi->act_from < 0 || epi->act_from % 8))
        bad = "needs the first activated column at a multiple of 8";
    else if (epi && epi->pages) {
        const bias_silu_pages *pg = epi->pages;
        if (pg->kw % 8 || pg->vw % 8 || epi->kv_col % 8 || epi->kv_col < 0 || epi->kv_col + pg->vw + pg->kw > N ||
            pg->page_elems % 8 || pg->k_off % 8 || pg->v_off % 8 || pg->P < 1 || !aligned(pg->pool, 16) ||
            !pg->row_slot)
            bad = "needs the append's widths, offsets and V/K columns in multiples of 8, inside C, a 16-byte "
                  "aligned pool and a slot map";
    }
    if (bad && why && n)
        snprintf(why, n, "fused GEMM %dx%dx%d: %s", M, N, K, bad);
    return bad == NULL;
}

extern "C" int gemm_fused_cuda(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw, bf16_t *C,
                               int ldc, const gemm_fused_epilogue *epi, void *stream)
{
    if (!gemm_fused_supported(M, N, K, A, lda, W, ldw, C, ldc, epi, NULL, 0))
        return (int)cudaErrorInvalidValue;
    if (M == 0)
        return 0;
    Args a;
    memset(&a, 0, sizeof a);
    a.M = M, a.N = N, a.K = K;
    a.epi.act_from = N;
    a.trace = g_trace;
    int bm = 0, bn = 0, cl = 0;
    gemm_fused_tile(M, N, &bm, &bn, &cl);
    const Shape *sh = find_shape(bm, bn, cl);
    int rc = tma::encode_matrix(&a.ta, A, (uint64_t)M, (uint64_t)K, (uint64_t)lda, (uint32_t)bm);
    if (!rc)
        rc = tma::encode_matrix(&a.tw, W, (uint64_t)K, (uint64_t)N, (uint64_t)ldw, BK);
    if (!rc)
        rc = tma::encode_matrix(&a.tc, C, (uint64_t)M, (uint64_t)N, (uint64_t)ldc, (uint32_t)bm);
    if (rc)
        return rc;
    if (epi) {
        a.epi = *epi;
        if (epi->pages)
            a.pg = *epi->pages;
    }
    return sh->launch(a, (cudaStream_t)stream);
}
