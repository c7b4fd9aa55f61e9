#!/usr/bin/env python3
"""The perf_analyzer table of scripts/triton-client-check.sh.

    python scripts/triton/perf_summary.py OUT_DIR "VERSION"

Reads OUT_DIR/perf-{http,grpc,grpc-streaming}-c{1,4,16}-rN.csv (perf_analyzer's -f reports,
one per round N) and the matching .cpu files (the daemon's CPU ticks and inference count
before and after the run). Prints, per protocol and level, the median throughput over the
rounds with its range, the median p99 latency, the median of each round's throughput as a
multiple of HTTP's in the same round (side by side), and the daemon's median CPU time per
request; runs that needed a second, looser try are counted. Then the tensor format
perf_analyzer's HTTP requests use, as the request a loopback proxy recorded
(OUT_DIR/perf_analyzer-http-request.txt, from scripts/triton/http_sniff.py) shows.
"""

import csv
import glob
import os
import re
import statistics
import sys

PROTOCOLS = ("http", "grpc", "grpc-streaming")
LEVELS = (1, 4, 16)


def rounds(out):
    """The round numbers that have a report."""
    found = set()
    for path in glob.glob(os.path.join(out, "perf-*-c*-r*.csv")):
        m = re.search(r"-r(\d+)\.csv$", path)
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def result(out, proto, c, r):
    """(infer/sec, p99 in ms) from one run's CSV, or None."""
    try:
        with open(os.path.join(out, f"perf-{proto}-c{c}-r{r}.csv")) as f:
            row = next(csv.DictReader(f))
        return float(row["Inferences/Second"]), float(row["p99 latency"]) / 1000.0
    except (OSError, StopIteration, KeyError, ValueError):
        return None


def cpu_per_request(out, proto, c, r):
    """The daemon's CPU microseconds per request over one run, or None."""
    try:
        with open(os.path.join(out, f"perf-{proto}-c{c}-r{r}.cpu")) as f:
            t0, n0, t1, n1, hz = (float(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    if n1 <= n0 or hz <= 0:
        return None
    return (t1 - t0) / hz * 1e6 / (n1 - n0)


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def row(out, proto, c, rs):
    """One line of the table."""
    results = {r: result(out, proto, c, r) for r in rs}
    ok = [v for v in results.values() if v is not None]
    if not ok:
        return f"{proto:<16}{c:>4}{'no result':>14}"
    thr = [v[0] for v in ok]
    ratios = []
    for r, v in results.items():
        http = result(out, "http", c, r)
        if v is not None and http is not None and http[0] > 0:
            ratios.append(v[0] / http[0])
    ratio = median_or_none(ratios)
    cpu = median_or_none(cpu_per_request(out, proto, c, r) for r in rs)
    retried = sum(os.path.exists(os.path.join(out, f"perf-{proto}-c{c}-r{r}.retried")) for r in rs)
    spread = f"{min(thr):.0f}-{max(thr):.0f}"
    line = (
        f"{proto:<16}{c:>4}{statistics.median(thr):>12.1f}{spread:>15}"
        f"{statistics.median(v[1] for v in ok):>9.2f}"
        f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>9}"
        f"{(f'{cpu:.0f}' if cpu is not None else '-'):>10}"
    )
    if len(ok) < len(rs):
        line += f"  ({len(rs) - len(ok)} of {len(rs)} rounds without a result)"
    if retried:
        line += f"  ({retried} on the 2nd try, 50 % stability)"
    return line


def tensor_format(out):
    """What the requests a proxy recorded (perf_analyzer-http-request.txt) show."""
    try:
        with open(os.path.join(out, "perf_analyzer-http-request.txt"), errors="replace") as f:
            text = f.read()
    except OSError:
        return "not seen (no recorded request)"
    header = re.search(r"inference-header-content-length:\s*(\d+)", text, re.IGNORECASE)
    if header and "binary_data_size" in text:
        return (
            "binary (recorded request: Inference-Header-Content-Length "
            f"{header.group(1)}, binary_data_size in its JSON header)"
        )
    if re.search(r'"data"\s*:\s*\[', text):
        return 'JSON (recorded request: "data" in its JSON body)'
    return "not seen in the recorded request"


def main():
    out, version = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "?"
    rs = rounds(out)
    print(
        f"perf_analyzer {version}; model mlp, batch 1, loopback; {len(rs)} rounds, medians; "
        "vs HTTP: median of each round's ratio; daemon CPU in microseconds per request"
    )
    print(
        f"{'protocol':<16}{'c':>4}{'infer/sec':>12}{'range':>15}{'p99 ms':>9}"
        f"{'vs HTTP':>9}{'CPU us':>10}"
    )
    for c in LEVELS:
        for proto in PROTOCOLS:
            print(row(out, proto, c, rs))
    print(f"perf_analyzer's HTTP tensors: {tensor_format(out)}")


if __name__ == "__main__":
    main()
