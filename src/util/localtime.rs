//! Times for people: RFC 3339 to the second, in UTC (`2026-12-03T13:04:29Z`) or in the local
//! zone with its offset (`2026-12-03T14:04:29+01:00`). The client prints local times on a
//! terminal and UTC otherwise, so that scripts and logs read the same on every host.
//!
//! [`local_offset_s`] asks the C library (`localtime_r`, which reads `TZ` and the system's
//! zone file); [`with_offset`] is the pure formatting, tested with fixed offsets.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{civil_from_days, parse_rfc3339};

/// Which zone the client writes times in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// UTC, with a `Z`.
    Utc,
    /// The host's local zone, with its offset.
    Local,
}

static ZONE: OnceLock<Zone> = OnceLock::new();

/// Sets the zone this process writes times in; the first call wins (UTC until then).
pub fn set_zone(zone: Zone) {
    let _ = ZONE.set(zone);
}

/// The zone set by [`set_zone`], UTC if none was.
pub fn zone() -> Zone {
    ZONE.get().copied().unwrap_or(Zone::Utc)
}

/// An RFC 3339 time from the daemon as a person reads it: to the second, in the zone set by
/// [`set_zone`]. Text that is not an RFC 3339 time is returned as it is, without its fraction
/// of a second if it has one.
pub fn for_people(t: &str) -> String {
    let utc = super::table::to_the_second(t);
    if zone() == Zone::Utc {
        return utc;
    }
    match parse_rfc3339(t) {
        Ok(at) => with_offset(at, local_offset_s(at).unwrap_or(0)),
        Err(_) => utc,
    }
}

/// `t` to the second at `offset_s` seconds east of UTC: `Z` for offset 0, else `+HH:MM` (or
/// `-HH:MM`). An offset with seconds is cut to the minute, as RFC 3339 can only write
/// minutes, and the clock is moved by the offset as written, so that the text names `t`.
pub fn with_offset(t: SystemTime, offset_s: i32) -> String {
    let offset_s = offset_s / 60 * 60;
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    } + i64::from(offset_s);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let clock = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if offset_s == 0 {
        return clock + "Z";
    }
    let sign = if offset_s < 0 { '-' } else { '+' };
    let minutes = offset_s.unsigned_abs() / 60;
    format!("{clock}{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

/// The local zone's offset from UTC at `t`, in seconds east, as the C library reports it
/// (daylight saving time included); none if it cannot say.
pub fn local_offset_s(t: SystemTime) -> Option<i32> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as libc::time_t,
        Err(e) => -(e.duration().as_secs() as libc::time_t),
    };
    // SAFETY: `localtime_r` writes only into `tm`, which lives for the call; a zeroed `tm` is
    // a valid value of the plain C struct. The re-entrant form does not share a static
    // buffer between threads.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    ok.then(|| i32::try_from(tm.tm_gmtoff).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The instant `secs` seconds after the Unix epoch.
    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    // 2026-12-03T13:04:29Z
    const T: u64 = 1_796_303_069;

    #[test]
    fn utc_is_written_with_a_z() {
        assert_eq!(with_offset(at(T), 0), "2026-12-03T13:04:29Z");
    }

    #[test]
    fn offsets_move_the_clock_and_are_written_to_the_minute() {
        assert_eq!(with_offset(at(T), 3600), "2026-12-03T14:04:29+01:00");
        assert_eq!(
            with_offset(at(T), 5 * 3600 + 1800),
            "2026-12-03T18:34:29+05:30"
        );
        // West of UTC, across midnight into the day before.
        assert_eq!(with_offset(at(T), -14 * 3600), "2026-12-02T23:04:29-14:00");
        // A historical offset with seconds (Amsterdam before 1937: +00:19:32).
        assert_eq!(with_offset(at(T), 1172), "2026-12-03T13:23:29+00:19");
        for offset in [3600, 19_800, -50_400, 1172] {
            let text = with_offset(at(T), offset);
            assert_eq!(parse_rfc3339(&text).unwrap(), at(T), "{text}");
        }
    }

    #[test]
    fn a_local_time_names_the_same_instant() {
        // Whatever the host's zone, the local rendering parses back to the same instant.
        let t = at(T);
        let local = with_offset(t, local_offset_s(t).expect("the C library knows the zone"));
        assert_eq!(parse_rfc3339(&local).unwrap(), t, "{local}");
    }

    #[test]
    fn utc_is_the_default_and_fractions_are_dropped() {
        assert_eq!(zone(), Zone::Utc);
        assert_eq!(
            for_people("2026-12-03T13:04:29.230169442Z"),
            "2026-12-03T13:04:29Z"
        );
        assert_eq!(for_people("soon"), "soon");
    }
}
