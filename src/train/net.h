/* net.h - one training step's forward and backward through a whole HSTU
 * model (both families), on a jagged batch of users.
 *
 * A tr_batch is the token view of a batch (built by trainer.c from the
 * dataset, or by a test by hand): per row the table and id it embeds, its
 * position row and timestamp; per user the row range, the history length
 * and the query time; the supervision. tr_net owns every activation buffer,
 * sized once for the largest batch (max_users, max_rows), and a gradient
 * model: an hstu_model of the same config whose tensors are the parameters'
 * gradients, so that both share one layout (model.h's tensor list) and the
 * optimizer sees two flat arrays.
 *
 * The forward follows spec 1.1-1.4 with dropout (training only) on the
 * input embeddings and on u * LN(a) before the output projection, as the
 * HSTU paper's code does (docs/train.md). Heads and losses:
 *   retrieval: every row with a target (the next item) is supervised;
 *     sampled softmax over L2-normalised output and item rows (loss.h).
 *   ranking: every candidate row; L2-normalise, the MLP, per-task BCE
 *     against the label bits (bit b = task b), mean over rows x tasks.
 */
#ifndef HSTU_TRAIN_NET_H
#define HSTU_TRAIN_NET_H

#include "hstu.h"
#include "model/model.h"

#include <stdint.h>

enum { TR_TABLE_ITEM = 0, TR_TABLE_ACTION = 1, TR_TABLE_CONTEXT = 2 /* + j */ };

typedef struct tr_batch {
    int B, T;               /* users, rows */
    int *offsets;           /* [B+1] */
    int *hist;              /* [B] history rows h_b (retrieval: all rows) */
    uint8_t *table;         /* [T] TR_TABLE_* */
    int64_t *ids;           /* [T] row of that table */
    int32_t *pos;           /* [T] position row (spec 1.1 / 1.2) */
    int64_t *ts;            /* [T] timestamps (retrieval with rab; 0 without) */
    int64_t *query_time;    /* [B] ts_next of each user's last row */
    int64_t *target;        /* [T] retrieval: the next item, 0 = unsupervised row */
    int64_t *labels;        /* [T] ranking: a candidate's action bits (history rows: unused) */
} tr_batch;

/* Storage for batches of up to max_users users and max_rows rows. */
hstu_status tr_batch_alloc(tr_batch *b, int max_users, int max_rows, hstu_error *err);
void tr_batch_free(tr_batch *b);

typedef struct tr_net_options {
    float dropout;          /* input and output dropout rate (default 0.2, the recipe's) */
    float temperature;      /* sampled softmax (default 0.05) */
    int n_negatives;        /* sampled softmax (default 128) */
    int64_t n_sample_items; /* negatives are drawn from ids 1..n_sample_items (default item_rows-1) */
    uint64_t seed;          /* dropout masks and negatives: f(seed, step, row) */
} tr_net_options;

void tr_net_options_default(tr_net_options *o);

typedef struct tr_net tr_net;

/* m is borrowed (its weights are the parameters the step differentiates);
 * max_user_rows bounds one user's rows (attention workspace). */
hstu_status tr_net_create(hstu_model *m, const tr_net_options *o, int max_users, int max_rows,
                          int max_user_rows, tr_net **out, hstu_error *err);
void tr_net_destroy(tr_net *n);

/* The gradient model (same layout as the parameters; its item_unit is unused). */
hstu_model *tr_net_grads(tr_net *n);

/* Zeroes the gradients, runs forward and backward on b at step `step` (the
 * dropout and negative streams' counter) and returns the loss (the batch
 * mean). train = false: no dropout (the loss of the eval forward). */
double tr_net_step(tr_net *n, const tr_batch *b, uint64_t step, bool train);

/* For the PyTorch check (tools/check_train_torch.py), after a tr_net_step:
 * the retrieval step's supervised rows [R] and negatives [R, K] (returns R;
 * 0 for ranking), and the dropout mask of a site (layer -1: the input
 * embedding, else the layer's output branch) as values 0 or 1/(1-rate)
 * into out[count]. */
int tr_net_negatives(const tr_net *n, const int **rows, const int64_t **neg);
void tr_net_dropout_mask(const tr_net *n, uint64_t step, int layer, size_t count, float *out);

/* Forward only, no dropout: the last layer's output rows [b->T, d] (for tests
 * against the inference engine). Valid until the next call. */
const float *tr_net_forward(tr_net *n, const tr_batch *b);

#endif
