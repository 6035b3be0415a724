/* test_config.c - config.json parsing, presets, defaults and serialisation.
 *
 * Expectations come from spec/model.md section 2, written out here by hand:
 * each preset's shape, the documented defaults, and a table of malformed
 * configs that must fail with HSTU_ERR_FORMAT and a message naming the key.
 * Round trips compare field by field (struct padding is not compared), so a
 * key that to_json forgets or parse misreads shows up by name.
 */
#include "harness.h"
#include "hstu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

/* Returns the name of the first field that differs, or NULL. */
static const char *cfg_diff(const hstu_config *a, const hstu_config *b)
{
#define CMP(f)                  \
    if (a->f != b->f)           \
        return #f;
    CMP(family) CMP(d_model) CMP(n_layers) CMP(n_heads) CMP(d_qk) CMP(d_v)
    CMP(attn_scale_len) CMP(max_positions) CMP(item_rows) CMP(action_rows) CMP(n_context)
    CMP(n_hidden) CMP(n_tasks) CMP(alpha) CMP(ln_eps) CMP(ln_affine) CMP(uvqk_bias)
    CMP(proj_bias) CMP(silu_uvqk) CMP(rab) CMP(rab_buckets) CMP(max_history)
    CMP(max_candidates)
#undef CMP
    for (int j = 0; j < HSTU_MAX_CONTEXT; j++)
        if (a->context_rows[j] != b->context_rows[j])
            return "context_rows";
    for (int j = 0; j < HSTU_MAX_HIDDEN; j++)
        if (a->hidden[j] != b->hidden[j])
            return "hidden";
    for (int j = 0; j < HSTU_MAX_TASKS; j++)
        if (memcmp(a->task_names[j], b->task_names[j], HSTU_NAME_MAX) != 0)
            return "task_names";
    return NULL;
}

/* Parses text into a struct that was filled with garbage first, so that a
 * field parse forgets to set cannot pass by luck of a zeroed struct. */
static hstu_status parse_str(const char *text, hstu_config *c, hstu_error *e)
{
    memset(c, 0xA5, sizeof *c);
    memset(e, 0, sizeof *e);
    return hstu_config_parse(text, strlen(text), c, e);
}

/* A minimal valid ranking config; the bad-config table edits copies of it. */
#define RANK_OK                                                                              \
    "{\"family\":\"ranking\",\"d_model\":64,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,"       \
    "\"d_v\":16,\"attn_scale_len\":100,\"max_positions\":101,"                              \
    "\"tables\":{\"item\":1000,\"action\":16,\"context\":[10,20]},"                          \
    "\"head\":{\"hidden\":[32],\"n_tasks\":2}}"
#define RETR_OK                                                                              \
    "{\"family\":\"retrieval\",\"d_model\":50,\"n_layers\":2,\"n_heads\":1,\"d_qk\":50,"     \
    "\"d_v\":50,\"attn_scale_len\":211,\"max_positions\":211,\"tables\":{\"item\":3417}}"

/* ---- presets ------------------------------------------------------------- */

static void test_preset_names(void)
{
    const char *const *names = hstu_preset_names();
    T_REQUIRE(names != NULL, "hstu_preset_names returned NULL");
    const char *want[] = {"kuairand-1k", "bench-8x1024", "ml-1m", "ml-1m-large"};
    int n = 0;
    while (names[n])
        n++;
    T_CHECK(n == 4, "expected 4 presets, got %d", n);
    for (int i = 0; i < 4; i++) {
        bool found = false;
        for (int j = 0; j < n; j++)
            found |= strcmp(names[j], want[i]) == 0;
        T_CHECK(found, "preset %s is not listed", want[i]);
    }
    for (int j = 0; j < n; j++) {
        hstu_config c;
        hstu_error e = {0};
        hstu_status st = hstu_config_preset(names[j], &c, &e);
        T_CHECK(st == HSTU_OK, "listed preset %s does not load: %s", names[j], e.msg);
    }
}

static void test_preset_kuairand(void)
{
    hstu_config c;
    hstu_error e = {0};
    memset(&c, 0xA5, sizeof c);
    T_REQUIRE(hstu_config_preset("kuairand-1k", &c, &e) == HSTU_OK, "%s", e.msg);
    T_CHECK(c.family == HSTU_FAMILY_RANKING, "family %d", c.family);
    T_CHECK(c.d_model == 512, "d_model %d", c.d_model);
    T_CHECK(c.n_layers == 3, "n_layers %d", c.n_layers);
    T_CHECK(c.n_heads == 4, "n_heads %d", c.n_heads);
    T_CHECK(c.d_qk == 128 && c.d_v == 128, "d_qk %d d_v %d", c.d_qk, c.d_v);
    T_CHECK(c.n_context == 6, "n_context %d", c.n_context);
    for (int j = 0; j < c.n_context && j < HSTU_MAX_CONTEXT; j++)
        T_CHECK(c.context_rows[j] >= 1, "context_rows[%d] = %lld", j, (long long)c.context_rows[j]);
    T_CHECK(c.n_tasks == 8, "n_tasks %d", c.n_tasks);
    T_CHECK(c.n_hidden == 1 && c.hidden[0] == 512, "head hidden n %d [0] %d", c.n_hidden, c.hidden[0]);
    T_CHECK(c.max_history == 4096, "max_history %d", c.max_history);
    T_CHECK(c.max_candidates == 100, "max_candidates %d", c.max_candidates);
    T_CHECK(c.item_rows >= 2 && c.action_rows >= 1, "tables item %lld action %lld",
            (long long)c.item_rows, (long long)c.action_rows);
    T_CHECK(c.rab == HSTU_RAB_NONE, "ranking rab %d", c.rab);
    /* h = k + 2n = 6 + 8192; every history row must have its own position. */
    T_CHECK(hstu_config_history_tokens(&c, 4096) == 8198, "history tokens %d",
            hstu_config_history_tokens(&c, 4096));
    T_CHECK(c.max_positions >= 8199, "max_positions %d < h + 1 = 8199", c.max_positions);
    T_CHECK(hstu_config_max_user_tokens(&c) == 8298, "max user tokens %d", hstu_config_max_user_tokens(&c));
    T_CHECK(hstu_config_uvqk_width(&c) == 2 * 4 * 128 + 2 * 4 * 128, "uvqk width %d",
            hstu_config_uvqk_width(&c));
}

static void test_preset_bench(void)
{
    hstu_config c;
    hstu_error e = {0};
    memset(&c, 0xA5, sizeof c);
    T_REQUIRE(hstu_config_preset("bench-8x1024", &c, &e) == HSTU_OK, "%s", e.msg);
    T_CHECK(c.family == HSTU_FAMILY_RANKING, "family %d", c.family);
    T_CHECK(c.d_model == 1024, "d_model %d", c.d_model);
    T_CHECK(c.n_layers == 8, "n_layers %d", c.n_layers);
    T_CHECK(c.n_heads == 4, "n_heads %d", c.n_heads);
    T_CHECK(c.d_qk == 256 && c.d_v == 256, "d_qk %d d_v %d", c.d_qk, c.d_v);
    T_CHECK(c.max_candidates == 256, "max_candidates %d", c.max_candidates);
    int h = hstu_config_history_tokens(&c, c.max_history);
    T_CHECK(h == 4096, "history tokens at max_history %d = %d, expected 4096", c.max_history, h);
    T_CHECK(hstu_config_max_user_tokens(&c) == 4096 + 256, "max user tokens %d",
            hstu_config_max_user_tokens(&c));
    T_CHECK(c.max_positions >= 4097, "max_positions %d", c.max_positions);
    T_CHECK(hstu_config_uvqk_width(&c) == 4 * 4 * 256, "uvqk width %d", hstu_config_uvqk_width(&c));
    T_CHECK(c.n_tasks >= 1, "n_tasks %d", c.n_tasks);
}

static void check_ml1m_common(const hstu_config *c)
{
    T_CHECK(c->family == HSTU_FAMILY_RETRIEVAL, "family %d", c->family);
    T_CHECK(c->d_model == 50, "d_model %d", c->d_model);
    T_CHECK(c->attn_scale_len == 211, "N %d", c->attn_scale_len);
    T_CHECK(c->action_rows == 0 && c->n_context == 0 && c->n_tasks == 0,
            "retrieval with action %lld context %d tasks %d", (long long)c->action_rows, c->n_context,
            c->n_tasks);
    T_CHECK(c->rab == HSTU_RAB_POS_TIME, "retrieval rab %d", c->rab);
    T_CHECK(c->max_candidates == 0, "retrieval max_candidates %d", c->max_candidates);
    T_CHECK(c->max_history >= 1 && c->max_history <= c->max_positions, "max_history %d max_positions %d",
            c->max_history, c->max_positions);
    T_CHECK(hstu_config_history_tokens(c, 7) == 7, "retrieval history tokens for 7 items: %d",
            hstu_config_history_tokens(c, 7));
    T_CHECK(hstu_config_max_user_tokens(c) == c->max_history, "max user tokens %d",
            hstu_config_max_user_tokens(c));
}

static void test_preset_ml1m(void)
{
    hstu_config c;
    hstu_error e = {0};
    memset(&c, 0xA5, sizeof c);
    T_REQUIRE(hstu_config_preset("ml-1m", &c, &e) == HSTU_OK, "%s", e.msg);
    check_ml1m_common(&c);
    T_CHECK(c.n_layers == 2, "n_layers %d", c.n_layers);
    T_CHECK(c.n_heads == 1, "n_heads %d", c.n_heads);
}

static void test_preset_ml1m_large(void)
{
    hstu_config c;
    hstu_error e = {0};
    memset(&c, 0xA5, sizeof c);
    T_REQUIRE(hstu_config_preset("ml-1m-large", &c, &e) == HSTU_OK, "%s", e.msg);
    check_ml1m_common(&c);
    T_CHECK(c.n_layers == 8, "n_layers %d", c.n_layers);
    T_CHECK(c.n_heads == 2, "n_heads %d", c.n_heads);
}

static void test_preset_unknown(void)
{
    hstu_config c;
    hstu_error e = {0};
    hstu_status st = hstu_config_preset("kuairand-2k", &c, &e);
    T_REQUIRE(st != HSTU_OK, "unknown preset accepted");
    T_CHECK(e.status == st, "err.status %d, returned %d", e.status, st);
    T_CHECK(strstr(e.msg, "kuairand-2k") != NULL, "message does not name the bad preset: %s", e.msg);
    for (const char *const *n = hstu_preset_names(); *n; n++)
        T_CHECK(strstr(e.msg, *n) != NULL, "message does not list %s: %s", *n, e.msg);
    /* err may be NULL */
    T_CHECK(hstu_config_preset("", &c, NULL) != HSTU_OK, "empty preset name accepted");
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults_ranking(void)
{
    hstu_config c;
    hstu_error e;
    T_REQUIRE(parse_str(RANK_OK, &c, &e) == HSTU_OK, "%s", e.msg);
    T_CHECK(fabsf(c.alpha - 0.25f) <= 1e-7f, "alpha %g, expected 1/sqrt(16) = 0.25", c.alpha);
    T_CHECK(c.ln_eps == 1e-5f, "ln_eps %g", c.ln_eps);
    T_CHECK(c.ln_affine == true, "ln_affine %d", c.ln_affine);
    T_CHECK(c.uvqk_bias == true, "uvqk_bias %d", c.uvqk_bias);
    T_CHECK(c.proj_bias == false, "proj_bias %d", c.proj_bias);
    T_CHECK(c.silu_uvqk == HSTU_SILU_ALL, "silu_uvqk %d", c.silu_uvqk);
    T_CHECK(c.rab == HSTU_RAB_NONE, "rab %d", c.rab);
    T_CHECK(c.rab_buckets == 128, "rab_buckets %d", c.rab_buckets);
    /* explicit values from the text */
    T_CHECK(c.family == HSTU_FAMILY_RANKING && c.d_model == 64 && c.n_layers == 2 && c.n_heads == 2 &&
                c.d_qk == 16 && c.d_v == 16 && c.attn_scale_len == 100 && c.max_positions == 101,
            "scalar fields misread");
    T_CHECK(c.item_rows == 1000 && c.action_rows == 16 && c.n_context == 2 && c.context_rows[0] == 10 &&
                c.context_rows[1] == 20,
            "tables misread: item %lld action %lld n_context %d", (long long)c.item_rows,
            (long long)c.action_rows, c.n_context);
    T_CHECK(c.n_hidden == 1 && c.hidden[0] == 32 && c.n_tasks == 2, "head misread");
    /* max_history default: every history row keeps its own position,
     * h = k + 2n <= max_positions - 1 (the candidates' position h). */
    int h = hstu_config_history_tokens(&c, c.max_history);
    T_CHECK(c.max_history >= 1 && h <= c.max_positions - 1, "default max_history %d gives h %d",
            c.max_history, h);
    T_CHECK(c.max_candidates >= 1, "default max_candidates %d", c.max_candidates);
}

static void test_defaults_retrieval(void)
{
    hstu_config c;
    hstu_error e;
    T_REQUIRE(parse_str(RETR_OK, &c, &e) == HSTU_OK, "%s", e.msg);
    T_CHECK(fabsf(c.alpha - 1.0f / sqrtf(50.0f)) <= 1e-7f, "alpha %g, expected 1/sqrt(50)", c.alpha);
    T_CHECK(c.ln_eps == 1e-5f, "ln_eps %g", c.ln_eps);
    T_CHECK(c.ln_affine && c.uvqk_bias && !c.proj_bias, "bool defaults %d %d %d", c.ln_affine,
            c.uvqk_bias, c.proj_bias);
    T_CHECK(c.silu_uvqk == HSTU_SILU_ALL, "silu_uvqk %d", c.silu_uvqk);
    T_CHECK(c.rab == HSTU_RAB_POS_TIME, "rab %d, expected pos_time", c.rab);
    T_CHECK(c.rab_buckets == 128, "rab_buckets %d", c.rab_buckets);
    T_CHECK(c.action_rows == 0 && c.n_context == 0 && c.n_tasks == 0 && c.n_hidden == 0,
            "retrieval has ranking fields set");
    T_CHECK(c.max_history >= 1 && c.max_history <= c.max_positions, "max_history %d", c.max_history);
    T_CHECK(c.task_names[0][0] == 0, "task_names not cleared");
}

static void test_explicit_values(void)
{
    const char *text =
        "{\"family\":\"ranking\",\"d_model\":48,\"n_layers\":1,\"n_heads\":3,\"d_qk\":8,\"d_v\":12,"
        "\"attn_scale_len\":77,\"max_positions\":300,\"tables\":{\"item\":5,\"action\":3,\"context\":[]},"
        "\"head\":{\"hidden\":[20,10,5],\"n_tasks\":3,\"task_names\":[\"a\",\"bb\",\"ccc\"]},"
        "\"alpha\":0.375,\"ln_eps\":1e-6,\"ln_affine\":false,\"uvqk_bias\":false,\"proj_bias\":true,"
        "\"silu_uvqk\":\"u\",\"rab\":\"none\",\"rab_buckets\":64,\"max_history\":17,\"max_candidates\":9}";
    hstu_config c;
    hstu_error e;
    T_REQUIRE(parse_str(text, &c, &e) == HSTU_OK, "%s", e.msg);
    T_CHECK(c.alpha == 0.375f, "alpha %g", c.alpha);
    T_CHECK(c.ln_eps == 1e-6f, "ln_eps %g", c.ln_eps);
    T_CHECK(!c.ln_affine && !c.uvqk_bias && c.proj_bias, "bools %d %d %d", c.ln_affine, c.uvqk_bias,
            c.proj_bias);
    T_CHECK(c.silu_uvqk == HSTU_SILU_U, "silu_uvqk %d", c.silu_uvqk);
    T_CHECK(c.rab_buckets == 64, "rab_buckets %d", c.rab_buckets);
    T_CHECK(c.max_history == 17 && c.max_candidates == 9, "max_history %d max_candidates %d",
            c.max_history, c.max_candidates);
    T_CHECK(c.n_context == 0, "n_context %d", c.n_context);
    T_CHECK(c.n_hidden == 3 && c.hidden[0] == 20 && c.hidden[1] == 10 && c.hidden[2] == 5, "hidden");
    T_CHECK(!strcmp(c.task_names[0], "a") && !strcmp(c.task_names[1], "bb") &&
                !strcmp(c.task_names[2], "ccc"),
            "task names %s %s %s", c.task_names[0], c.task_names[1], c.task_names[2]);
    T_CHECK(hstu_config_uvqk_width(&c) == 2 * 3 * 12 + 2 * 3 * 8, "uvqk width %d",
            hstu_config_uvqk_width(&c));
    T_CHECK(hstu_config_history_tokens(&c, 17) == 34, "history tokens %d", hstu_config_history_tokens(&c, 17));
    T_CHECK(hstu_config_max_user_tokens(&c) == 34 + 9, "max user tokens %d", hstu_config_max_user_tokens(&c));
}

/* ---- round trip ----------------------------------------------------------- */

static void round_trip(const char *label, const hstu_config *c)
{
    char *json = hstu_config_to_json(c);
    T_REQUIRE(json != NULL, "%s: to_json returned NULL", label);
    hstu_config back;
    hstu_error e;
    hstu_status st = parse_str(json, &back, &e);
    T_CHECK(st == HSTU_OK, "%s: to_json output does not parse: %s\n%s", label, e.msg, json);
    if (st == HSTU_OK) {
        const char *f = cfg_diff(c, &back);
        T_CHECK(f == NULL, "%s: field %s differs after the round trip\n%s", label, f, json);
        /* and a second pass writes the same text */
        char *json2 = hstu_config_to_json(&back);
        T_CHECK(json2 && strcmp(json, json2) == 0, "%s: to_json not stable over a round trip", label);
        free(json2);
    }
    free(json);
}

static void test_round_trip_presets(void)
{
    for (const char *const *n = hstu_preset_names(); *n; n++) {
        hstu_config c;
        hstu_error e = {0};
        memset(&c, 0, sizeof c);
        T_REQUIRE(hstu_config_preset(*n, &c, &e) == HSTU_OK, "%s: %s", *n, e.msg);
        round_trip(*n, &c);
    }
}

static void test_round_trip_custom(void)
{
    const char *texts[] = {
        /* every optional key away from its default, awkward floats */
        "{\"family\":\"ranking\",\"d_model\":48,\"n_layers\":5,\"n_heads\":3,\"d_qk\":8,\"d_v\":12,"
        "\"attn_scale_len\":77,\"max_positions\":300,"
        "\"tables\":{\"item\":123456789,\"action\":3,\"context\":[7,1,2147483648]},"
        "\"head\":{\"hidden\":[20,10,5],\"n_tasks\":3,\"task_names\":[\"a\",\"bb\",\"0123456789012345678901234567890\"]},"
        "\"alpha\":0.1234567,\"ln_eps\":3.3e-7,\"ln_affine\":false,\"uvqk_bias\":false,\"proj_bias\":true,"
        "\"silu_uvqk\":\"u\",\"rab\":\"none\",\"rab_buckets\":4096,\"max_history\":100000,\"max_candidates\":0}",
        /* ranking without names, without context key, empty hidden list */
        "{\"family\":\"ranking\",\"d_model\":1,\"n_layers\":1,\"n_heads\":1,\"d_qk\":1,\"d_v\":1,"
        "\"attn_scale_len\":1,\"max_positions\":1,\"tables\":{\"item\":1,\"action\":1},"
        "\"head\":{\"hidden\":[],\"n_tasks\":1}}",
        /* retrieval away from its defaults */
        "{\"family\":\"retrieval\",\"d_model\":30,\"n_layers\":3,\"n_heads\":5,\"d_qk\":6,\"d_v\":7,"
        "\"attn_scale_len\":13,\"max_positions\":64,\"tables\":{\"item\":99},\"rab\":\"none\","
        "\"alpha\":3,\"ln_eps\":1,\"max_history\":1,\"silu_uvqk\":\"u\",\"rab_buckets\":1}",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        hstu_config c;
        hstu_error e;
        hstu_status st = parse_str(texts[i], &c, &e);
        T_CHECK(st == HSTU_OK, "custom config %zu does not parse: %s", i, e.msg);
        if (st != HSTU_OK)
            continue;
        char label[32];
        snprintf(label, sizeof label, "custom %zu", i);
        round_trip(label, &c);
    }
    /* a struct filled in code (as hstu init would), not by the parser */
    hstu_config c;
    memset(&c, 0, sizeof c);
    c.family = HSTU_FAMILY_RETRIEVAL;
    c.d_model = 64, c.n_layers = 2, c.n_heads = 2, c.d_qk = 32, c.d_v = 16;
    c.attn_scale_len = 50, c.max_positions = 50, c.item_rows = 1001;
    c.alpha = 1.0f / 3.0f, c.ln_eps = 1e-5f, c.ln_affine = true, c.uvqk_bias = true;
    c.silu_uvqk = HSTU_SILU_ALL, c.rab = HSTU_RAB_POS_TIME, c.rab_buckets = 128, c.max_history = 50;
    round_trip("filled in code", &c);
}

/* ---- bad configs --------------------------------------------------------- */

typedef struct bad_case {
    const char *what;
    const char *json;
    const char *must_name; /* substring the message must hold */
} bad_case;

#define HEAD "{\"family\":\"ranking\",\"d_model\":64,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16,"
#define SIZES "\"attn_scale_len\":100,\"max_positions\":101,"
#define TABLES "\"tables\":{\"item\":1000,\"action\":16,\"context\":[10,20]},"
#define HEADMLP "\"head\":{\"hidden\":[32],\"n_tasks\":2}"
#define RHEAD "{\"family\":\"retrieval\",\"d_model\":50,\"n_layers\":2,\"n_heads\":1,\"d_qk\":50,\"d_v\":50,"
#define RTAIL "\"attn_scale_len\":211,\"max_positions\":211,\"tables\":{\"item\":3417}"

static const bad_case bad_cases[] = {
    {"invalid JSON", "{\"family\":\"ranking\",", "JSON"},
    {"empty text", "", "JSON"},
    {"not an object", "[1,2,3]", "object"},
    {"unknown top-level key", HEAD SIZES TABLES HEADMLP ",\"dropout\":0.1}", "dropout"},
    {"unknown key in tables", HEAD SIZES "\"tables\":{\"item\":1000,\"action\":16,\"user\":5}," HEADMLP "}",
     "tables.user"},
    {"unknown key in head", HEAD SIZES TABLES "\"head\":{\"hidden\":[32],\"n_tasks\":2,\"act\":\"relu\"}}",
     "head.act"},
    {"missing family",
     "{\"d_model\":64,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16," SIZES TABLES HEADMLP "}",
     "family"},
    {"missing d_model",
     "{\"family\":\"ranking\",\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16," SIZES TABLES HEADMLP "}",
     "d_model"},
    {"missing attn_scale_len", HEAD "\"max_positions\":101," TABLES HEADMLP "}", "attn_scale_len"},
    {"missing tables", HEAD SIZES HEADMLP "}", "tables"},
    {"missing tables.item", HEAD SIZES "\"tables\":{\"action\":16,\"context\":[]}," HEADMLP "}",
     "tables.item"},
    {"missing head (ranking)", HEAD SIZES "\"tables\":{\"item\":1000,\"action\":16,\"context\":[10,20]}}",
     "head"},
    {"missing head.n_tasks", HEAD SIZES TABLES "\"head\":{\"hidden\":[32]}}", "n_tasks"},
    {"missing tables.action (ranking)", HEAD SIZES "\"tables\":{\"item\":1000,\"context\":[]}," HEADMLP "}",
     "tables.action"},
    {"string for d_model",
     "{\"family\":\"ranking\",\"d_model\":\"64\",\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16," SIZES
     TABLES HEADMLP "}",
     "d_model"},
    {"float for n_layers",
     "{\"family\":\"ranking\",\"d_model\":64,\"n_layers\":2.0,\"n_heads\":2,\"d_qk\":16,\"d_v\":16," SIZES
     TABLES HEADMLP "}",
     "n_layers"},
    {"number for ln_affine", HEAD SIZES TABLES HEADMLP ",\"ln_affine\":1}", "ln_affine"},
    {"string for tables.item", HEAD SIZES "\"tables\":{\"item\":\"1000\",\"action\":16}," HEADMLP "}",
     "tables.item"},
    {"tables.context not a list", HEAD SIZES "\"tables\":{\"item\":1000,\"action\":16,\"context\":5}," HEADMLP
     "}",
     "tables.context"},
    {"tables.context entry 0", HEAD SIZES "\"tables\":{\"item\":1000,\"action\":16,\"context\":[3,0]},"
     HEADMLP "}",
     "tables.context[1]"},
    {"head.hidden entry negative", HEAD SIZES TABLES "\"head\":{\"hidden\":[32,-4],\"n_tasks\":2}}",
     "head.hidden[1]"},
    {"n_heads 0",
     "{\"family\":\"ranking\",\"d_model\":64,\"n_layers\":2,\"n_heads\":0,\"d_qk\":16,\"d_v\":16," SIZES
     TABLES HEADMLP "}",
     "n_heads"},
    {"d_model -1",
     "{\"family\":\"ranking\",\"d_model\":-1,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16," SIZES
     TABLES HEADMLP "}",
     "d_model"},
    {"d_model beyond int", 
     "{\"family\":\"ranking\",\"d_model\":4294967360,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16,"
     SIZES TABLES HEADMLP "}",
     "d_model"},
    {"head.n_tasks 0", HEAD SIZES TABLES "\"head\":{\"hidden\":[32],\"n_tasks\":0}}", "n_tasks"},
    {"alpha 0", HEAD SIZES TABLES HEADMLP ",\"alpha\":0}", "alpha"},
    {"alpha negative", HEAD SIZES TABLES HEADMLP ",\"alpha\":-0.5}", "alpha"},
    {"ln_eps 2", HEAD SIZES TABLES HEADMLP ",\"ln_eps\":2}", "ln_eps"},
    {"ln_eps 0", HEAD SIZES TABLES HEADMLP ",\"ln_eps\":0.0}", "ln_eps"},
    {"rab_buckets 0", HEAD SIZES TABLES HEADMLP ",\"rab_buckets\":0}", "rab_buckets"},
    {"max_candidates -1", HEAD SIZES TABLES HEADMLP ",\"max_candidates\":-1}", "max_candidates"},
    {"duplicate key", HEAD SIZES TABLES HEADMLP ",\"n_layers\":3}", "n_layers"},
    {"bad family", "{\"family\":\"ranker\",\"d_model\":64,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16,"
     SIZES TABLES HEADMLP "}",
     "family"},
    {"family not a string", "{\"family\":1,\"d_model\":64,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":16,"
     SIZES TABLES HEADMLP "}",
     "family"},
    {"bad silu_uvqk", HEAD SIZES TABLES HEADMLP ",\"silu_uvqk\":\"uv\"}", "silu_uvqk"},
    {"bad rab", HEAD SIZES TABLES HEADMLP ",\"rab\":\"alibi\"}", "rab"},
    {"rab pos_time on ranking", HEAD SIZES TABLES HEADMLP ",\"rab\":\"pos_time\"}", "rab"},
    {"action table on retrieval", RHEAD "\"attn_scale_len\":211,\"max_positions\":211,"
     "\"tables\":{\"item\":3417,\"action\":4}}",
     "action"},
    {"context tables on retrieval", RHEAD "\"attn_scale_len\":211,\"max_positions\":211,"
     "\"tables\":{\"item\":3417,\"context\":[5]}}",
     "context"},
    {"head on retrieval", RHEAD RTAIL ",\"head\":{\"hidden\":[8],\"n_tasks\":1}}", "head"},
    {"task_names too short", HEAD SIZES TABLES "\"head\":{\"hidden\":[32],\"n_tasks\":2,\"task_names\":[\"x\"]}}",
     "task_names"},
    {"task_names too long", HEAD SIZES TABLES
     "\"head\":{\"hidden\":[32],\"n_tasks\":2,\"task_names\":[\"x\",\"y\",\"z\"]}}",
     "task_names"},
    {"task name empty", HEAD SIZES TABLES "\"head\":{\"hidden\":[32],\"n_tasks\":2,\"task_names\":[\"x\",\"\"]}}",
     "task_names[1]"},
    {"max_history above max_positions (retrieval)", RHEAD RTAIL ",\"max_history\":212}", "max_history"},
    {"max_history 0 (retrieval)", RHEAD RTAIL ",\"max_history\":0}", "max_history"},
};

static const bad_case *g_bad; /* the case test_bad_config runs */

static void test_bad_config(void)
{
    const bad_case *bc = g_bad;
    hstu_config c;
    memset(&c, 0x5A, sizeof c);
    hstu_config before = c;
    hstu_error e;
    memset(&e, 0, sizeof e);
    hstu_status st = hstu_config_parse(bc->json, strlen(bc->json), &c, &e);
    T_CHECK(st == HSTU_ERR_FORMAT, "status %s, expected bad format (msg: %s)", hstu_status_name(st), e.msg);
    if (st == HSTU_OK)
        return;
    T_CHECK(e.status == st, "err.status %d differs from the returned %d", e.status, st);
    T_CHECK(strstr(e.msg, bc->must_name) != NULL, "message does not name \"%s\": %s", bc->must_name, e.msg);
    T_CHECK(memcmp(&c, &before, sizeof c) == 0, "a failed parse wrote into the output");
    /* err may be NULL */
    T_CHECK(hstu_config_parse(bc->json, strlen(bc->json), &c, NULL) == st, "status differs with err NULL");
}

/* The valid bases of the table parse, so each bad case fails for its own reason. */
static void test_bad_config_bases(void)
{
    const char *ok[] = {RANK_OK, HEAD SIZES TABLES HEADMLP "}", RHEAD RTAIL "}"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        hstu_config c;
        hstu_error e;
        T_CHECK(parse_str(ok[i], &c, &e) == HSTU_OK, "base %zu does not parse: %s", i, e.msg);
    }
    /* length is honoured: the valid text followed by junk past len */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s garbage", RANK_OK);
    hstu_config c;
    hstu_error e = {0};
    T_CHECK(hstu_config_parse(buf, strlen(RANK_OK), &c, &e) == HSTU_OK, "len not honoured: %s", e.msg);
}

/* ---- files --------------------------------------------------------------- */

static void test_load_missing(void)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/hstu_test_config_%d/nowhere/config.json", (int)getpid());
    hstu_config c;
    hstu_error e = {0};
    hstu_status st = hstu_config_load(path, &c, &e);
    T_CHECK(st == HSTU_ERR_IO, "status %s, expected i/o error", hstu_status_name(st));
    T_CHECK(strstr(e.msg, path) != NULL, "message does not name the path: %s", e.msg);
}

static void test_load_file(void)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/hstu_test_config_%d.json", (int)getpid());
    hstu_config want;
    hstu_error e = {0};
    T_REQUIRE(hstu_config_preset("kuairand-1k", &want, &e) == HSTU_OK, "%s", e.msg);
    char *json = hstu_config_to_json(&want);
    T_REQUIRE(json != NULL, "to_json NULL");
    FILE *f = fopen(path, "wb");
    T_REQUIRE(f != NULL, "cannot create %s", path);
    fputs(json, f);
    fclose(f);
    free(json);
    hstu_config got;
    memset(&got, 0xA5, sizeof got);
    hstu_status st = hstu_config_load(path, &got, &e);
    T_CHECK(st == HSTU_OK, "load: %s", e.msg);
    if (st == HSTU_OK) {
        const char *fd = cfg_diff(&want, &got);
        T_CHECK(fd == NULL, "field %s differs after save/load", fd);
    }
    /* a bad file: the parse error gets the path in front */
    f = fopen(path, "wb");
    T_REQUIRE(f != NULL, "cannot rewrite %s", path);
    fputs(HEAD SIZES TABLES HEADMLP ",\"n_heads_typo\":1}", f);
    fclose(f);
    memset(&e, 0, sizeof e);
    st = hstu_config_load(path, &got, &e);
    T_CHECK(st == HSTU_ERR_FORMAT, "bad file: status %s", hstu_status_name(st));
    T_CHECK(strstr(e.msg, path) != NULL && strstr(e.msg, "n_heads_typo") != NULL,
            "bad file: message should name the path and the key: %s", e.msg);
    /* an empty file */
    f = fopen(path, "wb");
    T_REQUIRE(f != NULL, "cannot rewrite %s", path);
    fclose(f);
    st = hstu_config_load(path, &got, &e);
    T_CHECK(st == HSTU_ERR_FORMAT, "empty file: status %s", hstu_status_name(st));
    remove(path);
}

int main(void)
{
    t_run("preset names listed and loadable", test_preset_names);
    t_run("preset kuairand-1k shape", test_preset_kuairand);
    t_run("preset bench-8x1024 shape", test_preset_bench);
    t_run("preset ml-1m shape", test_preset_ml1m);
    t_run("preset ml-1m-large shape", test_preset_ml1m_large);
    t_run("unknown preset lists the valid names", test_preset_unknown);
    t_run("defaults (ranking)", test_defaults_ranking);
    t_run("defaults (retrieval)", test_defaults_retrieval);
    t_run("explicit optional values", test_explicit_values);
    t_run("round trip: every preset", test_round_trip_presets);
    t_run("round trip: custom configs", test_round_trip_custom);
    t_run("bad-config table bases parse", test_bad_config_bases);
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        char name[160];
        snprintf(name, sizeof name, "bad config: %s", bad_cases[i].what);
        g_bad = &bad_cases[i];
        t_run(name, test_bad_config);
    }
    t_run("load: missing file is an i/o error naming the path", test_load_missing);
    t_run("load: file round trip, bad file, empty file", test_load_file);
    return t_summary();
}
