//! Running `nvidia-smi` as a child process and parsing its output as it comes.

use crate::util::sync::lock;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::SMI_QUERY;
use super::clock::SmiClock;
use super::parse::{SkippedLines, SmiParser, SmiRow};

struct Captured {
    rows: Vec<SmiRow>,
    parser: SmiParser,
}

/// A running `nvidia-smi` whose output is parsed as it comes.
pub struct SmiRecorder {
    child: Option<Child>,
    program: String,
    captured: Arc<Mutex<Captured>>,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    err_reader: Option<JoinHandle<()>>,
}

/// How long `start` watches for `nvidia-smi` failing at once (no driver, bad arguments).
const STARTUP_WATCH: Duration = Duration::from_millis(300);

/// How long `stop` waits for the output to be read to the end once the process is gone.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

fn wait_finished(h: &Option<JoinHandle<()>>, until: Instant) -> bool {
    loop {
        match h {
            None => return true,
            Some(h) if h.is_finished() => return true,
            Some(_) if Instant::now() >= until => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Why `nvidia-smi` could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SmiError {
    /// The sampling interval was 0 ms.
    #[error("the nvidia-smi interval must be at least 1 ms")]
    ZeroInterval,
    /// The program is not on `PATH`.
    #[error(
        "{program} not found on PATH; install the NVIDIA driver utilities, or run without the nvidia-smi cross-check"
    )]
    NotFound { program: String },
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    /// The program failed within 300 ms of starting.
    #[error("{program} exited at once with {status}: {why}")]
    ExitedAtOnce {
        program: String,
        status: std::process::ExitStatus,
        why: String,
    },
    /// Whether the program is still running could not be asked.
    #[error("cannot watch {program}: {source}")]
    Watch {
        program: String,
        source: std::io::Error,
    },
}

/// Starts `program` with the recorder's arguments, its output piped.
fn spawn(program: &Path, interval_ms: u64, name: &str) -> Result<Child, SmiError> {
    Command::new(program)
        .arg(format!("--query-gpu={SMI_QUERY}"))
        .arg("--format=csv,noheader,nounits")
        .arg("-lms")
        .arg(interval_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            let program = name.to_string();
            if source.kind() == std::io::ErrorKind::NotFound {
                SmiError::NotFound { program }
            } else {
                SmiError::Start { program, source }
            }
        })
}

/// A thread parsing `out` line by line into `captured`, until it ends or fails.
fn read_rows(out: impl Read + Send + 'static, captured: Arc<Mutex<Captured>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let mut c = lock(&captured);
                    if let Some(row) = c.parser.line(&line) {
                        c.rows.push(row);
                    }
                }
            }
        }
    })
}

/// A thread keeping the start of `err` (the first lines say why) in `stderr`.
fn read_stderr(mut err: impl Read + Send + 'static, stderr: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = err.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let mut s = lock(&stderr);
            // Keep the start of it: the first lines say why.
            if s.len() < 16 * 1024 {
                s.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }
    })
}

impl SmiRecorder {
    /// Starts `nvidia-smi` sampling every `interval_ms` milliseconds, timestamps in local
    /// time. Errors when `nvidia-smi` is not on `PATH` or fails at once.
    pub fn start(interval_ms: u64) -> Result<SmiRecorder, SmiError> {
        Self::start_program(Path::new("nvidia-smi"), interval_ms, SmiClock::Local)
    }

    /// Like [`SmiRecorder::start`] with another program (given the same arguments) and clock.
    pub fn start_program(
        program: &Path,
        interval_ms: u64,
        clock: SmiClock,
    ) -> Result<SmiRecorder, SmiError> {
        let name = program.display().to_string();
        if interval_ms == 0 {
            return Err(SmiError::ZeroInterval);
        }
        let mut child = spawn(program, interval_ms, &name)?;
        let captured = Arc::new(Mutex::new(Captured {
            rows: Vec::new(),
            parser: SmiParser::new(clock),
        }));
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = child
            .stdout
            .take()
            .map(|out| read_rows(out, Arc::clone(&captured)));
        let err_reader = child
            .stderr
            .take()
            .map(|err| read_stderr(err, Arc::clone(&stderr)));
        let mut rec = SmiRecorder {
            child: None,
            program: name.clone(),
            captured,
            stderr,
            reader,
            err_reader,
        };
        rec.watch_startup(&mut child, name)?;
        rec.child = Some(child);
        Ok(rec)
    }

    /// Watches `child` for [`STARTUP_WATCH`], erring when it fails in that time.
    fn watch_startup(&self, child: &mut Child, name: String) -> Result<(), SmiError> {
        let until = Instant::now() + STARTUP_WATCH;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    wait_finished(&self.err_reader, Instant::now() + DRAIN_WAIT);
                    let why = lock(&self.stderr).trim().to_string();
                    let captured_text = lock(&self.captured).parser.skipped().examples.join("; ");
                    let why = if why.is_empty() { captured_text } else { why };
                    return Err(SmiError::ExitedAtOnce {
                        program: name,
                        status,
                        why,
                    });
                }
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(SmiError::Watch {
                        program: name,
                        source: e,
                    });
                }
            }
        }
    }

    /// Rows parsed so far.
    pub fn rows_so_far(&self) -> usize {
        lock(&self.captured).rows.len()
    }

    /// Stops `nvidia-smi` and returns every row it printed and what was skipped.
    pub fn stop(mut self) -> (Vec<SmiRow>, SkippedLines) {
        let mut note = None;
        if let Some(mut child) = self.child.take() {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    note = Some(format!("{} ended by itself with {status}", self.program));
                }
                Ok(Some(_)) => {}
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let until = Instant::now() + DRAIN_WAIT;
        let drained = wait_finished(&self.reader, until);
        wait_finished(&self.err_reader, until);
        if !drained {
            note = Some(format!(
                "{}'s output was still open {} s after it stopped; rows after that are missing",
                self.program,
                DRAIN_WAIT.as_secs()
            ));
        }
        if let Some(n) = note.as_mut() {
            let err = lock(&self.stderr).trim().to_string();
            if !err.is_empty() {
                n.push_str(": ");
                n.push_str(&err);
            }
        }
        let mut c = lock(&self.captured);
        let rows = std::mem::take(&mut c.rows);
        let mut skipped = c.parser.skipped().clone();
        skipped.exit_note = note;
        (rows, skipped)
    }
}

impl Drop for SmiRecorder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
