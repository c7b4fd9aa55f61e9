//! The daemon binary as a child process on a free loopback port, with its log in a file,
//! for tests that need a real process: signals, exit codes, resource limits.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `setpoint serve`, killed on drop if still running.
pub struct ChildDaemon {
    pub child: Child,
    pub port: u16,
    pub url: String,
    pub log: PathBuf,
    pub agent: ureq::Agent,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ChildDaemon {
    /// Writes `config` (which must listen on `port`) beside `log` and starts the daemon on
    /// it, with the open-file limit set to `nofile` (soft and hard) when given; waits until
    /// it answers.
    pub fn start(config: &str, port: u16, dir: &Path, nofile: Option<u64>) -> ChildDaemon {
        let path = dir.join("setpoint.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("daemon.log");
        Self::spawn(&path, port, &log, nofile, Duration::from_secs(120))
    }

    /// Starts the daemon on the configuration file `config` (which must listen on `port`),
    /// its log appended to `log` (so a restart on the same files keeps one log), requests
    /// timing out after `timeout`; waits until it answers.
    pub fn spawn(
        config: &Path,
        port: u16,
        log: &Path,
        nofile: Option<u64>,
        timeout: Duration,
    ) -> ChildDaemon {
        let log = log.to_path_buf();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_setpoint"));
        // Every test daemon takes a free port for gRPC, never the default 8001.
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .args(["--grpc-listen", "127.0.0.1:0"])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("SETPOINT_AUTH_TOKEN")
            .stdout(Stdio::null())
            .stderr(err);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let mut d = ChildDaemon {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            log,
            agent,
        };
        let end = Instant::now() + Duration::from_secs(60);
        while d.get("/v2/health/live").ok().map(|r| r.0) != Some(200) {
            // A daemon that stopped at start says why in its log.
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("the daemon exited at start ({status}):\n{}", d.log_text());
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for the daemon to listen:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn get(&self, path: &str) -> Result<(u16, String), ureq::Error> {
        let mut r = self.agent.get(format!("{}{path}", self.url)).call()?;
        Ok((r.status().as_u16(), r.body_mut().read_to_string()?))
    }

    /// A GET's status and body; status 0 and the error's text when there is no answer.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        self.get(path).unwrap_or_else(|e| (0, e.to_string()))
    }

    /// A GET's status and body as JSON; a body that is not JSON as a string, and status 0
    /// and the error's text when there is no answer.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None, None)
            .unwrap_or_else(|e| (0, Value::String(e.to_string())))
    }

    /// A POST without a token: see [`ChildDaemon::send`].
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, Some(body), None)
    }

    /// A `method` (`GET`, `DELETE`, or `POST` or `PATCH` with `body`) to `path`, with the
    /// bearer `token` when given: the status and the body as JSON, or as a string when it is
    /// not JSON. Panics when there is no answer.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        self.request(method, path, body, token)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One inference request of the single `row` to `model`; status 0 and the error's text
    /// when there is no answer.
    pub fn infer(&self, model: &str, row: &[f32]) -> (u16, Value) {
        let input = json!({"name": "input", "shape": [1, row.len()], "datatype": "FP32",
                           "data": row});
        let body = json!({"inputs": [input]});
        let path = format!("/v2/models/{model}/infer");
        self.request("POST", &path, Some(&body), None)
            .unwrap_or_else(|e| (0, Value::String(e.to_string())))
    }

    /// A request's status and body (JSON, or else a string); an error when there is no
    /// answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<(u16, Value), ureq::Error> {
        let url = format!("{}{path}", self.url);
        let mut r = match (method, body) {
            ("GET", None) => with_token(self.agent.get(&url), token).call(),
            ("DELETE", None) => with_token(self.agent.delete(&url), token).call(),
            ("POST", Some(b)) => with_token(self.agent.post(&url), token).send_json(b),
            ("PATCH", Some(b)) => with_token(self.agent.patch(&url), token).send_json(b),
            _ => panic!("{method} {path} with body {body:?}: not a request these tests send"),
        }?;
        let status = r.status().as_u16();
        let v = match r.body_mut().read_to_string() {
            Ok(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            Err(e) => Value::String(format!("cannot read the body: {e}")),
        };
        Ok((status, v))
    }

    /// A raw connection to the daemon.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        // SAFETY: signalling a child process this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the process to exit, for at most `limit`.
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit(limit)
    }

    /// Waits for the process to exit, for at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        poll(limit, "the daemon to exit", || {
            self.child.try_wait().unwrap()
        })
    }

    /// Runs the client `setpoint ARGS --url URL` against this daemon, with `env` set (and
    /// the user's `SETPOINT_URL` and token removed).
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        cli_at(&self.url, args, env)
    }

    /// Runs the client with `args`; see [`ChildDaemon::cli_env`].
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_env(args, &[])
    }

    /// Submits job `name` with seed 3 and `extra` (its data, layers, …) through the client,
    /// which must accept it.
    pub fn submit(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["submit", "--name", name, "--seed", "3"];
        args.extend(extra);
        self.cli_expect(0, &args);
    }

    /// Runs the client with `args`, which must exit `code`; its standard output. A failure
    /// shows both outputs and the daemon's log.
    pub fn cli_expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "setpoint {args:?}: stdout {}\nstderr {}\n{}",
            stdout_of(&out),
            stderr_of(&out),
            self.log_text()
        );
        stdout_of(&out)
    }
}

/// Runs the client `setpoint ARGS --url URL` with `env` set (and the user's `SETPOINT_URL`
/// and token removed): against any URL, one where no daemon listens included.
pub fn cli_at(url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(args)
        .args(["--url", url])
        .env_remove("SETPOINT_URL")
        .env_remove("SETPOINT_AUTH_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run setpoint")
}

/// A command's standard output as text.
pub fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's standard error as text.
pub fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A test that fails leaves no daemon behind, and shows the daemon's log.
impl Drop for ChildDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if std::thread::panicking() {
                eprintln!("daemon log:\n{}", self.log_text());
            }
        }
    }
}

/// `req` with the bearer `token`, when given.
fn with_token<B>(req: ureq::RequestBuilder<B>, token: Option<&str>) -> ureq::RequestBuilder<B> {
    match token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    }
}

/// Polls `f` every 20 ms until it returns Some, for at most `limit` (generous: the machine
/// may be busy).
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads one HTTP/1.1 answer with a `content-length` from `s`: its status and body.
pub fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "closed before the answer's head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// Whether the peer closes `s` within its read timeout (reads until EOF or an error).
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A GET of `path` on a kept-alive connection.
pub fn get_on(s: &mut TcpStream, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: setpoint\r\n\r\n").unwrap();
    read_answer(s)
}
