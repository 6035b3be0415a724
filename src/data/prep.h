/* prep.h - the source parsers behind `hstu prep` (one file per format).
 *
 * Each reads raw files, reports malformed rows with file and line (textfile.h),
 * and writes one dataset file through the builder (builder.h):
 *   movielens.c  MovieLens 100K u.data (tab), 1M ratings.dat ("::"), 20M
 *                ratings.csv (header userId,movieId,rating,timestamp): retrieval,
 *                with timestamps; every rating is an interaction, whatever its value.
 *   sasrec.c     SASRec-style text: each line "user item [item ...]" (one
 *                interaction per line, or one user per line), items in time
 *                order: retrieval, no timestamps.
 *   kuairand.c   KuaiRand log_standard_*.csv (+ user_features_*.csv): ranking,
 *                action id = bitmask of the eight events, contextual ids from
 *                the user features.
 *   synthetic.c  writes KuaiRand-layout CSVs with a planted signal (synthetic.h).
 */
#ifndef HSTU_DATA_PREP_H
#define HSTU_DATA_PREP_H

#include "data/builder.h"
#include "hstu.h"

#include <stdbool.h>

typedef enum prep_format {
    PREP_ML100K = 0,   /* u.data */
    PREP_ML1M,         /* ratings.dat */
    PREP_ML20M,        /* ratings.csv */
    PREP_SASREC,       /* *.txt */
    PREP_KUAIRAND,     /* log_standard_*.csv */
} prep_format;

const char *prep_format_name(prep_format f); /* "ml-100k", "ml-1m", "ml-20m", "sasrec", "kuairand" */
hstu_status prep_format_parse(const char *name, prep_format *out, hstu_error *err);
/* From the file name: u.data, ratings.dat, ratings.csv, *.txt, log_standard*.csv. */
hstu_status prep_format_guess(const char *path, prep_format *out, hstu_error *err);

/* The eight KuaiRand events in bit order (bit b = task b). */
#define KUAIRAND_TASKS 8
extern const char *const kuairand_events[KUAIRAND_TASKS];
/* NVIDIA's contextual features of KuaiRand, in table order. */
#define KUAIRAND_DEFAULT_CONTEXT \
    "user_id,user_active_degree,follow_user_num_range,fans_user_num_range,friend_user_num_range,register_days_range"

typedef struct prep_options {
    builder_options split;
    bool skip_bad;              /* count and skip malformed rows instead of failing */
    bool progress;              /* progress bar on stderr */
    const char *context;        /* kuairand: user-feature columns, comma-separated
                                   (NULL: KUAIRAND_DEFAULT_CONTEXT; "" : none) */
    const char *user_features;  /* kuairand: user_features_*.csv (NULL: no context) */
    json_t *extra_meta;         /* merged into the file's metadata (borrowed; may be NULL) */
} prep_options;

void prep_options_default(prep_options *o);

typedef struct prep_report {
    builder_stats stats;
    int64_t rows;               /* data rows read (interactions) */
    int64_t bad_rows;           /* skipped with --skip-bad */
} prep_report;

/* Parses paths[n] (several logs of one source are concatenated in order) and
 * writes out. */
hstu_status prep_run(prep_format fmt, const char *const *paths, int n, const prep_options *o,
                     const char *out, prep_report *rep, hstu_error *err);

/* Per-format entry points (prep_run dispatches). */
hstu_status prep_movielens(builder *b, prep_format fmt, const char *path, const prep_options *o,
                           prep_report *rep, hstu_error *err);
hstu_status prep_sasrec(builder *b, const char *path, const prep_options *o, prep_report *rep,
                        hstu_error *err);
hstu_status prep_kuairand_log(builder *b, const char *path, const prep_options *o, prep_report *rep,
                              hstu_error *err);
hstu_status prep_kuairand_users(builder *b, const char *path, const prep_options *o,
                                prep_report *rep, hstu_error *err);

#endif
