/* cmd_prep.c - `hstu prep`: raw interaction data (or a synthetic generator) to
 * one binary dataset file (docs/dataset.md). */
#include "cli.h"

#include "core/status.h"
#include "data/dataset.h"
#include "data/prep.h"
#include "data/synthetic.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu prep [options] INPUT... --out FILE\n"
            "       hstu prep --synthetic [generator options] --out FILE\n"
            "\n"
            "Turns raw interactions into one binary dataset file (docs/dataset.md), read by\n"
            "`hstu train` and `hstu eval`. MovieLens and SASRec text give retrieval data\n"
            "(leave-one-out split), KuaiRand CSV gives ranking data (NVIDIA's user split).\n"
            "Malformed rows stop the run with FILE:LINE and what is wrong.\n"
            "\n"
            "  --out FILE            the dataset to write (FILE.tmp, then renamed over FILE)\n"
            "  --format F            ml-100k (u.data), ml-1m (ratings.dat), ml-20m (ratings.csv),\n"
            "                        sasrec (text: \"user item [item ...]\" per line), kuairand\n"
            "                        (log_standard_*.csv, several allowed); default: from the name\n"
            "  --user-features FILE  kuairand: user_features_*.csv, the contextual tables\n"
            "  --context COLS        kuairand: user-feature columns, comma-separated (default:\n"
            "                        " KUAIRAND_DEFAULT_CONTEXT ")\n"
            "  --candidates C        ranking: candidates per user (default 100)\n"
            "  --max-items M         ranking: candidates are the last C of the first M items (4196)\n"
            "  --train-frac F        ranking: share of users, in id order, that train (0.7)\n"
            "  --skip-bad            count, report and skip malformed rows instead of stopping\n"
            "  --config-out FILE     also write a config.json whose tables fit this dataset\n"
            "  --preset P            the model shape for --config-out (default ml-1m or kuairand-1k)\n"
            "  --quiet               no progress bar\n"
            "\n"
            "synthetic (KuaiRand layout with a planted, learnable signal per task):\n"
            "  --synthetic           generate the CSVs, then prep them like real KuaiRand\n"
            "  --csv-dir DIR         where the CSVs go (default: the directory of --out)\n"
            "  --users U             users (default 1000)\n"
            "  --items I             items (default 5000)\n"
            "  --events MIN:MAX      impressions per user, uniform (default 150:400)\n"
            "  --latent L            width of the user/item latent vectors (default 4)\n"
            "  --seed S              generator seed (default 1)\n");
}

static void print_sizes(const dataset *ds)
{
    const dataset_info *in = dataset_get_info(ds);
    if (in->family == HSTU_FAMILY_RETRIEVAL) {
        printf("config: tables.item >= %lld\n", (long long)in->n_items + 1);
        return;
    }
    printf("config: tables.item >= %lld, tables.action >= %lld, tables.context [", (long long)in->n_items + 1,
           (long long)in->action_rows);
    for (int j = 0; j < in->n_context; j++)
        printf(j ? ",%lld" : "%lld", (long long)in->context_rows[j]);
    printf("] (");
    for (int j = 0; j < in->n_context; j++)
        printf(j ? ", %s" : "%s", in->context_names[j]);
    printf("), head.n_tasks %d, max_candidates >= %d\n", in->n_tasks, in->num_candidates);
}

int cmd_prep(int argc, char **argv)
{
    enum { O_FORMAT = 1000, O_UF, O_CTX, O_CAND, O_MAXI, O_FRAC, O_SKIP, O_CFG, O_PRESET, O_QUIET,
           O_SYN, O_CSV, O_USERS, O_ITEMS, O_EVENTS, O_LATENT, O_SEED };
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'},        {"format", required_argument, 0, O_FORMAT},
        {"user-features", required_argument, 0, O_UF}, {"context", required_argument, 0, O_CTX},
        {"candidates", required_argument, 0, O_CAND}, {"max-items", required_argument, 0, O_MAXI},
        {"train-frac", required_argument, 0, O_FRAC}, {"skip-bad", no_argument, 0, O_SKIP},
        {"config-out", required_argument, 0, O_CFG}, {"preset", required_argument, 0, O_PRESET},
        {"quiet", no_argument, 0, O_QUIET},         {"synthetic", no_argument, 0, O_SYN},
        {"csv-dir", required_argument, 0, O_CSV},   {"users", required_argument, 0, O_USERS},
        {"items", required_argument, 0, O_ITEMS},   {"events", required_argument, 0, O_EVENTS},
        {"latent", required_argument, 0, O_LATENT}, {"seed", required_argument, 0, O_SEED},
        {"help", no_argument, 0, 'h'},              {0, 0, 0, 0},
    };
    prep_options po;
    prep_options_default(&po);
    po.progress = true;
    synth_options so;
    synth_options_default(&so);
    const char *out = NULL, *format = NULL, *config_out = NULL, *preset = NULL, *csv_dir = NULL;
    bool synthetic = false;
    hstu_error err = {0};
    int c;
    while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case O_FORMAT: format = optarg; break;
        case O_UF: po.user_features = optarg; break;
        case O_CTX: po.context = optarg; break;
        case O_CAND: po.split.num_candidates = (int)cli_parse_long("--candidates", optarg, 1, 1 << 20); break;
        case O_MAXI: po.split.max_items = (int)cli_parse_long("--max-items", optarg, 2, 1 << 30); break;
        case O_FRAC: po.split.train_frac = cli_parse_double("--train-frac", optarg, 0, 1); break;
        case O_SKIP: po.skip_bad = true; break;
        case O_CFG: config_out = optarg; break;
        case O_PRESET: preset = optarg; break;
        case O_QUIET: po.progress = false; break;
        case O_SYN: synthetic = true; break;
        case O_CSV: csv_dir = optarg; break;
        case O_USERS: so.users = cli_parse_long("--users", optarg, 2, 1L << 40); break;
        case O_ITEMS: so.items = cli_parse_long("--items", optarg, 2, 1L << 40); break;
        case O_EVENTS: {
            char *colon = strchr(optarg, ':');
            if (!colon) {
                fprintf(stderr, "hstu prep: --events: expected MIN:MAX, got \"%s\"\n", optarg);
                return 2;
            }
            *colon = 0;
            so.min_events = (int)cli_parse_long("--events MIN", optarg, 1, 1 << 24);
            so.max_events = (int)cli_parse_long("--events MAX", colon + 1, so.min_events, 1 << 24);
            break;
        }
        case O_LATENT: so.latent = (int)cli_parse_long("--latent", optarg, 1, 64); break;
        case O_SEED: so.seed = (uint64_t)cli_parse_long("--seed", optarg, 0, 0x7fffffffL); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int n_in = argc - optind;
    if (!out || (synthetic ? n_in != 0 : n_in < 1)) {
        fprintf(stderr, synthetic ? "hstu prep: --synthetic takes no input files; give --out\n\n"
                                  : "hstu prep: give the input file(s) and --out FILE\n\n");
        usage(stderr);
        return 2;
    }
    double t0 = cli_now_ms();
    prep_format fmt = PREP_KUAIRAND;
    const char *const *inputs = (const char *const *)argv + optind;
    char log_path[4096], uf_path[4096];
    const char *syn_inputs[1] = {log_path};
    json_t *extra = NULL;
    hstu_status st = HSTU_OK;
    if (synthetic) {
        char dir[3800];
        if (csv_dir)
            snprintf(dir, sizeof dir, "%s", csv_dir);
        else {
            snprintf(dir, sizeof dir, "%s", out);
            char *slash = strrchr(dir, '/');
            if (slash)
                *slash = 0;
            else
                snprintf(dir, sizeof dir, ".");
        }
        snprintf(log_path, sizeof log_path, "%s/log_standard_synthetic.csv", dir);
        snprintf(uf_path, sizeof uf_path, "%s/user_features_synthetic.csv", dir);
        so.split = po.split;
        so.progress = po.progress;
        synth_truth tr;
        if ((st = synth_write(&so, log_path, uf_path, &tr, &err)) != HSTU_OK) {
            fprintf(stderr, "hstu prep: %s\n", err.msg);
            return 1;
        }
        fprintf(stderr, "hstu prep: wrote %s and %s (%lld impressions) in %.1f s\n", log_path, uf_path,
                (long long)tr.events, (cli_now_ms() - t0) / 1e3);
        json_t *oracle = json_object(), *rates = json_object();
        printf("synthetic oracle AUC (true probabilities, test split):");
        for (int t = 0; t < KUAIRAND_TASKS; t++) {
            json_object_set_new(oracle, kuairand_events[t],
                                isnan(tr.oracle_auc[t]) ? json_null() : json_real(tr.oracle_auc[t]));
            json_object_set_new(rates, kuairand_events[t], json_real(tr.base_rate[t]));
            printf(" %s %.4f", kuairand_events[t], tr.oracle_auc[t]);
        }
        printf("\n");
        extra = json_pack("{s:{s:I,s:I,s:i,s:i,s:i,s:I,s:o,s:o}}", "synthetic", "users", (json_int_t)so.users,
                          "items", (json_int_t)so.items, "min_events", so.min_events, "max_events",
                          so.max_events, "latent", so.latent, "seed", (json_int_t)so.seed, "oracle_auc",
                          oracle, "base_rate", rates);
        po.extra_meta = extra;
        po.user_features = uf_path;
        inputs = syn_inputs;
        n_in = 1;
    } else if (format) {
        st = prep_format_parse(format, &fmt, &err);
    } else {
        st = prep_format_guess(inputs[0], &fmt, &err);
    }
    if (st == HSTU_OK && fmt == PREP_KUAIRAND && !po.user_features)
        fprintf(stderr, "hstu prep: note: no --user-features: the data will have no contextual tables\n");
    prep_report rep;
    if (st == HSTU_OK)
        st = prep_run(fmt, inputs, n_in, &po, out, &rep, &err);
    json_decref(extra);
    if (st != HSTU_OK) {
        fprintf(stderr, "hstu prep: %s\n", err.msg);
        return 1;
    }
    double secs = (cli_now_ms() - t0) / 1e3;
    dataset *ds = NULL;
    if ((st = dataset_open(out, &ds, &err)) != HSTU_OK) { /* read back: what we wrote must validate */
        fprintf(stderr, "hstu prep: %s\n", err.msg);
        return 1;
    }
    const dataset_info *in = dataset_get_info(ds);
    printf("wrote %s: %s, %s, %lld users, %lld items, %lld interactions, timestamps: %s",
           out, in->source, in->family == HSTU_FAMILY_RANKING ? "ranking" : "retrieval",
           (long long)in->n_users, (long long)in->n_items, (long long)in->n_events,
           in->has_timestamps ? "yes" : "none (positions only)");
    if (in->family == HSTU_FAMILY_RANKING)
        printf(", %lld train / %lld test users", (long long)in->n_train_users,
               (long long)(in->n_users - in->n_train_users));
    printf(", longest user %d, %.1f s\n", in->max_user_items, secs);
    if (rep.bad_rows)
        printf("skipped %lld malformed rows (--skip-bad)\n", (long long)rep.bad_rows);
    if (rep.stats.users_without_features)
        printf("note: %lld users have no user-features row: their contextual ids are 0\n",
               (long long)rep.stats.users_without_features);
    print_sizes(ds);
    if (config_out) {
        hstu_config cfg;
        const char *p = preset ? preset : in->family == HSTU_FAMILY_RANKING ? "kuairand-1k" : "ml-1m";
        if ((st = hstu_config_preset(p, &cfg, &err)) == HSTU_OK && cfg.family != in->family)
            st = hstu_fail(&err, HSTU_ERR_ARG, "--preset %s is not a %s model", p,
                           in->family == HSTU_FAMILY_RANKING ? "ranking" : "retrieval");
        char *json = NULL;
        if (st == HSTU_OK) {
            dataset_fill_config(ds, &cfg);
            json = hstu_config_to_json(&cfg);
            FILE *fp = json ? fopen(config_out, "w") : NULL;
            if (!fp || fprintf(fp, "%s\n", json) < 0 || fclose(fp) != 0) {
                st = hstu_fail(&err, HSTU_ERR_IO, "%s: cannot write", config_out);
            } else {
                printf("wrote %s (preset %s with this dataset's tables)\n", config_out, p);
            }
        }
        free(json);
        if (st != HSTU_OK) {
            fprintf(stderr, "hstu prep: %s\n", err.msg);
            dataset_close(ds);
            return 1;
        }
    }
    dataset_close(ds);
    return 0;
}
