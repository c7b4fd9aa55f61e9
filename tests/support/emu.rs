//! Driving the kernel emulation harness (`kernels/emu/harness.cpp`) from the tests: building
//! it (from `kernels/` or from a mutated copy), encoding a launch's arguments, running it under
//! several schedules of the emulation, and comparing its results with the CPU backend's.
//!
//! Shared by the `kernels_*` test files; each uses part of it.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use half::bf16;
use setpoint::device::cuda::tma::TensorMap2d;
use setpoint::util::rng::Rng;

/// Flags of the harness build (see kernels/emu/harness.cpp): no FMA contraction, so that the
/// elementwise kernels round exactly as the CPU backend does; misaligned vector accesses and
/// indexes past a fixed-size array abort.
const CXX_FLAGS: &[&str] = &[
    "-std=c++20",
    // -O2 takes half as long again to compile for about the same run time.
    "-O1",
    "-pthread",
    "-fno-strict-aliasing",
    "-ffp-contract=off",
    "-fsanitize=alignment,bounds",
    "-fno-sanitize-recover=all",
    "-Wall",
    "-Wextra",
    // GCC notes that 64-byte-aligned arguments (the tensor maps) pass differently since 4.6.
    "-Wno-psabi",
];

/// The emulation's schedules every launch runs under (kernels/emu/cuda_emu.h): 0 the plain
/// thread order, 1 and 2 one warp after another ascending and descending, 3 threads in
/// descending order, 4 and 5 random orders. The harness requires them all to give the same
/// results bit for bit.
pub const SCHEDULES: &[u32] = &[0, 1, 2, 3, 4, 5];

/// One build of the harness.
pub struct Harness {
    exe: PathBuf,
}

impl Harness {
    /// The harness built from the project's `kernels/`.
    pub fn main() -> &'static Harness {
        static MAIN: OnceLock<Harness> = OnceLock::new();
        MAIN.get_or_init(|| {
            let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            Harness::build(&kernels, dir)
        })
    }

    /// The harness built from a copy of `kernels/` in which each `(file, anchor, replacement)`
    /// edit has replaced the one occurrence of `anchor` in `file`. Panics, naming the edit,
    /// when an anchor does not occur exactly once: a mutation that no longer applies must be
    /// updated with the kernels, not skipped.
    pub fn mutant(name: &str, edits: &[(&str, &str, &str)]) -> Harness {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("planted-{name}"));
        let copy = root.join("kernels");
        // Afresh, so that no file of an earlier copy outlives its source.
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(copy.join("emu"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", copy.display()));
        for rel in source_files(&source) {
            let from = source.join(&rel);
            let text = std::fs::read_to_string(&from)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()));
            std::fs::write(copy.join(&rel), text)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", copy.join(&rel).display()));
        }
        for (file, anchor, replacement) in edits {
            let path = copy.join(file);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("mutation {name}: cannot read kernels/{file}: {e}"));
            let found = text.matches(anchor).count();
            assert_eq!(
                found, 1,
                "mutation {name}: its anchor occurs {found} times in kernels/{file}, not once; \
                 update the mutation to the kernel source. Anchor:\n{anchor}"
            );
            std::fs::write(&path, text.replacen(anchor, replacement, 1))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        Harness::build(&copy, &root)
    }

    /// Builds `kernels/emu/harness.cpp` of the tree `kernels` into `dir`, named by a hash of
    /// its sources, compiler and flags: a rerun with the same sources reuses the binary, and
    /// test processes running at once never write the same file.
    fn build(kernels: &Path, dir: &Path) -> Harness {
        let cxx = compiler();
        let mut hasher = DefaultHasher::new();
        (&cxx, CXX_FLAGS).hash(&mut hasher);
        for rel in source_files(kernels) {
            rel.hash(&mut hasher);
            let file = kernels.join(&rel);
            std::fs::read(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
                .hash(&mut hasher);
        }
        let exe = dir.join(format!("kernel-emu-harness-{:016x}", hasher.finish()));
        if exe.is_file() {
            return Harness { exe };
        }
        // Unique per build, so that two builds in one process never share a file either.
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            "kernel-emu-harness-{}-{build}.tmp",
            std::process::id()
        ));
        let out = Command::new(&cxx)
            .args(CXX_FLAGS)
            .arg(kernels.join("emu/harness.cpp"))
            .arg("-o")
            .arg(&tmp)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cxx}: {e}"));
        assert!(
            out.status.success(),
            "{cxx} could not compile {} (the kernels under emulation):\n{}",
            kernels.join("emu/harness.cpp").display(),
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
        Harness { exe }
    }
}

/// The files of a kernels tree the harness is built from, relative to it, sorted.
fn source_files(kernels: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["", "emu"] {
        let dir = kernels.join(sub);
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            if path.is_file() {
                files.push(Path::new(sub).join(path.file_name().expect("file name")));
            }
        }
    }
    files.sort();
    files
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
         kernels/emu/harness.cpp with a C++20 compiler and UBSan; install one, e.g. \
         `apt-get install g++` (GCC 10 or later)"
    );
}

/// One kernel launch in the harness's protocol: arguments in the kernel's parameter order.
pub struct Launch {
    pub kernel: &'static str,
    input: String,
}

impl Launch {
    pub fn new(kernel: &'static str) -> Self {
        Launch {
            kernel,
            input: String::new(),
        }
    }

    pub fn int(mut self, v: usize) -> Self {
        let v = i32::try_from(v).expect("an int argument over i32::MAX");
        writeln!(self.input, "i32 {v}").unwrap();
        self
    }

    /// An int argument that may be negative.
    pub fn int_signed(mut self, v: i32) -> Self {
        writeln!(self.input, "i32 {v}").unwrap();
        self
    }

    pub fn flag(self, v: bool) -> Self {
        self.int(usize::from(v))
    }

    pub fn f32(mut self, v: f32) -> Self {
        writeln!(self.input, "f32 {:x}", v.to_bits()).unwrap();
        self
    }

    /// A buffer with tag `tag` (`f32[]`, `u16[]`, ...) holding `bits`, `offset_bytes` past
    /// the 256-byte alignment (0: aligned like cudaMalloc).
    pub fn buffer(mut self, tag: &str, offset_bytes: usize, bits: &[u64]) -> Self {
        write!(self.input, "{tag}").unwrap();
        if offset_bytes != 0 {
            write!(self.input, "@{offset_bytes}").unwrap();
        }
        write!(self.input, " {}", bits.len()).unwrap();
        for b in bits {
            write!(self.input, " {b:x}").unwrap();
        }
        self.input.push('\n');
        self
    }

    pub fn f32s(self, v: &[f32]) -> Self {
        self.f32s_at(v, 0)
    }

    /// A null pointer for a pointer parameter (not among the outputs).
    pub fn null(mut self) -> Self {
        self.input.push_str("null\n");
        self
    }

    /// An f32 buffer `offset` elements past the 256-byte alignment.
    pub fn f32s_at(self, v: &[f32], offset: usize) -> Self {
        let bits: Vec<u64> = v.iter().map(|x| u64::from(x.to_bits())).collect();
        self.buffer("f32[]", offset * 4, &bits)
    }

    pub fn f64s(self, v: &[f64]) -> Self {
        let bits: Vec<u64> = v.iter().map(|x| x.to_bits()).collect();
        self.buffer("f64[]", 0, &bits)
    }

    pub fn u32s(self, v: &[u32]) -> Self {
        let bits: Vec<u64> = v.iter().map(|&x| u64::from(x)).collect();
        self.buffer("u32[]", 0, &bits)
    }

    pub fn u16s(self, v: &[u16]) -> Self {
        self.u16s_at(v, 0)
    }

    /// A tensor map (kernels/emu/tma.h) over the u16 buffer that is argument `arg` (1-based),
    /// encoded by the harness as cuTensorMapEncodeTiled would from `map`'s parameters (its
    /// address is the buffer's own).
    pub fn tensor_map(mut self, arg: usize, map: &TensorMap2d) -> Self {
        writeln!(
            self.input,
            "tmap {arg} {} {} {} {} {} {}",
            map.dims[0],
            map.dims[1],
            map.stride_bytes,
            map.box_dims[0],
            map.box_dims[1],
            map.swizzle as u32
        )
        .unwrap();
        self
    }

    /// A u16 buffer `offset` elements past the 256-byte alignment.
    pub fn u16s_at(self, v: &[u16], offset: usize) -> Self {
        let bits: Vec<u64> = v.iter().map(|&x| u64::from(x)).collect();
        self.buffer("u16[]", offset * 2, &bits)
    }

    fn exec(&self, harness: &Harness, grid: u32, schedules: &[u32]) -> Output {
        let list: Vec<String> = schedules.iter().map(u32::to_string).collect();
        let mut child = Command::new(&harness.exe)
            .args(["--schedules", &list.join(",")])
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

    /// Runs the kernel with `grid` blocks under each of `schedules` and returns its buffer
    /// arguments afterwards, or the harness's report of what went wrong.
    pub fn try_run(
        &self,
        harness: &Harness,
        grid: u32,
        schedules: &[u32],
    ) -> Result<Outputs, String> {
        let out = self.exec(harness, grid, schedules);
        if !out.status.success() {
            return Err(format!(
                "{} (grid {grid}) failed under emulation ({}):\n{}",
                self.kernel,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8(out.stdout).expect("harness output is text");
        let bufs = text
            .lines()
            .map(|line| {
                let mut words = line.split_ascii_whitespace();
                let tag = words.next().expect("buffer tag");
                let tag = tag.split('@').next().unwrap_or(tag).to_string();
                let len: usize = words.next().expect("buffer length").parse().unwrap();
                let bits: Vec<u64> = words
                    .map(|w| u64::from_str_radix(w, 16).expect("hex value"))
                    .collect();
                assert_eq!(bits.len(), len, "{}: truncated {tag} output", self.kernel);
                (tag, bits)
            })
            .collect();
        Ok(Outputs {
            kernel: self.kernel,
            bufs,
        })
    }

    /// Runs the kernel on the project's kernels under every schedule of [`SCHEDULES`].
    pub fn run(&self, grid: u32) -> Outputs {
        self.try_run(Harness::main(), grid, SCHEDULES)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs the kernel expecting the harness to refuse or fail; returns its stderr.
    pub fn run_failing(&self, grid: u32) -> String {
        let out = self.exec(Harness::main(), grid, &[0]);
        assert!(
            !out.status.success(),
            "{} (grid {grid}) was expected to fail under emulation but succeeded",
            self.kernel
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The buffer arguments of a launch after it ran, numbered in parameter order among buffers.
pub struct Outputs {
    kernel: &'static str,
    bufs: Vec<(String, Vec<u64>)>,
}

impl Outputs {
    fn bits(&self, i: usize, tag: &str) -> &[u64] {
        let (t, bits) = &self.bufs[i];
        assert_eq!(t, tag, "{}: buffer {i}", self.kernel);
        bits
    }

    pub fn f32(&self, i: usize) -> Vec<f32> {
        let bits = self.bits(i, "f32[]");
        bits.iter().map(|&b| f32::from_bits(b as u32)).collect()
    }

    pub fn f64(&self, i: usize) -> Vec<f64> {
        let bits = self.bits(i, "f64[]");
        bits.iter().map(|&b| f64::from_bits(b)).collect()
    }

    pub fn u32(&self, i: usize) -> Vec<u32> {
        let bits = self.bits(i, "u32[]");
        bits.iter().map(|&b| b as u32).collect()
    }

    pub fn u16(&self, i: usize) -> Vec<u16> {
        let bits = self.bits(i, "u16[]");
        bits.iter().map(|&b| b as u16).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Data and comparisons.

pub fn uniform(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi) as f32).collect()
}

pub fn to_bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

pub fn round_to_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// "[i]" for a vector, "[row][col]" for a matrix with `cols` columns.
pub fn position(i: usize, cols: usize) -> String {
    if cols > 1 {
        format!("[{}][{}]", i / cols, i % cols)
    } else {
        format!("[{i}]")
    }
}

/// Whether `got` equals `want` bit for bit; the error names the first difference.
pub fn same(what: &str, got: &[f32], want: &[f32], cols: usize) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    let differ = |(_, (g, w)): &(usize, (&f32, &f32))| g.to_bits() != w.to_bits();
    let count = got.iter().zip(want).enumerate().filter(differ).count();
    match got.iter().zip(want).enumerate().find(differ) {
        None => Ok(()),
        Some((i, (g, w))) => Err(format!(
            "{what}: {count} of {} elements differ; first at {}: got {g:e} ({:#010x}), want \
             {w:e} ({:#010x})",
            got.len(),
            position(i, cols),
            g.to_bits(),
            w.to_bits()
        )),
    }
}

/// Asserts that `got` equals `want` bit for bit, naming the first difference.
pub fn assert_same(what: &str, got: &[f32], want: &[f32], cols: usize) {
    if let Err(e) = same(what, got, want, cols) {
        panic!("{e}");
    }
}

/// Whether `|got - want| <= tol(i)` everywhere; the error reports the worst element against
/// its tolerance and how many are outside.
pub fn close(
    what: &str,
    got: &[f32],
    want: &[f32],
    cols: usize,
    tol: impl Fn(usize) -> f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
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
    match worst.filter(|&(r, _)| r > 1.0) {
        None => Ok(()),
        Some((ratio, i)) => Err(format!(
            "{what}: {outside} of {} elements outside tolerance (max abs error {max_err:e}); \
             worst at {}: got {:e}, want {:e}, error {:e} = {ratio:.1} x tolerance {:e}",
            got.len(),
            position(i, cols),
            got[i],
            want[i],
            (f64::from(got[i]) - f64::from(want[i])).abs(),
            tol(i)
        )),
    }
}

/// Asserts `|got - want| <= tol(i)` everywhere (see [`close`]).
pub fn assert_close(
    what: &str,
    got: &[f32],
    want: &[f32],
    cols: usize,
    tol: impl Fn(usize) -> f64,
) {
    if let Err(e) = close(what, got, want, cols, tol) {
        panic!("{e}");
    }
}

/// Relative tolerance `rel` with an absolute floor.
pub fn relative(want: &[f32], rel: f64) -> impl Fn(usize) -> f64 + '_ {
    move |i| rel * f64::from(want[i]).abs() + 1e-30
}
