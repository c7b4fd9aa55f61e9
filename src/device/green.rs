//! Green contexts: SM partitions of one GPU (CUDA driver 12.4 or newer), built once per
//! device as a ladder.
//!
//! The device's SMs are split once into groups of [`GROUP_SMS`] (Hopper's partition
//! granularity); rung `k` is a green context over the first `k + 1` groups, so a share `s`
//! maps to the rung of `ceil(s · groups)` groups. SMs left over by the split (4 of an H200's
//! 132) are in no rung. A lane keeps one stream per rung, created with its priority, and
//! launches on the stream of the rung its share maps to: its kernels then run only on that
//! rung's SMs, whatever their grids. cudarc's event tracking orders work across a lane's
//! streams (a buffer written on one stream is waited for on the next); it is on only while
//! the context has a stream cudarc created, so the ladder keeps one.
//!
//! Streams are never destroyed while the device lives: buffers keep the stream they were
//! allocated on for their release, so a lane that ends gives its streams back to the ladder,
//! and the next lane at the same priority takes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaStream, sys};

/// SMs per group of the split.
pub const GROUP_SMS: u32 = 8;

/// The lowest driver version (as `cuDriverGetVersion` reports it) with green contexts.
const MIN_DRIVER: i32 = 12040;

fn check(r: sys::CUresult, what: &str) -> Result<(), String> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} failed: {r:?}"))
    }
}

/// One rung: a green context over the first groups of the split.
struct Rung {
    green: sys::CUgreenCtx,
    sms: u32,
}

/// The green contexts of one GPU, smallest first, and the streams lanes gave back.
pub struct GreenLadder {
    ctx: Arc<CudaContext>,
    rungs: Vec<Rung>,
    /// Streams lanes no longer use, by priority: one stream per rung each.
    spare: Mutex<HashMap<i32, Vec<Vec<Arc<CudaStream>>>>>,
    /// Every stream created, destroyed with the ladder.
    created: Mutex<Vec<sys::CUstream>>,
    /// A stream cudarc itself created: cudarc orders work across streams by events only
    /// once the context has one (it does not count streams it wraps), and the lanes' green
    /// streams are all wrapped.
    _tracking: Arc<CudaStream>,
}

// The handles are plain driver handles: the driver's calls on them are thread-safe (no green
// context is ever made current here).
unsafe impl Send for GreenLadder {}
unsafe impl Sync for GreenLadder {}

impl std::fmt::Debug for GreenLadder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreenLadder")
            .field("rung_sms", &self.rung_sms())
            .finish()
    }
}

impl GreenLadder {
    /// Splits the SMs of `ctx`'s device and creates one green context per rung, or says why
    /// it cannot (driver too old, too few SMs, a driver call failed).
    pub fn build(ctx: &Arc<CudaContext>) -> Result<Self, String> {
        let mut version = 0;
        check(
            unsafe { sys::cuDriverGetVersion(&mut version) },
            "cuDriverGetVersion",
        )?;
        if version < MIN_DRIVER {
            return Err(format!(
                "the driver supports CUDA {}.{}; green contexts need 12.4 or newer",
                version / 1000,
                (version % 1000) / 10
            ));
        }
        ctx.bind_to_thread()
            .map_err(|e| format!("cannot bind the context: {e:?}"))?;
        let dev = ctx.cu_device();
        // SAFETY: plain C structs the driver fills in; zero is a valid bit pattern for them.
        let mut all: sys::CUdevResource = unsafe { std::mem::zeroed() };
        check(
            unsafe {
                sys::cuDeviceGetDevResource(
                    dev,
                    &mut all,
                    sys::CUdevResourceType::CU_DEV_RESOURCE_TYPE_SM,
                )
            },
            "cuDeviceGetDevResource",
        )?;
        let sms = unsafe { all.__bindgen_anon_1.sm.smCount };
        let mut groups_n = sms / GROUP_SMS;
        if groups_n < 2 {
            return Err(format!(
                "the GPU has {sms} SMs: too few for partitions of {GROUP_SMS}"
            ));
        }
        let mut groups: Vec<sys::CUdevResource> =
            vec![unsafe { std::mem::zeroed() }; groups_n as usize];
        let mut rest: sys::CUdevResource = unsafe { std::mem::zeroed() };
        check(
            unsafe {
                sys::cuDevSmResourceSplitByCount(
                    groups.as_mut_ptr(),
                    &mut groups_n,
                    &all,
                    &mut rest,
                    0,
                    GROUP_SMS,
                )
            },
            "cuDevSmResourceSplitByCount",
        )?;
        groups.truncate(groups_n as usize);
        let tracking = ctx
            .new_stream()
            .map_err(|e| format!("cannot create a stream: {e:?}"))?;
        let mut ladder = GreenLadder {
            ctx: ctx.clone(),
            rungs: Vec::with_capacity(groups.len()),
            spare: Mutex::new(HashMap::new()),
            created: Mutex::new(Vec::new()),
            _tracking: tracking,
        };
        for k in 1..=groups.len() {
            let mut res = groups[..k].to_vec();
            let sms: u32 = res
                .iter()
                .map(|r| unsafe { r.__bindgen_anon_1.sm.smCount })
                .sum();
            let mut desc: sys::CUdevResourceDesc = std::ptr::null_mut();
            check(
                unsafe { sys::cuDevResourceGenerateDesc(&mut desc, res.as_mut_ptr(), k as u32) },
                "cuDevResourceGenerateDesc",
            )?;
            let mut green: sys::CUgreenCtx = std::ptr::null_mut();
            check(
                unsafe {
                    sys::cuGreenCtxCreate(
                        &mut green,
                        desc,
                        dev,
                        sys::CUgreenCtxCreate_flags::CU_GREEN_CTX_DEFAULT_STREAM as u32,
                    )
                },
                "cuGreenCtxCreate",
            )?;
            // Pushed at once, so a failure further up the ladder destroys it with the rest.
            ladder.rungs.push(Rung { green, sms });
        }
        Ok(ladder)
    }

    /// SMs of each rung, smallest first.
    pub fn rung_sms(&self) -> Vec<u32> {
        self.rungs.iter().map(|r| r.sms).collect()
    }

    /// SMs of rung `k` (0 when out of range).
    pub fn sms_of(&self, k: usize) -> u32 {
        self.rungs.get(k).map_or(0, |r| r.sms)
    }

    /// The rung for a share: the fewest groups that give at least `share` of the groups.
    pub fn rung_for(&self, share: f64) -> usize {
        rung_for(share, self.rungs.len())
    }

    /// One stream per rung at `priority`, from the streams lanes gave back or new.
    pub fn streams(&self, priority: i32) -> Result<Vec<Arc<CudaStream>>, String> {
        if let Some(set) = self
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&priority)
            .and_then(|v| v.pop())
        {
            return Ok(set);
        }
        let mut out = Vec::with_capacity(self.rungs.len());
        for rung in &self.rungs {
            let mut raw: sys::CUstream = std::ptr::null_mut();
            check(
                unsafe {
                    sys::cuGreenCtxStreamCreate(
                        &mut raw,
                        rung.green,
                        sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                        priority,
                    )
                },
                "cuGreenCtxStreamCreate",
            )?;
            self.created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(raw);
            // SAFETY: the stream belongs to the device's primary context (a green context's
            // streams do) and lives until the ladder drops, after every user of it.
            out.push(unsafe { self.ctx.wrap_borrowed_stream(raw) });
        }
        Ok(out)
    }

    /// Takes back the streams of a lane that ended.
    pub fn give_back(&self, priority: i32, streams: Vec<Arc<CudaStream>>) {
        if streams.len() == self.rungs.len() {
            self.spare
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(priority)
                .or_default()
                .push(streams);
        }
    }
}

impl Drop for GreenLadder {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        for raw in self
            .created
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            unsafe {
                let _ = sys::cuStreamDestroy_v2(raw);
            }
        }
        for rung in self.rungs.drain(..) {
            unsafe {
                let _ = sys::cuGreenCtxDestroy(rung.green);
            }
        }
    }
}

/// The rung (0-based) of `rungs` for `share`: `ceil(share · rungs) − 1`, within range.
pub fn rung_for(share: f64, rungs: usize) -> usize {
    if rungs == 0 {
        return 0;
    }
    let s = if share.is_finite() { share } else { 1.0 };
    let k = (s * rungs as f64 - 1e-9).ceil() as usize;
    k.clamp(1, rungs) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_takes_the_fewest_groups_that_cover_it() {
        // An H200: 132 SMs, 16 groups of 8.
        assert_eq!(rung_for(1.0, 16), 15);
        assert_eq!(rung_for(0.5, 16), 7);
        assert_eq!(rung_for(0.51, 16), 8);
        assert_eq!(rung_for(1.0 / 16.0, 16), 0);
        assert_eq!(rung_for(0.001, 16), 0);
        assert_eq!(rung_for(0.0, 16), 0);
        assert_eq!(rung_for(7.0, 16), 15);
        assert_eq!(rung_for(f64::NAN, 16), 15);
        assert_eq!(rung_for(0.3, 0), 0);
    }
}
