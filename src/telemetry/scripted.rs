//! A telemetry source that replays a script: for tests, the simulator and hosts without a GPU.
//!
//! Each read returns the next step: either one sample per listed GPU or an injected error.
//! After the last step the source either repeats the last step (the default, so a daemon
//! on a scripted host keeps seeing a steady GPU) or fails every read with
//! [`TelemetryError::ScriptEnded`] (`at_end = "fail"`).
//!
//! # Script files
//!
//! JSON (`.json`) or TOML (any other extension) with the same fields:
//!
//! ```toml
//! own_pid = 4242          # optional: the daemon's pid (see below); default: this process
//! proc_root = "procfs/x"  # optional: a procfs fixture, relative to the script's directory
//! at_end = "repeat_last"  # optional: "repeat_last" (default) or "fail"
//!
//! [[steps]]               # one read: a sample per GPU
//! [[steps.gpus]]
//! index = 0
//! uuid = "GPU-0f1e2d3c-0000-0000-0000-000000000000"  # optional
//! name = "NVIDIA H200"                                # optional
//! util_gpu_pct = 50
//! mem_used_bytes = 1073741824
//! mem_total_bytes = 150754820096
//! power_w = 310.5
//! energy_j = 123456.0
//! sm_clock_hz = 1.98e9
//! temperature_c = 41
//! throttle_reasons = ["sw_power_cap"]
//! [[steps.gpus.processes]]   # optional; absent = per-process statistics unavailable
//! pid = 4242                 # the host pid, as NVML shows it
//! sm_util_pct = 30           # absent: no kernel ran (an idle context)
//! used_mem_bytes = 536870912
//!
//! [[steps]]               # one failed read
//! error = "GPU has fallen off the bus"
//! ```
//!
//! Every measurement is optional (absent = unknown). `at_unix_s` may pin a step's timestamp;
//! otherwise the time of the read is used. `own_util_pct` / `foreign_util_pct` may be given
//! directly; otherwise they are computed from `processes` (see [`super::attribute`]), and
//! are unknown when `processes` is absent. An empty `processes = []` means no process used
//! the GPU.
//!
//! Which pids are own: without `proc_root`, `own_pid` is a host pid taken as is. With
//! `proc_root`, the daemon is placed through that procfs fixture ([`super::pids`]), which
//! needs `self/status` (with or without an `NSpid` line) and, for the namespaces, the links
//! `self/ns/pid` and `1/ns/pid` (targets like `pid:[4026531836]`); `own_pid` is then the pid
//! the daemon knows itself by, the fallback when procfs says nothing. A fixture of a
//! container that sees only itself leaves the host pid unknown (own and foreign load
//! unknown) until a handshake learns it: the source is also a [`ComputePids`] lister, whose
//! every call consumes the next step and lists the pids of its processes on all GPUs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{
    ComputePids, GpuSample, OwnPids, ProcessSample, TelemetryError, TelemetrySource, attribute,
};

/// What a scripted source does once its steps are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtEnd {
    /// Return the last step again on every further read.
    #[default]
    RepeatLast,
    /// Fail every further read with [`TelemetryError::ScriptEnded`].
    Fail,
}

/// One GPU in one scripted step; every measurement is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuStep {
    pub index: u32,
    /// Default: a UUID made from the index.
    pub uuid: Option<String>,
    /// Default: `Scripted GPU`.
    pub name: Option<String>,
    /// Default: the time of the read.
    pub at_unix_s: Option<f64>,
    pub util_gpu_pct: Option<f64>,
    pub util_mem_pct: Option<f64>,
    pub mem_used_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub power_w: Option<f64>,
    pub energy_j: Option<f64>,
    pub sm_clock_hz: Option<f64>,
    pub temperature_c: Option<f64>,
    #[serde(default)]
    pub throttle_reasons: Vec<String>,
    /// `None`: per-process statistics unavailable (own and foreign load unknown).
    pub processes: Option<Vec<ProcessSample>>,
    /// Overrides the value computed from `processes`.
    pub own_util_pct: Option<f64>,
    /// Overrides the value computed from `processes`.
    pub foreign_util_pct: Option<f64>,
}

impl GpuStep {
    fn to_sample(&self, own_pids: Option<&[u32]>, now: f64) -> GpuSample {
        let uuid = self
            .uuid
            .clone()
            .unwrap_or_else(|| format!("GPU-00000000-0000-0000-0000-{:012}", self.index));
        let name = self.name.as_deref().unwrap_or("Scripted GPU");
        let mut s = GpuSample::empty(self.index, &uuid, name, self.at_unix_s.unwrap_or(now));
        s.util_gpu_pct = self.util_gpu_pct;
        s.util_mem_pct = self.util_mem_pct;
        s.mem_used_bytes = self.mem_used_bytes;
        s.mem_total_bytes = self.mem_total_bytes;
        s.power_w = self.power_w;
        s.energy_j = self.energy_j;
        s.sm_clock_hz = self.sm_clock_hz;
        s.temperature_c = self.temperature_c;
        s.throttle_reasons = self.throttle_reasons.clone();
        let mut processes = self.processes.clone().unwrap_or_default();
        let (own, foreign) = attribute(&mut processes, self.processes.is_some(), own_pids);
        s.own_util_pct = self.own_util_pct.or(own);
        s.foreign_util_pct = self.foreign_util_pct.or(foreign);
        s.processes = processes;
        s
    }
}

/// One scripted read.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptStep {
    /// A successful read of these GPUs.
    Gpus(Vec<GpuStep>),
    /// A failed read with this message.
    Error(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    gpus: Option<Vec<GpuStep>>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    own_pid: Option<u32>,
    proc_root: Option<PathBuf>,
    #[serde(default)]
    at_end: AtEnd,
    steps: Vec<StepFile>,
}

/// Replays scripted reads in order; see the module docs.
#[derive(Debug, Clone)]
pub struct ScriptedSource {
    steps: Vec<ScriptStep>,
    next: usize,
    at_end: AtEnd,
    own: Arc<OwnPids>,
    origin: String,
}

impl ScriptedSource {
    /// A source replaying `steps`, repeating the last one at the end; this process's pid
    /// is own, taken as a host pid.
    pub fn new(steps: Vec<ScriptStep>) -> ScriptedSource {
        ScriptedSource {
            steps,
            next: 0,
            at_end: AtEnd::RepeatLast,
            own: Arc::new(OwnPids::fixed(vec![std::process::id()])),
            origin: "built-in script".to_string(),
        }
    }

    /// Sets what happens after the last step.
    pub fn at_end(mut self, at_end: AtEnd) -> ScriptedSource {
        self.at_end = at_end;
        self
    }

    /// Which processes count as own.
    pub fn own(&self) -> Arc<OwnPids> {
        self.own.clone()
    }

    /// Parses a script (JSON when `is_json`, else TOML). `origin` names it in errors; a
    /// relative `proc_root` is taken from the current directory.
    pub fn parse(
        text: &str,
        is_json: bool,
        origin: &str,
    ) -> Result<ScriptedSource, TelemetryError> {
        Self::parse_in(text, is_json, origin, Path::new(""))
    }

    fn parse_in(
        text: &str,
        is_json: bool,
        origin: &str,
        base: &Path,
    ) -> Result<ScriptedSource, TelemetryError> {
        let err = |detail: String| TelemetryError::Script {
            path: origin.to_string(),
            detail,
        };
        let file: ScriptFile = if is_json {
            serde_json::from_str(text).map_err(|e| err(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| err(e.to_string()))?
        };
        if file.steps.is_empty() {
            return Err(err("the script has no steps".to_string()));
        }
        let mut steps = Vec::with_capacity(file.steps.len());
        for (i, s) in file.steps.into_iter().enumerate() {
            steps.push(match (s.gpus, s.error) {
                (Some(g), None) => ScriptStep::Gpus(g),
                (None, Some(e)) => ScriptStep::Error(e),
                _ => {
                    return Err(err(format!(
                        "step {}: give exactly one of `gpus` or `error`",
                        i + 1
                    )));
                }
            });
        }
        let mut src = ScriptedSource::new(steps).at_end(file.at_end);
        src.own = match (file.proc_root, file.own_pid) {
            (Some(root), pid) => {
                let root = base.join(root);
                if !root.is_dir() {
                    return Err(err(format!(
                        "proc_root {} is not a directory (give a procfs fixture directory, \
                         relative to the script)",
                        root.display()
                    )));
                }
                let pid = pid.unwrap_or_else(std::process::id);
                Arc::new(OwnPids::from_procfs(&root, pid))
            }
            (None, Some(pid)) => Arc::new(OwnPids::fixed(vec![pid])),
            (None, None) => src.own,
        };
        src.origin = origin.to_string();
        Ok(src)
    }

    /// Reads a script file: JSON when the name ends in `.json`, TOML otherwise.
    pub fn from_file(path: &Path) -> Result<ScriptedSource, TelemetryError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TelemetryError::Script {
            path: origin.clone(),
            detail: e.to_string(),
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse_in(&text, is_json, &origin, base)
    }

    /// How many reads have been made.
    pub fn reads(&self) -> usize {
        self.next
    }

    /// The next step's GPUs (none for a script without steps), or its error.
    fn next_step(&mut self) -> Result<&[GpuStep], TelemetryError> {
        let i = self.next;
        self.next += 1;
        let step = match self.steps.get(i) {
            Some(s) => s,
            None => match self.at_end {
                AtEnd::Fail => {
                    return Err(TelemetryError::ScriptEnded {
                        steps: self.steps.len(),
                    });
                }
                AtEnd::RepeatLast => match self.steps.last() {
                    Some(s) => s,
                    None => return Ok(&[]),
                },
            },
        };
        match step {
            ScriptStep::Error(e) => Err(TelemetryError::Read(e.clone())),
            ScriptStep::Gpus(gpus) => Ok(gpus),
        }
    }
}

impl TelemetrySource for ScriptedSource {
    fn sample(&mut self) -> Result<Vec<GpuSample>, TelemetryError> {
        let own = self.own.host_pids();
        let now = super::unix_now_s();
        let gpus = self.next_step()?;
        Ok(gpus
            .iter()
            .map(|g| g.to_sample(own.as_deref(), now))
            .collect())
    }

    fn describe(&self) -> String {
        format!(
            "scripted telemetry ({}, {} steps)",
            self.origin,
            self.steps.len()
        )
    }
}

/// Each call consumes the next step, like a read, and lists the pids of its processes on
/// every GPU: a script gives the handshake's "before" and "after" lists this way.
impl ComputePids for ScriptedSource {
    fn compute_pids(&mut self) -> Result<Vec<u32>, TelemetryError> {
        let mut pids: Vec<u32> = self
            .next_step()?
            .iter()
            .flat_map(|g| g.processes.iter().flatten().map(|p| p.pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
own_pid = 7
at_end = "fail"

[[steps]]
[[steps.gpus]]
index = 0
util_gpu_pct = 50
power_w = 300.5
[[steps.gpus.processes]]
pid = 7
sm_util_pct = 20
[[steps.gpus.processes]]
pid = 8
sm_util_pct = 25

[[steps]]
error = "GPU has fallen off the bus"
"#;

    #[test]
    fn toml_script_replays_then_fails() {
        let mut s = ScriptedSource::parse(TOML, false, "inline").unwrap();
        let a = s.sample().unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].util_gpu_pct, Some(50.0));
        assert_eq!(a[0].power_w, Some(300.5));
        assert_eq!(a[0].own_util_pct, Some(20.0));
        assert_eq!(a[0].foreign_util_pct, Some(25.0));
        assert_eq!(a[0].uuid, "GPU-00000000-0000-0000-0000-000000000000");
        assert_eq!(
            s.sample(),
            Err(TelemetryError::Read("GPU has fallen off the bus".into()))
        );
        assert_eq!(s.sample(), Err(TelemetryError::ScriptEnded { steps: 2 }));
    }

    #[test]
    fn json_script_repeats_last_by_default() {
        let json = r#"{"steps":[{"gpus":[{"index":1,"util_gpu_pct":10}]},
                                 {"gpus":[{"index":1,"util_gpu_pct":20}]}]}"#;
        let mut s = ScriptedSource::parse(json, true, "inline").unwrap();
        let got: Vec<_> = (0..4)
            .map(|_| s.sample().unwrap()[0].util_gpu_pct)
            .collect();
        assert_eq!(got, [Some(10.0), Some(20.0), Some(20.0), Some(20.0)]);
        assert_eq!(s.sample().unwrap()[0].foreign_util_pct, None);
    }

    #[test]
    fn bad_scripts_say_why() {
        let e = ScriptedSource::parse(r#"{"steps":[]}"#, true, "x.json").unwrap_err();
        assert_eq!(
            e.to_string(),
            "telemetry script x.json: the script has no steps"
        );
        let e = ScriptedSource::parse(r#"{"steps":[{"gpus":[],"error":"e"}]}"#, true, "x.json")
            .unwrap_err();
        assert!(e.to_string().contains("step 1: give exactly one"), "{e}");
        let e = ScriptedSource::parse("[[steps]]\n[[steps.gpus]]\nindx = 0\n", false, "x.toml")
            .unwrap_err();
        assert!(e.to_string().contains("indx"), "{e}");
    }
}
