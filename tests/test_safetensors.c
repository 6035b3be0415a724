/* test_safetensors.c - the safetensors reader, writer and conversions.
 *
 * Expectations come from outside the code under test: the f16/bf16 rounding
 * oracle below decodes every 16-bit pattern with ldexp and picks the nearest
 * by binary search (ties to the even pattern), known bit patterns are spelled
 * out, the hand-made file is assembled byte by byte with memcpy, and each
 * corrupt file in the table must fail with HSTU_ERR_FORMAT and a message that
 * names the problem. Files live in a mkdtemp directory removed at the end.
 */
#if !defined(_GNU_SOURCE) && !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700 /* mkdtemp */
#endif
#include "core/safetensors.h"
#include "harness.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256]; /* the mkdtemp directory */

/* ---- helpers ------------------------------------------------------------ */

static const char *tmp_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", g_dir, name);
    return buf;
}

static int write_file(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t w = len ? fwrite(buf, 1, len, fp) : 0;
    int rc = fclose(fp);
    return (w == len && rc == 0) ? 0 : -1;
}

/* Reads a whole file into a malloc'd buffer; *len gets its size. */
static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc(sz > 0 ? (size_t)sz : 1);
    if (buf && fread(buf, 1, (size_t)sz, fp) != (size_t)sz) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    *len = (size_t)sz;
    return buf;
}

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static float f_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static uint32_t bits_f(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rng_u32(void)
{
    rng_state ^= rng_state << 13; /* xorshift64 */
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* ---- the independent rounding oracle ------------------------------------ */

/* Value of a non-negative 16-bit pattern h (h <= the +inf pattern); +inf
 * stands in as the next power of two, the point overflow rounds towards. */
static double f16_val(uint32_t h)
{
    uint32_t e = h >> 10, m = h & 0x3FF;
    if (e == 0)
        return ldexp(m, -24);
    if (e == 31)
        return 65536.0;
    return ldexp(1024 + m, (int)e - 25);
}

static double bf16_val(uint32_t h)
{
    uint32_t e = h >> 7, m = h & 0x7F;
    if (e == 0)
        return ldexp(m, -133);
    if (e == 255)
        return ldexp(1, 128);
    return ldexp(128 + m, (int)e - 134);
}

/* Nearest pattern to |x| among 0..hinf (hinf is +inf), ties to even. */
static uint16_t oracle_abs(double ax, double (*val)(uint32_t), uint32_t hinf)
{
    if (ax >= val(hinf))
        return (uint16_t)hinf;
    uint32_t lo = 0, hi = hinf; /* val(lo) <= ax < val(hi) */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (val(mid) <= ax)
            lo = mid;
        else
            hi = mid;
    }
    double two_x = 2 * ax, sum = val(lo) + val(hi); /* both exact */
    if (two_x < sum)
        return (uint16_t)lo;
    if (two_x > sum)
        return (uint16_t)hi;
    return (uint16_t)((lo & 1) ? hi : lo);
}

static uint16_t oracle_f16(float x)
{
    uint16_t s = signbit(x) ? 0x8000 : 0;
    return (uint16_t)(s | oracle_abs(fabs((double)x), f16_val, 0x7C00));
}

static uint16_t oracle_bf16(float x)
{
    uint16_t s = signbit(x) ? 0x8000 : 0;
    return (uint16_t)(s | oracle_abs(fabs((double)x), bf16_val, 0x7F80));
}

/* Value of a 16-bit pattern (sign included), via the oracle's decoder. */
static double oracle_decode(uint16_t h, bool bf16)
{
    uint32_t a = h & 0x7FFF;
    double v;
    if (bf16)
        v = a >= 0x7F80 ? (a == 0x7F80 ? INFINITY : NAN) : bf16_val(a);
    else
        v = a >= 0x7C00 ? (a == 0x7C00 ? INFINITY : NAN) : f16_val(a);
    return (h & 0x8000) ? -v : v;
}

static bool f16_is_nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF); }
static bool bf16_is_nan(uint16_t h) { return (h & 0x7F80) == 0x7F80 && (h & 0x7F); }

/* ---- conversions -------------------------------------------------------- */

static void test_conv_known_bits(void)
{
    static const struct {
        float x;
        uint16_t f16, bf16;
    } tab[] = {
        {1.0f, 0x3C00, 0x3F80},
        {-2.0f, 0xC000, 0xC000},
        {0.0f, 0x0000, 0x0000},
        {-0.0f, 0x8000, 0x8000},
        {65504.0f, 0x7BFF, 0x4780},          /* f16 max; bf16 rounds up to 65536 */
        {65519.0f, 0x7BFF, 0x4780},          /* just below the f16 overflow tie */
        {65520.0f, 0x7C00, 0x4780},          /* tie between 65504 and inf: to even (inf) */
        {0x1p-24f, 0x0001, 0x3380},          /* smallest f16 subnormal */
        {0x1p-25f, 0x0000, 0x3300},          /* tie between 0 and 2^-24: to even (0) */
        {0x1.8p-25f, 0x0001, 0x3340},        /* 0.75 * 2^-24 rounds up */
        {0x1.8p-24f, 0x0002, 0x33C0},        /* 1.5 * 2^-24: tie, to even (2) */
        {0x1p-14f, 0x0400, 0x3880},          /* smallest f16 normal */
        {0x1.ffcp-15f, 0x0400, 0x3880},      /* 1023.5 * 2^-24: tie, to even (0x400) */
        {0x1.002p+0f, 0x3C00, 0x3F80},       /* 1 + 2^-11: f16 tie, to even */
        {0x1.006p+0f, 0x3C02, 0x3F80},       /* 1 + 3*2^-11: f16 tie, to even (up) */
        {0x1.01p+0f, 0x3C04, 0x3F80},        /* 1 + 2^-8: bf16 tie, to even (down) */
        {0x1.03p+0f, 0x3C0C, 0x3F82},        /* 1 + 3*2^-8: bf16 tie, to even (up) */
        {1.0f / 3.0f, 0x3555, 0x3EAB},
        {0.1f, 0x2E66, 0x3DCD},
        {INFINITY, 0x7C00, 0x7F80},
        {-INFINITY, 0xFC00, 0xFF80},
        {FLT_MAX, 0x7C00, 0x7F80},           /* bf16: FLT_MAX rounds up to inf */
        {0x1p-149f, 0x0000, 0x0000},         /* f32 subnormal */
        {0x1p-133f, 0x0000, 0x0001},         /* smallest bf16 subnormal */
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        uint16_t h = st_f32_to_f16(tab[i].x), b = st_f32_to_bf16(tab[i].x);
        T_CHECK(h == tab[i].f16, "f16(%a) = 0x%04X, want 0x%04X", tab[i].x, h, tab[i].f16);
        T_CHECK(b == tab[i].bf16, "bf16(%a) = 0x%04X, want 0x%04X", tab[i].x, b, tab[i].bf16);
    }
    /* NaNs stay NaN with their sign, including a payload only in low bits
     * that plain truncation would turn into infinity. */
    static const uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        float x = f_bits(nans[i]);
        uint16_t h = st_f32_to_f16(x), b = st_f32_to_bf16(x);
        T_CHECK(f16_is_nan(h) && (h >> 15) == (nans[i] >> 31), "f16(NaN 0x%08X) = 0x%04X", nans[i], h);
        T_CHECK(bf16_is_nan(b) && (b >> 15) == (nans[i] >> 31), "bf16(NaN 0x%08X) = 0x%04X", nans[i], b);
    }
    /* Decoding known patterns. */
    T_CHECK(st_f16_to_f32(0x0001) == 0x1p-24f, "f16 0x0001 -> %a", st_f16_to_f32(0x0001));
    T_CHECK(st_f16_to_f32(0x03FF) == 0x1.ff8p-15f, "f16 0x03FF -> %a", st_f16_to_f32(0x03FF));
    T_CHECK(st_f16_to_f32(0x7BFF) == 65504.0f, "f16 0x7BFF -> %g", st_f16_to_f32(0x7BFF));
    T_CHECK(st_f16_to_f32(0x3C00) == 1.0f, "f16 0x3C00 -> %g", st_f16_to_f32(0x3C00));
    T_CHECK(st_f16_to_f32(0xFC00) == -INFINITY, "f16 0xFC00 -> %g", st_f16_to_f32(0xFC00));
    T_CHECK(isnan(st_f16_to_f32(0x7E00)), "f16 0x7E00 is not NaN");
    T_CHECK(isnan(st_f16_to_f32(0x7C01)), "f16 0x7C01 is not NaN");
    T_CHECK(signbit(st_f16_to_f32(0x8000)) && st_f16_to_f32(0x8000) == 0, "f16 0x8000 is not -0");
    T_CHECK(st_bf16_to_f32(0x3F80) == 1.0f, "bf16 0x3F80 -> %g", st_bf16_to_f32(0x3F80));
    T_CHECK(st_bf16_to_f32(0xFF80) == -INFINITY, "bf16 0xFF80 -> %g", st_bf16_to_f32(0xFF80));
    T_CHECK(isnan(st_bf16_to_f32(0x7FC1)), "bf16 0x7FC1 is not NaN");
}

/* Every 16-bit pattern decodes to the oracle's value and encodes back. */
static void test_conv_exhaustive_decode(void)
{
    int bad_f16 = 0, bad_bf16 = 0;
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        float f = st_f16_to_f32((uint16_t)h), b = st_bf16_to_f32((uint16_t)h);
        double wf = oracle_decode((uint16_t)h, false), wb = oracle_decode((uint16_t)h, true);
        bool okf = isnan(wf) ? isnan(f) && f16_is_nan(st_f32_to_f16(f))
                             : (double)f == wf && !signbit(f) == !signbit(wf) &&
                                   st_f32_to_f16(f) == h;
        bool okb = isnan(wb) ? isnan(b) && bf16_is_nan(st_f32_to_bf16(b))
                             : (double)b == wb && !signbit(b) == !signbit(wb) &&
                                   st_f32_to_bf16(b) == h;
        if (!okf && bad_f16++ < 5)
            T_CHECK(0, "f16 0x%04X -> %a, want %a (or no round trip)", h, f, wf);
        if (!okb && bad_bf16++ < 5)
            T_CHECK(0, "bf16 0x%04X -> %a, want %a (or no round trip)", h, b, wb);
    }
    T_CHECK(bad_f16 == 0, "%d f16 patterns wrong", bad_f16);
    T_CHECK(bad_bf16 == 0, "%d bf16 patterns wrong", bad_bf16);
}

static int check_round(float x, int *bad)
{
    if (isnan(x))
        return 0;
    uint16_t h = st_f32_to_f16(x), wh = oracle_f16(x);
    uint16_t b = st_f32_to_bf16(x), wb = oracle_bf16(x);
    if (h != wh && (*bad)++ < 5)
        T_CHECK(0, "f16(%a) = 0x%04X, oracle 0x%04X", x, h, wh);
    if (b != wb && (*bad)++ < 5)
        T_CHECK(0, "bf16(%a) = 0x%04X, oracle 0x%04X", x, b, wb);
#if defined(__FLT16_MAX__)
    /* A second, compiler-provided oracle where the target has _Float16. */
    _Float16 c = (_Float16)x;
    uint16_t ch;
    memcpy(&ch, &c, 2);
    if (ch != h && (*bad)++ < 5)
        T_CHECK(0, "f16(%a) = 0x%04X, (_Float16) gives 0x%04X", x, h, ch);
#endif
    return 1;
}

/* Rounding at every midpoint (the ties), one ulp either side, and random
 * f32 patterns over the whole range, against the oracle. */
static void test_conv_rounding_oracle(void)
{
    int bad = 0;
    long n = 0;
    for (uint32_t h = 0; h < 0x7C00; h++) {
        float mid = (float)((f16_val(h) + f16_val(h + 1)) / 2); /* exact in f32 */
        float xs[3] = {mid, nextafterf(mid, 0), nextafterf(mid, INFINITY)};
        for (int k = 0; k < 3; k++)
            n += check_round(xs[k], &bad) + check_round(-xs[k], &bad);
    }
    for (uint32_t h = 0; h < 0x7F80; h++) {
        float mid = (float)((bf16_val(h) + bf16_val(h + 1)) / 2);
        float xs[3] = {mid, nextafterf(mid, 0), nextafterf(mid, INFINITY)};
        for (int k = 0; k < 3; k++)
            n += check_round(xs[k], &bad) + check_round(-xs[k], &bad);
    }
    for (int i = 0; i < 300000; i++)
        n += check_round(f_bits(rng_u32()), &bad);
    T_CHECK(bad == 0, "%d of %ld conversions disagree with the oracle", bad, n);
}

/* ---- round trip --------------------------------------------------------- */

#define RT_A_N 15
#define RT_S_N 12

/* Writes four tensors in dtype, reads them back, checks layout and values. */
static void round_trip(st_dtype dtype, const char *fname)
{
    char path[512];
    tmp_path(path, sizeof path, fname);
    float a[RT_A_N]; /* [3, 5] random, some tiny, some large */
    for (int i = 0; i < RT_A_N; i++) {
        float u = (float)(rng_u32() >> 8) / (float)(1 << 24) * 8.0f - 4.0f;
        a[i] = (i % 5 == 0) ? u * 1e-6f : (i % 7 == 0) ? u * 1e4f : u;
    }
    float specials[RT_S_N] = {0.0f, -0.0f, 1.0f, -1.5f, INFINITY, -INFINITY, 65504.0f, 0x1p-24f,
                              0x1.8p-24f, 1.0f / 3.0f, 3e38f, -7e-8f};
    float scalar = 3.25f;
    st_write_tensor ts[4] = {
        {.name = "layers.0.uvqk.weight", .data = a, .ndim = 2, .shape = {3, 5}},
        {.name = "scalar", .data = &scalar, .ndim = 0},
        {.name = "empty", .data = NULL, .ndim = 2, .shape = {4, 0}},
        {.name = "specials", .data = specials, .ndim = 1, .shape = {RT_S_N}},
    };
    hstu_error err = {0};
    hstu_status s = st_write(path, ts, 4, dtype, &err);
    T_REQUIRE(s == HSTU_OK, "st_write %s: %s", st_dtype_name(dtype), err.msg);

    char tmpname[600];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", path);
    T_CHECK(!file_exists(tmpname), "%s left behind", tmpname);

    /* Raw layout: header padded with spaces to a multiple of 8. */
    size_t len = 0;
    uint8_t *raw = read_file(path, &len);
    T_REQUIRE(raw && len >= 8, "cannot read back %s", path);
    uint64_t hlen = get_le64(raw);
    T_CHECK(hlen % 8 == 0, "header length %llu is not a multiple of 8", (unsigned long long)hlen);
    T_CHECK(hlen <= len - 8 && raw[8] == '{', "header does not start with '{'");
    size_t brace = 0;
    for (size_t i = 8; i < 8 + hlen && i < len; i++)
        if (raw[i] == '}')
            brace = i;
    for (size_t i = brace + 1; i < 8 + hlen && i < len; i++)
        T_CHECK(raw[i] == ' ', "header byte %zu is 0x%02X, not padding space", i, raw[i]);
    size_t esize = dtype == ST_F32 ? 4 : 2;
    T_CHECK(len == 8 + hlen + (RT_A_N + 1 + RT_S_N) * esize, "file is %zu bytes", len);
    free(raw);

    st_file f;
    s = st_open(path, &f, &err);
    T_REQUIRE(s == HSTU_OK, "st_open: %s", err.msg);
    T_CHECK(f.n_tensors == 4, "n_tensors %d", f.n_tensors);

    /* Offsets laid out contiguously in the order given. */
    size_t want_begin[4] = {0, RT_A_N * esize, (RT_A_N + 1) * esize, (RT_A_N + 1) * esize};
    size_t want_end[4] = {RT_A_N * esize, (RT_A_N + 1) * esize, (RT_A_N + 1) * esize,
                          (RT_A_N + 1 + RT_S_N) * esize};
    for (int i = 0; i < 4; i++) {
        const st_tensor *t = st_find(&f, ts[i].name);
        T_CHECK(t != NULL, "tensor %s not found", ts[i].name);
        if (!t)
            continue;
        T_CHECK(t->dtype == dtype, "%s dtype %d", t->name, (int)t->dtype);
        T_CHECK(t->ndim == ts[i].ndim, "%s ndim %d", t->name, t->ndim);
        for (int d = 0; d < t->ndim; d++)
            T_CHECK(t->shape[d] == ts[i].shape[d], "%s dim %d", t->name, d);
        T_CHECK(t->begin == want_begin[i] && t->end == want_end[i], "%s at [%zu, %zu], want [%zu, %zu]",
                t->name, t->begin, t->end, want_begin[i], want_end[i]);
        size_t n = (size_t)st_numel(t);
        float *got = malloc((n ? n : 1) * sizeof *got);
        T_REQUIRE(got, "oom");
        s = st_read_f32(&f, t, got, n, &err);
        T_CHECK(s == HSTU_OK, "st_read_f32 %s: %s", t->name, err.msg);
        for (size_t k = 0; s == HSTU_OK && k < n; k++) {
            float x = ts[i].data[k];
            if (dtype == ST_F32) {
                T_CHECK(bits_f(got[k]) == bits_f(x), "%s[%zu]: %a, wrote %a", t->name, k, got[k], x);
            } else {
                double want = oracle_decode(dtype == ST_F16 ? oracle_f16(x) : oracle_bf16(x),
                                            dtype == ST_BF16);
                T_CHECK((double)got[k] == want && !signbit(got[k]) == !signbit(want),
                        "%s[%zu]: %a, want %a (from %a)", t->name, k, got[k], want, x);
                /* and within half an ulp of the dtype (2^-11 or 2^-8 relative) */
                double rel = dtype == ST_F16 ? 0x1p-11 : 0x1p-8;
                if (isfinite(want) && fabs(x) >= 0x1p-14 && fabs(x) <= 65504)
                    T_CHECK(fabs(got[k] - x) <= rel * fabs(x), "%s[%zu] off by more than half an ulp",
                            t->name, k);
            }
        }
        free(got);
    }
    T_CHECK(st_find(&f, "nope") == NULL, "st_find of a missing name is not NULL");
    st_close(&f);
    T_CHECK(f.tensors == NULL && f.map == NULL && f.n_tensors == 0, "st_close did not zero f");
    st_close(&f); /* twice is fine */
    remove(path);
}

static void test_round_trip_f32(void) { round_trip(ST_F32, "rt_f32.safetensors"); }
static void test_round_trip_bf16(void) { round_trip(ST_BF16, "rt_bf16.safetensors"); }
static void test_round_trip_f16(void) { round_trip(ST_F16, "rt_f16.safetensors"); }

/* The bytes st_write puts in the data section, against known patterns. */
static void test_write_known_bytes(void)
{
    char path[512];
    tmp_path(path, sizeof path, "bytes.safetensors");
    float x[4] = {1.0f, 65504.0f, 0x1p-24f, 65520.0f};
    st_write_tensor t = {.name = "x", .data = x, .ndim = 1, .shape = {4}};
    static const uint8_t want[3][16] = {
        {0x00, 0x00, 0x80, 0x3F, 0x00, 0xE0, 0x7F, 0x47, 0x00, 0x00, 0x80, 0x33, 0x00, 0xF0, 0x7F,
         0x47},
        {0x80, 0x3F, 0x80, 0x47, 0x80, 0x33, 0x80, 0x47},
        {0x00, 0x3C, 0xFF, 0x7B, 0x01, 0x00, 0x00, 0x7C},
    };
    const st_dtype dts[3] = {ST_F32, ST_BF16, ST_F16};
    const char *hdr = "{\"x\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}}";
    for (int k = 0; k < 3; k++) {
        hstu_error err = {0};
        T_REQUIRE(st_write(path, &t, 1, dts[k], &err) == HSTU_OK, "st_write: %s", err.msg);
        size_t len = 0, nb = k == 0 ? 16 : 8;
        uint8_t *raw = read_file(path, &len);
        T_REQUIRE(raw && len >= 8 + nb, "cannot read back");
        uint64_t hlen = get_le64(raw);
        T_CHECK(len == 8 + hlen + nb, "%s file is %zu bytes, header %llu", st_dtype_name(dts[k]),
                len, (unsigned long long)hlen);
        if (len == 8 + hlen + nb)
            T_CHECK(!memcmp(raw + 8 + hlen, want[k], nb), "%s data bytes differ",
                    st_dtype_name(dts[k]));
        if (k == 2) /* the compact header, then spaces up to the multiple of 8 */
            T_CHECK(hlen == 56 && !memcmp(raw + 8, hdr, strlen(hdr)) && raw[8 + 55] == ' ',
                    "F16 header is not %s padded to 56 bytes", hdr);
        free(raw);
    }
    remove(path);
}

/* ---- a file assembled by hand ------------------------------------------- */

/* Builds 8-byte length + json + data; hlen is the stored header length. */
static uint8_t *make_buf(const char *json, uint64_t hlen, const uint8_t *data, size_t data_len,
                         size_t *len)
{
    size_t jl = strlen(json);
    *len = 8 + jl + data_len;
    uint8_t *buf = calloc(1, *len);
    if (!buf)
        return NULL;
    put_le64(buf, hlen);
    memcpy(buf + 8, json, jl);
    if (data)
        memcpy(buf + 8 + jl, data, data_len);
    return buf;
}

static void test_hand_written(void)
{
    /* Entries out of offset order, metadata, a scalar, a zero-element tensor,
     * a header of odd length (unaligned data) padded with a tab and spaces. */
    const char *json =
        "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"by hand\"},"
        "\"d\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[10,16]},"
        "\"a\":{\"shape\":[2],\"dtype\":\"F32\",\"data_offsets\":[0,8]},"
        "\"c\":{\"dtype\":\"F16\",\"shape\":[2,0],\"data_offsets\":[10,10]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[8,10]}} \t ";
    uint8_t data[16];
    float a0 = 1.5f, a1 = -2.0f;
    uint32_t u;
    u = bits_f(a0); /* little-endian bytes written out explicitly */
    for (int i = 0; i < 4; i++)
        data[i] = (uint8_t)(u >> (8 * i));
    u = bits_f(a1);
    for (int i = 0; i < 4; i++)
        data[4 + i] = (uint8_t)(u >> (8 * i));
    memcpy(data + 8, "\x80\x3F", 2);                 /* bf16 1.0 */
    memcpy(data + 10, "\x00\x3C\x00\xC0\xFF\x7B", 6); /* f16 1, -2, 65504 */
    size_t len;
    uint8_t *buf = make_buf(json, strlen(json), data, sizeof data, &len);
    T_REQUIRE(buf, "oom");
    char path[512];
    tmp_path(path, sizeof path, "hand.safetensors");
    T_REQUIRE(write_file(path, buf, len) == 0, "cannot write %s", path);

    for (int pass = 0; pass < 2; pass++) {
        st_file f;
        hstu_error err = {0};
        hstu_status s = pass == 0 ? st_parse(buf, len, &f, &err) : st_open(path, &f, &err);
        T_CHECK(s == HSTU_OK, "%s: %s", pass ? "st_open" : "st_parse", err.msg);
        if (s != HSTU_OK)
            continue;
        T_CHECK(f.n_tensors == 4, "n_tensors %d", f.n_tensors);
        T_CHECK(f.data_size == 16 && f.size == len, "data_size %zu size %zu", f.data_size, f.size);
        /* sorted by begin: a, b, c (zero-size at 10), d */
        const char *order[4] = {"a", "b", "c", "d"};
        for (int i = 0; i < f.n_tensors && i < 4; i++)
            T_CHECK(!strcmp(f.tensors[i].name, order[i]), "tensors[%d] is %s, want %s", i,
                    f.tensors[i].name, order[i]);
        float v[3];
        const st_tensor *t = st_find(&f, "a");
        T_CHECK(t && t->dtype == ST_F32 && t->ndim == 1 && t->shape[0] == 2 && t->begin == 0 &&
                    t->end == 8,
                "a's entry is wrong");
        if (t && st_read_f32(&f, t, v, 2, &err) == HSTU_OK)
            T_CHECK(v[0] == 1.5f && v[1] == -2.0f, "a = [%g, %g]", v[0], v[1]);
        t = st_find(&f, "b");
        T_CHECK(t && t->dtype == ST_BF16 && t->ndim == 0 && st_numel(t) == 1, "b's entry is wrong");
        if (t && st_read_f32(&f, t, v, 1, &err) == HSTU_OK)
            T_CHECK(v[0] == 1.0f, "b = %g", v[0]);
        t = st_find(&f, "c");
        T_CHECK(t && t->ndim == 2 && st_numel(t) == 0 && t->begin == 10 && t->end == 10,
                "c's entry is wrong");
        if (t)
            T_CHECK(st_read_f32(&f, t, NULL, 0, &err) == HSTU_OK, "c: %s", err.msg);
        t = st_find(&f, "d");
        T_CHECK(t && t->dtype == ST_F16 && t->shape[0] == 3, "d's entry is wrong");
        if (t && st_read_f32(&f, t, v, 3, &err) == HSTU_OK)
            T_CHECK(v[0] == 1.0f && v[1] == -2.0f && v[2] == 65504.0f, "d = [%g, %g, %g]", v[0],
                    v[1], v[2]);
        /* a wrong element count is the caller's mistake */
        if (t) {
            s = st_read_f32(&f, t, v, 2, &err);
            T_CHECK(s == HSTU_ERR_ARG && strstr(err.msg, "\"d\"") && strstr(err.msg, "3 elements"),
                    "n=2 for 3 elements: %d %s", (int)s, err.msg);
        }
        T_CHECK(st_find(&f, "__metadata__") == NULL, "__metadata__ is not a tensor");
        st_close(&f);
    }
    free(buf);
    remove(path);
}

/* Files that are unusual but valid. */
static void test_valid_edges(void)
{
    static const struct {
        const char *what, *json;
        size_t data_len;
        int n;
    } tab[] = {
        {"no tensors, no data", "{}", 0, 0},
        {"only metadata", "{\"__metadata__\":{}}", 0, 0},
        {"zero-element tensor at the end",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"z\":{\"dtype\":\"F16\",\"shape\":[0,7],\"data_offsets\":[4,4]}}",
         4, 2},
        {"two zero-element tensors at one offset",
         "{\"y\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
         "\"z\":{\"dtype\":\"BF16\",\"shape\":[3,0,9],\"data_offsets\":[0,0]}}",
         0, 2},
        {"zero dim beside huge dims",
         "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,1000000000,1000000000],\"data_offsets\":[0,0]}}", 0, 1},
        {"eight dims",
         "{\"e\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, 1},
        {"name of 255 bytes", NULL, 4, 1},
    };
    char long_json[600];
    char name[256];
    memset(name, 'n', 255);
    name[255] = '\0';
    snprintf(long_json, sizeof long_json,
             "{\"%s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", name);
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        const char *json = tab[i].json ? tab[i].json : long_json;
        uint8_t zeros[8] = {0};
        size_t len;
        uint8_t *buf = make_buf(json, strlen(json), zeros, tab[i].data_len, &len);
        T_REQUIRE(buf, "oom");
        st_file f;
        hstu_error err = {0};
        hstu_status s = st_parse(buf, len, &f, &err);
        T_CHECK(s == HSTU_OK && f.n_tensors == tab[i].n, "%s: status %d, %d tensors: %s",
                tab[i].what, (int)s, f.n_tensors, err.msg);
        st_close(&f);
        free(buf);
    }
}

/* ---- corrupt files ------------------------------------------------------ */

#define NO_HLEN UINT64_MAX

typedef struct corrupt_case {
    const char *what;
    const char *json;  /* header text (NULL: raw bytes below) */
    size_t data_len;   /* zero bytes after the header */
    uint64_t hlen;     /* stored header length; NO_HLEN: strlen(json) */
    const char *raw;   /* when json is NULL: the whole file */
    size_t raw_len;
    const char *want1, *want2; /* substrings of the message */
} corrupt_case;

#define T1(dt, sh, off) "{\"x\":{\"dtype\":\"" dt "\",\"shape\":" sh ",\"data_offsets\":" off "}}"

static const corrupt_case corrupt[] = {
    {"truncated (5 bytes)", NULL, 0, 0, "\x05\x00\x00\x00\x00", 5, "file is 5 bytes",
     "shorter than the 8-byte header length"},
    {"empty file", NULL, 0, 0, "", 0, "file is 0 bytes", NULL},
    {"header length larger than the file", "{}", 0, 1000, NULL, 0, "header length 1000",
     "exceeds the 2 bytes"},
    {"header length 0", "{}", 0, 0, NULL, 0, "header length is 0", NULL},
    {"header length 2^63", "{}", 0, 1ull << 63, NULL, 0, "header length 9223372036854775808",
     "limit"},
    {"header length 2^64-1", "{}", 0, UINT64_MAX - 1, NULL, 0, "exceeds", "limit"},
    {"invalid JSON", "{\"x\": {\"dtype\": ", 0, NO_HLEN, NULL, 0, "not valid JSON", NULL},
    {"JSON cut by the header length", T1("F32", "[1]", "[0,4]"), 4, 20, NULL, 0, "not valid JSON",
     NULL},
    {"JSON scalar", "42", 0, NO_HLEN, NULL, 0, "not valid JSON", NULL},
    {"JSON array, not an object", "[1, 2]", 0, NO_HLEN, NULL, 0, "not a JSON object", NULL},
    {"trailing garbage after the JSON", "{} x", 0, NO_HLEN, NULL, 0, "not valid JSON", NULL},
    {"duplicate tensor names",
     "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     8, NO_HLEN, NULL, 0, "duplicate", "\"x\""},
    {"unknown dtype I64", T1("I64", "[1]", "[0,8]"), 8, NO_HLEN, NULL, 0,
     "tensor \"x\": unsupported dtype \"I64\"", NULL},
    {"unknown dtype F64", T1("F64", "[1]", "[0,8]"), 8, NO_HLEN, NULL, 0, "unsupported dtype \"F64\"",
     "tensor \"x\""},
    {"dtype not a string", "{\"x\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, NO_HLEN,
     NULL, 0, "tensor \"x\": dtype is not a string", NULL},
    {"negative dim", T1("F32", "[2,-3]", "[0,24]"), 24, NO_HLEN, NULL, 0,
     "tensor \"x\": shape dim 1 is -3", "non-negative"},
    {"real dim", T1("F32", "[2.0]", "[0,8]"), 8, NO_HLEN, NULL, 0, "shape dim 0 is the real number",
     NULL},
    {"string dim", T1("F32", "[\"2\"]", "[0,8]"), 8, NO_HLEN, NULL, 0, "shape dim 0 is a string",
     NULL},
    {"shape not an array", T1("F32", "4", "[0,16]"), 16, NO_HLEN, NULL, 0, "shape is not an array",
     NULL},
    {"too many dims", T1("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]"), 4, NO_HLEN, NULL, 0,
     "tensor \"x\": shape has 9 dims, more than 8", NULL},
    {"shape product overflows", T1("F32", "[4294967296,4294967296]", "[0,4]"), 4, NO_HLEN, NULL, 0,
     "tensor \"x\": shape [4294967296, 4294967296] of F32 overflows", NULL},
    {"byte size overflows", T1("F32", "[2305843009213693952]", "[0,4]"), 4, NO_HLEN, NULL, 0,
     "overflows", NULL},
    {"dim past 64 bits", T1("F32", "[18446744073709551616]", "[0,4]"), 4, NO_HLEN, NULL, 0,
     "not valid JSON", NULL},
    {"data_offsets reversed", T1("F32", "[1]", "[8,4]"), 8, NO_HLEN, NULL, 0,
     "tensor \"x\": data_offsets [8, 4] are reversed", NULL},
    {"data_offsets past the end", T1("F32", "[4]", "[0,16]"), 8, NO_HLEN, NULL, 0,
     "tensor \"x\": data_offsets [0, 16] run past the end of the 8-byte data section", NULL},
    {"data_offsets huge", T1("F32", "[1]", "[9223372036854775803,9223372036854775807]"), 8,
     NO_HLEN, NULL, 0, "past the end", NULL},
    {"data_offsets negative", T1("F32", "[1]", "[-4,0]"), 4, NO_HLEN, NULL, 0,
     "data_offsets[0] is -4", NULL},
    {"data_offsets of 3", T1("F32", "[1]", "[0,4,8]"), 8, NO_HLEN, NULL, 0,
     "data_offsets is not an array of 2 integers", NULL},
    {"data_offsets not an array", T1("F32", "[1]", "{}"), 4, NO_HLEN, NULL, 0,
     "data_offsets is not an array of 2 integers", NULL},
    {"overlapping tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     12, NO_HLEN, NULL, 0, "tensor \"b\": data_offsets [4, 12] overlap tensor \"a\" [0, 8]", NULL},
    {"identical ranges",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
     8, NO_HLEN, NULL, 0, "overlap tensor", NULL},
    {"zero-size tensor inside another",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
     8, NO_HLEN, NULL, 0, "tensor \"z\": data_offsets [4, 4] overlap tensor \"a\"", NULL},
    {"hole between tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     12, NO_HLEN, NULL, 0, "tensor \"b\": data_offsets [8, 12] leave a hole of 4 bytes",
     "after tensor \"a\""},
    {"hole at the start", T1("F32", "[1]", "[4,8]"), 8, NO_HLEN, NULL, 0,
     "hole of 4 bytes at the start", "tensor \"x\""},
    {"bytes after the last tensor", T1("F32", "[1]", "[0,4]"), 8, NO_HLEN, NULL, 0,
     "last tensor \"x\" ends at 4", "4 bytes that belong to no tensor"},
    {"data but no tensors", "{}", 8, NO_HLEN, NULL, 0, "no tensors but the data section holds 8",
     NULL},
    {"byte size mismatch",
     "{\"layers.0.uvqk.weight\":{\"dtype\":\"F32\",\"shape\":[5,6],\"data_offsets\":[0,100]}}", 100,
     NO_HLEN, NULL, 0,
     "tensor \"layers.0.uvqk.weight\": data_offsets [0, 100] hold 100 bytes but shape [5, 6] of "
     "F32 needs 120",
     NULL},
    {"zero elements with bytes", T1("BF16", "[0]", "[0,2]"), 2, NO_HLEN, NULL, 0, "hold 2 bytes",
     "needs 0"},
    {"scalar of the wrong size", T1("F16", "[]", "[0,4]"), 4, NO_HLEN, NULL, 0,
     "shape [] of F16 needs 2", NULL},
    {"metadata value not a string", "{\"__metadata__\":{\"k\":1}}", 0, NO_HLEN, NULL, 0,
     "\"__metadata__\" value \"k\" is not a string", NULL},
    {"metadata not an object", "{\"__metadata__\":[\"k\"]}", 0, NO_HLEN, NULL, 0,
     "\"__metadata__\" is not a JSON object", NULL},
    {"tensor entry missing dtype", "{\"x\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, NO_HLEN,
     NULL, 0, "tensor \"x\": missing \"dtype\"", NULL},
    {"tensor entry missing shape", "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
     NO_HLEN, NULL, 0, "tensor \"x\": missing \"shape\"", NULL},
    {"tensor entry missing data_offsets", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, NO_HLEN,
     NULL, 0, "tensor \"x\": missing \"data_offsets\"", NULL},
    {"extra field in a tensor entry",
     "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"foo\":1}}", 4, NO_HLEN, NULL,
     0, "tensor \"x\": unknown field \"foo\"", NULL},
    {"tensor entry not an object", "{\"x\":[1]}", 0, NO_HLEN, NULL, 0,
     "tensor \"x\": entry is not a JSON object", NULL},
    {"name too long", NULL /* built in the test */, 4, NO_HLEN, NULL, 0, "name is 256 bytes",
     "longer than 255"},
    {"control bytes in a name are escaped",
     "{\"a\\n\\\"b\":{\"dtype\":\"X\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, NO_HLEN, NULL, 0,
     "tensor \"a\\x0A\\x22b\": unsupported dtype \"X\"", NULL},
};

static void check_corrupt(const corrupt_case *c, const uint8_t *buf, size_t len)
{
    st_file f;
    memset(&f, 0x5A, sizeof f); /* st_parse must leave f closed */
    hstu_error err = {0};
    hstu_status s = st_parse(buf, len, &f, &err);
    T_CHECK(s == HSTU_ERR_FORMAT, "%s: st_parse gave status %d (%s)", c->what, (int)s, err.msg);
    T_CHECK(strstr(err.msg, c->want1), "%s: message \"%s\" lacks \"%s\"", c->what, err.msg, c->want1);
    T_CHECK(!c->want2 || strstr(err.msg, c->want2), "%s: message \"%s\" lacks \"%s\"", c->what,
            err.msg, c->want2);
    T_CHECK(f.tensors == NULL && f.map == NULL && f.n_tensors == 0, "%s: f not left closed", c->what);
    st_close(&f);

    /* The same bytes through st_open: same error, prefixed by the path. */
    char path[512];
    tmp_path(path, sizeof path, "corrupt.safetensors");
    T_REQUIRE(write_file(path, buf, len) == 0, "cannot write %s", path);
    memset(&err, 0, sizeof err);
    s = st_open(path, &f, &err);
    T_CHECK(s == HSTU_ERR_FORMAT, "%s: st_open gave status %d (%s)", c->what, (int)s, err.msg);
    T_CHECK(strstr(err.msg, path) && strstr(err.msg, c->want1), "%s: st_open message \"%s\"", c->what,
            err.msg);
    T_CHECK(f.tensors == NULL && f.map == NULL, "%s: st_open did not leave f closed", c->what);
    st_close(&f);
    remove(path);
}

static void test_corrupt_files(void)
{
    char long_json[600];
    char name[257];
    memset(name, 'n', 256);
    name[256] = '\0';
    snprintf(long_json, sizeof long_json,
             "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", name);
    for (size_t i = 0; i < sizeof corrupt / sizeof corrupt[0]; i++) {
        const corrupt_case *c = &corrupt[i];
        uint8_t *buf;
        size_t len;
        if (!c->json && c->raw) {
            len = c->raw_len;
            buf = malloc(len ? len : 1);
            T_REQUIRE(buf, "oom");
            memcpy(buf, c->raw, len);
        } else {
            const char *json = c->json ? c->json : long_json;
            static const uint8_t zeros[128];
            T_REQUIRE(c->data_len <= sizeof zeros, "case %s: data too long", c->what);
            buf = make_buf(json, c->hlen == NO_HLEN ? strlen(json) : c->hlen, zeros, c->data_len,
                           &len);
            T_REQUIRE(buf, "oom");
        }
        check_corrupt(c, buf, len);
        free(buf);
    }
}

/* Every prefix of a valid file is rejected cleanly (never a crash). */
static void test_truncations(void)
{
    char path[512];
    tmp_path(path, sizeof path, "trunc.safetensors");
    float x[6] = {1, 2, 3, 4, 5, 6};
    st_write_tensor ts[2] = {{.name = "a", .data = x, .ndim = 2, .shape = {2, 2}},
                             {.name = "b", .data = x + 4, .ndim = 1, .shape = {2}}};
    hstu_error err = {0};
    T_REQUIRE(st_write(path, ts, 2, ST_F32, &err) == HSTU_OK, "st_write: %s", err.msg);
    size_t len;
    uint8_t *raw = read_file(path, &len);
    T_REQUIRE(raw, "cannot read back");
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *p = malloc(cut ? cut : 1); /* exact size, so ASan sees overreads */
        T_REQUIRE(p, "oom");
        memcpy(p, raw, cut);
        st_file f;
        hstu_status s = st_parse(p, cut, &f, &err);
        T_CHECK(s == HSTU_ERR_FORMAT, "prefix of %zu bytes: status %d", cut, (int)s);
        st_close(&f);
        free(p);
    }
    free(raw);
    remove(path);
}

/* ---- file errors and the writer's arguments ----------------------------- */

static void test_open_errors(void)
{
    char path[512];
    tmp_path(path, sizeof path, "does-not-exist.safetensors");
    st_file f;
    hstu_error err = {0};
    hstu_status s = st_open(path, &f, &err);
    T_CHECK(s == HSTU_ERR_IO, "missing file: status %d", (int)s);
    T_CHECK(strstr(err.msg, path) != NULL, "message \"%s\" does not name %s", err.msg, path);
    T_CHECK(strstr(err.msg, "No such file") != NULL, "message \"%s\" does not say why", err.msg);
    st_close(&f);

    s = st_open(g_dir, &f, &err);
    T_CHECK(s == HSTU_ERR_IO && strstr(err.msg, "not a regular file"), "directory: %d %s", (int)s,
            err.msg);
    st_close(&f);
    st_close(NULL);
}

static void test_write_errors(void)
{
    char path[512], tmpname[600];
    tmp_path(path, sizeof path, "w.safetensors");
    snprintf(tmpname, sizeof tmpname, "%s.tmp", path);
    float x[4] = {1, 2, 3, 4};
    hstu_error err = {0};

    /* An existing file that every failed write below must leave alone. */
    st_write_tensor good = {.name = "g", .data = x, .ndim = 1, .shape = {4}};
    T_REQUIRE(st_write(path, &good, 1, ST_F32, &err) == HSTU_OK, "st_write: %s", err.msg);
    size_t len0;
    uint8_t *before = read_file(path, &len0);
    T_REQUIRE(before, "cannot read back");

    char long_name[300];
    memset(long_name, 'n', 299);
    long_name[299] = '\0';
    const struct {
        const char *what, *want;
        st_write_tensor t[2];
        int n;
    } bad[] = {
        {"duplicate names", "appears twice",
         {{.name = "a", .data = x, .ndim = 1, .shape = {2}},
          {.name = "a", .data = x, .ndim = 1, .shape = {2}}},
         2},
        {"negative dim", "shape dim 1 is -2", {{.name = "a", .data = x, .ndim = 2, .shape = {1, -2}}}, 1},
        {"too many dims", "ndim 9", {{.name = "a", .data = x, .ndim = 9}}, 1},
        {"NULL data", "data is NULL", {{.name = "a", .data = NULL, .ndim = 1, .shape = {2}}}, 1},
        {"NULL name", "has no name", {{.name = NULL, .data = x, .ndim = 1, .shape = {2}}}, 1},
        {"reserved name", "__metadata__", {{.name = "__metadata__", .data = x, .ndim = 0}}, 1},
        {"invalid UTF-8 name", "not valid UTF-8", {{.name = "a\xff", .data = x, .ndim = 0}}, 1},
        {"overflowing shape", "overflows",
         {{.name = "a", .data = x, .ndim = 2, .shape = {1ll << 40, 1ll << 40}}}, 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&err, 0, sizeof err);
        hstu_status s = st_write(path, bad[i].t, bad[i].n, ST_BF16, &err);
        T_CHECK(s == HSTU_ERR_ARG && strstr(err.msg, bad[i].want), "%s: status %d, \"%s\"",
                bad[i].what, (int)s, err.msg);
    }
    st_write_tensor lt = {.name = long_name, .data = x, .ndim = 0};
    hstu_status s = st_write(path, &lt, 1, ST_F32, &err);
    T_CHECK(s == HSTU_ERR_ARG && strstr(err.msg, "longer than 255"), "long name: %d %s", (int)s,
            err.msg);
    s = st_write(path, &good, 1, (st_dtype)7, &err);
    T_CHECK(s == HSTU_ERR_ARG, "bad dtype: status %d", (int)s);

    /* .tmp cannot be created (it is a directory we made): an i/o error that
     * must not remove what it did not create. */
    T_REQUIRE(mkdir(tmpname, 0700) == 0, "mkdir %s: %s", tmpname, strerror(errno));
    s = st_write(path, &good, 1, ST_F32, &err);
    T_CHECK(s == HSTU_ERR_IO && strstr(err.msg, tmpname), "tmp is a dir: %d %s", (int)s, err.msg);
    T_CHECK(file_exists(tmpname), "st_write removed a directory it did not create");
    rmdir(tmpname);

    size_t len1;
    uint8_t *after = read_file(path, &len1);
    T_CHECK(after && len1 == len0 && !memcmp(before, after, len0), "failed writes changed %s", path);
    T_CHECK(!file_exists(tmpname), "%s left behind", tmpname);
    free(before);
    free(after);

    /* A missing directory. */
    char nodir[512];
    tmp_path(nodir, sizeof nodir, "no/such/dir.safetensors");
    s = st_write(nodir, &good, 1, ST_F32, &err);
    T_CHECK(s == HSTU_ERR_IO && strstr(err.msg, "no/such/dir.safetensors.tmp"), "no dir: %d %s",
            (int)s, err.msg);

    /* The rename fails (path is a non-empty directory): the temp file goes. */
    char dirpath[512], inner[600], dirtmp[600];
    tmp_path(dirpath, sizeof dirpath, "isdir.safetensors");
    snprintf(inner, sizeof inner, "%s/keep", dirpath);
    snprintf(dirtmp, sizeof dirtmp, "%s.tmp", dirpath);
    T_REQUIRE(mkdir(dirpath, 0700) == 0 && write_file(inner, "k", 1) == 0, "setup failed");
    s = st_write(dirpath, &good, 1, ST_F16, &err);
    T_CHECK(s == HSTU_ERR_IO && strstr(err.msg, "cannot rename"), "rename over dir: %d %s", (int)s,
            err.msg);
    T_CHECK(!file_exists(dirtmp), "%s left behind after a failed rename", dirtmp);
    T_CHECK(file_exists(inner), "the directory was damaged");

    /* Zero tensors: a valid, empty checkpoint. */
    s = st_write(path, NULL, 0, ST_F32, &err);
    T_CHECK(s == HSTU_OK, "empty write: %s", err.msg);
    st_file f;
    s = st_open(path, &f, &err);
    T_CHECK(s == HSTU_OK && f.n_tensors == 0 && f.data_size == 0 && f.size == 16,
            "empty checkpoint: %d %s (size %zu)", (int)s, err.msg, f.size);
    st_close(&f);
    remove(path);
}

/* ---- main --------------------------------------------------------------- */

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/hstu_st_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(g_dir)) {
        printf("FAIL  setup: mkdtemp %s: %s\n", g_dir, strerror(errno));
        printf("0 passed, 1 failed, 0 skipped\n");
        return 1;
    }
    t_run("conversions: known bit patterns, ties, NaN, inf", test_conv_known_bits);
    t_run("conversions: all 65536 f16 and bf16 patterns decode and re-encode",
          test_conv_exhaustive_decode);
    t_run("conversions: rounding at every tie and random f32 vs the oracle",
          test_conv_rounding_oracle);
    t_run("round trip F32 (bit exact)", test_round_trip_f32);
    t_run("round trip BF16 (round to nearest even)", test_round_trip_bf16);
    t_run("round trip F16 (round to nearest even)", test_round_trip_f16);
    t_run("writer: data bytes and header padding", test_write_known_bytes);
    t_run("reader: hand-written file", test_hand_written);
    t_run("reader: valid edge cases", test_valid_edges);
    t_run("reader: corrupt files fail with a message naming the problem", test_corrupt_files);
    t_run("reader: every truncation of a valid file", test_truncations);
    t_run("st_open: missing file and directory", test_open_errors);
    t_run("writer: bad arguments, i/o errors, atomic replace", test_write_errors);
    t_rmtree(g_dir);
    return t_summary();
}
