//! GPU telemetry in the node, from a scripted source (no GPU here): read every control
//! period, shown in /v1/status and /metrics, throttling carried beside the decisions, a
//! failed read skipped; and the sampler's foreign load lowering what the controller hands out
//! by what foreign processes use, with the daemon's own load told apart across pid
//! namespaces (procfs fixtures under tests/fixtures/telemetry/procfs: the daemon on the
//! host, in a container reading the host's procfs, in a container that sees only itself,
//! on a kernel without NSpid).

use setpoint::control::{ControlConfig, Controller, Observations};
use setpoint::node::Node;
use std::path::{Path, PathBuf};

use setpoint::telemetry::{
    HandshakeOutcome, MappingBasis, OwnPids, Sampler, ScriptedSource, TelemetrySource,
    devices_report,
};

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/telemetry")
        .join(name)
}

fn fixture(name: &str) -> ScriptedSource {
    ScriptedSource::from_file(&fixture_path(name)).unwrap()
}

fn script() -> ScriptedSource {
    fixture("script.toml")
}

/// The capacity the controller hands out with `foreign` of the GPU taken by others.
fn capacity(foreign: f64) -> f64 {
    let mut ctrl = Controller::new(ControlConfig::default());
    ctrl.tick(&Observations {
        foreign_load: foreign,
        ..Default::default()
    })
    .capacity
}

#[test]
fn the_node_reads_telemetry_each_tick_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = setpoint::config::parse("").unwrap();
    cfg.state_dir = dir.path().to_path_buf();
    let node = Node::new(cfg).unwrap();
    node.set_telemetry_source(Box::new(script()));

    // Step 1: a steady load.
    let d = node.control_tick();
    assert!(d.throttling.is_empty(), "{:?}", d.throttling);
    let status = serde_json::to_value(node.status()).unwrap();
    assert_eq!(status["gpu_telemetry"][0]["util_gpu_pct"], 50.0);
    let metrics = setpoint::api::metrics::render(&node, &Default::default(), None);
    assert!(
        metrics.contains(
            "setpoint_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\"} 0.5"
        ),
        "{metrics}"
    );

    // Step 2: a failed read is skipped; the previous sample stays and the failure counts.
    node.control_tick();
    let (samples, failed) = node.telemetry();
    assert_eq!(failed, 1);
    assert_eq!(samples[0].util_gpu_pct, Some(50.0));
    let metrics = setpoint::api::metrics::render(&node, &Default::default(), None);
    assert!(
        metrics.contains("setpoint_gpu_telemetry_failed_reads_total 1"),
        "{metrics}"
    );
    // Without a gRPC listener its connection metrics are absent, not zeros; with one, there.
    assert!(
        metrics.contains("setpoint_http_connections_open "),
        "{metrics}"
    );
    assert!(!metrics.contains("setpoint_grpc_connections"), "{metrics}");
    let grpc =
        setpoint::api::metrics::render(&node, &Default::default(), Some(&Default::default()));
    assert!(grpc.contains("setpoint_grpc_connections_open 0"), "{grpc}");

    // Step 3: power capping shows beside the decisions.
    let d = node.control_tick();
    assert_eq!(d.throttling, vec!["gpu0: sw_power_cap".to_string()]);
    assert_eq!(node.telemetry().0[0].util_gpu_pct, Some(95.0));
}

#[test]
fn foreign_load_from_the_sampler_lowers_the_capacity_handed_out() {
    let mut sampler = Sampler::new(Box::new(script()), 16);
    sampler.poll();
    // pid 5151 is not ours: 20 % of the GPU is busy elsewhere.
    let foreign = sampler.foreign_load(0);
    assert!((foreign - 0.2).abs() < 1e-9, "{foreign}");
    let mut ctrl = Controller::new(ControlConfig::default());
    let idle = ctrl.tick(&Observations::default());
    let busy = ctrl.tick(&Observations {
        foreign_load: foreign,
        ..Default::default()
    });
    assert!((idle.capacity - 0.95).abs() < 1e-9, "{}", idle.capacity);
    assert!((busy.capacity - 0.75).abs() < 1e-9, "{}", busy.capacity);
    assert!((busy.foreign_load - 0.2).abs() < 1e-9);
}

// ---------------------------------------------------------------- own pids across namespaces

#[test]
fn procfs_fixtures_place_the_daemon() {
    let place = |dir: &str, pid: u32| {
        let own = OwnPids::from_procfs(&fixture_path("procfs").join(dir), pid);
        let m = own.mapping().expect("placed through procfs");
        assert_eq!(m.local_pid, pid);
        (m.host_pid, m.basis, own.host_pids())
    };
    // On the host: NSpid has one level and the namespace is the host's.
    assert_eq!(
        place("host", 4242),
        (Some(4242), MappingBasis::HostNamespace, Some(vec![4242]))
    );
    // In a container reading the host's procfs: the outermost NSpid entry.
    assert_eq!(
        place("host_view", 42),
        (Some(90042), MappingBasis::HostProcfs, Some(vec![90042]))
    );
    // In a container that sees only itself: unknown, not the container pid.
    assert_eq!(
        place("container", 42),
        (None, MappingBasis::Container, None)
    );
    // A kernel without NSpid, or no procfs at all: the plain pid.
    assert_eq!(
        place("old_kernel", 4242),
        (Some(4242), MappingBasis::NoNsPid, Some(vec![4242]))
    );
    assert_eq!(
        place("no-such-dir", 7),
        (Some(7), MappingBasis::NoProcEntry, Some(vec![7]))
    );
}

#[test]
fn this_process_is_placed_from_the_real_procfs() {
    let own = OwnPids::of_this_process();
    let m = own.mapping().expect("placed through /proc");
    assert_eq!(m.local_pid, std::process::id());
    println!("this test process: {}", own.describe());
    if m.basis == MappingBasis::HostNamespace {
        assert_eq!(m.host_pid, Some(std::process::id()));
    }
    assert_eq!(
        own.host_pids().is_none(),
        m.basis == MappingBasis::Container
    );
}

#[test]
fn own_load_is_recognised_through_the_namespace_mapping_and_idle_contexts_take_nothing() {
    let src = fixture("namespaced.toml");
    assert_eq!(src.own().host_pids(), Some(vec![90042]));
    let mut s = Sampler::new(Box::new(src), 4);
    let free = capacity(0.0);
    assert!((free - 0.95).abs() < 1e-9, "{free}");

    // The daemon (host pid 90042, pid 42 in its container) busy at 55 %, a foreign context
    // holding memory but running nothing: no foreign load, the whole capacity stays.
    let a = s.poll()[0].clone();
    assert_eq!(a.own_util_pct, Some(55.0));
    assert_eq!(a.foreign_util_pct, Some(0.0));
    assert_eq!(s.foreign_load(0), 0.0);
    assert_eq!(capacity(s.foreign_load(0)), free);
    let own: Vec<(u32, bool)> = a.processes.iter().map(|p| (p.pid, p.own)).collect();
    assert_eq!(own, [(90042, true), (5151, false)]);

    // The foreign process busy at 25 %, and host pid 42 (the daemon's container pid, but
    // another process on the host) at 5 %: the capacity drops by those 30 %, not by the
    // daemon's own 40 %.
    let b = s.poll()[0].clone();
    assert_eq!(b.own_util_pct, Some(40.0));
    assert_eq!(b.foreign_util_pct, Some(30.0));
    let foreign = s.foreign_load(0);
    assert!((foreign - 0.30).abs() < 1e-12, "{foreign}");
    assert!((capacity(foreign) - 0.65).abs() < 1e-9);

    // The report marks the daemon by its host pid.
    let mut src = fixture("namespaced.toml");
    let text = devices_report(Ok(&mut src), 2, false);
    assert!(
        text.contains("process 90042: 2048 MiB, sm 55 % (this process)"),
        "{text}"
    );
    assert!(text.contains("process 5151: 512 MiB, sm -\n"), "{text}");
}

#[test]
fn the_container_handshake_learns_the_host_pid() {
    let mut src = fixture("container.toml");
    let own = src.own();
    assert!(own.in_container() && own.needs_handshake());

    // Before the handshake, who is who is unknown: nothing is called foreign, so nothing
    // is taken from the capacity (counting the daemon's load as foreign would shrink it).
    let before = src.sample().unwrap();
    assert_eq!(before[0].own_util_pct, None);
    assert_eq!(before[0].foreign_util_pct, None);
    assert!(before[0].processes.iter().all(|p| !p.own));

    // Around the context's creation: steps 2 and 3 are the lists.
    let (ctx, outcome) = own.learn_around(Some(&mut src), || "ctx");
    assert_eq!(ctx, "ctx");
    assert_eq!(outcome, HandshakeOutcome::Learned(90042));
    assert_eq!(own.host_pids(), Some(vec![90042]));
    assert!(
        own.describe().contains("host pid 90042 (learned)"),
        "{}",
        own.describe()
    );

    // The source shares the learned pid: the daemon's 60 % is its own, the other 20 %
    // foreign, and that is what the capacity loses.
    let mut sampler = Sampler::new(Box::new(src), 4);
    let after = sampler.poll()[0].clone();
    assert_eq!(after.own_util_pct, Some(60.0));
    assert_eq!(after.foreign_util_pct, Some(20.0));
    let own_flags: Vec<(u32, bool)> = after.processes.iter().map(|p| (p.pid, p.own)).collect();
    assert_eq!(own_flags, [(5151, false), (90042, true)]);
    let foreign = sampler.foreign_load(0);
    assert!((foreign - 0.20).abs() < 1e-9, "{foreign}");
    assert!((capacity(foreign) - 0.75).abs() < 1e-9);
}

#[test]
fn a_proc_root_that_is_not_there_is_refused_by_name() {
    let e = ScriptedSource::parse(
        "proc_root = \"/no/such/procfs\"\n[[steps]]\nerror = \"x\"\n",
        false,
        "inline.toml",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "telemetry script inline.toml: proc_root /no/such/procfs is not a directory (give a \
         procfs fixture directory, relative to the script)"
    );
}
