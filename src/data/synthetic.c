/* synthetic.c - the KuaiRand-like generator. See synthetic.h for the model
 * of the planted signal. */
#include "data/synthetic.h"

#include "core/rng.h"
#include "core/status.h"
#include "data/progress.h"
#include "eval/metrics.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void synth_options_default(synth_options *o)
{
    memset(o, 0, sizeof *o);
    o->users = 1000;
    o->items = 5000;
    o->min_events = 150;
    o->max_events = 400;
    o->latent = 4;
    o->seed = 1;
    builder_options_default(&o->split);
}

/* The five categorical user features (contextual tables), KuaiRand-style
 * values; several contain commas, so the CSV quotes them. */
#define SY_FEATS 5
static const char *const feat_vals[SY_FEATS][8] = {
    {"high_active", "full_active", "middle_active", "UNKNOWN"},
    {"0", "(0,10]", "(10,50]", "(50,100]", "(100,150]", "(150,250]", "(250,500]", "500+"},
    {"0", "[1,10)", "[10,100)", "[100,1k)", "[1k,5k)", "[5k,1w)", "[1w,10w)"},
    {"0", "[1,5)", "[5,30)", "[30,60)", "[60,120)", "[120,250)", "250+"},
    {"15-30", "31-60", "61-90", "91-180", "181-365", "366-730", "730+"},
};
static const int feat_n[SY_FEATS] = {4, 8, 7, 7, 7};

/* Base rates of the eight events, as logits (click common, follow rare). */
static const double task_bias[KUAIRAND_TASKS] = {-0.5, -2.8, -4.0, -3.6, -3.6, -4.2, -1.0, -2.8};

static double normal(rng *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void csv_value(FILE *fp, const char *s)
{
    if (strchr(s, ','))
        fprintf(fp, "\"%s\"", s);
    else
        fputs(s, fp);
}

static char *tmp_name(const char *path)
{
    size_t n = strlen(path);
    char *t = malloc(n + 5);
    if (t) {
        memcpy(t, path, n);
        memcpy(t + n, ".tmp", 5);
    }
    return t;
}

static hstu_status finish_file(FILE *fp, const char *tmp, const char *path, hstu_error *err)
{
    bool ok = !ferror(fp);
    ok = (fclose(fp) == 0) && ok;
    if (!ok) {
        unlink(tmp);
        return hstu_fail(err, HSTU_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return hstu_fail(err, HSTU_ERR_IO, "%s: cannot rename %s over it: %s", path, tmp, strerror(errno));
    }
    return HSTU_OK;
}

hstu_status synth_write(const synth_options *o, const char *log_path, const char *users_path,
                        synth_truth *truth, hstu_error *err)
{
    memset(truth, 0, sizeof *truth);
    if (o->users < 2 || o->items < 2 || o->min_events < 1 || o->max_events < o->min_events ||
        o->latent < 1 || o->latent > 64)
        return hstu_fail(err, HSTU_ERR_ARG,
                         "synthetic: need users >= 2, items >= 2, 1 <= min events <= max events, latent 1..64 "
                         "(got %lld, %lld, %d..%d, %d)", (long long)o->users, (long long)o->items,
                         o->min_events, o->max_events, o->latent);
    const int L = o->latent, T = KUAIRAND_TASKS;
    const int64_t U = o->users, I = o->items;
    hstu_status st = HSTU_OK;
    rng r = {o->seed * 0x2545F4914F6CDD1Dull + 7};
    double *z = malloc(sizeof(double) * (size_t)(I * L));
    double *cdf = malloc(sizeof(double) * (size_t)I);
    double *p = malloc(sizeof(double) * (size_t)L);
    int *feat = malloc(sizeof(int) * (size_t)(U * SY_FEATS));
    /* oracle: probabilities and labels of the evaluation split's candidates */
    int C = o->split.num_candidates;
    int64_t n_train = (int64_t)((double)U * o->split.train_frac);
    size_t cap_eval = (size_t)(U - n_train) * (size_t)C + 1;
    float *ev_p = malloc(sizeof(float) * cap_eval * T);
    uint8_t *ev_y = malloc(cap_eval * T);
    float *col_p = malloc(sizeof(float) * cap_eval);
    uint8_t *col_y = malloc(cap_eval);
    void *scratch = malloc(eval_auc_scratch_bytes(cap_eval));
    char *ltmp = tmp_name(log_path), *utmp = tmp_name(users_path);
    FILE *lf = NULL, *uf = NULL;
    if (!z || !cdf || !p || !feat || !ev_p || !ev_y || !col_p || !col_y || !scratch || !ltmp || !utmp) {
        st = hstu_fail(err, HSTU_ERR_NOMEM, "synthetic: out of memory");
        goto done;
    }
    double eff[KUAIRAND_TASKS][8];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < 8; c++)
            eff[t][c] = 1.5 * (2.0 * rng_uniform(&r) - 1.0);
    double total = 0;
    for (int64_t i = 0; i < I; i++) {
        for (int l = 0; l < L; l++)
            z[i * L + l] = normal(&r);
        total += pow((double)i + 10.0, -0.8); /* item i's popularity: Zipf-like */
        cdf[i] = total;
    }

    if (!(uf = fopen(utmp, "w"))) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot create: %s", utmp, strerror(errno));
        goto done;
    }
    fputs("user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,"
          "follow_user_num,follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,"
          "friend_user_num_range,register_days,register_days_range", uf);
    for (int j = 0; j < 18; j++)
        fprintf(uf, ",onehot_feat%d", j);
    fputc('\n', uf);
    for (int64_t u = 0; u < U; u++) {
        int *f = feat + u * SY_FEATS;
        for (int j = 0; j < SY_FEATS; j++)
            f[j] = (int)rng_below(&r, feat_n[j]);
        fprintf(uf, "%lld,", (long long)u);
        csv_value(uf, feat_vals[0][f[0]]);
        fprintf(uf, ",%d,%d,%d,%d,", (int)rng_below(&r, 2), (int)rng_below(&r, 2), (int)rng_below(&r, 2),
                f[1] * 40 + (int)rng_below(&r, 40));
        csv_value(uf, feat_vals[1][f[1]]);
        fprintf(uf, ",%d,", f[2] * 300 + (int)rng_below(&r, 300));
        csv_value(uf, feat_vals[2][f[2]]);
        fprintf(uf, ",%d,", f[3] * 20 + (int)rng_below(&r, 20));
        csv_value(uf, feat_vals[3][f[3]]);
        fprintf(uf, ",%d,", 15 + f[4] * 100 + (int)rng_below(&r, 100));
        csv_value(uf, feat_vals[4][f[4]]);
        for (int j = 0; j < 18; j++)
            fprintf(uf, ",%d", (int)rng_below(&r, j < 6 ? 8 : 50));
        fputc('\n', uf);
    }
    st = finish_file(uf, utmp, users_path, err);
    uf = NULL;
    if (st != HSTU_OK)
        goto done;

    if (!(lf = fopen(ltmp, "w"))) {
        st = hstu_fail(err, HSTU_ERR_IO, "%s: cannot create: %s", ltmp, strerror(errno));
        goto done;
    }
    fputs("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,"
          "is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,"
          "is_profile_enter,is_rand,tab\n", lf);
    progress pg;
    progress_init(&pg, "synthetic", (uint64_t)U, o->progress);
    const int64_t t_base = 1649376000000LL; /* 2022-04-08 00:00 UTC, in ms */
    int64_t n_eval = 0, positives[KUAIRAND_TASKS] = {0};
    for (int64_t u = 0; u < U; u++) {
        progress_update(&pg, (uint64_t)u);
        for (int l = 0; l < L; l++)
            p[l] = normal(&r) / sqrt((double)L);
        int n = o->min_events + (int)rng_below(&r, o->max_events - o->min_events + 1);
        int m = n < o->split.max_items ? n : o->split.max_items;
        int c = m - 1 < C ? m - 1 : C;
        bool eval_user = u >= n_train;
        int64_t tms = t_base + rng_below(&r, 86400000LL);
        int64_t prev = 0;
        for (int e = 0; e < n; e++) {
            double x = rng_uniform(&r) * total;
            int64_t lo = 0, hi = I - 1;
            while (lo < hi) {
                int64_t mid = (lo + hi) / 2;
                if (cdf[mid] < x)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            int64_t item = lo;
            const double *zi = z + item * L;
            double dot = 0;
            for (int l = 0; l < L; l++)
                dot += p[l] * zi[l];
            int64_t action = 0;
            bool cand = eval_user && e >= m - c && e < m;
            for (int t = 0; t < T; t++) {
                double logit = task_bias[t] + eff[t][feat[u * SY_FEATS + t % SY_FEATS]] + 1.5 * dot +
                               0.8 * zi[t % L] + 0.7 * (double)((prev >> t) & 1);
                double prob = 1.0 / (1.0 + exp(-logit));
                int y = rng_uniform(&r) < prob;
                action |= (int64_t)y << t;
                positives[t] += y;
                if (cand) {
                    ev_p[(size_t)n_eval * T + t] = (float)prob;
                    ev_y[(size_t)n_eval * T + t] = (uint8_t)y;
                }
            }
            n_eval += cand;
            tms += 5000 + rng_below(&r, 115000);
            time_t secs = (time_t)(tms / 1000) + 8 * 3600; /* Beijing time, as KuaiRand's date */
            struct tm tmv;
            gmtime_r(&secs, &tmv);
            int64_t dur = 5000 + rng_below(&r, 120000);
            int64_t play = (action & 64) ? dur + rng_below(&r, dur) : rng_below(&r, dur);
            fprintf(lf, "%lld,%lld,%04d%02d%02d,%d00,%lld", (long long)u, (long long)item,
                    tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday, tmv.tm_hour, (long long)tms);
            for (int t = 0; t < 7; t++) /* is_click .. long_view: bits 0..6 */
                fprintf(lf, ",%d", (int)((action >> t) & 1));
            fprintf(lf, ",%lld,%lld,%lld,%lld,%d,0,%d\n", (long long)play, (long long)dur,
                    (long long)((action & 128) ? rng_below(&r, 20000) : 0),
                    (long long)((action & 8) ? rng_below(&r, 30000) : 0), (int)((action >> 7) & 1),
                    (int)rng_below(&r, 15));
            prev = action;
            truth->events++;
        }
    }
    progress_finish(&pg);
    st = finish_file(lf, ltmp, log_path, err);
    lf = NULL;
    if (st != HSTU_OK)
        goto done;
    truth->eval_candidates = n_eval;
    for (int t = 0; t < T; t++) {
        truth->base_rate[t] = truth->events ? (double)positives[t] / (double)truth->events : 0;
        for (int64_t i = 0; i < n_eval; i++) {
            col_p[i] = ev_p[(size_t)i * T + t];
            col_y[i] = ev_y[(size_t)i * T + t];
        }
        truth->oracle_auc[t] = eval_auc(col_p, col_y, (size_t)n_eval, scratch);
    }
done:
    if (uf) {
        fclose(uf);
        unlink(utmp);
    }
    if (lf) {
        fclose(lf);
        unlink(ltmp);
    }
    free(ltmp);
    free(utmp);
    free(z);
    free(cdf);
    free(p);
    free(feat);
    free(ev_p);
    free(ev_y);
    free(col_p);
    free(col_y);
    free(scratch);
    return st;
}
