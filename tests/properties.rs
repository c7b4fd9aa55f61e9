//! Property tests of everything that reads untrusted input: the config parser, the v2
//! inference codec (JSON and binary tensors), checkpoint loading and the CSV and IDX loaders.
//!
//! The property throughout: no input makes them panic, and every input they refuse is refused
//! with an error whose message says what was wrong. Where the right answer is known (a valid
//! request, a bit flipped inside a checksummed file) the test checks that it is the answer.
//! Case counts are kept small enough for the whole file to run in seconds in a debug build.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Value, json};
use setpoint::api::v2codec::{self, CodecError, ModelIo};
use setpoint::config::{self, ConfigError};
use setpoint::data::{self, LoadOptions};
use setpoint::model::checkpoint::{Checkpoint, CheckpointError};

// ------------------------------------------------------------------ allocation accounting

/// Records the largest single allocation each thread asks for, so a test can check that a
/// small request cannot make the decoder reserve memory in proportion to a shape it declares.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_size(size: usize) {
    // `try_with`: the slot may already be gone while a thread is being torn down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only reads
// the requested sizes.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_size(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_size(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_size(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// `n` cases from a fixed seed, so that a CI run is reproducible, and no regression files
/// written beside the sources. The long mode, for a machine with time to spare:
/// `SETPOINT_PROPTEST_LONG=1` runs 20 times the cases from a random seed (proptest prints the
/// seed of a failure; `SETPOINT_PROPTEST_SEED=N` replays it).
fn cases(n: u32) -> ProptestConfig {
    let long = std::env::var("SETPOINT_PROPTEST_LONG").is_ok_and(|v| v == "1");
    let seed = std::env::var("SETPOINT_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let rng_seed = match (seed, long) {
        (Some(s), _) => proptest::test_runner::RngSeed::Fixed(s),
        (None, true) => proptest::test_runner::RngSeed::Random,
        (None, false) => proptest::test_runner::RngSeed::Fixed(0x5e7_9041),
    };
    ProptestConfig {
        cases: if long { n * 20 } else { n },
        failure_persistence: None,
        rng_seed,
        ..ProptestConfig::default()
    }
}

// ------------------------------------------------------------------ config

/// Every issue of a refused config has a key path and a message.
fn check_config_error(e: &ConfigError) {
    let text = e.to_string();
    assert!(!text.trim().is_empty(), "empty error for {e:?}");
    match e {
        ConfigError::Syntax { message, line, .. } => {
            assert!(!message.is_empty(), "{e:?}");
            assert!(*line >= 1, "{e:?}");
            assert!(text.contains("toml syntax error"), "{text}");
        }
        ConfigError::Invalid { errors, .. } => {
            assert!(!errors.is_empty(), "invalid without issues");
            for issue in errors {
                assert!(
                    !issue.path.is_empty(),
                    "issue without a key path: {issue:?}"
                );
                assert!(!issue.message.trim().is_empty(), "empty message: {issue:?}");
            }
        }
        ConfigError::Io { .. } => panic!("parse does no I/O: {e:?}"),
    }
}

const BASE_CONFIG: &str = r#"
listen = "127.0.0.1:8000"
state_dir = "state"
control_period_ms = 100
max_request_bytes = 65536

[device]
kind = "cpu"
cpu_threads = 2
require_gpu = false
share_mechanism = "auto"

[control]
reserve_frac = 0.05
leftover = "best-effort"

[[services]]
name = "mlp"
layers = [4, 8, 3]
seed = 1
max_queue = 16
[services.slo]
p99_ms = 25.0
window_ms = 1000
[services.batching]
max_batch_size = 8
max_queue_delay_ms = 1.0

[[jobs]]
name = "j"
data = "synthetic:blobs"
layers = [64, 16, 10]
lr = 0.001
batch_size = 32
epochs = 3
target_accuracy = 0.9
val_fraction = 0.2
seed = 1
deadline = "10m"
checkpoint_every_steps = 100
best_effort = false
weight_decay = 0.0
"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Int,
    /// A float; integers are accepted too.
    Num,
    Bool,
    IntArray,
}

/// Keys of the schema with the one kind of value each accepts.
const KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("state_dir", Kind::Str),
    ("control_period_ms", Kind::Int),
    ("auth_token", Kind::Str),
    ("max_request_bytes", Kind::Int),
    ("device.kind", Kind::Str),
    ("device.require_gpu", Kind::Bool),
    ("device.cpu_threads", Kind::Int),
    ("device.share_mechanism", Kind::Str),
    ("control.reserve_frac", Kind::Num),
    ("control.leftover", Kind::Str),
    ("control.decision_log", Kind::Str),
    ("services[0].name", Kind::Str),
    ("services[0].layers", Kind::IntArray),
    ("services[0].seed", Kind::Int),
    ("services[0].max_queue", Kind::Int),
    ("services[0].slo.p99_ms", Kind::Num),
    ("services[0].slo.window_ms", Kind::Int),
    ("services[0].batching.max_batch_size", Kind::Int),
    ("services[0].batching.max_queue_delay_ms", Kind::Num),
    ("jobs[0].name", Kind::Str),
    ("jobs[0].data", Kind::Str),
    ("jobs[0].layers", Kind::IntArray),
    ("jobs[0].lr", Kind::Num),
    ("jobs[0].batch_size", Kind::Int),
    ("jobs[0].epochs", Kind::Int),
    ("jobs[0].target_accuracy", Kind::Num),
    ("jobs[0].val_fraction", Kind::Num),
    ("jobs[0].seed", Kind::Int),
    ("jobs[0].checkpoint_every_steps", Kind::Int),
    ("jobs[0].best_effort", Kind::Bool),
    ("jobs[0].weight_decay", Kind::Num),
];

fn accepts(kind: Kind, v: &toml::Value) -> bool {
    matches!(
        (kind, v),
        (Kind::Str, toml::Value::String(_))
            | (Kind::Int, toml::Value::Integer(_))
            | (Kind::Num, toml::Value::Integer(_) | toml::Value::Float(_))
            | (Kind::Bool, toml::Value::Boolean(_))
            | (Kind::IntArray, toml::Value::Array(_))
    )
}

fn extreme_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(u32::MAX as i64 + 1),
        -10i64..100_000,
        any::<i64>(),
    ]
}

fn extreme_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        Just(1e300),
        -2.0f64..2.0,
        any::<f64>(),
    ]
}

/// A TOML value of any type, biased towards the extremes.
fn any_toml() -> impl Strategy<Value = toml::Value> {
    prop_oneof![
        extreme_int().prop_map(toml::Value::Integer),
        extreme_float().prop_map(toml::Value::Float),
        "[ -~]{0,12}".prop_map(toml::Value::String),
        prop_oneof![
            Just("".to_string()),
            Just("synthetic:moons".to_string()),
            Just("synthetic:blobs:size=-1".to_string()),
            Just("99999999999999h".to_string()),
            Just("0s".to_string()),
            Just("2026-13-45T99:00:00Z".to_string()),
            Just("../..".to_string()),
            Just("[::1]:0".to_string()),
            Just("\u{0}".to_string()),
        ]
        .prop_map(toml::Value::String),
        any::<bool>().prop_map(toml::Value::Boolean),
        proptest::collection::vec(extreme_int(), 0..4)
            .prop_map(|v| toml::Value::Array(v.into_iter().map(toml::Value::Integer).collect())),
        Just(toml::Value::Array(vec![toml::Value::String("x".into())])),
        Just(toml::Value::Table(toml::Table::new())),
    ]
}

/// Sets the value at a key path such as `services[0].slo.p99_ms`.
fn set_path(root: &mut toml::Table, path: &str, value: toml::Value) {
    let parts: Vec<&str> = path.split('.').collect();
    let mut table = root;
    for (i, part) in parts.iter().enumerate() {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (
                k,
                Some(rest.trim_end_matches(']').parse::<usize>().unwrap()),
            ),
            None => (*part, None),
        };
        if i + 1 == parts.len() {
            table.insert(key.to_string(), value);
            return;
        }
        let entry = table
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let next = match index {
            Some(n) => &mut entry.as_array_mut().unwrap()[n],
            None => entry,
        };
        table = next.as_table_mut().unwrap();
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn config_parser_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        if let Err(e) = config::parse(&text) {
            check_config_error(&e);
        }
    }

    #[test]
    fn config_parser_never_panics_on_toml_like_text(
        text in "[a-z_\\[\\]=\". 0-9\n{},:-]{0,160}"
    ) {
        if let Err(e) = config::parse(&text) {
            check_config_error(&e);
        }
    }
}

proptest! {
    #![proptest_config(cases(192))]

    /// A valid document with some keys replaced by values of any type, extremes included:
    /// never a panic, and every key given a type it never accepts is reported at its path.
    #[test]
    fn config_values_of_any_type_are_reported_at_their_key(
        changes in proptest::collection::vec((0..KEYS.len(), any_toml()), 1..5),
        unknown in proptest::option::of("[a-z]{1,8}"),
    ) {
        let mut doc: toml::Table = BASE_CONFIG.parse().unwrap();
        for (k, v) in &changes {
            set_path(&mut doc, KEYS[*k].0, v.clone());
        }
        if let Some(u) = &unknown {
            doc.insert(format!("zz_{u}"), toml::Value::Integer(1));
        }
        let text = toml::to_string(&doc).unwrap();
        match config::parse(&text) {
            Ok(_) => {
                prop_assert!(unknown.is_none(), "an unknown key was accepted:\n{text}");
                for (k, v) in &changes {
                    prop_assert!(accepts(KEYS[*k].1, v), "{} = {v} was accepted", KEYS[*k].0);
                }
            }
            Err(e) => {
                check_config_error(&e);
                let issues = e.issues();
                prop_assert!(!issues.is_empty(), "a serialised table is valid toml: {e}");
                // The last change to a key is the one in the document.
                let mut last = std::collections::BTreeMap::new();
                for (k, v) in &changes {
                    last.insert(KEYS[*k].0, (KEYS[*k].1, v));
                }
                for (path, (kind, v)) in last {
                    if !accepts(kind, v) {
                        prop_assert!(
                            issues.iter().any(|i| i.path == path && i.message.starts_with("expected")),
                            "{path} = {v} not reported as a wrong type: {e}"
                        );
                    }
                }
                if let Some(u) = &unknown {
                    let key = format!("zz_{u}");
                    prop_assert!(
                        issues.iter().any(|i| i.path == key && i.message.contains("unknown key")),
                        "unknown key {key} not reported: {e}"
                    );
                }
            }
        }
    }

    /// The jobs API validates JSON with the same rules: any JSON value for any key.
    #[test]
    fn job_json_of_any_shape_is_refused_with_its_key(
        key in prop_oneof![
            Just("name"), Just("data"), Just("layers"), Just("lr"), Just("epochs"),
            Just("deadline"), Just("class"), Just("batch_size"), Just("target_accuracy"),
            Just("momentum"), Just("seed"), Just("val_fraction"),
        ],
        value in prop_oneof![
            Just(json!(null)), Just(json!(u64::MAX)), Just(json!(-1)), Just(json!(1e308)),
            Just(json!("")), Just(json!([])), Just(json!({})), Just(json!([null])),
            Just(json!(true)), Just(json!("10m")), Just(json!([64, 0])), Just(json!(0.5)),
            any::<i64>().prop_map(|i| json!(i)),
            "[ -~]{0,8}".prop_map(|s| json!(s)),
        ],
    ) {
        let mut body = json!({
            "name": "j", "data": "synthetic:blobs", "layers": [64, 10], "class": "best-effort",
        });
        body[key] = value.clone();
        if let Err(issues) = config::parse_job_json(&body) {
            prop_assert!(!issues.is_empty());
            for i in &issues {
                prop_assert!(!i.message.trim().is_empty(), "{i:?}");
                prop_assert!(!i.path.is_empty(), "{i:?}");
            }
        }
    }
}

// ------------------------------------------------------------------ v2 codec

fn model() -> ModelIo {
    ModelIo {
        input_name: "input".into(),
        features: 3,
        output_name: "probabilities".into(),
        classes: 2,
    }
}

fn check_codec_error(e: &CodecError) {
    let m = e.to_string();
    assert!(!m.trim().is_empty(), "empty message for {e:?}");
    assert!(matches!(e.status(), 400 | 413 | 415), "{e:?}");
}

fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => Just(3i64),
        3 => 0i64..5,
        1 => Just(-1i64),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(1i64 << 40),
        1 => any::<i64>(),
    ]
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -4.0f32..4.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::MAX),
    ]
}

/// What the decoder must answer for a request built from these parts.
enum Expect {
    Datatype,
    Shape,
    NoRows,
    Count,
    NonFinite(usize),
    Rows(usize, bool),
}

fn expect(datatype: &str, shape: &[i64], values: &[f32]) -> Expect {
    if datatype != "FP32" {
        return Expect::Datatype;
    }
    let (rows, unbatched) = match shape {
        [3] => (1u128, true),
        [0, 3] => return Expect::NoRows,
        [n, 3] if *n > 0 => (*n as u128, false),
        _ => return Expect::Shape,
    };
    if rows * 3 != values.len() as u128 {
        return Expect::Count;
    }
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Expect::NonFinite(i),
        None => Expect::Rows(rows as usize, unbatched),
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn v2_decoder_never_panics_on_arbitrary_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        header_len in proptest::option::of(0usize..400),
    ) {
        if let Err(e) = v2codec::decode_infer(&body, header_len, &model()) {
            check_codec_error(&e);
        }
    }

    #[test]
    fn v2_decoder_never_panics_on_json_like_text(
        body in "[{}\\[\\]\",:a-z0-9 .e-]{0,200}",
    ) {
        if let Err(e) = v2codec::decode_infer(body.as_bytes(), None, &model()) {
            check_codec_error(&e);
        }
    }

    #[test]
    fn content_decoding_never_panics(
        encoding in prop_oneof![Just("gzip"), Just("deflate"), Just("br"), Just(""), Just("identity")],
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        if let Err(e) = v2codec::decode_content_encoding(Some(encoding), &body, 4096) {
            check_codec_error(&e);
        }
    }

    /// Requests built from any datatype, shape and values, sent as JSON or as binary tensors:
    /// the decoder accepts exactly the valid ones and names what is wrong with the others.
    #[test]
    fn v2_requests_are_accepted_or_refused_for_the_right_reason(
        datatype in prop_oneof![
            6 => Just("FP32"), 1 => Just("INT64"), 1 => Just("FP16"), 1 => Just("BYTES"),
            1 => Just("fp32"), 1 => Just(""),
        ],
        shape in proptest::collection::vec(dim(), 0..4),
        values in proptest::collection::vec(value(), 0..13),
        binary in any::<bool>(),
    ) {
        let mut input = json!({"name": "input", "datatype": datatype, "shape": shape});
        let (body, header_len) = if binary {
            input["parameters"] = json!({"binary_data_size": values.len() * 4});
            let mut body = serde_json::to_vec(&json!({"inputs": [input]})).unwrap();
            let n = body.len();
            for v in &values {
                body.extend_from_slice(&v.to_le_bytes());
            }
            (body, Some(n))
        } else {
            // JSON has no NaN or infinity: those become a number beyond f32's range.
            let json_values: Vec<Value> = values
                .iter()
                .map(|v| if v.is_finite() { json!(v) } else { json!(1e39) })
                .collect();
            input["data"] = json!(json_values);
            (serde_json::to_vec(&json!({"inputs": [input]})).unwrap(), None)
        };
        let (result, largest) =
            largest_allocation(|| v2codec::decode_infer(&body, header_len, &model()));
        // Memory is sized from the bytes sent, never from the shape declared.
        prop_assert!(largest <= 64 * body.len() + 4096, "allocated {largest} for {} bytes", body.len());
        let message = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        match (expect(datatype, &shape, &values), &result) {
            (Expect::Datatype, Err(CodecError::Datatype { .. })) => {
                prop_assert!(message.contains("expected datatype FP32"), "{message}");
            }
            (Expect::Shape, Err(CodecError::Shape { .. })) => {
                prop_assert!(message.contains("expected shape [-1, 3]"), "{message}");
            }
            (Expect::NoRows, Err(CodecError::NoRows { .. })) => {}
            (Expect::Count, Err(CodecError::ValueCount { .. })) if !binary => {
                prop_assert!(message.contains("needs"), "{message}");
            }
            (Expect::Count, Err(CodecError::BinarySize { .. })) if binary => {
                prop_assert!(message.contains("binary_data_size"), "{message}");
            }
            (Expect::NonFinite(i), Err(CodecError::NonFinite { index, .. })) => {
                prop_assert_eq!(*index, i);
                prop_assert!(message.contains("not a finite number"), "{message}");
            }
            (Expect::Rows(rows, unbatched), Ok(req)) => {
                prop_assert_eq!(req.rows, rows);
                prop_assert_eq!(req.unbatched, unbatched);
                prop_assert_eq!(&req.data, &values);
            }
            (_, r) => prop_assert!(false, "unexpected answer {r:?} for {datatype} {shape:?} {values:?} binary={binary}"),
        }
        if let Err(e) = &result {
            check_codec_error(e);
            prop_assert!(message.contains("\"input\""), "the input is not named: {message}");
        }
    }

    /// A binary request whose Inference-Header-Content-Length is off by a few bytes either
    /// way is refused, never misread.
    #[test]
    fn v2_wrong_header_length_is_refused(
        rows in 1usize..4,
        delta in prop_oneof![-6isize..0, 1isize..7],
    ) {
        let values: Vec<f32> = (0..rows * 3).map(|i| i as f32 * 0.5 - 1.0).collect();
        let header = json!({"inputs": [{
            "name": "input", "datatype": "FP32", "shape": [rows, 3],
            "parameters": {"binary_data_size": values.len() * 4},
        }]});
        let mut body = serde_json::to_vec(&header).unwrap();
        let n = body.len();
        for v in &values {
            body.extend_from_slice(&v.to_le_bytes());
        }
        prop_assert!(v2codec::decode_infer(&body, Some(n), &model()).is_ok());
        let wrong = n.checked_add_signed(delta).unwrap();
        let e = v2codec::decode_infer(&body, Some(wrong), &model()).unwrap_err();
        check_codec_error(&e);
    }

    /// Mutating bytes of a valid binary request never panics.
    #[test]
    fn v2_mutated_binary_requests_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let header = json!({"inputs": [{
            "name": "input", "datatype": "FP32", "shape": [2, 3],
            "parameters": {"binary_data_size": 24},
        }], "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]});
        let mut body = serde_json::to_vec(&header).unwrap();
        let n = body.len();
        body.extend_from_slice(&[0u8; 24]);
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if let Some(c) = cut {
            body.truncate(c.index(body.len()));
        }
        if let Err(e) = v2codec::decode_infer(&body, Some(n), &model()) {
            check_codec_error(&e);
        }
    }
}

// ------------------------------------------------------------------ checkpoints

/// A checkpoint with training state, from a few steps of a small run.
fn valid_checkpoint() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let data = data::load(
            "synthetic:blobs:size=60,classes=3,features=4",
            &LoadOptions::default(),
        )
        .unwrap();
        let mut spec = setpoint::train::TrainSpec::new(vec![4, 5, 3]);
        spec.batch_size = 8;
        let mut t =
            setpoint::train::Trainer::new(setpoint::device::CpuBackend::single(), spec, &data)
                .unwrap();
        for _ in 0..3 {
            t.step(&mut |_| {}).unwrap();
        }
        t.checkpoint().unwrap().to_bytes()
    })
}

const CKPT: &str = "job/checkpoint.ckpt";

fn check_checkpoint_error(e: &CheckpointError) -> String {
    let m = e.to_string();
    assert!(
        m.starts_with(&format!("checkpoint {CKPT}: ")),
        "the file is not named: {m}"
    );
    assert!(m.len() > format!("checkpoint {CKPT}: ").len() + 3, "{m}");
    m
}

/// Rewrites the length field and the checksum after an edit, so the edit reaches the parser.
fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    let total = (body.len() + 4) as u64;
    body[16..24].copy_from_slice(&total.to_le_bytes());
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// The checkpoint's header as JSON and the bytes after it (tensors, without the checksum).
fn split_checkpoint(bytes: &[u8]) -> (Value, Vec<u8>) {
    let h = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[24..24 + h]).unwrap();
    (header, bytes[24 + h..bytes.len() - 4].to_vec())
}

fn join_checkpoint(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = valid_checkpoint()[..24].to_vec();
    out[12..16].copy_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    reseal(out)
}

#[test]
fn the_valid_checkpoint_loads() {
    let c = Checkpoint::from_bytes(valid_checkpoint(), Path::new(CKPT)).unwrap();
    assert_eq!(c.params.layers, vec![4, 5, 3]);
    let (h, d) = split_checkpoint(valid_checkpoint());
    assert!(Checkpoint::from_bytes(&join_checkpoint(&h, &d), Path::new(CKPT)).is_ok());
}

proptest! {
    #![proptest_config(cases(192))]

    #[test]
    fn checkpoint_loading_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        magic in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if magic {
            let mut b = b"SETPOINT\x01\x00\x00\x00".to_vec();
            b.extend_from_slice(&bytes);
            bytes = b;
        }
        let e = Checkpoint::from_bytes(&bytes, Path::new(CKPT)).unwrap_err();
        check_checkpoint_error(&e);
    }

    /// Any truncation is reported as one, with the sizes.
    #[test]
    fn truncated_checkpoints_say_so(cut in any::<prop::sample::Index>()) {
        let full = valid_checkpoint();
        let len = cut.index(full.len());
        let e = Checkpoint::from_bytes(&full[..len], Path::new(CKPT)).unwrap_err();
        let m = check_checkpoint_error(&e);
        prop_assert!(matches!(e, CheckpointError::Truncated { .. }), "{len} bytes: {m}");
        prop_assert!(m.contains("truncated"), "{m}");
    }

    /// A flipped bit is caught: past the fixed fields by the checksum, in them by the field
    /// it lands in.
    #[test]
    fn bit_flips_are_caught_by_the_checksum_or_the_field_they_hit(
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = valid_checkpoint().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let e = Checkpoint::from_bytes(&bytes, Path::new(CKPT)).unwrap_err();
        let m = check_checkpoint_error(&e);
        match i {
            0..=7 => prop_assert!(matches!(e, CheckpointError::BadMagic { .. }), "{m}"),
            8..=11 => prop_assert!(matches!(e, CheckpointError::Version { .. }), "{m}"),
            16..=23 => prop_assert!(
                matches!(e, CheckpointError::Truncated { .. } | CheckpointError::Malformed { .. }),
                "{m}"
            ),
            _ => {
                prop_assert!(matches!(e, CheckpointError::Checksum { .. }), "byte {i}: {m}");
                prop_assert!(m.contains("checksum mismatch"), "{m}");
            }
        }
    }

    /// Headers that pass the checksum but describe something inconsistent: refused with the
    /// reason, never a panic or a huge allocation.
    #[test]
    fn inconsistent_headers_with_a_valid_checksum_are_refused(
        layers in proptest::option::of(proptest::collection::vec(
            prop_oneof![Just(0usize), 1usize..6, Just(1 << 20), Just(usize::MAX)], 0..5)),
        shape_edit in proptest::option::of((any::<prop::sample::Index>(),
            proptest::collection::vec(prop_oneof![Just(0usize), 1usize..30, Just(usize::MAX), Just(1 << 40)], 0..3))),
        drop_tensor in proptest::option::of(any::<prop::sample::Index>()),
        optimizer in proptest::option::of(prop_oneof![Just("sgd"), Just("adam"), Just("lion"), Just("")]),
        data_cut in 0usize..16,
    ) {
        let (mut header, mut data) = split_checkpoint(valid_checkpoint());
        if let Some(l) = &layers {
            header["layers"] = json!(l);
        }
        let tensors = header["tensors"].as_array_mut().unwrap();
        if let Some((at, shape)) = &shape_edit {
            let i = at.index(tensors.len());
            tensors[i]["shape"] = json!(shape);
        }
        if let Some(at) = drop_tensor {
            let i = at.index(tensors.len());
            tensors.remove(i);
        }
        if let Some(o) = optimizer {
            header["training"]["config"]["optimizer"] = json!(o);
        }
        data.truncate(data.len().saturating_sub(data_cut * 4));
        let unchanged = header == split_checkpoint(valid_checkpoint()).0 && data_cut == 0;
        let bytes = join_checkpoint(&header, &data);
        let (result, largest) =
            largest_allocation(|| Checkpoint::from_bytes(&bytes, Path::new(CKPT)));
        prop_assert!(largest <= 4 * bytes.len() + 4096, "allocated {largest} for {} bytes", bytes.len());
        match result {
            Ok(_) => prop_assert!(unchanged, "an inconsistent checkpoint loaded: {header}"),
            Err(e) => {
                prop_assert!(!unchanged, "the valid checkpoint was refused: {e}");
                check_checkpoint_error(&e);
            }
        }
    }
}

// ------------------------------------------------------------------ data loaders

fn check_data_error(e: &data::DataError, path: &Path) {
    let m = e.to_string();
    assert!(
        m.starts_with(&path.display().to_string()),
        "the file is not named: {m}"
    );
    assert!(m.len() > path.display().to_string().len() + 3, "{m}");
}

fn load_file(path: &Path, bytes: &[u8]) -> Result<data::Dataset, data::DataError> {
    std::fs::write(path, bytes).unwrap();
    data::load(path.to_str().unwrap(), &LoadOptions::default())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn csv_rows() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (proptest::collection::vec(-100.0f32..100.0, 3), 0u32..4),
        1..12,
    )
    .prop_map(|rows| {
        let mut s = String::from("a,b,c,label\n");
        for (x, y) in rows {
            s.push_str(&format!("{},{},{},{y}\n", x[0], x[1], x[2]));
        }
        s
    })
}

/// An IDX file: `ty` value type, `dims`, then `payload` bytes.
fn idx_bytes(ty: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn csv_loader_never_panics_on_arbitrary_bytes(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "[0-9.,\\n e+-aNinf\"]{0,120}".prop_map(String::into_bytes),
        ],
        gz in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        // Starting with two zero bytes would make it an IDX file; that is the other test.
        let mut bytes = bytes;
        if bytes.starts_with(&[0, 0]) {
            bytes[0] = b'1';
        }
        let bytes = if gz { gzip(&bytes) } else { bytes };
        match load_file(&path, &bytes) {
            Ok(d) => prop_assert!(d.x.iter().all(|v| v.is_finite())),
            Err(e) => {
                check_data_error(&e, &path);
                prop_assert!(e.is_input(), "bad content is an input error: {e}");
            }
        }
    }

    /// A CSV file cut anywhere loads its whole rows or says which line is incomplete; a
    /// gzipped one cut anywhere is refused as truncated.
    #[test]
    fn truncated_csv_files_are_refused_or_lose_only_whole_lines(
        text in csv_rows(),
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        let full = load_file(&path, text.as_bytes()).unwrap();
        let len = cut.index(text.len());
        match load_file(&path, &text.as_bytes()[..len]) {
            Ok(d) => prop_assert!(d.rows() <= full.rows() && d.features == 3),
            Err(e) => check_data_error(&e, &path),
        }
        let gz = gzip(text.as_bytes());
        // At least the two magic bytes, or it is not recognisably gzip at all.
        let gz_len = 2 + cut.index(gz.len() - 2);
        let e = load_file(&path, &gz[..gz_len]).unwrap_err();
        check_data_error(&e, &path);
        prop_assert!(e.is_input(), "{e}");
        let m = e.to_string();
        prop_assert!(m.contains("truncated gzip data"), "{m}");
    }

    /// A bit flipped in a gzipped CSV file's compressed data or trailer is reported as
    /// damage to the gzip stream, even when the garbled text it decodes to fails first.
    #[test]
    fn corrupt_gzip_is_reported_as_such(
        text in csv_rows(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv.gz");
        let mut gz = gzip(text.as_bytes());
        // Past the 10-byte member header, whose time and OS fields nothing checks.
        let i = 10 + at.index(gz.len() - 10);
        gz[i] ^= 1 << bit;
        match load_file(&path, &gz) {
            // A flip in the padding after the last block changes nothing.
            Ok(d) => prop_assert_eq!(d, load_file(&path, &gzip(text.as_bytes())).unwrap()),
            Err(e) => {
                check_data_error(&e, &path);
                prop_assert!(e.is_input(), "{e}");
                prop_assert!(e.to_string().contains("gzip data"), "{e}");
            }
        }
    }

    #[test]
    fn idx_loader_never_panics_on_arbitrary_headers(
        ty in prop_oneof![Just(0x08u8), Just(0x09), Just(0x0B), Just(0x0C), Just(0x0D), Just(0x0E), any::<u8>()],
        dims in proptest::collection::vec(
            prop_oneof![3 => Just(0u32), 2 => 1u32..5, 2 => Just(u32::MAX), 1 => Just(1 << 16), 1 => any::<u32>()], 0..6),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-images-idx3-ubyte");
        let opts = LoadOptions { label: data::LabelColumn::None, labels_path: None };
        std::fs::write(&path, idx_bytes(ty, &dims, &payload)).unwrap();
        match data::load(path.to_str().unwrap(), &opts) {
            Ok(d) => prop_assert!(d.rows() > 0 && d.features > 0),
            Err(e) => check_data_error(&e, &path),
        }
    }

}

/// A file with no rows whose other dimensions overflow when multiplied (this used to panic).
#[test]
fn idx_dimensions_that_overflow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(
        &path,
        idx_bytes(0x08, &[0, u32::MAX, u32::MAX, u32::MAX], &[]),
    )
    .unwrap();
    let opts = LoadOptions {
        label: data::LabelColumn::None,
        labels_path: None,
    };
    let e = data::load(path.to_str().unwrap(), &opts).unwrap_err();
    assert!(e.to_string().contains("are too large"), "{e}");
}

proptest! {
    #![proptest_config(cases(96))]

    /// An images file or a labels file cut anywhere is refused as truncated.
    #[test]
    fn truncated_idx_files_say_so(
        rows in 1u32..6,
        side in 1u32..4,
        cut_images in proptest::option::of(any::<prop::sample::Index>()),
        cut_labels in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("train-images-idx3-ubyte");
        let labels = dir.path().join("train-labels-idx1-ubyte");
        let pixels: Vec<u8> = (0..rows * side * side).map(|i| (i * 7) as u8).collect();
        let mut img = idx_bytes(0x08, &[rows, side, side], &pixels);
        let ys: Vec<u8> = (0..rows).map(|i| (i % 3) as u8).collect();
        let mut lab = idx_bytes(0x08, &[rows], &ys);
        if let Some(c) = cut_images {
            img.truncate(c.index(img.len()));
        }
        if let Some(c) = cut_labels {
            lab.truncate(c.index(lab.len()));
        }
        std::fs::write(&images, &img).unwrap();
        std::fs::write(&labels, &lab).unwrap();
        let result = data::load(images.to_str().unwrap(), &LoadOptions::default());
        match (cut_images.is_some() || cut_labels.is_some(), result) {
            (false, Ok(d)) => prop_assert_eq!(d.rows(), rows as usize),
            (true, Err(e)) => {
                let m = e.to_string();
                prop_assert!(e.is_input(), "{m}");
                prop_assert!(m.contains("truncated"), "{m}");
            }
            (_, r) => prop_assert!(false, "unexpected {r:?}"),
        }
    }
}
