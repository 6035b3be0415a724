/* cmd_demo.c - `hstu demo`: what the engine does, on any machine, no download.
 *
 * Builds a kuairand-1k-shaped ranking model with seeded random weights, then
 * simulates returning users whose histories grow between visits: each visit
 * reuses the K/V cached by the previous one and computes only the new items
 * and the candidates. It prints each visit, then recomputes the last visits
 * without the cache to show the scores agree and what the cache saved.
 * A short retrieval part does the same for top-k over an item table.
 */
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEMO_USERS 3
#define DEMO_VISITS 4
#define DEMO_CANDIDATES 100

static uint64_t demo_rand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu demo [--backend cpu|ref] [--seed S]\n"
            "\n"
            "Makes a small model in memory (the kuairand-1k shape, random weights), runs\n"
            "%d users over %d visits with growing histories and %d candidates each, and\n"
            "prints scores, cache hits, tokens reused vs computed, and latency with and\n"
            "without the cache. Needs no GPU, no data and no network.\n",
            DEMO_USERS, DEMO_VISITS, DEMO_CANDIDATES);
}

typedef struct demo_user {
    int64_t id;
    int64_t ctx[HSTU_MAX_CONTEXT];
    int64_t items[4096], actions[4096], cands[DEMO_CANDIDATES];
} demo_user;

static hstu_status run_one(hstu_engine *e, hstu_request *r, hstu_result *res, double *ms,
                           hstu_error *err)
{
    double t0 = cli_now_ms();
    hstu_status st = hstu_engine_run(e, r, 1, res, false, err);
    *ms = cli_now_ms() - t0;
    return st;
}

static int demo_ranking(hstu_backend backend, uint64_t seed)
{
    hstu_error err = {0};
    hstu_config cfg;
    hstu_config_preset("kuairand-1k", &cfg, &err);
    hstu_model *m = NULL;
    hstu_engine *cached = NULL, *plain = NULL;
    demo_user *users = calloc(DEMO_USERS, sizeof *users);
    float *scores = malloc(sizeof(float) * DEMO_CANDIDATES * HSTU_MAX_TASKS);
    float *plain_scores = malloc(sizeof(float) * DEMO_CANDIDATES * HSTU_MAX_TASKS);
    int rc = 1;
    if (!users || !scores || !plain_scores) {
        fprintf(stderr, "hstu demo: out of memory\n");
        goto done;
    }
    printf("== ranking: preset kuairand-1k (d %d, %d layers, %d heads x %d, %d tasks), random weights\n",
           cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_qk, cfg.n_tasks);
    hstu_engine_options eo;
    hstu_engine_options_default(&eo);
    eo.backend = backend;
    eo.cache_bytes = (size_t)256 << 20;
    if (hstu_model_create_random(&cfg, seed, &m, &err) != HSTU_OK ||
        hstu_engine_create(m, &eo, &cached, &err) != HSTU_OK)
        goto fail;
    eo.use_cache = false;
    if (hstu_engine_create(m, &eo, &plain, &err) != HSTU_OK)
        goto fail;
    hstu_cache_stats cs;
    hstu_engine_cache_stats(cached, &cs);
    printf("   KV cache: %d pages of %d tokens (%.0f KiB each), %.0f MiB\n\n", cs.pages_total, cs.page_size,
           cs.page_bytes / 1024.0, cs.pool_bytes / 1048576.0);

    uint64_t s = seed * 7919 + 17;
    for (int u = 0; u < DEMO_USERS; u++) {
        users[u].id = 1000 + u;
        for (int j = 0; j < cfg.n_context; j++)
            users[u].ctx[j] = (int64_t)(demo_rand(&s) % (uint64_t)cfg.context_rows[j]);
        for (int i = 0; i < 4096; i++) {
            users[u].items[i] = 1 + (int64_t)(demo_rand(&s) % (uint64_t)(cfg.item_rows - 1));
            users[u].actions[i] = (int64_t)(demo_rand(&s) % (uint64_t)cfg.action_rows);
        }
    }
    printf("   %-6s %-5s %-8s %-22s %-10s %s\n", "visit", "user", "history", "tokens reused/computed",
           "latency", "best candidate (p(is_click))");
    double t_cached = 0, t_plain = 0, max_diff = 0;
    for (int v = 0; v < DEMO_VISITS; v++) {
        for (int u = 0; u < DEMO_USERS; u++) {
            demo_user *du = &users[u];
            int n = 256 + 128 * v + 32 * u; /* histories grow by 128 items a visit */
            for (int i = 0; i < DEMO_CANDIDATES; i++)
                du->cands[i] = 1 + (int64_t)(demo_rand(&s) % (uint64_t)(cfg.item_rows - 1));
            hstu_request r = {
                .user_id = du->id, .n_context = cfg.n_context, .context = du->ctx, .n_items = n,
                .items = du->items, .actions = du->actions, .n_candidates = DEMO_CANDIDATES,
                .candidates = du->cands,
            };
            hstu_result res = {.scores = scores};
            double ms;
            if (run_one(cached, &r, &res, &ms, &err) != HSTU_OK)
                goto fail;
            int best = 0;
            for (int i = 1; i < DEMO_CANDIDATES; i++)
                if (scores[i * cfg.n_tasks] > scores[best * cfg.n_tasks])
                    best = i;
            char tok[32];
            snprintf(tok, sizeof tok, "%d / %d", res.cached_tokens, res.computed_tokens);
            printf("   %-6d %-5lld %-8d %-22s %7.1f ms item %lld: %.4f\n", v + 1, (long long)du->id, n,
                   tok, ms, (long long)du->cands[best], scores[best * cfg.n_tasks]);
            if (v == DEMO_VISITS - 1) {
                /* The same request recomputed in full: same scores, more time. */
                hstu_result pres = {.scores = plain_scores};
                double pms;
                if (run_one(plain, &r, &pres, &pms, &err) != HSTU_OK)
                    goto fail;
                t_cached += ms;
                t_plain += pms;
                for (int i = 0; i < DEMO_CANDIDATES * cfg.n_tasks; i++)
                    max_diff = fmax(max_diff, fabs((double)scores[i] - plain_scores[i]));
            }
        }
    }
    hstu_engine_cache_stats(cached, &cs);
    printf("\n   cache: %llu hits, %llu misses; tokens reused %llu, computed %llu; %d users, %d pages in use\n",
           (unsigned long long)cs.device_hits, (unsigned long long)cs.misses,
           (unsigned long long)cs.tokens_reused, (unsigned long long)cs.tokens_computed, cs.users,
           cs.pages_in_use);
    printf("   last visits: %.1f ms cached vs %.1f ms recomputed in full (%.1fx); "
           "max |score difference| %.2g\n\n",
           t_cached / DEMO_USERS, t_plain / DEMO_USERS, t_plain / t_cached, max_diff);
    rc = max_diff <= 1e-4 ? 0 : 1;
    if (rc)
        fprintf(stderr, "hstu demo: cached and full scores disagree (%.3g); this is a bug\n", max_diff);
    goto done;
fail:
    fprintf(stderr, "hstu demo: %s\n", err.msg);
done:
    hstu_engine_destroy(cached);
    hstu_engine_destroy(plain);
    hstu_model_destroy(m);
    free(users);
    free(scores);
    free(plain_scores);
    return rc;
}

static int demo_retrieval(hstu_backend backend, uint64_t seed)
{
    hstu_error err = {0};
    hstu_config cfg;
    hstu_config_preset("ml-1m", &cfg, &err);
    hstu_model *m = NULL;
    hstu_engine *e = NULL;
    int rc = 1;
    printf("== retrieval: preset ml-1m (d %d, %d layers, %lld items), random weights\n", cfg.d_model,
           cfg.n_layers, (long long)cfg.item_rows);
    hstu_engine_options eo;
    hstu_engine_options_default(&eo);
    eo.backend = backend;
    eo.cache_bytes = (size_t)16 << 20;
    if (hstu_model_create_random(&cfg, seed, &m, &err) != HSTU_OK ||
        hstu_engine_create(m, &eo, &e, &err) != HSTU_OK)
        goto fail;
    int64_t items[200], ts[200], ids[5];
    float sc[5];
    uint64_t s = seed + 99;
    int64_t t = 956703932; /* a MovieLens-era unix time */
    for (int i = 0; i < 200; i++) {
        items[i] = 1 + (int64_t)(demo_rand(&s) % (uint64_t)(cfg.item_rows - 1));
        t += (int64_t)(demo_rand(&s) % 86400);
        ts[i] = t;
    }
    for (int visit = 0; visit < 3; visit++) {
        int n = 60 + 20 * visit;
        hstu_request r = {.user_id = 42, .n_items = n, .items = items, .timestamps = ts,
                          .query_time = ts[n - 1] + 3600, .top_k = 5, .exclude_history = true};
        hstu_result res = {.topk_ids = ids, .topk_scores = sc};
        double ms;
        if (run_one(e, &r, &res, &ms, &err) != HSTU_OK)
            goto fail;
        printf("   visit %d: history %3d items, reused %3d computed %3d, %5.2f ms, top-5:", visit + 1, n,
               res.cached_tokens, res.computed_tokens, ms);
        for (int i = 0; i < res.n_topk; i++)
            printf(" %lld (%.3f)", (long long)ids[i], sc[i]);
        printf("\n");
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "hstu demo: %s\n", err.msg);
done:
    hstu_engine_destroy(e);
    hstu_model_destroy(m);
    return rc;
}

int cmd_demo(int argc, char **argv)
{
    static const struct option opts[] = {
        {"backend", required_argument, 0, 'b'}, {"seed", required_argument, 0, 's'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    hstu_backend backend = HSTU_BACKEND_CPU;
    uint64_t seed = 1;
    hstu_error err = {0};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': cli_parse_choice("--backend", hstu_backend_parse(optarg, &backend, &err), &err); break;
        case 's': seed = (uint64_t)cli_parse_long("--seed", optarg, 0, 0x7fffffffL); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hstu demo: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    int rc = demo_ranking(backend, seed);
    if (rc == 0)
        rc = demo_retrieval(backend, seed);
    if (rc == 0)
        printf("demo done (backend %s). Next: `hstu init --preset kuairand-1k --out model` and "
               "`hstu infer --model model --requests FILE` (see README).\n",
               hstu_backend_name(backend));
    return rc;
}
