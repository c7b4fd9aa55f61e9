//! Opening a data file: regular files only, gzip detected from the content, reads that stop
//! when asked, and errors that name the file.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::{DataError, LoadStop, file_error, read_error};

/// Opens `path` for buffered reading, decompressing transparently when it starts with the
/// gzip magic bytes (whatever its name); every read fails once `stop` is stopped.
pub(super) fn open(path: &Path, stop: &LoadStop) -> Result<Box<dyn BufRead>, DataError> {
    let file = open_regular(path)?;
    let mut reader = BufReader::new(super::stop::Stoppable::new(file, stop));
    let is_gzip = reader
        .fill_buf()
        .map_err(|source| read_error(path, source))?
        .starts_with(&[0x1f, 0x8b]);
    if is_gzip {
        // Checked again above decompression: a small compressed read can inflate to much
        // more text than one buffer of the file.
        Ok(Box::new(BufReader::new(super::stop::Stoppable::new(
            GzipErrors(flate2::bufread::MultiGzDecoder::new(reader)),
            stop,
        ))))
    } else {
        Ok(Box::new(reader))
    }
}

/// Opens `path` for reading when it is a regular file. Opening does not wait: a FIFO would
/// block `open` until a writer came (and the daemon's admission with it), so the file is
/// opened non-blocking and its type checked on the open descriptor, which also closes the
/// window between a check by name and the open.
pub(crate) fn open_regular(path: &Path) -> Result<File, DataError> {
    let open_error = |source| DataError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        return Err(file_error(
            path,
            format!(
                "is a {}, not a regular file; data must be a regular file",
                file_kind(&meta)
            ),
        ));
    }
    Ok(file)
}

/// What kind of file `meta` describes, in words.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO (named pipe)";
        }
        if t.is_socket() {
            return "socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "device";
        }
    }
    if t.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Says that a decompression error is about the gzip stream, and that a stream that ends
/// early is truncated: the decoder's own words ("unexpected end of file", "corrupt deflate
/// stream") do not say which layer failed.
struct GzipErrors<R>(R);

impl<R: io::Read> io::Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let what = match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    "truncated gzip data: the file ends before the compressed stream does"
                }
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => "corrupt gzip data",
                _ => return e,
            };
            io::Error::new(e.kind(), format!("{what} ({e})"))
        })
    }
}
