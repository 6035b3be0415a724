/* test_engine.c - the whole forward pass: backends and the KV cache.
 *
 * - fast CPU backend vs the reference backend on random models and jagged
 *   batches with edge shapes (0- and 1-item histories, the maxima);
 * - cached inference vs full recompute for long random request sequences
 *   with growing, unchanged, shrunk and rewritten histories, several page
 *   sizes and a pool small enough to force eviction churn, both families;
 *   the cache invariants after every batch;
 * - bad requests change nothing; a user twice in one batch is refused.
 */
#include "harness.h"

#include "core/rng.h"
#include "core/status.h"
#include "model/engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXU 16
#define MAXN 96

static const char *ranking_json =
    "{\"family\":\"ranking\",\"d_model\":32,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":8,"
    "\"attn_scale_len\":150,\"max_positions\":120,"
    "\"tables\":{\"item\":500,\"action\":16,\"context\":[7,5]},"
    "\"head\":{\"hidden\":[16],\"n_tasks\":3},\"max_history\":64,\"max_candidates\":9}";

static const char *retrieval_json =
    "{\"family\":\"retrieval\",\"d_model\":24,\"n_layers\":3,\"n_heads\":2,\"d_qk\":12,\"d_v\":8,"
    "\"attn_scale_len\":20,\"max_positions\":96,\"tables\":{\"item\":300},\"max_history\":96}";

/* One simulated user: its current history and candidates. */
typedef struct sim_user {
    int64_t id;
    int n;
    int64_t ctx[2], items[MAXN], actions[MAXN], ts[MAXN], cands[16];
    int m;
} sim_user;

static hstu_model *make_model(const char *json, uint64_t seed)
{
    hstu_config cfg;
    hstu_error err = {0};
    if (hstu_config_parse(json, strlen(json), &cfg, &err) != HSTU_OK) {
        t_fail_at(__FILE__, __LINE__, "config: %s", err.msg);
        return NULL;
    }
    hstu_model *m = NULL;
    if (hstu_model_create_random(&cfg, seed, &m, &err) != HSTU_OK)
        t_fail_at(__FILE__, __LINE__, "model: %s", err.msg);
    return m;
}

/* The prefix check of the engines make_engine creates (the CPU backends'
 * AUTO is EAGER; the deferred tests ask for the CUDA backend's way). */
static hstu_prefix_check g_check = HSTU_PREFIX_CHECK_AUTO;

static hstu_engine *make_engine(const hstu_model *m, hstu_backend b, bool cache, int page, size_t budget)
{
    hstu_engine_options o;
    hstu_engine_options_default(&o);
    o.backend = b;
    o.prefix_check = g_check;
    o.use_cache = cache;
    o.page_size = page;
    o.cache_bytes = budget;
    hstu_engine *e = NULL;
    hstu_error err = {0};
    if (hstu_engine_create(m, &o, &e, &err) != HSTU_OK)
        t_fail_at(__FILE__, __LINE__, "engine: %s", err.msg);
    return e;
}

static void user_init(sim_user *u, const hstu_config *c, int64_t id, rng *r)
{
    memset(u, 0, sizeof *u);
    u->id = id;
    for (int j = 0; j < c->n_context; j++)
        u->ctx[j] = rng_below(r, c->context_rows[j]);
    int64_t t = 1000000 + rng_below(r, 1000);
    for (int i = 0; i < MAXN; i++) {
        u->items[i] = rng_below(r, c->item_rows);
        u->actions[i] = c->action_rows ? rng_below(r, c->action_rows) : 0;
        t += rng_below(r, 3) == 0 ? rng_below(r, 10000000) : rng_below(r, 100);
        u->ts[i] = t;
    }
}

static hstu_request user_request(const sim_user *u, const hstu_config *c, int top_k)
{
    hstu_request q = {.user_id = u->id, .n_context = c->n_context, .context = u->ctx, .n_items = u->n,
                      .items = u->items, .actions = u->actions, .timestamps = u->ts,
                      .query_time = u->n ? u->ts[u->n - 1] + 77 : 0, .n_candidates = u->m,
                      .candidates = u->cands, .top_k = top_k, .exclude_history = true};
    return q;
}

typedef struct outputs {
    float scores[MAXU][16 * 3];
    int64_t ids[MAXU][32];
    float tscores[MAXU][32];
    hstu_result res[MAXU];
} outputs;

static void bind_outputs(outputs *o, int B)
{
    for (int b = 0; b < B; b++) {
        memset(&o->res[b], 0, sizeof o->res[b]);
        o->res[b].scores = o->scores[b];
        o->res[b].topk_ids = o->ids[b];
        o->res[b].topk_scores = o->tscores[b];
    }
}

/* Compares two engines' outputs for a batch; returns the worst rel error. */
static double compare(const hstu_config *c, const hstu_request *q, const outputs *a, const outputs *b,
                      int B, const char *what)
{
    double worst = 0;
    for (int u = 0; u < B; u++) {
        if (c->family == HSTU_FAMILY_RANKING) {
            size_t n = (size_t)q[u].n_candidates * c->n_tasks;
            if (n == 0)
                continue;
            T_CHECK(!t_has_nonfinite(a->scores[u], n), "%s: non-finite scores", what);
            double e = t_rel_err(a->scores[u], b->scores[u], n);
            worst = fmax(worst, e);
        } else {
            T_CHECK(a->res[u].n_topk == b->res[u].n_topk, "%s: n_topk %d vs %d", what, a->res[u].n_topk,
                    b->res[u].n_topk);
            for (int i = 0; i < a->res[u].n_topk && i < b->res[u].n_topk; i++) {
                double d = fabs((double)a->tscores[u][i] - b->tscores[u][i]);
                worst = fmax(worst, d);
                /* ids may swap only on near-ties */
                if (a->ids[u][i] != b->ids[u][i] && d < 1e-5) {
                    bool near_tie = i + 1 < b->res[u].n_topk &&
                                    fabs((double)b->tscores[u][i] - b->tscores[u][i + 1]) < 1e-5;
                    near_tie |= i > 0 && fabs((double)b->tscores[u][i] - b->tscores[u][i - 1]) < 1e-5;
                    T_CHECK(near_tie, "%s: user %d rank %d: id %lld vs %lld", what, u, i,
                            (long long)a->ids[u][i], (long long)b->ids[u][i]);
                } else {
                    T_CHECK(a->ids[u][i] == b->ids[u][i], "%s: user %d rank %d: id %lld vs %lld", what,
                            u, i, (long long)a->ids[u][i], (long long)b->ids[u][i]);
                }
            }
        }
    }
    return worst;
}

static void fast_vs_ref(const char *json)
{
    hstu_model *m = make_model(json, 11);
    T_REQUIRE(m, "no model");
    const hstu_config *c = hstu_model_config(m);
    hstu_engine *ref = make_engine(m, HSTU_BACKEND_REF, false, 32, 1 << 20);
    hstu_engine *cpu = make_engine(m, HSTU_BACKEND_CPU, false, 32, 1 << 20);
    rng r = {5};
    static sim_user users[MAXU];
    static outputs oa, ob;
    hstu_request q[MAXU];
    /* edge lengths first, then random ones, in jagged batches */
    int lens[] = {0, 1, 2, c->max_history, 31, 33, 7, 64, 5, 17, 3, 60};
    int nl = sizeof lens / sizeof lens[0];
    double worst = 0;
    for (int round = 0; round < 4; round++) {
        int B = 1 + (int)rng_below(&r, 6);
        for (int b = 0; b < B; b++) {
            user_init(&users[b], c, 100 * round + b, &r);
            int n = round == 0 ? lens[b % nl] : (int)rng_below(&r, c->max_history + 1);
            if (c->family == HSTU_FAMILY_RETRIEVAL && n == 0)
                n = 1;
            users[b].n = n > c->max_history ? c->max_history : n;
            users[b].m = c->family == HSTU_FAMILY_RANKING ? (int)rng_below(&r, c->max_candidates + 1) : 0;
            if (round == 0 && b == 0)
                users[b].m = c->max_candidates;
            for (int i = 0; i < users[b].m; i++)
                users[b].cands[i] = rng_below(&r, c->item_rows);
            q[b] = user_request(&users[b], c, 1 + (int)rng_below(&r, 20));
        }
        bind_outputs(&oa, B);
        bind_outputs(&ob, B);
        hstu_error err = {0};
        T_REQUIRE(hstu_engine_run(cpu, q, B, oa.res, true, &err) == HSTU_OK, "cpu: %s", err.msg);
        T_REQUIRE(hstu_engine_run(ref, q, B, ob.res, true, &err) == HSTU_OK, "ref: %s", err.msg);
        worst = fmax(worst, compare(c, q, &oa, &ob, B, "cpu vs ref"));
    }
    T_CHECK(worst <= 1e-4, "cpu vs ref: worst error %.3g > 1e-4", worst);
    printf("    cpu vs ref worst error %.2g\n", worst);
    hstu_engine_destroy(ref);
    hstu_engine_destroy(cpu);
    hstu_model_destroy(m);
}

static void test_fast_vs_ref_ranking(void) { fast_vs_ref(ranking_json); }
static void test_fast_vs_ref_retrieval(void) { fast_vs_ref(retrieval_json); }

/* Random request sequences through a cached engine and a no-cache engine. */
static void cached_vs_full(const char *json, hstu_backend backend, int page, int pool_pages, int steps)
{
    hstu_model *m = make_model(json, 23);
    T_REQUIRE(m, "no model");
    const hstu_config *c = hstu_model_config(m);
    size_t page_bytes = (size_t)c->n_layers * page * c->n_heads * (c->d_qk + c->d_v) * 4;
    hstu_engine *cached = make_engine(m, backend, true, page, page_bytes * pool_pages);
    hstu_engine *full = make_engine(m, backend, false, page, 1 << 20);
    T_REQUIRE(cached && full, "no engine");
    rng r = {77 + (uint64_t)page};
    static sim_user users[12];
    static outputs oa, ob;
    hstu_request q[MAXU];
    for (int u = 0; u < 12; u++) {
        user_init(&users[u], c, 1000 + u, &r);
        users[u].n = c->family == HSTU_FAMILY_RETRIEVAL ? 1 : 0;
    }
    double worst = 0;
    for (int step = 0; step < steps; step++) {
        /* a batch of distinct users */
        int B = 1 + (int)rng_below(&r, 4), picked[4];
        for (int b = 0; b < B; b++) {
            int u;
            bool dup;
            do {
                u = (int)rng_below(&r, 12);
                dup = false;
                for (int k = 0; k < b; k++)
                    dup |= picked[k] == u;
            } while (dup);
            picked[b] = u;
            sim_user *s = &users[u];
            int what = (int)rng_below(&r, 10);
            if (what < 6) /* grow */
                s->n += (int)rng_below(&r, 12);
            else if (what == 6 && s->n > 2) /* rewrite an earlier item */
                s->items[rng_below(&r, s->n - 1)] = rng_below(&r, c->item_rows);
            else if (what == 7) /* shrink (history truncated by the client) */
                s->n = (int)rng_below(&r, s->n + 1);
            else if (what == 8 && s->n > 1 && c->family == HSTU_FAMILY_RETRIEVAL) /* a timestamp changes */
                s->ts[rng_below(&r, s->n)] += 5;
            /* what == 9: same history again (only candidates change) */
            if (s->n > c->max_history)
                s->n = c->max_history;
            if (c->family == HSTU_FAMILY_RETRIEVAL && s->n < 1)
                s->n = 1;
            s->m = c->family == HSTU_FAMILY_RANKING ? 1 + (int)rng_below(&r, c->max_candidates) : 0;
            for (int i = 0; i < s->m; i++)
                s->cands[i] = rng_below(&r, c->item_rows);
            q[b] = user_request(s, c, 10);
        }
        bind_outputs(&oa, B);
        bind_outputs(&ob, B);
        hstu_error err = {0};
        T_REQUIRE(hstu_engine_run(cached, q, B, oa.res, true, &err) == HSTU_OK, "cached: %s", err.msg);
        T_REQUIRE(hstu_engine_run(full, q, B, ob.res, true, &err) == HSTU_OK, "full: %s", err.msg);
        worst = fmax(worst, compare(c, q, &oa, &ob, B, "cached vs full"));
        char why[256];
        T_REQUIRE(kv_check(cached->kv, why, sizeof why), "step %d: cache invariant: %s", step, why);
    }
    hstu_cache_stats s;
    hstu_engine_cache_stats(cached, &s);
    T_CHECK(worst <= 1e-4, "cached vs full: worst error %.3g > 1e-4", worst);
    T_CHECK(s.device_hits > 0, "no cache hit in %d steps: the test exercised nothing", steps);
    T_CHECK(s.rewrites > 0, "no rewritten history was detected");
    if (g_check == HSTU_PREFIX_CHECK_DEFERRED)
        T_CHECK(s.redone > 0, "deferred checks: no user was run again after a failed check");
    else
        T_CHECK(s.redone == 0, "eager checks: %llu users run again", (unsigned long long)s.redone);
    T_CHECK(s.tokens_reused > 0, "no token reused");
    T_CHECK(s.pages_in_use <= s.pages_total, "pages in use %d > pool %d", s.pages_in_use, s.pages_total);
    if (pool_pages < 40)
        T_CHECK(s.evictions > 0, "a pool of %d pages saw no eviction", pool_pages);
    printf("    page %d, pool %d: worst %.2g; %llu hits, %llu misses, %llu rewrites (%llu run again), "
           "%llu evictions, %llu degraded, reused %llu computed %llu\n",
           page, pool_pages, worst, (unsigned long long)s.device_hits, (unsigned long long)s.misses,
           (unsigned long long)s.rewrites, (unsigned long long)s.redone, (unsigned long long)s.evictions,
           (unsigned long long)s.degraded,
           (unsigned long long)s.tokens_reused, (unsigned long long)s.tokens_computed);
    hstu_engine_destroy(cached);
    hstu_engine_destroy(full);
    hstu_model_destroy(m);
}

static void test_cached_ranking_page32(void) { cached_vs_full(ranking_json, HSTU_BACKEND_CPU, 32, 12, 300); }
static void test_cached_ranking_page1(void) { cached_vs_full(ranking_json, HSTU_BACKEND_CPU, 1, 300, 300); }
static void test_cached_ranking_page5(void) { cached_vs_full(ranking_json, HSTU_BACKEND_CPU, 5, 30, 300); }
static void test_cached_ranking_roomy(void) { cached_vs_full(ranking_json, HSTU_BACKEND_CPU, 8, 4000, 200); }
static void test_cached_ranking_ref(void) { cached_vs_full(ranking_json, HSTU_BACKEND_REF, 8, 40, 80); }
static void test_cached_retrieval_page32(void) { cached_vs_full(retrieval_json, HSTU_BACKEND_CPU, 32, 6, 300); }
static void test_cached_retrieval_page3(void) { cached_vs_full(retrieval_json, HSTU_BACKEND_CPU, 3, 25, 300); }
static void test_cached_retrieval_ref(void) { cached_vs_full(retrieval_json, HSTU_BACKEND_REF, 4, 30, 80); }

/* The same with the prefix checks deferred past the forward (the CUDA
 * backend's default): a rewritten history is found after its user ran on
 * the stale prefix, then run again; results must not show it. */
static void cached_deferred(const char *json, int page, int pool_pages)
{
    g_check = HSTU_PREFIX_CHECK_DEFERRED;
    cached_vs_full(json, HSTU_BACKEND_CPU, page, pool_pages, 300);
    g_check = HSTU_PREFIX_CHECK_AUTO;
}
static void test_cached_ranking_deferred(void) { cached_deferred(ranking_json, 5, 30); }
static void test_cached_retrieval_deferred(void) { cached_deferred(retrieval_json, 3, 25); }

static void test_bad_request_changes_nothing(void)
{
    hstu_model *m = make_model(ranking_json, 3);
    T_REQUIRE(m, "no model");
    const hstu_config *c = hstu_model_config(m);
    hstu_engine *e = make_engine(m, HSTU_BACKEND_CPU, true, 4, 1 << 20);
    rng r = {9};
    sim_user u, v;
    user_init(&u, c, 1, &r);
    user_init(&v, c, 2, &r);
    u.n = 20, u.m = 4, v.n = 10, v.m = 4;
    for (int i = 0; i < 4; i++)
        u.cands[i] = v.cands[i] = i + 1;
    static outputs o1, o2;
    hstu_request q[2] = {user_request(&u, c, 1), user_request(&v, c, 1)};
    hstu_error err = {0};
    bind_outputs(&o1, 2);
    T_REQUIRE(hstu_engine_run(e, q, 2, o1.res, true, &err) == HSTU_OK, "%s", err.msg);
    hstu_cache_stats before, after;
    hstu_engine_cache_stats(e, &before);

    hstu_request b = q[1];
    int64_t items[MAXN];
    memcpy(items, v.items, sizeof items);
    items[3] = c->item_rows; /* one past the table */
    b.items = items;
    hstu_request qb[2] = {q[0], b};
    bind_outputs(&o2, 2);
    T_CHECK(hstu_engine_run(e, qb, 2, o2.res, true, &err) == HSTU_ERR_ARG, "bad id accepted");
    T_CHECK(strstr(err.msg, "outside the table") && strstr(err.msg, "items[3]"), "message: %s", err.msg);
    b = q[1];
    b.n_items = c->max_history + 1;
    qb[1] = b;
    T_CHECK(hstu_engine_run(e, qb, 2, o2.res, true, &err) == HSTU_ERR_ARG, "over-long history accepted");
    T_CHECK(strstr(err.msg, "max_history") != NULL, "message: %s", err.msg);
    b = q[1];
    b.n_context = 1;
    qb[1] = b;
    T_CHECK(hstu_engine_run(e, qb, 2, o2.res, true, &err) == HSTU_ERR_ARG, "wrong context count accepted");
    b = q[1];
    b.n_candidates = -1;
    qb[1] = b;
    T_CHECK(hstu_engine_run(e, qb, 2, o2.res, true, &err) == HSTU_ERR_ARG, "negative candidates accepted");
    qb[1] = q[0];
    T_CHECK(hstu_engine_run(e, qb, 2, o2.res, true, &err) == HSTU_ERR_ARG, "duplicate user accepted");
    T_CHECK(strstr(err.msg, "twice") != NULL, "message: %s", err.msg);

    hstu_engine_cache_stats(e, &after);
    T_CHECK(memcmp(&before, &after, sizeof before) == 0, "a refused batch changed the cache statistics");
    /* the good requests still give the same answer, from the cache */
    bind_outputs(&o2, 2);
    T_REQUIRE(hstu_engine_run(e, q, 2, o2.res, true, &err) == HSTU_OK, "%s", err.msg);
    T_CHECK(o2.res[0].cached_tokens == c->n_context + 2 * u.n, "cache lost: %d", o2.res[0].cached_tokens);
    T_CHECK(t_rel_err(o2.scores[0], o1.scores[0], 4 * 3) <= 1e-5, "answer changed");
    T_CHECK(t_rel_err(o2.scores[1], o1.scores[1], 4 * 3) <= 1e-5, "answer changed");
    hstu_engine_destroy(e);
    hstu_model_destroy(m);
}

static void test_batch_composition(void)
{
    /* The same user alone and inside a larger batch gets the same scores. */
    hstu_model *m = make_model(ranking_json, 4);
    T_REQUIRE(m, "no model");
    const hstu_config *c = hstu_model_config(m);
    hstu_engine *e = make_engine(m, HSTU_BACKEND_CPU, false, 32, 1 << 20);
    rng r = {12};
    static sim_user users[6];
    hstu_request q[6];
    for (int b = 0; b < 6; b++) {
        user_init(&users[b], c, 50 + b, &r);
        users[b].n = 10 + 9 * b;
        users[b].m = 9;
        for (int i = 0; i < 9; i++)
            users[b].cands[i] = rng_below(&r, c->item_rows);
        q[b] = user_request(&users[b], c, 1);
    }
    static outputs all, one;
    hstu_error err = {0};
    bind_outputs(&all, 6);
    T_REQUIRE(hstu_engine_run(e, q, 6, all.res, true, &err) == HSTU_OK, "%s", err.msg);
    for (int b = 0; b < 6; b++) {
        bind_outputs(&one, 1);
        T_REQUIRE(hstu_engine_run(e, &q[b], 1, one.res, true, &err) == HSTU_OK, "%s", err.msg);
        double d = t_rel_err(one.scores[0], all.scores[b], 9 * 3);
        T_CHECK(d <= 1e-6, "user %d alone vs in a batch: %.3g", b, d);
    }
    hstu_engine_destroy(e);
    hstu_model_destroy(m);
}

static void test_engine_options_errors(void)
{
    hstu_model *m = make_model(ranking_json, 4);
    T_REQUIRE(m, "no model");
    hstu_engine_options o;
    hstu_engine_options_default(&o);
    hstu_engine *e = NULL;
    hstu_error err = {0};
    o.max_batch_tokens = 10;
    T_CHECK(hstu_engine_create(m, &o, &e, &err) == HSTU_ERR_ARG && !e, "tiny workspace accepted");
    T_CHECK(strstr(err.msg, "max batch tokens") != NULL, "message: %s", err.msg);
    hstu_engine_options_default(&o);
    o.page_size = 0;
    T_CHECK(hstu_engine_create(m, &o, &e, &err) == HSTU_ERR_ARG && !e, "page size 0 accepted");
    hstu_engine_options_default(&o);
    o.prefix_check = (hstu_prefix_check)7;
    T_CHECK(hstu_engine_create(m, &o, &e, &err) == HSTU_ERR_ARG && !e, "prefix check 7 accepted");
    T_CHECK(strstr(err.msg, "prefix check") != NULL, "message: %s", err.msg);
    hstu_engine_options_default(&o);
    o.cache_bytes = 10;
    T_CHECK(hstu_engine_create(m, &o, &e, &err) != HSTU_OK && !e, "a pool of no page accepted");
    hstu_model_destroy(m);
}

int main(void)
{
    t_run("engine: fast cpu vs reference, ranking", test_fast_vs_ref_ranking);
    t_run("engine: fast cpu vs reference, retrieval", test_fast_vs_ref_retrieval);
    t_run("engine: cached = full, ranking, page 32, eviction churn", test_cached_ranking_page32);
    t_run("engine: cached = full, ranking, page 1", test_cached_ranking_page1);
    t_run("engine: cached = full, ranking, page 5", test_cached_ranking_page5);
    t_run("engine: cached = full, ranking, roomy pool", test_cached_ranking_roomy);
    t_run("engine: cached = full, ranking, reference backend", test_cached_ranking_ref);
    t_run("engine: cached = full, retrieval, page 32, eviction churn", test_cached_retrieval_page32);
    t_run("engine: cached = full, retrieval, page 3", test_cached_retrieval_page3);
    t_run("engine: cached = full, retrieval, reference backend", test_cached_retrieval_ref);
    t_run("engine: cached = full, ranking, deferred prefix checks", test_cached_ranking_deferred);
    t_run("engine: cached = full, retrieval, deferred prefix checks", test_cached_retrieval_deferred);
    t_run("engine: a bad request changes nothing", test_bad_request_changes_nothing);
    t_run("engine: scores do not depend on the batch", test_batch_composition);
    t_run("engine: option errors", test_engine_options_errors);
    return t_summary();
}
