//! CPU time of threads, so that a lane is charged for the processor time its work used rather
//! than for wall time, which other lanes' threads stretch when they compete for the cores.

use std::time::Duration;

/// A handle on one thread's CPU-time clock, readable from any thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadClock {
    #[cfg(target_os = "linux")]
    id: libc::clockid_t,
}

impl ThreadClock {
    /// The clock of the calling thread, where the platform has one.
    pub fn current() -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            let mut id: libc::clockid_t = 0;
            // SAFETY: pthread_self() is always a valid handle for the calling thread, and
            // `id` is a valid out-pointer for the duration of the call.
            let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
            (rc == 0).then_some(ThreadClock { id })
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// CPU time the thread has used; None once it has exited.
    pub fn read(&self) -> Option<Duration> {
        #[cfg(target_os = "linux")]
        {
            read_clock(self.id)
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

#[cfg(target_os = "linux")]
fn read_clock(id: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock id makes the call fail with
    // EINVAL, which is reported as None.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPU time used by the calling thread (zero where the platform cannot tell).
pub fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Duration::ZERO
    }
}

/// CPU time used by the whole process, all its threads, user and system (zero where the
/// platform cannot tell).
pub fn process_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        read_clock(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap_or_default()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_in_thread_cpu_time_and_sleep_does_not() {
        let t0 = thread_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let busy = thread_cpu_time() - t0;
        std::thread::sleep(Duration::from_millis(30));
        let after_sleep = thread_cpu_time() - t0;
        if cfg!(target_os = "linux") {
            assert!(busy >= Duration::from_millis(10), "{busy:?}");
            assert!(after_sleep - busy < Duration::from_millis(10));
            let clock = ThreadClock::current().unwrap();
            assert!(clock.read().unwrap() >= busy);
        }
    }

    #[test]
    fn the_process_clock_counts_work_on_other_threads() {
        let t0 = process_cpu_time();
        std::thread::spawn(|| {
            let start = thread_cpu_time();
            let mut x = 0u64;
            while thread_cpu_time() - start < Duration::from_millis(30) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            std::hint::black_box(x);
        })
        .join()
        .unwrap();
        if cfg!(target_os = "linux") {
            let used = process_cpu_time() - t0;
            assert!(used >= Duration::from_millis(30), "{used:?}");
        }
    }
}
