#!/usr/bin/env python3
"""Runs the device check from a bundle made by prepare.sh: every section as a process of its
own under its own time limit, within one overall budget, and writes at most 8 files to OUT:

    summary.txt          read this first: each section's status, time and headline figures
    report.json          every figure: each section's JSON under "sections", in run order
    nvidia-smi.csv       GPU samples (utilisation, memory, power, clocks) every 200 ms
    device-check.tar.gz  everything else: sections/NAME.{json,out,err}, daemon/, tests/, logs

    run.sh [--dry-run] [--out DIR] [--budget-s S] [--only A,B] [--skip A,B]
           [--timeout NAME=S]... [--inject NAME=fail|hang]...

OUT defaults to $OUT, else ./device-check-out. The files are rewritten after every section,
so a run cut short still leaves what it had. --dry-run runs the plumbing on a host without a
GPU: GPU parts are recorded as skipped with the reason, CPU parts run briefly. --inject makes a
section fail or hang instead of running (to test that the rest still runs); --timeout
overrides a section's time limit.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESERVE_S = 8  # kept back from the budget for the last writes


class Section:
    def __init__(self, name, timeout_s, dry_timeout_s, command, background=False, after=None):
        self.name = name
        self.timeout_s = timeout_s
        self.dry_timeout_s = dry_timeout_s
        self.command = command  # ctx -> argv
        self.background = background
        self.after = after  # a background section this one waits for


def gpu_check(section, *extra):
    def cmd(ctx):
        argv = [ctx.bin, "gpu-check", "--section", section, "--out", ctx.json_path(ctx.current),
                "--cache-dir", os.path.join(ctx.work, "ptx-cache")]
        if ctx.dry_run:
            argv.append("--dry-run")
        for e in extra:
            argv += e(ctx) if callable(e) else [e]
        return argv
    return cmd


def helper(sub, *extra):
    def cmd(ctx):
        argv = [sys.executable, os.path.join(ctx.bundle, "sections.py"), sub,
                "--out", ctx.json_path(ctx.current), "--timeout", str(max(5, int(ctx.limit_s) - 5))]
        if ctx.dry_run:
            argv.append("--dry-run")
        for e in extra:
            argv += e(ctx) if callable(e) else [e]
        return argv
    return cmd


def digits(ctx):
    return ["--digits", ctx.digits] if ctx.digits else []


def probe_bin(ctx):
    return ["--bin", os.path.join(ctx.work, "probe", "probe")]


SECTIONS = [
    Section("env", 30, 20, helper("env")),
    Section("kernels-check", 45, 30, helper("kernels-check", lambda c: [
        "--bin", c.bin, "--arch", c.arch, "--cache-dir", os.path.join(c.work, "ptx-cache")])),
    Section("probe-build", 150, 60, helper("probe-build", lambda c: [
        "--bin", os.path.join(c.work, "probe", "probe"), "--src", os.path.join(c.bundle, "probe"),
        "--arch", c.arch]), background=True),
    Section("kernels", 90, 20, gpu_check("kernels")),
    Section("gemm-vs-cublas", 150, 20, helper("probe", probe_bin), after="probe-build"),
    Section("gemm", 60, 20, gpu_check("gemm")),
    Section("training", 115, 60, gpu_check("training", digits)),
    Section("torch", 100, 60, lambda c: [
        sys.executable, os.path.join(c.bundle, "torch_gpu.py"), "--out", c.json_path(c.current)]
        + digits(c) + (["--dry-run"] if c.dry_run else [])),
    Section("lanes", 45, 20, gpu_check("lanes")),
    Section("lanes-green", 45, 20, gpu_check("lanes-green")),
    Section("inference", 105, 30, gpu_check("inference")),
    Section("nvml", 40, 20, gpu_check("nvml")),
    Section("daemon", 90, 60, helper("daemon", lambda c: [
        "--bin", c.bin, "--work", os.path.join(c.work, "daemon")])),
    Section("gpu-tests", 90, 60, helper("tests", lambda c: [
        "--dir", os.path.join(c.bundle, "tests"), "--work", os.path.join(c.work, "tests")])),
    Section("replicas", 120, 40, helper("replicas", lambda c: [
        "--bin", c.bin, "--work", os.path.join(c.work, "replicas"),
        "--scenarios", os.path.join(c.bundle, "scenarios")])),
    Section("memcheck", 90, 20, helper("sanitizer", probe_bin, "--tool", "memcheck"), after="probe-build"),
    Section("racecheck", 120, 20, helper("sanitizer", probe_bin, "--tool", "racecheck"), after="probe-build"),
]
NAMES = [s.name for s in SECTIONS]


def parse_pairs(items, what, allowed=None):
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or name not in NAMES:
            sys.exit("run: %s expects NAME=VALUE with NAME one of %s, got %r" % (what, ", ".join(NAMES), item))
        if allowed and value not in allowed:
            sys.exit("run: %s %s: expected one of %s, got %r" % (what, name, "|".join(allowed), value))
        out[name] = value
    return out


def parse_names(text, what):
    names = [n for n in (text or "").split(",") if n]
    bad = [n for n in names if n not in NAMES]
    if bad:
        sys.exit("run: %s: unknown section(s) %s; sections: %s" % (what, ", ".join(bad), ", ".join(NAMES)))
    return names


class Ctx:
    """Everything a section's command line is built from."""

    def __init__(self, a, bundle, work):
        self.bundle = bundle
        self.work = work
        self.dry_run = a.dry_run
        self.bin = os.path.join(bundle, "bin", "setpoint")
        data = os.path.join(bundle, "data", "digits.csv.gz")
        self.digits = data if os.path.exists(data) else None
        self.arch = "sm_90"
        self.current = None
        self.limit_s = 0

    def json_path(self, name):
        return os.path.join(self.work, "sections", name + ".json")


def nvidia_lib_dirs():
    """Library folders of the CUDA toolkit, then of the NVIDIA wheels PyTorch brings."""
    dirs = [d for d in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
            if os.path.isdir(d)]
    try:
        import glob
        import site

        for sp in site.getsitepackages() + [site.getusersitepackages()]:
            dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    except (ImportError, AttributeError):
        pass
    return dirs


def cuda_environment(ctx):
    """LD_LIBRARY_PATH and PATH with the toolkit's folders and the NVIDIA wheels' library
    folders (where PyPI's CUDA libraries live). setpoint looks for libnvrtc.so.13, then
    .so.12, then libnvrtc.so on that path, so a CUDA 13 host needs no link."""
    env = dict(os.environ)
    system = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/lib/x86_64-linux-gnu"]
    libdirs = [d for d in nvidia_lib_dirs() if d not in system]
    old = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = ":".join(list(dict.fromkeys(libdirs)) + ([old] if old else []))
    bins = [d for d in ["/usr/local/cuda/bin", "/usr/local/cuda/compute-sanitizer"] if os.path.isdir(d)]
    env["PATH"] = ":".join(bins + [env.get("PATH", "/usr/bin:/bin")])
    return env


def gpu_arch(env):
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, env=env).stdout
        major, minor = out.strip().splitlines()[0].strip().split(".")
        return "sm_%d%d" % (int(major), int(minor))
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return "sm_90"


class Running:
    """A section's process, its files and its clock."""

    def __init__(self, sec, ctx, env, limit_s, inject):
        self.sec = sec
        self.inject = inject
        self.limit_s = limit_s
        self.started = time.time()
        d = os.path.join(ctx.work, "sections")
        self.out = open(os.path.join(d, sec.name + ".out"), "w")
        self.err = open(os.path.join(d, sec.name + ".err"), "w")
        ctx.current, ctx.limit_s = sec.name, limit_s
        if inject == "fail":
            argv = [sys.executable, "-c", "import sys; sys.exit('injected failure (--inject)')"]
        elif inject == "hang":
            argv = [sys.executable, "-c", "import time; time.sleep(86400)"]
        else:
            argv = sec.command(ctx)
        self.argv = argv
        # coreutils timeout signals the whole process group it leads, so a section's children
        # (the daemon, a test binary) go with it; KILL follows TERM after 5 s. Without it, the
        # same is done from here.
        self.own_timer = shutil.which("timeout") is None
        prefix = [] if self.own_timer else ["timeout", "--kill-after=5", "%d" % max(1, round(limit_s))]
        self.proc = subprocess.Popen(prefix + argv, stdout=self.out, stderr=self.err, env=env,
                                     cwd=ctx.work, start_new_session=True)

    def wait(self):
        grace = 1 if self.own_timer else 15
        try:
            rc = self.proc.wait(timeout=self.limit_s + grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                rc = self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            rc = 124
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # strays that outlived their section
        except OSError:
            pass
        self.proc.wait()
        self.out.close()
        self.err.close()
        return rc


def judge(name, rc, seconds, limit_s, json_path, err_path, inject):
    """The section's record: its own JSON where it wrote one, with the exit code's word."""
    rec = {"name": name, "exit_code": rc, "seconds": round(seconds, 2), "limit_s": round(limit_s),
           "status": "fail", "reason": None, "headline": [], "figures": None}
    if inject:
        rec["injected"] = inject
    doc = None
    try:
        with open(json_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        pass
    if isinstance(doc, dict):
        rec["status"] = doc.get("status") if doc.get("status") in ("pass", "fail", "skipped") else "fail"
        rec["reason"] = doc.get("reason")
        rec["headline"] = [str(x) for x in doc.get("headline") or []]
        rec["figures"] = doc
    if rc in (124, 137):
        rec["status"] = "timeout"
        rec["reason"] = "no result within its %d s limit (stopped)" % round(limit_s)
    elif doc is None:
        tail = ""
        try:
            with open(err_path, errors="replace") as f:
                lines = [l.strip() for l in f.read().splitlines() if l.strip()]
                tail = lines[-1][:300] if lines else ""
        except OSError:
            pass
        rec["reason"] = "exit code %d and no JSON%s" % (rc, ": " + tail if tail else "")
    elif rc != 0 and rec["status"] == "pass":
        rec["status"] = "fail"
        rec["reason"] = "exit code %d although its JSON says pass" % rc
    return rec


def skipped(name, reason):
    return {"name": name, "exit_code": None, "seconds": 0.0, "limit_s": 0, "status": "skipped",
            "reason": reason, "headline": [], "figures": None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=HERE, help="the prepared folder (default: this script's)")
    p.add_argument("--out", default=os.environ.get("OUT") or "device-check-out")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget-s", type=float, default=None, help="overall limit (470; 240 in a dry run)")
    p.add_argument("--only", help="run only these sections (comma-separated)")
    p.add_argument("--skip", help="leave these sections out (comma-separated)")
    p.add_argument("--timeout", action="append", metavar="NAME=S")
    p.add_argument("--inject", action="append", metavar="NAME=fail|hang")
    a = p.parse_args()
    budget = a.budget_s if a.budget_s is not None else (240.0 if a.dry_run else 470.0)
    if not budget > RESERVE_S:
        sys.exit("run: --budget-s must be more than %d seconds" % RESERVE_S)
    timeouts = {}
    for k, v in parse_pairs(a.timeout, "--timeout").items():
        try:
            timeouts[k] = float(v)
        except ValueError:
            timeouts[k] = -1.0
        if not 0 < timeouts[k] <= 600:
            sys.exit("run: --timeout %s: expected seconds in (0, 600], got %r" % (k, v))
    injects = parse_pairs(a.inject, "--inject", ("fail", "hang"))
    only, skip = parse_names(a.only, "--only"), parse_names(a.skip, "--skip")
    bundle = os.path.abspath(a.bundle)
    try:
        with open(os.path.join(bundle, "MANIFEST.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit("run: %s is not a prepared bundle (MANIFEST.json: %s); run "
                 "scripts/device-check/prepare.sh first" % (bundle, e))
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="setpoint-device-check-")
    os.makedirs(os.path.join(work, "sections"))
    ctx = Ctx(a, bundle, work)
    env = cuda_environment(ctx)
    ctx.arch = gpu_arch(env)
    import report  # beside this file, in the bundle

    run = report.Run(out, work, manifest, budget, a.dry_run, ctx.arch)
    run.start_sampler(env)
    deadline = run.started + budget
    background = {}
    try:
        for sec in SECTIONS:
            if (only and sec.name not in only) or sec.name in skip:
                run.add(skipped(sec.name, "left out (--only/--skip)"))
                continue
            if sec.after in background:
                run.add(finish(background.pop(sec.after), ctx))
            left = deadline - RESERVE_S - time.time()
            if left < 3:
                run.add(skipped(sec.name, "no time left in the %d s budget" % budget))
                continue
            limit = min(timeouts.get(sec.name, sec.dry_timeout_s if a.dry_run else sec.timeout_s), left)
            print("device-check: %s (limit %d s)" % (sec.name, limit), file=sys.stderr, flush=True)
            r = Running(sec, ctx, env, limit, injects.get(sec.name))
            if sec.background:
                background[sec.name] = r
                run.note_started(sec.name)
            else:
                run.add(finish(r, ctx))
        for r in background.values():
            run.add(finish(r, ctx))
    finally:
        run.close()
        shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(out, "summary.txt")) as f:
        print(f.read())
    return 0 if all(r["status"] in ("pass", "skipped") for r in run.records) else 1


def finish(r, ctx):
    rc = r.wait()
    d = os.path.join(ctx.work, "sections")
    rec = judge(r.sec.name, rc, time.time() - r.started, r.limit_s, ctx.json_path(r.sec.name),
                os.path.join(d, r.sec.name + ".err"), r.inject)
    rec["started_unix_s"] = round(r.started, 3)
    rec["ended_unix_s"] = round(time.time(), 3)
    rec["argv"] = r.argv
    print("device-check: %s %s in %.1f s" % (rec["name"], rec["status"], rec["seconds"]),
          file=sys.stderr, flush=True)
    return rec


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
