//! What each device could still give new tenants, as admission reckons it: the snapshot a
//! cluster scheduler is shown (the `kubernetes` feature publishes it as a ResourceSlice).

use serde::Serialize;

use super::control_config;
use super::{Node, Placement};
use crate::control::admission::uncommitted_where;
use crate::device::cuda::GpuInfo;
use crate::util::sync;

/// One device's room.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRoom {
    /// The device: `cuda:N`, `cpu` or `cpu:N`.
    pub name: String,
    /// The GPU, when it is one.
    pub gpu: Option<GpuInfo>,
    /// Whether its shares are held by green contexts (SM partitions) rather than CTA budgets.
    pub green_contexts: bool,
    /// Its cores: the CPU part's cores (a fraction of the host's), or the GPU's SMs.
    pub cores: f64,
    /// The share of the device admission could still give: all of it less the reserve,
    /// other processes' load and what the tenants it is told to count hold (jobs admitted
    /// that the controller has not seen yet included).
    pub free_share: f64,
    /// Device memory, bytes (a GPU's; 0 on the CPU).
    pub memory_total: u64,
    /// Device memory setpoint could still allocate there, bytes.
    pub memory_free: u64,
    /// Whether it works (a failed device has no room).
    pub healthy: bool,
}

impl Node {
    /// Every device's name (`cuda:0`, `cpu`, `cpu:1`), in order.
    pub fn device_names(&self) -> Vec<String> {
        self.devices().map(|d| self.placement(d).name()).collect()
    }

    /// Every device's room, counting only the tenants `counted` accepts (by name): a cluster
    /// scheduler keeps its own account of the tenants it placed, so those are left out of
    /// what it is shown.
    pub fn device_room(&self, counted: &dyn Fn(&str) -> bool) -> Vec<DeviceRoom> {
        let ctrl = control_config(&self.config());
        self.devices()
            .map(|d| {
                let placement = self.placement(d);
                let healthy = placement.health().failure().is_none();
                let last = self.decisions_reserved(d, &mut sync::lock(&self.store.reserved));
                let free = uncommitted_where(&ctrl, &last, counted);
                let (gpu, green, cores, total, free_mem) = match placement {
                    Placement::Cpu(_) => (None, false, self.capacity_of(d), 0, 0),
                    Placement::Cuda(dev) => (
                        Some(dev.info().clone()),
                        dev.green_groups().is_some(),
                        f64::from(dev.info().sm_count),
                        dev.info().total_memory,
                        dev.memory_limit().saturating_sub(dev.memory_used()),
                    ),
                };
                DeviceRoom {
                    name: placement.name(),
                    gpu,
                    green_contexts: green,
                    cores,
                    free_share: if healthy { free } else { 0.0 },
                    memory_total: total,
                    memory_free: free_mem,
                    healthy,
                }
            })
            .collect()
    }
}
