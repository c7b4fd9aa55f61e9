//! deploy/kubernetes/: every manifest is a valid Kubernetes 1.34 object (kubernetes-validate,
//! strict), and the node DaemonSet agrees with the configuration it carries: the config
//! parses with setpoint's own rules, the kubelet's directories it names are the ones
//! mounted, the probes and ports are its listener's, and the DeviceClasses select its
//! driver's devices.

use crate::support::kube_validate;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [deploy(), deploy().join("crds")] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_manifest_is_a_valid_object() {
    let files = manifests();
    assert!(files.len() >= 2, "{files:?}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    kube_validate::validate(&refs);
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in node.yaml"))
}

#[test]
fn the_node_daemonset_agrees_with_its_config() {
    let Some(docs) = kube_validate::yaml_docs(&deploy().join("node.yaml")) else {
        return;
    };
    let text = find(&docs, "ConfigMap", "setpoint-node")["data"]["setpoint.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = setpoint::config::parse(&text).unwrap_or_else(|e| panic!("setpoint.toml: {e}"));
    let k = cfg.kubernetes.clone().expect("a [kubernetes] section");
    assert_eq!(k.node_name, None, "the node's name comes from NODE_NAME");

    let ds = find(&docs, "DaemonSet", "setpoint-node");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for dir in [&k.registry_dir, &k.plugin_dir, &k.cdi_dir, &cfg.state_dir] {
        assert!(
            mounts.contains(&dir.to_str().unwrap()),
            "{} is not mounted: {mounts:?}",
            dir.display()
        );
    }
    for dir in &cfg.paths.data_dirs {
        assert!(
            mounts.contains(&dir.to_str().unwrap()),
            "{} is not mounted",
            dir.display()
        );
    }
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let config_path = command[command.iter().position(|&a| a == "--config").unwrap() + 1];
    assert!(
        mounts.iter().any(|m| config_path.starts_with(m)),
        "{config_path} not mounted"
    );
    let port = i64::from(cfg.listen.port());
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], port);
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], port);
    assert_eq!(c["ports"][0]["containerPort"], port);
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"NODE_NAME") && env.contains(&"NODE_IP"),
        "{env:?}"
    );
    assert_eq!(
        pod["hostNetwork"], true,
        "tenants reach the daemon at the node's address"
    );

    for (class, kind) in [("setpoint-gpu", "gpu"), ("setpoint-cpu", "cpu")] {
        let cel = find(&docs, "DeviceClass", class)["spec"]["selectors"][0]["cel"]["expression"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            cel.contains(&format!("device.driver == \"{}\"", k.driver)),
            "{cel}"
        );
        assert!(
            cel.contains(&format!("[\"{}\"].kind == \"{kind}\"", k.driver)),
            "{cel}"
        );
    }
}
