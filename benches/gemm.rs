//! CPU f32 GEMM through the backend, against a naive triple loop measured in the same process.
//!
//! Every benchmark reports `2·m·n·k` elements per iteration, so criterion's throughput column
//! reads as FLOP/s. Run with `cargo bench --bench gemm`; add a filter to pick a group, such as
//! `cargo bench --bench gemm -- square` or `-- mlp`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use setpoint::device::cpu::CpuBuf;
use setpoint::device::{Backend, CpuBackend, Gemm};
use setpoint::util::rng::Rng;

/// Worker budgets measured: the whole machine this crate is tuned for has two cores.
const WORKERS: [usize; 2] = [1, 2];

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

fn flops(g: Gemm) -> u64 {
    2 * (g.m * g.n * g.k) as u64
}

/// `C = A·B` with `A` `m × k` and `B` `k × n`, row-major, in i-k-j order so the inner loop
/// runs along rows of `B` and `C` and the compiler can vectorise it. The baseline any
/// blocked kernel must beat.
fn naive_gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..m {
        let c_row = &mut c[i * n..(i + 1) * n];
        c_row.fill(0.0);
        for p in 0..k {
            let a_ip = a[i * k + p];
            let b_row = &b[p * n..(p + 1) * n];
            c_row
                .iter_mut()
                .zip(b_row)
                .for_each(|(c, &b)| *c += a_ip * b);
        }
    }
}

/// Operands for one GEMM shape, stored as the transposes in `g` say.
struct Operands {
    a: CpuBuf,
    b: CpuBuf,
    c: CpuBuf,
}

impl Operands {
    fn new(backend: &CpuBackend, g: Gemm) -> Operands {
        let upload = |data: Vec<f32>| backend.upload(&data).expect("cpu upload cannot fail");
        Operands {
            a: upload(random(g.m * g.k, 1)),
            b: upload(random(g.k * g.n, 2)),
            c: backend.alloc(g.m * g.n).expect("cpu alloc cannot fail"),
        }
    }
}

/// Benchmarks `g` through the backend at each worker budget.
fn bench_backend(
    group: &mut BenchmarkGroup<'_, WallTime>,
    backend: &CpuBackend,
    name: &str,
    g: Gemm,
) {
    let mut ops = Operands::new(backend, g);
    group.throughput(Throughput::Elements(flops(g)));
    for w in WORKERS {
        backend.set_workers(w);
        group.bench_with_input(
            BenchmarkId::new(format!("setpoint/{w}t"), name),
            &g,
            |bch, &g| {
                bch.iter(|| {
                    backend
                        .gemm(g, &ops.a, &ops.b, &mut ops.c)
                        .expect("shapes were sized for this gemm");
                    black_box(&ops.c);
                })
            },
        );
    }
}

/// Square `n³` products at 1 and 2 workers, and the naive loop at the small sizes.
fn square(c: &mut Criterion) {
    let backend = CpuBackend::new(2).expect("a two-thread pool");
    for n in [64usize, 256, 512, 1024, 2048] {
        let mut group = c.benchmark_group(format!("gemm_f32/square/{n}"));
        if n >= 1024 {
            // One 2048³ product takes about 0.2 s on one core: ten flat samples are plenty.
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(if n >= 2048 { 4 } else { 2 }));
        } else {
            group
                .sample_size(20)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
        }
        let g = Gemm::new(n, n, n);
        bench_backend(&mut group, &backend, &format!("{n}x{n}x{n}"), g);
        if n <= 256 {
            let (a, b) = (random(n * n, 1), random(n * n, 2));
            let mut out = vec![0.0f32; n * n];
            group.bench_function(
                BenchmarkId::new("naive_ikj/1t", format!("{n}x{n}x{n}")),
                |bch| {
                    bch.iter(|| {
                        naive_gemm(n, n, n, black_box(&a), black_box(&b), &mut out);
                        black_box(&out);
                    })
                },
            );
        }
        group.finish();
    }
}

/// The products one training step of the product's MLPs runs: the forward `x·W` for each
/// layer, and for the large model the two backward products (`xᵀ·δ` for the weight gradient,
/// `δ·Wᵀ` for the input gradient), which take the transposed paths through the backend.
fn mlp(c: &mut Criterion) {
    let backend = CpuBackend::new(2).expect("a two-thread pool");
    // (name, batch, fan_in, fan_out)
    let layers = [
        ("b64_64to128", 64, 64, 128),
        ("b64_128to10", 64, 128, 10),
        ("b256_784to1024", 256, 784, 1024),
        ("b256_1024to1024", 256, 1024, 1024),
    ];
    let mut group = c.benchmark_group("gemm_f32/mlp");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, batch, fan_in, fan_out) in layers {
        bench_backend(
            &mut group,
            &backend,
            &format!("{name}/fwd"),
            Gemm::new(batch, fan_out, fan_in),
        );
        if batch >= 256 {
            bench_backend(
                &mut group,
                &backend,
                &format!("{name}/dw"),
                Gemm::new(fan_in, fan_out, batch).ta(),
            );
            bench_backend(
                &mut group,
                &backend,
                &format!("{name}/dx"),
                Gemm::new(batch, fan_in, fan_out).tb(),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, square, mlp);
criterion_main!(benches);
