//! The CUDA driver calls the backend makes, each with the context it belongs to made current
//! for the length of the call.
//!
//! The backend talks to the driver directly (through cudarc's dynamically loaded `sys`
//! bindings) rather than through cudarc's safe layer, because that layer binds the device's
//! primary context before every call and creates its events there: work on a green context's
//! stream needs that green context current, and events recorded on such a stream must be
//! created in it. Here every handle is created, used and destroyed with its own context
//! pushed ([`Current`]), on the calling thread only, and popped afterwards, so no context
//! stays current on a thread the backend does not control. A green context may be current
//! to one thread at a time; the partition leases (`super::green`) give each to one lane at
//! a time.

use std::ffi::{CStr, c_void};

use super::tma::{TensorMap2d, TmaSwizzle};
use cudarc::driver::sys::{self, CUresult, cudaError_enum as E};

/// A driver call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CuError {
    /// The driver function.
    pub call: &'static str,
    /// What it returned.
    pub code: CUresult,
}

impl std::error::Error for CuError {}

impl CuError {
    /// Whether the error poisons the context: the CUDA documentation says of these that the
    /// process is left in an inconsistent state and every later call returns the same error.
    pub(crate) fn is_sticky(&self) -> bool {
        is_sticky(self.code)
    }
}

/// See [`CuError::is_sticky`].
pub(crate) fn is_sticky(code: CUresult) -> bool {
    matches!(
        code,
        E::CUDA_ERROR_ILLEGAL_ADDRESS
            | E::CUDA_ERROR_LAUNCH_TIMEOUT
            | E::CUDA_ERROR_HARDWARE_STACK_ERROR
            | E::CUDA_ERROR_ILLEGAL_INSTRUCTION
            | E::CUDA_ERROR_MISALIGNED_ADDRESS
            | E::CUDA_ERROR_INVALID_ADDRESS_SPACE
            | E::CUDA_ERROR_INVALID_PC
            | E::CUDA_ERROR_LAUNCH_FAILED
            | E::CUDA_ERROR_ASSERT
            | E::CUDA_ERROR_ECC_UNCORRECTABLE
            | E::CUDA_ERROR_CONTEXT_IS_DESTROYED
    )
}

impl std::fmt::Display for CuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, describe(self.code))
    }
}

/// `CUDA_ERROR_X (the driver's description)`.
pub fn describe(code: CUresult) -> String {
    let mut name: *const std::ffi::c_char = std::ptr::null();
    let mut text: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: the driver writes pointers to static strings, or leaves them null for an
    // unknown code.
    unsafe {
        let _ = sys::cuGetErrorName(code, &mut name);
        let _ = sys::cuGetErrorString(code, &mut text);
    }
    let read = |p: *const std::ffi::c_char| {
        // SAFETY: non-null pointers from the driver are NUL-terminated static strings.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    match (read(name), read(text)) {
        (Some(n), Some(t)) => format!("{n} ({t})"),
        (Some(n), None) => n,
        _ => format!("{code:?}"),
    }
}

/// `Ok` for `CUDA_SUCCESS`, else the error of `call`.
pub fn ok(call: &'static str, code: CUresult) -> Result<(), CuError> {
    if code == E::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError { call, code })
    }
}

/// A context pushed onto this thread's stack of current contexts; popped when dropped.
pub(crate) struct Current(());

impl Current {
    /// Makes `ctx` current on this thread until the guard drops.
    pub fn push(ctx: sys::CUcontext) -> Result<Current, CuError> {
        // SAFETY: `ctx` is a live context (primary, or from a live green context), kept alive
        // by its owner for longer than this guard.
        ok("cuCtxPushCurrent", unsafe { sys::cuCtxPushCurrent_v2(ctx) })?;
        Ok(Current(()))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        let mut old: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: pops the context this guard pushed on this thread.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut old) };
    }
}

/// Creates a non-blocking stream at `priority` in the current context.
pub(crate) fn stream_create(priority: i32) -> Result<sys::CUstream, CuError> {
    let mut s: sys::CUstream = std::ptr::null_mut();
    let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
    // SAFETY: a pointer to a local; the current context owns the stream.
    ok("cuStreamCreateWithPriority", unsafe {
        sys::cuStreamCreateWithPriority(&mut s, flags, priority)
    })?;
    Ok(s)
}

/// Creates a timing event in the current context.
pub(crate) fn event_create() -> Result<sys::CUevent, CuError> {
    let mut e: sys::CUevent = std::ptr::null_mut();
    // SAFETY: a pointer to a local; CU_EVENT_DEFAULT keeps timing on.
    ok("cuEventCreate", unsafe {
        sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DEFAULT as u32)
    })?;
    Ok(e)
}

/// Records `event` on `stream` (both in the current context).
pub(crate) fn event_record(event: sys::CUevent, stream: sys::CUstream) -> Result<(), CuError> {
    // SAFETY: live handles of the current context.
    ok("cuEventRecord", unsafe {
        sys::cuEventRecord(event, stream)
    })
}

/// Milliseconds between two completed events.
pub(crate) fn event_elapsed_ms(start: sys::CUevent, end: sys::CUevent) -> Result<f32, CuError> {
    let mut ms = 0f32;
    // SAFETY: live, recorded and completed events of one context.
    ok("cuEventElapsedTime", unsafe {
        sys::cuEventElapsedTime(&mut ms, start, end)
    })?;
    Ok(ms)
}

/// Waits for everything queued on `stream`.
pub(crate) fn stream_sync(stream: sys::CUstream) -> Result<(), CuError> {
    // SAFETY: a live stream.
    ok("cuStreamSynchronize", unsafe {
        sys::cuStreamSynchronize(stream)
    })
}

/// Destroys a stream and events of the current context, ignoring failures (teardown).
pub(crate) fn destroy(stream: Option<sys::CUstream>, events: &[sys::CUevent]) {
    // SAFETY: handles of the current context that nothing uses any more.
    unsafe {
        for &e in events {
            let _ = sys::cuEventDestroy_v2(e);
        }
        if let Some(s) = stream {
            let _ = sys::cuStreamDestroy_v2(s);
        }
    }
}

/// Device memory of `bytes` (at least 1), zeroed, in the current context.
pub(crate) fn mem_alloc_zeroed(bytes: usize) -> Result<sys::CUdeviceptr, CuError> {
    let mut p: sys::CUdeviceptr = 0;
    let bytes = bytes.max(1);
    // SAFETY: a pointer to a local; the allocation is freed by its owner.
    ok("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut p, bytes) })?;
    // SAFETY: `p` holds `bytes` bytes. A synchronous memset: allocations are rare.
    if let Err(e) = ok("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(p, 0, bytes) }) {
        // SAFETY: just allocated, unused.
        unsafe {
            let _ = sys::cuMemFree_v2(p);
        }
        return Err(e);
    }
    Ok(p)
}

/// Frees device memory of the current context. `cuMemFree` waits for work using it.
pub(crate) fn mem_free(p: sys::CUdeviceptr) {
    // SAFETY: memory from `mem_alloc_zeroed` that nothing uses any more.
    let _ = unsafe { sys::cuMemFree_v2(p) };
}

/// Page-locked host memory of `bytes`, usable by every context (portable).
pub(crate) fn host_alloc(bytes: usize) -> Result<*mut u8, CuError> {
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: a pointer to a local; freed by `host_free`.
    ok("cuMemHostAlloc", unsafe {
        sys::cuMemHostAlloc(&mut p, bytes.max(1), sys::CU_MEMHOSTALLOC_PORTABLE)
    })?;
    Ok(p.cast())
}

/// Frees page-locked host memory.
pub(crate) fn host_free(p: *mut u8) {
    // SAFETY: memory from `host_alloc` that no pending copy uses.
    let _ = unsafe { sys::cuMemFreeHost(p.cast()) };
}

/// Queues a copy of `bytes` from page-locked host memory to the device on `stream`.
pub(crate) fn copy_htod(
    dst: sys::CUdeviceptr,
    src: *const u8,
    bytes: usize,
    stream: sys::CUstream,
) -> Result<(), CuError> {
    // SAFETY: the caller guarantees `src` is page-locked, holds `bytes`, and stays untouched
    // until the stream passes this copy; `dst` holds `bytes`.
    ok("cuMemcpyHtoDAsync", unsafe {
        sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), bytes, stream)
    })
}

/// Queues a copy of `bytes` from the device to page-locked host memory on `stream`.
pub(crate) fn copy_dtoh(
    dst: *mut u8,
    src: sys::CUdeviceptr,
    bytes: usize,
    stream: sys::CUstream,
) -> Result<(), CuError> {
    // SAFETY: as `copy_htod`, the other way.
    ok("cuMemcpyDtoHAsync", unsafe {
        sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, bytes, stream)
    })
}

/// One kernel argument, by value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    /// A device pointer.
    Ptr(sys::CUdeviceptr),
    /// A C `int`.
    I32(i32),
    /// A C `float`.
    F32(f32),
    /// A `CUtensorMap` passed by value (`const __grid_constant__`, 128 bytes).
    TensorMap(sys::CUtensorMap),
}

/// Launches `func` (a function of the current context) with a 1-D grid on `stream`, each
/// CTA with `smem` bytes of dynamic shared memory.
pub fn launch(
    func: sys::CUfunction,
    (grid, block, smem): (u32, u32, u32),
    stream: sys::CUstream,
    args: &[Arg],
) -> Result<(), CuError> {
    // The values must stay at fixed addresses while the driver reads them.
    let mut values: Vec<Arg> = args.to_vec();
    let mut params = param_pointers(&mut values);
    // SAFETY: `params` points at one value per kernel parameter, in order, of the types the
    // kernel ABI (kernels/ABI.md) gives; both vectors outlive the call, which copies them.
    ok("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            func,
            grid,
            1,
            1,
            block,
            1,
            1,
            smem,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    })
}

/// `cuLaunchKernel`'s `kernelParams`: a pointer to each value, in order.
pub(super) fn param_pointers(values: &mut [Arg]) -> Vec<*mut c_void> {
    values
        .iter_mut()
        .map(|a| match a {
            Arg::Ptr(p) => (p as *mut sys::CUdeviceptr).cast(),
            Arg::I32(v) => (v as *mut i32).cast(),
            Arg::F32(v) => (v as *mut f32).cast(),
            Arg::TensorMap(m) => (m as *mut sys::CUtensorMap).cast(),
        })
        .collect()
}

/// `map` encoded by the driver (`cuTensorMapEncodeTiled`): a 2D bf16 tensor, element
/// strides 1, no interleave, L2 promotion by 128 bytes, out-of-bounds elements read as zero.
pub fn encode_tensor_map(map: &TensorMap2d) -> Result<sys::CUtensorMap, CuError> {
    let mut out = sys::CUtensorMap { opaque: [0; 16] };
    let strides = [map.stride_bytes];
    let element_strides = [1u32, 1];
    let swizzle = match map.swizzle {
        TmaSwizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
        TmaSwizzle::B32 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
        TmaSwizzle::B64 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
        TmaSwizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    };
    // SAFETY: every pointer is to a live array of the length the rank (2) asks for; the
    // global address is only recorded in the map, not read.
    ok("cuTensorMapEncodeTiled", unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut out,
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            map.address as *mut c_void,
            map.dims.as_ptr(),
            strides.as_ptr(),
            map.box_dims.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_parameter_is_passed_by_a_pointer_to_its_value() {
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        map.opaque[0] = 0xfeed;
        let mut values = vec![
            Arg::Ptr(0xabc0),
            Arg::I32(-3),
            Arg::F32(0.5),
            Arg::TensorMap(map),
        ];
        let params = param_pointers(&mut values);
        assert_eq!(params.len(), 4);
        // SAFETY: each pointer is to the value of its own kind in `values`, still alive.
        unsafe {
            assert_eq!(*params[0].cast::<sys::CUdeviceptr>(), 0xabc0);
            assert_eq!(*params[1].cast::<i32>(), -3);
            assert_eq!(*params[2].cast::<f32>(), 0.5);
            assert_eq!((*params[3].cast::<sys::CUtensorMap>()).opaque[0], 0xfeed);
        }
        // The driver copies a map's 128 bytes from an address the type keeps 64-byte aligned.
        assert!((params[3] as usize).is_multiple_of(64));
        assert_eq!(std::mem::size_of::<sys::CUtensorMap>(), 128);
    }

    #[test]
    fn faults_that_poison_the_context_are_sticky() {
        for code in [
            E::CUDA_ERROR_ILLEGAL_ADDRESS,
            E::CUDA_ERROR_LAUNCH_FAILED,
            E::CUDA_ERROR_MISALIGNED_ADDRESS,
            E::CUDA_ERROR_ECC_UNCORRECTABLE,
        ] {
            assert!(is_sticky(code), "{code:?}");
        }
        for code in [
            E::CUDA_ERROR_OUT_OF_MEMORY,
            E::CUDA_ERROR_INVALID_VALUE,
            E::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            E::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
        ] {
            assert!(!is_sticky(code), "{code:?}");
        }
        let e = CuError {
            call: "cuLaunchKernel",
            code: E::CUDA_ERROR_ILLEGAL_ADDRESS,
        };
        assert!(e.is_sticky());
    }
}
