/* cmd_train.c - `hstu train`: train a model on a prepared dataset (CPU). */
#include "cli.h"

#include "data/dataset.h"
#include "train/trainer.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hstu train --data FILE --config PRESET|config.json --out DIR [options]\n"
            "\n"
            "Trains an HSTU model on the CPU on a dataset written by `hstu prep`, evaluates it\n"
            "through the inference engine (the code of `hstu eval`) and writes DIR/config.json and\n"
            "DIR/model.safetensors (loadable by hstu infer/eval/serve) plus DIR/train_state.safetensors\n"
            "(optimizer state and step, for --resume) after every epoch, each file atomically.\n"
            "Retrieval: sampled softmax over L2-normalised embeddings (the HSTU paper's MovieLens\n"
            "recipe); ranking: per-task binary cross-entropy on the candidates. docs/train.md.\n"
            "\n"
            "  --data FILE         a dataset from `hstu prep`\n"
            "  --config C          a preset (ml-1m, ml-1m-large, kuairand-1k, ...) or a config.json\n"
            "  --out DIR           output directory (created)\n"
            "  --fit-tables        size the config's tables (items, actions, context, tasks) to the data\n"
            "  --epochs N          passes over the training users (default 1)\n"
            "  --batch N           users per step (default 128)\n"
            "  --lr X              AdamW learning rate (default 1e-3; betas 0.9/0.98)\n"
            "  --weight-decay X    AdamW decoupled weight decay (default 0, the recipe's)\n"
            "  --dropout X         dropout on input embeddings and before the output projection (default 0.2)\n"
            "  --negatives K       sampled-softmax negatives per position (default 128)\n"
            "  --temperature X     sampled-softmax temperature (default 0.05)\n"
            "  --holdout 1|2       retrieval: hold out the test item (1, the paper's protocol, default)\n"
            "                      or the validation item too (2, evaluation on the validation split)\n"
            "  --seed S            weights, order, dropout and negatives (default 1)\n"
            "  --threads T         CPU threads (default: all cores); results are deterministic for a\n"
            "                      given seed and thread count\n"
            "  --eval-every N      evaluate every N epochs and after the last (default 1; 0 = never)\n"
            "  --eval-users N      evaluate at most N users (default: all)\n"
            "  --save-every N      also checkpoint every N steps inside an epoch (default: epoch ends)\n"
            "  --max-steps N       stop after N steps in all (default: no limit)\n"
            "  --keep-best         after each evaluation whose validation HR@10 beats all earlier ones,\n"
            "                      write the model to DIR/best/ (config.json, model.safetensors and\n"
            "                      best.json: epoch, metric), replacing the old best/ atomically;\n"
            "                      selection is on the validation split, so it needs --holdout 2 and\n"
            "                      --eval-every N (retrieval only); `hstu eval --model DIR/best\n"
            "                      --split test` then measures the selected model on test\n"
            "  --resume            continue from DIR's checkpoint (same --seed, --batch, --holdout;\n"
            "                      the best so far carries over)\n"
            "  --init paper|random initial weights: the paper code's (default) or `hstu init`'s\n"
            "  --no-progress       no progress line on stderr\n"
            "  --dump-step FILE    (for tools/check_train_torch.py) run the first step only and write\n"
            "                      its inputs, loss and every gradient to FILE (safetensors)\n");
}

int cmd_train(int argc, char **argv)
{
    enum { O_DATA = 1, O_CONFIG, O_OUT, O_EPOCHS, O_BATCH, O_LR, O_WD, O_DROPOUT, O_NEG, O_TEMP, O_HOLDOUT,
           O_SEED, O_THREADS, O_EVAL_EVERY, O_EVAL_USERS, O_SAVE_EVERY, O_MAX_STEPS, O_RESUME, O_INIT,
           O_NO_PROGRESS, O_FIT, O_DUMP, O_KEEP_BEST };
    static const struct option opts[] = {
        {"data", required_argument, 0, O_DATA},         {"config", required_argument, 0, O_CONFIG},
        {"out", required_argument, 0, O_OUT},           {"epochs", required_argument, 0, O_EPOCHS},
        {"batch", required_argument, 0, O_BATCH},       {"lr", required_argument, 0, O_LR},
        {"weight-decay", required_argument, 0, O_WD},   {"dropout", required_argument, 0, O_DROPOUT},
        {"negatives", required_argument, 0, O_NEG},     {"temperature", required_argument, 0, O_TEMP},
        {"holdout", required_argument, 0, O_HOLDOUT},   {"seed", required_argument, 0, O_SEED},
        {"threads", required_argument, 0, O_THREADS},   {"eval-every", required_argument, 0, O_EVAL_EVERY},
        {"eval-users", required_argument, 0, O_EVAL_USERS}, {"save-every", required_argument, 0, O_SAVE_EVERY},
        {"max-steps", required_argument, 0, O_MAX_STEPS}, {"resume", no_argument, 0, O_RESUME},
        {"init", required_argument, 0, O_INIT},         {"no-progress", no_argument, 0, O_NO_PROGRESS},
        {"fit-tables", no_argument, 0, O_FIT},          {"dump-step", required_argument, 0, O_DUMP},
        {"keep-best", no_argument, 0, O_KEEP_BEST},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *data = NULL, *config = NULL, *out = NULL;
    bool fit = false;
    trainer_options o;
    trainer_options_default(&o);
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_DATA: data = optarg; break;
        case O_CONFIG: config = optarg; break;
        case O_OUT: out = optarg; break;
        case O_EPOCHS: o.epochs = (int)cli_parse_long("--epochs", optarg, 0, 1000000); break;
        case O_BATCH: o.batch_users = (int)cli_parse_long("--batch", optarg, 1, 1000000); break;
        case O_LR: o.adam.lr = (float)cli_parse_double("--lr", optarg, 0, 10); break;
        case O_WD: o.adam.weight_decay = (float)cli_parse_double("--weight-decay", optarg, 0, 10); break;
        case O_DROPOUT: o.dropout = (float)cli_parse_double("--dropout", optarg, 0, 0.95); break;
        case O_NEG: o.negatives = (int)cli_parse_long("--negatives", optarg, 1, 100000); break;
        case O_TEMP: o.temperature = (float)cli_parse_double("--temperature", optarg, 1e-4, 100); break;
        case O_HOLDOUT: o.holdout = (int)cli_parse_long("--holdout", optarg, 1, 2); break;
        case O_SEED: o.seed = (uint64_t)cli_parse_long("--seed", optarg, 0, 0x7fffffffL); break;
        case O_THREADS: o.threads = (int)cli_parse_long("--threads", optarg, 1, 1024); break;
        case O_EVAL_EVERY: o.eval_every = (int)cli_parse_long("--eval-every", optarg, 0, 1000000); break;
        case O_EVAL_USERS: o.eval_users = cli_parse_long("--eval-users", optarg, 0, 0x7fffffffL); break;
        case O_SAVE_EVERY: o.save_every = cli_parse_long("--save-every", optarg, 0, 0x7fffffffL); break;
        case O_MAX_STEPS: o.max_steps = cli_parse_long("--max-steps", optarg, 0, 0x7fffffffL); break;
        case O_RESUME: o.resume = true; break;
        case O_KEEP_BEST: o.keep_best = true; break;
        case O_INIT:
            if (strcmp(optarg, "paper") && strcmp(optarg, "random")) {
                fprintf(stderr, "hstu train: --init %s: choose paper or random\n", optarg);
                return 2;
            }
            o.init_random = !strcmp(optarg, "random");
            break;
        case O_NO_PROGRESS: o.progress = false; break;
        case O_FIT: fit = true; break;
        case O_DUMP: o.dump_path = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "hstu train: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (!data || !out || (!config && !o.resume)) {
        fprintf(stderr, "hstu train: give --data, --out and --config (or --resume)\n\n");
        usage(stderr);
        return 2;
    }
    hstu_error err = {0};
    hstu_config cfg;
    hstu_status st = HSTU_OK;
    if (config) {
        /* a preset name, else a file */
        bool is_preset = false;
        for (const char *const *p = hstu_preset_names(); *p; p++)
            is_preset |= !strcmp(*p, config);
        st = is_preset ? hstu_config_preset(config, &cfg, &err) : hstu_config_load(config, &cfg, &err);
        if (st != HSTU_OK) {
            fprintf(stderr, "hstu train: --config %s: %s\n", config, err.msg);
            return 1;
        }
        if (fit) {
            dataset *ds = NULL;
            if ((st = dataset_open(data, &ds, &err)) != HSTU_OK) {
                fprintf(stderr, "hstu train: %s\n", err.msg);
                return 1;
            }
            dataset_fill_config(ds, &cfg);
            dataset_close(ds);
        }
    }
    trainer_report rep;
    st = trainer_run(data, config ? &cfg : NULL, out, &o, stdout, &rep, &err);
    if (st != HSTU_OK) {
        fprintf(stderr, "hstu train: %s\n", err.msg);
        return 1;
    }
    if (o.dump_path) {
        fprintf(stderr, "hstu train: wrote the first step to %s\n", o.dump_path);
        return 0;
    }
    fprintf(stderr, "hstu train: %lld steps, %.0f tokens/s, %.1f s; model in %s\n", (long long)rep.steps,
            rep.tokens_per_s, rep.seconds, out);
    if (o.keep_best && rep.best_epoch > 0)
        fprintf(stderr,
                "hstu train: best validation HR@10 %.4f at epoch %lld: %s/best (measure it on test with "
                "`hstu eval --model %s/best --data %s --split test`)\n",
                rep.best_metric, (long long)rep.best_epoch, out, out, data);
    else if (o.keep_best)
        fprintf(stderr, "hstu train: no evaluation yet, so no %s/best\n", out);
    return 0;
}
