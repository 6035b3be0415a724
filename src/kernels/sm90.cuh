/* sm90.cuh - Hopper (sm_90a) building blocks shared by the tensor-core kernels
 * (attention.cu, gemm_fused.cu): cp.async copies, shared-memory tiles in
 * wgmma's 128-byte-swizzled layout and their descriptors, wgmma's fences and
 * groups, mbarriers, named barriers, register reallocation and TMA loads.
 *
 * Device-only, header-only; everything lives in namespace sm90.
 */
#ifndef HSTU_KERNELS_SM90_CUH
#define HSTU_KERNELS_SM90_CUH

#include <cuda_bf16.h>
#include <stdint.h>

namespace sm90 {

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared; zero-fills the destination when !pred (src is
 * then not read, but must still be a valid address). */
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool pred)
{
    const int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
/* Makes this thread's completed shared-memory writes visible to the async
 * proxy (wgmma reads shared memory through it). */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* Two floats to a bf16x2 register, lo in the low half (round to nearest). */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* tanh with one MUFU operation (relative error about 2^-11). */
__device__ __forceinline__ float tanh_approx(float x)
{
    float y;
    asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
/* SiLU(x) = x sigmoid(x) = h + h tanh(h) with h = x / 2: one MUFU operation
 * (the quotient form takes two); error far below a bf16 rounding. */
__device__ __forceinline__ float silu_fast(float x)
{
    const float h = 0.5f * x;
    return fmaf(h, tanh_approx(h), h);
}

/* Byte offset of 16-byte chunk ch of row r in a [ROWS][D] bf16 tile stored
 * as D/64 column blocks of ROWS x 128 bytes, the chunk index XOR (r % 8):
 * wgmma's 128-byte swizzle, and conflict-free for ldmatrix too. Tiles
 * start 1024-byte aligned. */
template <int ROWS> __device__ __forceinline__ uint32_t tile_off(int r, int ch)
{
    return (uint32_t)((ch >> 3) * (ROWS * 128) + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
}

/* wgmma's accumulators: PTX names every register, so the fragments of
 * 32, 48, 64 and 128 floats are spelled out once here, as the operand list
 * (SM90_ACC_n(d), "+f" for each d[i]) and the register list of the
 * instruction (SM90_ACC_REGS_n: "%0,...,%n-1", the first operands). */
#define SM90_ACC_REGS_32 \
    "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15," \
    "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define SM90_ACC_REGS_48 \
    SM90_ACC_REGS_32 "," \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47"
#define SM90_ACC_REGS_64 \
    SM90_ACC_REGS_32 "," \
    "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47," \
    "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
#define SM90_ACC_REGS_128 \
    SM90_ACC_REGS_64 "," \
    "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79," \
    "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95," \
    "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111," \
    "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
#define SM90_ACC_32(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define SM90_ACC_48(d) \
    SM90_ACC_32(d), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define SM90_ACC_64(d) \
    SM90_ACC_32(d), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define SM90_ACC_128(d) \
    SM90_ACC_64(d), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* Keeps the compiler from moving reads or writes of r across this point
 * (accumulators that an in-flight wgmma owns). */
template <int N> __device__ __forceinline__ void fence_regs(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+f"(r[i])::"memory");
}
/* The same for A fragments: keeps them live (unclobbered) until here. */
__device__ __forceinline__ void fence_frags(uint32_t (&r)[16])
{
#pragma unroll
    for (int i = 0; i < 16; i++)
        asm volatile("" : "+r"(r[i])::"memory");
}

/* Shared-memory matrix descriptor, 128-byte swizzle. For K-major operands
 * sbo is the distance between 8-row groups (lbo unused); for the MN-major V,
 * lbo is the distance between 64-column blocks and sbo between 8-key groups. */
__device__ __forceinline__ uint64_t gmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

/* mbarriers (shared::cta) and named barriers. */
__device__ __forceinline__ void mbar_init(uint32_t a, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(a), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t a)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(a) : "memory");
}
/* Arrives once all of this thread's earlier cp.async copies have landed. */
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t a)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(a) : "memory");
}
/* Adds one pending arrival to the barrier's phase now and takes it back
 * once all of this thread's earlier cp.async copies have landed: the phase
 * cannot complete before they do, and needs its expected arrivals besides. */
__device__ __forceinline__ void mbar_track_cp_async(uint32_t a)
{
    asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(a) : "memory");
}
/* Arrives and adds `bytes` to the transaction count the phase waits for
 * (the TMA copies that complete_tx on this barrier). */
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t a, uint32_t bytes)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(a),
                 "r"(bytes)
                 : "memory");
}
/* Waits for the completion of the barrier's phase of the given parity. */
__device__ __forceinline__ void mbar_wait(uint32_t a, uint32_t parity)
{
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(a), "r"(parity)
                     : "memory");
    } while (!done);
}
__device__ __forceinline__ void bar_sync(int id, int n)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
/* The same for threads whose warps may have diverged: bar.sync is the
 * .aligned barrier, which every thread of a warp must reach at the same
 * instruction. */
__device__ __forceinline__ void bar_sync_diverged(int id, int n)
{
    asm volatile("barrier.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int n)
{
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
template <int N> __device__ __forceinline__ void reg_dealloc()
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void reg_alloc()
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

/* Thread-block clusters: a barrier of every thread of every CTA (each
 * thread's earlier shared-memory writes visible to the others after it),
 * and the address of a shared-memory word in the cluster's CTA `rank`. */
__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t cluster_addr(uint32_t a, int rank)
{
    uint32_t r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(rank));
    return r;
}
/* This CTA's rank in its cluster. */
__device__ __forceinline__ uint32_t cluster_ctarank()
{
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
/* Arrives on the mbarrier at offset a of CTA `rank`'s shared memory, with
 * the default release at CTA scope: enough to hand a buffer back to TMA
 * (a cluster-scope release costs a fence on every arrival). */
__device__ __forceinline__ void mbar_arrive_remote(uint32_t a, int rank)
{
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_addr(a, rank)) : "memory");
}
/* Makes mbarrier initialisations visible to the cluster's other CTAs (before
 * the cluster barrier that precedes their first remote use). */
__device__ __forceinline__ void fence_mbar_init()
{
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/* Tensor-memory-accelerator loads: the box of the tensor map (a
 * __grid_constant__ kernel parameter, see tma.cuh) at element coordinates
 * c0 (innermost), c1 into shared memory at dst (1024-byte aligned for
 * the 128-byte swizzle), counted in bytes on the mbarrier at bar. Elements
 * outside the tensor arrive as zeros (and count). */
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void *map, uint32_t bar, int c0, int c1)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, "
                 "%4}], [%2];\n" ::"r"(dst),
                 "l"(map), "r"(bar), "r"(c0), "r"(c1)
                 : "memory");
}
/* The same with multicast: the box lands at offset dst of the shared memory
 * of every CTA of the cluster whose bit is set in mask, and counts on the
 * mbarrier at offset bar of each of them. */
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const void *map, uint32_t bar, int c0, int c1,
                                                      uint16_t mask)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster "
                 "[%0], [%1, {%3, %4}], [%2], %5;\n" ::"r"(dst),
                 "l"(map), "r"(bar), "r"(c0), "r"(c1), "h"(mask)
                 : "memory");
}
/* TMA store: the box at (c0, c1) of the tensor map from shared memory at src
 * (same layout as the loads); parts outside the tensor are not written.
 * Stores issued by a thread are committed as a bulk group; wait_read<N>
 * waits until at most N groups still read shared memory, wait_all<N> until
 * at most N groups have not completed their writes. */
__device__ __forceinline__ void tma_store_2d(const void *map, uint32_t src, int c0, int c1)
{
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(map),
                 "r"(src), "r"(c0), "r"(c1)
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void bulk_wait_read()
{
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
template <int N> __device__ __forceinline__ void bulk_wait_all()
{
    asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}
/* Fetches a tensor map ahead of its first use. */
__device__ __forceinline__ void tma_prefetch_map(const void *map)
{
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}
/* The global timer, in nanoseconds. */
__device__ __forceinline__ uint64_t global_timer_ns()
{
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

} /* namespace sm90 */

#endif
