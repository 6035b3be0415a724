#!/usr/bin/env python3
"""kernel_trace.py - the last forward of a kernel_trace.c log, kernel by kernel.

Usage: kernel_trace.py TRACE.csv [FIRST_KERNEL_SUBSTRING]

Takes the kernels from the last one whose name holds FIRST_KERNEL_SUBSTRING
(default: embed_, a forward's first kernel) to the end of the log and prints
each kernel's time on the GPU and the gap before it (from the previous
kernel's end; negative where they overlap), then sums per kernel name.
Where the log holds CUDA runtime calls (host rows, "api") and a
cudaProfilerStart/Stop pair, it then prints that window's host calls and
GPU work merged in time order: the time between two host calls is host work.
"""
import re
import sys


def short(name):
    name = re.sub(r"\(.*$", "", name)
    return name.replace("(anonymous namespace)::", "")[:60]


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) >= 2 else 2
    first = sys.argv[2] if len(sys.argv) > 2 else "embed_"
    rows, api = [], []
    with open(sys.argv[1]) as f:
        for line in f:
            parts = line.rstrip("\n").split(",", 3)
            if len(parts) == 4:
                r = (int(parts[0]), int(parts[1]), parts[2], parts[3])
                (api if r[2] == "api" else rows).append(r)
    rows.sort()
    api.sort()
    starts = [i for i, r in enumerate(rows) if first in r[3]]
    if not starts:
        print("no kernel named like %r in %s" % (first, sys.argv[1]))
        window(rows, api)
        return 0 if api else 1
    i = starts[-1]
    while i > 0 and rows[i - 1][3].startswith("memcpy") and rows[i][0] - rows[i - 1][1] < 50000:
        i -= 1  # the forward's metadata copies, just before its first kernel
    fwd = rows[i:]
    t0, prev_end = fwd[0][0], fwd[0][0]
    per = {}
    print("%9s %8s %8s  %-12s %s" % ("at us", "gap us", "run us", "grid", "kernel"))
    for s, e, grid, name in fwd:
        gap, run = (s - prev_end) / 1e3, (e - s) / 1e3
        n = short(name)
        print("%9.1f %8.1f %8.1f  %-12s %s" % ((s - t0) / 1e3, gap, run, grid, n))
        d = per.setdefault(n, [0, 0.0, 0.0])
        d[0] += 1
        d[1] += run
        d[2] += gap
        prev_end = max(prev_end, e)
    print("  per kernel (launches, run us, gaps before it us):")
    for n, (c, run, gap) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print("  %4d %9.1f %9.1f  %s" % (c, run, gap, n))
    span = (prev_end - t0) / 1e3
    runs = sum(v[1] for v in per.values())
    print("  span %.1f us: kernels %.1f us, gaps %.1f us, %d kernels" % (span, runs, span - runs, len(fwd)))
    window(rows, api)
    return 0


def window(rows, api):
    """The profiled call: host calls and GPU work in time order."""
    a = [r for r in api if r[3].startswith("cudaProfilerStart")]
    b = [r for r in api if r[3].startswith("cudaProfilerStop")]
    if not a or not b or b[-1][0] < a[-1][1]:
        return
    w0, w1 = a[-1][1], b[-1][0]
    ev = [("host", r) for r in api if w0 <= r[0] < w1] + [("gpu", r) for r in rows if w0 <= r[0] < w1]
    ev.sort(key=lambda x: x[1][0])
    print("\nthe profiled call, %.1f us from cudaProfilerStart to cudaProfilerStop:" % ((w1 - w0) / 1e3))
    print("%9s %8s %8s  %-4s %s" % ("at us", "before", "run us", "", "call or GPU work"))
    host_end, host_busy, host_calls = w0, 0.0, 0.0
    gpu = [r for k, r in ev if k == "gpu"]
    for kind, (s, e, grid, name) in ev:
        if kind == "host":
            before = (s - host_end) / 1e3  # host work since the previous call returned
            host_busy += before
            host_calls += (e - s) / 1e3
            host_end = max(host_end, e)
            print("%9.1f %8.1f %8.1f  host %s" % ((s - w0) / 1e3, before, (e - s) / 1e3, name))
        else:
            print("%9.1f %8s %8.1f  gpu  %s" % ((s - w0) / 1e3, "", (e - s) / 1e3, short(name)))
    if gpu:
        print("  host work between calls %.1f us, inside calls %.1f us; first GPU work at %.1f us, last GPU work "
              "ends %.1f us before the window closes" %
              (host_busy, host_calls, (gpu[0][0] - w0) / 1e3, (w1 - max(r[1] for r in gpu)) / 1e3))


if __name__ == "__main__":
    sys.exit(main())
