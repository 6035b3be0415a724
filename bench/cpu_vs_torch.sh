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
    echo "== batch $B: pytorch"
    "$PYTHON" tools/bench_torch.py --model "$tmp/model" --batch "$B" --history "$HISTORY" \
        --candidates "$CANDIDATES" --iters "$ITERS" --warmup 1 --threads "$THREADS" --json | tee -a "$tmp/torch.jsonl"
done

"$PYTHON" - "$tmp/hstu.jsonl" "$tmp/torch.jsonl" <<'PY'
import json, sys
hstu = [json.loads(l) for l in open(sys.argv[1])]
torch = {r["batch"]: r for r in (json.loads(l) for l in open(sys.argv[2]))}
print()
print(f"{'batch':>5} {'case':<9} {'hstu ms':>9} {'torch ms':>9} {'speedup':>8} {'GFLOP/s':>8} {'hstu RSS MiB':>12} {'torch RSS MiB':>13}")
for r in hstu:
    t = torch.get(r["batch"])
    if r["case"] == "full" and t:
        print(f"{r['batch']:>5} {'full':<9} {r['median_ms']:>9.1f} {t['median_ms']:>9.1f} "
              f"{t['median_ms'] / r['median_ms']:>7.2f}x {r['gflops']:>8.1f} {r['peak_rss_mib']:>12.0f} {t['peak_rss_mb']:>13.0f}")
    elif r["case"] == "cached":
        print(f"{r['batch']:>5} {'cached':<9} {r['median_ms']:>9.1f} {'':>9} {r['speedup_vs_full']:>7.2f}x "
              f"{r['gflops']:>8.1f} {r['peak_rss_mib']:>12.0f}   (vs hstu full at history+new)")
PY
