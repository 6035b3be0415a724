/* host_tier.c - bookkeeping of the host tier's chunk slots (host_tier.h).
 *
 * Slots form singly linked lists through next_slot[]: each entry owns one
 * list in chunk order (committed chunks first, then the pending ones), the
 * free slots another. Entries live in a fixed array with a free chain; users
 * are found by a linear probe over an open-addressed index rebuilt on drop
 * (entries are few: at most one per slot plus the dead ones). An entry whose
 * prefix was rewritten while chunks were pending becomes dead: invisible to
 * lookups and eviction until its copies land, then dropped.
 */
#include "kvcache/host_tier.h"

#include "core/status.h"
#include "kvcache/kv_cache.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HT_NONE (-1)

typedef struct ht_entry {
    int64_t user;
    uint64_t hash;       /* kv_hash_keys of the committed rows' keys */
    uint64_t pend_hash;  /* the hash once the pending chunks land */
    int n_chunks;        /* committed chunks */
    int n_pend;          /* pending chunks (after the committed ones in the list) */
    int first, last;     /* slot list */
    int lru_prev, lru_next;
    bool live, pinned, dead;
} ht_entry;

struct host_tier {
    ht_options o;
    int *next_slot;      /* [n_slots] */
    int free_head, n_free, n_pending;
    ht_entry *e;         /* [cap] */
    int cap, n_live, free_entry;
    int lru_head, lru_tail;
    int *pinned;         /* [cap] entries pinned in this batch */
    int n_pinned;
    bool in_batch;
    int *scratch;        /* [n_slots] ht_check's marks */
    ht_stats st;
};

static int find(const host_tier *ht, int64_t user)
{
    for (int i = 0; i < ht->cap; i++)
        if (ht->e[i].live && !ht->e[i].dead && ht->e[i].user == user)
            return i;
    return HT_NONE;
}

/* A dead entry of this user (rewritten while pending), if any. */
static int find_dead(const host_tier *ht, int64_t user)
{
    for (int i = 0; i < ht->cap; i++)
        if (ht->e[i].live && ht->e[i].dead && ht->e[i].user == user)
            return i;
    return HT_NONE;
}

static void lru_unlink(host_tier *ht, int i)
{
    ht_entry *x = &ht->e[i];
    if (x->lru_prev != HT_NONE)
        ht->e[x->lru_prev].lru_next = x->lru_next;
    else
        ht->lru_head = x->lru_next;
    if (x->lru_next != HT_NONE)
        ht->e[x->lru_next].lru_prev = x->lru_prev;
    else
        ht->lru_tail = x->lru_prev;
    x->lru_prev = x->lru_next = HT_NONE;
}

static void lru_push_head(host_tier *ht, int i)
{
    ht_entry *x = &ht->e[i];
    x->lru_prev = HT_NONE;
    x->lru_next = ht->lru_head;
    if (ht->lru_head != HT_NONE)
        ht->e[ht->lru_head].lru_prev = i;
    else
        ht->lru_tail = i;
    ht->lru_head = i;
}

static void drop(host_tier *ht, int i)
{
    ht_entry *x = &ht->e[i];
    HSTU_ASSERT(x->live && x->n_pend == 0);
    HSTU_ASSERT(!x->pinned);
    if (x->first != HT_NONE) {
        ht->next_slot[x->last] = ht->free_head;
        ht->free_head = x->first;
        ht->n_free += x->n_chunks;
    }
    if (!x->dead)
        lru_unlink(ht, i);
    *x = (ht_entry){.live = false, .first = HT_NONE, .last = HT_NONE, .lru_prev = HT_NONE,
                    .lru_next = ht->free_entry};
    ht->free_entry = i;
    ht->n_live--;
}

/* An entry rewritten while its chunks are in flight: out of sight until they land. */
static void kill(host_tier *ht, int i)
{
    ht_entry *x = &ht->e[i];
    if (x->n_pend == 0) {
        drop(ht, i);
        return;
    }
    lru_unlink(ht, i);
    x->dead = true;
}

static int create(host_tier *ht, int64_t user)
{
    int i = ht->free_entry;
    if (i == HT_NONE)
        return HT_NONE;
    ht->free_entry = ht->e[i].lru_next;
    ht->e[i] = (ht_entry){.user = user, .first = HT_NONE, .last = HT_NONE, .lru_prev = HT_NONE,
                          .lru_next = HT_NONE, .live = true};
    lru_push_head(ht, i);
    ht->n_live++;
    return i;
}

hstu_status ht_create(const ht_options *o, host_tier **out, hstu_error *err)
{
    *out = NULL;
    if (o->n_slots < 1 || o->chunk_rows < 1 || o->max_pending < 1)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "host tier: %d slots of %d rows with a queue of %d chunks: each must be >= 1 "
                         "(raise the host cache budget to hold at least one chunk)",
                         o->n_slots, o->chunk_rows, o->max_pending);
    host_tier *ht = calloc(1, sizeof *ht);
    if (!ht)
        return hstu_fail(err, HSTU_ERR_NOMEM, "host tier: out of memory");
    ht->o = *o;
    ht->cap = o->n_slots + 64; /* one entry per slot, plus dead and empty-pending entries */
    ht->next_slot = malloc((size_t)o->n_slots * sizeof(int));
    ht->e = malloc((size_t)ht->cap * sizeof *ht->e);
    ht->pinned = malloc((size_t)ht->cap * sizeof(int));
    ht->scratch = malloc((size_t)o->n_slots * sizeof(int));
    if (!ht->next_slot || !ht->e || !ht->pinned || !ht->scratch) {
        ht_destroy(ht);
        return hstu_fail(err, HSTU_ERR_NOMEM, "host tier: out of memory for %d slots", o->n_slots);
    }
    for (int s = 0; s < o->n_slots; s++)
        ht->next_slot[s] = s + 1 < o->n_slots ? s + 1 : HT_NONE;
    ht->free_head = 0;
    ht->n_free = o->n_slots;
    for (int i = 0; i < ht->cap; i++)
        ht->e[i] = (ht_entry){.live = false, .first = HT_NONE, .last = HT_NONE, .lru_prev = HT_NONE,
                              .lru_next = i + 1 < ht->cap ? i + 1 : HT_NONE};
    ht->free_entry = 0;
    ht->lru_head = ht->lru_tail = HT_NONE;
    *out = ht;
    return HSTU_OK;
}

void ht_destroy(host_tier *ht)
{
    if (!ht)
        return;
    free(ht->next_slot);
    free(ht->e);
    free(ht->pinned);
    free(ht->scratch);
    free(ht);
}

int ht_chunk_rows(const host_tier *ht) { return ht->o.chunk_rows; }

void ht_begin(host_tier *ht)
{
    HSTU_ASSERT(!ht->in_batch && ht->n_pinned == 0);
    ht->in_batch = true;
}

/* True when the entry's committed rows are a prefix of keys[0..n). */
static bool prefix_matches(const host_tier *ht, const ht_entry *x, const uint64_t *keys, int n)
{
    int rows = x->n_chunks * ht->o.chunk_rows;
    return rows <= n && kv_hash_keys(keys, rows) == x->hash;
}

int ht_lookup(host_tier *ht, int64_t user, const uint64_t *keys, int n)
{
    HSTU_ASSERT(ht->in_batch);
    int i = find(ht, user);
    if (i == HT_NONE || ht->e[i].n_chunks == 0) {
        ht->st.misses++;
        return 0;
    }
    ht_entry *x = &ht->e[i];
    int rows = x->n_chunks * ht->o.chunk_rows;
    if (!prefix_matches(ht, x, keys, n)) {
        kill(ht, i);
        ht->st.rewrites++;
        ht->st.misses++;
        return 0;
    }
    if (!x->pinned) {
        x->pinned = true;
        ht->pinned[ht->n_pinned++] = i;
    }
    lru_unlink(ht, i);
    lru_push_head(ht, i);
    ht->st.hits++;
    return rows;
}

int ht_slots(const host_tier *ht, int64_t user, int *slots, int chunks)
{
    int i = find(ht, user);
    if (i == HT_NONE)
        return 0;
    int n = 0;
    for (int s = ht->e[i].first; s != HT_NONE && n < chunks && n < ht->e[i].n_chunks; s = ht->next_slot[s])
        slots[n++] = s;
    return n;
}

void ht_end(host_tier *ht)
{
    HSTU_ASSERT(ht->in_batch);
    for (int k = 0; k < ht->n_pinned; k++)
        ht->e[ht->pinned[k]].pinned = false;
    ht->n_pinned = 0;
    ht->in_batch = false;
}

/* Frees slots by evicting LRU entries that are neither pinned nor pending,
 * other than `keep`, until `need` are free; false (nothing evicted) when
 * that cannot work. */
static bool make_room(host_tier *ht, int need, int keep)
{
    if (ht->n_free >= need)
        return true;
    int reclaim = 0;
    for (int i = ht->lru_tail; i != HT_NONE && ht->n_free + reclaim < need; i = ht->e[i].lru_prev)
        if (i != keep && !ht->e[i].pinned && ht->e[i].n_pend == 0)
            reclaim += ht->e[i].n_chunks;
    if (ht->n_free + reclaim < need)
        return false;
    int i = ht->lru_tail;
    while (ht->n_free < need) {
        int prev = ht->e[i].lru_prev;
        if (i != keep && !ht->e[i].pinned && ht->e[i].n_pend == 0) {
            drop(ht, i);
            ht->st.evictions++;
        }
        i = prev;
    }
    return true;
}

int ht_offload_begin(host_tier *ht, int64_t user, const uint64_t *keys, int rows, int *first, int *slots, int max)
{
    int C = ht->o.chunk_rows;
    int want = rows / C;
    *first = 0;
    if (want == 0 || find_dead(ht, user) != HT_NONE)
        return 0;
    int i = find(ht, user);
    if (i != HT_NONE) {
        ht_entry *x = &ht->e[i];
        if (x->n_pend > 0)
            return 0; /* one offload per user at a time */
        if (!prefix_matches(ht, x, keys, rows)) {
            if (x->pinned)
                return 0; /* read by this batch's onload: leave it */
            kill(ht, i);
            ht->st.rewrites++;
            i = HT_NONE;
        }
    }
    int have = i == HT_NONE ? 0 : ht->e[i].n_chunks;
    int n = want - have;
    if (n <= 0)
        return 0;
    /* as many of the new chunks as the queue takes now (the rest next time) */
    if (n > max)
        n = max;
    if (n > ht->o.max_pending - ht->n_pending)
        n = ht->o.max_pending - ht->n_pending;
    if (n > ht->o.n_slots)
        n = ht->o.n_slots;
    if (n <= 0 || !make_room(ht, n, i)) {
        ht->st.offloads_skipped++;
        return 0;
    }
    if (i == HT_NONE && (i = create(ht, user)) == HT_NONE) {
        ht->st.offloads_skipped++;
        return 0;
    }
    ht_entry *x = &ht->e[i];
    for (int k = 0; k < n; k++) {
        int s = ht->free_head;
        ht->free_head = ht->next_slot[s];
        ht->next_slot[s] = HT_NONE;
        if (x->last == HT_NONE)
            x->first = s;
        else
            ht->next_slot[x->last] = s;
        x->last = s;
        slots[k] = s;
    }
    ht->n_free -= n;
    ht->n_pending += n;
    x->n_pend = n;
    x->pend_hash = kv_hash_keys(keys, (have + n) * C);
    lru_unlink(ht, i);
    lru_push_head(ht, i);
    ht->st.offloads++;
    ht->st.offload_chunks += (uint64_t)n;
    *first = have;
    return n;
}

void ht_offload_done(host_tier *ht, int64_t user)
{
    int i = find_dead(ht, user);
    if (i == HT_NONE)
        i = find(ht, user);
    HSTU_ASSERT(i != HT_NONE && ht->e[i].n_pend > 0);
    ht_entry *x = &ht->e[i];
    ht->n_pending -= x->n_pend;
    x->n_chunks += x->n_pend;
    x->n_pend = 0;
    x->hash = x->pend_hash;
    if (x->dead)
        drop(ht, i);
}

void ht_evict(host_tier *ht, int64_t user)
{
    int i = find(ht, user);
    if (i != HT_NONE)
        drop(ht, i);
}

void ht_trim(host_tier *ht, int64_t user, int rows, const uint64_t *keys)
{
    int i = find(ht, user);
    if (i == HT_NONE)
        return;
    ht_entry *x = &ht->e[i];
    HSTU_ASSERT(x->n_pend == 0);
    int keep = rows / ht->o.chunk_rows;
    if (keep >= x->n_chunks)
        return;
    if (keep == 0) {
        drop(ht, i);
        return;
    }
    int last = x->first;
    for (int k = 1; k < keep; k++)
        last = ht->next_slot[last];
    int cut = ht->next_slot[last];
    ht->next_slot[last] = HT_NONE;
    ht->next_slot[x->last] = ht->free_head;
    ht->free_head = cut;
    ht->n_free += x->n_chunks - keep;
    x->last = last;
    x->n_chunks = keep;
    x->hash = kv_hash_keys(keys, keep * ht->o.chunk_rows);
}

void ht_clear(host_tier *ht)
{
    while (ht->lru_head != HT_NONE)
        drop(ht, ht->lru_head);
}

void ht_get_stats(const host_tier *ht, ht_stats *s)
{
    *s = ht->st;
    s->slots_total = ht->o.n_slots;
    s->slots_in_use = ht->o.n_slots - ht->n_free;
    s->slots_pending = ht->n_pending;
    s->users = ht->n_live;
}

static bool fail(char *buf, size_t n, const char *fmt, ...) HSTU_PRINTF(3, 4);
static bool fail(char *buf, size_t n, const char *fmt, ...)
{
    if (buf && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, n, fmt, ap);
        va_end(ap);
    }
    return false;
}

bool ht_check(const host_tier *ht, char *buf, size_t n)
{
    int *owner = ht->scratch;
    const int FREE = -2;
    for (int s = 0; s < ht->o.n_slots; s++)
        owner[s] = HT_NONE;
    int n_free = 0;
    for (int s = ht->free_head; s != HT_NONE; s = ht->next_slot[s]) {
        if (owner[s] != HT_NONE)
            return fail(buf, n, "host tier: free list meets slot %d twice", s);
        owner[s] = FREE;
        n_free++;
    }
    if (n_free != ht->n_free)
        return fail(buf, n, "host tier: %d free slots, counter says %d", n_free, ht->n_free);
    int live = 0, used = 0, pend = 0;
    for (int i = 0; i < ht->cap; i++) {
        const ht_entry *x = &ht->e[i];
        if (!x->live)
            continue;
        live++;
        int len = 0;
        for (int s = x->first; s != HT_NONE; s = ht->next_slot[s]) {
            if (owner[s] != HT_NONE)
                return fail(buf, n, "host tier: slot %d owned twice (user %lld)", s, (long long)x->user);
            owner[s] = i;
            len++;
        }
        if (len != x->n_chunks + x->n_pend)
            return fail(buf, n, "host tier: user %lld has %d slots, %d committed + %d pending", (long long)x->user,
                        len, x->n_chunks, x->n_pend);
        if (!x->dead && find(ht, x->user) != i)
            return fail(buf, n, "host tier: user %lld found in another entry", (long long)x->user);
        used += len;
        pend += x->n_pend;
    }
    if (live != ht->n_live || used + n_free != ht->o.n_slots || pend != ht->n_pending)
        return fail(buf, n, "host tier: counts disagree (%d live vs %d, %d used + %d free of %d, %d pending vs %d)",
                    live, ht->n_live, used, n_free, ht->o.n_slots, pend, ht->n_pending);
    return true;
}
