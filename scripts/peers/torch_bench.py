#!/usr/bin/env python3
"""The PyTorch side of scripts/bench-peers.sh: one workload, measured exactly as setpoint's
`cargo bench --bench probe` measures it, printed as one JSON line.

    torch_bench.py train-digits --threads 1 --seconds 3
    torch_bench.py train-big --threads 2
    torch_bench.py forward --batch 8
    torch_bench.py gemm --size 2048 --threads 2
    torch_bench.py train-big --device cuda --precision bf16

On --device cuda every window ends with torch.cuda.synchronize(), so a window counts only
work the GPU has finished; --precision tf32 lets f32 matmuls use TF32 tensor cores, bf16 runs
the forward pass under torch.autocast(dtype=bfloat16) (training and gemm workloads; the CPU
default is f32). scripts/device-check/torch_gpu.py runs these on the device check's GPU.

Fairness, workload by workload (setpoint's side is benches/common/mod.rs):
- train-digits: 64-128-10 (Linear, ReLU, Linear), batch 64, cross-entropy, Adam lr 1e-3 with
  PyTorch's defaults otherwise, on the first 1,792 rows of digits.csv.gz (28 whole batches)
  standardised with their own mean and population std (std < 1e-6 -> 1), held in memory as
  tensors; reshuffled each epoch with randperm and gathered by index, as setpoint's trainer
  does. One step = zero_grad, forward, loss, backward, optimizer step; no loss.item() per step
  (setpoint reads its accumulated loss once per epoch).
- train-big: 784-1024-1024-10, batch 256, the same loop on 4,096 rows of N(0, 1) data.
- forward: 64-128-10 in eval mode under torch.inference_mode(), softmax included (setpoint's
  Mlp::predict ends in a softmax), on an input tensor of --batch rows made beforehand.
- gemm: torch.mm(a, b, out=c) on f32 --size x --size matrices, 2*n^3 FLOP per call.

After --warmup seconds untimed, the workload runs in windows of about a tenth of --seconds
(a window always ends on a whole operation); `median` is the median of the windows' rates.
"""

import argparse
import gzip
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS_PATH = os.path.normpath(os.path.join(HERE, "..", "..", "..", "shared", "data", "digits.csv.gz"))


def measure(warmup, seconds, op, sync=lambda: None):
    until = time.perf_counter() + warmup
    while time.perf_counter() < until:
        op()
    sync()
    window = seconds / 10.0
    start = time.perf_counter()
    rates = []
    total = 0
    while time.perf_counter() - start < seconds or len(rates) < 3:
        t0 = time.perf_counter()
        items = 0
        while True:
            items += op()
            elapsed = time.perf_counter() - t0
            if elapsed >= window:
                sync()
                elapsed = time.perf_counter() - t0
                break
        rates.append(items / elapsed)
        total += items
    overall = total / (time.perf_counter() - start)
    return rates, overall


def mlp(layers):
    mods = []
    for i, (a, b) in enumerate(zip(layers, layers[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(layers) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def load_digits(path, batch):
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append([float(v) for v in line.split(",")])
    rows = rows[: len(rows) - len(rows) % batch]
    data = torch.tensor(rows, dtype=torch.float64)
    x, y = data[:, :-1], data[:, -1].to(torch.int64)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    x = ((x - mean) / std).to(torch.float32).contiguous()
    return x, y


def train_step_fn(layers, x, y, batch, device="cpu", precision="f32"):
    torch.manual_seed(1)
    model = mlp(layers).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = x.to(device), y.to(device)
    autocast = precision == "bf16"
    n = x.shape[0]
    batches = n // batch
    state = {"perm": None, "b": batches}

    def step():
        if state["b"] == batches:
            state["perm"] = torch.randperm(n, device=device)
            state["b"] = 0
        b = state["b"]
        idx = state["perm"][b * batch : (b + 1) * batch]
        state["b"] = b + 1
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        return batch

    return step


def set_precision(precision):
    """TF32 for f32 matmuls only when asked (PyTorch's default leaves it off for matmuls)."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=["train-digits", "train-big", "forward", "gemm"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--data", default=DIGITS_PATH, help="digits.csv.gz (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--precision", default="f32", choices=["f32", "tf32", "bf16"])
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    set_precision(a.precision)
    dev = a.device
    sync = torch.cuda.synchronize if torch.device(dev).type == "cuda" else (lambda: None)

    if a.workload == "train-digits":
        batch = 64
        x, y = load_digits(a.data, batch)
        op = train_step_fn([64, 128, 10], x, y, batch, dev, a.precision)
        unit = "samples_per_s"
    elif a.workload == "train-big":
        batch = 256
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4096, 784, generator=g)
        y = torch.randint(0, 10, (4096,), generator=g)
        op = train_step_fn([784, 1024, 1024, 10], x, y, batch, dev, a.precision)
        unit = "samples_per_s"
    elif a.workload == "forward":
        batch = a.batch
        torch.manual_seed(1)
        model = mlp([64, 128, 10]).to(dev).eval()
        xr = torch.randn(batch, 64).to(dev)

        def op():
            with torch.inference_mode():
                torch.softmax(model(xr), dim=1)
            return batch

        unit = "rows_per_s"
    else:
        n = batch = a.size
        g = torch.Generator().manual_seed(1)
        dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
        am = (torch.rand(n, n, generator=g) * 2 - 1).to(dev, dtype)
        bm = (torch.rand(n, n, generator=g) * 2 - 1).to(dev, dtype)
        cm = torch.empty(n, n, device=dev, dtype=dtype)
        flop = 2 * n**3

        def op():
            torch.mm(am, bm, out=cm)
            return flop

        unit = "gflop_per_s"

    rates, overall = measure(a.warmup, a.seconds, op, sync)
    if unit == "gflop_per_s":
        rates = [r / 1e9 for r in rates]
        overall /= 1e9
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "version": torch.__version__,
                "workload": a.workload,
                "threads": a.threads,
                "device": dev,
                "precision": a.precision,
                "batch": batch,
                "unit": unit,
                "median": statistics.median(rates),
                "mean": overall,
                "min": min(rates),
                "max": max(rates),
                "windows": len(rates),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
