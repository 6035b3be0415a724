/* cmd_bench.c - `hstu bench`: CPU latency and throughput, full and cached.
 *
 * For each batch size three cases: the full forward (no cache) of users with
 * H history items and M candidates; the full forward at H + N items (what a
 * returning user with N new items costs without the cache); and that user
 * cached: H + N items on a cached history of H (the cache is warmed, untimed,
 * before each timed call, with fresh user ids each iteration so no timed
 * call sees a longer cache than intended). Prints medians, the FLOP
 * count of each case (the floor: useful work only, masked pairs excluded),
 * the achieved GFLOP/s, and the peak resident memory.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu bench [options]\n"
            "\n"
            "Times the full forward and the cached forward of a returning user.\n"
            "\n"
            "  --preset NAME     model shape with random weights (default kuairand-1k)\n"
            "  --model DIR       or a model directory (overrides --preset)\n"
            "  --backend B       cpu (default) or ref\n"
            "  --batch LIST      comma-separated batch sizes (default 1,8)\n"
            "  --history N       history items per user (default 1024)\n"
            "  --candidates M    candidates per user (default 100)\n"
            "  --new N           new items of a returning user (default 64)\n"
            "  --iters I         timed iterations per case (default 10)\n"
            "  --warmup W        untimed iterations first (default 2)\n"
            "  --threads T       threads (default: all cores)\n"
            "  --json            one JSON object per case instead of the table\n");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Useful FLOPs of one user's forward computing rows [c, hist) + cand. */
static double user_flops(const hstu_config *cfg, int hist, int c, int cand)
{
    double d = cfg->d_model, W = hstu_config_uvqk_width(cfg), vw = (double)cfg->n_heads * cfg->d_v;
    double rows = hist - c + cand;
    double gemm = rows * (2 * d * W + 2 * vw * d);
    double pairs = 0;
    for (int i = c; i < hist; i++)
        pairs += i + 1; /* causal: row i sees columns 0..i */
    pairs += (double)cand * (hist + 1);
    double attn = pairs * cfg->n_heads * 2.0 * (cfg->d_qk + cfg->d_v);
    return cfg->n_layers * (gemm + attn);
}

typedef struct bench_users {
    int B;
    hstu_request *reqs;
    hstu_result *res;
    int64_t *ids; /* shared id pool */
    float *scores;
} bench_users;

static int run_case(hstu_engine *e, bench_users *u, double *ms, hstu_error *err)
{
    double t0 = cli_now_ms();
    hstu_status st = hstu_engine_run(e, u->reqs, u->B, u->res, false, err);
    *ms = cli_now_ms() - t0;
    return st == HSTU_OK ? 0 : 1;
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"preset", required_argument, 0, 'p'},  {"model", required_argument, 0, 'm'},
        {"backend", required_argument, 0, 'b'}, {"batch", required_argument, 0, 'B'},
        {"history", required_argument, 0, 'H'}, {"candidates", required_argument, 0, 'M'},
        {"new", required_argument, 0, 'N'},     {"iters", required_argument, 0, 'i'},
        {"warmup", required_argument, 0, 'w'},  {"threads", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *preset = "kuairand-1k", *model_dir = NULL, *batches = "1,8";
    int history = 1024, cands = 100, new_items = 64, iters = 10, warmup = 2;
    bool json = false;
    hstu_engine_options eo;
    hstu_engine_options_default(&eo);
    hstu_error err = {0};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': preset = optarg; break;
        case 'm': model_dir = optarg; break;
        case 'b': cli_parse_choice("--backend", hstu_backend_parse(optarg, &eo.backend, &err), &err); break;
        case 'B': batches = optarg; break;
        case 'H': history = (int)cli_parse_long("--history", optarg, 1, 1 << 20); break;
        case 'M': cands = (int)cli_parse_long("--candidates", optarg, 0, 1 << 20); break;
        case 'N': new_items = (int)cli_parse_long("--new", optarg, 1, 1 << 20); break;
        case 'i': iters = (int)cli_parse_long("--iters", optarg, 1, 100000); break;
        case 'w': warmup = (int)cli_parse_long("--warmup", optarg, 0, 100000); break;
        case 't': eo.threads = (int)cli_parse_long("--threads", optarg, 1, 1024); break;
        case 'j': json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hstu bench: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    int blist[32], nb = 0;
    char *list = strdup(batches);
    for (char *tok = list ? strtok(list, ",") : NULL; tok && nb < 32; tok = strtok(NULL, ","))
        blist[nb++] = (int)cli_parse_long("--batch", tok, 1, 1024);
    free(list);
    if (nb == 0) {
        fprintf(stderr, "hstu bench: --batch needs at least one size\n");
        return 2;
    }

    hstu_model *m = NULL;
    hstu_status st = model_dir ? hstu_model_load(model_dir, &m, &err) : HSTU_OK;
    if (!model_dir) {
        hstu_config cfg;
        st = hstu_config_preset(preset, &cfg, &err);
        if (st == HSTU_OK)
            st = hstu_model_create_random(&cfg, 1, &m, &err);
    }
    if (st != HSTU_OK) {
        fprintf(stderr, "hstu bench: %s\n", err.msg);
        return 1;
    }
    const hstu_config *cfg = hstu_model_config(m);
    if (cfg->family != HSTU_FAMILY_RANKING) {
        fprintf(stderr, "hstu bench: the benchmark runs the ranking family; this model is retrieval\n");
        hstu_model_destroy(m);
        return 1;
    }
    int total = history + new_items;
    if (total > cfg->max_history || cands > cfg->max_candidates) {
        fprintf(stderr, "hstu bench: history %d + new %d or %d candidates exceed the model's maxima (%d, %d)\n",
                history, new_items, cands, cfg->max_history, cfg->max_candidates);
        hstu_model_destroy(m);
        return 1;
    }
    int maxB = 0;
    for (int i = 0; i < nb; i++)
        maxB = blist[i] > maxB ? blist[i] : maxB;
    int user_tok = hstu_config_history_tokens(cfg, total) + cands;
    eo.max_batch_tokens = maxB * user_tok > hstu_config_max_user_tokens(cfg)
                              ? maxB * user_tok : hstu_config_max_user_tokens(cfg);
    /* Cache: room for every user of the largest batch at full length. */
    size_t page_bytes = (size_t)cfg->n_layers * eo.page_size * cfg->n_heads * (cfg->d_qk + cfg->d_v) * 4;
    eo.cache_bytes = page_bytes * (size_t)(maxB + 1) * (size_t)(user_tok / eo.page_size + 2);
    hstu_engine *cached = NULL, *plain = NULL;
    hstu_engine_options po = eo;
    po.use_cache = false;
    if (hstu_engine_create(m, &eo, &cached, &err) != HSTU_OK ||
        hstu_engine_create(m, &po, &plain, &err) != HSTU_OK) {
        fprintf(stderr, "hstu bench: %s\n", err.msg);
        hstu_engine_destroy(cached);
        hstu_model_destroy(m);
        return 1;
    }

    /* Random ids shared by every user (the work does not depend on them). */
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)(2 * total + cands + HSTU_MAX_CONTEXT));
    hstu_request *reqs = calloc((size_t)maxB, sizeof *reqs);
    hstu_result *res = calloc((size_t)maxB, sizeof *res);
    float *scores = malloc(sizeof(float) * (size_t)maxB * cands * cfg->n_tasks + 4);
    double *times = malloc(sizeof(double) * (size_t)iters);
    uint64_t s = 12345;
    for (int i = 0; i < 2 * total + cands + HSTU_MAX_CONTEXT; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int64_t)((s >> 33) % 200) + 1; /* small ids fit every table but context */
    }
    int64_t *items = ids, *actions = ids + total, *cand_ids = ids + 2 * total;
    int64_t *ctx = ids + 2 * total + cands;
    for (int j = 0; j < cfg->n_context; j++)
        ctx[j] = ctx[j] % cfg->context_rows[j];
    for (int b = 0; b < maxB; b++) {
        reqs[b] = (hstu_request){.n_context = cfg->n_context, .context = ctx, .items = items,
                                 .actions = actions, .n_candidates = cands, .candidates = cand_ids};
        res[b].scores = scores + (size_t)b * cands * cfg->n_tasks;
    }
    bench_users bu = {.reqs = reqs, .res = res};
    int64_t next_user = 1;
    int rc = 0;
    if (!json) {
        printf("hstu bench: backend %s, %d layers, d %d, %d heads x %d, history %d items (+%d new), "
               "%d candidates\n", hstu_backend_name(eo.backend), cfg->n_layers, cfg->d_model,
               cfg->n_heads, cfg->d_qk, history, new_items, cands);
        printf("%-6s %-9s %8s %8s %11s %10s %9s %9s\n", "batch", "case", "items", "cached", "median ms",
               "users/s", "GFLOP", "GFLOP/s");
    }
    /* Three cases per batch: full at N, full at N+new (what a returning user
     * would cost without the cache), and cached: N+new on a cached N. */
    struct { const char *name; int items; int cached_items; } cases[3] = {
        {"full", history, 0}, {"full+new", total, 0}, {"cached", total, history}};
    for (int bi = 0; bi < nb && rc == 0; bi++) {
        bu.B = blist[bi];
        double med_full_new = 0;
        for (int cs = 0; cs < 3 && rc == 0; cs++) {
            bool is_cached = cases[cs].cached_items > 0;
            int h = hstu_config_history_tokens(cfg, cases[cs].items);
            int hc = is_cached ? hstu_config_history_tokens(cfg, cases[cs].cached_items) : 0;
            double flops = bu.B * user_flops(cfg, h, hc, cands);
            for (int it = 0; it < warmup + iters && rc == 0; it++) {
                for (int b = 0; b < bu.B; b++)
                    reqs[b].user_id = next_user++; /* fresh users: nothing cached */
                double ms;
                if (is_cached) {
                    for (int b = 0; b < bu.B; b++)
                        reqs[b].n_items = cases[cs].cached_items; /* first visit warms the cache */
                    rc = run_case(cached, &bu, &ms, &err);
                }
                for (int b = 0; b < bu.B; b++)
                    reqs[b].n_items = cases[cs].items;
                if (rc == 0)
                    rc = run_case(is_cached ? cached : plain, &bu, &ms, &err);
                if (it >= warmup)
                    times[it - warmup] = ms;
            }
            if (rc) {
                fprintf(stderr, "hstu bench: %s\n", err.msg);
                break;
            }
            if (is_cached && res[0].cached_tokens != hc) {
                fprintf(stderr, "hstu bench: expected %d cached tokens, got %d (cache too small?)\n", hc,
                        res[0].cached_tokens);
                rc = 1;
                break;
            }
            qsort(times, (size_t)iters, sizeof *times, cmp_double);
            double med = times[iters / 2];
            if (cs == 1)
                med_full_new = med;
            double speedup = is_cached ? med_full_new / med : 0;
            if (json)
                printf("{\"backend\":\"%s\",\"batch\":%d,\"case\":\"%s\",\"history\":%d,"
                       "\"cached_history\":%d,\"candidates\":%d,\"median_ms\":%.3f,\"min_ms\":%.3f,"
                       "\"gflop\":%.3f,\"gflops\":%.2f,\"speedup_vs_full\":%.2f,\"peak_rss_mib\":%.1f}\n",
                       hstu_backend_name(eo.backend), bu.B, cases[cs].name, cases[cs].items,
                       cases[cs].cached_items, cands, med, times[0], flops / 1e9,
                       flops / 1e9 / (med / 1e3), speedup, cli_peak_rss_mib());
            else
                printf("%-6d %-9s %8d %8d %11.2f %10.1f %9.2f %9.1f\n", bu.B, cases[cs].name,
                       cases[cs].items, cases[cs].cached_items, med, bu.B / (med / 1e3), flops / 1e9,
                       flops / 1e9 / (med / 1e3));
            if (!json && is_cached)
                printf("       cached is %.1fx faster than full+new (FLOP ratio %.1fx)\n", speedup,
                       user_flops(cfg, h, 0, cands) / user_flops(cfg, h, hc, cands));
            fflush(stdout);
        }
    }
    if (!json && rc == 0)
        printf("peak RSS %.0f MiB (model %.0f MiB, engines %.0f MiB)\n", cli_peak_rss_mib(),
               hstu_model_param_count(m) * 4.0 / 1048576.0,
               (hstu_engine_bytes(cached) + hstu_engine_bytes(plain)) / 1048576.0);
    free(ids);
    free(reqs);
    free(res);
    free(scores);
    free(times);
    hstu_engine_destroy(cached);
    hstu_engine_destroy(plain);
    hstu_model_destroy(m);
    return rc;
}
