//! The text rendering of a scenario report (the SVG figure is in `super::plot`).

use std::fmt::Write;

use super::scenario::Report;
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
    write_jobs(&mut o, r);
    write_tenant_shares(&mut o, r);
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

/// A line per job of each policy: a deadline job's finish against its deadline, a
/// best-effort job's epochs.
fn write_jobs(o: &mut String, r: &Report) {
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
}

/// A line per policy with shares: each tenant's share-seconds.
fn write_tenant_shares(o: &mut String, r: &Report) {
    for p in r
        .policies
        .iter()
        .filter(|p| !p.tenant_share_seconds.is_empty())
    {
        let each: Vec<String> = p
            .tenant_share_seconds
            .iter()
            .map(|(n, x)| format!("{n} {x:.1}"))
            .collect();
        let _ = writeln!(o, "{:<9} share-s by tenant: {}", p.policy, each.join(", "));
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
            tenant_share_seconds: Vec::new(),
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
