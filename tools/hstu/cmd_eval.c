/* cmd_eval.c - `hstu eval`: a model's metrics on a dataset split, through the
 * engine's own path (src/eval/eval.h; protocol in docs/eval.md). */
#include "cli.h"

#include "data/dataset.h"
#include "eval/eval.h"
#include "eval/eval_http.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu eval --model DIR --data FILE [options]\n"
            "\n"
            "Evaluates a model on a dataset written by `hstu prep`, every request going through\n"
            "the inference engine (hstu_engine_run) as `hstu infer` and `hstu serve` do.\n"
            "Retrieval: HR@10, NDCG@10, HR@50, NDCG@50, HR@200 and MRR, leave-one-out, full\n"
            "ranking over every item with the history excluded. Ranking: exact per-task AUC\n"
            "over all candidates of the split. One line per split on stdout (docs/eval.md).\n"
            "\n"
            "  --model DIR        model directory (config.json + model.safetensors)\n"
            "  --data FILE        dataset file from hstu prep\n"
            "  --split S          test (default), valid (retrieval), train (ranking: the training\n"
            "                     users), or a comma list run in order on one engine (valid,test)\n"
            "  --backend B        cpu (default), ref or cuda\n"
            "  --cache on|off     the KV cache (default on; off recomputes every request)\n"
            "  --warm             before each scored request, send the user's first half history,\n"
            "                     so that a cached engine reuses it (exercises the cache)\n"
            "  --batch N          users per engine call (default 32)\n"
            "  --max-users N      evaluate only the first N eligible users (default all)\n"
            "  --threads N        CPU threads (default all cores)\n"
            "  --json             one JSON object per split instead of text\n"
            "  --quiet            no progress bar\n"
            "  --url URL          score through a running `hstu serve` (http://host:port) instead\n"
            "                     of an engine here; --model still gives the config (the served\n"
            "                     model must be the same); batch default 8\n"
            "  --server-model M   the model's name on the server (default: --model's folder name)\n"
            "  --max-top-k K      retrieval through a server: its --max-top-k (default 1000);\n"
            "                     targets ranked below K count as missing (MRR only)\n");
}

static void print_json(const eval_metrics *mt, const dataset *ds)
{
    const dataset_info *in = dataset_get_info(ds);
    printf("{\"split\":\"%s\",\"users\":%lld,\"seconds\":%.3f", dataset_split_name(mt->split),
           (long long)mt->n_users, mt->seconds);
    if (mt->family == HSTU_FAMILY_RETRIEVAL) {
        printf(",\"hr@10\":%.6f,\"ndcg@10\":%.6f,\"hr@50\":%.6f,\"ndcg@50\":%.6f,\"hr@200\":%.6f,"
               "\"ndcg@200\":%.6f,\"mrr\":%.6f,\"missing\":%lld}\n",
               mt->hr10, mt->ndcg10, mt->hr50, mt->ndcg50, mt->hr200, mt->ndcg200, mt->mrr,
               (long long)mt->n_missing);
        return;
    }
    printf(",\"candidates\":%lld,\"auc\":{", (long long)mt->n_candidates);
    for (int t = 0; t < mt->n_tasks; t++) {
        const char *name = t < in->n_tasks ? in->task_names[t] : "task";
        if (isnan(mt->auc[t]))
            printf(t ? ",\"%s\":null" : "\"%s\":null", name);
        else
            printf(t ? ",\"%s\":%.6f" : "\"%s\":%.6f", name, mt->auc[t]);
    }
    printf("},\"positives\":[");
    for (int t = 0; t < mt->n_tasks; t++)
        printf(t ? ",%lld" : "%lld", (long long)mt->positives[t]);
    if (isnan(mt->mean_auc))
        printf("],\"mean_auc\":null}\n");
    else
        printf("],\"mean_auc\":%.6f}\n", mt->mean_auc);
}

int cmd_eval(int argc, char **argv)
{
    enum { O_SPLIT = 1000, O_BACKEND, O_CACHE, O_WARM, O_BATCH, O_MAXU, O_THREADS, O_JSON, O_QUIET, O_URL,
           O_SMODEL, O_MAXK };
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"data", required_argument, 0, 'd'},
        {"split", required_argument, 0, O_SPLIT},  {"backend", required_argument, 0, O_BACKEND},
        {"cache", required_argument, 0, O_CACHE},  {"warm", no_argument, 0, O_WARM},
        {"batch", required_argument, 0, O_BATCH},  {"max-users", required_argument, 0, O_MAXU},
        {"threads", required_argument, 0, O_THREADS}, {"json", no_argument, 0, O_JSON},
        {"quiet", no_argument, 0, O_QUIET},        {"help", no_argument, 0, 'h'},
        {"url", required_argument, 0, O_URL},      {"server-model", required_argument, 0, O_SMODEL},
        {"max-top-k", required_argument, 0, O_MAXK},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *data = NULL, *splits = "test", *backend = "cpu", *url = NULL,
               *server_model = NULL;
    bool batch_set = false;
    int max_top_k = 1000;
    eval_options eo;
    eval_options_default(&eo);
    eo.progress = true;
    bool json = false;
    int c;
    hstu_error err = {0};
    while ((c = getopt_long(argc, argv, "hm:d:", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'd': data = optarg; break;
        case O_SPLIT: splits = optarg; break;
        case O_BACKEND: backend = optarg; break;
        case O_CACHE:
            if (!strcmp(optarg, "on"))
                eo.engine.use_cache = true;
            else if (!strcmp(optarg, "off"))
                eo.engine.use_cache = false;
            else {
                fprintf(stderr, "hstu eval: --cache %s: choose on or off\n", optarg);
                return 2;
            }
            break;
        case O_WARM: eo.warm_prefix = true; break;
        case O_BATCH: eo.batch = (int)cli_parse_long("--batch", optarg, 1, 1024); batch_set = true; break;
        case O_URL: url = optarg; break;
        case O_SMODEL: server_model = optarg; break;
        case O_MAXK: max_top_k = (int)cli_parse_long("--max-top-k", optarg, 1, 100000); break;
        case O_MAXU: eo.max_users = cli_parse_long("--max-users", optarg, 0, 1L << 40); break;
        case O_THREADS: eo.engine.threads = (int)cli_parse_long("--threads", optarg, 0, 1024); break;
        case O_JSON: json = true; break;
        case O_QUIET: eo.progress = false; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hstu eval: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (!model_dir || !data) {
        fprintf(stderr, "hstu eval: give --model DIR and --data FILE\n\n");
        usage(stderr);
        return 2;
    }
    if (hstu_backend_parse(backend, &eo.engine.backend, &err) != HSTU_OK) {
        fprintf(stderr, "hstu eval: --backend: %s\n", err.msg);
        return 2;
    }
    dataset_split list[8];
    int n_split = 0;
    char buf[128];
    snprintf(buf, sizeof buf, "%s", splits);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n_split == 8 || dataset_split_parse(tok, &list[n_split++], &err) != HSTU_OK) {
            fprintf(stderr, "hstu eval: --split: %s\n", n_split == 8 ? "at most 8 splits" : err.msg);
            return 2;
        }
    }
    if (n_split == 0) {
        fprintf(stderr, "hstu eval: --split: empty\n");
        return 2;
    }
    hstu_model *m = NULL;
    dataset *ds = NULL;
    hstu_engine *e = NULL;
    eval_http *hr = NULL;
    hstu_config cfg;
    int rc = 1;
    double t0 = cli_now_ms();
    if (url) {
        char cfg_path[4200];
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", model_dir);
        if (hstu_config_load(cfg_path, &cfg, &err) != HSTU_OK) {
            fprintf(stderr, "hstu eval: %s\n", err.msg);
            return 1;
        }
        if (!server_model) {
            const char *slash = strrchr(model_dir, '/');
            server_model = slash && slash[1] ? slash + 1 : model_dir;
        }
        if (eval_http_create(url, server_model, &cfg, &hr, &err) != HSTU_OK) {
            fprintf(stderr, "hstu eval: --url: %s\n", err.msg);
            return 2;
        }
        if (!batch_set)
            eo.batch = 8;
        eo.top_k_cap = max_top_k;
    } else if (hstu_model_load(model_dir, &m, &err) != HSTU_OK) {
        fprintf(stderr, "hstu eval: %s\n", err.msg);
        return 1;
    }
    const hstu_config *mcfg = url ? &cfg : hstu_model_config(m);
    if (dataset_open(data, &ds, &err) != HSTU_OK || dataset_check_config(ds, mcfg, &err) != HSTU_OK ||
        (!url && hstu_engine_create(m, &eo.engine, &e, &err) != HSTU_OK)) {
        fprintf(stderr, "hstu eval: %s\n", err.msg);
        goto done;
    }
    if (url)
        fprintf(stderr, "hstu eval: %s (config of %s) on %s (%s) through %s\n", server_model, model_dir, data,
                dataset_get_info(ds)->source, url);
    else
        fprintf(stderr, "hstu eval: %s on %s (%s), backend %s, cache %s, loaded in %.1f s\n", model_dir, data,
                dataset_get_info(ds)->source, hstu_backend_name(eo.engine.backend),
                eo.engine.use_cache ? "on" : "off", (cli_now_ms() - t0) / 1e3);
    for (int i = 0; i < n_split; i++) {
        eval_metrics mt;
        eo.split = list[i];
        hstu_status st = url ? eval_run(eval_http_run, hr, &cfg, ds, &eo, &mt, &err)
                             : eval_engine(e, m, ds, &eo, &mt, &err);
        if (st != HSTU_OK) {
            fprintf(stderr, "hstu eval: %s\n", err.msg);
            goto done;
        }
        if (json) {
            print_json(&mt, ds);
        } else {
            char line[2048];
            eval_metrics_format(&mt, ds, line, sizeof line);
            printf("%s\n", line);
        }
        fflush(stdout);
    }
    if (e && eo.engine.use_cache) {
        hstu_cache_stats cs;
        hstu_engine_cache_stats(e, &cs);
        fprintf(stderr, "hstu eval: cache: %llu tokens reused, %llu computed, %llu rewrites, %llu evictions\n",
                (unsigned long long)cs.tokens_reused, (unsigned long long)cs.tokens_computed,
                (unsigned long long)cs.rewrites, (unsigned long long)cs.evictions);
    }
    rc = 0;
done:
    eval_http_destroy(hr);
    hstu_engine_destroy(e);
    dataset_close(ds);
    hstu_model_destroy(m);
    return rc;
}
