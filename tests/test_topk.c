/* test_topk.c - retrieval's exact top-k (topk.h): topk_cpu and topk_ref,
 * each against a brute force written here.
 *
 * The brute force scores every item in double, drops id 0 and the excluded
 * ids (a mask built from the list, not the header's binary search), and
 * sorts by (score descending, id ascending). An output passes when it has
 * the right count, only eligible distinct ids, scores within 1e-5 of the
 * double ones, strict (score, id) order, the same i-th best score as the
 * brute force, and the brute force's id wherever the i-th place is not
 * within rounding of its neighbours. Exact ties come from duplicated item
 * rows, spread across TOPK_CHUNK boundaries: they must come out in
 * ascending id order, and a k that cuts a group keeps its smallest ids;
 * also with k = every item, which topk_cpu answers by appending every
 * eligible item and sorting once instead of keeping a heap.
 */
#include "core/rng.h"
#include "harness.h"
#include "kernels/topk.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-5    /* fp32 dot products of unit vectors, d <= 256 */
#define SENTINEL (-12345)
#define KPAD 4      /* sentinel slots past k in each output */

static rng g_rng = {0x70bcafe1234ull};

/* ---- problem setup -------------------------------------------------------- */

typedef struct problem {
    int B, d;
    int64_t n_items;
    float *users, *items;    /* [B, d], [n_items, d], unit rows */
    int64_t **exclude;       /* [B] sorted lists or NULL */
    int *n_exclude, *k;      /* [B] */
} problem;

static void unit_rows(float *x, int64_t rows, int d)
{
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int c = 0; c < d; c++) {
            float v = rng_range(&g_rng, -1, 1);
            x[r * d + c] = v;
            ss += (double)v * v;
        }
        double inv = 1.0 / sqrt(ss);
        for (int c = 0; c < d; c++)
            x[r * d + c] = (float)(x[r * d + c] * inv);
    }
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        abort();
    return p;
}

static problem prob_new(int B, int d, int64_t n_items, int k)
{
    problem p = {.B = B, .d = d, .n_items = n_items};
    p.users = xcalloc((size_t)B * d, sizeof(float));
    p.items = xcalloc((size_t)n_items * d, sizeof(float));
    unit_rows(p.users, B, d);
    unit_rows(p.items, n_items, d);
    p.exclude = xcalloc((size_t)B, sizeof(int64_t *));
    p.n_exclude = xcalloc((size_t)B, sizeof(int));
    p.k = xcalloc((size_t)B, sizeof(int));
    for (int b = 0; b < B; b++)
        p.k[b] = k;
    return p;
}

static void prob_free(problem *p)
{
    for (int b = 0; b < p->B; b++)
        free(p->exclude[b]);
    free(p->users), free(p->items), free(p->exclude), free(p->n_exclude), free(p->k);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sets user b's exclusion list (copied, sorted). */
static void set_exclude(problem *p, int b, const int64_t *ids, int n)
{
    free(p->exclude[b]);
    p->exclude[b] = xcalloc((size_t)n, sizeof(int64_t));
    memcpy(p->exclude[b], ids, sizeof(int64_t) * (size_t)n);
    qsort(p->exclude[b], (size_t)n, sizeof(int64_t), cmp_i64);
    p->n_exclude[b] = n;
}

/* ---- brute force ---------------------------------------------------------- */

typedef struct bf_entry { double s; int64_t id; } bf_entry;

static int cmp_bf(const void *a, const void *b)
{
    const bf_entry *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

typedef struct brute {
    int64_t n;          /* eligible items */
    bf_entry *sorted;   /* [n] best first */
    double *score;      /* [n_items] exact score of every id */
    unsigned char *ok;  /* [n_items] eligible */
} brute;

static brute brute_force(const problem *p, int b)
{
    brute r;
    r.score = xcalloc((size_t)p->n_items, sizeof(double));
    r.ok = xcalloc((size_t)p->n_items, 1);
    r.sorted = xcalloc((size_t)p->n_items, sizeof(bf_entry));
    for (int64_t j = 1; j < p->n_items; j++)
        r.ok[j] = 1;
    for (int i = 0; i < p->n_exclude[b]; i++) {
        int64_t id = p->exclude[b][i];
        if (id >= 0 && id < p->n_items)
            r.ok[id] = 0;
    }
    r.n = 0;
    for (int64_t j = 0; j < p->n_items; j++) {
        double s = 0;
        for (int c = 0; c < p->d; c++)
            s += (double)p->users[(size_t)b * p->d + c] * p->items[(size_t)j * p->d + c];
        r.score[j] = s;
        if (r.ok[j])
            r.sorted[r.n++] = (bf_entry){s, j};
    }
    qsort(r.sorted, (size_t)r.n, sizeof(bf_entry), cmp_bf);
    return r;
}

static void brute_free(brute *r) { free(r->score), free(r->ok), free(r->sorted); }

/* ---- running and checking ------------------------------------------------- */

typedef struct result {
    int64_t **ids;
    float **scores;
    int *n_out;
} result;

static result run_topk(const problem *p, bool cpu)
{
    result r;
    r.ids = xcalloc((size_t)p->B, sizeof(int64_t *));
    r.scores = xcalloc((size_t)p->B, sizeof(float *));
    r.n_out = xcalloc((size_t)p->B, sizeof(int));
    for (int b = 0; b < p->B; b++) {
        r.ids[b] = xcalloc((size_t)p->k[b] + KPAD, sizeof(int64_t));
        r.scores[b] = xcalloc((size_t)p->k[b] + KPAD, sizeof(float));
        for (int i = 0; i < p->k[b] + KPAD; i++)
            r.ids[b][i] = SENTINEL, r.scores[b][i] = SENTINEL;
        r.n_out[b] = SENTINEL;
    }
    size_t scratch_n = (size_t)p->B * TOPK_CHUNK;
    float *scratch = xcalloc(scratch_n + KPAD, sizeof(float));
    for (size_t i = scratch_n; i < scratch_n + KPAD; i++)
        scratch[i] = SENTINEL;
    topk_params tp = {
        .B = p->B,
        .d = p->d,
        .users = p->users,
        .items = p->items,
        .n_items = p->n_items,
        .exclude = (const int64_t *const *)p->exclude,
        .n_exclude = p->n_exclude,
        .k = p->k,
        .ids = r.ids,
        .scores = r.scores,
        .n_out = r.n_out,
        .scratch = cpu ? scratch : NULL,
    };
    if (cpu)
        topk_cpu(&tp);
    else
        topk_ref(&tp);
    for (size_t i = scratch_n; i < scratch_n + KPAD; i++)
        T_CHECK(scratch[i] == SENTINEL, "topk_cpu wrote past B * TOPK_CHUNK scratch floats");
    free(scratch);
    return r;
}

static void result_free(const problem *p, result *r)
{
    for (int b = 0; b < p->B; b++)
        free(r->ids[b]), free(r->scores[b]);
    free(r->ids), free(r->scores), free(r->n_out);
}

/* True when the i-th best score is within rounding of a neighbour, so two
 * fp32 computations may legitimately order those places differently. */
static bool ambiguous(const brute *bf, int64_t i)
{
    if (i > 0 && bf->sorted[i - 1].s - bf->sorted[i].s <= 2 * TOL)
        return true;
    if (i + 1 < bf->n && bf->sorted[i].s - bf->sorted[i + 1].s <= 2 * TOL)
        return true;
    return false;
}

/* Checks one user's output against the brute force; returns false on the
 * first problem (after reporting it). */
static bool check_user(const char *who, const char *label, const problem *p, int b, const result *r,
                       const brute *bf)
{
    int want_n = (int)(p->k[b] < bf->n ? p->k[b] : bf->n);
    int n = r->n_out[b];
    if (n != want_n) {
        T_CHECK(false, "%s %s user %d: n_out %d, expected min(k %d, eligible %lld) = %d", who, label, b, n,
                p->k[b], (long long)bf->n, want_n);
        return false;
    }
    for (int i = 0; i < n; i++) {
        int64_t id = r->ids[b][i];
        float s = r->scores[b][i];
        if (id <= 0 || id >= p->n_items || !bf->ok[id]) {
            T_CHECK(false, "%s %s user %d: place %d holds id %lld, which is %s", who, label, b, i, (long long)id,
                    id == 0 ? "the padding id 0" : id < 0 || id >= p->n_items ? "out of range" : "excluded");
            return false;
        }
        for (int j = 0; j < i; j++)
            if (r->ids[b][j] == id) {
                T_CHECK(false, "%s %s user %d: id %lld at places %d and %d", who, label, b, (long long)id, j, i);
                return false;
            }
        if (fabs(s - bf->score[id]) > TOL) {
            T_CHECK(false, "%s %s user %d: id %lld scored %.8g, exact %.8g", who, label, b, (long long)id, s,
                    bf->score[id]);
            return false;
        }
        if (fabs(bf->score[id] - bf->sorted[i].s) > TOL) {
            T_CHECK(false, "%s %s user %d: place %d holds id %lld (exact %.8g), the %d-th best is id %lld (%.8g)",
                    who, label, b, i, (long long)id, bf->score[id], i, (long long)bf->sorted[i].id,
                    bf->sorted[i].s);
            return false;
        }
        if (!ambiguous(bf, i) && id != bf->sorted[i].id) {
            T_CHECK(false, "%s %s user %d: place %d holds id %lld, expected %lld", who, label, b, i, (long long)id,
                    (long long)bf->sorted[i].id);
            return false;
        }
        if (i > 0 && !topk_before(r->scores[b][i - 1], r->ids[b][i - 1], s, id)) {
            T_CHECK(false, "%s %s user %d: places %d, %d out of order: (%.9g, id %lld) then (%.9g, id %lld)", who,
                    label, b, i - 1, i, r->scores[b][i - 1], (long long)r->ids[b][i - 1], s, (long long)id);
            return false;
        }
    }
    for (int i = p->k[b]; i < p->k[b] + KPAD; i++)
        if (r->ids[b][i] != SENTINEL || r->scores[b][i] != SENTINEL) {
            T_CHECK(false, "%s %s user %d: wrote past k = %d outputs (slot %d)", who, label, b, p->k[b], i);
            return false;
        }
    return true;
}

/* Runs both twins, checks each against the brute force and against each
 * other; hands the results back through cpu_out / ref_out for further
 * checks (the caller frees them), or frees them when those are NULL. */
static void run_and_check(const char *label, const problem *p, result *cpu_out, result *ref_out)
{
    result rc = run_topk(p, true), rr = run_topk(p, false);
    for (int b = 0; b < p->B; b++) {
        brute bf = brute_force(p, b);
        check_user("topk_cpu", label, p, b, &rc, &bf);
        check_user("topk_ref", label, p, b, &rr, &bf);
        if (rc.n_out[b] == rr.n_out[b] && rc.n_out[b] >= 0)
            for (int i = 0; i < rc.n_out[b]; i++) {
                if (fabsf(rc.scores[b][i] - rr.scores[b][i]) > TOL ||
                    (!ambiguous(&bf, i) && rc.ids[b][i] != rr.ids[b][i])) {
                    T_CHECK(false, "%s user %d place %d: cpu (%lld, %.8g) vs ref (%lld, %.8g)", label, b, i,
                            (long long)rc.ids[b][i], rc.scores[b][i], (long long)rr.ids[b][i], rr.scores[b][i]);
                    break;
                }
            }
        brute_free(&bf);
    }
    if (cpu_out)
        *cpu_out = rc;
    else
        result_free(p, &rc);
    if (ref_out)
        *ref_out = rr;
    else
        result_free(p, &rr);
}

/* ---- cases ---------------------------------------------------------------- */

static void test_small_table(void)
{
    problem p = prob_new(1, 50, 50, 10);
    run_and_check("50 items k 10", &p, NULL, NULL);
    prob_free(&p);
}

static void test_chunk_plus_one(void)
{
    /* 4097 items: the second chunk holds one item */
    problem p = prob_new(3, 64, TOPK_CHUNK + 1, 10);
    p.k[0] = 1, p.k[2] = 100;
    run_and_check("4097 items", &p, NULL, NULL);
    prob_free(&p);
}

static void test_exact_chunk(void)
{
    problem p = prob_new(2, 32, TOPK_CHUNK, 20);
    run_and_check("4096 items", &p, NULL, NULL);
    prob_free(&p);
}

static void test_many_users(void)
{
    /* ml-1m-like width, three chunks (4096, 4096, 1808), k varying per user */
    problem p = prob_new(8, 50, 10000, 10);
    const int ks[8] = {1, 2, 5, 10, 50, 200, 7, 1000};
    for (int b = 0; b < 8; b++)
        p.k[b] = ks[b];
    run_and_check("10000 items B 8", &p, NULL, NULL);
    prob_free(&p);
}

static void test_wide_rows(void)
{
    problem p = prob_new(4, 256, 5000, 25);
    run_and_check("5000 items d 256", &p, NULL, NULL);
    prob_free(&p);
}

/* A user's answer does not depend on who else is in the batch. */
static void test_batch_invariance(void)
{
    problem p = prob_new(5, 50, 9000, 30);
    result all;
    run_and_check("batch of 5", &p, &all, NULL);
    for (int b = 0; b < p.B; b++) {
        problem one = p;
        one.B = 1;
        one.users = p.users + (size_t)b * p.d;
        one.exclude = p.exclude + b, one.n_exclude = p.n_exclude + b, one.k = p.k + b;
        result r = run_topk(&one, true);
        brute bf = brute_force(&one, 0);
        T_CHECK(r.n_out[0] == all.n_out[b], "user %d: n_out %d alone, %d in the batch", b, r.n_out[0], all.n_out[b]);
        for (int i = 0; i < r.n_out[0] && i < all.n_out[b]; i++)
            if (fabsf(r.scores[0][i] - all.scores[b][i]) > TOL || (!ambiguous(&bf, i) && r.ids[0][i] != all.ids[b][i])) {
                T_CHECK(false, "user %d place %d: alone (%lld, %.8g), in the batch (%lld, %.8g)", b, i,
                        (long long)r.ids[0][i], r.scores[0][i], (long long)all.ids[b][i], all.scores[b][i]);
                break;
            }
        brute_free(&bf);
        result_free(&one, &r);
    }
    result_free(&p, &all);
    prob_free(&p);
}

static void test_exclusion(void)
{
    problem p = prob_new(4, 50, 10000, 25);
    /* user 0: NULL list; user 1: empty list (non-NULL, n 0) */
    p.exclude[1] = xcalloc(1, sizeof(int64_t));
    p.n_exclude[1] = 0;
    /* user 2: its own brute-force top 40, each twice, plus 0, the last id,
     * ids in every chunk and a few ids past the table */
    {
        brute bf = brute_force(&p, 2);
        int64_t ex[100];
        int n = 0;
        for (int i = 0; i < 40; i++)
            ex[n++] = bf.sorted[i].id, ex[n++] = bf.sorted[i].id;
        ex[n++] = 0, ex[n++] = 9999, ex[n++] = 4095, ex[n++] = 4096, ex[n++] = 8192;
        ex[n++] = 10000, ex[n++] = 123456;
        set_exclude(&p, 2, ex, n);
        brute_free(&bf);
    }
    /* user 3: random ids with many repeats */
    {
        int64_t ex[600];
        for (int i = 0; i < 600; i++)
            ex[i] = 1 + rng_below(&g_rng, 300) * 33;
        set_exclude(&p, 3, ex, 600);
    }
    run_and_check("exclusion lists", &p, NULL, NULL);
    prob_free(&p);
}

/* Exclusion leaves fewer than k eligible: n_out < k. */
static void test_exclusion_most(void)
{
    int64_t n_items = 9000;
    problem p = prob_new(3, 50, n_items, 20);
    int64_t *ex = xcalloc((size_t)n_items * 2, sizeof(int64_t));
    const int64_t keep[3][7] = {{1, 2, 3, 4, 5, 6, 7},
                                {4095, 4096, 4097, 8191, 8192, 8999, 17},
                                {100, 5000, 8998, 1, 0, 0, 0}};
    const int n_keep[3] = {7, 7, 4};
    for (int b = 0; b < 3; b++) {
        int n = 0;
        for (int64_t j = 0; j < n_items; j++) {
            bool kept = false;
            for (int i = 0; i < n_keep[b]; i++)
                kept |= keep[b][i] == j && j != 0;
            if (!kept) {
                ex[n++] = j;
                if (j % 3 == 0)
                    ex[n++] = j; /* duplicates too */
            }
        }
        set_exclude(&p, b, ex, n);
    }
    p.k[2] = 4; /* exactly the eligible count */
    result rc;
    run_and_check("all but a few excluded", &p, &rc, NULL);
    T_CHECK(rc.n_out[0] == 7 && rc.n_out[1] == 7 && rc.n_out[2] == 4, "n_out %d %d %d, expected 7 7 4",
            rc.n_out[0], rc.n_out[1], rc.n_out[2]);
    result_free(&p, &rc);
    /* everything excluded: n_out 0 */
    int n = 0;
    for (int64_t j = 1; j < n_items; j++)
        ex[n++] = j;
    set_exclude(&p, 0, ex, n);
    run_and_check("everything excluded", &p, &rc, NULL);
    T_CHECK(rc.n_out[0] == 0, "n_out %d with every id excluded", rc.n_out[0]);
    result_free(&p, &rc);
    free(ex);
    prob_free(&p);
}

static void test_k_edges(void)
{
    /* k larger than the table: every eligible id (49) comes back */
    problem p = prob_new(2, 16, 50, 100);
    p.k[1] = 49;
    result rc;
    run_and_check("k > eligible", &p, &rc, NULL);
    T_CHECK(rc.n_out[0] == 49 && rc.n_out[1] == 49, "n_out %d %d, expected 49 49", rc.n_out[0], rc.n_out[1]);
    result_free(&p, &rc);
    prob_free(&p);
    /* k 1 over three chunks */
    p = prob_new(3, 50, 10000, 1);
    run_and_check("k 1", &p, NULL, NULL);
    prob_free(&p);
    /* a table holding only the padding row, and one real row */
    p = prob_new(2, 8, 1, 5);
    run_and_check("1 item (padding only)", &p, &rc, NULL);
    T_CHECK(rc.n_out[0] == 0 && rc.n_out[1] == 0, "padding-only table: n_out %d %d", rc.n_out[0], rc.n_out[1]);
    result_free(&p, &rc);
    prob_free(&p);
    p = prob_new(1, 8, 2, 5);
    run_and_check("2 items", &p, &rc, NULL);
    T_CHECK(rc.n_out[0] == 1 && rc.ids[0][0] == 1, "2-row table: n_out %d id %lld", rc.n_out[0],
            (long long)rc.ids[0][0]);
    result_free(&p, &rc);
    prob_free(&p);
}

/* k = every item, as `hstu eval` asks (topk_cpu appends every eligible item
 * and sorts once when k covers the eligible count): exclusion lists with
 * duplicates, id 0 and ids past the table must not shrink the count wrongly;
 * k exactly the eligible count takes that path, one less takes the heap;
 * both kinds of user in one batch, over three chunks and in one. */
static void test_k_all(void)
{
    int64_t n_items = 10000;
    problem p = prob_new(6, 50, n_items, (int)n_items - 1);
    int64_t ex[400];
    int n = 0;
    for (int i = 0; i < 150; i++)
        ex[n++] = 1 + rng_below(&g_rng, n_items - 1), ex[n] = ex[n - 1], n++; /* each twice */
    ex[n++] = 0, ex[n++] = n_items - 1, ex[n++] = 4095, ex[n++] = 4096, ex[n++] = n_items, ex[n++] = 99999;
    for (int b = 1; b < 6; b++)
        set_exclude(&p, b, ex, n);
    /* distinct in-range excluded ids: the eligible count */
    int64_t distinct = 0;
    for (int i = 0; i < p.n_exclude[1]; i++)
        distinct += p.exclude[1][i] >= 1 && p.exclude[1][i] < n_items && (i == 0 || p.exclude[1][i] != p.exclude[1][i - 1]);
    int eligible = (int)(n_items - 1 - distinct);
    memcpy(p.users + 3 * p.d, p.users + 2 * p.d, sizeof(float) * (size_t)p.d); /* users 2, 3 alike */
    p.k[2] = eligible;     /* exactly: append path */
    p.k[3] = eligible - 1; /* one short: heap path */
    p.k[4] = eligible / 2;
    p.k[5] = 0;
    result rc;
    run_and_check("k = every item", &p, &rc, NULL);
    T_CHECK(rc.n_out[0] == n_items - 1 && rc.n_out[1] == eligible && rc.n_out[2] == eligible &&
                rc.n_out[3] == eligible - 1 && rc.n_out[4] == eligible / 2 && rc.n_out[5] == 0,
            "n_out %d %d %d %d %d %d, expected %lld %d %d %d %d 0", rc.n_out[0], rc.n_out[1], rc.n_out[2], rc.n_out[3],
            rc.n_out[4], rc.n_out[5], (long long)n_items - 1, eligible, eligible, eligible - 1, eligible / 2);
    /* the append path and the heap path agree on their common prefix, id for id */
    for (int i = 0; i < eligible - 1 && i < rc.n_out[3]; i++)
        if (rc.ids[2][i] != rc.ids[3][i] || rc.scores[2][i] != rc.scores[3][i]) {
            T_CHECK(false, "place %d: k = eligible (%lld, %.9g), k = eligible - 1 (%lld, %.9g)", i,
                    (long long)rc.ids[2][i], rc.scores[2][i], (long long)rc.ids[3][i], rc.scores[3][i]);
            break;
        }
    result_free(&p, &rc);
    prob_free(&p);
    /* one chunk (ML-1M's 3417 rows), k = every item, with and without a history */
    p = prob_new(4, 50, 3417, 3416);
    const int64_t hist[] = {5, 5, 17, 3416, 1200, 2, 3000, 3000, 999};
    set_exclude(&p, 1, hist, 9);
    set_exclude(&p, 3, hist, 3);
    run_and_check("k = every item, 3417 rows", &p, &rc, NULL);
    T_CHECK(rc.n_out[0] == 3416 && rc.n_out[1] == 3416 - 7 && rc.n_out[3] == 3416 - 2, "n_out %d %d %d",
            rc.n_out[0], rc.n_out[1], rc.n_out[3]);
    result_free(&p, &rc);
    prob_free(&p);
}

/* Id 0 is the best match of every user and never comes back. */
static void test_padding_never_returned(void)
{
    problem p = prob_new(3, 50, 5000, 10);
    memcpy(p.items, p.users, sizeof(float) * p.d); /* item 0 = user 0 */
    for (int c = 0; c < p.d; c++)
        p.users[1 * p.d + c] = p.users[2 * p.d + c] = p.users[c];
    result rc, rr;
    run_and_check("id 0 is the best row", &p, &rc, &rr);
    for (int b = 0; b < p.B; b++)
        for (int i = 0; i < rc.n_out[b]; i++)
            T_CHECK(rc.ids[b][i] != 0 && rr.ids[b][i] != 0, "id 0 returned to user %d", b);
    result_free(&p, &rc);
    result_free(&p, &rr);
    prob_free(&p);
}

/* Duplicated rows give identical scores: ascending ids, and a k that cuts
 * the group keeps the smallest ids. Copies sit in every chunk, at the first
 * and last column of a chunk, and in the short last chunk. */
static void run_ties(int B, int d)
{
    int64_t n_items = 10000;
    problem p = prob_new(B, d, n_items, 3);
    const int64_t top[] = {9999, 4096, 17, 4095, 8192, 3, 5000, 1};
    const int64_t mid[] = {7000, 2, 8191, 4097, 6};
    int n_top = (int)(sizeof top / sizeof top[0]), n_mid = (int)(sizeof mid / sizeof mid[0]);
    /* every user gets the same best row (a copy of user 0) so the group is
     * the top of every user's list; a second group of identical rows sits
     * lower in the ranking */
    for (int b = 1; b < B; b++)
        for (int c = 0; c < d; c++)
            p.users[(size_t)b * d + c] = p.users[c];
    for (int i = 0; i < n_top; i++)
        memcpy(p.items + (size_t)top[i] * d, p.users, sizeof(float) * d);
    /* mid: a row at 60 degrees from the user, well above random rows' scores */
    float *row = xcalloc((size_t)d, sizeof(float));
    {
        float *r = xcalloc((size_t)d, sizeof(float));
        unit_rows(r, 1, d);
        double dot = 0, ss = 0;
        for (int c = 0; c < d; c++)
            dot += (double)r[c] * p.users[c];
        for (int c = 0; c < d; c++) {
            r[c] = (float)(r[c] - dot * p.users[c]); /* orthogonal to the user */
            ss += (double)r[c] * r[c];
        }
        for (int c = 0; c < d; c++)
            row[c] = (float)(0.5 * p.users[c] + 0.8660254037844386 * r[c] / sqrt(ss));
        free(r);
    }
    for (int i = 0; i < n_mid; i++)
        memcpy(p.items + (size_t)mid[i] * d, row, sizeof(float) * d);
    free(row);
    /* k: cut the top group, take it whole, take both groups, take every item
     * (topk_cpu's append-and-sort path) */
    const int ks[4] = {3, n_top, n_top + n_mid + 10, (int)n_items - 1};
    for (int ki = 0; ki < 4; ki++) {
        for (int b = 0; b < B; b++)
            p.k[b] = ks[ki];
        char label[48];
        snprintf(label, sizeof label, "ties B %d k %d", B, ks[ki]);
        result rc, rr;
        run_and_check(label, &p, &rc, &rr);
        int64_t top_sorted[8], mid_sorted[5];
        memcpy(top_sorted, top, sizeof top), memcpy(mid_sorted, mid, sizeof mid);
        qsort(top_sorted, (size_t)n_top, sizeof(int64_t), cmp_i64);
        qsort(mid_sorted, (size_t)n_mid, sizeof(int64_t), cmp_i64);
        for (int t = 0; t < 2; t++) {
            const result *r = t ? &rr : &rc;
            const char *who = t ? "topk_ref" : "topk_cpu";
            for (int b = 0; b < B; b++) {
                int n = r->n_out[b];
                for (int i = 0; i < n && i < n_top; i++)
                    if (r->ids[b][i] != top_sorted[i] || r->scores[b][i] != r->scores[b][0]) {
                        T_CHECK(false, "%s %s user %d: place %d is (id %lld, %.9g), expected id %lld with score %.9g",
                                who, label, b, i, (long long)r->ids[b][i], r->scores[b][i], (long long)top_sorted[i],
                                r->scores[b][0]);
                        break;
                    }
                if (n >= n_top + n_mid)
                    for (int i = 0; i < n_mid; i++)
                        if (r->ids[b][n_top + i] != mid_sorted[i] ||
                            r->scores[b][n_top + i] != r->scores[b][n_top]) {
                            T_CHECK(false, "%s %s user %d: place %d is (id %lld, %.9g), expected id %lld, score %.9g",
                                    who, label, b, n_top + i, (long long)r->ids[b][n_top + i],
                                    r->scores[b][n_top + i], (long long)mid_sorted[i], r->scores[b][n_top]);
                            break;
                        }
            }
        }
        result_free(&p, &rc);
        result_free(&p, &rr);
    }
    prob_free(&p);
}

static void test_ties_one_user(void) { run_ties(1, 50); }
static void test_ties_batch(void) { run_ties(4, 64); }

/* The brute force itself, on a case small enough to work out by hand:
 * user (1, 0); items 0 (1, 0) padding, 1 (0, 1) -> 0, 2 (0.6, 0.8) -> 0.6,
 * 3 (-1, 0) -> -1, 4 (0.6, -0.8) -> 0.6, 5 (0.8, 0.6) -> 0.8; item 5
 * excluded. Expected order: 2 (0.6), 4 (0.6), 1 (0), 3 (-1). */
static void test_hand_case(void)
{
    problem p = prob_new(1, 2, 6, 10);
    const float it[12] = {1, 0, 0, 1, 0.6f, 0.8f, -1, 0, 0.6f, -0.8f, 0.8f, 0.6f};
    memcpy(p.items, it, sizeof it);
    p.users[0] = 1, p.users[1] = 0;
    const int64_t ex[1] = {5};
    set_exclude(&p, 0, ex, 1);
    const int64_t want_id[4] = {2, 4, 1, 3};
    const float want_s[4] = {0.6f, 0.6f, 0, -1};
    brute bf = brute_force(&p, 0);
    T_CHECK(bf.n == 4, "brute force: %lld eligible, expected 4", (long long)bf.n);
    for (int i = 0; i < 4 && i < bf.n; i++)
        T_CHECK(bf.sorted[i].id == want_id[i] && fabs(bf.sorted[i].s - want_s[i]) < 1e-7,
                "brute force place %d: (%lld, %g), expected (%lld, %g)", i, (long long)bf.sorted[i].id,
                bf.sorted[i].s, (long long)want_id[i], want_s[i]);
    brute_free(&bf);
    for (int t = 0; t < 2; t++) {
        result r = run_topk(&p, t == 0);
        const char *who = t ? "topk_ref" : "topk_cpu";
        T_CHECK(r.n_out[0] == 4, "%s: n_out %d, expected 4", who, r.n_out[0]);
        for (int i = 0; i < 4 && i < r.n_out[0]; i++)
            T_CHECK(r.ids[0][i] == want_id[i] && r.scores[0][i] == want_s[i], "%s place %d: (%lld, %g), expected (%lld, %g)",
                    who, i, (long long)r.ids[0][i], r.scores[0][i], (long long)want_id[i], want_s[i]);
        result_free(&p, &r);
    }
    prob_free(&p);
}

int main(void)
{
    t_run("hand case: brute force and both twins", test_hand_case);
    t_run("50 items, B 1, k 10", test_small_table);
    t_run("4096 items (exactly one chunk), B 2", test_exact_chunk);
    t_run("4097 items (chunk + 1), B 3, k 1 / 10 / 100", test_chunk_plus_one);
    t_run("10000 items, B 8, k 1..1000", test_many_users);
    t_run("5000 items, d 256, B 4", test_wide_rows);
    t_run("a user's answer does not depend on the batch", test_batch_invariance);
    t_run("exclusion: NULL, empty, duplicates, top items, ids past the table", test_exclusion);
    t_run("exclusion of all but a few: n_out < k, and of everything", test_exclusion_most);
    t_run("k 1, k > eligible, 1- and 2-row tables", test_k_edges);
    t_run("id 0 never returned (even as the best row)", test_padding_never_returned);
    t_run("ties: duplicate rows in ascending id order, B 1", test_ties_one_user);
    t_run("ties: duplicate rows in ascending id order, B 4", test_ties_batch);
    t_run("k = every item (append and sort), k = eligible, eligible - 1, mixed batch", test_k_all);
    return t_summary();
}
