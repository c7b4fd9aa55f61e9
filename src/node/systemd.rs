//! The systemd notification protocol (`sd_notify`), so that a unit of `Type=notify` knows
//! when the daemon is ready, reloading or stopping, what it is doing (`STATUS=`), and that its
//! control loop is alive (`WATCHDOG=1`).
//!
//! Each notification is one datagram of `KEY=VALUE` lines sent to the unix socket named by
//! `$NOTIFY_SOCKET`: a path, or with a leading `@` a name in the abstract namespace. Without
//! that variable every call does nothing. A failed send is logged and otherwise ignored: the
//! daemon's work never depends on its supervisor hearing it.
//!
//! `STOPPING=1` is final: after it nothing else is sent, so a reload or readiness notice
//! racing the stop signal (a burst of SIGHUP, SIGHUP, SIGTERM) cannot tell the manager the
//! unit is ready or reloading again.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Sends notifications to the service manager, when there is one.
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
    /// True after a failed send, until one succeeds: only the first failure is a warning.
    failing: AtomicBool,
    /// True once `STOPPING=1` was sent; held while sending, so no notice overtakes it.
    stopped: Mutex<bool>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `$NOTIFY_SOCKET` as given, for messages.
    name: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("socket", &self.target.as_ref().map(|t| &t.name))
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Notifier {
            target: None,
            watchdog: None,
            failing: AtomicBool::new(false),
            stopped: Mutex::new(false),
        }
    }

    /// The notifier the environment asks for: `$NOTIFY_SOCKET`, and the watchdog from
    /// `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or this process. A variable that cannot
    /// be used is logged and that part is off.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        Self::from_vars(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    fn from_vars(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Self {
        let Some(name) = socket.filter(|s| !s.is_empty()) else {
            return Self::disabled();
        };
        let target = match open(name) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={name}: {e}; systemd notifications are off");
                return Self::disabled();
            }
        };
        let for_us = match watchdog_pid {
            None | Some("") => true,
            Some(p) => p.trim().parse::<u32>().is_ok_and(|p| p == pid),
        };
        let watchdog = match watchdog_usec.filter(|_| for_us) {
            None | Some("") => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(us) if us > 0 => Some(Duration::from_micros(us)),
                _ => {
                    tracing::warn!(
                        "WATCHDOG_USEC={v}: expected a positive number of microseconds; the \
                         watchdog is not fed"
                    );
                    None
                }
            },
        };
        Notifier {
            target: Some(target),
            watchdog,
            failing: AtomicBool::new(false),
            stopped: Mutex::new(false),
        }
    }

    /// True when there is a service manager to notify.
    pub(crate) fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the manager's timeout, so one late ping does not
    /// trip it. `None` without a watchdog.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|t| t / 2)
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) as one datagram. Returns whether
    /// it was sent; failures are logged. Nothing is sent once `STOPPING=1` was.
    pub fn notify(&self, state: &str) -> bool {
        let stopped = crate::util::sync::lock(&self.stopped);
        if *stopped {
            tracing::debug!("not notifying systemd ({}): stopping", key_of(state));
            return false;
        }
        self.send(state)
    }

    /// True once `STOPPING=1` has been sent (or was to be, without a manager).
    pub fn is_stopping(&self) -> bool {
        *crate::util::sync::lock(&self.stopped)
    }

    fn send(&self, state: &str) -> bool {
        let Some(t) = &self.target else {
            return false;
        };
        match t.socket.send_to_addr(state.as_bytes(), &t.addr) {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("systemd notifications to {} work again", t.name);
                }
                true
            }
            Err(e) => {
                let first = key_of(state);
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!("cannot notify systemd ({first}) at {}: {e}", t.name);
                } else {
                    tracing::warn!("cannot notify systemd ({first}) at {}: {e}", t.name);
                }
                false
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> bool {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `STATUS=` with one line of text.
    pub fn status(&self, status: &str) -> bool {
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    /// `RELOADING=1` with the monotonic time systemd (from version 253) expects beside it.
    pub fn reloading(&self) -> bool {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ))
    }

    /// `STOPPING=1`, once: every later notification, this one included, sends nothing.
    pub fn stopping(&self) -> bool {
        let mut stopped = crate::util::sync::lock(&self.stopped);
        if std::mem::replace(&mut *stopped, true) {
            return false;
        }
        self.send("STOPPING=1\nSTATUS=stopping: checkpointing jobs and draining services")
    }

    /// `WATCHDOG=1`, when a watchdog is armed.
    pub fn watchdog(&self) -> bool {
        self.watchdog.is_some() && self.notify("WATCHDOG=1")
    }
}

/// Why the service manager's socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// `NOTIFY_SOCKET` names a path that is not a usable socket address.
    #[error("not a usable socket path: {0}")]
    Path(std::io::Error),
    /// `NOTIFY_SOCKET` names an abstract socket that is not usable.
    #[error("not a usable abstract name: {0}")]
    AbstractName(std::io::Error),
    /// Abstract names exist on Linux only.
    #[cfg(not(target_os = "linux"))]
    #[error("abstract socket names exist on Linux only")]
    AbstractUnsupported,
    /// Neither a path nor an abstract name.
    #[error(
        "expected an absolute socket path or an abstract name starting with @ (other kinds of \
         socket are not supported)"
    )]
    Kind,
    /// The socket could not be made.
    #[error("cannot create a socket: {0}")]
    Create(std::io::Error),
    /// The socket could not be made non-blocking.
    #[error("cannot make the socket non-blocking: {0}")]
    NonBlocking(std::io::Error),
}

fn open(name: &str) -> Result<Target, SocketError> {
    let addr = if let Some(abstract_name) = name.strip_prefix('@') {
        abstract_addr(abstract_name.as_bytes())?
    } else if name.starts_with('/') {
        SocketAddr::from_pathname(name).map_err(SocketError::Path)?
    } else {
        return Err(SocketError::Kind);
    };
    let socket = UnixDatagram::unbound().map_err(SocketError::Create)?;
    // A notification must never hold up the control loop.
    socket
        .set_nonblocking(true)
        .map_err(SocketError::NonBlocking)?;
    Ok(Target {
        socket,
        addr,
        name: name.to_string(),
    })
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> Result<SocketAddr, SocketError> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).map_err(SocketError::AbstractName)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> Result<SocketAddr, SocketError> {
    Err(SocketError::AbstractUnsupported)
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on
    // the platforms this builds for, and on failure `ts` stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec.max(0) as u64) * 1_000_000 + (ts.tv_nsec.max(0) as u64) / 1_000
}

/// A status must be one line: the protocol separates assignments with newlines.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn key_of(state: &str) -> &str {
    state.split('=').next().unwrap_or(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::from_vars(None, Some("1000000"), None, 1);
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        assert!(!n.ready("x"));
        assert!(!n.watchdog());
        let n = Notifier::from_vars(Some(""), None, None, 1);
        assert!(!n.is_enabled());
    }

    #[test]
    fn after_stopping_nothing_else_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(path.to_str(), Some("3000000"), None, 1);
        // A burst of SIGHUP, SIGHUP, SIGTERM: the stop wins over the reloads in flight.
        assert!(n.reloading());
        assert!(!n.is_stopping());
        assert!(n.stopping());
        assert!(n.is_stopping());
        assert!(!n.reloading());
        assert!(!n.ready("serving"));
        assert!(!n.status("serving"));
        assert!(!n.watchdog());
        assert!(!n.notify("EXTEND_TIMEOUT_USEC=1"));
        assert!(!n.stopping(), "STOPPING=1 is sent once");
        server.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(len) = server.recv(&mut buf) {
            got.push(key_of(&String::from_utf8_lossy(&buf[..len])).to_string());
        }
        assert_eq!(got, ["RELOADING", "STOPPING"]);
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_vars(path.to_str(), Some("3000000"), None, 1);
        assert!(n.is_enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_millis(1500)));
        assert!(n.ready("serving 1 service\nsecond line"));
        assert_eq!(
            recv(&server),
            "READY=1\nSTATUS=serving 1 service second line"
        );
        assert!(n.watchdog());
        assert_eq!(recv(&server), "WATCHDOG=1");
        assert!(n.reloading());
        let msg = recv(&server);
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
        let usec: u64 = msg.lines().nth(1).unwrap()["MONOTONIC_USEC=".len()..]
            .parse()
            .unwrap();
        assert!(usec > 0);
        assert!(n.stopping());
        assert!(recv(&server).starts_with("STOPPING=1"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "setpoint-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier::from_vars(Some(&format!("@{name}")), None, None, 1);
        assert!(n.status("ok"));
        assert_eq!(recv(&server), "STATUS=ok");
        // No watchdog asked for: no ping sent.
        assert!(!n.watchdog());
    }

    #[test]
    fn the_watchdog_belongs_to_the_pid_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let _server = UnixDatagram::bind(&path).unwrap();
        let other = Notifier::from_vars(path.to_str(), Some("1000000"), Some("42"), 7);
        assert_eq!(other.watchdog_interval(), None);
        let ours = Notifier::from_vars(path.to_str(), Some("1000000"), Some("7"), 7);
        assert_eq!(ours.watchdog_interval(), Some(Duration::from_millis(500)));
        let bad = Notifier::from_vars(path.to_str(), Some("soon"), None, 7);
        assert_eq!(bad.watchdog_interval(), None);
    }

    #[test]
    fn unusable_sockets_turn_notifications_off_and_failed_sends_are_not_fatal() {
        assert!(!Notifier::from_vars(Some("vsock:2:123"), None, None, 1).is_enabled());
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nobody-listens.sock");
        let n = Notifier::from_vars(gone.to_str(), None, None, 1);
        assert!(n.is_enabled());
        assert!(!n.ready("x"));
        assert!(!n.status("y"));
    }
}
