//! An in-process daemon on free loopback ports (HTTP and gRPC) for API tests, run by the binary's own
//! `setpoint::daemon::run`, a ureq agent that does not treat 4xx/5xx as errors, and polling.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use setpoint::node::Node;

/// One small service (8 inputs, 3 classes, queue of 64, batches of up to 8) for API tests.
pub const SERVICE: &str = r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
seed = 3
max_queue = 64
[services.slo]
p99_ms = 50
[services.batching]
max_batch_size = 8
max_queue_delay_ms = 1
"#;

/// Writes a checkpoint of a freshly initialised `layers` model (seed 1, no normalisation) to
/// `path`, for a service added over the API.
pub fn write_checkpoint(path: &std::path::Path, layers: &[usize]) {
    setpoint::model::checkpoint::Checkpoint {
        params: setpoint::model::MlpParams::init(layers, 1).unwrap(),
        normalizer: setpoint::data::Normalizer::identity(layers[0]),
        training: None,
    }
    .save(path)
    .unwrap();
}

/// A daemon serving on a free loopback port, stopped on drop.
pub struct Daemon {
    pub url: String,
    /// The gRPC API's endpoint, `http://127.0.0.1:PORT`.
    pub grpc: String,
    pub node: Arc<Node>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub agent: ureq::Agent,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon on `config`. Other processes' CPU load is not counted off the CPU's
    /// capacity unless `config` sets `cpu_foreign_load`: tests share the machine with other
    /// tests' processes and builds, and most of them weigh admission against a known
    /// capacity (`tests/cpu_foreign.rs` tests the counting).
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = setpoint::config::parse(config).unwrap();
        cfg.state_dir = dir.path().to_path_buf();
        if !config.contains("cpu_foreign_load") {
            cfg.control.cpu_foreign_load = false;
        }
        let node = Node::new(cfg).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let http = node.config().http.clone();
        let running = node.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener =
                    setpoint::api::server::bind(([127, 0, 0, 1], 0).into(), http.listen_backlog)
                        .unwrap();
                let grpc =
                    setpoint::api::server::bind(([127, 0, 0, 1], 0).into(), http.listen_backlog)
                        .unwrap();
                let addrs = (listener.local_addr().unwrap(), grpc.local_addr().unwrap());
                addr_tx.send(addrs).unwrap();
                let options = setpoint::daemon::Options {
                    limits: setpoint::api::server::Limits::new(&http, http.max_connections),
                    stop: async {
                        let _ = stop_rx.await;
                    },
                    hangups: None,
                    notifier: Arc::new(setpoint::node::systemd::Notifier::disabled()),
                    grpc: Some(grpc),
                };
                setpoint::daemon::run(running, listener, options)
                    .await
                    .unwrap();
            });
        });
        let (addr, grpc) = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Daemon {
            url: format!("http://{addr}"),
            grpc: format!("http://{grpc}"),
            node,
            stop: Some(stop_tx),
            thread: Some(thread),
            agent,
            _dir: dir,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut r = self
            .agent
            .get(format!("{}{path}", self.url))
            .call()
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The daemon's `/metrics` text.
    pub fn metrics(&self) -> String {
        let mut r = self
            .agent
            .get(format!("{}/metrics", self.url))
            .call()
            .unwrap();
        r.body_mut().read_to_string().unwrap()
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let mut r = match method {
            "POST" => self.agent.post(url).send_json(body),
            "PATCH" => self.agent.patch(url).send_json(body),
            "DELETE" => self.agent.delete(url).call(),
            _ => unreachable!(),
        }
        .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Polls `check` every 20 ms until it returns Some, for at most `limit`.
    pub fn poll<T>(&self, limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_ready(&self) {
        self.poll(Duration::from_secs(60), "readiness", || {
            (self.get("/v2/health/ready").0 == 200).then_some(())
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The daemon shuts the node down; this covers a daemon thread that panicked.
        self.node.shutdown();
    }
}
