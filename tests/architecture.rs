//! The layering of `src/`, checked from the source text: `control/` is pure (it imports
//! only `crate::util` and itself); the engine (`device/`, `model/`, `serve/`, `train/`)
//! knows nothing of the daemon (`crate::node`), the API (`crate::api`) or HTTP crates; the
//! API reaches devices only through the node; the node knows no HTTP, route or command; and no
//! two modules import each other. A violation prints as `file:line: <module> imports <other>`.

use std::path::{Path, PathBuf};

/// HTTP crates the engine must not use.
const HTTP_CRATES: [&str; 4] = ["axum", "hyper", "tower", "http"];

/// What the modules `layers` may not import.
struct Rule {
    layers: &'static [&'static str],
    /// When set, the only other crate modules the layer may import.
    only: Option<&'static [&'static str]>,
    /// Crate modules the layer may not import (when `only` is not set).
    forbidden: &'static [&'static str],
    /// External crates the layer may not use.
    external: &'static [&'static str],
}

const RULES: [Rule; 4] = [
    Rule {
        layers: &["control"],
        only: Some(&["util"]),
        forbidden: &[],
        external: &[],
    },
    Rule {
        layers: &["device", "model", "serve", "train"],
        only: None,
        forbidden: &["node", "api"],
        external: &HTTP_CRATES,
    },
    Rule {
        layers: &["api"],
        only: None,
        forbidden: &["device"],
        external: &[],
    },
    Rule {
        layers: &["node"],
        only: None,
        forbidden: &["api", "commands", "cli", "daemon", "client"],
        external: &["axum", "hyper", "tower"],
    },
];

/// The source without comments, string and character literals (blanked, lines kept).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push(b'\n');
                    }
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(b, i) {
            out.extend(b[i..end].iter().filter(|&&c| c == b'\n'));
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == b'\n' {
                    out.push(b'\n');
                }
                i += 1;
            }
            i += 1;
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting at `i` ends.
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    if b.get(j) != Some(&b'"') {
        return None;
    }
    let close: Vec<u8> = std::iter::once(b'"')
        .chain(std::iter::repeat_n(b'#', hashes))
        .collect();
    let from = j + 1;
    let at = b[from..].windows(close.len()).position(|w| w == close)?;
    Some(from + at + close.len())
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn ident_at(b: &[u8], i: usize) -> &str {
    let end = (i..b.len()).find(|&k| !is_ident(b[k])).unwrap_or(b.len());
    std::str::from_utf8(&b[i..end]).unwrap_or("")
}

/// The crate modules and external crates `code` names, each with its 1-based line:
/// `crate::x` paths (groups `crate::{x::…, y}` included) and `name::` paths whose first
/// segment is one of `externals`.
fn references(code: &str, externals: &[&str]) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let line_of = |i: usize| code[..i].bytes().filter(|&c| c == b'\n').count() + 1;
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':') {
            continue;
        }
        let j = i + "crate::".len();
        if b.get(j) == Some(&b'{') {
            // Top-level names of the group: those after `{` or a `,` at depth 1.
            let mut depth = 0;
            let mut k = j;
            let mut expect_name = false;
            while k < b.len() {
                match b[k] {
                    b'{' => {
                        depth += 1;
                        expect_name = depth == 1;
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => expect_name = true,
                    c if expect_name && is_ident(c) => {
                        out.push((line_of(k), ident_at(b, k).to_string()));
                        expect_name = false;
                    }
                    _ => {}
                }
                k += 1;
            }
        } else if b.get(j).copied().is_some_and(is_ident) {
            out.push((line_of(i), ident_at(b, j).to_string()));
        }
    }
    for name in externals {
        let pat = format!("{name}::");
        for (i, _) in code.match_indices(&pat) {
            if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':') {
                continue;
            }
            out.push((line_of(i), name.to_string()));
        }
    }
    out.sort();
    out
}

/// The violations of `RULES` in `src` of the file at `shown` in module `layer`.
fn violations(layer: &str, shown: &str, src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for rule in RULES.iter().filter(|r| r.layers.contains(&layer)) {
        for (line, other) in references(&code_only(src), rule.external) {
            let bad = if rule.external.contains(&other.as_str()) {
                true
            } else if other == layer || other == "self" || other == "super" {
                false
            } else if let Some(only) = rule.only {
                !only.contains(&other.as_str())
            } else {
                rule.forbidden.contains(&other.as_str())
            };
            if bad {
                out.push(format!("{shown}:{line}: {layer} imports {other}"));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every file under `src/` with its top-level module (`lib`, `main` for the crate roots), its
/// path as shown and its text.
fn sources() -> Vec<(String, String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap();
        let Some(layer) = rel.iter().nth(1).and_then(|s| s.to_str()) else {
            continue;
        };
        let layer = layer.strip_suffix(".rs").unwrap_or(layer).to_string();
        out.push((
            layer,
            rel.display().to_string(),
            std::fs::read_to_string(f).unwrap(),
        ));
    }
    out
}

/// Pairs of top-level modules that import each other, each with one line of each direction.
fn mutual_imports(files: &[(String, String, String)]) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut first: BTreeMap<(String, String), String> = BTreeMap::new();
    for (layer, shown, src) in files {
        for (line, other) in references(&code_only(src), &[]) {
            if other != *layer && !["self", "super"].contains(&other.as_str()) {
                first
                    .entry((layer.clone(), other))
                    .or_insert_with(|| format!("{shown}:{line}"));
            }
        }
    }
    let mut out = Vec::new();
    for ((a, b), at) in &first {
        if a < b
            && let Some(back) = first.get(&(b.clone(), a.clone()))
        {
            out.push(format!(
                "{at}: {a} imports {b}, and {back}: {b} imports {a}"
            ));
        }
    }
    out
}

#[test]
fn no_two_modules_import_each_other() {
    let found = mutual_imports(&sources());
    assert!(found.is_empty(), "mutual imports:\n{}", found.join("\n"));
}

#[test]
fn layers_import_only_what_they_may() {
    let mut found = Vec::new();
    for (layer, shown, src) in sources() {
        found.extend(violations(&layer, &shown, &src));
    }
    for v in &found {
        println!("{v}");
    }
    assert!(
        found.is_empty(),
        "layering violations:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_flags_a_forbidden_import_and_nothing_else() {
    let src = r#"
//! Mentions crate::node in a comment.
use crate::util::sync;
use crate::control::pi::Pi;
use crate::{
    util::rng::Rng,
    node::Node,
};
fn f() {
    let s = "crate::api::http is only text";
    /* crate::device in a block comment */
    let _ = crate::telemetry::unix_now_s();
}
"#;
    assert_eq!(
        violations("control", "src/control/x.rs", src),
        [
            "src/control/x.rs:7: control imports node",
            "src/control/x.rs:12: control imports telemetry",
        ]
    );
    let engine = "use axum::Router;\nuse crate::api::http::x;\nuse crate::util::sync;\n";
    assert_eq!(
        violations("serve", "src/serve/mod.rs", engine),
        [
            "src/serve/mod.rs:1: serve imports axum",
            "src/serve/mod.rs:2: serve imports api",
        ]
    );
    // `super::http::…` inside api is not the `http` crate, nor is a path ending in it.
    assert!(
        violations(
            "api",
            "src/api/a.rs",
            "use super::http::x;\nuse crate::api::http;\n"
        )
        .is_empty()
    );
    assert_eq!(
        violations(
            "api",
            "src/api/a.rs",
            "fn f() { crate::device::cpu::available_cores(); }"
        ),
        ["src/api/a.rs:1: api imports device"]
    );
}
