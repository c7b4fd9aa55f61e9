//! The GEMM kernels under emulation: their launches (kernels/ABI.md), inputs, the CPU
//! backend's reference for a tile range and a k range, and the tolerance between the two.
//! Shared by the GEMM tests and the planted-bug tests.
#![allow(dead_code)]

use setpoint::device::cpu::CpuBuf;
use setpoint::device::{Activation, Backend, CpuBackend, Gemm};
use setpoint::util::rng::Rng;

use setpoint::device::cuda::tma::gemm_tensor_maps;

use super::emu::{
    Harness, Launch, Outputs, SCHEDULES, close, round_to_bf16, same, to_bf16_bits, uniform,
};

/// Output tile edge of the 64 x 64 GEMM kernels (ABI).
pub const TILE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    F32,
    Bf16Simt,
    Bf16TensorCores,
    /// `gemm_bf16_small_m`: 16 x 64 tiles, split-K across the warps of a CTA.
    Bf16SmallM,
    /// `gemm_bf16_128`: 128 x 128 tiles, 8 warps.
    Bf16Large,
    /// `gemm_bf16_wgmma`: 128 x 128 tiles, wgmma fed by TMA (sm_90a). Not in [`Self::ALL`]:
    /// it takes only operands the TMA can address (tests/kernels_wgmma_emulated.rs).
    Bf16Wgmma,
}

impl GemmKernel {
    pub const ALL: [GemmKernel; 5] = [
        GemmKernel::F32,
        GemmKernel::Bf16Simt,
        GemmKernel::Bf16TensorCores,
        GemmKernel::Bf16SmallM,
        GemmKernel::Bf16Large,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::F32 => "gemm_f32",
            GemmKernel::Bf16Simt => "gemm_bf16_simt",
            GemmKernel::Bf16TensorCores => "gemm_bf16",
            GemmKernel::Bf16SmallM => "gemm_bf16_small_m",
            GemmKernel::Bf16Large => "gemm_bf16_128",
            GemmKernel::Bf16Wgmma => "gemm_bf16_wgmma",
        }
    }

    /// Output tile (rows, columns) (ABI).
    pub fn tile(self) -> (usize, usize) {
        match self {
            GemmKernel::Bf16SmallM => (16, 64),
            GemmKernel::Bf16Large | GemmKernel::Bf16Wgmma => (2 * TILE, 2 * TILE),
            _ => (TILE, TILE),
        }
    }

    /// Output tiles of `g`, numbered row-major over C.
    pub fn tiles(self, g: Gemm) -> usize {
        let (rows, cols) = self.tile();
        g.m.div_ceil(rows) * g.n.div_ceil(cols)
    }

    /// The tile holding element `i` of C (n columns).
    pub fn tile_of(self, g: Gemm, i: usize) -> usize {
        let (rows, cols) = self.tile();
        (i / g.n / rows) * g.n.div_ceil(cols) + (i % g.n) / cols
    }
}

/// What one launch computes and where its buffers lie: tiles `[tiles.0, tiles.1)`, the sum
/// over k in `[ks.0, min(ks.1, k))`, and `a`, `b`, `c` placed `offsets` elements past the
/// 256-byte alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub tiles: (usize, usize),
    pub ks: (usize, usize),
    pub offsets: [usize; 3],
}

impl Part {
    /// The whole product with aligned buffers: the tile range covers every kernel's tiles
    /// (the kernels clip it to their own count).
    pub fn whole(g: Gemm) -> Part {
        let tiles = GemmKernel::ALL.map(|k| k.tiles(g)).into_iter().max();
        Part {
            tiles: (0, tiles.unwrap_or(0)),
            ks: (0, g.k),
            offsets: [0; 3],
        }
    }

    pub fn k_range(self, begin: usize, end: usize) -> Part {
        Part {
            ks: (begin, end),
            ..self
        }
    }

    pub fn tile_range(self, begin: usize, end: usize) -> Part {
        Part {
            tiles: (begin, end),
            ..self
        }
    }

    pub fn offsets(self, offsets: [usize; 3]) -> Part {
        Part { offsets, ..self }
    }
}

pub fn describe(kernel: GemmKernel, g: Gemm, part: Part) -> String {
    let mut s = format!(
        "{} m={} n={} k={} trans_a={} trans_b={} alpha={} beta={}",
        kernel.name(),
        g.m,
        g.n,
        g.k,
        g.trans_a,
        g.trans_b,
        g.alpha,
        g.beta
    );
    if part.ks != (0, g.k) {
        s += &format!(" k_range=[{}, {})", part.ks.0, part.ks.1);
    }
    if part.offsets != [0; 3] {
        s += &format!(" offsets(a, b, c)={:?}", part.offsets);
    }
    s
}

/// Shapes (m, n, k): sizes of 1, one either side of the 64-wide tile, several tiles, k not
/// a multiple of the k-slice, k = 0; the leading dimensions of the 64 and 68/132/36 cases
/// allow vector loads, the others do not.
pub const GEMM_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 17, 63),
    (17, 1, 65),
    (63, 65, 17),
    (65, 63, 130),
    (130, 17, 1),
    (64, 64, 64),
    (68, 132, 36),
    (130, 130, 130),
    (5, 7, 0),
];

/// (alpha, beta), rotated over the cases; beta = 0 runs with NaN in C.
const GEMM_SCALES: &[(f32, f32)] = &[(1.0, 0.0), (1.5, -0.75), (0.5, 0.0), (-1.0, 1.0)];

/// Every shape with all four transpositions.
pub fn gemm_cases(shapes: &[(usize, usize, usize)]) -> Vec<Gemm> {
    let mut cases = Vec::new();
    for (s, &(m, n, k)) in shapes.iter().enumerate() {
        for t in 0..4 {
            let (alpha, beta) = GEMM_SCALES[(s + t) % GEMM_SCALES.len()];
            let mut g = Gemm::new(m, n, k).scaled(alpha, beta);
            g.trans_a = t & 1 != 0;
            g.trans_b = t & 2 != 0;
            cases.push(g);
        }
    }
    cases
}

/// op(A)[i][p] and op(B)[p][j] of row-major storage.
fn op_a(g: Gemm, a: &[f32], i: usize, p: usize) -> f32 {
    if g.trans_a {
        a[p * g.m + i]
    } else {
        a[i * g.k + p]
    }
}

fn op_b(g: Gemm, b: &[f32], p: usize, j: usize) -> f32 {
    if g.trans_b {
        b[j * g.k + p]
    } else {
        b[p * g.n + j]
    }
}

/// Per element of C, the error allowed between two f32 evaluations of the product in
/// different orders: a few units of f32 rounding per term of the sum, times the sum of the
/// magnitudes of its terms (|alpha| Σ|a·b| + |beta·c|).
pub fn gemm_tolerance(g: Gemm, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f64> {
    let (m, n, k) = (g.m, g.n, g.k);
    let mut tol = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let terms: f64 = (0..k)
                .map(|p| (f64::from(op_a(g, a, i, p)) * f64::from(op_b(g, b, p, j))).abs())
                .sum();
            let old = if g.beta != 0.0 {
                f64::from(g.beta * c[i * n + j]).abs()
            } else {
                0.0
            };
            let mag = f64::from(g.alpha).abs() * terms + old;
            tol[i * n + j] = 4e-7 * (k as f64 + 2.0) * mag + 1e-30;
        }
    }
    tol
}

/// The CPU backend's C for the k range `ks` of `g` (the whole product when it covers k), and
/// the tolerance around it.
pub fn reference(g: Gemm, a: &[f32], b: &[f32], c: &[f32], ks: (usize, usize)) -> Reference {
    let cpu = CpuBackend::single();
    let (lo, hi) = (ks.0.min(g.k), ks.1.min(g.k));
    let (g, a, b) = if (lo, hi) == (0, g.k) {
        (g, a.to_vec(), b.to_vec())
    } else {
        // The range as a product of its own: op(A)'s columns and op(B)'s rows [lo, hi).
        let kc = hi.saturating_sub(lo);
        let sub_a = (0..g.m * kc)
            .map(|x| op_a(g, a, x / kc, lo + x % kc))
            .collect();
        let sub_b = (0..kc * g.n)
            .map(|x| op_b(g, b, lo + x / g.n, x % g.n))
            .collect();
        let sub = Gemm::new(g.m, g.n, kc).scaled(g.alpha, g.beta);
        (sub, sub_a, sub_b)
    };
    let mut want = CpuBuf(c.to_vec());
    cpu.gemm(g, &CpuBuf(a.clone()), &CpuBuf(b.clone()), &mut want)
        .unwrap();
    Reference {
        tol: gemm_tolerance(g, &a, &b, c),
        c: want.0,
    }
}

pub struct Reference {
    pub c: Vec<f32>,
    pub tol: Vec<f64>,
}

/// A launch of a GEMM kernel over `part` with the plain store (no bias, no ReLU, no bf16
/// copy). `a` and `b` are bf16-exact for the bf16 kernels, which receive their bits.
pub fn gemm_launch(
    kernel: GemmKernel,
    g: Gemm,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    part: Part,
) -> Launch {
    gemm_launch_with(kernel, g, a, b, c, part, &Epi::default())
}

/// The epilogue of a GEMM launch (kernels/ABI.md): a bias by column (the buffer after C
/// among the outputs), ReLU, and a bf16 copy of C (the last buffer among the outputs).
#[derive(Debug, Clone, Default)]
pub struct Epi {
    pub bias: Option<Vec<f32>>,
    pub relu: bool,
    pub bf16: bool,
}

impl Epi {
    /// Where the bf16 copy of C is among the outputs.
    pub fn bf16_output(&self) -> usize {
        3 + usize::from(self.bias.is_some())
    }

    pub fn describe(&self) -> String {
        format!(
            " epilogue(bias={}, relu={}, bf16={})",
            self.bias.is_some(),
            self.relu,
            self.bf16
        )
    }
}

/// [`gemm_launch`] with the epilogue `epi`.
pub fn gemm_launch_with(
    kernel: GemmKernel,
    g: Gemm,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    part: Part,
    epi: &Epi,
) -> Launch {
    let launch = Launch::new(kernel.name());
    let [oa, ob, oc] = part.offsets;
    let launch = match kernel {
        GemmKernel::F32 => launch.f32s_at(a, oa).f32s_at(b, ob),
        GemmKernel::Bf16Simt
        | GemmKernel::Bf16TensorCores
        | GemmKernel::Bf16SmallM
        | GemmKernel::Bf16Large
        | GemmKernel::Bf16Wgmma => launch
            .u16s_at(&to_bf16_bits(a), oa)
            .u16s_at(&to_bf16_bits(b), ob),
    };
    let launch = launch
        .f32s_at(c, oc)
        .int(g.m)
        .int(g.n)
        .int(g.k)
        .flag(g.trans_a)
        .flag(g.trans_b)
        .f32(g.alpha)
        .f32(g.beta)
        .int(part.tiles.0)
        .int(part.tiles.1)
        .int(part.ks.0)
        .int(part.ks.1);
    let launch = match &epi.bias {
        Some(bias) => launch.f32s(bias),
        None => launch.null(),
    };
    let launch = launch.flag(epi.relu);
    let launch = if epi.bf16 {
        launch.u16s(&vec![0x7fc1; g.m * g.n])
    } else {
        launch.null()
    };
    if kernel != GemmKernel::Bf16Wgmma {
        return launch;
    }
    // The maps the host encodes for the launch (only the addresses' offsets from the
    // harness's 256-byte alignment matter to the rules).
    let (a_at, b_at) = ((oa * 2) as u64, (ob * 2) as u64);
    match gemm_tensor_maps(&g, a_at, b_at, part.ks.0..part.ks.1) {
        Ok([ma, mb]) => launch.tensor_map(1, &ma).tensor_map(2, &mb),
        Err(why) => panic!("{}: {why}", describe(kernel, g, part)),
    }
}

/// Random operands for `g` (rounded to bf16 for the bf16 kernels) and C (NaN when beta = 0).
pub fn gemm_inputs(rng: &mut Rng, kernel: GemmKernel, g: Gemm) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut a = uniform(rng, g.m * g.k, -1.0, 1.0);
    let mut b = uniform(rng, g.k * g.n, -1.0, 1.0);
    if kernel != GemmKernel::F32 {
        a = round_to_bf16(&a);
        b = round_to_bf16(&b);
    }
    let c = if g.beta == 0.0 {
        vec![f32::NAN; g.m * g.n]
    } else {
        uniform(rng, g.m * g.n, -1.0, 1.0)
    };
    (a, b, c)
}

/// Runs every case at each grid size on `harness`: the first grid under every one of
/// `schedules`, with its C against the CPU backend's; the others under one schedule each
/// (rotating over the cases), against the first grid's C bit for bit. The first grid should
/// be 1, where one block loops over every tile and so reuses its shared memory the most.
pub fn check_gemm(
    harness: &Harness,
    schedules: &[u32],
    kernel: GemmKernel,
    cases: &[(Gemm, Part)],
    grids: &[u32],
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    for (i, &(g, part)) in cases.iter().enumerate() {
        let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
        let want = reference(g, &a, &b, &c, part.ks);
        let launch = gemm_launch(kernel, g, &a, &b, &c, part);
        let what = describe(kernel, g, part);
        let first = launch.try_run(harness, grids[0], schedules)?.f32(2);
        let vs_cpu = format!("{what} grid={} vs CPU", grids[0]);
        close(&vs_cpu, &first, &want.c, g.n, |i| want.tol[i])?;
        for (j, &grid) in grids.iter().enumerate().skip(1) {
            let schedule = schedules[(i + j) % schedules.len()];
            let got = launch.try_run(harness, grid, &[schedule])?.f32(2);
            let vs_first = format!(
                "{what} grid={grid} (schedule {schedule}) vs grid={}",
                grids[0]
            );
            same(&vs_first, &got, &first, g.n)?;
        }
    }
    Ok(())
}

/// Every case over its whole product with aligned buffers.
pub fn whole(cases: &[Gemm]) -> Vec<(Gemm, Part)> {
    cases.iter().map(|&g| (g, Part::whole(g))).collect()
}

/// The CPU backend's layer step for `g` over the whole k: its GEMM, then its `bias_act` (a
/// zero bias when `epi` asks for ReLU alone), and the GEMM's tolerance with the bias's
/// magnitude added to each element's (the sum gains one term).
pub fn fused_reference(g: Gemm, a: &[f32], b: &[f32], c: &[f32], epi: &Epi) -> Reference {
    let mut r = reference(g, a, b, c, (0, g.k));
    if epi.bias.is_none() && !epi.relu {
        return r;
    }
    let bias = epi.bias.clone().unwrap_or_else(|| vec![0.0; g.n]);
    let act = if epi.relu {
        Activation::Relu
    } else {
        Activation::Identity
    };
    let mut out = CpuBuf(r.c);
    CpuBackend::single()
        .bias_act(&mut out, &CpuBuf(bias.clone()), g.m, g.n, act)
        .unwrap();
    r.c = out.0;
    for (i, t) in r.tol.iter_mut().enumerate() {
        *t += 4e-7 * (g.k as f64 + 2.0) * f64::from(bias[i % g.n]).abs();
    }
    r
}

/// The epilogues the fused checks rotate over: bias and ReLU with a bf16 copy, bias alone,
/// the bf16 copy alone, bias and ReLU.
pub fn epilogues(rng: &mut Rng, n: usize, i: usize) -> Epi {
    let (bias, relu, bf16) = [
        (true, true, true),
        (true, false, false),
        (false, false, true),
        (true, true, false),
    ][i % 4];
    Epi {
        bias: bias.then(|| uniform(rng, n, -1.0, 1.0)),
        relu,
        bf16,
    }
}

/// The bf16 copy of C, when asked for, is C rounded to nearest even, bit for bit.
pub fn check_bf16_copy(what: &str, out: &Outputs, epi: &Epi, c: &[f32]) -> Result<(), String> {
    if !epi.bf16 {
        return Ok(());
    }
    let got = out.u16(epi.bf16_output());
    let want = to_bf16_bits(c);
    match got.iter().zip(&want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: the bf16 copy of C at element {i} is {:#06x}, C there is {} ({:#06x} in \
             bf16)",
            got[i], c[i], want[i]
        )),
    }
}

/// As [`check_gemm`], each case with an epilogue from [`epilogues`]: C against the CPU
/// backend's GEMM then bias_act, the bf16 copy against C, and every grid bit for bit the
/// same as the first.
pub fn check_fused(
    harness: &Harness,
    schedules: &[u32],
    kernel: GemmKernel,
    cases: &[(Gemm, Part)],
    grids: &[u32],
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    for (i, &(g, part)) in cases.iter().enumerate() {
        let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
        let epi = epilogues(&mut rng, g.n, i);
        let want = fused_reference(g, &a, &b, &c, &epi);
        let launch = gemm_launch_with(kernel, g, &a, &b, &c, part, &epi);
        let what = describe(kernel, g, part) + &epi.describe();
        let out = launch.try_run(harness, grids[0], schedules)?;
        let first = out.f32(2);
        let vs_cpu = format!("{what} grid={} vs CPU gemm then bias_act", grids[0]);
        close(&vs_cpu, &first, &want.c, g.n, |i| want.tol[i])?;
        check_bf16_copy(&what, &out, &epi, &first)?;
        for (j, &grid) in grids.iter().enumerate().skip(1) {
            let schedule = schedules[(i + j) % schedules.len()];
            let got = launch.try_run(harness, grid, &[schedule])?;
            let vs_first = format!(
                "{what} grid={grid} (schedule {schedule}) vs grid={}",
                grids[0]
            );
            same(&vs_first, &got.f32(2), &first, g.n)?;
            check_bf16_copy(&vs_first, &got, &epi, &got.f32(2))?;
        }
    }
    Ok(())
}

/// Split-K as the backend runs a fused layer: the k ranges `cuts` in order, the first with
/// `g`'s beta and the plain store, the others adding (beta 1), the last one alone with the
/// epilogue `epi`; the result against the CPU backend's GEMM then bias_act.
pub fn check_fused_split(
    harness: &Harness,
    kernel: GemmKernel,
    g: Gemm,
    cuts: &[usize],
    epi: &Epi,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
    let want = fused_reference(g, &a, &b, &c, epi);
    let mut acc = c.clone();
    let what = describe(kernel, g, Part::whole(g)) + &epi.describe();
    let last = cuts.len() - 2;
    for (i, w) in cuts.windows(2).enumerate() {
        let chunk = if i == 0 { g } else { g.scaled(g.alpha, 1.0) };
        let part = Part::whole(g).k_range(w[0], w[1]);
        let plain = Epi::default();
        let out = gemm_launch_with(
            kernel,
            chunk,
            &a,
            &b,
            &acc,
            part,
            if i == last { epi } else { &plain },
        )
        .try_run(harness, 1 + i as u32, SCHEDULES)?;
        acc = out.f32(2);
        if i == last {
            check_bf16_copy(&what, &out, epi, &acc)?;
        }
    }
    let vs_cpu = format!("{what} split-K at {cuts:?} vs CPU gemm then bias_act");
    close(&vs_cpu, &acc, &want.c, g.n, |i| want.tol[i])
}
