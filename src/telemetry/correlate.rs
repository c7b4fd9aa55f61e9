//! How well our NVML samples agree with `nvidia-smi` recorded alongside, and what each phase
//! of a benchmark cost in utilisation, power and energy.
//!
//! Pairing: each of our samples is paired with the `nvidia-smi` row of the same GPU nearest
//! in time, when that row is within the tolerance (by default half the median interval
//! between `nvidia-smi` rows of one GPU). Per field, over the pairs where both sides have a
//! value: the count, the mean absolute difference (in the unit shown) and Pearson's r
//! (`None` with fewer than two pairs or when either side is constant).
//!
//! Phases (per GPU): mean utilisation and power are plain means over the samples whose
//! time lies in `[start, end]`. Energy is taken over the part of the phase our samples
//! cover, with values at the phase edges interpolated linearly between neighbouring samples:
//! from the energy counter's difference when every sample used has it and it does not go
//! backwards ([`EnergyMethod::Counter`]), else from power integrated by the trapezoid rule
//! ([`EnergyMethod::PowerIntegral`]). `energy_span_s` says how much of the phase that was.
//! The `nvidia-smi` side of a phase is always power integrated.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::GpuSample;
use super::smi::SmiRow;

const MIB: f64 = 1024.0 * 1024.0;

/// Tolerance used when `nvidia-smi` rows are too few to measure their interval: half of
/// the recorder's usual 100 ms.
const FALLBACK_TOLERANCE_S: f64 = 0.05;

/// A named stretch of a benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// Start, seconds since the Unix epoch.
    pub start_unix_s: f64,
    /// End, seconds since the Unix epoch.
    pub end_unix_s: f64,
}

/// Where a phase's energy figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergyMethod {
    /// Difference of NVML's total energy counter.
    Counter,
    /// Power draw integrated over time (trapezoid rule).
    PowerIntegral,
}

impl EnergyMethod {
    fn as_str(self) -> &'static str {
        match self {
            EnergyMethod::Counter => "counter",
            EnergyMethod::PowerIntegral => "power integral",
        }
    }
}

/// Agreement on one field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldStats {
    /// `utilization`, `memory_used`, `power` or `sm_clock`.
    pub field: &'static str,
    /// Unit of `mean_abs_diff`: `%`, `MiB`, `W`, `MHz`.
    pub unit: &'static str,
    /// Pairs where both sides had a value.
    pub pairs: usize,
    /// Mean of |ours − nvidia-smi|; `None` without pairs.
    pub mean_abs_diff: Option<f64>,
    /// Pearson's r; `None` with fewer than two pairs or a constant side.
    pub pearson: Option<f64>,
}

/// One phase on one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseStats {
    pub phase: String,
    pub gpu: u32,
    /// Our samples inside the phase.
    pub samples: usize,
    pub mean_util_pct: Option<f64>,
    pub mean_power_w: Option<f64>,
    pub energy_j: Option<f64>,
    pub energy_method: Option<EnergyMethod>,
    /// Seconds of the phase the energy figure covers.
    pub energy_span_s: f64,
    /// `nvidia-smi` rows inside the phase.
    pub smi_rows: usize,
    pub smi_mean_util_pct: Option<f64>,
    pub smi_mean_power_w: Option<f64>,
    /// Power integrated from `nvidia-smi` rows.
    pub smi_energy_j: Option<f64>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Correlation {
    /// Largest time gap accepted when pairing, seconds.
    pub tolerance_s: f64,
    pub our_samples: usize,
    pub smi_rows: usize,
    /// Our samples that found an `nvidia-smi` row within the tolerance.
    pub matched: usize,
    pub fields: Vec<FieldStats>,
    pub phases: Vec<PhaseStats>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Pearson's r of paired values; `None` when undefined.
fn pearson(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 2 {
        return None;
    }
    let n = pairs.len() as f64;
    let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    // A series constant up to rounding has no defined correlation.
    let flat = |s: f64, m: f64| s <= 1e-18 * n * (m * m + 1.0);
    if flat(sxx, mx) || flat(syy, my) {
        return None;
    }
    Some((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

fn field_stats(field: &'static str, unit: &'static str, pairs: &[(f64, f64)]) -> FieldStats {
    FieldStats {
        field,
        unit,
        pairs: pairs.len(),
        mean_abs_diff: mean(&pairs.iter().map(|(a, b)| (a - b).abs()).collect::<Vec<_>>()),
        pearson: pearson(pairs),
    }
}

/// Half the median gap between consecutive `nvidia-smi` rows of one GPU.
fn default_tolerance(smi: &[SmiRow]) -> f64 {
    let mut gaps = Vec::new();
    let gpus: BTreeSet<u32> = smi.iter().map(|r| r.index).collect();
    for g in gpus {
        let mut t: Vec<f64> = smi
            .iter()
            .filter(|r| r.index == g)
            .map(|r| r.at_unix_s)
            .collect();
        t.sort_by(f64::total_cmp);
        gaps.extend(t.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0.0));
    }
    if gaps.is_empty() {
        return FALLBACK_TOLERANCE_S;
    }
    gaps.sort_by(f64::total_cmp);
    let m = gaps.len();
    let median = if m % 2 == 1 {
        gaps[m / 2]
    } else {
        (gaps[m / 2 - 1] + gaps[m / 2]) / 2.0
    };
    median / 2.0
}

/// Value at `t` of the piecewise-linear function through `pts` (sorted by time, `t` within
/// their span).
fn interp(pts: &[(f64, f64)], t: f64) -> f64 {
    let i = pts.partition_point(|p| p.0 < t);
    if i == 0 {
        return pts[0].1;
    }
    if i == pts.len() {
        return pts[pts.len() - 1].1;
    }
    let (t0, v0) = pts[i - 1];
    let (t1, v1) = pts[i];
    if t1 <= t0 {
        return v1;
    }
    v0 + (v1 - v0) * (t - t0) / (t1 - t0)
}

/// The part of `[start, end]` that `pts` cover, when it has a length.
fn window(pts: &[(f64, f64)], start: f64, end: f64) -> Option<(f64, f64)> {
    let a = start.max(pts.first()?.0);
    let b = end.min(pts.last()?.0);
    (b > a).then_some((a, b))
}

/// Counter difference over the covered part of the phase; `None` if the counter goes
/// backwards there (driver reload) or the points do not cover any of it.
fn counter_energy(pts: &[(f64, f64)], start: f64, end: f64) -> Option<(f64, f64)> {
    let (a, b) = window(pts, start, end)?;
    let lo = pts.partition_point(|p| p.0 < a).saturating_sub(1);
    let hi = (pts.partition_point(|p| p.0 <= b) + 1).min(pts.len());
    if pts[lo..hi].windows(2).any(|w| w[1].1 < w[0].1) {
        return None;
    }
    Some((interp(pts, b) - interp(pts, a), b - a))
}

/// Trapezoid integral over the covered part of the phase.
fn integral(pts: &[(f64, f64)], start: f64, end: f64) -> Option<(f64, f64)> {
    let (a, b) = window(pts, start, end)?;
    let mut knots = vec![(a, interp(pts, a))];
    knots.extend(pts.iter().copied().filter(|p| p.0 > a && p.0 < b));
    knots.push((b, interp(pts, b)));
    let area = knots
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    Some((area, b - a))
}

fn series<T>(
    items: &[&T],
    at: impl Fn(&T) -> f64,
    v: impl Fn(&T) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = items
        .iter()
        .filter_map(|s| v(s).filter(|x| x.is_finite()).map(|x| (at(s), x)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// [`correlate_with_tolerance`] with the tolerance set to half the median interval between
/// `nvidia-smi` rows of one GPU (50 ms when it cannot be measured).
pub fn correlate(smi: &[SmiRow], ours: &[GpuSample], phases: &[Phase]) -> Correlation {
    correlate_with_tolerance(smi, ours, phases, default_tolerance(smi))
}

/// Compares our samples with `nvidia-smi` rows and summarises `phases` (see the module docs).
pub fn correlate_with_tolerance(
    smi: &[SmiRow],
    ours: &[GpuSample],
    phases: &[Phase],
    tolerance_s: f64,
) -> Correlation {
    let gpus: BTreeSet<u32> = ours
        .iter()
        .map(|s| s.index)
        .chain(smi.iter().map(|r| r.index))
        .collect();
    let mut pairs = Pairs::default();
    let mut phase_stats = Vec::new();
    for &g in &gpus {
        let mut rows: Vec<&SmiRow> = smi
            .iter()
            .filter(|r| r.index == g && r.at_unix_s.is_finite())
            .collect();
        rows.sort_by(|a, b| a.at_unix_s.total_cmp(&b.at_unix_s));
        let mut mine: Vec<&GpuSample> = ours
            .iter()
            .filter(|s| s.index == g && s.at_unix_s.is_finite())
            .collect();
        mine.sort_by(|a, b| a.at_unix_s.total_cmp(&b.at_unix_s));

        for s in &mine {
            if let Some(r) = nearest_row(&rows, s.at_unix_s, tolerance_s) {
                pairs.add(s, r);
            }
        }
        for ph in phases {
            phase_stats.push(phase_stats_of(ph, g, &mine, &rows));
        }
    }
    Correlation {
        tolerance_s,
        our_samples: ours.len(),
        smi_rows: smi.len(),
        matched: pairs.matched,
        fields: vec![
            field_stats("utilization", "%", &pairs.util),
            field_stats("memory_used", "MiB", &pairs.mem),
            field_stats("power", "W", &pairs.power),
            field_stats("sm_clock", "MHz", &pairs.clock),
        ],
        phases: phase_stats,
    }
}

/// Our values paired with `nvidia-smi`'s, per field, in the unit shown, and how many of our
/// samples found a row.
#[derive(Default)]
struct Pairs {
    util: Vec<(f64, f64)>,
    mem: Vec<(f64, f64)>,
    power: Vec<(f64, f64)>,
    clock: Vec<(f64, f64)>,
    matched: usize,
}

impl Pairs {
    /// Counts sample `s` as matched with row `r`, and pairs each field both sides have.
    fn add(&mut self, s: &GpuSample, r: &SmiRow) {
        self.matched += 1;
        if let (Some(a), Some(b)) = (s.util_gpu_pct, r.util_gpu_pct) {
            self.util.push((a, b));
        }
        if let (Some(a), Some(b)) = (s.mem_used_bytes, r.mem_used_bytes) {
            self.mem.push((a as f64 / MIB, b as f64 / MIB));
        }
        if let (Some(a), Some(b)) = (s.power_w, r.power_w) {
            self.power.push((a, b));
        }
        if let (Some(a), Some(b)) = (s.sm_clock_hz, r.sm_clock_hz) {
            self.clock.push((a / 1e6, b / 1e6));
        }
    }
}

/// The row of `rows` (sorted by time) nearest to `t`, when within `tolerance_s` of it; on a
/// tie, the earlier.
fn nearest_row<'a>(rows: &[&'a SmiRow], t: f64, tolerance_s: f64) -> Option<&'a SmiRow> {
    let i = rows.partition_point(|r| r.at_unix_s < t);
    // The nearer of the rows either side; on a tie, the earlier.
    let near = [i.checked_sub(1), (i < rows.len()).then_some(i)]
        .into_iter()
        .flatten()
        .map(|j| rows[j])
        .min_by(|a, b| (a.at_unix_s - t).abs().total_cmp(&(b.at_unix_s - t).abs()));
    near.filter(|r| (r.at_unix_s - t).abs() <= tolerance_s)
}

/// One phase on GPU `g`, from that GPU's samples and rows (each sorted by time).
fn phase_stats_of(ph: &Phase, g: u32, mine: &[&GpuSample], rows: &[&SmiRow]) -> PhaseStats {
    let (start, end) = (ph.start_unix_s, ph.end_unix_s);
    let inside = |t: f64| t >= start && t <= end;
    let in_mine: Vec<&GpuSample> = mine
        .iter()
        .copied()
        .filter(|s| inside(s.at_unix_s))
        .collect();
    let in_rows: Vec<&SmiRow> = rows
        .iter()
        .copied()
        .filter(|r| inside(r.at_unix_s))
        .collect();
    let m = |v: Vec<f64>| mean(&v);
    let (energy_j, energy_method, energy_span_s) = phase_energy(mine, start, end);
    let smi_power = series(rows, |r| r.at_unix_s, |r| r.power_w);
    PhaseStats {
        phase: ph.name.clone(),
        gpu: g,
        samples: in_mine.len(),
        mean_util_pct: m(in_mine.iter().filter_map(|s| s.util_gpu_pct).collect()),
        mean_power_w: m(in_mine.iter().filter_map(|s| s.power_w).collect()),
        energy_j,
        energy_method,
        energy_span_s,
        smi_rows: in_rows.len(),
        smi_mean_util_pct: m(in_rows.iter().filter_map(|r| r.util_gpu_pct).collect()),
        smi_mean_power_w: m(in_rows.iter().filter_map(|r| r.power_w).collect()),
        smi_energy_j: integral(&smi_power, start, end).map(|(e, _)| e),
    }
}

/// Our energy over `[start, end]` from `mine` (sorted by time): joules, how they were found
/// and the seconds they cover. By the counter when it is complete and does not go backwards,
/// else by integrating power; nothing when neither covers any of the phase.
fn phase_energy(
    mine: &[&GpuSample],
    start: f64,
    end: f64,
) -> (Option<f64>, Option<EnergyMethod>, f64) {
    let energy_pts = series(mine, |s| s.at_unix_s, |s| s.energy_j);
    let power_pts = series(mine, |s| s.at_unix_s, |s| s.power_w);
    // The counter is used only when every sample it would be read from has it: those
    // inside the phase and the nearest one on each side.
    let lo = mine
        .partition_point(|s| s.at_unix_s < start)
        .saturating_sub(1);
    let hi = (mine.partition_point(|s| s.at_unix_s <= end) + 1).min(mine.len());
    let counter_complete = mine
        .get(lo..hi)
        .is_some_and(|near| near.iter().all(|s| s.energy_j.is_some()));
    let by_counter = counter_complete
        .then(|| counter_energy(&energy_pts, start, end))
        .flatten();
    match by_counter {
        Some((e, span)) => (Some(e), Some(EnergyMethod::Counter), span),
        None => match integral(&power_pts, start, end) {
            Some((e, span)) => (Some(e), Some(EnergyMethod::PowerIntegral), span),
            None => (None, None, 0.0),
        },
    }
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".to_string(), |x| format!("{x:.digits$}"))
}

impl Correlation {
    /// A plain-text report.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "nvidia-smi cross-check: {} of our samples, {} nvidia-smi rows, {} paired within ±{:.3} s",
            self.our_samples, self.smi_rows, self.matched, self.tolerance_s
        );
        let _ = writeln!(
            o,
            "{:<12} {:>5} {:>6} {:>12} {:>10}",
            "field", "unit", "pairs", "mean |diff|", "pearson r"
        );
        for f in &self.fields {
            let _ = writeln!(
                o,
                "{:<12} {:>5} {:>6} {:>12} {:>10}",
                f.field,
                f.unit,
                f.pairs,
                cell(f.mean_abs_diff, 3),
                cell(f.pearson, 4)
            );
        }
        if !self.phases.is_empty() {
            let _ = writeln!(
                o,
                "{:<16} {:>3} {:>7} {:>7} {:>8} {:>10} {:<22} {:>8} {:>9} {:>10}",
                "phase",
                "gpu",
                "samples",
                "util %",
                "power W",
                "energy J",
                "(from, over s)",
                "smi util",
                "smi power",
                "smi energy"
            );
            for p in &self.phases {
                let how = p.energy_method.map_or("-".to_string(), |m| {
                    format!("({}, {:.3})", m.as_str(), p.energy_span_s)
                });
                let _ = writeln!(
                    o,
                    "{:<16} {:>3} {:>7} {:>7} {:>8} {:>10} {:<22} {:>8} {:>9} {:>10}",
                    p.phase,
                    p.gpu,
                    p.samples,
                    cell(p.mean_util_pct, 1),
                    cell(p.mean_power_w, 1),
                    cell(p.energy_j, 2),
                    how,
                    cell(p.smi_mean_util_pct, 1),
                    cell(p.smi_mean_power_w, 1),
                    cell(p.smi_energy_j, 2)
                );
            }
        }
        o
    }
}

impl std::fmt::Display for Correlation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_known_series() {
        let r = pearson(&[(1.0, 2.0), (2.0, 4.0), (3.0, 6.0)]).unwrap();
        assert!((r - 1.0).abs() < 1e-12);
        let r = pearson(&[(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]).unwrap();
        assert!((r + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)]), None);
        assert_eq!(pearson(&[(0.1, 1.0), (0.1, 2.0), (0.1, 3.0)]), None);
        assert_eq!(pearson(&[(1.0, 1.0)]), None);
    }

    #[test]
    fn integral_and_counter_interpolate_at_phase_edges() {
        // Power 100 W flat then ramping to 200 W.
        let p = [(0.0, 100.0), (1.0, 100.0), (2.0, 200.0)];
        let (e, span) = integral(&p, 0.5, 1.5).unwrap();
        // 0.5 s at 100 W, then 0.5 s from 100 to 150 W.
        assert!((e - (50.0 + 62.5)).abs() < 1e-9, "{e}");
        assert!((span - 1.0).abs() < 1e-12);
        // A phase reaching past the samples is cut to them.
        let (_, span) = integral(&p, -5.0, 1.0).unwrap();
        assert!((span - 1.0).abs() < 1e-12);
        assert_eq!(integral(&p, 3.0, 4.0), None);

        let c = [(0.0, 1000.0), (1.0, 1100.0), (2.0, 1300.0)];
        let (e, _) = counter_energy(&c, 0.5, 1.5).unwrap();
        assert!((e - 150.0).abs() < 1e-9, "{e}");
        let reset = [(0.0, 1000.0), (1.0, 5.0), (2.0, 105.0)];
        assert_eq!(counter_energy(&reset, 0.5, 1.5), None);
    }
}
