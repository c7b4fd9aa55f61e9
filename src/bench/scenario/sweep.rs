//! Many random scenarios in one run (`--random N`): each one's outcome under the controller
//! against static shares, and the distribution of each outcome over the scenarios (worst,
//! median, best), checked against the targets the README states.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use super::costs::{Costs, Measured};
use super::random::{self, RandomSpec};
use super::{PolicyReport, Progress, Report, ScenarioError};
use crate::util::table::Table;

/// One scenario's outcome: the controller's figures, and its ratios to static shares.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    /// The generated scenario's name (`random-SEED-INDEX`).
    pub scenario: String,
    /// The service's model.
    pub service_layers: Vec<usize>,
    /// Its SLO, ms.
    pub slo_p99_ms: f64,
    /// Deadline jobs and best-effort jobs.
    pub deadline_jobs: usize,
    /// Best-effort jobs.
    pub best_effort_jobs: usize,
    /// % of windows within the SLO under the controller.
    pub windows_within_slo_pct: Option<f64>,
    /// The same under static shares.
    pub static_windows_within_slo_pct: Option<f64>,
    /// Requests over the SLO under the controller over those under static shares (counts;
    /// static's taken as at least one, so 0 when the controller had none).
    pub request_violations_vs_static: Option<f64>,
    /// Mean |finish − deadline| of the controller's deadline jobs without an accuracy
    /// target, in % of their allotted time.
    pub mean_abs_deviation_pct: Option<f64>,
    /// The controller's deadline jobs that finished late or not at all (refused ones apart).
    pub deadline_misses: usize,
    /// The controller's deadline jobs refused at admission.
    pub refused: usize,
    /// Jobs that reached their accuracy target before their deadline (met early).
    pub met_early: usize,
    /// Share-seconds of the set-point tenants, controller over static.
    pub share_seconds_vs_static: Option<f64>,
    /// Epochs of best-effort work done under the controller and under static shares.
    pub best_effort_epochs: (Option<u32>, Option<u32>),
}

/// The spread of one outcome over the scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The worst scenario's value.
    pub worst: f64,
    /// The median (nearest rank).
    pub median: f64,
    /// The best scenario's value.
    pub best: f64,
    /// Scenarios with a value.
    pub n: usize,
}

impl Spread {
    /// The spread of `values`, where more is better when `higher_better`.
    fn of(values: impl Iterator<Item = f64>, higher_better: bool) -> Option<Spread> {
        let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = crate::util::stats::nearest_rank(&v, 0.5)?;
        let (lo, hi) = (v[0], v[v.len() - 1]);
        let (worst, best) = if higher_better { (lo, hi) } else { (hi, lo) };
        Some(Spread {
            worst,
            median,
            best,
            n: v.len(),
        })
    }
}

/// One target of the README and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is asked, in words.
    pub target: String,
    /// What the run measured.
    pub measured: Option<f64>,
    /// Met.
    pub met: bool,
}

/// The whole sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// The seed the scenarios were drawn from.
    pub seed: u64,
    /// Seconds each policy ran per scenario.
    pub duration_s: f64,
    /// What requests and steps cost here (one worker, µs), which scaled the scenarios.
    pub costs_us: Vec<(String, f64)>,
    /// Each scenario.
    pub scenarios: Vec<ScenarioOutcome>,
    /// % of windows within the SLO under the controller.
    pub windows_within_slo_pct: Option<Spread>,
    /// Request violations, controller over static.
    pub request_violations_vs_static: Option<Spread>,
    /// Mean |deadline deviation| per scenario, % (jobs without an accuracy target).
    pub abs_deadline_deviation_pct: Option<Spread>,
    /// Set-point share-seconds, controller over static.
    pub share_seconds_vs_static: Option<Spread>,
    /// The targets, checked.
    pub targets: Vec<TargetCheck>,
}

/// Draws and runs `spec.count` scenarios; with `save`, writes each one's file
/// (`NAME.toml`, to rerun it alone) and full report (`NAME.json`) there.
pub fn run(
    spec: &RandomSpec,
    save: Option<&Path>,
    progress: Progress<'_>,
) -> Result<SweepReport, ScenarioError> {
    let mut costs = Measured::default();
    let mut scenarios = Vec::new();
    for i in 0..spec.count {
        let s = random::generate(spec, i, &mut costs as &mut dyn Costs);
        progress(&format!(
            "scenario {} of {}: {}",
            i + 1,
            spec.count,
            s.description
        ));
        if let Some(dir) = save {
            let text = toml::to_string(&s).map_err(|e| ScenarioError::Run(e.to_string()))?;
            write(dir, &format!("{}.toml", s.name), text.as_bytes())?;
        }
        let r = super::run(&s, progress)?;
        if let Some(dir) = save {
            let json = serde_json::to_vec(&r).map_err(|e| ScenarioError::Run(e.to_string()))?;
            write(dir, &format!("{}.json", s.name), &json)?;
        }
        scenarios.push(outcome(&s, &r));
    }
    Ok(summarise(spec, costs.table(), scenarios))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ScenarioError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|_| crate::util::fsio::write_atomic(&path, bytes))
        .map_err(|e| ScenarioError::Run(format!("cannot write {}: {e}", path.display())))
}

/// Requests over the SLO in a policy's run.
fn violations(p: &PolicyReport) -> f64 {
    (p.requests as f64 * (100.0 - p.requests_within_slo_pct) / 100.0).round()
}

/// One scenario's outcome from its report.
fn outcome(s: &super::Scenario, r: &Report) -> ScenarioOutcome {
    let find = |n: &str| r.policies.iter().find(|p| p.policy == n);
    let (sp, st) = (find("setpoint"), find("static"));
    let both = sp.zip(st);
    ScenarioOutcome {
        scenario: s.name.clone(),
        service_layers: s.service.layers.clone(),
        slo_p99_ms: s.service.slo_p99_ms,
        deadline_jobs: s.jobs.iter().filter(|j| j.deadline_s.is_some()).count(),
        best_effort_jobs: s.jobs.iter().filter(|j| j.deadline_s.is_none()).count(),
        windows_within_slo_pct: sp.map(|p| p.windows_within_slo_pct),
        static_windows_within_slo_pct: st.map(|p| p.windows_within_slo_pct),
        request_violations_vs_static: both.map(|(a, b)| violations(a) / violations(b).max(1.0)),
        mean_abs_deviation_pct: sp.and_then(|p| p.mean_abs_deviation_pct),
        deadline_misses: sp.map_or(0, |p| {
            p.jobs
                .iter()
                .filter(|j| j.missed && j.refused.is_none())
                .count()
        }),
        refused: sp.map_or(0, |p| p.jobs.iter().filter(|j| j.refused.is_some()).count()),
        met_early: sp.map_or(0, |p| p.jobs.iter().filter(|j| j.met_early).count()),
        share_seconds_vs_static: both.and_then(|(a, b)| {
            a.share_seconds
                .zip(b.share_seconds)
                .and_then(|(x, y)| (y > 0.0).then(|| x / y))
        }),
        best_effort_epochs: (
            sp.map(|p| p.best_effort_epochs),
            st.map(|p| p.best_effort_epochs),
        ),
    }
}

/// The distributions and the targets' checks.
fn summarise(
    spec: &RandomSpec,
    costs_us: Vec<(String, f64)>,
    scenarios: Vec<ScenarioOutcome>,
) -> SweepReport {
    let windows = Spread::of(
        scenarios.iter().filter_map(|o| o.windows_within_slo_pct),
        true,
    );
    let requests = Spread::of(
        scenarios
            .iter()
            .filter_map(|o| o.request_violations_vs_static),
        false,
    );
    let deviation = Spread::of(
        scenarios.iter().filter_map(|o| o.mean_abs_deviation_pct),
        false,
    );
    let shares = Spread::of(
        scenarios.iter().filter_map(|o| o.share_seconds_vs_static),
        false,
    );
    let misses: usize = scenarios.iter().map(|o| o.deadline_misses).sum();
    let mean_dev = {
        let d: Vec<f64> = scenarios
            .iter()
            .filter_map(|o| o.mean_abs_deviation_pct)
            .collect();
        (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64)
    };
    let check = |target: &str, measured: Option<f64>, ok: &dyn Fn(f64) -> bool| TargetCheck {
        target: target.into(),
        measured,
        met: measured.is_some_and(ok),
    };
    let targets = vec![
        check(
            "median windows within the SLO >= 99 %",
            windows.map(|w| w.median),
            &|v| v >= 99.0,
        ),
        check(
            "worst windows within the SLO >= 95 %",
            windows.map(|w| w.worst),
            &|v| v >= 95.0,
        ),
        check(
            "median request violations <= 0.25 x static",
            requests.map(|r| r.median),
            &|v| v <= 0.25,
        ),
        check(
            "every admitted deadline met (misses)",
            Some(misses as f64),
            &|v| v == 0.0,
        ),
        check("mean |deadline deviation| <= 2 %", mean_dev, &|v| v <= 2.0),
        check(
            "median set-point share-seconds <= 0.8 x static",
            shares.map(|s| s.median),
            &|v| v <= 0.8,
        ),
    ];
    SweepReport {
        seed: spec.seed,
        duration_s: spec.duration_s,
        costs_us,
        scenarios,
        windows_within_slo_pct: windows,
        request_violations_vs_static: requests,
        abs_deadline_deviation_pct: deviation,
        share_seconds_vs_static: shares,
        targets,
    }
}

/// The sweep as text: a row per scenario, the spreads, and the targets.
pub fn text(r: &SweepReport) -> String {
    let t = scenario_table(r);
    let mut o = format!(
        "{} random scenarios from seed {}, {} s per policy\n\n",
        r.scenarios.len(),
        r.seed,
        r.duration_s
    );
    o.push_str(&t.render());
    write_spreads(&mut o, r);
    o.push('\n');
    for c in &r.targets {
        let _ = writeln!(
            o,
            "{:<7} {} (measured {})",
            if c.met { "met" } else { "MISSED" },
            c.target,
            fixed(c.measured, 2)
        );
    }
    let costs: Vec<String> = r
        .costs_us
        .iter()
        .map(|(what, us)| format!("{what}: {us:.1} µs"))
        .collect();
    let _ = writeln!(o, "\ncosts on one worker here: {}", costs.join("; "));
    o.push_str(
        "REQ VIOL: requests over the SLO, setpoint / static (static counted as at least one); \
         SHARE-S: set-point tenants' share-seconds, setpoint / static; BE EPOCHS: best-effort \
         epochs, setpoint/static\n",
    );
    o
}

/// `v` with `d` decimals, `-` for none.
fn fixed(v: Option<f64>, d: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.d$}"))
}

/// The table of the sweep's scenarios, a row each.
fn scenario_table(r: &SweepReport) -> Table {
    let mut t = Table::new(&[
        "SCENARIO",
        "SERVICE",
        "SLO MS",
        "JOBS",
        "WINDOWS OK",
        "STATIC OK",
        "REQ VIOL",
        "MEAN |DEV|",
        "MISSES",
        "EARLY",
        "SHARE-S",
        "BE EPOCHS",
    ])
    .right_align(&[2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    for o in &r.scenarios {
        t.row(scenario_row(o));
    }
    t
}

/// One scenario's row of [`scenario_table`].
fn scenario_row(o: &ScenarioOutcome) -> Vec<String> {
    let layers: Vec<String> = o.service_layers.iter().map(|l| l.to_string()).collect();
    let epochs = |e: Option<u32>| e.map_or("-".into(), |e| e.to_string());
    vec![
        o.scenario.clone(),
        layers.join("-"),
        format!("{:.1}", o.slo_p99_ms),
        format!("{}+{}", o.deadline_jobs, o.best_effort_jobs),
        fixed(o.windows_within_slo_pct, 1),
        fixed(o.static_windows_within_slo_pct, 1),
        fixed(o.request_violations_vs_static, 2),
        fixed(o.mean_abs_deviation_pct, 2),
        format!(
            "{}{}",
            o.deadline_misses,
            if o.refused > 0 {
                format!(" ({} refused)", o.refused)
            } else {
                String::new()
            }
        ),
        o.met_early.to_string(),
        fixed(o.share_seconds_vs_static, 2),
        format!(
            "{}/{}",
            epochs(o.best_effort_epochs.0),
            epochs(o.best_effort_epochs.1)
        ),
    ]
}

/// The worst, median and best of each spread across the scenarios, under their own heading.
fn write_spreads(o: &mut String, r: &SweepReport) {
    o.push_str("\n             worst    median      best\n");
    for (name, s) in [
        ("windows ok %", r.windows_within_slo_pct),
        ("req viol/st ", r.request_violations_vs_static),
        ("|deviation|%", r.abs_deadline_deviation_pct),
        ("share-s/st  ", r.share_seconds_vs_static),
    ] {
        match s {
            Some(s) => {
                let _ = writeln!(
                    o,
                    "{name} {:>9.2} {:>9.2} {:>9.2}",
                    s.worst, s.median, s.best
                );
            }
            None => {
                let _ = writeln!(o, "{name}         -         -         -");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_know_which_way_is_worse() {
        let s = Spread::of([99.0, 100.0, 95.0, f64::NAN].into_iter(), true).unwrap();
        assert_eq!((s.worst, s.median, s.best, s.n), (95.0, 99.0, 100.0, 3));
        let r = Spread::of([0.1, 0.5, 0.2].into_iter(), false).unwrap();
        assert_eq!((r.worst, r.median, r.best), (0.5, 0.2, 0.1));
        assert!(Spread::of(std::iter::empty(), true).is_none());
    }
}
