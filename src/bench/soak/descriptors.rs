//! The daemon's open descriptors by number and target, read as `readlink /proc/<pid>/fd/<n>`,
//! and what changed between the start of the load and its end: a count alone cannot tell a
//! descriptor opened once and kept (a file opened lazily, a runtime's wake-up eventfd) from
//! one left behind by each connection, and their targets can.

use std::collections::BTreeMap;

use serde::Serialize;

/// One descriptor that is open at one end of the run and not at the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdChange {
    /// Its number.
    pub fd: u32,
    /// What it points at: a path, `socket:[inode]`, `pipe:[inode]`, `anon_inode:[eventfd]`, ….
    pub target: String,
    /// `file`, `socket`, `pipe`, `eventfd`, `eventpoll`, `timerfd`, `anon_inode` or `other`.
    pub kind: &'static str,
}

/// The descriptors of process `pid`, by number, with their targets; `None` when `/proc`
/// cannot be read. A descriptor closed between the listing and its readlink is left out.
pub fn fd_targets(pid: u32) -> Option<BTreeMap<u32, String>> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            out.insert(fd, target.to_string_lossy().into_owned());
        }
    }
    Some(out)
}

/// What kind of thing a descriptor's target names.
pub fn kind(target: &str) -> &'static str {
    match target {
        t if t.starts_with("socket:") => "socket",
        t if t.starts_with("pipe:") => "pipe",
        "anon_inode:[eventfd]" => "eventfd",
        "anon_inode:[eventpoll]" => "eventpoll",
        "anon_inode:[timerfd]" => "timerfd",
        t if t.starts_with("anon_inode:") => "anon_inode",
        t if t.starts_with('/') => "file",
        _ => "other",
    }
}

/// Descriptors open at `end` and not at `start` (or open at both under the same number with
/// another target), and those open at `start` and not at `end`.
pub fn changes(
    start: &BTreeMap<u32, String>,
    end: &BTreeMap<u32, String>,
) -> (Vec<FdChange>, Vec<FdChange>) {
    let only = |a: &BTreeMap<u32, String>, b: &BTreeMap<u32, String>| -> Vec<FdChange> {
        a.iter()
            .filter(|(fd, t)| b.get(fd) != Some(t))
            .map(|(fd, t)| FdChange {
                fd: *fd,
                target: t.clone(),
                kind: kind(t),
            })
            .collect()
    };
    (only(end, start), only(start, end))
}

/// The changes as text: `13 anon_inode:[eventfd]; 14 socket:[123]`, or `none`.
pub fn list(changes: &[FdChange]) -> String {
    if changes.is_empty() {
        return "none".to_string();
    }
    changes
        .iter()
        .map(|c| format!("{} {}", c.fd, c.target))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(u32, &str)]) -> BTreeMap<u32, String> {
        items.iter().map(|(f, t)| (*f, t.to_string())).collect()
    }

    #[test]
    fn the_changes_name_what_was_opened_and_what_was_closed() {
        let start = map(&[(0, "/dev/null"), (3, "socket:[10]"), (4, "pipe:[7]")]);
        let end = map(&[
            (0, "/dev/null"),
            (3, "socket:[10]"),
            (4, "socket:[99]"),
            (13, "anon_inode:[eventfd]"),
        ]);
        let (opened, closed) = changes(&start, &end);
        assert_eq!(list(&opened), "4 socket:[99]; 13 anon_inode:[eventfd]");
        assert_eq!(opened[1].kind, "eventfd");
        assert_eq!(list(&closed), "4 pipe:[7]");
        assert_eq!(closed[0].kind, "pipe");
        assert_eq!(changes(&start, &start), (vec![], vec![]));
        assert_eq!(list(&[]), "none");
    }

    #[test]
    fn this_process_descriptors_have_targets() {
        let f = tempfile::tempfile().unwrap();
        let fds = fd_targets(std::process::id()).unwrap();
        assert!(fds.len() >= 3, "{fds:?}");
        use std::os::fd::AsRawFd;
        let mine = &fds[&(f.as_raw_fd() as u32)];
        assert_eq!(kind(mine), "file", "{mine}");
        assert_eq!(kind("anon_inode:[eventpoll]"), "eventpoll");
        assert_eq!(kind("socket:[5]"), "socket");
    }
}
