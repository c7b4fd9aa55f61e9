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

mod clock;
mod parse;
mod recorder;

pub use clock::{SmiClock, parse_smi_timestamp};
pub use parse::{SkippedLines, SmiParser, SmiRow, parse_smi_csv};
pub use recorder::{SmiError, SmiRecorder};

/// The query the recorder asks `nvidia-smi` for, in column order.
pub(crate) const SMI_QUERY: &str =
    "timestamp,index,utilization.gpu,memory.used,power.draw,clocks.sm";
