//! Parsing `nvidia-smi`'s CSV lines into rows, counting what is skipped and why.

use serde::{Deserialize, Serialize};

use super::clock::{SmiClock, num, parse_smi_timestamp};

const MIB: f64 = 1024.0 * 1024.0;

/// How many malformed lines are quoted in [`SkippedLines::examples`].
const EXAMPLES: usize = 5;

/// One line of `nvidia-smi` output: one GPU at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmiRow {
    /// Seconds since the Unix epoch.
    pub at_unix_s: f64,
    /// `nvidia-smi`'s GPU index (NVML's index).
    pub index: u32,
    /// GPU utilisation, percent (`None`: unavailable).
    pub util_gpu_pct: Option<f64>,
    /// Memory in use, bytes (`None`: unavailable).
    pub mem_used_bytes: Option<u64>,
    /// Power draw, watts (`None`: unavailable).
    pub power_w: Option<f64>,
    /// SM clock, hertz (`None`: unavailable).
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
