/* safetensors.h - reader and writer of the safetensors checkpoint format.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON header
 * ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 * optional "__metadata__": {str: str}}), then the raw little-endian data.
 * Offsets are relative to the start of the data section.
 *
 * The reader trusts nothing: header length within the file, JSON that parses,
 * no duplicate names, known dtypes (F32, BF16, F16), shapes whose byte size
 * does not overflow and equals end - begin, offsets inside the data section,
 * tensors neither overlapping nor leaving holes. A hostile file is an error
 * with a message naming the tensor, never a crash or an out-of-bounds read.
 */
#ifndef HSTU_CORE_SAFETENSORS_H
#define HSTU_CORE_SAFETENSORS_H

#include "hstu.h"

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_NAME_MAX 256
#define ST_HEADER_MAX 100000000u /* the format's own limit (huggingface/safetensors) */

typedef enum st_dtype { ST_F32 = 0, ST_BF16, ST_F16 } st_dtype;

typedef struct st_tensor {
    char name[ST_NAME_MAX];
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t begin, end;  /* byte offsets inside the data section */
} st_tensor;

typedef struct st_file {
    const uint8_t *buf;   /* whole file (mapped or borrowed) */
    size_t size;
    const uint8_t *data;  /* data section */
    size_t data_size;
    int n_tensors;
    st_tensor *tensors;   /* heap, sorted by begin */
    void *map;            /* non-NULL when st_open mapped the file */
} st_file;

/* Maps and validates a file. On error f is left closed (zeroed) and err
 * names the path: HSTU_ERR_IO when it cannot be opened, is not a regular file
 * or cannot be mapped; HSTU_ERR_FORMAT when it is shorter than 8 bytes or any
 * rule above is broken. The mapping is private and read-only: the file must
 * not be truncated while f is open (st_write replaces files by rename, which
 * is safe). */
hstu_status st_open(const char *path, st_file *f, hstu_error *err);
/* Validates a buffer in memory (borrowed; must outlive f). On error f is
 * left closed and the status is HSTU_ERR_FORMAT (HSTU_ERR_NOMEM when the
 * tensor table cannot be allocated). On success every tensor lies inside the
 * data section, f->tensors is sorted by begin and tiles it exactly, and the
 * product of a tensor's non-zero dims times its element size is at most
 * INT64_MAX (so no partial product of its shape can overflow). */
hstu_status st_parse(const uint8_t *buf, size_t size, st_file *f, hstu_error *err);
/* Releases f; accepts a zeroed or closed f. */
void st_close(st_file *f);

/* The tensor called name, or NULL (linear search). */
const st_tensor *st_find(const st_file *f, const char *name);
size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t);
int64_t st_numel(const st_tensor *t);

/* Converts t (a tensor of f) to fp32 into dst[n]; n must equal st_numel(t),
 * else HSTU_ERR_ARG. dst may be NULL when n is 0. The data need not be
 * aligned. */
hstu_status st_read_f32(const st_file *f, const st_tensor *t, float *dst, size_t n, hstu_error *err);

/* One tensor to write: fp32 data converted to the file's dtype. */
typedef struct st_write_tensor {
    const char *name;
    const float *data;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} st_write_tensor;

/* Writes path atomically (path.tmp, fsync, rename). bf16 and f16 round to
 * nearest even. Tensors are stored contiguously in the order given, the
 * header padded with spaces to a multiple of 8 bytes. HSTU_ERR_ARG for a bad
 * tensor (NULL, duplicate, reserved "__metadata__", too long or non-UTF-8
 * name, bad ndim or dim, NULL data with elements); HSTU_ERR_IO when the file
 * cannot be written or renamed, in which case path.tmp is removed and an
 * existing path is left as it was. */
hstu_status st_write(const char *path, const st_write_tensor *ts, int n, st_dtype dtype,
                     hstu_error *err);

/* Scalar conversions (round to nearest even; NaN stays NaN). */
uint16_t st_f32_to_bf16(float x);
float st_bf16_to_f32(uint16_t x);
uint16_t st_f32_to_f16(float x);
float st_f16_to_f32(uint16_t x);

#endif
