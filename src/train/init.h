/* init.h - the starting weights of a model trained from scratch.
 *
 * hstu_model_create_random draws weights that keep inference activations
 * O(1) for tests; training starts from the HSTU paper code's initialisation
 * instead (generative-recommenders, MovieLens): embedding tables truncated
 * normal std 0.02, uvqk normal std 0.02, output projection and ranking MLP
 * Xavier-uniform, position table Xavier-normal, relative bias normal std
 * 0.02, LayerNorm weights 1 and every bias 0. Deterministic for a seed on any
 * machine (one splitmix64 stream per tensor, keyed by its index in the
 * tensor list). */
#ifndef HSTU_TRAIN_INIT_H
#define HSTU_TRAIN_INIT_H

#include "hstu.h"

#include <stdint.h>

/* Overwrites every parameter of m; refreshes the derived item_unit. */
void tr_init_weights(hstu_model *m, uint64_t seed);

#endif
