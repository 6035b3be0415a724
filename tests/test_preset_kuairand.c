/* test_preset_kuairand.c - the kuairand-1k preset fits KuaiRand-1K as
 * `hstu prep` writes it.
 *
 * KuaiRand-1K has 1,000 users, and its user_features_1k.csv holds, for
 * NVIDIA's five categorical features, the vocabularies the synthetic
 * generator writes (src/data/synthetic.c): user_active_degree 4 values,
 * follow_user_num_range 8, fans_user_num_range 7, friend_user_num_range 7,
 * register_days_range 7. prep gives each table's distinct values ids 1..V
 * and keeps 0 for unknown, so the tables need 1001, 5, 9, 8, 8, 8 rows. A
 * 1,000-user file from the generator (every value drawn) goes through the
 * KuaiRand parser here; the preset's context tables must equal what it
 * wrote, and dataset_check_config must accept the preset.
 */
#include "core/status.h"
#include "data/dataset.h"
#include "data/prep.h"
#include "data/synthetic.h"
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char g_dir[256];

static void test_preset_fits(void)
{
    synth_options so;
    synth_options_default(&so);
    so.users = 1000;
    so.items = 200;
    so.min_events = 3;
    so.max_events = 6;
    so.split.num_candidates = 2;
    char lp[512], up[512], out[512];
    snprintf(lp, sizeof lp, "%s/log_standard_1k.csv", g_dir);
    snprintf(up, sizeof up, "%s/user_features_1k.csv", g_dir);
    snprintf(out, sizeof out, "%s/kr.hstd", g_dir);
    synth_truth truth;
    hstu_error err = {0};
    T_REQUIRE(synth_write(&so, lp, up, &truth, &err) == HSTU_OK, "generate: %s", err.msg);
    prep_options po;
    prep_options_default(&po);
    po.user_features = up;
    po.split = so.split;
    prep_report rep;
    const char *paths[1] = {lp};
    T_REQUIRE(prep_run(PREP_KUAIRAND, paths, 1, &po, out, &rep, &err) == HSTU_OK, "prep: %s", err.msg);
    dataset *ds = NULL;
    T_REQUIRE(dataset_open(out, &ds, &err) == HSTU_OK, "open: %s", err.msg);
    const dataset_info *in = dataset_get_info(ds);
    hstu_config cfg;
    T_REQUIRE(hstu_config_preset("kuairand-1k", &cfg, &err) == HSTU_OK, "preset: %s", err.msg);
    T_CHECK(in->n_context == cfg.n_context && in->n_context == 6, "%d tables, preset %d", in->n_context,
            cfg.n_context);
    for (int j = 0; j < in->n_context && j < cfg.n_context; j++)
        T_CHECK(in->context_rows[j] == cfg.context_rows[j], "table %d: prep wrote %lld rows, the preset has %lld", j,
                (long long)in->context_rows[j], (long long)cfg.context_rows[j]);
    T_CHECK(in->n_tasks == cfg.n_tasks, "%d tasks, preset %d", in->n_tasks, cfg.n_tasks);
    T_CHECK(dataset_check_config(ds, &cfg, &err) == HSTU_OK, "the preset does not fit: %s", err.msg);
    dataset_close(ds);
}

int main(void)
{
    if (!t_tmpdir(g_dir, sizeof g_dir, "preset"))
        return 1;
    t_run("kuairand-1k's context tables = what prep writes for 1,000 KuaiRand users", test_preset_fits);
    t_rmtree(g_dir);
    return t_summary();
}
