//! Thread priority: the CPU's analogue of a CUDA stream priority. Training threads run
//! under Linux's `SCHED_IDLE` policy: a thread of normal priority that wakes up (an
//! inference batch, the HTTP workers, the control loop) preempts them at once instead of
//! waiting out their time slice, and they still get every cycle nobody else wants. Like a
//! low-priority stream, they can be starved by sustained higher-priority work; the lanes'
//! shares, not the priority, decide how the device is divided.
//!
//! Plain niceness is not enough: with nice 19 the scheduler (EEVDF) still lets the running
//! thread reach its deadline before a woken one runs, which cost a 2 ms SLO its tail in the
//! `quick` scenario.

/// Puts the calling thread in the background (`SCHED_IDLE`). Needs no privilege; leaving it
/// does, so a thread that calls this stays there for its life. Returns whether it took
/// effect (always false off Linux).
pub(crate) fn lower_current_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid pointer for the call, and
        // SCHED_IDLE with priority 0 is always a valid request.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Whether the calling thread runs in the background (None off Linux).
#[cfg(test)]
fn is_background() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pid 0 is the calling thread; the call only reads its policy.
        Some(unsafe { libc::sched_getscheduler(0) } == libc::SCHED_IDLE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_is_in_the_background_and_others_are_untouched() {
        let before = is_background();
        let t = std::thread::spawn(|| (lower_current_thread(), is_background()));
        let (ok, bg) = t.join().unwrap();
        if cfg!(target_os = "linux") {
            assert!(ok);
            assert_eq!(bg, Some(true));
            assert_eq!(before, Some(false));
            assert_eq!(is_background(), Some(false));
        }
    }
}
