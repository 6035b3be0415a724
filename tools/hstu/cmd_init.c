/* cmd_init.c - `hstu init`: a model directory with seeded random weights. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu init (--preset NAME | --config FILE) --out DIR [--seed S] [--dtype f32|bf16|f16]\n"
            "\n"
            "Writes DIR/config.json and DIR/model.safetensors with random weights drawn\n"
            "from seed S (default 1): the same seed gives the same model on any machine.\n"
            "\n"
            "  --preset NAME   kuairand-1k, bench-8x1024, ml-1m or ml-1m-large\n"
            "  --config FILE   a config.json of your own (docs/config.md lists the keys)\n"
            "  --out DIR       the model directory to write (created if missing)\n"
            "  --seed S        random seed (default 1)\n"
            "  --dtype T       tensor dtype in the checkpoint: f32 (default), bf16 or f16\n");
}

int cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {
        {"preset", required_argument, 0, 'p'}, {"config", required_argument, 0, 'c'},
        {"out", required_argument, 0, 'o'},    {"seed", required_argument, 0, 's'},
        {"dtype", required_argument, 0, 'd'},  {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *preset = NULL, *config = NULL, *out = NULL, *dtype_s = "f32";
    unsigned long long seed = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': preset = optarg; break;
        case 'c': config = optarg; break;
        case 'o': out = optarg; break;
        case 's': seed = (unsigned long long)cli_parse_long("--seed", optarg, 0, 0x7fffffffL); break;
        case 'd': dtype_s = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hstu init: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (!out || (!preset == !config)) {
        fprintf(stderr, "hstu init: give --out and exactly one of --preset or --config\n\n");
        usage(stderr);
        return 2;
    }
    hstu_dtype dtype;
    if (!strcmp(dtype_s, "f32"))
        dtype = HSTU_DTYPE_F32;
    else if (!strcmp(dtype_s, "bf16"))
        dtype = HSTU_DTYPE_BF16;
    else if (!strcmp(dtype_s, "f16"))
        dtype = HSTU_DTYPE_F16;
    else {
        fprintf(stderr, "hstu init: --dtype %s: choose f32, bf16 or f16\n", dtype_s);
        return 2;
    }
    hstu_error err = {0};
    hstu_config cfg;
    hstu_status st = preset ? hstu_config_preset(preset, &cfg, &err) : hstu_config_load(config, &cfg, &err);
    if (st != HSTU_OK) {
        fprintf(stderr, "hstu init: %s\n", err.msg);
        return 1;
    }
    hstu_model *m = NULL;
    double t0 = cli_now_ms();
    st = hstu_model_create_random(&cfg, seed, &m, &err);
    if (st == HSTU_OK)
        st = hstu_model_save(m, out, dtype, &err);
    if (st != HSTU_OK) {
        fprintf(stderr, "hstu init: %s\n", err.msg);
        hstu_model_destroy(m);
        return 1;
    }
    fprintf(stderr, "hstu init: wrote %s (%s, %zu parameters, %s, seed %llu) in %.1f s\n", out,
            preset ? preset : config, hstu_model_param_count(m), dtype_s, seed,
            (cli_now_ms() - t0) / 1e3);
    hstu_model_destroy(m);
    return 0;
}
