//! Command-line definitions (clap). Behaviour lives in `main.rs` and the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// setpoint: a node-level GPU scheduler for ML training jobs with deadlines and inference
/// services with response-time SLOs.
#[derive(Debug, Parser)]
#[command(name = "setpoint", version = setpoint::VERSION, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train an MLP in the foreground on a data file or synthetic data.
    Train(TrainArgs),
    /// Predict with a checkpoint: accuracy on labelled data, or one prediction per row.
    Predict(PredictArgs),
    /// Validate a node configuration file and print what was understood.
    CheckConfig(CheckConfigArgs),
    /// Run the daemon: inference services and training jobs behind an HTTP API.
    Serve(ServeArgs),
}

/// `setpoint serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); the embedded default when absent.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, overriding the config's `listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// State directory, overriding the config's `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Optimisers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// Adam (default learning rate 0.001).
    Adam,
    /// SGD with momentum (default learning rate 0.05).
    Sgd,
}

/// Options shared by commands that read data.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Labels file for IDX image data (default: found by the MNIST naming convention).
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Name of the CSV label column (needs a header row; default: the last column).
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
}

/// `setpoint train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Data: a CSV file (optionally gzipped), an IDX file, or
    /// synthetic:blobs|spirals[:size=N,classes=N,features=N,seed=N,noise=X].
    #[arg(
        long,
        value_name = "PATH|synthetic:...",
        default_value = "synthetic:blobs"
    )]
    pub data: String,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Layer widths, input first, such as 64,128,10 (default: FEATURES,128,CLASSES of the
    /// data, or the checkpoint's when resuming).
    #[arg(long, value_name = "W,W,...")]
    pub layers: Option<String>,
    /// Mini-batch size [default: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epoch limit [default: 50].
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Optimiser [default: adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// Learning rate [default: 0.001 for adam, 0.05 for sgd].
    #[arg(long)]
    pub lr: Option<f32>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f32>,
    /// L2 weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Stop once validation accuracy reaches this fraction, such as 0.95.
    #[arg(long)]
    pub target_accuracy: Option<f64>,
    /// Fraction of rows held out for validation [default: 0.2].
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Seed of initial weights, split and shuffles [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// CPU worker threads (0 = one per core). Same seed and same threads give
    /// bit-identical results.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write checkpoints to this file (atomically), every --checkpoint-every steps and at
    /// the end.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0 = only at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Resume the run saved in this checkpoint (checkpoints go back to the same file unless
    /// --checkpoint says otherwise).
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,
    /// Print exactly one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `setpoint predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Checkpoint holding the model and its normalisation.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Data: with a label column, accuracy is reported; without, one prediction per row.
    #[arg(long, value_name = "PATH")]
    pub data: String,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// CPU worker threads (0 = one per core).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `setpoint check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Configuration file (TOML); the embedded default when absent.
    pub file: Option<PathBuf>,
    /// Print the understood configuration as JSON.
    #[arg(long)]
    pub json: bool,
}
