/* test_gemm_pdl_cuda.c - programmatic edges into the GEMMs (gemm_pdl_cuda.h,
 * gemm_cuda_set_graph_pdl):
 *   - the probe tells a kernel that waits at a programmatic edge from one
 *     that does not (a stand-in GEMM, gemm_pdl_control, with and without
 *     griddepcontrol.wait), for fp32 and bf16 outputs;
 *   - gemm_cuda_tune probes every algorithm it picks for the bench-8x1024
 *     layer GEMMs (whether cuBLASLt's kernels pass is printed: it decides
 *     speed, not results);
 *   - in a graph captured from a LayerNorm (the engine's PDL kernel) and a
 *     GEMM whose algorithm passed, the edge into the GEMM is made
 *     programmatic, and replays equal the eager run bit for bit, for two
 *     inputs in turn.
 *
 * Without CUDA in the build, or without a usable GPU, every case is skipped
 * with the reason.
 */
#include "gpu_main.h"

#include "core/rng.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GEMM_PDL_TESTS(X)                                                                  \
    X("probe: a stand-in GEMM that waits passes, one that does not fails", test_probe)     \
    X("probe: cuBLASLt's tuned algorithms for the layer GEMMs", test_tuned)                \
    X("graph: the edge into a GEMM that passed turns programmatic, replays exact", test_graph)

#ifdef HSTU_HAVE_CUDA

#include "kernels/dense_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/gemm_pdl_cuda.h"
#include "kernels/pdl_cuda.h"

#include <cuda_runtime_api.h>

static rng g_rng = {0x2545f4914f6cdd1dull};

static bf16_t *dev_rand_bf16(size_t n, float scale)
{
    bf16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++) {
        float v = (rng_uniform(&g_rng) * 2.0f - 1.0f) * scale;
        uint32_t u;
        memcpy(&u, &v, 4);
        h[i] = (bf16_t)(u >> 16);
    }
    bf16_t *d = t_dpoison(n * sizeof *h);
    cudaMemcpy(d, h, n * sizeof *h, cudaMemcpyHostToDevice);
    free(h);
    return d;
}

/* A gemm_cuda with the probe on, and a stream; NULL (a failure recorded) if it cannot be made. */
static gemm_cuda *probing_gemm(cudaStream_t *s)
{
    char why[256] = "";
    gemm_cuda *g = NULL;
    T_CHECK(gemm_cuda_create(32u << 20, &g, why, sizeof why) == 0, "gemm_cuda_create: %s", why);
    if (!g)
        return NULL;
    gemm_cuda_set_graph_pdl(g, 1);
    cudaStreamCreateWithFlags(s, cudaStreamNonBlocking);
    return g;
}

static void test_probe(void)
{
    cudaStream_t s;
    T_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    const int rows = 384, cols = 1024, lda = 1032, c_cols = 200, ldc = 208;
    bf16_t *A = t_dpoison((size_t)rows * lda * 2);
    void *C = t_dpoison((size_t)rows * ldc * 4);
    for (int f32 = 0; f32 < 2; f32++)
        for (int wait = 1; wait >= 0; wait--) {
            gemm_pdl_control ctl = {{A, rows, cols, lda, C, c_cols, ldc, f32}, wait};
            char why[256] = "";
            int rc = gemm_pdl_probe(&ctl.op, gemm_pdl_control_launch, &ctl, s, why, sizeof why);
            printf("    stand-in %s griddepcontrol.wait, %s C: probe %d %s\n", wait ? "with" : "without",
                   f32 ? "fp32" : "bf16", rc, why);
            T_CHECK(rc == wait, "the probe says %d for a kernel %s the wait (%s)", rc, wait ? "with" : "without", why);
        }
    cudaStreamDestroy(s);
}

/* The bench-8x1024 layer GEMMs: uvqk (N 4096, beta 0) and proj (N 1024,
 * beta 1 with a bias), bf16 C, at a returning user's 384 rows and at 3072;
 * proj with an fp32 C too (HSTU_CUDA_RESIDUAL=f32). */
static void test_tuned(void)
{
    char why[256] = "";
    cudaStream_t s;
    gemm_cuda *g = probing_gemm(&s);
    if (!g)
        return;
    const int Mmax = 3072, K = 1024;
    bf16_t *A = dev_rand_bf16((size_t)Mmax * K, 1.0f), *Wu = dev_rand_bf16((size_t)K * 4096, 0.03f),
           *Wp = dev_rand_bf16((size_t)K * 1024, 0.03f), *bias = dev_rand_bf16(1024, 0.1f);
    float *bias32 = t_dpoison(1024 * 4);
    cudaMemset(bias32, 0, 1024 * 4);
    void *C = t_dpoison((size_t)Mmax * 4096 * 4);
    int tunes = 0;
    const int Ms[] = {384, 3072};
    for (int i = 0; i < 2; i++) {
        int M = Ms[i];
        T_CHECK(!gemm_cuda_tune(g, M, 4096, K, A, K, Wu, 4096, 0, 0.0f, C, 0, 4096, GEMM_EPI_NONE, NULL, s, why,
                                sizeof why),
                "tune uvqk at %d: %s", M, why);
        T_CHECK(!gemm_cuda_tune(g, M, 1024, K, A, K, Wp, 1024, 0, 1.0f, C, 0, 1024, GEMM_EPI_BIAS, bias, s, why,
                                sizeof why),
                "tune proj at %d: %s", M, why);
        T_CHECK(!gemm_cuda_tune(g, M, 1024, K, A, K, Wp, 1024, 0, 1.0f, C, 1, 1024, GEMM_EPI_BIAS, bias32, s, why,
                                sizeof why),
                "tune proj (fp32) at %d: %s", M, why);
        tunes += 3;
    }
    int probed, passed, edges;
    gemm_cuda_pdl_counts(g, &probed, &passed, &edges);
    printf("    cuBLASLt: %d of %d tuned algorithms wait at a programmatic edge\n", passed, probed);
    T_CHECK(probed == tunes, "%d tuned algorithms probed, expected %d", probed, tunes);
    T_CHECK(passed >= 0 && passed <= probed && edges == 0, "counts %d %d %d", probed, passed, edges);
    cudaStreamDestroy(s);
    gemm_cuda_destroy(g);
}

static void test_graph(void)
{
    char why[256] = "";
    cudaStream_t s;
    gemm_cuda *g = probing_gemm(&s);
    if (!g)
        return;
    int pdl_was = cuda_pdl_on();
    cuda_pdl_set(1);
    const int M = 384, d = 1024, N = 4096;
    bf16_t *x1 = dev_rand_bf16((size_t)M * d, 2.0f), *x2 = dev_rand_bf16((size_t)M * d, 2.0f);
    bf16_t *x = t_dpoison((size_t)M * d * 2), *xn = t_dpoison((size_t)M * d * 2);
    bf16_t *W = dev_rand_bf16((size_t)d * N, 0.03f);
    bf16_t *out = t_dpoison((size_t)M * N * 2);
    size_t out_bytes = (size_t)M * N * 2;
    unsigned char *want = malloc(out_bytes), *got = malloc(out_bytes);
    cudaMemcpy(x, x1, (size_t)M * d * 2, cudaMemcpyDeviceToDevice);
    T_CHECK(!gemm_cuda_tune(g, M, N, d, xn, d, W, N, 0, 0.0f, out, 0, N, GEMM_EPI_NONE, NULL, s, why, sizeof why),
            "tune: %s", why);
    int probed, passed, edges;
    gemm_cuda_pdl_counts(g, &probed, &passed, &edges);

    /* LN(x) -> xn, then out = xn @ W: as a layer's first two kernels */
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    T_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "capture");
    int lrc = layernorm_bf16_cuda(M, d, x, d, NULL, NULL, 1e-5f, xn, d, s);
    int grc = gemm_cuda_run(g, M, N, d, xn, d, W, N, 0, 0.0f, out, 0, N, GEMM_EPI_NONE, NULL, s, why, sizeof why);
    T_CHECK(cudaStreamEndCapture(s, &graph) == cudaSuccess && !lrc && !grc, "capture: %s", why);
    int changed = gemm_cuda_graph_edges(g, graph);
    printf("    the tuned algorithm %s; edges changed: %d\n", passed ? "waits" : "does not wait", changed);
    T_CHECK(changed == (passed ? 1 : 0), "%d edges changed, the algorithm %s", changed,
            passed ? "waits" : "does not wait");
    T_CHECK(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess, "instantiate");

    for (int round = 0; round < 2 && exec; round++) {
        cudaMemcpy(x, round ? x2 : x1, (size_t)M * d * 2, cudaMemcpyDeviceToDevice);
        /* eager */
        layernorm_bf16_cuda(M, d, x, d, NULL, NULL, 1e-5f, xn, d, s);
        gemm_cuda_run(g, M, N, d, xn, d, W, N, 0, 0.0f, out, 0, N, GEMM_EPI_NONE, NULL, s, why, sizeof why);
        cudaStreamSynchronize(s);
        cudaMemcpy(want, out, out_bytes, cudaMemcpyDeviceToHost);
        for (int rep = 0; rep < 3; rep++) {
            cudaMemsetAsync(out, 0xff, out_bytes, s);
            cudaMemsetAsync(xn, 0xff, (size_t)M * d * 2, s);
            T_CHECK(cudaGraphLaunch(exec, s) == cudaSuccess, "launch");
            cudaStreamSynchronize(s);
            cudaMemcpy(got, out, out_bytes, cudaMemcpyDeviceToHost);
            T_CHECK(!memcmp(want, got, out_bytes), "input %d, replay %d differs from the eager run", round, rep);
        }
    }
    T_CHECK(cudaGetLastError() == cudaSuccess, "CUDA error");
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    free(want);
    free(got);
    cudaStreamDestroy(s);
    gemm_cuda_destroy(g);
    cuda_pdl_set(pdl_was);
}

#endif /* HSTU_HAVE_CUDA */

T_GPU_MAIN(GEMM_PDL_TESTS)
