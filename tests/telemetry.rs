//! GPU telemetry without a GPU: the sampler over scripted sources, the Prometheus output,
//! the devices report, NVML's absence, and the nvidia-smi parser, recorder and correlation
//! against fixtures whose expected figures were worked out by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use setpoint::telemetry::{
    AtEnd, EnergyMethod, GpuSample, GpuStep, NvmlSource, Phase, ProcessSample, Sampler, ScriptStep,
    ScriptedSource, SmiClock, SmiRecorder, TelemetryError, TelemetrySource, correlate,
    correlate_with_tolerance, devices_report, parse_smi_csv, render_metrics,
};

const MIB: u64 = 1024 * 1024;
/// 2026/11/28 21:03:04 UTC, the first timestamp of the nvidia-smi fixture.
const T0: f64 = 1_795_899_784.0;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/telemetry")
        .join(name)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[track_caller]
fn assert_close(got: Option<f64>, want: f64, tol: f64) {
    let g = got.unwrap_or_else(|| panic!("expected {want}, got None"));
    assert!(close(g, want, tol), "expected {want}, got {g}");
}

fn gpu(index: u32, util: f64) -> GpuStep {
    GpuStep {
        index,
        util_gpu_pct: Some(util),
        ..Default::default()
    }
}

fn proc(pid: u32, sm: f64) -> ProcessSample {
    ProcessSample {
        pid,
        sm_util_pct: Some(sm),
        mem_util_pct: None,
        used_mem_bytes: None,
        own: false,
    }
}

// ---------------------------------------------------------------- sampler

#[test]
fn failed_read_is_counted_and_the_previous_sample_stays_current() {
    let src = ScriptedSource::new(vec![
        ScriptStep::Gpus(vec![gpu(0, 10.0), gpu(1, 11.0)]),
        ScriptStep::Error("NVML: GPU is lost".into()),
        ScriptStep::Gpus(vec![gpu(1, 31.0), gpu(0, 30.0)]),
        ScriptStep::Gpus(vec![gpu(0, 40.0), gpu(1, 41.0)]),
    ])
    .at_end(AtEnd::Fail);
    let mut s = Sampler::new(Box::new(src), 2);

    let first: Vec<_> = s.poll().iter().map(|g| g.util_gpu_pct).collect();
    assert_eq!(first, [Some(10.0), Some(11.0)]);
    assert_eq!(s.failed_reads(), 0);

    // The failed read leaves the samples as they were.
    let after_fail: Vec<_> = s.poll().iter().map(|g| g.util_gpu_pct).collect();
    assert_eq!(after_fail, [Some(10.0), Some(11.0)]);
    assert_eq!(s.failed_reads(), 1);
    assert_eq!(s.consecutive_failures(), 1);
    assert_eq!(
        s.last_error(),
        Some("telemetry read failed: NVML: GPU is lost")
    );

    // A good read replaces them, ordered by index whatever the source's order.
    let third: Vec<_> = s.poll().iter().map(|g| (g.index, g.util_gpu_pct)).collect();
    assert_eq!(third, [(0, Some(30.0)), (1, Some(31.0))]);
    assert_eq!(s.consecutive_failures(), 0);

    s.poll();
    // The ring keeps the last two samples of each GPU.
    let h: Vec<_> = s.history(0).map(|g| g.util_gpu_pct).collect();
    assert_eq!(h, [Some(30.0), Some(40.0)]);
    assert_eq!(s.all_history().len(), 4);

    // Past the script's end every read fails; still never fatal, still counted.
    for _ in 0..3 {
        assert_eq!(s.poll()[0].util_gpu_pct, Some(40.0));
    }
    assert_eq!(s.failed_reads(), 4);
    assert_eq!(s.reads(), 7);
    assert_eq!(s.last_error(), Some("telemetry script ended after 4 steps"));
    assert_eq!(s.current(0).map(|g| g.util_gpu_pct), Some(Some(40.0)));
}

#[test]
fn foreign_load_comes_from_other_processes() {
    let me = std::process::id();
    let src = ScriptedSource::new(vec![ScriptStep::Gpus(vec![
        GpuStep {
            index: 0,
            mem_used_bytes: Some(10 * MIB),
            mem_total_bytes: Some(80 * MIB),
            throttle_reasons: vec!["sw_power_cap".into(), "hw_slowdown".into()],
            processes: Some(vec![proc(me, 30.0), proc(me + 1, 25.0), proc(me + 2, 15.0)]),
            ..Default::default()
        },
        // Per-process statistics unavailable: foreign load unknown, read as 0.
        GpuStep {
            index: 1,
            ..Default::default()
        },
        // Others together above 100 %: clamped.
        GpuStep {
            index: 2,
            processes: Some(vec![proc(me + 1, 70.0), proc(me + 2, 60.0)]),
            ..Default::default()
        },
        // Only our own process.
        GpuStep {
            index: 3,
            processes: Some(vec![proc(me, 80.0)]),
            ..Default::default()
        },
    ])]);
    let mut s = Sampler::new(Box::new(src), 4);
    let now = s.poll().to_vec();
    assert_eq!(now[0].own_util_pct, Some(30.0));
    assert_eq!(now[0].foreign_util_pct, Some(40.0));
    assert_close(Some(s.foreign_load(0)), 0.40, 1e-12);
    assert_eq!(now[1].foreign_util_pct, None);
    assert_eq!(s.foreign_load(1), 0.0);
    assert_eq!(s.foreign_load(2), 1.0);
    assert_eq!(s.foreign_load(3), 0.0);
    assert_eq!(now[3].own_util_pct, Some(80.0));
    // A GPU that is not there has no load, no memory, no throttling.
    assert_eq!(s.foreign_load(9), 0.0);
    assert_eq!(s.memory_free_bytes(9), None);
    assert!(s.throttling(9).is_empty());

    assert_eq!(s.memory_free_bytes(0), Some(70 * MIB));
    assert_eq!(s.memory_free_bytes(1), None);
    assert_eq!(s.throttling(0), ["sw_power_cap", "hw_slowdown"]);
}

#[test]
fn script_file_drives_the_sampler() {
    let src = ScriptedSource::from_file(&fixture("script.toml")).unwrap();
    assert!(src.describe().contains("script.toml"), "{}", src.describe());
    let mut s = Sampler::new(Box::new(src), 8);
    let a = s.poll()[0].clone();
    assert_eq!(a.name, "NVIDIA H200");
    assert_eq!(a.uuid, "GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
    assert_eq!(a.sm_clock_hz, Some(1.98e9));
    // own_pid = 4242 in the script: 30 % own, 20 % foreign.
    assert_eq!(a.own_util_pct, Some(30.0));
    assert_close(Some(s.foreign_load(0)), 0.2, 1e-12);
    assert_eq!(
        s.memory_free_bytes(0),
        Some(150_754_820_096 - 1_073_741_824)
    );

    s.poll();
    assert_eq!(s.failed_reads(), 1);
    assert_eq!(s.latest()[0].util_gpu_pct, Some(50.0));

    s.poll();
    assert_eq!(s.throttling(0), ["sw_power_cap"]);
    assert_eq!(s.foreign_load(0), 0.0);
    // repeat_last: the last step again.
    s.poll();
    assert_eq!(s.failed_reads(), 1);
    assert_eq!(s.latest()[0].power_w, Some(700.0));
    assert_eq!(s.history(0).count(), 3);
}

#[test]
fn script_file_errors_name_the_file() {
    let e = ScriptedSource::from_file(Path::new("/nonexistent/telemetry.toml")).unwrap_err();
    assert!(matches!(e, TelemetryError::Script { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("telemetry script /nonexistent/telemetry.toml: ")
    );
}

// ---------------------------------------------------------------- metrics

/// Parses one exposition line `name{k="v",…} value` (label values unescaped).
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let (head, value) = line.rsplit_once(' ').expect("a value");
    let value: f64 = value.parse().expect("a number");
    let Some((name, rest)) = head.split_once('{') else {
        return (head.to_string(), BTreeMap::new(), value);
    };
    let body = rest.strip_suffix('}').expect("closing brace");
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {key} opens with a quote");
        let mut v = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("escape") {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.insert(key, v);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name.to_string(), labels, value)
}

fn metric_samples() -> Vec<GpuSample> {
    let mut a = GpuSample::empty(0, "GPU-aaaa", "NVIDIA H200", T0);
    a.util_gpu_pct = Some(45.0);
    a.mem_used_bytes = Some(1234 * MIB);
    a.mem_total_bytes = Some(143_771 * MIB);
    a.power_w = Some(250.5);
    a.energy_j = Some(98_765.25);
    a.sm_clock_hz = Some(1.98e9);
    a.temperature_c = Some(41.0);
    a.own_util_pct = Some(20.0);
    a.foreign_util_pct = Some(25.0);
    a.throttle_reasons = vec!["sw_power_cap".into()];
    // An awkward UUID, to exercise label escaping; power unknown.
    let mut b = GpuSample::empty(1, "GPU-\"b\"\\x\ny", "odd", T0);
    b.util_gpu_pct = Some(100.0);
    b.mem_used_bytes = Some(0);
    vec![a, b]
}

#[test]
fn metrics_carry_names_labels_and_values() {
    let mut out = String::new();
    render_metrics(&metric_samples(), 3, &mut out);

    let mut help = BTreeMap::new();
    let mut kind = BTreeMap::new();
    let mut series = Vec::new();
    for line in out.lines() {
        if let Some(r) = line.strip_prefix("# HELP ") {
            let (n, h) = r.split_once(' ').unwrap();
            help.insert(n.to_string(), h.to_string());
        } else if let Some(r) = line.strip_prefix("# TYPE ") {
            let (n, t) = r.split_once(' ').unwrap();
            kind.insert(n.to_string(), t.to_string());
        } else {
            series.push(parse_sample(line));
        }
    }
    for (name, _, _) in &series {
        assert!(help.contains_key(name), "{name} has no HELP");
        assert!(kind.contains_key(name), "{name} has no TYPE");
    }
    assert_eq!(kind["setpoint_gpu_energy_joules_total"], "counter");
    assert_eq!(kind["setpoint_gpu_telemetry_failed_reads_total"], "counter");
    assert_eq!(kind["setpoint_gpu_utilization_ratio"], "gauge");

    let get = |name: &str, gpu: &str| -> Option<f64> {
        series
            .iter()
            .find(|(n, l, _)| n == name && l.get("gpu").map(String::as_str) == Some(gpu))
            .map(|(_, _, v)| *v)
    };
    assert_eq!(get("setpoint_gpu_utilization_ratio", "0"), Some(0.45));
    assert_eq!(get("setpoint_gpu_utilization_ratio", "1"), Some(1.0));
    assert_eq!(
        get("setpoint_gpu_memory_used_bytes", "0"),
        Some((1234 * MIB) as f64)
    );
    assert_eq!(get("setpoint_gpu_memory_used_bytes", "1"), Some(0.0));
    assert_eq!(get("setpoint_gpu_power_watts", "0"), Some(250.5));
    assert_eq!(
        get("setpoint_gpu_power_watts", "1"),
        None,
        "unknown is omitted"
    );
    assert_eq!(
        get("setpoint_gpu_energy_joules_total", "0"),
        Some(98_765.25)
    );
    assert_eq!(get("setpoint_gpu_energy_joules_total", "1"), None);
    assert_eq!(get("setpoint_gpu_sm_clock_hertz", "0"), Some(1.98e9));
    assert_eq!(
        get("setpoint_gpu_foreign_utilization_ratio", "0"),
        Some(0.25)
    );
    assert_eq!(get("setpoint_gpu_foreign_utilization_ratio", "1"), None);
    let throttled: Vec<_> = series
        .iter()
        .filter(|(n, _, _)| n == "setpoint_gpu_throttled")
        .collect();
    assert_eq!(throttled.len(), 1);
    assert_eq!(throttled[0].1["reason"], "sw_power_cap");

    // Labels: gpu and uuid on every per-GPU series; the UUID survives escaping.
    for (n, l, _) in &series {
        if n == "setpoint_gpu_telemetry_failed_reads_total" {
            assert!(l.is_empty());
            continue;
        }
        assert!(l.contains_key("gpu") && l.contains_key("uuid"), "{n} {l:?}");
        match l["gpu"].as_str() {
            "0" => assert_eq!(l["uuid"], "GPU-aaaa"),
            "1" => assert_eq!(l["uuid"], "GPU-\"b\"\\x\ny"),
            g => panic!("unexpected gpu {g}"),
        }
    }
    assert!(out.contains(r#"uuid="GPU-\"b\"\\x\ny""#), "{out}");
    let failed: Vec<_> = series
        .iter()
        .filter(|(n, _, _)| n == "setpoint_gpu_telemetry_failed_reads_total")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].2, 3.0);
}

#[test]
fn metrics_without_gpus_still_count_failed_reads() {
    let mut out = String::from("# existing\n");
    render_metrics(&[], 7, &mut out);
    assert_eq!(
        out,
        "# existing\n\
         # HELP setpoint_gpu_telemetry_failed_reads_total GPU telemetry reads that failed (the previous sample was kept).\n\
         # TYPE setpoint_gpu_telemetry_failed_reads_total counter\n\
         setpoint_gpu_telemetry_failed_reads_total 7\n"
    );
}

#[test]
fn metrics_pass_promtool() {
    let mut out = String::new();
    render_metrics(&metric_samples(), 3, &mut out);
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            println!("skipped: promtool not available ({e})");
            return;
        }
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(out.as_bytes())
        .unwrap();
    let res = child.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "promtool rejected the output:\n{}{}\n---\n{out}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
}

// ---------------------------------------------------------------- NVML and the report

#[test]
fn nvml_missing_is_an_error_naming_the_library() {
    match NvmlSource::open() {
        Ok(mut src) => {
            println!(
                "skipped: NVML is present on this host ({}); checking one read instead",
                src.describe()
            );
            let samples = src.sample().expect("a read from NVML");
            for s in samples {
                assert!(
                    s.uuid.starts_with("GPU-") || s.uuid.starts_with("MIG-"),
                    "{s:?}"
                );
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("libnvidia-ml.so.1"), "{msg}");
            assert!(
                matches!(e, TelemetryError::LibraryMissing { .. }),
                "expected the library to be missing here: {e:?}"
            );
            assert!(msg.starts_with("libnvidia-ml.so.1 not found"), "{msg}");
        }
    }
}

#[test]
fn devices_report_without_nvml_gives_the_reason_and_the_cpu() {
    let error = match NvmlSource::open() {
        Ok(_) => setpoint::telemetry::TelemetryError::LibraryMissing {
            library: "libnvidia-ml.so.1".into(),
            detail: "test".into(),
        },
        Err(e) => e,
    };
    let reason = error.to_string();
    let text = devices_report(Err(error.clone()), 16, false);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], format!("NVML not available: {reason}"));
    assert!(lines[0].contains("libnvidia-ml.so.1"));
    assert_eq!(lines[1], "cpu: 16 cores");

    let json: serde_json::Value =
        serde_json::from_str(&devices_report(Err(error.clone()), 16, true)).unwrap();
    assert_eq!(json["nvml_available"], false);
    assert_eq!(
        json["reason"].as_str().unwrap(),
        format!("NVML not available: {reason}")
    );
    assert_eq!(json["cpu_cores"], 16);
    assert_eq!(json["gpus"].as_array().unwrap().len(), 0);

    let text = devices_report(Err(error), 4, false);
    assert!(text.ends_with("cpu: 4 cores\n"), "{text}");
}

#[test]
fn devices_report_tabulates_gpus_and_processes() {
    let me = std::process::id();
    let mut src = ScriptedSource::new(vec![ScriptStep::Gpus(vec![
        GpuStep {
            index: 1,
            uuid: Some("GPU-1111".into()),
            name: Some("NVIDIA H200".into()),
            util_gpu_pct: Some(45.0),
            mem_used_bytes: Some(1024 * MIB),
            mem_total_bytes: Some(143_771 * MIB),
            power_w: Some(250.46),
            sm_clock_hz: Some(1.98e9),
            temperature_c: Some(41.0),
            throttle_reasons: vec!["hw_slowdown".into()],
            processes: Some(vec![
                ProcessSample {
                    pid: me,
                    sm_util_pct: Some(30.0),
                    mem_util_pct: None,
                    used_mem_bytes: Some(512 * MIB),
                    own: false,
                },
                ProcessSample {
                    pid: 1,
                    sm_util_pct: Some(10.0),
                    mem_util_pct: None,
                    used_mem_bytes: Some(256 * MIB),
                    own: false,
                },
            ]),
            ..Default::default()
        },
        GpuStep {
            index: 0,
            uuid: Some("GPU-0000".into()),
            name: Some("NVIDIA H200".into()),
            ..Default::default()
        },
    ])]);
    let text = devices_report(Ok(&mut src), 16, false);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("scripted telemetry"), "{text}");
    assert!(lines[1].starts_with("GPU  NAME"), "{text}");
    // GPU 0 first, unknown figures as dashes.
    assert!(lines[2].starts_with("0    NVIDIA H200  GPU-0000"), "{text}");
    assert!(lines[2].contains(" - / - "), "{text}");
    let row1 = lines.iter().position(|l| l.starts_with("1 ")).unwrap();
    for want in [
        "GPU-1111",
        "1024 / 143771",
        "45 %",
        "250.5 W",
        "1980 MHz",
        "41 C",
    ] {
        assert!(
            lines[row1].contains(want),
            "{want} missing: {}",
            lines[row1]
        );
    }
    let rest = lines[row1 + 1..].join("\n");
    assert!(rest.contains("throttled: hw_slowdown"), "{text}");
    assert!(rest.contains("sm load: own 30 %, foreign 10 %"), "{text}");
    assert!(
        rest.contains(&format!("process {me}: 512 MiB, sm 30 % (this process)")),
        "{text}"
    );
    assert!(rest.contains("process 1: 256 MiB, sm 10 %"), "{text}");
    assert!(rest.contains("lanes: none"), "{text}");
    assert!(text.ends_with("cpu: 16 cores\n"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&devices_report(Ok(&mut src), 16, true)).unwrap();
    assert_eq!(json["nvml_available"], true);
    assert_eq!(json["reason"], serde_json::Value::Null);
    let gpus = json["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[1]["index"], 1);
    assert_eq!(gpus[1]["uuid"], "GPU-1111");
    assert_eq!(gpus[1]["power_w"], 250.46);
    assert_eq!(gpus[1]["lanes"].as_array().unwrap().len(), 0);
    assert_eq!(gpus[1]["processes"][0]["used_mem_bytes"], 512 * MIB);
    assert_eq!(gpus[0]["lanes"].as_array().unwrap().len(), 0);

    // A source that opens but cannot read says so, then the CPU.
    let mut failing = ScriptedSource::new(vec![ScriptStep::Error("GPU is lost".into())]);
    let text = devices_report(Ok(&mut failing), 2, false);
    assert_eq!(text, "telemetry read failed: GPU is lost\ncpu: 2 cores\n");
}

// ---------------------------------------------------------------- nvidia-smi CSV

fn smi_fixture() -> (
    Vec<setpoint::telemetry::SmiRow>,
    setpoint::telemetry::SkippedLines,
) {
    let text = std::fs::read_to_string(fixture("smi.csv")).unwrap();
    parse_smi_csv(&text, SmiClock::UtcOffsetSeconds(0))
}

fn our_fixture() -> Vec<GpuSample> {
    let text = std::fs::read_to_string(fixture("ours.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn smi_csv_rows_and_skipped_lines() {
    let (rows, skipped) = smi_fixture();
    assert_eq!(rows.len(), 11);
    assert_eq!(skipped.blank, 1);
    assert_eq!(skipped.malformed, 2);
    assert_eq!(skipped.unavailable_rows, 1);
    assert_eq!(skipped.unavailable_fields, 2);
    assert_eq!(skipped.total(), 4);
    assert_eq!(skipped.examples.len(), 2);
    assert!(
        skipped.examples[0].starts_with("line 14: 1 fields, expected 6: Failed to initialize"),
        "{:?}",
        skipped.examples
    );
    assert!(
        skipped.examples[1].starts_with("line 15: 3 fields, expected 6"),
        "{:?}",
        skipped.examples
    );

    let r = &rows[0];
    assert_eq!(r.at_unix_s, T0);
    assert_eq!(r.index, 0);
    assert_eq!(r.util_gpu_pct, Some(10.0));
    assert_eq!(r.mem_used_bytes, Some(1000 * MIB));
    assert_eq!(r.power_w, Some(100.0));
    assert_eq!(r.sm_clock_hz, Some(1e9));
    // `[N/A]` power and `[Not Supported]` clock are kept as unknown.
    let na = rows
        .iter()
        .find(|r| r.index == 0 && close(r.at_unix_s, T0 + 0.2, 1e-6))
        .unwrap();
    assert_eq!((na.util_gpu_pct, na.power_w), (Some(30.0), None));
    let ns = rows
        .iter()
        .find(|r| r.index == 0 && close(r.at_unix_s, T0 + 0.3, 1e-6))
        .unwrap();
    assert_eq!((ns.power_w, ns.sm_clock_hz), (Some(160.0), None));
    // The all-unavailable GPU 1 row at .100 is gone.
    assert!(
        !rows
            .iter()
            .any(|r| r.index == 1 && close(r.at_unix_s, T0 + 0.1, 1e-6))
    );
}

#[test]
fn smi_parser_accounts_for_every_line_of_damaged_input() {
    let text = std::fs::read_to_string(fixture("smi.csv")).unwrap();
    let mut damaged = String::new();
    let mut lines = 0;
    // Every prefix of every line, plus bytes swapped for separators and noise.
    for line in text.lines() {
        for (cut, _) in line.char_indices() {
            damaged.push_str(&line[..cut]);
            damaged.push('\n');
            damaged.push_str(&line[cut..].replace(',', ";"));
            damaged.push('\n');
            lines += 2;
        }
    }
    for odd in [
        ",,,,,",
        "2026/11/28 21:03:04.000, 0, -5, 1, 1, 1",
        "2026/11/28 21:03:04.000, 0, NaN, 1, 1, 1",
        "2026/11/28 21:03:04.000, 0, inf, 1, 1, 1",
        "2026/11/28 21:03:04.000, 99999, 1, 1, 1, 1",
        "2026/11/28 21:03:04.000, 0, 1e400, 1, 1, 1",
        "9999/99/99 99:99:99.999, 0, 1, 1, 1, 1",
        "\u{feff}\u{0}",
    ] {
        damaged.push_str(odd);
        damaged.push('\n');
        lines += 1;
    }
    let (rows, skipped) = parse_smi_csv(&damaged, SmiClock::UtcOffsetSeconds(0));
    assert_eq!(rows.len() + skipped.total(), lines);
    assert!(skipped.malformed >= 8, "{skipped:?}");
    assert!(skipped.examples.len() <= 5);
    assert!(rows.iter().all(|r| r.at_unix_s.is_finite()));
}

#[test]
fn smi_parser_reads_local_time() {
    let (rows, skipped) =
        parse_smi_csv("2026/07/01 12:00:00.250, 0, 1, 1, 1, 1\n", SmiClock::Local);
    assert_eq!((rows.len(), skipped.total()), (1, 0));
    let (utc, _) = parse_smi_csv(
        "2026/07/01 12:00:00.250, 0, 1, 1, 1, 1\n",
        SmiClock::UtcOffsetSeconds(0),
    );
    // Local minus UTC reading is the zone's offset: a whole number of minutes, under a day.
    let diff = rows[0].at_unix_s - utc[0].at_unix_s;
    assert!(
        diff.abs() < 86_400.0 && (diff / 60.0).fract().abs() < 1e-6,
        "{diff}"
    );
}

// ---------------------------------------------------------------- recorder

/// Writes an executable shell script standing in for nvidia-smi.
fn fake_smi(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Starts a recorder, retrying when a concurrent fork in another test held the fresh
/// script open for writing (ETXTBSY).
fn start(program: &Path) -> Result<SmiRecorder, setpoint::telemetry::SmiError> {
    for _ in 0..20 {
        match SmiRecorder::start_program(program, 100, SmiClock::UtcOffsetSeconds(0)) {
            Err(e) if e.to_string().contains("Text file busy") => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r,
        }
    }
    SmiRecorder::start_program(program, 100, SmiClock::UtcOffsetSeconds(0))
}

#[test]
fn recorder_collects_and_parses_output() {
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("smi.csv");
    let (want_rows, want_skipped) = smi_fixture();

    // nvidia-smi that prints its capture and keeps running until stopped.
    let running = fake_smi(
        dir.path(),
        "smi-running",
        &format!(
            "case \"$*\" in *--query-gpu=timestamp,index,utilization.gpu,memory.used,power.draw,clocks.sm*--format=csv,noheader,nounits*-lms\\ 100*) ;; *) echo \"bad args: $*\" >&2; exit 2;; esac\ncat '{}'\nexec sleep 30",
            csv.display()
        ),
    );
    let rec = start(&running).unwrap();
    let t = std::time::Instant::now();
    while rec.rows_so_far() < want_rows.len() && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (rows, skipped) = rec.stop();
    assert_eq!(rows, want_rows);
    assert_eq!(skipped, want_skipped);

    // One that prints and ends by itself, successfully.
    let done = fake_smi(dir.path(), "smi-done", &format!("cat '{}'", csv.display()));
    let (rows, skipped) = start(&done).unwrap().stop();
    assert_eq!(rows.len(), want_rows.len());
    assert_eq!(skipped.exit_note, None);

    // One that fails at once, like nvidia-smi without a driver.
    let failing = fake_smi(
        dir.path(),
        "smi-failing",
        "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\" >&2\nexit 9",
    );
    let e = start(&failing)
        .err()
        .expect("a failing nvidia-smi is an error")
        .to_string();
    assert!(e.contains("exited at once"), "{e}");
    assert!(
        e.contains("couldn't communicate with the NVIDIA driver"),
        "{e}"
    );

    let e = start(&dir.path().join("no-such-smi"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not found on PATH"), "{e}");
}

#[test]
fn recorder_without_nvidia_smi_says_so() {
    match SmiRecorder::start(100).map_err(|e| e.to_string()) {
        Ok(rec) => {
            println!("skipped: nvidia-smi is present on this host; stopping it");
            let _ = rec.stop();
        }
        Err(e) => assert!(
            e.starts_with("nvidia-smi not found on PATH") || e.contains("exited at once"),
            "{e}"
        ),
    }
}

// ---------------------------------------------------------------- correlation

fn phases() -> Vec<Phase> {
    vec![
        Phase {
            name: "ramp".into(),
            start_unix_s: T0,
            end_unix_s: T0 + 0.3,
        },
        Phase {
            name: "tail".into(),
            start_unix_s: T0 + 0.3,
            end_unix_s: T0 + 1.0,
        },
    ]
}

#[test]
fn correlation_against_fixtures() {
    let (smi, _) = smi_fixture();
    let ours = our_fixture();
    let c = correlate(&smi, &ours, &phases());

    // Rows 100 ms apart: pairs within 50 ms. Our sample at +0.90 s has no partner.
    assert_close(Some(c.tolerance_s), 0.05, 1e-6);
    assert_eq!((c.our_samples, c.smi_rows, c.matched), (9, 11, 8));

    let f = |name: &str| c.fields.iter().find(|f| f.field == name).unwrap().clone();
    // Utilisation: GPU 0 reads 2 points above nvidia-smi in 5 pairs, GPU 1 one point in 3.
    let u = f("utilization");
    assert_eq!((u.pairs, u.unit), (8, "%"));
    assert_close(u.mean_abs_diff, 13.0 / 8.0, 1e-12);
    assert_close(u.pearson, 0.999_760_318_267_541, 1e-12);
    // Memory: GPU 0 1 MiB apart in 5 pairs, GPU 1 equal in 3; two clusters on a line.
    let m = f("memory_used");
    assert_eq!((m.pairs, m.unit), (8, "MiB"));
    assert_close(m.mean_abs_diff, 5.0 / 8.0, 1e-12);
    assert_close(m.pearson, 1.0, 1e-12);
    // Power: the [N/A] at +0.2 s drops one GPU 0 pair; |diffs| 1,2,3,1 and 1,1,2.
    let p = f("power");
    assert_eq!((p.pairs, p.unit), (7, "W"));
    assert_close(p.mean_abs_diff, 11.0 / 7.0, 1e-12);
    assert_close(p.pearson, 0.999_368_553_750_166_5, 1e-12);
    // SM clock: [Not Supported] at +0.3 s drops one pair; the rest agree exactly.
    let k = f("sm_clock");
    assert_eq!((k.pairs, k.unit), (7, "MHz"));
    assert_close(k.mean_abs_diff, 0.0, 1e-12);
    assert_close(k.pearson, 1.0, 1e-12);

    let ph = |name: &str, gpu: u32| {
        c.phases
            .iter()
            .find(|p| p.phase == name && p.gpu == gpu)
            .unwrap()
            .clone()
    };
    assert_eq!(c.phases.len(), 4);

    // GPU 0 has the energy counter. Ramp: 5000 J at +0.01 s; at +0.3 s the counter is
    // interpolated between 5026 J (+0.19) and 5041 J (+0.31): 5026 + 15·0.11/0.12 = 5039.75.
    let r0 = ph("ramp", 0);
    assert_eq!(r0.samples, 3);
    assert_close(r0.mean_util_pct, 22.0, 1e-9);
    assert_close(r0.mean_power_w, 120.0, 1e-9);
    assert_eq!(r0.energy_method, Some(EnergyMethod::Counter));
    assert_close(r0.energy_j, 39.75, 1e-4);
    assert_close(Some(r0.energy_span_s), 0.29, 1e-6);
    // nvidia-smi: rows at 0, .1, .2, .3; power at .2 unknown, so 100→120→160 W.
    assert_eq!(r0.smi_rows, 4);
    assert_close(r0.smi_mean_util_pct, 25.0, 1e-9);
    assert_close(r0.smi_mean_power_w, 380.0 / 3.0, 1e-9);
    assert_close(r0.smi_energy_j, 0.1 * 110.0 + 0.2 * 140.0, 1e-4);

    // Tail: to the last sample at +0.9 s (5100 J).
    let t0 = ph("tail", 0);
    assert_eq!(t0.samples, 3);
    assert_close(t0.mean_util_pct, 94.0 / 3.0, 1e-9);
    assert_close(t0.mean_power_w, 392.0 / 3.0, 1e-9);
    assert_eq!(t0.energy_method, Some(EnergyMethod::Counter));
    assert_close(t0.energy_j, 60.25, 1e-4);
    assert_close(Some(t0.energy_span_s), 0.6, 1e-6);
    assert_eq!(t0.smi_rows, 3);
    assert_close(t0.smi_energy_j, 0.1 * 170.0 + 0.1 * 190.0, 1e-4);

    // GPU 1 has no counter: power integrated. 51 W at +.02, 55 W at +.22, 60 W at +.41;
    // at +0.3 s power is 55 + 5·0.08/0.19.
    let p03 = 55.0 + 5.0 * 0.08 / 0.19;
    let r1 = ph("ramp", 1);
    assert_eq!(r1.samples, 2);
    assert_close(r1.mean_util_pct, 7.0, 1e-9);
    assert_close(r1.mean_power_w, 53.0, 1e-9);
    assert_eq!(r1.energy_method, Some(EnergyMethod::PowerIntegral));
    assert_close(
        r1.energy_j,
        0.2 * (51.0 + 55.0) / 2.0 + 0.08 * (55.0 + p03) / 2.0,
        1e-4,
    );
    assert_close(Some(r1.energy_span_s), 0.28, 1e-6);
    assert_eq!(r1.smi_rows, 3);
    assert_close(r1.smi_mean_util_pct, 7.0, 1e-9);
    assert_close(r1.smi_mean_power_w, 54.0, 1e-9);
    assert_close(r1.smi_energy_j, 0.2 * 52.0 + 0.1 * 56.0, 1e-4);
    let t1 = ph("tail", 1);
    assert_eq!(t1.samples, 1);
    assert_close(t1.energy_j, 0.11 * (p03 + 60.0) / 2.0, 1e-4);
    assert_close(t1.smi_energy_j, 0.1 * 60.0 + 0.1 * 64.0, 1e-4);

    let text = c.render_text();
    assert!(
        text.starts_with(
            "nvidia-smi cross-check: 9 of our samples, 11 nvidia-smi rows, 8 paired within ±0.050 s"
        ),
        "{text}"
    );
    assert!(
        text.contains("utilization      %      8        1.625     0.9998"),
        "{text}"
    );
    assert!(text.contains("39.75 (counter, 0.290)"), "{text}");
    assert!(text.contains("(power integral, 0.280)"), "{text}");
    assert_eq!(format!("{c}"), text);
}

#[test]
fn correlation_edge_cases() {
    let (smi, _) = smi_fixture();
    let ours = our_fixture();

    // A tight tolerance pairs only the samples 10 ms from a row: +.01, +.19, +.31 on GPU 0
    // and +.41 on GPU 1.
    let c = correlate_with_tolerance(&smi, &ours, &[], 0.015);
    assert_eq!(c.matched, 4);
    assert!(c.phases.is_empty());

    // GPU 1 alone: memory and clock are constant on both sides, so r is undefined.
    let smi1: Vec<_> = smi.iter().filter(|r| r.index == 1).cloned().collect();
    let ours1: Vec<_> = ours.iter().filter(|s| s.index == 1).cloned().collect();
    let c = correlate(&smi1, &ours1, &[]);
    let m = c.fields.iter().find(|f| f.field == "memory_used").unwrap();
    assert_eq!((m.pairs, m.mean_abs_diff, m.pearson), (3, Some(0.0), None));
    let k = c.fields.iter().find(|f| f.field == "sm_clock").unwrap();
    assert_eq!(k.pearson, None);
    assert!(
        c.render_text()
            .contains("memory_used    MiB      3        0.000          -")
    );

    // Nothing to compare: no pairs, nothing defined, no panic.
    let c = correlate(&[], &[], &phases());
    assert_eq!(c.matched, 0);
    assert!(
        c.fields
            .iter()
            .all(|f| f.pairs == 0 && f.mean_abs_diff.is_none())
    );
    assert!(c.phases.is_empty());

    // A phase outside every sample, and one reversed, give no energy.
    let odd = vec![
        Phase {
            name: "later".into(),
            start_unix_s: T0 + 5.0,
            end_unix_s: T0 + 6.0,
        },
        Phase {
            name: "reversed".into(),
            start_unix_s: T0 + 0.4,
            end_unix_s: T0 + 0.1,
        },
    ];
    let c = correlate(&smi, &ours, &odd);
    for p in &c.phases {
        assert_eq!(
            (p.samples, p.energy_j, p.energy_method),
            (0, None, None),
            "{p:?}"
        );
    }

    // A counter reset inside a phase falls back to integrating power.
    let mut reset = ours.clone();
    reset[2].energy_j = Some(3.0);
    let c = correlate(&smi, &reset, &phases()[..1]);
    let r0 = c.phases.iter().find(|p| p.gpu == 0).unwrap();
    assert_eq!(r0.energy_method, Some(EnergyMethod::PowerIntegral));
    // 101 W at +.01, 118 at +.12, 141 at +.19, 163 at +.31 → at +.3: 141 + 22·0.11/0.12.
    let p03 = 141.0 + 22.0 * 0.11 / 0.12;
    let want =
        0.11 * (101.0 + 118.0) / 2.0 + 0.07 * (118.0 + 141.0) / 2.0 + 0.11 * (141.0 + p03) / 2.0;
    assert_close(r0.energy_j, want, 1e-4);

    // So does a missing counter reading next to the phase.
    let mut gap = ours.clone();
    gap[3].energy_j = None;
    let c = correlate(&smi, &gap, &phases()[..1]);
    let r0 = c.phases.iter().find(|p| p.gpu == 0).unwrap();
    assert_eq!(r0.energy_method, Some(EnergyMethod::PowerIntegral));
}
