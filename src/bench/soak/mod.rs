//! `setpoint bench soak`: a steady mixed load on a daemon of its own for a long while, to show
//! what a long run does to the process (resident memory, open file descriptors) and to the
//! service (request outcomes, latency per window against the SLO, how late answers come
//! against their timeout, how fast health and metrics answer meanwhile) beside a training job.
//!
//! The daemon is started as a child process (`setpoint serve` on a free loopback port and a
//! temporary state dir) so that its memory and descriptors can be read from `/proc/<pid>`;
//! a daemon started elsewhere could not be measured the same way. The load: v2 inference
//! requests of `rows` rows at a fixed rate (open loop: request i is due at i / rate, whatever
//! the answers before it, sent over a pool of keep-alive connections), a best-effort training
//! job submitted through the jobs API, probes of `/v2/health/live` and `/metrics` every
//! `probe_every`, and a read of `/v1/status`, `/metrics` and the job every second. The rate
//! may be asked as a multiple of what the service sustains within its SLO, measured first
//! with a closed-loop ramp. At the end the daemon is stopped with SIGTERM and must exit 0.

mod daemon;
mod descriptors;
mod load;
mod progress;
mod render;
mod report;
mod summary;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Client, ClientError};
pub use daemon::proc_resources;
pub use descriptors::{FdChange, fd_targets};
pub use load::{ProbeSummary, RampStep, Sustainable};
pub use progress::Progress;
pub use render::render;
pub use report::{JobProgress, Outcomes, ProcSample, Reads, SloReport, SoakReport, Window};
pub use summary::Lateness;

/// The rate of the load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Requests per second.
    PerSecond(f64),
    /// This many times the rate the service sustains within its SLO, measured first.
    TimesSustainable(f64),
}

impl Rate {
    /// The multiple of the sustainable rate, when the rate is one.
    pub fn multiple(&self) -> Option<f64> {
        match *self {
            Rate::TimesSustainable(k) => Some(k),
            Rate::PerSecond(_) => None,
        }
    }
}

/// A `--rate` that is neither a rate nor a multiple in range; holds the text as given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateError {
    #[error("--rate: a multiple must be > 0 and <= 1000 (as in 10x), got {0}")]
    Multiple(String),
    #[error(
        "--rate: must be > 0 and <= 100000 requests/s, got {0} (or a multiple of the rate the service sustains, such as 10x)"
    )]
    PerSecond(String),
}

impl std::str::FromStr for Rate {
    type Err = RateError;

    /// `3000` (requests/s) or `10x` (times the sustainable rate).
    fn from_str(s: &str) -> Result<Self, RateError> {
        let s = s.trim();
        if let Some(m) = s.strip_suffix(['x', 'X']) {
            return match m.trim().parse::<f64>() {
                Ok(k) if k > 0.0 && k <= 1000.0 => Ok(Rate::TimesSustainable(k)),
                _ => Err(RateError::Multiple(s.to_string())),
            };
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 && r <= 100_000.0 => Ok(Rate::PerSecond(r)),
            _ => Err(RateError::PerSecond(s.to_string())),
        }
    }
}

/// Name of the training job the soak submits.
pub(crate) const JOB_NAME: &str = "soak";

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
    /// Inference requests per second, or a multiple of the rate the service sustains.
    pub rate: Rate,
    /// Rows per inference request.
    pub rows: usize,
    /// The service to load.
    pub model: String,
    /// Span of the latency windows compared with the SLO.
    pub window: Duration,
    /// Keep-alive connections the requests are sent over (each has one in flight at most).
    pub connections: usize,
    /// How often `/v2/health/live` and `/metrics` are probed.
    pub probe_every: Duration,
    /// The daemon's control period: an answer later than its timeout by more than this is
    /// counted apart.
    pub period: Duration,
    /// Data spec of the training job.
    pub job_data: String,
    /// Layer widths of the training job.
    pub job_layers: Vec<usize>,
    /// Where the daemon listens (port 0: a free port there); a free loopback port when `None`.
    pub listen: Option<SocketAddr>,
    /// How often a status line is given while the load runs.
    pub progress_every: Duration,
}

/// What the soak learns of the service before the load.
struct Target {
    features: usize,
    input_name: String,
    slo_ms: f64,
    timeout_ms: f64,
}

fn job_progress(v: &Value) -> (u64, u64, String, Option<f64>) {
    (
        v["steps"].as_u64().unwrap_or(0),
        v["epochs_done"].as_u64().unwrap_or(0),
        v["state"].as_str().unwrap_or("?").to_string(),
        v["val_accuracy"].as_f64(),
    )
}

fn check_spec(spec: &SoakSpec) -> Result<(), SoakError> {
    if let Rate::PerSecond(r) = spec.rate
        && !(r > 0.0 && r <= 100_000.0)
    {
        return Err(SoakError::Input(format!(
            "--rate: must be > 0 and <= 100000 requests/s, got {r}"
        )));
    }
    if spec.duration.is_zero()
        || spec.window.is_zero()
        || spec.probe_every.is_zero()
        || spec.progress_every.is_zero()
    {
        return Err(SoakError::Input(
            "--duration, --window, --probe-every and --progress-every must be more than zero"
                .into(),
        ));
    }
    if spec.rows == 0 || spec.connections == 0 {
        return Err(SoakError::Input(
            "--rows and --connections must be at least 1".into(),
        ));
    }
    Ok(())
}

fn read_target(client: &Client, model: &str) -> Result<Target, SoakError> {
    let seg = crate::client::path_segment(model);
    let meta = client.get(&format!("/v2/models/{seg}"))?;
    let features = meta["inputs"][0]["shape"][1]
        .as_u64()
        .ok_or_else(|| SoakError::Input(format!("model {model}: no input width in {meta}")))?
        as usize;
    let input_name = meta["inputs"][0]["name"]
        .as_str()
        .unwrap_or("input")
        .to_string();
    let svc = client.get(&format!("/v1/services/{seg}"))?;
    Ok(Target {
        features,
        input_name,
        slo_ms: svc["slo_p99_ms"].as_f64().unwrap_or(f64::INFINITY),
        timeout_ms: svc["timeout_ms"].as_f64().unwrap_or(0.0),
    })
}

/// The inference request every sender sends, encoded once.
fn infer_request(spec: &SoakSpec, target: &Target, addr: &std::net::SocketAddr) -> Vec<u8> {
    let mut rng = crate::util::rng::Rng::new(1);
    let data: Vec<f64> = (0..target.features * spec.rows)
        .map(|_| rng.normal())
        .collect();
    let body = json!({"inputs": [{
        "name": target.input_name,
        "datatype": "FP32",
        "shape": [spec.rows, target.features],
        "data": data,
    }]})
    .to_string();
    let path = format!(
        "/v2/models/{}/infer",
        crate::client::path_segment(&spec.model)
    );
    wire::encode_request("POST", addr, &path, Some(body.as_bytes()))
}

/// What the watcher needs beside the daemon and its client.
struct Watch<'a> {
    t0: Instant,
    duration: Duration,
    progress_every: Duration,
    live: &'a progress::Live,
}

/// Reads `/v1/status`, `/metrics` and the job once, counting them in `reads`; the job's steps.
fn read_once(client: &Client, reads: &mut Reads) -> u64 {
    let status = client.get("/v1/status");
    let metrics = client
        .send("GET", "/metrics", None, &[])
        .and_then(crate::client::check_status);
    let job = client.get(&format!("/v1/jobs/{JOB_NAME}"));
    reads.failed += [status.is_ok(), metrics.is_ok(), job.is_ok()]
        .iter()
        .filter(|ok| !**ok)
        .count() as u64;
    reads.status_ok += u64::from(status.is_ok());
    reads.metrics_ok += u64::from(metrics.is_ok());
    job.map(|j| job_progress(&j).0).unwrap_or(0)
}

/// Samples the daemon every second while the load runs, with a tick each time and a status
/// line every `progress_every`; what the reads saw.
fn watch(
    daemon: &mut daemon::Daemon,
    client: &Client,
    w: &Watch,
    samples: &mut Vec<ProcSample>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Reads, SoakError> {
    let pid = daemon.child.id();
    let mut reads = Reads::default();
    let mut next = Duration::from_secs(1);
    let mut next_status = w.progress_every;
    let mut before = (Duration::ZERO, w.live.counts());
    while w.t0.elapsed() < w.duration {
        let now = w.t0.elapsed();
        if next > now {
            std::thread::sleep((next - now).min(w.duration.saturating_sub(now)));
        }
        if w.t0.elapsed() >= w.duration {
            break;
        }
        next += Duration::from_secs(1);
        daemon.check_alive()?;
        let job_steps = read_once(client, &mut reads);
        if let Some((rss, _, fds)) = proc_resources(pid) {
            samples.push(ProcSample {
                t_s: w.t0.elapsed().as_secs_f64(),
                rss_bytes: rss,
                fds,
            });
        }
        let elapsed = w.t0.elapsed();
        progress(Progress::Tick {
            elapsed_s: elapsed.as_secs(),
            total_s: w.duration.as_secs(),
        });
        if elapsed < next_status {
            continue;
        }
        while next_status <= elapsed {
            next_status += w.progress_every;
        }
        let counts = w.live.counts();
        let last = samples.last().copied();
        let line = progress::status_line(
            elapsed,
            w.duration,
            &counts,
            &before.1,
            elapsed - before.0,
            progress::Process {
                rss_bytes: last.map_or(0, |s| s.rss_bytes),
                fds: last.map_or(0, |s| s.fds),
                job_steps,
            },
        );
        progress(Progress::Status(&line));
        before = (elapsed, counts);
    }
    Ok(reads)
}

/// How long the end sample waits for the daemon to close its ends of the load's connections.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Waits until process `pid` has no more than `start` descriptors open, or `limit` has passed.
/// The load's connections are closed from this side when it ends; the daemon closes its ends
/// when it reads their end of stream, a moment later, so a count read at once can include a
/// few sockets on their way out, and differ from run to run.
fn settle_fds(pid: u32, start: u64, limit: Duration) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match proc_resources(pid) {
            Some((_, _, fds)) if fds > start => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
}

fn sample(pid: u32, t_s: f64) -> Result<(ProcSample, u64), SoakError> {
    let (rss, peak, fds) = proc_resources(pid)
        .ok_or_else(|| SoakError::Daemon(format!("process {pid}: /proc/{pid} cannot be read")))?;
    Ok((
        ProcSample {
            t_s,
            rss_bytes: rss,
            fds,
        },
        peak,
    ))
}

/// The rate to send at: as asked, or the multiple of the sustainable rate measured now.
fn resolve_rate(
    spec: &SoakSpec,
    addr: std::net::SocketAddr,
    request: &Arc<Vec<u8>>,
    slo_ms: f64,
    progress: &mut dyn FnMut(Progress),
) -> Result<(f64, Option<Sustainable>), SoakError> {
    let k = match spec.rate {
        Rate::PerSecond(r) => return Ok((r, None)),
        Rate::TimesSustainable(k) => k,
    };
    progress(Progress::Phase(
        "measuring the rate the service sustains within its SLO",
    ));
    let slo = Duration::from_secs_f64(slo_ms.min(60_000.0) / 1e3);
    let s = load::measure_sustainable(addr, request.clone(), slo, Duration::from_secs(2));
    if s.requests_per_s <= 0.0 {
        return Err(SoakError::Daemon(format!(
            "answered no request of {} rows within its SLO of {slo_ms} ms, so no multiple of \
             its sustainable rate can be sent; give --rate in requests/s",
            spec.rows
        )));
    }
    let rate = (k * s.requests_per_s).min(100_000.0);
    progress(Progress::Phase(&format!(
        "sustainable: {:.0} requests/s; sending {rate:.0} requests/s ({k}x)",
        s.requests_per_s
    )));
    Ok((rate, Some(s)))
}

/// Runs the load, the probes and the once-a-second watch together until the end.
fn drive(
    spec: &SoakSpec,
    daemon: &mut daemon::Daemon,
    client: &Client,
    (request, rate, t0): (Arc<Vec<u8>>, f64, Instant),
    samples: &mut Vec<ProcSample>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<load::Sent>, Vec<ProbeSummary>, Reads), SoakError> {
    let (addr, duration) = (daemon.addr, spec.duration);
    let live = Arc::new(progress::Live::default());
    let w = Watch {
        t0,
        duration,
        progress_every: spec.progress_every,
        live: &live,
    };
    std::thread::scope(|s| {
        let plan = load::OpenLoop {
            addr,
            request,
            rate,
            t0,
            end: duration,
            connections: spec.connections,
            live: live.clone(),
        };
        let senders = s.spawn(move || load::open_loop(plan));
        let every = spec.probe_every;
        let paths = ["/v2/health/live", "/metrics"];
        let prober = s.spawn(move || load::probe(addr, &paths, t0, duration, every));
        let reads = watch(daemon, client, &w, samples, progress);
        let sent = senders
            .join()
            .map_err(|_| SoakError::Daemon("the load generator panicked".into()))?;
        let probes = prober
            .join()
            .map_err(|_| SoakError::Daemon("the prober panicked".into()))?;
        Ok((sent, probes, reads?))
    })
}

/// Starts the daemon, reads the service and submits the job: the daemon, its client, the
/// service, the job's steps and the seconds the daemon took to be ready.
fn prepare(
    spec: &SoakSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<(daemon::Daemon, Client, Target, u64, f64), SoakError> {
    let launched = Instant::now();
    progress(Progress::Phase("starting the daemon"));
    let (daemon, client) = daemon::start_daemon(spec)?;
    let ready_s = launched.elapsed().as_secs_f64();
    let target = read_target(&client, &spec.model)?;
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
    let (steps_start, ..) = job_progress(&job);
    Ok((daemon, client, target, steps_start, ready_s))
}

/// The end sample, once the daemon has closed its ends of the load's connections (or after
/// [`SETTLE_LIMIT`]); its peak memory; the descriptors opened and closed since `fds_start`.
fn end_sample(
    pid: u32,
    start: &ProcSample,
    fds_start: &BTreeMap<u32, String>,
    t0: Instant,
) -> Result<(ProcSample, u64, Vec<FdChange>, Vec<FdChange>), SoakError> {
    settle_fds(pid, start.fds, SETTLE_LIMIT);
    let (mut end, peak) = sample(pid, t0.elapsed().as_secs_f64())?;
    // The count and the names from one listing, so that the named changes add up to it.
    if let Some(fds_end) = fd_targets(pid) {
        end.fds = fds_end.len() as u64;
        let (opened, closed) = descriptors::changes(fds_start, &fds_end);
        return Ok((end, peak, opened, closed));
    }
    Ok((end, peak, Vec::new(), Vec::new()))
}

/// Runs the soak; `progress` is told of each phase, of each second of the load, and given a
/// status line every `spec.progress_every`.
pub fn run(spec: &SoakSpec, progress: &mut dyn FnMut(Progress)) -> Result<SoakReport, SoakError> {
    check_spec(spec)?;
    let (mut daemon, client, target, steps_start, ready_s) = prepare(spec, progress)?;
    let (pid, addr) = (daemon.child.id(), daemon.addr);
    let request = Arc::new(infer_request(spec, &target, &addr));
    let (rate, sustainable) = resolve_rate(spec, addr, &request, target.slo_ms, progress)?;

    let (mut start, _) = sample(pid, 0.0)?;
    let fds_start = fd_targets(pid).unwrap_or_default();
    if !fds_start.is_empty() {
        start.fds = fds_start.len() as u64;
    }
    let mut samples = vec![start];
    let t0 = Instant::now();
    let duration = spec.duration;
    let (sent, probes, reads) = drive(
        spec,
        &mut daemon,
        &client,
        (request, rate, t0),
        &mut samples,
        progress,
    )?;
    daemon.check_alive()?;

    // The end, before the daemon is asked to stop.
    let (end, peak, fds_opened, fds_closed) = end_sample(pid, &start, &fds_start, t0)?;
    samples.push(end);
    let job_end = client.get(&format!("/v1/jobs/{JOB_NAME}"))?;
    let (steps_end, epochs_end, state, val_accuracy) = job_progress(&job_end);
    progress(Progress::Phase("stopping the daemon"));
    let daemon_exit_code = daemon.stop(Duration::from_secs(60));

    let s = summary::summarize(&sent, spec, &target, rate);
    Ok(SoakReport {
        duration_s: duration.as_secs_f64(),
        rate_per_s: rate,
        rows: spec.rows,
        connections: spec.connections,
        rate_multiple: spec.rate.multiple(),
        sustainable,
        model: spec.model.clone(),
        timeout_ms: target.timeout_ms,
        listen: daemon.listen.to_string(),
        ready_s,
        start,
        end,
        fds_opened,
        fds_closed,
        peak_rss_bytes: peak,
        samples,
        requests: s.requests,
        latency_ms: s.latency_ms,
        window_s: spec.window.as_secs_f64(),
        windows: s.windows,
        slo: s.slo,
        job: JobProgress {
            name: JOB_NAME.to_string(),
            steps_start,
            steps_end,
            epochs_end,
            state,
            val_accuracy,
        },
        reads,
        probes,
        probe_every_ms: spec.probe_every.as_secs_f64() * 1e3,
        lateness: s.lateness,
        daemon_exit_code,
    })
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
    fn a_rate_is_per_second_or_a_multiple_of_the_sustainable_one() {
        assert_eq!("3000".parse::<Rate>(), Ok(Rate::PerSecond(3000.0)));
        assert_eq!("10x".parse::<Rate>(), Ok(Rate::TimesSustainable(10.0)));
        assert_eq!(" 2.5X ".parse::<Rate>(), Ok(Rate::TimesSustainable(2.5)));
        for bad in ["0", "-1", "x", "0x", "100001", "fast"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
