//! The arguments of `setpoint bench` and its subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::ClientArgs;

/// `setpoint bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// `setpoint bench …` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Closed-loop HTTP load on a running daemon's v2 inference endpoint.
    ///
    /// Starts nothing: run a daemon first (`setpoint serve`, in release mode for figures
    /// that mean something) and point --url at it. For each concurrency level C, C workers
    /// each send single-row JSON v2 requests back to back on a keep-alive connection of
    /// their own; after --warmup, requests are measured for --duration. Reports requests/s,
    /// p50/p90/p99/max latency and errors by status per level, the mean batch size the
    /// daemon ran (from /v2/models/MODEL/stats), the ratio of the daemon's requests/s to
    /// the model's compute-only rows/s at that batch size, measured in this process, and the
    /// daemon's CPU time per request (from its /metrics). Each request is one write: HTTP/1.1
    /// rendered once, gRPC as HEADERS and one DATA frame together. With --protocol
    /// grpc-shared the C calls are in flight together on one HTTP/2 connection, driven by
    /// one thread, and the calls answered by one read are replaced in one write; with
    /// grpc-stream each worker sends its requests as messages on one open ModelStreamInfer
    /// stream.
    Http(BenchHttpArgs),
    /// Run a scripted co-location scenario under the controller, static shares and no shares.
    ///
    /// In process, on the real backend: an inference service under open-loop Poisson
    /// arrivals (rate steps and bursts from the file) beside training jobs with deadlines.
    /// The same scenario runs once per policy (`setpoint`, `static`, `none`); the report
    /// gives, for each, the % of SLO windows and requests met, p99 latency, each job's
    /// finish against its deadline, share-seconds and device-seconds used, and the ratios
    /// setpoint / static. The file format is documented in `configs/scenarios/README.md`.
    Scenario(BenchScenarioArgs),
    /// Steady mixed load on a daemon of its own for a long while; reports what it did to the
    /// process and the service.
    ///
    /// Starts `setpoint serve` (this binary) on a free loopback port (or --listen) with a
    /// temporary state dir, so that its resident memory and open file descriptors can be read from /proc.
    /// Then, for --duration: v2 requests of --rows rows to --model at --rate (open loop, over
    /// --connections keep-alive connections), a best-effort training job submitted through
    /// the jobs API, probes of /v2/health/live and /metrics every --probe-every, and a read of
    /// /v1/status, /metrics and the job every second. Reports RSS and open fds at start and
    /// end, request outcomes (ok, 429, 504 timeout, other statuses, transport errors), p50
    /// and p99 latency per --window against the service's SLO, the probes' latency, how late
    /// answers came against their timeout, and the job's progress; then stops the daemon with
    /// SIGTERM. The descriptors open at the end and not at the start (or the reverse) are
    /// named by target, so that one opened once and kept can be told from a leak. While the
    /// load runs, a status line goes to stderr every --progress-every (not with --quiet).
    /// Exits 1 when the daemon fails or exits during the run.
    Soak(BenchSoakArgs),
}

/// `setpoint bench soak`.
#[derive(Debug, Args)]
pub struct BenchSoakArgs {
    /// How long the load runs ("60s", "10m", "2h").
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub duration: String,
    /// Inference requests per second ("3000"), or a multiple of the rate the service
    /// sustains within its SLO ("10x": measured first, with a closed-loop ramp of a few
    /// seconds).
    #[arg(long, default_value = "200")]
    pub rate: String,
    /// Rows per inference request.
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    /// Keep-alive connections the requests are sent over, each with at most one request in
    /// flight; a request due while all are busy is sent late (and counted so).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// How often /v2/health/live and /metrics are probed (their latency is reported).
    #[arg(long, value_name = "DURATION", default_value = "50ms")]
    pub probe_every: String,
    /// The daemon's control period: answers later than their timeout by more than this are
    /// counted apart.
    #[arg(long, value_name = "DURATION", default_value = "100ms")]
    pub period: String,
    /// The service to load.
    #[arg(long, default_value = "mlp")]
    pub model: String,
    /// Span of the latency windows compared with the SLO.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub window: String,
    /// Config file for the daemon; its embedded default when absent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data of the training job (a path or synthetic:…).
    #[arg(long, default_value = "synthetic:blobs:size=20000,noise=1.5")]
    pub job_data: String,
    /// Layer widths of the training job.
    #[arg(long, default_value = "64,128,10")]
    pub job_layers: String,
    /// Where the daemon listens: IP:PORT of this host, such as 127.0.0.1:8080 or [::1]:8080
    /// (port 0: any free port there; 0.0.0.0 or [::]: every address, reached on loopback).
    /// Refused before anything starts when the port is in use or the address is not this
    /// host's. By default, a free loopback port.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// How often a status line is written to stderr while the load runs: time done, requests
    /// sent and answered, errors, p99 of the 200 answers so far and since the last line, the
    /// daemon's resident memory and open descriptors, the job's steps. On a terminal the line
    /// is redrawn in place; otherwise one line each time. At least 1s.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub progress_every: String,
    /// Write nothing to stderr while the soak runs (no phases, no status lines).
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// `setpoint bench scenario`.
#[derive(Debug, Args)]
pub struct BenchScenarioArgs {
    /// Scenario file (TOML); not with --random.
    #[arg(required_unless_present = "random", conflicts_with = "random")]
    pub file: Option<PathBuf>,
    /// Instead of a file, draw N random scenarios (rate steps, ramps and bursts; jobs arriving
    /// during the run with deadlines, accuracy targets or none; backfill work; models of
    /// several sizes), scaled to this machine's measured speed, run each under every policy,
    /// and report the distribution of the outcomes (worst, median, best) against the README's
    /// targets. See configs/scenarios/README.md.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub random: Option<u32>,
    /// The seed random scenarios are drawn from: the same seed draws the same scenarios.
    #[arg(long, default_value_t = 1, requires = "random")]
    pub seed: u64,
    /// CPU workers a random scenario's node divides (0 = all).
    #[arg(long, default_value_t = 2, requires = "random")]
    pub cores: usize,
    /// With --random: write each drawn scenario (NAME.toml, to rerun it alone) and its full
    /// report (NAME.json) into this directory.
    #[arg(long, value_name = "DIR", requires = "random")]
    pub save: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG plot: latency against the SLO and shares over time, per policy.
    #[arg(long, conflicts_with = "random", value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Run only these policies (comma-separated: setpoint, static, none).
    #[arg(long, value_name = "P,P,...")]
    pub policies: Option<String>,
    /// Override the scenario's duration per policy, in seconds (random scenarios: 20).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Run nvidia-smi (every 100 ms) beside the scenario, align it with setpoint's own NVML
    /// samples and each policy's run, and report their agreement per field and the energy
    /// per policy (joules, and per 1,000 requests). Needs an NVIDIA driver.
    #[arg(long, conflicts_with = "random")]
    pub nvidia_smi: bool,
}

/// `setpoint bench http`.
#[derive(Debug, Args)]
pub struct BenchHttpArgs {
    /// Model to load.
    #[arg(long, default_value = "mlp")]
    pub model: String,
    /// Concurrency levels (connections), comma-separated.
    #[arg(long, value_name = "C,C,...", default_value = "1,4,16")]
    pub concurrency: String,
    /// Measured time per level ("10s", "500ms", "1m").
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub duration: String,
    /// Unmeasured warm-up before each level.
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub warmup: String,
    /// Seed of the request rows.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Protocols, comma-separated, taking turns at each level: json (HTTP), binary (HTTP
    /// with binary tensors, as perf_analyzer sends), grpc (unary ModelInfer, raw tensors, a
    /// connection per call in flight, as HTTP/1.1 needs), grpc-shared (the same, with a level's
    /// calls in flight together on one connection, as gRPC clients share a channel),
    /// grpc-stream (ModelStreamInfer: each worker's requests on one open stream, as
    /// perf_analyzer --streaming sends them).
    #[arg(long, value_name = "P,P,...", default_value = "json")]
    pub protocol: String,
    /// Times the levels are repeated, protocols interleaved (in the order given, reversed
    /// every other round), for side-by-side ratios.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// The gRPC endpoint (HOST:PORT or URL) [default: the HTTP host at the port the
    /// daemon's /v1/status reports for grpc_listen].
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc_url: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}
