//! Data sets: CSV, IDX and synthetic sources; splits and standardisation.
//!
//! A data spec is either a file path or `synthetic:KIND[:k=v,...]`:
//!
//! - **CSV**: comma-separated numbers, optional header, label in the last or a named
//!   column. Features must be finite: `NaN` and infinities are refused with an error naming the
//!   line and column, because one of them silently poisons every weight it touches.
//! - **IDX**: the MNIST binary format, images and a matching labels file.
//! - **Synthetic**: seeded `blobs` and `spirals` generators.
//!
//! Any file may be gzip-compressed; compression is detected from the content, not the name.
//! Values are loaded as they are; [`Normalizer`] standardises them once fitted on training rows.

mod csv;
mod idx;
mod normalize;
mod open;
mod stop;

pub use normalize::Normalizer;
use open::open;

pub use stop::{LoadStop, STOPPED};

/// The labels file an IDX images file reads beside it by the naming convention (`…images-idx3…`
/// → `…labels-idx1…`), when there is one.
pub(crate) fn conventional_idx_labels(path: &std::path::Path) -> Option<std::path::PathBuf> {
    idx::conventional_labels(path)
}
mod synthetic;

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};

use crate::util::rng::Rng;

/// The most classes a label column may name: a label must be below it. It is the widest
/// output layer a model may have (`model::MAX_WIDTH`, which is checked to equal it).
pub(crate) const MAX_CLASSES: usize = 65_536;

/// The `Rng::derived` stream used by [`split`], fixed so that a seed always gives the same split.
const SPLIT_STREAM: u64 = 0x5911;

/// A labelled or unlabelled data set in memory, row-major f32 features.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Columns per row.
    pub features: usize,
    /// `rows * features` values, row-major.
    pub x: Vec<f32>,
    /// One label per row when labelled.
    pub labels: Option<Vec<u32>>,
    /// What it was loaded from (a path or a synthetic spec), for messages.
    pub source: String,
}

impl Dataset {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.x.len().checked_div(self.features).unwrap_or(0)
    }

    /// Number of classes: the largest label plus one; 0 when unlabelled or empty.
    pub fn classes(&self) -> usize {
        self.labels
            .as_deref()
            .and_then(|l| l.iter().max())
            .map_or(0, |&m| m as usize + 1)
    }

    /// The features of row `i`.
    ///
    /// # Panics
    /// When `i >= self.rows()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// A new data set holding the given rows, in the given order (repeats allowed).
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut x = Vec::with_capacity(indices.len() * self.features);
        for &i in indices {
            x.extend_from_slice(self.row(i));
        }
        Dataset {
            features: self.features,
            x,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            source: self.source.clone(),
        }
    }
}

/// Where the label is in a CSV file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabelColumn {
    /// The last column is the label (the common layout, and the default).
    #[default]
    Last,
    /// The column with this name in the header row; a header is then required.
    Named(String),
    /// No label: every column is a feature. For IDX files, no labels file is read.
    None,
}

/// How to load a file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where the label is in a CSV file (`None` also loads IDX images unlabelled).
    pub label: LabelColumn,
    /// Explicit labels file for IDX image files (otherwise found by the MNIST naming convention).
    pub labels_path: Option<PathBuf>,
}

/// Why a data set could not be loaded, split or described.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened.
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS reason.
        source: io::Error,
    },
    /// Reading (or decompressing) failed part way through.
    #[error("{}: read failed: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS or decompression reason.
        source: io::Error,
    },
    /// A line of a text file is malformed; `line` and `column` are 1-based.
    #[error("{}:{line}: {}{message}", path.display(), column.map(|c| format!("column {c}: ")).unwrap_or_default())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number (of the decompressed text).
        line: usize,
        /// 1-based column, where the problem is in one field.
        column: Option<usize>,
        /// What was found and what was expected.
        message: String,
    },
    /// The file as a whole is unusable: no data rows, a bad IDX header, truncated data,
    /// labels that do not match the images, or options that do not apply to it.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do where that is known.
        message: String,
    },
    /// A data spec that cannot be parsed (unknown synthetic kind or option, bad value).
    #[error("invalid data spec \"{spec}\": {message}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// The bad part and what is accepted.
        message: String,
    },
    /// A train/validation split that cannot be made.
    #[error("cannot split {dataset}: {message}")]
    Split {
        /// The data set's source.
        dataset: String,
        /// Why.
        message: String,
    },
}

impl DataError {
    /// True when the input is at fault (bad data, spec or option, or a missing file: exit
    /// code 2); false for I/O failures such as permission denied or a disk error (exit code 1).
    pub fn is_input(&self) -> bool {
        match self {
            DataError::Open { source, .. } | DataError::Read { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::IsADirectory
                    | io::ErrorKind::NotADirectory
                    // Corrupt or truncated gzip streams surface as these.
                    | io::ErrorKind::InvalidData
                    | io::ErrorKind::InvalidInput
                    | io::ErrorKind::UnexpectedEof
            ),
            DataError::Line { .. }
            | DataError::File { .. }
            | DataError::Spec { .. }
            | DataError::Split { .. } => true,
        }
    }
}

/// Parses and loads `spec`: a path to a CSV (optionally gzipped) or IDX file, or
/// `synthetic:KIND[:k=v,...]`.
///
/// A file named `*.csv` or `*.csv.gz` is read as CSV. Otherwise it is read as IDX when its
/// name contains `idx` (as in `train-images-idx3-ubyte`) or its content starts with two zero
/// bytes (the IDX magic; no text file does), and as CSV otherwise. The name wins over the
/// content so that a damaged gzipped CSV, which can decode to anything, is reported as one.
pub fn load(spec: &str, opts: &LoadOptions) -> Result<Dataset, DataError> {
    load_with_stop(spec, opts, &LoadStop::default())
}

/// [`load`], abandoned at the next read once `stop` is stopped (the error then says
/// [`STOPPED`]); a synthetic set is abandoned within a few thousand rows.
pub(crate) fn load_with_stop(
    spec: &str,
    opts: &LoadOptions,
    stop: &LoadStop,
) -> Result<Dataset, DataError> {
    if let Some(params) = synthetic::parse(spec)? {
        if opts.labels_path.is_some() {
            return Err(spec_error(spec, "--labels applies only to IDX image files"));
        }
        return synthetic::generate(&params, spec, stop).ok_or_else(|| spec_error(spec, STOPPED));
    }
    if spec.trim().is_empty() {
        return Err(spec_error(spec, EMPTY_SPEC));
    }
    let path = Path::new(spec);
    let mut reader = open(path, stop)?;
    let looks_idx = reader
        .fill_buf()
        .map_err(|source| read_error(path, source))?
        .starts_with(&[0, 0]);
    if !is_csv_name(path) && (looks_idx || idx::is_idx_name(path)) {
        idx::load(path, reader, opts, stop)
    } else {
        if opts.labels_path.is_some() {
            return Err(file_error(
                path,
                "--labels applies only to IDX image files; for CSV set the label column instead",
            ));
        }
        csv::load(path, reader, &opts.label)
    }
}

/// `*.csv` or `*.csv.gz`, in any case.
fn is_csv_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".csv") || name.ends_with(".csv.gz")
}

/// Checks only the syntax of a spec (used by config validation): for `synthetic:` specs the
/// kind, keys and values; for anything else that the path is not empty.
pub fn check_spec(spec: &str) -> Result<(), DataError> {
    if synthetic::parse(spec)?.is_some() {
        return Ok(());
    }
    if spec.trim().is_empty() {
        return Err(spec_error(spec, EMPTY_SPEC));
    }
    Ok(())
}

const EMPTY_SPEC: &str =
    "empty; give a CSV or IDX file path or synthetic:blobs / synthetic:spirals";

/// Seeded train/validation split, returned as `(train, val)`.
///
/// Rows are permuted with `Rng::derived(seed, 0x5911)` and the first `round(val_frac * rows)`
/// go to validation, clamped to at least 1 and at most `rows - 1` so that neither side is
/// empty. `val_frac == 0` gives an empty validation set. Errors when `val_frac` is not in
/// `[0, 1)`, or when `val_frac > 0` and there are fewer than 2 rows.
pub fn split(ds: &Dataset, val_frac: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
    let split_error = |message: String| DataError::Split {
        dataset: ds.source.clone(),
        message,
    };
    if !(0.0..1.0).contains(&val_frac) {
        return Err(split_error(format!(
            "validation fraction {val_frac} is not in [0, 1)"
        )));
    }
    let rows = ds.rows();
    if val_frac > 0.0 && rows < 2 {
        return Err(split_error(format!(
            "it has {rows} row(s); a validation split needs at least 2 (or set the validation fraction to 0)"
        )));
    }
    let mut order: Vec<usize> = (0..rows).collect();
    Rng::derived(seed, SPLIT_STREAM).shuffle(&mut order);
    let n_val = if val_frac == 0.0 {
        0
    } else {
        ((val_frac * rows as f64).round() as usize).clamp(1, rows - 1)
    };
    let (val, train) = order.split_at(n_val);
    Ok((ds.subset(train), ds.subset(val)))
}

fn read_error(path: &Path, source: io::Error) -> DataError {
    DataError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn file_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn spec_error(spec: &str, message: impl Into<String>) -> DataError {
    DataError::Spec {
        spec: spec.to_string(),
        message: message.into(),
    }
}

/// Parses a label written as a non-negative integer (`3` or `3.0`).
fn parse_label(text: &str) -> Option<u32> {
    let v: f64 = text.parse().ok()?;
    label_from_f64(v)
}

/// A label value as u32 when it is a whole number in range.
fn label_from_f64(v: f64) -> Option<u32> {
    (v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX)).then_some(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(rows: usize, features: usize) -> Dataset {
        Dataset {
            features,
            x: (0..rows * features).map(|v| v as f32).collect(),
            labels: Some((0..rows as u32).map(|r| r % 3).collect()),
            source: "test".into(),
        }
    }

    #[test]
    fn rows_classes_row_subset() {
        let d = ds(4, 2);
        assert_eq!(d.rows(), 4);
        assert_eq!(d.classes(), 3);
        assert_eq!(d.row(2), &[4.0, 5.0]);
        let s = d.subset(&[3, 0]);
        assert_eq!(s.x, vec![6.0, 7.0, 0.0, 1.0]);
        assert_eq!(s.labels, Some(vec![0, 0]));
        assert_eq!(s.source, "test");
        let unlabelled = Dataset {
            labels: None,
            ..d.clone()
        };
        assert_eq!(unlabelled.classes(), 0);
        assert_eq!(d.subset(&[]).classes(), 0);
    }

    #[test]
    fn split_sizes_are_rounded_and_clamped() {
        let d = ds(10, 1);
        let sizes = |f: f64| {
            let (t, v) = split(&d, f, 1).unwrap();
            (t.rows(), v.rows())
        };
        assert_eq!(sizes(0.0), (10, 0));
        assert_eq!(sizes(0.25), (7, 3)); // 2.5 rounds away from zero
        assert_eq!(sizes(0.01), (9, 1)); // at least one
        assert_eq!(sizes(0.99), (1, 9)); // at most rows - 1
        let (t, v) = split(&ds(1, 1), 0.0, 1).unwrap();
        assert_eq!((t.rows(), v.rows()), (1, 0));
    }

    #[test]
    fn split_rejects_bad_fraction_and_tiny_sets() {
        let d = ds(10, 1);
        for f in [-0.1, 1.0, 1.5, f64::NAN] {
            let e = split(&d, f, 1).unwrap_err().to_string();
            assert!(e.contains("is not in [0, 1)"), "{e}");
        }
        let e = split(&ds(1, 1), 0.2, 1).unwrap_err();
        assert!(e.is_input());
        assert_eq!(
            e.to_string(),
            "cannot split test: it has 1 row(s); a validation split needs at least 2 (or set the validation fraction to 0)"
        );
    }

    #[test]
    fn normalizer_fit_and_apply() {
        // Feature 0: 1, 2, 3, 6 → mean 3, population variance (4+1+0+9)/4 = 3.5.
        // Feature 1: constant 5 → std 1, maps to 0.
        let d = Dataset {
            features: 2,
            x: vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0, 6.0, 5.0],
            labels: None,
            source: "t".into(),
        };
        let n = Normalizer::fit(&d);
        assert_eq!(n.features(), 2);
        assert_eq!(n.mean, vec![3.0, 5.0]);
        assert!((n.std[0] - 3.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(n.std[1], 1.0);
        let mut x = d.x.clone();
        n.apply(&mut x);
        assert!((x[0] - (-2.0 / 3.5f32.sqrt())).abs() < 1e-6);
        assert_eq!(x[1], 0.0);
        let mut y = vec![1.0, 2.0];
        Normalizer::identity(2).apply(&mut y);
        assert_eq!(y, vec![1.0, 2.0]);
        Normalizer::identity(0).apply(&mut []);
    }

    #[test]
    fn labels_must_be_non_negative_integers() {
        assert_eq!(parse_label("3"), Some(3));
        assert_eq!(parse_label("3.0"), Some(3));
        for bad in ["2.5", "-1", "abc", "", "NaN", "inf", "1e20"] {
            assert_eq!(parse_label(bad), None, "{bad}");
        }
    }

    #[test]
    fn missing_file_is_an_input_error_naming_the_path() {
        let e = load("/nonexistent/dir/data.csv", &LoadOptions::default()).unwrap_err();
        assert!(e.is_input());
        let msg = e.to_string();
        assert!(
            msg.starts_with("/nonexistent/dir/data.csv: cannot open: "),
            "{msg}"
        );
        assert!(msg.contains("No such file or directory"), "{msg}");
    }

    #[test]
    fn spec_checks() {
        assert!(check_spec("data.csv").is_ok());
        assert!(check_spec("synthetic:blobs:size=100").is_ok());
        let e = check_spec("  ").unwrap_err();
        assert!(e.is_input());
        assert!(e.to_string().starts_with("invalid data spec \"  \": empty"));
        assert!(check_spec("synthetic:moons").is_err());
    }
}
