//! Which host pid is this daemon: procfs's account of the daemon's pid namespaces.
//!
//! NVML names processes by their pid in the host's (initial) pid namespace. A daemon on the
//! host knows that pid already; a daemon in a container's pid namespace knows only its
//! container pid, and its own `/proc` shows nothing above that. What procfs can tell:
//!
//! - `NSpid` in `<proc>/self/status` lists the daemon's pid in each pid namespace from the
//!   namespace of that procfs mount down to the daemon's own (outermost first). Kernels
//!   before 4.1 have no such line.
//! - `<proc>/self/ns/pid` names the daemon's pid namespace and `<proc>/1/ns/pid` the procfs
//!   mount's (pid 1 there is that namespace's init); the host's namespace always has the
//!   inode [`INIT_PID_NS_INODE`]. The second link needs the right to inspect pid 1 (root, or
//!   the same user), so it may be unreadable.
//!
//! So the host pid is certain when the daemon lives in the host's namespace, or when it reads
//! the host's procfs (for example the host's `/proc` mounted read-only into the container):
//! then it is the outermost `NSpid` entry. Inside a container that sees only its own procfs
//! it is unknown, and the CUDA-context handshake in [`super::own`] learns it.
//!
//! [`resolve`] does the reading (any directory laid out like procfs, so tests use fixture
//! directories) and [`decide`] is the pure judgement. Nothing here fails: what cannot be
//! read is recorded as unknown, and with no `NSpid` line or no procfs entry at all the
//! daemon's plain pid stands in.

use std::path::Path;

use serde::Serialize;

/// Inode of the host's initial pid namespace (`PROC_PID_INIT_INO` in the kernel, fixed since
/// Linux 3.8): `readlink /proc/self/ns/pid` gives `pid:[4026531836]` on the host.
pub(crate) const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// What `NSpid` in a status file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsPidLine {
    /// The status file could not be read (no procfs, or not this layout).
    NoStatus,
    /// The file has no usable `NSpid` line (kernels before 4.1, or a malformed line).
    Missing,
    /// The pid in each namespace from the procfs mount's down to the process's own.
    Pids(Vec<u32>),
}

/// What procfs says about this process: the input of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEvidence {
    /// The pid the daemon knows itself by (`std::process::id()`), the fallback.
    pub local_pid: u32,
    /// `NSpid` of `<proc>/self/status`.
    pub nspid: NsPidLine,
    /// Inode of the daemon's pid namespace (`<proc>/self/ns/pid`), when readable.
    pub own_ns: Option<u64>,
    /// Inode of the procfs mount's pid namespace (`<proc>/1/ns/pid`), when readable.
    pub procfs_ns: Option<u64>,
}

/// On what grounds a host pid was (or was not) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MappingBasis {
    /// The daemon lives in the host's pid namespace: its pid is the host pid.
    HostNamespace,
    /// The daemon reads the host's procfs: the outermost `NSpid` entry is the host pid.
    HostProcfs,
    /// The namespaces could not be told apart: the outermost `NSpid` entry is a guess.
    Unverified,
    /// No `NSpid` line (kernels before 4.1): the plain pid is a guess.
    NoNsPid,
    /// No procfs entry for the daemon: the plain pid is a guess.
    NoProcEntry,
    /// The daemon lives in a pid namespace below the host's and sees only its own procfs:
    /// the host pid is unknown until the handshake learns it.
    Container,
}

impl MappingBasis {
    /// Whether the host pid found on this basis is known rather than guessed.
    pub(crate) fn is_certain(self) -> bool {
        matches!(self, MappingBasis::HostNamespace | MappingBasis::HostProcfs)
    }

    /// A few words for logs and reports.
    pub fn describe(self) -> &'static str {
        match self {
            MappingBasis::HostNamespace => "in the host's pid namespace",
            MappingBasis::HostProcfs => "mapped through the host's procfs",
            MappingBasis::Unverified => "pid namespaces unreadable; outermost NSpid assumed",
            MappingBasis::NoNsPid => "no NSpid in procfs; plain pid assumed",
            MappingBasis::NoProcEntry => "no procfs entry; plain pid assumed",
            MappingBasis::Container => "in a container's pid namespace; host pid not visible",
        }
    }
}

/// The daemon's host pid as far as procfs tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PidMapping {
    /// The pid the daemon knows itself by.
    pub local_pid: u32,
    /// The pid NVML will show for the daemon: known when the basis is certain, a guess
    /// otherwise, `None` in a container that sees only itself.
    pub host_pid: Option<u32>,
    /// Why.
    pub basis: MappingBasis,
}

/// Decides the daemon's host pid from what procfs said; see the module docs.
pub(crate) fn decide(e: &ProcEvidence) -> PidMapping {
    let (host_pid, basis) = match &e.nspid {
        NsPidLine::NoStatus => (Some(e.local_pid), MappingBasis::NoProcEntry),
        NsPidLine::Missing => (Some(e.local_pid), MappingBasis::NoNsPid),
        NsPidLine::Pids(chain) => {
            // `parse_nspid` never yields an empty chain; treat one like a missing line.
            let Some(&outermost) = chain.first() else {
                return PidMapping {
                    local_pid: e.local_pid,
                    host_pid: Some(e.local_pid),
                    basis: MappingBasis::NoNsPid,
                };
            };
            if e.own_ns == Some(INIT_PID_NS_INODE) {
                (Some(outermost), MappingBasis::HostNamespace)
            } else if e.procfs_ns == Some(INIT_PID_NS_INODE) {
                (Some(outermost), MappingBasis::HostProcfs)
            } else if e.procfs_ns.is_some() || (e.own_ns.is_some() && chain.len() == 1) {
                // The procfs belongs to a namespace below the host's (known, or the
                // daemon's own non-host one: one NSpid level means procfs sees from there).
                (None, MappingBasis::Container)
            } else {
                (Some(outermost), MappingBasis::Unverified)
            }
        }
    };
    PidMapping {
        local_pid: e.local_pid,
        host_pid,
        basis,
    }
}

/// Reads `NSpid` out of a `/proc/<pid>/status` text.
pub(crate) fn parse_nspid(status: &str) -> NsPidLine {
    let Some(rest) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
        return NsPidLine::Missing;
    };
    let pids: Result<Vec<u32>, _> = rest.split_whitespace().map(str::parse::<u32>).collect();
    match pids {
        Ok(p) if !p.is_empty() => NsPidLine::Pids(p),
        _ => NsPidLine::Missing,
    }
}

/// Reads the inode out of a namespace link target such as `pid:[4026531836]`.
pub(crate) fn parse_ns_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn read_ns(path: &Path) -> Option<u64> {
    let target = std::fs::read_link(path).ok()?;
    parse_ns_link(target.to_str()?)
}

/// Reads what procfs under `proc_root` (normally `/proc`) says about the calling process,
/// which knows itself as `local_pid`. Unreadable parts become unknowns; never fails.
pub fn resolve(proc_root: &Path, local_pid: u32) -> ProcEvidence {
    let me = proc_root.join("self");
    let nspid = match std::fs::read_to_string(me.join("status")) {
        Ok(text) => parse_nspid(&text),
        Err(_) => NsPidLine::NoStatus,
    };
    ProcEvidence {
        local_pid,
        nspid,
        own_ns: read_ns(&me.join("ns/pid")),
        procfs_ns: read_ns(&proc_root.join("1/ns/pid")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: u64 = INIT_PID_NS_INODE;
    const CONTAINER_NS: u64 = 4_026_532_768;

    fn ev(nspid: NsPidLine, own_ns: Option<u64>, procfs_ns: Option<u64>) -> ProcEvidence {
        ProcEvidence {
            local_pid: 42,
            nspid,
            own_ns,
            procfs_ns,
        }
    }

    fn pids(p: &[u32]) -> NsPidLine {
        NsPidLine::Pids(p.to_vec())
    }

    #[track_caller]
    fn check(e: ProcEvidence, host: Option<u32>, basis: MappingBasis) {
        let m = decide(&e);
        assert_eq!((m.host_pid, m.basis), (host, basis), "{e:?}");
        assert_eq!(m.local_pid, 42);
    }

    #[test]
    fn the_host_namespace_gives_the_pid_itself() {
        check(
            ev(pids(&[42]), Some(INIT), Some(INIT)),
            Some(42),
            MappingBasis::HostNamespace,
        );
        // pid 1 unreadable (not root): the daemon's own namespace is enough.
        check(
            ev(pids(&[42]), Some(INIT), None),
            Some(42),
            MappingBasis::HostNamespace,
        );
    }

    #[test]
    fn the_hosts_procfs_maps_a_container_pid_to_the_host_pid() {
        check(
            ev(pids(&[90042, 42]), Some(CONTAINER_NS), Some(INIT)),
            Some(90042),
            MappingBasis::HostProcfs,
        );
        // Two levels of nesting: still the outermost.
        check(
            ev(pids(&[90042, 700, 42]), Some(CONTAINER_NS), Some(INIT)),
            Some(90042),
            MappingBasis::HostProcfs,
        );
    }

    #[test]
    fn a_container_that_sees_only_itself_does_not_know_its_host_pid() {
        check(
            ev(pids(&[42]), Some(CONTAINER_NS), Some(CONTAINER_NS)),
            None,
            MappingBasis::Container,
        );
        // pid 1 unreadable, but one NSpid level in a non-host namespace says the same.
        check(
            ev(pids(&[42]), Some(CONTAINER_NS), None),
            None,
            MappingBasis::Container,
        );
        // A procfs of an intermediate namespace: its outermost pid is not the host's.
        check(
            ev(pids(&[700, 42]), Some(CONTAINER_NS), Some(CONTAINER_NS + 1)),
            None,
            MappingBasis::Container,
        );
    }

    #[test]
    fn unknowns_fall_back_to_a_guess() {
        check(
            ev(pids(&[42]), None, None),
            Some(42),
            MappingBasis::Unverified,
        );
        check(
            ev(pids(&[90042, 42]), Some(CONTAINER_NS), None),
            Some(90042),
            MappingBasis::Unverified,
        );
        check(
            ev(NsPidLine::Missing, Some(CONTAINER_NS), Some(CONTAINER_NS)),
            Some(42),
            MappingBasis::NoNsPid,
        );
        check(
            ev(NsPidLine::NoStatus, None, None),
            Some(42),
            MappingBasis::NoProcEntry,
        );
        check(ev(pids(&[]), None, None), Some(42), MappingBasis::NoNsPid);
        assert!(MappingBasis::HostProcfs.is_certain());
        assert!(!MappingBasis::Unverified.is_certain());
    }

    #[test]
    fn nspid_is_read_from_its_own_line_only() {
        let status = "Name:\tsetpoint\nTgid:\t42\nNStgid:\t90042\t42\nPid:\t42\n\
                      NSpid:\t90042\t42\nNSpgid:\t90040\t1\n";
        assert_eq!(parse_nspid(status), pids(&[90042, 42]));
        assert_eq!(parse_nspid("Name:\tx\nPid:\t7\n"), NsPidLine::Missing);
        assert_eq!(parse_nspid("NSpid:\t12\tx\n"), NsPidLine::Missing);
        assert_eq!(parse_nspid("NSpid:\n"), NsPidLine::Missing);
    }

    #[test]
    fn namespace_links_give_their_inode() {
        assert_eq!(parse_ns_link("pid:[4026531836]"), Some(INIT));
        assert_eq!(parse_ns_link("net:[4026531836]"), None);
        assert_eq!(parse_ns_link("pid:[x]"), None);
        assert_eq!(parse_ns_link("pid:4026531836"), None);
    }
}
