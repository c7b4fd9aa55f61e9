//! Every CPU backend operation against a naive f64 reference, on random shapes including
//! sizes of 1 and odd sizes, at worker budgets 1 and 2.

use setpoint::device::{Activation, AdamParams, Backend, CpuBackend, DeviceError, Gemm, SgdParams};
use setpoint::util::rng::Rng;

fn rand_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()
}

fn backends() -> Vec<CpuBackend> {
    vec![CpuBackend::single(), CpuBackend::new(2).unwrap()]
}

/// Reference GEMM in f64 with the same storage conventions as the backend. Returns the
/// result and, per element, Σ|a·b| for an error bound.
fn gemm_ref(g: Gemm, a: &[f32], b: &[f32], c: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (m, n, k) = (g.m, g.n, g.k);
    let at = |i: usize, p: usize| {
        if g.trans_a {
            a[p * m + i]
        } else {
            a[i * k + p]
        }
    } as f64;
    let bt = |p: usize, j: usize| {
        if g.trans_b {
            b[j * k + p]
        } else {
            b[p * n + j]
        }
    } as f64;
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            let mut s_abs = 0.0;
            for p in 0..k {
                s += at(i, p) * bt(p, j);
                s_abs += (at(i, p) * bt(p, j)).abs();
            }
            let old = if g.beta != 0.0 {
                g.beta as f64 * c[i * n + j] as f64
            } else {
                0.0
            };
            out[i * n + j] = g.alpha as f64 * s + old;
            mag[i * n + j] = (g.alpha as f64).abs() * s_abs + old.abs();
        }
    }
    (out, mag)
}

#[test]
fn gemm_matches_reference_on_random_shapes_with_transposes() {
    let mut rng = Rng::new(11);
    let mut shapes = vec![
        (1, 1, 1),
        (1, 7, 3),
        (5, 1, 9),
        (3, 5, 1),
        (17, 13, 11),
        (64, 10, 128),
        (33, 65, 31),
        (128, 96, 200),
    ];
    for _ in 0..12 {
        shapes.push((
            1 + rng.below(70) as usize,
            1 + rng.below(70) as usize,
            1 + rng.below(70) as usize,
        ));
    }
    for be in backends() {
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] {
                    let g = Gemm {
                        trans_a: ta,
                        trans_b: tb,
                        m,
                        n,
                        k,
                        alpha,
                        beta,
                    };
                    let a = rand_vec(&mut rng, m * k);
                    let b = rand_vec(&mut rng, k * n);
                    let c0 = rand_vec(&mut rng, m * n);
                    let (want, mag) = gemm_ref(g, &a, &b, &c0);
                    let (ab, bb) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
                    let mut cb = be.upload(&c0).unwrap();
                    be.gemm(g, &ab, &bb, &mut cb).unwrap();
                    let mut got = vec![0.0; m * n];
                    be.read(&cb, &mut got).unwrap();
                    for i in 0..m * n {
                        let tol = 4.0 * f32::EPSILON as f64 * (k as f64 + 2.0) * mag[i] + 1e-7;
                        assert!(
                            (got[i] as f64 - want[i]).abs() <= tol,
                            "gemm {m}x{n}x{k} ta={ta} tb={tb} alpha={alpha} beta={beta} \
                             workers={}: element {i} got {} want {}",
                            be.workers(),
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_with_beta_zero_ignores_nan_in_c_and_handles_k_zero() {
    let be = CpuBackend::single();
    let a = be.upload(&[1.0, 2.0]).unwrap();
    let b = be.upload(&[3.0, 4.0]).unwrap();
    let mut c = be.upload(&[f32::NAN]).unwrap();
    be.gemm(Gemm::new(1, 1, 2), &a, &b, &mut c).unwrap();
    let mut out = [0.0];
    be.read(&c, &mut out).unwrap();
    assert_eq!(out[0], 11.0);

    let mut c = be.upload(&[5.0, 6.0]).unwrap();
    be.gemm(Gemm::new(1, 2, 0).scaled(1.0, 0.5), &a, &b, &mut c)
        .unwrap();
    let mut out = [0.0; 2];
    be.read(&c, &mut out).unwrap();
    assert_eq!(out, [2.5, 3.0]);
}

#[test]
fn short_buffers_are_refused_with_the_shape() {
    let be = CpuBackend::single();
    let a = be.alloc(5).unwrap();
    let b = be.alloc(6).unwrap();
    let mut c = be.alloc(6).unwrap();
    let err = be.gemm(Gemm::new(2, 3, 3), &a, &b, &mut c).unwrap_err();
    assert!(matches!(err, DeviceError::Shape { .. }));
    assert_eq!(
        err.to_string(),
        "gemm: buffer `a` holds 5 elements, the shape needs 6"
    );
}

#[test]
fn bias_act_and_relu_grad_match_reference() {
    let mut rng = Rng::new(5);
    for be in backends() {
        // The large shape takes the parallel path.
        for &(rows, cols) in &[(1, 1), (3, 7), (1, 33), (17, 1), (300, 129)] {
            for act in [Activation::Identity, Activation::Relu] {
                let x = rand_vec(&mut rng, rows * cols);
                let bias = rand_vec(&mut rng, cols);
                let mut xb = be.upload(&x).unwrap();
                be.bias_act(&mut xb, &be.upload(&bias).unwrap(), rows, cols, act)
                    .unwrap();
                let mut got = vec![0.0; rows * cols];
                be.read(&xb, &mut got).unwrap();
                for r in 0..rows {
                    for c in 0..cols {
                        let v = x[r * cols + c] + bias[c];
                        let want = match act {
                            Activation::Identity => v,
                            Activation::Relu => v.max(0.0),
                        };
                        assert_eq!(got[r * cols + c], want);
                    }
                }
                // ReLU gradient through the activations just computed.
                let g = rand_vec(&mut rng, rows * cols);
                let mut gb = be.upload(&g).unwrap();
                be.relu_grad(&mut gb, &xb, rows * cols).unwrap();
                let mut gg = vec![0.0; rows * cols];
                be.read(&gb, &mut gg).unwrap();
                for i in 0..rows * cols {
                    let want = if got[i] > 0.0 { g[i] } else { 0.0 };
                    assert_eq!(gg[i], want);
                }
            }
        }
    }
}

#[test]
fn col_sum_matches_reference() {
    let mut rng = Rng::new(6);
    let be = CpuBackend::single();
    for &(rows, cols) in &[(1, 1), (1, 9), (9, 1), (31, 17), (256, 10)] {
        let x = rand_vec(&mut rng, rows * cols);
        let mut out = be.alloc(cols).unwrap();
        be.fill(&mut out, cols, 123.0).unwrap();
        be.col_sum(&be.upload(&x).unwrap(), rows, cols, &mut out)
            .unwrap();
        let mut got = vec![0.0; cols];
        be.read(&out, &mut got).unwrap();
        for c in 0..cols {
            let want: f64 = (0..rows).map(|r| x[r * cols + c] as f64).sum();
            assert!(
                (got[c] as f64 - want).abs() <= 1e-5 * rows as f64,
                "col {c}: {} vs {want}",
                got[c]
            );
        }
    }
}

#[test]
fn softmax_xent_loss_gradient_and_correct_count_match_reference() {
    let mut rng = Rng::new(8);
    let be = CpuBackend::single();
    for &(rows, cols) in &[(1, 2), (1, 10), (7, 3), (64, 10), (5, 33)] {
        let logits: Vec<f32> = (0..rows * cols)
            .map(|_| rng.uniform(-8.0, 8.0) as f32)
            .collect();
        let labels: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
        let scale = 1.0 / rows as f32;
        let mut lb = be.alloc_labels(rows).unwrap();
        be.write_labels(&mut lb, &labels).unwrap();
        let mut grad = be.alloc(rows * cols).unwrap();
        let mut loss = be.upload(&vec![1.0; rows]).unwrap(); // accumulates onto 1.0
        let mut correct = be.alloc(rows).unwrap();
        be.softmax_xent(
            &be.upload(&logits).unwrap(),
            &lb,
            rows,
            cols,
            scale,
            &mut grad,
            &mut loss,
            &mut correct,
        )
        .unwrap();
        let mut g = vec![0.0; rows * cols];
        be.read(&grad, &mut g).unwrap();
        let mut l = vec![0.0; rows];
        be.read(&loss, &mut l).unwrap();
        let mut c = vec![0.0; rows];
        be.read(&correct, &mut c).unwrap();
        for r in 0..rows {
            let z: Vec<f64> = logits[r * cols..(r + 1) * cols]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = z.iter().map(|v| (v - max).exp()).sum();
            let y = labels[r] as usize;
            let want_loss = -((z[y] - max).exp() / s).ln();
            assert!((l[r] as f64 - 1.0 - want_loss).abs() < 1e-5, "loss row {r}");
            for j in 0..cols {
                let p = (z[j] - max).exp() / s;
                let want = scale as f64 * (p - if j == y { 1.0 } else { 0.0 });
                assert!((g[r * cols + j] as f64 - want).abs() < 1e-6, "grad {r},{j}");
            }
            let first_max = (0..cols).find(|&j| z[j] == max).unwrap();
            assert_eq!(c[r], if first_max == y { 1.0 } else { 0.0 });
        }
        assert!(
            (be.sum(&correct, rows).unwrap() - c.iter().map(|&v| v as f64).sum::<f64>()).abs()
                < 1e-9
        );
    }
}

#[test]
fn softmax_xent_refuses_a_label_out_of_range() {
    let be = CpuBackend::single();
    let mut lb = be.alloc_labels(2).unwrap();
    be.write_labels(&mut lb, &[1, 3]).unwrap();
    let logits = be.alloc(6).unwrap();
    let (mut g, mut l, mut c) = (
        be.alloc(6).unwrap(),
        be.alloc(2).unwrap(),
        be.alloc(2).unwrap(),
    );
    let err = be
        .softmax_xent(&logits, &lb, 2, 3, 1.0, &mut g, &mut l, &mut c)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_xent: label 3 in row 1 is out of range for 3 classes"
    );
}

#[test]
fn softmax_rows_sum_to_one_and_survive_large_logits() {
    let be = CpuBackend::single();
    let x = vec![1000.0, 1001.0, 999.0, -5.0, 0.0, 5.0];
    let mut b = be.upload(&x).unwrap();
    be.softmax(&mut b, 2, 3).unwrap();
    let mut out = vec![0.0; 6];
    be.read(&b, &mut out).unwrap();
    for r in 0..2 {
        let s: f32 = out[r * 3..r * 3 + 3].iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(out[r * 3..r * 3 + 3].iter().all(|v| v.is_finite()));
    }
    let e: f64 = (1.0f64).exp();
    let want = e / (1.0 + e + (-1.0f64).exp());
    assert!((out[1] as f64 - want).abs() < 1e-6);
}

#[test]
fn sum_matches_reference() {
    let mut rng = Rng::new(12);
    let be = CpuBackend::single();
    let x = rand_vec(&mut rng, 1001);
    let b = be.upload(&x).unwrap();
    let want: f64 = x[..1000].iter().map(|&v| v as f64).sum();
    assert_eq!(be.sum(&b, 1000).unwrap(), want);
    assert_eq!(be.sum(&b, 0).unwrap(), 0.0);
}

#[test]
fn sgd_and_adam_match_reference_over_several_steps() {
    let mut rng = Rng::new(13);
    for be in backends() {
        // 70_001 elements takes the parallel path with an odd tail.
        for &n in &[1usize, 7, 70_001] {
            let p0 = rand_vec(&mut rng, n);
            let grads: Vec<Vec<f32>> = (0..3).map(|_| rand_vec(&mut rng, n)).collect();

            // SGD with momentum and weight decay.
            let hp = SgdParams {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.01,
            };
            let mut p = be.upload(&p0).unwrap();
            let mut v = be.alloc(n).unwrap();
            let (mut rp, mut rv) = (
                p0.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                vec![0.0f64; n],
            );
            for g in &grads {
                be.sgd_step(&mut p, &be.upload(g).unwrap(), &mut v, n, hp)
                    .unwrap();
                for i in 0..n {
                    let gi = g[i] as f64 + 0.01 * rp[i];
                    rv[i] = 0.9 * rv[i] + gi;
                    rp[i] -= 0.1 * rv[i];
                }
            }
            let mut got = vec![0.0; n];
            be.read(&p, &mut got).unwrap();
            for i in 0..n {
                assert!((got[i] as f64 - rp[i]).abs() < 1e-5, "sgd {i}");
            }

            // Adam with bias correction.
            let mut p = be.upload(&p0).unwrap();
            let (mut m, mut v) = (be.alloc(n).unwrap(), be.alloc(n).unwrap());
            let mut rp: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
            let (mut rm, mut rv) = (vec![0.0f64; n], vec![0.0f64; n]);
            for (t, g) in grads.iter().enumerate() {
                let t = t as u64 + 1;
                let hp = AdamParams {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.0,
                    t,
                };
                be.adam_step(&mut p, &be.upload(g).unwrap(), &mut m, &mut v, n, hp)
                    .unwrap();
                for i in 0..n {
                    let gi = g[i] as f64;
                    rm[i] = 0.9 * rm[i] + 0.1 * gi;
                    rv[i] = 0.999 * rv[i] + 0.001 * gi * gi;
                    let mh = rm[i] / (1.0 - 0.9f64.powi(t as i32));
                    let vh = rv[i] / (1.0 - 0.999f64.powi(t as i32));
                    rp[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
                }
            }
            be.read(&p, &mut got).unwrap();
            for i in 0..n {
                assert!(
                    (got[i] as f64 - rp[i]).abs() < 1e-5,
                    "adam {i}: {} vs {}",
                    got[i],
                    rp[i]
                );
            }
        }
    }
}

#[test]
fn worker_budget_is_clamped_and_results_agree_across_budgets() {
    let be = CpuBackend::new(2).unwrap();
    assert_eq!(be.max_workers(), 2);
    be.set_workers(0);
    assert_eq!(be.workers(), 1);
    be.set_workers(99);
    assert_eq!(be.workers(), 2);

    let mut rng = Rng::new(21);
    let (m, n, k) = (300, 200, 250);
    let a = rand_vec(&mut rng, m * k);
    let b = rand_vec(&mut rng, k * n);
    let run = |w: usize| {
        be.set_workers(w);
        let mut c = be.alloc(m * n).unwrap();
        be.gemm(
            Gemm::new(m, n, k),
            &be.upload(&a).unwrap(),
            &be.upload(&b).unwrap(),
            &mut c,
        )
        .unwrap();
        let mut out = vec![0.0; m * n];
        be.read(&c, &mut out).unwrap();
        out
    };
    let one = run(1);
    let two = run(2);
    let two_again = run(2);
    assert_eq!(two, two_again, "same budget must be bit-identical");
    for i in 0..m * n {
        assert!((one[i] - two[i]).abs() <= 1e-4, "element {i}");
    }
}
