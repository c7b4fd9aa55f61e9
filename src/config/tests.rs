//! Unit tests for the walker helpers and error formatting; behaviour of whole files is tested
//! in `tests/config.rs`.

use super::walk::{Bound, Field, Tbl, Walker, check_bounds};
use super::*;

#[test]
fn bounds_name_the_violated_side() {
    use Bound::*;
    assert_eq!(check_bounds(0.5, Incl(0.0), Incl(1.0)), Ok(()));
    assert_eq!(
        check_bounds(2.0, Incl(0.0), Incl(1.0))
            .unwrap_err()
            .to_string(),
        "must be between 0 and 1, got 2"
    );
    assert_eq!(
        check_bounds(-5.0, Excl(0.0), Incl(60000.0))
            .unwrap_err()
            .to_string(),
        "must be > 0, got -5"
    );
    assert_eq!(
        check_bounds(70000.0, Excl(0.0), Incl(60000.0))
            .unwrap_err()
            .to_string(),
        "must be <= 60000, got 70000"
    );
    assert_eq!(
        check_bounds(1.0, Incl(0.0), Excl(1.0))
            .unwrap_err()
            .to_string(),
        "must be < 1, got 1"
    );
    assert_eq!(
        check_bounds(-0.5, Incl(0.0), None).unwrap_err().to_string(),
        "must be >= 0, got -0.5"
    );
    assert_eq!(check_bounds(1e300, Incl(0.0), None), Ok(()));
}

#[test]
fn key_paths_quote_keys_that_are_not_bare() {
    let t = toml::Table::new();
    let root = Tbl::root(&t);
    assert_eq!(root.key("listen"), "listen");
    assert_eq!(root.key("a b"), "\"a b\"");
    let sub = Tbl {
        path: "services[0]".into(),
        t: &t,
    };
    assert_eq!(sub.key("slo"), "services[0].slo");
    assert_eq!(sub.key("x.y"), "services[0].\"x.y\"");
}

#[test]
fn field_or_distinguishes_absent_from_bad() {
    assert_eq!(Field::Absent.or(3), Some(3));
    assert_eq!(Field::Ok(5).or(3), Some(5));
    assert_eq!(Field::<i32>::Bad.or(3), None);
    assert_eq!(Field::<i32>::Absent.given(), None);
}

#[test]
fn int_helper_checks_type_range_and_target_width() {
    let t: toml::Table = "a = 5\nb = 1.5\nc = -1\nd = 300".parse().unwrap();
    let root = Tbl::root(&t);
    let mut w = Walker::default();
    assert_eq!(w.int::<u64>(&root, "a", 0, Some(10)), Field::Ok(5));
    assert_eq!(w.int::<u64>(&root, "b", 0, Some(10)), Field::Bad);
    assert_eq!(w.int::<u64>(&root, "c", 0, None), Field::Bad);
    // In range but too wide for the target type.
    assert_eq!(w.int::<u8>(&root, "d", 0, None), Field::Bad);
    assert_eq!(w.int::<u64>(&root, "zz", 0, None), Field::Absent);
    let shown: Vec<String> = w.issues.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "b: expected an integer, got a float",
            "c: must be >= 0, got -1",
            "d: out of range for this platform, got 300",
        ]
    );
}

#[test]
fn empty_optional_strings_mean_off() {
    let t: toml::Table = "a = \"\"\nb = \"x\"".parse().unwrap();
    let root = Tbl::root(&t);
    let mut w = Walker::default();
    assert_eq!(w.opt_string(&root, "a"), Field::Absent);
    assert_eq!(w.opt_string(&root, "b"), Field::Ok("x"));
    assert!(w.issues.is_empty());
}

#[test]
fn syntax_error_columns_count_characters() {
    let e = parse("# héllo\nname = \"é\" x\n").unwrap_err();
    match e {
        ConfigError::Syntax {
            line,
            column,
            snippet,
            ..
        } => {
            assert_eq!(line, 2);
            assert_eq!(column, 12);
            assert_eq!(snippet, "name = \"é\" x");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn syntax_error_display_points_at_the_column() {
    let e = parse("a = \n").unwrap_err();
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines[0].starts_with("toml syntax error at line 1, column 5: "),
        "{shown}"
    );
    assert_eq!(lines[1], "  | a = ");
    assert_eq!(lines[2], "  |     ^");
}

#[test]
fn issue_without_path_shows_only_the_message() {
    let i = ConfigIssue {
        path: String::new(),
        message: "whole document".into(),
    };
    assert_eq!(i.to_string(), "whole document");
}

#[test]
fn issues_accessor_is_empty_for_other_errors() {
    let e = parse("a = ").unwrap_err();
    assert!(e.issues().is_empty());
    let e = parse("control_period_ms = 1").unwrap_err();
    assert_eq!(e.issues().len(), 1);
    assert_eq!(e.issues()[0].path, "control_period_ms");
}

#[test]
fn default_config_parses() {
    assert_eq!(default_config().services[0].name, "mlp");
}

#[test]
fn enum_spellings_match_the_file_syntax() {
    assert_eq!(Leftover::BestEffort.to_string(), "best-effort");
    assert_eq!(PastDeadline::Stop.to_string(), "stop");
    for p in [PastDeadline::BestEffort, PastDeadline::Stop] {
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::Value::String(p.as_str().into())
        );
    }
    assert_eq!(DeviceKind::Cuda.to_string(), "cuda");
    assert_eq!(ShareMechanism::Green.to_string(), "green");
    assert_eq!(OptimizerKind::Sgd.to_string(), "sgd");
    assert_eq!(OptimizerKind::Sgd.default_lr(), 0.05);
    for l in [Leftover::BestEffort, Leftover::Idle, Leftover::Spread] {
        assert_eq!(
            serde_json::to_value(l).unwrap(),
            serde_json::Value::String(l.as_str().into())
        );
    }
}

#[test]
fn io_threads_default_to_one_per_8_cores_and_are_checked() {
    let auto = parse("").unwrap().http;
    assert_eq!(auto.io_threads, 0);
    assert_eq!(auto.io_thread_count(2), 1);
    assert_eq!(auto.io_thread_count(16), 2);
    assert_eq!(auto.io_thread_count(64), 8);
    let three = parse("[http]\nio_threads = 3").unwrap().http;
    assert_eq!(three.io_thread_count(64), 3);
    let e = parse("[http]\nio_threads = 300").unwrap_err();
    assert_eq!(e.issues()[0].path, "http.io_threads");
    assert!(
        e.issues()[0]
            .message
            .contains("must be between 0 and 256, got 300"),
        "{e}"
    );
}
