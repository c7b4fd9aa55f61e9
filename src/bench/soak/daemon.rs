//! The soak's daemon: a child process of this binary, its resources read from `/proc`.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{SoakError, SoakSpec};
use crate::client::Client;

/// The daemon child: killed on drop unless it was stopped.
pub(super) struct Daemon {
    pub(super) child: Child,
    /// Where it is reached.
    pub(super) addr: SocketAddr,
    /// Where it listens (`addr`, unless that is an unspecified address).
    pub(super) listen: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Fails when the process has exited.
    pub(super) fn check_alive(&mut self) -> Result<(), SoakError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(SoakError::Daemon(format!(
                "exited during the soak ({status}); last log lines:\n{}",
                self.log_tail()
            ))),
            _ => Ok(()),
        }
    }

    /// SIGTERM, then waits up to `limit` for it to exit; its exit code.
    pub(super) fn stop(&mut self, limit: Duration) -> Option<i32> {
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2000)));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Resident memory, its peak, and open descriptors of process `pid`, from `/proc`.
pub fn proc_resources(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((kb("VmRSS:")?, kb("VmHWM:")?, fds))
}

/// The address the daemon is told to listen on: `asked` (port 0: a free port there) after a
/// trial bind, so that an address of another host or a port in use is refused naming it,
/// before the daemon starts; a free loopback port when nothing was asked.
pub(super) fn listen_addr(asked: Option<SocketAddr>) -> Result<SocketAddr, SoakError> {
    let Some(asked) = asked else {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| SoakError::Start(format!("no free loopback port: {e}")))?;
        return l.local_addr().map_err(|e| SoakError::Start(e.to_string()));
    };
    let l = std::net::TcpListener::bind(asked).map_err(|e| {
        SoakError::Input(format!(
            "--listen {asked}: cannot listen there ({e}); give an address of this host with a \
             free port, such as 127.0.0.1:8080, or port 0 for any free one"
        ))
    })?;
    l.local_addr().map_err(|e| SoakError::Start(e.to_string()))
}

/// Where to connect to a daemon listening on `listen`: loopback for an unspecified address.
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

pub(super) fn start_daemon(spec: &SoakSpec) -> Result<(Daemon, Client), SoakError> {
    let dir = tempfile::tempdir().map_err(|e| SoakError::Start(format!("temp dir: {e}")))?;
    let log = dir.path().join("daemon.log");
    let log_file =
        std::fs::File::create(&log).map_err(|e| SoakError::Start(format!("log file: {e}")))?;
    let listen = listen_addr(spec.listen)?;
    let addr = connect_addr(listen);
    let mut cmd = Command::new(&spec.exe);
    cmd.arg("serve")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        // The soak measures HTTP; gRPC stays off so no second port is needed.
        .args(["--grpc-listen", ""]);
    if let Some(c) = &spec.config {
        cmd.arg("--config").arg(c);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| SoakError::Start(format!("{}: {e}", spec.exe.display())))?;
    let mut d = Daemon {
        child,
        addr,
        listen,
        log,
        _dir: dir,
    };
    let client = Client::new(&format!("http://{addr}"))?;
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Err(SoakError::Start(format!(
                "it exited ({status}); last log lines:\n{}",
                d.log_tail()
            )));
        }
        if let Ok(raw) = client.send("GET", "/v2/health/ready", None, &[])
            && raw.status == 200
        {
            return Ok((d, client));
        }
        if Instant::now() > limit {
            return Err(SoakError::Start(format!(
                "not ready after 120 s; last log lines:\n{}",
                d.log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_refused_naming_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = listen_addr(Some(addr)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("--listen {addr}: cannot listen there (")),
            "{err}"
        );
        assert!(err.contains("port 0 for any free one"), "{err}");
        let free = listen_addr(Some("127.0.0.1:0".parse().unwrap())).unwrap();
        assert_ne!(free.port(), 0);
        assert!(listen_addr(None).unwrap().ip().is_loopback());
    }

    #[test]
    fn an_unspecified_address_is_reached_on_loopback() {
        let a = connect_addr("0.0.0.0:8080".parse().unwrap());
        assert_eq!(a, "127.0.0.1:8080".parse().unwrap());
        let a = connect_addr("[::]:8080".parse().unwrap());
        assert_eq!(a, "[::1]:8080".parse().unwrap());
        let a = connect_addr("127.0.0.2:9".parse().unwrap());
        assert_eq!(a, "127.0.0.2:9".parse().unwrap());
    }
}
