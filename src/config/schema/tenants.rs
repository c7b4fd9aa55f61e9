//! The tenants' sections: `[[services]]` and `[[jobs]]`, their names, layers, SLOs,
//! batching, data specs and deadlines.

use super::*;
use crate::config::ReplicaSpec;
use crate::device::Precision;

/// Service and job names appear in URLs and file names.
fn name(w: &mut Walker, t: &Tbl<'_>) -> String {
    let Some(s) = w.required_string(t, "name") else {
        return String::new();
    };
    let charset_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !charset_ok || s.len() > MAX_NAME_LEN {
        w.issue(
            t.key("name"),
            format!("must be 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 _ . -, got {s:?}"),
        );
    } else if s == "." || s == ".." {
        w.issue(
            t.key("name"),
            format!("must not be {s:?} (it names a directory)"),
        );
    }
    s.to_owned()
}

/// Reports every name that repeats an earlier one. Empty names were reported already.
pub(in crate::config) fn check_unique<'a>(
    w: &mut Walker,
    list: &str,
    what: &str,
    names: impl Iterator<Item = &'a String>,
) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            continue;
        }
        if let Some(j) = first.get(n.as_str()) {
            w.issue(
                format!("{list}[{i}].name"),
                format!("duplicate {what} name {n:?} (also {list}[{j}])"),
            );
        } else {
            first.insert(n, i);
        }
    }
}

fn layers(w: &mut Walker, t: &Tbl<'_>) -> Field<Vec<usize>> {
    use crate::model::{MAX_LAYERS, MAX_WIDTH};
    match w.int_array::<usize>(t, "layers", 1, Some(MAX_WIDTH as i64)) {
        Field::Ok(v) if v.len() < 2 || v.len() > MAX_LAYERS => {
            w.issue(
                t.key("layers"),
                format!(
                    "must have 2 ..= {MAX_LAYERS} widths (input and output included), got {}",
                    v.len()
                ),
            );
            Field::Bad
        }
        f => f,
    }
}

/// Reads one `[[services]]` entry, reporting what is wrong with it.
pub(in crate::config) fn service(
    w: &mut Walker,
    t: &Tbl<'_>,
    control_period: Option<u64>,
) -> ServiceConfig {
    w.check_keys(t, SERVICE_KEYS);
    let name = name(w, t);
    let layers = layers(w, t);
    let checkpoint = w.opt_string(t, "checkpoint");
    if layers.is_absent() && checkpoint.is_absent() {
        w.issue(
            t.key("layers"),
            "missing required key (required unless checkpoint is set)",
        );
    }
    let seed = w.int::<u64>(t, "seed", 0, None).or(defaults::SEED);
    let warmup_data = w.opt_string(t, "warmup_data");
    if let Field::Ok(spec) = warmup_data {
        check_data_spec(w, t, "warmup_data", spec);
    }
    if let (Field::Ok(_), Field::Ok(_)) = (warmup_data, checkpoint) {
        w.issue(
            t.key("warmup_data"),
            "only used when there is no checkpoint; remove warmup_data or checkpoint",
        );
    }
    let max_queue = w
        .int::<usize>(t, "max_queue", 1, Some(1_000_000))
        .or(defaults::MAX_QUEUE);

    let (p99_ms, window_ms) = match w.table(t, "slo") {
        Field::Ok(s) => slo(w, &s, control_period),
        Field::Absent => {
            w.missing(format!("{}.p99_ms", t.key("slo")));
            (None, None)
        }
        Field::Bad => (None, None),
    };
    let timeout_ms = timeout(w, t, p99_ms);
    let precision = precision(w, t);
    let replicas = replicas(w, t);
    let empty = Table::new();
    let (max_batch_size, max_queue_delay_ms) = match w.section(t, "batching", &empty) {
        Some(b) => batching_section(w, &b, p99_ms),
        None => (None, None),
    };

    ServiceConfig {
        name,
        layers: layers.given(),
        checkpoint: checkpoint.given().map(PathBuf::from),
        seed: seed.unwrap_or(defaults::SEED),
        warmup_data: warmup_data.given().map(str::to_owned),
        max_queue: max_queue.unwrap_or(defaults::MAX_QUEUE),
        timeout_ms: timeout_ms.unwrap_or(0.0),
        slo: SloConfig {
            p99_ms: p99_ms.unwrap_or(0.0),
            window_ms: window_ms.unwrap_or(defaults::WINDOW_MS),
        },
        batching: BatchingConfig {
            max_batch_size: max_batch_size.unwrap_or(defaults::MAX_BATCH_SIZE),
            max_queue_delay_ms: max_queue_delay_ms.unwrap_or(defaults::MAX_QUEUE_DELAY_MS),
        },
        precision,
        replicas,
    }
}

/// Most entries a service's `replicas` may have.
const MAX_REPLICAS: usize = 16;

/// A service's `replicas`: where its replicas run; empty (the default placement) when absent
/// or wrong (reported).
fn replicas(w: &mut Walker, t: &Tbl<'_>) -> Vec<ReplicaSpec> {
    let key = t.key("replicas");
    let expected = format!(
        "an array of 1 to {MAX_REPLICAS} devices, each {}",
        ReplicaSpec::ACCEPTED
    );
    let Field::Ok(items) = w.array(t, "replicas", &expected) else {
        return Vec::new();
    };
    if items.is_empty() || items.len() > MAX_REPLICAS {
        w.issue(
            key,
            format!("expected {expected}, got {} entries", items.len()),
        );
        return Vec::new();
    }
    let mut out: Vec<ReplicaSpec> = Vec::with_capacity(items.len());
    let mut bad = false;
    for (i, v) in items.iter().enumerate() {
        let spec = v.as_str().and_then(ReplicaSpec::parse);
        match spec {
            Some(s) if out.contains(&s) => {
                w.issue(format!("{key}[{i}]"), format!("{s} is named twice"));
                bad = true;
            }
            Some(s) => out.push(s),
            None => {
                w.issue(
                    format!("{key}[{i}]"),
                    format!("expected {}, got {v}", ReplicaSpec::ACCEPTED),
                );
                bad = true;
            }
        }
    }
    if bad { Vec::new() } else { out }
}

/// A service's `timeout_ms`: at least its SLO's p99, by default a multiple of it; `None`
/// when wrong (reported) or when there is no p99 to default from.
fn timeout(w: &mut Walker, t: &Tbl<'_>, p99_ms: Option<f64>) -> Option<f64> {
    let timeout_field = w.float(
        t,
        "timeout_ms",
        Bound::Excl(0.0),
        Bound::Incl(MAX_TIMEOUT_MS),
    );
    match (timeout_field, p99_ms) {
        // Shorter than the SLO would cut off requests the SLO allows.
        (Field::Ok(v), Some(p99)) if v < p99 => {
            w.issue(
                t.key("timeout_ms"),
                format!("must be >= slo.p99_ms ({p99}), got {v}"),
            );
            None
        }
        (Field::Ok(v), _) => Some(v),
        // p99_ms <= 60000, so ten of it stays within the ceiling.
        (Field::Absent, p99) => p99.map(|p| p * defaults::TIMEOUT_SLO_MULTIPLE),
        (Field::Bad, _) => None,
    }
}

fn slo(w: &mut Walker, t: &Tbl<'_>, control_period: Option<u64>) -> (Option<f64>, Option<u64>) {
    w.check_keys(t, SLO_KEYS);
    let p99 = match w.float(t, "p99_ms", Bound::Excl(0.0), Bound::Incl(60_000.0)) {
        Field::Absent => {
            w.missing(t.key("p99_ms"));
            None
        }
        f => f.given(),
    };
    let window_field = w.int::<u64>(t, "window_ms", 0, Some(MAX_WINDOW_MS));
    let explicit = !window_field.is_absent();
    let window = window_field.or(defaults::WINDOW_MS);
    let floor = control_period.unwrap_or(MIN_CONTROL_PERIOD_MS as u64);
    let window = match window {
        Some(v) if v < floor => {
            let by_default = if explicit { "" } else { " (the default)" };
            let m = match control_period {
                Some(cp) => format!("must be >= control_period_ms ({cp}), got {v}{by_default}"),
                None => format!("must be >= {floor}, got {v}{by_default}"),
            };
            w.issue(t.key("window_ms"), m);
            None
        }
        other => other,
    };
    (p99, window)
}

fn batching_section(
    w: &mut Walker,
    t: &Tbl<'_>,
    p99_ms: Option<f64>,
) -> (Option<usize>, Option<f64>) {
    w.check_keys(t, BATCHING_KEYS);
    let size = w
        .int::<usize>(t, "max_batch_size", 1, Some(4096))
        .or(defaults::MAX_BATCH_SIZE);
    let delay_field = w.float(t, "max_queue_delay_ms", Bound::Incl(0.0), Bound::None);
    let explicit = !delay_field.is_absent();
    let delay = match (delay_field.or(defaults::MAX_QUEUE_DELAY_MS), p99_ms) {
        (Some(d), Some(p99)) if d >= p99 => {
            let by_default = if explicit { "" } else { " (the default)" };
            w.issue(
                t.key("max_queue_delay_ms"),
                format!("must be < slo.p99_ms ({p99}), got {d}{by_default}"),
            );
            None
        }
        (d, _) => d,
    };
    (size, delay)
}

/// Reports a data spec whose syntax the loaders would refuse (a file is only opened later).
fn check_data_spec(w: &mut Walker, t: &Tbl<'_>, key: &str, spec: &str) {
    if let Err(e) = crate::data::check_spec(spec) {
        w.issue(t.key(key), e.to_string());
    }
}

/// Reads one `[[jobs]]` entry, reporting what is wrong with it.
pub(in crate::config) fn job(w: &mut Walker, t: &Tbl<'_>) -> JobConfig {
    w.check_keys(t, JOB_KEYS);
    let name = name(w, t);
    let data = w.required_string(t, "data").unwrap_or_default().to_owned();
    if !data.is_empty() {
        check_data_spec(w, t, "data", &data);
    }
    let layers = match layers(w, t) {
        Field::Absent => {
            w.missing(t.key("layers"));
            None
        }
        f => f.given(),
    };
    let (opt, lr, momentum) = optimizer(w, t);
    let weight_decay = w
        .float(t, "weight_decay", Bound::Incl(0.0), Bound::None)
        .or(defaults::WEIGHT_DECAY);
    let batch_size = w
        .int::<usize>(t, "batch_size", 1, Some(65_536))
        .or(defaults::BATCH_SIZE);
    let epochs = w
        .int::<u32>(t, "epochs", 1, Some(100_000))
        .or(defaults::EPOCHS);
    let target = w.float(t, "target_accuracy", Bound::Excl(0.0), Bound::Incl(1.0));
    let val_field = w.float(t, "val_fraction", Bound::Incl(0.0), Bound::Excl(1.0));
    let mut val_fraction = val_field.or(defaults::VAL_FRACTION);
    if val_fraction == Some(0.0) && target.given().is_some() {
        w.issue(
            t.key("val_fraction"),
            "must be > 0 when target_accuracy is set (accuracy is measured on the held-out fraction), got 0",
        );
        val_fraction = None;
    }
    let seed = w.int::<u64>(t, "seed", 0, None).or(defaults::SEED);
    let deadline = deadline(w, t);
    let checkpoint_every = w
        .int::<u64>(t, "checkpoint_every_steps", 1, Some(10_000_000))
        .or(defaults::CHECKPOINT_EVERY_STEPS);
    let best_effort = best_effort(w, t, &deadline);
    let precision = precision(w, t);

    let opt = opt.unwrap_or(OptimizerKind::Adam);
    JobConfig {
        name,
        data,
        layers: layers.unwrap_or_default(),
        optimizer: opt,
        lr: lr.or(opt.default_lr()).unwrap_or(opt.default_lr()),
        momentum: momentum
            .or(defaults::MOMENTUM)
            .unwrap_or(defaults::MOMENTUM),
        weight_decay: weight_decay.unwrap_or(defaults::WEIGHT_DECAY),
        batch_size: batch_size.unwrap_or(defaults::BATCH_SIZE),
        epochs: epochs.unwrap_or(defaults::EPOCHS),
        target_accuracy: target.given(),
        val_fraction: val_fraction.unwrap_or(defaults::VAL_FRACTION),
        seed: seed.unwrap_or(defaults::SEED),
        deadline: deadline.given(),
        checkpoint_every_steps: checkpoint_every.unwrap_or(defaults::CHECKPOINT_EVERY_STEPS),
        best_effort,
        precision,
    }
}

/// A tenant's `precision`: `"bf16"` or `"f32"`; none (the device's default) when absent.
fn precision(w: &mut Walker, t: &Tbl<'_>) -> Option<Precision> {
    w.choice(
        t,
        "precision",
        &[("bf16", Precision::Bf16), ("f32", Precision::F32)],
    )
    .given()
}

/// A job's `optimizer` (`None` when wrong), `lr` and `momentum`, reporting a momentum given
/// to Adam.
fn optimizer(w: &mut Walker, t: &Tbl<'_>) -> (Option<OptimizerKind>, Field<f64>, Field<f64>) {
    let optimizer = w.choice(
        t,
        "optimizer",
        &[("adam", OptimizerKind::Adam), ("sgd", OptimizerKind::Sgd)],
    );
    let opt = optimizer.or(OptimizerKind::Adam);
    let lr = w.float(t, "lr", Bound::Excl(0.0), Bound::Incl(10.0));
    let momentum = w.float(t, "momentum", Bound::Incl(0.0), Bound::Excl(1.0));
    if opt == Some(OptimizerKind::Adam) && !momentum.is_absent() {
        w.issue(
            t.key("momentum"),
            "only used with optimizer = \"sgd\"; remove it or set optimizer = \"sgd\"",
        );
    }
    (opt, lr, momentum)
}

/// Whether a job is best-effort: as `best_effort` says, and always without a deadline
/// (`best_effort = false` without one is reported).
fn best_effort(w: &mut Walker, t: &Tbl<'_>, deadline: &Field<Deadline>) -> bool {
    match (w.boolean(t, "best_effort"), deadline) {
        (Field::Ok(false), Field::Absent) => {
            w.issue(
                t.key("best_effort"),
                "false needs a deadline (a job without one is best-effort); set deadline or remove best_effort",
            );
            true
        }
        (f, d) => f.or(false).unwrap_or(false) || d.is_absent(),
    }
}

fn deadline(w: &mut Walker, t: &Tbl<'_>) -> Field<Deadline> {
    let path = t.key("deadline");
    let parsed = match t.get("deadline") {
        None => return Field::Absent,
        Some(Value::String(s)) => s.parse::<Deadline>().map_err(|e| e.to_string()),
        // An unquoted TOML datetime; only a full one with an offset names an instant.
        Some(Value::Datetime(dt)) if dt.date.is_some() && dt.time.is_some() => {
            if dt.offset.is_none() {
                Err(format!(
                    "timestamp {dt} has no UTC offset; add Z for UTC or +hh:mm, as in 2026-11-28T14:30:00Z"
                ))
            } else {
                dt.to_string()
                    .parse::<Deadline>()
                    .map_err(|e| e.to_string())
            }
        }
        Some(Value::Datetime(dt)) => Err(format!(
            "expected a full timestamp with date, time and offset like 2026-11-28T14:30:00Z, got {dt}"
        )),
        Some(v) => Err(format!(
            "expected a duration like \"10m\" or an RFC 3339 timestamp like \"2026-11-28T14:30:00Z\", got {}",
            kind(v)
        )),
    };
    match parsed {
        Ok(d) => Field::Ok(d),
        Err(m) => {
            w.issue(path, m);
            Field::Bad
        }
    }
}
