//! CSV loading: comma-separated numbers, one row per line.
//!
//! - Whitespace around fields, blank lines and `\r\n` line ends are accepted.
//! - The first non-blank line is a header when any of its fields is non-empty and not a number.
//! - The label is the last column, a column named in the header, or absent; it must be a
//!   non-negative integer (`3` or `3.0`).
//! - Features must be finite: `NaN`, `inf` and values beyond the f32 range are refused, since
//!   one of them would silently turn every weight it reaches into NaN.
//!
//! Errors name the file, the 1-based line and, for one field, the 1-based column.

use std::io::BufRead;
use std::path::Path;

use super::MAX_CLASSES;
use super::{DataError, Dataset, LabelColumn, file_error, parse_label, read_error};

/// The shape fixed by the first non-blank line.
#[derive(Debug, Clone, Copy)]
struct Layout {
    columns: usize,
    /// 0-based index of the label column.
    label: Option<usize>,
}

/// Reads a CSV data set from `reader` (already decompressed); `path` is for messages.
pub(super) fn load<R: BufRead>(
    path: &Path,
    mut reader: R,
    label: &LabelColumn,
) -> Result<Dataset, DataError> {
    match load_rows(path, &mut reader, label) {
        Ok(d) => Ok(d),
        // A bad line in a damaged compressed file is a symptom: the damage is the error. A
        // stream cut short mid-line would otherwise read as a line with too few columns. The
        // damage is near the bad line, so only so much of the rest is read to find it.
        Err(e @ DataError::Line { .. }) => match std::io::copy(
            &mut std::io::Read::take(&mut reader, MAX_LINE_BYTES * 4),
            &mut std::io::sink(),
        ) {
            Err(source) => Err(read_error(path, source)),
            Ok(_) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The longest line a CSV file may have, bytes.
const MAX_LINE_BYTES: u64 = 16 << 20;

fn load_rows<R: BufRead>(
    path: &Path,
    reader: &mut R,
    label: &LabelColumn,
) -> Result<Dataset, DataError> {
    let mut layout: Option<Layout> = None;
    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    let mut rows = 0;
    loop {
        buf.clear();
        // A line is read up to a bound: a file with no line breaks must not fill the memory.
        let n = std::io::Read::take(&mut *reader, MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| read_error(path, source))?;
        if n == 0 {
            break;
        }
        line += 1;
        if n as u64 > MAX_LINE_BYTES {
            let message = format!(
                "the line is longer than {} MiB (a row holds at most 65,536 features); \
                 expected a CSV file of numbers, one row per line",
                MAX_LINE_BYTES >> 20
            );
            return Err(line_error(path, line, None, message));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| {
            line_error(
                path,
                line,
                None,
                "not valid UTF-8 text; expected a CSV file of numbers",
            )
        })?;
        // A byte-order mark is invisible in editors but would make the first field a non-number.
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let layout = match layout {
            Some(l) => l,
            None => {
                let (l, is_header) = detect_layout(path, line, text, label)?;
                layout = Some(l);
                if is_header {
                    continue;
                }
                l
            }
        };
        parse_row(path, line, text, layout, &mut x, &mut labels)?;
        rows += 1;
    }
    let Some(layout) = layout else {
        return Err(file_error(path, "no data rows: the file is empty"));
    };
    if rows == 0 {
        return Err(file_error(path, "no data rows: the file has only a header"));
    }
    Ok(Dataset {
        features: layout.columns - usize::from(layout.label.is_some()),
        x,
        labels: layout.label.map(|_| labels),
        source: path.display().to_string(),
    })
}

/// Parses one data row of `layout` from line `line`, appending its features to `x` and its
/// label, if the layout has one, to `labels`.
fn parse_row(
    path: &Path,
    line: usize,
    text: &str,
    layout: Layout,
    x: &mut Vec<f32>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let got = text.split(',').count();
    if got != layout.columns {
        let message = format!("expected {} columns, got {got}", layout.columns);
        return Err(line_error(path, line, None, message));
    }
    for (i, field) in text.split(',').map(str::trim).enumerate() {
        if layout.label == Some(i) {
            let value = parse_label(field).ok_or_else(|| {
                let message = format!("label {} is not a non-negative integer", shown(field));
                line_error(path, line, Some(i + 1), message)
            })?;
            if value as usize >= MAX_CLASSES {
                let message = format!(
                    "label {value} is over the limit: labels are class numbers 0 ..= {} \
                     (a model has at most {MAX_CLASSES} classes)",
                    MAX_CLASSES - 1
                );
                return Err(line_error(path, line, Some(i + 1), message));
            }
            labels.push(value);
        } else {
            let value = parse_feature(field)
                .map_err(|m| line_error(path, line, Some(i + 1), m.to_string()))?;
            x.push(value);
        }
    }
    Ok(())
}

/// Decides from the first non-blank line whether it is a header, and where the label is.
fn detect_layout(
    path: &Path,
    line: usize,
    text: &str,
    label: &LabelColumn,
) -> Result<(Layout, bool), DataError> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let is_header = fields
        .iter()
        .any(|f| !f.is_empty() && f.parse::<f64>().is_err());
    let columns = fields.len();
    let label = match label {
        LabelColumn::None => None,
        LabelColumn::Last => Some(columns - 1),
        LabelColumn::Named(name) => {
            if !is_header {
                let message = format!(
                    "label column \"{name}\" was asked for but the file has no header row \
                     (the first line is all numbers)"
                );
                return Err(line_error(path, line, None, message));
            }
            let names: Vec<&str> = fields.iter().map(|f| unquote(f)).collect();
            let index = names.iter().position(|n| n == name).ok_or_else(|| {
                let listed: Vec<String> = names.iter().take(50).map(|n| shown_bare(n)).collect();
                let more = names.len().saturating_sub(50);
                let message = format!(
                    "no column named {}; the header has columns: {}{}",
                    shown(name),
                    listed.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
                line_error(path, line, None, message)
            })?;
            Some(index)
        }
    };
    if label.is_some() && columns < 2 {
        let message = "found 1 column, but a labelled file needs at least one feature column \
                       besides the label; load it without a label column if it is unlabelled";
        return Err(line_error(path, line, None, message));
    }
    Ok((Layout { columns, label }, is_header))
}

/// A field that is not a feature value, shown as [`shown`] quotes it.
#[derive(Debug, thiserror::Error)]
enum FeatureError {
    #[error(
        "not a finite number: {0} (NaN, infinity and values beyond the f32 range are refused; remove or fill in such values)"
    )]
    NotFinite(String),
    #[error("not a number: {0}")]
    NotANumber(String),
}

/// A feature value: a finite f32.
fn parse_feature(field: &str) -> Result<f32, FeatureError> {
    match field.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(FeatureError::NotFinite(shown(field))),
        Err(_) => Err(FeatureError::NotANumber(shown(field))),
    }
}

/// Longest field quoted whole in a message.
const SHOWN_CHARS: usize = 80;

/// `"field"`, or its first [`SHOWN_CHARS`] characters and its size when it is longer: a
/// 50 MB field is not repeated in an error message.
fn shown(field: &str) -> String {
    match field.char_indices().nth(SHOWN_CHARS) {
        None => format!("\"{field}\""),
        Some((cut, _)) => format!("\"{}…\" ({} bytes)", &field[..cut], field.len()),
    }
}

/// Like [`shown`], without the quotes.
fn shown_bare(field: &str) -> String {
    match field.char_indices().nth(SHOWN_CHARS) {
        None => field.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &field[..cut], field.len()),
    }
}

/// Header names may be quoted by spreadsheet exports.
fn unquote(field: &str) -> &str {
    field
        .strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(field)
}

fn line_error(
    path: &Path,
    line: usize,
    column: Option<usize>,
    message: impl Into<String>,
) -> DataError {
    DataError::Line {
        path: path.to_path_buf(),
        line,
        column,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, label: LabelColumn) -> Result<Dataset, DataError> {
        load(Path::new("data.csv"), text.as_bytes(), &label)
    }

    fn err(text: &str, label: LabelColumn) -> String {
        parse(text, label).unwrap_err().to_string()
    }

    #[test]
    fn long_fields_are_cut_and_huge_labels_named_with_their_line() {
        let long = "x".repeat(5_000);
        let e = err(&format!("1,2,0\n3,{long},1\n"), LabelColumn::Last);
        assert!(
            e.starts_with("data.csv:2: column 2: not a number: \"xxxx"),
            "{e}"
        );
        assert!(e.contains("…\" (5000 bytes)") && e.len() < 200, "{e}");
        let e = err("1,2,0\n3,4,4000000000\n", LabelColumn::Last);
        assert!(
            e.starts_with(
                "data.csv:2: column 3: label 4000000000 is over the limit: labels are class \
                 numbers 0 ..= 65535"
            ),
            "{e}"
        );
        let e = err(&format!("1,2,{long}\n"), LabelColumn::Last);
        assert!(e.len() < 200, "{e}");
    }

    /// A file with no line break used to be read into memory whole, however large.
    #[test]
    fn a_line_past_the_bound_is_refused_without_reading_it_all() {
        struct Endless(u64);
        impl std::io::Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                buf.fill(b'1');
                self.0 += buf.len() as u64;
                Ok(buf.len())
            }
        }
        let mut source = Endless(0);
        let reader = std::io::BufReader::new(&mut source);
        let e = load(Path::new("data.csv"), reader, &LabelColumn::Last)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("data.csv:1: the line is longer than 16 MiB"),
            "{e}"
        );
        // The line, and the bounded look for damage after it.
        assert!(source.0 <= 6 * MAX_LINE_BYTES, "read {} bytes", source.0);
    }

    #[test]
    fn plain_rows_with_label_last() {
        let d = parse("1,2,0\n3, 4 ,1\r\n\n  \n5,6,2.0\n", LabelColumn::Last).unwrap();
        assert_eq!(d.features, 2);
        assert_eq!(d.x, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(d.labels, Some(vec![0, 1, 2]));
        assert_eq!(d.source, "data.csv");
        assert_eq!(d.classes(), 3);
    }

    #[test]
    fn header_is_detected_and_skipped() {
        let d = parse("\u{feff}a,b,y\n1,2,1\n", LabelColumn::Last).unwrap();
        assert_eq!(d.rows(), 1);
        assert_eq!(d.x, vec![1.0, 2.0]);
        let d = parse("1e3,-2.5,.5\n", LabelColumn::None).unwrap();
        assert_eq!(d.x, vec![1000.0, -2.5, 0.5]);
        assert_eq!(d.labels, None);
    }

    #[test]
    fn named_label_column() {
        let d = parse("\"y\",a,b\n1,2,3\n0,5,6\n", LabelColumn::Named("y".into())).unwrap();
        assert_eq!(d.features, 2);
        assert_eq!(d.x, vec![2.0, 3.0, 5.0, 6.0]);
        assert_eq!(d.labels, Some(vec![1, 0]));
        assert_eq!(
            err("a,b,c\n1,2,3\n", LabelColumn::Named("y".into())),
            "data.csv:1: no column named \"y\"; the header has columns: a, b, c"
        );
        let e = err("1,2,3\n", LabelColumn::Named("y".into()));
        assert!(
            e.starts_with(
                "data.csv:1: label column \"y\" was asked for but the file has no header row"
            ),
            "{e}"
        );
    }

    #[test]
    fn line_errors_name_line_column_and_value() {
        assert_eq!(
            err("1,2,0\n\n1,2\n", LabelColumn::Last),
            "data.csv:3: expected 3 columns, got 2"
        );
        assert_eq!(
            err("1,2,0\n1,abc,0\n", LabelColumn::Last),
            "data.csv:2: column 2: not a number: \"abc\""
        );
        assert_eq!(
            err("1,2,0\n1,,0\n", LabelColumn::Last),
            "data.csv:2: column 2: not a number: \"\""
        );
        assert_eq!(
            err("1,2,0\n1,2,2.5\n", LabelColumn::Last),
            "data.csv:2: column 3: label \"2.5\" is not a non-negative integer"
        );
        assert_eq!(
            err("1,2,-1\n", LabelColumn::Last),
            "data.csv:1: column 3: label \"-1\" is not a non-negative integer"
        );
        for bad in ["NaN", "inf", "-infinity", "1e39"] {
            let e = err(&format!("1,2,0\n{bad},2,0\n"), LabelColumn::Last);
            assert!(
                e.starts_with(&format!(
                    "data.csv:2: column 1: not a finite number: \"{bad}\""
                )),
                "{e}"
            );
        }
        let e = load(
            Path::new("data.csv"),
            &b"1,2\n\xff,0\n"[..],
            &LabelColumn::Last,
        )
        .unwrap_err();
        assert!(e.is_input());
        assert!(e.to_string().starts_with("data.csv:2: not valid UTF-8"));
    }

    #[test]
    fn empty_and_header_only_files_have_no_data_rows() {
        assert_eq!(
            err("", LabelColumn::Last),
            "data.csv: no data rows: the file is empty"
        );
        assert_eq!(
            err("\n \n", LabelColumn::Last),
            "data.csv: no data rows: the file is empty"
        );
        assert_eq!(
            err("a,b\n\n", LabelColumn::Last),
            "data.csv: no data rows: the file has only a header"
        );
    }

    #[test]
    fn a_single_column_cannot_hold_features_and_a_label() {
        let e = err("1\n2\n", LabelColumn::Last);
        assert!(e.starts_with("data.csv:1: found 1 column"), "{e}");
        let d = parse("1\n2\n", LabelColumn::None).unwrap();
        assert_eq!((d.rows(), d.features), (2, 1));
    }
}
