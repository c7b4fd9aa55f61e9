//! The PTX cache: modules NVRTC compiled for an architecture the binary does not carry,
//! kept under the state dir so the next start does not compile them again.

use std::io;
use std::path::{Path, PathBuf};

use super::{CudaArch, KernelError, KernelSource, LoadedPtx, PtxOrigin, compile_options};

/// The cache logic, with the compiler passed in so it can be tested without NVRTC.
pub(crate) fn load_via_cache(
    module: &KernelSource,
    cache_dir: Option<&Path>,
    arch: &CudaArch,
    nvrtc_version: &str,
    compile: impl Fn(&KernelSource, &CudaArch) -> Result<(String, String), KernelError>,
) -> Result<LoadedPtx, KernelError> {
    let key = cache_key(module, arch, nvrtc_version);
    let path = cache_dir.map(|d| cache_path(d, module.module, key));
    if let Some(path) = &path {
        match std::fs::read(path) {
            Ok(bytes) => match parse_cache_entry(&bytes, module.module, key) {
                Some(ptx) => {
                    return Ok(LoadedPtx {
                        ptx,
                        origin: PtxOrigin::Cache,
                        nvrtc_log: String::new(),
                    });
                }
                None => tracing::warn!(
                    path = %path.display(),
                    "kernel PTX cache entry is corrupt; compiling the module again"
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot read kernel PTX cache entry; compiling the module again"
            ),
        }
    }
    let (ptx, log) = compile(module, arch)?;
    if let Some(path) = &path
        && let Err(e) = store_cache_entry(path, module.module, key, &ptx)
    {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot write kernel PTX cache entry; it will be compiled again next time"
        );
    }
    Ok(LoadedPtx {
        ptx,
        origin: PtxOrigin::Nvrtc,
        nvrtc_log: log,
    })
}

const CACHE_FORMAT: &str = "setpoint-ptx-cache-v1";

/// The cache key: FNV-1a over everything that changes the PTX.
fn cache_key(module: &KernelSource, arch: &CudaArch, nvrtc_version: &str) -> u64 {
    let mut h = Fnv64::new();
    for part in [
        CACHE_FORMAT,
        module.module,
        module.source,
        &arch.compute(),
        nvrtc_version,
    ] {
        h.write(part.as_bytes());
        h.write(&[0]);
    }
    for opt in compile_options(arch) {
        h.write(opt.as_bytes());
        h.write(&[0]);
    }
    h.finish()
}

/// `DIR/kernels/<module>-<key>.ptx`.
pub fn cache_path(cache_dir: &Path, module: &str, key: u64) -> PathBuf {
    cache_dir
        .join("kernels")
        .join(format!("{module}-{key:016x}.ptx"))
}

/// A cache entry: one header line (a PTX comment) naming the format, module, key and the
/// checksum of the PTX after it, so a torn or altered file is noticed.
fn cache_entry(module: &str, key: u64, ptx: &str) -> String {
    format!(
        "// {CACHE_FORMAT} module={module} key={key:016x} fnv64={:016x}\n{ptx}",
        fnv64(ptx.as_bytes())
    )
}

/// The PTX in a cache entry, or `None` when the entry is not a whole, matching one.
fn parse_cache_entry(bytes: &[u8], module: &str, key: u64) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (header, ptx) = text.split_once('\n')?;
    let mut fields = header.strip_prefix("// ")?.split(' ');
    if fields.next()? != CACHE_FORMAT
        || fields.next()? != format!("module={module}")
        || fields.next()? != format!("key={key:016x}")
    {
        return None;
    }
    let sum = u64::from_str_radix(fields.next()?.strip_prefix("fnv64=")?, 16).ok()?;
    (fields.next().is_none() && sum == fnv64(ptx.as_bytes()) && !ptx.trim().is_empty())
        .then(|| ptx.to_string())
}

/// Writes the entry atomically, then removes the module's entries under other keys (older
/// sources or NVRTC versions), so the cache holds one file per module.
fn store_cache_entry(path: &Path, module: &str, key: u64, ptx: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    crate::util::fsio::write_atomic(path, cache_entry(module, key, ptx).as_bytes())?;
    let keep = path.file_name();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str() else { continue };
        let stale = n
            .strip_prefix(module)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".ptx"))
            .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if stale && Some(name.as_os_str()) != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// 64-bit FNV-1a: a cache key and checksum, not a defence against tampering.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn fnv64_matches_reference_values() {
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    const FAKE: KernelSource = KernelSource {
        module: "fake",
        source: "extern \"C\" __global__ void k() {}",
        prebuilt_ptx: None,
        prebuilt_sass: None,
        target: crate::kernels::ModuleTarget::Portable,
    };

    #[test]
    fn cache_hit_miss_corrupt_and_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let arch = CudaArch::parse("sm_90").unwrap();
        let calls = Cell::new(0);
        let compile = |_: &KernelSource, _: &CudaArch| {
            calls.set(calls.get() + 1);
            Ok((
                ".version 8.8\n.visible .entry k()\n{ ret; }\n".to_string(),
                String::new(),
            ))
        };
        let load = || load_via_cache(&FAKE, Some(dir.path()), &arch, "12.9", compile).unwrap();

        let first = load();
        assert_eq!((first.origin, calls.get()), (PtxOrigin::Nvrtc, 1));
        let second = load();
        assert_eq!((second.origin, calls.get()), (PtxOrigin::Cache, 1));
        assert_eq!(first.ptx, second.ptx);

        let path = cache_path(dir.path(), "fake", cache_key(&FAKE, &arch, "12.9"));
        // Torn write: half a file.
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        assert_eq!((load().origin, calls.get()), (PtxOrigin::Nvrtc, 2));
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        // Altered PTX under an intact header.
        let altered = String::from_utf8(whole.clone())
            .unwrap()
            .replace("ret", "bra");
        std::fs::write(&path, altered).unwrap();
        assert_eq!((load().origin, calls.get()), (PtxOrigin::Nvrtc, 3));
        // Not readable as a file at all: compiled, and the failed store is not an error.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!((load().origin, calls.get()), (PtxOrigin::Nvrtc, 4));
        assert_eq!((load().origin, calls.get()), (PtxOrigin::Nvrtc, 5));
        std::fs::remove_dir(&path).unwrap();

        // Another NVRTC version is another key; storing it drops the stale entry.
        load_via_cache(&FAKE, Some(dir.path()), &arch, "12.9", compile).unwrap();
        load_via_cache(&FAKE, Some(dir.path()), &arch, "13.0", compile).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("kernels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let expected = format!("fake-{:016x}.ptx", cache_key(&FAKE, &arch, "13.0"));
        assert_eq!(names, vec![expected]);
    }

    #[test]
    fn no_cache_dir_compiles_every_time() {
        let arch = CudaArch::parse("sm_90").unwrap();
        let calls = Cell::new(0);
        let compile = |_: &KernelSource, _: &CudaArch| {
            calls.set(calls.get() + 1);
            Ok(("ptx".to_string(), "warning".to_string()))
        };
        for _ in 0..2 {
            let l = load_via_cache(&FAKE, None, &arch, "12.9", compile).unwrap();
            assert_eq!(
                (l.origin, l.nvrtc_log.as_str()),
                (PtxOrigin::Nvrtc, "warning")
            );
        }
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn cache_key_depends_on_source_arch_and_version() {
        let a90 = CudaArch::parse("sm_90").unwrap();
        let a80 = CudaArch::parse("sm_80").unwrap();
        let other = KernelSource {
            source: "extern \"C\" __global__ void k2() {}",
            ..FAKE
        };
        let base = cache_key(&FAKE, &a90, "12.9");
        assert_ne!(base, cache_key(&other, &a90, "12.9"));
        assert_ne!(base, cache_key(&FAKE, &a80, "12.9"));
        assert_ne!(base, cache_key(&FAKE, &a90, "12.8"));
        assert_eq!(base, cache_key(&FAKE, &a90, "12.9"));
    }
}
