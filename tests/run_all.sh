#!/bin/sh
# The whole test suite: every tests/test_* binary, the safetensors fuzzer for
# a fixed time, and the CPU reference against the independent PyTorch model.
# Each part prints one line per case and a closing "N passed, N failed,
# N skipped"; this script adds them up and prints the total last.
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
# Passive OpenMP waiting, as the hstu command chooses (docs/perf.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export HSTU_SHARED=${HSTU_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared}

total_p=0; total_f=0; total_s=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

tally() { # $1: label; reads the part's output from $log
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log" | tail -n 1)
    if [ -z "$line" ]; then
        echo "FAIL  $1: ended without a summary line (exit $2)"
        total_f=$((total_f + 1)); return
    fi
    p=$(echo "$line" | cut -d' ' -f1); f=$(echo "$line" | cut -d' ' -f3); s=$(echo "$line" | cut -d' ' -f5)
    if [ "$2" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL  $1: exit $2 with no failed case"; f=1
    fi
    total_p=$((total_p + p)); total_f=$((total_f + f)); total_s=$((total_s + s))
}

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.o|*.d) continue;; esac
    echo "== $(basename "$t")"
    "$t" >"$log" 2>&1; rc=$?
    grep -v -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log"
    tally "$(basename "$t")" $rc
done

echo "== fuzz_safetensors (${FUZZ_SECONDS}s)"
sh tests/fuzz/run_fuzz.sh "$BUILD/fuzz_safetensors" "$FUZZ_SECONDS" >"$log" 2>&1; rc=$?
grep -E '^(ok|FAIL|skip) ' "$log"
tally fuzz_safetensors $rc

echo "== PyTorch reference (tools/check_torch.py)"
"$PYTHON" tools/check_torch.py --hstu "$BUILD/hstu" >"$log" 2>&1; rc=$?
grep -v -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log"
tally check_torch $rc

echo "== PyTorch autograd vs one training step (tools/check_train_torch.py)"
"$PYTHON" tools/check_train_torch.py --hstu "$BUILD/hstu" >"$log" 2>&1; rc=$?
grep -v -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log"
tally check_train_torch $rc

echo "$total_p passed, $total_f failed, $total_s skipped"
[ "$total_f" -eq 0 ]
