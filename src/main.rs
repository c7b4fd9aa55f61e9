//! The `setpoint` command: parse, run, map errors to exit codes (0 success, 1 runtime
//! failure, 2 usage or input error).

mod cli;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use cli::{
    BenchArgs, BenchCommand, BenchHttpArgs, CheckConfigArgs, Cli, ClientArgs, Command, DataArgs,
    DevicesArgs, GpuCheckArgs, InferArgs, JobsArgs, JobsCommand, JobsServeArgs, JobsUpdateArgs,
    KernelsArgs, KernelsCheckArgs, KernelsCommand, KernelsPtxArgs, OptimizerArg, PredictArgs,
    ServeArgs, StatusArgs, SubmitArgs, TrainArgs,
};
use setpoint::client::{self as sp_client, Client, ClientError, path_segment, table, v2};
use setpoint::data::{self, DataError, Dataset, LabelColumn, LoadOptions};
use setpoint::device::{Backend, CpuBackend, DeviceError, SgdParams};
use setpoint::kernels::{self, CudaArch, KernelError, KernelResources, KernelSource, PtxOrigin};
use setpoint::model::checkpoint::{Checkpoint, CheckpointError};
use setpoint::model::{Mlp, ModelError, Optimizer, Workspace, format_layers, parse_layers};
use setpoint::train::{TrainError, TrainEvent, TrainReport, TrainSpec, Trainer};
use setpoint::util::stats::argmax;

/// An error that is the user's to fix: bad input, bad usage (exit code 2).
#[derive(Debug)]
struct InputError(String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

fn input_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(msg.into()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The daemon logs what it does; one-shot commands only warnings.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SETPOINT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text an outer message
/// already includes (library errors name their OS error and also expose it as the source).
fn render(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// 2 for errors in what the user gave, 1 for failures while running.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<InputError>() || cause.is::<setpoint::config::ConfigError>() {
            return 2;
        }
        if let Some(d) = cause.downcast_ref::<DataError>() {
            return if d.is_input() { 2 } else { 1 };
        }
        if let Some(t) = cause.downcast_ref::<TrainError>() {
            return if t.is_input() { 2 } else { 1 };
        }
        if let Some(c) = cause.downcast_ref::<CheckpointError>() {
            return match c {
                CheckpointError::Io { source, .. } => {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        2
                    } else {
                        1
                    }
                }
                _ => 2,
            };
        }
        if let Some(k) = cause.downcast_ref::<KernelError>() {
            return if k.is_input() { 2 } else { 1 };
        }
        if let Some(setpoint::node::NodeError::StateDir(_)) =
            cause.downcast_ref::<setpoint::node::NodeError>()
        {
            return 2;
        }
        if let Some(m) = cause.downcast_ref::<ModelError>() {
            return if matches!(m, ModelError::Device(_)) {
                1
            } else {
                2
            };
        }
    }
    1
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train(args),
        Command::Predict(args) => predict(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Serve(args) => serve(args),
        Command::Submit(args) => submit(args),
        Command::Jobs(args) => jobs(args),
        Command::Infer(args) => infer(args),
        Command::Status(args) => status(args),
        Command::Bench(args) => bench(args),
        Command::Kernels(args) => kernels_cmd(args),
        Command::GpuCheck(args) => gpu_check(args),
        Command::Devices(args) => devices(args),
    }
}

fn load_options(args: &DataArgs) -> LoadOptions {
    LoadOptions {
        label: match &args.label_column {
            Some(name) => LabelColumn::Named(name.clone()),
            None => LabelColumn::Last,
        },
        labels_path: args.labels.clone(),
    }
}

fn cpu_backend(threads: usize) -> anyhow::Result<CpuBackend> {
    if threads > 1024 {
        return Err(input_error(format!(
            "--threads must be between 0 and 1024, got {threads}"
        )));
    }
    CpuBackend::new(threads).map_err(|e: DeviceError| anyhow!(e))
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let data = data::load(&args.data, &load_options(&args.data_args))?;
    let backend = cpu_backend(args.threads)?;
    let explicit_layers = args.layers.as_deref().map(parse_layers).transpose()?;
    let mut trainer = match &args.resume {
        Some(resume) => {
            let ckpt = Checkpoint::load(resume)?;
            let layers = explicit_layers.unwrap_or_else(|| ckpt.params.layers.clone());
            let Some(state) = &ckpt.training else {
                return Err(input_error(format!(
                    "cannot resume from {}: it holds a model only, with no training state",
                    resume.display()
                )));
            };
            let mut spec = TrainSpec::from_meta(&layers, &state.meta.config)?;
            apply_overrides(&mut spec, &args)?;
            spec.checkpoint = Some(args.checkpoint.clone().unwrap_or_else(|| resume.clone()));
            spec.checkpoint_every_steps = args.checkpoint_every;
            Trainer::resume(backend, spec, &data, ckpt, resume)?
        }
        None => {
            let layers = match explicit_layers {
                Some(l) => l,
                None => default_layers(&data)?,
            };
            let mut spec = TrainSpec::new(layers);
            apply_overrides(&mut spec, &args)?;
            spec.checkpoint = args.checkpoint.clone();
            spec.checkpoint_every_steps = args.checkpoint_every;
            Trainer::new(backend, spec, &data)?
        }
    };
    let report = run_with_progress(&mut trainer, args.json)?;
    print_train_report(&report, &trainer, &args)
}

/// `FEATURES,128,CLASSES` for the data.
fn default_layers(data: &Dataset) -> anyhow::Result<Vec<usize>> {
    let classes = data.classes().max(2);
    Ok(vec![data.features, 128, classes])
}

/// Applies the hyper-parameters given on the command line to `spec`.
fn apply_overrides(spec: &mut TrainSpec, args: &TrainArgs) -> anyhow::Result<()> {
    if let Some(b) = args.batch_size {
        spec.batch_size = b;
    }
    if let Some(e) = args.epochs {
        spec.epochs = e;
    }
    if let Some(t) = args.target_accuracy {
        spec.target_accuracy = Some(t);
    }
    if let Some(v) = args.val_fraction {
        spec.val_fraction = v;
    }
    if let Some(s) = args.seed {
        spec.seed = s;
    }
    let opt_given = args.optimizer.is_some()
        || args.lr.is_some()
        || args.momentum.is_some()
        || args.weight_decay.is_some();
    if opt_given {
        let kind = args.optimizer.unwrap_or(match spec.optimizer {
            Optimizer::Sgd(_) => OptimizerArg::Sgd,
            Optimizer::Adam(_) => OptimizerArg::Adam,
        });
        let same_kind = matches!(
            (kind, spec.optimizer),
            (OptimizerArg::Sgd, Optimizer::Sgd(_)) | (OptimizerArg::Adam, Optimizer::Adam(_))
        );
        spec.optimizer = match (kind, spec.optimizer) {
            (OptimizerArg::Adam, current) => {
                let mut hp = match current {
                    Optimizer::Adam(hp) => hp,
                    Optimizer::Sgd(_) => setpoint::train::default_adam(1e-3),
                };
                if let Some(lr) = args.lr {
                    hp.lr = lr;
                }
                if let Some(wd) = args.weight_decay {
                    hp.weight_decay = wd;
                }
                if args.momentum.is_some() {
                    return Err(input_error(
                        "--momentum applies to --optimizer sgd only (adam uses its own moments)",
                    ));
                }
                Optimizer::Adam(hp)
            }
            (OptimizerArg::Sgd, current) => {
                let mut hp = match current {
                    Optimizer::Sgd(hp) if same_kind => hp,
                    _ => SgdParams {
                        lr: 0.05,
                        momentum: 0.9,
                        weight_decay: 0.0,
                    },
                };
                if let Some(lr) = args.lr {
                    hp.lr = lr;
                }
                if let Some(m) = args.momentum {
                    hp.momentum = m;
                }
                if let Some(wd) = args.weight_decay {
                    hp.weight_decay = wd;
                }
                Optimizer::Sgd(hp)
            }
        };
    }
    Ok(())
}

fn run_with_progress<B: Backend>(
    trainer: &mut Trainer<B>,
    json: bool,
) -> anyhow::Result<TrainReport> {
    let epochs = trainer.spec().epochs;
    let batches = trainer.batches_per_epoch() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(epochs as u64 * batches);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(trainer.epochs_done() as u64 * batches);
        Some(bar)
    } else {
        None
    };
    let mut on_event = |ev: &TrainEvent| match ev {
        TrainEvent::Step { .. } => {
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        TrainEvent::Epoch(r) => {
            let val = r
                .val_accuracy
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into());
            let line = format!(
                "epoch {}/{epochs}  loss {:.4}  train_acc {:.4}  val_acc {val}  step {}",
                r.epoch, r.train_loss, r.train_accuracy, r.step
            );
            match &bar {
                Some(bar) => bar.set_message(line),
                None if !json => eprintln!("{line}"),
                None => {}
            }
        }
        TrainEvent::Checkpoint { path, step } => {
            tracing::info!(path = %path.display(), step, "checkpoint written");
        }
    };
    let result = trainer.run(&mut on_event);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    Ok(result?)
}

fn print_train_report<B: Backend>(
    report: &TrainReport,
    trainer: &Trainer<B>,
    args: &TrainArgs,
) -> anyhow::Result<()> {
    let spec = trainer.spec();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({
            "epochs": report.epochs,
            "steps": report.steps,
            "train_loss": report.train_loss,
            "train_accuracy": report.train_accuracy,
            "val_accuracy": report.val_accuracy,
            "stop_reason": report.stop_reason,
            "wall_s": report.wall_s,
            "samples_per_s": report.samples_per_s,
            "checkpoint": report.checkpoint,
            "layers": spec.layers,
            "optimizer": spec.optimizer.name(),
            "batch_size": spec.batch_size,
            "seed": spec.seed,
            "threads": trainer.backend().workers(),
            "data": args.data,
            "history": report.history,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "trained {} ({} epochs, {} steps) in {:.2} s, {:.0} samples/s",
        format_layers(&spec.layers),
        report.epochs,
        report.steps,
        report.wall_s,
        report.samples_per_s
    )?;
    writeln!(
        out,
        "train loss {}, train accuracy {}, validation accuracy {}",
        fmt(report.train_loss),
        fmt(report.train_accuracy),
        fmt(report.val_accuracy)
    )?;
    let reason = match report.stop_reason.as_deref() {
        Some("target_reached") => "target accuracy reached",
        Some("epoch_limit") => "epoch limit reached",
        _ => "unfinished",
    };
    writeln!(out, "stopped: {reason}")?;
    if let Some(c) = &report.checkpoint {
        writeln!(out, "checkpoint: {}", c.display())?;
    }
    Ok(())
}

/// Loads data for a model taking `inputs` features: labelled when it has one more column
/// (or a named label column), unlabelled when it has exactly `inputs`.
fn load_for_model(spec: &str, args: &DataArgs, inputs: usize) -> anyhow::Result<Dataset> {
    let is_csv =
        !spec.starts_with("synthetic:") && !Path::new(spec).to_string_lossy().contains("idx");
    if args.label_column.is_some() || !is_csv {
        return Ok(data::load(spec, &load_options(args))?);
    }
    let raw = data::load(
        spec,
        &LoadOptions {
            label: LabelColumn::None,
            labels_path: args.labels.clone(),
        },
    )?;
    if raw.features == inputs {
        Ok(raw)
    } else if raw.features == inputs + 1 {
        Ok(data::load(spec, &load_options(args))?)
    } else {
        Err(input_error(format!(
            "{spec}: has {} columns, but the model takes {inputs} features (give {inputs} \
             columns, or {} with the label last)",
            raw.features,
            inputs + 1
        )))
    }
}

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::load(&args.checkpoint)?;
    let layers = ckpt.params.layers.clone();
    let (inputs, classes) = (layers[0], layers[layers.len() - 1]);
    let mut data = load_for_model(&args.data, &args.data_args, inputs)?;
    if data.features != inputs {
        return Err(input_error(format!(
            "{}: the data has {} features, the model in {} takes {inputs}",
            args.data,
            data.features,
            args.checkpoint.display()
        )));
    }
    if let Some(labels) = &data.labels
        && let Some((row, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(input_error(format!(
            "{}: label {l} in data row {} is outside the model's {classes} classes",
            args.data,
            row + 1
        )));
    }
    ckpt.normalizer.apply(&mut data.x);
    let backend = cpu_backend(args.threads)?;
    let model = Mlp::from_params(&backend, &ckpt.params)?;
    const CHUNK: usize = 512;
    let mut ws = Workspace::new(&backend, &layers, CHUNK, false)?;
    let mut x = backend.alloc(CHUNK * inputs)?;
    let mut probs = vec![0.0f32; CHUNK * classes];
    let mut predictions: Vec<(usize, f32)> = Vec::with_capacity(data.rows());
    for start in (0..data.rows()).step_by(CHUNK) {
        let end = (start + CHUNK).min(data.rows());
        let rows = end - start;
        backend.write(&mut x, &data.x[start * inputs..end * inputs])?;
        model.predict(&backend, &mut ws, &x, rows)?;
        backend.read(ws.output(), &mut probs[..rows * classes])?;
        for r in 0..rows {
            let row = &probs[r * classes..(r + 1) * classes];
            let c = argmax(row);
            predictions.push((c, row[c]));
        }
    }
    let correct = data.labels.as_ref().map(|labels| {
        predictions
            .iter()
            .zip(labels)
            .filter(|(p, l)| p.0 == **l as usize)
            .count()
    });
    let rows = data.rows();
    let accuracy = correct.map(|c| {
        if rows == 0 {
            0.0
        } else {
            c as f64 / rows as f64
        }
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let preds: Vec<_> = predictions
            .iter()
            .map(|(c, p)| json!({"class": c, "probability": p}))
            .collect();
        let v = json!({
            "rows": rows,
            "labelled": data.labels.is_some(),
            "correct": correct,
            "accuracy": accuracy,
            "predictions": preds,
        });
        writeln!(out, "{v}")?;
    } else if let (Some(c), Some(a)) = (correct, accuracy) {
        writeln!(out, "accuracy {a:.4} ({c} of {rows} rows)")?;
    } else {
        writeln!(out, "row,class,probability")?;
        for (i, (c, p)) in predictions.iter().enumerate() {
            writeln!(out, "{},{c},{p:.6}", i + 1)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let check = setpoint::config::check_file(args.file.as_deref());
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&check).context("cannot render the check as JSON")?
        )?;
        if !check.valid {
            let n = check.errors.len();
            return Err(input_error(format!(
                "{}: {n} error{} (listed in the JSON)",
                check.file,
                if n == 1 { "" } else { "s" }
            )));
        }
        return Ok(());
    }
    for w in &check.warnings {
        eprintln!("warning: {w}");
    }
    match check.config {
        Some(cfg) => {
            writeln!(out, "{}: valid", check.file)?;
            write!(out, "{}", cfg.summary())?;
            Ok(())
        }
        None => Err(setpoint::config::ConfigError::Invalid {
            path: args.file.clone(),
            errors: check.errors,
        }
        .into()),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The environment may carry the token, so it need not sit in a config file.
    let env_token = std::env::var("SETPOINT_AUTH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let source = setpoint::node::ConfigSource {
        path: args.config,
        listen: args.listen,
        state_dir: args.state_dir,
        data_dirs: args.data_dirs,
        env_token,
    };
    let config = source.load().map_err(|e| match e {
        setpoint::node::reload::SourceError::Config(c) => anyhow!(c),
        setpoint::node::reload::SourceError::Setting(m) => input_error(m),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("setpoint-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_task(config, source))
}

async fn serve_task(
    config: setpoint::config::NodeConfig,
    source: setpoint::node::ConfigSource,
) -> anyhow::Result<()> {
    let notifier = Arc::new(setpoint::node::systemd::Notifier::from_env());
    // Before anything slow: SIGHUP's default action would end the process.
    let hangups = hangup_stream();
    let listen = config.listen;
    let http = config.http.clone();
    let listener = setpoint::api::server::bind(listen, http.listen_backlog)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let limits = connection_limits(&http)?;
    let node = setpoint::node::Node::new(config).map_err(|e| anyhow!(e))?;
    node.set_config_source(source);
    node.set_notifier(notifier.clone());
    tracing::info!(
        version = setpoint::VERSION,
        listen = %listener.local_addr().unwrap_or(listen),
        state_dir = %node.state_dir().display(),
        workers = node.workers_of(setpoint::node::DeviceId::FIRST),
        max_connections = limits.max_connections,
        systemd = notifier.is_enabled(),
        "setpoint serving"
    );
    node.start();
    let connections = Arc::new(setpoint::api::server::ConnectionStats::default());
    let app = setpoint::api::http::router(node.clone(), connections.clone());
    let stopping = notifier.clone();
    let drain_node = node.clone();
    let server = tokio::spawn(setpoint::api::server::serve(
        listener,
        app,
        limits,
        connections,
        async move {
            shutdown_signal().await;
            stopping.stopping();
        },
        // After the stop signal the requests in flight are answered, for drain_timeout_ms at
        // most (read when the signal comes: a reload may have changed it); those still
        // running then are failed by closing their connections.
        move || std::time::Duration::from_millis(drain_node.config().drain_timeout_ms),
    ));
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup_task(hangups, node.clone()));
    }
    // The socket is bound and the server task runs: connections are accepted from here on.
    notifier.ready(&node.status_line());
    let drained = server.await.context("http server task failed")?;
    if drained.requests_cut > 0 {
        tracing::warn!(
            "{} requests still in flight {} ms after the stop signal (drain_timeout_ms): \
             closed their connections",
            drained.requests_cut,
            node.config().drain_timeout_ms
        );
    }
    tracing::info!("stopping: checkpointing jobs and draining services");
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .context("shutdown failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The listener's limits: the configured cap, lowered to what the descriptor limit leaves
/// after `http.reserved_fds` (the soft limit is raised to the hard one first).
fn connection_limits(
    http: &setpoint::config::HttpConfig,
) -> anyhow::Result<setpoint::api::server::Limits> {
    use setpoint::util::fds;
    let fds = fds::raise_limit();
    let reserved = http.reserved_fds + setpoint::api::server::FD_OVERHEAD;
    let Some(budget) = fds::connection_budget(fds, http.max_connections, reserved) else {
        return Err(input_error(format!(
            "no file descriptor is left for connections: the open-file limit is {}, {} are \
             open, http.reserved_fds keeps {} and refusals take {}; raise the limit \
             (LimitNOFILE= in the unit, ulimit -n) or lower http.reserved_fds",
            fds.limit.unwrap_or(0),
            fds.open.unwrap_or(0),
            http.reserved_fds,
            setpoint::api::server::FD_OVERHEAD
        )));
    };
    if budget.lowered {
        tracing::warn!(
            "http.max_connections lowered from {} to {}: the open-file limit is {}, {} are \
             open, http.reserved_fds keeps {} for state and checkpoint files and refusals \
             take {}",
            http.max_connections,
            budget.max_connections,
            fds.limit.unwrap_or(0),
            fds.open.unwrap_or(0),
            http.reserved_fds,
            setpoint::api::server::FD_OVERHEAD
        );
    }
    Ok(setpoint::api::server::Limits::new(
        http,
        budget.max_connections,
    ))
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

fn hangup_stream() -> Option<Hangups> {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}; reload with POST /v1/reload");
            None
        }
    }
    #[cfg(not(unix))]
    None
}

/// Reloads the configuration on every SIGHUP, one reload at a time; the outcome is logged.
#[cfg(unix)]
async fn reload_on_hangup_task(mut hangups: Hangups, node: Arc<setpoint::node::Node>) {
    while hangups.recv().await.is_some() {
        tracing::info!("received SIGHUP");
        let node = node.clone();
        // The reload reads files and may load data for new jobs: off the async threads.
        if let Err(e) = tokio::task::spawn_blocking(move || node.reload()).await {
            tracing::error!("the reload failed: {e}");
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup_task(_: Hangups, _: Arc<setpoint::node::Node>) {}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}

// ---------------------------------------------------------------- client commands

/// A daemon's refusal (4xx) or unusable input is the user's to fix (exit 2); anything else,
/// an unreachable daemon or a 5xx included, is a failure while running (exit 1).
fn client_error(e: ClientError) -> anyhow::Error {
    if e.is_input() {
        input_error(e.to_string())
    } else {
        anyhow!(e)
    }
}

fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    Client::new(&args.url).map_err(client_error)
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    Ok(())
}

fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    Ok(())
}

fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let layers = parse_layers(&args.layers)?;
    let mut body = serde_json::Map::new();
    body.insert("name".into(), json!(args.name));
    body.insert("data".into(), json!(args.data));
    body.insert("layers".into(), json!(layers));
    if let Some(o) = args.optimizer {
        let name = match o {
            OptimizerArg::Adam => "adam",
            OptimizerArg::Sgd => "sgd",
        };
        body.insert("optimizer".into(), json!(name));
    }
    if let Some(lr) = args.lr {
        body.insert("lr".into(), json!(lr));
    }
    if let Some(b) = args.batch_size {
        body.insert("batch_size".into(), json!(b));
    }
    if let Some(e) = args.epochs {
        body.insert("epochs".into(), json!(e));
    }
    if let Some(t) = args.target_accuracy {
        body.insert("target_accuracy".into(), json!(t));
    }
    if let Some(d) = &args.deadline {
        body.insert("deadline".into(), json!(d));
    }
    if args.best_effort {
        body.insert("best_effort".into(), json!(true));
    }
    if let Some(s) = args.seed {
        body.insert("seed".into(), json!(s));
    }
    let job = client
        .post("/v1/jobs", &serde_json::Value::Object(body))
        .map_err(client_error)?;
    if args.client.json {
        return print_json(&job);
    }
    print_text(&format!(
        "submitted job {}\n{}",
        table::cell(&job["name"]),
        table::job_details(&job)
    ))
}

fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let json = args.client.json;
    let job_path = |id: &str| format!("/v1/jobs/{}", path_segment(id));
    match args.command.unwrap_or(JobsCommand::List) {
        JobsCommand::List => {
            let v = client.get("/v1/jobs").map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            let list = v["jobs"].as_array().cloned().unwrap_or_default();
            print_text(&table::jobs_table(&list))
        }
        JobsCommand::Show { id } => {
            let v = client.get(&job_path(&id)).map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            print_text(&table::job_details(&v))
        }
        JobsCommand::Update(u) => jobs_update(&client, u, json),
        JobsCommand::Cancel { id } => {
            let path = format!("{}?action=cancel", job_path(&id));
            let v = client.delete(&path).map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            print_text(&format!(
                "cancelled job {id}: it stops after its current step and keeps its last \
                 checkpoint\n{}",
                table::job_details(&v)
            ))
        }
        JobsCommand::Rm { id } => {
            let path = format!("{}?action=remove", job_path(&id));
            let v = client.delete(&path).map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            print_text(&format!(
                "removed job {id}: its record and checkpoints are deleted and its name is free\n"
            ))
        }
        JobsCommand::Serve(a) => jobs_serve(&client, a, json),
    }
}

fn jobs_update(client: &Client, u: JobsUpdateArgs, json: bool) -> anyhow::Result<()> {
    let mut patch = serde_json::Map::new();
    if let Some(d) = &u.deadline {
        patch.insert("deadline".into(), json!(d));
    }
    if u.no_deadline {
        patch.insert("deadline".into(), serde_json::Value::Null);
    }
    if let Some(t) = u.target_accuracy {
        patch.insert("target_accuracy".into(), json!(t));
    }
    if u.no_target {
        patch.insert("target_accuracy".into(), serde_json::Value::Null);
    }
    if let Some(e) = u.epochs {
        patch.insert("epochs".into(), json!(e));
    }
    if patch.is_empty() {
        return Err(input_error(
            "nothing to change: give --deadline, --no-deadline, --target-accuracy, \
             --no-target or --epochs",
        ));
    }
    let v = client
        .patch(
            &format!("/v1/jobs/{}", path_segment(&u.id)),
            &serde_json::Value::Object(patch),
        )
        .map_err(client_error)?;
    if json {
        return print_json(&v);
    }
    print_text(&format!("updated job {}\n{}", u.id, table::job_details(&v)))
}

fn jobs_serve(client: &Client, a: JobsServeArgs, json: bool) -> anyhow::Result<()> {
    let mut body = serde_json::Map::new();
    if let Some(n) = &a.name {
        body.insert("name".into(), json!(n));
    }
    body.insert("slo".into(), json!({"p99_ms": a.slo_p99_ms}));
    if let Some(b) = a.max_batch_size {
        body.insert("batching".into(), json!({"max_batch_size": b}));
    }
    let v = client
        .post(
            &format!("/v1/jobs/{}/serve", path_segment(&a.id)),
            &serde_json::Value::Object(body),
        )
        .map_err(client_error)?;
    if json {
        return print_json(&v);
    }
    print_text(&format!(
        "serving job {} as model {}\n{}",
        a.id,
        table::cell(&v["name"]),
        table::service_details(&v)
    ))
}

fn infer(args: InferArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let info = v2::model_info(&client, &args.model).map_err(client_error)?;
    let input = match (&args.json_input, args.random) {
        (Some(path), _) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("cannot read standard input")?;
                s
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| input_error(format!("cannot read {}: {e}", path.display())))?
            };
            v2::parse_input_file(&text, &info)
                .map_err(|e| input_error(format!("{}: {e}", path.display())))?
        }
        (None, Some(n)) => {
            if n == 0 || n > 1_000_000 {
                return Err(input_error(format!(
                    "--random must be between 1 and 1000000 rows, got {n}"
                )));
            }
            v2::InputFile::Rows {
                data: v2::random_rows(n, info.features, args.seed),
                rows: n,
            }
        }
        (None, None) => return Err(input_error("give --json-input FILE or --random N")),
    };
    let req = match (input, args.binary) {
        (v2::InputFile::Rows { data, rows }, false) => v2::EncodedRequest {
            body: v2::json_request(&info, &data, rows, false),
            header_len: None,
        },
        (v2::InputFile::Rows { data, rows }, true) => v2::binary_request(&info, &data, rows),
        (v2::InputFile::Body(body), false) => v2::EncodedRequest {
            body: body.to_string().into_bytes(),
            header_len: None,
        },
        (v2::InputFile::Body(body), true) => {
            let (data, rows) = v2::rows_of_body(&body, &info).map_err(input_error)?;
            v2::binary_request(&info, &data, rows)
        }
    };
    let raw = v2::infer(&client, &args.model, &req).map_err(client_error)?;
    let decoded = v2::decode_response(&raw).map_err(|message| {
        anyhow!(ClientError::BadResponse {
            method: "POST",
            url: client.url(&format!("/v2/models/{}/infer", path_segment(&args.model))),
            message,
        })
    })?;
    if args.client.json {
        // A JSON answer as it came; a binary one as its header with the values decoded into
        // each output's `data`.
        if raw.header_len.is_none() {
            let mut out = std::io::stdout().lock();
            out.write_all(&raw.body)?;
            writeln!(out)?;
            return Ok(());
        }
        return print_json(&decoded.json);
    }
    let output = decoded
        .outputs
        .iter()
        .find(|o| o.name == info.output_name)
        .or_else(|| decoded.outputs.first())
        .ok_or_else(|| anyhow!("the response of model {} holds no output", args.model))?;
    let classes = output
        .shape
        .last()
        .copied()
        .filter(|&c| c > 0)
        .map(|c| c as usize)
        .or(info.classes)
        .ok_or_else(|| anyhow!("the response's output has no class dimension"))?;
    let mut t = table::Table::new(&["ROW", "CLASS", "PROBABILITY"]).right_align(&[0, 1, 2]);
    for (i, (c, p)) in v2::argmax_rows(&output.data, classes).iter().enumerate() {
        t.row(vec![(i + 1).to_string(), c.to_string(), format!("{p:.6}")]);
    }
    print_text(&t.render())
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let v = client.get("/v1/status").map_err(client_error)?;
    if args.client.json {
        return print_json(&v);
    }
    print_text(&table::status_text(&v))
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Http(a) => bench_http(a),
        BenchCommand::Scenario(a) => bench_scenario(a),
        BenchCommand::Soak(a) => bench_soak(a),
    }
}

fn bench_soak(a: cli::BenchSoakArgs) -> anyhow::Result<()> {
    use setpoint::bench::soak;
    let duration = parse_duration_arg("--duration", &a.duration)?;
    let window = parse_duration_arg("--window", &a.window)?;
    let probe_every = parse_duration_arg("--probe-every", &a.probe_every)?;
    let period = parse_duration_arg("--period", &a.period)?;
    if duration.is_zero() || window.is_zero() {
        return Err(input_error(
            "--duration and --window must be more than zero",
        ));
    }
    let rate: soak::Rate = a.rate.parse().map_err(input_error)?;
    let job_layers = parse_layers(&a.job_layers)?;
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
    };
    let chatty = !a.json && std::io::stderr().is_terminal();
    let report = soak::run(&spec, &mut |line: &str| {
        if chatty {
            eprintln!("{line}");
        }
    })
    .map_err(|e| match e {
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

fn bench_scenario(a: cli::BenchScenarioArgs) -> anyhow::Result<()> {
    use setpoint::bench::{report, scenario};
    let mut s = scenario::Scenario::load(&a.file).map_err(|e| input_error(e.to_string()))?;
    if let Some(p) = &a.policies {
        s.policies = p.split(',').map(|x| x.trim().to_string()).collect();
    }
    if let Some(d) = a.duration {
        s.duration_s = d;
    }
    let s =
        scenario::Scenario::parse(&toml::to_string(&s).context("cannot re-encode the scenario")?)
            .map_err(|e| input_error(format!("{}: {e}", a.file.display())))?;
    let quiet = a.json;
    let mut cross = if a.nvidia_smi {
        Some(
            setpoint::bench::smi::CrossCheck::start(100)
                .map_err(|e| anyhow!("--nvidia-smi: {e}"))?,
        )
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
        setpoint::util::fsio::write_atomic(path, report::svg(&r).as_bytes())
            .with_context(|| format!("cannot write the plot {}", path.display()))?;
    }
    // Energy per policy from the GPU's counter (or its power), and the phase's whole energy
    // per 1,000 requests and per training epoch finished (inference and training share the
    // phase, so neither figure is the energy of that work alone).
    let energy: Vec<serde_json::Value> = cross
        .iter()
        .flat_map(|c| c.correlation.phases.iter())
        .map(|ph| {
            let policy = r.policies.iter().find(|p| p.policy == ph.phase);
            let requests = policy.map_or(0, |p| p.requests);
            let epochs: u32 = policy.map_or(0, |p| p.jobs.iter().map(|j| j.epochs_done).sum());
            json!({
                "policy": ph.phase,
                "gpu": ph.gpu,
                "energy_j": ph.energy_j,
                "joules_per_1000_requests": ph.energy_j.filter(|_| requests > 0).map(|e| e * 1000.0 / requests as f64),
                "training_epochs": epochs,
                "joules_per_training_epoch": ph.energy_j.filter(|_| epochs > 0).map(|e| e / epochs as f64),
                "mean_util_pct": ph.mean_util_pct,
                "mean_power_w": ph.mean_power_w,
            })
        })
        .collect();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(c) = &cross {
            v["nvidia_smi"] = json!({ "cross_check": c, "energy": energy });
        }
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", report::text(&r));
        if let Some(c) = &cross {
            println!();
            print!("{}", c.correlation.render_text());
            for e in &energy {
                println!(
                    "energy {} gpu {}: {} J, {} J per 1,000 requests, {} J per training epoch",
                    e["policy"].as_str().unwrap_or("?"),
                    e["gpu"],
                    e["energy_j"]
                        .as_f64()
                        .map_or("-".into(), |x| format!("{x:.1}")),
                    e["joules_per_1000_requests"]
                        .as_f64()
                        .map_or("-".into(), |x| format!("{x:.2}")),
                    e["joules_per_training_epoch"]
                        .as_f64()
                        .map_or("-".into(), |x| format!("{x:.1}"))
                );
            }
        }
        if let Some(path) = &a.plot {
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

fn parse_duration_arg(flag: &str, text: &str) -> anyhow::Result<std::time::Duration> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        input_error(format!(
            "{flag}: expected a duration such as 10s, 500ms or 1m, got {text:?} ({e})"
        ))
    })
}

fn bench_http(a: BenchHttpArgs) -> anyhow::Result<()> {
    let mut concurrency = Vec::new();
    for part in a
        .concurrency
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
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
    let duration = parse_duration_arg("--duration", &a.duration)?;
    if duration.is_zero() {
        return Err(input_error("--duration must be more than zero"));
    }
    let warmup = parse_duration_arg("--warmup", &a.warmup)?;
    let client = connect(&a.client)?;
    let spec = sp_client::bench::BenchSpec {
        model: a.model.clone(),
        concurrency,
        duration,
        warmup,
        seed: a.seed,
    };
    let chatty = std::io::stderr().is_terminal();
    let report = sp_client::bench::run(&client, &spec, |line| {
        if chatty {
            eprintln!("{line}");
        }
    })
    .map_err(client_error)?;
    if a.client.json {
        let v = serde_json::to_value(&report).context("cannot render the report as JSON")?;
        return print_json(&v);
    }
    print_text(&sp_client::bench::render(&report))
}

fn kernels_cmd(args: KernelsArgs) -> anyhow::Result<()> {
    match args.command {
        KernelsCommand::Check(a) => kernels_check(a),
        KernelsCommand::Ptx(a) => kernels_ptx(a),
    }
}

/// `setpoint kernels ptx --write | --check`.
fn kernels_ptx(a: KernelsPtxArgs) -> anyhow::Result<()> {
    use kernels::aot::{self, Comparison};
    let sources = kernels::sources();
    if sources.is_empty() {
        return Err(KernelError::NoSources.into());
    }
    if a.write {
        std::fs::create_dir_all(&a.dir)
            .with_context(|| format!("cannot create {}", a.dir.display()))?;
    }
    let mut differ = Vec::new();
    let mut other_nvrtc = None;
    for s in sources {
        let fresh = aot::render(s)?;
        let path = aot::path(&a.dir, s.module);
        if a.write {
            setpoint::util::fsio::write_atomic(&path, fresh.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {} ({} bytes)", path.display(), fresh.len());
            continue;
        }
        match aot::compare(&a.dir, s.module, &fresh) {
            Comparison::Same => println!("{}: same", path.display()),
            Comparison::Missing => differ.push(format!("{}: missing", path.display())),
            Comparison::Differs { line } => {
                differ.push(format!("{}: differs from line {line}", path.display()))
            }
            Comparison::OtherNvrtc { file } => other_nvrtc = Some(file),
        }
    }
    if let Some(file) = other_nvrtc {
        eprintln!(
            "error: {} was made by NVRTC {file} and this is NVRTC {}; compare with that \
             version (scripts/cuda-tools.sh installs the pinned one)",
            a.dir.display(),
            kernels::nvrtc::version()?
        );
        std::process::exit(2);
    }
    if !differ.is_empty() {
        return Err(anyhow!(
            "{} differ from what NVRTC makes of the sources: {}; run `setpoint kernels ptx \
             --write` and commit the result",
            a.dir.display(),
            differ.join("; ")
        ));
    }
    Ok(())
}

/// One kernel module's outcome in `kernels check`.
struct ModuleCheck {
    module: &'static str,
    origin: Option<PtxOrigin>,
    ptx_bytes: usize,
    nvrtc_log: String,
    /// Kernel names: the source's `extern "C" __global__` functions, then any other PTX entry.
    kernels: Vec<String>,
    /// From ptxas, when it ran and succeeded.
    resources: Option<Vec<KernelResources>>,
    ptxas_warnings: Vec<String>,
    error: Option<String>,
}

fn kernels_check(a: KernelsCheckArgs) -> anyhow::Result<()> {
    let arch = CudaArch::parse(&a.arch)?;
    let sources = kernels::sources();
    if sources.is_empty() {
        return Err(KernelError::NoSources.into());
    }
    let ptxas = kernels::find_ptxas(a.ptxas.as_deref())?;
    let all_prebuilt = kernels::prebuilt_arch() == Some(arch.compute().as_str())
        && sources.iter().all(|s| s.prebuilt_ptx.is_some());
    // Without NVRTC nothing below can work; say so once rather than once per module.
    let nvrtc_version = if all_prebuilt {
        kernels::nvrtc::version().ok()
    } else {
        Some(kernels::nvrtc::version()?)
    };
    let ptxas_version = ptxas.as_deref().and_then(kernels::ptxas_version);
    // Modules are independent; NVRTC and ptxas take seconds on the larger ones.
    let checks: Vec<ModuleCheck> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|s| {
                let (arch, cache, ptxas) = (&arch, a.cache_dir.as_deref(), ptxas.as_deref());
                (s, scope.spawn(move || check_module(s, cache, arch, ptxas)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(s, h)| {
                h.join().unwrap_or_else(|_| ModuleCheck {
                    error: Some("the check of this module panicked".into()),
                    ..empty_check(s)
                })
            })
            .collect()
    });
    let failed = checks.iter().filter(|c| c.error.is_some()).count();
    if a.json {
        print_json(&kernels_check_json(
            &checks,
            &arch,
            nvrtc_version.as_deref(),
            ptxas.as_deref(),
            ptxas_version.as_deref(),
        ))?;
        if ptxas.is_none() {
            eprintln!("{}", no_ptxas_note());
        }
    } else {
        print_text(&kernels_check_text(
            &checks,
            &arch,
            nvrtc_version.as_deref(),
            ptxas.as_deref(),
            ptxas_version.as_deref(),
        ))?;
    }
    if failed > 0 {
        let names: Vec<&str> = checks
            .iter()
            .filter(|c| c.error.is_some())
            .map(|c| c.module)
            .collect();
        let mut msg = format!(
            "{failed} of {} kernel modules failed: {}",
            checks.len(),
            names.join(", ")
        );
        if a.json {
            // The JSON holds the details; repeat them where people look.
            for c in checks.iter().filter(|c| c.error.is_some()) {
                msg.push_str(&format!(
                    "\n{}: {}",
                    c.module,
                    c.error.as_deref().unwrap_or("")
                ));
            }
        }
        return Err(anyhow!(msg));
    }
    Ok(())
}

fn empty_check(s: &KernelSource) -> ModuleCheck {
    ModuleCheck {
        module: s.module,
        origin: None,
        ptx_bytes: 0,
        nvrtc_log: String::new(),
        kernels: kernels::kernel_names(s.source),
        resources: None,
        ptxas_warnings: Vec::new(),
        error: None,
    }
}

fn check_module(
    s: &'static KernelSource,
    cache_dir: Option<&Path>,
    arch: &CudaArch,
    ptxas: Option<&Path>,
) -> ModuleCheck {
    let mut c = empty_check(s);
    let loaded = match kernels::load_module(s, cache_dir, arch) {
        Ok(l) => l,
        Err(e) => {
            c.error = Some(e.to_string());
            return c;
        }
    };
    c.origin = Some(loaded.origin);
    c.ptx_bytes = loaded.ptx.len();
    c.nvrtc_log = loaded.nvrtc_log;
    let entries = kernels::ptx_entries(&loaded.ptx);
    let absent: Vec<&str> = c
        .kernels
        .iter()
        .filter(|k| !entries.contains(k))
        .map(String::as_str)
        .collect();
    if !absent.is_empty() {
        c.error = Some(format!(
            "the PTX lacks kernels the source declares extern \"C\" __global__: {}",
            absent.join(", ")
        ));
        return c;
    }
    for e in entries {
        if !c.kernels.contains(&e) {
            c.kernels.push(e);
        }
    }
    if c.kernels.is_empty() {
        c.error = Some("the module defines no extern \"C\" __global__ kernel".into());
        return c;
    }
    if let Some(ptxas) = ptxas {
        match kernels::ptxas_assemble(&loaded.ptx, arch, ptxas) {
            Ok(r) => {
                c.resources = Some(r.kernels);
                c.ptxas_warnings = r.warnings;
            }
            Err(e) => c.error = Some(e.to_string()),
        }
    }
    c
}

/// What compiled kernel code the binary carries, in words.
fn embedded_kernels_text() -> String {
    match (kernels::prebuilt_arch(), kernels::sass_arch()) {
        (Some(p), Some(s)) => format!("{p} PTX and {s} machine code (no NVRTC needed there)"),
        (Some(p), None) => format!("{p} PTX (ptxas was absent at build time: no machine code)"),
        _ => "no compiled kernels (kernels/ptx is stale or missing): NVRTC compiles them".into(),
    }
}

fn no_ptxas_note() -> String {
    format!(
        "ptxas not found (--ptxas, $PTXAS, PATH, ./{}): the kernels were compiled to PTX but \
         not assembled, so registers, shared memory and spills are not reported; \
         scripts/cuda-tools.sh installs ptxas",
        kernels::LOCAL_PTXAS
    )
}

fn kernels_check_text(
    checks: &[ModuleCheck],
    arch: &CudaArch,
    nvrtc_version: Option<&str>,
    ptxas: Option<&Path>,
    ptxas_version: Option<&str>,
) -> String {
    let mut out = format!(
        "kernels check for {arch}: NVRTC {}, ptxas {}\nthe binary carries: {}\n",
        nvrtc_version.unwrap_or("not loaded"),
        match (ptxas, ptxas_version) {
            (Some(p), Some(v)) => format!("{v} ({})", p.display()),
            (Some(p), None) => p.display().to_string(),
            (None, _) => "not found".into(),
        },
        embedded_kernels_text()
    );
    if ptxas.is_none() {
        out.push_str(&no_ptxas_note());
        out.push('\n');
    }
    out.push('\n');
    let mut table = setpoint::client::table::Table::new(&[
        "module",
        "kernel",
        "ptx",
        "registers",
        "smem_bytes",
        "spill_store_bytes",
        "spill_load_bytes",
    ])
    .right_align(&[3, 4, 5, 6]);
    let dash = || "-".to_string();
    for c in checks {
        let origin = c.origin.map_or("-", PtxOrigin::as_str).to_string();
        if c.error.is_some() && c.resources.is_none() && c.origin.is_none() {
            table.row(vec![c.module.into(), dash(), "FAILED".into()]);
            continue;
        }
        for k in &c.kernels {
            let r = c
                .resources
                .as_ref()
                .and_then(|rs| rs.iter().find(|r| &r.kernel == k));
            let mut row = vec![c.module.to_string(), k.clone(), origin.clone()];
            match r {
                Some(r) => row.extend([
                    r.registers.to_string(),
                    r.smem_bytes.to_string(),
                    r.spill_store_bytes.to_string(),
                    r.spill_load_bytes.to_string(),
                ]),
                None if c.error.is_some() => row.extend(["FAILED".into(), dash(), dash(), dash()]),
                None => row.extend([dash(), dash(), dash(), dash()]),
            }
            table.row(row);
        }
    }
    out.push_str(&table.render());
    for c in checks {
        if !c.nvrtc_log.is_empty() {
            out.push_str(&format!(
                "\nNVRTC messages for {}:\n{}\n",
                c.module, c.nvrtc_log
            ));
        }
        for w in &c.ptxas_warnings {
            out.push_str(&format!("\nptxas warning for {}: {w}\n", c.module));
        }
        if let Some(e) = &c.error {
            out.push_str(&format!("\n{} FAILED: {e}\n", c.module));
        }
    }
    let kernels: usize = checks.iter().map(|c| c.kernels.len()).sum();
    let spilling: Vec<&str> = checks
        .iter()
        .filter_map(|c| c.resources.as_ref())
        .flatten()
        .filter(|r| r.spill_store_bytes > 0 || r.spill_load_bytes > 0)
        .map(|r| r.kernel.as_str())
        .collect();
    let failed = checks.iter().filter(|c| c.error.is_some()).count();
    out.push('\n');
    if failed > 0 {
        out.push_str(&format!("{failed} of {} modules failed\n", checks.len()));
    } else {
        let how = if ptxas.is_some() {
            format!("compiled and assembled for {arch}")
        } else {
            format!("compiled to PTX for {} (not assembled)", arch.compute())
        };
        out.push_str(&format!(
            "{kernels} kernels in {} modules {how}\n",
            checks.len()
        ));
    }
    if ptxas.is_some() {
        if spilling.is_empty() {
            out.push_str("no register spills\n");
        } else {
            out.push_str(&format!(
                "register spills (reported, not a failure): {}\n",
                spilling.join(", ")
            ));
        }
    }
    out
}

fn kernels_check_json(
    checks: &[ModuleCheck],
    arch: &CudaArch,
    nvrtc_version: Option<&str>,
    ptxas: Option<&Path>,
    ptxas_version: Option<&str>,
) -> serde_json::Value {
    let modules: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            let kernels: Vec<serde_json::Value> = c
                .kernels
                .iter()
                .map(|k| {
                    let r = c
                        .resources
                        .as_ref()
                        .and_then(|rs| rs.iter().find(|r| &r.kernel == k));
                    json!({
                        "name": k,
                        "compiled": c.origin.is_some(),
                        "assembled": r.is_some(),
                        "registers": r.map(|r| r.registers),
                        "smem_bytes": r.map(|r| r.smem_bytes),
                        "barriers": r.and_then(|r| r.barriers),
                        "stack_frame_bytes": r.map(|r| r.stack_frame_bytes),
                        "spill_store_bytes": r.map(|r| r.spill_store_bytes),
                        "spill_load_bytes": r.map(|r| r.spill_load_bytes),
                    })
                })
                .collect();
            json!({
                "module": c.module,
                "ok": c.error.is_none(),
                "ptx_origin": c.origin,
                "ptx_bytes": c.ptx_bytes,
                "nvrtc_log": c.nvrtc_log,
                "ptxas_warnings": c.ptxas_warnings,
                "error": c.error,
                "kernels": kernels,
            })
        })
        .collect();
    json!({
        "ok": checks.iter().all(|c| c.error.is_none()),
        "arch": arch.sm(),
        "embedded": { "ptx": kernels::prebuilt_arch(), "sass": kernels::sass_arch() },
        "nvrtc_version": nvrtc_version,
        "ptxas": ptxas,
        "ptxas_version": ptxas_version,
        "modules": modules,
    })
}

fn gpu_check(a: GpuCheckArgs) -> anyhow::Result<()> {
    use setpoint::bench::gpu::{self, Status};
    if let Some(s) = a.seconds
        && !(s.is_finite() && s > 0.0 && s <= 3600.0)
    {
        return Err(input_error(format!(
            "--seconds must be a number of seconds above 0 and at most 3600, got {s}"
        )));
    }
    let section = a.section;
    let opts = gpu::GpuCheckOptions {
        section,
        gpu: a.gpu,
        digits: a.digits,
        cache_dir: a.cache_dir,
        seconds: a.seconds,
        dry_run: a.dry_run,
    };
    let done = gpu::run_section(&opts);
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    setpoint::util::fsio::write_atomic(&a.out, done.json.as_bytes())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let status = match done.status {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Skipped => "skipped",
    };
    println!("{}: {status}", section.as_str());
    if let Some(why) = &done.reason {
        println!("  reason: {why}");
    }
    for line in &done.headline {
        println!("  {line}");
    }
    match done.status {
        Status::Pass | Status::Skipped => Ok(()),
        Status::Fail => Err(anyhow!(
            "gpu-check {} failed: {}; see {}",
            section.as_str(),
            done.reason.as_deref().unwrap_or("no reason recorded"),
            a.out.display()
        )),
    }
}

fn devices(a: DevicesArgs) -> anyhow::Result<()> {
    use setpoint::telemetry::{NvmlSource, TelemetrySource, devices_report};
    let cores = a
        .cpu_threads
        .filter(|&n| n > 0)
        .unwrap_or_else(setpoint::device::cpu::available_cores);
    let mut opened = NvmlSource::open().map_err(|e| e.to_string());
    let source = match opened.as_mut() {
        Ok(s) => Ok(s as &mut dyn TelemetrySource),
        Err(why) => Err(why.clone()),
    };
    // The daemon's lanes run on the CPU backend in this version: none sits on a GPU.
    let text = devices_report(source, cores, &[], a.json);
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}
