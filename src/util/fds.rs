//! File descriptors: how many the process may open, how many are open, and how many of the
//! rest connections may take so that state, checkpoint and data files always find one.

/// The open-file limit after [`raise_limit`], and what is open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// `RLIMIT_NOFILE`'s soft limit; `None` where it cannot be read (not Linux).
    pub limit: Option<u64>,
    /// Descriptors open in this process; `None` where they cannot be counted.
    pub open: Option<u64>,
}

/// How many connections may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionBudget {
    /// The cap in force.
    pub max_connections: usize,
    /// Whether it is below the configured one, for lack of descriptors.
    pub lowered: bool,
}

/// The connection cap: `wanted`, lowered so that `reserved` descriptors stay free beside
/// those open now. `None` when not one connection fits. Without a known limit, `wanted`.
pub(crate) fn connection_budget(
    d: Descriptors,
    wanted: usize,
    reserved: usize,
) -> Option<ConnectionBudget> {
    let Some(limit) = d.limit else {
        return Some(ConnectionBudget {
            max_connections: wanted,
            lowered: false,
        });
    };
    let spare = limit
        .saturating_sub(d.open.unwrap_or(0))
        .saturating_sub(reserved as u64);
    let spare = usize::try_from(spare).unwrap_or(usize::MAX);
    match spare {
        0 => None,
        s if s < wanted => Some(ConnectionBudget {
            max_connections: s,
            lowered: true,
        }),
        _ => Some(ConnectionBudget {
            max_connections: wanted,
            lowered: false,
        }),
    }
}

/// Raises the soft open-file limit to the hard one (no privilege needed) and reads what is
/// in force and open afterwards.
pub fn raise_limit() -> Descriptors {
    #[cfg(target_os = "linux")]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid, writable rlimit for the call.
        let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
        if read && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: `raised` is a valid rlimit; a soft limit up to the hard one is allowed.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim = raised;
            }
        }
        Descriptors {
            limit: read.then_some(lim.rlim_cur),
            open: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Descriptors {
            limit: None,
            open: None,
        }
    }
}

/// Whether an `accept` error means the process or system is out of descriptors or memory
/// (it passes when some are freed), rather than one connection failing.
pub(crate) fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(limit: u64, open: u64) -> Descriptors {
        Descriptors {
            limit: Some(limit),
            open: Some(open),
        }
    }

    #[test]
    fn a_high_limit_leaves_the_configured_cap() {
        let b = connection_budget(d(1 << 20, 40), 1024, 128).unwrap();
        assert_eq!(b.max_connections, 1024);
        assert!(!b.lowered);
    }

    #[test]
    fn the_default_soft_limit_lowers_the_cap_keeping_the_reserve() {
        // 1024 descriptors, 30 open, 128 reserved: 866 connections.
        let b = connection_budget(d(1024, 30), 1024, 128).unwrap();
        assert_eq!(b.max_connections, 866);
        assert!(b.lowered);
    }

    #[test]
    fn no_room_for_one_connection_is_none() {
        assert_eq!(connection_budget(d(100, 60), 1024, 40), None);
        assert_eq!(connection_budget(d(100, 90), 1024, 40), None);
    }

    #[test]
    fn an_unknown_limit_keeps_the_configured_cap() {
        let unknown = Descriptors {
            limit: None,
            open: None,
        };
        assert_eq!(
            connection_budget(unknown, 7, 128),
            Some(ConnectionBudget {
                max_connections: 7,
                lowered: false
            })
        );
    }

    #[test]
    fn descriptor_exhaustion_is_told_from_a_failed_connection() {
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn the_limit_after_raising_is_read_and_open_descriptors_counted() {
        let d = raise_limit();
        if cfg!(target_os = "linux") {
            let (limit, open) = (d.limit.unwrap(), d.open.unwrap());
            assert!(open >= 3 && open < limit, "{d:?}");
        }
    }
}
