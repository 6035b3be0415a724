/* cmd_loadgen.c - `hstu loadgen`: drive `hstu serve` with returning users.
 *
 * Users are drawn from a Zipf distribution over --users ids, so a few come
 * back often; each return adds --growth items to the user's history (the
 * same items every time: item j of user u is a hash of (u, j)), so the
 * server's KV cache can reuse the prefix. A history that would pass the
 * model's maximum starts over (a rewrite). A user has at most one request
 * in flight, as a person does: a user drawn while its last request is
 * unanswered is redrawn (so its returns reach the server in order). Load is closed (--concurrency
 * clients, each sending as soon as its last answer came) or open (--rate
 * requests per second, Poisson arrivals shared among the clients; latency
 * counts from the scheduled send time, so a slow server is not hidden).
 *
 * --warmup-users first sends every user its first request (closed loop,
 * untimed, not in the numbers), so that the timed requests are returns on a
 * cached history; --sequential picks the users in turn instead of by Zipf
 * (with --warmup-users and --requests equal to --users, every timed request
 * is one user's first return: the cached case of `hstu bench`).
 *
 * Output: throughput, latency percentiles, the server's own split of the
 * time (deltas of /v2/models/M/stats: queue, compute input/infer/output),
 * the history lengths sent and the KV cache hit rate (deltas of /metrics),
 * one line each; --csv appends one row per run.
 */
#include "cli.h"
#include "core/clock.h"
#include "serve/http_client.h"

#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct lg_config {
    char host[64];
    int port, metrics_port;
    const char *model;
    int concurrency;
    double rate;            /* 0: closed loop */
    long requests;
    double duration_s;
    int users;
    double zipf_s;
    int history_start, growth, candidates, top_k;
    bool binary, warmup_users, sequential;
    const char *csv;
    uint64_t seed;
    /* from the model's config */
    bool ranking;
    int max_history, max_candidates, n_context;
    long long item_rows, action_rows, context_rows[HSTU_MAX_CONTEXT];
} lg_config;

typedef struct lg_state {
    lg_config c;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* a user's request was answered */
    int *hist;              /* [users] current history length, -1: never seen */
    bool *busy;             /* [users] a request of the user is in flight */
    double *zipf_cdf;       /* [users] */
    long sent, done, errors, status_503;
    double *lat_ms;         /* [requests cap] */
    long lat_n, lat_cap;
    long next_user;         /* --sequential, warm-up: the next user in turn */
    bool warming;           /* the warm-up: users in turn, once each, untimed */
    double hist_sum;        /* history items of the timed requests */
    int hist_max;
    double t0, t_end;
    double next_send;       /* open loop: the next scheduled send time */
    uint64_t rng;
} lg_state;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static double uniform(uint64_t *s)
{
    *s = mix(*s + 0x9e3779b97f4a7c15ull);
    return ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
}

/* ---- the model, from /config -------------------------------------------------- */

static long long param_ll(json_t *params, const char *key)
{
    const char *v = json_string_value(json_object_get(json_object_get(params, key), "string_value"));
    return v ? atoll(v) : -1;
}

static bool read_model(lg_config *c)
{
    char path[512];
    snprintf(path, sizeof path, "/v2/models/%s/config", c->model);
    hc_response r;
    if (hc_call(c->host, c->port, "GET", path, NULL, NULL, 0, &r) != 0 || r.status != 200) {
        fprintf(stderr, "hstu loadgen: GET %s on %s:%d: %s\n", path, c->host, c->port,
                r.body ? r.body : "no answer");
        hc_response_free(&r);
        return false;
    }
    json_t *o = json_loadb(r.body, r.len, 0, NULL);
    hc_response_free(&r);
    json_t *p = json_object_get(o, "parameters");
    const char *fam = json_string_value(json_object_get(json_object_get(p, "family"), "string_value"));
    c->ranking = fam && !strcmp(fam, "ranking");
    c->max_history = (int)param_ll(p, "max_history");
    c->max_candidates = (int)param_ll(p, "max_candidates");
    c->item_rows = param_ll(p, "item_rows");
    c->action_rows = param_ll(p, "action_rows");
    const char *cr = json_string_value(json_object_get(json_object_get(p, "context_rows"), "string_value"));
    c->n_context = 0;
    for (const char *s = cr; s && *s && c->n_context < HSTU_MAX_CONTEXT;) {
        c->context_rows[c->n_context++] = atoll(s);
        s = strchr(s, ',');
        s = s ? s + 1 : NULL;
    }
    json_decref(o);
    if (!fam || c->max_history < 1 || c->item_rows < 2) {
        fprintf(stderr, "hstu loadgen: model %s: its config lacks the parameters loadgen needs\n", c->model);
        return false;
    }
    if (c->candidates > c->max_candidates)
        c->candidates = c->max_candidates;
    return true;
}

/* ---- one request ------------------------------------------------------------------ */

typedef struct req_buf {
    char *p;
    size_t len, cap;
    size_t header_len;
} req_buf;

static void rb_put(req_buf *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            fprintf(stderr, "hstu loadgen: out of memory\n");
            exit(1);
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void rb_printf(req_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rb_printf(req_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    rb_put(b, tmp, (size_t)n);
}

typedef struct tensor {
    const char *name;
    int ndim;
    int64_t d0, d1;
    int64_t *v;
} tensor;

static void build_body(const lg_config *c, req_buf *b, tensor *t, int nt)
{
    b->len = 0;
    rb_printf(b, "{\"inputs\":[");
    for (int i = 0; i < nt; i++) {
        int64_t n = t[i].ndim == 2 ? t[i].d0 * t[i].d1 : t[i].d0;
        rb_printf(b, "%s{\"name\":\"%s\",\"datatype\":\"INT64\",\"shape\":", i ? "," : "", t[i].name);
        if (t[i].ndim == 2)
            rb_printf(b, "[%lld,%lld]", (long long)t[i].d0, (long long)t[i].d1);
        else
            rb_printf(b, "[%lld]", (long long)t[i].d0);
        if (c->binary) {
            rb_printf(b, ",\"parameters\":{\"binary_data_size\":%lld}}", (long long)n * 8);
        } else {
            rb_printf(b, ",\"data\":[");
            for (int64_t k = 0; k < n; k++)
                rb_printf(b, "%s%lld", k ? "," : "", (long long)t[i].v[k]);
            rb_printf(b, "]}");
        }
    }
    rb_printf(b, "]");
    if (!c->ranking)
        rb_printf(b, ",\"parameters\":{\"top_k\":%d%s}", c->top_k, c->binary ? ",\"binary_data_output\":true" : "");
    else if (c->binary)
        rb_printf(b, ",\"parameters\":{\"binary_data_output\":true}");
    rb_printf(b, "}");
    b->header_len = b->len;
    if (c->binary)
        for (int i = 0; i < nt; i++) {
            int64_t n = t[i].ndim == 2 ? t[i].d0 * t[i].d1 : t[i].d0;
            rb_put(b, t[i].v, (size_t)n * 8);
        }
}

/* Picks a user (Zipf) and grows its history; returns the user and n. */
static int draw_zipf(lg_state *s)
{
    double x = uniform(&s->rng);
    int lo = 0, hi = s->c.users - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (s->zipf_cdf[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool any_free(const lg_state *s)
{
    for (int u = 0; u < s->c.users; u++)
        if (!s->busy[u])
            return true;
    return false;
}

/* Picks a user with no request in flight (waits when every user has one),
 * marks it busy and grows its history; returns the user and n. */
static int pick_user(lg_state *s, int *n_out)
{
    pthread_mutex_lock(&s->mu);
    while (!any_free(s))
        pthread_cond_wait(&s->cv, &s->mu);
    int u;
    if (s->warming || s->c.sequential) {
        do
            u = (int)(s->next_user++ % s->c.users);
        while (s->busy[u]);
    } else {
        int tries = 0;
        do
            u = draw_zipf(s);
        while (s->busy[u] && ++tries < 64);
        while (s->busy[u]) /* the popular ones are all busy: the next free one */
            u = (u + 1) % s->c.users;
    }
    s->busy[u] = true;
    int n = s->hist[u] < 0 ? s->c.history_start : s->hist[u] + s->c.growth;
    if (n > s->c.max_history)
        n = s->c.history_start; /* start over: the server sees a rewrite */
    if (!s->c.ranking && n < 1)
        n = 1;
    s->hist[u] = n;
    if (!s->warming) {
        s->hist_sum += n;
        if (n > s->hist_max)
            s->hist_max = n;
    }
    pthread_mutex_unlock(&s->mu);
    *n_out = n;
    return u;
}

static void make_request(lg_state *s, int u, int n, uint64_t *rng, req_buf *b, int64_t *scratch)
{
    const lg_config *c = &s->c;
    int64_t uid = (int64_t)u + 1;
    int64_t *items = scratch, *second = scratch + c->max_history, *cands = second + c->max_history;
    int64_t *ctx = cands + c->max_candidates + 1;
    for (int j = 0; j < n; j++) {
        uint64_t h = mix((uint64_t)uid * 1000003u + (uint64_t)j);
        items[j] = 1 + (int64_t)(h % (uint64_t)(c->item_rows - 1));
        second[j] = c->ranking ? (int64_t)((h >> 20) % (uint64_t)(c->action_rows > 0 ? c->action_rows : 1))
                               : 1600000000 + (int64_t)j * 60; /* timestamps, a minute apart */
    }
    for (int k = 0; k < c->n_context; k++)
        ctx[k] = (int64_t)(mix((uint64_t)uid * 31u + (uint64_t)k) % (uint64_t)c->context_rows[k]);
    int64_t one = 1, hl = n, m = c->candidates;
    for (int j = 0; j < m; j++)
        cands[j] = (int64_t)(uniform(rng) * (double)c->item_rows) % c->item_rows;
    tensor t[7];
    int nt = 0;
    t[nt++] = (tensor){"USER_IDS", 1, one, 0, &uid};
    t[nt++] = (tensor){"HISTORY_LENGTHS", 1, one, 0, &hl};
    t[nt++] = (tensor){"ITEM_IDS", 1, n, 0, items};
    if (c->ranking) {
        t[nt++] = (tensor){"ACTION_IDS", 1, n, 0, second};
        if (c->n_context > 0)
            t[nt++] = (tensor){"CONTEXT_IDS", 2, 1, c->n_context, ctx};
        t[nt++] = (tensor){"CANDIDATE_LENGTHS", 1, one, 0, &m};
        t[nt++] = (tensor){"CANDIDATE_IDS", 1, m, 0, cands};
    } else {
        t[nt++] = (tensor){"TIMESTAMPS", 1, n, 0, second};
    }
    build_body(c, b, t, nt);
}

static void *client_main(void *arg)
{
    lg_state *s = arg;
    const lg_config *c = &s->c;
    uint64_t rng = mix(c->seed ^ (uint64_t)(uintptr_t)&rng);
    req_buf b = {0};
    int64_t *scratch = malloc(sizeof(int64_t) * (2 * (size_t)c->max_history + (size_t)c->max_candidates + 1 +
                                                 HSTU_MAX_CONTEXT));
    char path[512], hdr[128];
    snprintf(path, sizeof path, "/v2/models/%s/infer", c->model);
    int fd = -1;
    while (scratch) {
        double scheduled;
        pthread_mutex_lock(&s->mu);
        bool stop = s->warming ? s->sent >= c->users
                               : (c->requests > 0 && s->sent >= c->requests) || (c->duration_s > 0 && core_now_s() >= s->t_end);
        bool open = c->rate > 0 && !s->warming;
        if (!stop) {
            s->sent++;
            if (open) {
                scheduled = s->next_send;
                s->next_send += -log(uniform(&s->rng)) / c->rate;
            } else {
                scheduled = 0;
            }
        }
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        if (open) {
            double wait = scheduled - core_now_s();
            if (wait > 0)
                usleep((useconds_t)(wait * 1e6));
        }
        int n;
        int u = pick_user(s, &n);
        make_request(s, u, n, &rng, &b, scratch);
        double t_start = open ? scheduled : core_now_s();
        hc_response r = {0};
        int rc = -1;
        if (c->binary)
            snprintf(hdr, sizeof hdr, "Inference-Header-Content-Length: %zu\r\n", b.header_len);
        /* A kept-alive connection the server closed while idle (its
         * --conn-timeout-s; at low rates) fails at once: once more on a new one. */
        for (int attempt = 0; attempt < 2 && rc != 0; attempt++) {
            bool reused = fd >= 0;
            if (fd < 0)
                fd = hc_connect(c->host, c->port, 60000);
            if (fd < 0)
                break;
            rc = hc_request(fd, "POST", path, c->binary ? hdr : NULL, b.p, b.len, &r);
            if (rc != 0) {
                hc_response_free(&r);
                close(fd);
                fd = -1;
                if (!reused)
                    break;
            }
        }
        double ms = (core_now_s() - t_start) * 1e3;
        if (rc != 0 && fd >= 0) {
            close(fd);
            fd = -1;
        }
        pthread_mutex_lock(&s->mu);
        s->busy[u] = false;
        pthread_cond_signal(&s->cv);
        s->done++;
        if (rc != 0 || r.status != 200) {
            s->errors++;
            s->status_503 += rc == 0 && r.status == 503;
            if (s->errors <= 3)
                fprintf(stderr, "hstu loadgen: request failed: %d %s\n", rc == 0 ? r.status : -1,
                        r.body ? r.body : "(no answer)");
        } else if (s->lat_n < s->lat_cap) {
            s->lat_ms[s->lat_n++] = ms;
        }
        pthread_mutex_unlock(&s->mu);
        hc_response_free(&r);
    }
    if (fd >= 0)
        close(fd);
    free(b.p);
    free(scratch);
    return NULL;
}

/* ---- server-side numbers ------------------------------------------------------- */

typedef struct server_snap {
    double success, queue_ns, input_ns, infer_ns, output_ns, exec, inferences;
    double hits, misses, reused, computed;
} server_snap;

static double dur_ns(json_t *is, const char *k) { return (double)json_integer_value(json_object_get(json_object_get(is, k), "ns")); }

static double metric_sum(const char *text, const char *name, const char *model)
{
    double sum = 0;
    char key[256];
    snprintf(key, sizeof key, "\n%s{model=\"%s\",", name, model);
    for (const char *p = text; (p = strstr(p, key)); p++) {
        const char *e = strchr(p, '}');
        if (e)
            sum += atof(e + 1);
    }
    return sum;
}

static void snapshot(const lg_config *c, server_snap *s)
{
    memset(s, 0, sizeof *s);
    char path[512];
    snprintf(path, sizeof path, "/v2/models/%s/stats", c->model);
    hc_response r;
    if (hc_call(c->host, c->port, "GET", path, NULL, NULL, 0, &r) == 0 && r.status == 200) {
        json_t *o = json_loadb(r.body, r.len, 0, NULL);
        json_t *ms = json_array_get(json_object_get(o, "model_stats"), 0);
        json_t *is = json_object_get(ms, "inference_stats");
        s->success = (double)json_integer_value(json_object_get(json_object_get(is, "success"), "count"));
        s->queue_ns = dur_ns(is, "queue");
        s->input_ns = dur_ns(is, "compute_input");
        s->infer_ns = dur_ns(is, "compute_infer");
        s->output_ns = dur_ns(is, "compute_output");
        s->exec = (double)json_integer_value(json_object_get(ms, "execution_count"));
        s->inferences = (double)json_integer_value(json_object_get(ms, "inference_count"));
        json_decref(o);
    }
    hc_response_free(&r);
    if (c->metrics_port > 0 && hc_call(c->host, c->metrics_port, "GET", "/metrics", NULL, NULL, 0, &r) == 0 &&
        r.status == 200) {
        s->hits = metric_sum(r.body, "hstu_kv_cache_hits_total", c->model);
        s->misses = metric_sum(r.body, "hstu_kv_cache_misses_total", c->model);
        s->reused = metric_sum(r.body, "hstu_kv_cache_tokens_reused_total", c->model);
        s->computed = metric_sum(r.body, "hstu_kv_cache_tokens_computed_total", c->model);
    }
    hc_response_free(&r);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, long n, double p)
{
    if (n == 0)
        return NAN;
    long i = (long)ceil(p / 100.0 * (double)n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu loadgen [options]\n"
            "\n"
            "Sends inference requests of returning users (Zipf) with growing histories to\n"
            "`hstu serve` and reports throughput, latency percentiles, the server's time\n"
            "split (from /stats) and KV cache hit rates (from /metrics).\n"
            "\n"
            "  --host ADDR         server address (127.0.0.1)\n"
            "  --port P            HTTP port (8000)\n"
            "  --metrics-port P    metrics port (8002; 0 = skip cache numbers)\n"
            "  --model NAME        model (hstu)\n"
            "  --concurrency C     clients (8)\n"
            "  --rate R            open loop: R requests/s, Poisson arrivals (default: closed loop)\n"
            "  --requests N        requests to send (1000), or\n"
            "  --duration S        seconds to run\n"
            "  --users U           user population (1000)\n"
            "  --zipf S            Zipf exponent of user popularity (1.1)\n"
            "  --history-start N   items of a new user's history (16)\n"
            "  --growth G          items added per return (4)\n"
            "  --candidates M      candidates per ranking request (64, capped by the model)\n"
            "  --top-k K           retrieval top_k (10)\n"
            "  --warmup-users      first send each user its first request, untimed\n"
            "  --sequential        users in turn (0, 1, ...) instead of Zipf\n"
            "  --binary            binary tensor data instead of JSON\n"
            "  --csv FILE          append a row of results to FILE\n"
            "  --seed S            random seed (1)\n");
}

int cmd_loadgen(int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", required_argument, 0, 'H'},       {"port", required_argument, 0, 'p'},
        {"metrics-port", required_argument, 0, 'M'}, {"model", required_argument, 0, 'm'},
        {"concurrency", required_argument, 0, 'c'}, {"rate", required_argument, 0, 'r'},
        {"requests", required_argument, 0, 'n'},   {"duration", required_argument, 0, 'd'},
        {"users", required_argument, 0, 'u'},      {"zipf", required_argument, 0, 'z'},
        {"history-start", required_argument, 0, 's'}, {"growth", required_argument, 0, 'g'},
        {"candidates", required_argument, 0, 'C'}, {"top-k", required_argument, 0, 'k'},
        {"binary", no_argument, 0, 'b'},           {"csv", required_argument, 0, 'v'},
        {"warmup-users", no_argument, 0, 'W'},     {"sequential", no_argument, 0, 'Q'},
        {"seed", required_argument, 0, 'S'},       {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    lg_state st;
    memset(&st, 0, sizeof st);
    lg_config *c = &st.c;
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8000;
    c->metrics_port = 8002;
    c->model = "hstu";
    c->concurrency = 8;
    c->requests = 1000;
    c->users = 1000;
    c->zipf_s = 1.1;
    c->history_start = 16;
    c->growth = 4;
    c->candidates = 64;
    c->top_k = 10;
    c->seed = 1;
    int o;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'H': snprintf(c->host, sizeof c->host, "%s", optarg); break;
        case 'p': c->port = (int)cli_parse_long("--port", optarg, 1, 65535); break;
        case 'M': c->metrics_port = (int)cli_parse_long("--metrics-port", optarg, 0, 65535); break;
        case 'm': c->model = optarg; break;
        case 'c': c->concurrency = (int)cli_parse_long("--concurrency", optarg, 1, 4096); break;
        case 'r': c->rate = atof(optarg); break;
        case 'n': c->requests = cli_parse_long("--requests", optarg, 1, 1L << 40); break;
        case 'd': c->duration_s = atof(optarg); c->requests = 0; break;
        case 'u': c->users = (int)cli_parse_long("--users", optarg, 1, 100000000); break;
        case 'z': c->zipf_s = atof(optarg); break;
        case 's': c->history_start = (int)cli_parse_long("--history-start", optarg, 0, 1 << 20); break;
        case 'g': c->growth = (int)cli_parse_long("--growth", optarg, 0, 1 << 20); break;
        case 'C': c->candidates = (int)cli_parse_long("--candidates", optarg, 0, 1 << 20); break;
        case 'k': c->top_k = (int)cli_parse_long("--top-k", optarg, 1, 100000); break;
        case 'b': c->binary = true; break;
        case 'W': c->warmup_users = true; break;
        case 'Q': c->sequential = true; break;
        case 'v': c->csv = optarg; break;
        case 'S': c->seed = (uint64_t)cli_parse_long("--seed", optarg, 0, 0x7fffffffL); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || c->rate < 0 || c->zipf_s <= 0 || (c->requests == 0 && c->duration_s <= 0)) {
        usage(stderr);
        return 2;
    }
    if (!read_model(c))
        return 1;
    if (c->history_start > c->max_history)
        c->history_start = c->max_history;
    pthread_mutex_init(&st.mu, NULL);
    st.rng = mix(c->seed);
    pthread_cond_init(&st.cv, NULL);
    st.hist = malloc(sizeof(int) * (size_t)c->users);
    st.busy = calloc((size_t)c->users, sizeof *st.busy);
    st.zipf_cdf = malloc(sizeof(double) * (size_t)c->users);
    st.lat_cap = c->requests > 0 ? c->requests : 10000000;
    st.lat_ms = malloc(sizeof(double) * (size_t)st.lat_cap);
    pthread_t *th = calloc((size_t)c->concurrency, sizeof *th);
    if (!st.hist || !st.busy || !st.zipf_cdf || !st.lat_ms || !th) {
        fprintf(stderr, "hstu loadgen: out of memory\n");
        return 1;
    }
    double z = 0;
    for (int u = 0; u < c->users; u++) {
        st.hist[u] = -1;
        z += pow((double)(u + 1), -c->zipf_s);
        st.zipf_cdf[u] = z;
    }
    for (int u = 0; u < c->users; u++)
        st.zipf_cdf[u] /= z;
    if (c->warmup_users) {
        st.warming = true;
        double w0 = core_now_s();
        for (int i = 0; i < c->concurrency; i++)
            pthread_create(&th[i], NULL, client_main, &st);
        for (int i = 0; i < c->concurrency; i++)
            pthread_join(th[i], NULL);
        fprintf(stderr, "hstu loadgen: warm-up: %d users in %.1f s, %ld errors\n", c->users, core_now_s() - w0,
                st.errors);
        st.warming = false;
        st.sent = st.done = st.errors = st.status_503 = st.lat_n = 0;
        st.next_user = 0;
    }
    server_snap before, after;
    snapshot(c, &before);
    st.t0 = core_now_s();
    st.t_end = st.t0 + c->duration_s;
    st.next_send = st.t0;
    for (int i = 0; i < c->concurrency; i++)
        pthread_create(&th[i], NULL, client_main, &st);
    for (int i = 0; i < c->concurrency; i++)
        pthread_join(th[i], NULL);
    double secs = core_now_s() - st.t0;
    snapshot(c, &after);
    qsort(st.lat_ms, (size_t)st.lat_n, sizeof(double), cmp_double);
    double mean = 0;
    for (long i = 0; i < st.lat_n; i++)
        mean += st.lat_ms[i];
    mean = st.lat_n ? mean / (double)st.lat_n : NAN;
    double ok = after.success - before.success;
    double per = ok > 0 ? 1e3 * ok : 1; /* ns -> us per request */
    double q_us = (after.queue_ns - before.queue_ns) / per, in_us = (after.input_ns - before.input_ns) / per;
    double inf_us = (after.infer_ns - before.infer_ns) / per, out_us = (after.output_ns - before.output_ns) / per;
    double execs = after.exec - before.exec, users_done = after.inferences - before.inferences;
    double hits = after.hits - before.hits, misses = after.misses - before.misses;
    double reused = after.reused - before.reused, computed = after.computed - before.computed;
    double hit_rate = hits + misses > 0 ? hits / (hits + misses) : NAN;
    double reuse = reused + computed > 0 ? reused / (reused + computed) : NAN;
    double p50 = pct(st.lat_ms, st.lat_n, 50), p90 = pct(st.lat_ms, st.lat_n, 90), p95 = pct(st.lat_ms, st.lat_n, 95),
           p99 = pct(st.lat_ms, st.lat_n, 99);
    printf("loadgen: %s, %s, %s %d, %ld requests in %.2f s: %.1f req/s, %ld errors (%ld 503)\n", c->model,
           c->binary ? "binary" : "JSON", c->rate > 0 ? "open loop, clients" : "closed loop, concurrency",
           c->concurrency, st.done, secs, (double)st.lat_n / secs, st.errors, st.status_503);
    printf("latency ms: p50 %.2f  p90 %.2f  p95 %.2f  p99 %.2f  mean %.2f\n", p50, p90, p95, p99, mean);
    printf("server us/request: queue %.0f  compute_input %.0f  compute_infer %.0f  compute_output %.0f; "
           "%.2f users per batch\n",
           q_us, in_us, inf_us, out_us, execs > 0 ? users_done / execs : 0.0);
    printf("history items: mean %.0f, max %d\n", st.sent ? st.hist_sum / (double)st.sent : 0.0, st.hist_max);
    printf("kv cache: hit rate %.3f (%.0f hits, %.0f misses), tokens reused %.3f\n", hit_rate, hits, misses, reuse);
    if (c->csv) {
        FILE *f = fopen(c->csv, "a");
        if (!f) {
            fprintf(stderr, "hstu loadgen: %s: cannot open\n", c->csv);
            return 1;
        }
        if (ftell(f) == 0)
            fprintf(f, "model,data,mode,concurrency,rate,users,zipf,requests,errors,seconds,throughput,p50_ms,p90_ms,"
                       "p95_ms,p99_ms,mean_ms,queue_us,compute_input_us,compute_infer_us,compute_output_us,"
                       "users_per_batch,cache_hit_rate,token_reuse,history_mean\n");
        fprintf(f, "%s,%s,%s,%d,%.1f,%d,%.2f,%ld,%ld,%.3f,%.2f,%.3f,%.3f,%.3f,%.3f,%.3f,%.1f,%.1f,%.1f,%.1f,%.2f,%.4f,%.4f,%.0f\n",
                c->model, c->binary ? "binary" : "json", c->rate > 0 ? "open" : "closed", c->concurrency, c->rate,
                c->users, c->zipf_s, st.done, st.errors, secs, (double)st.lat_n / secs, p50, p90, p95, p99, mean, q_us,
                in_us, inf_us, out_us, execs > 0 ? users_done / execs : 0.0, hit_rate, reuse,
                st.sent ? st.hist_sum / (double)st.sent : 0.0);
        fclose(f);
    }
    free(st.hist);
    free(st.busy);
    free(st.zipf_cdf);
    free(st.lat_ms);
    free(th);
    return st.errors ? 1 : 0;
}
