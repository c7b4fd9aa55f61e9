//! Text and SVG renderings of a scenario report.

use std::fmt::Write;

use super::scenario::{PolicyReport, Report};
use crate::util::table::Table;

/// One row per policy, in fixed-width columns (wider only where a figure needs it).
fn policy_table(r: &Report) -> Table {
    let mut t = Table::new(&[
        "POLICY",
        "WINDOWS OK",
        "REQUESTS OK",
        "P99 MS",
        "P50 MS",
        "REJECTED",
        "MISSES",
        "MEAN |DEV|",
        "SHARE-S",
        "BE SHARE-S",
        "BE EPOCHS",
        "DEVICE-S",
    ])
    .right_align(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    .min_widths(&[9, 10, 11, 8, 8, 9, 7, 10, 9, 10, 9, 9])
    .gap(" ");
    for p in &r.policies {
        t.row(vec![
            p.policy.clone(),
            format!("{:.1}%", p.windows_within_slo_pct),
            format!("{:.2}%", p.requests_within_slo_pct),
            format!("{:.2}", p.p99_ms),
            format!("{:.2}", p.p50_ms),
            p.rejected.to_string(),
            p.deadline_misses.to_string(),
            p.mean_abs_deviation_pct
                .map_or("-".into(), |d| format!("{d:.2} %")),
            p.share_seconds.map_or("-".into(), |s| format!("{s:.1}")),
            p.best_effort_share_seconds
                .map_or("-".into(), |s| format!("{s:.1}")),
            p.best_effort_epochs.to_string(),
            format!("{:.1}", p.device_seconds_used),
        ]);
    }
    t
}

/// The report as a table for a terminal.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "scenario {}: {} s per policy on {} cores, SLO p99 <= {} ms\n",
        r.scenario, r.duration_s, r.cores, r.slo_p99_ms
    );
    o.push_str(&policy_table(r).render());
    let _ = writeln!(o);
    for p in &r.policies {
        for j in &p.jobs {
            if j.deadline_s.is_none() {
                let _ = writeln!(
                    o,
                    "{:<9} job {:<12} best-effort: {} epochs done{}",
                    p.policy,
                    j.name,
                    j.epochs_done,
                    j.refused
                        .as_ref()
                        .map_or(String::new(), |r| format!(" (refused: {r})"))
                );
                continue;
            }
            let _ = writeln!(
                o,
                "{:<9} job {:<12} deadline {:>8} finished {:>8} deviation {:>9} {}{}",
                p.policy,
                j.name,
                j.deadline_s.map_or("-".into(), |d| format!("{d:.1} s")),
                j.finish_s.map_or("-".into(), |f| format!("{f:.1} s")),
                j.deviation_pct.map_or("-".into(), |d| format!("{d:+.2} %")),
                match (j.missed, j.met_early) {
                    (true, _) => "MISSED",
                    (false, true) => "met early (target reached)",
                    (false, false) => "met",
                },
                j.refused
                    .as_ref()
                    .map_or(String::new(), |r| format!(" (refused: {r})"))
            );
        }
    }
    let late: Vec<String> = r
        .policies
        .iter()
        .map(|p| format!("{} {:.2} ms", p.policy, p.generator_late_p99_ms))
        .collect();
    let _ = writeln!(
        o,
        "\nSHARE-S: share-seconds of the set-point tenants (service, deadline jobs); BE: what \
         best-effort jobs were given and the epochs they finished"
    );
    let _ = writeln!(
        o,
        "latency is the service's response time (queue + compute); the load generator's own \
         p99 lateness, not counted: {}",
        late.join(", ")
    );
    if let Some(x) = &r.ratios {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            o,
            "\nsetpoint / static: SLO window violations {}, request violations {}, share-seconds {}, device-seconds {}",
            f(x.slo_window_violations),
            f(x.slo_request_violations),
            f(x.share_seconds),
            f(x.device_seconds)
        );
    }
    o
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Width of the figure, in pixels.
const SVG_W: f64 = 960.0;
/// Height of one policy's panel, in pixels.
const PANEL_H: f64 = 300.0;
/// Left and right margin of the plots, in pixels.
const PAD: f64 = 50.0;

/// Where one policy's panel lies in the figure, and how it maps time, latency and share to
/// pixels.
struct Panel {
    /// Top of the panel.
    top: f64,
    /// Top and height of the latency plot.
    lat_y0: f64,
    lat_h: f64,
    /// Top and height of the share plot.
    sh_y0: f64,
    sh_h: f64,
    /// Milliseconds at the top of the latency plot.
    lat_max: f64,
    /// Seconds the time axis spans.
    duration_s: f64,
}

impl Panel {
    /// The layout of panel `i` (from 0, top down).
    fn new(i: usize, lat_max: f64, duration_s: f64) -> Self {
        let top = 30.0 + PANEL_H * i as f64;
        let lat_y0 = top + 20.0;
        let lat_h = PANEL_H * 0.45;
        let sh_y0 = lat_y0 + lat_h + 25.0;
        let sh_h = PANEL_H * 0.3;
        Panel {
            top,
            lat_y0,
            lat_h,
            sh_y0,
            sh_h,
            lat_max,
            duration_s,
        }
    }

    /// x of `t` seconds after the start.
    fn x(&self, t: f64) -> f64 {
        PAD + (SVG_W - 2.0 * PAD) * t / self.duration_s.max(1e-9)
    }

    /// y of a latency of `ms` milliseconds (clipped to the top of the plot).
    fn lat_y(&self, ms: f64) -> f64 {
        self.lat_y0 + self.lat_h * (1.0 - (ms / self.lat_max).min(1.0))
    }

    /// y of a share `s` (clamped to `[0, 1]`).
    fn sh_y(&self, s: f64) -> f64 {
        self.sh_y0 + self.sh_h * (1.0 - s.clamp(0.0, 1.0))
    }
}

/// The report as an SVG: one panel per policy, the service's window p99 against the SLO
/// above, each tenant's share below, over time.
pub(crate) fn svg(r: &Report) -> String {
    let mut o = String::new();
    svg_header(&mut o, r);
    let lat_max = latency_max(r);
    for (i, p) in r.policies.iter().enumerate() {
        let panel = Panel::new(i, lat_max, r.duration_s);
        svg_panel_title(&mut o, &panel, p);
        svg_axes(&mut o, &panel);
        svg_latency(&mut o, &panel, p, r.slo_p99_ms);
        svg_shares(&mut o, &panel, p);
    }
    // Time axis labels on the last panel.
    let bottom = 30.0 + PANEL_H * r.policies.len() as f64 - 8.0;
    let _ = writeln!(
        o,
        r##"<text x="{PAD}" y="{bottom}" fill="#555">0 s</text><text x="{}" y="{bottom}" fill="#555" text-anchor="end">{} s</text>"##,
        SVG_W - PAD,
        r.duration_s
    );
    let _ = writeln!(o, "</svg>");
    o
}

/// The `<svg>` element's opening, a white background and the figure's title line.
fn svg_header(o: &mut String, r: &Report) {
    let (w, pad) = (SVG_W, PAD);
    let h = PANEL_H * r.policies.len() as f64 + 30.0;
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{pad}" y="18" font-size="14">{} — SLO p99 ≤ {} ms, {} s per policy, {} cores</text>"#,
        esc(&r.scenario),
        r.slo_p99_ms,
        r.duration_s,
        r.cores
    );
}

/// Milliseconds at the top of every latency plot: the highest window p99 of any policy, at
/// least twice the SLO and at most ten times it.
fn latency_max(r: &Report) -> f64 {
    let slo = r.slo_p99_ms;
    r.policies
        .iter()
        .flat_map(|p| p.timeline.iter().filter_map(|s| s.p99_s))
        .map(|s| s * 1000.0)
        .fold(2.0 * slo, f64::max)
        .min(10.0 * slo)
}

/// A panel's title: the policy and its headline figures.
fn svg_panel_title(o: &mut String, panel: &Panel, p: &PolicyReport) {
    let _ = writeln!(
        o,
        r#"<text x="{PAD}" y="{}" font-weight="bold">{} — windows within SLO {:.1} %, p99 {:.2} ms, deadline misses {}</text>"#,
        panel.top + 12.0,
        esc(&p.policy),
        p.windows_within_slo_pct,
        p.p99_ms,
        p.deadline_misses
    );
}

/// A panel's two frames (latency and share), each with its label and its top value.
fn svg_axes(o: &mut String, panel: &Panel) {
    let (w, pad) = (SVG_W, PAD);
    for (y0, hh, label, max) in [
        (panel.lat_y0, panel.lat_h, "p99 ms", panel.lat_max),
        (panel.sh_y0, panel.sh_h, "share", 1.0),
    ] {
        let _ = writeln!(
            o,
            r##"<rect x="{pad}" y="{y0}" width="{}" height="{hh}" fill="none" stroke="#999"/>"##,
            w - 2.0 * pad
        );
        let _ = writeln!(
            o,
            r##"<text x="4" y="{}" fill="#555">{label}</text><text x="{}" y="{}" fill="#555" text-anchor="end">{}</text>"##,
            y0 + hh / 2.0,
            pad - 4.0,
            y0 + 10.0,
            if max >= 10.0 {
                format!("{max:.0}")
            } else {
                format!("{max:.1}")
            }
        );
    }
}

/// A panel's latency plot: the dashed SLO line and the window p99 over time.
fn svg_latency(o: &mut String, panel: &Panel, p: &PolicyReport, slo: f64) {
    let (w, pad) = (SVG_W, PAD);
    let _ = writeln!(
        o,
        r##"<line x1="{pad}" x2="{}" y1="{y}" y2="{y}" stroke="#d62728" stroke-dasharray="6,4"/><text x="{}" y="{}" fill="#d62728" text-anchor="end">SLO</text>"##,
        w - pad,
        w - pad - 2.0,
        panel.lat_y(slo) - 3.0,
        y = panel.lat_y(slo)
    );
    let pts: Vec<String> = p
        .timeline
        .iter()
        .filter_map(|s| {
            s.p99_s
                .map(|l| format!("{:.1},{:.1}", panel.x(s.t_s), panel.lat_y(l * 1000.0)))
        })
        .collect();
    if !pts.is_empty() {
        let _ = writeln!(
            o,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
            pts.join(" ")
        );
    }
}

/// A panel's share plot: one line and one legend entry per tenant, in order of first
/// appearance, or a note when no tenant had a share.
fn svg_shares(o: &mut String, panel: &Panel, p: &PolicyReport) {
    let mut names: Vec<String> = Vec::new();
    for s in &p.timeline {
        for (n, _) in &s.shares {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    for (k, name) in names.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<String> = p
            .timeline
            .iter()
            .filter_map(|s| {
                s.shares
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| format!("{:.1},{:.1}", panel.x(s.t_s), panel.sh_y(*v)))
            })
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            PAD + 8.0 + 110.0 * k as f64,
            panel.sh_y0 + panel.sh_h + 14.0,
            esc(name)
        );
    }
    if names.is_empty() {
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}" fill="#555">no shares: every lane runs unthrottled</text>"##,
            PAD + 8.0,
            panel.sh_y0 + panel.sh_h / 2.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scenario::PolicyReport;

    fn policy(name: &str, dev: Option<f64>, share: Option<f64>) -> PolicyReport {
        PolicyReport {
            policy: name.into(),
            requests: 1200,
            rejected: 3,
            requests_within_slo_pct: 99.25,
            windows: 30,
            windows_within_slo_pct: 96.7,
            window_p99_ms: Vec::new(),
            p99_ms: 4.5,
            p50_ms: 1.25,
            jobs: Vec::new(),
            mean_abs_deviation_pct: dev,
            deadline_misses: 1,
            share_seconds: share,
            best_effort_share_seconds: share.map(|s| s / 2.0),
            best_effort_epochs: 7,
            device_seconds_used: 12.34,
            generator_late_p99_ms: 0.1,
            timeline: Vec::new(),
        }
    }

    #[test]
    fn the_policy_table_keeps_its_fixed_columns() {
        let r = Report {
            scenario: "s".into(),
            slo_p99_ms: 10.0,
            duration_s: 30.0,
            cores: 4,
            policies: vec![
                policy("setpoint", Some(2.5), Some(20.0)),
                policy("none", None, None),
            ],
            ratios: None,
        };
        // The layout as it was written with fixed-width format strings.
        let mut want = format!(
            "{:<9} {:>10} {:>11} {:>8} {:>8} {:>9} {:>7} {:>10} {:>9} {:>10} {:>9} {:>9}\n",
            "POLICY",
            "WINDOWS OK",
            "REQUESTS OK",
            "P99 MS",
            "P50 MS",
            "REJECTED",
            "MISSES",
            "MEAN |DEV|",
            "SHARE-S",
            "BE SHARE-S",
            "BE EPOCHS",
            "DEVICE-S"
        );
        for p in &r.policies {
            want.push_str(&format!(
                "{:<9} {:>9.1}% {:>10.2}% {:>8.2} {:>8.2} {:>9} {:>7} {:>10} {:>9} {:>10} {:>9} {:>9.1}\n",
                p.policy,
                p.windows_within_slo_pct,
                p.requests_within_slo_pct,
                p.p99_ms,
                p.p50_ms,
                p.rejected,
                p.deadline_misses,
                p.mean_abs_deviation_pct
                    .map_or("-".into(), |d| format!("{d:.2} %")),
                p.share_seconds.map_or("-".into(), |s| format!("{s:.1}")),
                p.best_effort_share_seconds
                    .map_or("-".into(), |s| format!("{s:.1}")),
                p.best_effort_epochs,
                p.device_seconds_used
            ));
        }
        assert_eq!(policy_table(&r).render(), want);
    }

    #[test]
    fn a_best_effort_job_is_reported_by_its_work_not_by_deadline_columns() {
        let job = |name: &str, deadline_s: Option<f64>| crate::bench::scenario::JobOutcome {
            name: name.into(),
            deadline_s,
            finish_s: deadline_s.map(|d| d - 1.0),
            deviation_pct: deadline_s.map(|_| -1.25),
            missed: false,
            refused: None,
            state: Some(crate::node::JobState::Completed),
            val_accuracy: Some(0.9),
            epochs_done: 12,
            target_accuracy: None,
            met_early: false,
        };
        let mut p = policy("setpoint", Some(1.25), Some(3.0));
        p.jobs = vec![job("train-a", Some(20.0)), job("backfill", None)];
        let r = Report {
            scenario: "s".into(),
            slo_p99_ms: 10.0,
            duration_s: 30.0,
            cores: 2,
            policies: vec![p],
            ratios: None,
        };
        let t = text(&r);
        let line = |n: &str| t.lines().find(|l| l.contains(n)).unwrap().to_string();
        assert_eq!(
            line("job backfill"),
            "setpoint  job backfill     best-effort: 12 epochs done"
        );
        let a = line("job train-a");
        assert!(
            a.contains("deadline   20.0 s") && a.ends_with("-1.25 % met"),
            "{a}"
        );
    }
}
