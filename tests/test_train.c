/* test_train.c - the trainer end to end on small datasets built in the test.
 *
 * Data with a planted, learnable rule (retrieval: a user's next item is the
 * previous one plus a per-user step; ranking: each task's label is a fixed
 * function of the item id), written through the dataset builder, so nothing
 * depends on files outside the repository. Cases:
 *   - retrieval learns: HR@10 through src/eval far above chance after a few
 *     epochs, and the checkpoint loads with hstu_model_load and scores the same;
 *   - ranking learns: mean AUC well above 0.5;
 *   - determinism: two runs with one seed and thread count write identical
 *     checkpoints, byte for byte;
 *   - resume: a run stopped mid-epoch (and one stopped at an epoch end) and
 *     resumed equals the uninterrupted run byte for byte;
 *   - errors: resuming with another seed, a config that does not fit the data.
 *   - --keep-best: best/ follows the best validation HR@10 of the evaluations
 *     the trainer logs, evaluates to exactly that number, and survives a
 *     resumed run whose evaluations are worse (a learning rate far too high
 *     makes them so); the state file carries the best value; the options it
 *     needs are named when missing.
 * Small shapes and few steps: the whole file runs in seconds.
 */
#include "core/status.h"
#include "data/builder.h"
#include "eval/eval.h"
#include "harness.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

/* Retrieval: 60 users, items 1..40; user u walks item = 1 + (start + k*step) % 40. */
static int make_retrieval(const char *path)
{
    builder b;
    hstu_error err = {0};
    if (builder_init(&b, HSTU_FAMILY_RETRIEVAL, true, 0, &err) != HSTU_OK)
        return 1;
    for (int u = 0; u < 60; u++) {
        int step = 1 + u % 3, start = (u * 7) % 40, n = 8 + u % 13;
        for (int k = 0; k < n; k++)
            if (builder_add(&b, u, 1 + (start + k * step) % 40, 1000 + 60 * k + u, 0, &err) != HSTU_OK)
                return 1;
    }
    builder_options o;
    builder_options_default(&o);
    builder_stats st;
    hstu_status s = builder_write(&b, &o, path, &st, &err);
    builder_free(&b);
    if (s != HSTU_OK)
        printf("    builder: %s\n", err.msg);
    return s != HSTU_OK;
}

/* Ranking: 80 users, items 1..30; task b fires when bit b of the item id is set. */
static int make_ranking(const char *path)
{
    builder b;
    hstu_error err = {0};
    if (builder_init(&b, HSTU_FAMILY_RANKING, true, 3, &err) != HSTU_OK)
        return 1;
    for (int u = 0; u < 80; u++) {
        int n = 10 + u % 7;
        for (int k = 0; k < n; k++) {
            int item = 1 + (u * 11 + k * 7) % 30;
            if (builder_add(&b, u, item, 5000 + k, item & 7, &err) != HSTU_OK)
                return 1;
        }
    }
    builder_options o;
    builder_options_default(&o);
    o.num_candidates = 4;
    o.max_items = 40;
    o.train_frac = 0.75;
    builder_stats st;
    hstu_status s = builder_write(&b, &o, path, &st, &err);
    builder_free(&b);
    if (s != HSTU_OK)
        printf("    builder: %s\n", err.msg);
    return s != HSTU_OK;
}

static const char *RETRIEVAL_CFG =
    "{\"family\":\"retrieval\",\"d_model\":16,\"n_layers\":2,\"n_heads\":2,\"d_qk\":8,\"d_v\":8,"
    "\"attn_scale_len\":24,\"max_positions\":24,\"tables\":{\"item\":41},\"max_history\":16}";
static const char *RANKING_CFG =
    "{\"family\":\"ranking\",\"d_model\":16,\"n_layers\":1,\"n_heads\":2,\"d_qk\":8,\"d_v\":8,"
    "\"attn_scale_len\":64,\"max_positions\":64,\"tables\":{\"item\":31,\"action\":8,\"context\":[]},"
    "\"head\":{\"hidden\":[16],\"n_tasks\":3},\"max_history\":20,\"max_candidates\":4}";

static void small_options(trainer_options *o)
{
    trainer_options_default(o);
    o->batch_users = 16;
    o->threads = 2;
    o->progress = false;
    o->negatives = 16;
    o->adam.lr = 5e-3f;
    o->dropout = 0.1f;
    o->eval_every = 0;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return buf;
}

/* Same bytes in dirs a and b for the model and the training state. */
static bool same_checkpoints(const char *a, const char *b, bool report)
{
    static const char *const files[] = {"model.safetensors", "train_state.safetensors"};
    for (int i = 0; i < 2; i++) {
        char pa[512], pb[512];
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        size_t na, nb;
        char *x = slurp(pa, &na), *y = slurp(pb, &nb);
        bool eq = x && y && na == nb && memcmp(x, y, na) == 0;
        if (!eq && report)
            printf("    %s differs between %s and %s\n", files[i], a, b);
        free(x);
        free(y);
        if (!eq)
            return false;
    }
    return true;
}

static hstu_config parse(const char *json)
{
    hstu_config c;
    hstu_error err;
    HSTU_ASSERT(hstu_config_parse(json, strlen(json), &c, &err) == HSTU_OK);
    return c;
}

static void test_retrieval_learns(void)
{
    char data[512], out[512];
    path_in(data, sizeof data, "ret.hstu");
    path_in(out, sizeof out, "ret-learn");
    T_REQUIRE(make_retrieval(data) == 0, "cannot build the dataset");
    hstu_config cfg = parse(RETRIEVAL_CFG);
    trainer_options o;
    small_options(&o);
    o.epochs = 12;
    o.eval_every = 12;
    trainer_report rep;
    hstu_error err = {0};
    hstu_status s = trainer_run(data, &cfg, out, &o, NULL, &rep, &err);
    T_REQUIRE(s == HSTU_OK, "trainer_run: %s", err.msg);
    T_CHECK(rep.evaluated, "no evaluation ran");
    /* chance: 10 of 39 eligible items; the rule is fully learnable */
    T_CHECK(rep.metric > 0.6, "HR@10 %.3f after 12 epochs (chance ~0.26)", rep.metric);
    printf("    HR@10 %.3f, loss %.3f, %.0f tokens/s\n", rep.metric, rep.last_loss, rep.tokens_per_s);
    /* the exported model loads and evaluates to the same number */
    hstu_model *m = NULL;
    T_REQUIRE(hstu_model_load(out, &m, &err) == HSTU_OK, "hstu_model_load: %s", err.msg);
    dataset *ds = NULL;
    T_REQUIRE(dataset_open(data, &ds, &err) == HSTU_OK, "%s", err.msg);
    eval_options eo;
    eval_options_default(&eo);
    eo.engine.threads = 2;
    eval_metrics mt;
    T_REQUIRE(eval_model(m, ds, &eo, &mt, &err) == HSTU_OK, "eval: %s", err.msg);
    T_CHECK(mt.hr10 == rep.metric, "HR@10 of the loaded model %.6f != training's %.6f", mt.hr10, rep.metric);
    dataset_close(ds);
    hstu_model_destroy(m);
}

static void test_ranking_learns(void)
{
    char data[512], out[512];
    path_in(data, sizeof data, "rank.hstu");
    path_in(out, sizeof out, "rank-learn");
    T_REQUIRE(make_ranking(data) == 0, "cannot build the dataset");
    hstu_config cfg = parse(RANKING_CFG);
    trainer_options o;
    small_options(&o);
    o.epochs = 30;
    o.eval_every = 30;
    trainer_report rep;
    hstu_error err = {0};
    hstu_status s = trainer_run(data, &cfg, out, &o, NULL, &rep, &err);
    T_REQUIRE(s == HSTU_OK, "trainer_run: %s", err.msg);
    T_CHECK(rep.evaluated && rep.metric > 0.75, "mean AUC %.3f after 30 epochs", rep.metric);
    printf("    mean AUC %.3f, loss %.3f\n", rep.metric, rep.last_loss);
}

static void run_to(const char *data, const char *out, int epochs, int64_t max_steps, bool resume, int save_every,
                   hstu_status *s, hstu_error *err)
{
    hstu_config cfg = parse(RETRIEVAL_CFG);
    trainer_options o;
    small_options(&o);
    o.epochs = epochs;
    o.max_steps = max_steps;
    o.resume = resume;
    o.save_every = save_every;
    trainer_report rep;
    *s = trainer_run(data, &cfg, out, &o, NULL, &rep, err);
}

static void test_deterministic(void)
{
    char data[512], a[512], b[512];
    path_in(data, sizeof data, "ret.hstu");
    path_in(a, sizeof a, "det-a");
    path_in(b, sizeof b, "det-b");
    hstu_status s;
    hstu_error err = {0};
    run_to(data, a, 2, 0, false, 0, &s, &err);
    T_REQUIRE(s == HSTU_OK, "%s", err.msg);
    run_to(data, b, 2, 0, false, 0, &s, &err);
    T_REQUIRE(s == HSTU_OK, "%s", err.msg);
    T_CHECK(same_checkpoints(a, b, true), "two runs with one seed differ");
}

static void test_resume(void)
{
    char data[512], full[512], part[512], ep[512];
    path_in(data, sizeof data, "ret.hstu");
    path_in(full, sizeof full, "det-a"); /* 2 epochs uninterrupted (test_deterministic) */
    path_in(part, sizeof part, "resume-mid");
    path_in(ep, sizeof ep, "resume-epoch");
    hstu_status s;
    hstu_error err = {0};
    /* stop after 2 steps (inside epoch 1 of 4 steps), resume to the end */
    run_to(data, part, 2, 2, false, 0, &s, &err);
    T_REQUIRE(s == HSTU_OK, "%s", err.msg);
    T_CHECK(!same_checkpoints(full, part, false), "a run stopped early already equals the full run");
    run_to(data, part, 2, 0, true, 0, &s, &err);
    T_REQUIRE(s == HSTU_OK, "resume: %s", err.msg);
    T_CHECK(same_checkpoints(full, part, true), "stopped mid-epoch and resumed differs from an uninterrupted run");
    /* stop at the end of epoch 1, resume for epoch 2 (with a step checkpoint inside) */
    run_to(data, ep, 1, 0, false, 0, &s, &err);
    T_REQUIRE(s == HSTU_OK, "%s", err.msg);
    run_to(data, ep, 2, 0, true, 1, &s, &err);
    T_REQUIRE(s == HSTU_OK, "resume: %s", err.msg);
    T_CHECK(same_checkpoints(full, ep, true), "stopped at an epoch end and resumed differs from an uninterrupted run");
}

static void test_errors(void)
{
    char data[512], out[512];
    path_in(data, sizeof data, "ret.hstu");
    path_in(out, sizeof out, "det-a");
    hstu_config cfg = parse(RETRIEVAL_CFG);
    trainer_options o;
    small_options(&o);
    o.epochs = 3;
    o.resume = true;
    o.seed = 9;
    trainer_report rep;
    hstu_error err = {0};
    hstu_status s = trainer_run(data, &cfg, out, &o, NULL, &rep, &err);
    T_CHECK(s == HSTU_ERR_ARG && strstr(err.msg, "--seed"), "resume with another seed: %d %s", s, err.msg);
    /* an item table too small for the data names the key to raise */
    hstu_config small = cfg;
    small.item_rows = 20;
    small_options(&o);
    path_in(out, sizeof out, "bad-config");
    s = trainer_run(data, &small, out, &o, NULL, &rep, &err);
    T_CHECK(s != HSTU_OK && strstr(err.msg, "tables.item"), "small item table: %d %s", s, err.msg);
    /* resume where there is nothing */
    o.resume = true;
    path_in(out, sizeof out, "empty-dir");
    s = trainer_run(data, &cfg, out, &o, NULL, &rep, &err);
    T_CHECK(s != HSTU_OK && strstr(err.msg, "--resume"), "resume from nothing: %d %s", s, err.msg);
}

/* The "eval  epoch E  valid: N users  HR@10 X" lines of a trainer log: hr[E] = X
 * (4 decimals), -1 where epoch E was not evaluated. */
static void parse_evals(const char *log, double *hr, int max_epoch)
{
    for (int e = 0; e <= max_epoch; e++)
        hr[e] = -1;
    for (const char *p = log; (p = strstr(p, "eval  epoch ")) != NULL; p++) {
        int e, users;
        double x;
        if (sscanf(p, "eval  epoch %d  valid: %d users  HR@10 %lf", &e, &users, &x) == 3 && e >= 1 &&
            e <= max_epoch)
            hr[e] = x;
    }
}

static void run_logged(const char *data, const char *out, const trainer_options *o, trainer_report *rep,
                       char **log, hstu_status *s, hstu_error *err)
{
    hstu_config cfg = parse(RETRIEVAL_CFG);
    size_t n;
    FILE *f = open_memstream(log, &n);
    HSTU_ASSERT(f);
    *s = trainer_run(data, &cfg, out, o, f, rep, err);
    fclose(f);
}

static void keep_best_options(trainer_options *o, int epochs)
{
    small_options(o);
    o->holdout = 2;
    o->keep_best = true;
    o->eval_every = 1;
    o->epochs = epochs;
}

static void test_keep_best(void)
{
    char data[512], out[512], path[600];
    path_in(data, sizeof data, "ret.hstu");
    path_in(out, sizeof out, "keep-best");
    trainer_options o;
    keep_best_options(&o, 5);
    trainer_report rep;
    hstu_error err = {0};
    hstu_status s;
    char *log = NULL;
    run_logged(data, out, &o, &rep, &log, &s, &err);
    T_REQUIRE(s == HSTU_OK, "trainer_run: %s", err.msg);
    double hr[7];
    parse_evals(log, hr, 6);
    free(log);
    int want = 0; /* the first epoch of the highest HR@10: "strictly better" keeps the earlier of a tie */
    for (int e = 1; e <= 5; e++) {
        T_REQUIRE(hr[e] >= 0, "no validation line for epoch %d in the log", e);
        if (want == 0 || hr[e] > hr[want])
            want = e;
    }
    printf("    valid HR@10 by epoch: %.4f %.4f %.4f %.4f %.4f; best epoch %lld\n", hr[1], hr[2], hr[3], hr[4],
           hr[5], (long long)rep.best_epoch);
    /* a best after epoch 1 means best/ was replaced at least once (not only created) */
    T_REQUIRE(want > 1, "the planted rule should improve HR@10 after epoch 1 (got %.4f then %.4f)", hr[1], hr[2]);
    T_CHECK(rep.best_epoch == want, "best epoch %lld, the log's best is epoch %d", (long long)rep.best_epoch, want);
    T_CHECK(fabs(rep.best_metric - hr[want]) < 5.1e-5, "best HR@10 %.6f, the log says %.4f", rep.best_metric,
            hr[want]);
    tr_best b;
    T_REQUIRE(tr_best_read(out, &b, &err) == HSTU_OK, "best.json: %s", err.msg);
    T_CHECK(b.epoch == rep.best_epoch && b.value == rep.best_metric, "best.json says epoch %lld HR@10 %.17g",
            (long long)b.epoch, b.value);
    snprintf(path, sizeof path, "%s/.best.tmp", out);
    T_CHECK(access(path, F_OK) != 0, "%s was left behind", path);
    /* the state file carries the best value, exactly */
    hstu_model *cm = NULL;
    float *am = NULL, *av = NULL;
    tr_state st;
    T_REQUIRE(tr_checkpoint_load(out, &cm, &am, &av, &st, &err) == HSTU_OK, "%s", err.msg);
    T_CHECK(st.best_epoch == rep.best_epoch && st.best_metric == rep.best_metric,
            "state: best epoch %lld HR@10 %.17g", (long long)st.best_epoch, st.best_metric);
    hstu_model_destroy(cm);
    free(am);
    free(av);
    /* best/ loads as `hstu eval --model` loads it and scores exactly what training logged */
    snprintf(path, sizeof path, "%s/best", out);
    hstu_model *m = NULL;
    T_REQUIRE(hstu_model_load(path, &m, &err) == HSTU_OK, "hstu_model_load %s: %s", path, err.msg);
    dataset *ds = NULL;
    T_REQUIRE(dataset_open(data, &ds, &err) == HSTU_OK, "%s", err.msg);
    eval_options eo;
    eval_options_default(&eo);
    eo.engine.threads = o.threads;
    eo.engine.use_cache = false;
    eo.split = DATASET_VALID;
    eval_metrics mt;
    T_CHECK(eval_model(m, ds, &eo, &mt, &err) == HSTU_OK, "eval valid: %s", err.msg);
    T_CHECK(mt.hr10 == rep.best_metric, "best/ scores valid HR@10 %.17g, training logged %.17g", mt.hr10,
            rep.best_metric);
    eo.split = DATASET_TEST;
    T_CHECK(eval_model(m, ds, &eo, &mt, &err) == HSTU_OK && mt.n_users > 0, "eval test: %s", err.msg);
    dataset_close(ds);
    hstu_model_destroy(m);
    snprintf(path, sizeof path, "%s/best/model.safetensors", out);
    size_t n0, n1;
    char *before = slurp(path, &n0);
    T_REQUIRE(before, "cannot read %s", path);
    /* resume with a learning rate far too high: the next evaluations are worse and
       must leave best/ alone, which only the restored best value can tell */
    keep_best_options(&o, 6);
    o.resume = true;
    o.adam.lr = 1.0f;
    trainer_report rep2;
    run_logged(data, out, &o, &rep2, &log, &s, &err);
    T_REQUIRE(s == HSTU_OK, "resume: %s", err.msg);
    parse_evals(log, hr, 6);
    T_CHECK(strstr(log, "best so far: epoch") != NULL, "the resumed run does not report the best so far");
    free(log);
    printf("    resumed at lr 1: valid HR@10 %.4f at epoch 6\n", hr[6]);
    T_REQUIRE(hr[6] >= 0 && hr[6] < rep.best_metric, "the precondition failed: epoch 6 at lr 1 scores %.4f, not "
              "below the best %.4f", hr[6], rep.best_metric);
    T_CHECK(rep2.best_epoch == rep.best_epoch && rep2.best_metric == rep.best_metric,
            "after the resume: best epoch %lld HR@10 %.6f (was %lld, %.6f)", (long long)rep2.best_epoch,
            rep2.best_metric, (long long)rep.best_epoch, rep.best_metric);
    char *after = slurp(path, &n1);
    T_CHECK(after && n0 == n1 && memcmp(before, after, n0) == 0, "best/ was rewritten by a worse evaluation");
    free(before);
    free(after);
}

static void test_keep_best_errors(void)
{
    char data[512], rdata[512], out[512];
    path_in(data, sizeof data, "ret.hstu");
    path_in(rdata, sizeof rdata, "rank.hstu");
    path_in(out, sizeof out, "keep-best-err");
    hstu_config cfg = parse(RETRIEVAL_CFG), rcfg = parse(RANKING_CFG);
    trainer_options o;
    keep_best_options(&o, 1);
    o.holdout = 1;
    trainer_report rep;
    hstu_error err = {0};
    hstu_status s = trainer_run(data, &cfg, out, &o, NULL, &rep, &err);
    T_CHECK(s == HSTU_ERR_ARG && strstr(err.msg, "add --holdout 2"), "holdout 1: %d %s", s, err.msg);
    keep_best_options(&o, 1);
    o.eval_every = 0;
    s = trainer_run(data, &cfg, out, &o, NULL, &rep, &err);
    T_CHECK(s == HSTU_ERR_ARG && strstr(err.msg, "--eval-every"), "eval-every 0: %d %s", s, err.msg);
    keep_best_options(&o, 1);
    s = trainer_run(rdata, &rcfg, out, &o, NULL, &rep, &err);
    T_CHECK(s == HSTU_ERR_ARG && strstr(err.msg, "ranking"), "ranking: %d %s", s, err.msg);
    T_CHECK(access(out, F_OK) != 0, "a refused run created %s", out);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/hstu_test_train_%d", (int)getpid());
    if (mkdir(g_dir, 0755) != 0) {
        perror(g_dir);
        return 1;
    }
    t_run("retrieval learns a planted rule: HR@10 via src/eval; the export loads and agrees", test_retrieval_learns);
    t_run("ranking learns planted labels: mean AUC via src/eval", test_ranking_learns);
    t_run("deterministic: two runs, identical checkpoints", test_deterministic);
    t_run("resume mid-epoch and at an epoch end: bit-identical to an uninterrupted run", test_resume);
    t_run("errors: resume with another seed, table too small, nothing to resume", test_errors);
    t_run("--keep-best: best/ holds the best valid HR@10, evaluates to it, survives a worse resumed run",
          test_keep_best);
    t_run("--keep-best errors: holdout 1, no evaluations, ranking", test_keep_best_errors);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0)
        printf("note: could not remove %s\n", g_dir);
    return t_summary();
}
