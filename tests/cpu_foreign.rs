//! Other processes' load on the CPU, over the API: busy processes beside the daemon are
//! counted off the CPU's capacity (status, metrics, admission's message), and not when
//! `control.cpu_foreign_load` is off.

use crate::support::daemon::Daemon;

use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{Value, json};

/// Busy processes, one per core this process may use, killed on drop.
struct Busy(Vec<Child>);

impl Busy {
    fn start() -> Busy {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Busy(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The CPU device's row of `/v1/status`.
fn cpu(d: &Daemon) -> Value {
    d.get("/v1/status").1["devices"][0].clone()
}

#[test]
fn busy_processes_beside_the_daemon_are_taken_off_the_cpus_capacity() {
    let counting = Daemon::start("[control]\ncpu_foreign_load = true\n");
    let ignoring = Daemon::start("[control]\ncpu_foreign_load = false\n");
    let busy = Busy::start();
    // A core's worth of others' load or more, whatever else the machine runs.
    let seen = counting.poll(Duration::from_secs(30), "foreign load on the CPU", || {
        let row = cpu(&counting);
        (row["foreign_load"].as_f64()? >= 0.3).then_some(row)
    });
    assert_eq!(seen["name"], "cpu", "{seen}");
    // Admission names it among what holds the device.
    let (status, v) = counting.send(
        "POST",
        "/v1/jobs",
        &json!({
            "name": "tight",
            "data": "synthetic:blobs:size=2000",
            "layers": [64, 256, 256, 10],
            "epochs": 200,
            "deadline": "1s",
        }),
    );
    assert_eq!(status, 409, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains(", other processes 0."), "{msg}");
    let metrics = counting.metrics();
    let ratio: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("setpoint_device_foreign_load_ratio{device=\"cpu\"} "))
        .unwrap_or_else(|| panic!("no foreign load metric in {metrics}"))
        .parse()
        .unwrap();
    assert!(ratio > 0.0, "{ratio}");
    // Turned off: ten periods of the same load later, nothing counted.
    let ticks = |d: &Daemon| d.get("/v1/status").1["control_ticks"].as_u64().unwrap();
    let from = ticks(&ignoring);
    ignoring.poll(Duration::from_secs(30), "ten control periods", || {
        (ticks(&ignoring) >= from + 10).then_some(())
    });
    let row = cpu(&ignoring);
    assert_eq!(row["foreign_load"], 0.0, "{row}");
    drop(busy);
}
