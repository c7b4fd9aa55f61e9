//! What a reload changes: the settings that need a restart kept at their running values,
//! and `key: old -> new` for everything else.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::ReloadReport;
use crate::config::NodeConfig;
use crate::node::{ServiceOrigin, ServiceSlot};

/// A slot that comes from the config file: loading and failed slots always do.
pub(super) fn from_file(slot: &ServiceSlot) -> bool {
    match slot {
        ServiceSlot::Ready(s) => s.origin == ServiceOrigin::Config,
        ServiceSlot::Loading(_) | ServiceSlot::Failed(..) => true,
    }
}

/// `new` with the settings that need a restart set back to their running values, and a line
/// for each one that differed.
pub fn effective_config(running: &NodeConfig, new: &NodeConfig) -> (NodeConfig, Vec<String>) {
    let mut effective = new.clone();
    let mut needs_restart = Vec::new();
    let mut keep = |key: &str, old: Value, new: Value| {
        if old != new {
            needs_restart.push(format!(
                "{key}: running {}, the file says {}; takes effect at the next start",
                show(&old),
                show(&new)
            ));
        }
    };
    keep(
        "listen",
        running.listen.to_string().into(),
        new.listen.to_string().into(),
    );
    effective.listen = running.listen;
    let grpc = |c: &NodeConfig| c.grpc_listen.map_or_else(String::new, |a| a.to_string());
    keep("grpc_listen", grpc(running).into(), grpc(new).into());
    effective.grpc_listen = running.grpc_listen;
    keep(
        "state_dir",
        running.state_dir.display().to_string().into(),
        new.state_dir.display().to_string().into(),
    );
    effective.state_dir = running.state_dir.clone();
    for (key, (old, new)) in
        paired_leaves(&to_json(&running.device), &to_json(&new.device), "device")
    {
        keep(&key, old, new);
    }
    effective.device = running.device.clone();
    for (key, (old, new)) in paired_leaves(&to_json(&running.http), &to_json(&new.http), "http") {
        keep(&key, old, new);
    }
    effective.http = running.http.clone();
    keep(
        "kubernetes",
        to_json(&running.kubernetes),
        to_json(&new.kubernetes),
    );
    effective.kubernetes = running.kubernetes.clone();
    keep(
        "control.decision_log",
        to_json(&running.control.decision_log),
        to_json(&new.control.decision_log),
    );
    effective.control.decision_log = running.control.decision_log.clone();
    (effective, needs_restart)
}

/// The node-wide settings that changed (services and jobs aside); the token is never shown.
pub(super) fn settings_diff(old: &NodeConfig, new: &NodeConfig) -> Vec<String> {
    let strip = |c: &NodeConfig| {
        let mut v = to_json(c);
        if let Some(o) = v.as_object_mut() {
            o.remove("services");
            o.remove("jobs");
            o.remove("auth_token");
        }
        v
    };
    let mut out = json_diff_values(&strip(old), &strip(new));
    match (&old.auth_token, &new.auth_token) {
        (None, Some(_)) => out.push("auth_token: set".into()),
        (Some(_), None) => out.push("auth_token: removed".into()),
        (Some(a), Some(b)) if a != b => out.push("auth_token: changed".into()),
        _ => {}
    }
    out
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// `key: old -> new` for every leaf that differs between two serialisable values.
pub fn json_diff<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    json_diff_values(&to_json(old), &to_json(new))
}

fn json_diff_values(old: &Value, new: &Value) -> Vec<String> {
    paired_leaves(old, new, "")
        .into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (a, b))| format!("{k}: {} -> {}", show(&a), show(&b)))
        .collect()
}

/// Every leaf path of either value, with its value on each side (null when absent).
fn paired_leaves(old: &Value, new: &Value, prefix: &str) -> BTreeMap<String, (Value, Value)> {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    flatten(old, prefix, &mut a);
    flatten(new, prefix, &mut b);
    let mut out = BTreeMap::new();
    for key in a.keys().chain(b.keys()) {
        out.insert(
            key.clone(),
            (
                a.get(key).cloned().unwrap_or(Value::Null),
                b.get(key).cloned().unwrap_or(Value::Null),
            ),
        );
    }
    out
}

fn flatten(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) => {
            for (k, item) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(item, &key, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "(unset)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn log_report(r: &ReloadReport) {
    if let Some(note) = &r.note {
        tracing::info!("reload: {note}");
    } else if r.is_empty() {
        tracing::info!(source = %r.source, "configuration reloaded: nothing changed");
    } else {
        tracing::info!(
            source = %r.source,
            settings = ?r.settings,
            added = ?r.services_added,
            removed = ?r.services_removed,
            changed = ?r.services_changed.iter().map(|c| &c.name).collect::<Vec<_>>(),
            retried = ?r.services_retried,
            jobs = ?r.jobs_submitted,
            "configuration reloaded"
        );
    }
    for line in &r.needs_restart {
        tracing::warn!("reload: needs a restart: {line}");
    }
    for line in &r.not_applied {
        tracing::warn!("reload: not applied: {line}");
    }
    for line in &r.failed {
        tracing::error!("reload: failed: {line}");
    }
}
