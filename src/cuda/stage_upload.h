/* stage_upload.h - the CUDA backend's per-batch metadata, host to device, as
 * one kernel.
 *
 * The backend packs a batch's metadata (token rows and positions, sequence
 * records, page tables, append slots, ...) into pinned host memory, in a few
 * regions at offsets the layers' kernels address on the device mirror. Four
 * or five cudaMemcpyAsync calls moved those regions before: each cost the
 * host 2-3 us and the GPU a copy of its own, all before the first kernel
 * could start. This kernel moves every region in one launch instead, reading
 * the host buffer directly (pinned memory is mapped under unified
 * addressing). The region list itself sits in that host memory and is read
 * when the kernel runs, so a CUDA graph can hold the launch (the first node
 * of a bucket's graph): the host writes the list and launches the graph, and
 * the copy needs no call of its own.
 */
#ifndef HSTU_CUDA_STAGE_UPLOAD_H
#define HSTU_CUDA_STAGE_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STAGE_UPLOAD_MAX 7 /* the list is then 64 bytes: four 16-byte loads */

/* What to copy: for i < n, bytes [off, off + bytes) of the host buffer to
 * the same offsets of the device buffer. Offsets are multiples of 16; a
 * region's length is copied rounded up to 16 bytes (the regions are 16-byte
 * aligned, so the rounding never reaches the next one). */
typedef struct stage_upload_list {
    uint32_t n, pad;
    struct {
        uint32_t off, bytes;
    } r[STAGE_UPLOAD_MAX];
} stage_upload_list;

/* Copies the regions of *list (pinned host memory, 16-byte aligned, read
 * by the kernel when it runs) from `host` (pinned, mapped) to `dev`, with `ctas` CTAs of 256
 * threads: one round trip over PCIe moves 64 KiB per CTA (four 16-byte
 * loads in flight per thread). Launched on `stream` with programmatic
 * dependent launch (pdl_cuda.h) when that is on. Returns a cudaError_t. */
int stage_upload_cuda(const stage_upload_list *list, const char *host, char *dev, int ctas, void *stream);

/* CTAs that move `bytes` in one round trip each, at least 1, at most `cap`. */
int stage_upload_ctas(size_t bytes, int cap);

#ifdef __cplusplus
}
#endif
#endif
