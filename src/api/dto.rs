//! The `/v1` request bodies as typed values. Each is decoded here, at the API's edge, and
//! the node is handed what it works with (a [`JobConfig`], a [`ServiceConfig`], a
//! [`JobChanges`]): it never sees JSON, nor a route.
//!
//! A job's or a service's settings are validated by the config's schema (the same keys,
//! defaults and messages as a `[[jobs]]` or `[[services]]` table of the config file, every
//! problem named by its key); what only the API accepts or refuses is checked here.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::http::ApiError;
use crate::config::{Deadline, JobConfig, ServiceConfig, parse_job_json, parse_service_json};
use crate::node::JobChanges;

/// `POST /v1/jobs`: a job's spec, as a `[[jobs]]` table (plus `class`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubmitJob(pub JobConfig);

impl SubmitJob {
    /// Validates `body`; 400 with every problem.
    pub(crate) fn decode(body: &Value) -> Result<Self, ApiError> {
        parse_job_json(body)
            .map(SubmitJob)
            .map_err(|issues| ApiError::invalid(&issues))
    }
}

/// `POST /v1/services`: a service from a checkpoint on the node, as a `[[services]]` table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AddService(pub ServiceConfig);

impl AddService {
    /// Validates `body` (`control_period_ms` bounds the SLO window); a checkpoint is
    /// required and warm-up data refused.
    pub(crate) fn decode(body: &Value, control_period_ms: u64) -> Result<Self, ApiError> {
        let cfg = parse_service_json(body, control_period_ms)
            .map_err(|issues| ApiError::invalid(&issues))?;
        if cfg.checkpoint.is_none() {
            return Err(ApiError::bad_request(
                "checkpoint: required (the path of a checkpoint file on the node)",
            ));
        }
        if cfg.warmup_data.is_some() {
            return Err(ApiError::bad_request(
                "warmup_data: not accepted through the API; train a job and publish it with \
                 POST /v1/jobs/{id}/serve",
            ));
        }
        Ok(AddService(cfg))
    }
}

/// `POST /v1/jobs/{id}/serve`: the settings of the service a completed job is published as
/// (`name`, `slo`, `batching`, `max_queue`, …); the model is the job's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServeJob {
    settings: Map<String, Value>,
}

impl ServeJob {
    /// Keys the job sets itself.
    const SET_BY_JOB: [&'static str; 4] = ["checkpoint", "layers", "warmup_data", "seed"];

    /// Reads `body`: an object, or nothing (every setting at its default).
    pub(crate) fn decode(body: &Value) -> Result<Self, ApiError> {
        let settings = match body {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            _ => return Err(ApiError::bad_request("expected a JSON object")),
        };
        if let Some(key) = Self::SET_BY_JOB.iter().find(|k| settings.contains_key(**k)) {
            return Err(ApiError::bad_request(format!(
                "{key}: set by the job; not accepted here"
            )));
        }
        Ok(ServeJob { settings })
    }

    /// The service's validated settings: named after `job` unless a name is given, serving
    /// `checkpoint`.
    pub(crate) fn into_config(
        self,
        job: &str,
        checkpoint: &Path,
        control_period_ms: u64,
    ) -> Result<ServiceConfig, ApiError> {
        let mut body = self.settings;
        body.entry("name")
            .or_insert_with(|| Value::String(job.to_string()));
        body.insert(
            "checkpoint".into(),
            Value::String(checkpoint.display().to_string()),
        );
        parse_service_json(&Value::Object(body), control_period_ms)
            .map_err(|issues| ApiError::invalid(&issues))
    }
}

/// `PATCH /v1/jobs/{id}`: what to change; a key left out is left as it is, `null` clears a
/// deadline or a target.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct JobPatch {
    /// A new deadline (a duration from now, or an RFC 3339 time), or none.
    pub deadline: Option<Option<Deadline>>,
    /// A new target validation accuracy in (0, 1], or none.
    pub target_accuracy: Option<Option<f64>>,
    /// A new epoch limit.
    pub epochs: Option<u32>,
}

/// A patch as sent: each known key present or not (`Some(Value::Null)` for `null`), and the
/// others, refused by name.
#[derive(Deserialize)]
struct WirePatch {
    #[serde(default, deserialize_with = "present")]
    deadline: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    target_accuracy: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    epochs: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A key that is present, `null` included (`Option<Option<T>>`'s outer layer).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl JobPatch {
    /// Reads `body`; 400 with every problem, in the order of their keys.
    pub(crate) fn decode(body: &Value) -> Result<Self, ApiError> {
        let not_object = || ApiError::bad_request("expected a JSON object");
        if !body.is_object() {
            return Err(not_object());
        }
        let wire: WirePatch = serde_json::from_value(body.clone()).map_err(|_| not_object())?;
        let mut errors = BTreeMap::new();
        let mut patch = JobPatch::default();
        if let Some(v) = wire.deadline {
            match deadline(&v) {
                Ok(d) => patch.deadline = Some(d),
                Err(e) => _ = errors.insert("deadline".to_string(), e),
            }
        }
        if let Some(v) = wire.target_accuracy {
            match target_accuracy(&v) {
                Ok(t) => patch.target_accuracy = Some(t),
                Err(e) => _ = errors.insert("target_accuracy".to_string(), e),
            }
        }
        if let Some(v) = wire.epochs {
            match v.as_u64() {
                Some(e) if (1..=100_000).contains(&e) => patch.epochs = Some(e as u32),
                _ => {
                    _ = errors.insert(
                        "epochs".to_string(),
                        format!("epochs: must be an integer between 1 and 100000, got {v}"),
                    )
                }
            }
        }
        for other in wire.other.into_keys() {
            let message =
                format!("{other}: cannot be changed (accepted: deadline, target_accuracy, epochs)");
            errors.insert(other, message);
        }
        if errors.is_empty() {
            Ok(patch)
        } else {
            let lines: Vec<String> = errors.into_values().collect();
            Err(ApiError::bad_request(lines.join("; ")))
        }
    }

    /// The changes to apply, a relative deadline counted from `now`.
    pub fn changes(&self, now: SystemTime) -> JobChanges {
        JobChanges {
            deadline: self.deadline.map(|d| d.map(|d| d.resolve(now))),
            target_accuracy: self.target_accuracy,
            epochs: self.epochs,
        }
    }
}

fn deadline(v: &Value) -> Result<Option<Deadline>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => s
            .parse::<Deadline>()
            .map(Some)
            .map_err(|e| format!("deadline: {e}")),
        _ => {
            Err("deadline: expected a duration such as \"10m\" or an RFC 3339 time, or null".into())
        }
    }
}

fn target_accuracy(v: &Value) -> Result<Option<f64>, String> {
    match v {
        Value::Null => Ok(None),
        v => match v.as_f64() {
            Some(t) if t > 0.0 && t <= 1.0 => Ok(Some(t)),
            _ => Err(format!(
                "target_accuracy: must be a number in (0, 1] or null, got {v}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_tells_a_null_from_a_key_left_out() {
        let p = JobPatch::decode(&json!({"deadline": null, "epochs": 7})).unwrap();
        assert_eq!(p.deadline, Some(None));
        assert_eq!(p.target_accuracy, None);
        assert_eq!(p.epochs, Some(7));
        let p = JobPatch::decode(&json!({"target_accuracy": 0.5})).unwrap();
        assert_eq!(p.target_accuracy, Some(Some(0.5)));
        assert_eq!(p.deadline, None);
    }

    #[test]
    fn a_patch_names_every_problem_by_its_key() {
        let e = JobPatch::decode(&json!({"target_accuracy": 2, "layers": [1], "epochs": 0}))
            .unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(
            e.message,
            "epochs: must be an integer between 1 and 100000, got 0; \
             layers: cannot be changed (accepted: deadline, target_accuracy, epochs); \
             target_accuracy: must be a number in (0, 1] or null, got 2"
        );
        let e = JobPatch::decode(&json!([1])).unwrap_err();
        assert_eq!(e.message, "expected a JSON object");
    }

    #[test]
    fn serving_a_job_refuses_what_the_job_sets() {
        let e = ServeJob::decode(&json!({"seed": 1})).unwrap_err();
        assert_eq!(e.message, "seed: set by the job; not accepted here");
        let cfg = ServeJob::decode(&json!({"slo": {"p99_ms": 50}}))
            .unwrap()
            .into_config("j", Path::new("/x/checkpoint.ckpt"), 1000)
            .unwrap();
        assert_eq!(cfg.name, "j");
        assert_eq!(
            cfg.checkpoint.as_deref(),
            Some(Path::new("/x/checkpoint.ckpt"))
        );
    }
}
