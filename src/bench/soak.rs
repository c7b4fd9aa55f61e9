//! `setpoint bench soak`: a steady mixed load on a daemon of its own for a long while, to show
//! what a long run does to the process (resident memory, open file descriptors) and to the
//! service (request outcomes, latency per window against the SLO) beside a training job.
//!
//! The daemon is started as a child process (`setpoint serve` on a free loopback port and a
//! temporary state dir) so that its memory and descriptors can be read from `/proc/<pid>`;
//! a daemon started elsewhere could not be measured the same way. The load: single-row v2
//! inference requests at a fixed rate (open loop: request i is due at i / rate, whatever the
//! answers before it), a best-effort training job submitted through the jobs API, and a read
//! of `/v1/status`, `/metrics` and the job every second. At the end the daemon is stopped with
//! SIGTERM and must exit 0.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::client::{Client, ClientError};

/// Name of the training job the soak submits.
pub const JOB_NAME: &str = "soak";

/// Why a soak could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// A setting that cannot be used.
    #[error("{0}")]
    Input(String),
    /// The daemon could not be started or did not become ready.
    #[error("cannot start the daemon: {0}")]
    Start(String),
    /// The daemon failed while the soak ran.
    #[error("the daemon {0}")]
    Daemon(String),
    /// A request the soak needs (not one of the load's) failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakSpec {
    /// The `setpoint` binary to start the daemon from.
    pub exe: PathBuf,
    /// Its config file; the embedded default when `None`.
    pub config: Option<PathBuf>,
    /// How long the load runs.
    pub duration: Duration,
    /// Inference requests per second.
    pub rate_per_s: f64,
    /// The service to load.
    pub model: String,
    /// Span of the latency windows compared with the SLO.
    pub window: Duration,
    /// Threads sending the requests (each its own connection).
    pub senders: usize,
    /// Data spec of the training job.
    pub job_data: String,
    /// Layer widths of the training job.
    pub job_layers: Vec<usize>,
}

/// The process's resources at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// Seconds since the load started (negative: before).
    pub t_s: f64,
    /// Resident memory (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// What became of the requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcomes {
    /// Requests sent.
    pub sent: u64,
    /// Answered 200.
    pub ok: u64,
    /// Answered 429 (queue full).
    pub rejected_429: u64,
    /// Answered 504 (the request's timeout passed).
    pub timeout_504: u64,
    /// Any other status, by status.
    pub other: BTreeMap<u16, u64>,
    /// No answer: the connection failed or broke.
    pub transport_errors: u64,
    /// Requests sent more than 10 ms after they were due (the senders fell behind).
    pub late_starts: u64,
}

/// One latency window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Start, seconds since the load started.
    pub t_s: f64,
    /// Requests sent in it.
    pub requests: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Median latency of its 200 answers, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Its p99 is over the SLO.
    pub over_slo: bool,
}

/// SLO violations over the run.
#[derive(Debug, Clone, Serialize)]
pub struct SloReport {
    /// The service's p99 objective, ms.
    pub p99_ms: f64,
    /// Windows with at least one answer.
    pub windows: usize,
    /// Windows whose p99 was over the objective.
    pub windows_over: usize,
    /// 200 answers slower than the objective.
    pub requests_over: u64,
    /// Of all 200 answers.
    pub requests_over_frac: f64,
}

/// The training job's progress over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobProgress {
    /// Its name.
    pub name: String,
    /// Steps when the load started.
    pub steps_start: u64,
    /// Steps when it ended.
    pub steps_end: u64,
    /// Epochs done at the end.
    pub epochs_end: u64,
    /// State at the end.
    pub state: String,
    /// Validation accuracy at the end.
    pub val_accuracy: Option<f64>,
}

/// Reads of the daemon's status and metrics during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reads {
    /// `/v1/status` answered.
    pub status_ok: u64,
    /// `/metrics` answered.
    pub metrics_ok: u64,
    /// Reads that failed.
    pub failed: u64,
}

/// The soak's result.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Length of the load, seconds.
    pub duration_s: f64,
    /// Requests per second asked for.
    pub rate_per_s: f64,
    /// The service loaded.
    pub model: String,
    /// Its timeout, ms.
    pub timeout_ms: f64,
    /// Seconds from start to the daemon's readiness.
    pub ready_s: f64,
    /// Resources when the load started.
    pub start: ProcSample,
    /// Resources when it ended.
    pub end: ProcSample,
    /// Peak resident memory over the process's life (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    /// One sample a second.
    pub samples: Vec<ProcSample>,
    /// What became of the requests.
    pub requests: Outcomes,
    /// Latency of every 200 answer over the run, ms: p50, p99, max.
    pub latency_ms: [f64; 3],
    /// Windows of `window_s`.
    pub window_s: f64,
    /// Per window.
    pub windows: Vec<Window>,
    /// Violations.
    pub slo: SloReport,
    /// The training job.
    pub job: JobProgress,
    /// Status and metrics reads.
    pub reads: Reads,
    /// The daemon's exit code after SIGTERM.
    pub daemon_exit_code: Option<i32>,
}

/// The daemon child: killed on drop unless it was stopped.
struct Daemon {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Fails when the process has exited.
    fn check_alive(&mut self) -> Result<(), SoakError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(SoakError::Daemon(format!(
                "exited during the soak ({status}); last log lines:\n{}",
                self.log_tail()
            ))),
            _ => Ok(()),
        }
    }

    /// SIGTERM, then waits up to `limit` for it to exit; its exit code.
    fn stop(&mut self, limit: Duration) -> Option<i32> {
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Resident memory, its peak, and open descriptors of process `pid`, from `/proc`.
pub fn proc_resources(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((kb("VmRSS:")?, kb("VmHWM:")?, fds))
}

fn free_port() -> Result<u16, SoakError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| SoakError::Start(format!("no free loopback port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| SoakError::Start(e.to_string()))
}

fn start_daemon(spec: &SoakSpec) -> Result<(Daemon, Client), SoakError> {
    let dir = tempfile::tempdir().map_err(|e| SoakError::Start(format!("temp dir: {e}")))?;
    let log = dir.path().join("daemon.log");
    let log_file =
        std::fs::File::create(&log).map_err(|e| SoakError::Start(format!("log file: {e}")))?;
    let port = free_port()?;
    let mut cmd = Command::new(&spec.exe);
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    if let Some(c) = &spec.config {
        cmd.arg("--config").arg(c);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| SoakError::Start(format!("{}: {e}", spec.exe.display())))?;
    let mut d = Daemon {
        child,
        log,
        _dir: dir,
    };
    let client = Client::new(&format!("http://127.0.0.1:{port}"))?;
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Err(SoakError::Start(format!(
                "it exited ({status}); last log lines:\n{}",
                d.log_tail()
            )));
        }
        if let Ok(raw) = client.send("GET", "/v2/health/ready", None, &[])
            && raw.status == 200
        {
            return Ok((d, client));
        }
        if Instant::now() > limit {
            return Err(SoakError::Start(format!(
                "not ready after 120 s; last log lines:\n{}",
                d.log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

enum Outcome {
    Ok,
    Status(u16),
    Transport,
}

struct Sent {
    /// Seconds after the load started that it was sent.
    at_s: f64,
    latency_ns: u64,
    outcome: Outcome,
    late: bool,
}

/// One sender: requests `first, first + step, …` each at its due time, until `end` after `t0`.
fn sender(
    url: String,
    body: Vec<u8>,
    t0: Instant,
    end: Duration,
    rate: f64,
    first: u64,
    step: u64,
) -> Vec<Sent> {
    let agent = crate::client::bench::load_agent();
    let mut out = Vec::new();
    let mut i = first;
    loop {
        let due = Duration::from_secs_f64(i as f64 / rate);
        let now = t0.elapsed();
        if due >= end {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let start = Instant::now();
        let late = start.saturating_duration_since(t0 + due) > Duration::from_millis(10);
        let r = crate::client::bench::post_infer(&agent, &url, &body);
        let latency_ns = start.elapsed().as_nanos() as u64;
        let outcome = match r {
            Ok(200) => Outcome::Ok,
            Ok(s) => Outcome::Status(s),
            Err(_) => Outcome::Transport,
        };
        if matches!(outcome, Outcome::Transport) {
            // Do not spin against a daemon that went away.
            std::thread::sleep(Duration::from_millis(10));
        }
        out.push(Sent {
            at_s: (start - t0).as_secs_f64(),
            latency_ns,
            outcome,
            late,
        });
        i += step;
    }
    out
}

fn percentile_ms(sorted_ns: &[u64], q: f64) -> Option<f64> {
    (!sorted_ns.is_empty()).then(|| crate::client::bench::percentile(sorted_ns, q) as f64 / 1e6)
}

fn job_progress(v: &Value) -> (u64, u64, String, Option<f64>) {
    (
        v["steps"].as_u64().unwrap_or(0),
        v["epochs_done"].as_u64().unwrap_or(0),
        v["state"].as_str().unwrap_or("?").to_string(),
        v["val_accuracy"].as_f64(),
    )
}

/// Runs the soak; `progress` gets a line a second.
pub fn run(spec: &SoakSpec, progress: &mut dyn FnMut(&str)) -> Result<SoakReport, SoakError> {
    if !(spec.rate_per_s > 0.0 && spec.rate_per_s <= 100_000.0) {
        return Err(SoakError::Input(format!(
            "--rate: must be > 0 and <= 100000 requests/s, got {}",
            spec.rate_per_s
        )));
    }
    if spec.duration.is_zero() || spec.window.is_zero() {
        return Err(SoakError::Input(
            "--duration and --window must be more than zero".into(),
        ));
    }
    let launched = Instant::now();
    progress("starting the daemon");
    let (mut daemon, client) = start_daemon(spec)?;
    let ready_s = launched.elapsed().as_secs_f64();
    let pid = daemon.child.id();

    let model_path = format!("/v2/models/{}", crate::client::path_segment(&spec.model));
    let meta = client.get(&model_path)?;
    let features = meta["inputs"][0]["shape"][1].as_u64().ok_or_else(|| {
        SoakError::Input(format!("model {}: no input width in {meta}", spec.model))
    })? as usize;
    let input_name = meta["inputs"][0]["name"]
        .as_str()
        .unwrap_or("input")
        .to_string();
    let svc = client.get(&format!(
        "/v1/services/{}",
        crate::client::path_segment(&spec.model)
    ))?;
    let slo_ms = svc["slo_p99_ms"].as_f64().unwrap_or(f64::INFINITY);
    let timeout_ms = svc["timeout_ms"].as_f64().unwrap_or(0.0);

    let job = client.post(
        "/v1/jobs",
        &json!({
            "name": JOB_NAME,
            "data": spec.job_data,
            "layers": spec.job_layers,
            "epochs": 100_000,
            "class": "best-effort",
        }),
    )?;
    let job_path = format!("/v1/jobs/{JOB_NAME}");
    let (steps_start, ..) = job_progress(&job);

    let mut rng = crate::util::rng::Rng::new(1);
    let row: Vec<f64> = (0..features).map(|_| rng.normal()).collect();
    let body = json!({"inputs": [{"name": input_name, "datatype": "FP32", "shape": [1, features], "data": row}]})
        .to_string()
        .into_bytes();

    let (rss, _, fds) = proc_resources(pid)
        .ok_or_else(|| SoakError::Daemon(format!("process {pid}: /proc/{pid} cannot be read")))?;
    let start = ProcSample {
        t_s: 0.0,
        rss_bytes: rss,
        fds,
    };
    let mut samples = vec![start];
    let mut reads = Reads::default();
    let url = client.url(&format!("{model_path}/infer"));
    let t0 = Instant::now();
    let senders = spec.senders.max(1) as u64;
    let duration = spec.duration;
    let rate = spec.rate_per_s;
    let sent: Vec<Sent> = std::thread::scope(|s| -> Result<Vec<Sent>, SoakError> {
        let handles: Vec<_> = (0..senders)
            .map(|w| {
                let url = url.clone();
                let body = body.clone();
                s.spawn(move || sender(url, body, t0, duration, rate, w, senders))
            })
            .collect();
        let mut next = Duration::from_secs(1);
        let mut alive = Ok(());
        while t0.elapsed() < duration {
            let now = t0.elapsed();
            if next > now {
                std::thread::sleep((next - now).min(duration.saturating_sub(now)));
            }
            if t0.elapsed() >= duration {
                break;
            }
            next += Duration::from_secs(1);
            if let Err(e) = daemon.check_alive() {
                alive = Err(e);
                break;
            }
            let status = client.get("/v1/status");
            let metrics = client
                .send("GET", "/metrics", None, &[])
                .and_then(crate::client::check_status);
            let job = client.get(&job_path);
            for ok in [status.is_ok(), metrics.is_ok(), job.is_ok()] {
                if !ok {
                    reads.failed += 1;
                }
            }
            reads.status_ok += u64::from(status.is_ok());
            reads.metrics_ok += u64::from(metrics.is_ok());
            if let Some((rss, _, fds)) = proc_resources(pid) {
                samples.push(ProcSample {
                    t_s: t0.elapsed().as_secs_f64(),
                    rss_bytes: rss,
                    fds,
                });
            }
            let steps = job.map(|j| job_progress(&j).0).unwrap_or(0);
            progress(&format!(
                "{:>5.0} s  rss {:.1} MiB  fds {}  job steps {}",
                t0.elapsed().as_secs_f64(),
                samples
                    .last()
                    .map_or(0.0, |s| s.rss_bytes as f64 / 1048576.0),
                samples.last().map_or(0, |s| s.fds),
                steps
            ));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| SoakError::Daemon("sender panicked".into()))?,
            );
        }
        alive.map(|()| all)
    })?;
    daemon.check_alive()?;

    // The end, before the daemon is asked to stop.
    let (rss, peak, fds) = proc_resources(pid)
        .ok_or_else(|| SoakError::Daemon(format!("process {pid}: /proc/{pid} cannot be read")))?;
    let end = ProcSample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_bytes: rss,
        fds,
    };
    samples.push(end);
    let job_end = client.get(&job_path)?;
    let (steps_end, epochs_end, state, val_accuracy) = job_progress(&job_end);
    progress("stopping the daemon");
    let daemon_exit_code = daemon.stop(Duration::from_secs(60));

    let mut requests = Outcomes::default();
    let nwin = (duration.as_secs_f64() / spec.window.as_secs_f64()).ceil() as usize;
    let mut per_window: Vec<(u64, Vec<u64>)> = vec![(0, Vec::new()); nwin.max(1)];
    let mut all_ok = Vec::new();
    for s in &sent {
        requests.sent += 1;
        requests.late_starts += u64::from(s.late);
        let w = ((s.at_s / spec.window.as_secs_f64()) as usize).min(per_window.len() - 1);
        per_window[w].0 += 1;
        match s.outcome {
            Outcome::Ok => {
                requests.ok += 1;
                per_window[w].1.push(s.latency_ns);
                all_ok.push(s.latency_ns);
            }
            Outcome::Status(429) => requests.rejected_429 += 1,
            Outcome::Status(504) => requests.timeout_504 += 1,
            Outcome::Status(code) => *requests.other.entry(code).or_default() += 1,
            Outcome::Transport => requests.transport_errors += 1,
        }
    }
    all_ok.sort_unstable();
    let slo_ns = slo_ms * 1e6;
    let requests_over = all_ok.iter().filter(|&&ns| ns as f64 > slo_ns).count() as u64;
    let windows: Vec<Window> = per_window
        .into_iter()
        .enumerate()
        .map(|(i, (n, mut lat))| {
            lat.sort_unstable();
            let p99 = percentile_ms(&lat, 0.99);
            Window {
                t_s: i as f64 * spec.window.as_secs_f64(),
                requests: n,
                ok: lat.len() as u64,
                p50_ms: percentile_ms(&lat, 0.50),
                p99_ms: p99,
                over_slo: p99.is_some_and(|p| p > slo_ms),
            }
        })
        .collect();
    let answered = windows.iter().filter(|w| w.ok > 0).count();
    let windows_over = windows.iter().filter(|w| w.over_slo).count();
    Ok(SoakReport {
        duration_s: duration.as_secs_f64(),
        rate_per_s: rate,
        model: spec.model.clone(),
        timeout_ms,
        ready_s,
        start,
        end,
        peak_rss_bytes: peak,
        samples,
        latency_ms: [
            percentile_ms(&all_ok, 0.50).unwrap_or(0.0),
            percentile_ms(&all_ok, 0.99).unwrap_or(0.0),
            all_ok.last().map_or(0.0, |&n| n as f64 / 1e6),
        ],
        requests,
        window_s: spec.window.as_secs_f64(),
        windows,
        slo: SloReport {
            p99_ms: slo_ms,
            windows: answered,
            windows_over,
            requests_over,
            requests_over_frac: if all_ok.is_empty() {
                0.0
            } else {
                requests_over as f64 / all_ok.len() as f64
            },
        },
        job: JobProgress {
            name: JOB_NAME.to_string(),
            steps_start,
            steps_end,
            epochs_end,
            state,
            val_accuracy,
        },
        reads,
        daemon_exit_code,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The report as text.
pub fn render(r: &SoakReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let q = &r.requests;
    let other: Vec<String> = q.other.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    let _ = writeln!(
        o,
        "soak: {:.0} s at {} requests/s on {} (SLO p99 <= {} ms, timeout {} ms), daemon ready in {:.1} s",
        r.duration_s, r.rate_per_s, r.model, r.slo.p99_ms, r.timeout_ms, r.ready_s
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "             start        end");
    let _ = writeln!(
        o,
        "rss    {:>12} {:>12}   (peak {})",
        mib(r.start.rss_bytes),
        mib(r.end.rss_bytes),
        mib(r.peak_rss_bytes)
    );
    let _ = writeln!(o, "fds    {:>12} {:>12}", r.start.fds, r.end.fds);
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "requests: {} sent, {} ok, {} rejected (429), {} timed out (504), {} other{}, {} transport errors, {} sent late",
        q.sent,
        q.ok,
        q.rejected_429,
        q.timeout_504,
        q.other.values().sum::<u64>(),
        if other.is_empty() {
            String::new()
        } else {
            format!(" ({})", other.join(", "))
        },
        q.transport_errors,
        q.late_starts
    );
    let _ = writeln!(
        o,
        "latency of ok answers: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.latency_ms[0], r.latency_ms[1], r.latency_ms[2]
    );
    let _ = writeln!(
        o,
        "SLO: {} of {} windows of {} s over p99 {} ms; {} answers over it ({:.3} %)",
        r.slo.windows_over,
        r.slo.windows,
        r.window_s,
        r.slo.p99_ms,
        r.slo.requests_over,
        r.slo.requests_over_frac * 100.0
    );
    let worst = r
        .windows
        .iter()
        .filter_map(|w| w.p99_ms.map(|p| (p, w.t_s)))
        .fold(None, |acc: Option<(f64, f64)>, x| match acc {
            Some(a) if a.0 >= x.0 => Some(a),
            _ => Some(x),
        });
    if let Some((p, t)) = worst {
        let _ = writeln!(o, "worst window: p99 {p:.2} ms at {t:.0} s");
    }
    let _ = writeln!(
        o,
        "job {}: steps {} -> {} ({} epochs), {}, val accuracy {}",
        r.job.name,
        r.job.steps_start,
        r.job.steps_end,
        r.job.epochs_end,
        r.job.state,
        r.job
            .val_accuracy
            .map_or("-".to_string(), |a| format!("{a:.4}"))
    );
    let _ = writeln!(
        o,
        "reads: {} status, {} metrics, {} failed; daemon exit code after SIGTERM: {}",
        r.reads.status_ok,
        r.reads.metrics_ok,
        r.reads.failed,
        r.daemon_exit_code
            .map_or("none (still running, killed)".to_string(), |c| c
                .to_string())
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_descriptors() {
        let (rss, peak, fds) = proc_resources(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss && fds >= 3, "{rss} {peak} {fds}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(percentile_ms(&ns, 0.5), Some(50.0));
        assert_eq!(percentile_ms(&ns, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[], 0.99), None);
    }
}
