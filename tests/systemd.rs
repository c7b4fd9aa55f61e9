//! The daemon under systemd: the shipped unit passes `systemd-analyze verify`, and the real
//! binary speaks the notification protocol (READY, STATUS, WATCHDOG, RELOADING, STOPPING) to
//! a socket the test binds, as systemd would.
//!
//! Without `systemd-analyze` the unit check prints that it was skipped; with
//! `SETPOINT_REQUIRE_SYSTEMD=1` (as CI sets) it fails instead.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHIPPED_EXEC: &str = "ExecStart=/usr/local/bin/setpoint serve ";

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/setpoint.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze` when it can run here.
fn systemd_analyze() -> Option<PathBuf> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(PathBuf::from("systemd-analyze"));
    }
    if std::env::var("SETPOINT_REQUIRE_SYSTEMD").as_deref() == Ok("1") {
        panic!(
            "systemd-analyze is missing and SETPOINT_REQUIRE_SYSTEMD=1: install systemd \
             (Debian: apt-get install systemd)"
        );
    }
    None
}

/// Runs `systemd-analyze verify` on `unit`; returns whether it passed and the lines it
/// printed about that unit (warnings such as an unknown key leave the exit status 0).
fn verify(tool: &Path, unit: &Path) -> (bool, Vec<String>) {
    let out = Command::new(tool)
        .arg("verify")
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    let name = unit.file_name().unwrap().to_string_lossy().into_owned();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<String> = text
        .lines()
        .filter(|l| l.contains(&name))
        .map(str::to_owned)
        .collect();
    (out.status.success(), about_unit)
}

/// The shipped unit with ExecStart pointing at the binary under test (verify checks that
/// the program exists), written into `dir` under the unit's own name.
fn unit_for_this_build(dir: &Path, text: &str) -> PathBuf {
    let exe = env!("CARGO_BIN_EXE_setpoint");
    let text = text.replace(SHIPPED_EXEC, &format!("ExecStart={exe} serve "));
    let path = dir.join("setpoint.service");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_shipped_unit_is_what_the_daemon_expects() {
    let text = unit_text();
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StateDirectory=setpoint",
        "ConfigurationDirectory=setpoint",
        "User=setpoint",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(keys.contains(&want), "the unit lacks {want}");
    }
    assert!(
        keys.iter().any(|k| k.starts_with("WatchdogSec=")),
        "the unit sets no WatchdogSec"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("PrivateDevices=")),
        "PrivateDevices= hides the GPUs' device nodes"
    );
    // The command line must be one the binary accepts.
    let exec = keys
        .iter()
        .find(|k| k.starts_with(SHIPPED_EXEC))
        .expect("ExecStart runs /usr/local/bin/setpoint serve");
    let help = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "setpoint serve has no {flag}:\n{help}");
    }
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Some(tool) = systemd_analyze() else {
        println!(
            "skipped: systemd-analyze is not installed (set SETPOINT_REQUIRE_SYSTEMD=1 to fail instead)"
        );
        return;
    };
    let text = unit_text();
    assert!(text.contains(SHIPPED_EXEC));
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path(), &text);
    let (ok, complaints) = verify(&tool, &unit);
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}"
    );

    // The check can fail: a misspelt key is reported.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = unit_for_this_build(
        bad_dir.path(),
        &text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
    );
    let (_, complaints) = verify(&tool, &bad);
    assert!(
        complaints.iter().any(|l| l.contains("NoNewPrivilege")),
        "a misspelt key went unreported: {complaints:#?}"
    );
}

use crate::support::child;
use child::free_port;

/// Notifications received, in order.
struct Listener {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Listener {
    /// Waits until a datagram satisfies `want`, keeping every datagram seen.
    fn wait_for(&mut self, limit: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 8192];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; seen: {:#?}",
                self.seen
            );
            self.socket.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if want(&msg) {
                    return msg;
                }
            }
        }
    }
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling a child process this test started and has not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill failed");
}

/// The real binary with one small service, notifying the socket at `sock` and logging to
/// `dir/daemon.log`.
fn start_notified(dir: &Path, sock_path: &Path) -> std::process::Child {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = {:?}\ncontrol_period_ms = 50\n\n\
             [[services]]\nname = \"tiny\"\nlayers = [4, 8, 3]\nslo = {{ p99_ms = 50 }}\n",
            free_port(),
            dir.join("state")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--grpc-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Runs `test` against the real binary notifying a socket this test listens on; on a
/// failure, kills the daemon and prints its log before passing the panic on.
fn with_notified_daemon(test: impl FnOnce(&mut Listener, &mut std::process::Child)) {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let mut listener = Listener {
        socket: UnixDatagram::bind(&sock_path).unwrap(),
        seen: Vec::new(),
    };
    let mut child = start_notified(dir.path(), &sock_path);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        test(&mut listener, &mut child)
    }));
    if let Err(panic) = result {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        eprintln!("daemon log:\n{log}");
        std::panic::resume_unwind(panic);
    }
}

/// The daemon's exit status, once it exits after the stop signal `sig` (60 s at most).
fn wait_exit(child: &mut std::process::Child, sig: &str) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < end, "the daemon did not stop on {sig}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_daemon_notifies_systemd_of_its_life() {
    with_notified_daemon(|listener, child| {
        let ready = listener.wait_for(Duration::from_secs(30), "READY=1", |m| {
            m.lines().any(|l| l == "READY=1")
        });
        assert!(
            ready
                .lines()
                .any(|l| l.starts_with("STATUS=") && l.contains("service")),
            "{ready}"
        );
        // The watchdog is fed from the control loop at half of WATCHDOG_USEC: several pings
        // within a few seconds; and the status line is refreshed on its own.
        for _ in 0..3 {
            listener.wait_for(Duration::from_secs(10), "WATCHDOG=1", |m| m == "WATCHDOG=1");
        }
        let status = listener.wait_for(Duration::from_secs(15), "a periodic STATUS=", |m| {
            m.starts_with("STATUS=")
        });
        assert!(status.contains("1 service"), "{status}");

        signal(child, libc::SIGHUP);
        let reloading = listener.wait_for(Duration::from_secs(20), "RELOADING=1", |m| {
            m.lines().any(|l| l == "RELOADING=1")
        });
        let usec = reloading
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(usec.is_some_and(|u| u > 0), "{reloading}");
        listener.wait_for(Duration::from_secs(20), "READY=1 after the reload", |m| {
            m.lines().any(|l| l == "READY=1")
        });
        // The pings go on after a reload.
        listener.wait_for(
            Duration::from_secs(10),
            "WATCHDOG=1 after the reload",
            |m| m == "WATCHDOG=1",
        );

        signal(child, libc::SIGTERM);
        listener.wait_for(Duration::from_secs(20), "STOPPING=1", |m| {
            m.lines().any(|l| l == "STOPPING=1")
        });
        let status = wait_exit(child, "SIGTERM");
        assert!(status.success(), "{status:?}");
    });
}

#[test]
fn after_stopping_1_the_daemon_sends_nothing_else() {
    with_notified_daemon(|listener, child| {
        listener.wait_for(Duration::from_secs(30), "READY=1", |m| {
            m.lines().any(|l| l == "READY=1")
        });
        // A burst: two reloads still running when the stop signal comes.
        signal(child, libc::SIGHUP);
        signal(child, libc::SIGHUP);
        signal(child, libc::SIGTERM);
        let status = wait_exit(child, "SIGTERM");
        assert!(status.success(), "{status:?}");
        // The process is gone: every datagram it sent is in the socket's queue.
        listener.socket.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = listener.socket.recv(&mut buf) {
            listener
                .seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let stop = listener
            .seen
            .iter()
            .position(|m| m.lines().any(|l| l == "STOPPING=1"))
            .unwrap_or_else(|| panic!("no STOPPING=1 in {:#?}", listener.seen));
        assert_eq!(
            stop,
            listener.seen.len() - 1,
            "sent after STOPPING=1: {:#?}",
            listener.seen
        );
    });
}

#[test]
fn ctrl_c_right_after_ready_stops_the_daemon_cleanly() {
    with_notified_daemon(|listener, child| {
        listener.wait_for(Duration::from_secs(30), "READY=1", |m| {
            m.lines().any(|l| l == "READY=1")
        });
        // SIGINT is what Ctrl-C sends: a drain and exit 0, not death by signal.
        signal(child, libc::SIGINT);
        listener.wait_for(Duration::from_secs(20), "STOPPING=1", |m| {
            m.lines().any(|l| l == "STOPPING=1")
        });
        let status = wait_exit(child, "SIGINT");
        assert!(status.success(), "{status:?}");
    });
}
