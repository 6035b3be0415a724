/* adamw.h - the AdamW optimizer over one flat parameter array.
 *
 * The parameters and gradients of a model are two arrays of the same layout
 * (net.h), so the optimizer is one loop. The update is PyTorch's AdamW
 * (decoupled weight decay, bias corrections folded into the step size):
 *   p -= lr * wd * p
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * Element-wise, so the result is the same for any thread count.
 */
#ifndef HSTU_TRAIN_ADAMW_H
#define HSTU_TRAIN_ADAMW_H

#include <stddef.h>
#include <stdint.h>

typedef struct adamw_options {
    float lr;            /* default 1e-3 */
    float beta1, beta2;  /* default 0.9, 0.98 (the HSTU recipe) */
    float eps;           /* default 1e-8 */
    float weight_decay;  /* default 0 (the HSTU MovieLens recipe) */
} adamw_options;

void adamw_options_default(adamw_options *o);

/* One step: t is the 1-based step count after this update. m, v [n] are the
 * moment estimates (zero at t = 1). */
void adamw_step(const adamw_options *o, int64_t t, size_t n, float *p, const float *g, float *m, float *v);

#endif
