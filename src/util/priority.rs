//! Thread priority: the CPU's analogue of a CUDA stream priority. Training threads run at
//! the lowest priority (nice 19), so an inference batch that wakes up preempts them at once
//! instead of waiting for a time slice; they still get every cycle nobody else wants.

/// Lowest nice level.
pub const BACKGROUND_NICE: i32 = 19;

/// Lowers the calling thread's priority to `BACKGROUND_NICE`. Lowering needs no privilege;
/// raising it back does, so a thread that calls this stays low for its life. Returns
/// whether it took effect (always false off Linux).
pub fn lower_current_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments and cannot fail; setpriority on our own thread
        // id with a valid nice value only changes this thread's scheduling.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS as _, tid as _, BACKGROUND_NICE) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The calling thread's nice value (None off Linux).
pub fn current_nice() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as above; getpriority returns the nice value, and -1 is ambiguous only
        // for an error, which cannot happen for our own thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            Some(libc::getpriority(libc::PRIO_PROCESS as _, tid as _))
        }
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
    fn a_lowered_thread_reports_nice_19_and_others_are_untouched() {
        let before = current_nice();
        let t = std::thread::spawn(|| (lower_current_thread(), current_nice()));
        let (ok, nice) = t.join().unwrap();
        if cfg!(target_os = "linux") {
            assert!(ok);
            assert_eq!(nice, Some(BACKGROUND_NICE));
            assert_eq!(current_nice(), before);
        }
    }
}
