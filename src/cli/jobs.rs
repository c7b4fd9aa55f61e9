//! The arguments of `setpoint submit` and `setpoint jobs …`.

use clap::{Args, Subcommand};

use super::{ClientArgs, OptimizerArg, PrecisionArg};
use crate::config::ReplicaSpec;

/// `setpoint submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Unique job name (A-Z a-z 0-9 _ . -), also its id.
    #[arg(long)]
    pub name: String,
    /// Training data on the daemon's host: a CSV or IDX path, or
    /// synthetic:blobs|spirals[:size=N,classes=N,features=N,seed=N,noise=X].
    #[arg(long, value_name = "PATH|synthetic:...")]
    pub data: String,
    /// Layer widths, input first, such as 64,128,10.
    #[arg(long, value_name = "W,W,...")]
    pub layers: String,
    /// Optimiser [daemon default: adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// Learning rate [daemon default: 0.001 for adam, 0.05 for sgd].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Mini-batch size [daemon default: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epoch limit [daemon default: 50].
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Stop once validation accuracy reaches this fraction, such as 0.95.
    #[arg(long)]
    pub target_accuracy: Option<f64>,
    /// When the job must finish: a duration after submission ("90s", "10m", "1h 30m") or
    /// an RFC 3339 time ("2026-11-28T14:30:00Z").
    #[arg(long, value_name = "DURATION|RFC3339")]
    pub deadline: Option<String>,
    /// No deadline guarantee: the job runs on capacity the set points leave over.
    #[arg(long)]
    pub best_effort: bool,
    /// Seed of initial weights, split and shuffles [daemon default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number format of the matrix products [daemon default: f32].
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `setpoint jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// What to do; `list` when absent.
    #[command(subcommand)]
    pub command: Option<JobsCommand>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `setpoint jobs …` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// One line per job (GET /v1/jobs).
    List,
    /// One job in detail (GET /v1/jobs/ID).
    Show {
        /// Job name.
        id: String,
    },
    /// Change a job's deadline, target accuracy or epoch limit (PATCH /v1/jobs/ID).
    Update(JobsUpdateArgs),
    /// Cancel a job that has not ended; its last checkpoint is kept (DELETE
    /// /v1/jobs/ID?action=cancel).
    Cancel {
        /// Job name.
        id: String,
    },
    /// Remove a job that has ended, with its checkpoints and log, freeing its name (DELETE
    /// /v1/jobs/ID?action=remove); or every job that ended before a time (DELETE
    /// /v1/jobs?ended_before=T).
    #[command(visible_alias = "remove")]
    Rm(JobsRmArgs),
    /// A job's log: when it was admitted, loaded and started, each epoch's loss, accuracy
    /// and share, its share moving, changes, checkpoint trouble and how it ended (GET
    /// /v1/jobs/ID/events).
    Logs(JobsLogsArgs),
    /// Serve a completed job's model as an inference service (POST /v1/jobs/ID/serve).
    Serve(JobsServeArgs),
    /// Wait until a job ends, polling GET /v1/jobs/ID, and print its state and outcome.
    ///
    /// Exit codes: 0 the job completed and met its set points (its deadline, its target
    /// accuracy, where it has them); 1 it ended otherwise (failed, cancelled, a deadline or
    /// target missed), or the daemon could not be reached; 2 no such job or bad usage; 3 the
    /// --timeout passed before the job ended.
    Wait(JobsWaitArgs),
}

/// `setpoint jobs rm`: one job by name, or the ended jobs by age.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "ended_before"])))]
pub struct JobsRmArgs {
    /// Job name.
    pub id: Option<String>,
    /// Remove every job that ended before this time: an RFC 3339 time
    /// (2026-12-01T00:00:00Z) or an age (7d: ended more than 7 days ago; 0s: every ended
    /// job). Jobs that have not ended are never removed.
    #[arg(long, value_name = "TIME|AGE")]
    pub ended_before: Option<String>,
}

/// `setpoint jobs logs`.
#[derive(Debug, Args)]
pub struct JobsLogsArgs {
    /// Job name.
    pub id: String,
    /// Keep printing events as they happen, until the job ends (Ctrl-C to stop earlier).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N events before following or exiting [default: all kept, up to
    /// 10,000].
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

/// `setpoint jobs wait`.
#[derive(Debug, Args)]
pub struct JobsWaitArgs {
    /// Job name.
    pub id: String,
    /// Give up after this long ("30s", "10m", "1h 30m") [default: wait as long as it takes].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

/// `setpoint jobs update`.
#[derive(Debug, Args)]
pub struct JobsUpdateArgs {
    /// Job name.
    pub id: String,
    /// New deadline: a duration from now ("10m") or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|RFC3339", conflicts_with = "no_deadline")]
    pub deadline: Option<String>,
    /// Remove the deadline.
    #[arg(long)]
    pub no_deadline: bool,
    /// New target validation accuracy, in (0, 1].
    #[arg(long, conflicts_with = "no_target")]
    pub target_accuracy: Option<f64>,
    /// Remove the target: run to the epoch limit.
    #[arg(long)]
    pub no_target: bool,
    /// New epoch limit.
    #[arg(long)]
    pub epochs: Option<u32>,
}

/// `setpoint jobs serve`.
#[derive(Debug, Args)]
pub struct JobsServeArgs {
    /// Job name (it must have completed).
    pub id: String,
    /// Service name, as in /v2/models/NAME [default: the job's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Response-time objective: the 99th percentile, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub slo_p99_ms: f64,
    /// Largest batch the batcher forms [daemon default: 32].
    #[arg(long)]
    pub max_batch_size: Option<usize>,
    /// Number format of the model's matrix products [daemon default: f32].
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Devices to run replicas on, comma-separated, each gpu, gpu:*, cuda:N, cpu, cpu:* or
    /// cpu:N (such as gpu,cpu): the controller splits the rows between them [daemon default:
    /// one replica, on the device whose tenants hold the least share].
    #[arg(long, value_name = "DEVICES", value_delimiter = ',', value_parser = replica)]
    pub replicas: Vec<ReplicaSpec>,
}

/// One entry of `--replicas`.
fn replica(s: &str) -> Result<ReplicaSpec, String> {
    ReplicaSpec::parse(s).ok_or_else(|| format!("expected {}", ReplicaSpec::ACCEPTED))
}
