//! Job deadlines: a duration relative to submission or an absolute RFC 3339 instant.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// When a training job must finish.
///
/// Written in a config as a duration relative to submission (`"90s"`, `"10m"`, `"2h"`,
/// humantime syntax) or as an RFC 3339 timestamp (`"2026-11-28T14:30:00Z"`). `Display` and
/// serde render the same syntax back, so a printed deadline parses to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// This long after the job is submitted.
    In(Duration),
    /// At this instant.
    At(SystemTime),
}

impl Deadline {
    /// The instant the job must finish by, for a job submitted at `submitted`.
    ///
    /// A relative deadline too far out to represent saturates at the largest representable
    /// instant rather than panicking.
    pub fn resolve(&self, submitted: SystemTime) -> SystemTime {
        match *self {
            Deadline::At(t) => t,
            Deadline::In(d) => saturating_add(submitted, d),
        }
    }
}

fn saturating_add(t: SystemTime, d: Duration) -> SystemTime {
    if let Some(r) = t.checked_add(d) {
        return r;
    }
    // Greedily add the largest power-of-two chunks that still fit.
    let mut out = t;
    let mut step = d;
    while !step.is_zero() {
        match out.checked_add(step) {
            Some(r) => out = r,
            None => step /= 2,
        }
    }
    out
}

/// Why a deadline string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineError {
    /// Neither a duration nor a timestamp.
    #[error(
        "expected a duration like \"90s\", \"10m\" or \"2h\", or an RFC 3339 timestamp like \"2026-11-28T14:30:00Z\", got {input:?}"
    )]
    Unrecognised {
        /// The text as given.
        input: String,
    },
    /// Looks like a timestamp but is not a valid RFC 3339 one.
    #[error(
        "invalid RFC 3339 timestamp {input:?}: {reason} (expected a form like \"2026-11-28T14:30:00Z\" or \"2026-11-28T15:30:00+01:00\")"
    )]
    Timestamp {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: TimestampError,
    },
    /// A zero relative deadline.
    #[error("a relative deadline must be > 0, got {input:?}")]
    Zero {
        /// The text as given.
        input: String,
    },
    /// A relative deadline beyond [`MAX_RELATIVE`].
    #[error("a relative deadline must be at most 366 days, got {input:?}")]
    TooFar {
        /// The text as given.
        input: String,
    },
}

/// Why a timestamp is not a valid RFC 3339 one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("expected {digits} digits for the {what}")]
    Digits { digits: usize, what: &'static str },
    #[error("expected {0}")]
    Expected(&'static str),
    #[error("expected digits after '.'")]
    NoFraction,
    #[error("offset out of range")]
    OffsetRange,
    #[error("missing UTC offset (add Z for UTC, or +hh:mm)")]
    NoOffset,
    #[error("unexpected text after the offset")]
    Trailing,
    #[error("month {0} out of range")]
    Month(i64),
    #[error("day {day} out of range for month {month}")]
    Day { day: i64, month: i64 },
    #[error("time of day out of range")]
    TimeOfDay,
    #[error("out of range for this platform")]
    Platform,
}

/// The longest relative deadline accepted: a year, leap day included.
pub(crate) const MAX_RELATIVE: Duration = Duration::from_secs(366 * 24 * 3600);

impl FromStr for Deadline {
    type Err = DeadlineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if looks_like_timestamp(t) {
            return parse_rfc3339(t)
                .map(Deadline::At)
                .map_err(|reason| DeadlineError::Timestamp {
                    input: s.to_owned(),
                    reason,
                });
        }
        match humantime::parse_duration(t) {
            Ok(d) if d.is_zero() => Err(DeadlineError::Zero {
                input: s.to_owned(),
            }),
            Ok(d) if d > MAX_RELATIVE => Err(DeadlineError::TooFar {
                input: s.to_owned(),
            }),
            Ok(d) => Ok(Deadline::In(d)),
            Err(_) => Err(DeadlineError::Unrecognised {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Deadline::In(d) => write!(f, "{}", humantime::format_duration(d)),
            Deadline::At(t) => f.write_str(&format_rfc3339(t)),
        }
    }
}

impl Serialize for Deadline {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads the syntax `Serialize` writes (and a config accepts), with [`Deadline::from_str`]'s
/// checks.
impl<'de> Deserialize<'de> for Deadline {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `YYYY-` at the start: no humantime duration begins that way.
fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// Parses `YYYY-MM-DD(T|t| )HH:MM:SS[.fraction](Z|z|+hh:mm|-hh:mm)`.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, TimestampError> {
    let mut p = Cursor {
        s: s.as_bytes(),
        i: 0,
    };
    let year = p.digits(4, "year")?;
    p.expect(b"-", "'-' after the year")?;
    let month = p.digits(2, "month")?;
    p.expect(b"-", "'-' after the month")?;
    let day = p.digits(2, "day")?;
    p.expect(b"Tt ", "'T' between date and time")?;
    let hour = p.digits(2, "hour")?;
    p.expect(b":", "':' after the hour")?;
    let minute = p.digits(2, "minute")?;
    p.expect(b":", "':' after the minute")?;
    let second = p.digits(2, "second")?;
    let mut nanos: i64 = 0;
    if p.peek() == Some(b'.') {
        p.i += 1;
        let start = p.i;
        let mut scale = 100_000_000;
        while let Some(c) = p.peek().filter(u8::is_ascii_digit) {
            // Digits beyond nanoseconds are accepted and dropped.
            nanos += i64::from(c - b'0') * scale;
            scale /= 10;
            p.i += 1;
        }
        if p.i == start {
            return Err(TimestampError::NoFraction);
        }
    }
    let offset_s = match p.peek() {
        Some(b'Z' | b'z') => {
            p.i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            p.i += 1;
            let oh = p.digits(2, "offset hours")?;
            p.expect(b":", "':' in the offset")?;
            let om = p.digits(2, "offset minutes")?;
            if oh > 23 || om > 59 {
                return Err(TimestampError::OffsetRange);
            }
            let o = oh * 3600 + om * 60;
            if sign == b'-' { -o } else { o }
        }
        _ => return Err(TimestampError::NoOffset),
    };
    if p.i != p.s.len() {
        return Err(TimestampError::Trailing);
    }
    if !(1..=12).contains(&month) {
        return Err(TimestampError::Month(month));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(TimestampError::Day { day, month });
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(TimestampError::TimeOfDay);
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(Duration::from_nanos(nanos.unsigned_abs())))
        .ok_or(TimestampError::Platform)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn digits(&mut self, n: usize, what: &'static str) -> Result<i64, TimestampError> {
        let mut v = 0i64;
        for _ in 0..n {
            match self.peek() {
                Some(c) if c.is_ascii_digit() => {
                    v = v * 10 + i64::from(c - b'0');
                    self.i += 1;
                }
                _ => return Err(TimestampError::Digits { digits: n, what }),
            }
        }
        Ok(v)
    }

    fn expect(&mut self, one_of: &[u8], what: &'static str) -> Result<(), TimestampError> {
        match self.peek() {
            Some(c) if one_of.contains(&c) => {
                self.i += 1;
                Ok(())
            }
            _ => Err(TimestampError::Expected(what)),
        }
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// RFC 3339 in UTC, fractional seconds only when non-zero. Unlike humantime's formatter this
/// never panics on instants before 1970.
pub fn format_rfc3339(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i128, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (-(d.as_secs() as i128), d.subsec_nanos());
            if n == 0 {
                (s, 0)
            } else {
                (s - 1, 1_000_000_000 - n)
            }
        }
    };
    let days = secs.div_euclid(86_400) as i64;
    let sod = secs.rem_euclid(86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Deadline {
        Deadline::At(UNIX_EPOCH + Duration::from_secs(secs))
    }

    #[test]
    fn relative_durations() {
        assert_eq!("90s".parse(), Ok(Deadline::In(Duration::from_secs(90))));
        assert_eq!("10m".parse(), Ok(Deadline::In(Duration::from_secs(600))));
        assert_eq!("2h".parse(), Ok(Deadline::In(Duration::from_secs(7200))));
        assert_eq!(
            "1h 30m".parse(),
            Ok(Deadline::In(Duration::from_secs(5400)))
        );
    }

    #[test]
    fn relative_deadlines_are_bounded_to_a_year() {
        assert_eq!("366d".parse::<Deadline>(), Ok(Deadline::In(MAX_RELATIVE)));
        let e = "18446744073709551615s".parse::<Deadline>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "a relative deadline must be at most 366 days, got \"18446744073709551615s\""
        );
        assert!(matches!(
            "367d".parse::<Deadline>(),
            Err(DeadlineError::TooFar { .. })
        ));
    }

    #[test]
    fn zero_is_refused() {
        assert!(matches!(
            "0s".parse::<Deadline>(),
            Err(DeadlineError::Zero { .. })
        ));
    }

    #[test]
    fn timestamps_with_offsets() {
        // 2026-11-28T14:30:00Z = 1795876200
        assert_eq!("2026-11-28T14:30:00Z".parse(), Ok(at(1_795_876_200)));
        assert_eq!("2026-11-28t14:30:00z".parse(), Ok(at(1_795_876_200)));
        assert_eq!("2026-11-28T15:30:00+01:00".parse(), Ok(at(1_795_876_200)));
        assert_eq!("2026-11-28 09:30:00-05:00".parse(), Ok(at(1_795_876_200)));
        assert_eq!("1970-01-01T00:00:00Z".parse(), Ok(at(0)));
        assert_eq!(
            "2000-02-29T00:00:00.25Z".parse(),
            Ok(Deadline::At(
                UNIX_EPOCH + Duration::from_secs(951_782_400) + Duration::from_millis(250)
            ))
        );
    }

    #[test]
    fn bad_timestamps_say_why() {
        for (s, why) in [
            ("2026-11-28T14:30:00", "missing UTC offset"),
            ("2026-13-28T14:30:00Z", "month 13 out of range"),
            ("2026-02-29T14:30:00Z", "day 29 out of range"),
            ("2026-11-28T25:30:00Z", "time of day out of range"),
            ("2026-11-28", "expected 'T' between date and time"),
            ("2026-11-28T14:30:00Zjunk", "unexpected text"),
        ] {
            let e = s.parse::<Deadline>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
            assert!(e.contains("2026-11-28T14:30:00Z"), "{s}: {e}");
        }
    }

    #[test]
    fn garbage_names_accepted_forms() {
        let e = "soon".parse::<Deadline>().unwrap_err().to_string();
        assert!(e.contains("\"10m\""), "{e}");
        assert!(e.contains("RFC 3339"), "{e}");
        assert!(e.contains("\"soon\""), "{e}");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10m",
            "1h 30m",
            "2026-11-28T14:30:00Z",
            "2026-11-28T14:30:00.5Z",
            "1969-12-31T23:59:59.75Z",
            "1900-03-01T00:00:00Z",
        ] {
            let d: Deadline = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
            assert_eq!(d.to_string().parse::<Deadline>().unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Deadline>(&json).unwrap(), d);
        }
        let e = serde_json::from_str::<Deadline>("\"soon\"").unwrap_err();
        assert!(e.to_string().contains("expected a duration"), "{e}");
    }

    #[test]
    fn civil_round_trip() {
        for z in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn resolve_relative_and_absolute() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            Deadline::In(Duration::from_secs(60)).resolve(t0),
            t0 + Duration::from_secs(60)
        );
        assert_eq!(at(5).resolve(t0), UNIX_EPOCH + Duration::from_secs(5));
        // Far beyond what SystemTime holds: saturates, no panic.
        let far = Deadline::In(Duration::MAX).resolve(t0);
        assert!(far > t0 + Duration::from_secs(1 << 40));
    }
}
