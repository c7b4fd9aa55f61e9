//! `POST /v1/devices/{name}/fail`: a fault drill. It fails a device the way a sticky driver
//! error would, so an operator can see what the daemon, its alerts and the load balancer in
//! front of it do when a GPU dies, without breaking one. It changes the node, so it needs the
//! bearer token when `auth_token` is set, like every such route; the device stays failed
//! until the daemon restarts.
//!
//! Body (JSON, every key optional): `reason` (text shown as the device's error, marked as a
//! drill's) and `after_ops` (the device fails at its lanes' operation after this many more,
//! the path a real fault takes through a lane; without it, at once). 200 with the device's
//! state when it failed at once, 202 when the fault waits for its operation.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::http::{ApiError, ApiResult, AppState, json_response, read_json};

/// Longest reason accepted, in characters.
const MAX_REASON_CHARS: usize = 500;

/// What a drill asks for.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillRequest {
    /// Shown as the device's error.
    reason: Option<String>,
    /// Checked operations the device still runs before it fails.
    after_ops: Option<u64>,
}

/// Why a drill's body was refused.
#[derive(Debug, thiserror::Error)]
enum DrillError {
    #[error(
        "invalid fault drill: {0}; accepted: an empty body, or a JSON object with \"reason\" (text) and \"after_ops\" (a whole number of operations)"
    )]
    Body(serde_json::Error),
    #[error("reason: must be between 1 and {MAX_REASON_CHARS} characters, got {0}")]
    ReasonLength(usize),
}

/// Reads a drill's body: empty or a JSON object with the accepted keys.
fn parse_drill(body: Value) -> Result<DrillRequest, DrillError> {
    let req: DrillRequest = match body {
        Value::Null => DrillRequest::default(),
        v => serde_json::from_value(v).map_err(DrillError::Body)?,
    };
    if let Some(r) = &req.reason {
        let chars = r.chars().count();
        if r.trim().is_empty() || chars > MAX_REASON_CHARS {
            return Err(DrillError::ReasonLength(chars));
        }
    }
    Ok(req)
}

/// Fails the device called `name` (`cpu`, `cuda:0`).
pub(crate) async fn fail_device(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let req = parse_drill(read_json(body, &headers, s.max_body_bytes()).await?)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m.to_string()))?;
    let reason = req.reason.as_deref().unwrap_or("fault drill");
    let view = s.node.drill_device_fault(&name, req.after_ops, reason)?;
    let status = if view.after_ops.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drill_bodies_are_checked_key_by_key() {
        assert_eq!(parse_drill(Value::Null).unwrap(), DrillRequest::default());
        assert_eq!(
            parse_drill(json!({"reason": "Xid 79", "after_ops": 3})).unwrap(),
            DrillRequest {
                reason: Some("Xid 79".into()),
                after_ops: Some(3)
            }
        );
        let unknown = parse_drill(json!({"after": 3})).unwrap_err().to_string();
        assert!(
            unknown.contains("unknown field `after`") && unknown.contains("\"after_ops\""),
            "{unknown}"
        );
        let negative = parse_drill(json!({"after_ops": -1}))
            .unwrap_err()
            .to_string();
        assert!(negative.contains("invalid value"), "{negative}");
        let empty = parse_drill(json!({"reason": " "})).unwrap_err().to_string();
        assert_eq!(empty, "reason: must be between 1 and 500 characters, got 1");
    }
}
