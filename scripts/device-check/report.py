"""The device check's outputs: summary.txt, report.json, nvidia-smi.csv and a tarball of the
rest, rewritten after every section so that a run cut short still leaves what it had. Never
more than 8 files in OUT, none over 16 MiB."""

import datetime
import io
import json
import os
import shutil
import subprocess
import tarfile
import time

FORMAT = "setpoint-device-check-v1"
MAX_FILES = 8
MAX_FILE_BYTES = 16 << 20
OUTPUTS = ["summary.txt", "report.json", "nvidia-smi.csv", "device-check.tar.gz"]
SMI_QUERY = ("timestamp,index,utilization.gpu,utilization.memory,memory.used,memory.total,"
             "power.draw,clocks.sm,clocks.mem,temperature.gpu,pstate")
SMI_INTERVAL_MS = 200
# The daemon's checkpoints and the compiled probe are not worth the bytes.
TAR_EXCLUDE = ("daemon/state", "probe/probe", "lib")


def utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Run:
    def __init__(self, out, work, manifest, budget_s, dry_run, arch):
        self.out, self.work, self.manifest = out, work, manifest
        self.budget_s, self.dry_run, self.arch = budget_s, dry_run, arch
        self.started = time.time()
        self.records = []
        self.running = []
        self.sampler = None
        self.smi_note = None
        self.notes = []

    # -- nvidia-smi sampled through the run ---------------------------------------------------

    def start_sampler(self, env):
        path = os.path.join(self.out, "nvidia-smi.csv")
        smi = shutil.which("nvidia-smi", path=env.get("PATH"))
        if not smi:
            self.smi_note = "nvidia-smi not found: no samples"
            write_atomic(path, ("# %s\n" % self.smi_note).encode())
            return
        self.smi_file = open(path, "w")
        self.sampler = subprocess.Popen(
            [smi, "--query-gpu=" + SMI_QUERY, "--format=csv,nounits", "-lms", str(SMI_INTERVAL_MS)],
            stdout=self.smi_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop_sampler(self):
        if self.sampler is None:
            return
        self.sampler.terminate()
        try:
            self.sampler.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.sampler.kill()
            self.sampler.wait()
        self.smi_file.close()
        self.sampler = None
        try:
            q = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=30)
            with open(os.path.join(self.work, "nvidia-smi-q.txt"), "w") as f:
                f.write(q.stdout + q.stderr)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.notes.append("nvidia-smi -q: %s" % e)

    def smi_rows(self):
        """(unix time, {field: value}) per sampled row."""
        rows = []
        try:
            with open(os.path.join(self.out, "nvidia-smi.csv"), errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return rows
        fields = [f.strip() for f in SMI_QUERY.split(",")]
        for line in lines:
            cells = [c.strip() for c in line.split(",")]
            if len(cells) != len(fields) or cells[0] == "timestamp":
                continue
            try:
                t = datetime.datetime.strptime(cells[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            except ValueError:
                continue
            vals = {}
            for name, cell in zip(fields[1:], cells[1:]):
                try:
                    vals[name] = float(cell)
                except ValueError:
                    pass
            rows.append((t, vals))
        return rows

    def gpu_during(self, rows, start, end):
        inside = [v for t, v in rows if start <= t <= end]
        if not inside:
            return None

        def mean(k):
            xs = [v[k] for v in inside if k in v]
            return round(sum(xs) / len(xs), 1) if xs else None

        mem = [v["memory.used"] for v in inside if "memory.used" in v]
        return {"samples": len(inside), "util_pct_mean": mean("utilization.gpu"),
                "power_w_mean": mean("power.draw"), "sm_clock_mhz_mean": mean("clocks.sm"),
                "memory_used_mib_max": max(mem) if mem else None}

    # -- records ------------------------------------------------------------------------------

    def note_started(self, name):
        self.running.append(name)
        self.write_all()

    def add(self, rec):
        if rec["name"] in self.running:
            self.running.remove(rec["name"])
        self.records.append(rec)
        self.write_all()

    def close(self):
        self.stop_sampler()
        rows = self.smi_rows()
        for rec in self.records:
            if rec.get("started_unix_s"):
                rec["gpu"] = self.gpu_during(rows, rec["started_unix_s"], rec["ended_unix_s"])
        self.finished = time.time()
        self.write_all(final=True)
        extra = sorted(set(os.listdir(self.out)) - set(OUTPUTS))
        if len(os.listdir(self.out)) > MAX_FILES:
            self.notes.append("OUT holds %d files (limit %d): %s were there before" % (
                len(os.listdir(self.out)), MAX_FILES, ", ".join(extra)))
            self.write_all(final=True)

    def counts(self):
        c = {}
        for r in self.records:
            c[r["status"]] = c.get(r["status"], 0) + 1
        return c

    def section_figures(self, name):
        for r in self.records:
            if r["name"] == name and isinstance(r.get("figures"), dict):
                return r["figures"].get("figures") or {}
        return {}

    def comparisons(self):
        """setpoint's GPU training rates against PyTorch's on the same workloads."""
        ours = {r["workload"]: r for r in (self.section_figures("training").get("runs") or [])}
        theirs = {}
        for r in self.section_figures("torch").get("runs") or []:
            if r.get("device") == "cuda":
                theirs.setdefault(r["workload"], {})[r["precision"]] = r["samples_per_s"]
        rows = []
        for w, r in ours.items():
            for ours_precision, key in (("f32", "gpu_samples_per_s"), ("bf16", "gpu_bf16_samples_per_s"),
                                        ("bf16 graphs", "gpu_bf16_graphs_samples_per_s")):
                gpu = r.get(key)
                for precision, rate in sorted(theirs.get(w, {}).items()):
                    if gpu and rate:
                        rows.append({"workload": w, "setpoint_precision": ours_precision,
                                     "setpoint_gpu_samples_per_s": gpu,
                                     "torch_precision": precision, "torch_samples_per_s": rate,
                                     "setpoint_over_torch": gpu / rate})
        return rows

    def env_figures(self):
        for r in self.records:
            if r["name"] == "env" and isinstance(r.get("figures"), dict):
                return r["figures"].get("figures") or {}
        return {}

    # -- the files ------------------------------------------------------------------------------

    def write_all(self, final=False):
        now = time.time()
        doc = {
            "format": FORMAT,
            "dry_run": self.dry_run,
            "complete": final,
            "started_utc": utc(self.started),
            "updated_utc": utc(now),
            "seconds": round(now - self.started, 1),
            "budget_s": self.budget_s,
            "arch": self.arch,
            "bundle": self.manifest,
            "counts": self.counts(),
            "still_running": list(self.running),
            "nvidia_smi": {"file": "nvidia-smi.csv", "interval_ms": SMI_INTERVAL_MS,
                           "query": SMI_QUERY, "note": self.smi_note},
            "notes": self.notes,
            "outputs": OUTPUTS,
            "setpoint_vs_torch": self.comparisons(),
            "sections": self.records,
        }
        text = json.dumps(doc, indent=1)
        if len(text) > MAX_FILE_BYTES:
            for r in doc["sections"]:
                r["figures"] = "left out of report.json (too large): see sections/%s.json in the tarball" % r["name"]
            text = json.dumps(doc, indent=1)
        write_atomic(os.path.join(self.out, "report.json"), text.encode())
        write_atomic(os.path.join(self.out, "summary.txt"), self.summary(now, final).encode())
        self.write_tarball()

    def summary(self, now, final):
        c = self.counts()
        env = self.env_figures()
        smi = env.get("nvidia_smi") or {}
        gpus = smi.get("gpus") or []
        gpu = ", ".join("%s (driver %s, cc %s)" % (g["name"], g["driver"], g["compute_cap"]) for g in gpus)
        m = self.manifest
        lines = [
            "setpoint device check%s: %d pass, %d fail, %d timed out, %d skipped; %.0f s of a %.0f s budget%s" % (
                " (DRY RUN)" if self.dry_run else "", c.get("pass", 0), c.get("fail", 0),
                c.get("timeout", 0), c.get("skipped", 0), now - self.started, self.budget_s,
                "" if final else " (STILL RUNNING: partial)"),
            "runtime %s | GPU %s | CUDA %s | arch %s" % (
                env.get("runtime", "?"), gpu or "none seen", smi.get("cuda_version") or "?", self.arch),
            "bundle: %s, %s binaries, git %s%s, prepared %s; run %s" % (
                m.get("setpoint_version", "?"), m.get("profile", "?"), m.get("git_rev", "?"),
                " (dirty)" if m.get("git_dirty") else "", m.get("prepared_utc", "?"), utc(self.started)),
            "files: summary.txt (this), report.json (every figure; sections[] in run order with",
            "  start/end times to align with nvidia-smi.csv), nvidia-smi.csv (every %d ms)," % SMI_INTERVAL_MS,
            "  device-check.tar.gz (sections/NAME.json|.out|.err, daemon/, tests/, nvidia-smi-q.txt)",
            "status: pass = ran and every check held; fail = error or a check out of bounds (reason);",
            "  timeout = stopped at its limit; skipped = did not run (reason)",
            "",
        ]
        for n in self.notes:
            lines.append("note: " + n)
        for r in self.records:
            status = r["status"] if r["status"] in ("pass", "skipped") else r["status"].upper()
            extra = "" if r.get("exit_code") in (None, 0) else "  (exit %s)" % r["exit_code"]
            if r.get("injected"):
                extra += "  [injected: %s]" % r["injected"]
            lines.append("%-15s %-8s %6.1f s%s" % (r["name"], status, r["seconds"], extra))
            if r.get("reason"):
                lines.append("    reason: %s" % r["reason"])
            for h in r.get("headline") or []:
                lines.append("    " + h)
            g = r.get("gpu")
            if g:
                lines.append("    GPU meanwhile: util %s %%, power %s W, SM clock %s MHz, memory up to %s MiB (%d samples)" % (
                    g["util_pct_mean"], g["power_w_mean"], g["sm_clock_mhz_mean"], g["memory_used_mib_max"],
                    g["samples"]))
        for name in self.running:
            lines.append("%-15s running (in the background)" % name)
        cmp = self.comparisons()
        if cmp:
            lines += ["", "training on the GPU, setpoint / PyTorch on CUDA (> 1: setpoint faster):"]
            for c in cmp:
                lines.append("    %-13s setpoint %-4s vs torch %-4s  %.2f  (%.0f vs %.0f samples/s)" % (
                    c["workload"], c["setpoint_precision"], c["torch_precision"], c["setpoint_over_torch"],
                    c["setpoint_gpu_samples_per_s"], c["torch_samples_per_s"]))
        return "\n".join(lines) + "\n"

    def write_tarball(self):
        path = os.path.join(self.out, "device-check.tar.gz")
        for keep in (512 << 10, 64 << 10, 8 << 10):
            data = self.tarball(keep)
            if len(data) <= MAX_FILE_BYTES - (1 << 20):
                break
        write_atomic(path, data)

    def tarball(self, keep_bytes):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for root, dirs, files in os.walk(self.work):
                rel_root = os.path.relpath(root, self.work)
                dirs[:] = sorted(d for d in dirs if os.path.normpath(os.path.join(rel_root, d)) not in TAR_EXCLUDE)
                for name in sorted(files):
                    rel = os.path.normpath(os.path.join(rel_root, name))
                    if rel in TAR_EXCLUDE or name.endswith(".tmp"):
                        continue
                    full = os.path.join(root, name)
                    if os.path.islink(full) or not os.path.isfile(full):
                        continue
                    try:
                        with open(full, "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    if len(data) > keep_bytes:
                        cut = b"\n... [%d bytes cut: the file was %d bytes] ...\n" % (len(data) - keep_bytes, len(data))
                        data = data[: keep_bytes // 4] + cut + data[-(keep_bytes - keep_bytes // 4):]
                    info = tarfile.TarInfo("device-check/" + rel)
                    info.size = len(data)
                    info.mtime = int(time.time())
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()
