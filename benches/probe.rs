//! One workload, measured the way `scripts/peers/torch_bench.py` measures PyTorch, printed as
//! one JSON line: the setpoint side of `scripts/bench-peers.sh`.
//!
//! ```sh
//! cargo bench --bench probe -- train-digits --threads 1 --seconds 3
//! cargo bench --bench probe -- train-big --threads 2
//! cargo bench --bench probe -- forward --batch 8
//! cargo bench --bench probe -- gemm --size 2048 --threads 2
//! ```
//!
//! After `--warmup` seconds untimed, the workload runs in windows of about a tenth of
//! `--seconds` each (a window always ends on a whole operation); `median` is the median of
//! the windows' rates, and `mean` is all items over all timed seconds.

mod common;

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use setpoint::device::{Backend, Gemm};

use common::{BIG_BATCH, DIGITS_BATCH, Forward};

const USAGE: &str =
    "usage: probe WORKLOAD [--threads N] [--seconds S] [--warmup S] [--batch N] [--size N]
workloads: train-digits (64-128-10, batch 64, Adam, samples/s)
           train-big    (784-1024-1024-10, batch 256, Adam, samples/s)
           forward      (64-128-10 predict at --batch rows, rows/s)
           gemm         (f32 --size^3, FLOP/s reported as gflop_per_s)";

struct Args {
    workload: String,
    threads: usize,
    seconds: f64,
    warmup: f64,
    batch: usize,
    size: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        workload: String::new(),
        threads: 1,
        seconds: 3.0,
        warmup: 1.0,
        batch: 64,
        size: 2048,
    };
    // `cargo bench` adds `--bench` to every bench target's arguments.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--threads" => args.threads = value("--threads")?.parse().context("--threads")?,
            "--seconds" => args.seconds = value("--seconds")?.parse().context("--seconds")?,
            "--warmup" => args.warmup = value("--warmup")?.parse().context("--warmup")?,
            "--batch" => args.batch = value("--batch")?.parse().context("--batch")?,
            "--size" => args.size = value("--size")?.parse().context("--size")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            w if !w.starts_with('-') && args.workload.is_empty() => args.workload = w.to_string(),
            other => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    if args.workload.is_empty() {
        // Plain `cargo bench` runs every bench target; this one only runs when asked.
        eprintln!("probe: no workload given, nothing to do\n{USAGE}");
        return Ok(None);
    }
    let times_ok = args.seconds.is_finite()
        && args.seconds > 0.0
        && args.warmup.is_finite()
        && args.warmup >= 0.0;
    if !times_ok {
        bail!("--seconds must be > 0 and --warmup >= 0");
    }
    if !(1..=2).contains(&args.threads) {
        bail!("--threads must be 1 or 2 (the backend's pool has two workers)");
    }
    Ok(Some(args))
}

/// Runs `op` (which returns the items it processed) untimed for `warmup`, then in windows;
/// returns each window's items per second and the overall rate.
fn measure(warmup: f64, seconds: f64, mut op: impl FnMut() -> u64) -> (Vec<f64>, f64) {
    let until = Instant::now() + Duration::from_secs_f64(warmup);
    while Instant::now() < until {
        black_box(op());
    }
    let window = Duration::from_secs_f64(seconds / 10.0);
    let start = Instant::now();
    let mut rates = Vec::new();
    let mut total_items = 0u64;
    while start.elapsed().as_secs_f64() < seconds || rates.len() < 3 {
        let t0 = Instant::now();
        let mut items = 0;
        loop {
            items += op();
            if t0.elapsed() >= window {
                break;
            }
        }
        rates.push(items as f64 / t0.elapsed().as_secs_f64());
        total_items += items;
    }
    let overall = total_items as f64 / start.elapsed().as_secs_f64();
    (rates, overall)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn run(args: &Args) -> Result<serde_json::Value> {
    let (unit, batch, (mut rates, overall)) = match args.workload.as_str() {
        "train-digits" => {
            let mut t = common::digits_trainer(args.threads)?;
            let r = measure(args.warmup, args.seconds, || {
                common::train_step(&mut t);
                DIGITS_BATCH as u64
            });
            ("samples_per_s", DIGITS_BATCH, r)
        }
        "train-big" => {
            let mut t = common::big_trainer(args.threads)?;
            let r = measure(args.warmup, args.seconds, || {
                common::train_step(&mut t);
                BIG_BATCH as u64
            });
            ("samples_per_s", BIG_BATCH, r)
        }
        "forward" => {
            if !(1..=Forward::MAX_ROWS).contains(&args.batch) {
                bail!("--batch must be 1..={}", Forward::MAX_ROWS);
            }
            let mut f = Forward::new(args.threads)?;
            let rows = args.batch;
            let r = measure(args.warmup, args.seconds, || {
                f.run(rows);
                rows as u64
            });
            ("rows_per_s", rows, r)
        }
        "gemm" => {
            let n = args.size;
            let backend = common::backend(args.threads)?;
            let mut rng = setpoint::util::rng::Rng::new(1);
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
            };
            let a = backend.upload(&random(n * n))?;
            let b = backend.upload(&random(n * n))?;
            let mut c = backend.alloc(n * n)?;
            let g = Gemm::new(n, n, n);
            let flop = 2 * (n as u64).pow(3);
            let (rates, overall) = measure(args.warmup, args.seconds, || {
                if let Err(e) = backend.gemm(g, &a, &b, &mut c) {
                    panic!("gemm failed: {e}");
                }
                black_box(&c);
                flop
            });
            // Report GFLOP/s rather than FLOP/s: the figure people compare.
            let rates = rates.iter().map(|r| r / 1e9).collect();
            ("gflop_per_s", n, (rates, overall / 1e9))
        }
        other => bail!("unknown workload {other:?}\n{USAGE}"),
    };
    let windows = rates.len();
    let med = median(&mut rates);
    Ok(serde_json::json!({
        "impl": "setpoint",
        "workload": args.workload,
        "threads": args.threads,
        "batch": batch,
        "unit": unit,
        "median": med,
        "mean": overall,
        "min": rates[0],
        "max": rates[windows - 1],
        "windows": windows,
    }))
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| match args {
        Some(args) => run(&args).map(Some),
        None => Ok(None),
    });
    match result {
        Ok(Some(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe: {e:#}");
            ExitCode::from(2)
        }
    }
}
