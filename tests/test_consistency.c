/* test_consistency.c - issue 6, point 4: one trained ranking model, one AUC.
 *
 * A small KuaiRand-like dataset from the synthetic generator (the exact
 * KuaiRand CSV layouts, through the same parser as real data), a small
 * ranking model trained on it for a few epochs with the trainer library,
 * and then the per-task AUC of the evaluation split measured five ways:
 *   1. training's own evaluation (trainer_report, the numbers `hstu train`
 *      prints after its last epoch);
 *   2. the saved checkpoint loaded back and evaluated as `hstu eval` does,
 *      KV cache off, on 2 threads (training's evaluation ran on 1);
 *   3. the same with the KV cache on, each user first warmed with half its
 *      history so that the scored request really reuses cached K/V;
 *   4. the same cached engine a second time (every user's prefix cached);
 *   5. through an in-process `hstu serve` whose repository is the training
 *      output directory, scored over HTTP as `hstu eval --url` does.
 * Every task's AUC must agree with training's within 1e-4, the candidate
 * counts must be equal, and the model must have learned (mean AUC well
 * above 0.5), so that the agreement is about a trained model and not a
 * constant one. Runs in a few seconds (training on 1 thread: 210 steps).
 * AUC moves by 1/(positives x negatives) per pair whose order flips: with
 * 1800 candidates the rarest task's flip is ~1e-5, so float noise between
 * the paths (thread counts, batch shapes, cached prefixes) stays far inside
 * 1e-4 (measured: at most 5e-6).
 */
#include "core/status.h"
#include "data/dataset.h"
#include "data/prep.h"
#include "data/synthetic.h"
#include "eval/eval.h"
#include "eval/eval_http.h"
#include "harness.h"
#include "serve/serve.h"
#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static char g_dir[256];

static char *path_of(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", g_dir, name);
    return buf;
}

/* d 16, one layer: the tables, tasks and candidates come from the data. */
static const char *CFG =
    "{\"family\":\"ranking\",\"d_model\":16,\"n_layers\":1,\"n_heads\":2,\"d_qk\":8,\"d_v\":8,"
    "\"attn_scale_len\":160,\"max_positions\":160,\"tables\":{\"item\":2,\"action\":256,\"context\":[]},"
    "\"head\":{\"hidden\":[16],\"n_tasks\":8},\"max_history\":64,\"max_candidates\":20}";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool close_auc(double a, double b) { return (isnan(a) && isnan(b)) || fabs(a - b) <= 1e-4; }

static void check_same(const char *what, const trainer_report *rep, const eval_metrics *m, int64_t n_cand)
{
    T_CHECK(m->n_tasks == rep->n_tasks && m->n_candidates == n_cand, "%s: %d tasks, %lld candidates", what,
            m->n_tasks, (long long)m->n_candidates);
    double worst = 0;
    for (int t = 0; t < rep->n_tasks && t < m->n_tasks; t++) {
        T_CHECK(close_auc(m->auc[t], rep->auc[t]), "%s: task %d AUC %.6f, training's %.6f", what, t, m->auc[t],
                rep->auc[t]);
        if (!isnan(m->auc[t]) && fabs(m->auc[t] - rep->auc[t]) > worst)
            worst = fabs(m->auc[t] - rep->auc[t]);
    }
    printf("    %-28s mean AUC %.6f, largest difference to training's %.1e (%.2f s)\n", what, m->mean_auc, worst,
           m->seconds);
}

static double oracle_mean(const synth_truth *t)
{
    double s = 0;
    int n = 0;
    for (int b = 0; b < KUAIRAND_TASKS; b++)
        if (!isnan(t->oracle_auc[b]))
            s += t->oracle_auc[b], n++;
    return n ? s / n : NAN;
}

static void test_consistency(void)
{
    /* 1. data: 300 users (210 train, 90 evaluate), 20 candidates each */
    synth_options so;
    synth_options_default(&so);
    so.users = 300;
    so.items = 400;
    so.min_events = 40;
    so.max_events = 90;
    so.split.num_candidates = 20;
    char lp[512], up[512], data[512], repo[512], out[512];
    synth_truth truth;
    hstu_error err = {0};
    T_REQUIRE(synth_write(&so, path_of(lp, sizeof lp, "log_standard_syn.csv"),
                          path_of(up, sizeof up, "user_features_syn.csv"), &truth, &err) == HSTU_OK,
              "generate: %s", err.msg);
    prep_options po;
    prep_options_default(&po);
    po.user_features = up;
    po.split = so.split;
    prep_report pr;
    const char *paths[1] = {lp};
    T_REQUIRE(prep_run(PREP_KUAIRAND, paths, 1, &po, path_of(data, sizeof data, "syn.hstd"), &pr, &err) == HSTU_OK,
              "prep: %s", err.msg);
    dataset *ds = NULL;
    T_REQUIRE(dataset_open(data, &ds, &err) == HSTU_OK, "open: %s", err.msg);

    /* 2. train into repo/kr (a model directory `hstu serve` can load) */
    hstu_config cfg;
    T_REQUIRE(hstu_config_parse(CFG, strlen(CFG), &cfg, &err) == HSTU_OK, "config: %s", err.msg);
    dataset_fill_config(ds, &cfg);
    path_of(repo, sizeof repo, "repo");
    mkdir(repo, 0755);
    snprintf(out, sizeof out, "%.500s/kr", repo);
    trainer_options to;
    trainer_options_default(&to);
    to.epochs = 15;
    to.eval_every = to.epochs;
    to.batch_users = 16;
    to.threads = 1;
    to.adam.lr = 1e-2f;
    to.dropout = 0.1f;
    to.progress = false;
    trainer_report rep;
    double t0 = now_s();
    T_REQUIRE(trainer_run(data, &cfg, out, &to, NULL, &rep, &err) == HSTU_OK, "train: %s", err.msg);
    double t_train = now_s() - t0;
    T_REQUIRE(rep.evaluated && rep.n_tasks == 8, "training evaluated %d tasks", rep.n_tasks);
    int defined = 0;
    for (int t = 0; t < rep.n_tasks; t++)
        defined += !isnan(rep.auc[t]);
    printf("    trained %lld steps in %.2f s: training's mean AUC %.6f, click %.4f (%d of 8 tasks defined; "
           "oracle: mean %.3f, click %.3f)\n",
           (long long)rep.steps, t_train, rep.metric, rep.auc[0], defined, oracle_mean(&truth), truth.oracle_auc[0]);
    T_CHECK(rep.metric > 0.57 && defined == 8, "the model learned: mean AUC %.4f, %d tasks defined", rep.metric,
            defined);
    T_CHECK(fabs(rep.auc[0] - 0.5) > 0.1, "click AUC %.4f is far from chance", rep.auc[0]);

    /* 3. the checkpoint, as `hstu eval` loads it */
    hstu_model *m = NULL;
    T_REQUIRE(hstu_model_load(out, &m, &err) == HSTU_OK, "load: %s", err.msg);
    int64_t n_cand = 0;
    for (int64_t u = 0; u < dataset_get_info(ds)->n_users; u++) {
        dataset_user du;
        dataset_get_user(ds, u, &du);
        if (du.split == DATASET_TEST)
            n_cand += du.cand_end - du.cand_begin;
    }
    T_CHECK(n_cand == 90 * 20, "%lld evaluation candidates", (long long)n_cand);
    eval_options eo;
    eval_options_default(&eo);
    eo.engine.threads = 2; /* another thread count than training's evaluation (1) */
    eo.engine.use_cache = false;
    eval_metrics off, on1, on2, served;
    T_CHECK(eval_model(m, ds, &eo, &off, &err) == HSTU_OK, "eval, no cache: %s", err.msg);
    check_same("hstu eval, cache off", &rep, &off, n_cand);

    /* 4. cache on: warm prefixes, then everything again from the cache */
    hstu_engine_options en;
    hstu_engine_options_default(&en);
    en.use_cache = true;
    en.threads = 1;
    en.page_size = 8;
    en.cache_bytes = 16 << 20;
    hstu_engine *e = NULL;
    T_REQUIRE(hstu_engine_create(m, &en, &e, &err) == HSTU_OK, "engine: %s", err.msg);
    eval_options ec = eo;
    ec.warm_prefix = true;
    T_CHECK(eval_engine(e, m, ds, &ec, &on1, &err) == HSTU_OK, "eval, cache on: %s", err.msg);
    check_same("hstu eval, cache on (warm)", &rep, &on1, n_cand);
    ec.warm_prefix = false;
    T_CHECK(eval_engine(e, m, ds, &ec, &on2, &err) == HSTU_OK, "eval, cache on again: %s", err.msg);
    check_same("hstu eval, cache on (again)", &rep, &on2, n_cand);
    hstu_cache_stats cs;
    hstu_engine_cache_stats(e, &cs);
    T_CHECK(cs.tokens_reused > 1000, "the cache was used: %llu tokens reused", (unsigned long long)cs.tokens_reused);
    hstu_engine_destroy(e);

    /* 5. through hstu serve, serving the training output directory */
    serve_options sv;
    serve_options_default(&sv);
    sv.model_repository = repo;
    sv.http_port = 0;
    sv.metrics_port = -1;
    sv.host = "127.0.0.1";
    sv.threads = 1;
    sv.cache_bytes = 16 << 20;
    server *srv = NULL;
    T_REQUIRE(serve_start(&sv, &srv, &err) == HSTU_OK, "serve_start: %s", err.msg);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", serve_http_port(srv));
    eval_http *h = NULL;
    T_REQUIRE(eval_http_create(url, "kr", hstu_model_config(m), &h, &err) == HSTU_OK, "client: %s", err.msg);
    eval_options es;
    eval_options_default(&es);
    es.batch = 8;
    T_CHECK(eval_run(eval_http_run, h, hstu_model_config(m), ds, &es, &served, &err) == HSTU_OK, "served: %s",
            err.msg);
    check_same("hstu serve (HTTP)", &rep, &served, n_cand);
    eval_http_destroy(h);
    serve_stop(srv);
    hstu_model_destroy(m);
    dataset_close(ds);
}

int main(void)
{
    if (!t_tmpdir(g_dir, sizeof g_dir, "consistency"))
        return 1;
    t_run("trained ranking model: per-task AUC of training = eval (cache off, on) = serve (1e-4)",
          test_consistency);
    t_rmtree(g_dir);
    return t_summary();
}
