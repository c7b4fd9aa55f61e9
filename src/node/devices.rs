//! Which devices the node runs on: the CUDA driver is probed (never assumed) and the reason
//! for every fallback to the CPU is logged and shown in `/v1/status`.

use serde::Serialize;

use crate::config::{DeviceConfig, DeviceKind, GpuSelection};
use crate::device::cuda::{self, GpuInfo};

use super::NodeError;

/// What the node found at start.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The backend the daemon's tenants run on.
    pub backend: &'static str,
    /// GPUs the driver reports, among those the config selects.
    pub gpus: Vec<GpuInfo>,
    /// Why the tenants run where they do, in one line.
    pub note: String,
}

/// Probes the GPUs `cfg` asks about and decides where tenants run. Refuses (503-class
/// `Unavailable`) when the config requires a GPU that tenants cannot use.
pub fn resolve(cfg: &DeviceConfig) -> Result<DeviceReport, NodeError> {
    if cfg.kind == DeviceKind::Cpu {
        return Ok(DeviceReport {
            backend: "cpu",
            gpus: Vec::new(),
            note: "device.kind = \"cpu\"".into(),
        });
    }
    let wants_gpu = cfg.kind == DeviceKind::Cuda || cfg.require_gpu;
    let found = cuda::probe().and_then(|all| select(all, &cfg.gpus));
    match found {
        Err(why) if wants_gpu => Err(NodeError::Unavailable(format!(
            "no usable GPU: {why}; the config requires one (device.kind = \"cuda\" or \
             device.require_gpu = true); set device.kind = \"auto\" to run on the CPU instead"
        ))),
        Err(why) => Ok(DeviceReport {
            backend: "cpu",
            gpus: Vec::new(),
            note: format!("no usable GPU ({why}); running on the CPU backend"),
        }),
        Ok(gpus) if wants_gpu => Err(NodeError::Unavailable(format!(
            "found {}, but the daemon's lanes run on the CPU backend in this version (the CUDA \
             backend serves `setpoint gpu-check` and the library); device.kind = \"cuda\" and \
             device.require_gpu = true cannot be met yet: use device.kind = \"auto\"",
            describe(&gpus)
        ))),
        Ok(gpus) => Ok(DeviceReport {
            backend: "cpu",
            note: format!(
                "found {}; the daemon's lanes run on the CPU backend in this version",
                describe(&gpus)
            ),
            gpus,
        }),
    }
}

fn describe(gpus: &[GpuInfo]) -> String {
    let names: Vec<String> = gpus
        .iter()
        .map(|g| format!("GPU {} ({}, {})", g.index, g.name, g.uuid))
        .collect();
    names.join(", ")
}

/// The GPUs `sel` names, or which named ones do not exist.
fn select(all: Vec<GpuInfo>, sel: &GpuSelection) -> Result<Vec<GpuInfo>, String> {
    match sel {
        GpuSelection::All => Ok(all),
        GpuSelection::Indices(ix) => {
            let missing: Vec<String> = ix
                .iter()
                .filter(|&&i| !all.iter().any(|g| g.index == i as usize))
                .map(|i| i.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "device.gpus names GPU {} but the driver reports {} GPU(s)",
                    missing.join(", "),
                    all.len()
                ));
            }
            Ok(all
                .into_iter()
                .filter(|g| ix.contains(&(g.index as u32)))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: usize) -> GpuInfo {
        GpuInfo {
            index,
            name: "test".into(),
            uuid: format!("GPU-{index}"),
            compute_capability: (9, 0),
            sm_count: 132,
            total_memory: 1 << 30,
            priority_range: (0, -5),
        }
    }

    #[test]
    fn a_selection_of_missing_gpus_names_them() {
        let err = select(vec![gpu(0)], &GpuSelection::Indices(vec![0, 2])).unwrap_err();
        assert!(err.contains("GPU 2") && err.contains("reports 1"), "{err}");
        let ok = select(vec![gpu(0), gpu(1)], &GpuSelection::Indices(vec![1])).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].index, 1);
    }
}
