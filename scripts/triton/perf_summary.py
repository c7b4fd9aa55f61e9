#!/usr/bin/env python3
"""The perf_analyzer table of scripts/triton-client-check.sh.

    python scripts/triton/perf_summary.py OUT_DIR "VERSION"

Reads OUT_DIR/perf-{http,grpc,grpc-streaming}-c{1,4,16}.csv (perf_analyzer's -f reports) and
prints throughput and p99 latency per protocol and level, with each protocol's throughput as
a multiple of HTTP's at the same level (a level that needed a second, looser try is marked);
then the tensor format perf_analyzer's HTTP requests use, as the request a loopback proxy
recorded (OUT_DIR/perf_analyzer-http-request.txt, from scripts/triton/http_sniff.py) shows.
"""

import csv
import os
import re
import sys

PROTOCOLS = ("http", "grpc", "grpc-streaming")
LEVELS = (1, 4, 16)


def result(out, proto, c):
    """(infer/sec, p99 in ms) from one run's CSV, or None."""
    try:
        with open(os.path.join(out, f"perf-{proto}-c{c}.csv")) as f:
            r = next(csv.DictReader(f))
        return float(r["Inferences/Second"]), float(r["p99 latency"]) / 1000.0
    except (OSError, StopIteration, KeyError, ValueError):
        return None


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
    print(f"perf_analyzer {version}; model mlp, batch 1, loopback; p99 latency in ms")
    print(f"{'protocol':<16}{'c':>4}{'infer/sec':>12}{'p99 ms':>10}{'vs HTTP':>9}")
    for c in LEVELS:
        http = result(out, "http", c)
        for proto in PROTOCOLS:
            r = result(out, proto, c)
            if r is None:
                print(f"{proto:<16}{c:>4}{'no result':>12}")
                continue
            ratio = f"{r[0] / http[0]:.2f}x" if http and http[0] > 0 else "-"
            retried = os.path.exists(os.path.join(out, f"perf-{proto}-c{c}.retried"))
            mark = "  (2nd try, 50 % stability)" if retried else ""
            print(f"{proto:<16}{c:>4}{r[0]:>12.1f}{r[1]:>10.2f}{ratio:>9}{mark}")
    print(f"perf_analyzer's HTTP tensors: {tensor_format(out)}")


if __name__ == "__main__":
    main()
