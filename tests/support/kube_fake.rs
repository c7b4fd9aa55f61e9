//! Stand-ins for what a node's setpoint meets in a cluster, for the Kubernetes driver's
//! tests: an API server that serves ResourceClaims and keeps ResourceSlices (the few calls
//! the node makes, over real HTTP, so the daemon's own kube client is what is tested), and
//! a kubelet that registers the plugin and calls it over its Unix sockets.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, Uri};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use setpoint::kube::pb::dra::dra_plugin_client::DraPluginClient;
use setpoint::kube::pb::registration::registration_client::RegistrationClient;
use tokio::net::UnixStream;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

/// What the fake API server holds and saw.
#[derive(Default)]
pub struct ApiState {
    /// ResourceClaims by (namespace, name).
    pub claims: Mutex<BTreeMap<(String, String), Value>>,
    /// ResourceSlices by name, as last applied.
    pub slices: Mutex<BTreeMap<String, Value>>,
    /// Every request: method, path and query.
    pub requests: Mutex<Vec<String>>,
}

impl ApiState {
    /// How many requests went to a path containing `part`, by method.
    pub fn count(&self, method: &str, part: &str) -> usize {
        let log = self.requests.lock().unwrap();
        log.iter()
            .filter(|r| r.starts_with(method) && r.contains(part))
            .count()
    }
}

fn status(code: u16, reason: &str, message: String) -> (StatusCode, Json<Value>) {
    (
        StatusCode::from_u16(code).unwrap(),
        Json(
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "message": message, "reason": reason, "code": code}),
        ),
    )
}

async fn get_claim(
    State(s): State<Arc<ApiState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    uri: Uri,
) -> (StatusCode, Json<Value>) {
    s.requests.lock().unwrap().push(format!("GET {uri}"));
    match s.claims.lock().unwrap().get(&(ns, name.clone())) {
        Some(c) => (StatusCode::OK, Json(c.clone())),
        None => status(
            404,
            "NotFound",
            format!("resourceclaims \"{name}\" not found"),
        ),
    }
}

async fn list_slices(
    State(s): State<Arc<ApiState>>,
    Query(q): Query<BTreeMap<String, String>>,
    uri: Uri,
) -> Json<Value> {
    s.requests.lock().unwrap().push(format!("GET {uri}"));
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let items: Vec<Value> = s
        .slices
        .lock()
        .unwrap()
        .values()
        .filter(|v| {
            let Some((k, want)) = selector.split_once('=') else {
                return true;
            };
            v["metadata"]["labels"][k] == want
        })
        .cloned()
        .collect();
    Json(
        json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
                "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

async fn apply_slice(
    State(s): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    uri: Uri,
    body: String,
) -> (StatusCode, Json<Value>) {
    s.requests.lock().unwrap().push(format!("PATCH {uri}"));
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return status(400, "BadRequest", "not JSON".into());
    };
    s.slices.lock().unwrap().insert(name, v.clone());
    (StatusCode::OK, Json(v))
}

async fn delete_slice(
    State(s): State<Arc<ApiState>>,
    UrlPath(name): UrlPath<String>,
    uri: Uri,
) -> (StatusCode, Json<Value>) {
    s.requests.lock().unwrap().push(format!("DELETE {uri}"));
    match s.slices.lock().unwrap().remove(&name) {
        Some(v) => (StatusCode::OK, Json(v)),
        None => status(
            404,
            "NotFound",
            format!("resourceslices \"{name}\" not found"),
        ),
    }
}

/// Serves the fake API server on a free loopback port of `rt`; its URL and state.
pub fn api_server(rt: &tokio::runtime::Runtime) -> (String, Arc<ApiState>) {
    let state = Arc::new(ApiState::default());
    let app = axum::Router::new()
        .route(
            "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}",
            get(get_claim),
        )
        .route("/apis/resource.k8s.io/v1/resourceslices", get(list_slices))
        .route(
            "/apis/resource.k8s.io/v1/resourceslices/{name}",
            axum::routing::patch(apply_slice).delete(delete_slice),
        )
        .with_state(state.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

/// A claim allocated `devices` of `pool` (request `share`), with `params` for the driver.
pub fn claim(
    ns: &str,
    name: &str,
    uid: &str,
    pool: &str,
    devices: &[&str],
    params: Value,
) -> Value {
    let results: Vec<Value> = devices
        .iter()
        .map(|d| json!({"request": "share", "driver": "gpu.setpoint.dev", "pool": pool, "device": d}))
        .collect();
    json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": {"devices": {"requests": [{"name": "share", "exactly": {"deviceClassName": "setpoint-cpu"}}]}},
        "status": {"allocation": {"devices": {"results": results, "config": [
            {"source": "FromClaim", "opaque": {"driver": "gpu.setpoint.dev", "parameters": params}}
        ]}}}
    })
}

/// Connects to a Unix socket (tonic's channels speak TCP by default).
#[derive(Clone)]
struct Uds(PathBuf);

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send>>;

impl Service<Uri> for Uds {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
    }
}

async fn channel(socket: &Path) -> Channel {
    Endpoint::try_from("http://kubelet.local")
        .unwrap()
        .connect_with_connector(Uds(socket.to_path_buf()))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()))
}

/// The kubelet's end of the registration socket.
pub async fn registration(socket: &Path) -> RegistrationClient<Channel> {
    RegistrationClient::new(channel(socket).await)
}

/// The kubelet's end of the DRA socket.
pub async fn dra(socket: &Path) -> DraPluginClient<Channel> {
    DraPluginClient::new(channel(socket).await)
}
