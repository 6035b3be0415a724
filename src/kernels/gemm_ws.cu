/* gemm_ws.cu - the weight-stationary GEMM for few rows, on Hopper (see
 * gemm_ws_cuda.h for the contract and why).
 *
 * One CTA owns a 64-column tile of W for the whole of K: K / 64 slices of
 * 64 x 64 (8 KB each, MN-major, wgmma transposes them), loaded by TMA before
 * the CTA waits for the kernel ahead of it. After the wait its loading
 * thread streams A's K slices (bm x 64, K-major) through a ring of stages
 * for each of the CTA's row tiles in turn. In clusters of cl CTAs along N
 * (same row tiles, neighbouring columns) each CTA loads bm / cl of a slice's
 * rows and multicasts them into all of the cluster's rings, so A leaves L2
 * once per cluster; a stage is free again once every computing warp of the
 * cluster is done with it. One computing warpgroup per 64 rows runs wgmma
 * m64n64k16 with both operands in shared memory, one slice's products in
 * flight while the previous slice's stage is released. The epilogue adds
 * the bias and the old C (accumulate) in fp32 and writes C from registers.
 *
 * Rows past M and columns past K load as zeros (TMA's fill outside the
 * tensor); rows past M and columns past N are not written.
 */
#include "kernels/gemm_ws_cuda.h"
#include "kernels/pdl.cuh"
#include "kernels/sm90.cuh"
#include "kernels/tma.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

namespace {

using namespace sm90;

constexpr int BK = 64, BN = 64;
constexpr int W_SLICE = BK * BN * 2; /* bytes of one 64 x 64 slice of W */
constexpr int MAX_SLICES = GEMM_WS_MAX_K / BK;
constexpr int MAX_STAGES = 8;
/* Dynamic shared memory a CTA may take: the H100's 227 KB per block less
 * room for the static barriers. */
constexpr int SMEM_LIMIT = 227 * 1024 - 512;

template <int WG> struct Cfg {
    static constexpr int BM = 64 * WG;               /* rows of a tile: one warpgroup each 64 */
    static constexpr int COMPUTE = WG * 128, NTHREADS = COMPUTE + 32; /* + the loading warp */
    static constexpr int A_STAGE = BM * BK * 2;
};

struct Args {
    CUtensorMap ta; /* A [M, K] in (bm / cl) x 64 boxes */
    CUtensorMap tw; /* W [K, N] in 64 x 64 boxes */
    int M, N, nk;   /* nk: K slices */
    int tiles_n, tiles_m, groups, stages;
    void *C;
    int ldc, c_f32, accumulate;
    const void *bias;
    unsigned long long *trace; /* or NULL: gemm_ws_set_trace */
};

/* Profiling stamp (gemm_ws_set_trace): one thread per CTA and point. */
__device__ __forceinline__ void trace_stamp(const Args &a, int point)
{
    if (a.trace)
        a.trace[blockIdx.x * GEMM_WS_TRACE_POINTS + point] = global_timer_ns();
}

__device__ __forceinline__ void wgmma_m64n64k16_ss_tb(float (&d)[32], uint64_t da, uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SM90_ACC_REGS_32 "}, "
                 "%32, %33, 1, 1, 1, 0, 1;\n"
                 : SM90_ACC_32(d)
                 : "l"(da), "l"(db));
}

/* Two adjacent values of C (columns c, c + 1 of one row): read, write. */
__device__ __forceinline__ float2 load2(const Args &a, size_t at, const void *base)
{
    if (a.c_f32)
        return *reinterpret_cast<const float2 *>((const float *)base + at);
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>((const bf16 *)base + at));
}
__device__ __forceinline__ void store2(const Args &a, size_t at, float2 v)
{
    if (a.c_f32)
        *reinterpret_cast<float2 *>((float *)a.C + at) = v;
    else
        *reinterpret_cast<__nv_bfloat162 *>((bf16 *)a.C + at) = __float22bfloat162_rn(v);
}

/* The computing warpgroups' part: every row tile's main loop and epilogue.
 * acc[4j + 2h + x] is row 16 ww + g + 8h of the warpgroup's 64, column
 * 8j + 2 t4 + x of the tile. */
template <int WG, int CL>
__device__ __forceinline__ void gemm_ws_compute(const Args &a, uint32_t wbase, uint32_t abase, uint32_t wfull0,
                                                uint32_t afull0, uint32_t aempty0, int group, int n0)
{
    typedef Cfg<WG> C;
    const int S = a.stages, nk = a.nk;
    const int cw = threadIdx.x / 128, ww = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4,
              t4 = lane % 4;
    /* A warp's release of a stage: lane r arrives on CTA r's barrier (every
     * CTA of the cluster loads into this one's ring). */
    auto release = [&](uint32_t bar) {
        if (CL == 1) {
            if (lane == 0)
                mbar_arrive(bar);
        } else if (lane < CL) {
            mbar_arrive_remote(bar, lane);
        }
    };
    int it = 0;
    for (int mt = group; mt < a.tiles_m; mt += a.groups) {
        float acc[32];
#pragma unroll
        for (int i = 0; i < 32; i++)
            acc[i] = 0.0f;
        for (int k = 0; k < nk; k++, it++) {
            const int s = it % S;
            if (mt == group)
                mbar_wait(wfull0 + 8u * k, 0); /* W's slice k landed (once: the barrier is never reused) */
            mbar_wait(afull0 + 8u * s, (it / S) & 1);
            if (it == 0 && threadIdx.x == 0)
                trace_stamp(a, GEMM_WS_TRACE_FIRST_A);
            wg_fence();
            const uint32_t sa = abase + (uint32_t)(s * C::A_STAGE) + cw * (64 * 128), sw = wbase + k * W_SLICE;
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++)
                wgmma_m64n64k16_ss_tb(acc, gmma_desc(sa + kk * 32, 16, 1024),
                                      gmma_desc(sw + kk * 16 * 128, W_SLICE, 1024));
            wg_commit();
            wg_wait<1>(); /* slice it - 1's products are done: its stage goes back */
            if (k > 0)
                release(aempty0 + 8u * ((it - 1) % S));
        }
        wg_wait<0>();
        fence_regs(acc);
        release(aempty0 + 8u * ((it - 1) % S)); /* the tile's last slice */
        if (mt == group && threadIdx.x == 0)
            trace_stamp(a, GEMM_WS_TRACE_LOOP_DONE);

        const int r0 = mt * C::BM + cw * 64 + 16 * ww + g;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = r0 + 8 * h;
            if (r >= a.M)
                continue;
            const size_t row = (size_t)r * a.ldc;
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                const int c = n0 + 8 * j + 2 * t4;
                if (c >= a.N) /* N is a multiple of 8: c + 1 < N whenever c < N */
                    continue;
                float2 v = make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
                if (a.accumulate) {
                    const float2 o = load2(a, row + c, a.C);
                    v.x += o.x, v.y += o.y;
                }
                if (a.bias) {
                    const float2 b = load2(a, c, a.bias);
                    v.x += b.x, v.y += b.y;
                }
                store2(a, row + c, v);
            }
        }
    }
    if (threadIdx.x == 0)
        trace_stamp(a, GEMM_WS_TRACE_END);
}

/* Grid: groups x tiles_n CTAs, CTA b taking column tile b % tiles_n and row
 * tiles b / tiles_n + i groups; clusters of CL along x (tiles_n is a
 * multiple of CL, so a cluster shares its row tiles). Barriers: wfull[k]
 * (W's slice k, used once), afull[s] (stage s of A landed, the peers'
 * multicast parts included), aempty[s] (every computing warp of the cluster
 * is done with stage s). */
template <int WG, int CL>
__global__ void __launch_bounds__(Cfg<WG>::NTHREADS, 1) gemm_ws_kernel(const __grid_constant__ Args a)
{
    typedef Cfg<WG> C;
    constexpr int SUB = C::BM / CL; /* rows of a slice this CTA loads */
    extern __shared__ uint8_t smem_raw[];
    __shared__ __align__(8) uint64_t bars[MAX_SLICES + 2 * MAX_STAGES];
    const uint32_t wbase = (smem_u32(smem_raw) + 1023u) & ~1023u, abase = wbase + (uint32_t)(a.nk * W_SLICE);
    const uint32_t wfull0 = smem_u32(&bars[0]), afull0 = wfull0 + 8u * MAX_SLICES,
                   aempty0 = afull0 + 8u * MAX_STAGES;
    const int S = a.stages, nk = a.nk, rank = CL > 1 ? (int)cluster_ctarank() : 0;
    const int group = blockIdx.x / a.tiles_n, n0 = blockIdx.x % a.tiles_n * BN;
    if (threadIdx.x == 0) {
        for (int k = 0; k < nk; k++)
            mbar_init(wfull0 + 8u * k, 1);
        for (int s = 0; s < S; s++) {
            mbar_init(afull0 + 8u * s, 1);               /* the loading thread's arrival, plus the bytes */
            mbar_init(aempty0 + 8u * s, 4 * WG * CL);    /* every computing warp of the cluster */
        }
        if (CL > 1)
            fence_mbar_init();
    }
    if (CL > 1)
        cluster_sync(); /* the peers' barriers are ready before anything lands in them */
    else
        __syncthreads();

    if (threadIdx.x == C::COMPUTE) { /* one thread issues every copy */
        trace_stamp(a, GEMM_WS_TRACE_START);
        tma_prefetch_map(&a.ta);
        tma_prefetch_map(&a.tw);
        /* W is no kernel's output: all of this CTA's share of it is asked
         * for before the wait for the kernel ahead (pdl.cuh), and lands
         * while that kernel ends. */
        for (int k = 0; k < nk; k++) {
            mbar_arrive_expect_tx(wfull0 + 8u * k, W_SLICE);
            tma_load_2d(wbase + k * W_SLICE, &a.tw, wfull0 + 8u * k, n0, k * BK);
        }
        trace_stamp(a, GEMM_WS_TRACE_W_ISSUED);
        pdl_wait();
        pdl_trigger();
        trace_stamp(a, GEMM_WS_TRACE_WAITED);
        int it = 0; /* slices issued over all row tiles: use it / S of stage it % S */
        for (int mt = group; mt < a.tiles_m; mt += a.groups)
            for (int k = 0; k < nk; k++, it++) {
                const int s = it % S;
                const uint32_t full = afull0 + 8u * s, dst = abase + (uint32_t)(s * C::A_STAGE);
                if (it >= S) /* use u of a stage waits for the cluster's release of use u - 1 */
                    mbar_wait(aempty0 + 8u * s, (it / S - 1) & 1);
                mbar_arrive_expect_tx(full, C::A_STAGE);
                if (CL == 1)
                    tma_load_2d(dst, &a.ta, full, k * BK, mt * C::BM);
                else
                    tma_load_2d_multicast(dst + rank * (SUB * 128), &a.ta, full, k * BK, mt * C::BM + rank * SUB,
                                          (uint16_t)((1u << CL) - 1));
            }
    } else {
        if (a.trace && threadIdx.x == C::COMPUTE + 1) { /* profiling only: the trace is no kernel's input */
            mbar_wait(wfull0 + 8u * (nk - 1), 0);
            trace_stamp(a, GEMM_WS_TRACE_W_LANDED);
        }
        /* every other thread before its first global access (the stores,
         * the old C, the bias): see pdl.cuh */
        pdl_wait();
        pdl_trigger();
        if (threadIdx.x < C::COMPUTE)
            gemm_ws_compute<WG, CL>(a, wbase, abase, wfull0, afull0, aempty0, group, n0);
    }
    if (CL > 1)
        cluster_sync(); /* the peers' last multicasts and arrivals have landed before this CTA leaves */
}

/* ---- host side ------------------------------------------------------ */

/* A kernel: bm = 64 wg rows, clusters of cl; max_ctas is how many of its
 * CTAs fit on the device at once at the largest shared memory (0 before
 * gemm_ws_prepare). */
struct Kernel {
    int wg, cl;
    void (*fn)(Args);
    int max_ctas;
};
#define KERNEL(WG, CL) {WG, CL, gemm_ws_kernel<WG, CL>, 0}
Kernel g_kernels[] = {KERNEL(1, 1), KERNEL(1, 2), KERNEL(1, 4), KERNEL(2, 1), KERNEL(2, 2),
                      KERNEL(2, 4), KERNEL(3, 1), KERNEL(3, 2), KERNEL(3, 4)};
#undef KERNEL
bool g_prepared = false;
int g_forced_bm = 0, g_forced_cl = 0;
unsigned long long *g_trace = NULL;

Kernel *find_kernel(int wg, int cl)
{
    for (Kernel &k : g_kernels)
        if (k.wg == wg && k.cl == cl)
            return &k;
    return NULL;
}

cudaError_t prepare_kernel(Kernel &k, int sms)
{
    cudaError_t e = cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_LIMIT);
    if (e != cudaSuccess)
        return e;
    int n = 0;
    if (k.cl == 1) {
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k.fn, k.wg * 128 + 32, SMEM_LIMIT);
        n *= sms;
    } else {
        cudaLaunchConfig_t lc = {};
        lc.gridDim = dim3((unsigned)(sms / k.cl * k.cl));
        lc.blockDim = dim3((unsigned)(k.wg * 128 + 32));
        lc.dynamicSmemBytes = SMEM_LIMIT;
        cudaLaunchAttribute at = cluster_attribute((unsigned)k.cl, 1, 1);
        lc.attrs = &at;
        lc.numAttrs = 1;
        e = cudaOccupancyMaxActiveClusters(&n, k.fn, &lc);
        n *= k.cl;
    }
    k.max_ctas = e == cudaSuccess ? n : 0;
    return e;
}

bool aligned(const void *p, uintptr_t n) { return ((uintptr_t)p & (n - 1)) == 0; }

/* A's ring for K slices of K at bm rows: the stages that fit beside W. */
int stages_for(int wg, int nk)
{
    const int s = (SMEM_LIMIT - 1024 - nk * W_SLICE) / (64 * wg * BK * 2);
    return s < MAX_STAGES ? s : MAX_STAGES;
}

/* The plan on kernel k, or false when it cannot take the shape. */
bool plan_on(const Kernel &k, int M, int N, int K, gemm_ws_plan *p)
{
    const int nk = (K + BK - 1) / BK, tiles_n = (N + BN - 1) / BN, bm = 64 * k.wg;
    const int stages = stages_for(k.wg, nk);
    if (nk > MAX_SLICES || stages < 2 || tiles_n % k.cl || k.max_ctas < tiles_n)
        return false;
    const int tiles_m = (M + bm - 1) / bm > 0 ? (M + bm - 1) / bm : 1;
    int groups = k.max_ctas / tiles_n;
    if (groups > tiles_m)
        groups = tiles_m;
    p->bm = bm, p->cl = k.cl, p->groups = groups, p->ctas = groups * tiles_n;
    p->tiles_per_cta = (tiles_m + groups - 1) / groups, p->stages = stages;
    return true;
}

} /* namespace */

extern "C" int gemm_ws_prepare(void)
{
    if (g_prepared)
        return 0;
    int dev = 0, sms = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    for (Kernel &k : g_kernels)
        if (e == cudaSuccess)
            e = prepare_kernel(k, sms);
    g_prepared = e == cudaSuccess;
    return (int)e;
}

extern "C" void gemm_ws_set_trace(unsigned long long *trace) { g_trace = trace; }

extern "C" void gemm_ws_force(int bm, int cl)
{
    const bool have = bm % 64 == 0 && find_kernel(bm / 64, cl) != NULL;
    g_forced_bm = have ? bm : 0, g_forced_cl = have ? cl : 0;
}

extern "C" int gemm_ws_plan_of(int M, int N, int K, gemm_ws_plan *p)
{
    if (!g_prepared || M < 0 || N < 8 || K < 8)
        return -1;
    if (g_forced_bm)
        return plan_on(*find_kernel(g_forced_bm / 64, g_forced_cl), M, N, K, p) ? 0 : -1;
    bool found = false;
    gemm_ws_plan best = {0, 0, 0, 0, 0, 0};
    /* the fewest rows for the busiest CTA; on a tie the larger tile, then
     * the wider cluster (fewer loads of W and of A) */
    for (int wg = 3; wg >= 1; wg--)
        for (int cl = 4; cl >= 1; cl /= 2) {
            gemm_ws_plan q;
            if (plan_on(*find_kernel(wg, cl), M, N, K, &q) &&
                (!found || q.tiles_per_cta * q.bm < best.tiles_per_cta * best.bm))
                best = q, found = true;
        }
    if (found)
        *p = best;
    return found ? 0 : -1;
}

extern "C" bool gemm_ws_supported(const gemm_ws_args *a, char *why, size_t n)
{
    const char *bad = NULL;
    gemm_ws_plan p;
    if (a->M < 0 || a->N < 8 || a->K < 8 || a->N % 8 || a->K % 8)
        bad = "needs M >= 0 and N, K positive multiples of 8";
    else if (a->K > GEMM_WS_MAX_K)
        bad = "needs K at most 1024 (W's columns stay in shared memory)";
    else if (a->lda % 8 || a->ldw % 8 || a->ldc % 8 || a->lda < a->K || a->ldw < a->N || a->ldc < a->N)
        bad = "needs row strides that are multiples of 8 elements and hold a row";
    else if (!aligned(a->A, 16) || !aligned(a->W, 16) || !aligned(a->C, 16))
        bad = "needs A, W and C 16-byte aligned";
    else if (a->bias && !aligned(a->bias, 8))
        bad = "needs the bias 8-byte aligned";
    else if (!g_prepared)
        bad = "gemm_ws_prepare has not run";
    else if (gemm_ws_plan_of(a->M, a->N, a->K, &p))
        bad = g_forced_bm ? "the forced tile and cluster do not fit the shape"
                          : "needs N's 64-column tiles to fit on the GPU at once";
    if (bad && why && n)
        snprintf(why, n, "weight-stationary GEMM %dx%dx%d: %s", a->M, a->N, a->K, bad);
    return bad == NULL;
}

extern "C" int gemm_ws_cuda(const gemm_ws_args *g, void *stream)
{
    if (!gemm_ws_supported(g, NULL, 0))
        return (int)cudaErrorInvalidValue;
    if (g->M == 0)
        return 0;
    gemm_ws_plan p;
    gemm_ws_plan_of(g->M, g->N, g->K, &p);
    const Kernel *k = find_kernel(p.bm / 64, p.cl);
    Args a;
    memset(&a, 0, sizeof a);
    a.M = g->M, a.N = g->N, a.nk = (g->K + BK - 1) / BK;
    a.tiles_n = (g->N + BN - 1) / BN, a.tiles_m = (g->M + p.bm - 1) / p.bm, a.groups = p.groups;
    a.stages = p.stages;
    a.C = g->C, a.ldc = g->ldc, a.c_f32 = g->c_f32, a.accumulate = g->accumulate, a.bias = g->bias;
    a.trace = g_trace;
    int rc = tma::encode_matrix(&a.ta, g->A, (uint64_t)g->M, (uint64_t)g->K, (uint64_t)g->lda,
                                (uint32_t)(p.bm / p.cl));
    if (!rc)
        rc = tma::encode_matrix(&a.tw, g->W, (uint64_t)g->K, (uint64_t)g->N, (uint64_t)g->ldw, BK);
    if (rc)
        return rc;
    const size_t smem = 1024 + (size_t)a.nk * W_SLICE + (size_t)p.stages * p.bm * BK * 2;
    const dim3 grid((unsigned)p.ctas), block((unsigned)(k->wg * 128 + 32));
    /* With programmatic dependent launch when it is on (pdl.cuh). */
    if (k->cl == 1)
        return (int)pdl_launch(k->fn, grid, block, smem, (cudaStream_t)stream, a);
    const cudaLaunchAttribute at = cluster_attribute((unsigned)k->cl, 1, 1);
    return (int)pdl_launch_attrs(k->fn, grid, block, smem, (cudaStream_t)stream, &at, 1, a);
}
