/* synthetic.h - KuaiRand-like data with a planted, learnable signal.
 *
 * Writes a log in the exact log_standard_*.csv column layout and a user
 * features file in the user_features_*.csv layout, so it goes through the
 * same parser as real KuaiRand (kuairand.c). Users 0..U-1, items 0..I-1
 * drawn with a Zipf-like popularity. For event (task) b of user u on item i,
 * following the user's previous impression with action a_prev:
 *
 *   logit_b = bias_b + eff_b[f_(b mod 5)(u)] + 1.5 <p_u, z_i> + 0.8 z_i[b mod L]
 *             + 0.7 bit_b(a_prev)
 *   P(event b) = sigmoid(logit_b)
 *
 * f_0..f_4 are the user's five range/degree features (contextual tables),
 * eff_b a fixed random effect per category, p_u and z_i latent vectors of
 * width L drawn N(0, 1/L) and N(0, 1): every term is visible to an HSTU
 * ranking model (context ids, item ids, the previous action token). The
 * oracle AUC (the true probabilities scored on the evaluation split's
 * candidates) is returned: a trained model should approach it, a random one
 * sits near 0.5. Deterministic for a seed.
 */
#ifndef HSTU_DATA_SYNTHETIC_H
#define HSTU_DATA_SYNTHETIC_H

#include "data/builder.h"
#include "data/prep.h"
#include "hstu.h"

#include <stdint.h>

typedef struct synth_options {
    int64_t users;         /* default 1000 */
    int64_t items;         /* default 5000 */
    int min_events;        /* per user, default 150 */
    int max_events;        /* per user, default 400 */
    int latent;            /* L, default 4 */
    uint64_t seed;         /* default 1 */
    builder_options split; /* the split the oracle AUC is computed on */
    bool progress;
} synth_options;

void synth_options_default(synth_options *o);

typedef struct synth_truth {
    int64_t events;
    int64_t eval_candidates;
    double base_rate[KUAIRAND_TASKS];   /* share of impressions with the event */
    double oracle_auc[KUAIRAND_TASKS];  /* NaN when undefined */
} synth_truth;

/* Writes the two CSV files (atomically: PATH.tmp + rename). */
hstu_status synth_write(const synth_options *o, const char *log_path, const char *users_path,
                        synth_truth *truth, hstu_error *err);

#endif
