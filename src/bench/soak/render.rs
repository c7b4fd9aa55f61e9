//! The soak's report as text.

use std::fmt::Write;

use super::SoakReport;
use super::descriptors::list;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The report as text.
pub fn render(r: &SoakReport) -> String {
    let mut o = head(r);
    body(r, &mut o);
    overload(r, &mut o);
    o
}

fn head(r: &SoakReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "soak: {:.0} s at {:.0} requests/s of {} row{} on {} over {} connections (SLO p99 <= {} ms, timeout {} ms), daemon on {} ready in {:.1} s",
        r.duration_s,
        r.rate_per_s,
        r.rows,
        if r.rows == 1 { "" } else { "s" },
        r.model,
        r.connections,
        r.slo.p99_ms,
        r.timeout_ms,
        r.listen,
        r.ready_s
    );
    if let (Some(s), Some(k)) = (&r.sustainable, r.rate_multiple) {
        let steps: Vec<String> = s
            .steps
            .iter()
            .map(|st| {
                format!(
                    "{}: {:.0}/s p99 {:.1} ms",
                    st.connections, st.good_per_s, st.p99_ms
                )
            })
            .collect();
        let _ = writeln!(
            o,
            "rate: {k}x the {:.0} requests/s the service sustained within its SLO (closed loop, connections: good rate, p99: {})",
            s.requests_per_s,
            steps.join("; ")
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "             start        end");
    let _ = writeln!(
        o,
        "rss    {:>12} {:>12}   (peak {})",
        mib(r.start.rss_bytes),
        mib(r.end.rss_bytes),
        mib(r.peak_rss_bytes)
    );
    let _ = writeln!(
        o,
        "fds    {:>12} {:>12}   (peak {})",
        r.start.fds,
        r.end.fds,
        r.samples.iter().map(|s| s.fds).max().unwrap_or(0)
    );
    descriptors(r, &mut o);
    let _ = writeln!(o);
    o
}

/// The descriptors that differ between the start of the load and its end, by target: a few
/// opened once and kept is a one-off; sockets or files that grow with the run are a leak.
fn descriptors(r: &SoakReport, o: &mut String) {
    if r.fds_opened.is_empty() && r.fds_closed.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "fds opened during the load and still open: {}",
        list(&r.fds_opened)
    );
    let _ = writeln!(
        o,
        "fds open at the start and closed by the end: {}",
        list(&r.fds_closed)
    );
}

fn body(r: &SoakReport, o: &mut String) {
    let q = &r.requests;
    let other: Vec<String> = q.other.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    let _ = writeln!(
        o,
        "requests: {} sent, {} ok, {} rejected (429), {} timed out (504), {} other{}, {} transport errors, {} sent late, {} not sent (every connection busy)",
        q.sent,
        q.ok,
        q.rejected_429,
        q.timeout_504,
        q.other.values().sum::<u64>(),
        if other.is_empty() {
            String::new()
        } else {
            format!(" ({})", other.join(", "))
        },
        q.transport_errors,
        q.late_starts,
        q.skipped
    );
    let _ = writeln!(
        o,
        "latency of ok answers: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.latency_ms[0], r.latency_ms[1], r.latency_ms[2]
    );
    let _ = writeln!(
        o,
        "SLO: {} of {} windows of {} s over p99 {} ms; {} answers over it ({:.3} %)",
        r.slo.windows_over,
        r.slo.windows,
        r.window_s,
        r.slo.p99_ms,
        r.slo.requests_over,
        r.slo.requests_over_frac * 100.0
    );
    let worst = r
        .windows
        .iter()
        .filter_map(|w| w.p99_ms.map(|p| (p, w.t_s)))
        .fold(None, |acc: Option<(f64, f64)>, x| match acc {
            Some(a) if a.0 >= x.0 => Some(a),
            _ => Some(x),
        });
    if let Some((p, t)) = worst {
        let _ = writeln!(o, "worst window: p99 {p:.2} ms at {t:.0} s");
    }
    let _ = writeln!(
        o,
        "job {}: steps {} -> {} ({} epochs), {}, val accuracy {}",
        r.job.name,
        r.job.steps_start,
        r.job.steps_end,
        r.job.epochs_end,
        r.job.state,
        r.job
            .val_accuracy
            .map_or("-".to_string(), |a| format!("{a:.4}"))
    );
    let _ = writeln!(
        o,
        "reads: {} status, {} metrics, {} failed; daemon exit code after SIGTERM: {}",
        r.reads.status_ok,
        r.reads.metrics_ok,
        r.reads.failed,
        r.daemon_exit_code
            .map_or("none (still running, killed)".to_string(), |c| c
                .to_string())
    );
}

/// Health and metrics probes, and lateness against the timeout.
fn overload(r: &SoakReport, o: &mut String) {
    for p in &r.probes {
        let _ = writeln!(
            o,
            "probe {} every {} ms: {} sent, {} failed; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p.path, r.probe_every_ms, p.count, p.failed, p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    let l = &r.lateness;
    let _ = writeln!(
        o,
        "lateness against the {} ms timeout (from sending): {} answers later than it, {} later \
         than it + {} ms (the control period), {} of them 200; latest {:+.2} ms",
        l.timeout_ms,
        l.over_timeout,
        l.over_timeout_and_period,
        l.period_ms,
        l.ok_over_timeout,
        l.max_ms
    );
    let ms = |a: [f64; 3], n: u64| match n {
        0 => "none".to_string(),
        _ => format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", a[0], a[1], a[2]),
    };
    let c = &r.requests;
    let _ = writeln!(
        o,
        "latency of 504 answers: {}",
        ms(l.timeout_504_ms, c.timeout_504)
    );
    let _ = writeln!(
        o,
        "latency of 429 answers: {}",
        ms(l.rejected_429_ms, c.rejected_429)
    );
    let _ = writeln!(o, "latency of all answers: {}", ms(l.all_ms, c.sent));
}
