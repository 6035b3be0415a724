/* dataset.h - the one binary dataset format: reading (mmap) and the split rules.
 *
 * `hstu prep` turns every source (MovieLens, SASRec text, KuaiRand CSV, the
 * synthetic generator) into one file of this format; training and evaluation
 * read only this. The byte layout is in docs/dataset.md: a versioned header
 * (magic "HSTUDATA", counts, a table of section offsets), 64-byte aligned
 * arrays of little-endian int64, a JSON metadata section (source, column and
 * task names, context vocabularies) and a checksum of everything after the
 * header. dataset_open maps the file read-only and validates all of it
 * (offsets inside the file, counts consistent, every id inside its table,
 * sequences and candidate ranges consistent, checksum) before returning, so
 * code reading a dataset never checks ids again.
 *
 * Contents, per user (users ordered by ascending source user id, dense index
 * u = 0..n_users-1):
 *   items[n]       dense item ids 1..n_items in time order (0 is padding; the
 *                  file keeps each dense id's source id, dataset_item_raw_id)
 *   actions[n]     ranking: action id = bitmask of the events (bit b = task b);
 *                  retrieval: NULL
 *   timestamps[n]  unix seconds, non-decreasing; NULL when the source has none
 *                  (SASRec text): feed 0 for every time (and query time), which
 *                  makes the relative time bias a constant (positions only)
 *   context[k]     ranking: one id per contextual table (0 = unknown), ids
 *                  remapped densely per table; retrieval: NULL (k = 0)
 *
 * Splits (docs/dataset.md):
 *   ranking, NVIDIA's user split: the first floor(n_users * 0.7) users are
 *     DATASET_TRAIN, the rest DATASET_TEST. For every user the candidates are
 *     the last C items of its first M items (C = 100, M = 4196 by default,
 *     fewer when the user has fewer than C + 1 items: at least one history item
 *     is kept), their actions are the labels, and the history is everything
 *     before them. Ranking has no validation split.
 *   retrieval, leave-one-out: test target = the last item, validation target =
 *     the second to last, training sequence = everything before the validation
 *     target. Users with fewer than 3 items are training-only.
 *
 * Ownership: a dataset is created by dataset_open and freed by dataset_close;
 * every pointer it hands out points into the mapping and lives until then.
 * Reading is thread-safe (nothing changes after open).
 */
#ifndef HSTU_DATA_DATASET_H
#define HSTU_DATA_DATASET_H

#include "hstu.h"

#include <stdbool.h>
#include <stdint.h>

#define DATASET_MAGIC "HSTUDATA"
#define DATASET_VERSION 1

typedef enum dataset_split {
    DATASET_TRAIN = 0,
    DATASET_VALID,
    DATASET_TEST,
} dataset_split;

const char *dataset_split_name(dataset_split s); /* "train", "valid", "test" */
hstu_status dataset_split_parse(const char *name, dataset_split *out, hstu_error *err);

typedef struct dataset dataset;

/* One user's data: pointers into the mapping (see the file comment). */
typedef struct dataset_user {
    int64_t index;              /* dense user index 0..n_users-1 */
    int64_t raw_id;             /* the source's user id */
    int n_items;
    const int64_t *items;       /* [n_items] ids 1..n_items */
    const int64_t *actions;     /* [n_items] bitmasks (ranking), NULL (retrieval) */
    const int64_t *timestamps;  /* [n_items] unix seconds, or NULL (no timestamps) */
    int n_context;
    const int64_t *context;     /* [n_context] ids (ranking), NULL when 0 tables */
    dataset_split split;        /* ranking: DATASET_TRAIN or DATASET_TEST;
                                   retrieval: DATASET_TEST for every user with >= 3
                                   items (it has all three parts), else TRAIN */
    int cand_begin, cand_end;   /* ranking: candidates are items[cand_begin..cand_end),
                                   labels actions[cand_begin..cand_end), history
                                   items[0..cand_begin); retrieval: 0, 0 */
} dataset_user;

/* What a dataset holds; sizes a model's config must cover. */
typedef struct dataset_info {
    hstu_family family;
    int version;
    int64_t n_users;
    int64_t n_events;          /* interactions (sum of n_items) */
    int64_t n_items;           /* dense item ids 1..n_items: tables.item >= n_items + 1 */
    int64_t action_rows;       /* ranking: 1 << n_tasks (tables.action); retrieval 0 */
    int n_tasks;               /* ranking: events per action bitmask (8 for KuaiRand) */
    int n_context;             /* ranking: contextual tables */
    int64_t context_rows[HSTU_MAX_CONTEXT]; /* ids 0..rows-1 (0 = unknown) */
    char context_names[HSTU_MAX_CONTEXT][HSTU_NAME_MAX];
    char task_names[HSTU_MAX_TASKS][HSTU_NAME_MAX];
    bool has_timestamps;
    int num_candidates;        /* ranking split: C */
    int max_items;             /* ranking split: M */
    int64_t n_train_users;     /* ranking: users in DATASET_TRAIN */
    int max_user_items;        /* longest user */
    char source[256];          /* e.g. "movielens-100k: u.data" */
} dataset_info;

/* Maps and validates a dataset file. Errors: HSTU_ERR_IO (cannot open/map),
 * HSTU_ERR_FORMAT (bad magic, unknown version, truncated, offsets outside
 * the file, inconsistent counts, an id outside its table, checksum mismatch),
 * each message naming the path and what is wrong. */
hstu_status dataset_open(const char *path, dataset **out, hstu_error *err);
void dataset_close(dataset *ds); /* accepts NULL */

const dataset_info *dataset_get_info(const dataset *ds);
/* User u (0 <= u < n_users; asserts). */
void dataset_get_user(const dataset *ds, int64_t u, dataset_user *out);
/* Source id of dense item id (1..n_items), 0 for id 0. */
int64_t dataset_item_raw_id(const dataset *ds, int64_t item);
/* The JSON metadata text (NUL-terminated): source files, vocabularies of the
 * context tables, split parameters, synthetic generator truths. */
const char *dataset_meta_json(const dataset *ds);

/* One retrieval evaluation example of a user (leave-one-out): the history is
 * items[0..hist_len) (the caller keeps the newest max_history of it), the
 * target items[hist_len], the query time the target's timestamp (0 without
 * timestamps). Returns false when the user has no example in that split
 * (fewer than 3 items, or split TRAIN). */
bool dataset_retrieval_example(const dataset_user *u, dataset_split split, int *hist_len,
                               int64_t *target, int64_t *query_time);

/* Checks that a model's config covers the dataset: same family, item table
 * > n_items, ranking: action table >= action_rows, n_tasks == the dataset's,
 * same number of contextual tables each large enough, max_candidates >= the
 * largest candidate range. The message says which config key to raise and
 * to what. */
hstu_status dataset_check_config(const dataset *ds, const hstu_config *cfg, hstu_error *err);

/* Fills the table sizes of cfg from the dataset (tables.item, tables.action,
 * tables.context, head.n_tasks and task names, max_candidates), keeping the
 * rest: how `hstu prep --config-out` writes a config that fits. */
void dataset_fill_config(const dataset *ds, hstu_config *cfg);

#endif
