//! Device buffers, charged to their GPU's memory account while they live, and the
//! page-locked staging arena each lane copies through.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys;

use super::device::CudaDevice;
use super::driver::{self, CuError, Current};
use super::place::Place;
use super::shadow::Shadow;
use crate::device::DeviceError;
use crate::util::sync;

/// Device memory of one buffer, in the device's primary context (green contexts share its
/// address space), freed and uncharged when dropped.
#[derive(Debug)]
pub(super) struct DevMem {
    pub(super) ptr: sys::CUdeviceptr,
    bytes: u64,
    dev: Arc<CudaDevice>,
}

impl DevMem {
    /// `bytes` of zeroed device memory, or an error naming the memory limit when it would
    /// pass it.
    pub(super) fn alloc(dev: &Arc<CudaDevice>, bytes: usize) -> Result<DevMem, DeviceError> {
        dev.health.check()?;
        let bytes = bytes.max(1) as u64;
        let used = &dev.mem_used;
        let mut cur = used.load(Ordering::Relaxed);
        loop {
            if cur + bytes > dev.mem_limit {
                return Err(DeviceError::Unavailable(format!(
                    "cuda:{}: allocating {} MiB would pass the device memory limit ({} MiB in \
                     use of {} MiB; set `memory_limit_mib` to change it)",
                    dev.info.index,
                    bytes.div_ceil(1 << 20),
                    cur >> 20,
                    dev.mem_limit >> 20
                )));
            }
            match used.compare_exchange_weak(cur, cur + bytes, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let ptr =
            Current::push(dev.primary).and_then(|_cur| driver::mem_alloc_zeroed(bytes as usize));
        match ptr {
            Ok(ptr) => Ok(DevMem {
                ptr,
                bytes,
                dev: dev.clone(),
            }),
            Err(e) => {
                used.fetch_sub(bytes, Ordering::Relaxed);
                Err(DeviceError::Unavailable(format!(
                    "cuda:{}: cannot allocate {} bytes: {e}",
                    dev.info.index, bytes
                )))
            }
        }
    }

    /// Its size in bytes.
    pub(super) fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// The address `elements` elements of `elem_bytes` in.
    pub(super) fn at(&self, elements: usize, elem_bytes: usize) -> sys::CUdeviceptr {
        self.ptr + (elements * elem_bytes) as u64
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        if let Ok(_cur) = Current::push(self.dev.primary) {
            driver::mem_free(self.ptr);
        }
        self.dev.mem_used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A buffer of `f32` on a GPU.
#[derive(Debug)]
pub struct CudaBuf {
    mem: DevMem,
    pub(super) len: usize,
    /// Its bf16 copy for mixed-precision GEMMs ([`super::shadow`]), made invalid by every
    /// mutable access to `mem`.
    bf16: Mutex<Bf16Copy>,
}

/// A buffer's bf16 copy: its state, its memory, and the lane that fills and reads it.
#[derive(Debug, Default)]
pub(super) struct Bf16Copy {
    pub(super) state: Shadow,
    /// Shared with the GEMMs queued on it until they are launched, so that growing the
    /// copy never frees memory a launch about to be queued still names.
    pub(super) mem: Option<Arc<DevMem>>,
    /// The lane that made the copy; other lanes convert into their scratch.
    pub(super) lane: Option<u64>,
}

impl CudaBuf {
    /// `len` zeroed elements.
    pub(super) fn alloc(dev: &Arc<CudaDevice>, len: usize) -> Result<CudaBuf, DeviceError> {
        Ok(CudaBuf {
            mem: DevMem::alloc(dev, len * 4)?,
            len,
            bf16: Mutex::new(Bf16Copy::default()),
        })
    }

    /// Its memory, to read.
    pub(super) fn mem(&self) -> &DevMem {
        &self.mem
    }

    /// Its memory, to be written by the work queued next: its bf16 copy is no longer valid.
    pub(super) fn mem_mut(&mut self) -> &DevMem {
        sync::get_mut(&mut self.bf16).state.written();
        &self.mem
    }

    /// Its memory and its bf16 copy, for a GEMM that writes it: the caller records the
    /// write in the copy's state ([`Shadow::store`] or [`Shadow::written`]).
    pub(super) fn parts_mut(&mut self) -> (&DevMem, &mut Bf16Copy) {
        (&self.mem, sync::get_mut(&mut self.bf16))
    }

    /// Its bf16 copy, locked, or `None` while another thread holds it (which then goes
    /// without: waiting could hold a lane that waits for an SM partition the holder needs).
    pub(super) fn try_bf16_copy(&self) -> Option<MutexGuard<'_, Bf16Copy>> {
        match self.bf16.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// A buffer of labels on a GPU, with a host copy for checking them against the classes.
#[derive(Debug)]
pub struct CudaLabels {
    pub(super) mem: DevMem,
    pub(super) host: Vec<u32>,
}

/// A buffer of bf16 (raw bits) on a GPU.
#[derive(Debug)]
pub struct CudaBf16 {
    pub(super) mem: DevMem,
    pub(super) len: usize,
}

/// Smallest staging arena.
const STAGING_MIN: usize = 1 << 20;
/// Alignment of each copy's region in the arena.
const STAGING_ALIGN: usize = 256;

/// Page-locked host memory a lane copies through. Regions are handed out in order and all
/// become free when the lane's stream has drained (at the end of each unit of work), so
/// copies queue without waiting for one another.
#[derive(Debug)]
pub(super) struct Staging {
    /// The device's primary context, current while the arena is allocated and freed.
    primary: sys::CUcontext,
    ptr: *mut u8,
    cap: usize,
    used: usize,
}

// SAFETY: the arena is owned by one lane and used under its lock.
unsafe impl Send for Staging {}

impl Staging {
    pub(super) fn new(primary: sys::CUcontext) -> Staging {
        Staging {
            primary,
            ptr: std::ptr::null_mut(),
            cap: 0,
            used: 0,
        }
    }

    /// A region of `bytes` no queued copy uses. When the arena is full the place's stream is
    /// drained first (every earlier region is then free), and the arena grows when the
    /// region is larger than all of it.
    pub(super) fn take(&mut self, bytes: usize, place: &Place) -> Result<*mut u8, CuError> {
        let mut off = self.used.next_multiple_of(STAGING_ALIGN);
        if off + bytes > self.cap {
            if self.used > 0 {
                place.drain()?;
            }
            off = 0;
            if bytes > self.cap {
                let cap = bytes.max(2 * self.cap).max(STAGING_MIN);
                let _cur = Current::push(self.primary)?;
                let fresh = driver::host_alloc(cap)?;
                self.free();
                self.ptr = fresh;
                self.cap = cap;
            }
        }
        self.used = off + bytes;
        // SAFETY: `off + bytes <= cap`, inside the allocation.
        Ok(unsafe { self.ptr.add(off) })
    }

    /// Every region is free (the stream has drained).
    pub(super) fn reset(&mut self) {
        self.used = 0;
    }

    /// Frees the arena; the caller has made a context of the device current.
    fn free(&mut self) {
        if !self.ptr.is_null() {
            driver::host_free(self.ptr);
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The lane drained its stream before dropping its state.
        if let Ok(_cur) = Current::push(self.primary) {
            self.free();
        }
    }
}
