//! Reading the tenants' state from their nodes' daemons: `GET /v1/status` once per node and
//! pass (every tenant's state and figures), and a failed tenant's view for its error.
//! Only GETs, which a daemon with an auth token still answers without it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::node::{TenantKind, TenantView};

/// How long one read of a node may take before the pass goes on without it.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// A client for the nodes' daemons, all on one port.
#[derive(Debug, Clone)]
pub struct NodeReader {
    agent: ureq::Agent,
    port: u16,
}

/// What a node said about its tenants, or why it could not be read.
pub type NodeAnswer = Result<HashMap<(TenantKind, String), TenantView>, String>;

#[derive(Deserialize)]
struct Tenants {
    tenants: Vec<TenantView>,
}

#[derive(Deserialize)]
struct WithError {
    #[serde(default)]
    error: Option<String>,
}

impl NodeReader {
    /// A reader for daemons listening on `port` at their nodes' addresses.
    pub fn new(port: u16) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(READ_TIMEOUT))
            .timeout_global(Some(READ_TIMEOUT))
            .build()
            .into();
        NodeReader { agent, port }
    }

    /// The daemon's URL at `host`.
    pub fn base(&self, host: IpAddr) -> String {
        format!("http://{}", SocketAddr::new(host, self.port))
    }

    /// Every tenant of the node at `host`, by kind and name.
    pub async fn tenants(&self, host: IpAddr) -> NodeAnswer {
        let url = format!("{}/v1/status", self.base(host));
        let t: Tenants = self.get(url).await?;
        Ok(t.tenants
            .into_iter()
            .map(|v| ((v.kind, v.name.clone()), v))
            .collect())
    }

    /// Why a failed tenant failed, as its node says it (`None` when it says nothing or
    /// cannot be read: the state alone is reported then).
    pub async fn error(&self, host: IpAddr, kind: TenantKind, tenant: &str) -> Option<String> {
        let route = match kind {
            TenantKind::Job => "jobs",
            TenantKind::Service => "services",
        };
        let url = format!("{}/v1/{route}/{tenant}", self.base(host));
        self.get::<WithError>(url).await.ok()?.error
    }

    async fn get<T: DeserializeOwned + Send + 'static>(&self, url: String) -> Result<T, String> {
        let agent = self.agent.clone();
        let read = tokio::task::spawn_blocking(move || get_blocking(&agent, &url));
        match read.await {
            Ok(r) => r,
            Err(e) => Err(format!("the read of a node was stopped: {e}")),
        }
    }
}

fn get_blocking<T: DeserializeOwned>(agent: &ureq::Agent, url: &str) -> Result<T, String> {
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    if status != 200 {
        let message = serde_json::from_slice::<WithError>(&body)
            .ok()
            .and_then(|e| e.error)
            .unwrap_or_default();
        return Err(format!("{url} answered HTTP {status} {message}")
            .trim_end()
            .to_string());
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {url}: {e}"))
}
