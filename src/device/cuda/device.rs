//! One GPU: its primary context, kernels, occupancy, memory account, health and, when shares
//! are SM partitions, its green contexts.

use std::ffi::{CString, c_char};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::sys;

use super::backend::CudaBackend;
use super::driver::{self, CuError, Current};
use super::green::GreenContexts;
use super::place::Funcs;
use super::{GpuInfo, Kernel, StreamPriority};
use crate::device::DeviceError;
use crate::device::fault::DeviceHealth;
use crate::kernels::{self, CudaArch, ImageOrigin, KernelImage};

/// One GPU, shared by the lanes and buffers on it.
pub struct CudaDevice {
    pub(super) dev: sys::CUdevice,
    /// The retained primary context: allocations, and lanes with CTA budgets.
    pub(super) primary: sys::CUcontext,
    pub(super) info: GpuInfo,
    libraries: Vec<sys::CUlibrary>,
    pub(super) kernels: [Option<sys::CUkernel>; Kernel::COUNT],
    pub(super) funcs: Funcs,
    /// Where each module's code came from.
    origins: Vec<(&'static str, ImageOrigin)>,
    /// Resident blocks per SM of the least-occupying 256-thread kernel: the unit of a CTA
    /// budget.
    pub(super) blocks_per_sm: u32,
    /// Resident blocks per SM of each kernel at its own block size (0: not measured).
    resident: [u32; Kernel::COUNT],
    pub(super) mem_limit: u64,
    pub(super) mem_used: AtomicU64,
    pub(super) green: Option<GreenContexts>,
    pub(super) health: Arc<DeviceHealth>,
    pub(super) next_lane: AtomicU64,
    /// Buffers keep bf16 copies for bf16 GEMMs ([`super::shadow`]).
    bf16_copies: bool,
    /// Repeated bodies may go out as CUDA Graphs ([`OpenOptions::graphs`]).
    graphs: bool,
}

// SAFETY: the raw handles are driver handles, valid on any thread with their context pushed,
// which every call does; the mutable state is atomic or behind mutexes.
unsafe impl Send for CudaDevice {}
// SAFETY: as above.
unsafe impl Sync for CudaDevice {}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.info)
            .field("blocks_per_sm", &self.blocks_per_sm)
            .field("mem_limit", &self.mem_limit)
            .field("kernels", &self.origins)
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Unavailable(format!("{what}: {e}"))
}

/// What the driver says about GPU `ordinal`, and its device handle. Retains and releases
/// the primary context to read the stream priorities.
pub(super) fn query(ordinal: usize) -> Result<(GpuInfo, sys::CUdevice), CuError> {
    let mut dev: sys::CUdevice = 0;
    // SAFETY: pointers to locals; the driver is initialised (probe, open).
    unsafe {
        driver::ok("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal as i32))?;
        let mut name = [0 as c_char; 256];
        driver::ok(
            "cuDeviceGetName",
            sys::cuDeviceGetName(name.as_mut_ptr(), 256, dev),
        )?;
        let mut uuid: sys::CUuuid = std::mem::zeroed();
        driver::ok("cuDeviceGetUuid", sys::cuDeviceGetUuid_v2(&mut uuid, dev))?;
        let attr = |a: sys::CUdevice_attribute| -> Result<i32, CuError> {
            let mut v = 0;
            driver::ok(
                "cuDeviceGetAttribute",
                sys::cuDeviceGetAttribute(&mut v, a, dev),
            )?;
            Ok(v)
        };
        use sys::CUdevice_attribute as A;
        let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let mut total = 0usize;
        driver::ok(
            "cuDeviceTotalMem",
            sys::cuDeviceTotalMem_v2(&mut total, dev),
        )?;
        let mut version = 0;
        driver::ok("cuDriverGetVersion", sys::cuDriverGetVersion(&mut version))?;
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        driver::ok(
            "cuDevicePrimaryCtxRetain",
            sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
        )?;
        let range = Current::push(ctx).and_then(|_cur| {
            let (mut least, mut greatest) = (0, 0);
            driver::ok(
                "cuCtxGetStreamPriorityRange",
                sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest),
            )
            .map(|()| (least, greatest))
        });
        let _ = sys::cuDevicePrimaryCtxRelease_v2(dev);
        let priority_range = range?;
        let name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        Ok((
            GpuInfo {
                index: ordinal,
                name,
                uuid: super::format_uuid(&uuid.bytes),
                compute_capability: (major, minor),
                sm_count: sms.max(1) as u32,
                total_memory: total as u64,
                priority_range,
                driver_version: version,
            },
            dev,
        ))
    }
}

/// Why no image of a kernel module could be loaded.
#[derive(Debug, thiserror::Error)]
enum LibraryError {
    /// NVRTC could not compile one, after the driver refused the embedded images (if any),
    /// each named by its origin with the driver's reason.
    #[error("{}", refused_and(.refused, .source))]
    Compile {
        refused: Vec<String>,
        source: kernels::KernelError,
    },
    /// The driver refused the PTX NVRTC compiled.
    #[error("the driver refused the NVRTC PTX: {0}")]
    NvrtcPtx(CuError),
}

fn refused_and(refused: &[String], e: &kernels::KernelError) -> String {
    if refused.is_empty() {
        e.to_string()
    } else {
        format!("the driver refused {} and {e}", refused.join(", "))
    }
}

/// A library loaded from the first image of `module` the driver takes: the embedded SASS,
/// the embedded PTX, else PTX from NVRTC (cached under `cache_dir`).
fn load_library(
    module: &kernels::KernelSource,
    arch: &CudaArch,
    cache_dir: Option<&Path>,
) -> Result<(sys::CUlibrary, ImageOrigin), LibraryError> {
    let mut refused = Vec::new();
    for (image, origin) in kernels::embedded_images(module, arch) {
        match load_image(&image) {
            Ok(lib) => return Ok((lib, origin)),
            Err(e) => refused.push(format!("{}: {e}", origin.as_str())),
        }
    }
    let (image, origin, _log) = kernels::compiled_image(module, arch, cache_dir)
        .map_err(|source| LibraryError::Compile { refused, source })?;
    load_image(&image)
        .map(|lib| (lib, origin))
        .map_err(LibraryError::NvrtcPtx)
}

/// Lets `k` launch with `bytes` of dynamic shared memory (past the default 48 KB), on `dev`
/// in every context.
fn allow_dynamic_smem(k: sys::CUkernel, dev: sys::CUdevice, bytes: u32) -> Result<(), CuError> {
    // SAFETY: a live kernel of a loaded library and a valid device.
    driver::ok("cuKernelSetAttribute", unsafe {
        sys::cuKernelSetAttribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
            k,
            dev,
        )
    })
}

fn load_image(image: &KernelImage) -> Result<sys::CUlibrary, CuError> {
    // PTX goes to the driver NUL-terminated; a cubin is an ELF image, copied to 8-byte
    // aligned memory (the embedded bytes carry no alignment).
    let ptx;
    let mut aligned: Vec<u64> = Vec::new();
    let data: *const std::ffi::c_void = match image {
        KernelImage::Sass(bytes) => {
            aligned.resize(bytes.len().div_ceil(8), 0);
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()].copy_from_slice(bytes);
            aligned.as_ptr().cast()
        }
        KernelImage::Ptx(text) => {
            ptx = CString::new(text.as_str()).unwrap_or_default();
            ptx.as_ptr().cast()
        }
    };
    let mut lib: sys::CUlibrary = std::ptr::null_mut();
    // SAFETY: `data` is a whole cubin or NUL-terminated PTX that outlives the call; no
    // options are passed.
    driver::ok("cuLibraryLoadData", unsafe {
        sys::cuLibraryLoadData(
            &mut lib,
            data,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    })?;
    Ok(lib)
}

/// How a GPU is opened, beyond its ordinal and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Lanes' shares are SM partitions (see [`super::green`]) instead of CTA budgets; a
    /// driver or GPU without them is an error that says why.
    pub green_contexts: bool,
    /// On compute capability 9.0, load the sm_90a module and launch `gemm_bf16_wgmma` where
    /// [`super::choice::choose_gemm_at`] picks it (`device.gemm_wgmma`). A module that does
    /// not load leaves the other kernels in charge, with a warning.
    pub wgmma: bool,
    /// bf16 GEMMs convert both operands on every product and keep no bf16 copies (see
    /// [`super::shadow`]): how they ran before the copies, kept for comparisons.
    pub convert_every_gemm: bool,
    /// A lane's repeated work (an inference batch, a training step) goes out as one CUDA
    /// Graph launch when it repeats an earlier run's kernels ([`super::graph`];
    /// `device.cuda_graphs`).
    pub graphs: bool,
}

impl CudaDevice {
    /// Opens GPU `ordinal` with CTA budgets; see [`CudaDevice::open_with`].
    pub fn open(
        ordinal: usize,
        cache_dir: Option<&Path>,
        mem_limit: Option<u64>,
    ) -> Result<Arc<Self>, DeviceError> {
        Self::open_with(ordinal, cache_dir, mem_limit, OpenOptions::default())
    }

    /// Opens GPU `ordinal`: retains its primary context, loads the kernels (embedded code,
    /// else NVRTC with `cache_dir` as the cache), measures occupancy and sets the memory
    /// limit (`None`: the device's memory), as `opts` asks.
    pub fn open_with(
        ordinal: usize,
        cache_dir: Option<&Path>,
        mem_limit: Option<u64>,
        opts: OpenOptions,
    ) -> Result<Arc<Self>, DeviceError> {
        super::init_driver().map_err(|e| DeviceError::Unavailable(e.to_string()))?;
        let (info, dev) = query(ordinal).map_err(|e| unavailable(&format!("GPU {ordinal}"), e))?;
        let arch = CudaArch::of_capability(info.compute_capability.0, info.compute_capability.1);
        if let Some(why) = kernels::unusable_reason(&arch) {
            return Err(DeviceError::Unavailable(why));
        }
        let mut primary: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: a live device; released in Drop.
        driver::ok("cuDevicePrimaryCtxRetain", unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut primary, dev)
        })
        .map_err(|e| unavailable(&format!("cannot open GPU {ordinal}"), e))?;
        let mut d = CudaDevice {
            dev,
            primary,
            health: Arc::new(DeviceHealth::new(format!("cuda:{ordinal}"))),
            mem_limit: mem_limit
                .unwrap_or(info.total_memory)
                .min(info.total_memory),
            info,
            libraries: Vec::new(),
            kernels: [None; Kernel::COUNT],
            funcs: Funcs::empty(),
            origins: Vec::new(),
            blocks_per_sm: 1,
            resident: [0; Kernel::COUNT],
            mem_used: AtomicU64::new(0),
            green: None,
            next_lane: AtomicU64::new(1),
            bf16_copies: !opts.convert_every_gemm,
            graphs: opts.graphs,
        };
        d.load_kernels(&arch, cache_dir, opts.wgmma)?;
        if opts.green_contexts {
            let g = GreenContexts::build(dev, primary, d.info.driver_version, d.kernels)
                .map_err(|e| unavailable(&format!("green contexts on GPU {ordinal}"), e))?;
            d.green = Some(g);
        }
        Ok(Arc::new(d))
    }

    /// Loads every module, finds every kernel, resolves them in the primary context and
    /// measures occupancy. The sm_90a module (`gemm_bf16_wgmma`) only with `wgmma` on
    /// compute capability 9.0, the only architecture its code runs on.
    fn load_kernels(
        &mut self,
        arch: &CudaArch,
        cache_dir: Option<&Path>,
        wgmma: bool,
    ) -> Result<(), DeviceError> {
        let _cur = Current::push(self.primary).map_err(|e| unavailable("cannot use the GPU", e))?;
        let sm90a = wgmma && self.info.compute_capability == (9, 0);
        self.load_modules(arch, cache_dir, sm90a)?;
        self.allow_large_smem();
        self.check_kernels()?;
        self.funcs = Funcs::resolve(&self.kernels).map_err(|e| unavailable("kernels", e))?;
        self.measure_occupancy()
    }

    /// Loads the portable modules, and the sm_90a ones when `sm90a`, and finds their kernels.
    /// A portable module that does not load is an error; an sm_90a one is only left out.
    /// The primary context must be current.
    fn load_modules(
        &mut self,
        arch: &CudaArch,
        cache_dir: Option<&Path>,
        sm90a: bool,
    ) -> Result<(), DeviceError> {
        for module in kernels::sources() {
            let portable = module.target == kernels::ModuleTarget::Portable;
            if !portable && !sm90a {
                continue;
            }
            let (lib, origin) = match load_library(module, arch, cache_dir) {
                Ok(loaded) => loaded,
                Err(e) if !portable => {
                    tracing::warn!(
                        "kernel module {} did not load, so its kernels are not used: {e}",
                        module.module
                    );
                    continue;
                }
                Err(e) => {
                    return Err(DeviceError::Unavailable(format!(
                        "kernel module {}: {e}",
                        module.module
                    )));
                }
            };
            self.libraries.push(lib);
            self.origins.push((module.module, origin));
            self.find_kernels(lib);
        }
        Ok(())
    }

    /// Raises the dynamic shared memory limit of the kernels launched with more than the
    /// default 48 KB; a kernel the limit cannot be raised for is not used.
    fn allow_large_smem(&mut self) {
        for k in Kernel::ALL.into_iter().filter(|k| k.dynamic_smem() > 0) {
            if let Some(handle) = self.kernels[k.index()]
                && let Err(e) = allow_dynamic_smem(handle, self.dev, k.dynamic_smem())
            {
                tracing::warn!("{} is not used: {e}", k.name());
                self.kernels[k.index()] = None;
            }
        }
    }

    /// Fails unless every kernel is there, but for the tensor-core GEMMs below sm_80 and the
    /// wgmma one (sm_90a and its option).
    fn check_kernels(&self) -> Result<(), DeviceError> {
        for k in Kernel::ALL {
            let tensor_cores = matches!(
                k,
                Kernel::GemmBf16 | Kernel::GemmBf16SmallM | Kernel::GemmBf16Large
            );
            let optional =
                (tensor_cores && self.info.compute_capability.0 < 8) || k == Kernel::GemmBf16Wgmma;
            if !optional && self.kernels[k.index()].is_none() {
                return Err(DeviceError::Unavailable(format!(
                    "kernel {} is missing from the loaded modules",
                    k.name()
                )));
            }
        }
        Ok(())
    }

    /// Measures each kernel's resident blocks per SM and the CTA budget's unit. The budget's
    /// unit comes from 256-thread kernels, which must answer; any other kernel not measured
    /// only keeps its budget unscaled. The primary context must be current.
    fn measure_occupancy(&mut self) -> Result<(), DeviceError> {
        let unit = [
            Kernel::GemmF32,
            Kernel::SoftmaxXent,
            Kernel::SumPartial,
            Kernel::Adam,
        ];
        let mut resident = [0u32; Kernel::COUNT];
        for k in unit {
            resident[k.index()] = self.occupancy(k)?;
        }
        for k in Kernel::ALL.into_iter().filter(|k| !unit.contains(k)) {
            resident[k.index()] = self.occupancy(k).unwrap_or(0);
        }
        self.blocks_per_sm = unit
            .iter()
            .map(|k| resident[k.index()].max(1))
            .min()
            .unwrap_or(1);
        self.resident = resident;
        Ok(())
    }

    /// Resident blocks per SM of `k` at its own block size and dynamic shared memory.
    fn occupancy(&self, k: Kernel) -> Result<u32, DeviceError> {
        let f = self
            .funcs
            .get(k)
            .ok_or_else(|| unavailable("kernels", k.name()))?;
        let mut n = 0;
        // SAFETY: a live function of the current (primary) context.
        driver::ok("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
            sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                &mut n,
                f,
                k.block() as i32,
                k.dynamic_smem() as usize,
            )
        })
        .map_err(|e| unavailable(&format!("occupancy of {}", k.name()), e))?;
        Ok(n.max(0) as u32)
    }

    /// CTAs of `k` that hold the SMs a budget of `budget` CTAs (counted in
    /// [`Self::blocks_per_sm`] units) holds: fewer for a kernel that fits fewer per SM
    /// (`gemm_bf16_128` by its registers), so that it does not spread over more SMs.
    pub(super) fn budget_for(&self, k: Kernel, budget: usize) -> usize {
        super::launch::scaled_budget(budget, self.resident[k.index()], self.blocks_per_sm)
    }

    /// Finds the kernels of a loaded library that no earlier library had.
    fn find_kernels(&mut self, lib: sys::CUlibrary) {
        for k in Kernel::ALL {
            let name = CString::new(k.name()).unwrap_or_default();
            let mut handle: sys::CUkernel = std::ptr::null_mut();
            // SAFETY: a live library and a NUL-terminated name; a miss is an error code.
            let found = unsafe { sys::cuLibraryGetKernel(&mut handle, lib, name.as_ptr()) };
            if found == sys::cudaError_enum::CUDA_SUCCESS && self.kernels[k.index()].is_none() {
                self.kernels[k.index()] = Some(handle);
            }
        }
    }

    /// Whether `gemm_bf16_wgmma` is loaded and may be launched (see [`OpenOptions::wgmma`]).
    pub fn wgmma(&self) -> bool {
        self.kernels[Kernel::GemmBf16Wgmma.index()].is_some()
    }

    /// Whether lanes queue repeated work as CUDA Graphs (see [`OpenOptions::graphs`]).
    pub fn graphs(&self) -> bool {
        self.graphs
    }

    /// Whether buffers keep bf16 copies for bf16 GEMMs (not with
    /// [`OpenOptions::convert_every_gemm`]).
    pub fn bf16_copies(&self) -> bool {
        self.bf16_copies
    }

    /// Whether the GPU has bf16 tensor cores (sm_80 and newer).
    pub fn tensor_cores(&self) -> bool {
        self.info.compute_capability.0 >= 8
    }

    /// What the driver said about this GPU.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The device's health, shared by its lanes: failed after a sticky CUDA error.
    pub fn health(&self) -> &Arc<DeviceHealth> {
        &self.health
    }

    /// Most CTAs a lane may launch at once: SMs × resident blocks per SM.
    pub fn max_ctas(&self) -> usize {
        self.info.sm_count as usize * self.blocks_per_sm as usize
    }

    /// SMs of each partition group when shares are SM partitions (green contexts); `None`
    /// with CTA budgets.
    pub(crate) fn green_groups(&self) -> Option<Vec<u32>> {
        self.green.as_ref().map(GreenContexts::group_sms)
    }

    /// Device memory charged to setpoint's buffers on this GPU, bytes.
    pub fn memory_used(&self) -> u64 {
        self.mem_used.load(Ordering::Relaxed)
    }

    /// The configured limit on that, bytes.
    pub(crate) fn memory_limit(&self) -> u64 {
        self.mem_limit
    }

    /// A lane's backend: a stream of its own at `priority` (or partition leases with green
    /// contexts), all CTAs until a share is set.
    pub fn lane_backend(
        self: &Arc<Self>,
        priority: StreamPriority,
    ) -> Result<CudaBackend, DeviceError> {
        self.health.check()?;
        let (least, greatest) = self.info.priority_range;
        let p = match priority {
            StreamPriority::Highest => greatest,
            StreamPriority::Lowest => least,
            StreamPriority::Normal => 0i32.clamp(greatest.min(least), greatest.max(least)),
        };
        CudaBackend::new(self.clone(), priority, p)
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Green contexts first: they retain the primary context.
        self.green = None;
        if let Ok(_cur) = Current::push(self.primary) {
            for &lib in &self.libraries {
                // SAFETY: every lane and buffer holds the device alive, so none is left.
                unsafe {
                    let _ = sys::cuLibraryUnload(lib);
                }
            }
        }
        // SAFETY: retained in `open_with`, released once.
        unsafe {
            let _ = sys::cuDevicePrimaryCtxRelease_v2(self.dev);
        }
    }
}
