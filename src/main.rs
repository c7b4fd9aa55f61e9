//! The `setpoint` command: parse, set up logging, run the command ([`setpoint::commands`]),
//! map errors to exit codes (0 success, 1 runtime failure, 2 usage or input error).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use setpoint::cli::{Cli, Command};
use setpoint::commands::{self, InputError};
use setpoint::data::DataError;
use setpoint::kernels::KernelError;
use setpoint::model::ModelError;
use setpoint::model::checkpoint::CheckpointError;
use setpoint::train::TrainError;

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
    let default_level = if long_running(&cli.command) {
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", commands::render(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Runs the command given.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Predict(args) => commands::predict::run(args),
        Command::CheckConfig(args) => commands::check_config::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Submit(args) => commands::jobs::submit(args),
        Command::Jobs(args) => commands::jobs::run(args),
        Command::Services(args) => commands::services::run(args),
        Command::Reload(args) => commands::reload::run(args),
        Command::Infer(args) => commands::infer::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Kernels(args) => commands::kernels::run(args),
        Command::GpuCheck(args) => commands::gpu_check::run(args),
        Command::Devices(args) => commands::devices::run(args),
        #[cfg(feature = "kubernetes")]
        Command::Operator(args) => commands::operator::run(args),
        #[cfg(feature = "kubernetes")]
        Command::Tenant(args) => commands::tenant::run(args),
    }
}

/// Whether the command runs until stopped and logs what it does.
fn long_running(command: &Command) -> bool {
    #[cfg(feature = "kubernetes")]
    if matches!(command, Command::Operator(_) | Command::Tenant(_)) {
        return true;
    }
    matches!(command, Command::Serve(_))
}

/// 2 for errors in what the user gave, 1 for failures while running.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(exit) = cause.downcast_ref::<commands::Exit>() {
            return exit.code;
        }
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
