//! What the GPUs say about themselves: utilisation, memory, power, energy, clocks,
//! temperature, throttling and the processes running on them; and, for the CPU backend,
//! other processes' load on the CPU ([`cpu_load`]).
//!
//! - [`TelemetrySource`] is one read of every GPU on the host. [`NvmlSource`] asks NVML
//!   (loaded at run time; a host without `libnvidia-ml.so.1` gets an error, never a panic);
//!   [`ScriptedSource`] replays a script, for tests and hosts without a GPU.
//! - [`Sampler`] is what the daemon polls once per control period: a failed read is counted
//!   and skipped, the last good sample stays current, and a short history per GPU is kept.
//! - [`render_metrics`] writes the samples in the Prometheus text format for `/metrics`.
//! - [`devices_report`] is the operator's view behind `setpoint devices`.
//! - [`smi`] records and parses `nvidia-smi` CSV output and [`correlate`] compares it with
//!   our own samples, for the benchmarks' cross-check of what NVML tells us.
//!
//! A field NVML cannot give (not supported on the board, no permission, a transient error)
//! becomes `None` in the sample: one failed field never fails the sample.
//!
//! # Own and foreign load
//!
//! NVML names processes by host pid. [`OwnPids`] knows which of them are this daemon: from
//! procfs ([`pids`]: `NSpid` and the pid namespaces), or, in a container that cannot see
//! the host's pids, from a handshake around the daemon's first CUDA context
//! ([`OwnPids::learn_around`]). Each sample's processes are marked own or not, and the SM
//! utilisation NVML gives per process is summed into own and foreign load
//! ([`split_own_foreign`]): a foreign process with a context but no kernels in the sampling
//! window counts zero, a busy one counts what it used. Where per-process statistics are
//! missing, or the daemon's host pid is not known yet, both are `None` and the node
//! subtracts nothing for foreign load.
//!
//! Per-process utilisation is time-based: the share of the window in which one of the
//! process's kernels ran, however few SMs it occupied. A foreign process that keeps one tiny
//! kernel resident therefore counts as up to 100 %. NVML's GPM metrics (SM activity and
//! occupancy, Hopper and later) would bound that, but nvml-wrapper 0.11 does not expose
//! them; this stays approximate.

mod correlate;
pub mod cpu_load;
mod metrics;
mod nvml;
mod own;
pub mod pids;
mod report;
mod sampler;
mod scripted;
pub mod smi;

use serde::{Deserialize, Serialize};

pub use correlate::{
    Correlation, EnergyMethod, FieldStats, Phase, PhaseStats, correlate, correlate_with_tolerance,
};
pub use metrics::render_metrics;
pub use nvml::{NVML_LIBRARY, NvmlSource};
pub use own::{ComputePids, HandshakeOutcome, OwnPids, handshake_outcome};
pub use pids::{MappingBasis, PidMapping};
pub use report::devices_report;
pub use sampler::{Sampler, WARN_EVERY};
pub use scripted::{AtEnd, GpuStep, ScriptStep, ScriptedSource};
pub use smi::{SkippedLines, SmiClock, SmiError, SmiRecorder, SmiRow, parse_smi_csv};

/// One process seen on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// Process id, as the host's kernel knows it.
    pub pid: u32,
    /// Share of the SMs' time the process used over the last sampling window, percent.
    /// `None` when NVML has no per-process utilisation for it.
    #[serde(default)]
    pub sm_util_pct: Option<f64>,
    /// Share of the memory controller's time the process used, percent.
    #[serde(default)]
    pub mem_util_pct: Option<f64>,
    /// Device memory the process holds, bytes. `None` for processes that only showed up in
    /// the utilisation samples, or where the driver does not tell (WDDM).
    #[serde(default)]
    pub used_mem_bytes: Option<u64>,
    /// Whether the process is this daemon (see [`OwnPids`]); set by the source, false while
    /// the daemon's host pid is unknown.
    #[serde(default)]
    pub own: bool,
}

/// One read of one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// NVML's index of the GPU (not necessarily the CUDA ordinal).
    pub index: u32,
    /// The GPU's UUID (`GPU-…`); empty when NVML could not tell it.
    pub uuid: String,
    /// Product name, e.g. `NVIDIA H200`; empty when NVML could not tell it.
    pub name: String,
    /// When the read was taken, seconds since the Unix epoch.
    pub at_unix_s: f64,
    /// Percent of the last sampling period during which a kernel ran.
    pub util_gpu_pct: Option<f64>,
    /// Percent of the last sampling period during which device memory was read or written.
    pub util_mem_pct: Option<f64>,
    /// Device memory in use, bytes.
    pub mem_used_bytes: Option<u64>,
    /// Device memory installed, bytes.
    pub mem_total_bytes: Option<u64>,
    /// Power draw, watts.
    pub power_w: Option<f64>,
    /// Energy used since the driver was loaded, joules (a counter).
    pub energy_j: Option<f64>,
    /// Current SM clock, hertz.
    pub sm_clock_hz: Option<f64>,
    /// Die temperature, degrees Celsius.
    pub temperature_c: Option<f64>,
    /// Why the clocks are held down, by name (`sw_power_cap`, `hw_slowdown`, …). Empty when
    /// nothing is throttling or when the board cannot tell.
    #[serde(default)]
    pub throttle_reasons: Vec<String>,
    /// Processes seen on the GPU: those with a compute context and those with utilisation
    /// samples since the previous read.
    #[serde(default)]
    pub processes: Vec<ProcessSample>,
    /// SM utilisation of this daemon's own processes, percent (0..100). `None` when
    /// per-process statistics are not available or the daemon's host pid is not known.
    pub own_util_pct: Option<f64>,
    /// SM utilisation of every other process, percent (0..100): the share of the GPU to
    /// treat as taken by others. Idle foreign contexts count zero. `None` when per-process
    /// statistics are not available or the daemon's host pid is not known.
    pub foreign_util_pct: Option<f64>,
}

impl GpuSample {
    /// A sample of GPU `index` taken at `at_unix_s` with every measurement unknown.
    pub fn empty(index: u32, uuid: &str, name: &str, at_unix_s: f64) -> GpuSample {
        GpuSample {
            index,
            uuid: uuid.to_string(),
            name: name.to_string(),
            at_unix_s,
            util_gpu_pct: None,
            util_mem_pct: None,
            mem_used_bytes: None,
            mem_total_bytes: None,
            power_w: None,
            energy_j: None,
            sm_clock_hz: None,
            temperature_c: None,
            throttle_reasons: Vec::new(),
            processes: Vec::new(),
            own_util_pct: None,
            foreign_util_pct: None,
        }
    }

    /// Device memory not in use, bytes, when both used and total are known.
    pub fn memory_free_bytes(&self) -> Option<u64> {
        Some(self.mem_total_bytes?.saturating_sub(self.mem_used_bytes?))
    }
}

/// Splits the SM utilisation of `processes` into (own, foreign), each clamped to 0..100
/// percent: a process is own when its pid is in `own_pids`. Processes without a utilisation
/// figure count as zero. Callers pass `None` when per-process statistics are unavailable,
/// which gives `(None, None)`.
pub(crate) fn split_own_foreign(
    processes: Option<&[ProcessSample]>,
    own_pids: &[u32],
) -> (Option<f64>, Option<f64>) {
    let Some(processes) = processes else {
        return (None, None);
    };
    let (mut own, mut foreign) = (0.0, 0.0);
    for p in processes {
        let u = p.sm_util_pct.unwrap_or(0.0);
        if !u.is_finite() {
            continue;
        }
        if own_pids.contains(&p.pid) {
            own += u;
        } else {
            foreign += u;
        }
    }
    (Some(own.clamp(0.0, 100.0)), Some(foreign.clamp(0.0, 100.0)))
}

/// Marks each process own when its pid is in `own_pids` and splits the load with
/// [`split_own_foreign`]. `per_process_stats` says whether the utilisation figures are
/// there; `own_pids` is `None` while the daemon's host pids are unknown. Either missing
/// gives `(None, None)`: an unknown split is better than counting own load as foreign.
pub(crate) fn attribute(
    processes: &mut [ProcessSample],
    per_process_stats: bool,
    own_pids: Option<&[u32]>,
) -> (Option<f64>, Option<f64>) {
    for p in processes.iter_mut() {
        p.own = own_pids.is_some_and(|own| own.contains(&p.pid));
    }
    match own_pids {
        Some(own) if per_process_stats => split_own_foreign(Some(processes), own),
        _ => (None, None),
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a read of the GPUs failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TelemetryError {
    /// The NVML library is not on this host. `detail` is the dynamic loader's message.
    #[error("{library} not found; install the NVIDIA driver, or run on the CPU backend")]
    LibraryMissing { library: String, detail: String },
    /// The NVML library is there but could not be loaded.
    #[error("cannot load {library}: {detail}")]
    LibraryLoad { library: String, detail: String },
    /// NVML loaded but would not start (driver not running, no permission, …).
    #[error("NVML initialisation failed: {0}")]
    Init(String),
    /// NVML panicked inside a call; the source is not used again.
    #[error("NVML panicked during {0}; telemetry from NVML is turned off")]
    Panicked(String),
    /// A read of the whole host failed (e.g. the device count).
    #[error("telemetry read failed: {0}")]
    Read(String),
    /// A scripted source ran past its last step and was told to end there.
    #[error("telemetry script ended after {steps} steps")]
    ScriptEnded { steps: usize },
    /// A telemetry script file could not be read or parsed.
    #[error("telemetry script {path}: {detail}")]
    Script { path: String, detail: String },
}

/// Something that reads every GPU of the host at once.
pub trait TelemetrySource: Send {
    /// Reads every GPU. An `Err` means nothing could be read this time; a field that could
    /// not be read is `None` in an otherwise good sample.
    fn sample(&mut self) -> Result<Vec<GpuSample>, TelemetryError>;

    /// One line saying where the telemetry comes from, for logs and reports.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, sm: Option<f64>) -> ProcessSample {
        ProcessSample {
            pid,
            sm_util_pct: sm,
            mem_util_pct: None,
            used_mem_bytes: None,
            own: false,
        }
    }

    #[test]
    fn split_counts_own_and_foreign_and_clamps() {
        let procs = [
            p(1, Some(30.0)),
            p(2, Some(80.0)),
            p(3, Some(40.0)),
            p(4, None),
        ];
        assert_eq!(
            split_own_foreign(Some(&procs), &[1]),
            (Some(30.0), Some(100.0))
        );
        assert_eq!(
            split_own_foreign(Some(&procs), &[2, 3]),
            (Some(100.0), Some(30.0))
        );
        assert_eq!(split_own_foreign(Some(&[]), &[1]), (Some(0.0), Some(0.0)));
        assert_eq!(split_own_foreign(None, &[1]), (None, None));
    }

    #[test]
    fn attribution_marks_own_and_is_unknown_without_pids_or_statistics() {
        let mut procs = vec![p(5, Some(10.0)), p(6, Some(20.0)), p(7, None)];
        assert_eq!(
            attribute(&mut procs, true, Some(&[6])),
            (Some(20.0), Some(10.0))
        );
        let own: Vec<bool> = procs.iter().map(|p| p.own).collect();
        assert_eq!(own, [false, true, false]);
        assert_eq!(attribute(&mut procs, false, Some(&[6])), (None, None));
        assert!(procs[1].own, "marked even without statistics");
        assert_eq!(attribute(&mut procs, true, None), (None, None));
        assert!(procs.iter().all(|p| !p.own));
    }

    #[test]
    fn free_memory_needs_both_figures() {
        let mut s = GpuSample::empty(0, "GPU-x", "n", 0.0);
        assert_eq!(s.memory_free_bytes(), None);
        s.mem_total_bytes = Some(100);
        s.mem_used_bytes = Some(30);
        assert_eq!(s.memory_free_bytes(), Some(70));
        s.mem_used_bytes = Some(130);
        assert_eq!(s.memory_free_bytes(), Some(0));
    }
}
