#!/bin/sh
# gpu_check.sh - the GPU check, run on the GPU machine from the repository root.
#
# Build here first (scripts/gpu_pack.sh), then in one device call:
#   run(carry: [".device/bin", ".device/lib"], command: "sh scripts/gpu_check.sh")
# It runs every test binary (the CUDA ones must report 0 skipped on a GPU;
# the CPU ones are cheap and run too; test_cuda twice, the second time as
# test_cuda_alt on the backend's opt-in paths: HSTU_CUDA_FUSED_HEAD=1, the
# fused head at any size, HSTU_CUDA_FUSED_GEMM=1, HSTU_CUDA_ONLOAD=kernel,
# HSTU_CUDA_OFFLOAD=kernel, HSTU_CUDA_ATTN_PARTS=0: split attentions meet in
# clusters),
# compute-sanitizer memcheck and
# racecheck of the CUDA tests on small shapes, and the GPU benchmark, then
# prints a short table last. Logs go to $OUT (the device tool brings them
# back) or /tmp/gpu_check. Exit status: non-zero when anything failed.
# GPU_CHECK_SKIP="bench sanitizer cpu" leaves parts out; BENCH_ARGS (e.g.
# --quick) goes to both benchmarks; ONLY="test_cuda" runs only those tests.
# PROFILE="1 4096 3968, 8 4096 3968" also times every kernel of those block
# cases (batch, history, cached) under ncu, one forward each, with graphs
# and without (tools/ncu_table.py prints the table). NCU_CACHE=none keeps
# ncu from flushing the caches before each kernel (times as in the real
# forward, where weights and activations may sit in L2); default: all.
# TRACE="1 4096 3968" records those cases' kernels and copies as they run
# ("1 4096 3968 host": the cached rows in the host tier, bench_cache_gpu --host)
# (tools/kernel_trace.c, CUPTI; CUDA graphs and PDL included) and prints the
# last forward kernel by kernel (tools/kernel_trace.py); TRACE_KINDS=api
# records the host's CUDA calls instead (all: both); TRACE_FIRST=stage_upload
# starts the listing at that kernel instead of the embedding.
# TEST_TIMEOUT (seconds, default 300) ends a test binary that runs longer (a
# hung kernel): it then counts as failed, and the rest of the check still runs.
set -u
BIN=${BIN:-.device/bin}
LOGS=${OUT:-/tmp/gpu_check}
SKIP=${GPU_CHECK_SKIP:-}
mkdir -p "$LOGS"

# Libraries from gpu_pack.sh (OpenBLAS arrives xz-compressed).
LIB=/tmp/hstu_lib
mkdir -p "$LIB"
for f in .device/lib/*; do
    case "$f" in
    *.xz) name=$(basename "$f" .xz)
          xz -dc "$f" >"$LIB/$name" 2>/dev/null ||
              python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" "$f" >"$LIB/$name" ;;
    *) cp "$f" "$LIB/" ;;
    esac
done
export LD_LIBRARY_PATH="$LIB:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
# Binaries arrive xz-compressed as well: unpack them beside the libraries.
if ls "$BIN"/*.xz >/dev/null 2>&1; then
    mkdir -p /tmp/hstu_bin
    for f in "$BIN"/*.xz; do
        name=$(basename "$f" .xz)
        xz -dc "$f" >"/tmp/hstu_bin/$name" 2>/dev/null ||
            python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" "$f" >"/tmp/hstu_bin/$name"
        chmod +x "/tmp/hstu_bin/$name"
    done
    BIN=/tmp/hstu_bin
fi
export OMP_WAIT_POLICY=passive
export HSTU_RUNTIME_SET=1

# Tests that run the hstu command look for it at build/hstu.
if [ ! -e build/hstu ] && [ -x "$BIN/hstu" ]; then
    case "$BIN" in /*) target=$BIN/hstu ;; *) target=$PWD/$BIN/hstu ;; esac
    mkdir -p build && ln -s "$target" build/hstu
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | head -n 2
table=$(mktemp)
failed=0

summary() { # $1 log -> "P F S" from its closing line
    grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$1" | tail -n 1 | awk '{print $1, $3, $5}'
}

# One test binary: run_test BINARY LABEL GPU [VAR=VALUE...] (the variables set for it alone).
run_test() {
    t=$1 label=$2 gpu=$3
    shift 3
    echo "== $label${*:+ ($*)}"
    start=$(date +%s)
    timeout "${TEST_TIMEOUT:-300}" env "$@" "$t" >"$LOGS/$label.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - start ))
    [ "$rc" -ne 124 ] || echo "FAIL  $label: still running after ${TEST_TIMEOUT:-300} s, ended" >>"$LOGS/$label.log"
    grep -E '^(ok|FAIL|skip) |^    ' "$LOGS/$label.log" | head -n 80
    s=$(summary "$LOGS/$label.log")
    set -- ${s:-0 1 0}
    verdict=ok
    if [ "$rc" -ne 0 ] || [ "$2" -ne 0 ] || [ -z "$s" ]; then verdict=FAIL; fi
    if [ "$gpu" -eq 1 ] && [ "$3" -ne 0 ]; then verdict=FAIL; fi # a GPU run skips nothing
    [ "$verdict" = ok ] || failed=1
    printf '%-22s %6s %6s %7s %5ss  %s\n' "$label" "$1" "$2" "$3" "$secs" "$verdict" >>"$table"
}

for t in "$BIN"/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    if [ -n "${ONLY:-}" ]; then case " $ONLY " in *" $name "*) ;; *) continue ;; esac; fi
    case "$name" in
    *cuda*) gpu=1 ;;
    *) gpu=0; case " $SKIP " in *" cpu "*) continue ;; esac ;;
    esac
    run_test "$t" "$name" "$gpu"
    # The backend's opt-in paths: the fused ranking head at any size, the fused uvqk GEMM,
    # the onload's and the offload's copy kernel; and the split attention in clusters only.
    if [ "$name" = test_cuda ]; then
        run_test "$t" test_cuda_alt 1 HSTU_CUDA_FUSED_HEAD=1 HSTU_CUDA_FUSED_GEMM=1 HSTU_CUDA_ONLOAD=kernel \
            HSTU_CUDA_OFFLOAD=kernel HSTU_CUDA_ATTN_PARTS=0
    fi
done

# compute-sanitizer: memcheck and racecheck over the CUDA tests on small
# shapes (HSTU_TEST_SMALL for test_cuda, HSTU_TEST_QUICK for the attention;
# racecheck covers test_cuda's kernel cases, HSTU_TEST_KERNELS_ONLY).
san_line=""
case " $SKIP " in *" sanitizer "*) san_line="not run" ;; *)
    SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    if [ ! -x "$SAN" ]; then
        san_line="compute-sanitizer not found"; failed=1
    else
        for tool in memcheck racecheck; do
            for t in test_cuda test_attention_cuda; do
                [ -x "$BIN/$t" ] || continue
                log="$LOGS/sanitizer_${tool}_$t.log"
                echo "== compute-sanitizer $tool: $t (small shapes)"
                start=$(date +%s)
                # racecheck needs too much memory for test_cuda's whole-model
                # cases: it checks test_cuda's kernel cases only.
                konly=0; [ "$tool" = racecheck ] && konly=1
                # (racecheck of test_attention_cuda took 133 s and over 150 s
                # on two H100s of the same day: the limit only catches hangs)
                HSTU_TEST_SMALL=1 HSTU_TEST_QUICK=1 HSTU_TEST_KERNELS_ONLY=$konly \
                    timeout 300 "$SAN" --tool "$tool" --error-exitcode 3 \
                    "$BIN/$t" >"$log" 2>&1
                rc=$?
                secs=$(( $(date +%s) - start ))
                tail -n 3 "$log"
                errs=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 1 | sed 's/=* *//')
                s=$(summary "$log")
                san_line="$san_line
  $tool $t: ${errs:-no summary} | tests ${s:-?} (p f s) | rc $rc | ${secs}s"
                [ "$rc" -eq 0 ] || failed=1
            done
        done
    fi
;; esac

case " $SKIP " in *" bench "*) ;; *)
    if [ -x "$BIN/bench_gpu" ]; then
        echo "== bench_gpu"
        "$BIN/bench_gpu" ${BENCH_ARGS:-} >"$LOGS/bench.log" 2>&1 || failed=1
        cat "$LOGS/bench.log"
    fi
    if [ -x "$BIN/bench_cache_gpu" ]; then
        echo "== bench_cache_gpu"
        "$BIN/bench_cache_gpu" ${BENCH_ARGS:-} >"$LOGS/bench_cache.log" 2>&1 || failed=1
        cat "$LOGS/bench_cache.log"
    fi
;; esac

# ncu: every kernel of one forward per PROFILE case, clocks left alone.
prof_logs=""
if [ -n "${PROFILE:-}" ] && [ -x "$BIN/bench_cache_gpu" ]; then
    NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
    echo "$PROFILE" | tr ',' '\n' | while read -r pb pl pc; do
        [ -n "$pb" ] || continue
        for g in graphs no-graphs; do
            flag=""; [ "$g" = no-graphs ] && flag=--no-graphs
            name="profile_b${pb}_l${pl}_c${pc}_$g"
            echo "== ncu: $name"
            "$BIN/bench_cache_gpu" --profile "$pb" "$pl" "$pc" $flag 2>&1 | tail -n 1 | tee "$LOGS/$name.txt"
            "$NCU" --clock-control none --cache-control "${NCU_CACHE:-all}" --profile-from-start off --metrics gpu__time_duration.sum --csv \
                "$BIN/bench_cache_gpu" --profile "$pb" "$pl" "$pc" $flag >"$LOGS/$name.csv" 2>"$LOGS/$name.err" ||
                { tail -n 5 "$LOGS/$name.err"; }
            python3 tools/ncu_table.py "$LOGS/$name.csv" | tee -a "$LOGS/$name.txt"
            rm -f "$LOGS/$name.csv" # the table holds it; the device tool returns few files
        done
    done
fi

# Kernels as they run (tools/kernel_trace.c, CUPTI): one forward per TRACE case.
if [ -n "${TRACE:-}" ] && [ -x "$BIN/bench_cache_gpu" ]; then
    CT=/usr/local/cuda/targets/x86_64-linux
    ver() { grep -ho "CUpti_Activity$1[0-9]*\b" "$CT/include/cupti_activity.h" | sort -V | tail -n 1; }
    if gcc -O2 -shared -fPIC -I"$CT/include" -I/usr/local/cuda/include -DKREC="$(ver Kernel)" \
        -DMREC="$(ver Memcpy)" -DSREC="$(ver Memset)" tools/kernel_trace.c -L"$CT/lib" -lcupti \
        -Wl,-rpath,"$CT/lib" -o /tmp/kernel_trace.so 2>"$LOGS/kernel_trace_build.err"; then
        echo "$TRACE" | tr ',' '\n' | while read -r tb tl tc tx; do
            [ -n "$tb" ] || continue
            name="trace_b${tb}_l${tl}_c${tc}${tx:+_$tx}"
            echo "== kernel trace: $name"
            CUDA_INJECTION64_PATH=/tmp/kernel_trace.so KERNEL_TRACE_OUT="/tmp/$name.csv" \
                KERNEL_TRACE_KINDS="${TRACE_KINDS:-gpu}" \
                "$BIN/bench_cache_gpu" --profile "$tb" "$tl" "$tc" ${tx:+"--$tx"} 2>&1 | tail -n 1
            python3 tools/kernel_trace.py "/tmp/$name.csv" ${TRACE_FIRST:+"$TRACE_FIRST"} | tee "$LOGS/$name.txt" |
                tail -n 16
        done
    else
        echo "kernel trace: the CUPTI library did not build ($LOGS/kernel_trace_build.err)"
    fi
fi

echo
echo "==== summary ===================================================="
printf '%-22s %6s %6s %7s %6s  %s\n' binary passed failed skipped time verdict
cat "$table"
echo "sanitizer:$san_line"
[ -f "$LOGS/bench.log" ] && grep -E '^(device|batch|[18] )' "$LOGS/bench.log"
[ -f "$LOGS/bench_cache.log" ] && grep -E '^(1 |8 )+ *4096 +3968|^(1|8) +4096 ' "$LOGS/bench_cache.log"
rm -f "$table"
exit $failed
