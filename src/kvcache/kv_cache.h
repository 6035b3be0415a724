/* kv_cache.h - the per-user paged KV cache (spec/kvcache.md), device tier.
 *
 * A pool of fixed-size pages of P tokens, sized once from a byte budget.
 * Page layout (floats): [layer][K | V][P rows][width], K rows k_width wide
 * (H*Dqk), V rows v_width wide (H*Dv). For the CPU backend the "device"
 * pages live in host memory; the CUDA backend keeps the same bookkeeping
 * over a device pool.
 *
 * Each user entry owns a list of pages (row order), the cached length in rows,
 * and a hash of the cached rows' keys (one uint64 per row, made by the caller
 * from whatever the row's K/V depend on). A lookup whose keys do not start
 * with the cached prefix drops the entry (a rewritten history is recomputed).
 *
 * A batch runs as: kv_begin; per user kv_lookup (pins the entry) and
 * kv_reserve (pages for the rows to be appended, evicting least recently used
 * users not pinned); the forward writes rows through kv_page_ptr; kv_commit;
 * kv_end (unpins). Eviction never touches a pinned entry; if no page can be
 * found, kv_reserve fails and changes nothing (the caller computes that user
 * uncached). Nothing is allocated after kv_create. Not thread-safe: the
 * engine serialises calls. Design notes: docs/kvcache.md.
 */
#ifndef HSTU_KVCACHE_KV_CACHE_H
#define HSTU_KVCACHE_KV_CACHE_H

#include "hstu.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kv_options {
    int n_layers;
    int page_size;       /* P, >= 1 */
    int k_width;         /* floats per K row (H*Dqk) */
    int v_width;         /* floats per V row (H*Dv) */
    size_t budget_bytes; /* pool = floor(budget / page_bytes) pages, >= 1, where
                          * page_bytes = n_layers * P * (k_width + v_width) * elem_bytes */
    int elem_bytes;      /* bytes per element: 4 (fp32, also when 0) or 2 (bf16) */
    bool external_pool;  /* bookkeeping only: the pages live elsewhere (the GPU
                          * pool of the CUDA backend); kv_page_ptr must not be called */
} kv_options;

typedef struct kv_stats {
    uint64_t hits, misses, rewrites, evictions, reserve_failures;
    int pages_total, pages_in_use, users;
} kv_stats;

typedef struct kv_cache kv_cache;

/* Allocates the pool and all bookkeeping, once. Errors: HSTU_ERR_ARG naming
 * the bad field (n_layers, page_size, widths < 1; a budget that holds no page
 * or more pages than page ids allow), HSTU_ERR_NOMEM; *out is NULL then. */
hstu_status kv_create(const kv_options *o, kv_cache **out, hstu_error *err);
/* Accepts NULL. */
void kv_destroy(kv_cache *kv);

size_t kv_page_bytes(const kv_cache *kv);
/* Elements per page: n_layers * P * (k_width + v_width). */
size_t kv_page_elems(const kv_cache *kv);
int kv_page_size(const kv_cache *kv);
/* Base of page p, 0 <= p < pages_total (floats; consecutive pages are
 * page_bytes apart, the pool is 64-byte aligned). Row r of a user lives in
 * its page r / P at slot r % P:
 *   K of layer l: page + kv_layer_k(l) + (r % P) * k_width   [k_width floats]
 *   V of layer l: page + kv_layer_v(l) + (r % P) * v_width   [v_width floats]
 * Page memory is not cleared: only rows the caller wrote are meaningful. */
float *kv_page_ptr(kv_cache *kv, int page);
/* Float offsets inside a page of layer l's K block and V block:
 * kv_layer_k(l) = l * P * (k_width + v_width), kv_layer_v(l) = kv_layer_k(l) + P * k_width. */
size_t kv_layer_k(const kv_cache *kv, int layer);
size_t kv_layer_v(const kv_cache *kv, int layer);

/* Hash of keys[0..n): the value kv_commit stores and kv_lookup compares.
 * Order, length and every bit of every key change it. */
uint64_t kv_hash_keys(const uint64_t *keys, int n);

/* Opens a batch (asserts that the previous one was ended). The users of one
 * batch are distinct. kv_lookup and kv_reserve assert they run inside one. */
void kv_begin(kv_cache *kv);
/* Cached rows usable for this request (0 on a miss). keys[n] are the keys of
 * the request's cacheable rows (n >= 0). An entry that is longer than n or
 * whose hash of keys[0..rows) differs is dropped (counted as a rewrite and a
 * miss). A hit moves the entry to the LRU head and pins it until kv_end. */
int kv_lookup(kv_cache *kv, int64_t user, const uint64_t *keys, int n);
/* kv_lookup with the hash check left to the caller, who makes the keys
 * later (the engine: while the GPU runs the forward). Returns the entry's
 * committed rows r (0 < r <= n), with the hash of their keys in *hash, and
 * pins the entry and moves it to the LRU head as kv_lookup's hit does; or 0
 * for a miss (no entry, or one reserved in this batch; counted); or -1,
 * changing and counting nothing, when the keys are needed now: the entry is
 * longer than n (kv_lookup drops it) or held (dropping it would first need
 * its copy to land). The caller compares the hash before it commits, and on
 * a mismatch calls kv_reject. */
int kv_lookup_deferred(kv_cache *kv, int64_t user, int n, uint64_t *hash);
/* The deferred check of this batch's kv_lookup_deferred hit failed: drops
 * the user's entry with every page it holds (those reserved in this batch
 * included), recounted as a rewrite and a miss instead of a hit. */
void kv_reject(kv_cache *kv, int64_t user);
/* Makes the user's page list cover `rows` rows (ceil(rows/P) pages; never
 * shrinks it), creating an entry if absent (rows <= 0 and no entry: true,
 * nothing created). On success the entry is pinned and most recently used.
 * Evicts unpinned users other than this one in LRU order when the free list
 * is short. Returns false and changes nothing (no eviction, no entry, no
 * pin; only the reserve_failures counter moves) when free pages plus the
 * pages of evictable users cannot cover it: the caller then computes the
 * user uncached. */
bool kv_reserve(kv_cache *kv, int64_t user, int rows);
/* Fills pages[0 .. min(count, max)) with the user's pages in row order and
 * returns count, the full length of the list (0 when the user has no
 * entry): a result above max means pages[] was too small. */
int kv_pages(const kv_cache *kv, int64_t user, int *pages, int max);
/* Records that rows [0, rows) hold valid K/V for keys[0..rows) and marks the
 * user most recently used. rows must not exceed the reserved capacity
 * (asserted; committing rows > 0 for a user without an entry is a bug). An
 * entry committed with 0 rows is dropped (keys may then be NULL). Pages
 * beyond what `rows` needs are returned to the pool. Does not pin. */
void kv_commit(kv_cache *kv, int64_t user, int rows, const uint64_t *keys);
/* kv_commit with the keys' hash (kv_hash_keys(keys, rows)) computed by the
 * caller, e.g. while the GPU runs the forward. */
void kv_commit_hashed(kv_cache *kv, int64_t user, int rows, uint64_t hash);
/* Closes the batch: unpins its entries, returns pages reserved but not
 * committed (each entry keeps exactly ceil(rows/P) pages), and drops entries
 * reserved in this batch and never committed. Between batches every entry
 * holds rows >= 1. */
void kv_end(kv_cache *kv);

/* Holds keep an entry's pages from eviction across batches while a
 * background copy (the host tier's offload) reads them; holds nest. Hold
 * only committed entries; a held entry must not be dropped (kv_lookup's
 * rewrite drop, kv_evict, kv_clear): release it first (the caller waits for
 * the copy). kv_held says whether a user has holds. */
void kv_hold(kv_cache *kv, int64_t user);
void kv_release(kv_cache *kv, int64_t user);
bool kv_held(const kv_cache *kv, int64_t user);
/* True when kv_lookup with these keys would drop the user's entry (a
 * rewrite); changes nothing. */
bool kv_would_drop(const kv_cache *kv, int64_t user, const uint64_t *keys, int n);

/* Explicit drops, pinned entries included (call them between batches); they
 * do not count as evictions, which are the LRU evictions of kv_reserve.
 * kv_evict of an unknown user does nothing. */
void kv_evict(kv_cache *kv, int64_t user);
void kv_clear(kv_cache *kv);
/* Counters are cumulative since kv_create (kv_clear keeps them); misses
 * include rewrites. users, pages_in_use, pages_total are the current values. */
void kv_get_stats(const kv_cache *kv, kv_stats *s);

/* Checks the invariants (every page free or owned by exactly one entry, no
 * cycle, pages in use + free = pool, each entry's page count equals its list
 * length and covers its rows, the index finds every entry and only them, the
 * LRU list holds exactly the entries, pin bookkeeping agrees; between
 * batches also: nothing pinned, rows >= 1, exactly ceil(rows/P) pages).
 * Returns true when they hold; otherwise writes the first violation into
 * buf (n bytes; buf may be NULL). O(pool + entries); uses scratch memory
 * inside the cache, so not concurrently with other calls. */
bool kv_check(const kv_cache *kv, char *buf, size_t n);

#endif
