//! How busy the machine was with other work while a test measured something, from the CPU
//! time counters of `/proc`: the machine's busy time minus this process's. Tests whose
//! figures need the cores (a latency target, a throughput split) assert them only when the
//! others left the cores free, and say plainly when they did not.

use std::time::Instant;

/// Ticks per second of `/proc/stat` and `/proc/self/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// A window over which other processes' CPU use is measured.
pub struct OtherLoad {
    machine_busy: Option<u64>,
    own: Option<u64>,
    started: Instant,
}

/// Busy ticks of all CPUs (the daemon's own reading of `/proc/stat`).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    setpoint::telemetry::cpu_load::parse_stat(&stat, |_| true).map(|t| t.busy)
}

/// This process's user + system ticks, all threads.
fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state field.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl OtherLoad {
    /// Starts a window now.
    pub fn start() -> Self {
        OtherLoad {
            machine_busy: machine_busy_ticks(),
            own: own_ticks(),
            started: Instant::now(),
        }
    }

    /// Cores other processes kept busy on average since the window started; `None` where
    /// `/proc` cannot tell.
    pub fn cores(&self) -> Option<f64> {
        let busy = machine_busy_ticks()?.checked_sub(self.machine_busy?)?;
        let own = own_ticks()?.checked_sub(self.own?)?;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        Some(busy.saturating_sub(own) as f64 / TICKS_PER_S / secs)
    }
}
