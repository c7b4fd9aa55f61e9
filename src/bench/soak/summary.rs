//! What the soak's requests add up to: outcomes, latency per window against the SLO, and how
//! late answers came against their timeout.

use serde::Serialize;

use super::load::{SKIPPED, Sent};
use super::{Outcomes, SloReport, SoakSpec, Target, Window};

/// How late answers came, measured from when the client sent each request: lateness =
/// answer time − send time − the request's timeout (negative: in time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lateness {
    /// The timeout every request ran under (the service's), ms.
    pub timeout_ms: f64,
    /// The allowance past it (the daemon's control period), ms.
    pub period_ms: f64,
    /// Answers of any status later than their timeout.
    pub over_timeout: u64,
    /// Answers of any status later than their timeout by more than the period.
    pub over_timeout_and_period: u64,
    /// 200 answers later than their timeout (the README promises none).
    pub ok_over_timeout: u64,
    /// The latest answer's lateness, ms (negative when every answer came in time).
    pub max_ms: f64,
    /// Latency of 504 answers, ms: p50, p99, max (zeros when there were none).
    pub timeout_504_ms: [f64; 3],
    /// Latency of 429 answers, ms: p50, p99, max.
    pub rejected_429_ms: [f64; 3],
    /// Latency of every answer, any status, ms: p50, p99, max.
    pub all_ms: [f64; 3],
}

/// Everything the report shows of the requests.
pub(super) struct Summary {
    pub requests: Outcomes,
    pub latency_ms: [f64; 3],
    pub windows: Vec<Window>,
    pub slo: SloReport,
    pub lateness: Lateness,
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> Option<f64> {
    (!sorted_us.is_empty())
        .then(|| crate::util::stats::nearest_rank(sorted_us, q).unwrap_or(0) as f64 / 1e3)
}

/// p50, p99 and max of `us` (sorted here), ms; zeros when empty.
fn spread_ms(us: &mut [u64]) -> [f64; 3] {
    us.sort_unstable();
    [
        percentile_ms(us, 0.50).unwrap_or(0.0),
        percentile_ms(us, 0.99).unwrap_or(0.0),
        us.last().map_or(0.0, |&n| n as f64 / 1e3),
    ]
}

fn outcomes(sent: &[Sent]) -> Outcomes {
    let mut q = Outcomes::default();
    for s in sent {
        if s.status == SKIPPED {
            q.skipped += 1;
            continue;
        }
        q.sent += 1;
        q.late_starts += u64::from(s.sent_us.saturating_sub(s.due_us) > 10_000);
        match s.status {
            200 => q.ok += 1,
            429 => q.rejected_429 += 1,
            504 => q.timeout_504 += 1,
            0 => q.transport_errors += 1,
            code => *q.other.entry(code).or_default() += 1,
        }
    }
    q
}

fn lateness(sent: &[Sent], timeout_ms: f64, period_ms: f64) -> Lateness {
    let timeout_us = (timeout_ms * 1e3) as i64;
    let period_us = (period_ms * 1e3) as i64;
    let answered = || sent.iter().filter(|s| s.status != 0 && s.status != SKIPPED);
    let late = |s: &Sent| s.latency_us as i64 - timeout_us;
    let of = |code: u16| -> Vec<u64> {
        answered()
            .filter(|s| s.status == code)
            .map(|s| s.latency_us)
            .collect()
    };
    Lateness {
        timeout_ms,
        period_ms,
        over_timeout: answered().filter(|s| late(s) > 0).count() as u64,
        over_timeout_and_period: answered().filter(|s| late(s) > period_us).count() as u64,
        ok_over_timeout: answered()
            .filter(|s| s.status == 200 && late(s) > 0)
            .count() as u64,
        max_ms: answered().map(late).max().map_or(0.0, |us| us as f64 / 1e3),
        timeout_504_ms: spread_ms(&mut of(504)),
        rejected_429_ms: spread_ms(&mut of(429)),
        all_ms: spread_ms(&mut answered().map(|s| s.latency_us).collect::<Vec<_>>()),
    }
}

fn windows(sent: &[Sent], spec: &SoakSpec, slo_ms: f64) -> Vec<Window> {
    let span = spec.window.as_secs_f64();
    let nwin = (spec.duration.as_secs_f64() / span).ceil().max(1.0) as usize;
    let mut per_window: Vec<(u64, Vec<u64>)> = vec![(0, Vec::new()); nwin];
    for s in sent.iter().filter(|s| s.status != SKIPPED) {
        let w = ((s.sent_us as f64 / 1e6 / span) as usize).min(nwin - 1);
        per_window[w].0 += 1;
        if s.status == 200 {
            per_window[w].1.push(s.latency_us);
        }
    }
    per_window
        .into_iter()
        .enumerate()
        .map(|(i, (n, mut lat))| {
            lat.sort_unstable();
            let p99 = percentile_ms(&lat, 0.99);
            Window {
                t_s: i as f64 * span,
                requests: n,
                ok: lat.len() as u64,
                p50_ms: percentile_ms(&lat, 0.50),
                p99_ms: p99,
                over_slo: p99.is_some_and(|p| p > slo_ms),
            }
        })
        .collect()
}

/// Adds up what became of `sent`.
pub(super) fn summarize(sent: &[Sent], spec: &SoakSpec, target: &Target, _rate: f64) -> Summary {
    let mut all_ok: Vec<u64> = sent
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.latency_us)
        .collect();
    let latency_ms = spread_ms(&mut all_ok);
    let slo_us = target.slo_ms * 1e3;
    let requests_over = all_ok.iter().filter(|&&us| us as f64 > slo_us).count() as u64;
    let windows = windows(sent, spec, target.slo_ms);
    let slo = SloReport {
        p99_ms: target.slo_ms,
        windows: windows.iter().filter(|w| w.ok > 0).count(),
        windows_over: windows.iter().filter(|w| w.over_slo).count(),
        requests_over,
        requests_over_frac: if all_ok.is_empty() {
            0.0
        } else {
            requests_over as f64 / all_ok.len() as f64
        },
    };
    Summary {
        requests: outcomes(sent),
        latency_ms,
        windows,
        slo,
        lateness: lateness(sent, target.timeout_ms, spec.period.as_secs_f64() * 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(latency_ms: u64, status: u16) -> Sent {
        Sent {
            due_us: 0,
            sent_us: 0,
            latency_us: latency_ms * 1000,
            status,
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let us: Vec<u64> = (1..=100).map(|i| i * 1_000).collect();
        assert_eq!(percentile_ms(&us, 0.5), Some(50.0));
        assert_eq!(percentile_ms(&us, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[], 0.99), None);
    }

    #[test]
    fn lateness_counts_answers_past_their_timeout_and_past_the_period() {
        let all = [
            sent(10, 200),
            sent(260, 200),
            sent(249, 504),
            sent(300, 504),
            sent(400, 504),
            sent(1, 429),
            sent(5000, 0),
        ];
        let l = lateness(&all, 250.0, 100.0);
        assert_eq!(l.over_timeout, 3);
        assert_eq!(l.over_timeout_and_period, 1);
        assert_eq!(l.ok_over_timeout, 1);
        assert_eq!(l.max_ms, 150.0);
        assert_eq!(l.timeout_504_ms, [300.0, 400.0, 400.0]);
        assert_eq!(l.rejected_429_ms, [1.0, 1.0, 1.0]);
        let q = outcomes(&all);
        assert_eq!(
            (q.ok, q.timeout_504, q.rejected_429, q.transport_errors),
            (2, 3, 1, 1)
        );
    }
}
