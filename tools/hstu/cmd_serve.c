/* cmd_serve.c - `hstu serve`: the KServe v2 / Triton-compatible HTTP server.
 *
 * Parses options, starts the server (src/serve/), then waits for SIGTERM or
 * SIGINT: a handler (whichever thread takes the signal, libraries' threads
 * included) writes the signal's number to a pipe that this thread reads, so
 * the shutdown runs here, in order (docs/serving.md), and the process exits 0.
 */
#include "cli.h"
#include "serve/serve.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int stop_pipe[2] = {-1, -1};

static void on_stop_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(stop_pipe[1], &b, 1) < 0) { /* the pipe is full: a stop is pending already */ }
    errno = saved;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu serve --model-repository DIR [options]\n"
            "\n"
            "Serves every model folder of DIR (config.json + model.safetensors, as\n"
            "`hstu init` writes) over HTTP: the KServe v2 predict protocol with Triton's\n"
            "binary data, statistics, model configuration and repository extensions\n"
            "(docs/serving.md). SIGTERM or SIGINT: finish queued requests, exit 0.\n"
            "\n"
            "  --http-port P           inference port (8000; 0 = any free port)\n"
            "  --metrics-port P        Prometheus /metrics port (8002; -1 = off)\n"
            "  --host ADDR             IPv4 address to bind (0.0.0.0)\n"
            "  --backend B             cpu (default), ref or cuda\n"
            "  --max-batch N           users per batch and per request (32)\n"
            "  --max-queue-delay-us U  wait up to U us for a fuller batch (100)\n"
            "  --token-budget T        tokens per batch and per request (default: the\n"
            "                          engine's workspace, max(16384, one user at the maxima))\n"
            "  --queue-size Q          requests queued or in flight per model (64); more: 503\n"
            "  --timeout-us U          default per-request queue timeout (0 = none)\n"
            "  --conn-timeout-s S      a request must arrive whole within S seconds (10)\n"
            "  --max-body-mb M         request body limit (64); more: 413\n"
            "  --body-buffers N        requests with a body held at once (64), each\n"
            "                          with a reused buffer of --max-body-mb; more: 503\n"
            "  --max-connections N     concurrent connections (256)\n"
            "  --max-top-k K           retrieval top_k limit (1000)\n"
            "  --cache-mb M            KV cache per model in MiB (1024)\n"
            "  --host-cache-mb M       cuda: host tier per model in MiB of pinned memory (0: none)\n"
            "  --no-graphs             cuda: run the layers eagerly, without CUDA graphs\n"
            "  --prefix-check MODE     when a returning user's cached rows are checked against\n"
            "                          the history: eager (before the forward), deferred (while\n"
            "                          the GPU runs; a rewritten history is run again) or auto\n"
            "                          (deferred on cuda, eager on cpu; the default)\n"
            "  --onload MODE           cuda: how much of a host hit's prefix to bring up: auto\n"
            "                          (what the GPU's recompute of the rest hides; the\n"
            "                          default), all, or none (recompute host hits)\n"
            "  --threads N             engine threads (default: all cores)\n"
            "  --port-file FILE        write \"HTTP_PORT METRICS_PORT\" to FILE once listening\n");
}

int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model-repository", required_argument, 0, 'r'},
        {"http-port", required_argument, 0, 'p'},
        {"metrics-port", required_argument, 0, 'M'},
        {"host", required_argument, 0, 'H'},
        {"backend", required_argument, 0, 'b'},
        {"max-batch", required_argument, 0, 'B'},
        {"max-queue-delay-us", required_argument, 0, 'D'},
        {"token-budget", required_argument, 0, 'T'},
        {"queue-size", required_argument, 0, 'Q'},
        {"timeout-us", required_argument, 0, 'o'},
        {"conn-timeout-s", required_argument, 0, 'c'},
        {"max-body-mb", required_argument, 0, 'L'},
        {"body-buffers", required_argument, 0, 'U'},
        {"max-connections", required_argument, 0, 'N'},
        {"max-top-k", required_argument, 0, 'K'},
        {"cache-mb", required_argument, 0, 'C'},
        {"host-cache-mb", required_argument, 0, 'E'},
        {"no-graphs", no_argument, 0, 'G'},
        {"prefix-check", required_argument, 0, 'X'},
        {"onload", required_argument, 0, 'O'},
        {"threads", required_argument, 0, 't'},
        {"port-file", required_argument, 0, 'F'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    serve_options o;
    serve_options_default(&o);
    const char *port_file = NULL;
    hstu_error err = {0};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': o.model_repository = optarg; break;
        case 'p': o.http_port = (int)cli_parse_long("--http-port", optarg, 0, 65535); break;
        case 'M':
            o.metrics_port = strcmp(optarg, "-1") ? (int)cli_parse_long("--metrics-port", optarg, 0, 65535) : -1;
            break;
        case 'H': o.host = optarg; break;
        case 'b': cli_parse_choice("--backend", hstu_backend_parse(optarg, &o.backend, &err), &err); break;
        case 'B': o.max_batch = (int)cli_parse_long("--max-batch", optarg, 1, 4096); break;
        case 'D': o.max_queue_delay_us = cli_parse_long("--max-queue-delay-us", optarg, 0, 60000000L); break;
        case 'T': o.token_budget = (int)cli_parse_long("--token-budget", optarg, 1, 1L << 26); break;
        case 'Q': o.queue_size = (int)cli_parse_long("--queue-size", optarg, 1, 65536); break;
        case 'o': o.timeout_us = cli_parse_long("--timeout-us", optarg, 0, 1L << 40); break;
        case 'c': o.conn_timeout_s = cli_parse_long("--conn-timeout-s", optarg, 1, 86400); break;
        case 'L': o.max_body = (size_t)cli_parse_long("--max-body-mb", optarg, 1, 1L << 14) << 20; break;
        case 'U': o.body_buffers = (int)cli_parse_long("--body-buffers", optarg, 1, 65536); break;
        case 'N': o.max_connections = (int)cli_parse_long("--max-connections", optarg, 1, 65536); break;
        case 'K': o.max_top_k = (int)cli_parse_long("--max-top-k", optarg, 1, 100000); break;
        case 'C': o.cache_bytes = (size_t)cli_parse_long("--cache-mb", optarg, 1, 1L << 24) << 20; break;
        case 'E': o.host_cache_bytes = (size_t)cli_parse_long("--host-cache-mb", optarg, 0, 1L << 24) << 20; break;
        case 'G': o.cuda_graphs = false; break;
        case 'X':
            cli_parse_choice("--prefix-check", hstu_prefix_check_parse(optarg, &o.prefix_check, &err), &err);
            break;
        case 'O': cli_parse_choice("--onload", hstu_onload_parse(optarg, &o.onload, &err), &err); break;
        case 't': o.threads = (int)cli_parse_long("--threads", optarg, 1, 1024); break;
        case 'F': port_file = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!o.model_repository || optind < argc) {
        fprintf(stderr, "hstu serve: --model-repository is required\n\n");
        usage(stderr);
        return 2;
    }
    /* The stop signals' handler is installed before any thread starts. */
    if (pipe2(stop_pipe, O_CLOEXEC) != 0) {
        fprintf(stderr, "hstu serve: cannot create the signal pipe\n");
        return 1;
    }
    fcntl(stop_pipe[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    server *s = NULL;
    if (serve_start(&o, &s, &err) != HSTU_OK) {
        fprintf(stderr, "hstu serve: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "hstu serve: listening on port %d (HTTP), %d (metrics), backend %s\n", serve_http_port(s),
            serve_metrics_port(s), hstu_backend_name(o.backend));
    if (port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d %d\n", serve_http_port(s), serve_metrics_port(s)) < 0 || fclose(f) != 0 ||
            rename(tmp, port_file) != 0) {
            fprintf(stderr, "hstu serve: %s: cannot write the port file\n", port_file);
            serve_stop(s);
            return 1;
        }
    }
    unsigned char sig = 0;
    while (read(stop_pipe[0], &sig, 1) != 1 && errno == EINTR)
        ;
    fprintf(stderr, "hstu serve: %s: finishing queued requests, then exiting\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    serve_stop(s);
    fprintf(stderr, "hstu serve: stopped\n");
    return 0;
}
