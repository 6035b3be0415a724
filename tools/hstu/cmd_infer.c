/* cmd_infer.c - `hstu infer`: JSON-lines requests through one engine.
 *
 * Requests are read in order and results written in order, one line each.
 * Consecutive requests of distinct users are grouped into batches of up to
 * --batch; a user seen again starts a new batch, so it sees its own earlier
 * request's cache. A bad line gets {"error": ...} and changes nothing.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu infer --model DIR --requests FILE [options]\n"
            "\n"
            "Reads one JSON request per line (FILE, or - for stdin) and writes one JSON\n"
            "result per line to stdout, in order. All requests go through one engine, so\n"
            "returning users reuse the K/V cached by their earlier requests.\n"
            "\n"
            "  ranking:   {\"user_id\":7,\"context\":[..],\"items\":[..],\"actions\":[..],\"candidates\":[..]}\n"
            "          -> {\"user_id\":7,\"scores\":[[T probabilities] per candidate]}\n"
            "  retrieval: {\"user_id\":7,\"items\":[..],\"timestamps\":[..],\"query_time\":t,\"top_k\":10}\n"
            "          -> {\"user_id\":7,\"items\":[ids],\"scores\":[..]}\n"
            "  a bad line -> {\"error\":\"line N: what was wrong\"}; the others go on.\n"
            "\n"
            "  --backend B      cpu (default, OpenBLAS + OpenMP), ref (plain loops) or cuda\n"
            "  --no-cache       recompute every request in full\n"
            "  --logits         ranking: logits instead of probabilities\n"
            "  --batch N        run up to N consecutive requests of distinct users together (1)\n"
            "  --page-size P    KV page size in tokens (32)\n"
            "  --cache-mb M     KV page pool budget in MiB (1024)\n"
            "  --host-cache-mb M   cuda: host tier of pinned memory for offloaded K/V chunks (0: none)\n"
            "  --chunk-tokens N    cuda: rows per host chunk, a multiple of the page size (1024)\n"
            "  --no-graphs      cuda: run the layers eagerly, without CUDA graphs\n"
            "  --prefix-check MODE  when cached rows are checked against the history: eager,\n"
            "                   deferred (while the GPU runs; a rewritten history is run\n"
            "                   again) or auto (deferred on cuda, eager on cpu; the default)\n"
            "  --onload MODE    cuda: how much of a host hit's prefix to bring up: auto (the\n"
            "                   rows whose transfer the GPU's recompute of the rest hides;\n"
            "                   the default), all, or none (recompute host hits)\n"
            "  --onload-gbs G   cuda: auto's host-to-device rate in GB/s (default: measured)\n"
            "  --compute-tflops F  cuda: auto's compute rate in TFLOP/s (default: measured)\n"
            "  --max-tokens T   workspace rows per batch (default: 16384 or one user at the maxima)\n"
            "  --threads N      threads (default: all cores)\n"
            "  --stats          print cache statistics to stderr at the end\n");
}

typedef struct pending {
    cli_request creq;
    hstu_result res;
    bool bad;
    char msg[HSTU_MSG_MAX + 32]; /* "line N: " + the engine's message */
} pending;

static void flush_batch(hstu_engine *e, const hstu_config *cfg, pending *p, int n, bool logits)
{
    hstu_request reqs[256];
    hstu_result res[256];
    int idx[256], good = 0;
    for (int i = 0; i < n; i++)
        if (!p[i].bad) {
            reqs[good] = p[i].creq.req;
            res[good] = p[i].res;
            idx[good++] = i;
        }
    hstu_error err = {0};
    if (good > 0 && hstu_engine_run(e, reqs, good, res, logits, &err) != HSTU_OK) {
        /* Every request was checked on its own; a batch error is unexpected,
         * but answer each line rather than lose them. */
        for (int i = 0; i < good; i++) {
            p[idx[i]].bad = true;
            snprintf(p[idx[i]].msg, sizeof p[idx[i]].msg, "%s", err.msg);
        }
    }
    for (int i = 0, g = 0; i < n; i++) {
        if (p[i].bad)
            cli_error_print(stdout, p[i].msg);
        else
            cli_result_print(stdout, cfg, &p[i].creq.req, &res[g++]);
        cli_result_free(&p[i].res);
    }
    fflush(stdout);
}

int cmd_infer(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"requests", required_argument, 0, 'r'},
        {"backend", required_argument, 0, 'b'},    {"no-cache", no_argument, 0, 'n'},
        {"logits", no_argument, 0, 'l'},           {"batch", required_argument, 0, 'B'},
        {"page-size", required_argument, 0, 'P'},  {"cache-mb", required_argument, 0, 'C'},
        {"max-tokens", required_argument, 0, 'T'}, {"threads", required_argument, 0, 't'},
        {"stats", no_argument, 0, 's'},            {"help", no_argument, 0, 'h'},
        {"host-cache-mb", required_argument, 0, 'H'}, {"chunk-tokens", required_argument, 0, 'K'},
        {"no-graphs", no_argument, 0, 'G'},      {"prefix-check", required_argument, 0, 'X'},
        {"onload", required_argument, 0, 'O'},     {"onload-gbs", required_argument, 0, 'g'},
        {"compute-tflops", required_argument, 0, 'f'},
        {0, 0, 0, 0},
    };
    const char *model_dir = NULL, *req_path = NULL;
    bool logits = false, stats = false;
    int batch = 1;
    hstu_engine_options eo;
    hstu_engine_options_default(&eo);
    hstu_error err = {0};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'r': req_path = optarg; break;
        case 'b': cli_parse_choice("--backend", hstu_backend_parse(optarg, &eo.backend, &err), &err); break;
        case 'n': eo.use_cache = false; break;
        case 'l': logits = true; break;
        case 'B': batch = (int)cli_parse_long("--batch", optarg, 1, 256); break;
        case 'P': eo.page_size = (int)cli_parse_long("--page-size", optarg, 1, 65536); break;
        case 'C': eo.cache_bytes = (size_t)cli_parse_long("--cache-mb", optarg, 1, 1L << 24) << 20; break;
        case 'T': eo.max_batch_tokens = (int)cli_parse_long("--max-tokens", optarg, 1, 1L << 26); break;
        case 't': eo.threads = (int)cli_parse_long("--threads", optarg, 1, 1024); break;
        case 's': stats = true; break;
        case 'H': eo.host_cache_bytes = (size_t)cli_parse_long("--host-cache-mb", optarg, 0, 1L << 24) << 20; break;
        case 'K': eo.chunk_tokens = (int)cli_parse_long("--chunk-tokens", optarg, 1, 1L << 20); break;
        case 'G': eo.cuda_graphs = false; break;
        case 'X':
            cli_parse_choice("--prefix-check", hstu_prefix_check_parse(optarg, &eo.prefix_check, &err), &err);
            break;
        case 'O': cli_parse_choice("--onload", hstu_onload_parse(optarg, &eo.onload, &err), &err); break;
        case 'g': eo.onload_gbs = cli_parse_double("--onload-gbs", optarg, 0.001, 1e5); break;
        case 'f': eo.compute_tflops = cli_parse_double("--compute-tflops", optarg, 0.001, 1e5); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model_dir || !req_path || optind < argc) {
        fprintf(stderr, "hstu infer: --model and --requests are required\n\n");
        usage(stderr);
        return 2;
    }
    FILE *in = strcmp(req_path, "-") ? fopen(req_path, "r") : stdin;
    if (!in) {
        fprintf(stderr, "hstu infer: %s: cannot open the requests file\n", req_path);
        return 1;
    }
    int rc = 1;
    hstu_model *m = NULL;
    hstu_engine *e = NULL;
    pending *p = calloc((size_t)batch, sizeof *p);
    char *line = NULL;
    size_t cap = 0;
    if (!p) {
        fprintf(stderr, "hstu infer: out of memory\n");
        goto done;
    }
    if (hstu_model_load(model_dir, &m, &err) != HSTU_OK ||
        hstu_engine_create(m, &eo, &e, &err) != HSTU_OK) {
        fprintf(stderr, "hstu infer: %s\n", err.msg);
        goto done;
    }
    if (eo.backend == HSTU_BACKEND_CUDA && eo.use_cache) {
        /* the memory plan, at start (docs/kvcache.md) */
        hstu_cache_stats s;
        hstu_engine_cache_stats(e, &s);
        fprintf(stderr,
                "hstu infer: GPU KV cache %d pages of %d tokens (%.2f MiB each) = %.0f MiB; host tier %d chunks "
                "(%.1f MiB each) = %.0f MiB pinned; CUDA graphs %s; engine holds %.0f MiB\n",
                s.pages_total, s.page_size, s.page_bytes / 1048576.0, s.pool_bytes / 1048576.0, s.host_chunks_total,
                s.chunk_bytes / 1048576.0, s.host_bytes / 1048576.0, eo.cuda_graphs ? "on" : "off",
                hstu_engine_bytes(e) / 1048576.0);
    }
    const hstu_config *cfg = hstu_model_config(m);
    int n = 0;
    long lineno = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, in)) != -1) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (len == 0)
            continue; /* blank lines are not requests */
        pending *q = &p[n];
        q->bad = false;
        if (cli_request_parse(cfg, line, (size_t)len, &q->creq, &err) != HSTU_OK ||
            hstu_engine_check(e, &q->creq.req, &err) != HSTU_OK ||
            cli_result_alloc(cfg, &q->creq.req, &q->res, &err) != HSTU_OK) {
            q->bad = true;
            snprintf(q->msg, sizeof q->msg, "line %ld: %s", lineno, err.msg);
        }
        /* A user already in this batch must wait for it: flush first. */
        bool repeat = false;
        for (int i = 0; i < n && !q->bad; i++)
            repeat |= !p[i].bad && p[i].creq.req.user_id == q->creq.req.user_id;
        if (repeat) {
            pending tmp = *q;
            flush_batch(e, cfg, p, n, logits);
            *q = p[0];
            p[0] = tmp;
            n = 0;
        }
        n++;
        if (n == batch) {
            flush_batch(e, cfg, p, n, logits);
            n = 0;
        }
    }
    flush_batch(e, cfg, p, n, logits);
    if (stats) {
        hstu_cache_stats s;
        hstu_engine_cache_stats(e, &s);
        fprintf(stderr,
                "cache: %llu hits, %llu misses, %llu rewrites (%llu run again), %llu evictions, %llu degraded; "
                "tokens reused %llu, computed %llu; pages %d/%d\n",
                (unsigned long long)s.device_hits, (unsigned long long)s.misses,
                (unsigned long long)s.rewrites, (unsigned long long)s.redone, (unsigned long long)s.evictions,
                (unsigned long long)s.degraded, (unsigned long long)s.tokens_reused,
                (unsigned long long)s.tokens_computed, s.pages_in_use, s.pages_total);
        if (eo.backend == HSTU_BACKEND_CUDA)
            fprintf(stderr,
                    "host tier: %llu hits (%llu rows recomputed instead of onloaded), %llu offloads (%llu "
                    "skipped), %.1f MiB onloaded in %.2f ms (issued in %.2f), %.1f MiB offloaded in %.2f ms (issued in "
                    "%.2f); chunks %d/%d; onload "
                    "model (batch %d) %.1f GB/s, %.0f TFLOP/s + %.3f ms, + %.3f ms + %.3f ms/GB onloading; CUDA "
                    "graphs: %llu replays, %llu buckets, %llu eager\n",
                    (unsigned long long)s.host_hits, (unsigned long long)s.host_rows_recomputed,
                    (unsigned long long)s.offloads,
                    (unsigned long long)s.offloads_skipped, s.onload_bytes / 1048576.0, s.onload_ms,
                    s.onload_issue_ms, s.offload_bytes / 1048576.0, s.offload_ms, s.offload_issue_ms, s.host_chunks_in_use, s.host_chunks_total,
                    s.onload_model_batch, s.onload_model_gbs, s.onload_model_tflops, s.onload_model_fixed_ms,
                    s.onload_model_extra_ms, s.onload_model_extra_ms_per_gb,
                    (unsigned long long)s.graph_runs, (unsigned long long)s.graph_captures,
                    (unsigned long long)s.eager_runs);
    }
    rc = 0;
done:
    if (p)
        for (int i = 0; i < batch; i++)
            cli_request_free(&p[i].creq);
    free(p);
    free(line);
    hstu_engine_destroy(e);
    hstu_model_destroy(m);
    if (in != stdin)
        fclose(in);
    return rc;
}
