//! The `setpoint` commands, one module each (or one per group of subcommands): what each does
//! with its parsed arguments ([`crate::cli`]). `main.rs` only parses, sets up logging,
//! dispatches here and maps the error to an exit code.

pub mod bench;
pub mod check_config;
pub mod devices;
mod error;
pub mod gpu_check;
pub mod infer;
pub mod jobs;
pub mod kernels;
mod logs;
#[cfg(feature = "kubernetes")]
pub mod operator;
mod output;
pub mod predict;
pub mod reload;
pub mod serve;
pub mod services;
pub mod status;
#[cfg(feature = "kubernetes")]
pub mod tenant;
pub mod train;
mod wait;

pub use error::{Exit, InputError, input_error, render};

use anyhow::anyhow;

use crate::cli::DataArgs;
use crate::data::{LabelColumn, LoadOptions};
use crate::device::{CpuBackend, DeviceError};

/// How `--label-column` and `--labels` ask for the data to be loaded.
fn load_options(args: &DataArgs) -> LoadOptions {
    LoadOptions {
        label: match &args.label_column {
            Some(name) => LabelColumn::Named(name.clone()),
            None => LabelColumn::Last,
        },
        labels_path: args.labels.clone(),
    }
}

/// The CPU backend with `--threads` workers (0: one per core).
fn cpu_backend(threads: usize) -> anyhow::Result<CpuBackend> {
    if threads > 1024 {
        return Err(input_error(format!(
            "--threads must be between 0 and 1024, got {threads}"
        )));
    }
    CpuBackend::new(threads).map_err(|e: DeviceError| anyhow!(e))
}
