//! Recording and parsing `nvidia-smi`'s CSV output, to cross-check our NVML samples.
//!
//! The recorder runs
//!
//! ```text
//! nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used,power.draw,clocks.sm \
//!            --format=csv,noheader,nounits -lms <interval>
//! ```
//!
//! which prints one line per GPU per interval:
//!
//! ```text
//! 2026/11/28 21:03:04.123, 0, 45, 1234, 250.12, 1980
//! ```
//!
//! Units (with `nounits`): utilisation percent, memory MiB, power W, SM clock MHz.
//!
//! **Timestamps** are printed in the host's local time zone with no offset, so
//! [`SmiClock::Local`] converts them with the C library's `mktime` under the current `TZ`:
//! that is right when the file is parsed on the host (and in the time zone) that recorded
//! it. In the hour repeated when daylight saving ends the conversion is ambiguous and the
//! C library picks one. [`SmiClock::UtcOffsetSeconds`] gives a fixed offset instead (files
//! from elsewhere, tests).
//!
//! **Bad input** never panics and never stops the parse: blank lines and malformed lines
//! (wrong field count, unreadable timestamp or index, a number that does not parse) are
//! counted in [`SkippedLines`] and skipped. A measurement printed as `[N/A]`,
//! `[Not Supported]` or any other bracketed note becomes `None` in an otherwise kept row
//! (counted in `unavailable_fields`); a row whose four measurements are all unavailable is
//! skipped (counted in `unavailable_rows`).

use crate::util::sync::lock;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const MIB: f64 = 1024.0 * 1024.0;

/// How many malformed lines are quoted in [`SkippedLines::examples`].
const EXAMPLES: usize = 5;

/// The query the recorder asks `nvidia-smi` for, in column order.
pub const SMI_QUERY: &str = "timestamp,index,utilization.gpu,memory.used,power.draw,clocks.sm";

/// How `nvidia-smi`'s zone-less timestamps map to Unix time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmiClock {
    /// The host's local time zone now (see the module docs).
    Local,
    /// Local time is UTC plus this many seconds (east positive).
    UtcOffsetSeconds(i32),
}

/// One line of `nvidia-smi` output: one GPU at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmiRow {
    /// Seconds since the Unix epoch.
    pub at_unix_s: f64,
    /// `nvidia-smi`'s GPU index (NVML's index).
    pub index: u32,
    pub util_gpu_pct: Option<f64>,
    pub mem_used_bytes: Option<u64>,
    pub power_w: Option<f64>,
    pub sm_clock_hz: Option<f64>,
}

/// What the parser left out, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SkippedLines {
    /// Empty (or whitespace-only) lines.
    pub blank: usize,
    /// Lines that are not a row of the expected query.
    pub malformed: usize,
    /// Rows whose four measurements were all unavailable.
    pub unavailable_rows: usize,
    /// Measurements printed as unavailable in kept rows.
    pub unavailable_fields: usize,
    /// The first few malformed lines: `line N: why: text`.
    pub examples: Vec<String>,
    /// Set by the recorder when `nvidia-smi` ended by itself with a failure, or its output
    /// could not be read to the end.
    pub exit_note: Option<String>,
}

impl SkippedLines {
    /// Lines left out in all.
    pub fn total(&self) -> usize {
        self.blank + self.malformed + self.unavailable_rows
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// A parsed `YYYY/MM/DD HH:MM:SS[.fff]`: the civil fields and the fraction of a second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    frac: f64,
}

fn num<T: std::str::FromStr>(s: &str, digits: std::ops::RangeInclusive<usize>) -> Option<T> {
    if !digits.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_civil(s: &str) -> Option<Civil> {
    let mut parts = s.split_whitespace();
    let (date, time) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let mut d = date.split('/');
    let year: i64 = num(d.next()?, 4..=4)?;
    let month: u32 = num(d.next()?, 1..=2)?;
    let day: u32 = num(d.next()?, 1..=2)?;
    if d.next().is_some() || !(1..=12).contains(&month) {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut t = time.split(':');
    let hour: u32 = num(t.next()?, 1..=2)?;
    let minute: u32 = num(t.next()?, 1..=2)?;
    let sec_text = t.next()?;
    if t.next().is_some() {
        return None;
    }
    let (sec, frac_text) = match sec_text.split_once('.') {
        Some((s, f)) => (s, Some(f)),
        None => (sec_text, None),
    };
    let second: u32 = num(sec, 1..=2)?;
    let frac = match frac_text {
        Some(f) => {
            let n: u64 = num(f, 1..=9)?;
            n as f64 / 10f64.powi(f.len() as i32)
        }
        None => 0.0,
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(Civil {
        year,
        month,
        day,
        hour,
        minute,
        second,
        frac,
    })
}

fn local_to_unix(c: &Civil) -> Option<i64> {
    // SAFETY: `libc::tm` is plain data for which all-zero bytes are a valid value (a null
    // `tm_zone` included); `mktime` only reads and normalises the struct we own.
    let t = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = i32::try_from(c.year - 1900).ok()?;
        tm.tm_mon = c.month as i32 - 1;
        tm.tm_mday = c.day as i32;
        tm.tm_hour = c.hour as i32;
        tm.tm_min = c.minute as i32;
        tm.tm_sec = c.second as i32;
        // Let the C library decide whether daylight saving applies.
        tm.tm_isdst = -1;
        libc::mktime(&mut tm)
    };
    // -1 is also 1969-12-31 23:59:59 UTC, which nvidia-smi never prints.
    (t != -1).then_some(t as i64)
}

/// Parses an `nvidia-smi` timestamp (`2026/11/28 21:03:04.123`) to Unix seconds.
pub fn parse_smi_timestamp(s: &str, clock: SmiClock) -> Option<f64> {
    let c = parse_civil(s.trim())?;
    let secs = match clock {
        SmiClock::UtcOffsetSeconds(off) => {
            days_from_civil(c.year, c.month, c.day) * 86_400
                + i64::from(c.hour * 3600 + c.minute * 60 + c.second)
                - i64::from(off)
        }
        SmiClock::Local => local_to_unix(&c)?,
    };
    Some(secs as f64 + c.frac)
}

/// A line-at-a-time parser of `nvidia-smi` CSV output.
#[derive(Debug, Clone)]
pub struct SmiParser {
    clock: SmiClock,
    line_no: usize,
    skipped: SkippedLines,
}

enum Field {
    Value(f64),
    Unavailable,
}

/// A field that is neither a finite non-negative number nor marked unavailable.
#[derive(Debug, thiserror::Error)]
#[error("bad number `{0}`")]
struct BadNumber(String);

fn measurement(s: &str) -> Result<Field, BadNumber> {
    let s = s.trim();
    if (s.starts_with('[') && s.ends_with(']')) || s.eq_ignore_ascii_case("N/A") {
        return Ok(Field::Unavailable);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Field::Value(v)),
        _ => Err(BadNumber(s.to_string())),
    }
}

impl SmiParser {
    /// A parser reading timestamps with `clock`.
    pub fn new(clock: SmiClock) -> SmiParser {
        SmiParser {
            clock,
            line_no: 0,
            skipped: SkippedLines::default(),
        }
    }

    fn malformed(&mut self, why: &str, line: &str) {
        self.skipped.malformed += 1;
        if self.skipped.examples.len() < EXAMPLES {
            let mut text: String = line.chars().take(120).collect();
            if text.len() < line.len() {
                text.push('…');
            }
            self.skipped
                .examples
                .push(format!("line {}: {why}: {text}", self.line_no));
        }
    }

    /// Parses the next line; `None` when it is skipped (and counted).
    pub fn line(&mut self, line: &str) -> Option<SmiRow> {
        self.line_no += 1;
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            self.skipped.blank += 1;
            return None;
        }
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 6 {
            self.malformed(&format!("{} fields, expected 6", cols.len()), line);
            return None;
        }
        let Some(at_unix_s) = parse_smi_timestamp(cols[0], self.clock) else {
            self.malformed("bad timestamp", line);
            return None;
        };
        let Some(index) = num::<u32>(cols[1].trim(), 1..=4) else {
            self.malformed("bad GPU index", line);
            return None;
        };
        let mut vals = [None; 4];
        let mut unavailable = 0;
        for (v, text) in vals.iter_mut().zip(&cols[2..]) {
            match measurement(text) {
                Ok(Field::Value(x)) => *v = Some(x),
                Ok(Field::Unavailable) => unavailable += 1,
                Err(why) => {
                    self.malformed(&why.to_string(), line);
                    return None;
                }
            }
        }
        if unavailable == 4 {
            self.skipped.unavailable_rows += 1;
            return None;
        }
        self.skipped.unavailable_fields += unavailable;
        let [util, mem_mib, power, clock_mhz] = vals;
        Some(SmiRow {
            at_unix_s,
            index,
            util_gpu_pct: util,
            mem_used_bytes: mem_mib.map(|m| (m * MIB).round() as u64),
            power_w: power,
            sm_clock_hz: clock_mhz.map(|m| m * 1e6),
        })
    }

    /// What was skipped so far.
    pub fn skipped(&self) -> &SkippedLines {
        &self.skipped
    }

    /// Ends the parse, returning what was skipped.
    pub fn finish(self) -> SkippedLines {
        self.skipped
    }
}

/// Parses a whole `nvidia-smi` CSV capture (see the module docs).
pub fn parse_smi_csv(text: &str, clock: SmiClock) -> (Vec<SmiRow>, SkippedLines) {
    let mut p = SmiParser::new(clock);
    let rows = text.lines().filter_map(|l| p.line(l)).collect();
    (rows, p.finish())
}

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
    #[error("the nvidia-smi interval must be at least 1 ms")]
    ZeroInterval,
    #[error(
        "{program} not found on PATH; install the NVIDIA driver utilities, or run without the nvidia-smi cross-check"
    )]
    NotFound { program: String },
    #[error("cannot start {program}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited at once with {status}: {why}")]
    ExitedAtOnce {
        program: String,
        status: std::process::ExitStatus,
        why: String,
    },
    #[error("cannot watch {program}: {source}")]
    Watch {
        program: String,
        source: std::io::Error,
    },
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
        let mut child = Command::new(program)
            .arg(format!("--query-gpu={SMI_QUERY}"))
            .arg("--format=csv,noheader,nounits")
            .arg("-lms")
            .arg(interval_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| {
                let program = name.clone();
                if source.kind() == std::io::ErrorKind::NotFound {
                    SmiError::NotFound { program }
                } else {
                    SmiError::Start { program, source }
                }
            })?;
        let captured = Arc::new(Mutex::new(Captured {
            rows: Vec::new(),
            parser: SmiParser::new(clock),
        }));
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = child.stdout.take().map(|out| {
            let captured = Arc::clone(&captured);
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
        });
        let err_reader = child.stderr.take().map(|mut err| {
            let stderr = Arc::clone(&stderr);
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
        });
        let mut rec = SmiRecorder {
            child: None,
            program: name.clone(),
            captured,
            stderr,
            reader,
            err_reader,
        };
        let until = Instant::now() + STARTUP_WATCH;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    wait_finished(&rec.err_reader, Instant::now() + DRAIN_WAIT);
                    let why = lock(&rec.stderr).trim().to_string();
                    let captured_text = lock(&rec.captured).parser.skipped().examples.join("; ");
                    let why = if why.is_empty() { captured_text } else { why };
                    return Err(SmiError::ExitedAtOnce {
                        program: name,
                        status,
                        why,
                    });
                }
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => break,
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
        rec.child = Some(child);
        Ok(rec)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 28), 20_785);
    }

    #[test]
    fn timestamps_parse_with_fixed_offset() {
        let t =
            parse_smi_timestamp("2026/11/28 21:03:04.123", SmiClock::UtcOffsetSeconds(0)).unwrap();
        assert!((t - 1_795_899_784.123).abs() < 1e-6, "{t}");
        let t2 = parse_smi_timestamp("2026/11/28 22:03:04.123", SmiClock::UtcOffsetSeconds(3600))
            .unwrap();
        assert!((t2 - t).abs() < 1e-6);
        for bad in [
            "2026/13/28 21:03:04.123",
            "2026/02/29 21:03:04",
            "2026/11/28 24:00:00",
            "2026/11/28",
            "26/11/28 21:03:04",
            "2026/11/28 21:03:04.",
            "2026/11/28 21:03:04.12a",
            "",
        ] {
            assert_eq!(
                parse_smi_timestamp(bad, SmiClock::UtcOffsetSeconds(0)),
                None,
                "{bad}"
            );
        }
        assert!(
            parse_smi_timestamp("2024/02/29 00:00:00", SmiClock::UtcOffsetSeconds(0)).is_some()
        );
    }

    #[test]
    fn local_time_round_trips_through_the_c_library() {
        let t = parse_smi_timestamp("2026/07/01 12:30:45.5", SmiClock::Local).unwrap();
        let secs = t.floor() as libc::time_t;
        // SAFETY: `localtime_r` writes only into the `tm` we pass; zeroed `tm` is valid.
        let tm = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            assert!(!libc::localtime_r(&secs, &mut tm).is_null());
            tm
        };
        assert_eq!(
            (
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec
            ),
            (2026, 7, 1, 12, 30, 45)
        );
        assert!((t.fract() - 0.5).abs() < 1e-9);
    }
}
