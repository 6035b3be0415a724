/* model.h - the weights of one HSTU model in host memory (fp32).
 *
 * All tensors live in one arena, laid out by the tensor list that
 * model_tensors() derives from the config: the single source of truth for
 * names and shapes, used by load, save and random init alike.
 */
#ifndef HSTU_MODEL_MODEL_H
#define HSTU_MODEL_MODEL_H

#include "hstu.h"

#include <stddef.h>
#include <stdint.h>

typedef struct layer_weights {
    float *ln_in_w, *ln_in_b;   /* [d] (NULL without ln_affine) */
    float *uvqk_w;              /* [d, W], W = 2*H*Dv + 2*H*Dqk, order u|v|q|k */
    float *uvqk_b;              /* [W] (NULL without uvqk_bias) */
    float *ln_out_w, *ln_out_b; /* [H*Dv] (NULL without ln_affine) */
    float *proj_w;              /* [H*Dv, d] */
    float *proj_b;              /* [d] (NULL without proj_bias) */
    float *rab_pos;             /* [2N-1] (NULL without rab) */
    float *rab_time;            /* [rab_buckets+1] (NULL without rab) */
} layer_weights;

struct hstu_model {
    hstu_config cfg;
    float *item;                           /* [item_rows, d] */
    float *action;                         /* [action_rows, d] (ranking) */
    float *context[HSTU_MAX_CONTEXT];      /* [context_rows[j], d] */
    float *pos;                            /* [max_positions, d] */
    layer_weights *layers;                 /* [L] */
    int n_head;                            /* head linear layers = n_hidden + 1 */
    float *head_w[HSTU_MAX_HIDDEN + 1];    /* [in_j, out_j] */
    float *head_b[HSTU_MAX_HIDDEN + 1];    /* [out_j] */
    float *item_unit;                      /* [item_rows, d] L2-normalised rows (retrieval) */
    float *arena;
    size_t arena_floats;
};

#define MODEL_MAX_TENSORS 4096
#define MODEL_NAME_MAX 64

typedef enum tensor_init { INIT_EMBED, INIT_POS, INIT_LINEAR, INIT_BIAS, INIT_LN_W, INIT_RAB } tensor_init;

typedef struct model_tensor {
    char name[MODEL_NAME_MAX];
    float **slot;      /* where the tensor's pointer goes in the model */
    int ndim;
    int64_t shape[2];
    tensor_init init;  /* how hstu_model_create_random fills it */
} model_tensor;

/* Fills list[] (capacity MODEL_MAX_TENSORS) for m->cfg; returns the count. */
int model_tensors(hstu_model *m, model_tensor *list);
int64_t model_tensor_numel(const model_tensor *t);
/* Allocates m->arena for m->cfg and points every slot into it. */
hstu_status model_alloc(hstu_model *m, hstu_error *err);
/* Computes derived tensors (item_unit) after weights are in place. */
void model_finish(hstu_model *m);

#endif
