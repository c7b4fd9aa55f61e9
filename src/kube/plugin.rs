//! The kubelet plugin: the registration service on `<registry_dir>/<driver>-reg.sock`, which
//! the kubelet's plugin watcher finds and asks what the plugin is, and the DRA service
//! (`v1.DRAPlugin`) on `<plugin_dir>/<driver>/dra.sock`, which it calls to prepare and
//! unprepare claims. Both are gRPC over HTTP/2 on Unix sockets, served by hyper.

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tonic::codegen::{Service, http};
use tonic::{Request, Response, Status};

use super::claims::ClaimRef;
use super::driver::Driver;
use super::pb::dra::dra_plugin_server::{DraPlugin, DraPluginServer};
use super::pb::dra::{
    Claim, Device, NodePrepareResourceResponse, NodePrepareResourcesRequest,
    NodePrepareResourcesResponse, NodeUnprepareResourceResponse, NodeUnprepareResourcesRequest,
    NodeUnprepareResourcesResponse,
};
use super::pb::registration::registration_server::{Registration, RegistrationServer};
use super::pb::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};

/// The plugin type the kubelet knows DRA drivers by.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The DRA service version offered, as registration names it.
pub const DRA_SERVICE: &str = "v1.DRAPlugin";

/// Registration: what the plugin is and where its DRA service listens.
struct Registrar {
    driver: String,
    endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: PLUGIN_TYPE.into(),
            name: self.driver.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![DRA_SERVICE.into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!(driver = %self.driver, "registered with the kubelet");
        } else {
            tracing::error!(driver = %self.driver, error = %s.error, "the kubelet refused the plugin");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// The DRA service over the driver.
struct Dra(Arc<Driver>);

fn claim_ref(c: Claim) -> ClaimRef {
    ClaimRef {
        namespace: c.namespace,
        uid: c.uid,
        name: c.name,
    }
}

#[tonic::async_trait]
impl DraPlugin for Dra {
    async fn node_prepare_resources(
        &self,
        req: Request<NodePrepareResourcesRequest>,
    ) -> Result<Response<NodePrepareResourcesResponse>, Status> {
        let mut claims = std::collections::HashMap::new();
        for c in req.into_inner().claims {
            let r = claim_ref(c);
            let answer = match self.0.prepare(&r).await {
                Ok(p) => NodePrepareResourceResponse {
                    devices: p
                        .allocated
                        .iter()
                        .map(|a| Device {
                            request_names: vec![a.request.clone()],
                            pool_name: a.pool.clone(),
                            device_name: a.device.clone(),
                            cdi_device_ids: vec![p.cdi_device.clone()],
                        })
                        .collect(),
                    error: String::new(),
                },
                Err(error) => {
                    tracing::warn!(claim = %r, %error, "claim not prepared");
                    NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    }
                }
            };
            claims.insert(r.uid, answer);
        }
        Ok(Response::new(NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<NodeUnprepareResourcesRequest>,
    ) -> Result<Response<NodeUnprepareResourcesResponse>, Status> {
        let mut claims = std::collections::HashMap::new();
        for c in req.into_inner().claims {
            let r = claim_ref(c);
            let error = match self.0.unprepare(&r).await {
                Ok(()) => String::new(),
                Err(e) => {
                    tracing::warn!(claim = %r, error = %e, "claim not unprepared");
                    e
                }
            };
            claims.insert(r.uid, NodeUnprepareResourceResponse { error });
        }
        Ok(Response::new(NodeUnprepareResourcesResponse { claims }))
    }
}

/// Listens on both sockets (a stale socket file from an earlier run is replaced) and serves
/// them until the runtime stops.
pub fn serve(driver: Arc<Driver>) -> Result<(), String> {
    let cfg = driver.config().clone();
    let dra_path = cfg.dra_socket();
    let reg_path = cfg.registration_socket();
    let dra = listen(&dra_path)?;
    let reg = listen(&reg_path)?;
    let registrar = Registrar {
        driver: cfg.driver.clone(),
        endpoint: dra_path.display().to_string(),
    };
    tokio::spawn(accept(dra, DraPluginServer::new(Dra(driver))));
    tokio::spawn(accept(reg, RegistrationServer::new(registrar)));
    tracing::info!(
        dra = %dra_path.display(),
        registration = %reg_path.display(),
        "kubelet plugin listening"
    );
    Ok(())
}

fn listen(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot replace {}: {e}", path.display()));
        }
        _ => {}
    }
    UnixListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))
}

/// Serves each connection of `listener` with `svc` over HTTP/2.
async fn accept<S>(listener: UnixListener, svc: S)
where
    S: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet plugin: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let svc = TowerToHyperService::new(svc.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "kubelet plugin connection ended");
            }
        });
    }
}
