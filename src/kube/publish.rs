//! Keeps the node's ResourceSlices in step with the room its devices have: every
//! `publish_interval_s` (10 s at least) it reckons the room as admission would
//! ([`crate::node::Node::device_room`], not counting the tenants placed through claims) and,
//! only when the devices that would be published differ from those last published, applies
//! the slices (server-side apply, field manager [`FIELD_MANAGER`]) and deletes the node's
//! slices no longer needed. It runs on its own task and reads what the control loop last
//! decided; it never runs in that loop.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::{Device, ResourceSlice};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};

use super::driver::Driver;
use super::slice::{self, NODE_LABEL, SliceSpec};
use crate::node::Node;

/// The field manager of the node's slices.
pub const FIELD_MANAGER: &str = "setpoint-node";

/// What was last published, so that an unchanged room is not sent again.
#[derive(Debug, Default)]
pub struct Published {
    devices: Option<Vec<Device>>,
    generation: i64,
    slices: usize,
}

impl Published {
    /// The pool generation for a new publication: the wall clock's seconds, so that it
    /// grows across restarts of the daemon too, and always past the last one.
    fn next_generation(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now.max(self.generation + 1)
    }
}

/// Publishes until the runtime stops; a failed publication is logged and tried again at the
/// next interval.
pub async fn run(node: Arc<Node>, driver: Arc<Driver>, client: kube::Client, spec: SliceSpec) {
    let every = Duration::from_secs(driver.config().publish_interval_s.max(10));
    let mut last = Published::default();
    loop {
        let claimed = driver.prepared().tenants();
        let rooms = node.device_room(&|name| !claimed.contains(name));
        let devices = slice::devices(&spec, &rooms);
        if last.devices.as_ref() != Some(&devices) {
            match publish(&client, &spec, devices.clone(), &last).await {
                Ok((generation, slices)) => {
                    tracing::info!(
                        devices = devices.len(),
                        generation,
                        "ResourceSlices published"
                    );
                    last = Published {
                        devices: Some(devices),
                        generation,
                        slices,
                    };
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish the node's ResourceSlices"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Applies the slices for `devices` and deletes the node's others; the generation and the
/// number of slices published.
async fn publish(
    client: &kube::Client,
    spec: &SliceSpec,
    devices: Vec<Device>,
    last: &Published,
) -> Result<(i64, usize), kube::Error> {
    let api = kube::Api::<ResourceSlice>::all(client.clone());
    let generation = last.next_generation();
    let slices = slice::slices(spec, devices, generation);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for s in &slices {
        let name = s.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(s)).await?;
    }
    // Slices of an earlier publication (or of an earlier run of the daemon) that the new
    // one does not have: looked for at the first publication and whenever the count falls.
    if last.devices.is_none() || slices.len() < last.slices {
        let keep: Vec<String> = slices
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        let mine = ListParams::default().labels(&format!("{NODE_LABEL}={}", spec.node));
        for old in api.list(&mine).await? {
            let name = old.metadata.name.unwrap_or_default();
            if !keep.contains(&name) {
                api.delete(&name, &DeleteParams::default()).await?;
            }
        }
    }
    Ok((generation, slices.len()))
}
