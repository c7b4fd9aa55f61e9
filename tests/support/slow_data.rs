//! A data file that really takes minutes to load, for tests of what waits on a load: a
//! gzipped CSV of two rows followed by 4 GiB of blank lines, which the loader reads and skips
//! one by one (tens of nanoseconds each). It is 4 MB on disk and needs no memory to load:
//! 64 copies of one gzip member, which gzip readers take as one stream.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// Blank lines after the two rows, in 64 MiB members.
const MEMBERS: usize = 64;
const MEMBER_BYTES: usize = 64 << 20;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Writes the file at `path` (name it `*.csv.gz`): rows `1,2,0` and `3,4,1` under a header,
/// two features and labels 0 and 1, then the blank lines.
pub fn write_slow_csv_gz(path: &Path) {
    let member = gzip(&vec![b'\n'; MEMBER_BYTES]);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&gzip(b"a,b,label\n1,2,0\n3,4,1\n")).unwrap();
    for _ in 0..MEMBERS {
        f.write_all(&member).unwrap();
    }
    f.flush().unwrap();
}

/// Threads of this process still loading or measuring job `job` for its admission (named
/// `admit-JOB`, of which the kernel keeps 15 bytes).
pub fn admission_threads(job: &str) -> usize {
    let name = format!("admit-{job}");
    let comm = &name.as_bytes()[..name.len().min(15)];
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read(t.path().join("comm"))
                        .is_ok_and(|c| c.strip_suffix(b"\n").unwrap_or(&c) == comm)
                })
                .count()
        })
        .unwrap_or(0)
}
