/* test_serve.c - `hstu serve` over real sockets on loopback.
 *
 * A server is started in this process (serve_start, free ports) on a
 * repository of two small random models (ranking "hstu", retrieval "retr");
 * a plain-socket client (src/serve/http_client.c) talks to it.
 * - every endpoint of spec/serving.md section 1, and /metrics;
 * - served scores against `hstu infer` on the same requests (relative error
 *   <= 1e-6), sent by concurrent clients so batches mix users and requests;
 * - a table of bad requests, each answered with its status and a message,
 *   then a good request still right and the cache still used;
 * - binary tensor data in and out, mixed with JSON;
 * - queue full (503), request timeout (503, never computed), a client that
 *   disconnects mid-body, a slow client cut by the connection timeout;
 * - statistics and metrics counters; the Triton HSTU example interface;
 * - the request path allocates nothing in steady state: every malloc of the
 *   process is counted (interposed, or ASan's allocator hooks) while one
 *   client sends requests of every kind, and attributed by backtrace to the
 *   library that asked; the JSON arena's cap (413) and the body buffer
 *   pool's bound (503);
 * - `hstu serve` as a process: SIGTERM finishes a queued request, exit 0.
 */
#include "harness.h"

#include "serve/http_client.h"
#include "serve/serve.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <execinfo.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
/* libasan's (sanitizer/allocator_interface.h, which gcc does not install) */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));
#endif

#define HOST "127.0.0.1"

static const char *rank_cfg =
    "{\"family\":\"ranking\",\"d_model\":32,\"n_layers\":2,\"n_heads\":2,\"d_qk\":16,\"d_v\":8,"
    "\"attn_scale_len\":150,\"max_positions\":120,\"tables\":{\"item\":500,\"action\":16,\"context\":[7,5]},"
    "\"head\":{\"hidden\":[16],\"n_tasks\":3},\"max_history\":50,\"max_candidates\":9}";
static const char *retr_cfg =
    "{\"family\":\"retrieval\",\"d_model\":24,\"n_layers\":2,\"n_heads\":2,\"d_qk\":12,\"d_v\":8,"
    "\"attn_scale_len\":20,\"max_positions\":96,\"tables\":{\"item\":300},\"max_history\":64}";
#define T_TASKS 3

static char repo_dir[256];
static server *srv;
static int port, mport;

static const char *hstu_bin(void)
{
    static char path[512];
    const char *b = getenv("BUILD");
    snprintf(path, sizeof path, "%s/hstu", b && *b ? b : "build");
    return path;
}

static bool save_model(const char *json, const char *name, uint64_t seed)
{
    hstu_config cfg;
    hstu_error err = {0};
    hstu_model *m = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", repo_dir, name);
    bool ok = hstu_config_parse(json, strlen(json), &cfg, &err) == HSTU_OK &&
              hstu_model_create_random(&cfg, seed, &m, &err) == HSTU_OK &&
              hstu_model_save(m, dir, HSTU_DTYPE_F32, &err) == HSTU_OK;
    if (!ok)
        t_fail_at(__FILE__, __LINE__, "model %s: %s", name, err.msg);
    hstu_model_destroy(m);
    return ok;
}

static int post(const char *path, const char *body, hc_response *r)
{
    return hc_call(HOST, port, "POST", path, NULL, body, strlen(body), r);
}

static int get(const char *path, hc_response *r) { return hc_call(HOST, port, "GET", path, NULL, NULL, 0, r); }

static json_t *body_json(const hc_response *r) { return json_loadb(r->body, r->len, 0, NULL); }

/* The error message of a reply, or "" */
static const char *err_of(const hc_response *r, char *buf, size_t n)
{
    json_t *o = body_json(r);
    snprintf(buf, n, "%s", o && json_string_value(json_object_get(o, "error")) ? json_string_value(json_object_get(o, "error")) : "");
    json_decref(o);
    return buf;
}

/* ---- simulated users --------------------------------------------------------- */

#define NU 24        /* ranking users */
#define NR 4         /* rounds (requests per user) */
#define MAXH 50

typedef struct user_seq {
    int64_t id, ctx[2], items[MAXH], actions[MAXH];
    int n[NR];                  /* history length of each round */
    int m[NR];
    int64_t cands[NR][9];
    float got[NR][9 * T_TASKS]; /* served */
    float want[NR][9 * T_TASKS]; /* hstu infer */
} user_seq;

static user_seq users[NU];

static uint64_t rng_state = 12345;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void make_users(void)
{
    for (int u = 0; u < NU; u++) {
        user_seq *s = &users[u];
        memset(s, 0, sizeof *s);
        s->id = 1000 + u * 7;
        s->ctx[0] = (int64_t)(rnd() % 7);
        s->ctx[1] = (int64_t)(rnd() % 5);
        for (int i = 0; i < MAXH; i++) {
            s->items[i] = 1 + (int64_t)(rnd() % 499);
            s->actions[i] = (int64_t)(rnd() % 16);
        }
        int n = (int)(rnd() % 4); /* 0-item histories too */
        for (int r = 0; r < NR; r++) {
            s->n[r] = n;
            n += 1 + (int)(rnd() % 12);
            if (n > MAXH)
                n = MAXH;
            s->m[r] = (int)(rnd() % 10); /* 0..9 candidates */
            for (int c = 0; c < s->m[r]; c++)
                s->cands[r][c] = (int64_t)(rnd() % 500);
        }
    }
}

static json_t *ints(const int64_t *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(v[i]));
    return a;
}

static json_t *input(const char *name, json_t *shape, json_t *data)
{
    return json_pack("{ss ss so so}", "name", name, "datatype", "INT64", "shape", shape, "data", data);
}

/* A ranking infer body for round r of users us[0..B). */
static char *rank_body(user_seq **us, int B, int r)
{
    json_t *uid = json_array(), *hl = json_array(), *it = json_array(), *ac = json_array(), *cx = json_array(),
           *cl = json_array(), *cd = json_array();
    int N = 0, M = 0;
    for (int b = 0; b < B; b++) {
        user_seq *s = us[b];
        json_array_append_new(uid, json_integer(s->id));
        json_array_append_new(hl, json_integer(s->n[r]));
        json_array_append_new(cl, json_integer(s->m[r]));
        for (int i = 0; i < s->n[r]; i++) {
            json_array_append_new(it, json_integer(s->items[i]));
            json_array_append_new(ac, json_integer(s->actions[i]));
        }
        json_array_append_new(cx, ints(s->ctx, 2));
        for (int c = 0; c < s->m[r]; c++)
            json_array_append_new(cd, json_integer(s->cands[r][c]));
        N += s->n[r];
        M += s->m[r];
    }
    json_t *in = json_array();
    json_array_append_new(in, input("USER_IDS", json_pack("[i]", B), uid));
    json_array_append_new(in, input("HISTORY_LENGTHS", json_pack("[i]", B), hl));
    json_array_append_new(in, input("ITEM_IDS", json_pack("[i]", N), it));
    json_array_append_new(in, input("ACTION_IDS", json_pack("[i]", N), ac));
    json_array_append_new(in, input("CONTEXT_IDS", json_pack("[ii]", B, 2), cx));
    json_array_append_new(in, input("CANDIDATE_LENGTHS", json_pack("[i]", B), cl));
    json_array_append_new(in, input("CANDIDATE_IDS", json_pack("[i]", M), cd));
    json_t *o = json_pack("{ss so}", "id", "t", "inputs", in);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

/* Reads SCORES of a reply into per-user rows. */
static bool take_scores(const hc_response *r, user_seq **us, int B, int round)
{
    json_t *o = body_json(r);
    json_t *out = json_array_get(json_object_get(o, "outputs"), 0);
    json_t *data = json_object_get(out, "data");
    json_t *shape = json_object_get(out, "shape");
    bool ok = json_is_array(data) && strcmp(json_string_value(json_object_get(out, "name")), "SCORES") == 0 &&
              json_integer_value(json_array_get(shape, 1)) == T_TASKS;
    size_t k = 0;
    for (int b = 0; b < B && ok; b++)
        for (int i = 0; i < us[b]->m[round] * T_TASKS; i++) {
            json_t *x = json_array_get(data, k++);
            ok = json_is_number(x);
            us[b]->got[round][i] = ok ? (float)json_number_value(x) : NAN;
        }
    ok = ok && k == json_array_size(data);
    json_decref(o);
    return ok;
}

/* ---- server fixture ------------------------------------------------------------ */

static bool start_server(void)
{
    snprintf(repo_dir, sizeof repo_dir, "/tmp/hstu_test_serve_XXXXXX");
    if (!mkdtemp(repo_dir)) {
        t_fail_at(__FILE__, __LINE__, "mkdtemp failed");
        return false;
    }
    if (!save_model(rank_cfg, "hstu", 1) || !save_model(retr_cfg, "retr", 2))
        return false;
    serve_options o;
    serve_options_default(&o);
    o.model_repository = repo_dir;
    o.host = HOST;
    o.http_port = 0;
    o.metrics_port = 0;
    o.max_batch = 8;
    o.max_queue_delay_us = 2000;
    o.queue_size = 32;
    o.conn_timeout_s = 2;
    o.max_body = 1 << 20;
    o.cache_bytes = 16 << 20;
    o.threads = 2;
    hstu_error err = {0};
    if (serve_start(&o, &srv, &err) != HSTU_OK) {
        t_fail_at(__FILE__, __LINE__, "serve_start: %s", err.msg);
        return false;
    }
    port = serve_http_port(srv);
    mport = serve_metrics_port(srv);
    return true;
}

/* ---- cases ------------------------------------------------------------------------ */

static void test_endpoints(void)
{
    hc_response r;
    char e[512];
    T_REQUIRE(get("/v2/health/live", &r) == 0 && r.status == 200 && r.len == 0, "live: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2/health/ready", &r) == 0 && r.status == 200 && r.len == 0, "ready: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2", &r) == 0 && r.status == 200, "server metadata: %d", r.status);
    json_t *o = body_json(&r);
    T_CHECK(o && !strcmp(json_string_value(json_object_get(o, "name")), "hstu") &&
                json_array_size(json_object_get(o, "extensions")) == 4,
            "server metadata: %s", r.body);
    json_decref(o);
    hc_response_free(&r);
    /* model metadata: -1 for variable dims */
    T_CHECK(get("/v2/models/hstu", &r) == 0 && r.status == 200, "metadata: %d", r.status);
    o = body_json(&r);
    json_t *ins = json_object_get(o, "inputs");
    T_CHECK(json_array_size(ins) == 7, "ranking has 7 inputs: %s", r.body);
    T_CHECK(json_integer_value(json_array_get(json_object_get(json_array_get(ins, 0), "shape"), 0)) == -1,
            "USER_IDS shape [-1]");
    json_t *out0 = json_array_get(json_object_get(o, "outputs"), 0);
    T_CHECK(!strcmp(json_string_value(json_object_get(out0, "name")), "SCORES") &&
                json_integer_value(json_array_get(json_object_get(out0, "shape"), 1)) == T_TASKS,
            "SCORES [-1, T]: %s", r.body);
    json_decref(o);
    hc_response_free(&r);
    T_CHECK(get("/v2/models/retr/versions/1", &r) == 0 && r.status == 200 && strstr(r.body, "TOPK_IDS"),
            "retrieval metadata: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2/models/hstu/ready", &r) == 0 && r.status == 200, "model ready: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2/models/nope/ready", &r) == 0 && r.status == 404, "unknown model ready: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2/models/hstu/versions/2", &r) == 0 && r.status == 404, "unknown version: %d", r.status);
    hc_response_free(&r);
    /* config */
    T_CHECK(get("/v2/models/hstu/config", &r) == 0 && r.status == 200, "config: %d", r.status);
    o = body_json(&r);
    T_CHECK(json_integer_value(json_object_get(o, "max_batch_size")) == 0 &&
                json_integer_value(json_object_get(json_object_get(o, "dynamic_batching"),
                                                   "max_queue_delay_microseconds")) == 2000 &&
                json_array_size(json_object_get(o, "instance_group")) == 1 &&
                json_array_size(json_object_get(o, "input")) == 7,
            "config: %s", r.body);
    json_decref(o);
    hc_response_free(&r);
    /* repository */
    T_CHECK(post("/v2/repository/index", "", &r) == 0 && r.status == 200 && strstr(r.body, "\"READY\""),
            "index: %d %s", r.status, r.body ? r.body : "");
    hc_response_free(&r);
    T_CHECK(post("/v2/repository/models/retr/unload", "", &r) == 0 && r.status == 200, "unload: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2/models/retr/ready", &r) == 0 && r.status == 400, "unloaded not ready: %d", r.status);
    hc_response_free(&r);
    T_CHECK(post("/v2/models/retr/infer", "{}", &r) == 0 && r.status == 503, "infer on unloaded: %d %s", r.status,
            err_of(&r, e, sizeof e));
    hc_response_free(&r);
    T_CHECK(post("/v2/repository/index", "{\"ready\":false}", &r) == 0 && strstr(r.body, "UNAVAILABLE"),
            "index shows the unloaded model: %s", r.body ? r.body : "");
    hc_response_free(&r);
    T_CHECK(post("/v2/repository/models/retr/load", "", &r) == 0 && r.status == 200, "load: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2/models/retr/ready", &r) == 0 && r.status == 200, "reloaded ready: %d", r.status);
    hc_response_free(&r);
    T_CHECK(post("/v2/repository/models/nothere/load", "", &r) == 0 && r.status == 404, "load unknown: %d", r.status);
    hc_response_free(&r);
    /* wrong method, unknown path */
    T_CHECK(get("/v2/models/hstu/infer", &r) == 0 && r.status == 405 && strstr(err_of(&r, e, sizeof e), "POST"),
            "GET infer: %d", r.status);
    hc_response_free(&r);
    T_CHECK(post("/v2/health/live", "", &r) == 0 && r.status == 405, "POST live: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v3/whatever", &r) == 0 && r.status == 404 && strstr(r.body, "error"), "unknown path: %d", r.status);
    hc_response_free(&r);
    T_CHECK(get("/v2/models/hstu/frobnicate", &r) == 0 && r.status == 404, "unknown model path: %d", r.status);
    hc_response_free(&r);
    /* metrics port */
    T_CHECK(hc_call(HOST, mport, "GET", "/metrics", NULL, NULL, 0, &r) == 0 && r.status == 200 &&
                strstr(r.body, "nv_inference_request_success{model=\"hstu\",version=\"1\"}") &&
                strstr(r.body, "hstu_kv_cache_hits_total"),
            "metrics: %d", r.status);
    hc_response_free(&r);
}

/* Runs `hstu infer` on the ranking users' requests (round by round) and
 * fills want[][]. */
static bool expected_rank(void)
{
    char req_path[512], out_path[512], cmd[2048];
    snprintf(req_path, sizeof req_path, "%s/requests.jsonl", repo_dir);
    snprintf(out_path, sizeof out_path, "%s/results.jsonl", repo_dir);
    FILE *f = fopen(req_path, "w");
    if (!f)
        return false;
    for (int r = 0; r < NR; r++)
        for (int u = 0; u < NU; u++) {
            user_seq *s = &users[u];
            json_t *o = json_pack("{sI so so so so}", "user_id", (json_int_t)s->id, "context", ints(s->ctx, 2), "items",
                                  ints(s->items, s->n[r]), "actions", ints(s->actions, s->n[r]), "candidates",
                                  ints(s->cands[r], s->m[r]));
            char *t = json_dumps(o, JSON_COMPACT);
            fprintf(f, "%s\n", t);
            free(t);
            json_decref(o);
        }
    fclose(f);
    /* (the server checks cached prefixes eagerly, the CPU default; infer defers them) */
    snprintf(cmd, sizeof cmd, "%s infer --model %s/hstu --requests %s --threads 2 --prefix-check deferred > %s",
             hstu_bin(), repo_dir, req_path, out_path);
    if (system(cmd) != 0) {
        t_fail_at(__FILE__, __LINE__, "%s failed", cmd);
        return false;
    }
    f = fopen(out_path, "r");
    if (!f)
        return false;
    char *line = NULL;
    size_t cap = 0;
    bool ok = true;
    for (int r = 0; r < NR && ok; r++)
        for (int u = 0; u < NU && ok; u++) {
            ok = getline(&line, &cap, f) > 0;
            json_t *o = ok ? json_loads(line, 0, NULL) : NULL;
            json_t *sc = json_object_get(o, "scores");
            ok = ok && json_array_size(sc) == (size_t)users[u].m[r];
            for (int c = 0; ok && c < users[u].m[r]; c++)
                for (int t = 0; t < T_TASKS; t++)
                    users[u].want[r][c * T_TASKS + t] = (float)json_number_value(json_array_get(json_array_get(sc, (size_t)c), (size_t)t));
            if (!ok)
                t_fail_at(__FILE__, __LINE__, "hstu infer line: %s", line ? line : "(none)");
            json_decref(o);
        }
    free(line);
    fclose(f);
    return ok;
}

#define NT 8 /* client threads; thread t owns users t, t+8, t+16 */

static int thread_errors;
static pthread_mutex_t err_mu = PTHREAD_MUTEX_INITIALIZER;

static void *client_main(void *arg)
{
    int t = (int)(intptr_t)arg;
    user_seq *mine[NU / NT];
    for (int k = 0; k < NU / NT; k++)
        mine[k] = &users[t + k * NT];
    for (int r = 0; r < NR; r++) {
        /* odd rounds: one request with all three users; even: one each */
        int groups = (r + t) % 2 ? 1 : NU / NT;
        for (int g = 0; g < groups; g++) {
            user_seq **us = groups == 1 ? mine : &mine[g];
            int B = groups == 1 ? NU / NT : 1;
            char *body = rank_body(us, B, r);
            hc_response resp;
            int rc = post("/v2/models/hstu/infer", body, &resp);
            bool ok = rc == 0 && resp.status == 200 && take_scores(&resp, us, B, r);
            if (!ok) {
                pthread_mutex_lock(&err_mu);
                if (thread_errors++ < 3)
                    printf("    thread %d round %d: status %d %s\n", t, r, resp.status, resp.body ? resp.body : "");
                pthread_mutex_unlock(&err_mu);
            }
            hc_response_free(&resp);
            free(body);
        }
    }
    return NULL;
}

static void test_scores_vs_infer(void)
{
    make_users();
    T_REQUIRE(expected_rank(), "hstu infer reference");
    pthread_t th[NT];
    for (int t = 0; t < NT; t++)
        pthread_create(&th[t], NULL, client_main, (void *)(intptr_t)t);
    for (int t = 0; t < NT; t++)
        pthread_join(th[t], NULL);
    T_REQUIRE(thread_errors == 0, "%d requests failed", thread_errors);
    double worst = 0;
    for (int u = 0; u < NU; u++)
        for (int r = 0; r < NR; r++) {
            size_t n = (size_t)users[u].m[r] * T_TASKS;
            if (!n)
                continue;
            double e = t_rel_err(users[u].got[r], users[u].want[r], n);
            if (e > worst)
                worst = e;
            T_CHECK(e <= 1e-6, "user %lld round %d: relative error %.3g", (long long)users[u].id, r, e);
        }
    printf("    %d users x %d rounds from %d clients: worst relative error %.3g\n", NU, NR, NT, worst);
    /* the batcher did batch: fewer executions than users computed */
    hc_response r;
    T_REQUIRE(get("/v2/models/hstu/stats", &r) == 0 && r.status == 200, "stats");
    json_t *o = body_json(&r);
    json_t *ms = json_array_get(json_object_get(o, "model_stats"), 0);
    long long inf = json_integer_value(json_object_get(ms, "inference_count"));
    long long exe = json_integer_value(json_object_get(ms, "execution_count"));
    printf("    inference_count %lld, execution_count %lld\n", inf, exe);
    T_CHECK(inf >= NU * NR && exe < inf, "inference_count %lld, execution_count %lld", inf, exe);
    json_decref(o);
    hc_response_free(&r);
}

/* Retrieval against hstu infer: ids equal, scores within 1e-6. */
static void test_retrieval(void)
{
    const int64_t items[] = {12, 40, 7, 99, 3, 250}, ts[] = {1000, 1200, 5000, 5100, 9000, 9100};
    char body[2048];
    snprintf(body, sizeof body,
             "{\"parameters\":{\"top_k\":5},\"inputs\":["
             "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[5,6]},"
             "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[3,3]},"
             "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[6],\"data\":[12,40,7,99,3,250]},"
             "{\"name\":\"TIMESTAMPS\",\"datatype\":\"INT64\",\"shape\":[6],\"data\":[1000,1200,5000,5100,9000,9100]},"
             "{\"name\":\"QUERY_TIMES\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[6000,9100]}]}");
    hc_response r;
    T_REQUIRE(post("/v2/models/retr/infer", body, &r) == 0 && r.status == 200, "retrieval: %d %s", r.status,
              r.body ? r.body : "");
    json_t *o = body_json(&r);
    json_t *ids = json_object_get(json_array_get(json_object_get(o, "outputs"), 0), "data");
    json_t *sc = json_object_get(json_array_get(json_object_get(o, "outputs"), 1), "data");
    T_REQUIRE(json_array_size(ids) == 10 && json_array_size(sc) == 10, "TOPK [2,5]: %s", r.body);
    char path[512], cmd[2048];
    snprintf(path, sizeof path, "%s/retr.jsonl", repo_dir);
    FILE *f = fopen(path, "w");
    T_REQUIRE(f, "open");
    fprintf(f, "{\"user_id\":5,\"items\":[%lld,%lld,%lld],\"timestamps\":[%lld,%lld,%lld],\"query_time\":6000,\"top_k\":5}\n",
            (long long)items[0], (long long)items[1], (long long)items[2], (long long)ts[0], (long long)ts[1], (long long)ts[2]);
    fprintf(f, "{\"user_id\":6,\"items\":[%lld,%lld,%lld],\"timestamps\":[%lld,%lld,%lld],\"query_time\":9100,\"top_k\":5}\n",
            (long long)items[3], (long long)items[4], (long long)items[5], (long long)ts[3], (long long)ts[4], (long long)ts[5]);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s infer --model %s/retr --requests %s --threads 2", hstu_bin(), repo_dir, path);
    FILE *p = popen(cmd, "r");
    T_REQUIRE(p, "popen");
    char line[4096];
    for (int b = 0; b < 2; b++) {
        T_REQUIRE(fgets(line, sizeof line, p), "hstu infer output");
        json_t *w = json_loads(line, 0, NULL);
        float got[5], want[5];
        for (int i = 0; i < 5; i++) {
            T_CHECK(json_integer_value(json_array_get(ids, (size_t)(b * 5 + i))) ==
                        json_integer_value(json_array_get(json_object_get(w, "items"), (size_t)i)),
                    "user %d rank %d: id differs", b, i);
            got[i] = (float)json_number_value(json_array_get(sc, (size_t)(b * 5 + i)));
            want[i] = (float)json_number_value(json_array_get(json_object_get(w, "scores"), (size_t)i));
        }
        T_CHECK(t_rel_err(got, want, 5) <= 1e-6, "user %d scores: %.3g", b, t_rel_err(got, want, 5));
        json_decref(w);
    }
    pclose(p);
    json_decref(o);
    hc_response_free(&r);
}

/* ---- bad requests ---------------------------------------------------------------- */

/* Fragments of a good one-user ranking request (user 900). */
enum { F_U, F_H, F_I, F_A, F_C, F_L, F_D, F_N };
static const char *good_frag[F_N] = {
    "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[900]}",
    "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[2]}",
    "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,2]}",
    "{\"name\":\"ACTION_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[0,1]}",
    "{\"name\":\"CONTEXT_IDS\",\"datatype\":\"INT64\",\"shape\":[1,2],\"data\":[[1,1]]}",
    "{\"name\":\"CANDIDATE_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[1]}",
    "{\"name\":\"CANDIDATE_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[3]}",
};

typedef struct bad_case {
    const char *name;
    int frag;             /* fragment replaced, or -1 */
    const char *with;     /* replacement ("" drops it), or the whole body when frag == -1 */
    const char *path;     /* default /v2/models/hstu/infer */
    int status;
    const char *says;     /* a substring of the error */
} bad_case;

static const bad_case bad_cases[] = {
    {"malformed JSON", -1, "{\"inputs\":[", NULL, 400, "malformed JSON"},
    {"not an object", -1, "[1,2,3]", NULL, 400, "JSON object"},
    {"no inputs", -1, "{\"id\":\"x\"}", NULL, 400, "inputs"},
    {"unknown model", -1, "{}", "/v2/models/nosuch/infer", 404, "unknown model"},
    {"unknown version", -1, "{}", "/v2/models/hstu/versions/7/infer", 404, "version"},
    {"unknown input", F_D, "{\"name\":\"CANDIDATES\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[3]}", NULL, 400, "unknown input"},
    {"missing input", F_A, "", NULL, 400, "ACTION_IDS: missing"},
    {"input twice", F_D, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[900]}", NULL, 400, "twice"},
    {"unknown datatype", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"FP32\",\"shape\":[2],\"data\":[1,2]}", NULL, 400, "datatype"},
    {"bogus datatype", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT65\",\"shape\":[2],\"data\":[1,2]}", NULL, 400, "datatype"},
    {"shape vs data", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[3],\"data\":[1,2]}", NULL, 400, "data has 2"},
    {"shape rank", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[1,2],\"data\":[1,2]}", NULL, 400, "dimensions"},
    {"negative dim", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[-2],\"data\":[1,2]}", NULL, 400, "non-negative"},
    {"huge dim", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[9223372036854775807],\"data\":[1,2]}", NULL, 400, "too large"},
    {"float in data", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,2.5]}", NULL, 400, "integers"},
    {"string in data", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,\"2\"]}", NULL, 400, "integers"},
    {"lengths vs items", F_H, "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[3]}", NULL, 400, "ITEM_IDS"},
    {"negative length", F_H, "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[-1]}", NULL, 400, "HISTORY_LENGTHS[0] = -1"},
    {"overflowing length", F_H, "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[9223372036854775807]}", NULL, 400, "max_history"},
    {"history over the maximum", F_H, "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[51]}", NULL, 400, "max_history"},
    {"candidates over the maximum", F_L, "{\"name\":\"CANDIDATE_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[10]}", NULL, 400, "max_candidates"},
    {"item outside the table", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,500]}", NULL, 400, "outside the table"},
    {"negative item", F_I, "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[-5,1]}", NULL, 400, "outside the table"},
    {"action outside the table", F_A, "{\"name\":\"ACTION_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[0,16]}", NULL, 400, "actions"},
    {"context outside the table", F_C, "{\"name\":\"CONTEXT_IDS\",\"datatype\":\"INT64\",\"shape\":[1,2],\"data\":[[7,0]]}", NULL, 400, "context[0]"},
    {"context shape", F_C, "{\"name\":\"CONTEXT_IDS\",\"datatype\":\"INT64\",\"shape\":[1,3],\"data\":[[1,1,1]]}", NULL, 400, "CONTEXT_IDS"},
    {"candidate outside the table", F_D, "{\"name\":\"CANDIDATE_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[123456789012]}", NULL, 400, "outside the table"},
    {"empty batch", -2, NULL, NULL, 400, "empty batch"},
    {"sums that overflow", -3, NULL, NULL, 400, "HISTORY_LENGTHS"},
    {"user twice in a request", -4, NULL, NULL, 400, "twice"},
    {"bad parameter type", -5, NULL, NULL, 400, "logits"},
    {"unknown output", -6, NULL, NULL, 400, "unknown output"},
    {"binary size mismatch", -7, NULL, NULL, 400, "binary_data_size"},
    {"truncated binary data", -8, NULL, NULL, 400, "truncated"},
    {"header length past the body", -9, NULL, NULL, 400, "Inference-Header-Content-Length"},
    {"header length not a number", -10, NULL, NULL, 400, "Inference-Header-Content-Length"},
    {"retrieval top_k 0", -11, NULL, "/v2/models/retr/infer", 400, "top_k"},
    {"retrieval empty history", -12, NULL, "/v2/models/retr/infer", 400, "HISTORY_LENGTHS"},
};

static char *good_with(int frag, const char *with)
{
    static char buf[8192];
    int p = snprintf(buf, sizeof buf, "{\"inputs\":[");
    bool first = true;
    for (int k = 0; k < F_N; k++) {
        const char *f = k == frag ? with : good_frag[k];
        if (!*f)
            continue;
        p += snprintf(buf + p, sizeof buf - (size_t)p, "%s%s", first ? "" : ",", f);
        first = false;
    }
    snprintf(buf + p, sizeof buf - (size_t)p, "]}");
    return buf;
}

/* A binary request: JSON header + tensors; returns the body length. */
static size_t binary_body(char *buf, size_t cap, size_t *hlen, int64_t skew_size, size_t cut)
{
    const int64_t uid[] = {901}, hl[] = {2}, it[] = {1, 2}, ac[] = {0, 1}, cx[] = {1, 1}, cl[] = {1}, cd[] = {3};
    int p = snprintf(buf, cap,
                     "{\"inputs\":["
                     "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"parameters\":{\"binary_data_size\":8}},"
                     "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"parameters\":{\"binary_data_size\":8}},"
                     "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"parameters\":{\"binary_data_size\":%lld}},"
                     "{\"name\":\"ACTION_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[0,1]},"
                     "{\"name\":\"CONTEXT_IDS\",\"datatype\":\"INT64\",\"shape\":[1,2],\"parameters\":{\"binary_data_size\":16}},"
                     "{\"name\":\"CANDIDATE_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"parameters\":{\"binary_data_size\":8}},"
                     "{\"name\":\"CANDIDATE_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"parameters\":{\"binary_data_size\":8}}],"
                     "\"outputs\":[{\"name\":\"SCORES\",\"parameters\":{\"binary_data\":true}}]}",
                     (long long)(16 + skew_size));
    (void)ac;
    *hlen = (size_t)p;
    size_t n = (size_t)p;
    memcpy(buf + n, uid, 8), n += 8;
    memcpy(buf + n, hl, 8), n += 8;
    memcpy(buf + n, it, 16), n += 16;
    memcpy(buf + n, cx, 16), n += 16;
    memcpy(buf + n, cl, 8), n += 8;
    memcpy(buf + n, cd, 8), n += 8;
    return n - cut;
}

static int run_bad(const bad_case *c, hc_response *r)
{
    const char *path = c->path ? c->path : "/v2/models/hstu/infer";
    char buf[8192];
    size_t hlen, n;
    char hdr[128];
    switch (c->frag) {
    case -2:
        return post(path, good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[0],\"data\":[]}"), r);
    case -3: /* two lengths whose sum overflows int64 */
        snprintf(buf, sizeof buf,
                 "{\"inputs\":[{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,2]},"
                 "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[4611686018427387904,4611686018427387904]},"
                 "%s,%s,%s,%s,%s]}", good_frag[F_I], good_frag[F_A], good_frag[F_C], good_frag[F_L], good_frag[F_D]);
        return post(path, buf, r);
    case -4:
        snprintf(buf, sizeof buf,
                 "{\"inputs\":[{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[900,900]},"
                 "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,1]},%s,%s,"
                 "{\"name\":\"CONTEXT_IDS\",\"datatype\":\"INT64\",\"shape\":[2,2],\"data\":[1,1,1,1]},"
                 "{\"name\":\"CANDIDATE_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,0]},%s]}",
                 good_frag[F_I], good_frag[F_A], good_frag[F_D]);
        return post(path, buf, r);
    case -5:
        snprintf(buf, sizeof buf, "%s", good_with(-1, ""));
        snprintf(buf + strlen(buf) - 1, 64, ",\"parameters\":{\"logits\":\"yes\"}}");
        return post(path, buf, r);
    case -6:
        snprintf(buf, sizeof buf, "%s", good_with(-1, ""));
        snprintf(buf + strlen(buf) - 1, 64, ",\"outputs\":[{\"name\":\"LOGITS\"}]}");
        return post(path, buf, r);
    case -7:
    case -8:
        n = binary_body(buf, sizeof buf, &hlen, c->frag == -7 ? 8 : 0, c->frag == -8 ? 5 : 0);
        snprintf(hdr, sizeof hdr, "Inference-Header-Content-Length: %zu\r\n", hlen);
        return hc_call(HOST, port, "POST", path, hdr, buf, n, r);
    case -9:
    case -10:
        n = binary_body(buf, sizeof buf, &hlen, 0, 0);
        snprintf(hdr, sizeof hdr, "Inference-Header-Content-Length: %s\r\n", c->frag == -9 ? "99999" : "12abc");
        return hc_call(HOST, port, "POST", path, hdr, buf, n, r);
    case -11:
    case -12:
        snprintf(buf, sizeof buf,
                 "{\"parameters\":{\"top_k\":%d},\"inputs\":["
                 "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[5]},"
                 "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[%d]},"
                 "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[%d],\"data\":[%s]},"
                 "{\"name\":\"TIMESTAMPS\",\"datatype\":\"INT64\",\"shape\":[%d],\"data\":[%s]}]}",
                 c->frag == -11 ? 0 : 3, c->frag == -11 ? 1 : 0, c->frag == -11 ? 1 : 0, c->frag == -11 ? "4" : "",
                 c->frag == -11 ? 1 : 0, c->frag == -11 ? "100" : "");
        return post(path, buf, r);
    case -1:
        return post(path, c->with, r);
    default:
        return post(path, good_with(c->frag, c->with), r);
    }
}

/* Scores of a one-user request for user uid with n items (a fixed history). */
static bool score_user(int64_t uid, int n, float *out /* [T_TASKS] */)
{
    user_seq s = {0};
    s.id = uid;
    s.ctx[0] = 2, s.ctx[1] = 3;
    for (int i = 0; i < MAXH; i++)
        s.items[i] = 10 + i * 7, s.actions[i] = i % 16;
    s.n[0] = n;
    s.m[0] = 1;
    s.cands[0][0] = 77;
    user_seq *p = &s;
    char *body = rank_body(&p, 1, 0);
    hc_response r;
    bool ok = post("/v2/models/hstu/infer", body, &r) == 0 && r.status == 200 && take_scores(&r, &p, 1, 0);
    free(body);
    hc_response_free(&r);
    memcpy(out, s.got[0], sizeof(float) * T_TASKS);
    return ok;
}

static long long metric(const char *name)
{
    hc_response r;
    long long v = -1;
    if (hc_call(HOST, mport, "GET", "/metrics", NULL, NULL, 0, &r) == 0 && r.status == 200) {
        char key[256];
        snprintf(key, sizeof key, "\n%s{model=\"hstu\",", name);
        char *p = strstr(r.body, key);
        if (p && (p = strchr(p + 1, '}')))
            v = atoll(p + 1);
    }
    hc_response_free(&r);
    return v;
}

static void test_bad_requests(void)
{
    /* user 950 before the bad ones: its history is cached */
    float before[T_TASKS], after[T_TASKS], fresh[T_TASKS];
    T_REQUIRE(score_user(950, 10, before), "good request before");
    long long hits0 = metric("hstu_kv_cache_hits_total");
    long long exec0 = metric("nv_inference_exec_count");
    int n = (int)(sizeof bad_cases / sizeof bad_cases[0]);
    for (int i = 0; i < n; i++) {
        const bad_case *c = &bad_cases[i];
        hc_response r;
        char e[1024];
        int rc = run_bad(c, &r);
        err_of(&r, e, sizeof e);
        bool ok = rc == 0 && r.status == c->status && strstr(e, c->says);
        printf("    %-30s -> %d %s\n", c->name, rc == 0 ? r.status : -1, e);
        T_CHECK(ok, "%s: want %d with \"%s\"", c->name, c->status, c->says);
        hc_response_free(&r);
    }
    T_CHECK(metric("nv_inference_exec_count") == exec0, "a bad request was computed");
    /* the same user again, two more items: a cache hit, and the same
     * scores as a fresh user with that history computed from scratch */
    T_REQUIRE(score_user(950, 12, after), "good request after");
    T_CHECK(metric("hstu_kv_cache_hits_total") == hits0 + 1, "cache hit expected after the bad requests");
    T_REQUIRE(score_user(951, 12, fresh), "fresh user");
    double e = t_rel_err(after, fresh, T_TASKS);
    T_CHECK(e <= 1e-5, "cached vs fresh: %.3g", e);
    float again[T_TASKS];
    T_REQUIRE(score_user(950, 10, again), "shrunk history");
    T_CHECK(t_rel_err(again, before, T_TASKS) <= 1e-5, "same history, same scores: %.3g", t_rel_err(again, before, T_TASKS));
}

/* Requests of one user sent at once from several clients: the batcher must
 * never put two in one batch (the engine would refuse it) nor run them
 * concurrently; each answer equals a fresh user's with the same history. */
typedef struct same_arg {
    int n;
    float got[T_TASKS];
    bool ok;
} same_arg;

static void *same_user_post(void *arg)
{
    same_arg *a = arg;
    a->ok = score_user(990, a->n, a->got);
    return NULL;
}

static void test_same_user_concurrent(void)
{
    enum { K = 6 };
    same_arg a[K];
    pthread_t th[K];
    for (int k = 0; k < K; k++) {
        a[k].n = 5 + 5 * k;
        pthread_create(&th[k], NULL, same_user_post, &a[k]);
    }
    for (int k = 0; k < K; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < K; k++) {
        T_CHECK(a[k].ok, "request %d of user 990 failed", k);
        float fresh[T_TASKS];
        T_REQUIRE(score_user(991 + k, a[k].n, fresh), "fresh user");
        double e = t_rel_err(a[k].got, fresh, T_TASKS);
        T_CHECK(e <= 1e-5, "history %d: %.3g against a fresh user", a[k].n, e);
    }
}

/* "logits": true returns logits: sigmoid(logit) = the probability. */
static void test_logits(void)
{
    const char *base = good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[985]}");
    char body[8192];
    snprintf(body, sizeof body, "%s", base);
    snprintf(body + strlen(body) - 1, 64, ",\"parameters\":{\"logits\":true}}");
    hc_response r;
    user_seq s = {0};
    user_seq *p = &s;
    s.m[0] = 1;
    T_REQUIRE(post("/v2/models/hstu/infer", body, &r) == 0 && r.status == 200 && take_scores(&r, &p, 1, 0),
              "logits request: %d", r.status);
    hc_response_free(&r);
    float logit[T_TASKS], prob[T_TASKS];
    memcpy(logit, s.got[0], sizeof logit);
    /* the same history as a fresh user, probabilities */
    T_REQUIRE(post("/v2/models/hstu/infer",
                   good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[986]}"), &r) == 0 &&
                  r.status == 200 && take_scores(&r, &p, 1, 0),
              "probability request");
    hc_response_free(&r);
    memcpy(prob, s.got[0], sizeof prob);
    float sig[T_TASKS];
    for (int t = 0; t < T_TASKS; t++)
        sig[t] = 1.0f / (1.0f + expf(-logit[t]));
    T_CHECK(t_rel_err(sig, prob, T_TASKS) <= 1e-6, "sigmoid(logits) vs probabilities: %.3g", t_rel_err(sig, prob, T_TASKS));
    bool differ = false;
    for (int t = 0; t < T_TASKS; t++)
        differ |= logit[t] != prob[t];
    T_CHECK(differ, "logits equal the probabilities");
}

static void test_body_limit(void)
{
    size_t n = (1 << 20) + 10;
    char *big = malloc(n);
    T_REQUIRE(big, "malloc");
    memset(big, ' ', n);
    hc_response r;
    char e[512];
    int rc = hc_call(HOST, port, "POST", "/v2/models/hstu/infer", NULL, big, n, &r);
    /* the server may answer 413 and close before reading the body; a send
     * error then is fine, but when a reply came it must be 413 */
    T_CHECK(rc != 0 || (r.status == 413 && strstr(err_of(&r, e, sizeof e), "limit")), "over the limit: %d",
            r.status);
    hc_response_free(&r);
    free(big);
    float s[T_TASKS];
    T_CHECK(score_user(960, 3, s), "a good request after");
}

static void test_binary(void)
{
    char buf[8192];
    size_t hlen;
    size_t n = binary_body(buf, sizeof buf, &hlen, 0, 0);
    char hdr[128];
    snprintf(hdr, sizeof hdr, "Inference-Header-Content-Length: %zu\r\n", hlen);
    hc_response r;
    T_REQUIRE(hc_call(HOST, port, "POST", "/v2/models/hstu/infer", hdr, buf, n, &r) == 0 && r.status == 200,
              "binary request: %d %s", r.status, r.body ? r.body : "");
    T_REQUIRE(r.header_len > 0 && (size_t)r.header_len + T_TASKS * 4 == r.len && !r.chunked,
              "binary reply: header %lld, body %zu", r.header_len, r.len);
    json_t *o = json_loadb(r.body, (size_t)r.header_len, 0, NULL);
    json_t *out = json_array_get(json_object_get(o, "outputs"), 0);
    T_CHECK(json_integer_value(json_object_get(json_object_get(out, "parameters"), "binary_data_size")) == T_TASKS * 4,
            "binary_data_size: %.*s", (int)r.header_len, r.body);
    float got[T_TASKS];
    memcpy(got, r.body + r.header_len, sizeof got);
    json_decref(o);
    hc_response_free(&r);
    /* the same request in JSON for a fresh user with the same history */
    T_REQUIRE(post("/v2/models/hstu/infer",
                   good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[902]}"), &r) == 0 &&
                  r.status == 200,
              "json twin");
    user_seq s = {0};
    user_seq *p = &s;
    s.m[0] = 1;
    T_REQUIRE(take_scores(&r, &p, 1, 0), "json twin scores");
    hc_response_free(&r);
    T_CHECK(t_rel_err(got, s.got[0], T_TASKS) <= 1e-6, "binary vs JSON: %.3g", t_rel_err(got, s.got[0], T_TASKS));
    /* retrieval: TOPK_IDS binary, TOPK_SCORES JSON */
    const char *rq = "{\"parameters\":{\"top_k\":4},\"inputs\":["
                     "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[77]},"
                     "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[2]},"
                     "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[5,6]},"
                     "{\"name\":\"TIMESTAMPS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[10,20]}],"
                     "\"outputs\":[{\"name\":\"TOPK_IDS\",\"parameters\":{\"binary_data\":true}},{\"name\":\"TOPK_SCORES\"}]}";
    T_REQUIRE(post("/v2/models/retr/infer", rq, &r) == 0 && r.status == 200, "retrieval binary: %d", r.status);
    T_CHECK(r.header_len > 0 && (size_t)r.header_len + 4 * 8 == r.len, "TOPK_IDS binary: %lld of %zu", r.header_len, r.len);
    o = json_loadb(r.body, (size_t)(r.header_len > 0 ? r.header_len : 0), 0, NULL);
    T_CHECK(json_array_size(json_object_get(json_array_get(json_object_get(o, "outputs"), 1), "data")) == 4,
            "TOPK_SCORES in JSON");
    int64_t ids[4];
    if (r.header_len > 0 && (size_t)r.header_len + 32 == r.len) {
        memcpy(ids, r.body + r.header_len, sizeof ids);
        for (int i = 0; i < 4; i++)
            T_CHECK(ids[i] > 0 && ids[i] < 300 && ids[i] != 5 && ids[i] != 6, "id %lld", (long long)ids[i]);
    }
    json_decref(o);
    hc_response_free(&r);
    /* binary_data_output for everything */
    const char *rq2 = "{\"parameters\":{\"top_k\":2,\"binary_data_output\":true},\"inputs\":["
                      "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[78]},"
                      "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[1]},"
                      "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[5]},"
                      "{\"name\":\"TIMESTAMPS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[10]}]}";
    T_CHECK(post("/v2/models/retr/infer", rq2, &r) == 0 && r.status == 200 && r.header_len > 0 &&
                (size_t)r.header_len + 2 * 8 + 2 * 4 == r.len,
            "binary_data_output: %d %lld %zu", r.status, r.header_len, r.len);
    hc_response_free(&r);
}

static void test_timeout_param(void)
{
    long long exec0 = metric("nv_inference_exec_count");
    char body[8192];
    snprintf(body, sizeof body, "%s", good_with(-1, ""));
    snprintf(body + strlen(body) - 1, 64, ",\"parameters\":{\"timeout\":1}}");
    hc_response r;
    char e[512];
    T_CHECK(post("/v2/models/hstu/infer", body, &r) == 0 && r.status == 503 &&
                strstr(err_of(&r, e, sizeof e), "timed out"),
            "timeout 1 us: %d %s", r.status, r.body ? r.body : "");
    hc_response_free(&r);
    T_CHECK(metric("nv_inference_exec_count") == exec0, "an expired request was computed");
    long long canceled = -1;
    if (hc_call(HOST, mport, "GET", "/metrics", NULL, NULL, 0, &r) == 0) {
        char *p = strstr(r.body, "nv_inference_request_failure{model=\"hstu\",reason=\"CANCELED\"");
        if (p)
            canceled = atoll(strchr(p, '}') + 1);
    }
    hc_response_free(&r);
    T_CHECK(canceled >= 1, "CANCELED failures: %lld", canceled);
}

static void test_disconnect_and_slow(void)
{
    /* a client that sends half its body and goes away */
    for (int k = 0; k < 5; k++) {
        int fd = hc_connect(HOST, port, 2000);
        T_REQUIRE(fd >= 0, "connect");
        const char *head = "POST /v2/models/hstu/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inputs\":[";
        T_CHECK(send(fd, head, strlen(head), MSG_NOSIGNAL) > 0, "send");
        close(fd);
    }
    float s[T_TASKS];
    T_CHECK(score_user(961, 4, s), "a good request after disconnects");
    /* a slow client: one byte every 100 ms must be cut after conn_timeout (2 s) */
    int fd = hc_connect(HOST, port, 5000);
    T_REQUIRE(fd >= 0, "connect");
    const char *req = "POST /v2/models/hstu/infer HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    bool cut = false;
    for (size_t i = 0; i < strlen(req) && !cut; i++) {
        if (send(fd, req + i, 1, MSG_NOSIGNAL) != 1) {
            cut = true;
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            char c;
            ssize_t k = recv(fd, &c, 1, MSG_DONTWAIT);
            if (k == 0 || (k < 0 && errno != EAGAIN))
                cut = true;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    close(fd);
    printf("    slow client cut: %s after %.1f s\n", cut ? "yes" : "no", secs);
    T_CHECK(cut && secs < 4.0, "slow client not cut in time (%.1f s)", secs);
    T_CHECK(score_user(962, 4, s), "a good request after the slow client");
}

static void test_stats_and_metrics(void)
{
    hc_response r;
    T_REQUIRE(get("/v2/models/stats", &r) == 0 && r.status == 200, "all stats");
    json_t *o = body_json(&r);
    json_t *list = json_object_get(o, "model_stats");
    T_CHECK(json_array_size(list) == 2, "two models: %s", r.body);
    json_t *ms = json_array_get(list, 0);
    T_CHECK(!strcmp(json_string_value(json_object_get(ms, "name")), "hstu"), "first is hstu");
    json_t *is = json_object_get(ms, "inference_stats");
    const char *fields[] = {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss"};
    for (int i = 0; i < 8; i++) {
        json_t *f = json_object_get(is, fields[i]);
        T_CHECK(json_is_integer(json_object_get(f, "count")) && json_is_integer(json_object_get(f, "ns")), "%s", fields[i]);
    }
    long long ok = json_integer_value(json_object_get(json_object_get(is, "success"), "count"));
    long long bad = json_integer_value(json_object_get(json_object_get(is, "fail"), "count"));
    T_CHECK(ok > 0 && bad >= (long long)(sizeof bad_cases / sizeof bad_cases[0]) - 3, "success %lld, fail %lld", ok, bad);
    long long exe = json_integer_value(json_object_get(ms, "execution_count"));
    long long sum = 0;
    size_t i;
    json_t *bs;
    json_array_foreach(json_object_get(ms, "batch_stats"), i, bs) {
        sum += json_integer_value(json_object_get(json_object_get(bs, "compute_infer"), "count"));
    }
    T_CHECK(sum == exe, "batch_stats counts %lld vs execution_count %lld", sum, exe);
    json_decref(o);
    hc_response_free(&r);
    T_CHECK(metric("nv_inference_request_success") == ok, "metrics success %lld vs stats %lld",
            metric("nv_inference_request_success"), ok);
    T_CHECK(metric("nv_inference_pending_request_count") == 0, "nothing pending");
    T_CHECK(metric("hstu_kv_cache_hits_total") > 0, "cache hits counted");
    /* no batch was refused by the engine (e.g. one user twice in a batch) */
    T_CHECK(metric("hstu_batch_retries_total") == 0, "batch retries: %lld", metric("hstu_batch_retries_total"));
}

static void test_compat(void)
{
    hc_response r;
    T_REQUIRE(get("/v2/models/hstu_model", &r) == 0 && r.status == 200 && strstr(r.body, "TOKEN_LENGTHS"),
              "hstu_model metadata: %d", r.status);
    hc_response_free(&r);
    /* two users: (ctx 1,1; items 1,2 | cand 3; actions 0,1) and (ctx 2,0; item 4 | cands 5,6; action 2) */
    const char *body = "{\"inputs\":["
                       "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[970,971]},"
                       "{\"name\":\"TOKEN_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[8],\"data\":[1,1,1,1,3,3,2,1]},"
                       "{\"name\":\"TOKENS\",\"datatype\":\"INT64\",\"shape\":[13],\"data\":[1,2,1,0,1,2,3,4,5,6,0,1,2]},"
                       "{\"name\":\"NUM_CANDIDATES\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,2]}]}";
    T_REQUIRE(post("/v2/models/hstu_model/infer", body, &r) == 0 && r.status == 200, "compat infer: %d %s", r.status,
              r.body ? r.body : "");
    json_t *o = body_json(&r);
    json_t *out = json_array_get(json_object_get(o, "outputs"), 0);
    json_t *data = json_object_get(out, "data");
    T_REQUIRE(!strcmp(json_string_value(json_object_get(out, "name")), "OUTPUT") && json_array_size(data) == 3 * T_TASKS,
              "OUTPUT [sum m * T]: %s", r.body);
    float got[3 * T_TASKS];
    for (int k = 0; k < 3 * T_TASKS; k++)
        got[k] = (float)json_number_value(json_array_get(data, (size_t)k));
    json_decref(o);
    hc_response_free(&r);
    const char *native = "{\"inputs\":["
                         "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[972,973]},"
                         "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[2,1]},"
                         "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[3],\"data\":[1,2,4]},"
                         "{\"name\":\"ACTION_IDS\",\"datatype\":\"INT64\",\"shape\":[3],\"data\":[0,1,2]},"
                         "{\"name\":\"CONTEXT_IDS\",\"datatype\":\"INT64\",\"shape\":[2,2],\"data\":[1,1,2,0]},"
                         "{\"name\":\"CANDIDATE_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,2]},"
                         "{\"name\":\"CANDIDATE_IDS\",\"datatype\":\"INT64\",\"shape\":[3],\"data\":[3,5,6]}]}";
    T_REQUIRE(post("/v2/models/hstu/infer", native, &r) == 0 && r.status == 200, "native twin");
    o = body_json(&r);
    data = json_object_get(json_array_get(json_object_get(o, "outputs"), 0), "data");
    float want[3 * T_TASKS];
    for (int k = 0; k < 3 * T_TASKS; k++)
        want[k] = (float)json_number_value(json_array_get(data, (size_t)k));
    json_decref(o);
    hc_response_free(&r);
    T_CHECK(t_rel_err(got, want, 3 * T_TASKS) <= 1e-6, "compat vs native: %.3g", t_rel_err(got, want, 3 * T_TASKS));
}

/* A second server with one job slot and a long queue delay: the first
 * request holds the slot while it waits for a batch, the second gets 503. */
typedef struct slow_arg {
    int port;
    int status;
} slow_arg;

static void *slow_post(void *arg)
{
    slow_arg *a = arg;
    hc_response r;
    const char *b = good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[980]}");
    a->status = hc_call(HOST, a->port, "POST", "/v2/models/hstu/infer", NULL, b, strlen(b), &r) == 0 ? r.status : -1;
    hc_response_free(&r);
    return NULL;
}

static void test_queue_full(void)
{
    serve_options o;
    serve_options_default(&o);
    o.model_repository = repo_dir;
    o.host = HOST;
    o.http_port = 0;
    o.metrics_port = -1;
    o.queue_size = 1;
    o.max_queue_delay_us = 600000; /* 0.6 s */
    o.cache_bytes = 4 << 20;
    o.threads = 1;
    server *s2 = NULL;
    hstu_error err = {0};
    T_REQUIRE(serve_start(&o, &s2, &err) == HSTU_OK, "second server: %s", err.msg);
    slow_arg a = {.port = serve_http_port(s2)};
    pthread_t th;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_create(&th, NULL, slow_post, &a);
    usleep(200000);
    hc_response r;
    char e[512];
    const char *b = good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[981]}");
    int rc = hc_call(HOST, a.port, "POST", "/v2/models/hstu/infer", NULL, b, strlen(b), &r);
    T_CHECK(rc == 0 && r.status == 503 && strstr(err_of(&r, e, sizeof e), "queue is full"), "queue full: %d %s",
            r.status, r.body ? r.body : "");
    hc_response_free(&r);
    pthread_join(th, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    T_CHECK(a.status == 200, "the queued request: %d", a.status);
    /* a lone request waits max_queue_delay (0.6 s) for company, then runs */
    T_CHECK(waited >= 0.55 && waited < 3.0, "a lone request took %.2f s with a 0.6 s queue delay", waited);
    serve_stop(s2);
}

/* ---- allocations on the request path ------------------------------------------ */

/* Every allocation of the process is seen here: malloc and friends are
 * interposed (or, under AddressSanitizer, which owns malloc, its allocator
 * hooks are installed). While `counting` is set, each allocation made by a
 * thread other than the test's client is recorded with its backtrace. The
 * hooks' own code sits in the section alloc_hook, so its frames are skipped
 * exactly; so are frames in libc and the sanitizer runtimes (the allocator
 * itself, strdup and the like): an allocation is charged to the first frame
 * that asked for it, by shared object (this program holds the server). */
#define REC_MAX 4096
#define REC_DEPTH 24
#define HOOK __attribute__((section("alloc_hook"), noinline, used))
extern const char __start_alloc_hook[], __stop_alloc_hook[];

static atomic_int counting;
static _Thread_local bool is_client, in_hook;
static void *rec_frames[REC_MAX][REC_DEPTH];
static int rec_depth[REC_MAX];
static atomic_int rec_n;

HOOK static void record_alloc(void)
{
    if (!atomic_load_explicit(&counting, memory_order_relaxed) || is_client || in_hook)
        return;
    in_hook = true;
    int i = atomic_fetch_add(&rec_n, 1);
    if (i < REC_MAX)
        rec_depth[i] = backtrace(rec_frames[i], REC_DEPTH);
    in_hook = false;
}

#if defined(__SANITIZE_ADDRESS__)
HOOK static void on_malloc(const volatile void *p, size_t n)
{
    (void)p, (void)n;
    record_alloc();
}
HOOK static void on_free(const volatile void *p) { (void)p; }
static void hooks_install(void) { __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free); }
#else
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
/* dlsym may allocate before the real functions are known: a static pool */
static _Alignas(16) char boot[65536];
static size_t boot_used;

HOOK static bool in_boot(const void *p) { return (const char *)p >= boot && (const char *)p < boot + sizeof boot; }

HOOK static void *boot_alloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n > sizeof boot - boot_used)
        abort();
    void *p = boot + boot_used;
    boot_used += n;
    return p;
}

HOOK static void resolve(void)
{
    static bool busy;
    if (busy)
        return;
    busy = true;
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    busy = false;
}

HOOK void *malloc(size_t n)
{
    if (!real_malloc) {
        resolve();
        if (!real_malloc)
            return boot_alloc(n);
    }
    record_alloc();
    return real_malloc(n);
}

HOOK void *calloc(size_t a, size_t b)
{
    if (!real_calloc) {
        resolve();
        if (!real_calloc)
            return boot_alloc(a * b); /* static memory is zero */
    }
    record_alloc();
    return real_calloc(a, b);
}

HOOK void *realloc(void *p, size_t n)
{
    if (in_boot(p)) {
        void *q = malloc(n);
        if (q)
            memcpy(q, p, n < (size_t)(boot + boot_used - (char *)p) ? n : (size_t)(boot + boot_used - (char *)p));
        return q;
    }
    if (!real_realloc)
        resolve();
    record_alloc();
    return real_realloc(p, n);
}

HOOK void free(void *p)
{
    if (!p || in_boot(p))
        return;
    if (!real_free)
        resolve();
    real_free(p);
}

HOOK int posix_memalign(void **out, size_t align, size_t n)
{
    if (!real_posix_memalign)
        resolve();
    record_alloc();
    return real_posix_memalign(out, align, n);
}

HOOK void *aligned_alloc(size_t align, size_t n)
{
    if (!real_aligned_alloc)
        resolve();
    record_alloc();
    return real_aligned_alloc(align, n);
}

HOOK void *memalign(size_t align, size_t n)
{
    if (!real_memalign)
        resolve();
    record_alloc();
    return real_memalign(align, n);
}

static void hooks_install(void) {}
#endif

/* The shared object of a code address, by file name without directories. */
static const char *object_of(const void *addr)
{
    Dl_info di;
    if (!dladdr(addr, &di) || !di.dli_fname || !*di.dli_fname)
        return "?";
    const char *b = strrchr(di.dli_fname, '/');
    return b ? b + 1 : di.dli_fname;
}

static bool is_runtime(const char *obj)
{
    static const char *const rt[] = {"libc.so", "libasan", "libubsan", "libgcc_s", "ld-linux", "libstdc++"};
    for (size_t i = 0; i < sizeof rt / sizeof rt[0]; i++)
        if (!strncmp(obj, rt[i], strlen(rt[i])))
            return true;
    return false;
}

/* [lo, hi): the code of hstu_engine_run in this program, from its symbol
 * table (the size is not known otherwise); lo = hi = 0 if not found. */
static const char *engine_lo, *engine_hi;

static void find_engine_code(void)
{
    Dl_info di;
    int fd = open("/proc/self/exe", O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !dladdr((void *)hstu_engine_run, &di)) {
        if (fd >= 0)
            close(fd);
        return;
    }
    const unsigned char *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)m;
    const Elf64_Shdr *sh = (const Elf64_Shdr *)(m + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_SYMTAB)
            continue;
        const Elf64_Sym *sym = (const Elf64_Sym *)(m + sh[i].sh_offset);
        const char *names = (const char *)(m + sh[sh[i].sh_link].sh_offset);
        for (size_t k = 0; k < sh[i].sh_size / sizeof *sym; k++)
            if (ELF64_ST_TYPE(sym[k].st_info) == STT_FUNC && !strcmp(names + sym[k].st_name, "hstu_engine_run")) {
                engine_lo = (const char *)di.dli_fbase + sym[k].st_value;
                engine_hi = engine_lo + sym[k].st_size;
            }
    }
    munmap((void *)m, (size_t)st.st_size);
}

/* Where an allocation is charged: "engine" when it was made inside
 * hstu_engine_run or by an OpenMP thread (libgomp's frames), else the
 * shared object of the first frame that asked for it. */
static const char *charged_to(int i)
{
    for (int f = 0; f < rec_depth[i]; f++) {
        const char *a = rec_frames[i][f];
        if ((a > engine_lo && a <= engine_hi) || !strncmp(object_of(a - 1), "libgomp", 7))
            return "engine";
    }
    for (int f = 0; f < rec_depth[i]; f++) {
        const char *a = rec_frames[i][f];
        if (a >= __start_alloc_hook && a < __stop_alloc_hook)
            continue;
        const char *o = object_of(a - 1); /* a return address: the call is just before it */
        if (!is_runtime(o))
            return o;
    }
    return "libc (no other frame)";
}

/* Charges each recorded allocation; returns how many objects, with
 * names[] and counts[]. */
static int charge_allocations(const char **names, int *counts, int max)
{
    int n = atomic_load(&rec_n), k = 0;
    if (n > REC_MAX)
        n = REC_MAX;
    for (int i = 0; i < n; i++) {
        const char *obj = charged_to(i);
        int j = 0;
        while (j < k && strcmp(names[j], obj))
            j++;
        if (j == k && k < max)
            names[k] = obj, counts[k++] = 0;
        if (j < k)
            counts[j]++;
    }
    return k;
}

/* One client on one keep-alive connection sends every kind of request;
 * after a warm-up, every allocation of the process is counted while it
 * sends them again. The server's own code (this program), jansson and the
 * engine's libraries must make none; libmicrohttpd makes a few per reply
 * (its response object and header copies: the reply's bytes are ours). */
static void test_no_alloc(void)
{
    char rank_bin[8192], hdr[128];
    size_t hlen;
    size_t rank_bin_len = binary_body(rank_bin, sizeof rank_bin, &hlen, 0, 0);
    snprintf(hdr, sizeof hdr, "Inference-Header-Content-Length: %zu\r\n", hlen);
    char rank_json[8192];
    snprintf(rank_json, sizeof rank_json, "%s", good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\","
                                                               "\"shape\":[1],\"data\":[1500]}"));
    char bad[8192];
    snprintf(bad, sizeof bad, "%s", good_with(F_D, "{\"name\":\"CANDIDATES\",\"datatype\":\"INT64\",\"shape\":[1],"
                                                   "\"data\":[3]}"));
    const char *retr = "{\"id\":\"r\\\"1\",\"parameters\":{\"top_k\":5,\"binary_data_output\":false},\"inputs\":["
                       "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[15,16]},"
                       "{\"name\":\"HISTORY_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[3,3]},"
                       "{\"name\":\"ITEM_IDS\",\"datatype\":\"INT64\",\"shape\":[6],\"data\":[12,40,7,99,3,250]},"
                       "{\"name\":\"TIMESTAMPS\",\"datatype\":\"INT64\",\"shape\":[6],"
                       "\"data\":[1000,1200,5000,5100,9000,9100]}]}";
    const char *compat = "{\"inputs\":["
                         "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1510,1511]},"
                         "{\"name\":\"TOKEN_LENGTHS\",\"datatype\":\"INT64\",\"shape\":[8],\"data\":[1,1,1,1,3,3,2,1]},"
                         "{\"name\":\"TOKENS\",\"datatype\":\"INT64\",\"shape\":[13],\"data\":[1,2,1,0,1,2,3,4,5,6,0,1,2]},"
                         "{\"name\":\"NUM_CANDIDATES\",\"datatype\":\"INT64\",\"shape\":[2],\"data\":[1,2]}]}";
    struct {
        const char *method, *path, *hdr, *body;
        size_t len;
        int status;
    } kinds[] = {
        {"POST", "/v2/models/hstu/infer", NULL, rank_json, strlen(rank_json), 200},
        {"POST", "/v2/models/hstu/infer", hdr, rank_bin, rank_bin_len, 200},
        {"POST", "/v2/models/retr/infer", NULL, retr, strlen(retr), 200},
        {"POST", "/v2/models/hstu_model/infer", NULL, compat, strlen(compat), 200},
        {"POST", "/v2/models/hstu/infer", NULL, bad, strlen(bad), 400},
        {"GET", "/v2/health/ready", NULL, NULL, 0, 200},
    };
    enum { KINDS = sizeof kinds / sizeof kinds[0], ROUNDS = 20 };
    is_client = true;
    int fd = hc_connect(HOST, port, 10000);
    T_REQUIRE(fd >= 0, "connect");
    int bad_status = 0, requests = 0;
    for (int round = 0; round < 3 + ROUNDS; round++) {
        if (round == 3) { /* warmed up: count from here */
            atomic_store(&rec_n, 0);
            atomic_store(&counting, 1);
        }
        for (int k = 0; k < KINDS; k++) {
            hc_response r;
            int rc = hc_request(fd, kinds[k].method, kinds[k].path, kinds[k].hdr, kinds[k].body, kinds[k].len, &r);
            if (rc != 0 || r.status != kinds[k].status) {
                if (!bad_status)
                    printf("    %s %s: %d %s\n", kinds[k].method, kinds[k].path, rc ? -1 : r.status,
                           r.body ? r.body : "");
                bad_status++;
            }
            requests += round >= 3;
            hc_response_free(&r);
        }
    }
    atomic_store(&counting, 0);
    close(fd);
    is_client = false;
    T_CHECK(bad_status == 0, "%d requests got an unexpected status", bad_status);
    const char *names[32];
    int counts[32];
    int n = charge_allocations(names, counts, 32);
    int total = atomic_load(&rec_n), server = 0, mhd = 0;
    printf("    %d requests, %d allocations:", requests, total);
    for (int i = 0; i < n; i++) {
        printf(" %s %d (%.2f per request)%s", names[i], counts[i], (double)counts[i] / requests, i + 1 < n ? "," : "");
        if (!strncmp(names[i], "libmicrohttpd", 13))
            mhd += counts[i];
        else if (strcmp(names[i], "engine"))
            server += counts[i];
    }
    printf("%s\n", n ? "" : " none");
    T_CHECK(total <= REC_MAX, "more allocations than recorded (%d)", total);
    T_CHECK(server == 0, "%d allocations outside libmicrohttpd on the request path (want 0)", server);
    /* libmicrohttpd 0.9.75: a response object and 3 per header (entry, name,
     * value), at most 2 headers: at most 7 per reply */
    T_CHECK(mhd <= 7 * requests, "libmicrohttpd: %d allocations for %d requests", mhd, requests);
    if (server)
        for (int i = 0, shown = 0; i < atomic_load(&rec_n) && i < REC_MAX && shown < 4; i++) {
            const char *o = charged_to(i);
            if (!strcmp(o, "engine") || !strncmp(o, "libmicrohttpd", 13))
                continue;
            shown++;
            printf("    backtrace of allocation %d:\n", i);
            for (int f = 0; f < rec_depth[i]; f++) {
                Dl_info di;
                const char *a = rec_frames[i][f];
                if (dladdr(a - 1, &di) && di.dli_fname)
                    printf("      %s+0x%lx %s\n", object_of(a), (unsigned long)(a - (const char *)di.dli_fbase),
                           di.dli_sname ? di.dli_sname : "");
            }
        }
}

/* A JSON that needs more parse memory than a slot has (400,000 values
 * within the body limit) is a 413 that says so; the server goes on. */
static void test_json_arena_cap(void)
{
    enum { VALUES = 400000 };
    size_t cap = 2 * VALUES + 256;
    char *body = malloc(cap);
    T_REQUIRE(body, "malloc");
    size_t p = (size_t)snprintf(body, cap, "{\"inputs\":[{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[%d],"
                                           "\"data\":[", VALUES);
    for (int i = 0; i < VALUES; i++)
        body[p++] = '0', body[p++] = ',';
    p--; /* the last comma */
    p += (size_t)snprintf(body + p, cap - p, "]}]}");
    hc_response r;
    char e[1024];
    int rc = hc_call(HOST, port, "POST", "/v2/models/hstu/infer", NULL, body, p, &r);
    T_CHECK(rc == 0 && r.status == 413 && strstr(err_of(&r, e, sizeof e), "parse memory"), "%d %s", rc ? -1 : r.status,
            rc ? "" : e);
    hc_response_free(&r);
    free(body);
    T_CHECK(hc_call(HOST, mport, "GET", "/metrics", NULL, NULL, 0, &r) == 0 && r.status == 200 &&
                strstr(r.body, "\nhstu_json_arena_overflows_total ") &&
                atoll(strstr(r.body, "\nhstu_json_arena_overflows_total ") + 33) >= 1,
            "hstu_json_arena_overflows_total");
    hc_response_free(&r);
    float s[T_TASKS];
    T_CHECK(score_user(961, 4, s), "a good request after");
}

/* A server with one body buffer: while a client holds it (half its body
 * sent), another request with a body gets 503 before its body is read, a
 * GET still works; once the first connection is gone the buffer serves
 * again. */
static void test_body_buffers(void)
{
    serve_options o;
    serve_options_default(&o);
    o.model_repository = repo_dir;
    o.host = HOST;
    o.http_port = 0;
    o.metrics_port = 0;
    o.body_buffers = 1;
    o.queue_size = 4;
    o.cache_bytes = 4 << 20;
    o.threads = 1;
    server *s2 = NULL;
    hstu_error err = {0};
    T_REQUIRE(serve_start(&o, &s2, &err) == HSTU_OK, "server with one buffer: %s", err.msg);
    int p2 = serve_http_port(s2);
    const char *b = good_with(F_U, "{\"name\":\"USER_IDS\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[982]}");
    int fd = hc_connect(HOST, p2, 5000);
    T_REQUIRE(fd >= 0, "connect");
    char head[256];
    int hn = snprintf(head, sizeof head, "POST /v2/models/hstu/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n",
                      strlen(b));
    T_CHECK(send(fd, head, (size_t)hn, 0) == hn && send(fd, b, 10, 0) == 10, "send half a request");
    usleep(200000);
    hc_response r;
    char e[512];
    int rc = hc_call(HOST, p2, "POST", "/v2/models/hstu/infer", NULL, b, strlen(b), &r);
    T_CHECK(rc == 0 && r.status == 503 && strstr(err_of(&r, e, sizeof e), "request buffers"), "second body: %d %s",
            rc ? -1 : r.status, rc ? "" : r.body);
    hc_response_free(&r);
    T_CHECK(hc_call(HOST, p2, "GET", "/v2/health/ready", NULL, NULL, 0, &r) == 0 && r.status == 200, "GET: %d",
            r.status);
    hc_response_free(&r);
    close(fd);
    int status = -1;
    for (int k = 0; k < 100 && status != 200; k++) { /* the server sees the close */
        usleep(20000);
        if (hc_call(HOST, p2, "POST", "/v2/models/hstu/infer", NULL, b, strlen(b), &r) == 0)
            status = r.status;
        hc_response_free(&r);
    }
    T_CHECK(status == 200, "the buffer was not given back: %d", status);
    T_CHECK(hc_call(HOST, serve_metrics_port(s2), "GET", "/metrics", NULL, NULL, 0, &r) == 0 &&
                strstr(r.body, "\nhstu_request_buffer_refusals_total ") &&
                atoll(strstr(r.body, "\nhstu_request_buffer_refusals_total ") + 36) >= 1 &&
                strstr(r.body, "hstu_request_buffers{state=\"in_use\"} 0"),
            "buffer metrics: %s", r.body ? strstr(r.body, "hstu_request_buffer") : "");
    hc_response_free(&r);
    serve_stop(s2);
}

/* `hstu serve` as a process: SIGTERM while a request waits in the queue;
 * the request is answered and the process exits 0. */
static void test_sigterm(void)
{
    char port_file[512];
    snprintf(port_file, sizeof port_file, "%s/ports", repo_dir);
    pid_t pid = fork();
    T_REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        execl(hstu_bin(), "hstu", "serve", "--model-repository", repo_dir, "--host", HOST, "--http-port", "0",
              "--metrics-port", "0", "--max-queue-delay-us", "1500000", "--cache-mb", "8", "--threads", "1",
              "--port-file", port_file, (char *)NULL);
        _exit(127);
    }
    int p = 0, mp = 0;
    for (int k = 0; k < 200 && !p; k++) {
        usleep(50000);
        FILE *f = fopen(port_file, "r");
        if (f) {
            if (fscanf(f, "%d %d", &p, &mp) != 2)
                p = 0;
            fclose(f);
        }
    }
    if (!p) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        T_REQUIRE(false, "hstu serve did not start");
    }
    slow_arg a = {.port = p};
    pthread_t th;
    pthread_create(&th, NULL, slow_post, &a);
    /* wait until the request is in the queue (waiting for a batch) */
    bool queued = false;
    for (int k = 0; k < 100 && !queued; k++) {
        hc_response r;
        if (hc_call(HOST, mp, "GET", "/metrics", NULL, NULL, 0, &r) == 0 && r.status == 200)
            queued = strstr(r.body, "nv_inference_pending_request_count{model=\"hstu\",version=\"1\"} 1") != NULL;
        hc_response_free(&r);
        if (!queued)
            usleep(5000);
    }
    T_CHECK(queued, "the request never showed as pending");
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    pthread_join(th, NULL);
    T_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    T_CHECK(a.status == 200, "in-flight request at SIGTERM: %d", a.status);
    hc_response r;
    T_CHECK(hc_call(HOST, p, "GET", "/v2/health/live", NULL, NULL, 0, &r) != 0, "still listening after exit");
    hc_response_free(&r);
}

int main(void)
{
    void *frames[4];
    backtrace(frames, 4); /* loads the unwinder now, not inside an allocation */
    hooks_install();
    find_engine_code();
    if (!start_server()) {
        printf("FAIL  server start\n");
        return t_summary() | 1;
    }
    t_run("serve: every endpoint", test_endpoints);
    t_run("serve: scores = hstu infer, concurrent clients", test_scores_vs_infer);
    t_run("serve: retrieval = hstu infer", test_retrieval);
    t_run("serve: bad requests, then the cache intact", test_bad_requests);
    t_run("serve: one user's requests at once (serialized)", test_same_user_concurrent);
    t_run("serve: logits parameter", test_logits);
    t_run("serve: body over the limit (413)", test_body_limit);
    t_run("serve: binary tensor data", test_binary);
    t_run("serve: timeout parameter", test_timeout_param);
    t_run("serve: disconnecting and slow clients", test_disconnect_and_slow);
    t_run("serve: statistics and metrics", test_stats_and_metrics);
    t_run("serve: Triton HSTU example interface", test_compat);
    t_run("serve: no allocation on the request path", test_no_alloc);
    t_run("serve: JSON over the parse memory (413)", test_json_arena_cap);
    t_run("serve: request buffers bound (503), then reused", test_body_buffers);
    t_run("serve: queue full (503)", test_queue_full);
    serve_stop(srv);
    t_run("serve: SIGTERM finishes queued requests, exit 0", test_sigterm);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", repo_dir);
    if (system(cmd) != 0)
        printf("    note: could not remove %s\n", repo_dir);
    return t_summary();
}
