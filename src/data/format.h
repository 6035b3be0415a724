/* format.h - the byte layout of a dataset file, shared by its writer
 * (builder.c) and reader (dataset.c). docs/dataset.md is the prose version.
 *
 * All integers little-endian. A 512-byte header, then sections, each at a
 * 64-byte aligned offset and zero-padded to a multiple of 64 bytes:
 *
 *   off  size  field
 *     0     8  magic "HSTUDATA"
 *     8     4  u32 version (1)
 *    12     4  u32 header bytes (512)
 *    16     4  u32 family (0 ranking, 1 retrieval)
 *    20     4  u32 flags (bit 0: timestamps present)
 *    24     8  i64 n_users
 *    32     8  i64 n_events
 *    40     8  i64 n_items        (dense ids 1..n_items)
 *    48     8  i64 action_rows    (ranking: 1 << n_tasks; retrieval 0)
 *    56     4  i32 n_tasks
 *    60     4  i32 n_context
 *    64     4  i32 num_candidates (ranking split C)
 *    68     4  i32 max_items      (ranking split M)
 *    72     8  i64 n_train_users
 *    80     8  u64 file bytes     (the whole file)
 *    88     8  u64 checksum       (fmt_hash of the whole file with this field zero)
 *    96   256  16 sections x {u64 offset, u64 bytes} (unused: 0, 0)
 *   352   160  zero
 */
#ifndef HSTU_DATA_FORMAT_H
#define HSTU_DATA_FORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FMT_HEADER_BYTES 512
#define FMT_ALIGN 64
#define FMT_MAX_SECTIONS 16
#define FMT_OFF_CHECKSUM 88
#define FMT_OFF_SECTIONS 96

enum fmt_section {
    FMT_USER_OFFSETS = 0, /* i64 [n_users + 1], 0 .. n_events */
    FMT_USER_RAW,         /* i64 [n_users] source user ids, ascending */
    FMT_USER_SPLIT,       /* i64 [n_users * 3] split, cand_begin, cand_end */
    FMT_ITEMS,            /* i64 [n_events] dense item ids 1..n_items */
    FMT_ACTIONS,          /* i64 [n_events] action bitmasks (ranking; empty in retrieval) */
    FMT_TIMESTAMPS,       /* i64 [n_events] unix seconds (empty without timestamps) */
    FMT_CONTEXT,          /* i64 [n_users * n_context] contextual ids */
    FMT_CONTEXT_ROWS,     /* i64 [n_context] table sizes */
    FMT_ITEM_RAW,         /* i64 [n_items + 1] source item id of each dense id (0 -> 0) */
    FMT_META,             /* JSON text, NUL-terminated */
    FMT_N_SECTIONS
};

static inline uint64_t fmt_rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* little-endian hosts only (x86-64, aarch64) */
    return v;
}
static inline uint32_t fmt_rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The checksum: a multiply-xorshift over 8-byte words (the file size is a
 * multiple of 64). Detects corruption, not tampering. */
#define FMT_HASH_SEED 0x9E3779B97F4A7C15ull
static inline uint64_t fmt_hash_words(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i + 8 <= n; i += 8) {
        h ^= fmt_rd64(p + i);
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    return h;
}

#endif
