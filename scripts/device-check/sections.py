#!/usr/bin/env python3
"""Sections of the device check that are not `setpoint gpu-check`: each is run by run.py as a
process of its own, under its own time limit, and writes one JSON document to --out:

    {"section": NAME, "status": "pass"|"fail"|"skipped", "reason": TEXT|null,
     "headline": [LINE, ...], "figures": {...}}

    sections.py env            runtime (gVisor, Firecracker), driver, GPU, CUDA libraries
    sections.py kernels-check  `setpoint kernels check`: NVRTC and ptxas for this GPU
    sections.py probe-build    nvcc builds the CUDA probe (probe.cu with the project's GEMMs)
    sections.py probe          the probe: GEMM kernels against cuBLAS
    sections.py daemon         the daemon on the GPU: a job beside a service under HTTP load
    sections.py tests          the GPU test binaries built with `cargo test --no-run`
    sections.py sanitizer      compute-sanitizer (memcheck or racecheck) on the probe

With --dry-run, what needs a GPU (or a tool only the GPU host has) is recorded as skipped
with the reason, and the CPU-side parts still run.
"""

import argparse
import ctypes
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

# Where CUDA libraries and tools live on the usual installs (the toolkit, distribution
# packages, and the NVIDIA wheels PyTorch brings along).
LIB_DIRS = [
    "/usr/local/cuda/lib64",
    "/usr/local/cuda/targets/x86_64-linux/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib/wsl/lib",
]
LIBS = [
    "libcuda.so.1",
    "libcuda.so",
    "libnvidia-ml.so.1",
    "libnvrtc.so",
    "libnvrtc.so.12",
    "libnvrtc.so.13",
    "libcublas.so",
    "libcublas.so.12",
    "libcublas.so.13",
    "libcudart.so.12",
    "libcudart.so.13",
]
TOOL_DIRS = ["/usr/local/cuda/bin", "/usr/local/cuda/compute-sanitizer"]


def write(path, section, status, reason=None, headline=(), figures=None):
    doc = {
        "section": section,
        "status": status,
        "reason": reason,
        "headline": list(headline),
        "figures": figures if figures is not None else {},
    }
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return 0 if status != "fail" else 1


def run(cmd, timeout=60, env=None, cwd=None):
    """(exit code, stdout, stderr) of `cmd`; 127 when it cannot start, 124 on time-out."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        return p.returncode, p.stdout, p.stderr
    except FileNotFoundError as e:
        return 127, "", str(e)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out, "timed out after %s s" % timeout


def read(path, limit=4096):
    try:
        with open(path, errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def which(name):
    found = shutil.which(name)
    if found:
        return found
    for d in TOOL_DIRS:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


# ---------------------------------------------------------------------------------------------
# env


def detect_runtime():
    """('gvisor' | 'firecracker' | 'container' | 'vm' | 'unknown', [evidence])."""
    evidence = []
    version = read("/proc/version").strip()
    cmdline = read("/proc/cmdline").strip()
    code, dmesg, _ = run(["dmesg"], timeout=10)
    dmesg = dmesg if code == 0 else ""
    evidence.append("uname -r: " + os.uname().release)
    if version:
        evidence.append("/proc/version: " + version[:120])
    gv = [l for l in dmesg.splitlines() if "gvisor" in l.lower()]
    if gv or "gvisor" in version.lower():
        evidence.append("dmesg: " + gv[0][:120] if gv else "/proc/version names gVisor")
        return "gvisor", evidence
    # gVisor reports this fixed kernel version and build line.
    if "4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016" in version:
        evidence.append("the fixed kernel version gVisor reports")
        return "gvisor", evidence
    fc = [l for l in dmesg.splitlines() if "firecracker" in l.lower()]
    if fc or "firecracker" in cmdline.lower():
        evidence.append("dmesg names firecracker" if fc else "/proc/cmdline names firecracker")
        return "firecracker", evidence
    if "virtio_mmio.device=" in cmdline:
        # Firecracker attaches its devices over virtio-mmio on the kernel command line.
        evidence.append("/proc/cmdline: virtio_mmio devices (Firecracker's way)")
        return "firecracker", evidence
    if os.path.exists("/.dockerenv") or "docker" in read("/proc/1/cgroup"):
        evidence.append("/.dockerenv or a docker cgroup")
        return "container", evidence
    if "hypervisor" in read("/proc/cpuinfo", 1 << 16):
        evidence.append("the CPU flags name a hypervisor")
        return "vm", evidence
    return "unknown", evidence


def loaded_path(name):
    """Where the dynamic loader finds `name` (by loading it here), or None."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return None
    base = name.split(".so")[0] + ".so"
    for line in read("/proc/self/maps", 1 << 22).splitlines():
        path = line.split()[-1] if line.split() else ""
        if os.path.basename(path).startswith(base):
            return os.path.realpath(path)
    return "loaded (path not seen)"


def find_on_disk(pattern):
    dirs = list(LIB_DIRS) + [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += glob.glob("/usr/local/lib/python3*/dist-packages/nvidia/*/lib")
    dirs += glob.glob("/usr/lib/python3*/site-packages/nvidia/*/lib")
    dirs += glob.glob(os.path.expanduser("~/.local/lib/python3*/site-packages/nvidia/*/lib"))
    try:
        import site

        for sp in site.getsitepackages():
            dirs += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
            dirs += glob.glob(os.path.join(sp, "torch", "lib"))
    except Exception:
        pass
    found = []
    for d in dict.fromkeys(dirs):
        found += sorted(glob.glob(os.path.join(d, pattern)))
    return list(dict.fromkeys(found))


def nvidia_smi_facts():
    smi = which("nvidia-smi")
    if not smi:
        return None, "nvidia-smi not found"
    q = "name,driver_version,compute_cap,memory.total,pci.bus_id,mig.mode.current,persistence_mode"
    code, out, err = run([smi, "--query-gpu=" + q, "--format=csv,noheader"], timeout=30)
    if code != 0:
        return None, "nvidia-smi failed: " + (err or out).strip()[:300]
    gpus = []
    for line in out.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) >= 7:
            gpus.append(dict(zip(["name", "driver", "compute_cap", "memory", "pci", "mig", "persistence"], f)))
    _, head, _ = run([smi], timeout=30)
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", head)
    return {"gpus": gpus, "cuda_version": cuda.group(1) if cuda else None}, None


def tool_version(name, args=("--version",)):
    path = which(name)
    if not path:
        return None
    code, out, err = run([path] + list(args), timeout=30)
    text = (out + err).strip().splitlines()
    return {"path": path, "version": text[-1] if text else "exit %d" % code}


def section_env(a):
    runtime, evidence = detect_runtime()
    smi, smi_error = nvidia_smi_facts()
    libs = {name: loaded_path(name) for name in LIBS}
    on_disk = {p: find_on_disk(p) for p in ["libnvrtc.so*", "libcublas.so*", "libcuda.so*"]}
    tools = {t: tool_version(t) for t in ["nvcc", "compute-sanitizer", "ptxas"]}
    figures = {
        "runtime": runtime,
        "runtime_evidence": evidence,
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "nvidia_smi": smi,
        "nvidia_smi_error": smi_error,
        "dlopen": libs,
        "on_disk": on_disk,
        "tools": tools,
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
        "python": sys.version.split()[0],
    }
    lines = ["runtime: %s (%s; kernel %s)" % (runtime, evidence[-1], os.uname().release)]
    if smi:
        for g in smi["gpus"]:
            lines.append("%s, compute capability %s, %s; driver %s, CUDA %s; MIG %s" % (
                g["name"], g["compute_cap"], g["memory"], g["driver"], smi["cuda_version"], g["mig"]))
    else:
        lines.append("no GPU seen: " + smi_error)
    lines.append("dlopen finds: %s; not: %s" % (
        ", ".join(k for k, v in libs.items() if v) or "none", ", ".join(k for k, v in libs.items() if not v) or "-"))
    where = sorted({v for v in libs.values() if v and v.startswith("/")})
    if where:
        lines.append("loaded from: " + ", ".join(where))
    lines.append("tools: " + ", ".join("%s %s" % (k, v["version"] if v else "absent") for k, v in tools.items()))
    if smi is None or not smi["gpus"]:
        if a.dry_run:
            return write(a.out, "env", "pass", None, lines, figures)
        return write(a.out, "env", "fail", "no GPU: " + (smi_error or "nvidia-smi lists none"), lines, figures)
    return write(a.out, "env", "pass", None, lines, figures)


# ---------------------------------------------------------------------------------------------
# kernels-check


def section_kernels_check(a):
    cmd = [a.bin, "kernels", "check", "--json", "--arch", a.arch]
    if a.cache_dir:
        cmd += ["--cache-dir", a.cache_dir]
    code, out, err = run(cmd, timeout=a.timeout)
    try:
        doc = json.loads(out)
    except ValueError:
        reason = (err.strip() or out.strip() or "exit %d" % code)[:600]
        status = "skipped" if a.dry_run and "NVRTC" in reason else "fail"
        return write(a.out, "kernels-check", status, reason, [], {"exit_code": code})
    kernels = [k for m in doc.get("modules", []) for k in m.get("kernels", [])]
    regs = [k.get("registers") for k in kernels if k.get("registers") is not None]
    spills = sum((k.get("spill_store_bytes") or 0) + (k.get("spill_load_bytes") or 0) for k in kernels)
    lines = ["NVRTC %s, ptxas %s: %d modules, %d kernels for %s" % (
        doc.get("nvrtc_version"), doc.get("ptxas_version") or "absent", len(doc.get("modules", [])),
        len(kernels), doc.get("arch"))]
    if regs:
        lines.append("registers up to %d per thread; %d spill bytes in all" % (max(regs), spills))
    errors = [m["error"] for m in doc.get("modules", []) if m.get("error")]
    if doc.get("ok") and code == 0:
        return write(a.out, "kernels-check", "pass", None, lines, doc)
    return write(a.out, "kernels-check", "fail", "; ".join(errors) or "exit %d" % code, lines, doc)


# ---------------------------------------------------------------------------------------------
# probe-build, probe, sanitizer


def section_probe_build(a):
    nvcc = os.environ.get("NVCC") or which("nvcc")
    if not nvcc:
        why = "nvcc not found ($NVCC, PATH, /usr/local/cuda/bin)"
        return write(a.out, "probe-build", "skipped" if a.dry_run else "fail", why)
    env = dict(os.environ, NVCC=nvcc)
    started = time.time()
    code, out, err = run(["bash", os.path.join(a.src, "probe-build.sh"), a.src, a.bin, a.arch],
                         timeout=a.timeout, env=env)
    seconds = time.time() - started
    warnings = [l for l in (out + err).splitlines() if "warning" in l.lower()]
    _, ver, _ = run([nvcc, "--version"], timeout=30)
    release = [l for l in ver.splitlines() if "release" in l] or ver.strip().splitlines() or [""]
    figures = {"nvcc": nvcc, "nvcc_version": release[-1].strip(),
               "arch": a.arch, "seconds": seconds, "warnings": warnings[:50],
               "output_tail": (out + err)[-4000:]}
    lines = ["%s for %s in %.1f s, %d warnings" % (figures["nvcc_version"], a.arch, seconds, len(warnings))]
    if code == 0 and os.access(a.bin, os.X_OK):
        return write(a.out, "probe-build", "pass", None, lines, figures)
    return write(a.out, "probe-build", "fail", "nvcc exit %d: %s" % (code, (err or out).strip()[-500:]),
                 lines, figures)


def gpu_visible():
    return os.path.exists("/dev/nvidiactl") or which("nvidia-smi") is not None


def section_probe(a):
    if not os.access(a.bin, os.X_OK):
        why = "the probe was not built (see probe-build)"
        return write(a.out, "gemm-vs-cublas", "skipped" if a.dry_run else "fail", why)
    if a.dry_run and not gpu_visible():
        return write(a.out, "gemm-vs-cublas", "skipped", "no GPU to run the probe on (built: %s)" % a.bin)
    cmd = [a.bin, "--json", a.out + ".probe"]
    if a.sizes:
        cmd += ["--sizes", a.sizes]
    code, out, err = run(cmd, timeout=a.timeout)
    sys.stderr.write(err)
    try:
        with open(a.out + ".probe") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        return write(a.out, "gemm-vs-cublas", "fail", "exit %d, no JSON (%s): %s" % (code, e, err.strip()[-400:]))
    status = doc.get("status", "fail")
    if code != 0 and status == "pass":
        status = "fail"
    return write(a.out, "gemm-vs-cublas", status, doc.get("reason"), doc.get("headline", []), doc.get("figures"))


def section_sanitizer(a):
    name = a.tool
    runtime, evidence = detect_runtime()
    if runtime == "gvisor":
        return write(a.out, name, "skipped", "compute-sanitizer does not work under gVisor (%s)" % evidence[-1])
    tool = which("compute-sanitizer")
    if not tool:
        why = "compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
        return write(a.out, name, "skipped" if a.dry_run else "fail", why)
    if not os.access(a.bin, os.X_OK):
        why = "the probe was not built (see probe-build)"
        return write(a.out, name, "skipped" if a.dry_run else "fail", why)
    if a.dry_run and not gpu_visible():
        return write(a.out, name, "skipped", "no GPU to run the probe on")
    cmd = [tool, "--tool", name, "--error-exitcode", "9", "--print-limit", "50",
           a.bin, "--small", "--json", a.out + ".probe"]
    if name == "racecheck":
        # How racecheck treats TMA copies and wgmma's asynchronous reads of shared memory
        # (ordered by mbarriers, not by __syncthreads) is not established: racecheck keeps to
        # the mma.sync kernels it has passed on, and memcheck covers gemm_bf16_wgmma.
        cmd.append("--skip-wgmma")
    started = time.time()
    code, out, err = run(cmd, timeout=a.timeout)
    text = out + err
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazard", text)
    errors = int(summary[-1]) if summary else None
    figures = {"exit_code": code, "errors": errors, "hazards": int(hazards[-1]) if hazards else None,
               "seconds": time.time() - started, "output_tail": text[-6000:]}
    lines = ["%s on the probe's small shapes: %s errors%s in %.1f s" % (
        name, "?" if errors is None else errors,
        "" if figures["hazards"] is None else ", %d hazards" % figures["hazards"], figures["seconds"])]
    clean = errors == 0 or (errors is None and figures["hazards"] == 0)
    if code == 0 and clean:
        return write(a.out, name, "pass", None, lines, figures)
    why = "exit %d; %s" % (code, "no ERROR SUMMARY line" if errors is None else "%d errors" % errors)
    return write(a.out, name, "fail", why, lines, figures)


# ---------------------------------------------------------------------------------------------
# daemon


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_json(binary, url, args, timeout=60):
    code, out, err = run([binary] + args + ["--url", url, "--json"], timeout=timeout)
    try:
        return json.loads(out), None
    except ValueError:
        return None, "%s: exit %d: %s" % (" ".join(args), code, (err or out).strip()[-300:])


def section_daemon(a):
    os.makedirs(a.work, exist_ok=True)
    state = os.path.join(a.work, "state")
    port = free_port()
    url = "http://127.0.0.1:%d" % port
    kind = "cpu" if a.dry_run else "cuda"
    config = os.path.join(a.work, "config.toml")
    with open(config, "w") as f:
        f.write('listen = "127.0.0.1:%d"\nstate_dir = %s\n[device]\nkind = "%s"\n' % (port, json.dumps(state), kind))
        f.write('[[services]]\nname = "mlp"\nlayers = [64, 128, 10]\nseed = 1\n'
                "  [services.slo]\n  p99_ms = 5.0\n  [services.batching]\n  max_batch_size = 64\n")
    log = open(os.path.join(a.work, "serve.log"), "w")
    daemon = subprocess.Popen([a.bin, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT)
    figures = {"device_kind": kind, "url": url}
    problems = []
    try:
        deadline = time.time() + (60 if not a.dry_run else 30)
        start_status = None
        while time.time() < deadline and daemon.poll() is None:
            start_status, _ = cli_json(a.bin, url, ["status"], timeout=10)
            if start_status and start_status.get("ready"):
                break
            time.sleep(0.3)
        if not start_status:
            code = daemon.poll()
            why = "the daemon did not answer%s; see daemon/serve.log" % (
                "" if code is None else " (it exited with %d)" % code)
            return write(a.out, "daemon", "fail", why, [], figures)
        figures["devices_at_start"] = start_status.get("devices")
        if a.dry_run:
            job = ["--data", "synthetic:blobs:size=2000,features=64,classes=10", "--layers", "64,32,10",
                   "--epochs", "1", "--batch-size", "64"]
            bench = ["--concurrency", "1,4", "--duration", "1s", "--warmup", "200ms"]
        else:
            job = ["--data", "synthetic:blobs:size=200000,features=64,classes=10", "--layers",
                   "64,2048,2048,10", "--epochs", "3", "--batch-size", "512"]
            bench = ["--concurrency", "1,16", "--duration", "5s", "--warmup", "1s"]
        submitted, err = cli_json(a.bin, url, ["submit", "--name", "big"] + job)
        if err:
            problems.append(err)
        report, err = cli_json(a.bin, url, ["bench", "http", "--model", "mlp"] + bench, timeout=120)
        if err:
            problems.append(err)
        figures["bench_http"] = report
        loaded, err = cli_json(a.bin, url, ["status"])
        figures["status_loaded"] = loaded
        jobs, err2 = cli_json(a.bin, url, ["jobs"])
        figures["jobs"] = jobs
        problems += [e for e in (err, err2) if e]
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                metrics = r.read().decode(errors="replace")
            with open(os.path.join(a.work, "metrics.txt"), "w") as f:
                f.write(metrics)
            figures["metrics_lines"] = len(metrics.splitlines())
        except OSError as e:
            problems.append("GET /metrics: %s" % e)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                problems.append("the daemon did not stop within 20 s of SIGTERM")
        log.close()
    figures["exit_code_after_sigterm"] = daemon.returncode
    return daemon_verdict(a, figures, problems)


def daemon_verdict(a, figures, problems):
    want = "cpu" if a.dry_run else "cuda"
    loaded = figures.get("status_loaded") or {}
    names = [d.get("name", "") for d in loaded.get("devices", [])]
    tenants = {t.get("name"): t.get("device") for t in loaded.get("tenants", [])}
    if not any(n.startswith(want) for n in names):
        problems.append("no %s device in /v1/status (devices: %s)" % (want, names))
    lines = ["devices %s; tenants %s" % (names, tenants)]
    if loaded.get("device_note"):
        lines.append("device note: %s" % loaded["device_note"])
    for lvl in (figures.get("bench_http") or {}).get("levels", []):
        lines.append("HTTP concurrency %d: %.0f infer/s, p99 %.2f ms, %d errors, mean batch %.2f" % (
            lvl["concurrency"], lvl["requests_per_s"], lvl["latency_ms"]["p99"], lvl["error_count"],
            lvl.get("mean_batch_size") or 0))
        if lvl["error_count"]:
            problems.append("%d request errors at concurrency %d" % (lvl["error_count"], lvl["concurrency"]))
    for j in (figures.get("jobs") or {}).get("jobs", []):
        lines.append("job %s: %s, %s epochs, %.0f samples/s%s" % (
            j["name"], j["state"], j["epochs_done"], j.get("samples_per_s") or 0,
            ", error: " + j["error"] if j.get("error") else ""))
        if j["state"] == "failed":
            problems.append("job %s failed: %s" % (j["name"], j.get("error")))
    if figures["exit_code_after_sigterm"] != 0:
        problems.append("the daemon exited with %s after SIGTERM" % figures["exit_code_after_sigterm"])
    return write(a.out, "daemon", "fail" if problems else "pass", "; ".join(problems) or None, lines, figures)


# ---------------------------------------------------------------------------------------------
# replicas


def section_replicas(a):
    """One service with a CPU and a GPU replica beside a GPU training job that needs most of the
    GPU (scenarios/replicas-gpu.toml), against the same service on the GPU alone
    (replicas-gpu-one.toml): SLO windows, deadlines and each tenant's share-seconds."""
    os.makedirs(a.work, exist_ok=True)
    runs, problems, lines = {}, [], []
    for name in ("replicas-gpu", "replicas-gpu-one"):
        scenario = os.path.join(a.scenarios, name + ".toml")
        cmd = [a.bin, "bench", "scenario", scenario, "--json"]
        if a.dry_run:
            cmd += ["--duration", "6"]
        code, out, err = run(cmd, timeout=max(5, a.timeout // 2 - 1), cwd=a.work)
        with open(os.path.join(a.work, name + ".err"), "w") as f:
            f.write(err)
        try:
            report = json.loads(out)
        except ValueError:
            problems.append("%s: exit %d, no report (see %s.err)" % (name, code, name))
            continue
        runs[name] = report
        for pol in report.get("policies", []):
            shares = ", ".join("%s %.1f" % (t, s) for t, s in pol.get("tenant_share_seconds", []))
            lines.append("%s: %.1f %% of windows within the SLO, p99 %.2f ms, %d deadline(s) missed; "
                         "share-s %s; device-s %.1f" % (
                             name, pol["windows_within_slo_pct"], pol["p99_ms"], pol["deadline_misses"],
                             shares, pol["device_seconds_used"]))
    if problems:
        status, reason = "fail", "; ".join(problems)
    elif a.dry_run:
        status, reason = "skipped", "no GPU: the scenarios ran briefly on the CPU, the gpu replica left out"
    else:
        status, reason = "pass", None
    return write(a.out, "replicas", status, reason, lines, {"runs": runs})


# ---------------------------------------------------------------------------------------------
# tests


def section_tests(a):
    os.makedirs(a.work, exist_ok=True)
    binaries = sorted(glob.glob(os.path.join(a.dir, "*")))
    binaries = [b for b in binaries if os.access(b, os.X_OK) and os.path.isfile(b)]
    if not binaries:
        return write(a.out, "gpu-tests", "skipped" if a.dry_run else "fail", "no test binaries in the bundle")
    results, problems, lines = [], [], []
    per = max(10, a.timeout // len(binaries) - 2)
    for b in binaries:
        name = os.path.basename(b)
        code, out, err = run([b, "--test-threads=1", "--nocapture"], timeout=per, cwd=a.work)
        text = out + err
        with open(os.path.join(a.work, "test-%s.txt" % name), "w") as f:
            f.write(text)
        m = re.findall(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
        skipped = len(re.findall(r"^skipped", text, re.M))
        r = {"binary": name, "exit_code": code, "skipped_lines": skipped}
        if m:
            r.update(result=m[-1][0], passed=int(m[-1][1]), failed=int(m[-1][2]), ignored=int(m[-1][3]))
        results.append(r)
        lines.append("%s: %s, %s passed, %s failed, %d said skipped" % (
            name, r.get("result", "no result line"), r.get("passed", "?"), r.get("failed", "?"), skipped))
        if code != 0:
            problems.append("%s exit %d" % (name, code))
        elif skipped and not a.dry_run:
            problems.append("%s: %d tests skipped on a GPU host" % (name, skipped))
    status = "fail" if problems else ("skipped" if a.dry_run and any(r["skipped_lines"] for r in results) else "pass")
    reason = "; ".join(problems) or ("no GPU: the tests ran and said skipped" if status == "skipped" else None)
    return write(a.out, "gpu-tests", status, reason, lines, {"binaries": results})


# ---------------------------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, *args):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True, help="the section's JSON")
        s.add_argument("--dry-run", action="store_true")
        s.add_argument("--timeout", type=int, default=60, help="seconds for the inner command")
        for arg in args:
            s.add_argument("--" + arg, required=arg in ("bin",))
        return s

    add("env")
    add("kernels-check", "bin", "arch", "cache-dir")
    add("probe-build", "bin", "src", "arch")
    add("probe", "bin", "sizes")
    add("sanitizer", "bin", "tool")
    add("daemon", "bin", "work")
    add("tests", "dir", "work")
    add("replicas", "bin", "work", "scenarios")
    a = p.parse_args()
    handlers = {
        "env": section_env,
        "kernels-check": section_kernels_check,
        "probe-build": section_probe_build,
        "probe": section_probe,
        "sanitizer": section_sanitizer,
        "daemon": section_daemon,
        "tests": section_tests,
        "replicas": section_replicas,
    }
    return handlers[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
