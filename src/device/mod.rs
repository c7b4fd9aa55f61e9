//! Device backends: the narrow set of operations an MLP needs, on buffers the backend owns.
//!
//! The CPU backend ([`cpu::CpuBackend`]) is the reference: every other backend is tested
//! against it. All matrices are row-major and dense; a buffer may be longer than the
//! operation uses (workspaces are sized for the largest batch), so every operation takes its
//! shape explicitly and checks that the buffers are long enough.

pub mod cpu;
pub mod cuda;
pub mod denormals;
pub mod fault;
pub mod lane;
pub mod part;
pub mod precision;

pub use cpu::CpuBackend;
pub use precision::{Precision, Work};

/// What went wrong in a device operation.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A buffer is shorter than the shape an operation was asked to use.
    #[error("{op}: buffer `{buffer}` holds {len} elements, the shape needs {needed}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// Which argument.
        buffer: &'static str,
        /// Its length.
        len: usize,
        /// What the shape needs.
        needed: usize,
    },
    /// A label is not below the number of classes.
    #[error("{op}: label {label} in row {row} is out of range for {classes} classes")]
    Label {
        /// The operation.
        op: &'static str,
        /// Row of the batch.
        row: usize,
        /// The label found.
        label: u32,
        /// Number of classes (columns of the logits).
        classes: usize,
    },
    /// The backend could not be created or used.
    #[error("device unavailable: {0}")]
    Unavailable(String),
    /// The device has failed (a sticky driver error poisoned it) and runs nothing until the
    /// process restarts; see [`fault::DeviceHealth`].
    #[error("device {device} has failed: {reason}; its tenants were stopped")]
    Failed {
        /// The device (`cpu`, `cuda:0`).
        device: String,
        /// The first error that failed it.
        reason: String,
    },
}

/// `C = alpha · op(A) · op(B) + beta · C` with `op(A)` of shape `m × k` and `op(B)` of shape
/// `k × n`. `A` is stored `m × k`, or `k × m` when `trans_a`; `B` is stored `k × n`, or
/// `n × k` when `trans_b`; `C` is `m × n`. When `beta == 0` the old contents of `C` are not
/// read (NaN in `C` does not propagate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    /// Use `Aᵀ`.
    pub trans_a: bool,
    /// Use `Bᵀ`.
    pub trans_b: bool,
    /// Rows of `C`.
    pub m: usize,
    /// Columns of `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old `C`.
    pub beta: f32,
}

impl Gemm {
    /// `C = op(A) · op(B)`.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            trans_a: false,
            trans_b: false,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Use the transpose of `A`.
    pub fn ta(mut self) -> Self {
        self.trans_a = true;
        self
    }

    /// Use the transpose of `B`.
    pub fn tb(mut self) -> Self {
        self.trans_b = true;
        self
    }

    /// Set the scales.
    pub fn scaled(mut self, alpha: f32, beta: f32) -> Self {
        self.alpha = alpha;
        self.beta = beta;
        self
    }
}

/// Activation applied by the fused bias epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `y = x + b`.
    Identity,
    /// `y = max(0, x + b)`.
    Relu,
}

/// SGD with momentum (PyTorch semantics): `g' = g + wd·p; v = μ·v + g'; p -= lr·v`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    /// Learning rate.
    pub lr: f32,
    /// Momentum μ in [0, 1).
    pub momentum: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
}

/// Adam (PyTorch semantics, L2 weight decay added to the gradient), with bias correction
/// for step `t` (1-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator term.
    pub eps: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Step number, starting at 1.
    pub t: u64,
}

/// How many workers a stretch of work could use, whatever its budget (`One` < `All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Width {
    /// One: every operation was too small to split (on the CPU, each ran on the calling
    /// thread).
    One,
    /// As many as the budget allows: some operation was split over the workers.
    All,
}

impl Width {
    /// The workers this is, on a device of `all` workers.
    pub fn workers(self, all: usize) -> usize {
        match self {
            Width::One => 1,
            Width::All => all,
        }
    }
}

/// The operations an MLP needs, on buffers owned by the backend. Implementations must give
/// the same results as [`CpuBackend`] up to floating-point reassociation.
pub trait Backend: Send + Sync {
    /// A buffer of `f32`.
    type Buf: Send + Sync;
    /// A buffer of class labels.
    type Labels: Send + Sync;

    /// A short name for messages and status (`cpu`, `cuda:0`).
    fn name(&self) -> String;

    /// The most workers (CPU threads, or CTAs on a GPU) this backend can use.
    fn max_workers(&self) -> usize;
    /// The workers this backend uses now.
    fn workers(&self) -> usize;
    /// Sets the worker budget, clamped to `1..=max_workers()`. A lane's share is enforced
    /// through this.
    fn set_workers(&self, workers: usize);

    /// The number format of the GEMMs' operands from now on ([`Precision`]).
    fn set_precision(&self, precision: Precision);

    /// The number format of the GEMMs' operands.
    fn precision(&self) -> Precision;

    /// The precision a tenant doing `work` gets when it asks for none (see
    /// [`crate::device::precision`]): bf16 for training on a GPU with tensor cores (sm_80 and
    /// newer), f32 otherwise.
    fn default_precision(&self, work: Work) -> Precision;

    /// A zeroed buffer of `len` elements.
    fn alloc(&self, len: usize) -> Result<Self::Buf, DeviceError>;
    /// A buffer holding a copy of `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf, DeviceError> {
        let mut buf = self.alloc(data.len())?;
        self.write(&mut buf, data)?;
        Ok(buf)
    }
    /// Number of elements in `buf`.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Copies `data` into the start of `dst`.
    fn write(&self, dst: &mut Self::Buf, data: &[f32]) -> Result<(), DeviceError>;
    /// Copies the start of `src` into `out`.
    fn read(&self, src: &Self::Buf, out: &mut [f32]) -> Result<(), DeviceError>;
    /// Sets the first `len` elements of `buf` to `value`.
    fn fill(&self, buf: &mut Self::Buf, len: usize, value: f32) -> Result<(), DeviceError>;

    /// A labels buffer of `len` zeros.
    fn alloc_labels(&self, len: usize) -> Result<Self::Labels, DeviceError>;
    /// Copies `labels` into the start of `dst`.
    fn write_labels(&self, dst: &mut Self::Labels, labels: &[u32]) -> Result<(), DeviceError>;

    /// General matrix multiply; see [`Gemm`].
    fn gemm(
        &self,
        g: Gemm,
        a: &Self::Buf,
        b: &Self::Buf,
        c: &mut Self::Buf,
    ) -> Result<(), DeviceError>;

    /// In place on the `rows × cols` matrix `x`: `x[r][c] = act(x[r][c] + bias[c])`.
    fn bias_act(
        &self,
        x: &mut Self::Buf,
        bias: &Self::Buf,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), DeviceError>;

    /// A layer's forward step: `C = act(alpha·op(A)·op(B) + beta·C + bias)` over C's `g.m ×
    /// g.n`, with `bias` by column. By default [`Backend::gemm`] then [`Backend::bias_act`],
    /// which is what every backend must answer (the CPU backend runs exactly that); the CUDA
    /// backend applies the bias and the activation in the GEMM's store, one kernel instead
    /// of two.
    fn gemm_bias_act(
        &self,
        g: Gemm,
        a: &Self::Buf,
        b: &Self::Buf,
        c: &mut Self::Buf,
        bias: &Self::Buf,
        act: Activation,
    ) -> Result<(), DeviceError> {
        self.gemm(g, a, b, c)?;
        self.bias_act(c, bias, g.m, g.n, act)
    }

    /// Gradient of ReLU given its output: `grad[i] = 0` where `act[i] <= 0`, for `i < len`.
    fn relu_grad(
        &self,
        grad: &mut Self::Buf,
        act: &Self::Buf,
        len: usize,
    ) -> Result<(), DeviceError>;

    /// Column sums of the `rows × cols` matrix `x`: `out[c] = Σ_r x[r][c]` (bias gradients).
    fn col_sum(
        &self,
        x: &Self::Buf,
        rows: usize,
        cols: usize,
        out: &mut Self::Buf,
    ) -> Result<(), DeviceError>;

    /// Softmax + cross-entropy on `rows × cols` logits against `labels`:
    /// `grad[r][c] = grad_scale · (softmax(logits[r])[c] − [c == label_r])`,
    /// `loss_acc[r] += −log softmax(logits[r])[label_r]`, and `correct_acc[r] += 1` when the
    /// first maximum of the row is at the label. The accumulators let a caller sum over many
    /// batches and read once.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent(
        &self,
        logits: &Self::Buf,
        labels: &Self::Labels,
        rows: usize,
        cols: usize,
        grad_scale: f32,
        grad: &mut Self::Buf,
        loss_acc: &mut Self::Buf,
        correct_acc: &mut Self::Buf,
    ) -> Result<(), DeviceError>;

    /// Row-wise softmax in place on a `rows × cols` matrix.
    fn softmax(&self, x: &mut Self::Buf, rows: usize, cols: usize) -> Result<(), DeviceError>;

    /// Sum of the first `len` elements.
    fn sum(&self, x: &Self::Buf, len: usize) -> Result<f64, DeviceError>;

    /// One SGD-with-momentum update of the first `len` parameters.
    fn sgd_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        velocity: &mut Self::Buf,
        len: usize,
        hp: SgdParams,
    ) -> Result<(), DeviceError>;

    /// One Adam update of the first `len` parameters.
    fn adam_step(
        &self,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        len: usize,
        hp: AdamParams,
    ) -> Result<(), DeviceError>;

    /// Processor time used so far by the backend's own worker threads (the caller's thread
    /// is the caller's to measure); zero for a backend without workers of its own.
    fn worker_cpu_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// How many workers the operations since the last call could have used, and counting
    /// starts again; `None` when the backend does not know (a GPU). The controller grants a
    /// job no more share than its steps can use (see [`crate::control::JobObs::width`]).
    fn take_width(&self) -> Option<Width> {
        None
    }

    /// Waits until all queued work has finished (a no-op on the CPU).
    fn synchronize(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Runs `body`, work the caller repeats as a whole (an inference batch, a training
    /// step), on this backend. Its results are the same as calling `body` directly; a GPU
    /// lane opened with CUDA Graphs may queue its kernels as one graph launch when they
    /// repeat an earlier run's (see `device::cuda::graph`). The default, and the CPU's,
    /// runs `body` as it is.
    fn repeated<T, E: From<DeviceError>>(
        &self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        body()
    }

    /// Memory a new model may still take on this backend's device, bytes, when known: on
    /// the CPU what the kernel reports available (`MemAvailable`), on a GPU what the
    /// device's memory limit leaves. Checked before a model is allocated, so that one too
    /// large is refused rather than aborting the process.
    fn memory_available(&self) -> Option<u64> {
        host_memory_headroom()
    }

    /// Whose memory [`Backend::memory_available`] counts, for messages: the host's (with the
    /// limit in force) unless a device's own.
    fn memory_scope(&self) -> String {
        host_memory_scope()
    }

    /// What a lane is charged for the work done through this backend so far, in
    /// worker-seconds of its device, read by the thread that runs the work: on the CPU the
    /// processor time of the calling thread and of the backend's own workers; on a GPU the
    /// stream's busy time (timed by events, up to the last [`Backend::synchronize`]) times
    /// the CTA budget in force. A unit of work is charged the difference of two readings.
    fn lane_time(&self) -> std::time::Duration {
        crate::util::cputime::thread_cpu_time() + self.worker_cpu_time()
    }
}

/// The cap on the process's resident memory set by [`set_host_memory_limit`]; `u64::MAX`:
/// none.
static HOST_MEMORY_LIMIT: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(u64::MAX);

/// Caps what new models may take on the host at `bytes` of the process's resident memory
/// (`device.memory_limit_mib` on a node without a GPU); `None`: the host's available memory
/// alone.
pub(crate) fn set_host_memory_limit(bytes: Option<u64>) {
    HOST_MEMORY_LIMIT.store(
        bytes.unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Memory a new model may still take on the host, bytes: what the kernel reports
/// available, and under [`set_host_memory_limit`]'s cap, what the cap leaves after the
/// process's resident memory (every tenant's buffers and data sets, summed by the kernel).
pub(crate) fn host_memory_headroom() -> Option<u64> {
    let available = host_memory_available();
    let limit = HOST_MEMORY_LIMIT.load(std::sync::atomic::Ordering::Relaxed);
    if limit == u64::MAX {
        return available;
    }
    let resident = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| parse_meminfo(&t, "VmRSS:"))
        .unwrap_or(0);
    let under = limit.saturating_sub(resident);
    Some(available.map_or(under, |a| a.min(under)))
}

/// `cpu`, or `cpu under device.memory_limit_mib = N` while a limit is set: whose memory
/// [`host_memory_headroom`] counts, for messages.
pub(crate) fn host_memory_scope() -> String {
    match HOST_MEMORY_LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        u64::MAX => "cpu".to_string(),
        limit => format!("cpu under device.memory_limit_mib = {}", limit >> 20),
    }
}

/// `MemAvailable` from `/proc/meminfo`, bytes; `None` where it cannot be read.
pub(crate) fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, "MemAvailable:")
}

/// The value of `key` (`MemTotal:`) in `/proc/meminfo` text, bytes.
fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// Checks that a buffer of `len` elements can hold `needed`.
pub(crate) fn check_len(
    op: &'static str,
    buffer: &'static str,
    len: usize,
    needed: usize,
) -> Result<(), DeviceError> {
    if len < needed {
        Err(DeviceError::Shape {
            op,
            buffer,
            len,
            needed,
        })
    } else {
        Ok(())
    }
}

/// Checks that each of the first `rows` labels is below `classes` (the softmax ops' rule).
pub(crate) fn check_labels(
    op: &'static str,
    labels: &[u32],
    rows: usize,
    classes: usize,
) -> Result<(), DeviceError> {
    match labels[..rows]
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes)
    {
        Some((row, &label)) => Err(DeviceError::Label {
            op,
            row,
            label,
            classes,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24609968 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(
            parse_meminfo(text, "MemAvailable:"),
            Some(22_000_000 * 1024)
        );
        assert_eq!(parse_meminfo(text, "SwapTotal:"), None);
        assert_eq!(parse_meminfo("MemAvailable: x kB", "MemAvailable:"), None);
        assert!(host_memory_available().is_some_and(|b| b > 0));
    }
}
