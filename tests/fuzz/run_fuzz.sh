#!/bin/sh
# run_fuzz.sh FUZZ_BINARY SECONDS - fuzz the safetensors reader for a while.
#
# Writes a seed corpus of small valid (and a few near-valid) safetensors files
# and a dictionary of header tokens into a temporary directory, runs the
# libFuzzer binary on it for SECONDS with a 2 GiB RSS limit, and prints one
# harness-style line plus the closing "N passed, N failed, N skipped". Crash
# artifacts go to the temporary directory (never the source tree), which is
# kept and printed on failure and removed on success. Exit status 0 or 1.

fail() {
    echo "FAIL  fuzz_safetensors: $*"
    echo "0 passed, 1 failed, 0 skipped"
    exit 1
}

[ $# -eq 2 ] || fail "usage: sh tests/fuzz/run_fuzz.sh FUZZ_BINARY SECONDS"
bin=$1
secs=$2
case $secs in
    ''|*[!0-9]*) fail "SECONDS must be a whole number, got '$secs'" ;;
esac
[ -x "$bin" ] || fail "$bin not found; build it with 'make fuzz' (needs clang and libclang-rt-14-dev)"
py=${PYTHON:-/usr/bin/python3}
command -v "$py" >/dev/null 2>&1 || fail "$py not found (needed to write the seed corpus)"

work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz_safetensors.XXXXXX") || fail "mktemp failed"
mkdir "$work/corpus" "$work/artifacts" || fail "cannot create directories under $work"

# Seeds: one file per dtype and layout, built with the standard library only.
"$py" - "$work/corpus" <<'EOF' || fail "seed corpus generator failed (see above)"
import json, os, struct, sys

out = sys.argv[1]

def st_file(tensors, meta=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    if meta is not None:
        header["__metadata__"] = meta
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

f32 = lambda *v: struct.pack("<%df" % len(v), *v)
u16 = lambda *v: struct.pack("<%dH" % len(v), *v)
seeds = {
    "f32": st_file([("w", "F32", [2, 3], f32(1, -2, 3.5, 0, 1e-3, 65504))]),
    "bf16": st_file([("emb.item", "BF16", [3], u16(0x3F80, 0xC000, 0x7FC0))]),
    "f16": st_file([("pos", "F16", [2, 2], u16(0x3C00, 0x7BFF, 0x0001, 0x7C00))]),
    "mixed": st_file([("a", "F32", [1], f32(2)), ("b", "F16", [], u16(0x3C00)),
                      ("z", "BF16", [0, 4], b""), ("c", "BF16", [2], u16(1, 2))],
                     meta={"format": "pt"}),
    "layers": st_file([("layers.0.uvqk.weight", "F32", [2, 4], f32(*range(8))),
                       ("layers.0.proj.weight", "F16", [2, 2], u16(0, 0x8000, 0x3555, 0xFC00)),
                       ("layers.0.rab.pos", "BF16", [3], u16(0x3F80, 0, 0x0001))]),
    "empty": st_file([]),
    "unpadded": st_file([("x", "F32", [1, 1, 1], f32(7))], pad=False),
    "offset_hole": st_file([("x", "F32", [1], f32(1))])[:-4] + b"\0" * 8,
}
for name, blob in seeds.items():
    with open(os.path.join(out, name + ".safetensors"), "wb") as fp:
        fp.write(blob)
EOF

cat >"$work/dict" <<'EOF'
"{"
"}"
"\"dtype\""
"\"shape\""
"\"data_offsets\""
"\"__metadata__\""
"\"F32\""
"\"BF16\""
"\"F16\""
"\"I64\""
"[0,0]"
"[]"
"-1"
"18446744073709551615"
"9223372036854775807"
"\x00\x00\x00\x00\x00\x00\x00"
EOF

log=$work/fuzz.log
"$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -max_len=4096 \
    -dict="$work/dict" -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
    "$work/corpus" >"$log" 2>&1
rc=$?

runs=$(sed -n 's/^Done \([0-9][0-9]*\) runs in \([0-9][0-9]*\) second.*/\1/p' "$log" | tail -n 1)
crashes=$(find "$work/artifacts" -type f | head -n 5)

if [ "$rc" -eq 0 ] && [ -n "$runs" ] && [ -z "$crashes" ]; then
    rm -rf "$work"
    echo "ok    fuzz_safetensors: $runs runs, no crash"
    echo "1 passed, 0 failed, 0 skipped"
    exit 0
fi

echo "--- last lines of $log:"
tail -n 40 "$log"
echo "---"
if [ -n "$crashes" ]; then
    fail "crash (exit $rc); artifacts: $(echo "$crashes" | tr '\n' ' '); replay with: $bin ARTIFACT; log and corpus kept in $work"
fi
fail "fuzzer exited $rc${runs:+ after $runs runs}; log and corpus kept in $work"
