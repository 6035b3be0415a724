/* trainer.c - the training loop (trainer.h).
 *
 * Sizes first: every training user's example length is known up front, so
 * the batch and the network's buffers are allocated once for the largest
 * batch any order could form (the batch_users longest examples). The loop
 * itself allocates nothing.
 */
#include "train/trainer.h"

#include "core/clock.h"
#include "core/paths.h"
#include "core/rng.h"
#include "core/status.h"
#include "data/dataset.h"
#include "eval/eval.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/init.h"
#include "train/net.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void trainer_options_default(trainer_options *o)
{
    memset(o, 0, sizeof *o);
    o->epochs = 1;
    o->batch_users = 128;
    o->seed = 1;
    o->holdout = 1;
    o->dropout = 0.2f;
    o->temperature = 0.05f;
    o->negatives = 128;
    adamw_options_default(&o->adam);
    o->eval_every = 1;
    o->progress = true;
}

/* splitmix64's step: the finaliser of z + the golden-ratio increment. */
static uint64_t mix64(uint64_t z) { return rng_mix64(z + 0x9e3779b97f4a7c15ull); }

/* One training example: which user, and which slice of its items. */
typedef struct example {
    int64_t user;
    int first, count;  /* retrieval: items[first .. first+count) (count >= 2); ranking: history items */
    int rows;          /* token rows it takes in a batch */
} example;

typedef struct run {
    const dataset *ds;
    const hstu_config *cfg;
    trainer_options o;
    example *ex;
    int64_t n_ex;
    int64_t *order;
    FILE *log, *logfile;
} run;

static void say(run *r, const char *fmt, ...) HSTU_PRINTF(2, 3);
static void say(run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (r->log) {
        va_list aq;
        va_copy(aq, ap);
        vfprintf(r->log, fmt, aq);
        va_end(aq);
        fflush(r->log);
    }
    if (r->logfile) {
        vfprintf(r->logfile, fmt, ap);
        fflush(r->logfile);
    }
    va_end(ap);
}

static hstu_status make_examples(run *r, hstu_error *err)
{
    const dataset_info *in = dataset_get_info(r->ds);
    const hstu_config *c = r->cfg;
    r->ex = malloc(sizeof *r->ex * (size_t)(in->n_users ? in->n_users : 1));
    r->order = malloc(sizeof *r->order * (size_t)(in->n_users ? in->n_users : 1));
    if (!r->ex || !r->order)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for %lld users", (long long)in->n_users);
    r->n_ex = 0;
    for (int64_t u = 0; u < in->n_users; u++) {
        dataset_user du;
        dataset_get_user(r->ds, u, &du);
        example e = {.user = u};
        if (c->family == HSTU_FAMILY_RETRIEVAL) {
            int n = du.n_items >= 3 ? du.n_items - r->o.holdout : du.n_items;
            if (n < 2)
                continue;
            int keep = n < c->max_history + 1 ? n : c->max_history + 1;
            e.first = n - keep;
            e.count = keep;
            e.rows = keep - 1;
        } else {
            if (du.split != DATASET_TRAIN || du.cand_end <= du.cand_begin)
                continue;
            int h = du.cand_begin < c->max_history ? du.cand_begin : c->max_history;
            e.first = du.cand_begin - h;
            e.count = h;
            e.rows = hstu_config_history_tokens(c, h) + (du.cand_end - du.cand_begin);
        }
        r->ex[r->n_ex++] = e;
    }
    if (r->n_ex == 0)
        return hstu_fail(err, HSTU_ERR_ARG, "the dataset has no training example (%s)",
                         c->family == HSTU_FAMILY_RETRIEVAL ? "no user with 2 items to train on"
                                                            : "no training user with candidates");
    return HSTU_OK;
}

static int cmp_rows_desc(const void *a, const void *b)
{
    int x = ((const example *)a)->rows, y = ((const example *)b)->rows;
    return (x < y) - (x > y);
}

/* The largest batch (rows) and the longest example. */
static void batch_bounds(const run *r, int *max_rows, int *max_user)
{
    example *tmp = malloc(sizeof *tmp * (size_t)r->n_ex);
    HSTU_ASSERT(tmp);
    memcpy(tmp, r->ex, sizeof *tmp * (size_t)r->n_ex);
    qsort(tmp, (size_t)r->n_ex, sizeof *tmp, cmp_rows_desc);
    int64_t sum = 0;
    for (int64_t i = 0; i < r->n_ex && i < r->o.batch_users; i++)
        sum += tmp[i].rows;
    *max_rows = (int)sum;
    *max_user = tmp[0].rows;
    free(tmp);
}

static void epoch_order(run *r, int64_t epoch)
{
    for (int64_t i = 0; i < r->n_ex; i++)
        r->order[i] = i;
    uint64_t s = mix64(mix64(r->o.seed ^ 0x0dd5eedull) + (uint64_t)epoch);
    for (int64_t i = r->n_ex - 1; i > 0; i--) {
        s = mix64(s);
        int64_t j = (int64_t)(s % (uint64_t)(i + 1));
        int64_t t = r->order[i];
        r->order[i] = r->order[j];
        r->order[j] = t;
    }
}

/* Fills b with the examples order[from .. from+count). */
static void fill_batch(const run *r, int64_t from, int count, tr_batch *b)
{
    const hstu_config *c = r->cfg;
    b->B = count;
    b->T = 0;
    b->offsets[0] = 0;
    for (int i = 0; i < count; i++) {
        const example *e = &r->ex[r->order[from + i]];
        dataset_user du;
        dataset_get_user(r->ds, e->user, &du);
        int r0 = b->T;
        if (c->family == HSTU_FAMILY_RETRIEVAL) {
            int n = e->count - 1;
            for (int p = 0; p < n; p++) {
                int it = e->first + p;
                b->table[r0 + p] = TR_TABLE_ITEM;
                b->ids[r0 + p] = du.items[it];
                b->pos[r0 + p] = p;
                b->ts[r0 + p] = du.timestamps ? du.timestamps[it] : 0;
                b->target[r0 + p] = du.items[it + 1];
            }
            b->hist[i] = n;
            b->query_time[i] = du.timestamps ? du.timestamps[e->first + n] : 0;
            b->T += n;
        } else {
            int k = c->n_context, h = hstu_config_history_tokens(c, e->count);
            int m = du.cand_end - du.cand_begin, maxp = c->max_positions - 1, row = r0;
            for (int j = 0; j < k; j++) {
                b->table[row] = (uint8_t)(TR_TABLE_CONTEXT + j);
                b->ids[row++] = du.context[j];
            }
            for (int t = 0; t < e->count; t++) {
                b->table[row] = TR_TABLE_ITEM;
                b->ids[row++] = du.items[e->first + t];
                b->table[row] = TR_TABLE_ACTION;
                b->ids[row++] = du.actions[e->first + t];
            }
            for (int t = 0; t < m; t++) {
                b->table[row] = TR_TABLE_ITEM;
                b->ids[row] = du.items[du.cand_begin + t];
                b->labels[row++] = du.actions[du.cand_begin + t];
            }
            for (int p = 0; p < h + m; p++) {
                int pos = p < h ? p : h;
                b->pos[r0 + p] = pos < maxp ? pos : maxp;
                b->ts[r0 + p] = 0;
                b->target[r0 + p] = 0;
            }
            b->hist[i] = h;
            b->query_time[i] = 0;
            b->T += h + m;
        }
        b->offsets[i + 1] = b->T;
    }
}

static void fmt_eta(double s, char *buf, size_t cap)
{
    if (!(s >= 0) || s > 1e8)
        snprintf(buf, cap, "?");
    else if (s >= 3600)
        snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60)
        snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(buf, cap, "%.0fs", s);
}

/* Evaluates m on the trainer's split (validation with holdout 2, else test)
 * into rep; line receives the logged line. */
static hstu_status evaluate(run *r, hstu_model *m, int64_t epoch, trainer_report *rep, char *line, size_t cap,
                            hstu_error *err)
{
    eval_options eo;
    eval_options_default(&eo);
    eo.split = r->cfg->family == HSTU_FAMILY_RETRIEVAL && r->o.holdout == 2 ? DATASET_VALID : DATASET_TEST;
    eo.max_users = r->o.eval_users;
    eo.engine.threads = r->o.threads;
    eo.engine.use_cache = false; /* one request per user: a cache would only cost memory */
    eval_metrics mt;
    model_finish(m);
    hstu_status s = eval_model(m, r->ds, &eo, &mt, err);
    if (s != HSTU_OK) {
        hstu_error_prefix(err, "evaluation after epoch %lld", (long long)epoch + 1);
        return s;
    }
    eval_metrics_format(&mt, r->ds, line, cap);
    say(r, "eval  epoch %lld  %s\n", (long long)epoch + 1, line);
    rep->evaluated = true;
    rep->metric = mt.family == HSTU_FAMILY_RETRIEVAL ? mt.hr10 : mt.mean_auc;
    rep->n_tasks = mt.family == HSTU_FAMILY_RANKING ? mt.n_tasks : 0;
    for (int t = 0; t < rep->n_tasks; t++)
        rep->auc[t] = mt.auc[t];
    return HSTU_OK;
}

/* --keep-best selects on the validation split: retrieval with holdout 2 only. */
static hstu_status check_keep_best(const trainer_options *o, hstu_family family, hstu_error *err)
{
    if (!o->keep_best)
        return HSTU_OK;
    if (family != HSTU_FAMILY_RETRIEVAL)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "--keep-best selects the model on a validation split, and ranking datasets have none "
                         "(train and test users only; selecting on test would overstate the test metric): "
                         "train without --keep-best");
    if (o->holdout != 2)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "--keep-best selects the model on the validation split, which exists only with "
                         "--holdout 2 (with --holdout 1 the validation item is a training target and the "
                         "evaluations are on test): add --holdout 2");
    if (o->eval_every < 1)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "--keep-best selects the model at evaluations: give --eval-every N >= 1");
    return HSTU_OK;
}

/* After an evaluation: if its metric beats the best so far, m goes to
 * out_dir/best/ and st records it (the checkpoint written next saves it). */
static hstu_status update_best(run *r, const char *out_dir, const hstu_model *m, int64_t ep, double metric,
                               const char *line, tr_state *st, hstu_error *err)
{
    if (st->best_epoch > 0 && !(metric > st->best_metric)) {
        say(r, "best  still epoch %lld  valid HR@10 %.4f  (%s/best)\n", (long long)st->best_epoch,
            st->best_metric, out_dir);
        return HSTU_OK;
    }
    tr_best b = {.epoch = ep + 1, .step = st->step, .split = "valid", .metric = "HR@10", .value = metric,
                 .eval_line = line};
    hstu_status s = tr_best_save(out_dir, m, &b, err);
    if (s != HSTU_OK)
        return s;
    st->best_epoch = ep + 1;
    st->best_metric = metric;
    say(r, "best  epoch %lld  valid HR@10 %.4f  -> %s/best\n", (long long)st->best_epoch, metric, out_dir);
    return HSTU_OK;
}

/* Exact small integers as F32 (the dump is for small test batches). */
static float *as_f32(const void *src, size_t n, bool is64, bool is8)
{
    float *o = malloc(sizeof *o * (n ? n : 1));
    HSTU_ASSERT(o);
    for (size_t i = 0; i < n; i++) {
        double v = is8 ? ((const uint8_t *)src)[i] : is64 ? (double)((const int64_t *)src)[i] : ((const int *)src)[i];
        HSTU_ASSERT(fabs(v) < 16777216.0);
        o[i] = (float)v;
    }
    return o;
}

/* The first step's inputs and outputs for the PyTorch check (trainer.h). */
static hstu_status dump_step(const run *r, tr_net *net, const tr_batch *b, hstu_model *m, double loss,
                             const char *path, hstu_error *err)
{
    enum { CAP = MODEL_MAX_TENSORS * 2 + 64 };
    const char **names = calloc(CAP, sizeof *names);
    const float **data = calloc(CAP, sizeof *data);
    int64_t *numel = calloc(CAP, sizeof *numel);
    char (*nbuf)[MODEL_NAME_MAX + 8] = calloc(CAP, sizeof *nbuf);
    float **owned = calloc(CAP, sizeof *owned);
    model_tensor *list = malloc(sizeof *list * MODEL_MAX_TENSORS), *glist = malloc(sizeof *glist * MODEL_MAX_TENSORS);
    HSTU_ASSERT(names && data && numel && nbuf && owned && list && glist);
    int n = 0, no = 0, nt = model_tensors(m, list);
    model_tensors(tr_net_grads(net), glist);
    for (int i = 0; i < nt; i++) {
        snprintf(nbuf[n], sizeof nbuf[n], "param.%s", list[i].name);
        names[n] = nbuf[n], data[n] = *list[i].slot, numel[n++] = model_tensor_numel(&list[i]);
        snprintf(nbuf[n], sizeof nbuf[n], "grad.%s", glist[i].name);
        names[n] = nbuf[n], data[n] = *glist[i].slot, numel[n++] = model_tensor_numel(&glist[i]);
    }
    float lossf = (float)loss;
    names[n] = "loss", data[n] = &lossf, numel[n++] = 1;
#define ADD(name_, ptr_, count_, is64_, is8_)                                   \
    do {                                                                        \
        owned[no] = as_f32(ptr_, (size_t)(count_), is64_, is8_);                \
        names[n] = name_, data[n] = owned[no++], numel[n++] = (count_);         \
    } while (0)
    ADD("batch.offsets", b->offsets, b->B + 1, false, false);
    ADD("batch.hist", b->hist, b->B, false, false);
    ADD("batch.table", b->table, b->T, false, true);
    ADD("batch.ids", b->ids, b->T, true, false);
    ADD("batch.pos", b->pos, b->T, false, false);
    /* unix times exceed fp32's 2^24: each as hi * 2^20 + lo, both exact */
    int64_t *split = malloc(sizeof *split * (size_t)(2 * (b->T + b->B) + 1));
    HSTU_ASSERT(split);
    int64_t *ts_hi = split, *ts_lo = ts_hi + b->T, *q_hi = ts_lo + b->T, *q_lo = q_hi + b->B;
    for (int i = 0; i < b->T; i++)
        ts_hi[i] = b->ts[i] >> 20, ts_lo[i] = b->ts[i] & ((1 << 20) - 1);
    for (int i = 0; i < b->B; i++)
        q_hi[i] = b->query_time[i] >> 20, q_lo[i] = b->query_time[i] & ((1 << 20) - 1);
    ADD("batch.ts_hi", ts_hi, b->T, true, false);
    ADD("batch.ts_lo", ts_lo, b->T, true, false);
    ADD("batch.query_time_hi", q_hi, b->B, true, false);
    ADD("batch.query_time_lo", q_lo, b->B, true, false);
    free(split);
    ADD("batch.target", b->target, b->T, true, false);
    ADD("batch.labels", b->labels, b->T, true, false);
    const int *rows = NULL;
    const int64_t *neg = NULL;
    int R = tr_net_negatives(net, &rows, &neg);
    if (R > 0) {
        ADD("sup_rows", rows, R, false, false);
        ADD("neg_ids", neg, (int64_t)R * r->o.negatives, true, false);
    }
#undef ADD
    const hstu_config *c = &m->cfg;
    int d = c->d_model, hv = c->n_heads * c->d_v;
    for (int l = -1; l < c->n_layers; l++) {
        size_t cnt = (size_t)b->T * (l < 0 ? d : hv);
        owned[no] = malloc(sizeof(float) * (cnt ? cnt : 1));
        HSTU_ASSERT(owned[no]);
        tr_net_dropout_mask(net, 0, l, cnt, owned[no]);
        snprintf(nbuf[n], sizeof nbuf[n], l < 0 ? "drop.input" : "drop.%d", l);
        names[n] = nbuf[n], data[n] = owned[no++], numel[n++] = (int64_t)cnt;
    }
    char *cfg_json = hstu_config_to_json(c), sd[32], st_[32], sk[32];
    snprintf(sd, sizeof sd, "%.9g", r->o.dropout);
    snprintf(st_, sizeof st_, "%.9g", r->o.temperature);
    snprintf(sk, sizeof sk, "%d", r->o.negatives);
    const char *meta[] = {"config", cfg_json ? cfg_json : "{}", "dropout", sd, "temperature", st_, "negatives", sk};
    hstu_status s = tr_write_safetensors(path, names, data, numel, n, meta, 4, err);
    free(cfg_json);
    for (int i = 0; i < no; i++)
        free(owned[i]);
    free(owned), free(names), free(data), free(numel), free(nbuf), free(list), free(glist);
    return s;
}

hstu_status trainer_run(const char *data_path, const hstu_config *cfg_in, const char *out_dir,
                        const trainer_options *opts, FILE *log, trainer_report *rep, hstu_error *err)
{
    run r = {.o = *opts, .log = log};
    memset(rep, 0, sizeof *rep);
    hstu_status s = HSTU_OK;
    dataset *ds = NULL;
    hstu_model *m = NULL;
    float *am = NULL, *av = NULL;
    tr_net *net = NULL;
    tr_batch batch = {0};
    tr_state st = {0};
    if (r.o.threads > 0) {
        omp_set_num_threads(r.o.threads);
        openblas_set_num_threads(r.o.threads);
    }
    int threads = omp_get_max_threads();
    if (r.o.batch_users < 1 || r.o.epochs < 0 || (r.o.holdout != 1 && r.o.holdout != 2) ||
        !(r.o.dropout >= 0 && r.o.dropout < 1) || !(r.o.temperature > 0) || r.o.negatives < 1)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "bad training option: need batch >= 1, epochs >= 0, holdout 1 or 2, 0 <= dropout < 1, "
                         "temperature > 0, negatives >= 1");
    if (cfg_in && !r.o.resume && (s = check_keep_best(&r.o, cfg_in->family, err)) != HSTU_OK)
        return s;
    if ((s = core_mkdir_p(out_dir, err)) != HSTU_OK)
        return s;
    if ((s = dataset_open(data_path, &ds, err)) != HSTU_OK)
        return s;
    if (r.o.resume) {
        if ((s = tr_checkpoint_load(out_dir, &m, &am, &av, &st, err)) != HSTU_OK) {
            hstu_error_prefix(err, "--resume");
            goto done;
        }
        if (st.seed != r.o.seed || st.batch_users != r.o.batch_users || st.holdout != r.o.holdout) {
            s = hstu_fail(err, HSTU_ERR_ARG,
                          "--resume: the checkpoint in %s was trained with --seed %llu --batch %d --holdout %d; "
                          "pass the same (got %llu, %d, %d)",
                          out_dir, (unsigned long long)st.seed, st.batch_users, st.holdout,
                          (unsigned long long)r.o.seed, r.o.batch_users, r.o.holdout);
            goto done;
        }
        if (st.threads != threads)
            fprintf(stderr,
                    "hstu train: note: the checkpoint was written with %d threads, this run uses %d: the "
                    "result will not be bit-identical to an uninterrupted run\n",
                    st.threads, threads);
    } else {
        if ((s = hstu_model_create_random(cfg_in, r.o.seed, &m, err)) != HSTU_OK)
            goto done;
        if (!r.o.init_random)
            tr_init_weights(m, r.o.seed);
        size_t P = hstu_model_param_count(m);
        am = calloc(P ? P : 1, sizeof *am);
        av = calloc(P ? P : 1, sizeof *av);
        if (!am || !av) {
            s = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for the optimizer state");
            goto done;
        }
        st = (tr_state){.seed = r.o.seed, .batch_users = r.o.batch_users, .holdout = r.o.holdout};
    }
    st.threads = threads;
    r.ds = ds;
    r.cfg = &m->cfg;
    if ((s = check_keep_best(&r.o, r.cfg->family, err)) != HSTU_OK)
        goto done;
    if (r.o.keep_best && r.o.resume) {
        /* best/ is written before the checkpoint that records it: a run that died
           between the two left a best/ the state does not know; keep it if better */
        tr_best on_disk;
        if ((s = tr_best_read(out_dir, &on_disk, err)) != HSTU_OK)
            goto done;
        if (on_disk.epoch > 0 && (st.best_epoch == 0 || on_disk.value > st.best_metric)) {
            st.best_epoch = on_disk.epoch;
            st.best_metric = on_disk.value;
        }
    }
    if ((s = dataset_check_config(ds, r.cfg, err)) != HSTU_OK)
        goto done;
    if ((s = make_examples(&r, err)) != HSTU_OK)
        goto done;
    char path[4096];
    snprintf(path, sizeof path, "%s/train_log.txt", out_dir);
    r.logfile = fopen(path, "a");
    int max_rows, max_user;
    batch_bounds(&r, &max_rows, &max_user);
    tr_net_options no;
    tr_net_options_default(&no);
    no.dropout = r.o.dropout;
    no.temperature = r.o.temperature;
    no.n_negatives = r.o.negatives;
    no.n_sample_items = dataset_get_info(ds)->n_items;
    no.seed = r.o.seed;
    int batch_cap = r.o.batch_users < r.n_ex ? r.o.batch_users : (int)r.n_ex;
    if ((s = tr_batch_alloc(&batch, batch_cap, max_rows, err)) != HSTU_OK)
        goto done;
    if ((s = tr_net_create(m, &no, batch_cap, max_rows, max_user, &net, err)) != HSTU_OK)
        goto done;
    hstu_model *g = tr_net_grads(net);
    size_t P = hstu_model_param_count(m);
    int64_t per_epoch = (r.n_ex + r.o.batch_users - 1) / r.o.batch_users;
    int64_t total = (int64_t)r.o.epochs * per_epoch;
    if (r.o.max_steps > 0 && r.o.max_steps < total)
        total = r.o.max_steps;
    say(&r, "train %s: %s, %lld examples, %lld steps per epoch, batch %d, %zu parameters, %d threads%s\n",
        data_path, r.cfg->family == HSTU_FAMILY_RETRIEVAL ? "retrieval" : "ranking", (long long)r.n_ex,
        (long long)per_epoch, r.o.batch_users, P, threads, r.o.resume ? ", resumed" : "");
    if (r.o.resume)
        say(&r, "resume at step %lld (epoch %lld, batch %lld)\n", (long long)st.step, (long long)st.epoch + 1,
            (long long)st.batch);
    if (r.o.keep_best && st.best_epoch > 0)
        say(&r, "best so far: epoch %lld, valid HR@10 %.4f (%s/best)\n", (long long)st.best_epoch, st.best_metric,
            out_dir);
    double t_run0 = core_now_s(), t_draw = 0, step_time = 0;
    int64_t steps_run = 0, tokens_run = 0;
    bool tty = isatty(2);
    while (st.step < total && st.epoch < r.o.epochs) {
        epoch_order(&r, st.epoch);
        double loss_sum = 0, t_ep = core_now_s();
        int64_t loss_n = 0, tok_ep = 0;
        while (st.batch < per_epoch && st.step < total) {
            int64_t from = st.batch * r.o.batch_users;
            int count = (int)(r.n_ex - from < r.o.batch_users ? r.n_ex - from : r.o.batch_users);
            fill_batch(&r, from, count, &batch);
            double t0 = core_now_s();
            double loss = tr_net_step(net, &batch, (uint64_t)st.step, true);
            if (r.o.dump_path) {
                s = dump_step(&r, net, &batch, m, loss, r.o.dump_path, err);
                goto done;
            }
            adamw_step(&r.o.adam, st.step + 1, P, m->arena, g->arena, am, av);
            double dt = core_now_s() - t0;
            step_time += dt;
            st.seconds += dt;
            st.step++;
            st.batch++;
            steps_run++;
            tokens_run += batch.T;
            tok_ep += batch.T;
            if (!isfinite(loss)) {
                s = hstu_fail(err, HSTU_ERR_ARG,
                              "the loss became %f at step %lld: lower --lr (the last checkpoint is intact)", loss,
                              (long long)st.step);
                goto done;
            }
            loss_sum += loss;
            loss_n++;
            double t = core_now_s();
            if (r.o.progress && (t - t_draw >= (tty ? 0.5 : 10.0) || st.step == total)) {
                char eta[32];
                fmt_eta((double)(total - st.step) * step_time / (double)steps_run, eta, sizeof eta);
                fprintf(stderr, "%sepoch %lld/%d  step %lld/%lld  loss %.4f  %.0f tokens/s  ETA %s%s",
                        tty ? "\r" : "", (long long)st.epoch + 1, r.o.epochs, (long long)st.step, (long long)total,
                        loss_sum / loss_n, (double)tokens_run / step_time, eta, tty ? "\033[K" : "\n");
                t_draw = t;
            }
            if (r.o.save_every > 0 && st.step % r.o.save_every == 0 && st.batch < per_epoch)
                if ((s = tr_checkpoint_save(out_dir, m, am, av, &st, err)) != HSTU_OK)
                    goto done;
        }
        if (r.o.progress && tty)
            fputc('\n', stderr);
        rep->last_loss = loss_n ? loss_sum / loss_n : 0;
        bool epoch_done = st.batch >= per_epoch;
        int64_t ep = st.epoch;
        if (epoch_done) {
            st.epoch++;
            st.batch = 0;
        }
        say(&r, "epoch %lld%s  loss %.5f  %lld tokens  %.1f s  %.0f tokens/s  (step %lld, %.0f s trained)\n",
            (long long)ep + 1, epoch_done ? "" : " (partial)", rep->last_loss, (long long)tok_ep, core_now_s() - t_ep,
            (double)tok_ep / (core_now_s() - t_ep), (long long)st.step, st.seconds);
        /* evaluate (and write best/) before the checkpoint, which records the best so far */
        bool last = st.step >= total || st.epoch >= r.o.epochs;
        if (r.o.eval_every > 0 && epoch_done && ((ep + 1) % r.o.eval_every == 0 || last)) {
            char line[1024];
            if ((s = evaluate(&r, m, ep, rep, line, sizeof line, err)) != HSTU_OK)
                goto done;
            if (r.o.keep_best && (s = update_best(&r, out_dir, m, ep, rep->metric, line, &st, err)) != HSTU_OK)
                goto done;
        }
        if ((s = tr_checkpoint_save(out_dir, m, am, av, &st, err)) != HSTU_OK)
            goto done;
        if (!epoch_done)
            break;
    }
    rep->steps = st.step;
    rep->best_epoch = r.o.keep_best ? st.best_epoch : 0;
    rep->best_metric = r.o.keep_best ? st.best_metric : 0;
    rep->seconds = core_now_s() - t_run0;
    rep->tokens_per_s = step_time > 0 ? (double)tokens_run / step_time : 0;
done:
    if (r.logfile)
        fclose(r.logfile);
    tr_net_destroy(net);
    tr_batch_free(&batch);
    free(r.ex);
    free(r.order);
    free(am);
    free(av);
    hstu_model_destroy(m);
    dataset_close(ds);
    return s;
}
