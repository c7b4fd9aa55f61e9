//! Device health: a device that has hit a fault it cannot recover from (a sticky CUDA error
//! poisons the context for every lane on the GPU) is marked failed once, and every later
//! operation on it fails at once with that reason.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use super::DeviceError;

/// The health of one device, shared by every lane on it.
#[derive(Debug)]
pub struct DeviceHealth {
    device: String,
    failed: AtomicBool,
    reason: Mutex<Option<(String, SystemTime)>>,
    /// Operations left before an injected fault fires; `u64::MAX` when none is armed.
    inject_in: AtomicU64,
    inject_reason: Mutex<String>,
}

impl DeviceHealth {
    /// A healthy device called `device` (`cpu`, `cuda:0`).
    pub fn new(device: impl Into<String>) -> Self {
        DeviceHealth {
            device: device.into(),
            failed: AtomicBool::new(false),
            reason: Mutex::new(None),
            inject_in: AtomicU64::new(u64::MAX),
            inject_reason: Mutex::new(String::new()),
        }
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// `Ok` while the device is healthy; the device's failure otherwise. Called at the start
    /// of every operation; an armed injected fault fires here.
    pub fn check(&self) -> Result<(), DeviceError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(self.error());
        }
        if self.inject_in.load(Ordering::Relaxed) != u64::MAX {
            let left = self
                .inject_in
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n != u64::MAX).then(|| n.saturating_sub(1))
                })
                .unwrap_or(u64::MAX);
            if left == 0 {
                let reason = self
                    .inject_reason
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                self.inject_in.store(u64::MAX, Ordering::Relaxed);
                self.fail(reason);
                return Err(self.error());
            }
        }
        Ok(())
    }

    /// Marks the device failed; the first reason is kept.
    pub fn fail(&self, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some((reason, SystemTime::now()));
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    /// The reason and time of the failure, when the device has failed.
    pub fn state(&self) -> Option<(String, SystemTime)> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the device has failed.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Arms a fault for tests and drills: after `ops` more checked operations succeed, the
    /// next one fails the device with `reason`, as a sticky driver error would.
    pub fn inject_after(&self, ops: u64, reason: String) {
        *self.inject_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        self.inject_in.store(ops, Ordering::Relaxed);
    }

    fn error(&self) -> DeviceError {
        DeviceError::Failed {
            device: self.device.clone(),
            reason: self
                .state()
                .map(|(r, _)| r)
                .unwrap_or_else(|| "failed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_fault_fails_the_next_op_after_n_and_sticks() {
        let h = DeviceHealth::new("cpu");
        h.inject_after(2, "injected".into());
        assert!(h.check().is_ok());
        assert!(h.check().is_ok());
        let e = h.check().unwrap_err().to_string();
        assert!(e.contains("cpu") && e.contains("injected"), "{e}");
        assert!(h.check().is_err());
        h.fail("second".into());
        assert_eq!(h.state().unwrap().0, "injected");
    }
}
