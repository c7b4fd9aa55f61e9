//! The `[kubernetes]` section: the node's part in a Kubernetes cluster, as a Dynamic
//! Resource Allocation driver (see `src/kube/`, built with the `kubernetes` feature).

use std::path::PathBuf;

use serde::Serialize;

/// Where the daemon meets the kubelet and the API server. Present only when the config has a
/// `[kubernetes]` section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KubernetesConfig {
    /// The node's name in the cluster; `None`: `$NODE_NAME`, which the DaemonSet sets from
    /// the downward API.
    pub node_name: Option<String>,
    /// The DRA driver's name: a DNS subdomain, the prefix of its device attributes and the
    /// vendor of its CDI devices.
    pub driver: String,
    /// The API server's URL; `None`: the pod's service account (in the cluster), else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub api_server: Option<String>,
    /// The kubelet's plugin registry directory (the registration socket goes here).
    pub registry_dir: PathBuf,
    /// The kubelet's plugin directory; the DRA socket is `<plugin_dir>/<driver>/dra.sock`.
    pub plugin_dir: PathBuf,
    /// Where the container runtime reads CDI specs.
    pub cdi_dir: PathBuf,
    /// Least time between two updates of the node's ResourceSlice, seconds, >= 10.
    pub publish_interval_s: u64,
    /// How a device's shareable capacity is published.
    pub capacity: CapacityMode,
    /// `units` mode: how many equal units each device is cut into, 2..=64.
    pub units_per_device: u32,
    /// The URL a tenant's pod is given to reach this daemon (`SETPOINT_ENDPOINT`); `None`:
    /// `http://$NODE_IP:<port of listen>`, or the listen address itself without `$NODE_IP`.
    pub tenant_endpoint: Option<String>,
}

/// How a device's capacity appears in the node's ResourceSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CapacityMode {
    /// One device per GPU (and per part of the CPU) that many claims share, each consuming
    /// part of its capacity (`allowMultipleAllocations` with capacity request policies: the
    /// `DRAConsumableCapacity` feature gate, alpha in Kubernetes 1.34).
    Consumable,
    /// Each device cut into `units_per_device` equal devices, which any cluster with DRA can
    /// allocate; a claim asks for a number of units with a `matchAttribute` constraint on
    /// the parent device.
    Units,
}

impl KubernetesConfig {
    /// The keys `[kubernetes]` accepts.
    pub const KEYS: &'static [&'static str] = &[
        "node_name",
        "driver",
        "api_server",
        "registry_dir",
        "plugin_dir",
        "cdi_dir",
        "publish_interval_s",
        "capacity",
        "units_per_device",
        "tenant_endpoint",
    ];

    /// The DRA socket the kubelet calls.
    pub fn dra_socket(&self) -> PathBuf {
        self.plugin_dir.join(&self.driver).join("dra.sock")
    }

    /// The registration socket the kubelet's plugin watcher finds.
    pub fn registration_socket(&self) -> PathBuf {
        self.registry_dir.join(format!("{}-reg.sock", self.driver))
    }
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            node_name: None,
            driver: "gpu.setpoint.dev".into(),
            api_server: None,
            registry_dir: "/var/lib/kubelet/plugins_registry".into(),
            plugin_dir: "/var/lib/kubelet/plugins".into(),
            cdi_dir: "/var/run/cdi".into(),
            publish_interval_s: 10,
            capacity: CapacityMode::Consumable,
            units_per_device: 8,
            tenant_endpoint: None,
        }
    }
}

/// A DNS subdomain (RFC 1123): lowercase letters, digits, `-` and `.`, at most 253
/// characters, each label starting and ending with a letter or digit.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
