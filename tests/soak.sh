#!/bin/sh
# The server under load with AddressSanitizer and LeakSanitizer (make soak).
# Builds nothing itself: `make soak` builds $BUILD (build/asan) first. Starts
# `hstu serve` on loopback with two small random models, runs the server test
# suite against the sanitized library, then several thousand requests from
# concurrent loadgen clients (JSON and binary, ranking and retrieval, closed
# and open loop), requires the server's resident memory flat after the first
# run, stops the server with SIGTERM and requires exit 0 and no sanitizer
# report. Prints one line per case and "N passed, N failed, N skipped".
BUILD=${BUILD:-build/asan}
N=${SOAK_REQUESTS:-3000}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export OMP_WAIT_POLICY=passive
pass=0; fail=0
ok() { echo "ok    $1"; pass=$((pass + 1)); }
bad() { echo "FAIL  $1"; fail=$((fail + 1)); }

dir=$(mktemp -d /tmp/hstu_soak_XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/rank.json" <<'JSON'
{"family":"ranking","d_model":32,"n_layers":2,"n_heads":2,"d_qk":16,"d_v":8,"attn_scale_len":150,
 "max_positions":200,"tables":{"item":5000,"action":16,"context":[7,5]},"head":{"hidden":[16],"n_tasks":3},
 "max_history":90,"max_candidates":32}
JSON
cat >"$dir/retr.json" <<'JSON'
{"family":"retrieval","d_model":24,"n_layers":2,"n_heads":2,"d_qk":12,"d_v":8,"attn_scale_len":20,
 "max_positions":96,"tables":{"item":3000},"max_history":96}
JSON
mkdir -p "$dir/repo"
"$BUILD/hstu" init --config "$dir/rank.json" --out "$dir/repo/hstu" >/dev/null &&
    "$BUILD/hstu" init --config "$dir/retr.json" --out "$dir/repo/retr" --seed 2 >/dev/null || {
    bad "init models"; echo "$pass passed, $fail failed, 0 skipped"; exit 1; }

echo "== test_serve under ASan"
if BUILD=$BUILD "$BUILD/tests/test_serve" >"$dir/test.log" 2>&1 && ! grep -q "Sanitizer" "$dir/test.log"; then
    ok "test_serve (sanitized)"
else
    grep -E "FAIL|Sanitizer|ERROR" "$dir/test.log" | head -20; bad "test_serve (sanitized)"
fi

# a small cache (2 MiB) so that eviction runs too
"$BUILD/hstu" serve --model-repository "$dir/repo" --host 127.0.0.1 --http-port 0 --metrics-port 0 \
    --port-file "$dir/ports" --cache-mb 2 --queue-size 32 --threads 2 >"$dir/serve.log" 2>&1 &
pid=$!
i=0
while [ ! -s "$dir/ports" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -s "$dir/ports" ]; then
    bad "server start"; cat "$dir/serve.log"; kill "$pid" 2>/dev/null
    echo "$pass passed, $fail failed, 0 skipped"; exit 1
fi
read -r port mport <"$dir/ports"
lg() { "$BUILD/hstu" loadgen --port "$port" --metrics-port "$mport" "$@"; }
rss() { awk '/^VmRSS/ { print int($2 / 1024) }' "/proc/$pid/status"; }
run() { # $1 label, rest loadgen args
    label=$1; shift
    if lg "$@" >"$dir/lg.log" 2>&1; then ok "$label"; sed 's/^/    /' "$dir/lg.log"
    else bad "$label"; sed 's/^/    /' "$dir/lg.log"; fi
    echo "    server RSS $(rss) MiB"
}
run "ranking JSON, 16 clients, $N requests" --requests "$N" --concurrency 16 --users 300 --candidates 16
rss0=$(rss)
run "ranking binary, 16 clients, $N requests" --requests "$N" --concurrency 16 --users 300 --candidates 16 --binary
run "retrieval JSON, open loop 400/s" --model retr --rate 400 --requests $((N / 3)) --concurrency 8 --users 200
run "retrieval binary, 8 clients" --model retr --requests $((N / 3)) --concurrency 8 --users 200 --binary
run "ranking JSON again, 16 clients, $N requests" --requests "$N" --concurrency 16 --users 300 --candidates 16
# memory flat: every buffer is sized at start; after the first run has
# touched them, the rest may add only what ASan's quarantine holds of the
# few allocations left (libmicrohttpd's responses, the engine's OpenMP teams)
rss1=$(rss)
if [ "$rss1" -le $((rss0 + 64)) ]; then ok "memory flat: RSS $rss0 -> $rss1 MiB after the first run"
else bad "memory flat: RSS $rss0 -> $rss1 MiB after the first run (more than 64 MiB)"; fi
kill -TERM "$pid"
wait "$pid"; rc=$?
if [ "$rc" -eq 0 ]; then ok "SIGTERM: exit 0"; else bad "SIGTERM: exit $rc"; fi
if grep -q -E "Sanitizer|runtime error" "$dir/serve.log"; then
    bad "no sanitizer report"; grep -A30 -E "Sanitizer|runtime error" "$dir/serve.log" | head -60
else
    ok "no sanitizer report (ASan, LSan, UBSan)"
fi
echo "$pass passed, $fail failed, 0 skipped"
[ "$fail" -eq 0 ]
