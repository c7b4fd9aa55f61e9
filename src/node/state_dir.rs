//! The state dir, held by one daemon at a time: created and checked writable at start, locked
//! exclusively (a second daemon on the same dir is refused with the holder's pid), and swept
//! of the temporaries a write cut short by a crash left behind.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside the state dir; it holds the pid of the daemon that has it.
pub(crate) const LOCK_FILE: &str = "setpoint.lock";

/// Where a removed job's directory is moved before it is deleted: out of `jobs/`, so that a
/// crash part way through a deletion never leaves half a job to be restored.
pub(crate) const REMOVED_DIR: &str = "removed";

/// Why the state dir cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateDirError {
    /// It cannot be created, or is not a directory.
    #[error("state dir {}: {reason}; give --state-dir or state_dir a directory it can create and write", path.display())]
    Unusable {
        /// The state dir.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// It exists but cannot be written.
    #[error("state dir {} is not writable ({reason}); jobs could not be checkpointed there", path.display())]
    ReadOnly {
        /// The state dir.
        path: PathBuf,
        /// The OS's reason.
        reason: String,
    },
    /// Another daemon holds it.
    #[error(
        "state dir {} is in use by another setpoint daemon{}; stop it, or start this one with \
         another --state-dir", path.display(),
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The state dir.
        path: PathBuf,
        /// The holder's pid, as its lock file says.
        holder: Option<u32>,
    },
}

/// The state dir, held: dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct StateDirLock {
    _file: File,
    /// Temporaries removed at start.
    pub swept: Vec<PathBuf>,
    /// Directories of removed jobs whose deletion a crash cut short, deleted at start.
    pub purged: Vec<PathBuf>,
}

/// Creates `dir` and its `jobs/` and `services/`, checks that it can be written, locks it for
/// this process and removes temporaries left by writes a crash cut short.
pub(crate) fn acquire(dir: &Path) -> Result<StateDirLock, StateDirError> {
    let unusable = |reason: String| StateDirError::Unusable {
        path: dir.to_path_buf(),
        reason,
    };
    if dir.exists() && !dir.is_dir() {
        return Err(unusable("it exists and is not a directory".into()));
    }
    for sub in ["", "jobs", "services"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| match e.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
                StateDirError::ReadOnly {
                    path: dir.to_path_buf(),
                    reason: e.to_string(),
                }
            }
            _ => unusable(format!("cannot create {}: {e}", dir.join(sub).display())),
        })?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| StateDirError::ReadOnly {
            path: dir.to_path_buf(),
            reason: format!("cannot open {LOCK_FILE}: {e}"),
        })?;
    let mut file = lock(file, dir)?;
    write_pid(&mut file).map_err(|e| StateDirError::ReadOnly {
        path: dir.to_path_buf(),
        reason: format!("cannot write {LOCK_FILE}: {e}"),
    })?;
    Ok(StateDirLock {
        _file: file,
        swept: sweep_temporaries(dir),
        purged: purge_removed(dir),
    })
}

/// Moves a job's directory `job_dir` out of `jobs/` into `removed/`, in one rename: from
/// then on no restart sees the job. Returns where it went (delete it with [`purge`]); a
/// directory already gone is nothing to move (`None`).
pub(crate) fn retire(state_dir: &Path, job_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !job_dir.exists() {
        return Ok(None);
    }
    let trash = state_dir.join(REMOVED_DIR);
    std::fs::create_dir_all(&trash)?;
    let name = job_dir
        .file_name()
        .map_or_else(|| "job".into(), |n| n.to_string_lossy().into_owned());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let to = trash.join(format!("{name}.{}.{n}", std::process::id()));
    std::fs::rename(job_dir, &to)?;
    Ok(Some(to))
}

/// Deletes a directory [`retire`] moved away.
pub(crate) fn purge(retired: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(retired)
}

/// Deletes what `removed/` holds: removals a crash interrupted after their rename.
fn purge_removed(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join(REMOVED_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            gone.is_ok()
        })
        .collect()
}

/// An exclusive, non-blocking lock on `file`; held until the file is closed.
fn lock(mut file: File, dir: &Path) -> Result<File, StateDirError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(file);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(StateDirError::InUse {
            path: dir.to_path_buf(),
            holder: text.trim().parse().ok(),
        });
    }
    Err(StateDirError::Unusable {
        path: dir.to_path_buf(),
        reason: format!("cannot lock {LOCK_FILE}: {e}"),
    })
}

fn write_pid(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()
}

/// Removes the `.NAME.tmp.PID` files of atomic writes (`util::fsio`) under the state dir's
/// `jobs/*/` and `services/`: with the lock held, no other process is writing them.
fn sweep_temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.join("services"), dir.to_path_buf()];
    if let Ok(jobs) = std::fs::read_dir(dir.join("jobs")) {
        dirs.extend(jobs.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    let mut swept = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_temporary(&name) && e.path().is_file() && std::fs::remove_file(e.path()).is_ok() {
                swept.push(e.path());
            }
        }
    }
    swept
}

/// `.checkpoint.ckpt.tmp.1234`: a dot, a name, `.tmp.` and a pid.
fn is_temporary(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    rest.rsplit_once(".tmp.").is_some_and(|(stem, pid)| {
        !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let held = acquire(&state).unwrap();
        assert!(state.join("jobs").is_dir() && state.join("services").is_dir());
        // flock locks belong to the open file description: a second open in this process
        // conflicts as another process's would.
        let e = acquire(&state).unwrap_err().to_string();
        let pid = std::process::id();
        assert!(
            e.contains(&format!("in use by another setpoint daemon (pid {pid})")),
            "{e}"
        );
        drop(held);
        acquire(&state).unwrap();
    }

    #[test]
    fn temporaries_left_by_a_crash_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("jobs/j");
        std::fs::create_dir_all(&job).unwrap();
        for name in [
            ".checkpoint.ckpt.tmp.4242",
            "checkpoint.ckpt",
            ".x.tmp.abc",
            "a.tmp.1",
        ] {
            std::fs::write(job.join(name), b"x").unwrap();
        }
        let held = acquire(dir.path()).unwrap();
        assert_eq!(held.swept, vec![job.join(".checkpoint.ckpt.tmp.4242")]);
        let mut left: Vec<String> = std::fs::read_dir(&job)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".x.tmp.abc", "a.tmp.1", "checkpoint.ckpt"]);
    }

    #[test]
    fn a_retired_job_leaves_jobs_at_once_and_a_crash_before_its_purge_is_finished_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let held = acquire(dir.path()).unwrap();
        let job = dir.path().join("jobs/j");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("job.json"), b"{}").unwrap();
        std::fs::write(job.join("checkpoint.ckpt"), b"x").unwrap();
        let first = retire(dir.path(), &job).unwrap().unwrap();
        assert!(!job.exists() && first.join("job.json").exists());
        // The same name again (a new job of the name, removed in turn) goes elsewhere.
        std::fs::create_dir_all(&job).unwrap();
        let second = retire(dir.path(), &job).unwrap().unwrap();
        assert_ne!(first, second);
        assert_eq!(retire(dir.path(), &job).unwrap(), None);
        purge(&second).unwrap();
        assert!(!second.exists());
        // A crash between the rename and the purge: the next start deletes what is left.
        drop(held);
        let held = acquire(dir.path()).unwrap();
        assert_eq!(held.purged, vec![first.clone()]);
        assert!(!first.exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("jobs")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_file_where_the_dir_should_be_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("state");
        std::fs::write(&f, b"").unwrap();
        let e = acquire(&f).unwrap_err().to_string();
        assert!(e.contains("it exists and is not a directory"), "{e}");
    }
}
