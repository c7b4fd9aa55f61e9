//! Prometheus text exposition (format 0.0.4) of the node's state: tables of families, each
//! declared once (name, type, help) with how its samples are read, written by
//! [`crate::util::prometheus`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::server::ConnectionStats;
use crate::control::Decisions;
use crate::node::{DeviceId, JobState, JobView, LoadedService, Node};
use crate::serve::{Protocol, ServiceStats};
use crate::util::prometheus::{self, Empty, Family, Row, Samples, flag};
use crate::util::window::WindowStats;

/// A family of the node and how its samples are read from a [`Ctx`] of any lifetime.
type NodeRow = (Family, fn(&Ctx<'_>, &mut Samples<'_>));

/// What the node's families are read from: the node, and what is read from it once per
/// rendering.
struct Ctx<'a> {
    node: &'a Node,
    reloads: (u64, u64, bool),
    services: Vec<(Arc<LoadedService>, ServiceStats)>,
    decisions: Decisions,
    ticks: u64,
    jobs: Vec<JobView>,
}

/// One sample per ready service, labelled by its name.
fn per_service(c: &Ctx<'_>, o: &mut Samples<'_>, get: fn(&LoadedService, &ServiceStats) -> f64) {
    for (s, st) in &c.services {
        o.add(&[("service", s.name())], get(s, st));
    }
}

/// One sample per replica of every ready service, labelled by the service and the device,
/// from the replica and its fraction of the service's rows.
fn per_replica(c: &Ctx<'_>, o: &mut Samples<'_>, get: fn(&crate::node::Replica, f64) -> f64) {
    for (s, _) in &c.services {
        for (r, fraction) in s.replicas().iter().zip(s.split()) {
            let labels = [("service", s.name()), ("device", r.device_name.as_str())];
            o.add(&labels, get(r, fraction));
        }
    }
}

/// The median, 95th and 99th percentile of `window`'s request latency, seconds, labelled by
/// `labels` and `q`; nothing for an empty window.
fn latency_quantiles(o: &mut Samples<'_>, labels: &[(&str, &str)], window: &WindowStats) {
    if window.count == 0 {
        return;
    }
    let t = &window.total;
    let mut with_q = labels.to_vec();
    with_q.push(("q", ""));
    for (q, v) in [("0.5", t.p50), ("0.95", t.p95), ("0.99", t.p99)] {
        with_q.last_mut().expect("q was pushed").1 = q;
        o.add(&with_q, v);
    }
}

/// Each service's replicas: where they run, their shares, their part of the rows, and how
/// fast they answer.
const REPLICAS: [NodeRow; 6] = [
    (
        Family::gauge(
            "setpoint_replica_share",
            "Share of its device a service's replica runs at.",
        ),
        |c, o| per_replica(c, o, |r, _| r.lane.share()),
    ),
    (
        Family::gauge(
            "setpoint_replica_rows_fraction",
            "Fraction of the service's rows the controller sends the replica.",
        ),
        |c, o| per_replica(c, o, |_, f| f),
    ),
    (
        Family::gauge(
            "setpoint_replica_rows_per_second",
            "Rows the replica answered per second over the last control period.",
        ),
        |c, o| per_replica(c, o, |r, _| r.rate()),
    ),
    (
        Family::gauge(
            "setpoint_replica_up",
            "1 while the replica takes rows (its device works, its batcher runs), else 0.",
        ),
        |c, o| per_replica(c, o, |r, _| f64::from(u8::from(r.is_up()))),
    ),
    (
        Family::gauge(
            "setpoint_replica_seldom",
            "1 while the split passes the replica over until more rows come: its p99 was over \
             the latency set point while it answered under half its capacity, else 0.",
        ),
        |c, o| per_replica(c, o, |r, _| f64::from(u8::from(r.is_seldom()))),
    ),
    (
        Family::gauge(
            "setpoint_replica_latency_window_seconds",
            "Request latency (queue + compute) quantiles of a service's replica over the \
             service's SLO window.",
        ),
        |c, o| {
            for (s, _) in &c.services {
                for r in s.replicas() {
                    let labels = [("service", s.name()), ("device", r.device_name.as_str())];
                    latency_quantiles(o, &labels, &r.batcher.window_stats());
                }
            }
        },
    ),
];

/// One sample per job with a value, labelled by its name.
fn per_job(c: &Ctx<'_>, o: &mut Samples<'_>, get: fn(&JobView) -> Option<f64>) {
    for j in &c.jobs {
        if let Some(v) = get(j) {
            o.add(&[("job", &j.name)], v);
        }
    }
}

/// One sample per device, labelled by its name.
fn per_device(c: &Ctx<'_>, o: &mut Samples<'_>, get: fn(&Ctx<'_>, DeviceId) -> f64) {
    for d in c.node.devices() {
        let name = c.node.placement(d).name();
        o.add(&[("device", name.as_str())], get(c, d));
    }
}

/// One sample per device from `values`, by device index (0 where there is none).
fn by_device(c: &Ctx<'_>, o: &mut Samples<'_>, values: &[f64]) {
    for d in c.node.devices() {
        let name = c.node.placement(d).name();
        o.add(
            &[("device", name.as_str())],
            values.get(d.index()).copied().unwrap_or(0.0),
        );
    }
}

/// The process, its readiness and configuration reloads.
const PROCESS: [NodeRow; 5] = [
    (
        Family::counter(
            "setpoint_process_cpu_seconds_total",
            "CPU time the daemon's threads have used since it started, user and system, in seconds.",
        ),
        |_, o| o.add(&[], crate::util::cputime::process_cpu_time().as_secs_f64()),
    ),
    (
        Family::gauge(
            "setpoint_process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
        ),
        |c, o| {
            let start = c.node.started_at().duration_since(std::time::UNIX_EPOCH);
            o.add(&[], start.map_or(0.0, |d| d.as_secs_f64()));
        },
    ),
    (
        Family::gauge(
            "setpoint_ready",
            "1 when every service is serving, some device works and the node is not shutting down.",
        ),
        |c, o| o.add(&[], flag(c.node.is_ready())),
    ),
    (
        Family::counter(
            "setpoint_config_reloads_total",
            "Configuration reloads (SIGHUP, POST /v1/reload) by result: ok (applied), error (refused, the running configuration kept).",
        ),
        |c, o| {
            o.add(&[("result", "ok")], c.reloads.0 as f64);
            o.add(&[("result", "error")], c.reloads.1 as f64);
        },
    ),
    (
        Family::gauge(
            "setpoint_config_last_reload_successful",
            "0 when the last configuration reload was refused, else 1.",
        ),
        |c, o| o.add(&[], flag(c.reloads.2)),
    ),
];

/// The inference services' counters, histograms and limits.
const INFERENCE: [NodeRow; 11] = [
    (
        Family::counter(
            "setpoint_inference_requests_total",
            "Inference requests by outcome: success, failure (compute error), rejected (queue full), invalid (malformed request), timeout (answered 504: no answer within the request's timeout).",
        ),
        |c, o| {
            for (s, st) in &c.services {
                for (outcome, v) in [
                    ("success", st.success_count),
                    ("failure", st.failure_count),
                    ("rejected", st.rejected_count),
                    ("invalid", s.invalid_count()),
                    ("timeout", s.timeout_count()),
                ] {
                    o.add(&[("service", s.name()), ("outcome", outcome)], v as f64);
                }
            }
        },
    ),
    (
        Family::counter(
            "setpoint_inference_rows_total",
            "Rows run by the batcher, by outcome: success (computed), failure (compute error).",
        ),
        |c, o| {
            for (s, st) in &c.services {
                for (outcome, v) in [("success", st.success_rows), ("failure", st.failure_rows)] {
                    o.add(&[("service", s.name()), ("outcome", outcome)], v as f64);
                }
            }
        },
    ),
    (
        Family::counter(
            "setpoint_inference_expired_total",
            "Rows taken out of the queue without being run because their timeout had passed.",
        ),
        |c, o| per_service(c, o, |_, st| st.expired_count as f64),
    ),
    (
        Family::counter(
            "setpoint_inference_batches_total",
            "Forward passes (model executions) run by the batcher.",
        ),
        |c, o| per_service(c, o, |_, st| st.batch_count as f64),
    ),
    (
        Family::histogram(
            "setpoint_inference_queue_duration_seconds",
            "Time a request waited for its batch to start.",
        ),
        |c, o| {
            for (s, st) in &c.services {
                o.histogram(&[("service", s.name())], &st.queue_hist);
            }
        },
    ),
    (
        Family::histogram(
            "setpoint_inference_compute_duration_seconds",
            "Compute time of the batch a request ran in (input, forward pass, output).",
        ),
        |c, o| {
            for (s, st) in &c.services {
                o.histogram(&[("service", s.name())], &st.compute_hist);
            }
        },
    ),
    (
        Family::histogram(
            "setpoint_inference_request_duration_seconds",
            "End-to-end time of successful inference requests, arrival to answer, by protocol (http, grpc).",
        ),
        |c, o| {
            for (s, _) in &c.services {
                for p in Protocol::ALL {
                    o.histogram(
                        &[("service", s.name()), ("protocol", p.label())],
                        &s.request_hist(p),
                    );
                }
            }
        },
    ),
    (
        Family::histogram("setpoint_inference_batch_size", "Rows per forward pass."),
        |c, o| {
            for (s, st) in &c.services {
                o.histogram(&[("service", s.name())], &st.batch_hist);
            }
        },
    ),
    (
        Family::gauge(
            "setpoint_inference_queue_length",
            "Requests waiting for a batch.",
        ),
        |c, o| per_service(c, o, |s, _| s.queue_len() as f64),
    ),
    (
        Family::gauge(
            "setpoint_inference_max_batch_size",
            "Batch size limit in force.",
        ),
        |c, o| per_service(c, o, |s, _| s.max_batch_size() as f64),
    ),
    (
        Family::gauge(
            "setpoint_inference_slo_seconds",
            "Response-time objective (p99) of the service.",
        ),
        |c, o| per_service(c, o, |s, _| s.config().slo.p99_ms / 1000.0),
    ),
];

/// The devices, the control loop and what it measured and decided.
const CONTROL: [NodeRow; 8] = [
    (
        Family::gauge(
            "setpoint_device_busy_ratio",
            "Fraction of the device's workers busy over the last control period.",
        ),
        |c, o| by_device(c, o, &c.node.busy_by_device()),
    ),
    (
        Family::gauge(
            "setpoint_device_foreign_load_ratio",
            "Other processes' load on the device, as a fraction of it, taken off the capacity the controller hands out.",
        ),
        |c, o| by_device(c, o, &c.node.foreign_by_device()),
    ),
    (
        Family::gauge(
            "setpoint_device_up",
            "1 while the device runs its tenants, 0 once it has failed (until the daemon restarts).",
        ),
        |c, o| per_device(c, o, |c, d| flag(c.node.device_failure(d).is_none())),
    ),
    (
        Family::counter("setpoint_controller_ticks_total", "Control periods run."),
        |c, o| o.add(&[], c.ticks as f64),
    ),
    (
        Family::gauge(
            "setpoint_service_latency_window_seconds",
            "Request latency (queue + compute) quantiles over the service's SLO window.",
        ),
        |c, o| {
            for (s, _) in &c.services {
                if let Some(m) = c.node.service_measure(s.name()) {
                    latency_quantiles(o, &[("service", s.name())], &m.window);
                }
            }
        },
    ),
    (
        Family::gauge(
            "setpoint_service_arrival_rate_per_second",
            "Requests arriving per second over the last control period.",
        ),
        |c, o| {
            for (s, _) in &c.services {
                if let Some(m) = c.node.service_measure(s.name()) {
                    o.add(&[("service", s.name())], m.arrival_rate);
                }
            }
        },
    ),
    (
        Family::gauge(
            "setpoint_tenant_requested_share_ratio",
            "Share a tenant's loop asked for at the last tick, before the arbiter.",
        ),
        |c, o| {
            for d in &c.decisions.services {
                o.add(&[("tenant", &d.name), ("kind", "service")], d.requested);
            }
            for d in &c.decisions.jobs {
                o.add(&[("tenant", &d.name), ("kind", "job")], d.requested);
            }
        },
    ),
    (
        Family::gauge(
            "setpoint_job_required_steps_per_second",
            "Steps per second a deadline job needs to finish on time.",
        ),
        |c, o| {
            for d in &c.decisions.jobs {
                if let Some(r) = d.required_rate.filter(|r| r.is_finite()) {
                    o.add(&[("job", &d.name)], r);
                }
            }
        },
    ),
];

/// The tenants' shares and the jobs' progress.
const TENANTS: [NodeRow; 8] = [
    (
        Family::gauge(
            "setpoint_tenant_share_ratio",
            "Share of the device a tenant runs at, in [0, 1].",
        ),
        |c, o| {
            for v in c.node.service_views() {
                o.add(&[("tenant", &v.name), ("kind", "service")], v.share);
            }
            for j in &c.jobs {
                o.add(&[("tenant", &j.name), ("kind", "job")], j.share);
            }
        },
    ),
    (
        Family::gauge(
            "setpoint_job_progress_ratio",
            "Fraction of the epoch limit a job has done.",
        ),
        |c, o| per_job(c, o, |j| Some(j.progress)),
    ),
    (
        Family::counter(
            "setpoint_job_steps_total",
            "Optimiser steps a job has taken.",
        ),
        |c, o| per_job(c, o, |j| Some(j.steps as f64)),
    ),
    (
        Family::counter(
            "setpoint_job_checkpoint_errors_total",
            "Checkpoint writes of a job that failed (training goes on until the timeout).",
        ),
        |c, o| per_job(c, o, |j| Some(j.checkpoint_errors as f64)),
    ),
    (
        Family::gauge(
            "setpoint_job_val_accuracy_ratio",
            "Validation accuracy after a job's last epoch.",
        ),
        |c, o| per_job(c, o, |j| j.val_accuracy),
    ),
    (
        Family::gauge(
            "setpoint_job_deadline_slack_seconds",
            "Deadline minus estimated finish of a job; negative when it is expected late.",
        ),
        |c, o| per_job(c, o, |j| j.slack_s),
    ),
    (
        Family::gauge(
            "setpoint_job_samples_per_second",
            "Training samples per second of a running job.",
        ),
        |c, o| per_job(c, o, |j| Some(j.samples_per_s)),
    ),
    (Family::gauge("setpoint_jobs", "Jobs by state."), |c, o| {
        for state in [
            JobState::Pending,
            JobState::Loading,
            JobState::Running,
            JobState::Completed,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            let n = c.jobs.iter().filter(|j| j.state == state).count();
            let name = format!("{state:?}").to_lowercase();
            o.add(&[("state", &name)], n as f64);
        }
    }),
];

/// The listener's connections: open, the cap, and why some were refused or closed.
const CONNECTIONS: [Row<ConnectionStats>; 5] = [
    (
        Family::gauge(
            "setpoint_http_connections_open",
            "HTTP connections open now.",
        ),
        |c, o| o.add(&[], get(&c.open)),
    ),
    (
        Family::gauge(
            "setpoint_http_connections_max",
            "The cap on open HTTP connections in force (http.max_connections, lowered to what the descriptor limit allows).",
        ),
        |c, o| o.add(&[], get(&c.limit)),
    ),
    (
        Family::counter(
            "setpoint_http_connections_accepted_total",
            "HTTP connections accepted and served.",
        ),
        |c, o| o.add(&[], get(&c.accepted)),
    ),
    (
        Family::counter(
            "setpoint_http_connections_closed_total",
            "HTTP connections closed by the daemon, by reason: refused (the cap was reached; answered 503), idle (http.idle_timeout_ms), header_timeout (http.header_read_timeout_ms).",
        ),
        |c, o| {
            for (reason, n) in [
                ("refused", &c.refused),
                ("idle", &c.idle_closed),
                ("header_timeout", &c.header_timeouts),
            ] {
                o.add(&[("reason", reason)], get(n));
            }
        },
    ),
    (
        Family::counter(
            "setpoint_http_accept_errors_total",
            "Failed accepts; those for want of descriptors (EMFILE, ENFILE) are retried after a pause of up to 1 s.",
        ),
        |c, o| o.add(&[], get(&c.accept_errors)),
    ),
];

/// The gRPC listener's connections (it shares HTTP's cap and idle timeout).
const GRPC_CONNECTIONS: [Row<ConnectionStats>; 5] = [
    (
        Family::gauge(
            "setpoint_grpc_connections_open",
            "gRPC (HTTP/2) connections open now.",
        ),
        |c, o| o.add(&[], get(&c.open)),
    ),
    (
        Family::gauge(
            "setpoint_grpc_connections_max",
            "The cap on open gRPC connections in force (http.max_connections, lowered to what the descriptor limit allows).",
        ),
        |c, o| o.add(&[], get(&c.limit)),
    ),
    (
        Family::counter(
            "setpoint_grpc_connections_accepted_total",
            "gRPC connections accepted and served.",
        ),
        |c, o| o.add(&[], get(&c.accepted)),
    ),
    (
        Family::counter(
            "setpoint_grpc_connections_closed_total",
            "gRPC connections closed by the daemon, by reason: refused (the cap was reached; closed unanswered), idle (no call in flight for http.idle_timeout_ms; sent GOAWAY).",
        ),
        |c, o| {
            for (reason, n) in [("refused", &c.refused), ("idle", &c.idle_closed)] {
                o.add(&[("reason", reason)], get(n));
            }
        },
    ),
    (
        Family::counter(
            "setpoint_grpc_accept_errors_total",
            "Failed accepts on the gRPC listener; each is followed by a pause of 50 ms.",
        ),
        |c, o| o.add(&[], get(&c.accept_errors)),
    ),
];

fn get(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// Renders every metric of the node and of its HTTP listener, and of its gRPC listener when
/// there is one (`grpc_conns`; with gRPC off its connection metrics are left out rather than
/// shown as zeros).
pub fn render(
    node: &Node,
    conns: &ConnectionStats,
    grpc_conns: Option<&ConnectionStats>,
) -> String {
    let reloads = node.reload_counts();
    let services = node.ready_services();
    let services = services
        .into_iter()
        .map(|s| (s.clone(), s.stats()))
        .collect();
    let decisions = node.last_decisions();
    let (_, ticks) = node.busy_and_ticks();
    let jobs = node.jobs().iter().map(|j| node.job_view(j)).collect();
    let ctx = Ctx {
        node,
        reloads,
        services,
        decisions,
        ticks,
        jobs,
    };
    let mut out = String::with_capacity(8192);
    for rows in [&PROCESS[..], &INFERENCE, &REPLICAS, &CONTROL, &TENANTS] {
        prometheus::table(&mut out, rows, &ctx, Empty::Keep);
    }
    prometheus::table(&mut out, &CONNECTIONS, conns, Empty::Keep);
    if let Some(grpc) = grpc_conns {
        prometheus::table(&mut out, &GRPC_CONNECTIONS, grpc, Empty::Keep);
    }
    // What NVML reports per GPU (nothing on a host without GPUs).
    let (gpus, failed_reads) = node.telemetry();
    if !gpus.is_empty() || failed_reads > 0 {
        crate::telemetry::render_metrics(&gpus, failed_reads, &mut out);
    }
    out
}
