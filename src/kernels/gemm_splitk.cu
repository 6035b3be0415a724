/* gemm_splitk.cu - C += A @ W + bias with K split across a thread-block
 * cluster, on Hopper (see gemm_splitk_cuda.h for the contract).
 *
 * Grid: (KS, tiles along N, tiles along M), clusters of KS CTAs along x. A
 * CTA of rank r computes the 128 x 128 tile's partial product over its
 * share of the 64-wide K slices, [r nk / KS, (r + 1) nk / KS): one thread
 * of a loading warp issues TMA copies of A's 128 x 64 and W's 64 x 128 box
 * (two 64 x 64 boxes, MN-major) of each slice into a ring of stages, and
 * two computing warpgroups of 64 rows run wgmma on them (gemm_fused.cu's
 * main loop, one tile a CTA). Then the partial tiles meet: CTA r
 * finishes rows [r 128 / KS, (r + 1) 128 / KS) of the tile, so every CTA
 * sends each of its warps' 16-row slabs of fp32 partials to the CTA that
 * finishes them (st.async into that CTA's shared memory, counted in bytes
 * on its mbarrier: no cluster barrier on the way, no remote loads), and
 * each CTA, once its barrier says all KS - 1 others' bytes have landed,
 * adds up the KS partials of its rows in rank order, adds C's old value
 * and the bias (read before the main loop), and stores the rounded sums.
 *
 * Measured on an H100 (docs/perf.md, twenty-ninth session) it is slower
 * than cuBLASLt: the partials' trip between the SMs takes 2-3 us, so the
 * backend uses it only with HSTU_CUDA_SPLITK=1.
 *
 * Rows past M and columns past N or K load as zeros (TMA's fill outside the
 * tensor) and are not stored.
 */
#include "kernels/gemm_splitk_cuda.h"
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

constexpr int BM = 128, BN = 128, BK = 64;
constexpr int COMPUTE = 256, NTHREADS = COMPUTE + 32; /* two computing warpgroups and a loading warp */
constexpr int A_BYTES = BM * BK * 2, STAGE = A_BYTES + BK * BN * 2;
constexpr int RED_LD = BN + 4; /* floats a row of a received partial: +4 spreads rows over the banks */
constexpr int RECV_BYTES = BM * RED_LD * 4; /* the KS partials of a CTA's 128 / KS rows */
constexpr int STAGES = 4;                   /* a CTA's whole share of K = 1024 from KS = 4 on */
constexpr int SMEM = STAGES * STAGE + RECV_BYTES + 1024; /* + the 1024-byte alignment */
constexpr int MAX_KS = 8;                   /* the portable cluster size */

struct Args {
    CUtensorMap ta; /* A [M, K] in 128 x 64 boxes */
    CUtensorMap tw; /* W [K, N] in 64 x 64 boxes */
    void *C;
    const void *bias;
    int M, N, ldc, nk; /* nk: K's 64-wide slices */
    unsigned long long *trace; /* or NULL: gemm_splitk_set_trace */
};

/* Profiling stamp (gemm_splitk_set_trace): one thread per CTA and point. */
__device__ __forceinline__ void trace_stamp(const Args &a, int point)
{
    if (a.trace)
        a.trace[(blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)) * GEMM_SPLITK_TRACE_POINTS +
                point] = global_timer_ns();
}

/* Four values of C's type, as loaded (bf16 bits or fp32), and back: the
 * addends stay raw until the products are done, so that nothing waits for
 * their loads before the main loop. */
template <bool F32> struct Quad;
template <> struct Quad<true> {
    float4 v;
    __device__ __forceinline__ void load(const void *p) { v = *reinterpret_cast<const float4 *>(p); }
    __device__ __forceinline__ float4 f() const { return v; }
    static __device__ __forceinline__ void store(void *p, float4 x) { *reinterpret_cast<float4 *>(p) = x; }
};
template <> struct Quad<false> {
    uint2 v;
    __device__ __forceinline__ void load(const void *p) { v = *reinterpret_cast<const uint2 *>(p); }
    __device__ __forceinline__ float4 f() const
    {
        return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xFFFF0000u),
                           __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xFFFF0000u));
    }
    static __device__ __forceinline__ void store(void *p, float4 x)
    {
        *reinterpret_cast<uint2 *>(p) = make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
    }
};

/* The rows a CTA finishes, [r 128 / KS, (r + 1) 128 / KS) of the tile,
 * four columns a computing thread at a time: ITEMS quads a thread. */
template <int KS> struct Finish {
    static constexpr int ROWS = BM / KS, QUADS = BN / 4, ITEMS = ROWS * QUADS / COMPUTE;
    static constexpr uint32_t BYTES = ROWS * BN * 4; /* one CTA's partial of them */
    static_assert(ROWS * QUADS % COMPUTE == 0 && ROWS % 16 == 0, "whole rounds; a warp's rows go to one CTA");
    static __device__ __forceinline__ int row(int it) { return (threadIdx.x + it * COMPUTE) / QUADS; }
    static __device__ __forceinline__ int col(int it) { return 4 * ((threadIdx.x + it * COMPUTE) % QUADS); }
};

/* This thread's quads of C's old values and of the bias (zeros outside C),
 * asked for ahead of the main loop so that the round trip overlaps it. */
template <int KS, bool F32> struct Addends {
    Quad<F32> c[Finish<KS>::ITEMS], b[Finish<KS>::ITEMS];
    __device__ __forceinline__ void load(const Args &a, int rank)
    {
        typedef Finish<KS> F;
        const int m0 = blockIdx.z * BM + rank * F::ROWS, n0 = blockIdx.y * BN;
        const size_t esz = F32 ? 4 : 2;
#pragma unroll
        for (int it = 0; it < F::ITEMS; it++) {
            const int gr = m0 + F::row(it), gc = n0 + F::col(it);
            c[it].v = {}, b[it].v = {};
            if (gr >= a.M || gc >= a.N) /* N is a multiple of 8: a quad is all in or all out */
                continue;
            c[it].load((const char *)a.C + ((size_t)gr * a.ldc + gc) * esz);
            if (a.bias)
                b[it].load((const char *)a.bias + (size_t)gc * esz);
        }
    }
};

/* A computing thread's accumulators (the m64n128 fragment: acc[4j + 2h + x]
 * is row 64 wg + 16 warp + g + 8h, column 8j + 2 t4 + x) to the CTA that
 * finishes their rows, q = row / ROWS (the same for a whole warp): slot
 * `rank` of q's buffer `recv` [KS][ROWS][RED_LD], by st.async counted on
 * q's barrier, or by plain stores when q is this CTA. */
template <int KS>
__device__ __forceinline__ void send_partial(const float (&acc)[64], uint32_t recv, uint32_t recv_bar, int rank)
{
    typedef Finish<KS> F;
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int row = 64 * (threadIdx.x / 128) + 16 * ((threadIdx.x / 32) % 4) + g, q = row / F::ROWS;
    const uint32_t base = recv + (uint32_t)((rank * F::ROWS + row - q * F::ROWS) * RED_LD + 2 * t4) * 4;
    if (q == rank) {
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(base + (8 * h * RED_LD + 8 * j) * 4),
                             "f"(acc[4 * j + 2 * h]), "f"(acc[4 * j + 2 * h + 1])
                             : "memory");
    } else {
        const uint32_t dst = cluster_addr(base, q), bar = cluster_addr(recv_bar, q);
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n"
                             ::"r"(dst + (8 * h * RED_LD + 8 * j) * 4), "f"(acc[4 * j + 2 * h]),
                             "f"(acc[4 * j + 2 * h + 1]), "r"(bar)
                             : "memory");
    }
}

/* This CTA's rows of the tile once every partial is in `recv`: the KS
 * partials added up in rank order, then C's old value and the bias, stored
 * to C. */
template <int KS, bool F32>
__device__ __forceinline__ void finish_rows(const Args &a, uint32_t recv, int rank, const Addends<KS, F32> &add)
{
    typedef Finish<KS> F;
    const int m0 = blockIdx.z * BM + rank * F::ROWS, n0 = blockIdx.y * BN;
    const size_t esz = F32 ? 4 : 2;
#pragma unroll
    for (int it = 0; it < F::ITEMS; it++) {
        const int row = F::row(it), col = F::col(it), gr = m0 + row, gc = n0 + col;
        if (gr >= a.M || gc >= a.N)
            continue;
        float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int q = 0; q < KS; q++) {
            float4 v;
            asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                         : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                         : "r"(recv + (uint32_t)((q * F::ROWS + row) * RED_LD + col) * 4));
            s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
        }
        const float4 c = add.c[it].f(), b = add.b[it].f();
        s.x += c.x + b.x, s.y += c.y + b.y, s.z += c.z + b.z, s.w += c.w + b.w;
        Quad<F32>::store((char *)a.C + ((size_t)gr * a.ldc + gc) * esz, s);
    }
}

template <int KS, bool F32>
__global__ void __launch_bounds__(NTHREADS, 1) gemm_splitk_kernel(const __grid_constant__ Args a)
{
    constexpr int S = STAGES;
    static_assert(KS >= 2 && KS <= MAX_KS, "clusters of 2 to 8 CTAs");
    extern __shared__ uint8_t smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * S + 1];
    const uint32_t ring = (smem_u32(smem_raw) + 1023u) & ~1023u, recv = ring + S * STAGE;
    auto sa = [&](int s) { return ring + (uint32_t)(s * STAGE); };
    auto sb = [&](int s) { return ring + (uint32_t)(s * STAGE + A_BYTES); };
    const uint32_t full0 = smem_u32(&bars[0]), empty0 = full0 + 8u * S, recv_bar = full0 + 16u * S;
    const int rank = (int)cluster_ctarank();
    const int m0 = blockIdx.z * BM, n0 = blockIdx.y * BN;
    const int k0 = rank * a.nk / KS, nk = (rank + 1) * a.nk / KS - k0; /* this CTA's slices */
    if (threadIdx.x == 0) {
        for (int s = 0; s < S; s++) {
            mbar_init(full0 + 8u * s, 1);  /* the loading thread's arrival, plus the stage's bytes */
            mbar_init(empty0 + 8u * s, 8); /* every computing warp */
        }
        /* the other CTAs' partials of this CTA's rows: the bytes of KS - 1 */
        mbar_init(recv_bar, 1);
        mbar_arrive_expect_tx(recv_bar, (KS - 1) * Finish<KS>::BYTES);
        fence_mbar_init();
    }
    cluster_sync(); /* every CTA's barriers are ready before anything is sent to them */

    auto load_w = [&](int s, int kt) {
#pragma unroll
        for (int j = 0; j < BN / 64; j++)
            tma_load_2d(sb(s) + j * (BK * 128), &a.tw, full0 + 8u * s, n0 + 64 * j, (k0 + kt) * BK);
    };
    Addends<KS, F32> add;
    if (threadIdx.x == COMPUTE) { /* one thread issues every copy */
        trace_stamp(a, GEMM_SPLITK_TRACE_START);
        tma_prefetch_map(&a.ta);
        tma_prefetch_map(&a.tw);
        /* W is no kernel's output: its first S slices are asked for before
         * the wait for the kernel ahead (pdl.cuh), whose output A is. */
        const int pre = nk < S ? nk : S;
        for (int kt = 0; kt < pre; kt++) {
            mbar_arrive_expect_tx(full0 + 8u * kt, STAGE);
            load_w(kt, kt);
        }
        pdl_wait();
        pdl_trigger();
        trace_stamp(a, GEMM_SPLITK_TRACE_WAITED);
        for (int kt = 0; kt < nk; kt++) {
            const int s = kt % S;
            if (kt >= S) /* use u of a buffer waits for the release of use u - 1 */
                mbar_wait(empty0 + 8u * s, (kt / S - 1) & 1);
            if (kt >= pre) {
                mbar_arrive_expect_tx(full0 + 8u * s, STAGE);
                load_w(s, kt);
            }
            tma_load_2d(sa(s), &a.ta, full0 + 8u * s, (k0 + kt) * BK, m0);
        }
    } else if (threadIdx.x < COMPUTE) {
        /* before the first global access (the addends, C): see pdl.cuh */
        pdl_wait();
        pdl_trigger();
        add.load(a, rank);
        const int wg = threadIdx.x / 128;
        float acc[64]; /* the first product overwrites it (scale_d 0): every CTA has a slice */
        for (int kt = 0; kt < nk; kt++) {
            const int s = kt % S;
            mbar_wait(full0 + 8u * s, (kt / S) & 1); /* TMA and wgmma are both the async proxy: no fence */
            if (kt == 0 && threadIdx.x == 0)
                trace_stamp(a, GEMM_SPLITK_TRACE_FIRST);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                const uint64_t da = gmma_desc(sa(s) + wg * 64 * 128 + kk * 32, 16, 1024);
                const uint64_t db = gmma_desc(sb(s) + kk * 16 * 128, BK * 128, 1024);
                wgmma_m64n128k16_ss_tb(acc, da, db, kt > 0 || kk > 0);
            }
            wg_commit();
            wg_wait<1>(); /* slice kt - 1's products are done: its buffer goes back */
            if (kt > 0 && threadIdx.x % 32 == 0)
                mbar_arrive(empty0 + 8u * ((kt - 1) % S));
        }
        wg_wait<0>();
        fence_regs(acc);
        if (threadIdx.x == 0)
            trace_stamp(a, GEMM_SPLITK_TRACE_LOOP);
        send_partial<KS>(acc, recv, recv_bar, rank);
        bar_sync(1, COMPUTE);  /* this CTA's own partial is in */
        mbar_wait(recv_bar, 0); /* and the others' */
        if (threadIdx.x == 0)
            trace_stamp(a, GEMM_SPLITK_TRACE_MET);
        finish_rows<KS, F32>(a, recv, rank, add);
        if (threadIdx.x == 0)
            trace_stamp(a, GEMM_SPLITK_TRACE_END);
    } else {
        pdl_wait(); /* the loading warp's other lanes: no global access, but no grid ends before the one ahead */
        pdl_trigger();
    }
    /* No barrier at the end: a CTA leaves once its rows are stored, after
     * every partial sent to it has landed; what it sent went to CTAs that
     * wait for it. */
}

/* The kernels' shared-memory limit is per function, set once (before the
 * first launch, outside any stream capture: gemm_splitk_prepare); with it,
 * how many clusters of KS fit on the device at once. */
template <int KS, bool F32> int prepare(int *max_clusters)
{
    static int n = 0;
    if (!n) {
        cudaError_t e = cudaFuncSetAttribute(gemm_splitk_kernel<KS, F32>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             SMEM);
        int sms = cuda_sm_count(), c = 0;
        if (e == cudaSuccess && sms < 1)
            e = cudaErrorNoDevice;
        if (e == cudaSuccess) {
            cudaLaunchConfig_t lc = {};
            cudaLaunchAttribute at = cluster_attribute(KS, 1, 1);
            lc.gridDim = dim3(KS, sms / KS);
            lc.blockDim = dim3(NTHREADS);
            lc.dynamicSmemBytes = SMEM;
            lc.attrs = &at;
            lc.numAttrs = 1;
            e = cudaOccupancyMaxActiveClusters(&c, gemm_splitk_kernel<KS, F32>, &lc);
        }
        if (e != cudaSuccess)
            return (int)e;
        if (c < 1)
            return (int)cudaErrorInvalidConfiguration;
        n = c;
    }
    if (max_clusters)
        *max_clusters = n;
    return 0;
}

template <int KS, bool F32> int launch(const Args &a, int tiles_n, int tiles_m, cudaStream_t s)
{
    int rc = prepare<KS, F32>(NULL);
    if (rc)
        return rc;
    const dim3 grid(KS, tiles_n, tiles_m);
    const cudaLaunchAttribute at = cluster_attribute(KS, 1, 1);
    return (int)pdl_launch_attrs(gemm_splitk_kernel<KS, F32>, grid, dim3(NTHREADS), SMEM, s, &at, 1, a);
}

/* The kernels a call can launch: clusters of ks, C in fp32 or not. */
struct Kernel {
    int ks;
    bool f32;
    int (*prepare)(int *);
    int (*launch)(const Args &, int, int, cudaStream_t);
};
#define KERNEL(KS, F32) {KS, F32, prepare<KS, F32>, launch<KS, F32>}
const Kernel kKernels[] = {KERNEL(2, false), KERNEL(4, false), KERNEL(8, false),
                           KERNEL(2, true),  KERNEL(4, true),  KERNEL(8, true)};
#undef KERNEL

const Kernel *find_kernel(int ks, bool f32)
{
    for (const Kernel &k : kKernels)
        if (k.ks == ks && k.f32 == f32)
            return &k;
    return NULL;
}

int g_forced_ks = 0;
unsigned long long *g_trace = NULL;

bool aligned(const void *p, uintptr_t n) { return ((uintptr_t)p & (n - 1)) == 0; }

/* Whether tiles x ks CTAs run in one wave: clusters of ks that fit at once
 * (prepare's count; 132 / ks before it has run). */
bool fits(int tiles, int ks)
{
    const Kernel *k = find_kernel(ks, false);
    int clusters = 0;
    if (!k || k->prepare(&clusters) || clusters < 1) {
        const int sms = cuda_sm_count();
        clusters = (sms > 0 ? sms : 132) / ks;
    }
    return tiles <= clusters;
}

} /* namespace */

extern "C" int gemm_splitk_prepare(void)
{
    for (const Kernel &k : kKernels) {
        int rc = k.prepare(NULL);
        if (rc)
            return rc;
    }
    return 0;
}

extern "C" void gemm_splitk_set_trace(unsigned long long *trace) { g_trace = trace; }

extern "C" void gemm_splitk_force(int ks) { g_forced_ks = find_kernel(ks, false) ? ks : 0; }

/* The largest split that keeps every CTA resident at once (one wave), so
 * that each CTA walks the fewest K slices, and gives each CTA a slice at
 * least; none when even pairs take two waves, where cuBLASLt's larger
 * tiles do better. */
extern "C" void gemm_splitk_shape(int M, int N, int K, int *tiles, int *ks)
{
    const int t = (M + BM - 1) / BM * ((N + BN - 1) / BN), nk = (K + BK - 1) / BK;
    int k = 0;
    if (g_forced_ks)
        k = g_forced_ks <= nk ? g_forced_ks : 0;
    else
        for (int c = MAX_KS; c >= 2 && !k; c /= 2)
            if (c <= nk && fits(t, c))
                k = c;
    if (tiles)
        *tiles = t;
    if (ks)
        *ks = k;
}

extern "C" bool gemm_splitk_supported(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw,
                                      const void *C, int c_f32, int ldc, const void *bias, char *why, size_t n)
{
    const char *bad = NULL;
    int ks = 0;
    if (M < 0 || N < 8 || K < 8 || N % 8 || K % 8)
        bad = "needs M >= 0 and N, K positive multiples of 8";
    else if (lda % 8 || ldw % 8 || ldc % 8 || lda < K || ldw < N || ldc < N)
        bad = "needs row strides that are multiples of 8 elements and hold a row";
    else if (!aligned(A, 16) || !aligned(W, 16) || !aligned(C, 16))
        bad = "needs A, W and C 16-byte aligned";
    else if (bias && !aligned(bias, c_f32 ? 16 : 8))
        bad = "needs the bias 16-byte (fp32) or 8-byte (bf16) aligned";
    else if (M > 0 && (gemm_splitk_shape(M, N, K, NULL, &ks), ks == 0))
        bad = "no split: too many tiles for one wave of clusters, or K under two 64-wide slices a CTA";
    else if ((M + BM - 1) / BM > 65535 || (N + BN - 1) / BN > 65535)
        bad = "too many tiles for the grid";
    if (bad && why && n)
        snprintf(why, n, "split-K GEMM %dx%dx%d: %s", M, N, K, bad);
    return bad == NULL;
}

extern "C" int gemm_splitk_cuda(int M, int N, int K, const bf16_t *A, int lda, const bf16_t *W, int ldw, void *C,
                                int c_f32, int ldc, const void *bias, void *stream)
{
    if (!gemm_splitk_supported(M, N, K, A, lda, W, ldw, C, c_f32, ldc, bias, NULL, 0))
        return (int)cudaErrorInvalidValue;
    if (M == 0)
        return 0;
    int ks = 0;
    gemm_splitk_shape(M, N, K, NULL, &ks);
    const Kernel *k = find_kernel(ks, c_f32 != 0);
    if (!k)
        return (int)cudaErrorInvalidValue;
    Args a;
    memset(&a, 0, sizeof a);
    a.C = C, a.bias = bias, a.M = M, a.N = N, a.ldc = ldc, a.nk = (K + BK - 1) / BK;
    a.trace = g_trace;
    int rc = tma::encode_matrix(&a.ta, A, (uint64_t)M, (uint64_t)K, (uint64_t)lda, BM);
    if (!rc)
        rc = tma::encode_matrix(&a.tw, W, (uint64_t)K, (uint64_t)N, (uint64_t)ldw, BK);
    if (rc)
        return rc;
    return k->launch(a, (N + BN - 1) / BN, (M + BM - 1) / BM, (cudaStream_t)stream);
}
