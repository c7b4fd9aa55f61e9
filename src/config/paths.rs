//! Confinement of the files jobs and services read: a data file or checkpoint named in the
//! config or over the API must resolve, symbolic links followed, to a place inside one of the
//! allowed directories (`paths.data_dirs` and the state dir). A request cannot make the
//! daemon read `/etc/shadow`, or another tenant's files through `..` or a link.
//!
//! A refusal tells nothing about the file system outside the allowed directories: a path
//! outside them is refused the same way whether or not it exists (it is judged by its name,
//! `..` resolved, before anything is looked up), and a link that leads out is refused without
//! saying where it leads.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{ConfigIssue, NodeConfig};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// The path resolves outside every allowed directory.
    #[error(
        "{}{} is outside the directories data and checkpoints may be read from ({}); move it \
         into one of them, or add its directory to the config's paths.data_dirs or to `setpoint \
         serve --data-dir DIR`",
        path.display(),
        if *through_link { " (through a symbolic link)" } else { "" },
        List(allowed)
    )]
    Outside {
        /// The path as given.
        path: PathBuf,
        /// Whether its name is inside but a link leads out (where to is not told).
        through_link: bool,
        /// The allowed directories, as configured.
        allowed: Vec<PathBuf>,
    },
    /// The path does not lead to a file that exists (or cannot be looked up).
    #[error("cannot resolve {}: {reason}", path.display())]
    Unresolvable {
        /// The path as given.
        path: PathBuf,
        /// The OS reason.
        reason: String,
    },
}

struct List<'a>(&'a [PathBuf]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", d.display())?;
        }
        Ok(())
    }
}

/// Resolves `path` (relative to the working directory, links followed) and returns where it
/// leads when that is inside one of `allowed`; an allowed directory that does not exist
/// allows nothing. A path whose name (`..` resolved, links not followed) is outside is
/// refused before it is looked up, so the answer is the same whether or not it exists.
pub(crate) fn confine(path: &Path, allowed: &[PathBuf]) -> Result<PathBuf, PathError> {
    let outside = |through_link| PathError::Outside {
        path: path.to_path_buf(),
        through_link,
        allowed: allowed.to_vec(),
    };
    let real: Vec<PathBuf> = allowed
        .iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    let named = lexical_absolute(path);
    let named_inside = real
        .iter()
        .cloned()
        .chain(allowed.iter().map(|d| lexical_absolute(d)))
        .any(|d| named.starts_with(&d));
    if !named_inside {
        return Err(outside(false));
    }
    let resolved = std::fs::canonicalize(path).map_err(|e| PathError::Unresolvable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if real.iter().any(|d| resolved.starts_with(d)) {
        Ok(resolved)
    } else {
        Err(outside(true))
    }
}

/// `path` made absolute against the working directory, with `.` and `..` resolved by name
/// (no link is followed, nothing is looked up).
fn lexical_absolute(path: &Path) -> PathBuf {
    use std::path::Component;
    let base = if path.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_default()
    };
    let mut out = PathBuf::new();
    for c in base.join(path).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The file a data spec names: `None` for a `synthetic:` spec.
pub(crate) fn data_file(spec: &str) -> Option<&Path> {
    (!spec.starts_with("synthetic:")).then(|| Path::new(spec))
}

/// Every file a data spec reads: the file it names and, for IDX images, the labels file found
/// beside it by the naming convention.
pub(crate) fn data_files(spec: &str) -> Vec<PathBuf> {
    let Some(f) = data_file(spec) else {
        return Vec::new();
    };
    std::iter::once(f.to_path_buf())
        .chain(crate::data::conventional_idx_labels(f))
        .collect()
}

/// Config issues for every data file and checkpoint outside the allowed directories, whether
/// or not it exists. One inside that does not exist is left to the loader, which names it
/// when it runs.
pub(super) fn config_path_issues(cfg: &NodeConfig) -> Vec<ConfigIssue> {
    config_files(cfg).0
}

/// [`config_path_issues`], and beside them a warning for each file inside the allowed
/// directories that does not exist (yet): the job or service fails when it reads it.
pub(super) fn config_files(cfg: &NodeConfig) -> (Vec<ConfigIssue>, Vec<ConfigIssue>) {
    let allowed = cfg.allowed_dirs();
    let (mut issues, mut missing) = (Vec::new(), Vec::new());
    let mut check = |key: String, path: &Path| match confine(path, &allowed) {
        Err(e @ PathError::Outside { .. }) => issues.push(ConfigIssue {
            path: key,
            message: e.to_string(),
        }),
        Err(e @ PathError::Unresolvable { .. }) => missing.push(ConfigIssue {
            path: key,
            message: format!("{e}; it is read when the job or service starts"),
        }),
        Ok(_) => {}
    };
    for (i, s) in cfg.services.iter().enumerate() {
        if let Some(c) = &s.checkpoint {
            check(format!("services[{i}].checkpoint"), c);
        }
        for f in s.warmup_data.as_deref().map(data_files).unwrap_or_default() {
            check(format!("services[{i}].warmup_data"), &f);
        }
    }
    for (i, j) in cfg.jobs.iter().enumerate() {
        for f in data_files(&j.data) {
            check(format!("jobs[{i}].data"), &f);
        }
    }
    (issues, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_outside_dotdot_and_links() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("data");
        let outside = root.path().join("secret");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(allowed.join("sub/a.csv"), "1,0\n").unwrap();
        std::fs::write(outside.join("b.csv"), "1,0\n").unwrap();
        let dirs = vec![allowed.clone()];

        let ok = confine(&allowed.join("sub/../sub/a.csv"), &dirs).unwrap();
        assert!(ok.ends_with("data/sub/a.csv"), "{}", ok.display());

        let escape = allowed.join("../secret/b.csv");
        let e = confine(&escape, &dirs).unwrap_err();
        let m = e.to_string();
        assert!(
            matches!(
                e,
                PathError::Outside {
                    through_link: false,
                    ..
                }
            ),
            "{m}"
        );
        assert!(m.contains(&allowed.display().to_string()), "{m}");
        assert!(m.contains("paths.data_dirs"), "{m}");
        assert!(m.contains("--data-dir"), "{m}");
        // Outside is outside, whether or not the file is there.
        let absent = confine(&allowed.join("../secret/absent.csv"), &dirs).unwrap_err();
        assert_eq!(
            absent.to_string().replace("absent.csv", "b.csv"),
            m,
            "a missing file outside must be refused the same way"
        );

        #[cfg(unix)]
        {
            let link = allowed.join("link.csv");
            std::os::unix::fs::symlink(outside.join("b.csv"), &link).unwrap();
            let e = confine(&link, &dirs).unwrap_err();
            assert!(
                matches!(
                    e,
                    PathError::Outside {
                        through_link: true,
                        ..
                    }
                ),
                "{e}"
            );
            // Where the link leads is not told.
            assert!(!e.to_string().contains("secret"), "{e}");
            // A directory named like an allowed one is not inside it.
            let twin = root.path().join("data-other");
            std::fs::create_dir_all(&twin).unwrap();
            std::fs::write(twin.join("c.csv"), "1,0\n").unwrap();
            assert!(confine(&twin.join("c.csv"), &dirs).is_err());
        }

        let e = confine(&allowed.join("missing.csv"), &dirs).unwrap_err();
        assert!(e.to_string().starts_with("cannot resolve "), "{e}");
        // No allowed directory that exists: nothing is allowed.
        assert!(confine(&allowed.join("sub/a.csv"), &[root.path().join("nope")]).is_err());
    }

    #[test]
    fn synthetic_specs_name_no_file() {
        assert_eq!(data_file("synthetic:blobs"), None);
        assert_eq!(data_file("d.csv"), Some(Path::new("d.csv")));
    }
}
