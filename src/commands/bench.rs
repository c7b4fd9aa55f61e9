//! `setpoint bench`: `http` (load on a running daemon, [`crate::client::load`]), `scenario`
//! (a scripted node under each policy, [`crate::bench::scenario`]) and `soak` (a daemon under
//! long overload, [`crate::bench::soak`]).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use super::input_error;
use super::output::{client_error, connect, print_json, print_text};
use crate::bench::scenario::{self, Report, Scenario};
use crate::bench::smi::{CrossCheck, CrossCheckReport};
use crate::bench::{report, soak};
use crate::cli::{BenchArgs, BenchCommand, BenchHttpArgs, BenchScenarioArgs, BenchSoakArgs};
use crate::client::load;
use crate::client::load_proto::Protocol;
use crate::model::parse_layers;

/// Runs `setpoint bench` and its subcommands.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Http(a) => http(a),
        BenchCommand::Scenario(a) => run_scenario(a),
        BenchCommand::Soak(a) => run_soak(a),
    }
}

/// `setpoint bench soak`.
fn run_soak(a: BenchSoakArgs) -> anyhow::Result<()> {
    let duration = parse_duration_arg("--duration", &a.duration)?;
    let window = parse_duration_arg("--window", &a.window)?;
    let probe_every = parse_duration_arg("--probe-every", &a.probe_every)?;
    let period = parse_duration_arg("--period", &a.period)?;
    if duration.is_zero() || window.is_zero() {
        return Err(input_error(
            "--duration and --window must be more than zero",
        ));
    }
    let rate: soak::Rate = a
        .rate
        .parse()
        .map_err(|e: soak::RateError| input_error(e.to_string()))?;
    let job_layers = parse_layers(&a.job_layers)?;
    let listen = a.listen.as_deref().map(parse_listen).transpose()?;
    let progress_every = parse_duration_arg("--progress-every", &a.progress_every)?;
    if progress_every < Duration::from_secs(1) {
        return Err(input_error(format!(
            "--progress-every: must be at least 1s, got {:?}",
            a.progress_every
        )));
    }
    let exe = std::env::current_exe().context("cannot find this program's own path")?;
    let spec = soak::SoakSpec {
        exe,
        config: a.config.clone(),
        duration,
        rate,
        rows: a.rows,
        model: a.model.clone(),
        window,
        connections: a.connections,
        probe_every,
        period,
        job_data: a.job_data.clone(),
        job_layers,
        listen,
        progress_every,
    };
    let mut shown = SoakProgress::new(a.quiet, duration);
    let report = soak::run(&spec, &mut |p| shown.show(p));
    shown.finish();
    let report = report.map_err(|e| match e {
        soak::SoakError::Input(m) => input_error(m),
        soak::SoakError::Client(c) => client_error(c),
        other => anyhow!(other),
    })?;
    if a.json {
        let v = serde_json::to_value(&report).context("cannot render the report as JSON")?;
        print_json(&v)?;
    } else {
        print_text(&soak::render(&report))?;
    }
    if report.daemon_exit_code != Some(0) {
        return Err(anyhow!(
            "the daemon did not exit 0 after SIGTERM (exit code {:?})",
            report.daemon_exit_code
        ));
    }
    Ok(())
}
/// `--listen IP:PORT`.
fn parse_listen(text: &str) -> anyhow::Result<std::net::SocketAddr> {
    text.trim().parse().map_err(|_| {
        input_error(format!(
            "--listen: expected IP:PORT, such as 127.0.0.1:8080, [::1]:8080 or 0.0.0.0:0 \
             (port 0: any free port), got {text:?}"
        ))
    })
}

/// The soak's progress on stderr: phases and status lines as lines of their own, or on a
/// terminal one line redrawn in place (the seconds done and the latest status line); nothing
/// when quiet.
enum SoakProgress {
    Quiet,
    Lines,
    Bar(ProgressBar),
}

impl SoakProgress {
    fn new(quiet: bool, duration: Duration) -> Self {
        if quiet {
            return SoakProgress::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return SoakProgress::Lines;
        }
        let bar = ProgressBar::hidden();
        bar.set_length(duration.as_secs());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} s  {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        SoakProgress::Bar(bar)
    }

    fn show(&mut self, p: soak::Progress) {
        match (self, p) {
            (SoakProgress::Quiet, _) => {}
            (SoakProgress::Lines, soak::Progress::Phase(line)) => eprintln!("soak: {line}"),
            (SoakProgress::Lines, soak::Progress::Status(line)) => eprintln!("soak: {line}"),
            (SoakProgress::Lines, soak::Progress::Tick { .. }) => {}
            (SoakProgress::Bar(bar), soak::Progress::Phase(line)) if bar.is_hidden() => {
                eprintln!("{line}")
            }
            (SoakProgress::Bar(bar), soak::Progress::Phase(line)) => bar.println(line),
            (SoakProgress::Bar(bar), soak::Progress::Tick { elapsed_s, .. }) => {
                if bar.is_hidden() {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                }
                bar.set_position(elapsed_s);
            }
            (SoakProgress::Bar(bar), soak::Progress::Status(line)) => {
                // The bar already shows the time done.
                let rest = line.split_once("  ").map_or(line, |(_, rest)| rest);
                bar.set_message(rest.to_string());
            }
        }
    }

    fn finish(&self) {
        if let SoakProgress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `setpoint bench scenario`.
fn run_scenario(a: BenchScenarioArgs) -> anyhow::Result<()> {
    if let Some(n) = a.random {
        return run_random(&a, n);
    }
    let s = load_scenario(&a)?;
    let quiet = a.json;
    let mut cross = if a.nvidia_smi {
        Some(CrossCheck::start(100).map_err(|e| anyhow!("--nvidia-smi: {e}"))?)
    } else {
        None
    };
    let r = scenario::run_observed(
        &s,
        &mut |line: &str| {
            if !quiet {
                eprintln!("{line}");
            }
        },
        &mut |phase| {
            if let Some(c) = cross.as_mut() {
                match phase {
                    Some(p) => c.begin_phase(p),
                    None => c.end_phase(),
                }
            }
        },
    )?;
    let cross = cross.map(|c| c.finish());
    if let Some(path) = &a.plot {
        crate::util::fsio::write_atomic(path, crate::bench::plot::svg(&r).as_bytes())
            .with_context(|| format!("cannot write the plot {}", path.display()))?;
    }
    let energy = cross
        .as_ref()
        .map(|c| policy_energy(&r, c))
        .unwrap_or_default();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(c) = &cross {
            v["nvidia_smi"] = json!({ "cross_check": c, "energy": energy });
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print_scenario_text(&r, cross.as_ref(), &energy, &a);
    }
    Ok(())
}

/// `setpoint bench scenario --random N`.
fn run_random(a: &BenchScenarioArgs, count: u32) -> anyhow::Result<()> {
    let duration_s = a.duration.unwrap_or(20.0);
    if !(4.0..=3600.0).contains(&duration_s) {
        return Err(input_error(format!(
            "--duration: random scenarios run 4 to 3600 s per policy, got {duration_s}"
        )));
    }
    let spec = scenario::RandomSpec {
        count: count as usize,
        seed: a.seed,
        duration_s,
        cores: a.cores,
        policies: match &a.policies {
            Some(p) => parse_policies(p).map_err(|e| input_error(format!("--policies: {e}")))?,
            None => scenario::PolicyName::ALL.to_vec(),
        },
    };
    let quiet = a.json;
    let r = scenario::run_random(&spec, a.save.as_deref(), &mut |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", scenario::sweep_text(&r));
    }
    Ok(())
}

/// `--policies setpoint,static`.
fn parse_policies(text: &str) -> Result<Vec<scenario::PolicyName>, scenario::UnknownPolicy> {
    text.split(',').map(|x| x.trim().parse()).collect()
}

/// The scenario file with `--policies` and `--duration` applied, checked again.
fn load_scenario(a: &BenchScenarioArgs) -> anyhow::Result<Scenario> {
    let file = a
        .file
        .as_ref()
        .ok_or_else(|| input_error("give a scenario file or --random N"))?;
    let mut s = Scenario::load(file).map_err(|e| input_error(e.to_string()))?;
    if let Some(p) = &a.policies {
        s.policies = parse_policies(p)
            .map_err(|e| input_error(format!("{}: policies: {e}", file.display())))?;
    }
    if let Some(d) = a.duration {
        s.duration_s = d;
    }
    Scenario::parse(&toml::to_string(&s).context("cannot re-encode the scenario")?)
        .map_err(|e| input_error(format!("{}: {e}", file.display())))
}

/// One policy's energy from the GPU's counter (or its power), and the phase's whole energy
/// per 1,000 requests and per training epoch finished (inference and training share the
/// phase, so neither figure is the energy of that work alone).
#[derive(Debug, Clone, Serialize)]
struct PolicyEnergy {
    policy: String,
    gpu: u32,
    energy_j: Option<f64>,
    joules_per_1000_requests: Option<f64>,
    training_epochs: u32,
    joules_per_training_epoch: Option<f64>,
    mean_util_pct: Option<f64>,
    mean_power_w: Option<f64>,
}

/// The energy of each policy's phase.
fn policy_energy(r: &Report, cross: &CrossCheckReport) -> Vec<PolicyEnergy> {
    cross
        .correlation
        .phases
        .iter()
        .map(|ph| {
            let policy = r.policies.iter().find(|p| p.policy == ph.phase);
            let requests = policy.map_or(0, |p| p.requests);
            let epochs: u32 = policy.map_or(0, |p| p.jobs.iter().map(|j| j.epochs_done).sum());
            PolicyEnergy {
                policy: ph.phase.clone(),
                gpu: ph.gpu,
                energy_j: ph.energy_j,
                joules_per_1000_requests: ph
                    .energy_j
                    .filter(|_| requests > 0)
                    .map(|e| e * 1000.0 / requests as f64),
                training_epochs: epochs,
                joules_per_training_epoch: ph
                    .energy_j
                    .filter(|_| epochs > 0)
                    .map(|e| e / epochs as f64),
                mean_util_pct: ph.mean_util_pct,
                mean_power_w: ph.mean_power_w,
            }
        })
        .collect()
}

/// The scenario's report as text, with the nvidia-smi cross-check and energy when measured.
fn print_scenario_text(
    r: &Report,
    cross: Option<&CrossCheckReport>,
    energy: &[PolicyEnergy],
    a: &BenchScenarioArgs,
) {
    // A figure as the JSON would carry it: none (or not finite) reads `-`.
    let fig = |v: Option<f64>, digits: usize| {
        v.filter(|x| x.is_finite())
            .map_or("-".into(), |x| format!("{x:.digits$}"))
    };
    print!("{}", report::text(r));
    if let Some(c) = cross {
        println!();
        print!("{}", c.correlation.render_text());
        for e in energy {
            println!(
                "energy {} gpu {}: {} J, {} J per 1,000 requests, {} J per training epoch",
                e.policy,
                e.gpu,
                fig(e.energy_j, 1),
                fig(e.joules_per_1000_requests, 2),
                fig(e.joules_per_training_epoch, 1)
            );
        }
    }
    if let Some(path) = &a.plot {
        println!("plot: {}", path.display());
    }
}

/// `flag`'s value as a duration such as 10s, 500ms or 1m.
fn parse_duration_arg(flag: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        input_error(format!(
            "{flag}: expected a duration such as 10s, 500ms or 1m, got {text:?} ({e})"
        ))
    })
}

/// `--concurrency 1,4,16`: each level from 1 to 256, at least one.
fn parse_concurrency(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut concurrency = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<usize>() {
            Ok(c) if (1..=256).contains(&c) => concurrency.push(c),
            _ => {
                return Err(input_error(format!(
                    "--concurrency: each level must be an integer from 1 to 256, got {part:?}"
                )));
            }
        }
    }
    if concurrency.is_empty() {
        return Err(input_error(
            "--concurrency: give at least one level, such as 1,4,16",
        ));
    }
    Ok(concurrency)
}

/// `--protocol`: distinct protocols in the order given.
fn parse_protocols(text: &str) -> anyhow::Result<Vec<Protocol>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p = Protocol::parse(item).map_err(|e| input_error(format!("--protocol: {e}")))?;
        if out.contains(&p) {
            return Err(input_error(format!("--protocol: '{item}' is given twice")));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err(input_error(
            "--protocol: give at least one of json, binary, grpc, grpc-shared, grpc-stream",
        ));
    }
    Ok(out)
}

/// `setpoint bench http`.
fn http(a: BenchHttpArgs) -> anyhow::Result<()> {
    let concurrency = parse_concurrency(&a.concurrency)?;
    let duration = parse_duration_arg("--duration", &a.duration)?;
    if duration.is_zero() {
        return Err(input_error("--duration must be more than zero"));
    }
    let warmup = parse_duration_arg("--warmup", &a.warmup)?;
    let protocols = parse_protocols(&a.protocol)?;
    if a.rounds == 0 || a.rounds > 100 {
        return Err(input_error(format!(
            "--rounds: expected 1 to 100, got {}",
            a.rounds
        )));
    }
    let client = connect(&a.client)?;
    let spec = load::BenchSpec {
        model: a.model.clone(),
        concurrency,
        duration,
        warmup,
        seed: a.seed,
        protocols,
        rounds: a.rounds,
        grpc_url: a.grpc_url.clone(),
    };
    let chatty = std::io::stderr().is_terminal();
    let report = load::run(&client, &spec, |line| {
        if chatty {
            eprintln!("{line}");
        }
    })
    .map_err(client_error)?;
    if a.client.json {
        let v = serde_json::to_value(&report).context("cannot render the report as JSON")?;
        return print_json(&v);
    }
    print_text(&load::render(&report))
}
