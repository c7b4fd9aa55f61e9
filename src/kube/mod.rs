//! setpoint in a Kubernetes cluster, as a Dynamic Resource Allocation driver
//! (`resource.k8s.io/v1`): the kube-scheduler places tenants, each node's daemon admits and
//! enforces. Built with the `kubernetes` feature.
//!
//! - **Node side** (the daemon, with a `[kubernetes]` section): publishes its devices and the
//!   capacity admission could still give as the node's ResourceSlices ([`slice`],
//!   [`publish`]), and serves the kubelet's plugin registration and DRA services on Unix
//!   sockets ([`plugin`]). Preparing a claim admits its tenant ([`claims`], [`prepared`]) and
//!   hands the pod a CDI device with the daemon's endpoint ([`cdi`]).
//! - **Workload side** (`setpoint operator`): turns `SetpointJob` and `SetpointService`
//!   objects into ResourceClaimTemplates and tenant pods, and writes their measured state
//!   back ([`operator`]).

pub mod cdi;
pub mod claims;
pub mod driver;
pub mod operator;
pub mod params;
pub mod plugin;
pub mod prepared;
pub mod publish;
pub mod slice;

/// The kubelet's gRPC services, generated from `proto/kubelet/`.
pub mod pb {
    /// The DRA plugin service, v1.
    pub mod dra {
        tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
    }
    /// Plugin registration.
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}

use std::sync::Arc;

use crate::config::KubernetesConfig;
use crate::node::Node;

/// Starts the node side for `node` (its config has `[kubernetes]`): connects to the API
/// server, serves the kubelet plugin's sockets and publishes the node's ResourceSlices.
/// `listen` is the HTTP API's address, for the endpoint tenants are given.
pub async fn start(
    node: Arc<Node>,
    cfg: KubernetesConfig,
    listen: std::net::SocketAddr,
) -> Result<(), String> {
    let node_name = node_name(&cfg, std::env::var("NODE_NAME").ok())?;
    let endpoint = endpoint(&cfg, std::env::var("NODE_IP").ok(), listen);
    let client = client(&cfg).await?;
    let driver = Arc::new(driver::Driver::new(
        node.clone(),
        client.clone(),
        cfg.clone(),
        node_name.clone(),
        endpoint.clone(),
    )?);
    plugin::serve(driver.clone())?;
    let spec = slice::SliceSpec {
        driver: cfg.driver.clone(),
        node: node_name.clone(),
        mode: cfg.capacity,
        units: cfg.units_per_device,
    };
    tokio::spawn(publish::run(node, driver, client, spec));
    tracing::info!(node = %node_name, driver = %cfg.driver, %endpoint, "Kubernetes driver started");
    Ok(())
}

/// The node's name: the config's, else `$NODE_NAME`.
fn node_name(cfg: &KubernetesConfig, env: Option<String>) -> Result<String, String> {
    let name = cfg
        .node_name
        .clone()
        .or(env.filter(|n| !n.is_empty()))
        .ok_or(
            "kubernetes.node_name: not set, and NODE_NAME is not in the environment (the \
                DaemonSet sets it from spec.nodeName)",
        )?;
    if crate::config::is_dns_subdomain(&name) {
        Ok(name)
    } else {
        Err(format!(
            "NODE_NAME: {name:?} is not a DNS subdomain, as node names are"
        ))
    }
}

/// The URL tenants are given: the config's, else the node's IP (`$NODE_IP`) at the HTTP
/// port, else the listen address itself.
fn endpoint(
    cfg: &KubernetesConfig,
    node_ip: Option<String>,
    listen: std::net::SocketAddr,
) -> String {
    if let Some(e) = &cfg.tenant_endpoint {
        return e.clone();
    }
    match node_ip.filter(|ip| !ip.is_empty()) {
        Some(ip) if ip.contains(':') => format!("http://[{ip}]:{}", listen.port()),
        Some(ip) => format!("http://{ip}:{}", listen.port()),
        None => format!("http://{listen}"),
    }
}

/// A client of the API server the config names, else of the cluster the pod runs in (or
/// `$KUBECONFIG`).
async fn client(cfg: &KubernetesConfig) -> Result<kube::Client, String> {
    match &cfg.api_server {
        Some(url) => {
            let uri = url
                .parse()
                .map_err(|e| format!("kubernetes.api_server: {url:?}: {e}"))?;
            kube::Client::try_from(kube::Config::new(uri))
                .map_err(|e| format!("kubernetes.api_server: {url}: {e}"))
        }
        None => kube::Client::try_default().await.map_err(|e| {
            format!("cannot reach the API server (no service account in this pod, and no usable kubeconfig): {e}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_name_comes_from_the_config_or_the_environment() {
        let mut cfg = KubernetesConfig::default();
        assert_eq!(node_name(&cfg, Some("node-a".into())), Ok("node-a".into()));
        let e = node_name(&cfg, None).unwrap_err();
        assert!(
            e.starts_with("kubernetes.node_name: not set, and NODE_NAME"),
            "{e}"
        );
        assert!(
            node_name(&cfg, Some("Node_A".into()))
                .unwrap_err()
                .contains("not a DNS subdomain")
        );
        cfg.node_name = Some("gpu-7".into());
        assert_eq!(node_name(&cfg, Some("node-a".into())), Ok("gpu-7".into()));
    }

    #[test]
    fn tenants_are_sent_to_the_node_ip_at_the_api_port() {
        let mut cfg = KubernetesConfig::default();
        let listen: std::net::SocketAddr = "0.0.0.0:8000".parse().unwrap();
        assert_eq!(
            endpoint(&cfg, Some("10.1.2.3".into()), listen),
            "http://10.1.2.3:8000"
        );
        assert_eq!(
            endpoint(&cfg, Some("fd00::7".into()), listen),
            "http://[fd00::7]:8000"
        );
        assert_eq!(endpoint(&cfg, None, listen), "http://0.0.0.0:8000");
        cfg.tenant_endpoint = Some("http://setpoint.local:80".into());
        assert_eq!(
            endpoint(&cfg, Some("10.1.2.3".into()), listen),
            "http://setpoint.local:80"
        );
    }
}

#[cfg(test)]
mod admission_tests;
