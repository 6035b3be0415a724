#!/bin/sh
# serve_sweep.sh - `hstu serve` under load: the benchmark of docs/serving.md.
#
# Needs only the hstu binary (in $HSTU_BIN, default build/) and loopback.
# Writes a model with random weights (`hstu init --preset`), then:
#   (b) overhead at batch 1: `hstu bench` times the engine alone on the
#       cached case (H cached items + G new, M candidates); the server, with
#       --max-batch 1 and one client, serves the same work (users warmed at H
#       items, each timed request one user's first return with G new items).
#       overhead = (mean latency - engine ms) / engine ms, against both the
#       bench's median and the server's own engine time for those requests;
#   (c) batching: closed loop at growing concurrency, the server's engine
#       time per user and users per batch beside `hstu bench` at that batch;
#   (a) throughput at p99 < 100 ms: a closed-loop probe gives the capacity X,
#       then Poisson rates at fractions of X (and one midpoint between the
#       last that met the target and the first that did not); each point
#       warms its users first (the timed requests are returns on a cached
#       history of about H items growing by G per return).
# Every loadgen run appends a row to $OUT/loadgen.csv; the summary is printed
# and kept in $OUT/summary.txt.
#
# usage: sh bench/serve_sweep.sh [--backend cpu|cuda] [--preset NAME] [--out DIR]
#                                [--repeats R] [--quick]
# Environment (defaults for cpu / cuda): HSTU_BIN, USERS (64 / 128),
# ZIPF (0.5: user popularity), HISTORY (1024), GROWTH (16 / 8), NEW (64, the
# overhead case), CANDIDATES (100),
# CACHE_MB (3072 / 32768), P99_MS (100), POINT_S (15), CONCURRENCY (32 / 128),
# SERVER_ARGS (more `hstu serve` options, e.g. "--threads 1").
set -u

backend=cpu
preset=
out=
repeats=3
quick=0
while [ $# -gt 0 ]; do
    case "$1" in
    --backend) backend=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h | --help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "serve_sweep.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$backend" in
cpu) : "${preset:=kuairand-1k}"; d_users=64; d_growth=16; d_cache=3072; d_conc=32; d_probe=8 ;;
cuda) : "${preset:=bench-8x1024}"; d_users=128; d_growth=8; d_cache=32768; d_conc=128; d_probe=64 ;;
*) echo "serve_sweep.sh: --backend must be cpu or cuda" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HSTU_BIN:-$here/build}
HSTU="$BIN/hstu"
USERS=${USERS:-$d_users}
ZIPF=${ZIPF:-0.5}
HISTORY=${HISTORY:-1024}
GROWTH=${GROWTH:-$d_growth}
NEW=${NEW:-64}
CANDIDATES=${CANDIDATES:-100}
CACHE_MB=${CACHE_MB:-$d_cache}
P99_MS=${P99_MS:-100}
POINT_S=${POINT_S:-15}
CONCURRENCY=${CONCURRENCY:-$d_conc}
PROBE_CONC=${PROBE_CONC:-$d_probe}
SERVER_ARGS=${SERVER_ARGS:-}
if [ "$quick" = 1 ]; then repeats=1; POINT_S=5; USERS=16; fi
[ -x "$HSTU" ] || { echo "serve_sweep.sh: $HSTU not found (set HSTU_BIN to the folder holding hstu)" >&2; exit 2; }

work=$(mktemp -d /tmp/hstu_sweep_XXXXXX)
out=${out:-$work/out}
mkdir -p "$out"
csv="$out/loadgen.csv"
summary="$out/summary.txt"
: >"$summary"
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work/repo"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "$*" | tee -a "$summary"; }

commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
say "serve_sweep: backend $backend, preset $preset, commit $commit, $(date -u +%Y-%m-%dT%H:%MZ)"
say "machine: $(nproc) cores, load:$(uptime | sed 's/.*load average://'), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
say "work: users $USERS (Zipf $ZIPF), history $HISTORY (+$GROWTH per return), $CANDIDATES candidates, overhead case +$NEW new;" \
    "p99 target $P99_MS ms; KV cache $CACHE_MB MiB; binary tensors"

mkdir -p "$work/repo"
"$HSTU" init --preset "$preset" --out "$work/repo/hstu" >/dev/null || { echo "hstu init failed" >&2; exit 1; }

# start_server ARGS...: sets pid, port, mport
start_server() {
    rm -f "$work/ports"
    "$HSTU" serve --model-repository "$work/repo" --host 127.0.0.1 --http-port 0 --metrics-port 0 \
        --port-file "$work/ports" --backend "$backend" --cache-mb "$CACHE_MB" "$@" >"$work/serve.log" 2>&1 &
    pid=$!
    i=0
    while [ ! -s "$work/ports" ] && [ $i -lt 1200 ]; do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1; i=$((i + 1))
    done
    if [ ! -s "$work/ports" ]; then
        echo "serve_sweep.sh: the server did not start:" >&2; cat "$work/serve.log" >&2; exit 1
    fi
    read -r port mport <"$work/ports"
}
stop_server() { kill -TERM "$pid"; wait "$pid"; pid=; }

# lg ARGS...: one loadgen run; its CSV row is the last line of $csv
lg() {
    "$HSTU" loadgen --port "$port" --metrics-port "$mport" --binary --csv "$csv" "$@" >"$work/lg.log" 2>&1 ||
        { echo "serve_sweep.sh: loadgen failed:" >&2; cat "$work/lg.log" >&2; }
    sed 's/^/    /' "$work/lg.log" >>"$out/loadgen.log"
}
# col NAME: that column of the last CSV row
col() {
    awk -F, -v k="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == k) c = i } END { print $c }' "$csv"
}

# ---- (b) overhead at batch 1 ------------------------------------------------
say ""
say "(b) overhead at batch 1: $HISTORY cached + $NEW new items, $CANDIDATES candidates"
start_server --max-batch 1 $SERVER_ARGS
say "  run  data    bench ms  mean ms   p50 ms  engine ms  vs bench  vs engine"
r=1
while [ $r -le "$repeats" ]; do
    # the bench beside each run: others' load changes between runs
    "$HSTU" bench --backend "$backend" --preset "$preset" --batch 1 --history "$HISTORY" --new "$NEW" \
        --candidates "$CANDIDATES" --iters 15 --json >"$work/bench1.json" 2>"$work/bench.err" ||
        { cat "$work/bench.err" >&2; exit 1; }
    bench1=$(grep '"case":"cached"' "$work/bench1.json" | sed 's/.*"median_ms":\([0-9.]*\).*/\1/')
    for data in binary json; do
        flag=--binary; [ $data = json ] && flag=
        "$HSTU" loadgen --port "$port" --metrics-port "$mport" $flag --csv "$csv" --users "$USERS" \
            --history-start "$HISTORY" --growth "$NEW" --candidates "$CANDIDATES" --warmup-users --sequential \
            --requests "$USERS" --concurrency 1 >"$work/lg.log" 2>&1 || cat "$work/lg.log" >&2
        sed 's/^/    /' "$work/lg.log" >>"$out/loadgen.log"
        mean=$(col mean_ms); p50=$(col p50_ms); eng=$(awk -v u="$(col compute_infer_us)" 'BEGIN { printf "%.2f", u / 1e3 }')
        awk -v r=$r -v d=$data -v m="$mean" -v p="$p50" -v e="$eng" -v b="$bench1" 'BEGIN {
            printf "  %-4d %-7s %8.2f %8.2f %8.2f %10.2f %8.1f%% %9.1f%%\n", r, d, b, m, p, e, 100 * (m - b) / b,
                100 * (m - e) / e }' | tee -a "$summary"
    done
    r=$((r + 1))
done
stop_server

# ---- (c) batching: the engine's time per user in the server vs hstu bench ----
say ""
say "(c) batching: closed loop, default batching (--max-batch 32, 100 us); engine ms per user"
"$HSTU" bench --backend "$backend" --preset "$preset" --batch 1,2,4,8 --history "$HISTORY" --new "$GROWTH" \
    --candidates "$CANDIDATES" --iters 7 --json >"$work/benchN.json" 2>"$work/bench.err" ||
    { cat "$work/bench.err" >&2; exit 1; }
start_server $SERVER_ARGS
say "  clients  req/s   p50 ms   p99 ms  users/batch  engine ms/user  bench ms/user (batch)"
for c in 1 2 4 8; do
    lg --users "$USERS" --zipf "$ZIPF" --history-start "$HISTORY" --growth "$GROWTH" --candidates "$CANDIDATES" --warmup-users \
        --requests $((USERS * 4)) --concurrency $c
    upb=$(col users_per_batch)
    # the bench batch nearest below the server's users per batch
    bb=$(awk -v u="$upb" 'BEGIN { b = 1; if (u >= 1.5) b = 2; if (u >= 3) b = 4; if (u >= 6) b = 8; print b }')
    bm=$(grep '"case":"cached"' "$work/benchN.json" | grep "\"batch\":$bb," | sed 's/.*"median_ms":\([0-9.]*\).*/\1/')
    awk -v c=$c -v t="$(col throughput)" -v p5="$(col p50_ms)" -v p9="$(col p99_ms)" -v u="$upb" \
        -v e="$(col compute_infer_us)" -v bm="$bm" -v bb=$bb 'BEGIN {
        printf "  %-8d %6.1f %8.1f %8.1f %12.2f %15.2f %10.2f (%d)\n", c, t, p5, p9, u, e / 1e3, bm / bb, bb }' |
        tee -a "$summary"
done
stop_server

# ---- (a) throughput at p99 < target ------------------------------------------
say ""
say "(a) Poisson rate sweep: $CONCURRENCY clients, each point warmed, ~${POINT_S} s of requests"
start_server --queue-size 256 $SERVER_ARGS
lg --users "$USERS" --zipf "$ZIPF" --history-start "$HISTORY" --growth "$GROWTH" --candidates "$CANDIDATES" --warmup-users \
    --requests $((USERS * 6)) --concurrency "$PROBE_CONC"
cap=$(col throughput)
say "  capacity probe (closed loop, $PROBE_CONC clients): $cap req/s, p99 $(col p99_ms) ms"
say "  rate/s   req/s   p50 ms   p90 ms   p99 ms  users/batch  engine ms/user  hit rate  history  meets"
best=0; best_line=
point() { # $1 rate
    n=$(awk -v r="$1" -v s="$POINT_S" 'BEGIN { n = int(r * s); if (n < 300) n = 300; print n }')
    lg --users "$USERS" --zipf "$ZIPF" --history-start "$HISTORY" --growth "$GROWTH" --candidates "$CANDIDATES" --warmup-users \
        --rate "$1" --requests "$n" --concurrency "$CONCURRENCY"
    p99=$(col p99_ms); thr=$(col throughput); errs=$(col errors)
    ok=$(awk -v p="$p99" -v t="$P99_MS" -v e="$errs" 'BEGIN { print (p < t && e == 0) ? "yes" : "no" }')
    line=$(awk -v r="$1" -v t="$thr" -v p5="$(col p50_ms)" -v p9="$(col p90_ms)" -v p="$p99" -v u="$(col users_per_batch)" \
        -v e="$(col compute_infer_us)" -v h="$(col cache_hit_rate)" -v hm="$(col history_mean)" -v ok=$ok 'BEGIN {
        printf "  %-7.1f %6.1f %8.1f %8.1f %8.1f %12.2f %15.2f %9.3f %8.0f  %s", r, t, p5, p9, p, u, e / 1e3, h, hm, ok }')
    say "$line"
    if [ "$ok" = yes ] && awk -v t="$thr" -v b="$best" 'BEGIN { exit !(t > b) }'; then best=$thr; best_line=$line; fi
    [ "$ok" = yes ]
}
r=1
while [ $r -le "$repeats" ]; do
    say "  -- repeat $r"
    # upward from a light load; past the first rate that misses, the midpoint
    last_ok=0; first_bad=
    for f in 0.2 0.3 0.4 0.5 0.6 0.75 0.9 1.0; do
        rate=$(awk -v c="$cap" -v f=$f 'BEGIN { printf "%.1f", c * f }')
        if point "$rate"; then last_ok=$rate; else first_bad=$rate; break; fi
    done
    if [ -n "$first_bad" ] && [ "$last_ok" = 0 ]; then # even the lightest missed: lighter still
        for f in 0.1 0.05; do
            rate=$(awk -v c="$cap" -v f=$f 'BEGIN { printf "%.1f", c * f }')
            if point "$rate"; then last_ok=$rate; break; fi
        done
    fi
    if [ -n "$first_bad" ] && [ "$last_ok" != 0 ]; then
        point "$(awk -v a="$last_ok" -v b="$first_bad" 'BEGIN { printf "%.1f", (a + b) / 2 }')" || true
    fi
    r=$((r + 1))
done
stop_server
say ""
if [ -n "$best_line" ]; then
    say "best throughput with p99 < $P99_MS ms: $best req/s"
    say "$best_line"
else
    say "no rate met p99 < $P99_MS ms"
fi
say "load at the end:$(uptime | sed 's/.*load average://')"
say "rows: $csv; loadgen output: $out/loadgen.log"
