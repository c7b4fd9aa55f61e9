//! `setpoint bench http`: a closed-loop load generator for a running daemon's v2 inference
//! endpoint, and the same model's compute-only speed measured in this process, so the
//! daemon's serving overhead is reported as a ratio measured in the same run.
//!
//! For each concurrency level C, C workers (threads, each with its own keep-alive
//! connection) send single-row requests back to back, in each protocol asked for
//! ([`super::load_proto`]: JSON or binary tensors over HTTP, or gRPC), the protocols taking
//! turns at each level (reversed every other round) and the whole repeated for `rounds`, so
//! that they are compared side by side. Requests that start after the warm-up and finish
//! before its end count; the daemon's `batch_stats`, read at the start and end of the
//! measured window, give the batch sizes it actually ran.

use crate::util::cputime::process_cpu_time;
use crate::util::stats::nearest_rank;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::load_proto::{self, Protocol, Target};
use super::v2::{self, ModelInfo};
use super::{Client, ClientError, path_segment};
use crate::device::{Backend, CpuBackend};
use crate::model::{Mlp, Workspace};
use crate::node::ServiceView;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Model to load.
    pub model: String,
    /// Concurrency levels, in order.
    pub concurrency: Vec<usize>,
    /// Measured time per level.
    pub duration: Duration,
    /// Unmeasured time before each level's measurement.
    pub warmup: Duration,
    /// Seed of the request rows.
    pub seed: u64,
    /// Protocols, taking turns at each level.
    pub protocols: Vec<Protocol>,
    /// Times the whole is repeated.
    pub rounds: usize,
    /// The gRPC endpoint (`HOST:PORT` or a URL); asked of the daemon when absent.
    pub grpc_url: Option<String>,
}

/// Latency percentiles of successful requests, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// One concurrency level's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelReport {
    /// The protocol of the requests.
    pub protocol: Protocol,
    /// The round, from 1.
    pub round: usize,
    /// Workers (connections).
    pub concurrency: usize,
    /// Successful requests in the measured window.
    pub requests: u64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Latency of the successful requests.
    pub latency_ms: LatencyMs,
    /// Failed requests by HTTP status (or `transport` when the connection failed).
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub error_count: u64,
    /// Batches the daemon ran in the window (from its `batch_stats`), when it reports them.
    pub batches: Option<u64>,
    /// Rows per batch on average.
    pub mean_batch_size: Option<f64>,
    /// Batch sizes the daemon ran in the window and how many of each.
    pub batch_sizes: BTreeMap<usize, u64>,
    /// Compute-only rows/s of the model at the mean batch size (rounded), this process,
    /// one CPU worker as the daemon's services use.
    pub compute_only_rows_per_s: Option<f64>,
    /// Compute-only rows/s for the daemon's actual mix of batch sizes.
    pub compute_only_rows_per_s_mix: Option<f64>,
    /// `requests_per_s / compute_only_rows_per_s`: the fraction of the backend's speed at
    /// the same batch size that reaches clients over HTTP.
    pub ratio: Option<f64>,
    /// CPU time the daemon used per successful request in the measured window, microseconds
    /// (its `setpoint_process_cpu_seconds_total` at both ends; everything it did then is
    /// counted), when its `/metrics` has it. Unlike requests/s, this does not depend on the
    /// load generator's own cost.
    pub daemon_cpu_us_per_request: Option<f64>,
    /// CPU time this process (the load generator: all its workers, user and system) used
    /// per successful request in the same window, microseconds; none where the platform
    /// cannot tell. Where the two processes share the cores, requests/s falls as either
    /// grows: this says how much of a difference between protocols is the client's.
    pub client_cpu_us_per_request: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Daemon URL.
    pub url: String,
    /// Model benchmarked.
    pub model: String,
    /// Its layer widths, when the daemon reports them (`/v1/services/MODEL`).
    pub layers: Option<Vec<usize>>,
    /// Request encodings, in the order they took turns.
    pub request: Vec<&'static str>,
    /// The gRPC endpoint, when gRPC was measured.
    pub grpc_url: Option<String>,
    /// Measured seconds per level.
    pub duration_s: f64,
    /// Warm-up seconds per level.
    pub warmup_s: f64,
    /// Per level.
    pub levels: Vec<LevelReport>,
    /// Why compute-only figures are missing, when they are.
    pub compute_only_note: Option<String>,
}

/// Batch counts by size from a `/v2/models/MODEL/stats` answer.
fn batch_counts(stats: &Value) -> BTreeMap<usize, u64> {
    let mut out = BTreeMap::new();
    let list = stats["model_stats"]
        .get(0)
        .and_then(|m| m["batch_stats"].as_array());
    for b in list.into_iter().flatten() {
        let size = b["batch_size"].as_u64();
        let count = b["compute_infer"]["count"].as_u64();
        if let (Some(size), Some(count)) = (size, count) {
            out.insert(size as usize, count);
        }
    }
    out
}

fn latency_ms(sorted: &[u64]) -> LatencyMs {
    if sorted.is_empty() {
        return LatencyMs::default();
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    LatencyMs {
        p50: ms(nearest_rank(sorted, 0.50).unwrap_or(0)),
        p90: ms(nearest_rank(sorted, 0.90).unwrap_or(0)),
        p99: ms(nearest_rank(sorted, 0.99).unwrap_or(0)),
        max: ms(*sorted.last().unwrap_or(&0)),
        mean: sorted.iter().map(|&n| n as f64).sum::<f64>() / sorted.len() as f64 / 1e6,
    }
}

/// Runs one level: C workers, warm-up, measured window, daemon stats at both ends.
fn run_level(
    client: &Client,
    info: &ModelInfo,
    spec: &BenchSpec,
    target: &Target,
    (protocol, round, concurrency): (Protocol, usize, usize),
) -> Result<LevelReport, ClientError> {
    let stats_path = format!("/v2/models/{}/stats", path_segment(&spec.model));
    let start = Instant::now();
    let warm_end = start + spec.warmup;
    let end = warm_end + spec.duration;
    let handles = spawn_workers(info, spec, target, (protocol, concurrency), (warm_end, end))?;
    std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
    let before = client.get(&stats_path).ok();
    let cpu_before = daemon_cpu_seconds(client);
    let own_before = process_cpu_time();
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let own_after = process_cpu_time();
    let cpu_after = daemon_cpu_seconds(client);
    let after = client.get(&stats_path).ok();
    let (latencies, errors) = join_workers(handles);
    let requests = latencies.len() as u64;
    let secs = spec.duration.as_secs_f64();
    let window = BatchWindow::between(before.as_ref(), after.as_ref());
    Ok(LevelReport {
        protocol,
        round,
        concurrency,
        requests,
        requests_per_s: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        latency_ms: latency_ms(&latencies),
        error_count: errors.values().sum(),
        errors,
        batches: window.batches,
        mean_batch_size: window.mean_batch_size,
        batch_sizes: window.batch_sizes,
        compute_only_rows_per_s: None,
        compute_only_rows_per_s_mix: None,
        ratio: None,
        daemon_cpu_us_per_request: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if requests > 0 => Some((a - b) * 1e6 / requests as f64),
            _ => None,
        },
        client_cpu_us_per_request: (requests > 0 && !own_after.is_zero())
            .then(|| (own_after - own_before).as_secs_f64() * 1e6 / requests as f64),
    })
}

/// Starts a level's worker threads, each with its own request row, sending from the start
/// and counting from `warm_end` until `end`.
fn spawn_workers(
    info: &ModelInfo,
    spec: &BenchSpec,
    target: &Target,
    (protocol, concurrency): (Protocol, usize),
    (warm_end, end): (Instant, Instant),
) -> Result<Vec<std::thread::JoinHandle<load_proto::WorkerResult>>, ClientError> {
    let workers = protocol.workers(concurrency);
    let calls = concurrency / workers;
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let row = v2::random_rows(1, info.features, spec.seed.wrapping_add(w as u64));
        let plan = load_proto::WorkerPlan {
            target: target.clone(),
            info: info.clone(),
            row,
            warm_end,
            end,
        };
        let h = std::thread::Builder::new()
            .name(format!("bench-{}-{w}", protocol.as_str()))
            .spawn(move || load_proto::worker(protocol, plan, calls))
            .map_err(|e| ClientError::Input(format!("cannot start bench thread: {e}")))?;
        handles.push(h);
    }
    Ok(handles)
}

/// Waits for a level's workers: their latencies, sorted, and their errors summed by kind.
fn join_workers(
    handles: Vec<std::thread::JoinHandle<load_proto::WorkerResult>>,
) -> (Vec<u64>, BTreeMap<String, u64>) {
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for h in handles {
        let r = h.join().unwrap_or_default();
        latencies.extend(r.latencies_ns);
        for (k, v) in r.errors {
            *errors.entry(k).or_default() += v;
        }
    }
    latencies.sort_unstable();
    (latencies, errors)
}

/// The batches the daemon ran in a measured window, from its `batch_stats` at both ends.
#[derive(Debug, Default)]
struct BatchWindow {
    /// Batch sizes run in the window and how many of each.
    batch_sizes: BTreeMap<usize, u64>,
    /// Batches run in the window, when there were any.
    batches: Option<u64>,
    /// Rows per batch on average, when there were batches.
    mean_batch_size: Option<f64>,
}

impl BatchWindow {
    /// The window between the stats `before` and `after`; empty unless both were read.
    fn between(before: Option<&Value>, after: Option<&Value>) -> Self {
        let mut w = BatchWindow::default();
        if let (Some(b), Some(a)) = (before, after) {
            let (b, a) = (batch_counts(b), batch_counts(a));
            for (size, count) in &a {
                let d = count.saturating_sub(b.get(size).copied().unwrap_or(0));
                if d > 0 {
                    w.batch_sizes.insert(*size, d);
                }
            }
            let n: u64 = w.batch_sizes.values().sum();
            let rows: u64 = w.batch_sizes.iter().map(|(s, c)| *s as u64 * c).sum();
            if n > 0 {
                w.batches = Some(n);
                w.mean_batch_size = Some(rows as f64 / n as f64);
            }
        }
        w
    }
}

/// The daemon's `setpoint_process_cpu_seconds_total`, when its `/metrics` answers with it.
fn daemon_cpu_seconds(client: &Client) -> Option<f64> {
    let raw = client.send("GET", "/metrics", None, &[]).ok()?;
    process_cpu_seconds(std::str::from_utf8(&raw.body).ok()?)
}

/// `setpoint_process_cpu_seconds_total` in a Prometheus text exposition.
fn process_cpu_seconds(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("setpoint_process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// Seconds per `Mlp::predict` call at each batch size, one CPU worker (as the daemon's
/// services run), median of three timed blocks after a warm-up.
pub(crate) fn compute_only_seconds(
    layers: &[usize],
    batch_sizes: &[usize],
    block: Duration,
) -> Result<BTreeMap<usize, f64>, String> {
    let backend = CpuBackend::single();
    let model = Mlp::init(&backend, layers, 1).map_err(|e| e.to_string())?;
    let max = batch_sizes.iter().copied().max().unwrap_or(1).max(1);
    let mut ws = Workspace::new(&backend, layers, max, false).map_err(|e| e.to_string())?;
    let rows = v2::random_rows(max, layers[0], 7);
    let mut x = backend.alloc(max * layers[0]).map_err(|e| e.to_string())?;
    backend.write(&mut x, &rows).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for &b in batch_sizes {
        let b = b.max(1);
        for _ in 0..5 {
            model
                .predict(&backend, &mut ws, &x, b)
                .map_err(|e| e.to_string())?;
        }
        let mut blocks = Vec::with_capacity(3);
        for _ in 0..3 {
            let t0 = Instant::now();
            let mut calls = 0u64;
            while t0.elapsed() < block || calls < 3 {
                model
                    .predict(&backend, &mut ws, &x, b)
                    .map_err(|e| e.to_string())?;
                calls += 1;
            }
            blocks.push(t0.elapsed().as_secs_f64() / calls as f64);
        }
        blocks.sort_by(f64::total_cmp);
        out.insert(b, blocks[1]);
    }
    Ok(out)
}

/// Runs every level against the daemon, then the compute-only measurement.
pub fn run(
    client: &Client,
    spec: &BenchSpec,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, ClientError> {
    let info = v2::model_info(client, &spec.model)?;
    // One request first, so a model that cannot answer fails here with its message.
    let probe = v2::random_rows(1, info.features, spec.seed);
    v2::infer(
        client,
        &spec.model,
        &v2::EncodedRequest {
            body: v2::json_request(&info, &probe, 1, false),
            header_len: None,
        },
    )?;
    let layers = service_layers(client, &spec.model, &info);
    let grpc = if spec.protocols.iter().any(|p| p.is_grpc()) {
        Some(load_proto::grpc_endpoint(client, spec.grpc_url.as_deref())?)
    } else {
        None
    };
    let target = Target {
        url: load_proto::infer_url(client, &spec.model),
        grpc: grpc.clone(),
    };
    let mut levels = Vec::new();
    for (p, round, c) in
        super::load_compare::schedule(spec.rounds, &spec.concurrency, &spec.protocols)
    {
        progress(&format!(
            "round {round}, concurrency {c}, {}: warming up {:.1} s, measuring {:.1} s",
            p.as_str(),
            spec.warmup.as_secs_f64(),
            spec.duration.as_secs_f64()
        ));
        levels.push(run_level(client, &info, spec, &target, (p, round, c))?);
    }
    let note = match &layers {
        None => Some(format!(
            "the daemon did not report the layers of {} (GET /v1/services/{}), so the \
             compute-only speed was not measured",
            spec.model, spec.model
        )),
        Some(layers) => compute_only(layers, &mut levels, &mut progress)?,
    };
    Ok(BenchReport {
        url: client.base_url().to_string(),
        model: spec.model.clone(),
        layers,
        request: spec.protocols.iter().map(|p| p.describe()).collect(),
        grpc_url: grpc,
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        levels,
        compute_only_note: note,
    })
}

/// The model's layer widths as the daemon reports them (`/v1/services/MODEL`), when they
/// agree with its v2 metadata.
fn service_layers(client: &Client, model: &str, info: &ModelInfo) -> Option<Vec<usize>> {
    client
        .get(&format!("/v1/services/{}", path_segment(model)))
        .ok()
        .and_then(|s| serde_json::from_value::<ServiceView>(s).ok())
        .map(|s| s.layers)
        .filter(|l| {
            l.len() >= 2
                && l[0] == info.features
                && info.classes.is_none_or(|c| l[l.len() - 1] == c)
        })
}

/// Times the model in this process at the batch sizes the daemon ran and fills in each
/// level's compute-only rates; the note says why they are missing when they are.
fn compute_only(
    layers: &[usize],
    levels: &mut [LevelReport],
    progress: &mut impl FnMut(&str),
) -> Result<Option<String>, ClientError> {
    let mut sizes: Vec<usize> = Vec::new();
    for l in levels.iter() {
        sizes.extend(l.batch_sizes.keys().copied());
        if let Some(m) = l.mean_batch_size {
            sizes.push(m.round().max(1.0) as usize);
        }
    }
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return Ok(Some(
            "the daemon reported no batch statistics, so the compute-only speed was not \
             measured"
                .into(),
        ));
    }
    progress(&format!(
        "compute-only: timing Mlp::predict at batch sizes {sizes:?}"
    ));
    let secs = compute_only_seconds(layers, &sizes, Duration::from_millis(60))
        .map_err(|e| ClientError::Input(format!("compute-only measurement: {e}")))?;
    for l in levels {
        if let Some(m) = l.mean_batch_size {
            let b = m.round().max(1.0) as usize;
            if let Some(t) = secs.get(&b) {
                let rps = b as f64 / t;
                l.compute_only_rows_per_s = Some(rps);
                l.ratio = Some(l.requests_per_s / rps);
            }
        }
        let (mut rows, mut time) = (0.0, 0.0);
        for (b, c) in &l.batch_sizes {
            if let Some(t) = secs.get(b) {
                rows += (*b as f64) * (*c as f64);
                time += t * (*c as f64);
            }
        }
        if time > 0.0 {
            l.compute_only_rows_per_s_mix = Some(rows / time);
        }
    }
    Ok(None)
}

/// The report as a table.
pub fn render(r: &BenchReport) -> String {
    use super::table::Table;
    let layers = r
        .layers
        .as_ref()
        .map(|l| crate::model::format_layers(l))
        .unwrap_or_else(|| "?".into());
    let mut out = format!(
        "bench http: {} at {}{}, model {} ({layers}), closed loop, {:.1} s per level after \
         {:.1} s warm-up\n\n",
        r.request.join("; "),
        r.url,
        r.grpc_url
            .as_ref()
            .map_or(String::new(), |g| format!(" (gRPC {g})")),
        r.model,
        r.duration_s,
        r.warmup_s
    );
    let mut t = Table::new(&[
        "ROUND",
        "PROTOCOL",
        "CONC",
        "REQ/S",
        "P50 MS",
        "P90 MS",
        "P99 MS",
        "MAX MS",
        "ERRORS",
        "MEAN BATCH",
        "COMPUTE ROWS/S",
        "% OF COMPUTE",
        "DAEMON CPU US/REQ",
        "CLIENT CPU US/REQ",
    ])
    .right_align(&[0, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13]);
    let opt = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |x| format!("{x:.d$}"));
    for l in &r.levels {
        let errors = if l.errors.is_empty() {
            "0".to_string()
        } else {
            l.errors
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        t.row(vec![
            l.round.to_string(),
            l.protocol.as_str().to_string(),
            l.concurrency.to_string(),
            format!("{:.0}", l.requests_per_s),
            format!("{:.2}", l.latency_ms.p50),
            format!("{:.2}", l.latency_ms.p90),
            format!("{:.2}", l.latency_ms.p99),
            format!("{:.2}", l.latency_ms.max),
            errors,
            opt(l.mean_batch_size, 2),
            opt(l.compute_only_rows_per_s, 0),
            opt(l.ratio.map(|r| 100.0 * r), 2),
            opt(l.daemon_cpu_us_per_request, 1),
            opt(l.client_cpu_us_per_request, 1),
        ]);
    }
    out.push_str(&t.render());
    out.push_str(
        "\n% OF COMPUTE: the daemon's requests/s as a percentage of the rows/s the model \
         computes alone (no HTTP, no batcher; one CPU worker in this process) at the daemon's \
         mean batch size: what serving over HTTP keeps of the model's own speed.\n\
         DAEMON CPU US/REQ: the daemon's CPU time (all its threads) per request in the \
         measured window, which the load generator's own cost does not change.\n\
         CLIENT CPU US/REQ: this process's CPU time (the load generator) per request in the \
         same window; where client and daemon share the cores, both set requests/s.\n",
    );
    if let Some(n) = &r.compute_only_note {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&super::load_compare::render(&r.levels));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_counts_read_triton_statistics() {
        let s = json!({"model_stats": [{"batch_stats": [
            {"batch_size": 1, "compute_infer": {"count": 10, "ns": 5}},
            {"batch_size": 4, "compute_infer": {"count": 2, "ns": 5}},
        ]}]});
        let c = batch_counts(&s);
        assert_eq!(c.get(&1), Some(&10));
        assert_eq!(c.get(&4), Some(&2));
    }

    #[test]
    fn the_daemon_cpu_counter_is_read_from_the_exposition() {
        let text = "# TYPE setpoint_process_cpu_seconds_total counter\n\
                    setpoint_process_cpu_seconds_total_x 9\n\
                    setpoint_process_cpu_seconds_total 12.5\n";
        assert_eq!(process_cpu_seconds(text), Some(12.5));
        assert_eq!(process_cpu_seconds("setpoint_ready 1\n"), None);
    }

    #[test]
    fn compute_only_times_every_size_asked() {
        let t = compute_only_seconds(&[4, 8, 3], &[1, 5], Duration::from_millis(2)).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.values().all(|&s| s > 0.0));
    }
}
