//! The one map from every error the API meets (the node's, the codec's, the batcher's) to
//! an HTTP status, and the JSON form of every error answer.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::v2codec::{self, CodecError};
use crate::config::ConfigIssue;
use crate::node::{DeleteRefusal, NodeError};
use crate::serve::ServeError;

/// An error answer: a status and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, v2codec::encode_error(&self.message)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"setpoint\""),
            );
        }
        r
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::Delete(r) => return ApiError::new(StatusCode::CONFLICT, delete_refused(r)),
            NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Internal(_) | NodeError::StateDir(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A refused DELETE of a job, saying what to send instead.
fn delete_refused(r: &DeleteRefusal) -> String {
    match r {
        DeleteRefusal::AlreadyEnded { name, .. } => {
            format!("{r}; DELETE /v1/jobs/{name} without action=cancel removes it")
        }
        DeleteRefusal::NotEnded { name, .. } => format!(
            "{r}; cancel it first (DELETE /v1/jobs/{name}?action=cancel), and remove it once \
             it has ended"
        ),
        DeleteRefusal::Served { service, .. } => {
            format!("{r}; remove the service first (DELETE /v1/services/{service})")
        }
    }
}

impl From<CodecError> for ApiError {
    fn from(e: CodecError) -> Self {
        ApiError::new(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            e.to_string(),
        )
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let status = match &e {
            ServeError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServeError::InputShape { .. }
            | ServeError::NotFinite { .. }
            | ServeError::TooManyRows { .. } => StatusCode::BAD_REQUEST,
            ServeError::ShuttingDown { .. } | ServeError::DeviceFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Compute { .. } | ServeError::Setup { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl ApiError {
    /// The gRPC status code of this error, from its HTTP status as the Open Inference
    /// Protocol pairs them: one map for both transports.
    pub(crate) fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.status {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT => Code::FailedPrecondition,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
                Code::ResourceExhausted
            }
            StatusCode::NOT_IMPLEMENTED | StatusCode::METHOD_NOT_ALLOWED => Code::Unimplemented,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
            _ => Code::Internal,
        }
    }

    /// The gRPC status answering this error, with the message HTTP gives.
    pub(crate) fn into_status(self) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), self.message)
    }

    /// A 400 for a body that does not validate: every problem, `; `-separated.
    pub(crate) fn invalid(issues: &[ConfigIssue]) -> Self {
        let lines: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
        Self::bad_request(lines.join("; "))
    }
}

/// The result of a handler.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Every error answer is JSON (`{"error": …}`): the extractors' own rejections (a path that is
/// not UTF-8, say) come as plain text and are rewrapped here, keeping their status and
/// headers.
pub(super) async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut r = ApiError::new(status, message).into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (k, v) in parts.headers.iter() {
        r.headers_mut().entry(k).or_insert(v.clone());
    }
    r
}

pub(super) async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

pub(super) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}
