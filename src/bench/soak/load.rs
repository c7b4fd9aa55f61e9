//! The soak's traffic: open-loop inference requests over many keep-alive connections, a
//! closed-loop ramp that measures the rate the service sustains within its SLO, and probes of
//! the health and metrics routes. All of it runs on async runtimes of one thread each, so the
//! generator takes as little of the machine from the daemon as it can.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::wire::Conn;

/// One inference request and what became of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// When it was due, µs after the load started.
    pub due_us: u64,
    /// When it was sent, µs after the load started.
    pub sent_us: u64,
    /// From sending to the end of the answer, µs.
    pub latency_us: u64,
    /// HTTP status; 0 when no answer came (the connection failed or broke); [`SKIPPED`]
    /// when it was never sent.
    pub status: u16,
}

/// The `status` of a request the generator never sent (see [`SKIP_AFTER`]).
pub(crate) const SKIPPED: u16 = u16::MAX;

/// A runtime of one thread: the generator's work stays on one core's worth of time.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts")
}

/// The open-loop plan: request i is due at `i / rate` after `t0`, until `end`.
pub(crate) struct OpenLoop {
    /// The daemon.
    pub addr: SocketAddr,
    /// The request, encoded once.
    pub request: Arc<Vec<u8>>,
    /// Requests per second.
    pub rate: f64,
    /// When the load starts.
    pub t0: Instant,
    /// How long it runs.
    pub end: Duration,
    /// Connections (each has at most one request in flight).
    pub connections: usize,
    /// Counts of the requests and answers so far, for progress.
    pub live: Arc<super::progress::Live>,
}

/// A request not sent within this long of its due time, every connection being busy, is
/// skipped: the load keeps its schedule instead of sending a backlog after its end.
pub(crate) const SKIP_AFTER: Duration = Duration::from_secs(1);

/// Sends the plan's requests, each at its due time on whichever connection is free; a request
/// due while every connection is busy goes out late (its `sent_us` tells how late), or not at
/// all when [`SKIP_AFTER`] has passed or the load has ended (`status` [`SKIPPED`]). Blocks
/// until the last answer.
pub(crate) fn open_loop(plan: OpenLoop) -> Vec<Sent> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    runtime().block_on(async {
        let tasks: Vec<_> = (0..plan.connections.max(1))
            .map(|_| tokio::spawn(open_loop_connection(plan.clone(), next.clone())))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort_unstable_by_key(|s| s.due_us);
        all
    })
}

async fn open_loop_connection(plan: Arc<OpenLoop>, next: Arc<AtomicU64>) -> Vec<Sent> {
    let mut conn = Conn::new(plan.addr);
    let mut out = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let due = Duration::from_secs_f64(i as f64 / plan.rate);
        if due >= plan.end {
            return out;
        }
        tokio::time::sleep_until((plan.t0 + due).into()).await;
        let sent = Instant::now();
        let behind = sent.saturating_duration_since(plan.t0 + due);
        if behind > SKIP_AFTER || sent - plan.t0 >= plan.end {
            out.push(Sent {
                due_us: due.as_micros() as u64,
                sent_us: 0,
                latency_us: 0,
                status: SKIPPED,
            });
            plan.live.skipped();
            continue;
        }
        plan.live.sent();
        let status = conn.exchange(&plan.request).await.unwrap_or(0);
        let latency_us = sent.elapsed().as_micros() as u64;
        plan.live.answered(status, latency_us);
        out.push(Sent {
            due_us: due.as_micros() as u64,
            sent_us: (sent - plan.t0).as_micros() as u64,
            latency_us,
            status,
        });
        if status == 0 {
            // Do not spin against a daemon that went away.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One step of the closed-loop ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    /// Connections sending back to back.
    pub connections: usize,
    /// Answers per second, any status.
    pub answers_per_s: f64,
    /// 200 answers within the SLO, per second.
    pub good_per_s: f64,
    /// 99th percentile latency of all answers (a non-200 counts as over the SLO), ms.
    pub p99_ms: f64,
}

/// The rate the service sustains within its SLO, as the ramp measured it.
#[derive(Debug, Clone, Serialize)]
pub struct Sustainable {
    /// Requests per second answered 200 within the SLO, at the best step whose p99 met it.
    pub requests_per_s: f64,
    /// Every step.
    pub steps: Vec<RampStep>,
}

/// Closed loop with 1, 2, 4, … connections for `step` each, until the p99 misses `slo` or
/// the good rate stops growing; the best good rate among the steps whose p99 met the SLO.
pub(crate) fn measure_sustainable(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    slo: Duration,
    step: Duration,
) -> Sustainable {
    let rt = runtime();
    let mut steps: Vec<RampStep> = Vec::new();
    let mut c = 1;
    while c <= 64 {
        let s = rt.block_on(closed_loop_step(addr, request.clone(), c, slo, step));
        let better = steps
            .last()
            .is_none_or(|p| s.good_per_s > p.good_per_s * 1.05);
        let met = s.p99_ms <= slo.as_secs_f64() * 1e3;
        steps.push(s);
        if !met || !better {
            break;
        }
        c *= 2;
    }
    let slo_ms = slo.as_secs_f64() * 1e3;
    let requests_per_s = steps
        .iter()
        .filter(|s| s.p99_ms <= slo_ms)
        .map(|s| s.good_per_s)
        .fold(0.0, f64::max);
    Sustainable {
        requests_per_s,
        steps,
    }
}

async fn closed_loop_step(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    connections: usize,
    slo: Duration,
    step: Duration,
) -> RampStep {
    let end = Instant::now() + step;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut out = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let status = conn.exchange(&request).await.unwrap_or(0);
                    out.push((status, t.elapsed()));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let secs = step.as_secs_f64();
    let good = all.iter().filter(|(s, l)| *s == 200 && *l <= slo).count();
    let mut lat: Vec<u64> = all
        .iter()
        .map(|(s, l)| {
            if *s == 200 {
                l.as_micros() as u64
            } else {
                u64::MAX
            }
        })
        .collect();
    lat.sort_unstable();
    let p99 = crate::util::stats::nearest_rank(&lat, 0.99).unwrap_or(0);
    RampStep {
        connections,
        answers_per_s: all.len() as f64 / secs,
        good_per_s: good as f64 / secs,
        p99_ms: if p99 == u64::MAX {
            f64::INFINITY
        } else {
            p99 as f64 / 1e3
        },
    }
}

/// What the probes of one route saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeSummary {
    /// The route.
    pub path: String,
    /// Probes sent.
    pub count: u64,
    /// Probes not answered 200 (another status, or no answer).
    pub failed: u64,
    /// Latency of every probe, ms: p50.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Probes each of `paths` every `every` (one after the other, each on a kept-alive connection
/// of its own) until `end` after `t0`, on a thread of its own so the inference load's
/// connections do not delay them. Latencies are from sending to the end of the answer.
pub fn probe(
    addr: SocketAddr,
    paths: &[&str],
    t0: Instant,
    end: Duration,
    every: Duration,
) -> Vec<ProbeSummary> {
    let requests: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| super::wire::encode_request("GET", &addr, p, None))
        .collect();
    let mut conns: Vec<Conn> = paths.iter().map(|_| Conn::new(addr)).collect();
    let mut seen: Vec<(Vec<u64>, u64)> = vec![(Vec::new(), 0); paths.len()];
    runtime().block_on(async {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while t0.elapsed() < end {
            tick.tick().await;
            for ((req, conn), (lat, failed)) in requests.iter().zip(&mut conns).zip(&mut seen) {
                let t = Instant::now();
                let status = conn.exchange(req).await.unwrap_or(0);
                lat.push(t.elapsed().as_micros() as u64);
                *failed += u64::from(status != 200);
            }
        }
    });
    paths
        .iter()
        .zip(seen)
        .map(|(path, (mut lat, failed))| {
            lat.sort_unstable();
            let ms = |us: u64| us as f64 / 1e3;
            ProbeSummary {
                path: path.to_string(),
                count: lat.len() as u64,
                failed,
                p50_ms: ms(crate::util::stats::nearest_rank(&lat, 0.50).unwrap_or(0)),
                p99_ms: ms(crate::util::stats::nearest_rank(&lat, 0.99).unwrap_or(0)),
                max_ms: ms(lat.last().copied().unwrap_or(0)),
            }
        })
        .collect()
}
