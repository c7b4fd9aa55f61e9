//! IDX loading, the binary format of MNIST (<http://yann.lecun.com/exdb/mnist/>).
//!
//! A file is two zero bytes, a value-type byte (0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32,
//! 0x0E f64), a dimension count, that many big-endian u32 sizes, then the values, big-endian.
//! An images file of `N × d1 × d2 …` becomes N rows of `d1 · d2 · …` features, values as they
//! are (no scaling). Its labels come from a 1-D file of N integers: `labels_path`, or the file
//! named by the MNIST convention (`train-images-idx3-ubyte` → `train-labels-idx1-ubyte`).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use super::{
    DataError, Dataset, LabelColumn, LoadOptions, LoadStop, file_error, label_from_f64, open,
    read_error,
};

/// How each value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueType {
    U8,
    I8,
    I16,
    I32,
    F32,
    F64,
}

impl ValueType {
    fn from_byte(b: u8) -> Option<ValueType> {
        Some(match b {
            0x08 => ValueType::U8,
            0x09 => ValueType::I8,
            0x0B => ValueType::I16,
            0x0C => ValueType::I32,
            0x0D => ValueType::F32,
            0x0E => ValueType::F64,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::I16 => "i16",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
        }
    }

    fn size(self) -> usize {
        match self {
            ValueType::U8 | ValueType::I8 => 1,
            ValueType::I16 => 2,
            ValueType::I32 | ValueType::F32 => 4,
            ValueType::F64 => 8,
        }
    }

    /// One big-endian value; `b` is exactly `self.size()` bytes.
    fn decode(self, b: &[u8]) -> f64 {
        let mut be = [0u8; 8];
        be[..b.len()].copy_from_slice(b);
        match self {
            ValueType::U8 => f64::from(b[0]),
            ValueType::I8 => f64::from(b[0] as i8),
            ValueType::I16 => f64::from(i16::from_be_bytes([be[0], be[1]])),
            ValueType::I32 => f64::from(i32::from_be_bytes([be[0], be[1], be[2], be[3]])),
            ValueType::F32 => f64::from(f32::from_be_bytes([be[0], be[1], be[2], be[3]])),
            ValueType::F64 => f64::from_be_bytes(be),
        }
    }
}

/// A whole IDX file in memory.
struct IdxFile {
    ty: ValueType,
    dims: Vec<usize>,
    data: Vec<u8>,
}

impl IdxFile {
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.data
            .chunks_exact(self.ty.size())
            .map(|b| self.ty.decode(b))
    }
}

/// True when the file name says IDX (`train-images-idx3-ubyte`, `t10k-images.idx3-ubyte.gz`).
pub(super) fn is_idx_name(path: &Path) -> bool {
    let name = file_name(path).to_lowercase();
    name.contains("idx") && !name.ends_with(".csv") && !name.ends_with(".csv.gz")
}

/// Loads an IDX images file from `reader` (already decompressed), with its labels unless
/// `opts.label` is [`LabelColumn::None`].
pub(super) fn load<R: BufRead>(
    path: &Path,
    reader: R,
    opts: &LoadOptions,
    stop: &LoadStop,
) -> Result<Dataset, DataError> {
    if let LabelColumn::Named(name) = &opts.label {
        let message = format!(
            "a named label column (\"{name}\") applies only to CSV files; IDX labels come from \
             a separate labels file (--labels)"
        );
        return Err(file_error(path, message));
    }
    let images = read_idx(path, reader)?;
    if images.dims.len() < 2 {
        let message = format!(
            "has 1 dimension ({}); an images file needs at least 2 (count and features) - \
             is this a labels file?",
            images.dims[0]
        );
        return Err(file_error(path, message));
    }
    let rows = images.dims[0];
    // With no rows the data is empty whatever the other dimensions say, so their product
    // was never checked against the file's size and can overflow.
    let Some(features) = images.dims[1..]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    else {
        let message = format!(
            "dimensions {} are too large: {} features per image",
            dims_text(&images.dims),
            images.dims[1..]
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" x ")
        );
        return Err(file_error(path, message));
    };
    if rows == 0 || features == 0 {
        let message = format!(
            "no data rows: its dimensions are {}",
            dims_text(&images.dims)
        );
        return Err(file_error(path, message));
    }
    let mut x = Vec::with_capacity(rows * features);
    for (i, v) in images.values().enumerate() {
        let v = v as f32;
        if !v.is_finite() {
            let message = format!(
                "image {} of {rows}, value {}: {v} is not a finite f32",
                i / features + 1,
                i % features + 1
            );
            return Err(file_error(path, message));
        }
        x.push(v);
    }
    let labels = match opts.label {
        LabelColumn::None => None,
        _ => {
            let labels_path = match &opts.labels_path {
                Some(p) => p.clone(),
                None => find_labels(path)?,
            };
            Some(load_labels(&labels_path, path, rows, stop)?)
        }
    };
    Ok(Dataset {
        features,
        x,
        labels,
        source: path.display().to_string(),
    })
}

/// Reads a 1-D labels file and checks it against the `rows` images of `images_path`.
fn load_labels(
    path: &Path,
    images_path: &Path,
    rows: usize,
    stop: &LoadStop,
) -> Result<Vec<u32>, DataError> {
    let file = read_idx(path, open(path, stop)?)?;
    if file.dims.len() != 1 {
        let message = format!(
            "a labels file has 1 dimension, this has {} ({}) - is it an images file?",
            file.dims.len(),
            dims_text(&file.dims)
        );
        return Err(file_error(path, message));
    }
    if file.dims[0] != rows {
        let message = format!(
            "has {} labels but {} has {rows} images",
            file.dims[0],
            images_path.display()
        );
        return Err(file_error(path, message));
    }
    file.values()
        .enumerate()
        .map(|(i, v)| {
            label_from_f64(v).ok_or_else(|| {
                let message = format!(
                    "label {} of {rows}: {v} is not a non-negative integer",
                    i + 1
                );
                file_error(path, message)
            })
        })
        .collect()
}

/// The labels file next to `images` by the MNIST naming convention, with or without `.gz`.
/// The labels file an IDX images file at `path` reads when no `labels_path` is given, if its
/// name follows the convention and the file exists.
pub(crate) fn conventional_labels(path: &Path) -> Option<PathBuf> {
    find_labels(path).ok()
}

fn find_labels(images: &Path) -> Result<PathBuf, DataError> {
    let name = file_name(images);
    let Some(labels_name) = [
        ("images-idx3", "labels-idx1"),
        ("images.idx3", "labels.idx1"),
    ]
    .iter()
    .find(|(from, _)| name.contains(from))
    .map(|(from, to)| name.replace(from, to)) else {
        let message = "cannot guess the labels file from this name (it has neither \
                       \"images-idx3\" nor \"images.idx3\" in it); set --labels to the \
                       labels file";
        return Err(file_error(images, message));
    };
    let other = match labels_name.strip_suffix(".gz") {
        Some(plain) => plain.to_string(),
        None => format!("{labels_name}.gz"),
    };
    let candidates = [
        images.with_file_name(&labels_name),
        images.with_file_name(other),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let message = format!(
        "no labels file found (tried {} and {}); set --labels to the labels file",
        candidates[0].display(),
        candidates[1].display()
    );
    Err(file_error(images, message))
}

/// Reads and checks the header, then exactly the data it promises.
fn read_idx<R: Read>(path: &Path, mut reader: R) -> Result<IdxFile, DataError> {
    let mut magic = [0u8; 4];
    read_header_bytes(path, &mut reader, &mut magic)?;
    if magic[..2] != [0, 0] || magic[3] == 0 {
        let message = format!(
            "bad IDX magic {:02x} {:02x} {:02x} {:02x}: expected 00 00, a type byte and a \
             dimension count of at least 1",
            magic[0], magic[1], magic[2], magic[3]
        );
        return Err(file_error(path, message));
    }
    let ty = ValueType::from_byte(magic[2]).ok_or_else(|| {
        let message = format!(
            "unknown IDX value type 0x{:02x}: expected 0x08 (u8), 0x09 (i8), 0x0b (i16), \
             0x0c (i32), 0x0d (f32) or 0x0e (f64)",
            magic[2]
        );
        file_error(path, message)
    })?;
    let mut dims = Vec::with_capacity(usize::from(magic[3]));
    for _ in 0..magic[3] {
        let mut d = [0u8; 4];
        read_header_bytes(path, &mut reader, &mut d)?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let expected = dims
        .iter()
        .try_fold(ty.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            let message = format!("dimensions {} are too large", dims_text(&dims));
            file_error(path, message)
        })?;
    // One byte more than promised, to notice trailing data without reading all of it.
    let mut data = Vec::new();
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|source| read_error(path, source))?;
    if data.len() != expected {
        let what = if data.len() < expected {
            format!("truncated: only {} bytes follow", data.len())
        } else {
            "more bytes follow".to_string()
        };
        let message = format!(
            "{what}, but the header's dimensions {} of {} promise {expected} bytes",
            dims_text(&dims),
            ty.name()
        );
        return Err(file_error(path, message));
    }
    Ok(IdxFile { ty, dims, data })
}

fn read_header_bytes<R: Read>(
    path: &Path,
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), DataError> {
    reader.read_exact(buf).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            file_error(path, "truncated: the file ends inside the IDX header")
        } else {
            read_error(path, source)
        }
    })
}

fn dims_text(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDX file's bytes: header then `payload`.
    fn idx(ty: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, ty, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(payload);
        b
    }

    fn read(bytes: &[u8]) -> Result<IdxFile, DataError> {
        read_idx(Path::new("x-idx3-ubyte"), bytes)
    }

    #[test]
    fn every_value_type_decodes() {
        let cases: [(u8, Vec<u8>, f64); 6] = [
            (0x08, vec![200], 200.0),
            (0x09, vec![0xff], -1.0),
            (0x0B, (-300i16).to_be_bytes().to_vec(), -300.0),
            (0x0C, 70000i32.to_be_bytes().to_vec(), 70000.0),
            (0x0D, 1.5f32.to_be_bytes().to_vec(), 1.5),
            (0x0E, (-2.25f64).to_be_bytes().to_vec(), -2.25),
        ];
        for (ty, payload, want) in cases {
            let f = read(&idx(ty, &[1], &payload)).unwrap();
            assert_eq!(f.values().collect::<Vec<_>>(), vec![want], "type {ty:#x}");
        }
    }

    #[test]
    fn header_errors() {
        let e = read(&[0, 1, 8, 1]).err().unwrap().to_string();
        assert_eq!(
            e,
            "x-idx3-ubyte: bad IDX magic 00 01 08 01: expected 00 00, a type byte and a dimension count of at least 1"
        );
        let e = read(&idx(0x0A, &[1], &[0])).err().unwrap().to_string();
        assert!(
            e.starts_with("x-idx3-ubyte: unknown IDX value type 0x0a"),
            "{e}"
        );
        let e = read(&[0, 0, 8, 2, 0, 0, 0, 1]).err().unwrap().to_string();
        assert_eq!(
            e,
            "x-idx3-ubyte: truncated: the file ends inside the IDX header"
        );
        let e = read(&idx(0x0B, &[2, 2], &[0; 7]))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "x-idx3-ubyte: truncated: only 7 bytes follow, but the header's dimensions 2x2 of i16 promise 8 bytes"
        );
        let e = read(&idx(0x08, &[2], &[0; 3])).err().unwrap().to_string();
        assert!(e.starts_with("x-idx3-ubyte: more bytes follow"), "{e}");
    }

    #[test]
    fn names_that_mean_idx() {
        assert!(is_idx_name(Path::new("/d/train-images-idx3-ubyte")));
        assert!(is_idx_name(Path::new("t10k-images.idx3-ubyte.gz")));
        assert!(!is_idx_name(Path::new("idx-export.csv")));
        assert!(!is_idx_name(Path::new("data.csv.gz")));
    }
}
