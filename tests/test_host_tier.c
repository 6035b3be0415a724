/* test_host_tier.c - the host tier's bookkeeping (host_tier.h) on the CPU.
 *
 * Offload then lookup, the prefix hash (a rewrite drops the entry, also one
 * whose chunks are still in flight), the bounded queue (skips, never waits),
 * LRU eviction that spares pinned and pending entries, trim, and a random
 * churn against a model of what each user should hold, with ht_check after
 * every step.
 */
#include "harness.h"

#include "core/rng.h"
#include "kvcache/host_tier.h"
#include "kvcache/kv_cache.h"

#include <stdio.h>
#include <string.h>

#define C 4 /* rows per chunk */

static uint64_t keys[8][256];

static void make_keys(int u, uint64_t salt)
{
    for (int i = 0; i < 256; i++)
        keys[u][i] = salt * 1000003u + (uint64_t)i * 7919u + (uint64_t)u;
}

static host_tier *make(int slots, int pending)
{
    ht_options o = {.n_slots = slots, .chunk_rows = C, .max_pending = pending};
    host_tier *ht = NULL;
    hstu_error err = {0};
    T_CHECK(ht_create(&o, &ht, &err) == HSTU_OK, "create: %s", err.msg);
    return ht;
}

static void check(const host_tier *ht)
{
    char why[256];
    T_CHECK(ht_check(ht, why, sizeof why), "%s", why);
}

static int lookup(host_tier *ht, int64_t u, const uint64_t *k, int n)
{
    ht_begin(ht);
    int r = ht_lookup(ht, u, k, n);
    ht_end(ht);
    return r;
}

static void test_offload_lookup(void)
{
    host_tier *ht = make(16, 8);
    T_REQUIRE(ht, "no tier");
    make_keys(0, 1);
    int first, slots[8];
    T_CHECK(lookup(ht, 0, keys[0], 10) == 0, "empty tier hit");
    int n = ht_offload_begin(ht, 0, keys[0], 10, &first, slots, 8);
    T_CHECK(n == 2 && first == 0, "10 rows: %d chunks from %d (want 2 from 0)", n, first);
    check(ht);
    T_CHECK(lookup(ht, 0, keys[0], 10) == 0, "pending chunks must not be visible");
    T_CHECK(ht_offload_begin(ht, 0, keys[0], 20, &first, slots, 8) == 0, "second offload while pending");
    ht_offload_done(ht, 0);
    check(ht);
    T_CHECK(lookup(ht, 0, keys[0], 10) == 8, "hit of 8 rows");
    T_CHECK(lookup(ht, 0, keys[0], 7) == 0, "a shorter history drops the entry");
    check(ht);
    /* grow: new chunks only */
    n = ht_offload_begin(ht, 0, keys[0], 9, &first, slots, 8);
    ht_offload_done(ht, 0);
    n = ht_offload_begin(ht, 0, keys[0], 17, &first, slots, 8);
    T_CHECK(n == 2 && first == 2, "growth: %d chunks from %d (want 2 from 2)", n, first);
    ht_offload_done(ht, 0);
    T_CHECK(lookup(ht, 0, keys[0], 17) == 16, "hit of 16 rows");
    int got[8];
    T_CHECK(ht_slots(ht, 0, got, 4) == 4, "four slots");
    /* a rewrite inside the held prefix */
    keys[0][5] ^= 1;
    T_CHECK(lookup(ht, 0, keys[0], 17) == 0, "rewrite not caught");
    check(ht);
    ht_stats s;
    ht_get_stats(ht, &s);
    T_CHECK(s.users == 0 && s.slots_in_use == 0 && s.rewrites == 2, "after the rewrites: %d users, %d slots, %llu",
            s.users, s.slots_in_use, (unsigned long long)s.rewrites);
    ht_destroy(ht);
}

static void test_rewrite_while_pending(void)
{
    host_tier *ht = make(8, 8);
    T_REQUIRE(ht, "no tier");
    make_keys(1, 2);
    int first, slots[8];
    T_CHECK(ht_offload_begin(ht, 1, keys[1], 8, &first, slots, 8) == 2, "offload");
    ht_offload_done(ht, 1);
    T_CHECK(ht_offload_begin(ht, 1, keys[1], 16, &first, slots, 8) == 2, "second offload");
    keys[1][0] ^= 7; /* the history is rewritten while chunks 2, 3 are in flight */
    T_CHECK(lookup(ht, 1, keys[1], 16) == 0, "rewrite not caught");
    check(ht);
    T_CHECK(ht_offload_begin(ht, 1, keys[1], 16, &first, slots, 8) == 0, "a new offload before the old one landed");
    ht_offload_done(ht, 1); /* the dead entry's copies land: everything freed */
    check(ht);
    ht_stats s;
    ht_get_stats(ht, &s);
    T_CHECK(s.slots_in_use == 0 && s.users == 0, "%d slots, %d users left", s.slots_in_use, s.users);
    T_CHECK(ht_offload_begin(ht, 1, keys[1], 16, &first, slots, 8) == 4 && first == 0, "fresh offload");
    ht_offload_done(ht, 1);
    T_CHECK(lookup(ht, 1, keys[1], 16) == 16, "fresh entry");
    ht_destroy(ht);
}

static void test_queue_and_eviction(void)
{
    host_tier *ht = make(6, 3);
    T_REQUIRE(ht, "no tier");
    int first, slots[8];
    for (int u = 0; u < 4; u++)
        make_keys(u, 10 + u);
    T_CHECK(ht_offload_begin(ht, 0, keys[0], 8, &first, slots, 8) == 2, "user 0");
    T_CHECK(ht_offload_begin(ht, 1, keys[1], 8, &first, slots, 8) == 1, "a queue of 3 with 2 in flight takes 1");
    T_CHECK(ht_offload_begin(ht, 2, keys[2], 8, &first, slots, 8) == 0, "a full queue takes none");
    ht_stats s;
    ht_get_stats(ht, &s);
    T_CHECK(s.offloads_skipped == 1, "skip counted");
    ht_offload_done(ht, 0);
    ht_offload_done(ht, 1);
    T_CHECK(ht_offload_begin(ht, 1, keys[1], 8, &first, slots, 8) == 1 && first == 1, "user 1's second chunk");
    ht_offload_done(ht, 1);
    T_CHECK(ht_offload_begin(ht, 2, keys[2], 8, &first, slots, 8) == 2, "user 2");
    ht_offload_done(ht, 2);
    /* full (6 slots): user 3 evicts the least recently used, user 0, unless pinned */
    ht_begin(ht);
    T_CHECK(ht_lookup(ht, 0, keys[0], 8) == 8, "user 0 hit");
    T_CHECK(ht_offload_begin(ht, 3, keys[3], 8, &first, slots, 8) == 2, "user 3 (evicts user 1)");
    ht_end(ht);
    ht_offload_done(ht, 3);
    check(ht);
    T_CHECK(lookup(ht, 0, keys[0], 8) == 8, "pinned user 0 survived");
    T_CHECK(lookup(ht, 1, keys[1], 8) == 0, "user 1 evicted");
    /* pending entries are not evictable either */
    T_CHECK(ht_offload_begin(ht, 1, keys[1], 12, &first, slots, 8) == 3, "user 1 again, 3 chunks");
    T_CHECK(ht_offload_begin(ht, 2, keys[2], 24, &first, slots, 8) == 0, "a full queue again");
    ht_offload_done(ht, 1);
    check(ht);
    /* trim keeps a prefix */
    ht_trim(ht, 1, 5, keys[1]);
    T_CHECK(lookup(ht, 1, keys[1], 12) == 4, "trimmed to one chunk");
    check(ht);
    ht_destroy(ht);
}

/* Random churn against a model: held[u] = rows the tier should hold. */
static void test_churn(void)
{
    host_tier *ht = make(10, 4);
    T_REQUIRE(ht, "no tier");
    rng r = {1234};
    int len[8] = {0}, held[8] = {0}, pend[8] = {0};
    uint64_t salt[8];
    for (int u = 0; u < 8; u++)
        salt[u] = u + 1, make_keys(u, salt[u]);
    for (int step = 0; step < 4000 && !t_case_failed(); step++) {
        int u = (int)rng_below(&r, 8);
        int op = (int)rng_below(&r, 10);
        if (op < 4) { /* grow and offload */
            if (len[u] < 40)
                len[u] += (int)rng_below(&r, 9);
            int first, slots[16];
            int n = ht_offload_begin(ht, u, keys[u], len[u], &first, slots, 16);
            if (n > 0) {
                T_CHECK(first * C <= held[u] || held[u] == 0, "step %d: first chunk %d beyond held %d", step,
                        first, held[u]);
                pend[u] = (first + n) * C;
            }
        } else if (op < 7) { /* land */
            if (pend[u]) {
                ht_offload_done(ht, u);
                held[u] = pend[u];
                pend[u] = 0;
            }
        } else if (op < 9) { /* lookup */
            int got = lookup(ht, u, keys[u], len[u]);
            T_CHECK(got == 0 || got == held[u] || got <= len[u], "step %d: user %d got %d, held %d", step, u, got,
                    held[u]);
            T_CHECK(got % C == 0 && got <= len[u], "step %d: %d rows", step, got);
            if (got == 0 && !pend[u])
                held[u] = 0;
        } else if (!pend[u] && len[u] > 0) { /* rewrite */
            salt[u] += 100;
            make_keys(u, salt[u]);
            int got = lookup(ht, u, keys[u], len[u]);
            T_CHECK(got == 0, "step %d: rewritten user %d hit %d rows", step, u, got);
            held[u] = 0;
        }
        check(ht);
    }
    ht_stats s;
    ht_get_stats(ht, &s);
    printf("    4000 steps: %llu hits, %llu misses, %llu rewrites, %llu evictions, %llu offloads, %llu skipped\n",
           (unsigned long long)s.hits, (unsigned long long)s.misses, (unsigned long long)s.rewrites,
           (unsigned long long)s.evictions, (unsigned long long)s.offloads, (unsigned long long)s.offloads_skipped);
    T_CHECK(s.hits > 0 && s.evictions > 0 && s.offloads_skipped > 0, "the churn should reach every path");
    for (int u = 0; u < 8; u++)
        if (pend[u])
            ht_offload_done(ht, u);
    ht_clear(ht);
    ht_get_stats(ht, &s);
    T_CHECK(s.slots_in_use == 0 && s.users == 0, "after clear: %d slots, %d users", s.slots_in_use, s.users);
    ht_destroy(ht);
}

static void test_errors(void)
{
    ht_options o = {.n_slots = 0, .chunk_rows = 4, .max_pending = 1};
    host_tier *ht = NULL;
    hstu_error err = {0};
    T_CHECK(ht_create(&o, &ht, &err) == HSTU_ERR_ARG && !ht, "0 slots accepted");
    T_CHECK(strstr(err.msg, "host") != NULL, "message: %s", err.msg);
}

int main(void)
{
    t_run("host tier: offload, lookup, growth, rewrite", test_offload_lookup);
    t_run("host tier: a rewrite while chunks are in flight", test_rewrite_while_pending);
    t_run("host tier: bounded queue, LRU eviction spares pinned and pending, trim", test_queue_and_eviction);
    t_run("host tier: random churn, invariants after every step", test_churn);
    t_run("host tier: bad options", test_errors);
    return t_summary();
}
