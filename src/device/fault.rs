//! Device health: whether a device can still run work.
//!
//! On a GPU one sticky error (an illegal address, say) poisons the context for every lane on
//! it, and every later call fails until the process restarts. Every lane of one device
//! therefore shares one [`DeviceHealth`] and calls [`DeviceHealth::check`] before each
//! operation: once the device has failed, each lane's next operation returns
//! [`DeviceError::Failed`] naming the device and the first error, instead of running on a
//! broken context. A failed device stays failed for the life of the process.
//!
//! [`DeviceHealth::inject_after`] fails a device the way a sticky driver error would, after a
//! given number of checked operations (the failing operation returns the error): how the CPU
//! backend is tested for faults, and how an operator drills the daemon's handling of them.

use crate::util::sync;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

use super::DeviceError;

/// No failure, nothing injected: [`DeviceHealth::check`] is one relaxed load.
const HEALTHY: u8 = 0;
/// A fault is injected and counts operations down.
const ARMED: u8 = 1;
/// The device has failed.
const FAILED: u8 = 2;

/// How a device failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The first error that failed it.
    pub reason: String,
    /// When it failed.
    pub at: SystemTime,
}

/// The state of a device, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    /// It runs work.
    Ok,
    /// It has failed and runs nothing until the process restarts.
    Failed(Failure),
}

#[derive(Debug)]
struct Injection {
    /// Checked operations still allowed to succeed.
    ops_left: u64,
    reason: String,
}

#[derive(Debug, Default)]
struct Inner {
    failure: Option<Failure>,
    injected: Option<Injection>,
}

/// The health of one device, shared by every lane on it.
#[derive(Debug)]
pub struct DeviceHealth {
    device: String,
    mode: AtomicU8,
    inner: Mutex<Inner>,
}

impl DeviceHealth {
    /// A healthy device called `device` (`cpu`, `cuda:0`) in messages and status.
    pub fn new(device: impl Into<String>) -> Self {
        DeviceHealth {
            device: device.into(),
            mode: AtomicU8::new(HEALTHY),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        sync::lock(&self.inner)
    }

    /// Called at the start of every operation of a lane on this device: `Ok` while the
    /// device is healthy, [`DeviceError::Failed`] once it has failed. Counts the operation
    /// against an injected fault, and fails the device when the fault is due.
    #[inline]
    pub fn check(&self) -> Result<(), DeviceError> {
        // A lane that misses a failure published this instant runs one more operation: the
        // same race a sticky error has with the lanes already launching on the device.
        if self.mode.load(Ordering::Relaxed) == HEALTHY {
            return Ok(());
        }
        self.check_slow()
    }

    #[cold]
    fn check_slow(&self) -> Result<(), DeviceError> {
        let mut inner = self.lock();
        if let Some(f) = &inner.failure {
            return Err(self.error(&f.reason));
        }
        let reason = match inner.injected.as_mut() {
            None => return Ok(()),
            Some(inj) if inj.ops_left > 0 => {
                inj.ops_left -= 1;
                return Ok(());
            }
            Some(inj) => std::mem::take(&mut inj.reason),
        };
        let err = self.error(&reason);
        self.record(&mut inner, reason);
        Err(err)
    }

    /// Marks the device failed with `reason` (the driver's error, say). The first reason
    /// wins: a device fails once, and later errors are its consequences.
    pub fn fail(&self, reason: String) {
        let mut inner = self.lock();
        if inner.failure.is_none() {
            self.record(&mut inner, reason);
        }
    }

    fn record(&self, inner: &mut Inner, reason: String) {
        tracing::error!(
            device = %self.device,
            "device {} has failed: {reason}; its tenants are stopped",
            self.device
        );
        inner.injected = None;
        inner.failure = Some(Failure {
            reason,
            at: SystemTime::now(),
        });
        self.mode.store(FAILED, Ordering::Release);
    }

    /// After `ops` more checked operations succeed, the next one fails the device with
    /// `reason`, as a sticky driver error would (that operation returns the error). Replaces
    /// a fault injected earlier; does nothing to a device that has already failed.
    pub fn inject_after(&self, ops: u64, reason: String) {
        let mut inner = self.lock();
        if inner.failure.is_some() {
            return;
        }
        inner.injected = Some(Injection {
            ops_left: ops,
            reason,
        });
        self.mode.store(ARMED, Ordering::Release);
    }

    /// The checked operations left before an injected fault is due, if one is.
    #[cfg(test)]
    pub fn injected_ops_left(&self) -> Option<u64> {
        self.lock().injected.as_ref().map(|i| i.ops_left)
    }

    /// The device's state.
    pub fn state(&self) -> HealthState {
        match &self.lock().failure {
            Some(f) => HealthState::Failed(f.clone()),
            None => HealthState::Ok,
        }
    }

    /// True once the device has failed (one atomic load).
    pub fn is_failed(&self) -> bool {
        self.mode.load(Ordering::Acquire) == FAILED
    }

    /// The error every operation returns now, if the device has failed. Counts nothing.
    pub fn failure(&self) -> Option<DeviceError> {
        if !self.is_failed() {
            return None;
        }
        self.lock().failure.as_ref().map(|f| self.error(&f.reason))
    }

    fn error(&self, reason: &str) -> DeviceError {
        DeviceError::Failed {
            device: self.device.clone(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_after_fails_exactly_the_op_after_n() {
        for n in [0u64, 1, 5] {
            let h = DeviceHealth::new("cuda:0");
            h.check().unwrap();
            h.inject_after(n, "CUDA_ERROR_ILLEGAL_ADDRESS".into());
            for i in 0..n {
                assert!(h.check().is_ok(), "op {} of {n} must succeed", i + 1);
                assert_eq!(h.state(), HealthState::Ok);
            }
            let err = h.check().unwrap_err();
            assert_eq!(
                err.to_string(),
                "device cuda:0 has failed: CUDA_ERROR_ILLEGAL_ADDRESS; its tenants were stopped"
            );
            assert!(h.is_failed());
            // Sticky: every later op fails with the same error.
            for _ in 0..3 {
                assert_eq!(h.check().unwrap_err().to_string(), err.to_string());
            }
            assert_eq!(h.failure().unwrap().to_string(), err.to_string());
            assert_eq!(h.injected_ops_left(), None);
        }
    }

    #[test]
    fn fail_keeps_the_first_reason_and_its_time() {
        let h = DeviceHealth::new("cpu");
        assert_eq!(h.failure().map(|e| e.to_string()), None);
        let before = SystemTime::now();
        h.fail("first".into());
        let HealthState::Failed(first) = h.state() else {
            panic!("not failed")
        };
        assert_eq!(first.reason, "first");
        assert!(first.at >= before);
        h.fail("second".into());
        h.inject_after(0, "third".into());
        assert_eq!(h.state(), HealthState::Failed(first));
        assert!(matches!(
            h.check(),
            Err(DeviceError::Failed { device, reason }) if device == "cpu" && reason == "first"
        ));
    }

    #[test]
    fn a_new_injection_replaces_the_last_and_counts_every_lane() {
        let h = std::sync::Arc::new(DeviceHealth::new("cpu"));
        h.inject_after(100, "late".into());
        h.inject_after(3, "soon".into());
        assert_eq!(h.injected_ops_left(), Some(3));
        // Three lanes on three threads share the count.
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || h.check().is_ok())
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
        assert!(matches!(h.check(), Err(DeviceError::Failed { reason, .. }) if reason == "soon"));
    }

    #[test]
    fn a_fault_on_one_lane_stops_every_lane_of_the_device() {
        use crate::device::Backend;
        use std::sync::Arc;
        let health = Arc::new(DeviceHealth::new("cpu"));
        let a = crate::device::CpuBackend::with_health(health.clone(), 1, false).unwrap();
        let b = crate::device::CpuBackend::with_health(health.clone(), 2, true).unwrap();
        let private = crate::device::CpuBackend::single();
        let x = a.upload(&[1.0, 2.0]).unwrap();
        health.inject_after(1, "CUDA_ERROR_ILLEGAL_ADDRESS".into());
        assert_eq!(a.sum(&x, 2).unwrap(), 3.0, "the one op still allowed");
        let err = b.alloc(4).unwrap_err().to_string();
        assert_eq!(
            err,
            "device cpu has failed: CUDA_ERROR_ILLEGAL_ADDRESS; its tenants were stopped"
        );
        assert_eq!(a.sum(&x, 2).unwrap_err().to_string(), err);
        assert_eq!(a.synchronize().unwrap_err().to_string(), err);
        // A backend with a health of its own is another device.
        assert!(private.alloc(4).is_ok() && !private.health().is_failed());
    }
}
