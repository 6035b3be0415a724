#!/bin/sh
# Training throughput of `hstu train` against the same model and step in
# PyTorch (tools/train_torch.py: padded dense attention, autograd, AdamW),
# on MovieLens-1M, presets ml-1m and ml-1m-large, batch 128 users, dropout
# 0.2, 128 sampled negatives. Both sides time full steps (forward, backward,
# optimizer) and report input rows (tokens) per second.
#   BUILD=build-train STEPS=12 THREADS=2 sh bench/train_vs_torch.sh
# Needs the data under $HSTU_SHARED/data (default ../shared); note `uptime`
# beside the numbers: the machine is shared.
set -e
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
STEPS=${STEPS:-12}
THREADS=${THREADS:-2}
HSTU_SHARED=${HSTU_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared}
DATA=$HSTU_SHARED/data/ml-1m/ml-1m.txt
[ -f "$DATA" ] || { echo "no $DATA: set HSTU_SHARED"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
"$BUILD/hstu" prep --format sasrec --quiet --out "$tmp/ml1m.hstu" "$DATA"
echo "load: $(uptime | sed 's/.*load/load/')"
printf '%-12s %14s %14s %8s\n' preset "hstu tok/s" "torch tok/s" speedup
for preset in ml-1m ml-1m-large; do
    "$BUILD/hstu" init --preset "$preset" --out "$tmp/$preset" 2>/dev/null
    c=$("$BUILD/hstu" train --data "$tmp/ml1m.hstu" --config "$preset" --out "$tmp/run-$preset" \
          --max-steps "$STEPS" --eval-every 0 --threads "$THREADS" --no-progress 2>&1 |
        sed -n 's/^hstu train: .* steps, \([0-9]*\) tokens\/s.*/\1/p')
    t=$("$PYTHON" tools/train_torch.py bench --data "$DATA" --config "$tmp/$preset/config.json" \
          --steps "$STEPS" --warmup 2 --threads "$THREADS" | sed -n 's/^torch \([0-9]*\) tokens\/s.*/\1/p')
    printf '%-12s %14s %14s %7.2fx\n' "$preset" "$c" "$t" "$(echo "$c $t" | awk '{print $1 / $2}')"
done
echo "load: $(uptime | sed 's/.*load/load/')"
