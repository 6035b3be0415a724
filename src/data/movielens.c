/* movielens.c - MovieLens ratings to retrieval rows.
 *
 * u.data (100K): user<TAB>item<TAB>rating<TAB>unix_time; ratings.dat (1M,
 * 10M): user::item::rating::unix_time; ratings.csv (20M, 25M): the header
 * userId,movieId,rating,timestamp then one rating per line. Every rating is
 * an interaction (the HSTU paper's and SASRec's MovieLens setting); the
 * rating must still be a number and the ids non-negative integers, or the
 * row is malformed. Blank lines are not rows and are skipped.
 */
#include "data/prep.h"
#include "data/progress.h"
#include "data/textfile.h"

#include "core/status.h"

#include <string.h>

hstu_status prep_movielens(builder *b, prep_format fmt, const char *path, const prep_options *o,
                           prep_report *rep, hstu_error *err)
{
    text_file f;
    hstu_status st = text_open(path, &f, err);
    if (st != HSTU_OK)
        return st;
    int sep = fmt == PREP_ML100K ? '\t' : fmt == PREP_ML1M ? TEXT_SEP_DCOLON : ',';
    text_bad bad = {o->skip_bad, 0};
    progress pg;
    char label[128];
    snprintf(label, sizeof label, "prep %s", path);
    progress_init(&pg, label, f.size, o->progress);
    const char *line;
    size_t len;
    text_field fl[5];
    static const char *const names[4] = {"user id", "item id", "rating", "timestamp"};
    if (fmt == PREP_ML20M) {
        if (!text_next_line(&f, &line, &len)) {
            st = hstu_fail(err, HSTU_ERR_FORMAT, "%s: empty file (expected the header "
                           "userId,movieId,rating,timestamp)", path);
            goto done;
        }
        static const char *const hdr[4] = {"userId", "movieId", "rating", "timestamp"};
        int n = text_split(line, len, ',', fl, 4);
        bool ok = n == 4;
        for (int i = 0; ok && i < 4; i++)
            ok = fl[i].len == strlen(hdr[i]) && !memcmp(fl[i].s, hdr[i], fl[i].len);
        if (!ok) {
            st = hstu_fail(err, HSTU_ERR_FORMAT,
                           "%s:1: the header must be userId,movieId,rating,timestamp (a ratings.csv)", path);
            goto done;
        }
    }
    while (text_next_line(&f, &line, &len)) {
        progress_update(&pg, f.pos);
        if (len == 0)
            continue;
        int n = text_split(line, len, sep, fl, 4);
        if (n != 4) {
            if ((st = text_bad_row(&bad, &f, err, "%s%d fields, expected 4 (user, item, rating, time)",
                                   n > 4 ? "more than " : "", n > 4 ? 4 : n)) != HSTU_OK)
                goto done;
            continue;
        }
        int64_t v[4];
        double rating;
        int which = -1;
        if (!text_parse_i64(fl[0], &v[0]) || v[0] < 0)
            which = 0;
        else if (!text_parse_i64(fl[1], &v[1]) || v[1] < 0)
            which = 1;
        else if (!text_parse_f64(fl[2], &rating))
            which = 2;
        else if (!text_parse_i64(fl[3], &v[3]) || v[3] < 0)
            which = 3;
        if (which >= 0) {
            int shown = fl[which].len > 40 ? 40 : (int)fl[which].len;
            if ((st = text_bad_row(&bad, &f, err, "%s \"%.*s\" is not a %s", names[which], shown,
                                   fl[which].s,
                                   which == 2 ? "number" : "non-negative integer")) != HSTU_OK)
                goto done;
            continue;
        }
        if ((st = builder_add(b, v[0], v[1], v[3], 0, err)) != HSTU_OK)
            goto done;
        rep->rows++;
    }
    progress_finish(&pg);
done:
    rep->bad_rows += bad.count;
    text_close(&f);
    return st;
}
