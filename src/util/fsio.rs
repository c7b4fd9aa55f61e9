//! Atomic file writes: a reader sees the old file or the new one, never a torn mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over the target, then fsync of the directory so the rename itself is durable.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_keeping(path, bytes, None)
}

/// Like [`write_atomic`], but when `previous` is given the file at `path` (if any) becomes
/// `previous` once the new content is durable, and `path` is never absent: a second name for
/// the old file is renamed over `previous`, then the new file over `path`. A crash leaves
/// whole files only.
pub(crate) fn write_atomic_keeping(
    path: &Path,
    bytes: &[u8],
    previous: Option<&Path>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if let Some(prev) = previous {
            keep_as(path, prev)?;
        }
        fs::rename(&tmp, path)?;
        // Directory fsync makes the rename survive a power cut; not every filesystem
        // allows opening a directory, and the data itself is already durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Gives the file at `path` the name `prev` too (a hard link, or a durable copy where links
/// are not supported), replacing whatever `prev` was. Nothing to do when `path` is absent.
fn keep_as(path: &Path, prev: &Path) -> io::Result<()> {
    let mut name = std::ffi::OsString::from(".");
    name.push(prev.file_name().unwrap_or_default());
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = prev.with_file_name(name);
    let _ = fs::remove_file(&tmp);
    match fs::hard_link(path, &tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {
            let bytes = match fs::read(path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, prev).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"first version, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn keeps_the_replaced_file_as_previous() {
        let dir = tempfile::tempdir().unwrap();
        let (p, prev) = (dir.path().join("a.bin"), dir.path().join("a.prev"));
        write_atomic_keeping(&p, b"one", Some(&prev)).unwrap();
        assert!(!prev.exists());
        write_atomic_keeping(&p, b"two", Some(&prev)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read(&prev).unwrap(), b"one");
        write_atomic_keeping(&p, b"three", None).unwrap();
        assert_eq!(fs::read(&prev).unwrap(), b"one");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/a.bin");
        assert!(write_atomic(&p, b"x").is_err());
    }
}
