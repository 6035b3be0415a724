/* forward.c - the HSTU forward pass over a planned sub-batch (spec 1).
 *
 * Rows are jagged: user b's computed rows sit at dense rows q0 .. q0+rows-1,
 * first its new history rows [c, hist), then its candidates. Per layer:
 *   xn = LN(x); uvqk = phi(xn W + b); append rows [c, paged) of k, v to the
 *   user's pages; attention over paged + dense K/V; y = u * LN(a);
 *   x += y W_proj (+ b) in the same GEMM (beta = 1).
 * Then the head: ranking takes the candidate rows (L2-normalised) through
 * the MLP; retrieval takes each user's last history row and runs top-k.
 * Every op goes through e->ops, so backends share this orchestration.
 */
#include "model/engine.h"

#include "core/rng.h"
#include "core/status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A table number and an id as one key: exact (table in the high half) for
 * ids below 2^32, which every table of a realistic size has; hashed above. */
static inline uint64_t table_key(uint64_t table, int64_t id)
{
    uint64_t u = (uint64_t)id;
    return u >> 32 ? rng_mix64(rng_mix64(u) ^ table) : table << 32 | u;
}

void forward_row_keys(const hstu_config *cfg, const hstu_request *r, int n, uint64_t *keys)
{
    if (cfg->family == HSTU_FAMILY_RANKING) {
        /* context j, then item and action in turns (two rows a step: this
         * runs over every user's whole history on each request) */
        const int k = cfg->n_context < n ? cfg->n_context : n, pairs = (n - k) / 2;
        for (int j = 0; j < k; j++)
            keys[j] = table_key((uint64_t)j + 1, r->context[j]);
        /* Ids below 2^32 (every table of a realistic size) make exact keys
         * with no branch; any id above sends the whole loop to table_key. */
        const int64_t *items = r->items, *actions = r->actions;
        uint64_t *out = keys + k, high = 0;
        for (int j = 0; j < pairs; j++) {
            uint64_t u = (uint64_t)items[j], v = (uint64_t)actions[j];
            high |= (u | v) >> 32;
            out[2 * j] = (uint64_t)1000 << 32 | u;
            out[2 * j + 1] = (uint64_t)1001 << 32 | v;
        }
        for (int j = 0; high && j < pairs; j++) {
            out[2 * j] = table_key(1000, items[j]);
            out[2 * j + 1] = table_key(1001, actions[j]);
        }
        if ((n - k) % 2)
            keys[n - 1] = table_key(1000, r->items[pairs]);
        return;
    }
    /* Retrieval: row i's K/V depend on its item, its time and the next row's time. */
    for (int i = 0; i < n; i++) {
        uint64_t a = (uint64_t)r->items[i], b = (uint64_t)r->timestamps[i], c = (uint64_t)r->timestamps[i + 1];
        keys[i] = rng_mix64(rng_mix64(rng_mix64(a) ^ b) ^ c);
    }
}

/* Embedding row of user sequence row `row` (history) or candidate `j`. */
static const float *embed_row(const hstu_model *m, const hstu_request *r, int row)
{
    const hstu_config *cfg = &m->cfg;
    size_t d = (size_t)cfg->d_model;
    if (cfg->family == HSTU_FAMILY_RETRIEVAL)
        return m->item + (size_t)r->items[row] * d;
    int k = cfg->n_context;
    if (row < k)
        return m->context[row] + (size_t)r->context[row] * d;
    int t = row - k;
    if (t % 2 == 0)
        return m->item + (size_t)r->items[t / 2] * d;
    return m->action + (size_t)r->actions[t / 2] * d;
}

/* Embeds one user's computed rows. Called inside a parallel region: its rows
 * are shared out among the threads (no barrier: users are independent). */
static void embed(hstu_engine *e, const user_plan *p)
{
    const hstu_model *m = e->model;
    const hstu_config *cfg = &m->cfg;
    int d = cfg->d_model;
    float scale = sqrtf((float)d);
    int rows = p->hist - p->c + p->cand;
#pragma omp for schedule(static) nowait
    for (int i = 0; i < rows; i++) {
        bool is_cand = i >= p->hist - p->c;
        const float *src;
        int pos;
        if (is_cand) {
            src = m->item + (size_t)p->req->candidates[i - (p->hist - p->c)] * d;
            pos = p->hist; /* every candidate sits at position h */
        } else {
            src = embed_row(m, p->req, p->c + i);
            pos = p->c + i;
        }
        if (pos > cfg->max_positions - 1)
            pos = cfg->max_positions - 1;
        const float *pe = m->pos + (size_t)pos * d;
        float *x = e->x + (size_t)(p->q0 + i) * d;
        for (int c = 0; c < d; c++)
            x[c] = src[c] * scale + pe[c];
    }
}

/* Copies rows [c, paged) of this layer's k and v into the user's pages. */
static void append_kv(hstu_engine *e, const user_plan *p, int layer)
{
    const hstu_config *cfg = &e->model->cfg;
    int W = hstu_config_uvqk_width(cfg);
    int kw = cfg->n_heads * cfg->d_qk, vw = cfg->n_heads * cfg->d_v;
    int P = kv_page_size(e->kv);
    size_t k_off = kv_layer_k(e->kv, layer), v_off = kv_layer_v(e->kv, layer);
    const float *v_src = e->uvqk + vw;            /* u|v|q|k: v after u */
    const float *k_src = e->uvqk + 2 * vw + kw;   /* k after q */
    for (int j = p->c; j < p->paged; j++) {
        float *page = e->page_ptr[p->page0 + j / P];
        size_t dense = (size_t)(p->q0 + j - p->c) * W;
        memcpy(page + k_off + (size_t)(j % P) * kw, k_src + dense, sizeof(float) * kw);
        memcpy(page + v_off + (size_t)(j % P) * vw, v_src + dense, sizeof(float) * vw);
    }
}

static void layer_forward(hstu_engine *e, user_plan *plans, int B, int T, int l)
{
    const hstu_ops *ops = e->ops;
    const hstu_config *cfg = &e->model->cfg;
    const layer_weights *w = &e->model->layers[l];
    int d = cfg->d_model, H = cfg->n_heads;
    int W = hstu_config_uvqk_width(cfg);
    int vw = H * cfg->d_v, kw = H * cfg->d_qk;

    ops->layernorm(T, d, e->x, d, w->ln_in_w, w->ln_in_b, cfg->ln_eps, e->xn, d);
    ops->gemm(T, W, d, e->xn, d, w->uvqk_w, W, 0.0f, e->uvqk, W);
    ops->bias_silu(T, W, e->uvqk, W, w->uvqk_b, cfg->silu_uvqk == HSTU_SILU_ALL ? W : vw);

    for (int b = 0; b < B; b++)
        if (plans[b].paged > plans[b].c)
            append_kv(e, &plans[b], l);

    attn_rab rab = {w->rab_pos, w->rab_time, cfg->rab_buckets};
    attn_params ap = {
        .B = B, .H = H, .Dqk = cfg->d_qk, .Dv = cfg->d_v,
        .seqs = e->seqs,
        .q = e->uvqk + 2 * vw, .k = e->uvqk + 2 * vw + kw, .v = e->uvqk + vw, .ld_qkv = W,
        .page_size = e->kv ? kv_page_size(e->kv) : 1,
        .k_off = e->kv ? kv_layer_k(e->kv, l) : 0,
        .v_off = e->kv ? kv_layer_v(e->kv, l) : 0,
        .alpha = cfg->alpha, .N = cfg->attn_scale_len,
        .rab = cfg->rab == HSTU_RAB_POS_TIME ? &rab : NULL,
        .out = e->attn, .ld_out = vw,
    };
    ops->attention(&ap);

    ops->ln_mul(T, vw, e->attn, vw, e->uvqk, W, w->ln_out_w, w->ln_out_b, cfg->ln_eps, e->y, vw);
    ops->gemm(T, d, vw, e->y, vw, w->proj_w, d, 1.0f, e->x, d);
    if (w->proj_b)
        ops->bias_act(T, d, e->x, d, w->proj_b, false);
}

static void head_ranking(hstu_engine *e, user_plan *plans, int B, bool logits)
{
    const hstu_model *m = e->model;
    const hstu_config *cfg = &m->cfg;
    int d = cfg->d_model;
    /* Gather candidate rows into head_a [M, d]. */
    int M = 0;
    for (int b = 0; b < B; b++) {
        const user_plan *p = &plans[b];
        size_t first = (size_t)(p->q0 + p->hist - p->c);
        memcpy(e->head_a + (size_t)M * d, e->x + first * d, sizeof(float) * d * p->cand);
        M += p->cand;
    }
    if (M == 0)
        return;
    e->ops->l2norm(M, d, e->head_a, d);
    float *in = e->head_a, *out = e->head_b;
    int in_w = d;
    for (int j = 0; j < m->n_head; j++) {
        int out_w = j < cfg->n_hidden ? cfg->hidden[j] : cfg->n_tasks;
        e->ops->gemm(M, out_w, in_w, in, in_w, m->head_w[j], out_w, 0.0f, out, out_w);
        e->ops->bias_act(M, out_w, out, out_w, m->head_b[j], j < cfg->n_hidden);
        float *t = in;
        in = out;
        out = t;
        in_w = out_w;
    }
    int T = cfg->n_tasks, row = 0;
    for (int b = 0; b < B; b++) {
        const user_plan *p = &plans[b];
        for (int i = 0; i < p->cand * T; i++) {
            float z = in[(size_t)row * T + i];
            p->res->scores[i] = logits ? z : 1.0f / (1.0f + expf(-z));
        }
        row += p->cand;
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void head_retrieval(hstu_engine *e, user_plan *plans, int B)
{
    const hstu_model *m = e->model;
    int d = m->cfg.d_model;
    const int64_t *excl[ENGINE_MAX_USERS];
    int n_excl[ENGINE_MAX_USERS], k[ENGINE_MAX_USERS], n_out[ENGINE_MAX_USERS];
    int64_t *ids[ENGINE_MAX_USERS];
    float *scores[ENGINE_MAX_USERS];
    int off = 0;
    for (int b = 0; b < B; b++) {
        const user_plan *p = &plans[b];
        size_t last = (size_t)(p->q0 + p->hist - 1 - p->c); /* newest row, never cached */
        memcpy(e->users + (size_t)b * d, e->x + last * d, sizeof(float) * d);
        if (p->req->exclude_history) {
            memcpy(e->exclude + off, p->req->items, sizeof(int64_t) * p->hist);
            qsort(e->exclude + off, (size_t)p->hist, sizeof(int64_t), cmp_i64);
            excl[b] = e->exclude + off;
            n_excl[b] = p->hist;
            off += p->hist;
        } else {
            excl[b] = NULL;
            n_excl[b] = 0;
        }
        k[b] = p->req->top_k;
        ids[b] = p->res->topk_ids;
        scores[b] = p->res->topk_scores;
    }
    e->ops->l2norm(B, d, e->users, d);
    topk_params tp = {
        .B = B, .d = d, .users = e->users, .items = m->item_unit, .n_items = m->cfg.item_rows,
        .exclude = excl, .n_exclude = n_excl, .k = k, .ids = ids, .scores = scores, .n_out = n_out,
        .scratch = e->topk_scratch,
    };
    e->ops->topk(&tp);
    for (int b = 0; b < B; b++)
        plans[b].res->n_topk = n_out[b];
}

void forward_run(hstu_engine *e, user_plan *plans, int B, bool logits)
{
    int T = 0;
    for (int b = 0; b < B; b++) {
        user_plan *p = &plans[b];
        p->q0 = T;
        T += p->hist - p->c + p->cand;
        attn_seq *s = &e->seqs[b];
        s->c = p->c;
        s->hist = p->hist;
        s->cand = p->cand;
        s->paged = p->paged;
        s->q0 = p->q0;
        s->pages = p->paged > 0 ? e->page_ptr + p->page0 : NULL;
        s->ts = p->req->timestamps;
        s->ts_q = p->req->query_time;
    }
    HSTU_ASSERT(T <= e->max_tokens);
#pragma omp parallel if (T >= 64) /* one region for the whole batch */
    for (int b = 0; b < B; b++)
        embed(e, &plans[b]);
    for (int l = 0; l < e->model->cfg.n_layers; l++)
        layer_forward(e, plans, B, T, l);
    if (e->model->cfg.family == HSTU_FAMILY_RANKING)
        head_ranking(e, plans, B, logits);
    else
        head_retrieval(e, plans, B);
}
