//! The scenario report as an SVG figure: one panel per policy, the service's window p99
//! against its SLO on a logarithmic axis above, the tenants' shares as stacked areas below,
//! over time. Every tenant keeps one colour in every panel: the service is dark grey (its
//! latency line too), jobs take the palette in order of first appearance, and red is kept for
//! the SLO.

use std::fmt::Write as _;

use super::scenario::PolicyReport;
use super::scenario::Report;

/// Width of the figure, in pixels.
const SVG_W: f64 = 960.0;
/// Height of one policy's panel, in pixels.
const PANEL_H: f64 = 300.0;
/// Left and right margin of the plots, in pixels.
const PAD: f64 = 60.0;
/// Height of the title and legend above the panels.
const HEAD_H: f64 = 48.0;
/// The service's colour, in both plots.
const SERVICE: &str = "#333333";
/// The SLO line's colour, used by nothing else.
const SLO: &str = "#d62728";
/// Jobs' colours, in order of first appearance.
const JOBS: &[&str] = &[
    "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Every tenant that held a share in any policy, with its colour: the service first (the
/// first tenant of every sample), then jobs in order of first appearance.
fn tenants(r: &Report) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    let samples = r.policies.iter().flat_map(|p| &p.timeline);
    if let Some(svc) = samples.clone().find_map(|s| s.shares.first()) {
        out.push((svc.0.clone(), SERVICE));
    }
    for (name, _) in samples.flat_map(|s| &s.shares) {
        if !out.iter().any(|(n, _)| n == name) {
            let color = JOBS[(out.len() - 1) % JOBS.len()];
            out.push((name.clone(), color));
        }
    }
    out
}

/// The latency axis: decades from below the lowest window p99 (and a tenth of the SLO) to
/// above the highest (and twice the SLO), so nothing is clipped.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn new(r: &Report) -> Self {
        let slo: f64 = r.slo_p99_ms.max(1e-6);
        let (mut lo, mut hi) = (0.1 * slo, 2.0 * slo);
        for ms in r
            .policies
            .iter()
            .flat_map(|p| p.timeline.iter().filter_map(|s| s.p99_s))
            .map(|s| s * 1000.0)
            .filter(|ms| *ms > 0.0 && ms.is_finite())
        {
            (lo, hi) = (lo.min(ms), hi.max(ms));
        }
        LogAxis {
            lo: 10f64.powf(lo.log10().floor()),
            hi: 10f64.powf(hi.log10().ceil()),
        }
    }

    /// Where `ms` lies between the bottom (0) and the top (1).
    fn frac(&self, ms: f64) -> f64 {
        let ms = ms.clamp(self.lo, self.hi);
        (ms / self.lo).log10() / (self.hi / self.lo).log10()
    }

    /// Ticks at 1, 2 and 5 times each decade.
    fn ticks(&self) -> Vec<f64> {
        let mut t = Vec::new();
        let mut decade = self.lo;
        while decade <= self.hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                if decade * m <= self.hi * 1.0001 {
                    t.push(decade * m);
                }
            }
            decade *= 10.0;
        }
        t
    }
}

/// A tick label: `0`, `0.05`, `2`, `500`.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').to_string()
    }
}

/// Time ticks: a 1-2-5 step giving about ten of them.
fn time_ticks(duration_s: f64) -> Vec<f64> {
    let raw = (duration_s / 10.0).max(1e-3);
    let decade = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * decade)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * decade);
    let n = (duration_s / step).floor() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

/// Where one policy's panel lies.
struct Panel {
    top: f64,
    lat_y0: f64,
    lat_h: f64,
    sh_y0: f64,
    sh_h: f64,
    duration_s: f64,
    axis: LogAxis,
}

impl Panel {
    fn new(i: usize, axis: LogAxis, duration_s: f64) -> Self {
        let top = HEAD_H + PANEL_H * i as f64;
        let lat_y0 = top + 32.0;
        let lat_h = PANEL_H * 0.45;
        let sh_y0 = lat_y0 + lat_h + 30.0;
        Panel {
            top,
            lat_y0,
            lat_h,
            sh_y0,
            sh_h: PANEL_H * 0.28,
            duration_s,
            axis,
        }
    }

    fn x(&self, t: f64) -> f64 {
        PAD + (SVG_W - 2.0 * PAD) * (t / self.duration_s.max(1e-9)).clamp(0.0, 1.0)
    }

    fn lat_y(&self, ms: f64) -> f64 {
        self.lat_y0 + self.lat_h * (1.0 - self.axis.frac(ms))
    }

    fn sh_y(&self, s: f64) -> f64 {
        self.sh_y0 + self.sh_h * (1.0 - s.clamp(0.0, 1.0))
    }
}

/// The report as an SVG figure (see the module's documentation).
pub(crate) fn svg(r: &Report) -> String {
    let tenants = tenants(r);
    let axis = LogAxis::new(r);
    let mut o = String::new();
    header(&mut o, r, &tenants);
    for (i, p) in r.policies.iter().enumerate() {
        let panel = Panel::new(i, axis, r.duration_s);
        title(&mut o, &panel, p);
        frames(&mut o, &panel);
        latency(&mut o, &panel, p, r.slo_p99_ms);
        shares(&mut o, &panel, p, &tenants);
    }
    let _ = writeln!(o, "</svg>");
    o
}

/// The `<svg>` opening, the background, the title line and the legend of tenants.
fn header(o: &mut String, r: &Report, tenants: &[(String, &str)]) {
    let h = HEAD_H + PANEL_H * r.policies.len() as f64;
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{PAD}" y="18" font-size="14">{} — SLO p99 ≤ {} ms, {} s per policy, {} cores</text>"#,
        esc(&r.scenario),
        r.slo_p99_ms,
        r.duration_s,
        r.cores
    );
    let mut x = PAD;
    for (name, color) in tenants {
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="28" width="12" height="12" fill="{color}"/><text x="{}" y="38">{}</text>"#,
            x + 16.0,
            esc(name)
        );
        x += 28.0 + 7.0 * name.chars().count() as f64;
    }
}

/// A panel's title: the policy and its headline figures.
fn title(o: &mut String, panel: &Panel, p: &PolicyReport) {
    let _ = writeln!(
        o,
        r#"<text x="{PAD}" y="{}" font-weight="bold">{} — windows within SLO {:.1} %, p99 {:.2} ms, deadline misses {}</text>"#,
        panel.top + 14.0,
        esc(&p.policy),
        p.windows_within_slo_pct,
        p.p99_ms,
        p.deadline_misses
    );
}

/// A panel's two frames, with the latency ticks (ms), the share ticks and the time ticks.
fn frames(o: &mut String, panel: &Panel) {
    let w = SVG_W - 2.0 * PAD;
    for (y0, hh) in [(panel.lat_y0, panel.lat_h), (panel.sh_y0, panel.sh_h)] {
        let _ = writeln!(
            o,
            r##"<rect x="{PAD}" y="{y0}" width="{w}" height="{hh}" fill="none" stroke="#999"/>"##
        );
    }
    let tick = |o: &mut String, y: f64, label: &str| {
        let _ = writeln!(
            o,
            r##"<line x1="{PAD}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" fill="#555" text-anchor="end">{label}</text>"##,
            PAD + w,
            PAD - 4.0,
            y + 4.0
        );
    };
    // Over more than two decades only the decades are labelled; 2 and 5 keep their lines.
    let decades_only = panel.axis.hi / panel.axis.lo > 100.0 * 1.0001;
    for v in panel.axis.ticks() {
        let decade = (v.log10() - v.log10().round()).abs() < 1e-9;
        let label = if decade || !decades_only {
            tick_label(v)
        } else {
            String::new()
        };
        tick(o, panel.lat_y(v), &label);
    }
    for v in [0.0, 0.5, 1.0] {
        tick(o, panel.sh_y(v), &tick_label(v));
    }
    let _ = writeln!(
        o,
        r##"<text x="{PAD}" y="{:.1}" fill="#555" font-size="11">p99 ms (log scale)</text><text x="{PAD}" y="{:.1}" fill="#555" font-size="11">share of the device</text>"##,
        panel.lat_y0 - 3.0,
        panel.sh_y0 - 3.0
    );
    let bottom = panel.sh_y0 + panel.sh_h;
    for t in time_ticks(panel.duration_s) {
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom}" y2="{}" stroke="#999"/><text x="{x:.1}" y="{}" fill="#555" text-anchor="middle">{} s</text>"##,
            bottom + 4.0,
            bottom + 16.0,
            tick_label(t),
            x = panel.x(t)
        );
    }
}

/// A panel's latency plot: the labelled SLO line and the service's window p99.
fn latency(o: &mut String, panel: &Panel, p: &PolicyReport, slo: f64) {
    let y = panel.lat_y(slo);
    let _ = writeln!(
        o,
        r#"<line x1="{PAD}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{SLO}" stroke-dasharray="6,4"/><text x="{}" y="{:.1}" fill="{SLO}" text-anchor="end">SLO {} ms</text>"#,
        SVG_W - PAD,
        SVG_W - PAD - 4.0,
        y - 4.0,
        tick_label(slo)
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
            r#"<polyline fill="none" stroke="{SERVICE}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
    }
}

/// A panel's shares as stacked areas, the service at the bottom, each tenant in its colour;
/// a note when no tenant had a share.
fn shares(o: &mut String, panel: &Panel, p: &PolicyReport, tenants: &[(String, &str)]) {
    if p.timeline.iter().all(|s| s.shares.is_empty()) {
        let _ = writeln!(
            o,
            r##"<text x="{}" y="{}" fill="#555">no shares: every lane runs unthrottled</text>"##,
            PAD + 8.0,
            panel.sh_y0 + panel.sh_h / 2.0
        );
        return;
    }
    let mut below = vec![0.0f64; p.timeline.len()];
    for (name, color) in tenants {
        let own: Vec<f64> = p
            .timeline
            .iter()
            .map(|s| {
                s.shares
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0.0, |x| x.1)
            })
            .collect();
        if own.iter().all(|v| *v <= 0.0) {
            continue;
        }
        let x = |i: usize| panel.x(p.timeline[i].t_s);
        let mut pts: Vec<String> = (0..own.len())
            .map(|i| format!("{:.1},{:.1}", x(i), panel.sh_y(below[i] + own[i])))
            .collect();
        pts.extend(
            (0..own.len())
                .rev()
                .map(|i| format!("{:.1},{:.1}", x(i), panel.sh_y(below[i]))),
        );
        let _ = writeln!(
            o,
            r#"<polygon fill="{color}" fill-opacity="0.75" stroke="none" points="{}"/>"#,
            pts.join(" ")
        );
        for (b, v) in below.iter_mut().zip(&own) {
            *b += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_axis_spans_every_window_in_whole_decades() {
        let a = LogAxis { lo: 0.1, hi: 100.0 };
        assert_eq!(
            a.ticks(),
            vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert!((a.frac(1.0) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(a.frac(1000.0), 1.0);
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(200.0), "200");
        assert_eq!(
            time_ticks(45.0),
            vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0]
        );
        assert_eq!(time_ticks(20.0).len(), 11);
    }
}
