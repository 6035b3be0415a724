/* kv_cache.c - the per-user paged KV cache, device tier (see kv_cache.h and
 * docs/kvcache.md).
 *
 * Everything is sized in kv_create and never grows: one 64-byte aligned
 * block of pages, and plain int arrays for the bookkeeping.
 *   - next_page[p] links pages into singly linked lists: each entry owns one
 *     list in row order (first..last, so appending is O(1)); the free pages
 *     form another list headed by free_head. Dropping a user splices its
 *     whole list onto the free list in O(1).
 *   - entries[] holds the users; unused slots are chained through lru_next
 *     into a free-entry list. Live entries sit on a doubly linked LRU list,
 *     most recently used at the head.
 *   - index[] maps a user id to its entry: open addressing, linear probing,
 *     deletion by backward shift (no tombstones, so probe chains never rot).
 *   - pinned[] lists the entries pinned in the current batch (lookup hit or
 *     reserve), so kv_end touches only those. Entries may also be held
 *     across batches (kv_hold: a background copy reads their pages).
 *     locked_pages sums the pages of entries pinned or held, which lets
 *     kv_reserve decide in O(1) whether eviction can make room before it
 *     evicts anyone.
 *
 * Every live entry owns at least one page (entries are created by a reserve
 * of >= 1 row and dropped when committed with 0 rows), so live entries never
 * outnumber pages. At kv_end each entry of the batch is brought back to
 * exactly ceil(rows/P) pages, and one reserved but never committed (rows 0)
 * is dropped: between batches every entry holds rows >= 1 and no spare page.
 */
#include "kvcache/kv_cache.h"

#include "core/rng.h"
#include "core/status.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KV_NONE (-1)
#define KV_ALIGN 64          /* page block alignment: a cache line, and enough for AVX-512 */
#define KV_EXTRA_ENTRIES 1024 /* entry slack beyond one per page (see kv_create) */

typedef struct kv_entry {
    int64_t user;
    uint64_t hash;     /* kv_hash_keys of the committed rows' keys */
    int rows;          /* committed cached rows; 0 until the first commit */
    int n_pages;       /* length of the page list */
    int first, last;   /* page list in row order; KV_NONE when empty */
    int lru_prev, lru_next; /* LRU links; lru_next chains free entry slots */
    int pin_slot;      /* index in kv->pinned, KV_NONE when not pinned */
    int holds;         /* kv_hold count: a background reader of the pages (offload) */
    bool live;
} kv_entry;

struct kv_cache {
    kv_options o;
    size_t page_floats;     /* L * P * (k_width + v_width) */
    size_t page_bytes;
    int n_pages;            /* pool size */
    float *pool;            /* [n_pages][page_floats], KV_ALIGN aligned; NULL for an external pool */
    int *next_page;         /* [n_pages] */
    int free_head, n_free;

    kv_entry *entries;      /* [entry_cap] */
    int entry_cap, n_entries, free_entry;
    int lru_head, lru_tail; /* most / least recently used */

    int *index;             /* [index_cap] entry ids, KV_NONE when empty */
    size_t index_mask;      /* index_cap - 1 (a power of two) */

    int *pinned;            /* [entry_cap] entries pinned in this batch */
    int n_pinned;
    int locked_pages;       /* sum of n_pages over entries pinned or held (not evictable) */
    bool in_batch;

    int *scratch;           /* [n_pages + entry_cap], kv_check's marks */
    kv_stats st;            /* counters; the gauges are filled by kv_get_stats */
};

/* ---- hashing ----------------------------------------------------------- */

/* One round of xorshift-multiply-xorshift: a bijection on 64 bits, and not
 * affine (the shift before the multiply), so that no linear relation
 * between keys cancels in the sum below. */
static inline uint64_t hash_term(uint64_t z)
{
    z = (z ^ (z >> 32)) * 0xd6e8feb86659fd93ull;
    return z ^ (z >> 32);
}

uint64_t kv_hash_keys(const uint64_t *keys, int n)
{
    /* A sum of one term per row, each a bijection of the row's key for a
     * fixed position, so changing any one key always changes the sum, and
     * the terms do not wait for each other (a chained hash took 4 ns a row).
     * One multiply a term, two sums in turn: every request's whole cached
     * prefix goes through here before its GPU work can start (3968 rows:
     * 9.5 us on the H100 machine's host with splitmix64's two rounds, about
     * 0.6x that now). The position in each term makes order matter; the
     * length is mixed in last (a full splitmix64) so that no sequence hashes
     * like one of its prefixes by construction. Two different sequences
     * collide with probability about 2^-64 (not a defence against chosen
     * collisions: ids are the caller's). */
    const uint64_t step = 0x9e3779b97f4a7c15ull;
    uint64_t s0 = 0x6a09e667f3bcc908ull, s1 = 0; /* (fractional bits of sqrt(2): any constant) */
    int i = 0;
    for (; i + 1 < n; i += 2) {
        s0 += hash_term(keys[i] + (uint64_t)(i + 1) * step);
        s1 += hash_term(keys[i + 1] + (uint64_t)(i + 2) * step);
    }
    if (i < n)
        s0 += hash_term(keys[i] + (uint64_t)(i + 1) * step);
    return rng_mix64((s0 + s1) ^ (uint64_t)(uint32_t)n);
}

static inline size_t index_home(const kv_cache *kv, int64_t user)
{
    return (size_t)rng_mix64((uint64_t)user) & kv->index_mask;
}

/* ---- the user index ---------------------------------------------------- */

/* Slot holding user's entry, or the empty slot where it would go. */
static size_t index_slot(const kv_cache *kv, int64_t user)
{
    size_t i = index_home(kv, user);
    while (kv->index[i] != KV_NONE && kv->entries[kv->index[i]].user != user)
        i = (i + 1) & kv->index_mask;
    return i;
}

static int index_find(const kv_cache *kv, int64_t user)
{
    return kv->index[index_slot(kv, user)];
}

/* Removes the entry at slot i and shifts later members of its probe run
 * back, so that every remaining entry stays reachable from its home slot. */
static void index_remove_slot(kv_cache *kv, size_t i)
{
    kv->index[i] = KV_NONE;
    size_t j = i;
    for (;;) {
        j = (j + 1) & kv->index_mask;
        int e = kv->index[j];
        if (e == KV_NONE)
            return;
        size_t home = index_home(kv, kv->entries[e].user);
        /* e may move to the hole at i when i is no further from e's home
         * than j is (cyclically), i.e. the hole lies on e's probe path. */
        if (((j - home) & kv->index_mask) >= ((j - i) & kv->index_mask)) {
            kv->index[i] = e;
            kv->index[j] = KV_NONE;
            i = j;
        }
    }
}

/* ---- LRU list ---------------------------------------------------------- */

static void lru_unlink(kv_cache *kv, int e)
{
    kv_entry *x = &kv->entries[e];
    if (x->lru_prev != KV_NONE)
        kv->entries[x->lru_prev].lru_next = x->lru_next;
    else
        kv->lru_head = x->lru_next;
    if (x->lru_next != KV_NONE)
        kv->entries[x->lru_next].lru_prev = x->lru_prev;
    else
        kv->lru_tail = x->lru_prev;
    x->lru_prev = x->lru_next = KV_NONE;
}

static void lru_push_head(kv_cache *kv, int e)
{
    kv_entry *x = &kv->entries[e];
    x->lru_prev = KV_NONE;
    x->lru_next = kv->lru_head;
    if (kv->lru_head != KV_NONE)
        kv->entries[kv->lru_head].lru_prev = e;
    else
        kv->lru_tail = e;
    kv->lru_head = e;
}

static void lru_touch(kv_cache *kv, int e)
{
    if (kv->lru_head == e)
        return;
    lru_unlink(kv, e);
    lru_push_head(kv, e);
}

/* ---- pinning ----------------------------------------------------------- */

static void pin(kv_cache *kv, int e)
{
    kv_entry *x = &kv->entries[e];
    if (x->pin_slot != KV_NONE)
        return;
    x->pin_slot = kv->n_pinned;
    kv->pinned[kv->n_pinned++] = e;
    if (x->holds == 0)
        kv->locked_pages += x->n_pages;
}

static void unpin(kv_cache *kv, int e)
{
    kv_entry *x = &kv->entries[e];
    if (x->pin_slot == KV_NONE)
        return;
    int last = kv->pinned[--kv->n_pinned];
    kv->pinned[x->pin_slot] = last;
    kv->entries[last].pin_slot = x->pin_slot;
    x->pin_slot = KV_NONE;
    if (x->holds == 0)
        kv->locked_pages -= x->n_pages;
}

/* Pinned in this batch or held by a background reader: never evicted. */
static bool locked(const kv_entry *x) { return x->pin_slot != KV_NONE || x->holds > 0; }

/* ---- pages ------------------------------------------------------------- */

static int pages_for(const kv_cache *kv, int rows)
{
    return rows <= 0 ? 0 : (rows - 1) / kv->o.page_size + 1;
}

/* Moves n pages from the free list to the end of e's list. */
static void take_pages(kv_cache *kv, int e, int n)
{
    HSTU_ASSERT(n <= kv->n_free);
    kv_entry *x = &kv->entries[e];
    for (int k = 0; k < n; k++) {
        int p = kv->free_head;
        kv->free_head = kv->next_page[p];
        kv->next_page[p] = KV_NONE;
        if (x->last == KV_NONE)
            x->first = p;
        else
            kv->next_page[x->last] = p;
        x->last = p;
    }
    kv->n_free -= n;
    x->n_pages += n;
    if (locked(x))
        kv->locked_pages += n;
}

/* Keeps the first `keep` pages of e and splices the rest onto the free list. */
static void trim_pages(kv_cache *kv, int e, int keep)
{
    kv_entry *x = &kv->entries[e];
    if (keep >= x->n_pages)
        return;
    int cut; /* first page to free; the freed run ends at x->last */
    int new_last = KV_NONE;
    if (keep == 0) {
        cut = x->first;
        x->first = KV_NONE;
    } else {
        new_last = x->first;
        for (int k = 1; k < keep; k++)
            new_last = kv->next_page[new_last];
        cut = kv->next_page[new_last];
        kv->next_page[new_last] = KV_NONE;
    }
    kv->next_page[x->last] = kv->free_head;
    kv->free_head = cut;
    x->last = new_last;
    int freed = x->n_pages - keep;
    kv->n_free += freed;
    x->n_pages = keep;
    if (locked(x))
        kv->locked_pages -= freed;
}

/* ---- entries ----------------------------------------------------------- */

static int entry_create(kv_cache *kv, int64_t user, size_t slot)
{
    int e = kv->free_entry;
    HSTU_ASSERT(e != KV_NONE); /* live entries <= pages < entry_cap */
    kv_entry *x = &kv->entries[e];
    kv->free_entry = x->lru_next;
    *x = (kv_entry){
        .user = user, .hash = 0 /* compared only once rows > 0 */, .rows = 0, .n_pages = 0,
        .first = KV_NONE, .last = KV_NONE, .lru_prev = KV_NONE, .lru_next = KV_NONE,
        .pin_slot = KV_NONE, .live = true,
    };
    kv->index[slot] = e;
    lru_push_head(kv, e);
    kv->n_entries++;
    return e;
}

/* Frees e's pages and removes it from every structure. */
static void entry_drop(kv_cache *kv, int e)
{
    kv_entry *x = &kv->entries[e];
    HSTU_ASSERT(x->live);
    HSTU_ASSERT(x->holds == 0); /* the caller waits for background readers first */
    unpin(kv, e);
    if (x->n_pages > 0) {
        kv->next_page[x->last] = kv->free_head;
        kv->free_head = x->first;
        kv->n_free += x->n_pages;
    }
    lru_unlink(kv, e);
    size_t slot = index_slot(kv, x->user);
    HSTU_ASSERT(kv->index[slot] == e);
    index_remove_slot(kv, slot);
    *x = (kv_entry){.live = false, .first = KV_NONE, .last = KV_NONE, .lru_prev = KV_NONE,
                    .lru_next = kv->free_entry, .pin_slot = KV_NONE};
    kv->free_entry = e;
    kv->n_entries--;
}

/* ---- create / destroy -------------------------------------------------- */

/* a * b into *out; false on size_t overflow. */
static bool mul_size(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > SIZE_MAX / b)
        return false;
    *out = a * b;
    return true;
}

hstu_status kv_create(const kv_options *o, kv_cache **out, hstu_error *err)
{
    *out = NULL;
    if (o->n_layers < 1)
        return hstu_fail(err, HSTU_ERR_ARG, "kv cache: n_layers is %d; it must be >= 1 (the model's layer count)",
                         o->n_layers);
    if (o->page_size < 1)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "kv cache: page_size is %d; a page must hold >= 1 token (the default is 32)",
                         o->page_size);
    if (o->k_width < 1 || o->v_width < 1)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "kv cache: k_width %d and v_width %d must both be >= 1 (H*Dqk and H*Dv floats per row)",
                         o->k_width, o->v_width);

    if (o->elem_bytes != 0 && o->elem_bytes != 2 && o->elem_bytes != 4)
        return hstu_fail(err, HSTU_ERR_ARG, "kv cache: elem_bytes is %d; it must be 2 (bf16), 4 (fp32) or 0 (4)",
                         o->elem_bytes);
    size_t elem = o->elem_bytes ? (size_t)o->elem_bytes : sizeof(float);
    size_t row_floats = (size_t)o->k_width + (size_t)o->v_width, page_floats, page_bytes;
    if (!mul_size((size_t)o->n_layers, (size_t)o->page_size, &page_floats) ||
        !mul_size(page_floats, row_floats, &page_floats) ||
        !mul_size(page_floats, elem, &page_bytes))
        return hstu_fail(err, HSTU_ERR_ARG,
                         "kv cache: a page of %d layers x %d tokens x %zu floats overflows size_t; lower page_size",
                         o->n_layers, o->page_size, row_floats);
    size_t pool_pages = o->budget_bytes / page_bytes;
    if (pool_pages < 1)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "kv cache: cache budget %zu bytes holds no page of %zu bytes (%d layers x %d tokens x "
                         "%zu floats); raise --cache-mb or lower the page size",
                         o->budget_bytes, page_bytes, o->n_layers, o->page_size, row_floats);
    /* Page and entry ids are ints; the index needs 2 * entry_cap slots. */
    if (pool_pages > (size_t)(INT_MAX / 4 - KV_EXTRA_ENTRIES))
        return hstu_fail(err, HSTU_ERR_ARG,
                         "kv cache: cache budget %zu bytes makes %zu pages of %zu bytes, more than the %d "
                         "pages supported; raise page_size or lower the budget",
                         o->budget_bytes, pool_pages, page_bytes, INT_MAX / 4 - KV_EXTRA_ENTRIES);

    kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv)
        return hstu_fail(err, HSTU_ERR_NOMEM, "kv cache: out of memory for the cache header");
    kv->o = *o;
    kv->page_floats = page_floats;
    kv->page_bytes = page_bytes;
    kv->n_pages = (int)pool_pages;
    /* One slot per page covers every live entry (each owns >= 1 page); the
     * slack is headroom, never needed by the current invariants. */
    kv->entry_cap = kv->n_pages + KV_EXTRA_ENTRIES;
    size_t index_cap = 1;
    while (index_cap < 2 * (size_t)kv->entry_cap)
        index_cap *= 2;
    kv->index_mask = index_cap - 1;

    size_t pool_bytes = pool_pages * page_bytes; /* <= budget_bytes: no overflow */
    size_t pool_alloc = (pool_bytes + KV_ALIGN - 1) / KV_ALIGN * KV_ALIGN;
    kv->pool = o->external_pool ? NULL : aligned_alloc(KV_ALIGN, pool_alloc);
    kv->next_page = malloc((size_t)kv->n_pages * sizeof *kv->next_page);
    kv->entries = malloc((size_t)kv->entry_cap * sizeof *kv->entries);
    kv->index = malloc(index_cap * sizeof *kv->index);
    kv->pinned = malloc((size_t)kv->entry_cap * sizeof *kv->pinned);
    kv->scratch = malloc(((size_t)kv->n_pages + (size_t)kv->entry_cap) * sizeof *kv->scratch);
    if ((!kv->pool && !o->external_pool) || !kv->next_page || !kv->entries || !kv->index || !kv->pinned || !kv->scratch) {
        kv_destroy(kv);
        return hstu_fail(err, HSTU_ERR_NOMEM,
                         "kv cache: out of memory for %d pages of %zu bytes (%zu MiB); lower --cache-mb",
                         (int)pool_pages, page_bytes, pool_bytes >> 20);
    }

    for (int p = 0; p < kv->n_pages; p++)
        kv->next_page[p] = p + 1 < kv->n_pages ? p + 1 : KV_NONE;
    kv->free_head = 0;
    kv->n_free = kv->n_pages;
    for (int e = 0; e < kv->entry_cap; e++)
        kv->entries[e] = (kv_entry){.live = false, .first = KV_NONE, .last = KV_NONE, .lru_prev = KV_NONE,
                                    .lru_next = e + 1 < kv->entry_cap ? e + 1 : KV_NONE,
                                    .pin_slot = KV_NONE};
    kv->free_entry = 0;
    kv->lru_head = kv->lru_tail = KV_NONE;
    for (size_t i = 0; i < index_cap; i++)
        kv->index[i] = KV_NONE;
    *out = kv;
    return HSTU_OK;
}

void kv_destroy(kv_cache *kv)
{
    if (!kv)
        return;
    free(kv->pool);
    free(kv->next_page);
    free(kv->entries);
    free(kv->index);
    free(kv->pinned);
    free(kv->scratch);
    free(kv);
}

/* ---- layout ------------------------------------------------------------ */

size_t kv_page_bytes(const kv_cache *kv) { return kv->page_bytes; }

int kv_page_size(const kv_cache *kv) { return kv->o.page_size; }

float *kv_page_ptr(kv_cache *kv, int page)
{
    HSTU_ASSERT(page >= 0 && page < kv->n_pages);
    HSTU_ASSERT(kv->pool); /* an external pool's pages live with its owner */
    return kv->pool + (size_t)page * kv->page_floats;
}

size_t kv_layer_k(const kv_cache *kv, int layer)
{
    HSTU_ASSERT(layer >= 0 && layer < kv->o.n_layers);
    return (size_t)layer * (size_t)kv->o.page_size * ((size_t)kv->o.k_width + (size_t)kv->o.v_width);
}

size_t kv_layer_v(const kv_cache *kv, int layer)
{
    return kv_layer_k(kv, layer) + (size_t)kv->o.page_size * (size_t)kv->o.k_width;
}

/* ---- the batch protocol ------------------------------------------------ */

void kv_begin(kv_cache *kv)
{
    HSTU_ASSERT(!kv->in_batch); /* kv_end was not called for the previous batch */
    HSTU_ASSERT(kv->n_pinned == 0);
    kv->in_batch = true;
}

/* True when the entry's committed rows are a prefix of keys[0..n). */
static bool entry_matches(const kv_entry *x, const uint64_t *keys, int n)
{
    return x->rows <= n && kv_hash_keys(keys, x->rows) == x->hash;
}

int kv_lookup(kv_cache *kv, int64_t user, const uint64_t *keys, int n)
{
    HSTU_ASSERT(kv->in_batch);
    HSTU_ASSERT(n >= 0);
    int e = index_find(kv, user);
    if (e == KV_NONE) {
        kv->st.misses++;
        return 0;
    }
    kv_entry *x = &kv->entries[e];
    if (x->rows == 0) {
        /* Reserved earlier in this batch and not committed yet: nothing
         * cached, but the reservation is the caller's; leave it. */
        kv->st.misses++;
        return 0;
    }
    if (!entry_matches(x, keys, n)) {
        entry_drop(kv, e);
        kv->st.rewrites++;
        kv->st.misses++;
        return 0;
    }
    kv->st.hits++;
    pin(kv, e);
    lru_touch(kv, e);
    return x->rows;
}

int kv_lookup_deferred(kv_cache *kv, int64_t user, int n, uint64_t *hash)
{
    HSTU_ASSERT(kv->in_batch);
    HSTU_ASSERT(n >= 0);
    int e = index_find(kv, user);
    if (e == KV_NONE || kv->entries[e].rows == 0) {
        kv->st.misses++;
        return 0;
    }
    kv_entry *x = &kv->entries[e];
    if (x->rows > n || x->holds > 0)
        return -1;
    *hash = x->hash;
    kv->st.hits++;
    pin(kv, e);
    lru_touch(kv, e);
    return x->rows;
}

void kv_reject(kv_cache *kv, int64_t user)
{
    HSTU_ASSERT(kv->in_batch);
    int e = index_find(kv, user);
    HSTU_ASSERT(e != KV_NONE && kv->entries[e].pin_slot != KV_NONE); /* a deferred hit of this batch */
    entry_drop(kv, e);
    kv->st.hits--;
    kv->st.rewrites++;
    kv->st.misses++;
}

bool kv_reserve(kv_cache *kv, int64_t user, int rows)
{
    HSTU_ASSERT(kv->in_batch);
    size_t slot = index_slot(kv, user);
    int e = kv->index[slot];
    int want = pages_for(kv, rows);
    if (e == KV_NONE && want == 0)
        return true;
    int have = e == KV_NONE ? 0 : kv->entries[e].n_pages;
    int need = want > have ? want - have : 0;

    /* Decide before touching anything: free pages plus every page that
     * eviction could reclaim (unpinned entries other than this user). */
    int self_unlocked = e != KV_NONE && !locked(&kv->entries[e]) ? have : 0;
    int in_use = kv->n_pages - kv->n_free;
    int evictable = in_use - kv->locked_pages - self_unlocked;
    if (need > kv->n_free + evictable) {
        kv->st.reserve_failures++;
        return false;
    }

    if (e == KV_NONE)
        e = entry_create(kv, user, slot);
    pin(kv, e);
    lru_touch(kv, e);
    while (kv->n_free < need) {
        int victim = kv->lru_tail;
        while (victim != KV_NONE && locked(&kv->entries[victim]))
            victim = kv->entries[victim].lru_prev;
        HSTU_ASSERT(victim != KV_NONE); /* the count above promised enough */
        entry_drop(kv, victim);
        kv->st.evictions++;
    }
    take_pages(kv, e, need);
    return true;
}

int kv_pages(const kv_cache *kv, int64_t user, int *pages, int max)
{
    int e = index_find(kv, user);
    if (e == KV_NONE)
        return 0;
    int n = 0;
    for (int p = kv->entries[e].first; p != KV_NONE; p = kv->next_page[p]) {
        if (n < max)
            pages[n] = p;
        n++;
    }
    return n;
}

void kv_commit(kv_cache *kv, int64_t user, int rows, const uint64_t *keys)
{
    kv_commit_hashed(kv, user, rows, kv_hash_keys(keys, rows)); /* (no key read when rows is 0) */
}

void kv_commit_hashed(kv_cache *kv, int64_t user, int rows, uint64_t hash)
{
    HSTU_ASSERT(rows >= 0);
    int e = index_find(kv, user);
    if (e == KV_NONE) {
        HSTU_ASSERT(rows == 0); /* committing rows that were never reserved */
        return;
    }
    if (rows == 0) {
        entry_drop(kv, e);
        return;
    }
    kv_entry *x = &kv->entries[e];
    HSTU_ASSERT(pages_for(kv, rows) <= x->n_pages); /* rows beyond the reservation */
    x->rows = rows;
    x->hash = hash;
    trim_pages(kv, e, pages_for(kv, rows));
    lru_touch(kv, e);
}

void kv_end(kv_cache *kv)
{
    HSTU_ASSERT(kv->in_batch);
    while (kv->n_pinned > 0) {
        int e = kv->pinned[kv->n_pinned - 1];
        unpin(kv, e);
        if (kv->entries[e].rows == 0)
            entry_drop(kv, e); /* reserved, never committed: holds nothing valid */
        else
            trim_pages(kv, e, pages_for(kv, kv->entries[e].rows));
    }
    kv->in_batch = false;
}

void kv_hold(kv_cache *kv, int64_t user)
{
    int e = index_find(kv, user);
    HSTU_ASSERT(e != KV_NONE && kv->entries[e].rows > 0); /* hold only committed entries */
    kv_entry *x = &kv->entries[e];
    if (x->holds++ == 0 && x->pin_slot == KV_NONE)
        kv->locked_pages += x->n_pages;
}

void kv_release(kv_cache *kv, int64_t user)
{
    int e = index_find(kv, user);
    HSTU_ASSERT(e != KV_NONE && kv->entries[e].holds > 0);
    kv_entry *x = &kv->entries[e];
    if (--x->holds == 0 && x->pin_slot == KV_NONE)
        kv->locked_pages -= x->n_pages;
}

bool kv_held(const kv_cache *kv, int64_t user)
{
    int e = index_find(kv, user);
    return e != KV_NONE && kv->entries[e].holds > 0;
}

size_t kv_page_elems(const kv_cache *kv) { return kv->page_floats; }

bool kv_would_drop(const kv_cache *kv, int64_t user, const uint64_t *keys, int n)
{
    int e = index_find(kv, user);
    if (e == KV_NONE || kv->entries[e].rows == 0)
        return false;
    return !entry_matches(&kv->entries[e], keys, n);
}

/* ---- explicit drops and statistics ------------------------------------- */

void kv_evict(kv_cache *kv, int64_t user)
{
    int e = index_find(kv, user);
    if (e != KV_NONE)
        entry_drop(kv, e);
}

void kv_clear(kv_cache *kv)
{
    while (kv->lru_head != KV_NONE)
        entry_drop(kv, kv->lru_head);
}

void kv_get_stats(const kv_cache *kv, kv_stats *s)
{
    *s = kv->st;
    s->pages_total = kv->n_pages;
    s->pages_in_use = kv->n_pages - kv->n_free;
    s->users = kv->n_entries;
}

/* ---- invariants -------------------------------------------------------- */

static bool check_fail(char *buf, size_t n, const char *fmt, ...) HSTU_PRINTF(3, 4);

static bool check_fail(char *buf, size_t n, const char *fmt, ...)
{
    if (buf && n > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, n, fmt, ap);
        va_end(ap);
    }
    return false;
}

bool kv_check(const kv_cache *kv, char *buf, size_t n)
{
    /* Marks: owner[p] is the entry owning page p, -2 for free, KV_NONE for
     * not yet seen; seen[e] is 1 once entry e was met on the LRU list. */
    int *owner = kv->scratch;
    int *seen = kv->scratch + kv->n_pages;
    const int FREE = -2;
    for (int p = 0; p < kv->n_pages; p++)
        owner[p] = KV_NONE;
    for (int e = 0; e < kv->entry_cap; e++)
        seen[e] = 0;

    int n_free = 0;
    for (int p = kv->free_head; p != KV_NONE; p = kv->next_page[p]) {
        if (p < 0 || p >= kv->n_pages)
            return check_fail(buf, n, "free list holds page id %d outside [0, %d)", p, kv->n_pages);
        if (owner[p] != KV_NONE)
            return check_fail(buf, n, "free list meets page %d twice (a cycle)", p);
        owner[p] = FREE;
        n_free++;
    }
    if (n_free != kv->n_free)
        return check_fail(buf, n, "free list has %d pages, counter says %d", n_free, kv->n_free);

    int live = 0, in_use = 0, pinned = 0, locked_pages = 0;
    for (int e = 0; e < kv->entry_cap; e++) {
        const kv_entry *x = &kv->entries[e];
        if (!x->live)
            continue;
        live++;
        int len = 0, last = KV_NONE;
        for (int p = x->first; p != KV_NONE; p = kv->next_page[p]) {
            if (p < 0 || p >= kv->n_pages)
                return check_fail(buf, n, "user %lld: page id %d outside [0, %d)", (long long)x->user, p,
                                  kv->n_pages);
            if (owner[p] == FREE)
                return check_fail(buf, n, "user %lld owns page %d, which is also on the free list",
                                  (long long)x->user, p);
            if (owner[p] == e)
                return check_fail(buf, n, "user %lld: page list meets page %d twice (a cycle)",
                                  (long long)x->user, p);
            if (owner[p] != KV_NONE)
                return check_fail(buf, n, "page %d is owned by users %lld and %lld", p,
                                  (long long)kv->entries[owner[p]].user, (long long)x->user);
            owner[p] = e;
            last = p;
            len++;
        }
        if (len != x->n_pages)
            return check_fail(buf, n, "user %lld: page list has %d pages, entry says %d", (long long)x->user,
                              len, x->n_pages);
        if (last != x->last)
            return check_fail(buf, n, "user %lld: list ends at page %d, entry's last page is %d",
                              (long long)x->user, last, x->last);
        if (len < 1)
            return check_fail(buf, n, "user %lld: entry owns no page", (long long)x->user);
        if (x->rows < 0 || len < pages_for(kv, x->rows))
            return check_fail(buf, n, "user %lld: %d rows need %d pages, entry has %d", (long long)x->user,
                              x->rows, pages_for(kv, x->rows), len);
        if (x->pin_slot != KV_NONE) {
            if (x->pin_slot < 0 || x->pin_slot >= kv->n_pinned || kv->pinned[x->pin_slot] != e)
                return check_fail(buf, n, "user %lld: pin slot %d does not point back to it", (long long)x->user,
                                  x->pin_slot);
            pinned++;
        }
        if (x->holds < 0)
            return check_fail(buf, n, "user %lld: hold count %d", (long long)x->user, x->holds);
        if (locked(x))
            locked_pages += len;
        if (!kv->in_batch) {
            if (x->pin_slot != KV_NONE)
                return check_fail(buf, n, "user %lld is pinned outside a batch", (long long)x->user);
            if (x->rows < 1 || len != pages_for(kv, x->rows))
                return check_fail(buf, n, "user %lld: between batches, %d rows should hold exactly %d pages, "
                                  "entry has %d", (long long)x->user, x->rows, pages_for(kv, x->rows), len);
        }
        int found = index_find(kv, x->user);
        if (found != e)
            return check_fail(buf, n, "index finds entry %d for user %lld, which lives in entry %d", found,
                              (long long)x->user, e);
        in_use += len;
    }
    if (live != kv->n_entries)
        return check_fail(buf, n, "%d live entries, counter says %d", live, kv->n_entries);
    if (in_use + n_free != kv->n_pages)
        return check_fail(buf, n, "%d pages in use + %d free != pool of %d", in_use, n_free, kv->n_pages);
    if (pinned != kv->n_pinned || locked_pages != kv->locked_pages)
        return check_fail(buf, n, "%d pinned entries, %d pages pinned or held; counters say %d and %d", pinned,
                          locked_pages, kv->n_pinned, kv->locked_pages);

    int slots = 0;
    for (size_t i = 0; i <= kv->index_mask; i++) {
        int e = kv->index[i];
        if (e == KV_NONE)
            continue;
        if (e < 0 || e >= kv->entry_cap || !kv->entries[e].live)
            return check_fail(buf, n, "index slot %zu points to entry %d, which is not live", i, e);
        slots++;
    }
    if (slots != live) /* each live entry was found above, so equal counts mean no extra slot */
        return check_fail(buf, n, "index holds %d slots for %d live entries", slots, live);

    int walked = 0, prev = KV_NONE;
    for (int e = kv->lru_head; e != KV_NONE; e = kv->entries[e].lru_next) {
        if (e < 0 || e >= kv->entry_cap || !kv->entries[e].live)
            return check_fail(buf, n, "LRU list holds entry %d, which is not live", e);
        if (seen[e])
            return check_fail(buf, n, "LRU list meets user %lld twice (a cycle)", (long long)kv->entries[e].user);
        if (kv->entries[e].lru_prev != prev)
            return check_fail(buf, n, "LRU list: user %lld's back link is %d, expected %d",
                              (long long)kv->entries[e].user, kv->entries[e].lru_prev, prev);
        seen[e] = 1;
        walked++;
        prev = e;
    }
    if (prev != kv->lru_tail)
        return check_fail(buf, n, "LRU list ends at entry %d, tail says %d", prev, kv->lru_tail);
    if (walked != live)
        return check_fail(buf, n, "LRU list holds %d entries of %d live", walked, live);
    return true;
}
