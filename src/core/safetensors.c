/* safetensors.c - reader and writer of the safetensors checkpoint format.
 *
 * Reading: st_open maps the file read-only and hands the bytes to st_parse,
 * which validates the whole header before anything is used. The header JSON
 * is parsed by jansson (duplicate keys rejected) into one st_tensor per entry;
 * each entry must have exactly dtype, shape and data_offsets, with sizes that
 * cannot overflow and that agree with each other. The entries are then sorted
 * by begin and must tile the data section exactly: no overlap, no hole, the
 * last one ending at the end of the file (the format requires the buffer to
 * be fully indexed). After st_parse succeeds every tensor lies inside the
 * buffer, so st_read_f32 needs no further checks; it decodes little-endian
 * bytes one element at a time (the data need not be aligned).
 *
 * Writing: st_write checks its arguments, builds the header with jansson,
 * pads it with spaces to a multiple of 8 bytes (as the reference
 * implementation does, so the data section starts 8-aligned), converts the
 * fp32 inputs in small chunks and writes path.tmp, which is flushed, fsynced
 * and renamed over path. Any failure removes the temporary file and leaves an
 * existing path untouched.
 *
 * Conversions round to nearest even, keep NaN a NaN (quiet, sign kept) and
 * turn overflow into infinity; f16 handles subnormals both ways.
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* mmap, fsync, O_CLOEXEC, strdup */
#endif
#include "core/safetensors.h"
#include "core/status.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Room for a name or dtype quoted into an error message: at most ~120
 * visible bytes, each escaped one taking 4, plus "..." and the NUL. */
#define SHOW_MAX 512
#define SHOW_VISIBLE 120
/* Room for "[d0, d1, ...]" with ST_MAX_DIMS 20-digit dims. */
#define SHAPE_STR_MAX (ST_MAX_DIMS * 22 + 3)
/* Elements converted per write call: 16 KiB of F32 on the stack. */
#define WRITE_CHUNK 4096

/* ---- scalar conversions ------------------------------------------------ */

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t st_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: truncating could give inf */
        return (uint16_t)((u >> 16) | 0x0040u);
    /* Round to nearest even on the 16 dropped bits; a carry out of the
     * mantissa bumps the exponent, and out of the largest finite gives inf. */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float st_bf16_to_f32(uint16_t x) { return f32_from_bits((uint32_t)x << 16); }

uint16_t st_f32_to_f16(float x)
{
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;

    if (a > 0x7F800000u) /* NaN: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    if (a >= 0x47800000u) /* >= 65536 (or inf): past the rounding range */
        return (uint16_t)(sign | 0x7C00u);
    if (a >= 0x38800000u) { /* >= 2^-14: a normal f16, or rounds up to inf */
        uint32_t h = ((a >> 23) - 112u) << 10 | ((a >> 13) & 0x3FFu);
        uint32_t rest = a & 0x1FFFu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
            h++; /* a carry into the exponent is the right answer, up to inf */
        return (uint16_t)(sign | h);
    }
    if (a <= 0x33000000u) /* <= 2^-25: zero (2^-25 itself ties to even 0) */
        return sign;
    /* Subnormal: value = k * 2^-24 with k = m * 2^(e - 126), e in [102, 112]. */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - e; /* 14..24 */
    uint32_t k = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (k & 1u)))
        k++; /* k == 0x400 is the smallest normal, encoded correctly */
    return (uint16_t)(sign | k);
}

float st_f16_to_f32(uint16_t x)
{
    uint32_t sign = (uint32_t)(x & 0x8000u) << 16;
    uint32_t e = (x >> 10) & 0x1Fu;
    uint32_t m = x & 0x3FFu;
    if (e == 0x1Fu) /* inf or NaN (payload kept) */
        return f32_from_bits(sign | 0x7F800000u | (m << 13));
    if (e != 0)
        return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
    if (m == 0)
        return f32_from_bits(sign);
    /* Subnormal m * 2^-24: normalise so the leading 1 sits at bit 10. */
    e = 113u;
    while (!(m & 0x400u)) {
        m <<= 1;
        e--;
    }
    return f32_from_bits(sign | (e << 23) | ((m & 0x3FFu) << 13));
}

/* ---- small helpers ------------------------------------------------------ */

size_t st_dtype_size(st_dtype t)
{
    switch (t) {
    case ST_F32: return 4;
    case ST_BF16: return 2;
    case ST_F16: return 2;
    }
    return 0;
}

const char *st_dtype_name(st_dtype t)
{
    switch (t) {
    case ST_F32: return "F32";
    case ST_BF16: return "BF16";
    case ST_F16: return "F16";
    }
    return "?";
}

int64_t st_numel(const st_tensor *t)
{
    int64_t n = 1; /* a scalar (ndim 0) has one element */
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i]; /* validated: cannot overflow */
    return n;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Copies s into dst[SHOW_MAX] for an error message: control bytes, quotes and
 * backslashes escaped as \xNN, cut after SHOW_VISIBLE bytes (never inside a
 * UTF-8 sequence) with "..." appended. Returns dst. */
static const char *show(char *dst, const char *s)
{
    size_t o = 0, i = 0;
    for (; s[i] && i < SHOW_VISIBLE; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F || c == '"' || c == '\\')
            o += (size_t)snprintf(dst + o, SHOW_MAX - o, "\\x%02X", c);
        else
            dst[o++] = (char)c;
    }
    if (s[i]) {
        while (o > 0 && i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) {
            o--; /* back off to the start of the cut UTF-8 sequence */
            i--;
        }
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}

/* Writes "[d0, d1, ...]" into dst[SHAPE_STR_MAX]. */
static const char *shape_str(char *dst, const int64_t *shape, int ndim)
{
    size_t o = 0;
    dst[o++] = '[';
    for (int i = 0; i < ndim; i++)
        o += (size_t)snprintf(dst + o, SHAPE_STR_MAX - o, "%s%lld", i ? ", " : "",
                              (long long)shape[i]);
    snprintf(dst + o, SHAPE_STR_MAX - o, "]");
    return dst;
}

/* Element count of shape, or -1 when the product of its non-zero dims times
 * elem_size passes INT64_MAX. Bounding the non-zero dims (not just the true
 * product, which a zero dim makes 0) means no partial product a caller forms,
 * in any order, can overflow. */
static int64_t checked_numel(const int64_t *shape, int ndim, size_t elem_size)
{
    uint64_t limit = (uint64_t)INT64_MAX / elem_size;
    if (limit > SIZE_MAX / elem_size)
        limit = SIZE_MAX / elem_size;
    uint64_t prod = 1;
    bool zero = false;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d == 0) {
            zero = true;
            continue;
        }
        if (prod > limit / d)
            return -1;
        prod *= d;
    }
    return zero ? 0 : (int64_t)prod;
}

/* ---- reader ------------------------------------------------------------- */

/* A JSON value as a non-negative integer, or false. */
static bool json_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Describes a JSON value that should have been a non-negative integer. */
static const char *json_kind(const json_t *v, char *buf, size_t cap)
{
    if (json_is_integer(v))
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, cap, "the real number %g", json_real_value(v));
    else if (json_is_string(v))
        snprintf(buf, cap, "a string");
    else if (json_is_array(v))
        snprintf(buf, cap, "an array");
    else if (json_is_object(v))
        snprintf(buf, cap, "an object");
    else
        snprintf(buf, cap, "%s", json_is_null(v) ? "null" : "a boolean");
    return buf;
}

static hstu_status parse_metadata(const json_t *meta, hstu_error *err)
{
    const char *key;
    json_t *v;
    char q[SHOW_MAX];
    if (!json_is_object(meta))
        return hstu_fail(err, HSTU_ERR_FORMAT, "\"__metadata__\" is not a JSON object");
    json_object_foreach((json_t *)meta, key, v) {
        if (!json_is_string(v))
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "\"__metadata__\" value \"%s\" is not a string", show(q, key));
    }
    return HSTU_OK;
}

/* Validates one header entry (everything that does not involve other
 * tensors) and fills t. */
static hstu_status parse_tensor(const char *name, const json_t *entry, size_t data_size,
                                st_tensor *t, hstu_error *err)
{
    char q[SHOW_MAX], q2[SHOW_MAX], kind[64], dims[SHAPE_STR_MAX];
    const char *key;
    json_t *v;

    size_t len = strlen(name);
    if (len >= ST_NAME_MAX)
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": name is %zu bytes, longer than %d",
                         show(q, name), len, ST_NAME_MAX - 1);
    show(q, name);
    memcpy(t->name, name, len + 1);
    if (!json_is_object(entry))
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": entry is not a JSON object", q);
    json_object_foreach((json_t *)entry, key, v) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": unknown field \"%s\"", q,
                             show(q2, key));
    }

    /* dtype */
    const json_t *dt = json_object_get(entry, "dtype");
    if (!dt)
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": missing \"dtype\"", q);
    if (!json_is_string(dt))
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": dtype is not a string", q);
    const char *ds = json_string_value(dt);
    if (!strcmp(ds, "F32"))
        t->dtype = ST_F32;
    else if (!strcmp(ds, "BF16"))
        t->dtype = ST_BF16;
    else if (!strcmp(ds, "F16"))
        t->dtype = ST_F16;
    else
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "tensor \"%s\": unsupported dtype \"%s\" (F32, BF16 and F16 are supported)",
                         q, show(q2, ds));

    /* shape */
    const json_t *sh = json_object_get(entry, "shape");
    if (!sh)
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": missing \"shape\"", q);
    if (!json_is_array(sh))
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": shape is not an array", q);
    size_t ndim = json_array_size(sh);
    if (ndim > ST_MAX_DIMS)
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": shape has %zu dims, more than %d",
                         q, ndim, ST_MAX_DIMS);
    t->ndim = (int)ndim;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        const json_t *dv = json_array_get(sh, i);
        if (!json_uint(dv, &d))
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "tensor \"%s\": shape dim %zu is %s, not a non-negative integer", q, i,
                             json_kind(dv, kind, sizeof kind));
        t->shape[i] = (int64_t)d; /* json_int_t is signed: d <= INT64_MAX */
    }
    size_t esize = st_dtype_size(t->dtype);
    int64_t numel = checked_numel(t->shape, t->ndim, esize);
    if (numel < 0)
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "tensor \"%s\": shape %s of %s overflows a 64-bit byte count", q,
                         shape_str(dims, t->shape, t->ndim), ds);

    /* data_offsets */
    const json_t *off = json_object_get(entry, "data_offsets");
    if (!off)
        return hstu_fail(err, HSTU_ERR_FORMAT, "tensor \"%s\": missing \"data_offsets\"", q);
    if (!json_is_array(off) || json_array_size(off) != 2)
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "tensor \"%s\": data_offsets is not an array of 2 integers", q);
    uint64_t be[2];
    for (size_t i = 0; i < 2; i++) {
        const json_t *ov = json_array_get(off, i);
        if (!json_uint(ov, &be[i]))
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "tensor \"%s\": data_offsets[%zu] is %s, not a non-negative integer",
                             q, i, json_kind(ov, kind, sizeof kind));
    }
    if (be[0] > be[1])
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "tensor \"%s\": data_offsets [%llu, %llu] are reversed (begin > end)", q,
                         (unsigned long long)be[0], (unsigned long long)be[1]);
    if (be[1] > (uint64_t)data_size)
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "tensor \"%s\": data_offsets [%llu, %llu] run past the end of the "
                         "%zu-byte data section",
                         q, (unsigned long long)be[0], (unsigned long long)be[1], data_size);
    t->begin = (size_t)be[0];
    t->end = (size_t)be[1];
    uint64_t need = (uint64_t)numel * esize; /* checked_numel bounded it */
    if (need != be[1] - be[0])
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "tensor \"%s\": data_offsets [%zu, %zu] hold %zu bytes but shape %s of %s "
                         "needs %llu",
                         q, t->begin, t->end, t->end - t->begin, shape_str(dims, t->shape, t->ndim),
                         ds, (unsigned long long)need);
    return HSTU_OK;
}

static int cmp_begin(const void *pa, const void *pb)
{
    const st_tensor *a = pa, *b = pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* Checks that the tensors, sorted by begin, tile [0, data_size) exactly. */
static hstu_status check_tiling(const st_tensor *ts, int n, size_t data_size, hstu_error *err)
{
    char q[SHOW_MAX], q2[SHOW_MAX];
    size_t pos = 0; /* end of the tensors seen so far */
    for (int i = 0; i < n; i++) {
        const st_tensor *t = &ts[i];
        if (t->begin < pos) /* ts[i-1] ends at pos: the one overlapped */
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "tensor \"%s\": data_offsets [%zu, %zu] overlap tensor \"%s\" [%zu, %zu]",
                             show(q, t->name), t->begin, t->end, show(q2, ts[i - 1].name),
                             ts[i - 1].begin, ts[i - 1].end);
        if (t->begin > pos) {
            if (i == 0)
                return hstu_fail(err, HSTU_ERR_FORMAT,
                                 "tensor \"%s\": data_offsets [%zu, %zu] leave a hole of %zu bytes "
                                 "at the start of the data section",
                                 show(q, t->name), t->begin, t->end, t->begin);
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "tensor \"%s\": data_offsets [%zu, %zu] leave a hole of %zu bytes after "
                             "tensor \"%s\", which ends at %zu",
                             show(q, t->name), t->begin, t->end, t->begin - pos,
                             show(q2, ts[i - 1].name), pos);
        }
        pos = t->end;
    }
    if (pos != data_size) {
        if (n == 0)
            return hstu_fail(err, HSTU_ERR_FORMAT,
                             "the header lists no tensors but the data section holds %zu bytes "
                             "(a hole: every byte must belong to a tensor)",
                             data_size);
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "the data section holds %zu bytes but the last tensor \"%s\" ends at %zu "
                         "(a hole of %zu bytes that belong to no tensor)",
                         data_size, show(q, ts[n - 1].name), pos, data_size - pos);
    }
    return HSTU_OK;
}

hstu_status st_parse(const uint8_t *buf, size_t size, st_file *f, hstu_error *err)
{
    hstu_status st = HSTU_OK;
    st_tensor *ts = NULL;
    memset(f, 0, sizeof *f);
    if (!buf && size)
        return hstu_fail(err, HSTU_ERR_ARG, "st_parse: NULL buffer of %zu bytes", size);
    if (size < 8)
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "file is %zu bytes, shorter than the 8-byte header length", size);
    uint64_t hlen = le64(buf);
    if (hlen == 0)
        return hstu_fail(err, HSTU_ERR_FORMAT, "header length is 0 (the header must be a JSON object)");
    if (hlen > ST_HEADER_MAX)
        return hstu_fail(err, HSTU_ERR_FORMAT, "header length %llu exceeds the %u-byte limit",
                         (unsigned long long)hlen, (unsigned)ST_HEADER_MAX);
    if (hlen > (uint64_t)(size - 8))
        return hstu_fail(err, HSTU_ERR_FORMAT,
                         "header length %llu exceeds the %zu bytes of the file after it",
                         (unsigned long long)hlen, size - 8);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return hstu_fail(err, HSTU_ERR_FORMAT, "header is not valid JSON (line %d, column %d: %s)",
                         jerr.line, jerr.column, jerr.text);
    if (!json_is_object(root)) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "header is not a JSON object");
        goto free_json;
    }

    const uint8_t *data = buf + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    const json_t *meta = json_object_get(root, "__metadata__");
    if (meta && (st = parse_metadata(meta, err)) != HSTU_OK)
        goto free_json;
    size_t n = json_object_size(root) - (meta ? 1 : 0);
    if (n > (size_t)INT32_MAX) {
        st = hstu_fail(err, HSTU_ERR_FORMAT, "header lists %zu tensors, too many", n);
        goto free_json;
    }
    if (n > 0 && !(ts = calloc(n, sizeof *ts))) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "no memory for %zu tensor entries", n);
        goto free_json;
    }

    const char *key;
    json_t *entry;
    size_t i = 0;
    json_object_foreach(root, key, entry) {
        if (!strcmp(key, "__metadata__"))
            continue;
        HSTU_ASSERT(i < n);
        if ((st = parse_tensor(key, entry, data_size, &ts[i], err)) != HSTU_OK)
            goto free_tensors;
        i++;
    }
    HSTU_ASSERT(i == n);
    if (n > 1)
        qsort(ts, n, sizeof *ts, cmp_begin);
    if ((st = check_tiling(ts, (int)n, data_size, err)) != HSTU_OK)
        goto free_tensors;

    f->buf = buf;
    f->size = size;
    f->data = data;
    f->data_size = data_size;
    f->n_tensors = (int)n;
    f->tensors = ts;
    ts = NULL; /* owned by f now */
free_tensors:
    free(ts);
free_json:
    json_decref(root);
    return st;
}

hstu_status st_open(const char *path, st_file *f, hstu_error *err)
{
    hstu_status st = HSTU_OK;
    void *map = NULL;
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hstu_fail(err, HSTU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto close_fd;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: not a regular file", path);
        goto close_fd;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: %lld bytes do not fit in memory", path,
                       (long long)sb.st_size);
        goto close_fd;
    }
    size_t size = (size_t)sb.st_size;
    if (size < 8) { /* also keeps mmap away from an empty file */
        st = hstu_fail(err, HSTU_ERR_FORMAT,
                       "%s: file is %zu bytes, shorter than the 8-byte header length", path, size);
        goto close_fd;
    }
    map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        map = NULL;
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot map %zu bytes: %s", path, size, strerror(errno));
        goto close_fd;
    }
    if ((st = st_parse(map, size, f, err)) != HSTU_OK) {
        hstu_error_prefix(err, "%s", path);
        goto unmap;
    }
    f->map = map;
    map = NULL; /* owned by f now */
unmap:
    if (map)
        munmap(map, size);
close_fd:
    close(fd);
    return st;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    free(f->tensors);
    if (f->map)
        munmap(f->map, f->size);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    for (int i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

hstu_status st_read_f32(const st_file *f, const st_tensor *t, float *dst, size_t n, hstu_error *err)
{
    char q[SHOW_MAX];
    int64_t numel = st_numel(t);
    if ((uint64_t)numel != (uint64_t)n)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "tensor \"%s\": destination holds %zu floats but the tensor has %lld elements",
                         show(q, t->name), n, (long long)numel);
    /* A tensor st_parse accepted for this file lies inside its data. */
    HSTU_ASSERT(t->begin <= t->end && t->end <= f->data_size);
    HSTU_ASSERT(t->end - t->begin == n * st_dtype_size(t->dtype));
    const uint8_t *p = f->data + t->begin;
    switch (t->dtype) {
    case ST_F32:
        for (size_t i = 0; i < n; i++, p += 4)
            dst[i] = f32_from_bits((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                   (uint32_t)p[3] << 24);
        break;
    case ST_BF16:
        for (size_t i = 0; i < n; i++, p += 2)
            dst[i] = st_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
        break;
    case ST_F16:
        for (size_t i = 0; i < n; i++, p += 2)
            dst[i] = st_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
        break;
    }
    return HSTU_OK;
}

/* ---- writer ------------------------------------------------------------- */

/* Checks the tensors to write; fills numel[i]. */
static hstu_status check_write_args(const st_write_tensor *ts, int n, st_dtype dtype,
                                    int64_t *numel, hstu_error *err)
{
    char q[SHOW_MAX];
    size_t esize = st_dtype_size(dtype);
    for (int i = 0; i < n; i++) {
        const st_write_tensor *t = &ts[i];
        if (!t->name)
            return hstu_fail(err, HSTU_ERR_ARG, "st_write: tensor %d has no name", i);
        show(q, t->name);
        if (strlen(t->name) >= ST_NAME_MAX)
            return hstu_fail(err, HSTU_ERR_ARG, "st_write: tensor \"%s\": name longer than %d bytes",
                             q, ST_NAME_MAX - 1);
        if (!strcmp(t->name, "__metadata__"))
            return hstu_fail(err, HSTU_ERR_ARG,
                             "st_write: tensor %d is named \"__metadata__\", a reserved key", i);
        for (int j = 0; j < i; j++)
            if (!strcmp(ts[j].name, t->name))
                return hstu_fail(err, HSTU_ERR_ARG,
                                 "st_write: tensor \"%s\" appears twice (entries %d and %d)", q, j, i);
        if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
            return hstu_fail(err, HSTU_ERR_ARG, "st_write: tensor \"%s\": ndim %d outside [0, %d]",
                             q, t->ndim, ST_MAX_DIMS);
        for (int d = 0; d < t->ndim; d++)
            if (t->shape[d] < 0)
                return hstu_fail(err, HSTU_ERR_ARG,
                                 "st_write: tensor \"%s\": shape dim %d is %lld, negative", q, d,
                                 (long long)t->shape[d]);
        numel[i] = checked_numel(t->shape, t->ndim, esize);
        if (numel[i] < 0)
            return hstu_fail(err, HSTU_ERR_ARG,
                             "st_write: tensor \"%s\": shape overflows a 64-bit byte count", q);
        if (numel[i] > 0 && !t->data)
            return hstu_fail(err, HSTU_ERR_ARG, "st_write: tensor \"%s\": data is NULL", q);
    }
    return HSTU_OK;
}

/* Builds the header object with offsets laid out in the order given. */
static hstu_status build_header(const st_write_tensor *ts, int n, st_dtype dtype,
                                const int64_t *numel, json_t **out, hstu_error *err)
{
    char q[SHOW_MAX];
    hstu_status st = HSTU_OK;
    size_t esize = st_dtype_size(dtype);
    json_t *root = json_object();
    if (!root)
        return hstu_fail(err, HSTU_ERR_NOMEM, "st_write: no memory for the header");
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = (uint64_t)numel[i] * esize; /* bounded by checked_numel */
        if (bytes > (uint64_t)INT64_MAX - off) {
            st = hstu_fail(err, HSTU_ERR_ARG, "st_write: total data size overflows at tensor \"%s\"",
                           show(q, ts[i].name));
            goto free_root;
        }
        json_t *shape = json_array();
        json_t *offs = json_pack("[II]", (json_int_t)off, (json_int_t)(off + bytes));
        json_t *entry = json_object();
        bool ok = shape && offs && entry;
        for (int d = 0; ok && d < ts[i].ndim; d++)
            ok = json_array_append_new(shape, json_integer((json_int_t)ts[i].shape[d])) == 0;
        ok = ok && json_object_set_new(entry, "dtype", json_string(st_dtype_name(dtype))) == 0;
        ok = ok && json_object_set(entry, "shape", shape) == 0;
        ok = ok && json_object_set(entry, "data_offsets", offs) == 0;
        json_decref(shape);
        json_decref(offs);
        if (!ok) {
            json_decref(entry);
            st = hstu_fail(err, HSTU_ERR_NOMEM, "st_write: no memory for the header");
            goto free_root;
        }
        /* jansson refuses keys that are not valid UTF-8 */
        if (json_object_set_new(root, ts[i].name, entry) != 0) {
            st = hstu_fail(err, HSTU_ERR_ARG, "st_write: tensor name \"%s\" is not valid UTF-8",
                           show(q, ts[i].name));
            goto free_root;
        }
        off += bytes;
    }
    *out = root;
    return HSTU_OK;
free_root:
    json_decref(root);
    return st;
}

/* Converts n floats to dtype into out (little-endian); returns the bytes. */
static size_t encode(const float *x, size_t n, st_dtype dtype, uint8_t *out)
{
    uint8_t *p = out;
    for (size_t i = 0; i < n; i++) {
        if (dtype == ST_F32) {
            uint32_t u = f32_bits(x[i]);
            *p++ = (uint8_t)u;
            *p++ = (uint8_t)(u >> 8);
            *p++ = (uint8_t)(u >> 16);
            *p++ = (uint8_t)(u >> 24);
        } else {
            uint16_t h = dtype == ST_BF16 ? st_f32_to_bf16(x[i]) : st_f32_to_f16(x[i]);
            *p++ = (uint8_t)h;
            *p++ = (uint8_t)(h >> 8);
        }
    }
    return (size_t)(p - out);
}

/* fsyncs the directory holding path so the rename itself is durable. Best
 * effort: the new file is already in place when this runs. */
static void sync_parent_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir) {
        d = "/";
    } else if (slash) {
        *slash = '\0';
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

hstu_status st_write(const char *path, const st_write_tensor *ts, int n, st_dtype dtype,
                     hstu_error *err)
{
    hstu_status st = HSTU_OK;
    int64_t *numel = NULL;
    json_t *root = NULL;
    char *hdr = NULL, *tmp = NULL;
    FILE *fp = NULL;
    bool created = false;

    if (!path || n < 0 || (n > 0 && !ts) || st_dtype_size(dtype) == 0)
        return hstu_fail(err, HSTU_ERR_ARG, "st_write: bad arguments (path %s, %d tensors, dtype %d)",
                         path ? path : "NULL", n, (int)dtype);
    if (n > 0 && !(numel = malloc((size_t)n * sizeof *numel)))
        return hstu_fail(err, HSTU_ERR_NOMEM, "st_write: no memory for %d tensors", n);
    if ((st = check_write_args(ts, n, dtype, numel, err)) != HSTU_OK)
        goto free_numel;
    if ((st = build_header(ts, n, dtype, numel, &root, err)) != HSTU_OK)
        goto free_numel;
    if (!(hdr = json_dumps(root, JSON_COMPACT))) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "st_write: no memory to print the header");
        goto free_json;
    }
    size_t hlen = strlen(hdr);
    size_t padded = (hlen + 7) & ~(size_t)7; /* data section starts 8-aligned */
    if (padded > ST_HEADER_MAX) {
        st = hstu_fail(err, HSTU_ERR_ARG, "st_write: header of %zu bytes exceeds the %u-byte limit",
                       padded, (unsigned)ST_HEADER_MAX);
        goto free_hdr;
    }
    size_t plen = strlen(path);
    if (!(tmp = malloc(plen + 5))) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "st_write: no memory");
        goto free_hdr;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    if (!(fp = fopen(tmp, "wb"))) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto free_tmp;
    }
    created = true;
    uint8_t chunk[WRITE_CHUNK * 4];
    for (int i = 0; i < 8; i++)
        chunk[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    bool ok = fwrite(chunk, 1, 8, fp) == 8 && fwrite(hdr, 1, hlen, fp) == hlen;
    for (size_t i = hlen; ok && i < padded; i++)
        ok = fputc(' ', fp) != EOF;
    for (int i = 0; ok && i < n; i++) {
        for (int64_t done = 0; ok && done < numel[i];) {
            size_t m = numel[i] - done < WRITE_CHUNK ? (size_t)(numel[i] - done) : WRITE_CHUNK;
            size_t bytes = encode(ts[i].data + done, m, dtype, chunk);
            ok = fwrite(chunk, 1, bytes, fp) == bytes;
            done += (int64_t)m;
        }
    }
    if (!ok || fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
        goto close_file;
    }
    int rc = fclose(fp);
    fp = NULL;
    if (rc != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
        goto remove_tmp;
    }
    if (rename(tmp, path) != 0) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot rename %s over it: %s", path, tmp,
                       strerror(errno));
        goto remove_tmp;
    }
    created = false; /* it is path now */
    sync_parent_dir(path);
close_file:
    if (fp)
        fclose(fp);
remove_tmp:
    if (created)
        unlink(tmp);
free_tmp:
    free(tmp);
free_hdr:
    free(hdr);
free_json:
    json_decref(root);
free_numel:
    free(numel);
    return st;
}
