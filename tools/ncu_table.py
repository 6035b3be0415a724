#!/usr/bin/env python3
"""ncu_table.py - one forward's kernels from `ncu --csv --metrics
gpu__time_duration.sum` (scripts/gpu_check.sh, PROFILE=...): one line per
kernel launch in order (short name, grid, microseconds), then the time per
kernel name and the total.

Usage: python3 tools/ncu_table.py FILE.csv
"""
import csv
import re
import sys
from collections import OrderedDict


def short(name):
    name = re.sub(r"\(.*", "", name)  # drop the argument list
    name = re.sub(r"^void ", "", name)
    return name[:60]


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 2
    rows = []
    with open(sys.argv[1], newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not CSV
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        us = v / 1000.0 if unit.startswith("n") else v * 1000.0 if unit.startswith("m") else v
        rows.append((short(r["Kernel Name"]), r.get("Grid Size", ""), us))
    if not rows:
        print("no kernels in", sys.argv[1])
        return 1
    per = OrderedDict()
    for name, grid, us in rows:
        print(f"  {us:9.1f} us  {grid:>16}  {name}")
        n, t = per.get(name, (0, 0.0))
        per[name] = (n + 1, t + us)
    print("  per kernel:")
    for name, (n, t) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"  {t:9.1f} us  {n:4d} launches  {name}")
    print(f"  total {sum(r[2] for r in rows):.1f} us in {len(rows)} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
