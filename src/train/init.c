/* init.c - training's initial weights (init.h). */
#include "train/init.h"

#include "core/rng.h"
#include "core/status.h"
#include "model/model.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Standard normal by Box-Muller (one draw per call; the twin is dropped so
 * that every value depends only on the stream position). */
static double normal(rng *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static bool ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && strcmp(s + a - b, tail) == 0;
}

void tr_init_weights(hstu_model *m, uint64_t seed)
{
    model_tensor *list = malloc(sizeof *list * MODEL_MAX_TENSORS);
    HSTU_ASSERT(list);
    int n = model_tensors(m, list);
    for (int i = 0; i < n; i++) {
        const model_tensor *t = &list[i];
        rng r = {seed * 0xd1b54a32d192ed03ull + (uint64_t)i * 0x9e3779b97f4a7c15ull + 7};
        float *p = *t->slot;
        int64_t cnt = model_tensor_numel(t);
        double fan_in = (double)t->shape[0], fan_out = t->ndim == 2 ? (double)t->shape[1] : 1.0;
        const char *name = t->name;
        for (int64_t k = 0; k < cnt; k++) {
            double v;
            if (strncmp(name, "emb.", 4) == 0) {
                do /* truncated at two standard deviations, as torch's trunc_normal_ */
                    v = normal(&r);
                while (fabs(v) > 2.0);
                v *= 0.02;
            } else if (strcmp(name, "pos") == 0) {
                v = normal(&r) * sqrt(2.0 / (fan_in + fan_out));
            } else if (ends_with(name, "uvqk.weight")) {
                v = normal(&r) * 0.02;
            } else if (ends_with(name, "rab.pos") || ends_with(name, "rab.time")) {
                v = normal(&r) * 0.02;
            } else if (ends_with(name, "ln_in.weight") || ends_with(name, "ln_out.weight")) {
                v = 1.0;
            } else if (t->ndim == 2) { /* proj.weight, head.j.weight */
                double a = sqrt(6.0 / (fan_in + fan_out));
                v = (2.0 * rng_uniform(&r) - 1.0) * a;
            } else { /* biases */
                v = 0.0;
            }
            p[k] = (float)v;
        }
    }
    free(list);
    model_finish(m);
}
