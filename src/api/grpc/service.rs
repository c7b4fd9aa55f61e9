//! `inference.GRPCInferenceService`: every RPC of the Open Inference Protocol's gRPC service
//! with Triton's extensions. Requests take the HTTP path's steps (`api/inference.rs`): the
//! same model lookup, batcher, timeouts, queue limits and statistics, and errors keep HTTP's
//! messages under the gRPC code the error map gives ([`ApiError::grpc_code`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::pb;
use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::{codec, models};
use crate::api::http::{ApiError, ApiResult, constant_time_eq};
use crate::api::inference::{ClientTimeout, account, run_rows, served_model};
use crate::api::server::Arrival;
use crate::node::{LoadedService, Node, ServiceSlot};
use crate::serve::{MODEL_VERSION, Protocol};

/// The service's state: the node it answers for.
#[derive(Clone)]
pub struct Inference {
    node: Arc<Node>,
}

impl Inference {
    /// The service for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Inference { node }
    }

    /// The largest request message the node takes, bytes (`max_request_bytes`).
    pub(super) fn max_request_bytes(&self) -> usize {
        usize::try_from(self.node.config().max_request_bytes).unwrap_or(usize::MAX)
    }

    /// The serving model a request names; an empty version means any.
    fn model(&self, name: &str, version: &str) -> ApiResult<Arc<LoadedService>> {
        served_model(&self.node, name, Some(version).filter(|v| !v.is_empty()))
    }

    /// Runs one inference request that arrived at `start`, under the client's deadline when
    /// it set one, and counts it in the model's statistics.
    pub(super) async fn infer(
        &self,
        msg: pb::ModelInferRequest,
        start: Instant,
        deadline_us: Option<u64>,
    ) -> ApiResult<pb::ModelInferResponse> {
        let svc = self.model(&msg.model_name, &msg.model_version)?;
        let result = run(&svc, msg, start, deadline_us).await;
        account(&svc, Protocol::Grpc, start, result.as_ref().err());
        result
    }

    /// With `auth_token` set, the calls that would change the node need
    /// `authorization: Bearer TOKEN` metadata, as HTTP requires it on such requests.
    fn require_token(&self, metadata: &MetadataMap, rpc: &str) -> Result<(), Status> {
        let config = self.node.config();
        let Some(token) = config.auth_token.as_deref() else {
            return Ok(());
        };
        let given = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let message = match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => return Ok(()),
            Some(_) => format!("{rpc}: the bearer token is not the node's"),
            None => format!(
                "{rpc}: this node requires \"authorization: Bearer TOKEN\" metadata on calls \
                 that change it"
            ),
        };
        Err(Status::unauthenticated(message))
    }
}

/// Decodes, runs and encodes one request for `svc`.
async fn run(
    svc: &LoadedService,
    msg: pb::ModelInferRequest,
    start: Instant,
    deadline_us: Option<u64>,
) -> ApiResult<pb::ModelInferResponse> {
    // Shed first, as over HTTP: a full queue refuses before any decoding.
    svc.check_room(1)?;
    let mut req = codec::decode_infer(msg, &svc.io)?;
    // The shorter of `parameters.timeout` and the call's deadline, named as the one it is
    // when it passes.
    let client_timeout = ClientTimeout::shorter(req.timeout_us, deadline_us);
    req.timeout_us = client_timeout.map(ClientTimeout::us);
    let rows = req.row_vecs(svc.io.features);
    let probs = run_rows(svc, rows, client_timeout, start).await?;
    Ok(codec::encode_infer(
        svc.name(),
        MODEL_VERSION,
        &req,
        &probs,
        &svc.io,
    ))
}

/// When the request arrived: the listener's stamp, or now.
fn arrival<T>(request: &Request<T>) -> Instant {
    request
        .extensions()
        .get::<Arrival>()
        .map_or_else(Instant::now, |a| a.0)
}

/// The client's deadline (`grpc-timeout`: digits and a unit, H M S m u n), in microseconds.
pub(crate) fn grpc_timeout_us(metadata: &hyper::HeaderMap) -> Option<u64> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1))
}

/// The answer to an RPC setpoint does not serve.
fn unimplemented(rpc: &str, why: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not served by setpoint: {why}"))
}

const NO_SHARED_MEMORY: &str = "tensors travel in the request and the answer only; shared \
                                memory regions cannot be registered";
const NO_REPOSITORY: &str = "models are setpoint services, added and removed over HTTP \
                             (POST /v1/services, DELETE /v1/services/{name}) or with \
                             `setpoint services`";

type Answer<T> = Result<Response<T>, Status>;
pub(super) type StreamAnswers =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

fn ok<T>(t: T) -> Answer<T> {
    Ok(Response::new(t))
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Answer<pb::ServerLiveResponse> {
        ok(pb::ServerLiveResponse { live: true })
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Answer<pb::ServerReadyResponse> {
        ok(pb::ServerReadyResponse {
            ready: self.node.is_ready(),
        })
    }

    /// A model that is unknown, loading or failed is not ready; as Triton answers it, that
    /// is `ready: false`, not an error.
    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Answer<pb::ModelReadyResponse> {
        let r = request.into_inner();
        ok(pb::ModelReadyResponse {
            ready: self.model(&r.name, &r.version).is_ok(),
        })
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Answer<pb::ServerMetadataResponse> {
        ok(pb::ServerMetadataResponse {
            name: "setpoint".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: ["binary_tensor_data", "model_configuration", "statistics"]
                .map(String::from)
                .to_vec(),
        })
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Answer<pb::ModelMetadataResponse> {
        let r = request.into_inner();
        let svc = self
            .model(&r.name, &r.version)
            .map_err(ApiError::into_status)?;
        ok(models::metadata(&svc))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Answer<pb::ModelInferResponse> {
        let start = arrival(&request);
        let deadline = grpc_timeout_us(request.metadata().as_ref());
        let answer = self.infer(request.into_inner(), start, deadline).await;
        answer.map(Response::new).map_err(ApiError::into_status)
    }

    type ModelStreamInferStream = StreamAnswers;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Answer<StreamAnswers> {
        ok(super::stream::answers(self.clone(), request.into_inner()))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Answer<pb::ModelConfigResponse> {
        let r = request.into_inner();
        let svc = self
            .model(&r.name, &r.version)
            .map_err(ApiError::into_status)?;
        ok(pb::ModelConfigResponse {
            config: Some(models::config(&svc)),
        })
    }

    /// One model's statistics, or every serving model's when no name is given.
    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Answer<pb::ModelStatisticsResponse> {
        let r = request.into_inner();
        let services = if r.name.is_empty() {
            self.node.ready_services()
        } else {
            vec![
                self.model(&r.name, &r.version)
                    .map_err(ApiError::into_status)?,
            ]
        };
        ok(pb::ModelStatisticsResponse {
            model_stats: services.iter().map(|s| models::statistics(s)).collect(),
        })
    }

    /// Every service, with its state: READY, LOADING or UNAVAILABLE (with the reason).
    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Answer<pb::RepositoryIndexResponse> {
        use pb::repository_index_response::ModelIndex;
        let ready_only = request.into_inner().ready;
        let models = self
            .node
            .service_slots()
            .into_iter()
            .map(|(name, slot)| {
                let (state, reason) = match slot {
                    ServiceSlot::Ready(_) => ("READY", String::new()),
                    ServiceSlot::Loading(_) => ("LOADING", String::new()),
                    ServiceSlot::Failed(_, e) => ("UNAVAILABLE", e),
                };
                ModelIndex {
                    name,
                    version: MODEL_VERSION.into(),
                    state: state.into(),
                    reason,
                }
            })
            .filter(|m| !ready_only || m.state == "READY")
            .collect();
        ok(pb::RepositoryIndexResponse { models })
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Answer<pb::RepositoryModelLoadResponse> {
        self.require_token(request.metadata(), "RepositoryModelLoad")?;
        Err(unimplemented("RepositoryModelLoad", NO_REPOSITORY))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Answer<pb::RepositoryModelUnloadResponse> {
        self.require_token(request.metadata(), "RepositoryModelUnload")?;
        Err(unimplemented("RepositoryModelUnload", NO_REPOSITORY))
    }

    /// No region is ever registered.
    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Answer<pb::SystemSharedMemoryStatusResponse> {
        ok(pb::SystemSharedMemoryStatusResponse::default())
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Answer<pb::SystemSharedMemoryRegisterResponse> {
        self.require_token(request.metadata(), "SystemSharedMemoryRegister")?;
        Err(unimplemented(
            "SystemSharedMemoryRegister",
            NO_SHARED_MEMORY,
        ))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<pb::SystemSharedMemoryUnregisterResponse> {
        self.require_token(request.metadata(), "SystemSharedMemoryUnregister")?;
        Err(unimplemented(
            "SystemSharedMemoryUnregister",
            NO_SHARED_MEMORY,
        ))
    }

    /// No region is ever registered.
    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Answer<pb::CudaSharedMemoryStatusResponse> {
        ok(pb::CudaSharedMemoryStatusResponse::default())
    }

    async fn cuda_shared_memory_register(
        &self,
        request: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Answer<pb::CudaSharedMemoryRegisterResponse> {
        self.require_token(request.metadata(), "CudaSharedMemoryRegister")?;
        Err(unimplemented("CudaSharedMemoryRegister", NO_SHARED_MEMORY))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        request: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<pb::CudaSharedMemoryUnregisterResponse> {
        self.require_token(request.metadata(), "CudaSharedMemoryUnregister")?;
        Err(unimplemented(
            "CudaSharedMemoryUnregister",
            NO_SHARED_MEMORY,
        ))
    }

    async fn trace_setting(
        &self,
        request: Request<pb::TraceSettingRequest>,
    ) -> Answer<pb::TraceSettingResponse> {
        if !request.get_ref().settings.is_empty() {
            self.require_token(request.metadata(), "TraceSetting")?;
        }
        Err(unimplemented(
            "TraceSetting",
            "requests are not traced; /metrics and the job and service views carry the timings",
        ))
    }

    async fn log_settings(
        &self,
        request: Request<pb::LogSettingsRequest>,
    ) -> Answer<pb::LogSettingsResponse> {
        if !request.get_ref().settings.is_empty() {
            self.require_token(request.metadata(), "LogSettings")?;
        }
        Err(unimplemented(
            "LogSettings",
            "the daemon's log level is set at start with SETPOINT_LOG",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_malformed() {
        let at = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout_us(m.as_ref())
        };
        assert_eq!(at("2S"), Some(2_000_000));
        assert_eq!(at("250m"), Some(250_000));
        assert_eq!(at("40u"), Some(40));
        assert_eq!(
            at("1500n"),
            Some(1),
            "rounded down, but never to no time at all"
        );
        assert_eq!(at("1M"), Some(60_000_000));
        assert_eq!(at("1H"), Some(3_600_000_000));
        assert_eq!(at("5x"), None);
        assert_eq!(at("m"), None);
        assert_eq!(at("123456789S"), None, "at most 8 digits");
        assert_eq!(grpc_timeout_us(&hyper::HeaderMap::new()), None);
    }
}
