//! The element-wise, softmax and reduction kernels of `kernels/` (contract: `kernels/ABI.md`)
//! run on the CPU through the host emulation in `kernels/emu/` and are compared with the CPU
//! backend: every kernel, on awkward shapes (sizes 1, primes, one past a block), at several
//! grid sizes, which must give the same results bit for bit (`sum_partial` excepted, within
//! double rounding). Every launch runs under several schedules of the emulation, which must
//! agree bit for bit. The GEMM kernels are in `kernels_gemm_emulated.rs`, the planted-bug
//! checks of the emulation itself in `kernels_planted.rs`.
//!
//! The harness is built with the system C++ compiler, at most once per test process and
//! reused while its sources are unchanged.

use crate::support::emu;

use half::bf16;
use setpoint::device::cpu::CpuBuf;
use setpoint::device::{Activation, AdamParams, Backend, CpuBackend, SgdParams};
use setpoint::util::rng::Rng;

use emu::{Harness, Launch, assert_close, assert_same, relative, to_bf16_bits, uniform};

// ---------------------------------------------------------------------------------------------
// Elementwise kernels: bit for bit against the CPU backend at every grid size.

/// Lengths around the 256-thread block: 1, one short, one over, several blocks.
const LENS: &[usize] = &[1, 255, 257, 1000];
const GRIDS: &[u32] = &[1, 3, 7];

#[test]
fn fill_f32_matches_cpu() {
    let cpu = CpuBackend::single();
    for &len in LENS {
        let mut want = CpuBuf(vec![f32::NAN; len]);
        cpu.fill(&mut want, len, -2.5).unwrap();
        let launch = Launch::new("fill_f32")
            .f32s(&vec![f32::NAN; len])
            .int(len)
            .f32(-2.5);
        for &grid in GRIDS {
            let got = launch.run(grid).f32(0);
            assert_same(&format!("fill_f32 len={len} grid={grid}"), &got, &want.0, 1);
        }
    }
}

#[test]
fn bias_act_matches_cpu() {
    let mut rng = Rng::new(5);
    let cpu = CpuBackend::single();
    for (rows, cols) in [(1, 1), (3, 1), (1, 300), (17, 63), (65, 130)] {
        for (act, relu) in [(Activation::Identity, false), (Activation::Relu, true)] {
            let x = uniform(&mut rng, rows * cols, -1.0, 1.0);
            let bias = uniform(&mut rng, cols, -0.5, 0.5);
            let mut want = CpuBuf(x.clone());
            cpu.bias_act(&mut want, &CpuBuf(bias.clone()), rows, cols, act)
                .unwrap();
            let launch = Launch::new("bias_act")
                .f32s(&x)
                .f32s(&bias)
                .int(rows)
                .int(cols)
                .flag(relu);
            for &grid in GRIDS {
                let got = launch.run(grid).f32(0);
                let what = format!("bias_act {rows}x{cols} {act:?} grid={grid}");
                assert_same(&what, &got, &want.0, cols);
            }
        }
    }
}

#[test]
fn relu_grad_matches_cpu() {
    let mut rng = Rng::new(6);
    let cpu = CpuBackend::single();
    for &len in LENS {
        let grad = uniform(&mut rng, len, -1.0, 1.0);
        // A third zeros (including -0), a third negative, a third positive.
        let act: Vec<f32> = (0..len)
            .map(|i| match i % 3 {
                0 if i % 2 == 0 => 0.0,
                0 => -0.0,
                1 => -rng.uniform(0.0, 1.0) as f32,
                _ => rng.uniform(1e-6, 1.0) as f32,
            })
            .collect();
        let mut want = CpuBuf(grad.clone());
        cpu.relu_grad(&mut want, &CpuBuf(act.clone()), len).unwrap();
        let launch = Launch::new("relu_grad").f32s(&grad).f32s(&act).int(len);
        for &grid in GRIDS {
            let got = launch.run(grid).f32(0);
            assert_same(
                &format!("relu_grad len={len} grid={grid}"),
                &got,
                &want.0,
                1,
            );
        }
    }
}

#[test]
fn col_sum_matches_cpu_in_row_order() {
    let mut rng = Rng::new(7);
    let cpu = CpuBackend::single();
    for (rows, cols) in [(1, 1), (130, 1), (1, 300), (65, 17), (40, 300)] {
        let x = uniform(&mut rng, rows * cols, -1.0, 1.0);
        let mut want = CpuBuf(vec![0.0; cols]);
        cpu.col_sum(&CpuBuf(x.clone()), rows, cols, &mut want)
            .unwrap();
        // NaN in `out`: the kernel writes the sums, it does not add to them.
        let launch = Launch::new("col_sum")
            .f32s(&x)
            .int(rows)
            .int(cols)
            .f32s(&vec![f32::NAN; cols]);
        for &grid in GRIDS {
            let got = launch.run(grid).f32(1);
            let what = format!("col_sum {rows}x{cols} grid={grid}");
            assert_same(&what, &got, &want.0, 1);
        }
    }
}

#[test]
fn sgd_step_matches_cpu() {
    let mut rng = Rng::new(8);
    let cpu = CpuBackend::single();
    let hp = SgdParams {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    for &len in LENS {
        let p = uniform(&mut rng, len, -1.0, 1.0);
        let g = uniform(&mut rng, len, -1.0, 1.0);
        let v = uniform(&mut rng, len, -0.1, 0.1);
        let (mut want_p, mut want_v) = (CpuBuf(p.clone()), CpuBuf(v.clone()));
        cpu.sgd_step(&mut want_p, &CpuBuf(g.clone()), &mut want_v, len, hp)
            .unwrap();
        let launch = Launch::new("sgd_step")
            .f32s(&p)
            .f32s(&g)
            .f32s(&v)
            .int(len)
            .f32(hp.lr)
            .f32(hp.momentum)
            .f32(hp.weight_decay);
        for &grid in GRIDS {
            let out = launch.run(grid);
            let what = format!("sgd_step len={len} grid={grid}");
            assert_same(&format!("{what} param"), &out.f32(0), &want_p.0, 1);
            assert_same(&format!("{what} velocity"), &out.f32(2), &want_v.0, 1);
        }
    }
}

#[test]
fn adam_step_matches_cpu() {
    let mut rng = Rng::new(9);
    let cpu = CpuBackend::single();
    let hp = AdamParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        t: 3,
    };
    // The bias corrections as the host computes them for the kernel (kernels/ABI.md).
    let t = hp.t as i32;
    let step_size = (f64::from(hp.lr) / (1.0 - f64::from(hp.beta1).powi(t))) as f32;
    let inv_sqrt_bc2 = (1.0 / (1.0 - f64::from(hp.beta2).powi(t)).sqrt()) as f32;
    for &len in LENS {
        let p = uniform(&mut rng, len, -1.0, 1.0);
        let g = uniform(&mut rng, len, -1.0, 1.0);
        let m = uniform(&mut rng, len, -0.1, 0.1);
        let v = uniform(&mut rng, len, 0.0, 0.01);
        let (mut want_p, mut want_m, mut want_v) =
            (CpuBuf(p.clone()), CpuBuf(m.clone()), CpuBuf(v.clone()));
        cpu.adam_step(
            &mut want_p,
            &CpuBuf(g.clone()),
            &mut want_m,
            &mut want_v,
            len,
            hp,
        )
        .unwrap();
        let launch = Launch::new("adam_step")
            .f32s(&p)
            .f32s(&g)
            .f32s(&m)
            .f32s(&v)
            .int(len)
            .f32(hp.beta1)
            .f32(hp.beta2)
            .f32(hp.eps)
            .f32(hp.weight_decay)
            .f32(step_size)
            .f32(inv_sqrt_bc2);
        for &grid in GRIDS {
            let out = launch.run(grid);
            let what = format!("adam_step len={len} grid={grid}");
            assert_same(&format!("{what} param"), &out.f32(0), &want_p.0, 1);
            assert_same(&format!("{what} m"), &out.f32(2), &want_m.0, 1);
            assert_same(&format!("{what} v"), &out.f32(3), &want_v.0, 1);
        }
    }
}

/// f32 values whose bf16 rounding is delicate: ties both ways, the largest finite values,
/// infinities, NaNs whose truncation would read as infinity, subnormals, signed zeros.
fn bf16_edge_values() -> Vec<f32> {
    [
        0x0000_0000u32,
        0x8000_0000,
        0x3f80_8000, // tie, rounds down to even
        0x3f81_8000, // tie, rounds up to even
        0x3f80_8001,
        0x3f80_7fff,
        0x7f7f_ffff, // rounds to infinity
        0x7f7f_7fff,
        0xff7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x7f80_0001, // NaN with only a low payload bit
        0xff80_0001,
        0x7fc0_0000,
        0x7fff_ffff,
        0x0000_0001,
        0x0000_8000,
        0x0001_8000,
        0x807f_ffff,
    ]
    .into_iter()
    .map(f32::from_bits)
    .collect()
}

#[test]
fn f32_to_bf16_rounds_like_the_half_crate() {
    let mut rng = Rng::new(10);
    let mut x = bf16_edge_values();
    // Random bit patterns (NaNs among them) and random ordinary values.
    x.extend((0..1500).map(|_| f32::from_bits(rng.next_u64() as u32)));
    x.extend(uniform(&mut rng, 1500, -3.0, 3.0));
    let want = to_bf16_bits(&x);
    let launch = Launch::new("f32_to_bf16")
        .f32s(&x)
        .u16s(&vec![0; x.len()])
        .int(x.len());
    for grid in [1, 3] {
        let got = launch.run(grid).u16(1);
        if let Some(i) = (0..x.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "f32_to_bf16 grid={grid}: input {:#010x} ({:e}) gives {:#06x}, the half crate \
                 {:#06x}",
                x[i].to_bits(),
                x[i],
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn bf16_to_f32_matches_the_half_crate_on_every_bit_pattern() {
    let x: Vec<u16> = (0..=u16::MAX).collect();
    let want: Vec<f32> = x.iter().map(|&h| bf16::from_bits(h).to_f32()).collect();
    let launch = Launch::new("bf16_to_f32")
        .u16s(&x)
        .f32s(&vec![0.0; x.len()])
        .int(x.len());
    for grid in [1, 5] {
        let got = launch.run(grid).f32(1);
        assert_same(&format!("bf16_to_f32 grid={grid}"), &got, &want, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax and sums.

/// (rows, cols): one column, warp-sized rows and one either side, rows wider than a warp
/// many times over, more rows than the 8 warps of a block.
const SOFTMAX_SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (1, 2),
    (5, 31),
    (9, 32),
    (17, 33),
    (20, 100),
    (3, 300),
    (40, 10),
];

/// Softmax outputs are computed in double on both sides and rounded to f32 once, so they
/// agree to an ulp or two: a float-precision evaluation is several ulps off.
const SOFTMAX_REL: f64 = 2.5e-7;

#[test]
fn softmax_xent_matches_cpu_including_ties() {
    let mut rng = Rng::new(11);
    let cpu = CpuBackend::single();
    for &(rows, cols) in SOFTMAX_SHAPES {
        let mut logits = uniform(&mut rng, rows * cols, -4.0, 4.0);
        let mut labels: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
        // Every third row has its maximum twice, alternately 32 columns apart (both copies
        // in one lane's share of the row) and anywhere; the label sits on the first copy or
        // the second, and only the first counts as correct.
        for r in (0..rows).step_by(3).filter(|_| cols >= 2) {
            let (first, second) = if r % 2 == 0 && cols > 32 {
                let first = rng.below(cols as u64 - 32) as usize;
                (first, first + 32)
            } else {
                let first = rng.below(cols as u64 - 1) as usize;
                (
                    first,
                    first + 1 + rng.below((cols - first - 1) as u64) as usize,
                )
            };
            logits[r * cols + first] = 5.0;
            logits[r * cols + second] = 5.0;
            labels[r] = if r % 4 < 2 { first } else { second } as u32;
        }
        let loss0 = uniform(&mut rng, rows, 0.0, 3.0);
        let correct0: Vec<f32> = (0..rows).map(|_| rng.below(5) as f32).collect();
        let grad_scale = 1.0 / rows as f32;

        let mut want_grad = CpuBuf(vec![0.0; rows * cols]);
        let (mut want_loss, mut want_correct) = (CpuBuf(loss0.clone()), CpuBuf(correct0.clone()));
        cpu.softmax_xent(
            &CpuBuf(logits.clone()),
            &labels,
            rows,
            cols,
            grad_scale,
            &mut want_grad,
            &mut want_loss,
            &mut want_correct,
        )
        .unwrap();

        let launch = Launch::new("softmax_xent")
            .f32s(&logits)
            .u32s(&labels)
            .int(rows)
            .int(cols)
            .f32(grad_scale)
            .f32s(&vec![f32::NAN; rows * cols])
            .f32s(&loss0)
            .f32s(&correct0);
        let mut first = None;
        for grid in [1, 2, 5] {
            let out = launch.run(grid);
            let what = format!("softmax_xent {rows}x{cols} grid={grid}");
            let (grad, loss, correct) = (out.f32(2), out.f32(3), out.f32(4));
            assert_close(
                &format!("{what} grad"),
                &grad,
                &want_grad.0,
                cols,
                relative(&want_grad.0, SOFTMAX_REL),
            );
            assert_close(
                &format!("{what} loss_acc"),
                &loss,
                &want_loss.0,
                1,
                relative(&want_loss.0, SOFTMAX_REL),
            );
            assert_same(&format!("{what} correct_acc"), &correct, &want_correct.0, 1);
            match &first {
                None => first = Some((grad, loss)),
                Some((g1, l1)) => {
                    assert_same(&format!("{what} grad vs grid=1"), &grad, g1, cols);
                    assert_same(&format!("{what} loss_acc vs grid=1"), &loss, l1, 1);
                }
            }
        }
    }
}

#[test]
fn softmax_rows_matches_cpu() {
    let mut rng = Rng::new(12);
    let cpu = CpuBackend::single();
    for &(rows, cols) in SOFTMAX_SHAPES {
        let mut x = uniform(&mut rng, rows * cols, -4.0, 4.0);
        // The last row is large enough that exp() without the max shift would overflow.
        let last = (rows - 1) * cols;
        x[last..].iter_mut().for_each(|v| *v *= 40.0);
        let mut want = CpuBuf(x.clone());
        cpu.softmax(&mut want, rows, cols).unwrap();
        let launch = Launch::new("softmax_rows").f32s(&x).int(rows).int(cols);
        let mut first: Option<Vec<f32>> = None;
        for grid in [1, 2, 5] {
            let got = launch.run(grid).f32(0);
            let what = format!("softmax_rows {rows}x{cols} grid={grid}");
            assert_close(&what, &got, &want.0, cols, relative(&want.0, SOFTMAX_REL));
            match &first {
                None => first = Some(got),
                Some(f) => assert_same(&format!("{what} vs grid=1"), &got, f, cols),
            }
        }
    }
}

#[test]
fn sum_partial_adds_up_to_the_cpu_sum() {
    let mut rng = Rng::new(13);
    let cpu = CpuBackend::single();
    for len in [1, 255, 256, 257, 1000, 5000] {
        let x = uniform(&mut rng, len, -1000.0, 1000.0);
        let want = cpu.sum(&CpuBuf(x.clone()), len).unwrap();
        let scale: f64 = x.iter().map(|&v| f64::from(v).abs()).sum();
        for grid in GRIDS {
            // NaN partials: every block must write its own, those with no elements too.
            let partial = vec![f64::NAN; *grid as usize];
            let got = Launch::new("sum_partial")
                .f32s(&x)
                .int(len)
                .f64s(&partial)
                .run(*grid)
                .f64(1);
            let total: f64 = got.iter().sum();
            assert!(
                (total - want).abs() <= 1e-12 * scale,
                "sum_partial len={len} grid={grid}: partials {got:?} add up to {total}, the CPU \
                 sum is {want} (error {:e}, allowed {:e})",
                (total - want).abs(),
                1e-12 * scale
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The harness itself.

/// Writes past a buffer are caught by the guards around it, and arguments that do not match
/// the kernel's signature are refused, so neither can pass unnoticed in the tests above.
#[test]
fn harness_reports_stray_writes_and_mismatched_arguments() {
    let err = Launch::new("fill_f32")
        .f32s(&[0.0; 10])
        .int(12)
        .f32(1.0)
        .run_failing(1);
    assert!(
        err.contains("wrote outside argument 1") && err.contains("element 10"),
        "unexpected harness message: {err}"
    );
    let err = Launch::new("relu_grad")
        .f32s(&[0.0; 4])
        .u16s(&[0; 4])
        .int(4)
        .run_failing(1);
    assert!(
        err.contains("argument 2: the kernel takes f32[], got u16[]"),
        "unexpected harness message: {err}"
    );
    let err = Launch::new("fill_f32")
        .f32s(&[0.0; 4])
        .int(4)
        .run_failing(1);
    assert!(
        err.contains("too few arguments"),
        "unexpected harness message: {err}"
    );
}

/// A buffer can lie a whole number of elements past the 256-byte alignment, as a sub-buffer
/// does, and gives the same results there; an offset that is not a whole number of elements,
/// or an empty schedule list, is refused with a message saying what is accepted.
#[test]
fn harness_places_buffers_off_alignment_and_refuses_bad_placements() {
    let mut rng = Rng::new(14);
    let len = 300;
    let (p, g, v) = (
        uniform(&mut rng, len, -1.0, 1.0),
        uniform(&mut rng, len, -1.0, 1.0),
        uniform(&mut rng, len, -0.1, 0.1),
    );
    let run = |offsets: [usize; 3]| {
        Launch::new("sgd_step")
            .f32s_at(&p, offsets[0])
            .f32s_at(&g, offsets[1])
            .f32s_at(&v, offsets[2])
            .int(len)
            .f32(0.05)
            .f32(0.9)
            .f32(1e-4)
            .run(3)
    };
    let aligned = run([0; 3]);
    let shifted = run([1, 3, 63]);
    for i in [0, 2] {
        let what = format!("sgd_step buffer {i} off alignment vs aligned");
        assert_same(&what, &shifted.f32(i), &aligned.f32(i), 1);
    }

    let err = Launch::new("fill_f32")
        .buffer("f32[]", 2, &[0; 4])
        .int(4)
        .f32(1.0)
        .run_failing(1);
    assert!(
        err.contains("bad offset in `f32[]@2`") && err.contains("multiple of the element size (4)"),
        "unexpected harness message: {err}"
    );
    let err = Launch::new("fill_f32")
        .f32s(&[0.0; 4])
        .int(4)
        .f32(1.0)
        .try_run(Harness::main(), 1, &[])
        .err()
        .expect("an empty schedule list is refused");
    assert!(
        err.contains("bad schedule list ``"),
        "unexpected harness message: {err}"
    );
}

/// The emulation fills shared memory with NaN at each block start, but it reaches only
/// `__shared__` variables declared in an `extern "C"` kernel itself (the compiler puts those
/// of a template or inline function elsewhere, see kernels/ABI.md). Every declaration in
/// `kernels/` must be inside a kernel, so that none escapes.
#[test]
fn shared_memory_is_declared_in_kernels_where_the_emulation_poisons_it() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut declarations = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cu" && e != "cuh") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !code.contains("__shared__") {
                continue;
            }
            declarations += 1;
            // The definition this line is in: the last line before it that starts at column
            // 0 with code (function bodies are indented; their closing brace is not code).
            let owner = lines[..i]
                .iter()
                .rev()
                .find(|l| l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
                .unwrap_or(&"");
            assert!(
                owner.starts_with("extern \"C\""),
                "{}:{}: `__shared__` outside an extern \"C\" kernel (in `{owner}`): declare it \
                 in the kernel and pass it down, or the emulation cannot poison it",
                path.display(),
                i + 1
            );
        }
    }
    assert!(
        declarations >= 3,
        "found only {declarations} __shared__ declarations"
    );
}
