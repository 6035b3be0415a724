"""The PyTorch side of the CPU benchmark: full ranking forward, no cache.

Loads a ranking model (tools/hstu_torch.py reads the checkpoint), makes random
requests of N history items and M candidates per user, and times the whole
forward (embedding lookup to logits) in float32 under torch.inference_mode().
The forward is hstu_torch.forward_ranking_fast (tools/check_torch.py holds it
against the per-user oracle): projections over the batch, attention per user
and head as GEMMs on strided views, history rows in blocks that skip the
columns a causal row cannot see.

Threads: Debian's torch calls a pthreads OpenBLAS for its GEMMs and OpenMP
for everything else.  Left alone, the OpenMP workers spin after each
elementwise op while OpenBLAS's own workers want the same two cores, which
made a 2-thread forward 6x slower than a 1-thread one here.  So this sets
OMP_WAIT_POLICY=PASSIVE (unless already set) before torch loads, and gives
OpenBLAS the same thread count as torch.set_num_threads.

GEMM kernels: OpenBLAS picks them from OPENBLAS_CORETYPE when set (this
machine's environment sets Haswell, AVX2), else from the CPU (AVX-512 kernels
here, about 2x the sgemm rate).  This script leaves the variable alone, like
`hstu`, and reports the core OpenBLAS used: run both sides under the same
setting, e.g. `env -u OPENBLAS_CORETYPE` or OPENBLAS_CORETYPE=SkylakeX.

Two ways to run a batch of B users: one padded batch, or a loop over users.
--mode auto (the default) times both during warm-up and keeps the faster.
--mode dense times the straightforward implementation instead: per user, the
full (h+m) x (h+m) masked attention of the spec (the oracle's math in fp32).
torch.compile does not exist in this torch (1.13); torch.jit would not touch
the matmuls that dominate, so it is not used.

Usage:
    /usr/bin/python3 tools/bench_torch.py --model DIR --batch B --history N \\
        --candidates M --iters I [--warmup W] [--threads T] [--mode auto|batch|loop] [--json]
Prints the median latency of one batch in ms and the peak RSS; with --json,
one JSON object.
"""
import argparse
import ctypes
import json
import os
import random
import resource
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp loads, with torch
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hstu_torch as ht  # noqa: E402


def random_requests(cfg, batch, history, candidates, seed):
    """batch users of (context ids, items, actions, candidate ids)."""
    rng = random.Random(seed)
    items, actions = cfg["tables"]["item"], cfg["tables"]["action"]
    out = []
    for _ in range(batch):
        out.append(([rng.randrange(r) for r in cfg["tables"]["context"]],
                     [rng.randrange(1, items) for _ in range(history)],
                     [rng.randrange(actions) for _ in range(history)],
                     [rng.randrange(1, items) for _ in range(candidates)]))
    return out


def run_batch(model, requests):
    return ht.forward_ranking_fast(model, requests)


def run_loop(model, requests):
    return [out for r in requests for out in ht.forward_ranking_fast(model, [r])]


def run_dense(model, requests):
    """The straightforward forward of the spec: per user, the full (h+m) x
    (h+m) masked attention (hstu_torch.forward_ranking, the oracle's math),
    as a plain PyTorch HSTU implementation computes it."""
    return [ht.forward_ranking(model, *r) for r in requests]


def set_blas_threads(n):
    """OpenBLAS ignores torch.set_num_threads.  Tells it n threads and
    returns the name of its kernel set ("" when no OpenBLAS is found)."""
    for name in ("libopenblas.so.0", "libopenblas.so"):
        try:
            lib = ctypes.CDLL(name)
            lib.openblas_set_num_threads(n)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            return lib.openblas_get_corename().decode()
        except (OSError, AttributeError):
            continue
    return ""


def time_once(fn, model, requests):
    t0 = time.perf_counter()
    fn(model, requests)
    return (time.perf_counter() - t0) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="ranking model directory")
    ap.add_argument("--batch", type=int, default=1, help="users per batch (B)")
    ap.add_argument("--history", type=int, default=1024, help="history items per user (N)")
    ap.add_argument("--candidates", type=int, default=100, help="candidates per user (M)")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations (per mode)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--mode", choices=("auto", "batch", "loop", "dense"), default="auto",
                    help="auto: the faster of batch and loop (blocked causal attention); "
                         "dense: the full masked attention per user")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    blas_core = set_blas_threads(args.threads)
    model = ht.load_model(args.model, torch.float32)
    cfg = model["config"]
    if cfg["family"] != "ranking":
        print(f"bench_torch: {args.model} is a {cfg['family']} model; this times ranking",
              file=sys.stderr)
        return 1
    requests = random_requests(cfg, args.batch, args.history, args.candidates, args.seed)
    modes = {"batch": run_batch, "loop": run_loop, "dense": run_dense}
    with torch.inference_mode():
        warm = {}
        for name in (("batch", "loop") if args.mode == "auto" and args.batch > 1
                     else ("batch",) if args.mode == "auto" else (args.mode,)):
            warm[name] = min(time_once(modes[name], model, requests)
                             for _ in range(max(args.warmup, 1)))
        mode = min(warm, key=warm.get)
        times = [time_once(modes[mode], model, requests) for _ in range(args.iters)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "engine": "pytorch", "torch": torch.__version__, "threads": args.threads,
        "openblas_core": blas_core, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        "mode": mode, "batch": args.batch, "history": args.history,
        "candidates": args.candidates, "tokens_per_user": len(cfg["tables"]["context"])
        + 2 * args.history + args.candidates, "iters": args.iters,
        "median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
        "ms_per_user": round(statistics.median(times) / args.batch, 3),
        "warmup_ms": {k: round(v, 3) for k, v in warm.items()},
        "peak_rss_mb": round(peak_mb, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews timings
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pytorch {torch.__version__}, {args.threads} threads, OpenBLAS {blas_core}, "
              f"mode {mode}: "
              f"batch {args.batch} x (history {args.history}, candidates {args.candidates}) "
              f"median {result['median_ms']:.1f} ms ({result['ms_per_user']:.1f} ms/user), "
              f"peak RSS {result['peak_rss_mb']:.0f} MB (load average {result['loadavg_1m']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
