//! NVRTC, the CUDA run-time compiler, loaded when first needed from the library of a CUDA 13
//! or CUDA 12 toolkit, whichever the host has.
//!
//! The binary carries its kernels compiled (see the module docs of `kernels`), so NVRTC is
//! needed only for a GPU whose architecture the binary lacks, and by `setpoint kernels`.
//! The project binds the eight NVRTC calls it uses itself rather than through cudarc, whose
//! loader looks only for CUDA 12 file names: a host with CUDA 13 has `libnvrtc.so.13` and
//! often no unversioned `libnvrtc.so`. The calls used have had the same C signatures since
//! CUDA 11.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

use super::{CudaArch, KernelError, KernelSource, compile_options};

/// File names tried, newest toolkit first; the loader's search path applies to each.
const LIBRARY_NAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// Toolkit library folders tried after the search path, below `$CUDA_HOME`, `$CUDA_PATH`
/// and `/usr/local/cuda`.
const TOOLKIT_LIB_DIRS: [&str; 3] = [
    "lib64",
    "targets/x86_64-linux/lib",
    "targets/sbsa-linux/lib",
];

type Program = *mut c_void;
type Status = c_int;
const SUCCESS: Status = 0;

/// The NVRTC entry points, resolved once.
struct Api {
    /// Keeps the library loaded for the functions below.
    _library: libloading::Library,
    /// The name or path it was loaded from.
    origin: String,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    ptx_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    ptx: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
}

/// Candidate libraries in the order they are tried.
fn candidates() -> Vec<String> {
    let mut out: Vec<String> = LIBRARY_NAMES.iter().map(|s| s.to_string()).collect();
    let roots = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain([PathBuf::from("/usr/local/cuda")]);
    for root in roots {
        for dir in TOOLKIT_LIB_DIRS {
            for name in LIBRARY_NAMES {
                let p = root.join(dir).join(name);
                if p.is_file() {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

/// Why one candidate library could not be used.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Library(libloading::Error),
    #[error("{library} lacks {symbol}: {source}")]
    Symbol {
        library: String,
        symbol: &'static str,
        source: libloading::Error,
    },
}

fn open(name: &str) -> Result<Api, LoadError> {
    // SAFETY: loading NVRTC runs only its own initialisers; the symbols below are looked up
    // with the C signatures NVRTC documents and used only while `_library` keeps it loaded.
    unsafe {
        let library = libloading::Library::new(name).map_err(LoadError::Library)?;
        macro_rules! sym {
            ($n:literal) => {
                *library
                    .get(concat!($n, "\0").as_bytes())
                    .map_err(|source| LoadError::Symbol {
                        library: name.to_string(),
                        symbol: $n,
                        source,
                    })?
            };
        }
        Ok(Api {
            origin: name.to_string(),
            version: sym!("nvrtcVersion"),
            error_string: sym!("nvrtcGetErrorString"),
            create: sym!("nvrtcCreateProgram"),
            compile: sym!("nvrtcCompileProgram"),
            log_size: sym!("nvrtcGetProgramLogSize"),
            log: sym!("nvrtcGetProgramLog"),
            ptx_size: sym!("nvrtcGetPTXSize"),
            ptx: sym!("nvrtcGetPTX"),
            destroy: sym!("nvrtcDestroyProgram"),
            _library: library,
        })
    }
}

fn api() -> Result<&'static Api, KernelError> {
    static API: OnceLock<Result<Api, Vec<LoadError>>> = OnceLock::new();
    API.get_or_init(|| {
        let mut tried = Vec::new();
        for name in candidates() {
            match open(&name) {
                Ok(api) => return Ok(api),
                Err(e) => tried.push(e),
            }
        }
        Err(tried)
    })
    .as_ref()
    .map_err(|_| KernelError::NvrtcMissing)
}

/// Whether NVRTC can be loaded; the error says how to install it. The answer is kept: the
/// loader reads `LD_LIBRARY_PATH` once, at process start.
pub fn available() -> Result<(), KernelError> {
    api().map(|_| ())
}

/// Which library NVRTC was loaded from (a file name or a path).
pub fn library() -> Option<&'static str> {
    api().ok().map(|a| a.origin.as_str())
}

/// NVRTC's version as `major.minor` (such as `12.9`).
pub fn version() -> Result<String, KernelError> {
    let api = api()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the pointers are to live locals.
    let rc = unsafe { (api.version)(&mut major, &mut minor) };
    check(api, rc, None, "nvrtcVersion")?;
    Ok(format!("{major}.{minor}"))
}

fn status_name(api: &Api, rc: Status) -> String {
    // SAFETY: NVRTC returns a static NUL-terminated string for every status, or null.
    let p = unsafe { (api.error_string)(rc) };
    if p.is_null() {
        return format!("NVRTC error {rc}");
    }
    // SAFETY: non-null, NUL-terminated, static.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn check(
    api: &Api,
    rc: Status,
    module: Option<&str>,
    call: &'static str,
) -> Result<(), KernelError> {
    if rc == SUCCESS {
        return Ok(());
    }
    Err(KernelError::Nvrtc {
        module: module.map(str::to_string),
        call,
        code: status_name(api, rc),
    })
}

/// Owns an NVRTC program and destroys it when dropped.
struct Owned<'a> {
    api: &'a Api,
    program: Program,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        // SAFETY: the program came from nvrtcCreateProgram and is destroyed only here; a
        // failure leaks a little host memory, not worth a panic.
        let _ = unsafe { (self.api.destroy)(&mut self.program) };
    }
}

/// Reads a sized text out of NVRTC (the log or the PTX).
fn text(
    owned: &Owned<'_>,
    size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    get: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    module: &str,
    call: &'static str,
) -> Result<String, KernelError> {
    let mut n = 0usize;
    // SAFETY: a live program and a pointer to a local.
    check(
        owned.api,
        unsafe { size(owned.program, &mut n) },
        Some(module),
        call,
    )?;
    let mut buf = vec![0u8; n.max(1)];
    // SAFETY: the buffer holds the size NVRTC just reported.
    let rc = unsafe { get(owned.program, buf.as_mut_ptr().cast()) };
    check(owned.api, rc, Some(module), call)?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Compiles one module to PTX for `arch`, returning the PTX and NVRTC's log (its warnings;
/// empty when there are none). The error names the module and carries NVRTC's log.
pub(crate) fn compile_with_log(
    module: &KernelSource,
    arch: &CudaArch,
) -> Result<(String, String), KernelError> {
    let api = api()?;
    let name = module.module;
    let nul = |what: &str| KernelError::Source {
        module: name.to_string(),
        message: format!("the {what} contains a NUL byte"),
    };
    let src = CString::new(module.source).map_err(|_| nul("source"))?;
    let file = CString::new(format!("{name}.cu")).map_err(|_| nul("module name"))?;
    let options: Vec<CString> = compile_options(arch)
        .into_iter()
        .map(|o| CString::new(o).map_err(|_| nul("options")))
        .collect::<Result<_, _>>()?;
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut program: Program = std::ptr::null_mut();
    // SAFETY: `src` and `file` are NUL-terminated and outlive the program (declared before
    // `owned`, dropped after it); no headers are passed.
    let rc = unsafe {
        (api.create)(
            &mut program,
            src.as_ptr(),
            file.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    check(api, rc, Some(name), "nvrtcCreateProgram")?;
    let owned = Owned { api, program };
    let count = c_int::try_from(option_ptrs.len()).unwrap_or(c_int::MAX);
    // SAFETY: a live program; `option_ptrs` points into `options`, alive for the call.
    let compiled = unsafe { (api.compile)(owned.program, count, option_ptrs.as_ptr()) };
    let log = text(&owned, api.log_size, api.log, name, "nvrtcGetProgramLog").unwrap_or_default();
    if compiled != SUCCESS {
        return Err(KernelError::Compile {
            module: name.to_string(),
            code: status_name(api, compiled),
            log: if log.trim().is_empty() {
                "(NVRTC gave no log)".into()
            } else {
                log.trim_end().to_string()
            },
        });
    }
    let ptx = text(&owned, api.ptx_size, api.ptx, name, "nvrtcGetPTX")?;
    Ok((ptx, log.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_13_names_come_first() {
        let c = candidates();
        assert_eq!(
            &c[..3],
            &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
        );
    }

    /// Runs only where NVRTC loads (CI sets it up with scripts/cuda-tools.sh).
    #[test]
    fn compiles_and_reports_errors_when_present() {
        if available().is_err() {
            eprintln!("skipped: NVRTC not installed (run scripts/cuda-tools.sh)");
            return;
        }
        let arch = CudaArch::parse("sm_90").unwrap();
        let ok = KernelSource {
            module: "fake",
            source: "extern \"C\" __global__ void k() {}",
            prebuilt_ptx: None,
            prebuilt_sass: None,
            target: crate::kernels::ModuleTarget::Portable,
        };
        let (ptx, _) = compile_with_log(&ok, &arch).unwrap();
        assert_eq!(super::super::names::ptx_entries(&ptx), vec!["k"]);
        assert!(version().unwrap().contains('.'));
        let broken = KernelSource {
            module: "broken",
            source: "extern \"C\" __global__ void k() { undeclared = 1; }",
            ..ok
        };
        let e = compile_with_log(&broken, &arch).unwrap_err().to_string();
        assert!(e.contains("broken") && e.contains("undeclared"), "{e}");
    }
}
