#!/bin/sh
# The CPU benchmark of issue 2, side by side in one run: hstu's fast CPU
# backend against the PyTorch implementation (tools/bench_torch.py) of the
# same model, preset kuairand-1k, HISTORY items, CANDIDATES candidates, batch
# 1 and 8; plus hstu's cached forward of a returning user with NEW items.
# Prints a table last; record it in docs/perf.md with the commit and machine.
#
#   sh bench/cpu_vs_torch.sh            (make bench runs this)
#   ITERS=10 HISTORY=1024 sh bench/cpu_vs_torch.sh
# Both sides run under the same environment (OPENBLAS_CORETYPE, threads).
set -eu
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
ITERS=${ITERS:-7}
HISTORY=${HISTORY:-1024}
CANDIDATES=${CANDIDATES:-100}
NEW=${NEW:-64}
BATCHES=${BATCHES:-"1 8"}
THREADS=${THREADS:-$(nproc)}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$BUILD/hstu" init --preset kuairand-1k --out "$tmp/model" --seed 1

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
     "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
for B in $BATCHES; do
    echo "== batch $B: hstu"
    "$BUILD/hstu" bench --model "$tmp/model" --batch "$B" --history "$HISTORY" --new "$NEW" \
        --candidates "$CANDIDATES" --iters "$ITERS" --warmup 1 --threads "$THREADS" --json | tee -a "$tmp/hstu.jsonl"
    echo "== batch $B: pytorch, blocked causal attention (our optimised torch forward)"
    "$PYTHON" tools/bench_torch.py --model "$tmp/model" --batch "$B" --history "$HISTORY" \
        --candidates "$CANDIDATES" --iters "$ITERS" --warmup 1 --threads "$THREADS" --json | tee -a "$tmp/torch.jsonl"
    echo "== batch $B: pytorch, dense masked attention (the plain implementation)"
    "$PYTHON" tools/bench_torch.py --model "$tmp/model" --batch "$B" --history "$HISTORY" --mode dense \
        --candidates "$CANDIDATES" --iters "$ITERS" --warmup 1 --threads "$THREADS" --json | tee -a "$tmp/dense.jsonl"
done

"$PYTHON" - "$tmp/hstu.jsonl" "$tmp/torch.jsonl" "$tmp/dense.jsonl" <<'PY'
import json, sys
rows = lambda f: [json.loads(l) for l in open(f)]
hstu = rows(sys.argv[1])
blocked = {r["batch"]: r for r in rows(sys.argv[2])}
dense = {r["batch"]: r for r in rows(sys.argv[3])}
print()
print(f"{'batch':>5} {'case':<9} {'hstu ms':>8} {'GFLOP/s':>8} {'RSS MiB':>8} | {'torch blocked ms':>16} {'x':>6} "
      f"{'RSS':>5} | {'torch dense ms':>14} {'x':>6} {'RSS':>5}")
for r in hstu:
    b, t, d = r["batch"], blocked.get(r["batch"]), dense.get(r["batch"])
    if r["case"] == "full" and t and d:
        print(f"{b:>5} {'full':<9} {r['median_ms']:>8.1f} {r['gflops']:>8.1f} {r['peak_rss_mib']:>8.0f} | "
              f"{t['median_ms']:>16.1f} {t['median_ms'] / r['median_ms']:>5.2f}x {t['peak_rss_mb']:>5.0f} | "
              f"{d['median_ms']:>14.1f} {d['median_ms'] / r['median_ms']:>5.2f}x {d['peak_rss_mb']:>5.0f}")
    elif r["case"] == "full+new":
        print(f"{b:>5} {'full+new':<9} {r['median_ms']:>8.1f} {r['gflops']:>8.1f} {r['peak_rss_mib']:>8.0f}")
    elif r["case"] == "cached":
        print(f"{b:>5} {'cached':<9} {r['median_ms']:>8.1f} {r['gflops']:>8.1f} {r['peak_rss_mib']:>8.0f} | "
              f"{r['speedup_vs_full']:.2f}x faster than full+new (history {r['history']} on {r['cached_history']} cached)")
print("x: how many times longer PyTorch takes than hstu. RSS: peak resident MiB of the process.")
PY
