//! Random scenarios (`bench scenario --random N --seed S`): each one drawn from the seed and
//! its index, its rates and job sizes scaled to this machine's measured speed so that the
//! load means the same on any host.
//!
//! A drawn scenario mixes what a node meets in use (a fraction "of a core" is of what one
//! worker serves or trains, as [`Costs`] measures it):
//! - a service with one of four model sizes, its SLO a few times its batch's compute time,
//!   its rate stepping, ramping (in half-second steps) and holding between levels from 4 % to
//!   65 % of what one core serves (an order of magnitude apart; a core is taken to serve at
//!   most 8,000 requests/s, which keeps the load generator's threads out of the
//!   measurement), with up to two bursts;
//! - one to three deadline jobs of several model and data sizes, arriving during the first
//!   35 % of the run, each needing 5–20 % of the device by its deadline, some with an
//!   accuracy target;
//! - most of the time, a best-effort backfill job that never finishes, with the leftover
//!   policy `best-effort` so idle capacity goes to it.

use super::costs::Costs;
use super::{Burst, PolicyName, RateStep, Scenario, ScenarioJob, ScenarioService};
use crate::util::rng::Rng;

/// Service models: widths, input first.
const SERVICE_MODELS: [&[usize]; 4] = [
    &[32, 256, 10],
    &[64, 512, 512, 10],
    &[128, 1024, 1024, 10],
    &[256, 2048, 2048, 10],
];

/// Job models and the synthetic data each trains on (`{rows}` is the data set's size).
const JOB_MODELS: [(&[usize], &str); 4] = [
    (&[64, 256, 256, 10], "synthetic:blobs:size={rows}"),
    (&[64, 512, 512, 10], "synthetic:blobs:size={rows},noise=1.5"),
    (
        &[8, 256, 256, 4],
        "synthetic:spirals:size={rows},classes=4,features=8",
    ),
    (&[32, 128, 10], "synthetic:blobs:size={rows},features=32"),
];

/// The most requests per second a drawn rate is scaled to: beyond a few thousand a second the
/// load generator's own threads, not the service, would be measured.
const MAX_ONE_CORE_RPS: f64 = 8000.0;
/// The tightest SLO drawn, ms: timer wake-ups on a shared machine take a good part of less.
const MIN_SLO_MS: f64 = 5.0;

/// The fraction of a job's data set that trains (the default validation split is 10 %).
const TRAIN_FRACTION: f64 = 0.9;

/// What `--random` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomSpec {
    /// How many scenarios.
    pub count: usize,
    /// The seed every scenario is drawn from (with its index).
    pub seed: u64,
    /// Seconds each policy runs per scenario.
    pub duration_s: f64,
    /// CPU workers the node divides (0 = all).
    pub cores: usize,
    /// Policies to run, in order.
    pub policies: Vec<PolicyName>,
}

/// Floating-point operations of one row's forward pass.
#[cfg(test)]
fn forward_flops(layers: &[usize]) -> f64 {
    layers.windows(2).map(|w| 2.0 * (w[0] * w[1]) as f64).sum()
}

/// Scenario `index` of `spec`, scaled to `costs`.
pub fn generate(spec: &RandomSpec, index: usize, costs: &mut dyn Costs) -> Scenario {
    let mut rng = Rng::derived(spec.seed, 0x5CE0_0000 + index as u64);
    let cores = if spec.cores == 0 {
        crate::device::cpu::available_cores()
    } else {
        spec.cores
    };
    let d = spec.duration_s;
    let service = draw_service(&mut rng, d, costs);
    let mut jobs = Vec::new();
    let deadline_jobs = 1 + rng.below(3) as usize;
    for i in 0..deadline_jobs {
        jobs.push(draw_deadline_job(&mut rng, i, d, cores, costs));
    }
    let backfill = rng.next_f64() < 0.75;
    if backfill {
        jobs.push(draw_backfill_job(&mut rng));
    }
    Scenario {
        name: format!("random-{}-{index}", spec.seed),
        description: format!(
            "drawn from seed {} (scenario {index}): {} deadline job(s){}",
            spec.seed,
            deadline_jobs,
            if backfill { " and a backfill job" } else { "" }
        ),
        duration_s: d,
        cores,
        cpu_split: Vec::new(),
        control_period_ms: 100,
        seed: spec.seed.wrapping_mul(1000).wrapping_add(index as u64),
        reserve_frac: 0.05,
        leftover: if backfill { "best-effort" } else { "idle" }.into(),
        policies: spec.policies.clone(),
        service,
        jobs,
        static_shares: Default::default(),
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

/// The service: a model size, an SLO a few batches long, and its arrivals.
fn draw_service(rng: &mut Rng, d: f64, costs: &mut dyn Costs) -> ScenarioService {
    let layers = pick(rng, &SERVICE_MODELS).to_vec();
    let row_s = costs.request_s(&layers);
    let one_core_rps = (1.0 / row_s).min(MAX_ONE_CORE_RPS);
    let batch_ms = 1000.0 * 32.0 * row_s;
    let slo_p99_ms = (rng.uniform(4.0, 8.0) * batch_ms).max(MIN_SLO_MS);
    let slo_p99_ms = (slo_p99_ms * 2.0).round() / 2.0;
    let (arrivals, peak) = draw_arrivals(rng, d, one_core_rps);
    let mut bursts = Vec::new();
    for _ in 0..rng.below(3) {
        let extra = rng.uniform(0.2, 0.5) * one_core_rps;
        bursts.push(Burst {
            at_s: round1(rng.uniform(1.0, (d - 1.5).max(1.0))),
            duration_s: round1(rng.uniform(0.3, 1.5)),
            // The base and the burst together stay within 85 % of a core.
            rate: extra.min((0.85 * one_core_rps - peak).max(0.0)).round(),
        });
    }
    ScenarioService {
        name: "svc".into(),
        warmup_data: format!(
            "synthetic:blobs:size=1000,features={},classes={}",
            layers[0],
            layers[layers.len() - 1]
        ),
        layers,
        slo_p99_ms,
        window_ms: 1000,
        max_batch_size: 32,
        max_queue: 4096,
        arrivals,
        bursts,
        replicas: Vec::new(),
    }
}

/// Piecewise-constant arrivals: segments of 2–6 s that hold, step or ramp (half-second
/// steps) to a new level between 4 % and 65 % of `one_core_rps`; and the peak rate.
fn draw_arrivals(rng: &mut Rng, d: f64, one_core_rps: f64) -> (Vec<RateStep>, f64) {
    let mut level = rng.uniform(0.04, 0.12) * one_core_rps;
    let mut steps = vec![RateStep {
        at_s: 0.0,
        rate: level.round(),
    }];
    let mut peak = level;
    let mut t = rng.uniform(1.0, 4.0);
    while t < d {
        let len = rng.uniform(2.0, 6.0);
        let next = rng.uniform(0.04, 0.65) * one_core_rps;
        match rng.below(3) {
            0 => {}
            1 => steps.push(RateStep {
                at_s: round1(t),
                rate: next.round(),
            }),
            _ => {
                let n = (len / 0.5).floor().max(1.0) as usize;
                for k in 1..=n {
                    let r = level + (next - level) * k as f64 / n as f64;
                    steps.push(RateStep {
                        at_s: round1(t + 0.5 * (k - 1) as f64),
                        rate: r.round(),
                    });
                }
            }
        }
        if steps
            .last()
            .is_some_and(|s| (s.rate - next.round()).abs() < 0.5)
        {
            level = next;
            peak = peak.max(level);
        }
        t += len;
    }
    (steps, peak)
}

/// A deadline job arriving in the first 35 % of the run, sized to need 5–20 % of the device
/// by its deadline; with an accuracy target one time in three.
fn draw_deadline_job(
    rng: &mut Rng,
    i: usize,
    d: f64,
    cores: usize,
    costs: &mut dyn Costs,
) -> ScenarioJob {
    let (layers, data) = pick(rng, &JOB_MODELS);
    let rows = pick(rng, &[4000usize, 8000, 16000]);
    let data = data.replace("{rows}", &rows.to_string());
    let batch_size = pick(rng, &[32usize, 64, 128]);
    let start_s = round1(rng.uniform(0.0, 0.35 * d));
    let room = (d - 1.0 - start_s).max(1.0);
    let allotted = rng.uniform(0.5, 0.9) * room;
    let need = rng.uniform(0.05, 0.2);
    let steps_per_epoch = (rows as f64 * TRAIN_FRACTION / batch_size as f64).ceil();
    let epoch_core_s = steps_per_epoch * costs.step_s(layers, &data, batch_size);
    let epochs = ((need * cores as f64 * allotted / epoch_core_s).floor() as u32).clamp(2, 500);
    let target = rng.next_f64() < 1.0 / 3.0;
    ScenarioJob {
        name: format!("job-{i}"),
        data,
        layers: layers.to_vec(),
        epochs,
        batch_size,
        target_accuracy: target.then(|| pick(rng, &[0.8, 0.85, 0.9])),
        start_s,
        deadline_s: Some(round1(start_s + allotted)),
    }
}

/// A best-effort job that never finishes in the run: work for whatever is left.
fn draw_backfill_job(rng: &mut Rng) -> ScenarioJob {
    let (layers, data) = pick(rng, &JOB_MODELS);
    ScenarioJob {
        name: "backfill".into(),
        data: data.replace("{rows}", "16000"),
        layers: layers.to_vec(),
        epochs: 10_000,
        batch_size: 64,
        target_accuracy: None,
        start_s: round1(rng.uniform(0.0, 2.0)),
        deadline_s: None,
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RandomSpec {
        RandomSpec {
            count: 20,
            seed: 7,
            duration_s: 20.0,
            cores: 2,
            policies: PolicyName::ALL.to_vec(),
        }
    }

    /// Costs from a FLOP count at 20 GFLOP/s, plus 2 µs a request: a fixed machine.
    struct Flops;

    impl Costs for Flops {
        fn request_s(&mut self, layers: &[usize]) -> f64 {
            forward_flops(layers) / 2e10 + 2e-6
        }
        fn step_s(&mut self, layers: &[usize], _data: &str, batch: usize) -> f64 {
            3.0 * forward_flops(layers) * batch as f64 / 2e10
        }
    }

    #[test]
    fn a_seed_and_index_give_the_same_valid_scenario_every_time() {
        for i in 0..20 {
            let a = generate(&spec(), i, &mut Flops);
            assert_eq!(a, generate(&spec(), i, &mut Flops));
            // Valid as a file: it re-parses to itself through the scenario checks.
            let text = toml::to_string(&a).unwrap();
            let back = Scenario::parse(&text).unwrap_or_else(|e| panic!("{i}: {e}\n{text}"));
            assert_eq!(back, a);
        }
        assert_ne!(
            generate(&spec(), 0, &mut Flops),
            generate(&spec(), 1, &mut Flops)
        );
    }

    #[test]
    fn twenty_scenarios_mix_what_the_generator_promises() {
        let all: Vec<Scenario> = (0..20).map(|i| generate(&spec(), i, &mut Flops)).collect();
        let sizes: std::collections::HashSet<_> =
            all.iter().map(|s| s.service.layers.clone()).collect();
        assert!(sizes.len() >= 3, "{sizes:?}");
        assert!(
            all.iter()
                .any(|s| s.jobs.iter().any(|j| j.deadline_s.is_none()))
        );
        assert!(
            all.iter()
                .any(|s| s.jobs.iter().any(|j| j.target_accuracy.is_some()))
        );
        assert!(all.iter().any(|s| s.jobs.iter().any(|j| j.start_s > 0.0)));
        assert!(all.iter().any(|s| !s.service.bursts.is_empty()));
        for s in &all {
            let one_core = (1.0 / Flops.request_s(&s.service.layers)).min(MAX_ONE_CORE_RPS);
            let rates: Vec<f64> = s.service.arrivals.iter().map(|a| a.rate).collect();
            let (lo, hi) = rates
                .iter()
                .fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
            assert!(hi <= 0.66 * one_core, "{}: {hi} of {one_core}", s.name);
            assert!(lo >= 0.03 * one_core, "{}: {lo} of {one_core}", s.name);
            for t in 0..(s.duration_s as usize * 10) {
                assert!(s.rate_at(t as f64 / 10.0) <= 0.86 * one_core, "{}", s.name);
            }
            for j in s.jobs.iter().filter(|j| j.deadline_s.is_some()) {
                assert!(
                    j.deadline_s.unwrap() <= s.duration_s - 1.0 + 1e-9,
                    "{}",
                    s.name
                );
                assert!(j.start_s <= 0.35 * s.duration_s);
            }
        }
        // Rates change by an order of magnitude in some scenarios.
        assert!(all.iter().any(|s| {
            let r: Vec<f64> = s.service.arrivals.iter().map(|a| a.rate).collect();
            let max = r.iter().cloned().fold(0.0, f64::max);
            let min = r.iter().cloned().fold(f64::MAX, f64::min);
            max >= 5.0 * min
        }));
    }
}
