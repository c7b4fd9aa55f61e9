//! The CUDA backend: the project's own kernels (`kernels/*.cu`, contract in `kernels/ABI.md`)
//! launched on one GPU, a stream per lane, with shares enforced by the backend itself.
//!
//! - **Probing, never panicking.** The driver library is loaded at run time; [`probe`] checks
//!   for it before any call and turns every failure into a message. A driver older than
//!   CUDA 12.0 is refused by name.
//! - **One device per GPU** ([`CudaDevice`]): the retained primary context, the kernels
//!   loaded once as context-independent libraries (the machine code or PTX the binary
//!   carries, else PTX from NVRTC, see `crate::kernels`), the SM count, the occupancy of the
//!   kernels, the stream-priority range, a device-memory account and the device's health.
//! - **One lane per tenant** ([`CudaBackend`]): a stream with a priority from the device's
//!   range (inference highest, training lowest). A share is enforced one of two ways:
//!   - *CTA budgets* (the default): every kernel takes its grid from the lane's budget,
//!     `ceil(share · SMs · blocks per SM)` CTAs, and one launch gives each CTA at most one
//!     bounded piece of work (one GEMM tile of at most [`launch::K_CHUNK_F32`] of k, or
//!     [`launch::ITEMS_PER_THREAD`] elements a thread), so a high-priority stream waits at
//!     most one such piece behind a low-priority one (stream priority does not preempt
//!     running CTAs);
//!   - *SM partitions* (green contexts, [`green`]): each unit of work runs on a lease of SM
//!     groups no other lane holds, in a green context over just those SMs.
//! - **Copies** go through a page-locked staging arena per lane, so they are asynchronous and
//!   a lane's stream keeps running while the host prepares the next batch.
//! - **Busy time** is the GPU's: a pair of events around every operation, summed at each
//!   synchronisation, so the host's gaps between launches are not charged (see
//!   [`Backend::lane_time`](super::Backend::lane_time)).
//! - **Faults stay on their device**: a sticky CUDA error (one that poisons the context)
//!   marks the device failed in its [`DeviceHealth`](super::fault::DeviceHealth); every
//!   later operation of every lane on it fails at once with that error.

mod backend;
pub mod choice;
mod device;
mod driver;
mod gemm;
mod graph;
mod graph_exec;
pub mod green;
pub mod launch;
mod memory;
mod mixed;
mod ops;
pub mod partition;
mod place;
mod recording;
mod shadow;
pub mod tma;

use std::ffi::c_char;

use cudarc::driver::sys;

pub use backend::{CudaBackend, CudaBf16, CudaBuf, CudaLabels, GraphCounts};
pub use device::{CudaDevice, OpenOptions};
pub use driver::CuError;

/// Threads per block of the element-wise, reduction and `gemm_f32` kernels (ABI.md).
pub(crate) const BLOCK: u32 = 256;
/// Threads per block of `gemm_bf16` (ABI.md).
pub(crate) const BLOCK_BF16: u32 = 128;
/// Threads per block of `gemm_bf16_wgmma`: two consumer warpgroups and a producer warp
/// (ABI.md).
pub(crate) const BLOCK_WGMMA: u32 = 288;
/// Dynamic shared memory of one `gemm_bf16_wgmma` CTA, bytes: its 4-stage ring and barriers
/// (`sizeof(WgmmaSmem)`, 132,096) and 1024 to align them (ABI.md).
pub(crate) const WGMMA_SMEM_BYTES: u32 = 133_120;

/// The project's kernels (kernels/ABI.md), by the name the host looks them up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `fill_f32`.
    Fill,
    /// `gemm_f32`.
    GemmF32,
    /// `gemm_bf16` (tensor cores, sm_80 and newer).
    GemmBf16,
    /// `gemm_bf16_simt`.
    GemmBf16Simt,
    /// `gemm_bf16_small_m` (tensor cores, sm_80 and newer; 16 x 64 tiles for m <= 16).
    GemmBf16SmallM,
    /// `gemm_bf16_128` (tensor cores, sm_80 and newer; 128 x 128 tiles for large products).
    GemmBf16Large,
    /// `gemm_bf16_wgmma` (sm_90a only: wgmma fed by TMA; 128 x 128 tiles). Loaded only when
    /// the device is opened with it ([`device::OpenOptions::wgmma`]).
    GemmBf16Wgmma,
    /// `bias_act`.
    BiasAct,
    /// `relu_grad`.
    ReluGrad,
    /// `col_sum`.
    ColSum,
    /// `softmax_xent`.
    SoftmaxXent,
    /// `softmax_rows`.
    SoftmaxRows,
    /// `sum_partial`.
    SumPartial,
    /// `sgd_step`.
    Sgd,
    /// `adam_step`.
    Adam,
    /// `f32_to_bf16`.
    ToBf16,
    /// `bf16_to_f32`.
    FromBf16,
}

impl Kernel {
    /// Every kernel, in ABI order.
    pub const ALL: [Kernel; Kernel::COUNT] = [
        Kernel::Fill,
        Kernel::GemmF32,
        Kernel::GemmBf16,
        Kernel::GemmBf16Simt,
        Kernel::GemmBf16SmallM,
        Kernel::GemmBf16Large,
        Kernel::GemmBf16Wgmma,
        Kernel::BiasAct,
        Kernel::ReluGrad,
        Kernel::ColSum,
        Kernel::SoftmaxXent,
        Kernel::SoftmaxRows,
        Kernel::SumPartial,
        Kernel::Sgd,
        Kernel::Adam,
        Kernel::ToBf16,
        Kernel::FromBf16,
    ];

    /// How many kernels there are.
    pub const COUNT: usize = 17;

    /// The `extern "C"` name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Fill => "fill_f32",
            Kernel::GemmF32 => "gemm_f32",
            Kernel::GemmBf16 => "gemm_bf16",
            Kernel::GemmBf16Simt => "gemm_bf16_simt",
            Kernel::GemmBf16SmallM => "gemm_bf16_small_m",
            Kernel::GemmBf16Large => "gemm_bf16_128",
            Kernel::GemmBf16Wgmma => "gemm_bf16_wgmma",
            Kernel::BiasAct => "bias_act",
            Kernel::ReluGrad => "relu_grad",
            Kernel::ColSum => "col_sum",
            Kernel::SoftmaxXent => "softmax_xent",
            Kernel::SoftmaxRows => "softmax_rows",
            Kernel::SumPartial => "sum_partial",
            Kernel::Sgd => "sgd_step",
            Kernel::Adam => "adam_step",
            Kernel::ToBf16 => "f32_to_bf16",
            Kernel::FromBf16 => "bf16_to_f32",
        }
    }

    /// Threads per block (ABI.md).
    pub fn block(self) -> u32 {
        match self {
            Kernel::GemmBf16 | Kernel::GemmBf16SmallM => BLOCK_BF16,
            Kernel::GemmBf16Wgmma => BLOCK_WGMMA,
            _ => BLOCK,
        }
    }

    /// Dynamic shared memory a CTA is launched with, bytes (ABI.md).
    pub fn dynamic_smem(self) -> u32 {
        match self {
            Kernel::GemmBf16Wgmma => WGMMA_SMEM_BYTES,
            _ => 0,
        }
    }

    pub(super) fn index(self) -> usize {
        Kernel::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

/// What the driver says about one GPU.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuInfo {
    /// Device ordinal.
    pub index: usize,
    /// Marketing name (`NVIDIA H200`).
    pub name: String,
    /// `GPU-xxxxxxxx-...`, as nvidia-smi prints it.
    pub uuid: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Device memory, bytes.
    pub total_memory: u64,
    /// Stream priorities: (least, greatest); numerically lower is higher priority.
    pub priority_range: (i32, i32),
    /// The driver's CUDA version, as `cuDriverGetVersion` gives it (12080 is 12.8).
    pub driver_version: i32,
}

/// Stream priority of a lane, mapped onto the device's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPriority {
    /// Inference: the device's greatest priority.
    Highest,
    /// The default priority.
    Normal,
    /// Training and best-effort work: the device's least priority.
    Lowest,
}

/// The oldest driver the backend runs on (12.0: context-independent kernel loading).
const MIN_DRIVER: i32 = 12000;

/// Whether the CUDA driver library can be loaded. cudarc panics on first use without it, so
/// this runs before anything else touches the driver.
pub(crate) fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// `12.8` from 12080.
pub(crate) fn version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Why no GPU is usable.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the CUDA driver library (libcuda.so.1) was not found")]
    NoDriver,
    #[error("the CUDA driver did not initialise: {0}")]
    Init(driver::CuError),
    #[error("{0}")]
    Driver(#[from] driver::CuError),
    #[error("the NVIDIA driver supports CUDA {}; setpoint needs 12.0 or newer", version_text(*.0))]
    TooOld(i32),
    #[error("the CUDA driver reports no GPU")]
    NoGpu,
    #[error("GPU {index}: {source}")]
    Gpu {
        index: usize,
        source: driver::CuError,
    },
}

/// Initialises the driver and checks its version; the error says what is missing.
fn init_driver() -> Result<i32, ProbeError> {
    if !driver_present() {
        return Err(ProbeError::NoDriver);
    }
    // SAFETY: cuInit may be called any number of times.
    driver::ok("cuInit", unsafe { sys::cuInit(0) }).map_err(ProbeError::Init)?;
    let mut v = 0;
    // SAFETY: a pointer to a local.
    driver::ok("cuDriverGetVersion", unsafe {
        sys::cuDriverGetVersion(&mut v)
    })?;
    if v < MIN_DRIVER {
        return Err(ProbeError::TooOld(v));
    }
    Ok(v)
}

/// The GPUs of this host, or why there are none usable (no driver library, driver
/// initialisation failed, a driver too old, no device). Never panics.
pub fn probe() -> Result<Vec<GpuInfo>, ProbeError> {
    init_driver()?;
    let mut count = 0;
    // SAFETY: a pointer to a local.
    driver::ok("cuDeviceGetCount", unsafe {
        sys::cuDeviceGetCount(&mut count)
    })?;
    if count <= 0 {
        return Err(ProbeError::NoGpu);
    }
    (0..count as usize)
        .map(|index| {
            device::query(index)
                .map(|(info, _)| info)
                .map_err(|source| ProbeError::Gpu { index, source })
        })
        .collect()
}

/// `GPU-` and the 16 bytes as 8-4-4-4-12 hex digits, as nvidia-smi and NVML print UUIDs.
pub(crate) fn format_uuid(bytes: &[c_char; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_as_nvidia_smi_does() {
        let bytes: [c_char; 16] = [
            0x12,
            0x34,
            0x56,
            0x78,
            0x9a_u8 as i8 as _,
            0xbc_u8 as i8 as _,
            0x0d,
            0xef_u8 as i8 as _,
            0x01,
            0x23,
            0x45,
            0x67,
            0x89_u8 as i8 as _,
            0xab_u8 as i8 as _,
            0xcd_u8 as i8 as _,
            0xef_u8 as i8 as _,
        ];
        assert_eq!(
            format_uuid(&bytes),
            "GPU-12345678-9abc-0def-0123-456789abcdef"
        );
    }

    #[test]
    fn probing_without_a_driver_says_why_and_does_not_panic() {
        match probe() {
            Ok(gpus) => assert!(!gpus.is_empty()),
            Err(why) => assert!(
                ["CUDA driver", "GPU", "NVIDIA"]
                    .iter()
                    .any(|w| why.to_string().contains(w)),
                "unclear reason: {why}"
            ),
        }
    }

    #[test]
    fn every_kernel_has_its_abi_name_and_block() {
        let names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
        let distinct: std::collections::HashSet<&str> = names.iter().copied().collect();
        assert_eq!(distinct.len(), Kernel::COUNT, "{names:?}");
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(Kernel::GemmBf16.block(), 128);
        assert_eq!(Kernel::GemmBf16SmallM.block(), 128);
        assert_eq!(Kernel::GemmBf16Large.block(), 256);
        assert_eq!(Kernel::GemmBf16Wgmma.block(), 288);
        assert_eq!(Kernel::GemmBf16Wgmma.dynamic_smem(), 133_120);
        assert_eq!(Kernel::GemmBf16Large.dynamic_smem(), 0);
        assert_eq!(Kernel::GemmF32.block(), 256);
        assert_eq!(version_text(12080), "12.8");
        assert_eq!(version_text(13000), "13.0");
    }
}
