//! Shares are real on the CPU: a busy lane never uses more CPU time than its share, and two
//! busy lanes split the CPU time they are given in the ratio of their shares.
//!
//! Judged by CPU time, not by a throughput race: on a machine shared with other work the
//! lanes may get less than their shares, so the split is asserted only when the two lanes
//! together were given most of the cores; the upper bound holds however busy the machine is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use setpoint::device::lane::{CorePermits, Lane};
use setpoint::device::{Backend, CpuBackend, Gemm};
use setpoint::util::cputime::thread_cpu_time;

/// Runs fixed-size GEMMs in `lane` until `stop`, counting them.
fn busy(lane: Arc<Lane>, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let be = CpuBackend::new(lane.cores()).unwrap();
    let n = 768;
    let a = be.upload(&vec![0.5; n * n]).unwrap();
    let b = be.upload(&vec![0.25; n * n]).unwrap();
    let mut c = be.alloc(n * n).unwrap();
    while !stop.load(Ordering::Relaxed) {
        lane.run(
            || thread_cpu_time() + be.pool_cpu_time(),
            |w| {
                be.set_workers(w);
                be.gemm(Gemm::new(n, n, n), &a, &b, &mut c).unwrap();
            },
        );
        count.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn two_busy_lanes_get_throughput_in_the_ratio_of_their_shares() {
    let cores = 2;
    let shares = [0.25, 0.75];
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<_> = shares.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let permits = CorePermits::new(cores);
    let lanes: Vec<_> = shares
        .iter()
        .enumerate()
        .map(|(i, &s)| Arc::new(Lane::parallel(&format!("lane{i}"), &permits, s)))
        .collect();
    let threads: Vec<_> = lanes
        .iter()
        .zip(&counts)
        .map(|(l, c)| {
            let (l, c, s) = (l.clone(), c.clone(), stop.clone());
            std::thread::spawn(move || busy(l, s, c))
        })
        .collect();
    // Warm up, then measure over a bounded window.
    std::thread::sleep(Duration::from_millis(300));
    let start: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let done: Vec<u64> = counts
        .iter()
        .zip(&start)
        .map(|(c, s)| c.load(Ordering::Relaxed) - s)
        .collect();
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "measurement took {elapsed:?}"
    );
    let total = (done[0] + done[1]) as f64;
    assert!(total > 0.0);
    let window_s = elapsed.as_secs_f64() + 0.3;
    let used: Vec<f64> = lanes.iter().map(|l| l.usage().core_s).collect();
    eprintln!(
        "lane throughputs {done:?} over {elapsed:?}; CPU time {used:.3?} core-s of {:.3} \
         available, for shares 0.25 / 0.75",
        cores as f64 * window_s
    );
    for l in &lanes {
        eprintln!("{}: {:?}", l.name(), l.usage());
    }
    // Each lane stayed within its share of the device, whatever else ran.
    for ((lane, &s), u) in lanes.iter().zip(&shares).zip(&used) {
        let frac = u / (cores as f64 * window_s);
        assert!(
            frac <= s * 1.15 + 0.02,
            "{} used {frac:.3} of the cores at share {s}",
            lane.name()
        );
    }
    // The split of the CPU time they were given, when they were given most of the cores.
    let given = (used[0] + used[1]) / (cores as f64 * window_s);
    if given < 0.85 {
        eprintln!(
            "split not judged: other work left the two lanes {:.0} % of the cores, so the \
             larger lane could not reach its share (the upper bounds above were checked)",
            given * 100.0
        );
        return;
    }
    let frac = used[0] / (used[0] + used[1]);
    assert!(
        (frac - 0.25).abs() <= 0.1,
        "share 0.25 got {frac:.3} of the CPU time the lanes were given"
    );
}
