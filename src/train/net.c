/* net.c - the whole model's training forward and backward (net.h).
 *
 * Buffers are sized once in tr_net_create for the largest batch and reused:
 * nothing is allocated per step. Per layer the forward keeps what the
 * backward reads: the layer input x, LN_in statistics and output xn, the
 * uvqk pre-activation z and activation act, the attention output a, the
 * LN_out statistics and output lno (= LN(a) * w + b). The attention scores
 * and the projection input y = u * lno (after dropout) are recomputed.
 *
 * Backward of one layer, g = dL/dx_{l+1} on entry and dL/dx_l on exit
 * (the residual passes g through unchanged and the branch adds to it):
 *   y  = drop(u * lno)        recomputed
 *   dy = drop(g @ Wp^T)       dWp += y^T g, dbp += colsum g
 *   du = dy * lno, dlno = dy * u -> LN_out backward -> da
 *   attention backward -> dq, dk, dv (and the bias gradients)
 *   dz = SiLU'(z) * d(act)    -> dxn = dz @ W^T, dW += xn^T dz, db += colsum dz
 *   g += LN_in backward(dxn)
 */
#include "train/net.h"

#include "core/rng.h"
#include "core/status.h"
#include "train/loss.h"
#include "train/ops.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct layer_acts {
    float *x;          /* [T, d] layer input */
    float *ln_mean, *ln_rstd; /* [T] */
    float *xn;         /* [T, d] */
    float *z, *act;    /* [T, W] */
    float *a;          /* [T, HDv] */
    float *lo_mean, *lo_rstd; /* [T] */
    float *lno;        /* [T, HDv] */
} layer_acts;

struct tr_net {
    hstu_model *m;
    hstu_model *g;              /* gradients, same layout */
    tr_net_options o;
    int max_users, max_rows, max_user_rows;
    int d, W, HDv, L;
    layer_acts *acts;           /* [L] */
    float *x_out;               /* [T, d] last layer's output */
    /* backward scratch */
    float *gx;                  /* [T, d] */
    float *dact;                /* [T, W] */
    float *da, *dy, *ys;        /* [T, HDv] */
    float *dxn;                 /* [T, d] */
    /* embedding */
    const float **src;          /* [T] */
    float **dsrc;               /* [T] */
    /* attention */
    uint16_t *buckets;          /* sum of n_b^2 */
    size_t *bucket_off;         /* [max_users] */
    size_t bucket_cap;
    float *attn_work;
    size_t attn_work_floats;
    int threads;
    /* heads */
    int *sup_rows;              /* [T] supervised rows */
    int n_sup;                  /* rows of the last step's retrieval loss */
    float *q, *qnorm, *dq;      /* [T, d], [T], [T, d] */
    int64_t *pos_ids, *neg_ids; /* [T], [T, K] */
    float *coef;                /* [T, K+1] */
    float *unit, *unit_norm, *dunit; /* [items, d], [items], [items, d] (retrieval) */
    float *mlp[HSTU_MAX_HIDDEN + 2];  /* ranking: activations of each MLP layer [T, width] */
    float *dmlp[2];             /* [T, max width] ping-pong */
    float *labels;              /* [T, tasks] */
    int max_width;
    void *block;                /* one allocation for every buffer above */
};

void tr_net_options_default(tr_net_options *o)
{
    o->dropout = 0.2f;
    o->temperature = 0.05f;
    o->n_negatives = 128;
    o->n_sample_items = 0;
    o->seed = 1;
}

hstu_status tr_batch_alloc(tr_batch *b, int max_users, int max_rows, hstu_error *err)
{
    memset(b, 0, sizeof *b);
    size_t T = (size_t)(max_rows > 0 ? max_rows : 1), B = (size_t)(max_users > 0 ? max_users : 1);
    b->offsets = calloc(B + 1, sizeof *b->offsets);
    b->hist = calloc(B, sizeof *b->hist);
    b->query_time = calloc(B, sizeof *b->query_time);
    b->table = calloc(T, sizeof *b->table);
    b->ids = calloc(T, sizeof *b->ids);
    b->pos = calloc(T, sizeof *b->pos);
    b->ts = calloc(T, sizeof *b->ts);
    b->target = calloc(T, sizeof *b->target);
    b->labels = calloc(T, sizeof *b->labels);
    if (!b->offsets || !b->hist || !b->query_time || !b->table || !b->ids || !b->pos || !b->ts ||
        !b->target || !b->labels) {
        tr_batch_free(b);
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory for a batch of %d rows", max_rows);
    }
    return HSTU_OK;
}

void tr_batch_free(tr_batch *b)
{
    free(b->offsets);
    free(b->hist);
    free(b->query_time);
    free(b->table);
    free(b->ids);
    free(b->pos);
    free(b->ts);
    free(b->target);
    free(b->labels);
    memset(b, 0, sizeof *b);
}

/* Carves n floats (64-byte aligned) out of a block; with base NULL it only counts. */
static void *carve(char *base, size_t *off, size_t bytes)
{
    size_t at = (*off + 63) & ~(size_t)63;
    *off = at + bytes;
    return base ? base + at : NULL;
}

static size_t layout(tr_net *n, char *base)
{
    const hstu_config *c = &n->m->cfg;
    size_t T = (size_t)n->max_rows, d = n->d, W = n->W, HDv = n->HDv, off = 0;
    size_t K = (size_t)n->o.n_negatives, U = (size_t)n->max_users;
#define CARVE(ptr, count) ((ptr) = carve(base, &off, sizeof *(ptr) * (count)))
    for (int l = 0; l < n->L; l++) {
        layer_acts *a = &n->acts[l];
        CARVE(a->x, T * d);
        CARVE(a->ln_mean, T);
        CARVE(a->ln_rstd, T);
        CARVE(a->xn, T * d);
        CARVE(a->z, T * W);
        CARVE(a->act, T * W);
        CARVE(a->a, T * HDv);
        CARVE(a->lo_mean, T);
        CARVE(a->lo_rstd, T);
        CARVE(a->lno, T * HDv);
    }
    CARVE(n->x_out, T * d);
    CARVE(n->gx, T * d);
    CARVE(n->dact, T * W);
    CARVE(n->da, T * HDv);
    CARVE(n->dy, T * HDv);
    CARVE(n->ys, T * HDv);
    CARVE(n->dxn, T * d);
    CARVE(n->src, T);
    CARVE(n->dsrc, T);
    CARVE(n->bucket_off, U);
    if (c->rab == HSTU_RAB_POS_TIME)
        CARVE(n->buckets, n->bucket_cap);
    CARVE(n->attn_work, n->attn_work_floats);
    CARVE(n->sup_rows, T);
    CARVE(n->q, T * d);
    CARVE(n->qnorm, T);
    CARVE(n->dq, T * d);
    if (c->family == HSTU_FAMILY_RETRIEVAL) {
        size_t items = (size_t)c->item_rows;
        CARVE(n->pos_ids, T);
        CARVE(n->neg_ids, T * K);
        CARVE(n->coef, T * (K + 1));
        CARVE(n->unit, items * d);
        CARVE(n->unit_norm, items);
        CARVE(n->dunit, items * d);
    } else {
        int widths[HSTU_MAX_HIDDEN + 2];
        int nw = 0;
        for (int j = 0; j < c->n_hidden; j++)
            widths[nw++] = c->hidden[j];
        widths[nw++] = c->n_tasks;
        for (int j = 0; j < nw; j++)
            CARVE(n->mlp[j], T * widths[j]);
        CARVE(n->dmlp[0], T * n->max_width);
        CARVE(n->dmlp[1], T * n->max_width);
        CARVE(n->labels, T * c->n_tasks);
    }
#undef CARVE
    return off;
}

hstu_status tr_net_create(hstu_model *m, const tr_net_options *o, int max_users, int max_rows,
                          int max_user_rows, tr_net **out, hstu_error *err)
{
    const hstu_config *c = &m->cfg;
    tr_net *n = calloc(1, sizeof *n);
    if (!n)
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    n->m = m;
    n->o = *o;
    if (n->o.n_sample_items <= 0 || n->o.n_sample_items > c->item_rows - 1)
        n->o.n_sample_items = c->item_rows - 1;
    n->max_users = max_users;
    n->max_rows = max_rows;
    n->max_user_rows = max_user_rows;
    n->d = c->d_model;
    n->W = hstu_config_uvqk_width(c);
    n->HDv = c->n_heads * c->d_v;
    n->L = c->n_layers;
    n->threads = omp_get_max_threads();
    n->max_width = c->d_model;
    for (int j = 0; j < c->n_hidden; j++)
        if (c->hidden[j] > n->max_width)
            n->max_width = c->hidden[j];
    if (c->n_tasks > n->max_width)
        n->max_width = c->n_tasks;
    /* Buckets: at most sum n_b^2 <= max_rows * max_user_rows. */
    n->bucket_cap = (size_t)max_rows * max_user_rows;
    tr_attn ap = {.B = max_users, .max_n = max_user_rows, .N = c->attn_scale_len,
                  .pos_w = c->rab == HSTU_RAB_POS_TIME ? (const float *)1 : NULL,
                  .n_buckets = c->rab_buckets + 1};
    n->attn_work_floats = tr_attn_workspace_floats(&ap, n->threads);
    hstu_status st = HSTU_OK;
    n->acts = calloc((size_t)n->L, sizeof *n->acts);
    n->g = calloc(1, sizeof *n->g);
    if (!n->acts || !n->g) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
        goto fail;
    }
    n->g->cfg = *c;
    if ((st = model_alloc(n->g, err)) != HSTU_OK)
        goto fail;
    size_t bytes = layout(n, NULL);
    n->block = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!n->block) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory: training buffers need %.1f MiB for %d rows",
                       bytes / 1048576.0, max_rows);
        goto fail;
    }
    layout(n, n->block);
    *out = n;
    return HSTU_OK;
fail:
    tr_net_destroy(n);
    return st;
}

void tr_net_destroy(tr_net *n)
{
    if (!n)
        return;
    hstu_model_destroy(n->g);
    free(n->acts);
    free(n->block);
    free(n);
}

hstu_model *tr_net_grads(tr_net *n) { return n->g; }

static const float *table_row(const hstu_model *m, int table, int64_t id)
{
    int d = m->cfg.d_model;
    if (table == TR_TABLE_ITEM)
        return m->item + (size_t)id * d;
    if (table == TR_TABLE_ACTION)
        return m->action + (size_t)id * d;
    return m->context[table - TR_TABLE_CONTEXT] + (size_t)id * d;
}

static void attn_params(tr_net *n, const tr_batch *b, int l, tr_attn *p)
{
    const hstu_config *c = &n->m->cfg;
    const layer_weights *w = &n->m->layers[l];
    int max_n = 0;
    for (int u = 0; u < b->B; u++)
        if (b->offsets[u + 1] - b->offsets[u] > max_n)
            max_n = b->offsets[u + 1] - b->offsets[u];
    *p = (tr_attn){
        .B = b->B, .offsets = b->offsets, .hist = b->hist, .H = c->n_heads, .Dqk = c->d_qk,
        .Dv = c->d_v, .alpha = c->alpha, .N = c->attn_scale_len,
        .pos_w = c->rab == HSTU_RAB_POS_TIME ? w->rab_pos : NULL,
        .ts_w = c->rab == HSTU_RAB_POS_TIME ? w->rab_time : NULL,
        .n_buckets = c->rab_buckets + 1, .buckets = n->buckets, .bucket_off = n->bucket_off,
        .max_n = max_n,
    };
}

/* Embedding, buckets, every layer; leaves the output in n->x_out. */
static void forward(tr_net *n, const tr_batch *b, uint64_t step, bool train)
{
    const hstu_model *m = n->m;
    const hstu_config *c = &m->cfg;
    int T = b->T, d = n->d, W = n->W, HDv = n->HDv;
    HSTU_ASSERT(b->B <= n->max_users && T <= n->max_rows);
    for (int r = 0; r < T; r++)
        n->src[r] = table_row(m, b->table[r], b->ids[r]);
    float *x0 = n->L > 0 ? n->acts[0].x : n->x_out;
    tr_embed_fwd(T, d, n->src, sqrtf((float)d), m->pos, b->pos, x0);
    if (train)
        tr_dropout((size_t)T * d, n->o.dropout, tr_dropout_key(n->o.seed, step, -1, 0), x0);
    if (c->rab == HSTU_RAB_POS_TIME) {
        size_t off = 0;
        for (int u = 0; u < b->B; u++) {
            int r0 = b->offsets[u], nu = b->offsets[u + 1] - r0;
            HSTU_ASSERT(nu <= n->max_user_rows);
            n->bucket_off[u] = off;
            tr_attn_buckets(nu, b->ts + r0, b->query_time[u], c->rab_buckets, n->buckets + off);
            off += (size_t)nu * nu;
        }
    }
    int silu_cols = c->silu_uvqk == HSTU_SILU_ALL ? W : HDv;
    for (int l = 0; l < n->L; l++) {
        const layer_weights *w = &m->layers[l];
        layer_acts *a = &n->acts[l];
        float *x_next = l + 1 < n->L ? n->acts[l + 1].x : n->x_out;
        tr_layernorm_fwd(T, d, a->x, d, w->ln_in_w, w->ln_in_b, c->ln_eps, a->xn, d, a->ln_mean, a->ln_rstd);
        tr_linear_fwd(T, d, W, a->xn, d, w->uvqk_w, w->uvqk_b, 0.0f, a->z, W);
        tr_silu_fwd(T, W, silu_cols, a->z, a->act);
        tr_attn ap;
        attn_params(n, b, l, &ap);
        tr_attn_fwd(&ap, a->act, W, a->a, HDv, n->attn_work);
        tr_layernorm_fwd(T, HDv, a->a, HDv, w->ln_out_w, w->ln_out_b, c->ln_eps, a->lno, HDv, a->lo_mean,
                         a->lo_rstd);
        /* y = u * lno (dropped), into scratch */
#pragma omp parallel for schedule(static) if (T >= 64)
        for (int r = 0; r < T; r++) {
            const float *u = a->act + (size_t)r * W, *lo = a->lno + (size_t)r * HDv;
            float *y = n->ys + (size_t)r * HDv;
            for (int i = 0; i < HDv; i++)
                y[i] = u[i] * lo[i];
        }
        if (train)
            tr_dropout((size_t)T * HDv, n->o.dropout, tr_dropout_key(n->o.seed, step, l, 1), n->ys);
        memcpy(x_next, a->x, sizeof(float) * (size_t)T * d);
        tr_linear_fwd(T, HDv, d, n->ys, HDv, w->proj_w, w->proj_b, 1.0f, x_next, d);
    }
}

static void layer_backward(tr_net *n, const tr_batch *b, uint64_t step, bool train, int l)
{
    const hstu_model *m = n->m;
    const hstu_config *c = &m->cfg;
    const layer_weights *w = &m->layers[l];
    layer_weights *gw = &n->g->layers[l];
    layer_acts *a = &n->acts[l];
    int T = b->T, d = n->d, W = n->W, HDv = n->HDv;
    uint64_t key = tr_dropout_key(n->o.seed, step, l, 1);
#pragma omp parallel for schedule(static) if (T >= 64)
    for (int r = 0; r < T; r++) {
        const float *u = a->act + (size_t)r * W, *lo = a->lno + (size_t)r * HDv;
        float *y = n->ys + (size_t)r * HDv;
        for (int i = 0; i < HDv; i++)
            y[i] = u[i] * lo[i];
    }
    if (train)
        tr_dropout((size_t)T * HDv, n->o.dropout, key, n->ys);
    tr_linear_bwd(T, HDv, d, n->ys, HDv, w->proj_w, n->gx, d, n->dy, HDv, false, gw->proj_w, gw->proj_b);
    if (train)
        tr_dropout((size_t)T * HDv, n->o.dropout, key, n->dy);
    /* du into dact's u columns; dlno = dy * u into ys (free now) */
#pragma omp parallel for schedule(static) if (T >= 64)
    for (int r = 0; r < T; r++) {
        const float *u = a->act + (size_t)r * W, *lo = a->lno + (size_t)r * HDv, *g = n->dy + (size_t)r * HDv;
        float *du = n->dact + (size_t)r * W, *dl = n->ys + (size_t)r * HDv;
        for (int i = 0; i < HDv; i++) {
            du[i] = g[i] * lo[i];
            dl[i] = g[i] * u[i];
        }
    }
    tr_layernorm_bwd(T, HDv, a->a, HDv, w->ln_out_w, a->lo_mean, a->lo_rstd, n->ys, HDv, n->da, HDv, false,
                     gw->ln_out_w, gw->ln_out_b);
    tr_attn ap;
    attn_params(n, b, l, &ap);
    tr_attn_bwd(&ap, a->act, W, n->da, HDv, n->dact, gw->rab_pos, gw->rab_time, n->attn_work);
    int silu_cols = c->silu_uvqk == HSTU_SILU_ALL ? W : HDv;
    tr_silu_bwd(T, W, silu_cols, a->z, n->dact, n->dact);
    tr_linear_bwd(T, d, W, a->xn, d, w->uvqk_w, n->dact, W, n->dxn, d, false, gw->uvqk_w, gw->uvqk_b);
    tr_layernorm_bwd(T, d, a->x, d, w->ln_in_w, a->ln_mean, a->ln_rstd, n->dxn, d, n->gx, d, true,
                     gw->ln_in_w, gw->ln_in_b);
}

/* Retrieval head: sampled softmax on every row with a target. Writes gx. */
static double head_retrieval(tr_net *n, const tr_batch *b, uint64_t step)
{
    const hstu_model *m = n->m;
    int d = n->d, K = n->o.n_negatives, R = 0;
    int64_t items = m->cfg.item_rows;
    for (int r = 0; r < b->T; r++)
        if (b->target[r] > 0)
            n->sup_rows[R++] = r;
    n->n_sup = R;
    memset(n->gx, 0, sizeof(float) * (size_t)b->T * d);
    if (R == 0)
        return 0.0;
    tr_l2norm_fwd((int)items, d, m->item, d, n->unit, d, n->unit_norm);
    uint64_t key = rng_mix64(rng_mix64(n->o.seed ^ 0x5a3c0ffee0ddf00dull) + step);
#pragma omp parallel for schedule(static) if (R >= 64)
    for (int i = 0; i < R; i++) {
        int r = n->sup_rows[i];
        const float *x = n->x_out + (size_t)r * d;
        float *q = n->q + (size_t)i * d;
        for (int k = 0; k < d; k++)
            q[k] = x[k];
        n->pos_ids[i] = b->target[r];
        /* negatives of row i: a stream keyed by (seed, step, i) */
        uint64_t s = rng_mix64(key + (uint64_t)i * 0x9e3779b97f4a7c15ull);
        int64_t *neg = n->neg_ids + (size_t)i * K;
        for (int k = 0; k < K; k++) {
            s += 0x9e3779b97f4a7c15ull;
            neg[k] = 1 + (int64_t)(rng_mix64(s) % (uint64_t)n->o.n_sample_items);
        }
    }
    tr_l2norm_fwd(R, d, n->q, d, n->q, d, n->qnorm);
    double loss = tr_softmax_fwd_bwd(R, d, K, n->q, n->unit, n->pos_ids, n->neg_ids, n->o.temperature,
                                     1.0f / (float)R, n->dq, n->coef);
    memset(n->dunit, 0, sizeof(float) * (size_t)items * d);
    tr_softmax_scatter(R, d, K, n->q, n->pos_ids, n->neg_ids, n->coef, n->dunit);
    tr_l2norm_bwd((int)items, d, n->unit, d, n->unit_norm, n->dunit, d, n->g->item, d, true);
    /* dq -> through the output's L2 norm, into gx rows (dq reused for dx) */
    tr_l2norm_bwd(R, d, n->q, d, n->qnorm, n->dq, d, n->dq, d, false);
    for (int i = 0; i < R; i++)
        memcpy(n->gx + (size_t)n->sup_rows[i] * d, n->dq + (size_t)i * d, sizeof(float) * d);
    return loss;
}

/* Ranking head: L2 norm, MLP, per-task BCE on every candidate row. */
static double head_ranking(tr_net *n, const tr_batch *b)
{
    const hstu_model *m = n->m;
    const hstu_config *c = &m->cfg;
    int d = n->d, R = 0, tasks = c->n_tasks;
    for (int u = 0; u < b->B; u++)
        for (int r = b->offsets[u] + b->hist[u]; r < b->offsets[u + 1]; r++)
            n->sup_rows[R++] = r;
    memset(n->gx, 0, sizeof(float) * (size_t)b->T * d);
    if (R == 0)
        return 0.0;
    for (int i = 0; i < R; i++) {
        memcpy(n->q + (size_t)i * d, n->x_out + (size_t)n->sup_rows[i] * d, sizeof(float) * d);
        int64_t bits = b->labels[n->sup_rows[i]];
        for (int t = 0; t < tasks; t++)
            n->labels[(size_t)i * tasks + t] = (float)((bits >> t) & 1);
    }
    tr_l2norm_fwd(R, d, n->q, d, n->q, d, n->qnorm);
    int nl = m->n_head, in = d;
    const float *x = n->q;
    for (int j = 0; j < nl; j++) {
        int out = j < c->n_hidden ? c->hidden[j] : tasks;
        tr_linear_fwd(R, in, out, x, in, m->head_w[j], m->head_b[j], 0.0f, n->mlp[j], out);
        if (j + 1 < nl)
            tr_relu_fwd((size_t)R * out, n->mlp[j]);
        x = n->mlp[j];
        in = out;
    }
    float *g = n->dmlp[0];
    double loss = tr_bce_fwd_bwd((size_t)R * tasks, n->mlp[nl - 1], n->labels, 1.0f / ((float)R * tasks), g);
    for (int j = nl - 1; j >= 0; j--) {
        int out = j < c->n_hidden ? c->hidden[j] : tasks;
        int inw = j > 0 ? c->hidden[j - 1] : d;
        const float *xin = j > 0 ? n->mlp[j - 1] : n->q;
        float *gin = j > 0 ? n->dmlp[(nl - j) & 1] : n->dq;
        tr_linear_bwd(R, inw, out, xin, inw, m->head_w[j], g, out, gin, inw, false, n->g->head_w[j],
                      n->g->head_b[j]);
        if (j > 0)
            tr_relu_bwd((size_t)R * inw, n->mlp[j - 1], gin);
        g = gin;
    }
    tr_l2norm_bwd(R, d, n->q, d, n->qnorm, n->dq, d, n->dq, d, false);
    for (int i = 0; i < R; i++)
        memcpy(n->gx + (size_t)n->sup_rows[i] * d, n->dq + (size_t)i * d, sizeof(float) * d);
    return loss;
}

double tr_net_step(tr_net *n, const tr_batch *b, uint64_t step, bool train)
{
    hstu_model *gm = n->g;
    memset(gm->arena, 0, sizeof(float) * hstu_model_param_count(gm));
    forward(n, b, step, train);
    double loss = n->m->cfg.family == HSTU_FAMILY_RETRIEVAL ? head_retrieval(n, b, step) : head_ranking(n, b);
    for (int l = n->L - 1; l >= 0; l--)
        layer_backward(n, b, step, train, l);
    int T = b->T, d = n->d;
    if (train)
        tr_dropout((size_t)T * d, n->o.dropout, tr_dropout_key(n->o.seed, step, -1, 0), n->gx);
    for (int r = 0; r < T; r++) {
        int t = b->table[r];
        float *base = t == TR_TABLE_ITEM ? gm->item : t == TR_TABLE_ACTION ? gm->action
                                                                          : gm->context[t - TR_TABLE_CONTEXT];
        n->dsrc[r] = base + (size_t)b->ids[r] * d;
    }
    tr_embed_bwd(T, d, n->dsrc, sqrtf((float)d), gm->pos, b->pos, n->gx);
    return loss;
}

const float *tr_net_forward(tr_net *n, const tr_batch *b)
{
    forward(n, b, 0, false);
    return n->x_out;
}

int tr_net_negatives(const tr_net *n, const int **rows, const int64_t **neg)
{
    if (n->m->cfg.family != HSTU_FAMILY_RETRIEVAL)
        return 0;
    *rows = n->sup_rows;
    *neg = n->neg_ids;
    return n->n_sup;
}

void tr_net_dropout_mask(const tr_net *n, uint64_t step, int layer, size_t count, float *out)
{
    for (size_t i = 0; i < count; i++)
        out[i] = 1.0f;
    tr_dropout(count, n->o.dropout, tr_dropout_key(n->o.seed, step, layer, layer < 0 ? 0 : 1), out);
}
