//! Command-line definitions (clap): the arguments of every `setpoint` command. Behaviour lives
//! in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod bench;
mod jobs;
#[cfg(feature = "kubernetes")]
mod operator;
pub use bench::{BenchArgs, BenchCommand, BenchHttpArgs, BenchScenarioArgs, BenchSoakArgs};
pub use jobs::{
    JobsArgs, JobsCommand, JobsLogsArgs, JobsRmArgs, JobsServeArgs, JobsUpdateArgs, JobsWaitArgs,
    SubmitArgs,
};
#[cfg(feature = "kubernetes")]
pub use operator::{CapacityArg, DeviceArg, OperatorArgs, TenantArgs};

/// setpoint: a node-level GPU scheduler for ML training jobs with deadlines and inference
/// services with response-time SLOs.
#[derive(Debug, Parser)]
#[command(name = "setpoint", version = crate::VERSION, propagate_version = true)]
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
    /// Submit a training job to a running daemon (POST /v1/jobs).
    Submit(SubmitArgs),
    /// List, show, change, cancel, remove or serve the daemon's training jobs.
    Jobs(JobsArgs),
    /// List, show or remove the daemon's inference services (/v1/services).
    Services(ServicesArgs),
    /// Read the daemon's configuration file again and print what changed (POST /v1/reload).
    ///
    /// Exits 0 when the file was applied (changed or not), 2 when the daemon refused it (each
    /// problem is printed with its key; the running configuration is kept).
    Reload(ReloadArgs),
    /// Send an inference request to a model the daemon serves (v2 protocol).
    Infer(InferArgs),
    /// Show the daemon's devices and tenants with their set points (GET /v1/status).
    Status(StatusArgs),
    /// Benchmarks against a running daemon.
    Bench(BenchArgs),
    /// Check the CUDA kernels built into this binary (no GPU needed).
    Kernels(KernelsArgs),
    /// Run one GPU check or measurement on this host's GPU and write it as JSON.
    ///
    /// One section per process, so that a device check can give each its own time limit:
    /// `kernels` (every kernel against the CPU backend, every GEMM layout, bf16 up to 4096),
    /// `gemm` (the backend's GEMM TFLOP/s), `training` (samples/s on the GPU and the CPU
    /// backend), `lanes` and `lanes-green` (two lanes at shares 0.25/0.75 as CTA budgets or
    /// green contexts: throughput ratio and isolation), `inference` (p99 alone and beside
    /// training with and without stream priority), `nvml` (NVML against nvidia-smi). Writes
    /// the section's JSON to --out and its headline to stdout. Exits 1 when the section fails
    /// (no usable GPU, an error, or a check out of bounds). scripts/device-check/ runs every
    /// section this way.
    GpuCheck(GpuCheckArgs),
    /// This host's devices as NVML reports them (like nvidia-smi) and the CPU backend.
    ///
    /// Index, name, UUID, memory, utilisation, power, SM clock, temperature and processes of
    /// every GPU; without NVML (no driver, no GPU) one line saying why, then the CPU backend
    /// that is used instead. Always exits 0.
    Devices(DevicesArgs),
    /// Run the Kubernetes operator: turns SetpointJob and SetpointService objects into
    /// ResourceClaimTemplates and tenant pods, and writes each tenant's measured state back
    /// to its object's status.
    #[cfg(feature = "kubernetes")]
    Operator(OperatorArgs),
    /// Follow this pod's tenant on its node (run by the operator's tenant pods).
    ///
    /// Reads SETPOINT_ENDPOINT, SETPOINT_TENANT and SETPOINT_TENANT_KIND, which the setpoint
    /// DRA driver's CDI device sets. For a job, exits 0 when it completes and 1 when it
    /// fails or is cancelled; for a service, runs while the node serves it and exits 1 when
    /// it fails or is gone. Exits 1 when the node cannot be reached for --grace.
    #[cfg(feature = "kubernetes")]
    Tenant(TenantArgs),
}

/// `setpoint devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// CPU worker threads the CPU backend would use (default: all available cores).
    #[arg(long, value_name = "N")]
    pub cpu_threads: Option<usize>,
}

/// `setpoint gpu-check`.
#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// Which section to run.
    #[arg(long, value_enum)]
    pub section: crate::bench::gpu::Section,
    /// File for the section's JSON (its folder is created if missing).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// The digits CSV for the small training workload (left out when not given).
    #[arg(long, value_name = "FILE")]
    pub digits: Option<PathBuf>,
    /// Cache the compiled kernels under DIR (share it between the sections of one run).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Measured seconds per figure [default: each section's own].
    #[arg(long, value_name = "SECONDS")]
    pub seconds: Option<f64>,
    /// No GPU expected: GPU parts are recorded as skipped instead of failed, CPU parts run
    /// briefly on small sizes (checks the plumbing on a host without a GPU).
    #[arg(long)]
    pub dry_run: bool,
}

/// Where the daemon is and how to print its answers; shared by the client commands.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of a running daemon (`setpoint serve`).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SETPOINT_URL",
        default_value = crate::client::DEFAULT_URL
    )]
    pub url: String,
    /// Print JSON instead of text: the server's answer as it came; for `bench http`, one
    /// object with each concurrency level's requests/s, latency percentiles, errors and batch
    /// sizes.
    #[arg(long, global = true)]
    pub json: bool,
    /// Zone of the times in text output: `local` (with its offset, `+01:00`) or `utc`
    /// [default: local on a terminal, utc otherwise]. JSON always carries UTC.
    #[arg(long, global = true, value_enum, value_name = "ZONE")]
    pub times: Option<TimesArg>,
}

/// `--times`: the zone of the times a client command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimesArg {
    /// The host's zone (`TZ`, else the system's), with its offset.
    Local,
    /// UTC, with a `Z`.
    Utc,
}

/// `setpoint services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// What to do; `list` when absent.
    #[command(subcommand)]
    pub command: Option<ServicesCommand>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `setpoint services …` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// One line per service (GET /v1/services).
    List,
    /// One service in detail (GET /v1/services/NAME).
    Show {
        /// Service name, as in /v2/models/NAME.
        name: String,
    },
    /// Remove a service: new requests get 404, requests in flight are answered (DELETE
    /// /v1/services/NAME). A service of the config file comes back at the next start or
    /// reload unless it is taken out of the file.
    #[command(visible_alias = "rm")]
    Remove {
        /// Service name.
        name: String,
    },
}

/// `setpoint reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `setpoint infer`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["json_input", "random"])))]
pub struct InferArgs {
    /// Model name, as in /v2/models/MODEL.
    pub model: String,
    /// JSON file of rows: a list of lists of numbers, one row as a flat list, or a whole v2
    /// request body ("-" reads standard input).
    #[arg(long, value_name = "FILE")]
    pub json_input: Option<PathBuf>,
    /// Send N rows of standard normal values as one batch-N request.
    #[arg(long, value_name = "N")]
    pub random: Option<usize>,
    /// Seed of the --random rows.
    #[arg(long, default_value_t = 1, requires = "random")]
    pub seed: u64,
    /// Send the input and receive the output as binary tensors (raw little-endian f32 after
    /// the JSON header; Triton's binary tensor data extension).
    #[arg(long)]
    pub binary: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `setpoint status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Draw the status again every --interval seconds, in place on a terminal (like `watch`),
    /// with each service's p99 against its SLO and each job's progress and slack as bars and
    /// sparklines; until Ctrl-C or --count frames. With --json, one status object per line
    /// (NDJSON) per refresh. A daemon that cannot be reached after the first frame is shown
    /// in the frame and tried again.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch (a positive number, fractions allowed).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1.0,
        value_parser = positive_seconds,
        requires = "watch"
    )]
    pub interval: f64,
    /// Stop after N frames with --watch (default: until Ctrl-C).
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A number of seconds greater than zero.
fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        Ok(_) => Err(format!(
            "must be a number of seconds greater than 0, not {s}"
        )),
        Err(e) => Err(format!("not a number of seconds: {e}")),
    }
}

/// `setpoint kernels`.
#[derive(Debug, Args)]
pub struct KernelsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KernelsCommand,
}

/// `setpoint kernels …` subcommands.
#[derive(Debug, Subcommand)]
pub enum KernelsCommand {
    /// Compile every kernel module and report each kernel's registers, shared memory and
    /// spills.
    ///
    /// Each module (kernels/*.cu, embedded at build time) is compiled to PTX with NVRTC, or
    /// taken prebuilt when the build had nvcc for this architecture. When ptxas is found
    /// (--ptxas, else $PTXAS, else PATH, else ./.cuda-tools/nvidia/cuda_nvcc/bin/ptxas) the
    /// PTX is also assembled for --arch and the table shows registers, static shared memory
    /// and spill bytes per kernel; without ptxas only the compilation is checked, and the
    /// output says so. Register spills are reported, not treated as failures. Exits 1 when a
    /// module fails to compile or assemble, or NVRTC cannot be loaded (scripts/cuda-tools.sh
    /// installs NVRTC and ptxas; no GPU is needed).
    Check(KernelsCheckArgs),
    /// Compile every embedded kernel module to PTX for compute_90 with NVRTC and write it to
    /// kernels/ptx/ (--write), or compare it with what is there (--check: exits 1 naming the
    /// modules that differ, 2 when the files were made by another NVRTC version).
    ///
    /// The binary embeds kernels/ptx/ so that hosts without NVRTC run the kernels; a build
    /// leaves out a file made from another source and warns. Run with NVRTC from
    /// scripts/cuda-tools.sh, the version the committed files were made with.
    Ptx(KernelsPtxArgs),
}

/// `setpoint kernels ptx`.
#[derive(Debug, Args)]
pub struct KernelsPtxArgs {
    /// Write the files.
    #[arg(long, conflicts_with = "check", required_unless_present = "check")]
    pub write: bool,
    /// Compare with the files and fail when they differ.
    #[arg(long)]
    pub check: bool,
    /// The directory [default: kernels/ptx].
    #[arg(long, value_name = "DIR", default_value = crate::kernels::aot::AOT_DIR)]
    pub dir: PathBuf,
}

/// `setpoint kernels check`.
#[derive(Debug, Args)]
pub struct KernelsCheckArgs {
    /// GPU architecture to compile and assemble for.
    #[arg(long, value_name = "sm_XX", default_value = crate::kernels::DEFAULT_ARCH)]
    pub arch: String,
    /// ptxas to assemble with [default: ptxas on PATH, else
    /// ./.cuda-tools/nvidia/cuda_nvcc/bin/ptxas].
    #[arg(long, value_name = "PATH", env = "PTXAS")]
    pub ptxas: Option<PathBuf>,
    /// Read and fill a PTX cache under DIR/kernels (the layout the CUDA backend uses)
    /// instead of compiling every module afresh.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
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
    /// Address of the gRPC API, overriding the config's `grpc_listen`; "" turns gRPC off.
    #[arg(long, value_name = "ADDR", value_parser = grpc_listen_arg)]
    pub grpc_listen: Option<GrpcListenArg>,
    /// State directory, overriding the config's `state_dir`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A directory jobs and services may read data and checkpoints from, added to the
    /// config's `paths.data_dirs` (repeatable).
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dirs: Vec<PathBuf>,
}

/// `--grpc-listen`: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcListenArg(pub Option<std::net::SocketAddr>);

fn grpc_listen_arg(s: &str) -> Result<GrpcListenArg, String> {
    if s.is_empty() {
        return Ok(GrpcListenArg(None));
    }
    s.parse().map(|a| GrpcListenArg(Some(a))).map_err(|_| {
        format!("expected IP:PORT, such as 127.0.0.1:8001, or \"\" to turn gRPC off; got {s:?}")
    })
}

/// `--precision`: the number format of the matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 operands.
    F32,
    /// bf16 operands, f32 accumulation.
    Bf16,
}

impl From<PrecisionArg> for crate::device::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => crate::device::Precision::F32,
            PrecisionArg::Bf16 => crate::device::Precision::Bf16,
        }
    }
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
    /// Number format of the matrix products: f32, or bf16 (operands rounded to bf16,
    /// products accumulated in f32; emulated on the CPU) [default: f32].
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
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
