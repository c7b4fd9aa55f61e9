//! The `[kubernetes]` section's schema.

use std::path::PathBuf;

use super::super::kubernetes::{CapacityMode, KubernetesConfig, is_dns_subdomain};
use super::super::walk::{Field, Tbl, Walker};

/// Walks `[kubernetes]`; every key has a default, so an empty section is a valid one.
pub(in crate::config) fn kubernetes(w: &mut Walker, t: &Tbl<'_>) -> KubernetesConfig {
    w.check_keys(t, KubernetesConfig::KEYS);
    let d = KubernetesConfig::default();
    let node_name = optional(w, t, "node_name").filter(|n| {
        let ok = is_dns_subdomain(n);
        if !ok {
            w.issue(t.key("node_name"), dns_message(n));
        }
        ok
    });
    let driver = match w.string(t, "driver") {
        Field::Ok(s) if is_dns_subdomain(s) && s.contains('.') => s.to_owned(),
        Field::Ok(s) => {
            w.issue(
                t.key("driver"),
                format!(
                    "{}, with at least one dot (like \"gpu.example.com\")",
                    dns_message(s)
                ),
            );
            d.driver.clone()
        }
        _ => d.driver.clone(),
    };
    let api_server = optional(w, t, "api_server").filter(|u| {
        let ok = u.starts_with("https://") || u.starts_with("http://");
        if !ok {
            w.issue(
                t.key("api_server"),
                format!(
                    "expected an http:// or https:// URL, or \"\" for the cluster's own, got {u:?}"
                ),
            );
        }
        ok
    });
    let capacity = w
        .choice(
            t,
            "capacity",
            &[
                ("consumable", CapacityMode::Consumable),
                ("units", CapacityMode::Units),
            ],
        )
        .or(d.capacity)
        .unwrap_or(d.capacity);
    KubernetesConfig {
        node_name,
        driver,
        api_server,
        registry_dir: dir(w, t, "registry_dir", &d.registry_dir),
        plugin_dir: dir(w, t, "plugin_dir", &d.plugin_dir),
        cdi_dir: dir(w, t, "cdi_dir", &d.cdi_dir),
        publish_interval_s: w
            .int::<u64>(t, "publish_interval_s", 10, Some(86_400))
            .or(d.publish_interval_s)
            .unwrap_or(d.publish_interval_s),
        capacity,
        units_per_device: w
            .int::<u32>(t, "units_per_device", 2, Some(64))
            .or(d.units_per_device)
            .unwrap_or(d.units_per_device),
        tenant_endpoint: optional(w, t, "tenant_endpoint"),
    }
}

/// A string key where `""` and absence both mean "not set".
fn optional(w: &mut Walker, t: &Tbl<'_>, key: &str) -> Option<String> {
    match w.string(t, key) {
        Field::Ok(s) if !s.is_empty() => Some(s.to_owned()),
        _ => None,
    }
}

/// An absolute directory (the kubelet's and the runtime's directories are fixed places).
fn dir(w: &mut Walker, t: &Tbl<'_>, key: &str, default: &std::path::Path) -> PathBuf {
    match w.string(t, key) {
        Field::Ok(s) if s.starts_with('/') => PathBuf::from(s),
        Field::Ok(s) => {
            w.issue(t.key(key), format!("must be an absolute path, got {s:?}"));
            default.to_path_buf()
        }
        _ => default.to_path_buf(),
    }
}

fn dns_message(s: &str) -> String {
    format!(
        "must be a DNS subdomain (lowercase letters, digits, '-' and '.', each part starting \
         and ending with a letter or digit, at most 253 characters), got {s:?}"
    )
}

#[cfg(test)]
mod tests {
    use crate::config::{CapacityMode, ConfigError, KubernetesConfig, parse};

    fn issues(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Invalid { errors, .. }) => {
                errors.iter().map(|e| e.to_string()).collect()
            }
            other => panic!("expected issues, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_section_takes_the_defaults_and_no_section_is_none() {
        assert_eq!(parse("").unwrap().kubernetes, None);
        let k = parse("[kubernetes]\n").unwrap().kubernetes.unwrap();
        assert_eq!(k, KubernetesConfig::default());
        assert_eq!(
            k.dra_socket().to_str(),
            Some("/var/lib/kubelet/plugins/gpu.setpoint.dev/dra.sock")
        );
        assert_eq!(
            k.registration_socket().to_str(),
            Some("/var/lib/kubelet/plugins_registry/gpu.setpoint.dev-reg.sock")
        );
        let k = parse(
            "[kubernetes]\ncapacity = \"units\"\nunits_per_device = 16\nnode_name = \"gpu-7\"\n",
        )
        .unwrap()
        .kubernetes
        .unwrap();
        assert_eq!((k.capacity, k.units_per_device), (CapacityMode::Units, 16));
        assert_eq!(k.node_name.as_deref(), Some("gpu-7"));
    }

    #[test]
    fn every_bad_value_is_named_with_what_is_accepted() {
        let all = issues(
            "[kubernetes]\ndriver = \"Setpoint\"\nnode_name = \"a_b\"\napi_server = \"10.0.0.1:6443\"\n\
             cdi_dir = \"cdi\"\npublish_interval_s = 5\ncapacity = \"mig\"\nunits_per_device = 1\nzones = 2\n",
        );
        let want = [
            "kubernetes.zones: unknown key",
            "kubernetes.node_name: must be a DNS subdomain",
            "kubernetes.driver: must be a DNS subdomain",
            "kubernetes.api_server: expected an http:// or https:// URL",
            "kubernetes.capacity: ",
            "kubernetes.cdi_dir: must be an absolute path, got \"cdi\"",
            "kubernetes.publish_interval_s: must be between 10 and 86400, got 5",
            "kubernetes.units_per_device: must be between 2 and 64, got 1",
        ];
        for w in want {
            assert!(
                all.iter().any(|i| i.starts_with(w)),
                "no issue starting {w:?} in {all:#?}"
            );
        }
        assert_eq!(all.len(), want.len(), "{all:#?}");
        assert!(
            all.iter()
                .any(|i| i.contains("\"consumable\"") && i.contains("\"units\"")),
            "{all:#?}"
        );
    }
}
