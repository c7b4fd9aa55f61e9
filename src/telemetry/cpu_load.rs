//! Other processes' load on the CPU the daemon runs on: what the CPU backend's capacity loses
//! to them.
//!
//! Training runs in the background (`SCHED_IDLE`), so a busy process beside the daemon takes
//! its cores from the deadline jobs first; the controller and admission count that load off
//! the CPU's capacity, as they do NVML's foreign load on a GPU.
//!
//! The law, over the CPUs the daemon may run on (its affinity mask, `n` of them) between two
//! reads of `/proc/stat`: the CPU time they were busy (user, nice, system, irq, softirq and
//! steal: time a hypervisor gave another guest) less the daemon's own CPU time is the other
//! processes' time; over the elapsed time it is the cores they kept busy, `f`. The CPU device
//! has `c` cores (fewer than `n` under a CPU quota), and other processes take from it only
//! what the mask's other cores do not absorb: its foreign load is `max(0, f − (n − c)) / c`.
//! Each read moves a running mean toward that by `1 − e^(−Δt/τ)` with `τ` = [`SMOOTHING_S`]:
//! the kernel counts in ticks of 10 ms, so one control period alone is coarse.
//!
//! [`ForeignCpu`] is the pure part; [`CpuLoadSource`] reads procfs. Where procfs cannot be
//! read (not Linux), nothing is counted.

use std::time::Duration;

/// Seconds over which the foreign load is smoothed.
pub const SMOOTHING_S: f64 = 2.0;

/// Tick counts summed over the CPUs counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// Ticks busy, for anyone.
    pub busy: u64,
    /// Ticks in all (busy, idle and waiting for I/O).
    pub total: u64,
    /// CPUs counted.
    pub cpus: usize,
}

/// Sums the per-CPU lines (`cpuN ...`) of `/proc/stat` for the CPUs `counted` accepts; `None`
/// when there are none.
pub fn parse_stat(text: &str, counted: impl Fn(usize) -> bool) -> Option<CpuTicks> {
    let mut sum = CpuTicks::default();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|f| f.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !counted(cpu) {
            continue;
        }
        let v: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
            continue;
        };
        let busy = user + nice + system + irq + softirq + steal;
        sum.busy += busy;
        sum.total += busy + idle + iowait;
        sum.cpus += 1;
    }
    (sum.cpus > 0).then_some(sum)
}

/// A read: the CPUs' ticks and the daemon's own CPU time then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuRead {
    pub ticks: CpuTicks,
    pub own: Duration,
}

/// The foreign load on the CPU device, smoothed over reads.
#[derive(Debug, Clone)]
pub struct ForeignCpu {
    /// The CPU device's cores.
    cores: f64,
    /// Ticks a second (`CLK_TCK`).
    tick_hz: f64,
    last: Option<CpuRead>,
    smoothed: Option<f64>,
}

impl ForeignCpu {
    /// For a CPU device of `cores`, with the kernel counting `tick_hz` ticks a second.
    pub fn new(cores: f64, tick_hz: f64) -> Self {
        ForeignCpu {
            cores: if cores > 0.0 { cores } else { 1.0 },
            tick_hz: if tick_hz > 0.0 { tick_hz } else { 100.0 },
            last: None,
            smoothed: None,
        }
    }

    /// Takes a read; returns the foreign load, as a fraction of the device in `[0, 1]`
    /// (0 until two reads with time between them).
    pub fn update(&mut self, read: CpuRead) -> f64 {
        let before = self.last.replace(read);
        let Some(before) = before.filter(|b| b.ticks.cpus == read.ticks.cpus) else {
            return self.load();
        };
        let total = read.ticks.total.saturating_sub(before.ticks.total) as f64 / self.tick_hz;
        if total <= 0.0 {
            return self.load();
        }
        let n = read.ticks.cpus as f64;
        let elapsed = total / n;
        let busy = read.ticks.busy.saturating_sub(before.ticks.busy) as f64 / self.tick_hz;
        let own = read.own.saturating_sub(before.own).as_secs_f64();
        let others = ((busy - own) / elapsed).max(0.0);
        let now = ((others - (n - self.cores).max(0.0)) / self.cores).clamp(0.0, 1.0);
        let w = 1.0 - (-elapsed / SMOOTHING_S).exp();
        self.smoothed = Some(match self.smoothed {
            Some(s) => s + w * (now - s),
            None => now,
        });
        self.load()
    }

    /// The foreign load now (0 before it could be measured).
    pub fn load(&self) -> f64 {
        self.smoothed.unwrap_or(0.0)
    }
}

/// Reads `/proc/stat` over the daemon's CPUs and its own CPU time.
pub struct CpuLoadSource {
    /// The CPUs the daemon may run on; `None`: all of them.
    mask: Option<Vec<usize>>,
    foreign: ForeignCpu,
}

impl CpuLoadSource {
    /// For a CPU device of `cores`, over the CPUs this process may run on now.
    pub fn new(cores: f64) -> Self {
        CpuLoadSource {
            mask: affinity(),
            foreign: ForeignCpu::new(cores, tick_hz()),
        }
    }

    /// Reads and returns the foreign load (the last one when procfs cannot be read).
    pub fn sample(&mut self) -> f64 {
        let Ok(text) = std::fs::read_to_string("/proc/stat") else {
            return self.foreign.load();
        };
        let counted = |cpu: usize| self.mask.as_ref().is_none_or(|m| m.contains(&cpu));
        let Some(ticks) = parse_stat(&text, counted) else {
            return self.foreign.load();
        };
        self.foreign.update(CpuRead {
            ticks,
            own: crate::util::cputime::process_cpu_time(),
        })
    }
}

/// The CPUs this process may run on, when the platform says.
fn affinity() -> Option<Vec<usize>> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `set` is a plain bit set the call fills; its size is passed with it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            (!cpus.is_empty()).then_some(cpus)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The kernel's ticks a second for `/proc/stat` (`CLK_TCK`).
fn tick_hz() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz > 0 {
            return hz as f64;
        }
    }
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  300 0 100 800 0 0 0 0 0 0\n\
                        cpu0 200 0 50 300 0 0 0 0 0 0\n\
                        cpu1 100 0 50 500 0 0 0 0 0 0\n\
                        intr 12345 0 0\n\
                        ctxt 999\n";

    #[test]
    fn per_cpu_lines_are_summed_over_the_cpus_counted() {
        let all = parse_stat(STAT, |_| true).unwrap();
        assert_eq!(
            all,
            CpuTicks {
                busy: 400,
                total: 1200,
                cpus: 2
            }
        );
        let one = parse_stat(STAT, |c| c == 1).unwrap();
        assert_eq!(one.busy, 150);
        assert_eq!(one.total, 650);
        assert_eq!(parse_stat(STAT, |c| c == 7), None);
        // Steal, irq and softirq are busy; iowait is not.
        let line = "cpu0 1 2 3 4 5 6 7 8 9 10\n";
        let t = parse_stat(line, |_| true).unwrap();
        assert_eq!((t.busy, t.total), (1 + 2 + 3 + 6 + 7 + 8, 36));
        // Short or garbled lines are skipped.
        assert_eq!(
            parse_stat("cpu0 1 2 3\ncpux 1 2 3 4 5 6 7 8\n", |_| true),
            None
        );
    }

    /// A read `secs` into the run on `cpus` CPUs: `busy_s` CPU-seconds busy in all so far,
    /// `own_s` of them the daemon's.
    fn read(cpus: usize, secs: f64, busy_s: f64, own_s: f64) -> CpuRead {
        CpuRead {
            ticks: CpuTicks {
                busy: (busy_s * 100.0).round() as u64,
                total: (secs * 100.0 * cpus as f64).round() as u64,
                cpus,
            },
            own: Duration::from_secs_f64(own_s),
        }
    }

    #[test]
    fn other_processes_count_what_the_daemon_did_not_use() {
        let mut f = ForeignCpu::new(2.0, 100.0);
        assert_eq!(
            f.update(read(2, 0.0, 0.0, 0.0)),
            0.0,
            "one read tells nothing"
        );
        // Over 10 s, 1.5 cores busy, 0.5 of them the daemon's: 1 core of 2 is others'.
        let l = f.update(read(2, 10.0, 15.0, 5.0));
        assert!((l - 0.5).abs() < 1e-9, "{l}");
        // The next 10 s all the daemon's: the load falls toward 0 by 1 − e^(−10/2) at once.
        let l = f.update(read(2, 20.0, 25.0, 15.0));
        assert!((l - 0.5 * (-5.0f64).exp()).abs() < 1e-9, "{l}");
    }

    #[test]
    fn a_quota_smaller_than_the_mask_loses_only_what_the_other_cores_cannot_absorb() {
        // Eight CPUs in the mask, a device of two cores: 5 busy cores of others leave 3
        // free, more than the device's 2; at 7 busy, one is left.
        let mut f = ForeignCpu::new(2.0, 100.0);
        f.update(read(8, 0.0, 0.0, 0.0));
        assert_eq!(f.update(read(8, 10.0, 50.0, 0.0)), 0.0);
        let mut f = ForeignCpu::new(2.0, 100.0);
        f.update(read(8, 0.0, 0.0, 0.0));
        let l = f.update(read(8, 10.0, 70.0, 0.0));
        assert!((l - 0.5).abs() < 1e-9, "{l}");
        // The daemon's own time beyond what ticks show (rounding) counts nothing.
        let mut f = ForeignCpu::new(2.0, 100.0);
        f.update(read(2, 0.0, 0.0, 0.0));
        assert_eq!(f.update(read(2, 1.0, 0.5, 0.6)), 0.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machines_procfs_and_affinity_are_read() {
        let text = std::fs::read_to_string("/proc/stat").unwrap();
        let mask = affinity().expect("an affinity mask");
        let t = parse_stat(&text, |c| mask.contains(&c)).expect("per-CPU lines");
        assert_eq!(t.cpus, mask.len());
        assert!(t.total >= t.busy && t.total > 0, "{t:?}");
        assert!(tick_hz() >= 1.0);
    }
}
