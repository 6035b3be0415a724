/* main.c - the hstu command: dispatch to subcommands. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu <command> [options]   (hstu <command> --help for each)\n"
            "\n"
            "HSTU generative-recommender inference on the CPU (and GPU where built).\n"
            "\n"
            "commands:\n"
            "  init    write a model directory with seeded random weights\n"
            "  infer   run JSON-lines requests through one engine, results to stdout\n"
            "  demo    a small model and returning users: scores, cache hits, latency\n"
            "  bench   CPU latency and throughput, full and cached forward\n"
            "  serve   the KServe v2 / Triton-compatible HTTP server\n"
            "  loadgen drive a server with returning users; latency, throughput, cache hits\n"
            "  prep    raw interactions (MovieLens, SASRec text, KuaiRand CSV, synthetic) to a dataset\n"
            "  eval    a model's metrics on a dataset through the engine (HR/NDCG/MRR, per-task AUC)\n"
            "  train   train a model on a prepared dataset (CPU), with evaluation and checkpoints\n");
}

int main(int argc, char **argv)
{
    hstu_runtime_init(argv); /* may re-execute once: see src/core/runtime.c */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "init"))
        return cmd_init(argc - 1, argv + 1);
    if (!strcmp(cmd, "infer"))
        return cmd_infer(argc - 1, argv + 1);
    if (!strcmp(cmd, "demo"))
        return cmd_demo(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "loadgen"))
        return cmd_loadgen(argc - 1, argv + 1);
    if (!strcmp(cmd, "prep"))
        return cmd_prep(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval"))
        return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "train"))
        return cmd_train(argc - 1, argv + 1);
    fprintf(stderr, "hstu: unknown command \"%s\"\n\n", cmd);
    usage(stderr);
    return 2;
}
