/* prep.c - format names and guessing, and prep_run: parse a source, write a
 * dataset. See prep.h. */
#include "data/prep.h"

#include "core/status.h"

#include <string.h>

static const char *const format_names[] = {"ml-100k", "ml-1m", "ml-20m", "sasrec", "kuairand"};

const char *prep_format_name(prep_format f) { return format_names[f]; }

hstu_status prep_format_parse(const char *name, prep_format *out, hstu_error *err)
{
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, format_names[i])) {
            *out = (prep_format)i;
            return HSTU_OK;
        }
    return hstu_fail(err, HSTU_ERR_ARG,
                     "unknown format \"%s\" (choose ml-100k, ml-1m, ml-20m, sasrec or kuairand)", name);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

hstu_status prep_format_guess(const char *path, prep_format *out, hstu_error *err)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strcmp(base, "u.data"))
        *out = PREP_ML100K;
    else if (ends_with(base, "ratings.dat"))
        *out = PREP_ML1M;
    else if (ends_with(base, "ratings.csv"))
        *out = PREP_ML20M;
    else if (!strncmp(base, "log_standard", 12) && ends_with(base, ".csv"))
        *out = PREP_KUAIRAND;
    else if (ends_with(base, ".txt"))
        *out = PREP_SASREC;
    else
        return hstu_fail(err, HSTU_ERR_ARG,
                         "%s: cannot tell the format from the name (u.data, ratings.dat, ratings.csv, "
                         "*.txt, log_standard_*.csv): give --format", path);
    return HSTU_OK;
}

const char *const kuairand_events[KUAIRAND_TASKS] = {
    "is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "is_profile_enter",
};

void prep_options_default(prep_options *o)
{
    memset(o, 0, sizeof *o);
    builder_options_default(&o->split);
}

hstu_status prep_run(prep_format fmt, const char *const *paths, int n, const prep_options *o,
                     const char *out, prep_report *rep, hstu_error *err)
{
    memset(rep, 0, sizeof *rep);
    if (n < 1)
        return hstu_fail(err, HSTU_ERR_ARG, "no input file given");
    if (fmt != PREP_KUAIRAND && fmt != PREP_SASREC && n > 1)
        return hstu_fail(err, HSTU_ERR_ARG, "%s takes one input file, %d given", prep_format_name(fmt), n);
    bool rank = fmt == PREP_KUAIRAND;
    builder b;
    hstu_status st = builder_init(&b, rank ? HSTU_FAMILY_RANKING : HSTU_FAMILY_RETRIEVAL,
                                  fmt != PREP_SASREC, rank ? KUAIRAND_TASKS : 0, err);
    if (st != HSTU_OK)
        return st;
    b.progress = o->progress;
    json_t *files = json_array();
    for (int i = 0; i < n && st == HSTU_OK; i++) {
        json_array_append_new(files, json_string(paths[i]));
        switch (fmt) {
        case PREP_ML100K:
        case PREP_ML1M:
        case PREP_ML20M: st = prep_movielens(&b, fmt, paths[i], o, rep, err); break;
        case PREP_SASREC: st = prep_sasrec(&b, paths[i], o, rep, err); break;
        case PREP_KUAIRAND: st = prep_kuairand_log(&b, paths[i], o, rep, err); break;
        }
    }
    if (st == HSTU_OK && rank)
        st = prep_kuairand_users(&b, o->user_features, o, rep, err);
    if (st == HSTU_OK) {
        char src[256];
        const char *base = strrchr(paths[0], '/');
        snprintf(src, sizeof src, "%s: %s%s", prep_format_name(fmt), base ? base + 1 : paths[0],
                 n > 1 ? " and more" : "");
        json_object_set_new(b.meta, "source", json_string(src));
        json_object_set_new(b.meta, "format", json_string(prep_format_name(fmt)));
        json_object_set(b.meta, "files", files);
        json_object_set_new(b.meta, "rows", json_integer(rep->rows));
        json_object_set_new(b.meta, "bad_rows_skipped", json_integer(rep->bad_rows));
        if (o->extra_meta)
            json_object_update(b.meta, o->extra_meta);
        st = builder_write(&b, &o->split, out, &rep->stats, err);
    }
    json_decref(files);
    builder_free(&b);
    return st;
}
