/* sasrec.c - SASRec-style text to retrieval rows (no timestamps).
 *
 * Each line is "user item [item ...]": blank-separated non-negative
 * integers, the user first, then items in time order. This covers both
 * layouts in use: SASRec's own data files (one interaction "user item" per
 * line, a user's lines in time order) and the one-user-per-line files
 * (../shared/data/ml-1m/ml-1m.txt). A user's items are appended in file
 * order, so a user may span several lines. The source has no times: the
 * dataset stores none (docs/dataset.md says how models then see time).
 */
#include "data/prep.h"
#include "data/progress.h"
#include "data/textfile.h"

#include "core/status.h"

#include <stdlib.h>

hstu_status prep_sasrec(builder *b, const char *path, const prep_options *o, prep_report *rep,
                        hstu_error *err)
{
    text_file f;
    hstu_status st = text_open(path, &f, err);
    if (st != HSTU_OK)
        return st;
    text_bad bad = {o->skip_bad, 0};
    progress pg;
    char label[128];
    snprintf(label, sizeof label, "prep %s", path);
    progress_init(&pg, label, f.size, o->progress);
    int cap = 1 << 12;
    text_field *fl = malloc(sizeof *fl * (size_t)(cap + 1));
    if (!fl) {
        text_close(&f);
        return hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
    }
    const char *line;
    size_t len;
    while (text_next_line(&f, &line, &len)) {
        progress_update(&pg, f.pos);
        int n;
        while ((n = text_split(line, len, TEXT_SEP_BLANKS, fl, cap)) > cap) {
            text_field *g = realloc(fl, sizeof *fl * (size_t)(2 * cap + 1));
            if (!g) {
                st = hstu_fail(err, HSTU_ERR_NOMEM, "out of memory");
                goto done;
            }
            fl = g;
            cap *= 2;
        }
        if (n == 0)
            continue; /* blank line */
        if (n < 2) {
            if ((st = text_bad_row(&bad, &f, err, "a line needs a user id and at least one item id")) != HSTU_OK)
                goto done;
            continue;
        }
        int64_t user, item;
        int badf = -1;
        if (!text_parse_i64(fl[0], &user) || user < 0)
            badf = 0;
        for (int i = 1; badf < 0 && i < n; i++)
            if (!text_parse_i64(fl[i], &item) || item < 0)
                badf = i;
        if (badf >= 0) {
            int shown = fl[badf].len > 40 ? 40 : (int)fl[badf].len;
            if ((st = text_bad_row(&bad, &f, err, "field %d \"%.*s\" is not a non-negative integer %s",
                                   badf + 1, shown, fl[badf].s, badf ? "item id" : "user id")) != HSTU_OK)
                goto done;
            continue;
        }
        for (int i = 1; i < n; i++) {
            text_parse_i64(fl[i], &item);
            if ((st = builder_add(b, user, item, 0, 0, err)) != HSTU_OK)
                goto done;
            rep->rows++;
        }
    }
    progress_finish(&pg);
done:
    rep->bad_rows += bad.count;
    free(fl);
    text_close(&f);
    return st;
}
