//! The data loaders through the public API, on real files in temporary directories.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use setpoint::data::{
    DataError, Dataset, LabelColumn, LoadOptions, Normalizer, check_spec, load, split,
};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn load_path(path: &Path, opts: &LoadOptions) -> Result<Dataset, DataError> {
    load(path.to_str().unwrap(), opts)
}

fn label(label: LabelColumn) -> LoadOptions {
    LoadOptions {
        label,
        ..LoadOptions::default()
    }
}

/// Loads `text` written to `data.csv` and returns the error message with the directory removed.
fn csv_error(text: &str, opts: &LoadOptions) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "data.csv", text.as_bytes());
    let err = load_path(&path, opts).unwrap_err();
    assert!(err.is_input(), "{err}");
    err.to_string()
        .replace(&format!("{}/", dir.path().display()), "")
}

#[test]
fn csv_line_errors_name_file_line_column_and_value() {
    let opts = LoadOptions::default();
    assert_eq!(
        csv_error("1,2,0\n3,4,1\n\n5,6\n", &opts),
        "data.csv:4: expected 3 columns, got 2"
    );
    assert_eq!(
        csv_error("a,b,y\n1,2,0\n1,abc,0\n", &opts),
        "data.csv:3: column 2: not a number: \"abc\""
    );
    assert_eq!(
        csv_error("1,2,0\n1,2,2.5\n", &opts),
        "data.csv:2: column 3: label \"2.5\" is not a non-negative integer"
    );
    let nan = csv_error("1,2,0\r\nNaN,2,0\r\n", &opts);
    assert!(
        nan.starts_with("data.csv:2: column 1: not a finite number: \"NaN\""),
        "{nan}"
    );
    let inf = csv_error("1,-inf,0\n", &opts);
    assert!(
        inf.starts_with("data.csv:1: column 2: not a finite number: \"-inf\""),
        "{inf}"
    );
    assert_eq!(
        csv_error("", &opts),
        "data.csv: no data rows: the file is empty"
    );
    assert_eq!(
        csv_error("x,y\n", &opts),
        "data.csv: no data rows: the file has only a header"
    );
}

#[test]
fn csv_header_detection_and_label_columns() {
    let dir = tempfile::tempdir().unwrap();
    let with_header = write(dir.path(), "h.csv", b"f1, label ,f2\n1,2,3\n4,0,6\n");
    let d = load_path(&with_header, &label(LabelColumn::Named("label".into()))).unwrap();
    assert_eq!(d.features, 2);
    assert_eq!(d.x, vec![1.0, 3.0, 4.0, 6.0]);
    assert_eq!(d.labels, Some(vec![2, 0]));
    assert_eq!(d.source, with_header.display().to_string());

    // The header is skipped with the default (last column) too.
    let d = load_path(&with_header, &LoadOptions::default()).unwrap();
    assert_eq!(d.labels, Some(vec![3, 6]));

    let err = load_path(&with_header, &label(LabelColumn::Named("class".into())))
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("h.csv:1: no column named \"class\"; the header has columns: f1, label, f2"),
        "{err}"
    );

    let no_header = write(dir.path(), "n.csv", b"1,2,3\n4,5,6\n");
    let d = load_path(&no_header, &label(LabelColumn::None)).unwrap();
    assert_eq!((d.rows(), d.features, &d.labels), (2, 3, &None));
    assert_eq!(d.classes(), 0);
    let err = load_path(&no_header, &label(LabelColumn::Named("y".into())))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.csv:1: label column \"y\" was asked for but the file has no header row"),
        "{err}"
    );
}

#[test]
fn gzip_is_detected_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = b"a,b,y\n1,2,0\n3,4,1\n";
    let plain = load_path(&write(dir.path(), "p.csv", text), &LoadOptions::default()).unwrap();
    for name in ["z.csv.gz", "z.csv"] {
        let d = load_path(
            &write(dir.path(), name, &gzip(text)),
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(d.x, plain.x, "{name}");
        assert_eq!(d.labels, plain.labels, "{name}");
    }
    // Line numbers count the decompressed text.
    let path = write(dir.path(), "bad.csv.gz", &gzip(b"1,2,0\n1,x,0\n"));
    let err = load_path(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("bad.csv.gz:2: column 2: not a number: \"x\""),
        "{err}"
    );
    // A corrupt gzip stream is bad input, reported as a read failure.
    let mut corrupt = gzip(text);
    corrupt.truncate(corrupt.len() / 2);
    let err = load_path(
        &write(dir.path(), "c.csv.gz", &corrupt),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(err.is_input(), "{err}");
    assert!(err.to_string().contains("c.csv.gz: read failed: "), "{err}");
}

#[test]
fn missing_file_names_the_path_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.csv");
    let err = load_path(&path, &LoadOptions::default()).unwrap_err();
    assert!(err.is_input());
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot open: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn labels_path_is_refused_for_csv() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.csv", b"1,0\n");
    let opts = LoadOptions {
        labels_path: Some(dir.path().join("labels")),
        ..LoadOptions::default()
    };
    let err = load_path(&path, &opts).unwrap_err().to_string();
    assert!(
        err.contains("--labels applies only to IDX image files"),
        "{err}"
    );
}

#[test]
fn real_digits_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/digits.csv.gz");
    let d = load(path, &LoadOptions::default()).unwrap();
    assert_eq!(d.rows(), 1797);
    assert_eq!(d.features, 64);
    assert_eq!(d.classes(), 10);
    assert!(d.x.iter().all(|&v| (0.0..=16.0).contains(&v)));
    assert_eq!(d.source, path);
}

// ---- IDX ----

fn idx(ty: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

/// Three 2×2 u8 images with pixel values 0..12, and their labels 2, 0, 1.
fn images() -> Vec<u8> {
    idx(0x08, &[3, 2, 2], &(0..12).collect::<Vec<u8>>())
}

fn labels() -> Vec<u8> {
    idx(0x08, &[3], &[2, 0, 1])
}

fn check_images(d: &Dataset) {
    assert_eq!(d.rows(), 3);
    assert_eq!(d.features, 4);
    assert_eq!(d.row(2), &[8.0, 9.0, 10.0, 11.0]);
    assert_eq!(d.labels, Some(vec![2, 0, 1]));
}

#[test]
fn idx_round_trip_plain_and_gzipped_with_found_labels() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "train-images-idx3-ubyte", &images());
    write(dir.path(), "train-labels-idx1-ubyte", &labels());
    check_images(&load_path(&p, &LoadOptions::default()).unwrap());

    // Gzipped images, gzipped labels with the dotted naming.
    let p = write(dir.path(), "t10k-images.idx3-ubyte.gz", &gzip(&images()));
    write(dir.path(), "t10k-labels.idx1-ubyte.gz", &gzip(&labels()));
    check_images(&load_path(&p, &LoadOptions::default()).unwrap());

    // Gzipped images, plain labels: found without the .gz.
    let p = write(dir.path(), "x-images-idx3-ubyte.gz", &gzip(&images()));
    write(dir.path(), "x-labels-idx1-ubyte", &labels());
    check_images(&load_path(&p, &LoadOptions::default()).unwrap());

    // Unlabelled on request: no labels file needed.
    let p = write(dir.path(), "lonely-images-idx3-ubyte", &images());
    let d = load_path(&p, &label(LabelColumn::None)).unwrap();
    assert_eq!((d.rows(), d.labels), (3, None));
}

#[test]
fn idx_with_explicit_labels_path_and_detection_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LoadOptions {
        labels_path: Some(write(dir.path(), "my-labels.bin", &gzip(&labels()))),
        ..LoadOptions::default()
    };
    // No "idx" in the name: recognised by the two leading zero bytes.
    let p = write(dir.path(), "pixels.bin", &images());
    check_images(&load_path(&p, &opts).unwrap());
    let p = write(dir.path(), "pixels.gz", &gzip(&images()));
    check_images(&load_path(&p, &opts).unwrap());
}

#[test]
fn idx_other_value_types_become_f32() {
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let p = write(
        dir.path(),
        "f-images-idx3-ubyte",
        &idx(0x0D, &[2, 2], &payload),
    );
    let labels: Vec<u8> = [7i32, 3].iter().flat_map(|v| v.to_be_bytes()).collect();
    write(dir.path(), "f-labels-idx1-ubyte", &idx(0x0C, &[2], &labels));
    let d = load_path(&p, &LoadOptions::default()).unwrap();
    assert_eq!(d.x, vec![1.5, -2.0, 3.25, 0.0]);
    assert_eq!(d.labels, Some(vec![7, 3]));
}

/// Loads `images` (as `a-images-idx3-ubyte`) with `labels` beside it; the error, directory removed.
fn idx_error(images: &[u8], labels: Option<&[u8]>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "a-images-idx3-ubyte", images);
    if let Some(l) = labels {
        write(dir.path(), "a-labels-idx1-ubyte", l);
    }
    let err = load_path(&p, &LoadOptions::default()).unwrap_err();
    assert!(err.is_input(), "{err}");
    err.to_string()
        .replace(&format!("{}/", dir.path().display()), "")
}

#[test]
fn idx_errors() {
    let mut truncated = images();
    truncated.pop();
    assert_eq!(
        idx_error(&truncated, Some(&labels())),
        "a-images-idx3-ubyte: truncated: only 11 bytes follow, but the header's dimensions 3x2x2 of u8 promise 12 bytes"
    );
    let mut bad_magic = images();
    bad_magic[1] = 3;
    assert!(
        idx_error(&bad_magic, Some(&labels()))
            .starts_with("a-images-idx3-ubyte: bad IDX magic 00 03 08 03: expected 00 00"),
    );
    assert_eq!(
        idx_error(&images(), Some(&idx(0x08, &[2], &[0, 1]))),
        "a-labels-idx1-ubyte: has 2 labels but a-images-idx3-ubyte has 3 images"
    );
    assert_eq!(
        idx_error(&images(), Some(&idx(0x09, &[3], &[0, 0xff, 1]))),
        "a-labels-idx1-ubyte: label 2 of 3: -1 is not a non-negative integer"
    );
    assert_eq!(
        idx_error(&images(), None),
        "a-images-idx3-ubyte: no labels file found (tried a-labels-idx1-ubyte and a-labels-idx1-ubyte.gz); set --labels to the labels file"
    );
    assert!(idx_error(&labels(), None).contains("is this a labels file?"));

    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "pixels-idx", &images());
    let err = load_path(&p, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot guess the labels file from this name"),
        "{err}"
    );
    assert!(err.contains("set --labels"), "{err}");
}

// ---- synthetic ----

#[test]
fn synthetic_is_deterministic_and_seeded() {
    let opts = LoadOptions::default();
    let cases = [
        ("synthetic:blobs", "synthetic:blobs:seed=2"),
        (
            "synthetic:spirals:features=5,noise=0.5",
            "synthetic:spirals:features=5,noise=0.5,seed=2",
        ),
    ];
    for (spec, other_seed) in cases {
        let a = load(spec, &opts).unwrap();
        let b = load(spec, &opts).unwrap();
        assert_eq!(a, b, "{spec}");
        assert!(a.x.iter().all(|v| v.is_finite()));
        assert_eq!(a.source, spec);
        let c = load(other_seed, &opts).unwrap();
        assert_ne!(a.x, c.x, "{spec}");
    }
    let d = load("synthetic:blobs", &opts).unwrap();
    assert_eq!((d.rows(), d.features, d.classes()), (2000, 64, 10));
    let d = load("synthetic:spirals", &opts).unwrap();
    assert_eq!((d.rows(), d.features, d.classes()), (1500, 2, 3));
    let d = load("synthetic:blobs:size=30,classes=3,features=2", &opts).unwrap();
    assert_eq!((d.rows(), d.features, d.classes()), (30, 2, 3));
}

#[test]
fn spec_errors() {
    let e = check_spec("synthetic:moons").unwrap_err();
    assert!(e.is_input());
    assert_eq!(
        e.to_string(),
        "invalid data spec \"synthetic:moons\": unknown synthetic kind \"moons\"; accepted: blobs, spirals"
    );
    let e = load("synthetic:blobs:colour=red", &LoadOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid data spec \"synthetic:blobs:colour=red\": unknown option \"colour\"; accepted keys: size, classes, features, seed, noise"
    );
    assert!(
        check_spec("synthetic:blobs:classes=x")
            .unwrap_err()
            .to_string()
            .contains("classes: \"x\" is not a whole number")
    );
    assert!(
        check_spec("synthetic:spirals:size=2")
            .unwrap_err()
            .to_string()
            .contains("size 2 is smaller than classes 3")
    );
    assert!(check_spec("").is_err());
    assert!(check_spec("synthetic:spirals:classes=4,size=40").is_ok());
    assert!(check_spec("anything/that/is/a/path.csv").is_ok());
}

// ---- split and normalizer ----

/// `rows` rows whose single feature is the row number, so rows can be told apart.
fn numbered(rows: usize) -> Dataset {
    Dataset {
        features: 1,
        x: (0..rows).map(|i| i as f32).collect(),
        labels: Some((0..rows as u32).map(|i| i % 2).collect()),
        source: "numbered".into(),
    }
}

#[test]
fn split_is_sized_deterministic_and_disjoint() {
    let d = numbered(100);
    let (train, val) = split(&d, 0.2, 42).unwrap();
    assert_eq!((train.rows(), val.rows()), (80, 20));
    let (train2, val2) = split(&d, 0.2, 42).unwrap();
    assert_eq!((&train, &val), (&train2, &val2));
    let (_, val3) = split(&d, 0.2, 43).unwrap();
    assert_ne!(val, val3);

    let mut all: Vec<f32> = train.x.iter().chain(&val.x).copied().collect();
    all.sort_by(f32::total_cmp);
    assert_eq!(all, d.x, "every row lands exactly once");
    // Labels travel with their rows.
    for (i, &v) in val.x.iter().enumerate() {
        assert_eq!(val.labels.as_ref().unwrap()[i], v as u32 % 2);
    }

    let (train, val) = split(&d, 0.0, 1).unwrap();
    assert_eq!((train.rows(), val.rows()), (100, 0));
    let (train, val) = split(&numbered(2), 0.1, 1).unwrap();
    assert_eq!((train.rows(), val.rows()), (1, 1));
    let e = split(&d, 1.0, 1).unwrap_err();
    assert!(e.is_input());
    assert_eq!(
        e.to_string(),
        "cannot split numbered: validation fraction 1 is not in [0, 1)"
    );
}

#[test]
fn normalizer_statistics_match_hand_computation() {
    // Column 0: 2, 4, 4, 4, 5, 5, 7, 9 → mean 5, population std 2 (the textbook example).
    // Column 1: constant 3 → std treated as 1, so it maps to 0.
    let col0 = [2.0f32, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
    let d = Dataset {
        features: 2,
        x: col0.iter().flat_map(|&v| [v, 3.0]).collect(),
        labels: None,
        source: "hand".into(),
    };
    let n = Normalizer::fit(&d);
    assert_eq!(n.mean, vec![5.0, 3.0]);
    assert_eq!(n.std, vec![2.0, 1.0]);
    assert_eq!(n.features(), 2);
    let mut x = d.x.clone();
    n.apply(&mut x);
    assert_eq!(&x[..4], &[-1.5, 0.0, -0.5, 0.0]);
    assert_eq!(x[14], 2.0);

    let id = Normalizer::identity(3);
    assert_eq!((id.mean, id.std), (vec![0.0; 3], vec![1.0; 3]));
}

/// A FIFO as a job's data used to hang the daemon's admission until something wrote to it:
/// data must be a regular file, and the loader says so at once.
#[cfg(unix)]
#[test]
fn a_fifo_or_a_directory_is_refused_at_once_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("data.csv");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let started = std::time::Instant::now();
    let err = load(fifo.to_str().unwrap(), &LoadOptions::default()).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(err.is_input(), "{err}");
    assert!(
        err.to_string().ends_with(
            "data.csv: is a FIFO (named pipe), not a regular file; data must be a regular file"
        ),
        "{err}"
    );
    let err = load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("is a directory, not a regular file"),
        "{err}"
    );
}
