//! JSON values written as block YAML, as `kubectl` users read and write manifests: the
//! committed CRDs and the objects the tests check. A string is left plain only when no YAML
//! reader could take it for anything else (a number, a date, a boolean, a null); otherwise it
//! is written double-quoted with JSON's escapes, which YAML's double-quoted style shares.

use serde_json::Value;

/// `docs` as one YAML stream, each document opened by `---`.
pub fn documents(docs: &[Value]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        block(&mut out, d, 0);
    }
    out
}

/// One value at `indent`, as the body of a document or of a key.
fn block(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                pad(out, indent);
                out.push_str(&scalar_string(k));
                out.push(':');
                after_key(out, v, indent);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                pad(out, indent);
                out.push('-');
                list_item(out, item, indent);
            }
        }
        other => {
            pad(out, indent);
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// What follows `key:`: a scalar on the same line, a collection on the lines below.
fn after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            block(out, v, indent + 2);
        }
        // Lists sit at their key's indentation, as kubectl writes them.
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            block(out, v, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// What follows `-`: an object's first key on the same line, the rest below it.
fn list_item(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let mut first = true;
            for (k, v) in m {
                if first {
                    out.push(' ');
                    first = false;
                } else {
                    pad(out, indent + 2);
                }
                out.push_str(&scalar_string(k));
                out.push(':');
                after_key(out, v, indent + 2);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            block(out, v, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A scalar, or an empty collection, on one line.
fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// Words a YAML 1.1 reader (PyYAML's, for one) takes for booleans or null.
const RESERVED: [&str; 11] = [
    "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "",
];

/// `s` plain when that is safe, else double-quoted.
fn scalar_string(s: &str) -> String {
    let starts_well = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/');
    let plain_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | ' '));
    let reserved = RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if starts_well && plain_chars && !reserved && !s.ends_with(' ') && !s.contains("  ") {
        s.to_string()
    } else {
        // serde_json writes a string as JSON; it cannot fail for a `str`.
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_lists_and_maps_read_as_kubectl_writes_them() {
        let v = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a.b/c": "1.5", "on": "yes"}},
            "spec": {"containers": [{"name": "c", "args": ["a b", "--x=1"], "env": []}],
                     "list": [[1, 2], {}], "n": null, "t": true}
        });
        let text = documents(&[v]);
        assert_eq!(
            text,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    a.b/c: \"1.5\"\n    \
             \"on\": \"yes\"\n  name: p\nspec:\n  containers:\n  - args:\n    - a b\n    - \
             \"--x=1\"\n    env: []\n    name: c\n  list:\n  -\n    - 1\n    - 2\n  - {}\n  \
             \"n\": null\n  t: true\n"
        );
    }

    #[test]
    fn strings_that_could_read_as_something_else_are_quoted() {
        for s in [
            "1",
            "2026-01-01",
            "true",
            "No",
            "",
            "a: b",
            "#x",
            "x\ny",
            " a",
            "a ",
        ] {
            assert!(scalar_string(s).starts_with('"'), "{s:?}");
        }
        for s in ["setpoint-gpu", "/models/a.ckpt", "a spec is immutable"] {
            assert_eq!(scalar_string(s), s);
        }
    }
}
