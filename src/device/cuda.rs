//! The CUDA backend: the project's own kernels (`kernels/*.cu`, contract in `kernels/ABI.md`)
//! launched through cudarc on one stream per lane.
//!
//! - **Probing, never panicking.** cudarc loads libcuda at run time and panics on first use
//!   when the library is missing, so [`probe`] checks for the library before touching the
//!   driver and turns every failure into a message.
//! - **One context per GPU** ([`CudaDevice`]): the primary context, the kernels loaded once
//!   (PTX from the build or from NVRTC, cached in the state dir), the SM count, the
//!   occupancy of each kernel, the stream-priority range and a device-memory account.
//! - **One stream per lane** ([`CudaBackend`]): created with a priority from the device's
//!   range (inference highest, training lowest). The lane's share is a CTA budget: every
//!   kernel takes its grid from the budget (grid-stride or persistent over tiles), so a
//!   share of `s` launches at most `ceil(s · SMs · blocks per SM)` CTAs. Large GEMMs are split
//!   into launches of bounded length, so a high-priority stream waits at most one launch
//!   behind a low-priority one (stream priority does not preempt running CTAs).
//!   With green contexts ([`super::green`]) a share is instead an SM partition: a lane has a
//!   stream per rung of the device's ladder and launches on the rung its share maps to.
//! - **Busy time** from CUDA events (timing enabled): the span from the first launch after a
//!   synchronisation to the synchronisation, summed, feeds the lane's accounting.
//! - **Device memory** is charged to the device's account at allocation and returned when a
//!   buffer drops; an allocation over the configured limit is an error that says so, not an
//!   out-of-memory crash.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg, sys,
};

use super::green::GreenLadder;
use super::{
    Activation, AdamParams, Backend, DeviceError, Gemm, SgdParams, check_labels, check_len,
};

/// Output tile of the GEMM kernels (ABI.md).
const GEMM_TILE: usize = 64;
/// Threads per block of the element-wise, reduction and `gemm_f32` kernels (ABI.md).
const BLOCK: u32 = 256;
/// Threads per block of `gemm_bf16` (ABI.md).
const BLOCK_BF16: u32 = 128;
/// Rows handled by one block of the softmax kernels (one warp per row, ABI.md).
const ROWS_PER_BLOCK: usize = 8;
/// Tiles one CTA computes in one GEMM launch at most: bounds how long a launch runs, and so
/// how long a higher-priority stream can wait behind it.
const TILES_PER_CTA_PER_LAUNCH: usize = 4;
/// Most partial sums `sum_partial` writes.
const MAX_SUM_BLOCKS: usize = 1024;

/// Kernels every device loads (the ABI's table).
pub const KERNELS: [&str; 14] = [
    "fill_f32",
    "gemm_f32",
    "gemm_bf16",
    "gemm_bf16_simt",
    "bias_act",
    "relu_grad",
    "col_sum",
    "softmax_xent",
    "softmax_rows",
    "sum_partial",
    "sgd_step",
    "adam_step",
    "f32_to_bf16",
    "bf16_to_f32",
];

/// What the driver says about one GPU.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
}

fn driver_err(what: &str, e: impl std::fmt::Debug) -> DeviceError {
    DeviceError::Unavailable(format!("{what}: {e:?}"))
}

/// Whether the CUDA driver library can be loaded. cudarc panics on first use without it, so
/// this runs before anything else touches the driver.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by its usual names.
    unsafe { sys::is_culib_present() }
}

/// The GPUs of this host, or why there are none usable (no driver library, driver
/// initialisation failed, no device). Never panics.
pub fn probe() -> Result<Vec<GpuInfo>, String> {
    if !driver_present() {
        return Err("the CUDA driver library (libcuda.so) was not found".into());
    }
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| "the CUDA driver library could not be used".to_string())?
        .map_err(|e| format!("the CUDA driver did not initialise: {e:?}"))?;
    if count <= 0 {
        return Err("the CUDA driver reports no GPU".into());
    }
    (0..count as usize)
        .map(|i| gpu_info(i).map_err(|e| format!("GPU {i}: {e}")))
        .collect()
}

fn gpu_info(ordinal: usize) -> Result<GpuInfo, DeviceError> {
    let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("cannot open the GPU", e))?;
    info_of(&ctx)
}

fn info_of(ctx: &Arc<CudaContext>) -> Result<GpuInfo, DeviceError> {
    let name = ctx.name().map_err(|e| driver_err("device name", e))?;
    let uuid = ctx.uuid().map_err(|e| driver_err("device uuid", e))?;
    let cc = ctx
        .compute_capability()
        .map_err(|e| driver_err("compute capability", e))?;
    let sm_count = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| driver_err("SM count", e))?;
    let total = ctx.total_mem().map_err(|e| driver_err("memory size", e))?;
    ctx.bind_to_thread()
        .map_err(|e| driver_err("cannot bind the context", e))?;
    let priority_range = cudarc::driver::result::stream::get_priority_range()
        .map_err(|e| driver_err("stream priority range", e))?;
    Ok(GpuInfo {
        index: ctx.ordinal(),
        name,
        uuid: format_uuid(&uuid.bytes),
        compute_capability: cc,
        sm_count: sm_count.max(1) as u32,
        total_memory: total as u64,
        priority_range,
    })
}

/// `GPU-` and the 16 bytes as 8-4-4-4-12 hex digits, as nvidia-smi and NVML print UUIDs.
pub fn format_uuid(bytes: &[std::ffi::c_char; 16]) -> String {
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

/// One GPU: its context, kernels and memory account, shared by the lanes on it.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    info: GpuInfo,
    funcs: HashMap<&'static str, CudaFunction>,
    /// Resident blocks per SM of the least-occupying 256-thread kernel.
    blocks_per_sm: u32,
    mem_limit: u64,
    mem_used: Arc<AtomicU64>,
    /// SM partitions, when shares are enforced by green contexts.
    green: Option<Arc<GreenLadder>>,
    /// Shared by every lane of the GPU: a sticky error on one fails them all.
    health: Arc<super::fault::DeviceHealth>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.info)
            .field("blocks_per_sm", &self.blocks_per_sm)
            .field("mem_limit", &self.mem_limit)
            .finish()
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`: loads the kernels (PTX built in, or compiled with NVRTC and cached
    /// under `cache_dir`), measures occupancy, and sets the memory limit (`None`: the device's
    /// memory).
    pub fn open(
        ordinal: usize,
        cache_dir: Option<&Path>,
        mem_limit: Option<u64>,
    ) -> Result<Arc<Self>, DeviceError> {
        Self::open_with(ordinal, cache_dir, mem_limit, false)
    }

    /// Like [`CudaDevice::open`]; with `green_contexts`, lanes' shares are SM partitions
    /// from a ladder of green contexts (see [`super::green`]) instead of CTA budgets, and a
    /// driver without them is an error that says so.
    pub fn open_with(
        ordinal: usize,
        cache_dir: Option<&Path>,
        mem_limit: Option<u64>,
        green_contexts: bool,
    ) -> Result<Arc<Self>, DeviceError> {
        if !driver_present() {
            return Err(DeviceError::Unavailable(
                "the CUDA driver library (libcuda.so) was not found".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| driver_err(&format!("cannot open GPU {ordinal}"), e))?;
        let info = info_of(&ctx)?;
        let arch = format!("{}{}", info.compute_capability.0, info.compute_capability.1);
        let modules = crate::kernels::load_ptx(cache_dir, &arch)
            .map_err(|e| DeviceError::Unavailable(format!("kernels: {e}")))?;
        let mut funcs = HashMap::new();
        for (module, ptx) in modules {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(|e| driver_err(&format!("cannot load kernel module {module}"), e))?;
            for &name in KERNELS.iter() {
                if funcs.contains_key(name) {
                    continue;
                }
                if let Ok(f) = m.load_function(name) {
                    funcs.insert(name, f);
                }
            }
        }
        // The tensor-core GEMM needs sm_80; everything else must be there.
        for &name in KERNELS.iter() {
            let optional = name == "gemm_bf16" && info.compute_capability.0 < 8;
            if !optional && !funcs.contains_key(name) {
                return Err(DeviceError::Unavailable(format!(
                    "kernel {name} is missing from the loaded modules"
                )));
            }
        }
        let mut blocks_per_sm = u32::MAX;
        for name in ["gemm_f32", "softmax_xent", "sum_partial", "adam_step"] {
            let b = funcs[name]
                .occupancy_max_active_blocks_per_multiprocessor(BLOCK, 0, None)
                .map_err(|e| driver_err(&format!("occupancy of {name}"), e))?;
            blocks_per_sm = blocks_per_sm.min(b.max(1));
        }
        let mem_limit = mem_limit
            .unwrap_or(info.total_memory)
            .min(info.total_memory);
        let green = if green_contexts {
            let ladder = GreenLadder::build(&ctx).map_err(|e| {
                DeviceError::Unavailable(format!("green contexts on GPU {ordinal}: {e}"))
            })?;
            Some(Arc::new(ladder))
        } else {
            None
        };
        let health = Arc::new(super::fault::DeviceHealth::new(format!(
            "cuda:{}",
            info.index
        )));
        Ok(Arc::new(CudaDevice {
            ctx,
            info,
            funcs,
            blocks_per_sm,
            mem_limit,
            mem_used: Arc::new(AtomicU64::new(0)),
            green,
            health,
        }))
    }

    /// The GPU's health, shared by every lane on it.
    pub fn health(&self) -> &Arc<super::fault::DeviceHealth> {
        &self.health
    }

    /// What the driver said about this GPU.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Most CTAs a lane may launch at once: SMs × resident blocks per SM.
    pub fn max_ctas(&self) -> usize {
        self.info.sm_count as usize * self.blocks_per_sm as usize
    }

    /// SMs of each rung of green contexts, smallest first; `None` when shares are CTA
    /// budgets.
    pub fn green_rungs(&self) -> Option<Vec<u32>> {
        self.green.as_ref().map(|g| g.rung_sms())
    }

    /// Device memory charged to setpoint's buffers on this GPU, bytes.
    pub fn memory_used(&self) -> u64 {
        self.mem_used.load(Ordering::Relaxed)
    }

    /// The configured limit on that, bytes.
    pub fn memory_limit(&self) -> u64 {
        self.mem_limit
    }

    /// A lane's backend: a stream of its own at `priority`, all CTAs until a share is set.
    pub fn lane_backend(
        self: &Arc<Self>,
        priority: StreamPriority,
    ) -> Result<CudaBackend, DeviceError> {
        let (least, greatest) = self.info.priority_range;
        let p = match priority {
            StreamPriority::Highest => greatest,
            StreamPriority::Lowest => least,
            StreamPriority::Normal => 0i32.clamp(greatest.min(least), greatest.max(least)),
        };
        let streams = match &self.green {
            Some(ladder) => ladder
                .streams(p)
                .map_err(|e| DeviceError::Unavailable(format!("cuda:{}: {e}", self.info.index)))?,
            None => vec![
                self.ctx
                    .new_stream_with_priority(p)
                    .map_err(|e| driver_err("cannot create a stream", e))?,
            ],
        };
        let top = streams.len() - 1;
        let backend = CudaBackend {
            dev: self.clone(),
            streams,
            rung: AtomicUsize::new(top),
            priority: p,
            budget: AtomicUsize::new(self.max_ctas()),
            busy: Mutex::new(BusyClock::default()),
        };
        backend.set_workers(self.max_ctas());
        Ok(backend)
    }
}

/// Device memory charged to a device's account while a buffer lives.
#[derive(Debug)]
struct MemCharge {
    used: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for MemCharge {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A buffer of `f32` on a GPU.
#[derive(Debug)]
pub struct CudaBuf {
    data: CudaSlice<f32>,
    _mem: MemCharge,
}

impl CudaBuf {
    /// The device memory.
    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.data
    }

    /// The device memory, writable (for baselines that write into it).
    pub fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.data
    }
}

/// A buffer of labels on a GPU, with a host copy for checking them against the classes.
#[derive(Debug)]
pub struct CudaLabels {
    data: CudaSlice<u32>,
    host: Vec<u32>,
    _mem: MemCharge,
}

/// A buffer of bf16 (raw bits) on a GPU.
#[derive(Debug)]
pub struct CudaBf16 {
    data: CudaSlice<u16>,
    _mem: MemCharge,
}

/// Sums the spans of work between synchronisations, timed by CUDA events.
#[derive(Debug, Default)]
struct BusyClock {
    start: Option<CudaEvent>,
    total: Duration,
    /// Busy spans times the CTA budget in force when each ended: what lanes are charged.
    charged: Duration,
}

/// A lane on a GPU: one stream with a priority (one per rung with green contexts), a CTA
/// budget, busy time from events.
pub struct CudaBackend {
    dev: Arc<CudaDevice>,
    /// One stream, or one per rung of the device's green contexts.
    streams: Vec<Arc<CudaStream>>,
    /// Index of the stream in use.
    rung: AtomicUsize,
    priority: i32,
    budget: AtomicUsize,
    busy: Mutex<BusyClock>,
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Green-context streams outlive the lane (buffers release on them): back to the
        // ladder, idle, for the next lane at this priority.
        if let Some(ladder) = &self.dev.green {
            let _ = self.synchronize();
            ladder.give_back(self.priority, std::mem::take(&mut self.streams));
        }
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.dev.info.index)
            .field("priority", &self.priority)
            .field("budget", &self.budget.load(Ordering::Relaxed))
            .finish()
    }
}

fn int(op: &'static str, what: &'static str, v: usize) -> Result<i32, DeviceError> {
    i32::try_from(v).map_err(|_| {
        DeviceError::Unavailable(format!(
            "{op}: {what} = {v} is over the kernels' 32-bit limit"
        ))
    })
}

impl CudaBackend {
    /// The device this lane is on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }

    /// The stream's priority (numerically lower is higher).
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// The stream in use, for baselines that launch on it (cuBLAS).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.streams[self
            .rung
            .load(Ordering::Relaxed)
            .min(self.streams.len() - 1)]
    }

    /// Busy time of this lane so far: the spans from the first launch after a
    /// synchronisation to that synchronisation, timed on the GPU.
    pub fn busy_time(&self) -> Duration {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn charge(&self, bytes: u64) -> Result<MemCharge, DeviceError> {
        let used = &self.dev.mem_used;
        let limit = self.dev.mem_limit;
        let mut cur = used.load(Ordering::Relaxed);
        loop {
            if cur + bytes > limit {
                return Err(DeviceError::Unavailable(format!(
                    "cuda:{}: allocating {} MiB would pass the device memory limit ({} MiB in \
                     use of {} MiB; set `memory_limit_mib` to change it)",
                    self.dev.info.index,
                    bytes.div_ceil(1 << 20),
                    cur >> 20,
                    limit >> 20
                )));
            }
            match used.compare_exchange_weak(cur, cur + bytes, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(MemCharge {
                        used: used.clone(),
                        bytes,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    fn alloc_zeroed<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<(CudaSlice<T>, MemCharge), DeviceError> {
        let charge = self.charge((len.max(1) * std::mem::size_of::<T>()) as u64)?;
        let data = self.stream().alloc_zeros::<T>(len.max(1)).map_err(|e| {
            DeviceError::Unavailable(format!(
                "cuda:{}: cannot allocate {} elements: {e:?}",
                self.dev.info.index, len
            ))
        })?;
        Ok((data, charge))
    }

    fn func(&self, name: &str) -> Result<&CudaFunction, DeviceError> {
        self.dev.funcs.get(name).ok_or_else(|| {
            DeviceError::Unavailable(format!(
                "kernel {name} is not available on cuda:{}",
                self.dev.info.index
            ))
        })
    }

    /// CTAs for `blocks` blocks of work: at most the budget, at least one.
    fn grid(&self, blocks: usize) -> u32 {
        blocks.clamp(1, self.budget.load(Ordering::Relaxed).max(1)) as u32
    }

    fn cfg(&self, blocks: usize, block: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.grid(blocks), 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn started(&self) -> Result<(), DeviceError> {
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if b.start.is_none() {
            let ev = self
                .stream()
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_err("event", e))?;
            b.start = Some(ev);
        }
        Ok(())
    }

    fn launched(
        r: Result<Option<(CudaEvent, CudaEvent)>, cudarc::driver::DriverError>,
        op: &str,
    ) -> Result<(), DeviceError> {
        r.map(|_| ())
            .map_err(|e| driver_err(&format!("{op}: launch failed"), e))
    }

    /// `C = alpha·op(A)·op(B) + beta·C` with bf16 inputs on tensor cores (f32 accumulate),
    /// or on the SIMT twin when `tensor_cores` is false.
    pub fn gemm_bf16(
        &self,
        g: Gemm,
        a: &CudaBf16,
        b: &CudaBf16,
        c: &mut CudaBuf,
        tensor_cores: bool,
    ) -> Result<(), DeviceError> {
        let name = if tensor_cores {
            "gemm_bf16"
        } else {
            "gemm_bf16_simt"
        };
        let block = if tensor_cores { BLOCK_BF16 } else { BLOCK };
        self.launch_gemm(name, block, g, &a.data, &b.data, &mut c.data)
    }

    /// Runs the GEMM kernel `name` (`Gemm` semantics, ABI.md arguments) in launches of at
    /// most `budget × TILES_PER_CTA_PER_LAUNCH` tiles, so one launch runs for a bounded time.
    fn launch_gemm<T>(
        &self,
        name: &'static str,
        block: u32,
        g: Gemm,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), DeviceError> {
        check_len(name, "a", a.len(), g.m * g.k)?;
        check_len(name, "b", b.len(), g.k * g.n)?;
        check_len(name, "c", c.len(), g.m * g.n)?;
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let (m, n, k) = (
            int(name, "m", g.m)?,
            int(name, "n", g.n)?,
            int(name, "k", g.k)?,
        );
        let (ta, tb) = (g.trans_a as i32, g.trans_b as i32);
        int(name, "m·k", g.m * g.k)?;
        int(name, "k·n", g.k * g.n)?;
        int(name, "m·n", g.m * g.n)?;
        let f = self.func(name)?;
        let tiles = g.m.div_ceil(GEMM_TILE) * g.n.div_ceil(GEMM_TILE);
        let per_launch = self.budget.load(Ordering::Relaxed).max(1) * TILES_PER_CTA_PER_LAUNCH;
        self.started()?;
        let mut begin = 0;
        while begin < tiles {
            let end = (begin + per_launch).min(tiles);
            let (b0, b1) = (begin as i32, end as i32);
            let mut l = self.stream().launch_builder(f);
            l.arg(a).arg(b).arg(&mut *c);
            l.arg(&m).arg(&n).arg(&k).arg(&ta).arg(&tb);
            l.arg(&g.alpha).arg(&g.beta).arg(&b0).arg(&b1);
            // SAFETY: arguments follow the ABI; lengths were checked above.
            Self::launched(unsafe { l.launch(self.cfg(end - begin, block)) }, name)?;
            begin = end;
        }
        Ok(())
    }

    /// A bf16 buffer (raw bits) converted from `src` on the device (round to nearest even).
    pub fn to_bf16(&self, src: &CudaBuf, len: usize) -> Result<CudaBf16, DeviceError> {
        check_len("f32_to_bf16", "src", src.data.len(), len)?;
        let (mut data, charge) = self.alloc_zeroed::<u16>(len)?;
        let n = int("f32_to_bf16", "len", len)?;
        let f = self.func("f32_to_bf16")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&src.data).arg(&mut data).arg(&n);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(len.div_ceil(BLOCK as usize), BLOCK)) },
            "f32_to_bf16",
        )?;
        Ok(CudaBf16 { data, _mem: charge })
    }

    /// An f32 buffer converted back from bf16 (exact).
    pub fn from_bf16(&self, src: &CudaBf16, len: usize) -> Result<CudaBuf, DeviceError> {
        check_len("bf16_to_f32", "src", src.data.len(), len)?;
        let mut out = self.alloc(len)?;
        let n = int("bf16_to_f32", "len", len)?;
        let f = self.func("bf16_to_f32")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&src.data).arg(&mut out.data).arg(&n);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(len.div_ceil(BLOCK as usize), BLOCK)) },
            "bf16_to_f32",
        )?;
        Ok(out)
    }

    /// The bf16 device memory of a buffer (for baselines).
    pub fn bf16_slice(buf: &CudaBf16) -> &CudaSlice<u16> {
        &buf.data
    }
}

/// Elements per block-wide launch of the element-wise kernels.
fn blocks_for(len: usize) -> usize {
    len.div_ceil(BLOCK as usize)
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Labels = CudaLabels;

    fn name(&self) -> String {
        format!("cuda:{}", self.dev.info.index)
    }

    fn max_workers(&self) -> usize {
        self.dev.max_ctas()
    }

    fn workers(&self) -> usize {
        self.budget.load(Ordering::Relaxed)
    }

    fn set_workers(&self, workers: usize) {
        let max = self.dev.max_ctas();
        let workers = workers.clamp(1, max);
        let Some(ladder) = &self.dev.green else {
            self.budget.store(workers, Ordering::Relaxed);
            return;
        };
        // Green contexts: the rung whose SMs cover the share, and a grid that fills them.
        let rung = ladder.rung_for(workers as f64 / max as f64);
        if rung != self.rung.load(Ordering::Relaxed) {
            // Work queued on the old rung's stream finishes (and its busy span closes)
            // before work goes to the new one.
            if let Err(e) = self.synchronize() {
                tracing::warn!("cuda:{}: {e}", self.dev.info.index);
            }
            self.rung.store(rung, Ordering::Relaxed);
        }
        let sms = ladder.sms_of(rung) as usize;
        self.budget.store(
            (sms * self.dev.blocks_per_sm as usize).clamp(1, max),
            Ordering::Relaxed,
        );
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf, DeviceError> {
        let (data, charge) = self.alloc_zeroed::<f32>(len)?;
        Ok(CudaBuf { data, _mem: charge })
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.data.len()
    }

    fn write(&self, dst: &mut CudaBuf, data: &[f32]) -> Result<(), DeviceError> {
        check_len("write", "dst", dst.data.len(), data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let mut view = dst.data.slice_mut(..data.len());
        self.stream()
            .memcpy_htod(data, &mut view)
            .map_err(|e| driver_err("write", e))
    }

    fn read(&self, src: &CudaBuf, out: &mut [f32]) -> Result<(), DeviceError> {
        check_len("read", "src", src.data.len(), out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let view = src.data.slice(..out.len());
        self.stream()
            .memcpy_dtoh(&view, out)
            .map_err(|e| driver_err("read", e))?;
        self.synchronize()
    }

    fn fill(&self, buf: &mut CudaBuf, len: usize, value: f32) -> Result<(), DeviceError> {
        check_len("fill", "buf", buf.data.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = int("fill", "len", len)?;
        let f = self.func("fill_f32")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&mut buf.data).arg(&n).arg(&value);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(blocks_for(len), BLOCK)) },
            "fill",
        )
    }

    fn alloc_labels(&self, len: usize) -> Result<CudaLabels, DeviceError> {
        let (data, charge) = self.alloc_zeroed::<u32>(len)?;
        Ok(CudaLabels {
            data,
            host: vec![0; len],
            _mem: charge,
        })
    }

    fn write_labels(&self, dst: &mut CudaLabels, labels: &[u32]) -> Result<(), DeviceError> {
        check_len("write_labels", "dst", dst.host.len(), labels.len())?;
        if labels.is_empty() {
            return Ok(());
        }
        dst.host[..labels.len()].copy_from_slice(labels);
        let mut view = dst.data.slice_mut(..labels.len());
        self.stream()
            .memcpy_htod(labels, &mut view)
            .map_err(|e| driver_err("write_labels", e))
    }

    fn gemm(&self, g: Gemm, a: &CudaBuf, b: &CudaBuf, c: &mut CudaBuf) -> Result<(), DeviceError> {
        self.launch_gemm("gemm_f32", BLOCK, g, &a.data, &b.data, &mut c.data)
    }

    fn bias_act(
        &self,
        x: &mut CudaBuf,
        bias: &CudaBuf,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), DeviceError> {
        check_len("bias_act", "x", x.data.len(), rows * cols)?;
        check_len("bias_act", "bias", bias.data.len(), cols)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let (r, c) = (
            int("bias_act", "rows", rows)?,
            int("bias_act", "cols", cols)?,
        );
        int("bias_act", "rows·cols", rows * cols)?;
        let relu = matches!(act, Activation::Relu) as i32;
        let f = self.func("bias_act")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&mut x.data)
            .arg(&bias.data)
            .arg(&r)
            .arg(&c)
            .arg(&relu);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(blocks_for(rows * cols), BLOCK)) },
            "bias_act",
        )
    }

    fn relu_grad(&self, grad: &mut CudaBuf, act: &CudaBuf, len: usize) -> Result<(), DeviceError> {
        check_len("relu_grad", "grad", grad.data.len(), len)?;
        check_len("relu_grad", "act", act.data.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = int("relu_grad", "len", len)?;
        let f = self.func("relu_grad")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&mut grad.data).arg(&act.data).arg(&n);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(blocks_for(len), BLOCK)) },
            "relu_grad",
        )
    }

    fn col_sum(
        &self,
        x: &CudaBuf,
        rows: usize,
        cols: usize,
        out: &mut CudaBuf,
    ) -> Result<(), DeviceError> {
        check_len("col_sum", "x", x.data.len(), rows * cols)?;
        check_len("col_sum", "out", out.data.len(), cols)?;
        if cols == 0 {
            return Ok(());
        }
        let (r, c) = (int("col_sum", "rows", rows)?, int("col_sum", "cols", cols)?);
        int("col_sum", "rows·cols", rows * cols)?;
        let f = self.func("col_sum")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&x.data).arg(&r).arg(&c).arg(&mut out.data);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(blocks_for(cols), BLOCK)) },
            "col_sum",
        )
    }

    fn softmax_xent(
        &self,
        logits: &CudaBuf,
        labels: &CudaLabels,
        rows: usize,
        cols: usize,
        grad_scale: f32,
        grad: &mut CudaBuf,
        loss_acc: &mut CudaBuf,
        correct_acc: &mut CudaBuf,
    ) -> Result<(), DeviceError> {
        const OP: &str = "softmax_xent";
        check_len(OP, "logits", logits.data.len(), rows * cols)?;
        check_len(OP, "labels", labels.host.len(), rows)?;
        check_len(OP, "grad", grad.data.len(), rows * cols)?;
        check_len(OP, "loss_acc", loss_acc.data.len(), rows)?;
        check_len(OP, "correct_acc", correct_acc.data.len(), rows)?;
        check_labels(OP, &labels.host, rows, cols)?;
        if cols == 0 || rows == 0 {
            return Ok(());
        }
        let (r, c) = (int(OP, "rows", rows)?, int(OP, "cols", cols)?);
        int(OP, "rows·cols", rows * cols)?;
        let f = self.func(OP)?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&logits.data)
            .arg(&labels.data)
            .arg(&r)
            .arg(&c)
            .arg(&grad_scale);
        l.arg(&mut grad.data)
            .arg(&mut loss_acc.data)
            .arg(&mut correct_acc.data);
        // SAFETY: ABI arguments, lengths and labels checked.
        Self::launched(
            unsafe { l.launch(self.cfg(rows.div_ceil(ROWS_PER_BLOCK), BLOCK)) },
            OP,
        )
    }

    fn softmax(&self, x: &mut CudaBuf, rows: usize, cols: usize) -> Result<(), DeviceError> {
        check_len("softmax", "x", x.data.len(), rows * cols)?;
        if cols == 0 || rows == 0 {
            return Ok(());
        }
        let (r, c) = (int("softmax", "rows", rows)?, int("softmax", "cols", cols)?);
        int("softmax", "rows·cols", rows * cols)?;
        let f = self.func("softmax_rows")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&mut x.data).arg(&r).arg(&c);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(rows.div_ceil(ROWS_PER_BLOCK), BLOCK)) },
            "softmax",
        )
    }

    fn sum(&self, x: &CudaBuf, len: usize) -> Result<f64, DeviceError> {
        check_len("sum", "x", x.data.len(), len)?;
        if len == 0 {
            return Ok(0.0);
        }
        let n = int("sum", "len", len)?;
        let blocks = blocks_for(len).min(MAX_SUM_BLOCKS);
        let cfg = self.cfg(blocks, BLOCK);
        let grid = cfg.grid_dim.0 as usize;
        let (mut partial, _charge) = self.alloc_zeroed::<f64>(grid)?;
        let f = self.func("sum_partial")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&x.data).arg(&n).arg(&mut partial);
        // SAFETY: ABI arguments; `partial` holds one value per block of the grid.
        Self::launched(unsafe { l.launch(cfg) }, "sum")?;
        let mut host = vec![0f64; grid];
        self.stream()
            .memcpy_dtoh(&partial, host.as_mut_slice())
            .map_err(|e| driver_err("sum", e))?;
        self.synchronize()?;
        Ok(host.iter().sum())
    }

    fn sgd_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        velocity: &mut CudaBuf,
        len: usize,
        hp: SgdParams,
    ) -> Result<(), DeviceError> {
        check_len("sgd_step", "param", param.data.len(), len)?;
        check_len("sgd_step", "grad", grad.data.len(), len)?;
        check_len("sgd_step", "velocity", velocity.data.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        let n = int("sgd_step", "len", len)?;
        let f = self.func("sgd_step")?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&mut param.data)
            .arg(&grad.data)
            .arg(&mut velocity.data)
            .arg(&n);
        l.arg(&hp.lr).arg(&hp.momentum).arg(&hp.weight_decay);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(
            unsafe { l.launch(self.cfg(blocks_for(len), BLOCK)) },
            "sgd_step",
        )
    }

    fn adam_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        len: usize,
        hp: AdamParams,
    ) -> Result<(), DeviceError> {
        const OP: &str = "adam_step";
        check_len(OP, "param", param.data.len(), len)?;
        check_len(OP, "grad", grad.data.len(), len)?;
        check_len(OP, "m", m.data.len(), len)?;
        check_len(OP, "v", v.data.len(), len)?;
        if len == 0 {
            return Ok(());
        }
        // The same bias corrections as the CPU backend, in f64 on the host.
        let t = hp.t.max(1) as i32;
        let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
        let step_size = (hp.lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let n = int(OP, "len", len)?;
        let f = self.func(OP)?;
        self.started()?;
        let mut l = self.stream().launch_builder(f);
        l.arg(&mut param.data)
            .arg(&grad.data)
            .arg(&mut m.data)
            .arg(&mut v.data)
            .arg(&n);
        l.arg(&hp.beta1)
            .arg(&hp.beta2)
            .arg(&hp.eps)
            .arg(&hp.weight_decay);
        l.arg(&step_size).arg(&inv_sqrt_bc2);
        // SAFETY: ABI arguments, lengths checked.
        Self::launched(unsafe { l.launch(self.cfg(blocks_for(len), BLOCK)) }, OP)
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        let mut b = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let start = b.start.take();
        let end = match start {
            Some(_) => Some(
                self.stream()
                    .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(|e| driver_err("event", e))?,
            ),
            None => None,
        };
        self.stream()
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))?;
        if let (Some(s), Some(e)) = (start, end) {
            let ms = s
                .elapsed_ms(&e)
                .map_err(|e| driver_err("event timing", e))?;
            let span = Duration::from_secs_f64(ms.max(0.0) as f64 / 1000.0);
            b.total += span;
            b.charged += span * self.budget.load(Ordering::Relaxed).max(1) as u32;
        }
        Ok(())
    }

    fn lane_time(&self) -> Duration {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).charged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_as_nvidia_smi_does() {
        let bytes: [std::ffi::c_char; 16] = [
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
                why.contains("CUDA driver") || why.contains("GPU"),
                "unclear reason: {why}"
            ),
        }
    }
}
