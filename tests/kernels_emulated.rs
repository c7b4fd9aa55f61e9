//! The CUDA kernels of `kernels/` (contract: `kernels/ABI.md`) run on the CPU through the host
//! emulation in `kernels/emu/` and are compared with the CPU backend: every kernel, on
//! awkward shapes (sizes 1, primes, one past a tile or a block), at several grid sizes, which
//! must give the same results bit for bit (`sum_partial` excepted, within double rounding).
//!
//! The harness is built with the system C++ compiler, at most once per test process and
//! reused while its sources are unchanged. `gemm_bf16` runs with `ldmatrix` and `mma.sync`
//! emulated from their PTX fragment layouts, which checks the kernel's tiling and fragment
//! indexing against those layouts; only a GPU can check the layouts themselves (and it
//! compares `gemm_bf16` with `gemm_bf16_simt`).

use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use half::bf16;
use setpoint::device::cpu::CpuBuf;
use setpoint::device::{Activation, AdamParams, Backend, CpuBackend, Gemm, SgdParams};
use setpoint::util::rng::Rng;

/// Flags of the harness build (see kernels/emu/harness.cpp): no FMA contraction, so that the
/// elementwise kernels round exactly as the CPU backend does.
const CXX_FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-pthread",
    "-fno-strict-aliasing",
    "-ffp-contract=off",
    "-Wall",
    "-Wextra",
];

/// Output tile edge of the GEMM kernels (ABI).
const TILE: usize = 64;

// ---------------------------------------------------------------------------------------------
// Building and running the harness.

fn harness() -> &'static Path {
    static HARNESS: OnceLock<PathBuf> = OnceLock::new();
    HARNESS.get_or_init(build_harness)
}

fn compiler() -> String {
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from));
    for cxx in candidates {
        let works = Command::new(&cxx)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            return cxx;
        }
    }
    panic!(
        "no C++ compiler found (tried $CXX, c++, g++, clang++): these tests compile \
         kernels/emu/harness.cpp with a C++20 compiler; install one, e.g. `apt-get install g++` \
         (GCC 10 or later)"
    );
}

fn build_harness() -> PathBuf {
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let cxx = compiler();
    // The binary is named by a hash of its sources, compiler and flags: a rerun with the same
    // sources reuses it, and test processes running at once never write the same file.
    let mut hasher = DefaultHasher::new();
    (&cxx, CXX_FLAGS).hash(&mut hasher);
    for dir in [kernels.clone(), kernels.join("emu")] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            file.hash(&mut hasher);
            std::fs::read(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
                .hash(&mut hasher);
        }
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let exe = dir.join(format!("kernel-emu-harness-{:016x}", hasher.finish()));
    if exe.is_file() {
        return exe;
    }
    let tmp = dir.join(format!("kernel-emu-harness-{}.tmp", std::process::id()));
    let out = Command::new(&cxx)
        .args(CXX_FLAGS)
        .arg(kernels.join("emu/harness.cpp"))
        .arg("-o")
        .arg(&tmp)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cxx}: {e}"));
    assert!(
        out.status.success(),
        "{cxx} could not compile kernels/emu/harness.cpp (the kernels under emulation):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &exe)
        .unwrap_or_else(|e| panic!("cannot move the harness to {}: {e}", exe.display()));
    // Binaries built from earlier sources are of no further use.
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("kernel-emu-harness-") && !name.ends_with(".tmp") && path != exe {
            let _ = std::fs::remove_file(path);
        }
    }
    exe
}

/// One kernel launch in the harness's protocol: arguments in the kernel's parameter order.
struct Launch {
    kernel: &'static str,
    input: String,
}

impl Launch {
    fn new(kernel: &'static str) -> Self {
        Launch {
            kernel,
            input: String::new(),
        }
    }

    fn int(mut self, v: usize) -> Self {
        let v = i32::try_from(v).expect("an int argument over i32::MAX");
        writeln!(self.input, "i32 {v}").unwrap();
        self
    }

    fn flag(self, v: bool) -> Self {
        self.int(usize::from(v))
    }

    fn f32(mut self, v: f32) -> Self {
        writeln!(self.input, "f32 {:x}", v.to_bits()).unwrap();
        self
    }

    fn buffer(mut self, tag: &str, len: usize, bits: impl Iterator<Item = u64>) -> Self {
        write!(self.input, "{tag} {len}").unwrap();
        for b in bits {
            write!(self.input, " {b:x}").unwrap();
        }
        self.input.push('\n');
        self
    }

    fn f32s(self, v: &[f32]) -> Self {
        self.buffer("f32[]", v.len(), v.iter().map(|x| u64::from(x.to_bits())))
    }

    fn f64s(self, v: &[f64]) -> Self {
        self.buffer("f64[]", v.len(), v.iter().map(|x| x.to_bits()))
    }

    fn u32s(self, v: &[u32]) -> Self {
        self.buffer("u32[]", v.len(), v.iter().map(|&x| u64::from(x)))
    }

    fn u16s(self, v: &[u16]) -> Self {
        self.buffer("u16[]", v.len(), v.iter().map(|&x| u64::from(x)))
    }

    fn exec(&self, grid: u32) -> Output {
        let mut child = Command::new(harness())
            .args([self.kernel, &grid.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the kernel harness");
        let mut stdin = child.stdin.take().expect("harness stdin");
        // A harness that fails early closes its stdin; its status and stderr say why.
        let _ = stdin.write_all(self.input.as_bytes());
        drop(stdin);
        child.wait_with_output().expect("waiting for the harness")
    }

    /// Runs the kernel with `grid` blocks and returns its buffer arguments afterwards.
    fn run(&self, grid: u32) -> Outputs {
        let out = self.exec(grid);
        assert!(
            out.status.success(),
            "{} (grid {grid}) failed under emulation ({}):\n{}",
            self.kernel,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("harness output is text");
        let bufs = text
            .lines()
            .map(|line| {
                let mut words = line.split_ascii_whitespace();
                let tag = words.next().expect("buffer tag").to_string();
                let len: usize = words.next().expect("buffer length").parse().unwrap();
                let bits: Vec<u64> = words
                    .map(|w| u64::from_str_radix(w, 16).expect("hex value"))
                    .collect();
                assert_eq!(bits.len(), len, "{}: truncated {tag} output", self.kernel);
                (tag, bits)
            })
            .collect();
        Outputs {
            kernel: self.kernel,
            bufs,
        }
    }

    /// Runs the kernel expecting the harness to refuse or fail; returns its stderr.
    fn run_failing(&self, grid: u32) -> String {
        let out = self.exec(grid);
        assert!(
            !out.status.success(),
            "{} (grid {grid}) was expected to fail under emulation but succeeded",
            self.kernel
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The buffer arguments of a launch after it ran, numbered in parameter order among buffers.
struct Outputs {
    kernel: &'static str,
    bufs: Vec<(String, Vec<u64>)>,
}

impl Outputs {
    fn bits(&self, i: usize, tag: &str) -> &[u64] {
        let (t, bits) = &self.bufs[i];
        assert_eq!(t, tag, "{}: buffer {i}", self.kernel);
        bits
    }

    fn f32(&self, i: usize) -> Vec<f32> {
        let bits = self.bits(i, "f32[]");
        bits.iter().map(|&b| f32::from_bits(b as u32)).collect()
    }

    fn f64(&self, i: usize) -> Vec<f64> {
        let bits = self.bits(i, "f64[]");
        bits.iter().map(|&b| f64::from_bits(b)).collect()
    }

    fn u16(&self, i: usize) -> Vec<u16> {
        let bits = self.bits(i, "u16[]");
        bits.iter().map(|&b| b as u16).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Data and comparisons.

fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi) as f32).collect()
}

fn to_bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

fn round_to_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// "[i]" for a vector, "[row][col]" for a matrix with `cols` columns.
fn position(i: usize, cols: usize) -> String {
    if cols > 1 {
        format!("[{}][{}]", i / cols, i % cols)
    } else {
        format!("[{i}]")
    }
}

/// Asserts that `got` equals `want` bit for bit, naming the first difference.
fn assert_same(what: &str, got: &[f32], want: &[f32], cols: usize) {
    assert_eq!(got.len(), want.len(), "{what}: output length");
    let differ = |(_, (g, w)): &(usize, (&f32, &f32))| g.to_bits() != w.to_bits();
    let count = got.iter().zip(want).enumerate().filter(differ).count();
    if let Some((i, (g, w))) = got.iter().zip(want).enumerate().find(differ) {
        panic!(
            "{what}: {count} of {} elements differ; first at {}: got {g:e} ({:#010x}), want \
             {w:e} ({:#010x})",
            got.len(),
            position(i, cols),
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// Asserts `|got - want| <= tol(i)` everywhere, reporting the worst element against its
/// tolerance and how many are outside.
fn assert_close(what: &str, got: &[f32], want: &[f32], cols: usize, tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: output length");
    let mut worst: Option<(f64, usize)> = None;
    let mut outside = 0;
    let mut max_err = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - f64::from(w)).abs();
        let err = if err.is_nan() { f64::INFINITY } else { err };
        max_err = max_err.max(err);
        let ratio = err / tol(i);
        if ratio > 1.0 {
            outside += 1;
        }
        if worst.is_none_or(|(r, _)| ratio > r) {
            worst = Some((ratio, i));
        }
    }
    if let Some((ratio, i)) = worst.filter(|&(r, _)| r > 1.0) {
        panic!(
            "{what}: {outside} of {} elements outside tolerance (max abs error {max_err:e}); \
             worst at {}: got {:e}, want {:e}, error {:e} = {ratio:.1} x tolerance {:e}",
            got.len(),
            position(i, cols),
            got[i],
            want[i],
            (f64::from(got[i]) - f64::from(want[i])).abs(),
            tol(i)
        );
    }
}

/// Relative tolerance `rel` with an absolute floor.
fn relative(want: &[f32], rel: f64) -> impl Fn(usize) -> f64 + '_ {
    move |i| rel * f64::from(want[i]).abs() + 1e-30
}

// ---------------------------------------------------------------------------------------------
// GEMM.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GemmKernel {
    F32,
    Bf16Simt,
    Bf16TensorCores,
}

impl GemmKernel {
    fn name(self) -> &'static str {
        match self {
            GemmKernel::F32 => "gemm_f32",
            GemmKernel::Bf16Simt => "gemm_bf16_simt",
            GemmKernel::Bf16TensorCores => "gemm_bf16",
        }
    }
}

/// Shapes (m, n, k): sizes of 1, one either side of the 64-wide tile, several tiles, k not
/// a multiple of the k-slice, k = 0; the leading dimensions of the 64 and 68/132/36 cases
/// allow vector loads, the others do not.
const GEMM_SHAPES: &[(usize, usize, usize)] = &[
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
fn gemm_cases(shapes: &[(usize, usize, usize)]) -> Vec<Gemm> {
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

fn describe(kernel: GemmKernel, g: Gemm) -> String {
    format!(
        "{} m={} n={} k={} trans_a={} trans_b={} alpha={} beta={}",
        kernel.name(),
        g.m,
        g.n,
        g.k,
        g.trans_a,
        g.trans_b,
        g.alpha,
        g.beta
    )
}

/// Per element of C, the error allowed between two f32 evaluations of the product in
/// different orders: a few units of f32 rounding per term of the sum, times the sum of the
/// magnitudes of its terms (|alpha| Σ|a·b| + |beta·c|).
fn gemm_tolerance(g: Gemm, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f64> {
    let (m, n, k) = (g.m, g.n, g.k);
    let at = |i: usize, p: usize| {
        f64::from(if g.trans_a {
            a[p * m + i]
        } else {
            a[i * k + p]
        })
    };
    let bt = |p: usize, j: usize| {
        f64::from(if g.trans_b {
            b[j * k + p]
        } else {
            b[p * n + j]
        })
    };
    let mut tol = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let terms: f64 = (0..k).map(|p| (at(i, p) * bt(p, j)).abs()).sum();
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

/// A launch of a GEMM kernel over tiles [begin, end). `a` and `b` are bf16-exact for the
/// bf16 kernels, which receive their bits.
fn gemm_launch(
    kernel: GemmKernel,
    g: Gemm,
    a: &[f32],
    b: &[f32],
    c: &[f32],
    begin: usize,
    end: usize,
) -> Launch {
    let launch = Launch::new(kernel.name());
    let launch = match kernel {
        GemmKernel::F32 => launch.f32s(a).f32s(b),
        GemmKernel::Bf16Simt | GemmKernel::Bf16TensorCores => {
            launch.u16s(&to_bf16_bits(a)).u16s(&to_bf16_bits(b))
        }
    };
    launch
        .f32s(c)
        .int(g.m)
        .int(g.n)
        .int(g.k)
        .flag(g.trans_a)
        .flag(g.trans_b)
        .f32(g.alpha)
        .f32(g.beta)
        .int(begin)
        .int(end)
}

fn tiles(g: Gemm) -> usize {
    g.m.div_ceil(TILE) * g.n.div_ceil(TILE)
}

/// Random operands for `g` (rounded to bf16 for the bf16 kernels) and C (NaN when beta = 0).
fn gemm_inputs(rng: &mut Rng, kernel: GemmKernel, g: Gemm) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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

/// Runs every case at each grid size: the first grid's C against the CPU backend's, the
/// others against the first bit for bit.
fn check_gemm(kernel: GemmKernel, cases: &[Gemm], grids: &[u32], seed: u64) {
    let mut rng = Rng::new(seed);
    let cpu = CpuBackend::single();
    for &g in cases {
        let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
        let mut want = CpuBuf(c.clone());
        cpu.gemm(g, &CpuBuf(a.clone()), &CpuBuf(b.clone()), &mut want)
            .unwrap();
        let tol = gemm_tolerance(g, &a, &b, &c);
        let launch = gemm_launch(kernel, g, &a, &b, &c, 0, tiles(g));
        let first = launch.run(grids[0]).f32(2);
        let what = describe(kernel, g);
        assert_close(
            &format!("{what} grid={} vs CPU", grids[0]),
            &first,
            &want.0,
            g.n,
            |i| tol[i],
        );
        for &grid in &grids[1..] {
            let got = launch.run(grid).f32(2);
            assert_same(
                &format!("{what} grid={grid} vs grid={}", grids[0]),
                &got,
                &first,
                g.n,
            );
        }
    }
}

#[test]
fn gemm_f32_matches_cpu_on_all_shapes_and_transposes() {
    check_gemm(GemmKernel::F32, &gemm_cases(GEMM_SHAPES), &[1, 3, 7], 1);
}

#[test]
fn gemm_bf16_simt_matches_cpu_on_bf16_inputs() {
    let shapes = [
        (1, 1, 1),
        (17, 63, 65),
        (64, 64, 64),
        (65, 130, 42),
        (3, 5, 0),
    ];
    check_gemm(GemmKernel::Bf16Simt, &gemm_cases(&shapes), &[1, 3, 7], 2);
}

/// The tensor-core kernel with ldmatrix and mma.sync emulated: 128 threads, 32-deep
/// k-slices, 8-element vector loads where the leading dimension is a multiple of 8.
#[test]
fn gemm_bf16_tensor_core_kernel_matches_cpu_under_emulated_mma() {
    let shapes = [
        (1, 1, 1),
        (16, 8, 16),
        (17, 63, 65),
        (64, 64, 64),
        (128, 72, 96),
        (65, 130, 40),
        (130, 136, 72),
    ];
    check_gemm(
        GemmKernel::Bf16TensorCores,
        &gemm_cases(&shapes),
        &[1, 3, 7],
        3,
    );
}

/// A GEMM split into two launches over the tile ranges [0, t/2) and [t/2, t) gives exactly
/// the one-launch result, and the first launch leaves the tiles outside its range alone. With
/// beta != 0 a kernel that ignored the range would apply beta twice.
#[test]
fn gemm_tile_ranges_split_the_product_exactly() {
    let mut rng = Rng::new(4);
    for kernel in [
        GemmKernel::F32,
        GemmKernel::Bf16Simt,
        GemmKernel::Bf16TensorCores,
    ] {
        let g = Gemm::new(130, 150, 40).tb().scaled(1.25, 0.5);
        let (m, n) = (g.m, g.n);
        let t = tiles(g);
        assert_eq!(t, 9);
        let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
        let what = describe(kernel, g);
        let whole = gemm_launch(kernel, g, &a, &b, &c, 0, t).run(1).f32(2);

        let half = gemm_launch(kernel, g, &a, &b, &c, 0, t / 2).run(2).f32(2);
        let tiles_n = n.div_ceil(TILE);
        for i in 0..m * n {
            let tile = (i / n / TILE) * tiles_n + (i % n) / TILE;
            let (got, want, which) = if tile < t / 2 {
                (half[i], whole[i], "the one-launch result")
            } else {
                (half[i], c[i], "the old C")
            };
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{what}: after the launch over tiles [0, {}), C{} (tile {tile}) is {got}, not \
                 {which} {want}",
                t / 2,
                position(i, n)
            );
        }
        let split = gemm_launch(kernel, g, &a, &b, &half, t / 2, t)
            .run(3)
            .f32(2);
        assert_same(
            &format!(
                "{what}: launches over [0, {}) + [{}, {t}) vs one launch",
                t / 2,
                t / 2
            ),
            &split,
            &whole,
            n,
        );
    }
}

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
