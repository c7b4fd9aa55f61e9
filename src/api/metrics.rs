//! Prometheus text exposition (format 0.0.4) of the node's state.

use std::fmt::Write;

use std::sync::atomic::Ordering;

use super::server::ConnectionStats;
use crate::node::{JobState, Node};
use crate::util::histogram::Histogram;

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

struct Out {
    text: String,
}

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", esc(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", num(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        for (bound, count) in h.cumulative() {
            let le = num(bound);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }
}

/// Renders every metric of the node and of its HTTP listener.
pub fn render(node: &Node, conns: &ConnectionStats) -> String {
    let mut o = Out {
        text: String::with_capacity(8192),
    };
    let start = node
        .started_at()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    o.header(
        "setpoint_process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
    );
    o.sample("setpoint_process_start_time_seconds", &[], start);
    o.header(
        "setpoint_ready",
        "gauge",
        "1 when every service is serving, some device works and the node is not shutting down.",
    );
    o.sample(
        "setpoint_ready",
        &[],
        if node.is_ready() { 1.0 } else { 0.0 },
    );

    let (reloads_ok, reloads_failed, last_ok) = node.reload_counts();
    o.header(
        "setpoint_config_reloads_total",
        "counter",
        "Configuration reloads (SIGHUP, POST /v1/reload) by result: ok (applied), error (refused, the running configuration kept).",
    );
    o.sample(
        "setpoint_config_reloads_total",
        &[("result", "ok")],
        reloads_ok as f64,
    );
    o.sample(
        "setpoint_config_reloads_total",
        &[("result", "error")],
        reloads_failed as f64,
    );
    o.header(
        "setpoint_config_last_reload_successful",
        "gauge",
        "0 when the last configuration reload was refused, else 1.",
    );
    o.sample(
        "setpoint_config_last_reload_successful",
        &[],
        if last_ok { 1.0 } else { 0.0 },
    );

    let services = node.ready_services();
    let stats: Vec<_> = services.iter().map(|s| (s, s.stats())).collect();

    o.header(
        "setpoint_inference_requests_total",
        "counter",
        "Inference rows by outcome: success, failure (compute error), rejected (queue full), invalid (malformed request), timeout (answered 504: no answer within the request's timeout).",
    );
    for (s, st) in &stats {
        for (outcome, v) in [
            ("success", st.success_count),
            ("failure", st.failure_count),
            ("rejected", st.rejected_count),
            ("invalid", s.invalid_count()),
            ("timeout", s.timeout_count()),
        ] {
            o.sample(
                "setpoint_inference_requests_total",
                &[("service", s.name()), ("outcome", outcome)],
                v as f64,
            );
        }
    }
    o.header(
        "setpoint_inference_expired_total",
        "counter",
        "Requests taken out of the queue without being run because their timeout had passed.",
    );
    for (s, st) in &stats {
        o.sample(
            "setpoint_inference_expired_total",
            &[("service", s.name())],
            st.expired_count as f64,
        );
    }
    o.header(
        "setpoint_inference_batches_total",
        "counter",
        "Forward passes run by the batcher.",
    );
    for (s, st) in &stats {
        o.sample(
            "setpoint_inference_batches_total",
            &[("service", s.name())],
            st.batch_count as f64,
        );
    }
    o.header(
        "setpoint_inference_queue_duration_seconds",
        "histogram",
        "Time a request waited for its batch to start.",
    );
    for (s, st) in &stats {
        o.histogram(
            "setpoint_inference_queue_duration_seconds",
            &[("service", s.name())],
            &st.queue_hist,
        );
    }
    o.header(
        "setpoint_inference_compute_duration_seconds",
        "histogram",
        "Compute time of the batch a request ran in (input, forward pass, output).",
    );
    for (s, st) in &stats {
        o.histogram(
            "setpoint_inference_compute_duration_seconds",
            &[("service", s.name())],
            &st.compute_hist,
        );
    }
    o.header(
        "setpoint_inference_request_duration_seconds",
        "histogram",
        "End-to-end time of successful HTTP inference requests, body read to response.",
    );
    for (s, _) in &stats {
        o.histogram(
            "setpoint_inference_request_duration_seconds",
            &[("service", s.name())],
            &s.request_hist(),
        );
    }
    o.header(
        "setpoint_inference_batch_size",
        "histogram",
        "Rows per forward pass.",
    );
    for (s, st) in &stats {
        o.histogram(
            "setpoint_inference_batch_size",
            &[("service", s.name())],
            &st.batch_hist,
        );
    }
    o.header(
        "setpoint_inference_queue_length",
        "gauge",
        "Requests waiting for a batch.",
    );
    for (s, _) in &stats {
        o.sample(
            "setpoint_inference_queue_length",
            &[("service", s.name())],
            s.batcher.queue_len() as f64,
        );
    }
    o.header(
        "setpoint_inference_max_batch_size",
        "gauge",
        "Batch size limit in force.",
    );
    for (s, _) in &stats {
        o.sample(
            "setpoint_inference_max_batch_size",
            &[("service", s.name())],
            s.batcher.max_batch_size() as f64,
        );
    }
    o.header(
        "setpoint_inference_slo_seconds",
        "gauge",
        "Response-time objective (p99) of the service.",
    );
    for (s, _) in &stats {
        o.sample(
            "setpoint_inference_slo_seconds",
            &[("service", s.name())],
            s.config().slo.p99_ms / 1000.0,
        );
    }

    let decisions = node.last_decisions();
    let (_, ticks) = node.busy_and_ticks();
    o.header(
        "setpoint_device_busy_ratio",
        "gauge",
        "Fraction of the device's workers busy over the last control period.",
    );
    let busy = node.busy_by_device();
    for d in node.devices() {
        let name = node.placement(d).name();
        o.sample(
            "setpoint_device_busy_ratio",
            &[("device", name.as_str())],
            busy.get(d.index()).copied().unwrap_or(0.0),
        );
    }
    o.header(
        "setpoint_device_up",
        "gauge",
        "1 while the device runs its tenants, 0 once it has failed (until the daemon restarts).",
    );
    for d in node.devices() {
        let name = node.placement(d).name();
        let up = node.device_failure(d).is_none();
        o.sample(
            "setpoint_device_up",
            &[("device", name.as_str())],
            if up { 1.0 } else { 0.0 },
        );
    }
    o.header(
        "setpoint_controller_ticks_total",
        "counter",
        "Control periods run.",
    );
    o.sample("setpoint_controller_ticks_total", &[], ticks as f64);
    o.header(
        "setpoint_service_latency_window_seconds",
        "gauge",
        "Request latency (queue + compute) quantiles over the service's SLO window.",
    );
    for (s, _) in &stats {
        if let Some(m) = node
            .service_measure(s.name())
            .filter(|m| m.window.count > 0)
        {
            for (q, v) in [
                ("0.5", m.window.total.p50),
                ("0.95", m.window.total.p95),
                ("0.99", m.window.total.p99),
            ] {
                o.sample(
                    "setpoint_service_latency_window_seconds",
                    &[("service", s.name()), ("q", q)],
                    v,
                );
            }
        }
    }
    o.header(
        "setpoint_service_arrival_rate_per_second",
        "gauge",
        "Requests arriving per second over the last control period.",
    );
    for (s, _) in &stats {
        if let Some(m) = node.service_measure(s.name()) {
            o.sample(
                "setpoint_service_arrival_rate_per_second",
                &[("service", s.name())],
                m.arrival_rate,
            );
        }
    }
    o.header(
        "setpoint_tenant_requested_share_ratio",
        "gauge",
        "Share a tenant's loop asked for at the last tick, before the arbiter.",
    );
    for d in &decisions.services {
        o.sample(
            "setpoint_tenant_requested_share_ratio",
            &[("tenant", &d.name), ("kind", "service")],
            d.requested,
        );
    }
    for d in &decisions.jobs {
        o.sample(
            "setpoint_tenant_requested_share_ratio",
            &[("tenant", &d.name), ("kind", "job")],
            d.requested,
        );
    }
    o.header(
        "setpoint_job_required_steps_per_second",
        "gauge",
        "Steps per second a deadline job needs to finish on time.",
    );
    for d in &decisions.jobs {
        if let Some(r) = d.required_rate.filter(|r| r.is_finite()) {
            o.sample(
                "setpoint_job_required_steps_per_second",
                &[("job", &d.name)],
                r,
            );
        }
    }
    let jobs: Vec<_> = node.jobs().iter().map(|j| node.job_view(j)).collect();
    o.header(
        "setpoint_tenant_share_ratio",
        "gauge",
        "Share of the device a tenant runs at, in [0, 1].",
    );
    for v in node.service_views() {
        o.sample(
            "setpoint_tenant_share_ratio",
            &[("tenant", &v.name), ("kind", "service")],
            v.share,
        );
    }
    for j in &jobs {
        o.sample(
            "setpoint_tenant_share_ratio",
            &[("tenant", &j.name), ("kind", "job")],
            j.share,
        );
    }
    o.header(
        "setpoint_job_progress_ratio",
        "gauge",
        "Fraction of the epoch limit a job has done.",
    );
    for j in &jobs {
        o.sample(
            "setpoint_job_progress_ratio",
            &[("job", &j.name)],
            j.progress,
        );
    }
    o.header(
        "setpoint_job_steps_total",
        "counter",
        "Optimiser steps a job has taken.",
    );
    for j in &jobs {
        o.sample(
            "setpoint_job_steps_total",
            &[("job", &j.name)],
            j.steps as f64,
        );
    }
    o.header(
        "setpoint_job_checkpoint_errors_total",
        "counter",
        "Checkpoint writes of a job that failed (training goes on until the timeout).",
    );
    for j in &jobs {
        o.sample(
            "setpoint_job_checkpoint_errors_total",
            &[("job", &j.name)],
            j.checkpoint_errors as f64,
        );
    }
    o.header(
        "setpoint_job_val_accuracy_ratio",
        "gauge",
        "Validation accuracy after a job's last epoch.",
    );
    for j in &jobs {
        if let Some(a) = j.val_accuracy {
            o.sample("setpoint_job_val_accuracy_ratio", &[("job", &j.name)], a);
        }
    }
    o.header(
        "setpoint_job_deadline_slack_seconds",
        "gauge",
        "Deadline minus estimated finish of a job; negative when it is expected late.",
    );
    for j in &jobs {
        if let Some(s) = j.slack_s {
            o.sample(
                "setpoint_job_deadline_slack_seconds",
                &[("job", &j.name)],
                s,
            );
        }
    }
    o.header(
        "setpoint_job_samples_per_second",
        "gauge",
        "Training samples per second of a running job.",
    );
    for j in &jobs {
        o.sample(
            "setpoint_job_samples_per_second",
            &[("job", &j.name)],
            j.samples_per_s,
        );
    }
    o.header("setpoint_jobs", "gauge", "Jobs by state.");
    for state in [
        JobState::Pending,
        JobState::Loading,
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ] {
        let n = jobs.iter().filter(|j| j.state == state).count();
        let name = format!("{state:?}").to_lowercase();
        o.sample("setpoint_jobs", &[("state", &name)], n as f64);
    }
    connections(&mut o, conns);
    // What NVML reports per GPU (nothing on a host without GPUs).
    let (gpus, failed_reads) = node.telemetry();
    if !gpus.is_empty() || failed_reads > 0 {
        crate::telemetry::render_metrics(&gpus, failed_reads, &mut o.text);
    }
    o.text
}

/// The listener's connections: open, the cap, and why some were refused or closed.
fn connections(o: &mut Out, c: &ConnectionStats) {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    o.header(
        "setpoint_http_connections_open",
        "gauge",
        "HTTP connections open now.",
    );
    o.sample("setpoint_http_connections_open", &[], get(&c.open));
    o.header(
        "setpoint_http_connections_max",
        "gauge",
        "The cap on open HTTP connections in force (http.max_connections, lowered to what the descriptor limit allows).",
    );
    o.sample("setpoint_http_connections_max", &[], get(&c.limit));
    o.header(
        "setpoint_http_connections_accepted_total",
        "counter",
        "HTTP connections accepted and served.",
    );
    o.sample(
        "setpoint_http_connections_accepted_total",
        &[],
        get(&c.accepted),
    );
    o.header(
        "setpoint_http_connections_closed_total",
        "counter",
        "HTTP connections closed by the daemon, by reason: refused (the cap was reached; answered 503), idle (http.idle_timeout_ms), header_timeout (http.header_read_timeout_ms).",
    );
    for (reason, n) in [
        ("refused", &c.refused),
        ("idle", &c.idle_closed),
        ("header_timeout", &c.header_timeouts),
    ] {
        o.sample(
            "setpoint_http_connections_closed_total",
            &[("reason", reason)],
            get(n),
        );
    }
    o.header(
        "setpoint_http_accept_errors_total",
        "counter",
        "Failed accepts; those for want of descriptors (EMFILE, ENFILE) are retried after a pause of up to 1 s.",
    );
    o.sample(
        "setpoint_http_accept_errors_total",
        &[],
        get(&c.accept_errors),
    );
}
