//! `nvidia-smi`'s zone-less timestamps (`2026/11/28 21:03:04.123`) to Unix seconds, in a
//! fixed offset or the host's local time zone (see the parent module's docs).

/// How `nvidia-smi`'s zone-less timestamps map to Unix time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmiClock {
    /// The host's local time zone now (see the module docs).
    Local,
    /// Local time is UTC plus this many seconds (east positive).
    UtcOffsetSeconds(i32),
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

pub(super) fn num<T: std::str::FromStr>(
    s: &str,
    digits: std::ops::RangeInclusive<usize>,
) -> Option<T> {
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
