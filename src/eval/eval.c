/* eval.c - the evaluation loop: dataset users -> engine requests -> metrics.
 *
 * Requests point straight into the mapped dataset (items, actions, context
 * and timestamps are int64 arrays there), so the loop copies nothing per
 * user; all buffers (requests, results, the pooled ranking scores) are sized
 * once before the first batch. Users go in index order, `batch` per
 * hstu_engine_run call (distinct users, as the engine requires).
 *
 * Ranking scores are taken as logits: AUC depends only on their order, and
 * logits keep order where float sigmoids of large logits would tie.
 */
#include "eval/eval.h"

#include "core/status.h"
#include "data/progress.h"
#include "eval/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void eval_options_default(eval_options *o)
{
    memset(o, 0, sizeof *o);
    o->split = DATASET_TEST;
    o->batch = 32;
    hstu_engine_options_default(&o->engine);
}

/* One user's request for the split: false when the user has none. */
typedef struct eval_item {
    int64_t user;      /* dense index */
    int hist;          /* history items sent (after truncation) */
    int64_t target;    /* retrieval */
} eval_item;

static bool make_request(const hstu_config *cfg, const dataset_user *u, dataset_split split,
                         const int64_t *zeros, hstu_request *rq, int64_t *target)
{
    memset(rq, 0, sizeof *rq);
    rq->user_id = u->raw_id;
    if (cfg->family == HSTU_FAMILY_RANKING) {
        if (u->split != split || u->cand_end <= u->cand_begin)
            return false;
        int h = u->cand_begin, keep = h < cfg->max_history ? h : cfg->max_history;
        rq->n_context = u->n_context;
        rq->context = u->context;
        rq->n_items = keep;
        rq->items = u->items + (h - keep);
        rq->actions = u->actions + (h - keep);
        rq->n_candidates = u->cand_end - u->cand_begin;
        rq->candidates = u->items + u->cand_begin;
        return true;
    }
    int h;
    int64_t qt;
    if (!dataset_retrieval_example(u, split, &h, target, &qt))
        return false;
    int keep = h < cfg->max_history ? h : cfg->max_history;
    rq->n_items = keep;
    rq->items = u->items + (h - keep);
    rq->timestamps = u->timestamps ? u->timestamps + (h - keep) : zeros;
    rq->query_time = qt;
    rq->exclude_history = true;
    return true;
}

hstu_status eval_run(eval_run_fn run, void *ctx, const hstu_config *cfg, const dataset *ds,
                     const eval_options *o, eval_metrics *out, hstu_error *err)
{
    const dataset_info *in = dataset_get_info(ds);
    const bool rank = cfg->family == HSTU_FAMILY_RANKING;
    hstu_status st = dataset_check_config(ds, cfg, err);
    if (st != HSTU_OK)
        return st;
    memset(out, 0, sizeof *out);
    out->family = cfg->family;
    out->split = o->split;
    if (rank && o->split == DATASET_VALID)
        return hstu_fail(err, HSTU_ERR_ARG, "ranking data has no validation split (NVIDIA's user split: "
                         "train and test users): evaluate test, or train for the training users");
    if (!rank && o->split == DATASET_TRAIN)
        return hstu_fail(err, HSTU_ERR_ARG, "retrieval evaluates leave-one-out targets: split valid or test");
    const int B = o->batch > 0 ? o->batch : 32;
    double t0 = progress_now();

    /* size everything once: eligible users, candidates */
    int64_t n_users = 0, n_cand = 0;
    hstu_request rq;
    int64_t target;
    const int64_t *zeros = NULL;
    int64_t *zbuf = NULL;
    if (!rank && !in->has_timestamps) {
        if (!(zbuf = calloc((size_t)cfg->max_history + 1, sizeof *zbuf)))
            return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
        zeros = zbuf;
    }
    for (int64_t u = 0; u < in->n_users && (!o->max_users || n_users < o->max_users); u++) {
        dataset_user du;
        dataset_get_user(ds, u, &du);
        if (make_request(cfg, &du, o->split, zeros, &rq, &target)) {
            n_users++;
            n_cand += rq.n_candidates;
        }
    }
    if (n_users == 0) {
        free(zbuf);
        return hstu_fail(err, HSTU_ERR_ARG, "no user of the dataset has a %s example (%s)",
                         dataset_split_name(o->split),
                         rank ? "ranking: users of that split with at least 2 items"
                              : "retrieval: users with at least 3 items");
    }
    const int T = rank ? cfg->n_tasks : 0;
    int top_k = 0;
    if (!rank) {
        int cap = o->top_k_cap > 0 && o->top_k_cap < 100000 ? o->top_k_cap : 100000;
        top_k = cfg->item_rows - 1 < cap ? (int)(cfg->item_rows - 1) : cap;
    }
    hstu_request *reqs = calloc((size_t)B, sizeof *reqs), *warm = calloc((size_t)B, sizeof *warm);
    hstu_result *res = calloc((size_t)B, sizeof *res), *wres = calloc((size_t)B, sizeof *wres);
    int64_t *targets = calloc((size_t)B, sizeof *targets);
    int64_t *ids = rank ? NULL : malloc(sizeof(int64_t) * (size_t)B * top_k);
    float *tsc = rank ? NULL : malloc(sizeof(float) * (size_t)B * top_k);
    int64_t *wids = malloc(sizeof(int64_t) * (size_t)B);
    float *wsc = malloc(sizeof(float) * (size_t)B);
    float *scores = rank ? malloc(sizeof(float) * (size_t)(n_cand * T + 1)) : NULL;
    uint8_t *labels = rank ? malloc((size_t)(n_cand * T + 1)) : NULL;
    float *col = rank ? malloc(sizeof(float) * (size_t)(n_cand + 1)) : NULL;
    uint8_t *ycol = rank ? malloc((size_t)(n_cand + 1)) : NULL;
    void *scratch = rank ? malloc(eval_auc_scratch_bytes((size_t)n_cand + 1)) : NULL;
    if (!reqs || !warm || !res || !wres || !targets || !wids || !wsc ||
        (rank ? !scores || !labels || !col || !ycol || !scratch : !ids || !tsc)) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for %lld evaluation users",
                       (long long)n_users);
        goto done;
    }
    for (int b = 0; b < B; b++) {
        if (!rank) {
            res[b].topk_ids = ids + (size_t)b * top_k;
            res[b].topk_scores = tsc + (size_t)b * top_k;
            wres[b].topk_ids = wids + b;
            wres[b].topk_scores = wsc + b;
        }
    }

    progress pg;
    char label[64];
    snprintf(label, sizeof label, "eval %s", dataset_split_name(o->split));
    progress_init(&pg, label, (uint64_t)n_users, o->progress);
    eval_rank_acc acc = {0};
    int64_t done_users = 0, cand_off = 0;
    for (int64_t u = 0; u < in->n_users && done_users < n_users;) {
        int nb = 0;
        for (; u < in->n_users && nb < B && done_users + nb < n_users; u++) {
            dataset_user du;
            dataset_get_user(ds, u, &du);
            if (!make_request(cfg, &du, o->split, zeros, &reqs[nb], &targets[nb]))
                continue;
            reqs[nb].top_k = top_k;
            if (rank)
                res[nb].scores = scores + (size_t)(cand_off * T);
            for (int c = 0; rank && c < reqs[nb].n_candidates; c++)
                for (int t = 0; t < T; t++)
                    labels[(size_t)(cand_off + c) * T + t] =
                        (uint8_t)((du.actions[du.cand_begin + c] >> t) & 1);
            cand_off += reqs[nb].n_candidates;
            nb++;
        }
        if (nb == 0)
            break;
        if (o->warm_prefix) {
            int nw = 0;
            for (int b = 0; b < nb; b++) {
                warm[nw] = reqs[b];
                warm[nw].n_items = reqs[b].n_items / 2;
                warm[nw].n_candidates = 0;
                warm[nw].top_k = 1;
                if (!rank && warm[nw].n_items < 1)
                    continue;
                if (!rank)
                    warm[nw].query_time = reqs[b].timestamps[warm[nw].n_items];
                wres[nw].scores = wsc; /* ranking: no candidates, nothing written */
                nw++;
            }
            if (nw && (st = run(ctx, warm, nw, wres, true, err)) != HSTU_OK)
                goto done;
        }
        if ((st = run(ctx, reqs, nb, res, true, err)) != HSTU_OK) {
            hstu_error_prefix(err, "evaluating users %lld..", (long long)reqs[0].user_id);
            goto done;
        }
        if (!rank) {
            for (int b = 0; b < nb; b++) {
                int64_t r = 0;
                for (int j = 0; j < res[b].n_topk; j++)
                    if (res[b].topk_ids[j] == targets[b]) {
                        r = j + 1;
                        break;
                    }
                eval_rank_add(&acc, r);
            }
        }
        done_users += nb;
        progress_update(&pg, (uint64_t)done_users);
    }
    progress_finish(&pg);
    out->n_users = done_users;
    if (rank) {
        out->n_tasks = T;
        out->n_candidates = cand_off;
        double sum = 0;
        int defined = 0;
        for (int t = 0; t < T; t++) {
            int64_t pos = 0;
            for (int64_t i = 0; i < cand_off; i++) {
                col[i] = scores[(size_t)i * T + t];
                ycol[i] = labels[(size_t)i * T + t];
                pos += ycol[i];
                if (isnan(col[i])) {
                    st = hstu_fail(err, HSTU_ERR_ARG, "the model produced NaN scores (task %d)", t);
                    goto done;
                }
            }
            out->positives[t] = pos;
            out->auc[t] = eval_auc(col, ycol, (size_t)cand_off, scratch);
            if (!isnan(out->auc[t])) {
                sum += out->auc[t];
                defined++;
            }
        }
        out->mean_auc = defined ? sum / defined : NAN;
    } else {
        out->n_missing = acc.missing;
        eval_rank_means(&acc, &out->hr10, &out->ndcg10, &out->hr50, &out->ndcg50, &out->hr200,
                        &out->ndcg200, &out->mrr);
    }
    out->seconds = progress_now() - t0;
done:
    free(zbuf);
    free(reqs);
    free(warm);
    free(res);
    free(wres);
    free(targets);
    free(ids);
    free(tsc);
    free(wids);
    free(wsc);
    free(scores);
    free(labels);
    free(col);
    free(ycol);
    free(scratch);
    return st;
}

static hstu_status engine_run(void *ctx, const hstu_request *reqs, int n, hstu_result *res, bool logits,
                              hstu_error *err)
{
    return hstu_engine_run(ctx, reqs, n, res, logits, err);
}

hstu_status eval_engine(hstu_engine *e, const hstu_model *m, const dataset *ds,
                        const eval_options *o, eval_metrics *out, hstu_error *err)
{
    return eval_run(engine_run, e, hstu_model_config(m), ds, o, out, err);
}

hstu_status eval_model(const hstu_model *m, const dataset *ds, const eval_options *o,
                       eval_metrics *out, hstu_error *err)
{
    hstu_engine *e = NULL;
    hstu_status st = dataset_check_config(ds, hstu_model_config(m), err);
    if (st != HSTU_OK)
        return st;
    if ((st = hstu_engine_create(m, &o->engine, &e, err)) != HSTU_OK)
        return st;
    st = eval_engine(e, m, ds, o, out, err);
    hstu_engine_destroy(e);
    return st;
}

void eval_metrics_format(const eval_metrics *mt, const dataset *ds, char *buf, size_t cap)
{
    size_t n = 0;
#define PUT(...)                                                                 \
    do {                                                                         \
        if (n < cap)                                                             \
            n += (size_t)snprintf(buf + n, cap - n, __VA_ARGS__);                \
    } while (0)
    PUT("%s: %lld users", dataset_split_name(mt->split), (long long)mt->n_users);
    if (mt->family == HSTU_FAMILY_RETRIEVAL) {
        PUT("  HR@10 %.4f  NDCG@10 %.4f  HR@50 %.4f  NDCG@50 %.4f  HR@200 %.4f  MRR %.4f", mt->hr10,
            mt->ndcg10, mt->hr50, mt->ndcg50, mt->hr200, mt->mrr);
        if (mt->n_missing)
            PUT("  (%lld targets in their history)", (long long)mt->n_missing);
    } else {
        const dataset_info *in = ds ? dataset_get_info(ds) : NULL;
        PUT(", %lld candidates  AUC", (long long)mt->n_candidates);
        for (int t = 0; t < mt->n_tasks; t++) {
            char name[HSTU_NAME_MAX];
            if (in && t < in->n_tasks)
                snprintf(name, sizeof name, "%s", in->task_names[t]);
            else
                snprintf(name, sizeof name, "task%d", t);
            if (isnan(mt->auc[t]))
                PUT(" %s n/a", name);
            else
                PUT(" %s %.4f", name, mt->auc[t]);
        }
        PUT("  mean %.4f", mt->mean_auc);
    }
    PUT("  (%.1f s)", mt->seconds);
#undef PUT
}
