//! The inference path every transport shares once a request is decoded: the request's
//! timeout, the batcher, and the accounting of the outcome in the service's statistics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::api::http::{ApiError, ApiResult};
use crate::node::{LoadedService, Node};
use crate::serve::{MODEL_VERSION, Protocol, ServeError};

/// The timeout a request runs under: the service's `timeout_ms`, or the client's
/// `parameters.timeout` when that is shorter (a longer one is clamped, as Triton's
/// `allow_timeout_override` only lets a request shorten its queue policy's timeout).
/// Returns the timeout and whether the client's was clamped.
pub(crate) fn request_timeout(service: Duration, client_us: Option<u64>) -> (Duration, bool) {
    match client_us {
        Some(us) if Duration::from_micros(us) <= service => (Duration::from_micros(us), false),
        Some(_) => (service, true),
        None => (service, false),
    }
}

/// A client's timeout, in microseconds, and where it came from, as a timeout answer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientTimeout {
    /// The request's `parameters.timeout` (HTTP or gRPC).
    Parameter(u64),
    /// The gRPC call's deadline (`grpc-timeout`: tritonclient's `client_timeout`).
    Deadline(u64),
}

impl ClientTimeout {
    /// The shorter of a request's `parameters.timeout` and its call's deadline (the
    /// parameter when they are equal).
    pub(crate) fn shorter(parameter_us: Option<u64>, deadline_us: Option<u64>) -> Option<Self> {
        match (parameter_us, deadline_us) {
            (Some(p), Some(d)) if d < p => Some(Self::Deadline(d)),
            (Some(p), _) => Some(Self::Parameter(p)),
            (None, d) => d.map(Self::Deadline),
        }
    }

    /// The timeout in microseconds.
    pub(crate) fn us(self) -> u64 {
        match self {
            Self::Parameter(us) | Self::Deadline(us) => us,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Parameter(_) => "the client's parameters.timeout",
            Self::Deadline(_) => "the client's deadline (grpc-timeout)",
        }
    }
}

/// The answer to a request that ran out of time (504, `DEADLINE_EXCEEDED`), saying which
/// timeout applied.
pub(crate) fn timed_out(
    svc: &LoadedService,
    timeout: Duration,
    client: Option<ClientTimeout>,
    clamped: bool,
) -> ApiError {
    let us = timeout.as_micros();
    let which = match client {
        Some(c) if clamped => format!(
            "the service's timeout_ms = {}; {} of {} us is longer and was clamped to it",
            svc.timeout_ms(),
            c.name(),
            c.us()
        ),
        Some(c) => c.name().to_string(),
        None => format!("the service's timeout_ms = {}", svc.timeout_ms()),
    };
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "model {}: no answer within the request's timeout of {us} us ({which}); \
             a request still queued at its timeout is dropped without being run",
            svc.name()
        ),
    )
}

/// The serving service `model` names, at `version` when one is given (the only version is
/// [`MODEL_VERSION`]): 404 for an unknown model or version, 503 while it loads.
pub(crate) fn served_model(
    node: &Node,
    model: &str,
    version: Option<&str>,
) -> ApiResult<Arc<LoadedService>> {
    let svc = node.service(model)?;
    match version {
        Some(v) if v != MODEL_VERSION => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {model} has no version {v} (available: {MODEL_VERSION})"),
        )),
        _ => Ok(svc),
    }
}

/// Runs `rows` through the service's batcher under the request's timeout (see
/// [`request_timeout`]), counted from `start`, the request's arrival. Returns the outputs,
/// row-major, in the order of the rows.
pub(crate) async fn run_rows(
    svc: &LoadedService,
    rows: Vec<Vec<f32>>,
    client_timeout: Option<ClientTimeout>,
    start: Instant,
) -> ApiResult<Vec<f32>> {
    let (timeout, clamped) = request_timeout(svc.timeout(), client_timeout.map(ClientTimeout::us));
    // The timeout counts from the request's arrival, reading and decoding included.
    let left = timeout.saturating_sub(start.elapsed());
    if left.is_zero() {
        svc.primary().batcher.count_expired_unqueued(rows.len());
        return Err(timed_out(svc, timeout, client_timeout, clamped));
    }
    // With several replicas, a request that meets a device failing under it is run again
    // on another replica (the failed one is out of the split from then on): it keeps a copy
    // of its rows for that. One replica's failure is then never a client's error.
    let spare = (svc.replicas().len() > 1).then(|| rows.clone());
    match run_on_replica(svc, rows, start, timeout).await {
        Err(ServeError::DeviceFailed { .. }) if spare.is_some() => {
            let rows = spare.unwrap_or_default();
            run_on_replica(svc, rows, start, timeout).await
        }
        other => other,
    }
    .map_err(|e| match e {
        ServeError::TimedOut { .. } => timed_out(svc, timeout, client_timeout, clamped),
        e => e.into(),
    })
}

/// Runs `rows` on the replica the service's split chooses, within what is left of
/// `timeout` from `start`.
async fn run_on_replica(
    svc: &LoadedService,
    rows: Vec<Vec<f32>>,
    start: Instant,
    timeout: Duration,
) -> Result<Vec<f32>, ServeError> {
    let left = timeout.saturating_sub(start.elapsed());
    let mut out = Vec::with_capacity(rows.len() * svc.io.classes);
    for p in svc
        .choose(rows.len())?
        .batcher
        .submit_rows(rows, Some(left))?
    {
        out.extend_from_slice(&p.recv().await?.output);
    }
    Ok(out)
}

/// Counts a finished request in the service's statistics: a success's latency from `start`
/// under its protocol, a malformed request, or a timeout.
pub(crate) fn account(
    svc: &LoadedService,
    protocol: Protocol,
    start: Instant,
    error: Option<&ApiError>,
) {
    match error {
        None => svc.observe_request(protocol, start.elapsed().as_secs_f64()),
        Some(e) if e.status == StatusCode::BAD_REQUEST => svc.count_invalid(),
        Some(e) if e.status == StatusCode::GATEWAY_TIMEOUT => svc.count_timeout(),
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_timeout_can_shorten_the_services_never_lengthen_it() {
        let svc = Duration::from_millis(250);
        assert_eq!(request_timeout(svc, None), (svc, false));
        assert_eq!(
            request_timeout(svc, Some(1_000)),
            (Duration::from_millis(1), false)
        );
        assert_eq!(request_timeout(svc, Some(250_000)), (svc, false));
        assert_eq!(request_timeout(svc, Some(250_001)), (svc, true));
        assert_eq!(request_timeout(svc, Some(u64::MAX)), (svc, true));
    }

    #[test]
    fn the_shorter_client_timeout_applies_and_is_named_for_its_source() {
        use ClientTimeout::{Deadline, Parameter};
        assert_eq!(ClientTimeout::shorter(None, None), None);
        assert_eq!(ClientTimeout::shorter(Some(5), None), Some(Parameter(5)));
        assert_eq!(ClientTimeout::shorter(None, Some(7)), Some(Deadline(7)));
        assert_eq!(ClientTimeout::shorter(Some(5), Some(7)), Some(Parameter(5)));
        assert_eq!(ClientTimeout::shorter(Some(9), Some(7)), Some(Deadline(7)));
        assert_eq!(ClientTimeout::shorter(Some(7), Some(7)), Some(Parameter(7)));
        assert_eq!(Deadline(7).us(), 7);
    }
}
