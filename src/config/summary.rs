//! "What I understood": the resolved config rendered back as TOML.
//!
//! The summary is itself a valid config that parses to the same [`NodeConfig`] (except the
//! auth token, which is never printed), so an operator can diff it against what they wrote or
//! save it as a fully explicit config.

use std::fmt::Write;
use std::path::Path;

use super::{
    ControlConfig, DeviceConfig, GpuSelection, HttpConfig, JobConfig, NodeConfig, ServiceConfig,
};

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

/// `Debug` keeps a `.0` on whole floats and writes the shortest text that reads back exactly.
fn f(x: f64) -> String {
    format!("{x:?}")
}

fn list(v: &[usize]) -> String {
    let items: Vec<String> = v.iter().map(usize::to_string).collect();
    format!("[{}]", items.join(", "))
}

impl NodeConfig {
    /// Every resolved value, defaults included, as commented TOML: one section per device,
    /// control, service and job. The auth token shows only as `(set)` or `(not set)`.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut o);
        o
    }

    fn write_summary(&self, o: &mut String) -> std::fmt::Result {
        writeln!(
            o,
            "# setpoint configuration as understood: every value resolved, defaults included"
        )?;
        writeln!(o, "listen = {}", q(&self.listen.to_string()))?;
        let grpc = self.grpc_listen.map(|a| a.to_string()).unwrap_or_default();
        writeln!(o, "grpc_listen = {}", q(&grpc))?;
        writeln!(o, "state_dir = {}", qp(&self.state_dir))?;
        writeln!(o, "control_period_ms = {}", self.control_period_ms)?;
        match self.auth_token {
            Some(_) => writeln!(o, "# auth_token: (set)")?,
            None => writeln!(o, "# auth_token: (not set, the api is open)")?,
        }
        writeln!(o, "max_request_bytes = {}", self.max_request_bytes)?;
        writeln!(o, "drain_timeout_ms = {}", self.drain_timeout_ms)?;
        writeln!(
            o,
            "checkpoint_error_timeout_ms = {}",
            self.checkpoint_error_timeout_ms
        )?;
        write_http(o, &self.http)?;
        write_device(o, &self.device)?;
        write_control(o, &self.control)?;

        writeln!(o, "\n[paths]")?;
        let dirs: Vec<String> = self.paths.data_dirs.iter().map(|d| qp(d)).collect();
        writeln!(o, "data_dirs = [{}]  # and the state dir", dirs.join(", "))?;

        if self.services.is_empty() {
            writeln!(o, "\n# no services")?;
        }
        for s in &self.services {
            write_service(o, s)?;
        }
        if self.jobs.is_empty() {
            writeln!(o, "\n# no jobs")?;
        }
        for j in &self.jobs {
            write_job(o, j)?;
        }
        Ok(())
    }
}

/// The `[http]` section.
fn write_http(o: &mut String, h: &HttpConfig) -> std::fmt::Result {
    writeln!(o, "\n[http]")?;
    writeln!(o, "header_read_timeout_ms = {}", h.header_read_timeout_ms)?;
    writeln!(o, "idle_timeout_ms = {}", h.idle_timeout_ms)?;
    writeln!(o, "max_connections = {}", h.max_connections)?;
    writeln!(o, "listen_backlog = {}", h.listen_backlog)?;
    writeln!(o, "reserved_fds = {}", h.reserved_fds)?;
    writeln!(o, "io_threads = {}", h.io_threads)
}

/// The `[device]` section.
fn write_device(o: &mut String, d: &DeviceConfig) -> std::fmt::Result {
    writeln!(o, "\n[device]")?;
    writeln!(o, "kind = {}", q(d.kind.as_str()))?;
    match &d.gpus {
        GpuSelection::All => writeln!(o, "gpus = \"all\"")?,
        GpuSelection::Indices(ids) => {
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            writeln!(o, "gpus = [{}]", ids.join(", "))?
        }
    }
    writeln!(o, "require_gpu = {}", d.require_gpu)?;
    if d.cpu_threads == 0 {
        writeln!(o, "cpu_threads = 0  # all available cores")?;
    } else {
        writeln!(o, "cpu_threads = {}", d.cpu_threads)?;
    }
    writeln!(o, "share_mechanism = {}", q(d.share_mechanism.as_str()))?;
    writeln!(o, "gemm_wgmma = {}", d.gemm_wgmma)?;
    writeln!(o, "cuda_graphs = {}", d.cuda_graphs)?;
    match d.memory_limit_mib {
        Some(m) => writeln!(o, "memory_limit_mib = {m}")?,
        None => writeln!(o, "memory_limit_mib = 0  # all of each GPU's memory")?,
    }
    if d.cpu_split.is_empty() {
        writeln!(o, "# cpu_split: none, the CPU is one device")
    } else {
        let parts: Vec<String> = d.cpu_split.iter().map(|&x| f(x)).collect();
        writeln!(o, "cpu_split = [{}]", parts.join(", "))
    }
}

/// The `[control]` section.
fn write_control(o: &mut String, c: &ControlConfig) -> std::fmt::Result {
    writeln!(o, "\n[control]")?;
    writeln!(o, "reserve_frac = {}", f(c.reserve_frac))?;
    writeln!(o, "leftover = {}", q(c.leftover.as_str()))?;
    writeln!(o, "past_deadline = {}", q(c.past_deadline.as_str()))?;
    writeln!(o, "cpu_foreign_load = {}", c.cpu_foreign_load)?;
    match &c.decision_log {
        Some(p) => writeln!(o, "decision_log = {}", qp(p)),
        None => writeln!(o, "decision_log = \"\"  # off"),
    }
}

fn write_service(o: &mut String, s: &ServiceConfig) -> std::fmt::Result {
    writeln!(o, "\n[[services]]")?;
    writeln!(o, "name = {}", q(&s.name))?;
    match &s.layers {
        Some(l) => writeln!(o, "layers = {}", list(l))?,
        None => writeln!(o, "# layers: taken from the checkpoint")?,
    }
    match &s.checkpoint {
        Some(p) => writeln!(o, "checkpoint = {}", qp(p))?,
        None => writeln!(
            o,
            "checkpoint = \"\"  # none: weights initialised from seed"
        )?,
    }
    writeln!(o, "seed = {}", s.seed)?;
    match &s.warmup_data {
        Some(d) => writeln!(o, "warmup_data = {}", q(d))?,
        None => writeln!(o, "warmup_data = \"\"  # none")?,
    }
    writeln!(o, "max_queue = {}", s.max_queue)?;
    writeln!(o, "timeout_ms = {}", f(s.timeout_ms))?;
    if s.replicas.is_empty() {
        writeln!(
            o,
            "# replicas: one, on the device with the least share held"
        )?;
    } else {
        let r: Vec<String> = s.replicas.iter().map(|r| q(&r.to_string())).collect();
        writeln!(o, "replicas = [{}]", r.join(", "))?;
    }
    writeln!(o, "[services.slo]")?;
    writeln!(o, "p99_ms = {}", f(s.slo.p99_ms))?;
    writeln!(o, "window_ms = {}", s.slo.window_ms)?;
    writeln!(o, "[services.batching]")?;
    writeln!(o, "max_batch_size = {}", s.batching.max_batch_size)?;
    writeln!(
        o,
        "max_queue_delay_ms = {}",
        f(s.batching.max_queue_delay_ms)
    )
}

fn write_job(o: &mut String, j: &JobConfig) -> std::fmt::Result {
    writeln!(o, "\n[[jobs]]")?;
    writeln!(o, "name = {}", q(&j.name))?;
    writeln!(o, "data = {}", q(&j.data))?;
    writeln!(o, "layers = {}", list(&j.layers))?;
    writeln!(o, "optimizer = {}", q(j.optimizer.as_str()))?;
    writeln!(o, "lr = {}", f(j.lr))?;
    if j.optimizer == super::OptimizerKind::Sgd {
        writeln!(o, "momentum = {}", f(j.momentum))?;
    }
    writeln!(o, "weight_decay = {}", f(j.weight_decay))?;
    writeln!(o, "batch_size = {}", j.batch_size)?;
    writeln!(o, "epochs = {}", j.epochs)?;
    match j.target_accuracy {
        Some(a) => writeln!(o, "target_accuracy = {}", f(a))?,
        None => writeln!(o, "# target_accuracy: none, runs all {} epochs", j.epochs)?,
    }
    writeln!(o, "val_fraction = {}", f(j.val_fraction))?;
    writeln!(o, "seed = {}", j.seed)?;
    match &j.deadline {
        Some(d) => writeln!(o, "deadline = {}", q(&d.to_string()))?,
        None => writeln!(o, "# deadline: none")?,
    }
    writeln!(o, "checkpoint_every_steps = {}", j.checkpoint_every_steps)?;
    if j.deadline.is_none() {
        writeln!(o, "best_effort = true  # no deadline")
    } else {
        writeln!(o, "best_effort = {}", j.best_effort)
    }
}
