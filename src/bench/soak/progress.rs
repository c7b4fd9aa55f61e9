//! Progress while the soak runs: counters the load generator bumps as requests go out and
//! answers come back, a latency histogram of the 200 answers, and the status line made of
//! them every `--progress-every`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the soak tells its caller while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A step of the run: starting the daemon, measuring the sustainable rate, stopping.
    Phase(&'a str),
    /// Whole seconds of the load done, of its total; once a second.
    Tick {
        /// Done.
        elapsed_s: u64,
        /// Of.
        total_s: u64,
    },
    /// A status line (see [`status_line`]), every `progress_every`.
    Status(&'a str),
}

/// Buckets per doubling of latency: each bucket's upper bound is 2^(1/16), about 4.4 %, above
/// its lower one, so a quantile read from them is at most that much high.
const PER_OCTAVE: f64 = 16.0;
/// Buckets: up to 2^32 µs (over an hour), far past any timeout.
const BUCKETS: usize = 32 * 16 + 1;

/// Counts of the load so far, bumped by the senders and read by the watcher.
#[derive(Debug)]
pub(crate) struct Live {
    sent: AtomicU64,
    ok: AtomicU64,
    rejected_429: AtomicU64,
    timeout_504: AtomicU64,
    other: AtomicU64,
    no_answer: AtomicU64,
    skipped: AtomicU64,
    ok_latency: Vec<AtomicU64>,
}

impl Default for Live {
    fn default() -> Self {
        let zero = || AtomicU64::new(0);
        Live {
            sent: zero(),
            ok: zero(),
            rejected_429: zero(),
            timeout_504: zero(),
            other: zero(),
            no_answer: zero(),
            skipped: zero(),
            ok_latency: (0..BUCKETS).map(|_| zero()).collect(),
        }
    }
}

fn bucket(latency_us: u64) -> usize {
    if latency_us <= 1 {
        return 0;
    }
    ((latency_us as f64).log2() * PER_OCTAVE)
        .ceil()
        .min((BUCKETS - 1) as f64) as usize
}

impl Live {
    /// A request went out.
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was due and never sent.
    pub(crate) fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's outcome: its status (0: no answer) and its latency.
    pub(crate) fn answered(&self, status: u16, latency_us: u64) {
        let counter = match status {
            200 => {
                self.ok_latency[bucket(latency_us)].fetch_add(1, Ordering::Relaxed);
                &self.ok
            }
            429 => &self.rejected_429,
            504 => &self.timeout_504,
            0 => &self.no_answer,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub(crate) fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            sent: get(&self.sent),
            ok: get(&self.ok),
            rejected_429: get(&self.rejected_429),
            timeout_504: get(&self.timeout_504),
            other: get(&self.other),
            no_answer: get(&self.no_answer),
            skipped: get(&self.skipped),
            ok_latency: self.ok_latency.iter().map(get).collect(),
        }
    }
}

/// The load's counts at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counts {
    pub sent: u64,
    pub ok: u64,
    pub rejected_429: u64,
    pub timeout_504: u64,
    pub other: u64,
    pub no_answer: u64,
    pub skipped: u64,
    ok_latency: Vec<u64>,
}

impl Counts {
    /// Requests answered, with any status.
    pub fn answered(&self) -> u64 {
        self.ok + self.rejected_429 + self.timeout_504 + self.other
    }

    /// The 99th percentile latency of the 200 answers counted in `self` and not in `before`
    /// (all of them when `before` is empty), ms: the upper bound of its bucket.
    pub fn ok_p99_ms(&self, before: &Counts) -> Option<f64> {
        let n: Vec<u64> = self
            .ok_latency
            .iter()
            .enumerate()
            .map(|(i, c)| c - before.ok_latency.get(i).copied().unwrap_or(0))
            .collect();
        let total: u64 = n.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil().max(1.0) as u64;
        let mut seen = 0;
        let i = n.iter().position(|c| {
            seen += c;
            seen >= rank
        })?;
        Some(2f64.powf(i as f64 / PER_OCTAVE) / 1e3)
    }
}

/// What a status line shows beside the counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Process {
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Open descriptors.
    pub fds: u64,
    /// The training job's steps.
    pub job_steps: u64,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2} ms"))
}

/// One status line: time done of the total, requests sent and answered, errors (answers not
/// 200, requests with no answer, requests never sent), the p99 of the 200 answers so far and
/// since `before`, and the daemon's memory, descriptors and job steps.
pub(crate) fn status_line(
    elapsed: Duration,
    total: Duration,
    now: &Counts,
    before: &Counts,
    since: Duration,
    p: Process,
) -> String {
    let kinds = [
        ("429", now.rejected_429),
        ("504", now.timeout_504),
        ("other", now.other),
        ("no answer", now.no_answer),
        ("not sent", now.skipped),
    ];
    let errors: u64 = kinds.iter().map(|(_, n)| n).sum();
    let detail: Vec<String> = kinds
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    format!(
        "{:.0}/{:.0} s  sent {}  answered {}  errors {}{}  p99 {} (last {:.0} s: {})  rss {:.1} MiB  fds {}  job steps {}",
        elapsed.as_secs_f64(),
        total.as_secs_f64(),
        now.sent,
        now.answered(),
        errors,
        if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", detail.join(", "))
        },
        ms(now.ok_p99_ms(&Counts::default())),
        since.as_secs_f64(),
        ms(now.ok_p99_ms(before)),
        p.rss_bytes as f64 / 1048576.0,
        p.fds,
        p.job_steps
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_sort_outcomes_and_read_p99_within_a_bucket() {
        let live = Live::default();
        for i in 0..1000u64 {
            live.sent();
            live.answered(200, 1000 + i);
        }
        live.sent();
        live.answered(429, 5);
        live.sent();
        live.answered(0, 5);
        live.skipped();
        let before = live.counts();
        assert_eq!(
            (before.sent, before.ok, before.answered()),
            (1002, 1000, 1001)
        );
        let p99 = before.ok_p99_ms(&Counts::default()).unwrap();
        // The true p99 is 1.989 ms; the bucket's upper bound is at most 4.4 % above it.
        assert!((1.989..=1.989 * 1.045).contains(&p99), "{p99}");
        for _ in 0..100 {
            live.answered(200, 50_000);
        }
        let now = live.counts();
        let recent = now.ok_p99_ms(&before).unwrap();
        assert!((50.0..=50.0 * 1.045).contains(&recent), "{recent}");
        assert_eq!(now.ok_p99_ms(&now), None);

        let line = status_line(
            Duration::from_secs(60),
            Duration::from_secs(600),
            &now,
            &before,
            Duration::from_secs(10),
            Process {
                rss_bytes: 70 << 20,
                fds: 13,
                job_steps: 500,
            },
        );
        assert!(
            line.starts_with("60/600 s  sent 1002  answered 1101  errors 3 (429: 1, no answer: 1, not sent: 1)  p99 "),
            "{line}"
        );
        assert!(line.contains("(last 10 s: 50.5"), "{line}");
        assert!(
            line.ends_with("rss 70.0 MiB  fds 13  job steps 500"),
            "{line}"
        );
    }
}
