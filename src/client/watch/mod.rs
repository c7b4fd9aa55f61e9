//! `setpoint status --watch`: the status drawn again at every refresh, with each service's
//! p99 against its SLO and each job's progress against its deadline as bars and sparklines.
//!
//! [`WatchHistory`] keeps the status answers the client has seen (the latest in full, a
//! bounded ring of figures per tenant); [`frame`] turns it into the text of one frame, every
//! line within a given width. Both are pure: the command does the fetching and the drawing.

use std::collections::{HashMap, VecDeque};

use crate::node::{StatusView, TenantKind, TenantState, TenantView};
use crate::util::localtime::for_people;
use crate::util::table::signed_duration;

/// Samples kept per tenant: a minute at the default interval.
pub const HISTORY: usize = 60;

/// Cells of a bar (p99 against SLO, a job's progress, a device's share).
pub const BAR_CELLS: usize = 10;

/// Cells of a sparkline: the latest samples, one each.
pub const SPARK_CELLS: usize = 20;

/// The widest a frame is drawn unless told otherwise.
pub const DEFAULT_WIDTH: usize = 100;

/// Name columns are cut to this many characters, the last an ellipsis.
const NAME_CELLS: usize = 16;

/// The eight levels of a sparkline, lowest first.
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// What the watch has seen: the latest status, the latest error if the last refresh
/// failed, and per tenant the recent figures its sparkline draws.
#[derive(Debug, Clone, Default)]
pub struct WatchHistory {
    latest: Option<StatusView>,
    error: Option<String>,
    series: HashMap<(TenantKind, String), VecDeque<f64>>,
}

impl WatchHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one status answer: a service's p99 (ms), a job's share, each in a ring of
    /// at most [`HISTORY`] samples. Tenants that left the status are forgotten.
    pub fn record(&mut self, status: StatusView) {
        for t in &status.tenants {
            let value = match t.kind {
                TenantKind::Service => t.figures.p99_ms,
                TenantKind::Job => Some(t.share),
            };
            let ring = self.series.entry((t.kind, t.name.clone())).or_default();
            if let Some(v) = value {
                if ring.len() == HISTORY {
                    ring.pop_front();
                }
                ring.push_back(v);
            }
        }
        self.series.retain(|(kind, name), _| {
            status
                .tenants
                .iter()
                .any(|t| t.kind == *kind && &t.name == name)
        });
        self.latest = Some(status);
        self.error = None;
    }

    /// Records a refresh that failed: the frame shows `message` above the last status seen.
    pub fn record_error(&mut self, message: String) {
        self.error = Some(message);
    }

    /// The recent samples of one tenant, oldest first.
    pub fn series(&self, kind: TenantKind, name: &str) -> Vec<f64> {
        self.series
            .get(&(kind, name.to_string()))
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The text of one frame: a header, the devices, the services and the jobs, every line at
/// most `width` columns (names cut with an ellipsis, then any line still too long).
pub fn frame(history: &WatchHistory, width: usize) -> String {
    let mut lines = Vec::new();
    if let Some(e) = &history.error {
        lines.push(format!("! {e} (retrying)"));
    }
    match &history.latest {
        None => lines.push("waiting for the daemon's first answer".to_string()),
        Some(s) => {
            lines.push(header(s));
            lines.push(String::new());
            device_lines(s, &mut lines);
            lines.push(String::new());
            service_lines(s, history, &mut lines);
            lines.push(String::new());
            job_lines(s, history, &mut lines);
        }
    }
    let mut out = String::new();
    for l in lines {
        out.push_str(&fit(l.trim_end(), width));
        out.push('\n');
    }
    out
}

fn header(s: &StatusView) -> String {
    format!(
        "setpoint {}, up {}, {}, started {}, {} control ticks",
        s.version,
        signed_duration(s.uptime_s).trim_start_matches('+'),
        if s.ready { "ready" } else { "not ready" },
        for_people(&s.started_at),
        s.control_ticks
    )
}

fn device_lines(s: &StatusView, lines: &mut Vec<String>) {
    lines.push(format!(
        "{:<16} {:<16} {:>5} {:>8} {:>17}",
        "DEVICE", "SHARE ASSIGNED", "BUSY", "GPU UTIL", "MEMORY"
    ));
    for d in &s.devices {
        let sample = d
            .name
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<u32>().ok())
            .and_then(|i| s.gpu_telemetry.iter().find(|g| g.index == i));
        let util = sample
            .and_then(|g| g.util_gpu_pct)
            .map_or("-".to_string(), |u| format!("{u:.0}%"));
        let memory = match sample.map(|g| (g.mem_used_bytes, g.mem_total_bytes)) {
            Some((Some(used), Some(total))) => format!("{} / {} GiB", gib(used), gib(total)),
            _ => "-".to_string(),
        };
        let failed = if d.health.reason.is_some() {
            " failed"
        } else {
            ""
        };
        lines.push(format!(
            "{:<16} {} {:>4} {:>5} {:>8} {:>17}{failed}",
            name_cell(&d.name),
            bar(d.share_assigned),
            pct(d.share_assigned),
            pct(d.busy_frac),
            util,
            memory
        ));
    }
}

fn service_lines(s: &StatusView, history: &WatchHistory, lines: &mut Vec<String>) {
    let services: Vec<&TenantView> = tenants(s, TenantKind::Service).collect();
    if services.is_empty() {
        lines.push("no services".to_string());
        return;
    }
    lines.push(format!(
        "{:<16} {:<7} {:>15}  {:<16} {:<20} {:>7}",
        "SERVICE", "STATE", "P99 / SLO", "P99 OF SLO", "RECENT P99", "ROWS/S"
    ));
    for t in services {
        let slo = t.figures.slo_p99_ms;
        let latency = match (t.figures.p99_ms, slo) {
            (Some(p), Some(slo)) => format!("{p:.2} / {slo} ms"),
            (None, Some(slo)) => format!("- / {slo} ms"),
            _ => "-".to_string(),
        };
        let ratio = match (t.figures.p99_ms, slo) {
            (Some(p), Some(slo)) if slo > 0.0 => Some(p / slo),
            _ => None,
        };
        let gauge = ratio.map_or(format!("{:<16}", "-"), |r| {
            let mark = if r > 1.0 { '!' } else { ' ' };
            format!("{}{mark}{:>5}", bar(r), pct(r))
        });
        let recent = history.series(TenantKind::Service, &t.name);
        let top = recent.iter().copied().fold(slo.unwrap_or(0.0), f64::max);
        let rate = t
            .figures
            .rows_per_s
            .map_or("-".to_string(), |r| format!("{r:.0}/s"));
        lines.push(format!(
            "{:<16} {:<7} {:>15}  {gauge} {:<20} {:>7}",
            name_cell(&t.name),
            state_word(t.state),
            latency,
            sparkline(&recent, top),
            rate
        ));
        replica_lines(t, lines);
    }
}

/// One line per replica of a service that has several: its device, whether it is up (or
/// seldom: passed over while few rows are left for it), its
/// part of the rows, its share of its device, its rows per second against its planned
/// capacity, and its p99.
fn replica_lines(t: &TenantView, lines: &mut Vec<String>) {
    for r in &t.replicas {
        let p99 = r.p99_ms.map_or("-".to_string(), |p| format!("{p:.2} ms"));
        let capacity = r
            .capacity_rows_per_s
            .map_or("-".to_string(), |c| format!("{c:.0}/s"));
        lines.push(format!(
            "  on {:<10} {:<6} rows {:>5}  share {:>5}  {:>7} of {:>7}  p99 {}",
            r.device,
            if r.up { r.state() } else { "DOWN" },
            pct(r.fraction),
            pct(r.share),
            format!("{:.0}/s", r.rows_per_s),
            capacity,
            p99
        ));
    }
}

fn job_lines(s: &StatusView, history: &WatchHistory, lines: &mut Vec<String>) {
    let jobs: Vec<&TenantView> = tenants(s, TenantKind::Job).collect();
    if jobs.is_empty() {
        lines.push("no jobs".to_string());
        return;
    }
    lines.push(format!(
        "{:<16} {:<9} {:<15} {:>9} {:>15} {:<20} {:>4}",
        "JOB", "STATE", "PROGRESS", "SLACK", "ACCURACY", "RECENT SHARE", "NOW"
    ));
    for t in jobs {
        let f = &t.figures;
        let progress = f
            .progress
            .map_or("-".to_string(), |p| format!("{}{:>5}", bar(p), pct(p)));
        let slack = f.slack_s.map_or("-".to_string(), signed_duration);
        let accuracy = match (f.accuracy, f.target_accuracy) {
            (Some(a), Some(t)) => format!("{a:.3} / {t}"),
            (Some(a), None) => format!("{a:.3}"),
            (None, Some(t)) => format!("- / {t}"),
            (None, None) => "-".to_string(),
        };
        let recent = history.series(TenantKind::Job, &t.name);
        lines.push(format!(
            "{:<16} {:<9} {:<15} {:>9} {:>15} {:<20} {:>4}",
            name_cell(&t.name),
            state_word(t.state),
            progress,
            slack,
            accuracy,
            sparkline(&recent, 1.0),
            pct(t.share)
        ));
    }
}

fn tenants(s: &StatusView, kind: TenantKind) -> impl Iterator<Item = &TenantView> {
    s.tenants.iter().filter(move |t| t.kind == kind)
}

/// A tenant's state as status writes it (`ready`, `running`, …).
fn state_word(state: TenantState) -> String {
    serde_json::to_string(&state)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// A fraction as whole percent (`42%`).
fn pct(f: f64) -> String {
    format!("{:.0}%", f * 100.0)
}

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 30) as f64)
}

/// `fraction` of [`BAR_CELLS`] cells filled (`█`), the rest empty (`░`); rounded to the
/// nearest cell, capped at full.
pub fn bar(fraction: f64) -> String {
    let filled = if fraction.is_finite() {
        (fraction.clamp(0.0, 1.0) * BAR_CELLS as f64).round() as usize
    } else {
        0
    };
    let mut s = "█".repeat(filled);
    s.push_str(&"░".repeat(BAR_CELLS - filled));
    s
}

/// The last [`SPARK_CELLS`] of `values` as a sparkline scaled from 0 to `top` (a value at
/// or above `top` is the full block), padded with spaces to its width.
pub fn sparkline(values: &[f64], top: f64) -> String {
    let start = values.len().saturating_sub(SPARK_CELLS);
    let mut s: String = values[start..]
        .iter()
        .map(|&v| {
            let level = if top > 0.0 && v.is_finite() {
                ((v / top).clamp(0.0, 1.0) * (SPARKS.len() - 1) as f64).round() as usize
            } else {
                0
            };
            SPARKS[level]
        })
        .collect();
    let n = s.chars().count();
    s.push_str(&" ".repeat(SPARK_CELLS - n));
    s
}

/// A name cut to [`NAME_CELLS`] characters, the last an ellipsis when it was longer.
fn name_cell(name: &str) -> String {
    fit(name, NAME_CELLS)
}

/// `s` cut to `width` characters, its last an ellipsis when it was longer.
pub fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests;
