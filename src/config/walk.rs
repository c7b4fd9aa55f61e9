//! Extraction helpers that record a problem and carry on, so one pass reports every issue.

use toml::{Table, Value};

use super::ConfigIssue;

/// The outcome of reading one key. A `Bad` key has already been reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Field<T> {
    Absent,
    Bad,
    Ok(T),
}

impl<T> Field<T> {
    /// The value to use: the given one, or `default` when absent; `None` when bad.
    pub fn or(self, default: T) -> Option<T> {
        match self {
            Field::Absent => Some(default),
            Field::Bad => None,
            Field::Ok(v) => Some(v),
        }
    }

    /// The given value; `None` when absent or bad.
    pub fn given(self) -> Option<T> {
        match self {
            Field::Ok(v) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

/// A bound of a float range.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bound {
    None,
    Incl(f64),
    Excl(f64),
}

/// One TOML table and the key path that leads to it.
#[derive(Debug, Clone)]
pub(super) struct Tbl<'a> {
    pub path: String,
    pub t: &'a Table,
}

impl<'a> Tbl<'a> {
    pub fn root(t: &'a Table) -> Self {
        Tbl {
            path: String::new(),
            t,
        }
    }

    /// The key path of `key` inside this table.
    pub fn key(&self, key: &str) -> String {
        let bare = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let k = if bare {
            key.to_owned()
        } else {
            format!("{key:?}")
        };
        if self.path.is_empty() {
            k
        } else {
            format!("{}.{k}", self.path)
        }
    }

    /// The raw value of a key, for keys with a bespoke syntax.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.t.get(key)
    }
}

/// "a string", "an integer", ...: what a TOML value is, for messages.
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Collects issues while a config is walked.
#[derive(Debug, Default)]
pub(super) struct Walker {
    pub issues: Vec<ConfigIssue>,
}

impl Walker {
    pub fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn missing(&mut self, path: impl Into<String>) {
        self.issue(path, "missing required key");
    }

    fn wrong_type(&mut self, path: String, expected: &str, got: &Value) {
        self.issue(path, format!("expected {expected}, got {}", kind(got)));
    }

    /// Reports every key of `t` that is not in `accepted`.
    pub(crate) fn check_keys(&mut self, t: &Tbl<'_>, accepted: &[&str]) {
        for k in t.t.keys() {
            if !accepted.contains(&k.as_str()) {
                self.issue(
                    t.key(k),
                    format!("unknown key (accepted: {})", accepted.join(", ")),
                );
            }
        }
    }

    pub fn string<'a>(&mut self, t: &Tbl<'a>, key: &str) -> Field<&'a str> {
        match t.get(key) {
            None => Field::Absent,
            Some(Value::String(s)) => Field::Ok(s.as_str()),
            Some(v) => {
                self.wrong_type(t.key(key), "a string", v);
                Field::Bad
            }
        }
    }

    /// A string where `""` means "not set".
    pub(crate) fn opt_string<'a>(&mut self, t: &Tbl<'a>, key: &str) -> Field<&'a str> {
        match self.string(t, key) {
            Field::Ok("") => Field::Absent,
            f => f,
        }
    }

    /// A required string that must not be empty.
    pub(crate) fn required_string<'a>(&mut self, t: &Tbl<'a>, key: &str) -> Option<&'a str> {
        match self.string(t, key) {
            Field::Absent => {
                self.missing(t.key(key));
                None
            }
            Field::Bad => None,
            Field::Ok("") => {
                self.issue(t.key(key), "must not be empty");
                None
            }
            Field::Ok(s) => Some(s),
        }
    }

    pub fn boolean(&mut self, t: &Tbl<'_>, key: &str) -> Field<bool> {
        match t.get(key) {
            None => Field::Absent,
            Some(Value::Boolean(b)) => Field::Ok(*b),
            Some(v) => {
                self.wrong_type(t.key(key), "a boolean", v);
                Field::Bad
            }
        }
    }

    /// One of a fixed set of strings.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        t: &Tbl<'_>,
        key: &str,
        options: &[(&str, T)],
    ) -> Field<T> {
        let s = match self.string(t, key) {
            Field::Ok(s) => s,
            Field::Absent => return Field::Absent,
            Field::Bad => return Field::Bad,
        };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Field::Ok(*v);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        self.issue(
            t.key(key),
            format!("must be one of {}, got {s:?}", names.join(", ")),
        );
        Field::Bad
    }

    fn int_value(&mut self, path: String, v: &Value) -> Option<i64> {
        match v {
            Value::Integer(i) => Some(*i),
            v => {
                self.wrong_type(path, "an integer", v);
                None
            }
        }
    }

    /// Checks `lo <= v <= hi` (no upper bound when `hi` is `None`) and converts.
    fn int_checked<T: TryFrom<i64>>(
        &mut self,
        path: String,
        v: i64,
        lo: i64,
        hi: Option<i64>,
    ) -> Option<T> {
        let ok = v >= lo && hi.is_none_or(|h| v <= h);
        if !ok {
            match hi {
                Some(h) => self.issue(path, format!("must be between {lo} and {h}, got {v}")),
                None => self.issue(path, format!("must be >= {lo}, got {v}")),
            }
            return None;
        }
        match T::try_from(v) {
            Ok(x) => Some(x),
            Err(_) => {
                self.issue(path, format!("out of range for this platform, got {v}"));
                None
            }
        }
    }

    /// An integer in `lo..=hi` (no upper bound when `hi` is `None`).
    pub fn int<T: TryFrom<i64>>(
        &mut self,
        t: &Tbl<'_>,
        key: &str,
        lo: i64,
        hi: Option<i64>,
    ) -> Field<T> {
        let Some(v) = t.get(key) else {
            return Field::Absent;
        };
        let Some(i) = self.int_value(t.key(key), v) else {
            return Field::Bad;
        };
        match self.int_checked(t.key(key), i, lo, hi) {
            Some(x) => Field::Ok(x),
            None => Field::Bad,
        }
    }

    /// A finite number (integers accepted) within the bounds.
    pub fn float(&mut self, t: &Tbl<'_>, key: &str, lo: Bound, hi: Bound) -> Field<f64> {
        let x = match t.get(key) {
            None => return Field::Absent,
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(v) => {
                self.wrong_type(t.key(key), "a number", v);
                return Field::Bad;
            }
        };
        if !x.is_finite() {
            self.issue(t.key(key), format!("must be a finite number, got {x}"));
            return Field::Bad;
        }
        match check_bounds(x, lo, hi) {
            Ok(()) => Field::Ok(x),
            Err(m) => {
                self.issue(t.key(key), m.to_string());
                Field::Bad
            }
        }
    }

    /// The array at `key`, reporting anything else as not `expected`.
    pub(crate) fn array<'a>(
        &mut self,
        t: &Tbl<'a>,
        key: &str,
        expected: &str,
    ) -> Field<&'a Vec<Value>> {
        match t.get(key) {
            None => Field::Absent,
            Some(Value::Array(a)) => Field::Ok(a),
            Some(v) => {
                self.wrong_type(t.key(key), expected, v);
                Field::Bad
            }
        }
    }

    /// An array of integers each in `lo..=hi`; element problems are reported at `key[i]`.
    pub(crate) fn int_array<T: TryFrom<i64>>(
        &mut self,
        t: &Tbl<'_>,
        key: &str,
        lo: i64,
        hi: Option<i64>,
    ) -> Field<Vec<T>> {
        let items = match self.array(t, key, "an array of integers") {
            Field::Ok(a) => a,
            Field::Absent => return Field::Absent,
            Field::Bad => return Field::Bad,
        };
        let mut out = Vec::with_capacity(items.len());
        let mut bad = false;
        for (i, v) in items.iter().enumerate() {
            let p = format!("{}[{i}]", t.key(key));
            match self
                .int_value(p.clone(), v)
                .and_then(|x| self.int_checked::<T>(p, x, lo, hi))
            {
                Some(x) => out.push(x),
                None => bad = true,
            }
        }
        if bad { Field::Bad } else { Field::Ok(out) }
    }

    pub fn table<'a>(&mut self, t: &Tbl<'a>, key: &str) -> Field<Tbl<'a>> {
        match t.get(key) {
            None => Field::Absent,
            Some(Value::Table(sub)) => Field::Ok(Tbl {
                path: t.key(key),
                t: sub,
            }),
            Some(v) => {
                self.wrong_type(t.key(key), "a table", v);
                Field::Bad
            }
        }
    }

    /// An array of tables (`[[key]]`); each element's path is `key[i]`.
    pub fn tables<'a>(&mut self, t: &Tbl<'a>, key: &str) -> Vec<(usize, Tbl<'a>)> {
        let items = match t.get(key) {
            None => return Vec::new(),
            Some(Value::Array(a)) => a,
            Some(v) => {
                self.wrong_type(t.key(key), &format!("an array of tables ([[{key}]])"), v);
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, v) in items.iter().enumerate() {
            let path = format!("{}[{i}]", t.key(key));
            match v {
                Value::Table(sub) => out.push((i, Tbl { path, t: sub })),
                v => self.wrong_type(path, "a table", v),
            }
        }
        out
    }

    /// A sub-table that may be left out: `Some` of the table, or of an empty one at the same
    /// path when absent (so its defaults and cross-checks still apply); `None` when bad.
    pub fn section<'a>(&mut self, t: &Tbl<'a>, key: &str, empty: &'a Table) -> Option<Tbl<'a>> {
        match self.table(t, key) {
            Field::Ok(sub) => Some(sub),
            Field::Absent => Some(Tbl {
                path: t.key(key),
                t: empty,
            }),
            Field::Bad => None,
        }
    }
}

/// A number outside its bounds, naming the side it violates.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub(super) enum OutOfBounds {
    #[error("must be between {lo} and {hi}, got {x}")]
    Between { lo: f64, hi: f64, x: f64 },
    #[error("must be >= {bound}, got {x}")]
    Below { bound: f64, x: f64 },
    #[error("must be > {bound}, got {x}")]
    AtOrBelow { bound: f64, x: f64 },
    #[error("must be <= {bound}, got {x}")]
    Above { bound: f64, x: f64 },
    #[error("must be < {bound}, got {x}")]
    AtOrAbove { bound: f64, x: f64 },
}

/// The bound `x` violates, if any; both-inclusive ranges read "between".
pub(super) fn check_bounds(x: f64, lo: Bound, hi: Bound) -> Result<(), OutOfBounds> {
    if let (Bound::Incl(l), Bound::Incl(h)) = (lo, hi) {
        if x >= l && x <= h {
            return Ok(());
        }
        return Err(OutOfBounds::Between { lo: l, hi: h, x });
    }
    match lo {
        Bound::Incl(bound) if x < bound => return Err(OutOfBounds::Below { bound, x }),
        Bound::Excl(bound) if x <= bound => return Err(OutOfBounds::AtOrBelow { bound, x }),
        _ => {}
    }
    match hi {
        Bound::Incl(bound) if x > bound => Err(OutOfBounds::Above { bound, x }),
        Bound::Excl(bound) if x >= bound => Err(OutOfBounds::AtOrAbove { bound, x }),
        _ => Ok(()),
    }
}
