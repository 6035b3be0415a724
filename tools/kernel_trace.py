#!/usr/bin/env python3
"""kernel_trace.py - the last forward of a kernel_trace.c log, kernel by kernel.

Usage: kernel_trace.py TRACE.csv [FIRST_KERNEL_SUBSTRING]

Takes the kernels from the last one whose name holds FIRST_KERNEL_SUBSTRING
(default: embed_, a forward's first kernel) to the end of the log and prints
each kernel's time on the GPU and the gap before it (from the previous
kernel's end; negative where they overlap), then sums per kernel name.
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
    rows = []
    with open(sys.argv[1]) as f:
        for line in f:
            parts = line.rstrip("\n").split(",", 3)
            if len(parts) == 4:
                rows.append((int(parts[0]), int(parts[1]), parts[2], parts[3]))
    rows.sort()
    starts = [i for i, r in enumerate(rows) if first in r[3]]
    if not starts:
        print("no kernel named like %r in %s" % (first, sys.argv[1]))
        return 1
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
