//! Cost of one controller tick for 10, 100 and 1000 tenants (a quarter services, the rest
//! deadline and best-effort jobs), each with a period's worth of observations.
//! Target: at most 50 µs for 100 tenants.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use setpoint::control::{ControlConfig, Controller, JobClass, JobObs, Observations, ServiceObs};

fn observations(tenants: usize, k: usize) -> Observations {
    let services = tenants / 4;
    Observations {
        now_s: k as f64 * 0.1,
        services: (0..services)
            .map(|i| ServiceObs {
                name: format!("svc{i}"),
                slo_s: 0.025,
                p99_s: Some(0.01 + 0.001 * (i % 7) as f64),
                arrival_rate: 100.0 + i as f64,
                queue_len: i % 5,
                batches: vec![(4, 0.0004), (1, 0.0002), (8, 0.0007)],
                calibration: vec![],
                batch_limit: 32,
                share: 0.1,
                max_share: 0.5,
                cores: 16.0,
            })
            .collect(),
        jobs: (0..tenants - services)
            .map(|i| JobObs {
                name: format!("job{i}"),
                class: if i % 3 == 0 {
                    JobClass::BestEffort
                } else {
                    JobClass::Deadline
                },
                deadline_in_s: Some(600.0 - k as f64 * 0.1),
                allotted_s: Some(600.0),
                steps_done: 100 * k as u64,
                steps_per_epoch: 500,
                epochs_done: (k / 50) as u32,
                max_epochs: 40,
                target_accuracy: Some(0.95),
                curve: vec![0.6, 0.75, 0.82, 0.86, 0.88],
                steps_in_period: 10,
                share: 0.02,
                step_cost_core_s: Some(0.002),
                cores: 16.0,
                width: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("controller_tick");
    for tenants in [10, 100, 1000] {
        let mut ctrl = Controller::new(ControlConfig::default());
        let mut obs: Vec<Observations> = (0..16).map(|k| observations(tenants, k)).collect();
        // Warm the controller's state so the bench measures steady ticks; the clock only
        // moves forward, as the daemon's does.
        let mut t = 0usize;
        for o in obs.iter_mut() {
            o.now_s = t as f64 * 0.1;
            t += 1;
            ctrl.tick(o);
        }
        g.bench_with_input(BenchmarkId::from_parameter(tenants), &tenants, |b, _| {
            b.iter(|| {
                let o = &mut obs[t % 16];
                o.now_s = t as f64 * 0.1;
                t += 1;
                std::hint::black_box(ctrl.tick(o))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, tick);
criterion_main!(benches);
