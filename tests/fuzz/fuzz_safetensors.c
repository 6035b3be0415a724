/* fuzz_safetensors.c - libFuzzer target for the safetensors reader.
 *
 * Each input is handed to st_parse as a whole file. When it is accepted, the
 * target checks the promises st_parse makes (every tensor inside the data
 * section, sorted by begin, tiling it exactly, byte size equal to numel times
 * the element size) and aborts if one is broken, then decodes every tensor of
 * at most FUZZ_MAX_NUMEL elements with st_read_f32. Rejections must come with
 * HSTU_ERR_FORMAT and a message. Built with -fsanitize=fuzzer,address,undefined
 * (make fuzz); run by tests/fuzz/run_fuzz.sh.
 */
#include "core/safetensors.h"

#include <stdio.h>
#include <stdlib.h>

/* Larger tensors are skipped to keep memory bounded (4 MiB of floats). */
#define FUZZ_MAX_NUMEL (1 << 20)

static void broken(const char *what, const st_tensor *t)
{
    fprintf(stderr, "fuzz_safetensors: accepted file breaks a promise: %s (tensor \"%s\")\n", what,
            t ? t->name : "-");
    abort();
}

static void check_promises(const st_file *f, size_t size)
{
    if (f->size != size || f->data < f->buf || (size_t)(f->data - f->buf) + f->data_size != size)
        broken("data section outside the buffer", NULL);
    size_t pos = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->begin != pos || t->end < t->begin || t->end > f->data_size)
            broken("tensors do not tile the data section", t);
        if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
            broken("ndim out of range", t);
        int64_t n = st_numel(t);
        if (n < 0 || (uint64_t)n * st_dtype_size(t->dtype) != t->end - t->begin)
            broken("byte size is not numel times element size", t);
        if (st_find(f, t->name) == NULL)
            broken("st_find cannot find an accepted tensor", t);
        pos = t->end;
    }
    if (pos != f->data_size)
        broken("tensors do not cover the data section", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file f;
    hstu_error err = {0};
    if (st_parse(data, size, &f, &err) != HSTU_OK) {
        if (err.status != HSTU_ERR_FORMAT || err.msg[0] == '\0')
            broken("a rejection without HSTU_ERR_FORMAT and a message", NULL);
        st_close(&f);
        return 0;
    }
    check_promises(&f, size);
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        int64_t n = st_numel(t);
        if (n > FUZZ_MAX_NUMEL)
            continue;
        float *dst = malloc((size_t)(n > 0 ? n : 1) * sizeof *dst);
        if (!dst)
            break;
        if (st_read_f32(&f, t, dst, (size_t)n, &err) != HSTU_OK)
            broken("st_read_f32 failed on an accepted tensor", t);
        free(dst);
    }
    st_close(&f);
    return 0;
}
