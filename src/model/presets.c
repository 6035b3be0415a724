/* presets.c - the shipped model configurations (spec 2).
 *
 * Each preset is a config.json text, parsed by the same strict parser as a
 * user's file, so a preset can never hold a value a user could not write.
 * Table sizes that the spec leaves open are documented in docs/config.md.
 */
#include "core/status.h"

#include <string.h>

typedef struct preset {
    const char *name;
    const char *json;
} preset;

static const preset presets[] = {
    /* KuaiRand-1K ranking, the shape of NVIDIA's HSTU inference example:
     * 6 user features, 8 event tasks, 4096 history items, 100 candidates.
     * Context tables as `hstu prep` writes KuaiRand-1K (ids 1..V, 0 for
     * unknown): user_id 1000 users -> 1001 rows, user_active_degree 4 values
     * -> 5, follow/fans/friend ranges 8/7/7 -> 9/8/8, register_days_range 7
     * -> 8 (tests/test_preset_kuairand.c). The item table is 100k hashed rows
     * here; set tables.item to the dataset's vocabulary for real data
     * (compute does not depend on it). */
    {"kuairand-1k",
     "{\"family\":\"ranking\",\"d_model\":512,\"n_layers\":3,\"n_heads\":4,\"d_qk\":128,\"d_v\":128,"
     "\"attn_scale_len\":8198,\"max_positions\":8199,"
     "\"tables\":{\"item\":100000,\"action\":256,\"context\":[1001,5,9,8,8,8]},"
     "\"head\":{\"hidden\":[512],\"n_tasks\":8,\"task_names\":[\"is_click\",\"is_like\",\"is_follow\","
     "\"is_comment\",\"is_forward\",\"is_hate\",\"long_view\",\"is_profile_enter\"]},"
     "\"max_history\":4096,\"max_candidates\":100}"},
    /* The GPU benchmark shape: 8 layers, d 1024, 4 heads x 256, history up to
     * 4096 tokens (2048 item/action pairs), 256 candidates. */
    {"bench-8x1024",
     "{\"family\":\"ranking\",\"d_model\":1024,\"n_layers\":8,\"n_heads\":4,\"d_qk\":256,\"d_v\":256,"
     "\"attn_scale_len\":4096,\"max_positions\":4097,"
     "\"tables\":{\"item\":100000,\"action\":256,\"context\":[]},"
     "\"head\":{\"hidden\":[512],\"n_tasks\":8},\"max_history\":2048,\"max_candidates\":256}"},
    /* MovieLens-1M retrieval, the HSTU paper's setting: d 50, 2 layers, one
     * head, sequences of 200 items (N = 211 as in the paper's code). Item
     * ids 1..3416 as in the SASRec-format file, 0 is padding. */
    {"ml-1m",
     "{\"family\":\"retrieval\",\"d_model\":50,\"n_layers\":2,\"n_heads\":1,\"d_qk\":50,\"d_v\":50,"
     "\"attn_scale_len\":211,\"max_positions\":211,\"tables\":{\"item\":3417},\"max_history\":200}"},
    /* HSTU-large on MovieLens-1M: 8 layers, 2 heads of 25. */
    {"ml-1m-large",
     "{\"family\":\"retrieval\",\"d_model\":50,\"n_layers\":8,\"n_heads\":2,\"d_qk\":25,\"d_v\":25,"
     "\"attn_scale_len\":211,\"max_positions\":211,\"tables\":{\"item\":3417},\"max_history\":200}"},
};

static const char *const preset_names[] = {"kuairand-1k", "bench-8x1024", "ml-1m", "ml-1m-large",
                                           NULL};

const char *const *hstu_preset_names(void) { return preset_names; }

hstu_status hstu_config_preset(const char *name, hstu_config *cfg, hstu_error *err)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(presets[i].name, name) == 0) {
            hstu_status st = hstu_config_parse(presets[i].json, strlen(presets[i].json), cfg, err);
            HSTU_ASSERT(st == HSTU_OK); /* a preset that does not parse is a bug */
            return st;
        }
    }
    return hstu_fail(err, HSTU_ERR_ARG,
                     "unknown preset \"%s\" (choose kuairand-1k, bench-8x1024, ml-1m or ml-1m-large)", name);
}
