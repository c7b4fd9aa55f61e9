//! Shares are real on the CPU: busy lanes get throughput in proportion to their shares.

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
    let frac = done[0] as f64 / total;
    eprintln!(
        "lane throughputs {done:?} over {elapsed:?}: fractions {frac:.3} / {:.3} for shares 0.25 / 0.75",
        1.0 - frac
    );
    for l in &lanes {
        eprintln!("{}: {:?}", l.name(), l.usage());
    }
    assert!(
        (frac - 0.25).abs() <= 0.1,
        "share 0.25 got {frac:.3} of the throughput"
    );
    // Each lane stayed within its share of the device.
    for (lane, &s) in lanes.iter().zip(&shares) {
        let used = lane.usage().core_s / (cores as f64 * (elapsed.as_secs_f64() + 0.3));
        assert!(
            used <= s * 1.15 + 0.02,
            "{} used {used:.3} at share {s}",
            lane.name()
        );
    }
}
