/* test_kvcache.c - the paged KV cache bookkeeping (src/kvcache/kv_cache.h).
 *
 * Small hand-built cases pin down each rule of the contract (create errors,
 * page layout, lookup outcomes, LRU order and pinning, reserve failure,
 * commit shrinking, kv_end clean-up, the key hash). A randomized churn then
 * runs thousands of batches against a shadow model of what each user should
 * have cached: every row written carries a pattern derived from (user, key,
 * row, layer, K/V, column), so a hit whose pages were shared, overwritten or
 * handed out in the wrong order reads back a wrong value.
 */
#include "kvcache/kv_cache.h"

#include "core/rng.h"
#include "harness.h"

#include <stdio.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------- */

static uint64_t t_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The value a row's float should hold: 24 bits, so exact in a float. */
static float pattern(int64_t user, uint64_t key, int row, int layer, int is_v, int col)
{
    uint64_t h = t_mix((uint64_t)user + 1);
    h = t_mix(h ^ key);
    h = t_mix(h ^ (uint64_t)row);
    h = t_mix(h ^ ((uint64_t)layer << 20 | (uint64_t)is_v << 19 | (uint64_t)col));
    return (float)(h >> 40);
}

static kv_options opts(int layers, int P, int kw, int vw, int pages)
{
    kv_options o = {.n_layers = layers, .page_size = P, .k_width = kw, .v_width = vw};
    o.budget_bytes = (size_t)pages * (size_t)layers * (size_t)P * (size_t)(kw + vw) * sizeof(float);
    return o;
}

#define MAX_USER_PAGES 64

/* Float of row r, layer l, K (is_v 0) or V (1), column c of the user's pages. */
static float *row_at(kv_cache *kv, const kv_options *o, const int *pages, int r, int l, int is_v, int c)
{
    int P = o->page_size;
    float *base = kv_page_ptr(kv, pages[r / P]);
    size_t off = is_v ? kv_layer_v(kv, l) + (size_t)(r % P) * o->v_width + c
                      : kv_layer_k(kv, l) + (size_t)(r % P) * o->k_width + c;
    return base + off;
}

/* Writes the pattern of rows [r0, r1) of every layer's K and V. */
static void write_rows(kv_cache *kv, const kv_options *o, int64_t user, const uint64_t *keys, int r0, int r1)
{
    int pages[MAX_USER_PAGES];
    int np = kv_pages(kv, user, pages, MAX_USER_PAGES);
    T_REQUIRE(np <= MAX_USER_PAGES, "user %lld has %d pages", (long long)user, np);
    T_REQUIRE(r1 <= np * o->page_size, "user %lld: rows up to %d but %d pages", (long long)user, r1, np);
    for (int r = r0; r < r1; r++)
        for (int l = 0; l < o->n_layers; l++)
            for (int v = 0; v < 2; v++)
                for (int c = 0; c < (v ? o->v_width : o->k_width); c++)
                    *row_at(kv, o, pages, r, l, v, c) = pattern(user, keys[r], r, l, v, c);
}

/* Number of floats of rows [0, rows) that differ from the pattern; reports
 * the first one. */
static int check_rows(kv_cache *kv, const kv_options *o, int64_t user, const uint64_t *keys, int rows)
{
    int pages[MAX_USER_PAGES];
    int np = kv_pages(kv, user, pages, MAX_USER_PAGES);
    if (np > MAX_USER_PAGES || rows > np * o->page_size) {
        T_CHECK(0, "user %lld: %d rows need more than its %d pages", (long long)user, rows, np);
        return 1;
    }
    int bad = 0;
    for (int r = 0; r < rows; r++)
        for (int l = 0; l < o->n_layers; l++)
            for (int v = 0; v < 2; v++)
                for (int c = 0; c < (v ? o->v_width : o->k_width); c++) {
                    float got = *row_at(kv, o, pages, r, l, v, c);
                    float want = pattern(user, keys[r], r, l, v, c);
                    if (got != want && bad++ == 0)
                        T_CHECK(0, "user %lld row %d layer %d %s col %d: %g, expected %g", (long long)user, r,
                                l, v ? "V" : "K", c, got, want);
                }
    return bad;
}

static bool check_ok(kv_cache *kv)
{
    char why[256] = "";
    bool ok = kv_check(kv, why, sizeof why);
    T_CHECK(ok, "kv_check: %s", why);
    return ok;
}

static int pages_of(kv_cache *kv, int64_t user)
{
    int pages[MAX_USER_PAGES];
    return kv_pages(kv, user, pages, MAX_USER_PAGES);
}

/* A whole one-user batch: lookup, reserve, write, commit. Returns the hit. */
static int run_user(kv_cache *kv, const kv_options *o, int64_t user, const uint64_t *keys, int n)
{
    kv_begin(kv);
    int c = kv_lookup(kv, user, keys, n);
    bool ok = kv_reserve(kv, user, n);
    if (ok) {
        write_rows(kv, o, user, keys, c, n);
        if (user % 2) /* the engine's form: the hash made ahead (while the GPU runs) */
            kv_commit_hashed(kv, user, n, n > 0 ? kv_hash_keys(keys, n) : 0);
        else
            kv_commit(kv, user, n, keys);
    }
    kv_end(kv);
    return c;
}

/* ---- cases ------------------------------------------------------------- */

static void test_create_errors(void)
{
    kv_cache *kv = (kv_cache *)1;
    hstu_error err = {0};

    kv_options o = {.n_layers = 8, .page_size = 32, .k_width = 192, .v_width = 192, .budget_bytes = 1000};
    /* 8 * 32 * 384 * 4 = 393216 bytes per page, computed by hand. */
    T_CHECK(kv_create(&o, &kv, &err) == HSTU_ERR_ARG, "budget below a page accepted");
    T_CHECK(kv == NULL, "out not cleared on failure");
    T_CHECK(err.status == HSTU_ERR_ARG, "err.status %d", err.status);
    T_CHECK(strstr(err.msg, "1000") && strstr(err.msg, "393216") && strstr(err.msg, "--cache-mb"),
            "message should name the budget, the page size in bytes and the fix: %s", err.msg);
    printf("    budget: %s\n", err.msg);

    o.budget_bytes = 393215; /* one byte short of a page */
    T_CHECK(kv_create(&o, &kv, &err) == HSTU_ERR_ARG, "budget one byte short of a page accepted");

    o.budget_bytes = 1u << 30;
    o.page_size = 0;
    T_CHECK(kv_create(&o, &kv, &err) == HSTU_ERR_ARG, "page_size 0 accepted");
    T_CHECK(strstr(err.msg, "page_size") != NULL, "message should name page_size: %s", err.msg);
    printf("    page size: %s\n", err.msg);

    o.page_size = 32;
    o.n_layers = 0;
    T_CHECK(kv_create(&o, &kv, &err) == HSTU_ERR_ARG, "n_layers 0 accepted");
    T_CHECK(strstr(err.msg, "n_layers") != NULL, "message should name n_layers: %s", err.msg);

    o.n_layers = 8;
    o.v_width = 0;
    T_CHECK(kv_create(&o, &kv, &err) == HSTU_ERR_ARG, "v_width 0 accepted");
    T_CHECK(strstr(err.msg, "v_width") != NULL, "message should name v_width: %s", err.msg);

    /* A budget of 5 pages and a bit makes exactly 5 pages. */
    o.v_width = 192;
    o.budget_bytes = 5 * 393216 + 393215;
    kv = NULL;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    kv_stats s;
    kv_get_stats(kv, &s);
    T_CHECK(s.pages_total == 5, "pages_total %d, expected 5", s.pages_total);
    T_CHECK(s.pages_in_use == 0 && s.users == 0, "fresh cache not empty");
    T_CHECK(kv_page_bytes(kv) == 393216, "page bytes %zu", kv_page_bytes(kv));
    T_CHECK(kv_page_size(kv) == 32, "page size %d", kv_page_size(kv));
    check_ok(kv);
    kv_destroy(kv);
    kv_destroy(NULL);
}

static void test_page_layout(void)
{
    /* Odd widths (K 6, V 5) so that a K/V or width mix-up shows. */
    enum { L = 3, P = 4, KW = 6, VW = 5, NP = 7 };
    kv_options o = opts(L, P, KW, VW, NP);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    T_CHECK(kv_page_bytes(kv) == (size_t)L * P * (KW + VW) * 4, "page bytes %zu", kv_page_bytes(kv));
    for (int l = 0; l < L; l++) {
        T_CHECK(kv_layer_k(kv, l) == (size_t)l * P * (KW + VW), "layer %d K offset %zu", l, kv_layer_k(kv, l));
        T_CHECK(kv_layer_v(kv, l) == (size_t)l * P * (KW + VW) + P * KW, "layer %d V offset %zu", l,
                kv_layer_v(kv, l));
    }
    T_CHECK((uintptr_t)kv_page_ptr(kv, 0) % 64 == 0, "pool not 64-byte aligned");
    for (int p = 1; p < NP; p++)
        T_CHECK(kv_page_ptr(kv, p) - kv_page_ptr(kv, p - 1) == (ptrdiff_t)(L * P * (KW + VW)),
                "page %d does not follow page %d", p, p - 1);

    /* Every (layer, K/V, slot, column) addresses a distinct float of the page
     * and together they cover it: a full-page write stays inside the page. */
    int hits[L * P * (KW + VW)] = {0};
    float *base = kv_page_ptr(kv, 0);
    int fake_pages[1] = {0};
    for (int l = 0; l < L; l++)
        for (int v = 0; v < 2; v++)
            for (int r = 0; r < P; r++)
                for (int c = 0; c < (v ? VW : KW); c++) {
                    ptrdiff_t at = row_at(kv, &o, fake_pages, r, l, v, c) - base;
                    T_REQUIRE(at >= 0 && at < L * P * (KW + VW), "layer %d %s row %d col %d at %td", l,
                              v ? "V" : "K", r, c, at);
                    hits[at]++;
                }
    for (int i = 0; i < L * P * (KW + VW); i++)
        T_CHECK(hits[i] == 1, "float %d of a page addressed %d times", i, hits[i]);

    /* Three users fill every page; full pages (all P slots) of each are
     * written, then each reads back its own pattern. */
    int64_t users[3] = {11, -7, 1234567890123};
    int rows[3] = {8, 4, 9}; /* 2 + 1 + 3 pages = 6; the 7th stays free */
    uint64_t keys[3][12];
    rng g = {42};
    for (int u = 0; u < 3; u++)
        for (int r = 0; r < 12; r++)
            keys[u][r] = rng_next(&g);
    kv_begin(kv);
    for (int u = 0; u < 3; u++) {
        T_CHECK(kv_lookup(kv, users[u], keys[u], rows[u]) == 0, "fresh cache hit");
        T_REQUIRE(kv_reserve(kv, users[u], rows[u]), "reserve user %d", u);
    }
    for (int u = 0; u < 3; u++)
        write_rows(kv, &o, users[u], keys[u], 0, pages_of(kv, users[u]) * P);
    for (int u = 0; u < 3; u++)
        T_CHECK(check_rows(kv, &o, users[u], keys[u], pages_of(kv, users[u]) * P) == 0, "user %d overwritten",
                u);
    for (int u = 0; u < 3; u++)
        kv_commit(kv, users[u], rows[u], keys[u]);
    kv_end(kv);
    kv_stats s;
    kv_get_stats(kv, &s);
    T_CHECK(s.pages_in_use == 6 && s.users == 3, "in use %d users %d", s.pages_in_use, s.users);
    for (int u = 0; u < 3; u++)
        T_CHECK(check_rows(kv, &o, users[u], keys[u], rows[u]) == 0, "user %d after commit", u);
    check_ok(kv);
    kv_destroy(kv);
}

static void test_lookup(void)
{
    enum { P = 4 };
    kv_options o = opts(2, P, 3, 2, 64);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    uint64_t keys[16];
    rng g = {7};
    for (int i = 0; i < 16; i++)
        keys[i] = rng_next(&g);
    kv_stats s;

    T_CHECK(run_user(kv, &o, 5, keys, 6) == 0, "first request hit");
    kv_get_stats(kv, &s);
    T_CHECK(s.misses == 1 && s.hits == 0 && s.users == 1 && s.pages_in_use == 2, "after miss: m %llu h %llu u %d p %d",
            (unsigned long long)s.misses, (unsigned long long)s.hits, s.users, s.pages_in_use);

    T_CHECK(run_user(kv, &o, 5, keys, 6) == 6, "same history: expected a hit of 6");
    T_CHECK(run_user(kv, &o, 6, keys, 6) == 0, "another user must not hit user 5's entry");

    /* A prefix extension hits the cached 6 rows and appends 4. */
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, 5, keys, 10) == 6, "prefix extension: expected a hit of 6");
    T_CHECK(check_rows(kv, &o, 5, keys, 6) == 0, "cached rows changed");
    T_REQUIRE(kv_reserve(kv, 5, 10), "reserve 10");
    write_rows(kv, &o, 5, keys, 6, 10);
    kv_commit(kv, 5, 10, keys);
    kv_end(kv);
    T_CHECK(pages_of(kv, 5) == 3, "10 rows should hold 3 pages, got %d", pages_of(kv, 5));

    /* Keys after the cached prefix do not matter. */
    uint64_t other[16];
    memcpy(other, keys, sizeof other);
    other[12] ^= 1;
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, 5, other, 14) == 10, "change past the prefix should still hit 10");
    T_CHECK(check_rows(kv, &o, 5, keys, 10) == 0, "rows after extension");
    kv_end(kv);
    kv_get_stats(kv, &s);
    T_CHECK(s.hits == 3 && s.misses == 2 && s.rewrites == 0, "h %llu m %llu r %llu", (unsigned long long)s.hits,
            (unsigned long long)s.misses, (unsigned long long)s.rewrites);

    /* A rewritten row inside the prefix drops the entry. */
    memcpy(other, keys, sizeof other);
    other[3] ^= 0x100;
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, 5, other, 10) == 0, "rewritten prefix hit");
    kv_get_stats(kv, &s);
    T_CHECK(s.rewrites == 1 && s.misses == 3, "rewrite not counted: r %llu m %llu", (unsigned long long)s.rewrites,
            (unsigned long long)s.misses);
    T_CHECK(pages_of(kv, 5) == 0 && s.users == 1, "rewritten entry not dropped");
    kv_end(kv);
    check_ok(kv);

    /* Swapping two rows is a rewrite too. */
    T_CHECK(run_user(kv, &o, 5, keys, 10) == 0, "re-cache");
    memcpy(other, keys, sizeof other);
    other[1] = keys[2];
    other[2] = keys[1];
    T_CHECK(run_user(kv, &o, 5, other, 10) == 0, "swapped rows hit");
    kv_get_stats(kv, &s);
    T_CHECK(s.rewrites == 2, "swap not counted as a rewrite");
    T_CHECK(check_rows(kv, &o, 5, other, 10) == 0, "recomputed rows after swap");

    /* A history shorter than the cached rows drops the entry. */
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, 5, other, 7) == 0, "shorter history hit");
    kv_end(kv);
    kv_get_stats(kv, &s);
    T_CHECK(s.rewrites == 3 && pages_of(kv, 5) == 0, "shorter history: rewrites %llu, pages %d",
            (unsigned long long)s.rewrites, pages_of(kv, 5));
    T_CHECK(s.users == 1 && s.pages_in_use == pages_of(kv, 6), "only user 6 should remain");
    check_ok(kv);
    kv_destroy(kv);
}

/* kv_lookup_deferred: a hit without the keys, checked by the caller; -1
 * where the keys are needed now; kv_reject after a failed check. */
static void test_lookup_deferred(void)
{
    enum { P = 4 };
    kv_options o = opts(2, P, 3, 2, 64);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    uint64_t keys[16], h = 0;
    rng g = {11};
    for (int i = 0; i < 16; i++)
        keys[i] = rng_next(&g);
    kv_stats s;

    kv_begin(kv);
    T_CHECK(kv_lookup_deferred(kv, 5, 6, &h) == 0, "no entry: expected a miss");
    kv_end(kv);
    T_CHECK(run_user(kv, &o, 5, keys, 6) == 0, "first request hit");
    T_CHECK(run_user(kv, &o, 9, keys, 4) == 0, "first request of user 9 hit");

    /* A hit: the rows and the hash to compare, pinned (kv_reserve of
     * another user cannot evict it) and committed as usual. */
    kv_begin(kv);
    T_CHECK(kv_lookup_deferred(kv, 5, 10, &h) == 6, "deferred hit of 6 expected");
    T_CHECK(h == kv_hash_keys(keys, 6), "the entry's hash");
    T_REQUIRE(kv_reserve(kv, 5, 10), "reserve 10");
    write_rows(kv, &o, 5, keys, 6, 10);
    kv_commit(kv, 5, 10, keys);
    kv_end(kv);
    T_CHECK(check_rows(kv, &o, 5, keys, 10) == 0, "rows after a deferred hit");
    kv_get_stats(kv, &s);
    uint64_t hits = s.hits, misses = s.misses;

    /* Longer than the history, or held: the keys are needed now. */
    kv_begin(kv);
    T_CHECK(kv_lookup_deferred(kv, 5, 8, &h) == -1, "an entry longer than n must ask for the keys");
    kv_end(kv);
    kv_hold(kv, 5);
    kv_begin(kv);
    T_CHECK(kv_lookup_deferred(kv, 5, 12, &h) == -1, "a held entry must ask for the keys");
    kv_end(kv);
    kv_release(kv, 5);
    kv_get_stats(kv, &s);
    T_CHECK(s.hits == hits && s.misses == misses && pages_of(kv, 5) == 3, "-1 must change and count nothing");

    /* A failed check: the entry goes with the pages reserved in this batch. */
    kv_begin(kv);
    T_CHECK(kv_lookup_deferred(kv, 5, 14, &h) == 10, "deferred hit of 10 expected");
    T_REQUIRE(kv_reserve(kv, 5, 14), "reserve 14");
    kv_reject(kv, 5);
    T_CHECK(pages_of(kv, 5) == 0, "a rejected entry keeps pages");
    kv_end(kv);
    kv_get_stats(kv, &s);
    T_CHECK(s.hits == hits && s.misses == misses + 1 && s.rewrites == 1, "reject counts: h %llu m %llu r %llu",
            (unsigned long long)s.hits, (unsigned long long)s.misses, (unsigned long long)s.rewrites);
    T_CHECK(s.users == 1 && s.pages_in_use == pages_of(kv, 9), "only user 9 should remain");
    check_ok(kv);
    kv_destroy(kv);
}

static void test_lru_and_pinning(void)
{
    /* 1 layer, P = 2, a pool of 3 pages: one page per 2-row user. */
    kv_options o = opts(1, 2, 1, 1, 3);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    uint64_t k[6] = {1, 2, 3, 4, 5, 6};
    enum { A = 100, B = 200, C = 300, D = 400, E = 500, F = 600, G = 700, H = 800 };
    kv_stats s, s0;

    run_user(kv, &o, A, k, 2);
    run_user(kv, &o, B, k, 2);
    run_user(kv, &o, C, k, 2);
    T_CHECK(run_user(kv, &o, A, k, 2) == 2, "A should hit"); /* A is now the most recent */
    run_user(kv, &o, D, k, 2);                                  /* pool full: evicts B */
    kv_get_stats(kv, &s);
    T_CHECK(s.evictions == 1, "evictions %llu, expected 1", (unsigned long long)s.evictions);
    T_CHECK(pages_of(kv, B) == 0, "B (least recently used) should have been evicted");
    T_CHECK(pages_of(kv, A) == 1 && pages_of(kv, C) == 1 && pages_of(kv, D) == 1, "A, C, D should remain");
    check_ok(kv);

    /* A and C pinned by hits: E may only take D's page. */
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, A, k, 2) == 2, "A hit");
    T_CHECK(kv_lookup(kv, C, k, 2) == 2, "C hit");
    T_REQUIRE(kv_reserve(kv, E, 2), "E should fit by evicting D");
    T_CHECK(pages_of(kv, D) == 0 && pages_of(kv, A) == 1 && pages_of(kv, C) == 1, "only D may go");
    /* Everyone left is pinned: F cannot be placed and nothing changes. */
    kv_get_stats(kv, &s0);
    T_CHECK(check_ok(kv), "before failed reserve");
    T_CHECK(!kv_reserve(kv, F, 1), "F should not fit: every page is pinned");
    kv_get_stats(kv, &s);
    T_CHECK(s.reserve_failures == s0.reserve_failures + 1, "failure not counted");
    s.reserve_failures = s0.reserve_failures;
    T_CHECK(memcmp(&s, &s0, sizeof s) == 0, "failed reserve changed the stats");
    T_CHECK(pages_of(kv, F) == 0, "failed reserve created an entry");
    T_CHECK(check_ok(kv), "after failed reserve");
    write_rows(kv, &o, E, k, 0, 2);
    kv_commit(kv, E, 2, k);
    kv_end(kv);

    /* LRU now (most recent first): E, C, A. Pin A; G wants 3 pages but only
     * free 0 + unpinned 2 (C, E) exist: fail without evicting anyone. */
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, A, k, 2) == 2, "A hit");
    kv_get_stats(kv, &s0);
    T_CHECK(!kv_reserve(kv, G, 6), "G with 3 pages cannot fit");
    kv_get_stats(kv, &s);
    T_CHECK(s.evictions == s0.evictions && s.users == 3, "a failing reserve evicted someone");
    T_CHECK(pages_of(kv, C) == 1 && pages_of(kv, E) == 1, "C and E must survive a failing reserve");
    /* 2 pages fit, by evicting exactly C and E. */
    T_REQUIRE(kv_reserve(kv, G, 4), "G with 2 pages should fit");
    kv_get_stats(kv, &s);
    T_CHECK(s.evictions == s0.evictions + 2 && pages_of(kv, C) == 0 && pages_of(kv, E) == 0,
            "G should evict C and E");
    T_CHECK(pages_of(kv, A) == 1 && pages_of(kv, G) == 2, "A pinned, G placed");
    write_rows(kv, &o, G, k, 0, 4);
    kv_commit(kv, G, 4, k);
    kv_end(kv);
    check_ok(kv);

    /* A reserve never evicts the user itself: A (1 page, unpinned) grows to
     * 2 pages while G (2 pages) is pinned: free 0 + evictable 0 < 1. */
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, G, k, 4) == 4, "G hit");
    T_CHECK(!kv_reserve(kv, A, 4), "A cannot grow to 2 pages by evicting itself");
    T_CHECK(pages_of(kv, A) == 1, "A lost its page on a failed reserve");
    /* A commit without lookup moves unpinned A to the LRU head, ahead of
     * pinned G: eviction must pass over G at the tail and take A. */
    kv_commit(kv, A, 2, k);
    T_REQUIRE(kv_reserve(kv, H, 2), "H should fit by evicting A");
    T_CHECK(pages_of(kv, A) == 0 && pages_of(kv, G) == 2 && pages_of(kv, H) == 1,
            "A should be evicted, pinned G kept: A %d G %d H %d", pages_of(kv, A), pages_of(kv, G),
            pages_of(kv, H));
    write_rows(kv, &o, H, k, 0, 2);
    kv_commit(kv, H, 2, k);
    kv_end(kv);
    check_ok(kv);

    /* Unpinned, G can be evicted for H's growth. */
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, H, k, 6) == 2, "H hit");
    T_CHECK(kv_reserve(kv, H, 6), "H grows by evicting G");
    T_CHECK(pages_of(kv, G) == 0 && pages_of(kv, H) == 3, "G evicted, H has 3 pages");
    write_rows(kv, &o, H, k, 2, 6);
    kv_commit(kv, H, 6, k);
    kv_end(kv);
    T_CHECK(check_rows(kv, &o, H, k, 6) == 0, "H's rows after growth");
    check_ok(kv);
    kv_destroy(kv);
}

/* Thousands of users in a large pool: the index sees long probe runs, and
 * deletions in the middle of them (backward shift) must keep every
 * remaining user reachable. */
static void test_index_load(void)
{
    enum { NP = 3000, NU = 2900 };
    kv_options o = opts(1, 1, 1, 1, NP);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    static bool present[NU];
    memset(present, 0, sizeof present);
    rng g = {99};
    uint64_t key = 77;
    for (int round = 0; round < 40 && !t_case_failed(); round++) {
        kv_begin(kv);
        for (int i = 0; i < 400; i++) {
            int u = (int)rng_below(&g, NU);
            if (present[u])
                continue;
            int c = kv_lookup(kv, u * 1000003LL, &key, 1);
            T_CHECK(c == 0, "absent user %d hit", u);
            T_REQUIRE(kv_reserve(kv, u * 1000003LL, 1), "reserve user %d", u);
            kv_commit(kv, u * 1000003LL, 1, &key);
            present[u] = true;
        }
        kv_end(kv);
        for (int i = 0; i < 300; i++) {
            int u = (int)rng_below(&g, NU);
            kv_evict(kv, u * 1000003LL);
            present[u] = false;
        }
        int users = 0;
        for (int u = 0; u < NU; u++) {
            T_CHECK((pages_of(kv, u * 1000003LL) == 1) == present[u], "round %d user %d: present %d", round, u,
                    present[u]);
            users += present[u];
        }
        kv_stats s;
        kv_get_stats(kv, &s);
        T_CHECK(s.users == users && s.evictions == 0, "round %d: users %d, expected %d", round, s.users, users);
        check_ok(kv);
    }
    kv_destroy(kv);
}

static void test_commit_and_end(void)
{
    enum { P = 4 };
    kv_options o = opts(2, P, 2, 3, 8);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    uint64_t k[32];
    for (int i = 0; i < 32; i++)
        k[i] = 1000 + (uint64_t)i;
    kv_stats s;

    /* Commit fewer rows than reserved: surplus pages go back at once. */
    kv_begin(kv);
    T_REQUIRE(kv_reserve(kv, 1, 10), "reserve 10");
    kv_get_stats(kv, &s);
    T_CHECK(s.pages_in_use == 3 && pages_of(kv, 1) == 3, "10 rows: %d pages", s.pages_in_use);
    write_rows(kv, &o, 1, k, 0, 10);
    kv_commit(kv, 1, 5, k);
    kv_get_stats(kv, &s);
    T_CHECK(s.pages_in_use == 2 && pages_of(kv, 1) == 2, "commit 5 should keep 2 pages, in use %d",
            s.pages_in_use);
    check_ok(kv);
    /* Commit of 0 rows drops the entry, pinned or not. */
    kv_commit(kv, 1, 0, NULL);
    kv_get_stats(kv, &s);
    T_CHECK(s.users == 0 && s.pages_in_use == 0, "commit 0: users %d in use %d", s.users, s.pages_in_use);
    check_ok(kv);
    kv_commit(kv, 1, 0, NULL); /* no entry, nothing to do */
    T_CHECK(kv_reserve(kv, 2, 0), "reserve of 0 rows fails");
    kv_get_stats(kv, &s);
    T_CHECK(s.users == 0, "reserve of 0 rows created an entry");
    kv_end(kv);
    check_ok(kv);

    /* Reserved and never committed: kv_end drops the entry. */
    kv_begin(kv);
    T_REQUIRE(kv_reserve(kv, 3, 9), "reserve 9");
    kv_end(kv);
    kv_get_stats(kv, &s);
    T_CHECK(s.users == 0 && s.pages_in_use == 0, "uncommitted entry survived kv_end");
    check_ok(kv);

    /* A hit that reserved more and then was not committed (the forward
     * failed): kv_end trims back to the cached rows, which stay valid. */
    T_CHECK(run_user(kv, &o, 4, k, 5) == 0, "first request");
    kv_begin(kv);
    T_CHECK(kv_lookup(kv, 4, k, 12) == 5, "hit 5");
    T_REQUIRE(kv_reserve(kv, 4, 12), "reserve 12");
    T_CHECK(pages_of(kv, 4) == 3, "12 rows, %d pages", pages_of(kv, 4));
    kv_end(kv);
    T_CHECK(pages_of(kv, 4) == 2, "kv_end should trim to 2 pages, has %d", pages_of(kv, 4));
    check_ok(kv);
    T_CHECK(run_user(kv, &o, 4, k, 12) == 5, "the 5 cached rows should still hit");
    T_CHECK(check_rows(kv, &o, 4, k, 12) == 0, "rows after trim and extension");

    /* Explicit evict and clear. */
    run_user(kv, &o, 5, k, 3);
    kv_evict(kv, 4);
    kv_evict(kv, 999); /* unknown user: nothing */
    kv_get_stats(kv, &s);
    T_CHECK(s.users == 1 && pages_of(kv, 4) == 0 && pages_of(kv, 5) == 1, "evict 4: users %d", s.users);
    kv_clear(kv);
    kv_get_stats(kv, &s);
    T_CHECK(s.users == 0 && s.pages_in_use == 0, "clear: users %d in use %d", s.users, s.pages_in_use);
    check_ok(kv);
    T_CHECK(run_user(kv, &o, 5, k, 3) == 0, "hit after clear");
    kv_destroy(kv);
}

static void test_pages_truncated(void)
{
    kv_options o = opts(1, 1, 1, 1, 8);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    uint64_t k[5] = {1, 2, 3, 4, 5};
    run_user(kv, &o, 1, k, 5);
    int pages[3] = {-1, -1, -1}, all[5];
    T_CHECK(kv_pages(kv, 1, all, 5) == 5, "5 pages");
    T_CHECK(kv_pages(kv, 1, pages, 2) == 5, "the count is the full count when max is smaller");
    T_CHECK(pages[0] == all[0] && pages[1] == all[1] && pages[2] == -1, "wrote past max");
    T_CHECK(kv_pages(kv, 2, pages, 3) == 0, "unknown user has pages");
    kv_destroy(kv);
}

static void test_hash(void)
{
    static const uint64_t seqs[][4] = {
        {1, 2, 3, 0}, {3, 2, 1, 0}, {2, 1, 3, 0}, {1, 2, 4, 0}, {1, 2, 3, 4}, {0, 0, 0, 0}, {1, 1, 1, 1},
    };
    static const int lens[] = {3, 3, 3, 3, 4, 2, 2};
    enum { NS = (int)(sizeof lens / sizeof lens[0]) };
    /* Plus the prefixes of {1,2,3,4} and the empty and [0] sequences. */
    uint64_t h[NS + 6];
    int nh = 0;
    for (int i = 0; i < NS; i++)
        h[nh++] = kv_hash_keys(seqs[i], lens[i]);
    static const uint64_t base[4] = {1, 2, 3, 4};
    h[nh++] = kv_hash_keys(base, 0);
    h[nh++] = kv_hash_keys(base, 1);
    h[nh++] = kv_hash_keys(base, 2);
    h[nh++] = kv_hash_keys(seqs[5], 1); /* [0] */
    h[nh++] = kv_hash_keys(seqs[5], 3); /* [0,0,0] */
    h[nh++] = kv_hash_keys(seqs[6], 3); /* [1,1,1] */
    for (int i = 0; i < nh; i++)
        for (int j = i + 1; j < nh; j++)
            T_CHECK(h[i] != h[j], "hash collision between cases %d and %d", i, j);
    T_CHECK(kv_hash_keys(seqs[0], 3) == kv_hash_keys(seqs[0], 3), "hash not deterministic");

    /* Random sequences: every prefix, every adjacent swap and every one-bit
     * flip hashes differently from the original. */
    rng g = {2024};
    int collisions = 0;
    for (int t = 0; t < 200; t++) {
        uint64_t k[24], m[24];
        int n = 1 + (int)rng_below(&g, 24);
        for (int i = 0; i < n; i++)
            k[i] = rng_below(&g, 2) ? (uint64_t)rng_below(&g, 4) : rng_next(&g); /* small values collide more easily */
        uint64_t hk = kv_hash_keys(k, n);
        for (int p = 0; p < n; p++)
            collisions += kv_hash_keys(k, p) == hk;
        for (int i = 0; i + 1 < n; i++) {
            if (k[i] == k[i + 1])
                continue;
            memcpy(m, k, (size_t)n * sizeof *m);
            m[i] = k[i + 1];
            m[i + 1] = k[i];
            collisions += kv_hash_keys(m, n) == hk;
        }
        for (int i = 0; i < n; i++) {
            memcpy(m, k, (size_t)n * sizeof *m);
            m[i] ^= 1ull << rng_below(&g, 64);
            collisions += kv_hash_keys(m, n) == hk;
        }
    }
    T_CHECK(collisions == 0, "%d collisions among prefixes, swaps and bit flips", collisions);
}

/* ---- randomized churn -------------------------------------------------- */

enum { CH_USERS = 50, CH_HOT = 8, CH_MAXLEN = 48, CH_BATCH = 6 };

typedef struct ch_user {
    int len;                   /* current history */
    uint64_t keys[CH_MAXLEN];
    int cached;                /* rows the cache should hold (0: none) ... */
    uint64_t ckeys[CH_MAXLEN]; /* ... for these keys */
} ch_user;

static int64_t ch_id(int u) { return (int64_t)u * 7919 - 100000; /* negative and positive ids */ }

static void churn_mutate(ch_user *x, rng *g)
{
    int r = (int)rng_below(g, 100);
    if (r < 50) { /* new events appended */
        int add = 1 + (int)rng_below(g, 8);
        if (x->len + add > CH_MAXLEN)
            x->len = 0;
        for (int i = 0; i < add; i++)
            x->keys[x->len++] = rng_next(g);
    } else if (r < 60 && x->len > 0) { /* one row rewritten */
        x->keys[rng_below(g, x->len)] ^= 1 + rng_below(g, 1000);
    } else if (r < 70 && x->len > 0) { /* history shortened */
        x->len = (int)rng_below(g, x->len);
    } else if (r < 75) { /* a brand new history */
        x->len = (int)rng_below(g, CH_MAXLEN + 1);
        for (int i = 0; i < x->len; i++)
            x->keys[i] = rng_next(g);
    } /* else: the same history again */
}

static void churn(int P, int pool_pages, uint64_t seed, int batches)
{
    kv_options o = opts(3, P, 6, 5, pool_pages);
    kv_cache *kv;
    hstu_error err;
    T_REQUIRE(kv_create(&o, &kv, &err) == HSTU_OK, "create: %s", err.msg);
    static ch_user us[CH_USERS];
    memset(us, 0, sizeof us);
    rng g = {seed};
    uint64_t want_hits = 0, want_misses = 0, want_rewrites = 0, seen_evictions = 0, failures = 0;
    uint64_t hit_rows = 0;

    for (int b = 0; b < batches && !t_case_failed(); b++) {
        int nb = 1 + (int)rng_below(&g, CH_BATCH), who[CH_BATCH], hit[CH_BATCH], target[CH_BATCH];
        bool ok[CH_BATCH], pinned[CH_BATCH];
        for (int i = 0; i < nb; i++) { /* distinct users */
            int u;
            bool dup;
            do { /* a few hot users come back often, so hits are common too */
                u = (int)rng_below(&g, rng_below(&g, 10) < 7 ? CH_HOT : CH_USERS);
                dup = false;
                for (int j = 0; j < i; j++)
                    dup |= who[j] == u;
            } while (dup);
            who[i] = u;
            churn_mutate(&us[u], &g);
        }

        /* Half the batches look every user up before reserving (the order
         * the header describes); the other half interleave lookup and
         * reserve per user, so a reserve may evict a user of the same batch
         * that has not been looked up (and pinned) yet. */
        bool interleave = rng_below(&g, 2) == 0;
        for (int i = 0; i < nb; i++)
            pinned[i] = false;
        kv_begin(kv);
        for (int step = 0; step < 2 * nb; step++) {
            int i = interleave ? step / 2 : step % nb;
            bool lookup = interleave ? step % 2 == 0 : step < nb;
            ch_user *x = &us[who[i]];
            if (lookup) {
                bool present = pages_of(kv, ch_id(who[i])) > 0;
                if (interleave && !present && x->cached > 0) { /* evicted by this batch's reserves */
                    seen_evictions++;
                    x->cached = 0;
                }
                T_CHECK(present == (x->cached > 0), "batch %d user %d: present %d, shadow says %d rows", b,
                        who[i], present, x->cached);
                int expect = 0;
                if (x->cached > 0 && x->cached <= x->len &&
                    memcmp(x->keys, x->ckeys, (size_t)x->cached * sizeof(uint64_t)) == 0)
                    expect = x->cached;
                if (expect)
                    want_hits++;
                else
                    want_misses++;
                if (present && !expect)
                    want_rewrites++;
                hit[i] = kv_lookup(kv, ch_id(who[i]), x->keys, x->len);
                T_CHECK(hit[i] == expect, "batch %d user %d: lookup %d, expected %d", b, who[i], hit[i], expect);
                if (hit[i] > 0) {
                    T_CHECK(check_rows(kv, &o, ch_id(who[i]), x->keys, hit[i]) == 0,
                            "batch %d user %d: hit rows", b, who[i]);
                    hit_rows += (uint64_t)hit[i];
                } else {
                    x->cached = 0;
                }
                pinned[i] = hit[i] > 0;
                continue;
            }
            /* Reserve; predict the outcome from the free pages and the pages
             * of users not pinned in this batch. */
            target[i] = x->len;
            if (target[i] > 0 && rng_below(&g, 5) == 0)
                target[i]--; /* like retrieval: the newest row is not cached */
            kv_stats s;
            kv_get_stats(kv, &s);
            int pinned_pages = 0;
            for (int j = 0; j < nb; j++)
                if (pinned[j])
                    pinned_pages += pages_of(kv, ch_id(who[j]));
            int mine = pages_of(kv, ch_id(who[i]));
            int want = (target[i] + P - 1) / P;
            int need = want > mine ? want - mine : 0;
            int evictable = s.pages_in_use - pinned_pages - (pinned[i] ? 0 : mine);
            bool can = need <= (s.pages_total - s.pages_in_use) + evictable;
            ok[i] = kv_reserve(kv, ch_id(who[i]), target[i]);
            T_CHECK(ok[i] == can, "batch %d user %d: reserve %d rows returned %d, expected %d", b, who[i],
                    target[i], ok[i], can);
            if (ok[i] && target[i] > 0)
                pinned[i] = true;
            if (!ok[i])
                failures++;
            kv_get_stats(kv, &s);
            T_CHECK(s.pages_in_use <= s.pages_total, "pages in use %d > pool %d", s.pages_in_use, s.pages_total);
        }
        if (rng_below(&g, 4) == 0)
            check_ok(kv); /* mid-batch: pins and spare pages allowed */

        /* Pinned users kept their cached rows through the others' reserves. */
        for (int i = 0; i < nb; i++)
            if (hit[i] > 0)
                T_CHECK(check_rows(kv, &o, ch_id(who[i]), us[who[i]].keys, hit[i]) == 0,
                        "batch %d user %d: pinned rows lost", b, who[i]);

        for (int i = 0; i < nb; i++)
            if (ok[i])
                write_rows(kv, &o, ch_id(who[i]), us[who[i]].keys, hit[i], target[i]);

        for (int i = 0; i < nb; i++) {
            ch_user *x = &us[who[i]];
            if (!ok[i]) { /* degraded: computed uncached; a hit's rows stay */
                x->cached = hit[i];
                continue;
            }
            int r = (int)rng_below(&g, 20);
            if (r == 0) { /* the forward failed: no commit; kv_end cleans up */
                x->cached = hit[i];
                continue;
            }
            int rows = target[i];
            if (r == 1)
                rows = (int)rng_below(&g, target[i] + 1); /* commit fewer rows */
            kv_commit(kv, ch_id(who[i]), rows, x->keys);
            x->cached = rows;
            memcpy(x->ckeys, x->keys, (size_t)rows * sizeof(uint64_t));
        }
        kv_end(kv);

        T_CHECK(check_ok(kv), "after batch %d", b);
        kv_stats s;
        kv_get_stats(kv, &s);
        /* Users the shadow still expects but the cache lost were evicted. */
        int users = 0;
        for (int u = 0; u < CH_USERS; u++) {
            int np = pages_of(kv, ch_id(u));
            if (us[u].cached > 0 && np == 0) {
                seen_evictions++;
                us[u].cached = 0;
            }
            T_CHECK(np == (us[u].cached + P - 1) / P, "batch %d user %d: %d pages for %d rows", b, u, np,
                    us[u].cached);
            users += us[u].cached > 0;
        }
        T_CHECK(s.users == users, "batch %d: %d users, shadow has %d", b, s.users, users);
        T_CHECK(s.evictions == seen_evictions, "batch %d: %llu evictions counted, %llu users lost", b,
                (unsigned long long)s.evictions, (unsigned long long)seen_evictions);
        T_CHECK(s.hits == want_hits && s.misses == want_misses && s.rewrites == want_rewrites &&
                    s.reserve_failures == failures,
                "batch %d: hits %llu/%llu misses %llu/%llu rewrites %llu/%llu failures %llu/%llu", b,
                (unsigned long long)s.hits, (unsigned long long)want_hits, (unsigned long long)s.misses,
                (unsigned long long)want_misses, (unsigned long long)s.rewrites,
                (unsigned long long)want_rewrites, (unsigned long long)s.reserve_failures,
                (unsigned long long)failures);
        T_CHECK(s.pages_in_use <= s.pages_total, "pages in use %d > pool %d", s.pages_in_use, s.pages_total);

        if (b % 8 == 0) /* every cached row of every user still holds its pattern */
            for (int u = 0; u < CH_USERS; u++)
                if (us[u].cached > 0)
                    T_CHECK(check_rows(kv, &o, ch_id(u), us[u].ckeys, us[u].cached) == 0,
                            "batch %d user %d: cached rows", b, u);

        int r = (int)rng_below(&g, 1000);
        if (r < 30) {
            int u = (int)rng_below(&g, CH_USERS);
            kv_evict(kv, ch_id(u));
            us[u].cached = 0;
        } else if (r < 33) {
            kv_clear(kv);
            for (int u = 0; u < CH_USERS; u++)
                us[u].cached = 0;
        }
        if (r < 33)
            check_ok(kv);
    }

    kv_stats s;
    kv_get_stats(kv, &s);
    printf("    P=%d pool=%d: %d batches, %llu hits (%llu rows), %llu misses, %llu rewrites, %llu evictions, "
           "%llu reserve failures\n",
           P, pool_pages, batches, (unsigned long long)s.hits, (unsigned long long)hit_rows,
           (unsigned long long)s.misses, (unsigned long long)s.rewrites, (unsigned long long)s.evictions,
           (unsigned long long)s.reserve_failures);
    /* The run must have exercised every path, or it proves little. */
    T_CHECK(s.hits > 100 && s.misses > 100 && s.rewrites > 10 && s.evictions > 100 && s.reserve_failures > 10,
            "churn did not exercise every path");
    kv_destroy(kv);
}

static void test_churn_p4(void) { churn(4, 40, 1, 4000); }
static void test_churn_p1(void) { churn(1, 150, 2, 4000); }
static void test_churn_p7(void) { churn(7, 24, 3, 4000); }

int main(void)
{
    t_run("create rejects bad options with a message", test_create_errors);
    t_run("page layout: offsets, full-page writes stay inside", test_page_layout);
    t_run("lookup: miss, hit, prefix extension, rewrite, shorter", test_lookup);
    t_run("deferred lookup: hit, keys needed now, reject", test_lookup_deferred);
    t_run("LRU order, pinning, reserve that cannot be met", test_lru_and_pinning);
    t_run("commit shrinks, commit 0 drops, kv_end cleans up", test_commit_and_end);
    t_run("kv_pages with a small buffer", test_pages_truncated);
    t_run("user index under load: inserts and deletes", test_index_load);
    t_run("key hash: order, length, values", test_hash);
    t_run("churn P=4, 40 pages", test_churn_p4);
    t_run("churn P=1, 150 pages", test_churn_p1);
    t_run("churn P=7, 24 pages", test_churn_p7);
    return t_summary();
}
