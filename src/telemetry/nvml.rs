//! NVML through nvml-wrapper, loaded at run time.
//!
//! nvml-wrapper 0.11 loads `libnvidia-ml.so.1` with libloading inside `Nvml::init`; a missing
//! library or a missing `nvmlInit_v2` comes back as an error (`LibloadingError`,
//! `FailedToLoadSymbol`), and every device call resolves its symbol through a `Result`. The
//! one place that would panic is `Drop for Nvml`, which calls `nvmlShutdown` through an
//! `expect`: a library with `nvmlInit_v2` but without `nvmlShutdown` would panic there. So
//! opening, reading and dropping all run under `catch_unwind`, and a source that panicked once
//! is not used again.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{
    ComputePids, GpuSample, OwnPids, ProcessSample, TelemetryError, TelemetrySource, attribute,
};

/// The file name NVML is loaded from (through the dynamic loader's search path).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// What is remembered about one GPU between reads.
#[derive(Debug, Default)]
struct DeviceState {
    uuid: String,
    name: String,
    /// Timestamp (µs, CPU clock) of the newest per-process utilisation sample seen, so the
    /// next read asks only for newer ones.
    last_seen_us: Option<u64>,
    /// The last non-empty batch of per-process samples and when it was read (Unix s).
    held: Vec<UtilSample>,
    held_at_unix_s: f64,
}

/// How long the last per-process samples stand in for a read that brought none. The driver
/// samples per-process utilisation on its own (undocumented) period and reports only
/// processes that were busy, so a control period shorter than the driver's would otherwise
/// see foreign load flicker to zero between driver samples. The price: a process that stops
/// shows its load up to this much longer.
pub(crate) const UTIL_HOLD_S: f64 = 1.0;

impl DeviceState {
    /// Takes a fresh batch of per-process samples (`None`: unavailable) read at `at`,
    /// advances the last-seen timestamp, and returns the batch to use: the fresh one, or
    /// the held one when the fresh one is empty and the held one is recent.
    fn take_util(&mut self, fresh: Option<Vec<UtilSample>>, at: f64) -> Option<Vec<UtilSample>> {
        let fresh = fresh?;
        if let Some(newest) = fresh.iter().map(|u| u.1).max() {
            self.last_seen_us = Some(self.last_seen_us.map_or(newest, |l| l.max(newest)));
            self.held = fresh.clone();
            self.held_at_unix_s = at;
            return Some(fresh);
        }
        if !self.held.is_empty() && at - self.held_at_unix_s < UTIL_HOLD_S {
            return Some(self.held.clone());
        }
        self.held.clear();
        Some(fresh)
    }
}

/// Telemetry from NVML.
pub struct NvmlSource {
    nvml: ManuallyDrop<Nvml>,
    library: String,
    driver_version: String,
    nvml_version: String,
    devices: Vec<DeviceState>,
    own: Arc<OwnPids>,
    panicked: bool,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn init_error(library: &str, e: NvmlError) -> TelemetryError {
    let library = library.to_string();
    match e {
        NvmlError::LibloadingError(le) => {
            let detail = le.to_string();
            if detail.contains("No such file") || detail.contains("cannot open shared object") {
                TelemetryError::LibraryMissing { library, detail }
            } else {
                TelemetryError::LibraryLoad { library, detail }
            }
        }
        NvmlError::FailedToLoadSymbol(detail) => TelemetryError::LibraryLoad { library, detail },
        NvmlError::DriverNotLoaded => TelemetryError::Init(
            "the NVIDIA driver is not loaded (is there a GPU, and is the kernel module in?)"
                .to_string(),
        ),
        NvmlError::NoPermission => TelemetryError::Init(
            "no permission to talk to the NVIDIA driver (check /dev/nvidia* permissions)"
                .to_string(),
        ),
        other => TelemetryError::Init(other.to_string()),
    }
}

/// Names of the reasons in an NVML throttle bitmask. `gpu_idle` is left out: an idle GPU
/// runs slow clocks because it has nothing to do, not because something holds it back.
pub(crate) fn throttle_names(bits: u64) -> Vec<String> {
    const NAMES: [(ThrottleReasons, &str); 8] = [
        (
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            "applications_clocks_setting",
        ),
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake"),
        (
            ThrottleReasons::DISPLAY_CLOCK_SETTING,
            "display_clock_setting",
        ),
    ];
    NAMES
        .iter()
        .filter(|(r, _)| bits & r.bits() != 0)
        .map(|(_, n)| (*n).to_string())
        .collect()
}

/// One per-process utilisation sample as NVML gives it: pid, timestamp (µs), SM %, memory %.
pub(crate) type UtilSample = (u32, u64, u32, u32);

/// Merges NVML's per-process utilisation samples (several per pid are possible: one per
/// driver sampling tick since `last_seen`) with the compute processes' memory. A pid's
/// utilisation is the mean of its samples, each clamped to 0..100. Returns the processes by
/// pid.
pub(crate) fn merge_processes(
    util: Option<&[UtilSample]>,
    memory: &[(u32, Option<u64>)],
) -> Vec<ProcessSample> {
    // pid -> (sum sm, sum mem, count)
    let mut acc: BTreeMap<u32, (f64, f64, u32)> = BTreeMap::new();
    for &(pid, _, sm, mem) in util.unwrap_or(&[]) {
        let e = acc.entry(pid).or_insert((0.0, 0.0, 0));
        e.0 += f64::from(sm.min(100));
        e.1 += f64::from(mem.min(100));
        e.2 += 1;
    }
    let mut out: BTreeMap<u32, ProcessSample> = BTreeMap::new();
    for (pid, (sm, mem, n)) in acc {
        out.insert(
            pid,
            ProcessSample {
                pid,
                sm_util_pct: Some(sm / f64::from(n)),
                mem_util_pct: Some(mem / f64::from(n)),
                used_mem_bytes: None,
                own: false,
            },
        );
    }
    for &(pid, used) in memory {
        let e = out.entry(pid).or_insert(ProcessSample {
            pid,
            // With per-process statistics available, a compute process without samples
            // since the last read used no SM time.
            sm_util_pct: util.map(|_| 0.0),
            mem_util_pct: util.map(|_| 0.0),
            used_mem_bytes: None,
            own: false,
        });
        e.used_mem_bytes = used;
    }
    out.into_values().collect()
}

impl NvmlSource {
    /// Loads `libnvidia-ml.so.1` and initialises NVML. Errors (never panics) when the library
    /// is missing, the driver is not loaded or NVML refuses.
    pub fn open() -> Result<NvmlSource, TelemetryError> {
        Self::open_library(NVML_LIBRARY)
    }

    /// Like [`NvmlSource::open`] with another library file name or path.
    pub(crate) fn open_library(library: &str) -> Result<NvmlSource, TelemetryError> {
        let opened = catch_unwind(|| {
            let nvml = Nvml::builder().lib_path(OsStr::new(library)).init()?;
            let driver = nvml.sys_driver_version().unwrap_or_default();
            let version = nvml.sys_nvml_version().unwrap_or_default();
            Ok::<_, NvmlError>((nvml, driver, version))
        });
        let (nvml, driver_version, nvml_version) = match opened {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(init_error(library, e)),
            Err(p) => {
                return Err(TelemetryError::Panicked(format!(
                    "initialisation ({})",
                    panic_text(p.as_ref())
                )));
            }
        };
        Ok(NvmlSource {
            nvml: ManuallyDrop::new(nvml),
            library: library.to_string(),
            driver_version,
            nvml_version,
            devices: Vec::new(),
            own: OwnPids::of_this_process(),
            panicked: false,
        })
    }

    /// Which processes count as own.
    pub fn own(&self) -> Arc<OwnPids> {
        self.own.clone()
    }

    fn read_all(&mut self) -> Result<Vec<GpuSample>, TelemetryError> {
        let NvmlSource {
            nvml, devices, own, ..
        } = self;
        let count = nvml
            .device_count()
            .map_err(|e| TelemetryError::Read(format!("NVML device count: {e}")))?;
        let at = super::unix_now_s();
        while devices.len() < count as usize {
            devices.push(DeviceState::default());
        }
        let own_pids = own.host_pids();
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let st = &mut devices[i as usize];
            match nvml.device_by_index(i) {
                Ok(dev) => out.push(read_device(&dev, i, st, at, own_pids.as_deref())),
                Err(e) => {
                    tracing::debug!(gpu = i, "NVML device handle: {e}");
                    out.push(GpuSample::empty(i, &st.uuid, &st.name, at));
                }
            }
        }
        Ok(out)
    }

    fn list_compute_pids(&self) -> Result<Vec<u32>, TelemetryError> {
        let read = |what: &str, e: NvmlError| TelemetryError::Read(format!("NVML {what}: {e}"));
        let count = self
            .nvml
            .device_count()
            .map_err(|e| read("device count", e))?;
        let mut pids = Vec::new();
        for i in 0..count {
            let dev = self
                .nvml
                .device_by_index(i)
                .map_err(|e| read(&format!("GPU {i} handle"), e))?;
            let ps = dev
                .running_compute_processes()
                .map_err(|e| read(&format!("GPU {i} compute processes"), e))?;
            pids.extend(ps.iter().map(|p| p.pid));
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

/// One read of one GPU: its figures, its processes, and their load split into own and
/// foreign by `own_pids` (`None`: unknown).
fn read_device(
    dev: &Device,
    i: u32,
    st: &mut DeviceState,
    at: f64,
    own_pids: Option<&[u32]>,
) -> GpuSample {
    if st.uuid.is_empty()
        && let Ok(u) = dev.uuid()
    {
        st.uuid = u;
    }
    if st.name.is_empty()
        && let Ok(n) = dev.name()
    {
        st.name = n;
    }
    let mut s = GpuSample::empty(i, &st.uuid, &st.name, at);
    read_figures(dev, &mut s);
    let util: Option<Vec<UtilSample>> = match dev.process_utilization_stats(st.last_seen_us) {
        Ok(v) => Some(
            v.iter()
                .map(|p| (p.pid, p.timestamp, p.sm_util, p.mem_util))
                .collect(),
        ),
        // NVML's answer when no process used the GPU since `last_seen`.
        Err(NvmlError::NotFound) => Some(Vec::new()),
        Err(e) => {
            tracing::debug!(gpu = i, "NVML per-process utilisation: {e}");
            None
        }
    };
    let memory: Vec<(u32, Option<u64>)> = dev
        .running_compute_processes()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let used = match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    };
                    (p.pid, used)
                })
                .collect()
        })
        .unwrap_or_default();
    let util = st.take_util(util, at);
    let mut processes = merge_processes(util.as_deref(), &memory);
    let (own, foreign) = attribute(&mut processes, util.is_some(), own_pids);
    s.processes = processes;
    s.own_util_pct = own;
    s.foreign_util_pct = foreign;
    s
}

/// The device-wide figures; each one NVML refuses stays `None`.
fn read_figures(dev: &Device, s: &mut GpuSample) {
    if let Ok(u) = dev.utilization_rates() {
        s.util_gpu_pct = Some(f64::from(u.gpu));
        s.util_mem_pct = Some(f64::from(u.memory));
    }
    if let Ok(m) = dev.memory_info() {
        s.mem_used_bytes = Some(m.used);
        s.mem_total_bytes = Some(m.total);
    }
    if let Ok(mw) = dev.power_usage() {
        s.power_w = Some(f64::from(mw) / 1e3);
    }
    if let Ok(mj) = dev.total_energy_consumption() {
        s.energy_j = Some(mj as f64 / 1e3);
    }
    if let Ok(mhz) = dev.clock_info(Clock::SM) {
        s.sm_clock_hz = Some(f64::from(mhz) * 1e6);
    }
    if let Ok(t) = dev.temperature(TemperatureSensor::Gpu) {
        s.temperature_c = Some(f64::from(t));
    }
    if let Ok(r) = dev.current_throttle_reasons() {
        s.throttle_reasons = throttle_names(r.bits());
    }
}

/// The handshake's process lists: every GPU's compute processes, or an error when any GPU
/// could not be asked. Runs under `catch_unwind` like a read.
impl ComputePids for NvmlSource {
    fn compute_pids(&mut self) -> Result<Vec<u32>, TelemetryError> {
        if self.panicked {
            return Err(TelemetryError::Panicked("an earlier read".to_string()));
        }
        match catch_unwind(AssertUnwindSafe(|| self.list_compute_pids())) {
            Ok(r) => r,
            Err(p) => {
                self.panicked = true;
                Err(TelemetryError::Panicked(format!(
                    "a process list ({})",
                    panic_text(p.as_ref())
                )))
            }
        }
    }
}

impl TelemetrySource for NvmlSource {
    fn sample(&mut self) -> Result<Vec<GpuSample>, TelemetryError> {
        if self.panicked {
            return Err(TelemetryError::Panicked("an earlier read".to_string()));
        }
        match catch_unwind(AssertUnwindSafe(|| self.read_all())) {
            Ok(r) => r,
            Err(p) => {
                self.panicked = true;
                Err(TelemetryError::Panicked(format!(
                    "a read ({})",
                    panic_text(p.as_ref())
                )))
            }
        }
    }

    fn describe(&self) -> String {
        let mut d = format!("NVML ({})", self.library);
        if !self.nvml_version.is_empty() {
            d.push_str(&format!(", NVML {}", self.nvml_version));
        }
        if !self.driver_version.is_empty() {
            d.push_str(&format!(", driver {}", self.driver_version));
        }
        d
    }
}

impl Drop for NvmlSource {
    fn drop(&mut self) {
        if self.panicked {
            // NVML's state is unknown after a panic inside it: leak rather than shut down.
            return;
        }
        // SAFETY: `self.nvml` is taken exactly once, here, and never used afterwards.
        let nvml = unsafe { ManuallyDrop::take(&mut self.nvml) };
        if catch_unwind(AssertUnwindSafe(move || drop(nvml))).is_err() {
            tracing::warn!("NVML shutdown panicked; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_bits_map_to_names() {
        let bits = ThrottleReasons::SW_POWER_CAP.bits()
            | ThrottleReasons::HW_THERMAL_SLOWDOWN.bits()
            | ThrottleReasons::GPU_IDLE.bits();
        assert_eq!(
            throttle_names(bits),
            vec![
                "sw_power_cap".to_string(),
                "hw_thermal_slowdown".to_string()
            ]
        );
        assert!(throttle_names(0).is_empty());
        assert_eq!(
            throttle_names(ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN.bits()),
            vec!["hw_power_brake".to_string()]
        );
    }

    #[test]
    fn processes_merge_utilisation_and_memory() {
        let util = [
            (10, 100, 30, 5),
            (10, 200, 50, 7),
            (20, 150, 250, 1), // out of range: clamped to 100
        ];
        let memory = [(10, Some(1 << 20)), (30, None)];
        let ps = merge_processes(Some(&util), &memory);
        assert_eq!(ps.len(), 3);
        assert_eq!(ps[0].pid, 10);
        assert_eq!(ps[0].sm_util_pct, Some(40.0));
        assert_eq!(ps[0].mem_util_pct, Some(6.0));
        assert_eq!(ps[0].used_mem_bytes, Some(1 << 20));
        assert_eq!(ps[1].pid, 20);
        assert_eq!(ps[1].sm_util_pct, Some(100.0));
        assert_eq!(ps[1].used_mem_bytes, None);
        assert_eq!(ps[2].pid, 30);
        assert_eq!(ps[2].sm_util_pct, Some(0.0));

        let ps = merge_processes(None, &memory);
        assert_eq!(ps[0].sm_util_pct, None);
        assert_eq!(ps[0].used_mem_bytes, Some(1 << 20));
    }

    #[test]
    fn empty_reads_hold_the_last_samples_briefly() {
        let mut st = DeviceState::default();
        let batch = vec![(10, 1_000, 40, 0), (11, 1_200, 20, 0)];
        assert_eq!(
            st.take_util(Some(batch.clone()), 100.0),
            Some(batch.clone())
        );
        assert_eq!(st.last_seen_us, Some(1_200));
        // Nothing new shortly after: the last batch stands in.
        assert_eq!(st.take_util(Some(vec![]), 100.5), Some(batch.clone()));
        // Unavailable stays unavailable.
        assert_eq!(st.take_util(None, 100.6), None);
        // Nothing new for longer than the hold: no load.
        assert_eq!(
            st.take_util(Some(vec![]), 100.0 + UTIL_HOLD_S),
            Some(vec![])
        );
        assert_eq!(st.take_util(Some(vec![]), 100.2), Some(vec![]));
        assert_eq!(st.last_seen_us, Some(1_200));
        // A fresh batch replaces the held one; the timestamp never goes back.
        let next = vec![(10, 1_100, 5, 0)];
        assert_eq!(st.take_util(Some(next.clone()), 102.0), Some(next));
        assert_eq!(st.last_seen_us, Some(1_200));
    }

    #[test]
    fn missing_library_is_an_error_naming_it() {
        match NvmlSource::open_library("libnvidia-ml-does-not-exist.so.1") {
            Err(e @ TelemetryError::LibraryMissing { .. }) => {
                assert!(
                    e.to_string()
                        .contains("libnvidia-ml-does-not-exist.so.1 not found"),
                    "{e}"
                );
            }
            other => panic!("expected a load error, got {other:?}"),
        }
    }
}
