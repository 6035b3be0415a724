/* test_data.c - hstu prep's parsers, the dataset format and the split rules.
 *
 * Every parser reads small files written here (the exact column layouts of
 * MovieLens, SASRec text and KuaiRand), and the expected datasets are
 * written out by hand: dense ids in ascending source order, rows sorted by
 * time with ties in file order, action bitmasks, contextual vocabularies,
 * candidate ranges. Malformed rows must fail with "file:line" and the reason
 * (or be counted with skip_bad). Corrupt and truncated dataset files must
 * fail to open with a message that says what is wrong. The real MovieLens
 * files under $HSTU_SHARED/data are prepped and counted when present.
 * Files live in a mkdtemp directory removed at the end.
 */
#define _XOPEN_SOURCE 700 /* POSIX */
#include "harness.h"

#include "data/builder.h"
#include "data/dataset.h"
#include "data/format.h"
#include "data/prep.h"
#include "data/synthetic.h"
#include "data/textfile.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[256];

static const char *path_of(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", g_dir, name);
    return buf;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        abort();
    }
    fputs(text, f);
    fclose(f);
}

/* Preps one source file into name.hstd and opens it; NULL on error (err filled). */
static dataset *prep_one(prep_format fmt, const char *src_name, const char *text, const prep_options *po,
                         prep_report *rep, hstu_error *err)
{
    char src[512], out[600];
    path_of(src, sizeof src, src_name);
    snprintf(out, sizeof out, "%s.hstd", src);
    write_text(src, text);
    prep_options def;
    prep_options_default(&def);
    const char *paths[1] = {src};
    memset(err, 0, sizeof *err);
    if (prep_run(fmt, paths, 1, po ? po : &def, out, rep, err) != HSTU_OK)
        return NULL;
    dataset *ds = NULL;
    if (dataset_open(out, &ds, err) != HSTU_OK)
        return NULL;
    return ds;
}

static bool arr_eq(const int64_t *a, const int64_t *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

/* ---- text helpers --------------------------------------------------------- */

static void test_text_fields(void)
{
    text_field f[8];
    const char *csv = "1,\"(0,10]\",,x";
    int n = text_split(csv, strlen(csv), ',', f, 8);
    T_REQUIRE(n == 4, "csv: %d fields, expected 4", n);
    T_CHECK(f[1].len == 6 && !memcmp(f[1].s, "(0,10]", 6), "quoted field with a comma: \"%.*s\"",
            (int)f[1].len, f[1].s);
    T_CHECK(f[2].len == 0, "empty field");
    const char *ml = "12::34::5::978300760";
    n = text_split(ml, strlen(ml), TEXT_SEP_DCOLON, f, 8);
    T_CHECK(n == 4 && f[3].len == 9, "'::' split: %d fields", n);
    const char *bl = "  7 8\t\t9 ";
    n = text_split(bl, strlen(bl), TEXT_SEP_BLANKS, f, 8);
    T_CHECK(n == 3 && f[2].len == 1 && f[2].s[0] == '9', "blank split: %d fields", n);
    T_CHECK(text_split("a,b,c", 5, ',', f, 2) == 3, "more fields than max reports max+1");
    int64_t v;
    T_CHECK(text_parse_i64((text_field){"9223372036854775807", 19}, &v) && v == INT64_MAX, "INT64_MAX");
    T_CHECK(!text_parse_i64((text_field){"9223372036854775808", 19}, &v), "overflow rejected");
    T_CHECK(!text_parse_i64((text_field){"12x", 3}, &v), "trailing garbage rejected");
    T_CHECK(!text_parse_i64((text_field){"", 0}, &v), "empty rejected");
    T_CHECK(!text_parse_i64((text_field){"-", 1}, &v), "lone sign rejected");
    T_CHECK(text_parse_i64((text_field){" -5 ", 4}, &v) && v == -5, "blanks around a number");
    double d;
    T_CHECK(text_parse_f64((text_field){"3.5", 3}, &d) && d == 3.5, "3.5");
    T_CHECK(!text_parse_f64((text_field){"nan", 3}, &d), "nan rejected");
}

/* ---- MovieLens -------------------------------------------------------------- */

/* Users 20 and 5, items 300, 7, 42, 9; user 20's rows are out of time order
 * with a tie (t = 100 twice: file order kept). */
static const char *ML100K =
    "20\t300\t4\t200\n"
    "20\t7\t5\t100\n"
    "5\t42\t3\t50\n"
    "20\t42\t1\t100\n"
    "5\t9\t2\t60\n"
    "5\t7\t2\t70\n"
    "\n";

static void check_ml_small(dataset *ds)
{
    const dataset_info *in = dataset_get_info(ds);
    T_CHECK(in->family == HSTU_FAMILY_RETRIEVAL && in->has_timestamps, "retrieval with timestamps");
    T_REQUIRE(in->n_users == 2 && in->n_items == 4 && in->n_events == 6, "counts %lld users %lld items "
              "%lld events, expected 2, 4, 6", (long long)in->n_users, (long long)in->n_items,
              (long long)in->n_events);
    /* dense items ascending by source id: 7->1, 9->2, 42->3, 300->4 */
    int64_t raw[5] = {0, 7, 9, 42, 300};
    for (int i = 0; i <= 4; i++)
        T_CHECK(dataset_item_raw_id(ds, i) == raw[i], "item %d maps to %lld, expected %lld", i,
                (long long)dataset_item_raw_id(ds, i), (long long)raw[i]);
    dataset_user u;
    dataset_get_user(ds, 0, &u); /* source user 5 */
    int64_t i5[3] = {3, 2, 1}, t5[3] = {50, 60, 70};
    T_CHECK(u.raw_id == 5 && u.n_items == 3 && arr_eq(u.items, i5, 3) && arr_eq(u.timestamps, t5, 3),
            "user 5: raw %lld, %d items", (long long)u.raw_id, u.n_items);
    T_CHECK(u.actions == NULL && u.context == NULL && u.split == DATASET_TEST, "user 5: no actions/context, evaluated");
    dataset_get_user(ds, 1, &u); /* source user 20: sorted by time, tie (7, 42) in file order */
    int64_t i20[3] = {1, 3, 4}, t20[3] = {100, 100, 200};
    T_CHECK(u.raw_id == 20 && u.n_items == 3 && arr_eq(u.items, i20, 3) && arr_eq(u.timestamps, t20, 3),
            "user 20: items %lld %lld %lld", (long long)u.items[0], (long long)u.items[1],
            (long long)u.items[2]);
}

static void test_movielens_formats(void)
{
    hstu_error err;
    prep_report rep;
    dataset *ds = prep_one(PREP_ML100K, "u.data", ML100K, NULL, &rep, &err);
    T_REQUIRE(ds, "ml-100k: %s", err.msg);
    check_ml_small(ds);
    dataset_close(ds);
    ds = prep_one(PREP_ML1M, "ratings.dat",
                  "20::300::4::200\n20::7::5::100\n5::42::3::50\n20::42::1::100\n5::9::2::60\n5::7::2::70\n",
                  NULL, &rep, &err);
    T_REQUIRE(ds, "ml-1m: %s", err.msg);
    check_ml_small(ds);
    dataset_close(ds);
    ds = prep_one(PREP_ML20M, "ratings.csv",
                  "\xEF\xBB\xBFuserId,movieId,rating,timestamp\r\n20,300,4.0,200\r\n20,7,5.0,100\r\n5,42,3.5,50\r\n"
                  "20,42,0.5,100\r\n5,9,2.0,60\r\n5,7,2.0,70\r\n",
                  NULL, &rep, &err);
    T_REQUIRE(ds, "ml-20m: %s", err.msg);
    check_ml_small(ds);
    dataset_close(ds);
}

static void test_format_guess(void)
{
    prep_format f;
    hstu_error err = {0};
    T_CHECK(prep_format_guess("/x/u.data", &f, &err) == HSTU_OK && f == PREP_ML100K, "u.data");
    T_CHECK(prep_format_guess("ml-1m/ratings.dat", &f, &err) == HSTU_OK && f == PREP_ML1M, "ratings.dat");
    T_CHECK(prep_format_guess("ratings.csv", &f, &err) == HSTU_OK && f == PREP_ML20M, "ratings.csv");
    T_CHECK(prep_format_guess("d/ml-1m.txt", &f, &err) == HSTU_OK && f == PREP_SASREC, "*.txt");
    T_CHECK(prep_format_guess("log_standard_4_08_to_4_21_1k.csv", &f, &err) == HSTU_OK && f == PREP_KUAIRAND,
            "log_standard");
    T_CHECK(prep_format_guess("data.bin", &f, &err) == HSTU_ERR_ARG && strstr(err.msg, "--format"),
            "unknown name asks for --format: %s", err.msg);
}

/* Malformed rows: the error names file:line and what is wrong; skip_bad counts. */
static void expect_bad(prep_format fmt, const char *name, const char *text, int line, const char *what)
{
    hstu_error err;
    prep_report rep;
    char want[600], p[512];
    snprintf(want, sizeof want, "%s:%d: ", path_of(p, sizeof p, name), line);
    dataset *ds = prep_one(fmt, name, text, NULL, &rep, &err);
    T_CHECK(!ds, "%s: malformed row accepted", name);
    dataset_close(ds);
    T_CHECK(err.status == HSTU_ERR_FORMAT && strstr(err.msg, want) && strstr(err.msg, what),
            "%s: message \"%s\" should contain \"%s\" and \"%s\"", name, err.msg, want, what);
}

static void test_malformed_rows(void)
{
    expect_bad(PREP_ML100K, "u.data", "1\t2\t3\t4\n1\t2\t3\n", 2, "3 fields");
    expect_bad(PREP_ML100K, "u.data", "1\t2\t3\t4\n\n1\tabc\t3\t4\n", 3, "item id \"abc\"");
    expect_bad(PREP_ML100K, "u.data", "1\t2\t3\t-4\n", 1, "timestamp");
    expect_bad(PREP_ML1M, "ratings.dat", "1::2::3::4\n1::2::x::4\n", 2, "rating \"x\"");
    expect_bad(PREP_ML20M, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4,5\n", 2, "more than 4");
    expect_bad(PREP_ML20M, "ratings.csv", "user,movie,rating,time\n1,2,3,4\n", 1, "header");
    expect_bad(PREP_SASREC, "seq.txt", "1 2 3\n2\n", 2, "at least one item");
    expect_bad(PREP_SASREC, "seq.txt", "1 2 3\n2 5 x7\n", 2, "field 3 \"x7\"");

    /* skip_bad: counted, the rest kept */
    prep_options po;
    prep_options_default(&po);
    po.skip_bad = true;
    hstu_error err;
    prep_report rep;
    fprintf(stderr, "(the next lines of skipped rows are expected)\n");
    dataset *ds = prep_one(PREP_ML100K, "u.data", "1\t2\t3\t4\nbad\n1\t3\t3\t5\n1\t4\t3\n1\t5\t1\t9\n", &po,
                           &rep, &err);
    T_REQUIRE(ds, "skip_bad: %s", err.msg);
    T_CHECK(rep.bad_rows == 2 && rep.rows == 3 && dataset_get_info(ds)->n_events == 3,
            "skip_bad: %lld bad, %lld rows, %lld events (expected 2, 3, 3)", (long long)rep.bad_rows,
            (long long)rep.rows, (long long)dataset_get_info(ds)->n_events);
    T_CHECK(strstr(dataset_meta_json(ds), "\"bad_rows_skipped\": 2") != NULL, "metadata records the skips");
    dataset_close(ds);

    /* a missing input is an i/o error naming it */
    char out[512];
    const char *paths[1] = {"/nonexistent/u.data"};
    prep_options_default(&po);
    T_CHECK(prep_run(PREP_ML100K, paths, 1, &po, path_of(out, sizeof out, "x.hstd"), &rep, &err) == HSTU_ERR_IO &&
                strstr(err.msg, "/nonexistent/u.data"),
            "missing file: %s", err.msg);
    T_CHECK(access(out, F_OK) != 0, "nothing written on error");
}

/* ---- SASRec text -------------------------------------------------------------- */

static void test_sasrec_layouts(void)
{
    hstu_error err;
    prep_report rep;
    /* one user per line, and the same data one interaction per line */
    dataset *a = prep_one(PREP_SASREC, "per_user.txt", "1 10 11 12 13\n2 11 14\n3 15 10 11\n", NULL, &rep, &err);
    T_REQUIRE(a, "per user: %s", err.msg);
    dataset *b = prep_one(PREP_SASREC, "per_row.txt",
                          "1 10\n1 11\n1 12\n1 13\n2 11\n2 14\n3 15\n3 10\n3 11\n", NULL, &rep, &err);
    T_REQUIRE(b, "per row: %s", err.msg);
    const dataset_info *ia = dataset_get_info(a), *ib = dataset_get_info(b);
    T_CHECK(ia->n_users == 3 && ia->n_items == 6 && ia->n_events == 9 && !ia->has_timestamps,
            "counts %lld %lld %lld", (long long)ia->n_users, (long long)ia->n_items, (long long)ia->n_events);
    T_CHECK(ib->n_users == 3 && ib->n_items == 6 && ib->n_events == 9, "per-row counts");
    for (int64_t u = 0; u < 3; u++) {
        dataset_user x, y;
        dataset_get_user(a, u, &x);
        dataset_get_user(b, u, &y);
        T_CHECK(x.n_items == y.n_items && arr_eq(x.items, y.items, x.n_items) && !x.timestamps && !y.timestamps,
                "user %lld differs between layouts", (long long)u);
    }
    dataset_user u;
    dataset_get_user(a, 0, &u);
    int64_t want[4] = {1, 2, 3, 4}; /* 10..13 -> 1..4 */
    T_CHECK(arr_eq(u.items, want, 4), "user 1's items in file order");
    /* splits: user 1 (4 items) valid target 12, test target 13; user 2 (2 items) train only */
    int h;
    int64_t tgt, qt;
    T_CHECK(dataset_retrieval_example(&u, DATASET_TEST, &h, &tgt, &qt) && h == 3 && tgt == 4 && qt == 0,
            "test example: history %d, target %lld", h, (long long)tgt);
    T_CHECK(dataset_retrieval_example(&u, DATASET_VALID, &h, &tgt, &qt) && h == 2 && tgt == 3,
            "valid example: history %d, target %lld", h, (long long)tgt);
    T_CHECK(!dataset_retrieval_example(&u, DATASET_TRAIN, &h, &tgt, &qt), "no train example");
    dataset_get_user(a, 1, &u);
    T_CHECK(u.split == DATASET_TRAIN && !dataset_retrieval_example(&u, DATASET_TEST, &h, &tgt, &qt),
            "a 2-item user is training-only");
    dataset_close(a);
    dataset_close(b);
}

/* ---- KuaiRand ----------------------------------------------------------------- */

#define KR_HEADER                                                                                   \
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate," \
    "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n"
#define UF_HEADER                                                                                       \
    "user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,"  \
    "follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,"    \
    "register_days,register_days_range,onehot_feat0,onehot_feat1,onehot_feat2,onehot_feat3,"           \
    "onehot_feat4,onehot_feat5,onehot_feat6,onehot_feat7,onehot_feat8,onehot_feat9,onehot_feat10,"     \
    "onehot_feat11,onehot_feat12,onehot_feat13,onehot_feat14,onehot_feat15,onehot_feat16,"             \
    "onehot_feat17\n"

/* One log row: events in the order click like follow comment forward hate long_view profile_enter. */
static void kr_row(char *buf, size_t cap, int user, int item, long long tms, const int ev[8])
{
    snprintf(buf, cap, "%d,%d,20220408,1600,%lld,%d,%d,%d,%d,%d,%d,%d,1000,2000,0,0,%d,0,1\n", user, item, tms,
             ev[0], ev[1], ev[2], ev[3], ev[4], ev[5], ev[6], ev[7]);
}

static void test_kuairand(void)
{
    /* 10 users (ids 100..109, user 105 absent from the features), user u has
     * 2 + (u - 100) * 2 items; user 100's rows are given in reverse time. */
    size_t cap = 1 << 16, n = 0;
    char *log = malloc(cap), row[256];
    n += (size_t)snprintf(log + n, cap - n, KR_HEADER);
    for (int u = 100; u < 110; u++) {
        int len = 2 + (u - 100) * 2;
        for (int j = 0; j < len; j++) {
            int jj = u == 100 ? len - 1 - j : j;
            int ev[8] = {jj % 2, jj % 3 == 0, 0, 0, 0, 0, 1, jj == 1};
            kr_row(row, sizeof row, u, 1000 + (u * 7 + jj * 13) % 50, 1649408076000LL + jj * 1500, ev);
            n += (size_t)snprintf(log + n, cap - n, "%s", row);
        }
    }
    char uf[8192];
    size_t m = (size_t)snprintf(uf, sizeof uf, UF_HEADER);
    static const char *deg[3] = {"high_active", "full_active", ""};
    static const char *fol[3] = {"\"(0,10]\"", "0", "\"(10,50]\""};
    for (int u = 109; u >= 100; u--) {
        if (u == 105)
            continue;
        m += (size_t)snprintf(uf + m, sizeof uf - m,
                              "%d,%s,0,0,0,5,%s,1,0,2,0,30,61-90,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18\n",
                              u, deg[u % 3], fol[u % 3]);
    }
    char lp[512], up[512], out[512];
    write_text(path_of(lp, sizeof lp, "log_standard_test.csv"), log);
    write_text(path_of(up, sizeof up, "user_features_test.csv"), uf);
    prep_options po;
    prep_options_default(&po);
    po.user_features = up;
    po.split.num_candidates = 3;
    po.split.max_items = 8;
    prep_report rep;
    hstu_error err = {0};
    const char *paths[1] = {lp};
    hstu_status st = prep_run(PREP_KUAIRAND, paths, 1, &po, path_of(out, sizeof out, "kr.hstd"), &rep, &err);
    T_REQUIRE(st == HSTU_OK, "prep: %s", err.msg);
    dataset *ds = NULL;
    T_REQUIRE(dataset_open(out, &ds, &err) == HSTU_OK, "open: %s", err.msg);
    const dataset_info *in = dataset_get_info(ds);
    T_CHECK(in->family == HSTU_FAMILY_RANKING && in->n_users == 10 && in->n_tasks == 8 && in->action_rows == 256,
            "ranking, 10 users, 8 tasks");
    T_CHECK(in->n_events == 110 && in->n_train_users == 7, "%lld events (110), %lld train users (7)",
            (long long)in->n_events, (long long)in->n_train_users);
    T_CHECK(in->n_context == 6 && !strcmp(in->context_names[0], "user_id") &&
                !strcmp(in->context_names[2], "follow_user_num_range"),
            "six default contextual tables");
    T_CHECK(!strcmp(in->task_names[0], "is_click") && !strcmp(in->task_names[7], "is_profile_enter"),
            "task names");
    /* vocabularies: user_id 9 values (+0), degree {full_active, high_active} (empty -> 0),
     * follow range {"(0,10]", "(10,50]", "0"} bytewise */
    T_CHECK(in->context_rows[0] == 10 && in->context_rows[1] == 3 && in->context_rows[2] == 4 &&
                in->context_rows[5] == 2,
            "table rows %lld %lld %lld %lld", (long long)in->context_rows[0], (long long)in->context_rows[1],
            (long long)in->context_rows[2], (long long)in->context_rows[5]);
    T_CHECK(rep.stats.users_without_features == 1, "one user without features");
    for (int64_t i = 0; i < 10; i++) {
        dataset_user u;
        dataset_get_user(ds, i, &u);
        int raw = 100 + (int)i, len = 2 + (int)i * 2;
        T_CHECK(u.raw_id == raw && u.n_items == len, "user %d: %d items", raw, u.n_items);
        /* times in seconds, sorted (user 100 was reversed in the file) */
        for (int j = 0; j < u.n_items; j++) {
            int64_t want_t = (1649408076000LL + j * 1500) / 1000;
            int want_a = (j % 2) | ((j % 3 == 0) << 1) | (1 << 6) | ((j == 1) << 7);
            if (u.timestamps[j] != want_t || u.actions[j] != want_a)
                t_fail_at(__FILE__, __LINE__, "user %d item %d: time %lld action %lld, expected %lld %d", raw,
                          j, (long long)u.timestamps[j], (long long)u.actions[j], (long long)want_t, want_a);
            if (dataset_item_raw_id(ds, u.items[j]) != 1000 + (raw * 7 + j * 13) % 50)
                t_fail_at(__FILE__, __LINE__, "user %d item %d: source id %lld", raw, j,
                          (long long)dataset_item_raw_id(ds, u.items[j]));
        }
        /* split: C = 3 candidates among the first M = 8 items, at least one history item */
        int mm = len < 8 ? len : 8, c = mm - 1 < 3 ? mm - 1 : 3;
        T_CHECK(u.cand_begin == mm - c && u.cand_end == mm, "user %d: candidates %d..%d, expected %d..%d", raw,
                u.cand_begin, u.cand_end, mm - c, mm);
        T_CHECK(u.split == (i < 7 ? DATASET_TRAIN : DATASET_TEST), "user %d split %d", raw, (int)u.split);
        /* context: user_id rank, degree, follow range */
        int64_t w_deg = raw == 105 ? 0 : raw % 3 == 0 ? 2 : raw % 3 == 1 ? 1 : 0;
        int64_t w_fol = raw == 105 ? 0 : raw % 3 == 0 ? 1 : raw % 3 == 1 ? 3 : 2;
        int64_t w_uid = raw == 105 ? 0 : raw < 105 ? i + 1 : i;
        T_CHECK(u.context[0] == w_uid && u.context[1] == w_deg && u.context[2] == w_fol &&
                    u.context[5] == (raw == 105 ? 0 : 1),
                "user %d context %lld %lld %lld, expected %lld %lld %lld", raw, (long long)u.context[0],
                (long long)u.context[1], (long long)u.context[2], (long long)w_uid, (long long)w_deg,
                (long long)w_fol);
    }
    T_CHECK(strstr(dataset_meta_json(ds), "\"(10,50]\"") != NULL, "vocabulary in the metadata");
    dataset_close(ds);

    /* config helpers */
    hstu_config cfg;
    T_REQUIRE(hstu_config_preset("kuairand-1k", &cfg, &err) == HSTU_OK, "preset");
    T_REQUIRE(dataset_open(out, &ds, &err) == HSTU_OK, "reopen");
    in = dataset_get_info(ds); /* the first handle's info went with dataset_close */
    T_CHECK(dataset_check_config(ds, &cfg, &err) == HSTU_OK, "kuairand-1k covers it: %s", err.msg);
    cfg.context_rows[2] = 3;
    T_CHECK(dataset_check_config(ds, &cfg, &err) == HSTU_ERR_ARG && strstr(err.msg, "follow_user_num_range") &&
                strstr(err.msg, "needs 4 rows"),
            "small table named: %s", err.msg);
    cfg.item_rows = 10;
    T_CHECK(dataset_check_config(ds, &cfg, &err) == HSTU_ERR_ARG && strstr(err.msg, "tables.item to at least"),
            "small item table: %s", err.msg);
    dataset_fill_config(ds, &cfg);
    T_CHECK(dataset_check_config(ds, &cfg, &err) == HSTU_OK && cfg.item_rows == in->n_items + 1,
            "filled config fits: %s", err.msg);
    hstu_config rc;
    hstu_config_preset("ml-1m", &rc, &err);
    T_CHECK(dataset_check_config(ds, &rc, &err) == HSTU_ERR_ARG && strstr(err.msg, "ranking data"),
            "family mismatch: %s", err.msg);
    dataset_close(ds);

    /* layout errors */
    char bad[512];
    write_text(path_of(bad, sizeof bad, "log_standard_bad.csv"),
               "user_id,video_id,date,hourmin,time_ms,is_click\n1,2,3,4,5,1\n");
    paths[0] = bad;
    T_CHECK(prep_run(PREP_KUAIRAND, paths, 1, &po, out, &rep, &err) == HSTU_ERR_FORMAT &&
                strstr(err.msg, ":1: no column \"is_like\""),
            "missing column: %s", err.msg);
    write_text(bad, KR_HEADER "1,2,20220408,1600,1000,1,0,0,0,0,0,0,1,2,0,0,0,0,1\n"
                              "1,3,20220408,1600,2000,1,0,0,0,0,0,2x,1,2,0,0,0,0,1\n");
    T_CHECK(prep_run(PREP_KUAIRAND, paths, 1, &po, out, &rep, &err) == HSTU_ERR_FORMAT &&
                strstr(err.msg, "log_standard_bad.csv:3: long_view \"2x\""),
            "bad event value: %s", err.msg);
    write_text(bad, KR_HEADER "1,2,20220408,1600,1000,1,0,0,0,0,0,0,1,2,0,0,0,0\n");
    T_CHECK(prep_run(PREP_KUAIRAND, paths, 1, &po, out, &rep, &err) == HSTU_ERR_FORMAT &&
                strstr(err.msg, ":2: 18 fields, the header has 19"),
            "short row: %s", err.msg);
    char dup[512];
    write_text(path_of(dup, sizeof dup, "user_features_dup.csv"),
               "user_id,user_active_degree\n1,high_active\n2,UNKNOWN\n1,full_active\n");
    paths[0] = lp;
    po.user_features = dup;
    po.context = "user_active_degree";
    T_CHECK(prep_run(PREP_KUAIRAND, paths, 1, &po, out, &rep, &err) == HSTU_ERR_FORMAT &&
                strstr(err.msg, "user_features_dup.csv:4: user_id 1 already has a row (line 2)"),
            "duplicate user row: %s", err.msg);
    po.context = "no_such_column";
    T_CHECK(prep_run(PREP_KUAIRAND, paths, 1, &po, out, &rep, &err) == HSTU_ERR_FORMAT &&
                strstr(err.msg, "no column \"no_such_column\""),
            "unknown context column: %s", err.msg);
    free(log);
}

/* ---- the format: round trip, corruption --------------------------------------- */

static void test_round_trip(void)
{
    /* random rows straight into the builder; every field read back */
    builder b;
    hstu_error err = {0};
    T_REQUIRE(builder_init(&b, HSTU_FAMILY_RANKING, true, 4, &err) == HSTU_OK, "init");
    uint64_t s = 12345;
    enum { U = 37, MAXN = 30 };
    int64_t len[U], items[U][MAXN], acts[U][MAXN];
    for (int u = 0; u < U; u++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        len[u] = 1 + (int64_t)((s >> 33) % MAXN);
        for (int j = 0; j < len[u]; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            items[u][j] = 5 + 3 * (int64_t)((s >> 33) % 60); /* sparse source ids */
            acts[u][j] = (int64_t)((s >> 40) % 16);
        }
    }
    /* expected dense ids: rank among the distinct source ids */
    int64_t dense[5 + 3 * 60] = {0}, n_distinct = 0;
    for (int u = 0; u < U; u++)
        for (int j = 0; j < len[u]; j++)
            dense[items[u][j]] = 1;
    for (int i = 0; i < 5 + 3 * 60; i++)
        if (dense[i])
            dense[i] = ++n_distinct;
    for (int j = 0; j < MAXN; j++) /* interleave users, as a real log does */
        for (int u = 0; u < U; u++)
            if (j < len[u])
                builder_add(&b, 1000 + u, items[u][j], 10 * j, acts[u][j], &err);
    int64_t rows[2] = {5, 3}, users[U], ids[U * 2];
    for (int u = 0; u < U; u++) {
        users[u] = 1000 + u;
        ids[2 * u] = u % 5;
        ids[2 * u + 1] = u % 3;
    }
    T_REQUIRE(builder_set_context(&b, 2, rows, U, users, ids, &err) == HSTU_OK, "context");
    json_object_set_new(b.meta, "context_names", json_pack("[s,s]", "a", "b"));
    builder_options o;
    builder_options_default(&o);
    o.num_candidates = 4;
    o.max_items = 20;
    char out[512];
    builder_stats bs;
    T_REQUIRE(builder_write(&b, &o, path_of(out, sizeof out, "rt.hstd"), &bs, &err) == HSTU_OK, "write: %s", err.msg);
    builder_free(&b);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    T_CHECK(access(tmp, F_OK) != 0, "no temporary file left behind");
    dataset *ds;
    T_REQUIRE(dataset_open(out, &ds, &err) == HSTU_OK, "open: %s", err.msg);
    const dataset_info *in = dataset_get_info(ds);
    T_CHECK(in->n_users == U && in->n_items == n_distinct && in->n_tasks == 4 && in->action_rows == 16 &&
                in->n_train_users == (int64_t)(U * 0.7) && in->num_candidates == 4 && in->max_items == 20,
            "header fields");
    for (int u = 0; u < U; u++) {
        dataset_user du;
        dataset_get_user(ds, u, &du);
        bool ok = du.raw_id == 1000 + u && du.n_items == len[u] && arr_eq(du.actions, acts[u], (int)len[u]) &&
                  du.context[0] == u % 5 && du.context[1] == u % 3;
        for (int j = 0; ok && j < len[u]; j++)
            ok = du.timestamps[j] == 10 * j && du.items[j] == dense[items[u][j]] &&
                 dataset_item_raw_id(ds, du.items[j]) == items[u][j];
        T_CHECK(ok, "user %d differs after the round trip", u);
    }
    dataset_close(ds);
}

static long file_size(const char *p)
{
    FILE *f = fopen(p, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static void copy_with(const char *src, const char *dst, long truncate_to, long flip_at, uint8_t flip,
                      long set64_at, uint64_t set64)
{
    long n = file_size(src);
    uint8_t *buf = malloc((size_t)n);
    FILE *f = fopen(src, "rb");
    if (!f || fread(buf, 1, (size_t)n, f) != (size_t)n)
        abort();
    fclose(f);
    if (flip_at >= 0)
        buf[flip_at] ^= flip;
    if (set64_at >= 0)
        memcpy(buf + set64_at, &set64, 8);
    f = fopen(dst, "wb");
    fwrite(buf, 1, (size_t)(truncate_to >= 0 ? truncate_to : n), f);
    fclose(f);
    free(buf);
}

/* Recomputes the checksum so that a header edit is caught by the field checks. */
static void fix_checksum(const char *p)
{
    long n = file_size(p);
    uint8_t *buf = malloc((size_t)n);
    FILE *f = fopen(p, "r+b");
    if (!f || fread(buf, 1, (size_t)n, f) != (size_t)n)
        abort();
    memset(buf + FMT_OFF_CHECKSUM, 0, 8);
    uint64_t h = fmt_hash_words(FMT_HASH_SEED, buf, (size_t)n);
    fseek(f, FMT_OFF_CHECKSUM, SEEK_SET);
    fwrite(&h, 1, 8, f);
    fclose(f);
    free(buf);
}

static void expect_open_fails(const char *p, hstu_status want, const char *what)
{
    dataset *ds = NULL;
    hstu_error err = {0};
    hstu_status st = dataset_open(p, &ds, &err);
    T_CHECK(st == want && !ds && strstr(err.msg, what), "expected %s containing \"%s\", got %s: %s",
            hstu_status_name(want), what, hstu_status_name(st), err.msg);
    dataset_close(ds);
}

static void test_corrupt_files(void)
{
    char good[512], bad[512];
    path_of(good, sizeof good, "rt.hstd"); /* from test_round_trip */
    path_of(bad, sizeof bad, "bad.hstd");
    long n = file_size(good);
    T_REQUIRE(n > 1024, "round-trip file missing");
    expect_open_fails("/nonexistent.hstd", HSTU_ERR_IO, "cannot open");
    copy_with(good, bad, 100, -1, 0, -1, 0);
    expect_open_fails(bad, HSTU_ERR_FORMAT, "shorter than the 512-byte header");
    copy_with(good, bad, n - 64, -1, 0, -1, 0);
    expect_open_fails(bad, HSTU_ERR_FORMAT, "truncated");
    copy_with(good, bad, -1, 0, 0x20, -1, 0);
    expect_open_fails(bad, HSTU_ERR_FORMAT, "magic");
    copy_with(good, bad, -1, -1, 0, 8, 2); /* version 2 (and the header size after it) */
    expect_open_fails(bad, HSTU_ERR_FORMAT, "version 2");
    copy_with(good, bad, -1, n - 200, 0x01, -1, 0); /* a byte of the data */
    expect_open_fails(bad, HSTU_ERR_FORMAT, "checksum mismatch");
    copy_with(good, bad, -1, -1, 0, 24, 38); /* one more user than the sections hold */
    fix_checksum(bad);
    expect_open_fails(bad, HSTU_ERR_FORMAT, "section user offsets holds");
    copy_with(good, bad, -1, -1, 0, FMT_OFF_SECTIONS + 16 * FMT_ITEMS, (uint64_t)n); /* items past the end */
    fix_checksum(bad);
    expect_open_fails(bad, HSTU_ERR_FORMAT, "lies outside");
    /* an item id outside 1..n_items, checksum made consistent: caught by the content check */
    FILE *f = fopen(good, "rb");
    uint8_t hdr[FMT_HEADER_BYTES];
    T_REQUIRE(f && fread(hdr, 1, sizeof hdr, f) == sizeof hdr, "header");
    fclose(f);
    uint64_t off = fmt_rd64(hdr + FMT_OFF_SECTIONS + 16 * FMT_ITEMS);
    copy_with(good, bad, -1, -1, 0, (long)off + 8, 999);
    fix_checksum(bad);
    expect_open_fails(bad, HSTU_ERR_FORMAT, "item 999 is outside 1..");
    write_text(bad, "not a dataset at all\n");
    expect_open_fails(bad, HSTU_ERR_FORMAT, "shorter than");
}

/* ---- synthetic -------------------------------------------------------------------- */

static void test_synthetic(void)
{
    synth_options so;
    synth_options_default(&so);
    so.users = 60;
    so.items = 300;
    so.min_events = 40;
    so.max_events = 80;
    so.split.num_candidates = 10;
    char lp[512], up[512], lp2[512], up2[512], out[512];
    synth_truth tr, tr2;
    hstu_error err = {0};
    T_REQUIRE(synth_write(&so, path_of(lp, sizeof lp, "log_standard_syn.csv"),
                          path_of(up, sizeof up, "user_features_syn.csv"), &tr, &err) == HSTU_OK,
              "generate: %s", err.msg);
    T_REQUIRE(synth_write(&so, path_of(lp2, sizeof lp2, "log_standard_syn2.csv"),
                          path_of(up2, sizeof up2, "user_features_syn2.csv"), &tr2, &err) == HSTU_OK,
              "generate again: %s", err.msg);
    long n1 = file_size(lp);
    T_CHECK(n1 > 0 && n1 == file_size(lp2) && file_size(up) == file_size(up2) && tr.events == tr2.events,
            "same seed, same files");
    T_CHECK(tr.oracle_auc[0] > 0.7 && tr.oracle_auc[6] > 0.7, "planted signal: oracle AUC click %.3f, long_view %.3f",
            tr.oracle_auc[0], tr.oracle_auc[6]);
    T_CHECK(tr.eval_candidates == (60 - 42) * 10, "%lld evaluation candidates", (long long)tr.eval_candidates);
    prep_options po;
    prep_options_default(&po);
    po.user_features = up;
    po.split = so.split;
    prep_report rep;
    const char *paths[1] = {lp};
    T_REQUIRE(prep_run(PREP_KUAIRAND, paths, 1, &po, path_of(out, sizeof out, "syn.hstd"), &rep, &err) == HSTU_OK,
              "prep the synthetic CSVs: %s", err.msg);
    dataset *ds;
    T_REQUIRE(dataset_open(out, &ds, &err) == HSTU_OK, "open: %s", err.msg);
    const dataset_info *in = dataset_get_info(ds);
    T_CHECK(in->n_users == 60 && in->n_events == tr.events && in->n_context == 6 &&
                rep.stats.users_without_features == 0 && in->context_rows[0] == 61 && in->context_rows[1] == 5,
            "synthetic dataset: %lld users, %lld events, %d tables", (long long)in->n_users,
            (long long)in->n_events, in->n_context);
    int64_t clicks = 0;
    for (int64_t u = 0; u < in->n_users; u++) {
        dataset_user du;
        dataset_get_user(ds, u, &du);
        for (int j = 0; j < du.n_items; j++)
            clicks += du.actions[j] & 1;
    }
    T_CHECK(fabs((double)clicks / (double)in->n_events - tr.base_rate[0]) < 1e-12, "click rate survives the parse");
    dataset_close(ds);
}

/* ---- the real MovieLens copies ------------------------------------------------- */

static void prep_real(const char *rel, int64_t users, int64_t items, int64_t events, bool ts)
{
    const char *shared = getenv("HSTU_SHARED");
    char src[1024], out[512];
    snprintf(src, sizeof src, "%s/data/%s", shared ? shared : "../shared", rel);
    prep_format fmt;
    hstu_error err = {0};
    prep_options po;
    prep_options_default(&po);
    prep_report rep;
    T_REQUIRE(prep_format_guess(src, &fmt, &err) == HSTU_OK, "%s", err.msg);
    const char *paths[1] = {src};
    T_REQUIRE(prep_run(fmt, paths, 1, &po, path_of(out, sizeof out, "real.hstd"), &rep, &err) == HSTU_OK,
              "%s: %s", rel, err.msg);
    dataset *ds;
    T_REQUIRE(dataset_open(out, &ds, &err) == HSTU_OK, "open: %s", err.msg);
    const dataset_info *in = dataset_get_info(ds);
    T_CHECK(in->n_users == users && in->n_items == items && in->n_events == events && in->has_timestamps == ts,
            "%s: %lld users, %lld items, %lld interactions (expected %lld, %lld, %lld)", rel,
            (long long)in->n_users, (long long)in->n_items, (long long)in->n_events, (long long)users,
            (long long)items, (long long)events);
    T_CHECK(rep.bad_rows == 0, "no bad rows");
    dataset_close(ds);
}

static void test_real_ml100k(void) { prep_real("ml-100k/u.data", 943, 1682, 100000, true); }
/* counts from ../shared/data/ml-1m/README.md (measured when the copy was made) */
static void test_real_ml1m(void) { prep_real("ml-1m/ml-1m.txt", 6039, 3416, 999572, false); }

int main(void)
{
    if (!t_tmpdir(g_dir, sizeof g_dir, "data"))
        return 1;
    t_run("text fields: csv quotes, '::', blanks, strict integers", test_text_fields);
    t_run("MovieLens u.data, ratings.dat, ratings.csv: remap, time order, ties", test_movielens_formats);
    t_run("format guessed from the file name", test_format_guess);
    t_run("malformed rows: file:line and the reason; --skip-bad counts", test_malformed_rows);
    t_run("SASRec text: per-user and per-row layouts, leave-one-out", test_sasrec_layouts);
    t_run("KuaiRand CSV: bitmask, context vocabularies, user split, candidates", test_kuairand);
    t_run("round trip through the builder", test_round_trip);
    t_run("corrupt and truncated files fail with a reason", test_corrupt_files);
    t_run("synthetic generator: deterministic, planted signal, same parser", test_synthetic);
    const char *shared = getenv("HSTU_SHARED");
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/data/ml-100k/u.data", shared ? shared : "../shared");
    if (access(probe, R_OK) == 0)
        t_run("real MovieLens 100K: 943 users, 1682 items, 100000", test_real_ml100k);
    else
        t_skip("real MovieLens 100K", "no $HSTU_SHARED/data/ml-100k");
    snprintf(probe, sizeof probe, "%s/data/ml-1m/ml-1m.txt", shared ? shared : "../shared");
    if (access(probe, R_OK) == 0)
        t_run("real MovieLens 1M (SASRec text): 6039 users, 3416 items, 999572", test_real_ml1m);
    else
        t_skip("real MovieLens 1M", "no $HSTU_SHARED/data/ml-1m");
    t_rmtree(g_dir);
    return t_summary();
}
