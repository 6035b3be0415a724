/* rng.h - a small seeded generator (splitmix64) for weights and tests.
 *
 * Deterministic across machines: the same seed gives the same stream, so a
 * model made by `hstu init --seed S` is the same everywhere.
 */
#ifndef HSTU_CORE_RNG_H
#define HSTU_CORE_RNG_H

#include <stdint.h>

typedef struct rng { uint64_t s; } rng;

/* The splitmix64 finaliser: a bijection on 64 bits with full avalanche
 * (also the hash behind the KV cache's keys). */
static inline uint64_t rng_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rng_next(rng *r) { return rng_mix64(r->s += 0x9e3779b97f4a7c15ull); }

/* Uniform in [0, 1). */
static inline double rng_uniform(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

/* Uniform in [lo, hi). */
static inline float rng_range(rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)rng_uniform(r);
}

/* Uniform integer in [0, n), n > 0. */
static inline int64_t rng_below(rng *r, int64_t n) { return (int64_t)(rng_next(r) % (uint64_t)n); }

#endif
