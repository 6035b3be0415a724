/* host_tier.h - the KV cache's host tier (spec/kvcache.md, tier 2): the
 * bookkeeping of chunks of users' K/V kept in pinned host memory.
 *
 * The memory itself belongs to the backend that copies (the CUDA backend's
 * pinned pool of n_slots chunk slots); this module decides which slot holds
 * what. A chunk is chunk_rows consecutive cacheable rows of one user, every
 * layer's K and V. A user's host entry holds chunks 0..n-1 (rows
 * [0, n * chunk_rows)) and the hash of those rows' keys (kv_hash_keys), so a
 * lookup can check that the host prefix is still the prefix of the request.
 *
 * Offload is a copy from the device pages (which stay on the device) and
 * runs in the background: ht_offload_begin hands out slots for a user's
 * newly completed chunks and marks them pending; ht_offload_done, called
 * when the copy has landed, makes them part of the entry. At most
 * max_pending chunks are pending at once (the bounded offload queue): an
 * offload takes the first of its new chunks that fit, and one that finds the
 * queue full (or no slot to be had) is skipped and counted, never waited for.
 * Slots come from the free list or from evicting least recently used
 * entries that are neither pinned (being onloaded in this batch) nor
 * pending. Eviction never writes back anywhere.
 *
 * A batch: ht_begin; ht_lookup per user (pins a hit until ht_end: the
 * onload reads its slots); ht_end. Offload calls may come at any time
 * outside lookups of the same user. Not thread-safe. Nothing is allocated
 * after ht_create.
 */
#ifndef HSTU_KVCACHE_HOST_TIER_H
#define HSTU_KVCACHE_HOST_TIER_H

#include "hstu.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ht_options {
    int n_slots;      /* chunk slots in the host pool, >= 1 */
    int chunk_rows;   /* rows per chunk, >= 1 (a multiple of the page size) */
    int max_pending;  /* chunks in flight at most (the offload queue), >= 1 */
} ht_options;

typedef struct ht_stats {
    uint64_t hits, misses, rewrites, evictions;
    uint64_t offloads, offload_chunks, offloads_skipped;
    int slots_total, slots_in_use, slots_pending, users;
} ht_stats;

typedef struct host_tier host_tier;

hstu_status ht_create(const ht_options *o, host_tier **out, hstu_error *err);
void ht_destroy(host_tier *ht); /* accepts NULL */
int ht_chunk_rows(const host_tier *ht);

void ht_begin(host_tier *ht);
/* Rows of keys[0..n) held on the host for this user (a multiple of
 * chunk_rows, <= n; 0 on a miss). An entry whose committed rows exceed n or
 * whose hash differs is dropped (a rewrite; it waits for nothing: pending
 * chunks of a dropped entry are forgotten when they land). A hit pins the
 * entry until ht_end and marks it most recently used. */
int ht_lookup(host_tier *ht, int64_t user, const uint64_t *keys, int n);
/* Slots of the user's first `chunks` committed chunks into slots[]; returns
 * how many were written (fewer when the entry holds fewer). */
int ht_slots(const host_tier *ht, int64_t user, int *slots, int chunks);
void ht_end(host_tier *ht);

/* Starts the offload of the user's chunks that keys[0..rows) complete and
 * the host does not hold yet. Writes the chunk index of the first new chunk
 * to *first and their slots to slots[0..max); returns how many (0: nothing
 * new, an offload of this user already pending, the queue full (counted as
 * skipped) or no slot to be had (skipped)). A host entry whose prefix does
 * not match keys is dropped first. */
int ht_offload_begin(host_tier *ht, int64_t user, const uint64_t *keys, int rows, int *first, int *slots, int max);
/* The copies of the user's pending chunks have landed. */
void ht_offload_done(host_tier *ht, int64_t user);

void ht_evict(host_tier *ht, int64_t user); /* not while pending: the caller waits first */
/* Keeps the user's first rows / chunk_rows chunks (keys: the kept rows'
 * keys), frees the rest; not while pending. For benchmarks and tests. */
void ht_trim(host_tier *ht, int64_t user, int rows, const uint64_t *keys);
void ht_clear(host_tier *ht);               /* likewise */
void ht_get_stats(const host_tier *ht, ht_stats *s);
/* Invariants: every slot free or owned by exactly one entry (committed or
 * pending), counts add up, the index and the LRU list agree. */
bool ht_check(const host_tier *ht, char *buf, size_t n);

#endif
