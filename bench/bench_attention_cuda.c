/* bench_attention_cuda.c - times attn_fwd_cuda on the bench-8x1024 shape.
 *
 * One layer's attention of the bench-8x1024 preset (H 4, Dqk = Dv = 256,
 * N 4096, no rab, nothing cached) for 1 and 8 users with 1024, 2048 and
 * 4096 history tokens plus 256 candidates each, and the same at D 128 and
 * 64 for 8 users of 4096, every kernel. q/k/v sit in
 * [u|v|q|k] rows as the engine lays them out. Each timing is the median of
 * 30 back-to-back launches (CUDA events between them) after 3 warm-ups.
 * Rates count useful work only: visible (i, j) pairs * H * 2 * (Dqk + Dv);
 * masked pairs do not count. Beside them: cuBLAS's bf16 GEMM on
 * 8192 x 8192 x 8192 (fp32 accumulation), the ceiling of the tensor cores.
 * On the 8-user, 4096-token shapes every kernel's output is compared with
 * the mma.sync kernel's (tests/test_attention_cuda.c checks them all
 * against the CPU reference; here they should agree to bf16 rounding).
 * Arguments name the kernels to time (mma, wgmma, ws, tma: ws with K and
 * V loaded by TMA, the default at D 256; default all).
 *
 * Build (from the repository root, after make or the same nvcc line):
 *   gcc -O2 -std=c17 -D_GNU_SOURCE -Iinclude -Isrc -DHSTU_HAVE_CUDA \
 *     -I/usr/local/cuda/include bench/bench_attention_cuda.c \
 *     build/src/kernels/attention.o build/src/kernels/pdl.o -L/usr/local/cuda/lib64 \
 *     -lcublas -lcudart_static -ldl -lrt -lpthread -lstdc++ -lm \
 *     -o build/bench_attention_cuda
 */
#include "core/rng.h"
#include "kernels/attention_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { H = 4, D = 256, CAND = 256, MAXB = 8, MAXHIST = 4096, N_SCALE = 4096, REPS = 30, WARM = 3 };

#define CHECK(call)                                                                          \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess) {                                                             \
            fprintf(stderr, "bench_attention_cuda: %s: %s (line %d)\n", #call,               \
                    cudaGetErrorString(e_), __LINE__);                                       \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static uint16_t f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float bf2f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median over REPS of the time between events around back-to-back launches. */
static float time_attention(const attn_cuda_params *p, int kind, cudaStream_t s)
{
    cudaEvent_t ev[REPS + 1];
    float ms[REPS];
    attn_cuda_force_kernel(kind);
    for (int i = 0; i < WARM; i++)
        CHECK((cudaError_t)attn_fwd_cuda(p, s));
    for (int i = 0; i <= REPS; i++)
        CHECK(cudaEventCreate(&ev[i]));
    CHECK(cudaEventRecord(ev[0], s));
    for (int i = 0; i < REPS; i++) {
        CHECK((cudaError_t)attn_fwd_cuda(p, s));
        CHECK(cudaEventRecord(ev[i + 1], s));
    }
    CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < REPS; i++)
        CHECK(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
    for (int i = 0; i <= REPS; i++)
        cudaEventDestroy(ev[i]);
    attn_cuda_force_kernel(ATTN_CUDA_KERNEL_AUTO);
    qsort(ms, REPS, sizeof ms[0], cmp_float);
    return ms[REPS / 2];
}

static double gemm_tflops(cudaStream_t s)
{
    const int n = 8192;
    size_t bytes = (size_t)n * n * 2;
    uint16_t *h = malloc(bytes);
    rng r = {7};
    for (size_t i = 0; i < (size_t)n * n; i++)
        h[i] = f2bf(rng_range(&r, -1.0f, 1.0f));
    void *a, *b, *c;
    CHECK(cudaMalloc(&a, bytes));
    CHECK(cudaMalloc(&b, bytes));
    CHECK(cudaMalloc(&c, bytes));
    CHECK(cudaMemcpy(a, h, bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(b, h, bytes, cudaMemcpyHostToDevice));
    free(h);
    cublasHandle_t hd;
    if (cublasCreate(&hd) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "bench_attention_cuda: cublasCreate failed\n");
        exit(1);
    }
    cublasSetStream(hd, s);
    const float one = 1.0f, zero = 0.0f;
    cudaEvent_t ev[REPS + 1];
    float ms[REPS];
    for (int i = 0; i <= REPS; i++)
        CHECK(cudaEventCreate(&ev[i]));
    for (int i = -WARM; i < REPS; i++) {
        if (i == 0)
            CHECK(cudaEventRecord(ev[0], s));
        cublasStatus_t st = cublasGemmEx(hd, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b,
                                         CUDA_R_16BF, n, &zero, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "bench_attention_cuda: cublasGemmEx failed (%d)\n", (int)st);
            exit(1);
        }
        if (i >= 0)
            CHECK(cudaEventRecord(ev[i + 1], s));
    }
    CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < REPS; i++)
        CHECK(cudaEventElapsedTime(&ms[i], ev[i], ev[i + 1]));
    qsort(ms, REPS, sizeof ms[0], cmp_float);
    for (int i = 0; i <= REPS; i++)
        cudaEventDestroy(ev[i]);
    cublasDestroy(hd);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return 2.0 * n * n * (double)n / (ms[REPS / 2] * 1e-3) / 1e12;
}

/* Max |a - b| over n bf16 values, and max |a|; counts non-finite values. */
static void compare_bf16(const uint16_t *a, const uint16_t *b, size_t n, double *maxdiff, double *maxabs,
                         long *nonfinite)
{
    *maxdiff = *maxabs = 0;
    *nonfinite = 0;
    for (size_t i = 0; i < n; i++) {
        double x = bf2f(a[i]), y = bf2f(b[i]);
        if (!isfinite(x) || !isfinite(y)) {
            (*nonfinite)++;
            continue;
        }
        *maxdiff = fmax(*maxdiff, fabs(x - y));
        *maxabs = fmax(*maxabs, fabs(x));
    }
}

int main(int argc, char **argv)
{
    char why[256];
    if (!attn_cuda_device_present(why, sizeof why)) {
        printf("bench_attention_cuda: %s\n", why);
        return 0;
    }
    struct cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

    static const int kinds[] = {ATTN_CUDA_KERNEL_MMA, ATTN_CUDA_KERNEL_WGMMA, ATTN_CUDA_KERNEL_WS,
                                ATTN_CUDA_KERNEL_TMA};
    static const char *const names[] = {"mma.sync", "wgmma", "ws", "ws + TMA"};
    static const char *const keys[] = {"mma", "wgmma", "ws", "tma"};
    enum { NK = 4 };
    int on[NK];
    for (int k = 0; k < NK; k++) {
        on[k] = argc < 2;
        for (int i = 1; i < argc; i++)
            on[k] |= strcmp(argv[i], keys[k]) == 0;
    }
    /* users, history tokens, head width: bench-8x1024's D 256 at every
     * size, and D 128 and 64 (other presets' widths) at the largest. */
    static const int shapes[][3] = {{1, 1024, 256}, {1, 2048, 256}, {1, 4096, 256}, {8, 1024, 256},
                                    {8, 2048, 256}, {8, 4096, 256}, {8, 4096, 128}, {8, 4096, 64}};
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);

    const int ld = 4 * H * D; /* [u | v | q | k] rows of the widest heads */
    const size_t rows = (size_t)MAXB * (MAXHIST + CAND);
    const size_t n = rows * ld, no = rows * H * D;
    uint16_t *h = malloc(n * sizeof(uint16_t));
    rng r = {1};
    for (size_t i = 0; i < n; i++)
        h[i] = f2bf(rng_range(&r, -1.0f, 1.0f));
    uint16_t *d_x, *d_out, *d_ref;
    attn_cuda_seq *d_seqs;
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    CHECK(cudaMalloc((void **)&d_x, n * sizeof(uint16_t)));
    CHECK(cudaMalloc((void **)&d_out, no * sizeof(uint16_t)));
    CHECK(cudaMalloc((void **)&d_ref, no * sizeof(uint16_t)));
    CHECK(cudaMalloc((void **)&d_seqs, MAXB * sizeof(attn_cuda_seq)));
    CHECK(cudaMemcpy(d_x, h, n * sizeof(uint16_t), cudaMemcpyHostToDevice));
    free(h);
    uint16_t *o_ref = malloc(no * sizeof(uint16_t)), *o_k = malloc(no * sizeof(uint16_t));

    double gemm = gemm_tflops(s);

    char table[8192];
    int tl = snprintf(table, sizeof table, "%-5s %-6s %-4s %-11s %9s %9s %7s  %s\n", "users", "hist", "D", "kernel",
                      "ms", "TFLOP/s", "of GEMM", "max|diff| vs mma.sync");
    for (int si = 0; si < nshapes; si++) {
        const int B = shapes[si][0], hist = shapes[si][1], Dh = shapes[si][2];
        const bool check = B == 8 && hist == 4096; /* compare kernels on the largest shapes */
        attn_cuda_seq seqs[MAXB];
        memset(seqs, 0, sizeof seqs);
        for (int b = 0; b < B; b++) {
            seqs[b].hist = hist;
            seqs[b].cand = CAND;
            seqs[b].q0 = b * (hist + CAND);
        }
        CHECK(cudaMemcpy(d_seqs, seqs, sizeof seqs, cudaMemcpyHostToDevice));
        attn_cuda_params p;
        memset(&p, 0, sizeof p);
        p.B = B;
        p.H = H;
        p.Dqk = Dh;
        p.Dv = Dh;
        p.seqs = d_seqs;
        p.max_rows = hist + CAND;
        p.v = d_x + (size_t)H * Dh;
        p.q = d_x + (size_t)2 * H * Dh;
        p.k = d_x + (size_t)3 * H * Dh;
        p.ld_qkv = ld;
        p.n_rows = (int)rows;
        p.page_size = 1;
        p.alpha = 1.0f / sqrtf((float)Dh);
        p.N = N_SCALE;
        p.ld_out = H * Dh;
        const size_t nout = (size_t)B * (hist + CAND) * H * Dh;
        if (check) {
            p.out = d_ref;
            attn_cuda_force_kernel(ATTN_CUDA_KERNEL_MMA);
            CHECK((cudaError_t)attn_fwd_cuda(&p, s));
            attn_cuda_force_kernel(ATTN_CUDA_KERNEL_AUTO);
            CHECK(cudaStreamSynchronize(s));
            CHECK(cudaMemcpy(o_ref, d_ref, nout * 2, cudaMemcpyDeviceToHost));
        }
        p.out = d_out;
        double pairs = (double)hist * (hist + 1) / 2 + (double)CAND * (hist + 1);
        double flops = pairs * B * H * 2.0 * (Dh + Dh);
        for (int k = 0; k < NK; k++) {
            if (!on[k])
                continue;
            CHECK(cudaMemset(d_out, 0xFF, nout * 2));
            float ms = time_attention(&p, kinds[k], s);
            double tf = flops / (ms * 1e-3) / 1e12;
            char cmp[96] = "";
            if (check) {
                double md, mx;
                long bad;
                CHECK(cudaMemcpy(o_k, d_out, nout * 2, cudaMemcpyDeviceToHost));
                compare_bf16(o_k, o_ref, nout, &md, &mx, &bad);
                snprintf(cmp, sizeof cmp, "%.3g (max|out| %.3g, %ld NaN)", md, mx, bad);
            }
            tl += snprintf(table + tl, sizeof table - tl, "%-5d %-6d %-4d %-11s %9.3f %9.1f %6.0f%%  %s\n", B, hist,
                           Dh, names[k], ms, tf, 100.0 * tf / gemm, cmp);
        }
    }
    printf("bf16 GEMM 8192^3 (cuBLAS): %.1f TFLOP/s\n", gemm);
    printf("%s", table);
    free(o_ref);
    free(o_k);
    cudaFree(d_x);
    cudaFree(d_out);
    cudaFree(d_ref);
    cudaFree(d_seqs);
    cudaStreamDestroy(s);
    return 0;
}
