/* loss.h - the training losses: sampled softmax (retrieval) and per-task
 * binary cross-entropy (ranking), each returning the loss and writing the
 * gradient of its inputs.
 *
 * Sampled softmax, as the HSTU paper's MovieLens recipe (generative-
 * recommenders, SampledSoftmaxLoss with the "local" sampler): for each
 * supervised row r, with q_r the L2-normalised output, e+ the L2-normalised
 * embedding of the true next item and e_1..e_K those of K negatives drawn
 * uniformly from item ids 1..items-1 for that row alone,
 *   logits = [q . e+, q . e_1, ..., q . e_K] / temperature,
 * a negative equal to the positive id gets logit -5e4 (no gradient), and
 *   loss_r = logsumexp(logits) - logits[0],  loss = sum_r loss_r * scale.
 * scale is 1 / (rows in the batch): the batch mean.
 *
 * BCE: loss = scale * sum_i softplus(x_i) - y_i x_i, labels y in {0, 1}.
 */
#ifndef HSTU_TRAIN_LOSS_H
#define HSTU_TRAIN_LOSS_H

#include <stddef.h>
#include <stdint.h>

#define TR_SOFTMAX_MASKED (-5e4f) /* a negative that is the positive (paper code's value) */

/* q[R, d] (unit rows), unit[items, d] the normalised item table, pos_ids[R],
 * neg_ids[R, K]. Writes dq[R, d] and coef[R, 1+K] (d loss / d logit, already
 * divided by the temperature and scaled) and returns the loss. The item
 * table's gradient is then tr_softmax_scatter. */
double tr_softmax_fwd_bwd(int R, int d, int K, const float *q, const float *unit, const int64_t *pos_ids,
                          const int64_t *neg_ids, float temperature, float scale, float *dq, float *coef);
/* dunit[id] += coef * q[r] for the positive and every negative of each row;
 * rows in order per column (deterministic for any thread count). */
void tr_softmax_scatter(int R, int d, int K, const float *q, const int64_t *pos_ids, const int64_t *neg_ids,
                        const float *coef, float *dunit);

/* labels[n] (0/1 as float). Writes dx[n] = scale * (sigmoid(x) - y) and
 * returns the loss. */
double tr_bce_fwd_bwd(size_t n, const float *x, const float *labels, float scale, float *dx);

#endif
