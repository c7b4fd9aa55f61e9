//! A blocking HTTP client for a running daemon, as the `setpoint submit`, `jobs`, `infer`,
//! `status` and `bench http` commands use it: the `/v1` jobs and status API and the v2
//! inference protocol, with one error type that says whether the daemon could not be
//! reached, refused the request (4xx) or failed (5xx).

pub(crate) mod dto;
pub mod events;
mod grpc_message;
mod grpc_mux;
mod grpc_request;
mod grpc_stream;
mod grpc_unary;
mod hpack;
mod keepalive;
pub mod load;
pub mod load_compare;
pub mod load_proto;
pub mod table;
pub mod v2;
pub mod watch;

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The URL the client commands use when neither `--url` nor `SETPOINT_URL` says otherwise.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8000";

/// Why a request to the daemon did not give an answer the command can use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("cannot reach the daemon at {url}: {reason}; is `setpoint serve` running?")]
    Unreachable {
        /// The daemon's base URL.
        url: String,
        /// `connection refused`, `host not found`, …
        reason: String,
    },
    /// The daemon answered with an error status; `message` is its `error` field.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The connection broke, or timed out, after it was made.
    #[error("request {method} {url} failed: {message}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The daemon answered 2xx with something the client cannot read.
    #[error("unexpected answer to {method} {url}: {message}")]
    BadResponse {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// What the user gave cannot be sent (a bad URL, a bad input file).
    #[error("{0}")]
    Input(String),
}

impl ClientError {
    /// True for errors in what the user asked: a 4xx answer or unusable input (exit code 2).
    pub fn is_input(&self) -> bool {
        match self {
            // 409 is a conflict with the node's state (a name in use, a job that ended, a
            // deadline the node cannot meet): not malformed input, so exit 1.
            ClientError::Api { status, .. } => (400..500).contains(status) && *status != 409,
            ClientError::Input(_) => true,
            _ => false,
        }
    }
}

/// The raw answer to a request: status, two headers that matter, and the body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: u16,
    /// `Inference-Header-Content-Length`, when the body holds binary tensors.
    pub header_len: Option<usize>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Setpoint-Server-Time-Us`: microseconds the daemon took, from the request's headers
    /// to its answer (inference answers only).
    pub server_us: Option<u64>,
    /// The whole body.
    pub body: Vec<u8>,
}

/// A blocking client for one daemon; one keep-alive connection is reused between calls.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// `SETPOINT_AUTH_TOKEN`, sent as a bearer token when set.
    token: Option<String>,
}

/// Largest response body the client reads.
const MAX_RESPONSE_BYTES: u64 = 1 << 30;

impl Client {
    /// A client for the daemon at `url` (`http://HOST:PORT`, a trailing `/` allowed).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let base = normalize_url(url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        let token = std::env::var("SETPOINT_AUTH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Client { base, agent, token })
    }

    /// The daemon's base URL, without a trailing `/`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`, expecting JSON.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.json_call("GET", path, None)
    }

    /// POST `body` as JSON to `path`, expecting JSON.
    pub fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value, ClientError> {
        let body = self.request_json("POST", path, body)?;
        self.json_call("POST", path, Some(body))
    }

    /// PATCH `path` with `body`, expecting JSON.
    pub fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value, ClientError> {
        let body = self.request_json("PATCH", path, body)?;
        self.json_call("PATCH", path, Some(body))
    }

    /// DELETE `path`; the JSON answer, or `null` for an empty one.
    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.json_call("DELETE", path, None)
    }

    /// Reads the JSON answer to `method path` as `T` (a view of the node's); one that does
    /// not fit is a [`ClientError::BadResponse`] naming the request.
    pub fn read_answer<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        answer: Value,
    ) -> Result<T, ClientError> {
        serde_json::from_value(answer).map_err(|e| ClientError::BadResponse {
            method,
            url: self.url(path),
            message: e.to_string(),
        })
    }

    /// `body` as JSON text.
    fn request_json<B: Serialize + ?Sized>(
        &self,
        method: &'static str,
        path: &str,
        body: &B,
    ) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(body).map_err(|e| {
            ClientError::Input(format!(
                "cannot write the body of {method} {}: {e}",
                self.url(path)
            ))
        })
    }

    fn json_call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, ClientError> {
        let raw = self.send(
            method,
            path,
            body.as_deref(),
            &[("content-type", "application/json")],
        )?;
        let url = self.url(path);
        let raw = check_status(raw)?;
        if raw.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&raw.body).map_err(|e| ClientError::BadResponse {
            method,
            url,
            message: format!("invalid JSON: {e}"),
        })
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse, ClientError> {
        let url = self.url(path);
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(b) = &bearer {
            all.push(("authorization", b));
        }
        let headers = all.as_slice();
        let result = match (method, body) {
            ("GET", _) => with_headers_nobody(self.agent.get(&url), headers).call(),
            ("DELETE", _) => with_headers_nobody(self.agent.delete(&url), headers).call(),
            ("PATCH", b) => {
                with_headers_body(self.agent.patch(&url), headers).send(b.unwrap_or_default())
            }
            (_, b) => with_headers_body(self.agent.post(&url), headers).send(b.unwrap_or_default()),
        };
        let mut resp = result.map_err(|e| self.transport_error(method, &url, e))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let header_len_text = header("inference-header-content-length");
        let content_type = header("content-type");
        let server_us = header(crate::api::SERVER_TIME_HEADER).and_then(|t| t.trim().parse().ok());
        let header_len = match header_len_text {
            Some(t) => Some(
                t.trim()
                    .parse::<usize>()
                    .map_err(|_| ClientError::BadResponse {
                        method,
                        url: url.clone(),
                        message: format!("invalid Inference-Header-Content-Length {t:?}"),
                    })?,
            ),
            None => None,
        };
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| self.transport_error(method, &url, e))?;
        Ok(RawResponse {
            status,
            header_len,
            content_type,
            server_us,
            body,
        })
    }

    fn transport_error(&self, method: &'static str, url: &str, e: ureq::Error) -> ClientError {
        transport_error(&self.base, method, url, e)
    }
}

/// Maps a ureq error to [`ClientError`]: failures to connect become `Unreachable`.
pub(crate) fn transport_error(
    base: &str,
    method: &'static str,
    url: &str,
    e: ureq::Error,
) -> ClientError {
    let unreachable = |reason: &str| ClientError::Unreachable {
        url: base.to_string(),
        reason: reason.to_string(),
    };
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => unreachable("connection refused"),
            std::io::ErrorKind::AddrNotAvailable => unreachable("address not available"),
            std::io::ErrorKind::NetworkUnreachable => unreachable("network unreachable"),
            std::io::ErrorKind::HostUnreachable => unreachable("host unreachable"),
            _ => ClientError::Transport {
                method,
                url: url.to_string(),
                message: io.to_string(),
            },
        },
        ureq::Error::HostNotFound => unreachable("host not found"),
        ureq::Error::ConnectionFailed => unreachable("connection failed"),
        ureq::Error::Timeout(ureq::Timeout::Connect) => unreachable("connection timed out"),
        ureq::Error::BadUri(u) => ClientError::Input(format!("invalid URL {u}")),
        other => ClientError::Transport {
            method,
            url: url.to_string(),
            message: other.to_string(),
        },
    }
}

fn with_headers_nobody(
    mut req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("content-type") {
            req = req.header(*k, *v);
        }
    }
    req
}

fn with_headers_body(
    mut req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// Passes a 2xx answer through; turns any other into [`ClientError::Api`] with the server's
/// `error` message (or the body's text when it is not our JSON).
pub(crate) fn check_status(raw: RawResponse) -> Result<RawResponse, ClientError> {
    if (200..300).contains(&raw.status) {
        return Ok(raw);
    }
    Err(ClientError::Api {
        status: raw.status,
        message: error_message(raw.status, &raw.body),
    })
}

/// The `error` field of a JSON error body, else the body's text, else the status's reason.
pub(crate) fn error_message(status: u16, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(m) = v.get("error").and_then(Value::as_str)
    {
        return m.to_string();
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    if !text.is_empty() {
        return text;
    }
    http_reason(status).to_string()
}

fn http_reason(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        409 => "conflict",
        413 => "payload too large",
        429 => "too many requests",
        500 => "internal server error",
        502 => "bad gateway",
        503 => "service unavailable",
        _ => "error status",
    }
}

/// Checks and normalises a daemon URL: `http://` only, no path, no trailing `/`.
pub(crate) fn normalize_url(url: &str) -> Result<String, ClientError> {
    let url = url.trim();
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(ClientError::Input(format!(
            "invalid URL {url}: https is not supported; the daemon speaks plain HTTP \
             (use http://HOST:PORT, behind a TLS proxy if needed)"
        )));
    } else if url.contains("://") {
        return Err(ClientError::Input(format!(
            "invalid URL {url}: expected http://HOST:PORT"
        )));
    } else {
        // `127.0.0.1:8000` is what a user types; accept it as http.
        url
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(ClientError::Input(format!(
            "invalid URL {url:?}: expected http://HOST:PORT"
        )));
    }
    Ok(format!("http://{rest}"))
}

/// Percent-encodes one path segment (a job or model name).
pub(crate) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised_and_https_refused() {
        assert_eq!(
            normalize_url("http://127.0.0.1:8000/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert_eq!(normalize_url("localhost:9").unwrap(), "http://localhost:9");
        assert!(normalize_url("https://x").unwrap_err().is_input());
        assert!(normalize_url("ftp://x").is_err());
        assert!(normalize_url("").is_err());
    }

    #[test]
    fn error_message_prefers_the_servers_error_field() {
        assert_eq!(
            error_message(404, br#"{"error":"unknown job x"}"#),
            "unknown job x"
        );
        assert_eq!(error_message(502, b"bad gateway\n"), "bad gateway");
        assert_eq!(error_message(503, b""), "service unavailable");
    }

    #[test]
    fn api_errors_split_into_input_and_runtime() {
        let e = |status| ClientError::Api {
            status,
            message: "m".into(),
        };
        assert!(e(404).is_input());
        assert!(e(429).is_input());
        assert!(!e(500).is_input());
        assert!(!e(503).is_input());
    }

    #[test]
    fn connection_refused_is_one_clear_line() {
        // Port 1 on loopback is closed on any sane machine.
        let c = Client::new("http://127.0.0.1:1").unwrap();
        let err = c.get("/v1/status").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot reach the daemon at http://127.0.0.1:1: connection refused; \
             is `setpoint serve` running?"
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(path_segment("mlp-1.v2"), "mlp-1.v2");
    }
}
