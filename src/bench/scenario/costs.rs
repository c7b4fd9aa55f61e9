//! What a random scenario's service requests and training steps cost on this machine, so
//! that a drawn load (a fraction of a core) means the same on any host. Measured on the
//! engine itself, one worker, overheads included: requests through a real batcher, steps as
//! admission measures them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::data::{LoadOptions, Normalizer};
use crate::device::CpuBackend;
use crate::model::MlpParams;
use crate::node::Placement;
use crate::node::jobs::measure_step_cost;
use crate::serve::{BatchConfig, InferenceService, ServedModel};

/// The costs the generator scales a scenario by.
pub trait Costs {
    /// Seconds of one worker per request of a model of `layers`, served in batches of 32.
    fn request_s(&mut self, layers: &[usize]) -> f64;
    /// Seconds of one worker per training step of `batch` rows of `data` on `layers`.
    fn step_s(&mut self, layers: &[usize], data: &str, batch: usize) -> f64;
}

/// Costs measured here, each once.
#[derive(Debug, Default)]
pub struct Measured {
    requests: HashMap<Vec<usize>, f64>,
    steps: HashMap<(Vec<usize>, String, usize), f64>,
}

impl Costs for Measured {
    fn request_s(&mut self, layers: &[usize]) -> f64 {
        *self
            .requests
            .entry(layers.to_vec())
            .or_insert_with(|| measure_requests(layers).unwrap_or(1e-3))
    }

    fn step_s(&mut self, layers: &[usize], data: &str, batch: usize) -> f64 {
        *self
            .steps
            .entry((layers.to_vec(), data.to_string(), batch))
            .or_insert_with(|| measure_steps(layers, data, batch).unwrap_or(1e-2))
    }
}

impl Measured {
    /// What was measured, for the report: `(what, microseconds)`.
    pub fn table(&self) -> Vec<(String, f64)> {
        let name = |l: &[usize]| {
            l.iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("-")
        };
        let mut out: Vec<(String, f64)> = self
            .requests
            .iter()
            .map(|(l, s)| (format!("request {}", name(l)), 1e6 * s))
            .chain(
                self.steps
                    .iter()
                    .map(|((l, d, b), s)| (format!("step {} batch {b} on {d}", name(l)), 1e6 * s)),
            )
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The best of three ~100 ms closed-loop rounds of 256 requests at a time through a batcher
/// of one worker (the best, because a busier moment only makes a round slower).
fn measure_requests(layers: &[usize]) -> Option<f64> {
    let model = ServedModel {
        params: MlpParams::init(layers, 1).ok()?,
        normalizer: Normalizer::identity(layers[0]),
    };
    let config = BatchConfig {
        max_batch_size: 32,
        max_queue_delay: Duration::ZERO,
        max_queue: 4096,
        ..BatchConfig::default()
    };
    let svc = InferenceService::start("calibration", CpuBackend::single(), model, config).ok()?;
    let row = vec![0.25f32; layers[0]];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut n = 0usize;
        while n == 0 || t0.elapsed() < Duration::from_millis(100) {
            let pending: Vec<_> = (0..256)
                .filter_map(|_| svc.submit(row.clone()).ok())
                .collect();
            for p in pending {
                p.wait().ok()?;
                n += 1;
            }
        }
        best = best.min(t0.elapsed().as_secs_f64() / n as f64);
    }
    svc.shutdown();
    best.is_finite().then_some(best)
}

/// What admission itself measures for such a job on the CPU (`measure_step_cost`: processor
/// time per step on one worker), so the generator sizes jobs as admission will judge them.
fn measure_steps(layers: &[usize], data: &str, batch: usize) -> Option<f64> {
    let set = crate::data::load(data, &LoadOptions::default()).ok()?;
    let mut c = crate::config::default_config().jobs[0].clone();
    c.data = data.to_string();
    c.layers = layers.to_vec();
    c.batch_size = batch;
    c.optimizer = crate::config::OptimizerKind::Adam;
    c.lr = 1e-3;
    let placement = Placement::Cpu(crate::node::devices::CpuPart::whole());
    measure_step_cost(&c, &set, &placement).ok().map(|m| m.cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_measured_once_and_grow_with_the_model() {
        let mut m = Measured::default();
        let small = m.request_s(&[16, 32, 4]);
        let big = m.request_s(&[256, 1024, 1024, 10]);
        assert!(small > 0.0 && big > small, "{small} {big}");
        let step = m.step_s(
            &[8, 64, 4],
            "synthetic:blobs:size=600,features=8,classes=4",
            32,
        );
        assert!(step > 0.0 && step < 1.0, "{step}");
        assert_eq!(m.table().len(), 3);
        // Asked again: the same figure, not a new measurement.
        assert_eq!(m.request_s(&[16, 32, 4]), small);
    }
}
