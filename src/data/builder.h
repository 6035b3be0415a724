/* builder.h - from parsed rows to a dataset file (the writing half of dataset.h).
 *
 * A source parser adds one row per interaction (source user id, source item
 * id, time, action) in file order, optionally the contextual features of
 * each source user, and metadata; builder_write then
 *   1. remaps users and items densely in ascending order of their source ids
 *      (items from 1, 0 is padding; an already dense 1..N source keeps its ids),
 *   2. groups rows by user, keeping file order, and (when the source has
 *      timestamps) sorts each user's rows by time, ties in file order,
 *   3. applies the family's split (dataset.h),
 *   4. writes the file atomically: PATH.tmp, fsync, rename over PATH.
 * Memory: about 48 bytes per interaction while writing, plus the mapped input.
 */
#ifndef HSTU_DATA_BUILDER_H
#define HSTU_DATA_BUILDER_H

#include "data/dataset.h"
#include "hstu.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct builder_row {
    int64_t user, item, ts, action;
} builder_row;

typedef struct builder {
    hstu_family family;
    bool has_timestamps;
    int64_t ts_div;              /* rows are sorted on ts, stored as ts / ts_div (KuaiRand: ms -> s); 1 */
    int n_tasks;                 /* ranking: bits of an action id */
    builder_row *rows;
    size_t n_rows, cap_rows;
    /* ranking: contextual features by source user (set by builder_set_context) */
    int n_context;
    int64_t context_rows[HSTU_MAX_CONTEXT];
    int64_t n_ctx_users;
    int64_t *ctx_user_raw;       /* [n_ctx_users], owned */
    int64_t *ctx_ids;            /* [n_ctx_users * n_context], owned */
    json_t *meta;                /* metadata object written to the file (owned) */
    bool progress;
} builder;

typedef struct builder_options {
    int num_candidates;   /* ranking: C (default 100) */
    int max_items;        /* ranking: M (default 4196) */
    double train_frac;    /* ranking: share of users in train (default 0.7) */
} builder_options;

void builder_options_default(builder_options *o);

/* meta gets "family", "timestamps"; parsers add "source", "files", ... */
hstu_status builder_init(builder *b, hstu_family family, bool has_timestamps, int n_tasks,
                         hstu_error *err);
void builder_free(builder *b);

hstu_status builder_add(builder *b, int64_t user, int64_t item, int64_t ts, int64_t action,
                        hstu_error *err);

/* Ranking: k contextual tables of rows[j] ids each (0 = unknown); users[n]
 * source ids (distinct) with ids[n * k]. Copied. Users of the log without a
 * row here get 0 in every table (counted in meta "users_without_features"). */
hstu_status builder_set_context(builder *b, int k, const int64_t *rows, int64_t n,
                                const int64_t *users, const int64_t *ids, hstu_error *err);

typedef struct builder_stats {
    int64_t n_users, n_items, n_events, n_train_users, users_without_features;
    int64_t unsorted_users;   /* users whose rows were not in time order in the file */
} builder_stats;

hstu_status builder_write(builder *b, const builder_options *o, const char *path,
                          builder_stats *stats, hstu_error *err);

#endif
