#!/usr/bin/env python3
"""The device check's PyTorch section: the MLPs that `setpoint gpu-check --section training`
trains, trained by PyTorch on CUDA in f32, TF32 and bf16 (autocast), measured as
scripts/peers/torch_bench.py measures them (median of windows, each ending on a CUDA
synchronize); and the forward-pass latency of the inference section's service model.
Writes the section JSON (section, status, reason, headline, figures) to --out.

    torch_gpu.py --out FILE [--digits digits.csv.gz] [--seconds 3] [--dry-run]

Without CUDA it fails, or in a dry run runs briefly on the CPU (plumbing only) and is
recorded as skipped.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# In the bundle torch_bench.py sits beside this file; in the repository, in scripts/peers.
sys.path[:0] = [HERE, os.path.join(HERE, "..", "peers")]

# The training section's workloads: name, layers, batch, random rows (None: digits).
WORKLOADS = [
    ("train-digits", [64, 128, 10], 64, None),
    ("train-big", [784, 1024, 1024, 10], 256, 4096),
    ("train-gpu", [784, 4096, 4096, 10], 1024, 16384),
    ("train-mlp2048", [784, 2048, 2048, 10], 256, 4096),
]
SERVICE_LAYERS, SERVICE_BATCHES = [784, 1024, 1024, 10], [1, 8]


def write(path, status, reason, headline, figures):
    doc = {"section": "torch", "status": status, "reason": reason, "headline": headline, "figures": figures}
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(path + ".tmp", path)
    return 1 if status == "fail" else 0


def forward_latency(tb, torch, device, seconds, precision, batch):
    """p50 and p99 (ms) of one forward pass and softmax of a batch, synchronised."""
    torch.manual_seed(1)
    model = tb.mlp(SERVICE_LAYERS).to(device).eval()
    x = torch.randn(batch, SERVICE_LAYERS[0], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    lat = []
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                                enabled=precision == "bf16"):
        for _ in range(20):
            torch.softmax(model(x), dim=1)
        sync()
        while time.perf_counter() - start < seconds or len(lat) < 20:
            t0 = time.perf_counter()
            torch.softmax(model(x), dim=1).float().cpu()
            lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    return {"precision": precision, "batch": batch, "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "calls": len(lat)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--digits")
    p.add_argument("--seconds", type=float)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args()
    try:
        import torch

        import torch_bench as tb
    except ImportError as e:
        return write(a.out, "skipped" if a.dry_run else "fail", "PyTorch cannot be imported: %s" % e, [], {})
    cuda = torch.cuda.is_available()
    note = None
    if not cuda:
        why = "torch %s sees no CUDA device" % torch.__version__
        if not a.dry_run:
            return write(a.out, "fail", why, [], {"torch": torch.__version__})
        note = why + "; ran on the CPU for the plumbing"
    device = "cuda" if cuda else "cpu"
    seconds = a.seconds or (0.2 if a.dry_run else 3.0)
    warmup = 0.05 if a.dry_run else 1.0
    precisions = ["f32", "tf32", "bf16"] if cuda else ["f32"]
    figures = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "seconds": seconds,
        "runs": [],
        "errors": [],
    }
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    lines = []
    for name, layers, batch, rows in WORKLOADS:
        if a.dry_run and name in ("train-gpu", "train-mlp2048"):
            continue
        if rows is None and not a.digits:
            figures["errors"].append("%s: no digits file given" % name)
            continue
        rates = {}
        for precision in precisions:
            try:
                tb.set_precision(precision)
                if rows is None:
                    x, y = tb.load_digits(a.digits, batch)
                else:
                    g = torch.Generator().manual_seed(1)
                    x, y = torch.randn(rows, layers[0], generator=g), torch.randint(0, 10, (rows,), generator=g)
                op = tb.train_step_fn(layers, x, y, batch, device, precision)
                windows, overall = tb.measure(warmup, seconds, op, sync)
                rate = statistics.median(windows)
                rates[precision] = rate
                figures["runs"].append({"workload": name, "layers": "-".join(map(str, layers)), "batch": batch,
                                        "precision": precision, "device": device,
                                        "samples_per_s": rate, "mean_samples_per_s": overall,
                                        "windows": len(windows)})
            except Exception as e:  # one failed run must not hide the others
                figures["errors"].append("%s %s: %s: %s" % (name, precision, type(e).__name__, e))
        if rates:
            lines.append("%s (%s b%d) on %s: %s samples/s" % (
                name, "-".join(map(str, layers)), batch, device,
                ", ".join("%s %.0f" % (k, v) for k, v in rates.items())))
    try:
        figures["forward"] = [forward_latency(tb, torch, device, seconds / 2, pr, b)
                              for b in SERVICE_BATCHES for pr in precisions[::2]]
        for f in figures["forward"]:
            lines.append("forward %s b%d %s: p50 %.3f ms, p99 %.3f ms" % (
                "-".join(map(str, SERVICE_LAYERS)), f["batch"], f["precision"], f["p50_ms"], f["p99_ms"]))
    except Exception as e:
        figures["errors"].append("forward: %s: %s" % (type(e).__name__, e))
    if note:
        return write(a.out, "skipped", note, lines, figures)
    if figures["errors"]:
        return write(a.out, "fail", "; ".join(figures["errors"]), lines, figures)
    return write(a.out, "pass", None, lines, figures)


if __name__ == "__main__":
    sys.exit(main())
