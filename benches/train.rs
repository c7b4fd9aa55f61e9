//! Training and inference throughput of the product's MLPs on the CPU backend.
//!
//! Training is measured per `Trainer::step` (one full batch: gather, forward, backward, Adam),
//! reported as samples/s; inference per `Mlp::predict` call, reported as rows/s. The same
//! workloads are measured against PyTorch by `scripts/bench-peers.sh`. Run with
//! `cargo bench --bench train`.

mod common;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use common::{BIG_BATCH, DIGITS_BATCH, Forward};

/// Skips a workload whose setup failed (say the shared data is missing) with the reason,
/// rather than failing every other benchmark in the run.
fn or_skip<T>(what: &str, r: anyhow::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("skipping {what}: {e:#}");
            None
        }
    }
}

fn train_digits(c: &mut Criterion) {
    let mut group = c.benchmark_group("train/digits_64-128-10_b64_adam");
    group
        .throughput(Throughput::Elements(DIGITS_BATCH as u64))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for threads in [1, 2] {
        let Some(mut t) = or_skip("digits training", common::digits_trainer(threads)) else {
            continue;
        };
        group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
            b.iter(|| common::train_step(&mut t))
        });
    }
    group.finish();
}

fn train_big(c: &mut Criterion) {
    let mut group = c.benchmark_group("train/784-1024-1024-10_b256_adam");
    // A step is tens of milliseconds: ten samples over a few seconds are enough.
    group
        .throughput(Throughput::Elements(BIG_BATCH as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for threads in [1, 2] {
        let Some(mut t) = or_skip("large-model training", common::big_trainer(threads)) else {
            continue;
        };
        group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
            b.iter(|| common::train_step(&mut t))
        });
    }
    group.finish();
}

fn infer_digits(c: &mut Criterion) {
    let mut group = c.benchmark_group("infer/64-128-10_1t");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let Some(mut fwd) = or_skip("inference", Forward::new(1)) else {
        return;
    };
    for rows in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new("batch", rows), |b| {
            b.iter(|| fwd.run(rows))
        });
    }
    group.finish();
}

criterion_group!(benches, train_digits, train_big, infer_digits);
criterion_main!(benches);
