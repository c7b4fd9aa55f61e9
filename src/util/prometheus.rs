//! The Prometheus text exposition format (0.0.4): metric families declared once (name, type,
//! help) and written from tables, for the node's metrics and the GPU telemetry alike.

use std::fmt::Write;

use super::histogram::Histogram;

/// The type of a metric family, as `# TYPE` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family: its name, type and help text, each written once.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Family {
    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Counter,
            help,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Gauge,
            help,
        }
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Histogram,
            help,
        }
    }
}

/// One row of a metrics table: a family and how its samples are read from a context `C`.
pub(crate) type Row<C> = (Family, fn(&C, &mut Samples<'_>));

/// Whether a family with no samples is written (its `# HELP` and `# TYPE` alone) or left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Empty {
    Keep,
    Omit,
}

/// The sample lines of one family, written after its header.
pub struct Samples<'a> {
    name: &'static str,
    text: &'a mut String,
    written: usize,
}

impl Samples<'_> {
    /// One sample: `name{labels} value`.
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        self.line(self.name, "", labels, value);
    }

    /// A histogram's cumulative buckets, sum and count.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) {
        for (bound, count) in h.cumulative() {
            let le = number(bound);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.line(self.name, "_bucket", &l, count as f64);
        }
        self.line(self.name, "_sum", labels, h.sum);
        self.line(self.name, "_count", labels, h.count as f64);
    }

    fn line(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: f64) {
        let out = &mut *self.text;
        out.push_str(name);
        out.push_str(suffix);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", number(value));
        self.written += 1;
    }
}

/// Appends one family to `out`: its header, then the samples `fill` adds. With
/// [`Empty::Omit`] a family to which `fill` adds nothing is left out entirely.
pub(crate) fn family(
    out: &mut String,
    f: &Family,
    empty: Empty,
    fill: impl FnOnce(&mut Samples<'_>),
) {
    let start = out.len();
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
    let mut samples = Samples {
        name: f.name,
        text: out,
        written: 0,
    };
    fill(&mut samples);
    if samples.written == 0 && empty == Empty::Omit {
        out.truncate(start);
    }
}

/// Appends every family of `rows`, in order, with its samples read from `ctx`.
pub fn table<C, F>(out: &mut String, rows: &[(Family, F)], ctx: &C, empty: Empty)
where
    C: ?Sized,
    F: Fn(&C, &mut Samples<'_>),
{
    for (f, fill) in rows {
        family(out, f, empty, |s| fill(ctx, s));
    }
}

/// 1 for true, 0 for false.
pub fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as Prometheus writes it (`NaN`, `+Inf`, `-Inf`, else the shortest decimal).
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn numbers_print_like_prometheus() {
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(3e9), "3000000000");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }

    const ROWS: [Row<Vec<f64>>; 2] = [
        (Family::gauge("x_ratio", "An x."), |v, s| {
            for (i, x) in v.iter().enumerate() {
                s.add(&[("i", &i.to_string())], *x);
            }
        }),
        (Family::counter("y_total", "A y."), |_, s| s.add(&[], 2.0)),
    ];

    #[test]
    fn a_table_writes_headers_and_samples_in_order() {
        let mut out = String::new();
        table(&mut out, &ROWS, &vec![0.5], Empty::Omit);
        assert_eq!(
            out,
            "# HELP x_ratio An x.\n# TYPE x_ratio gauge\nx_ratio{i=\"0\"} 0.5\n\
             # HELP y_total A y.\n# TYPE y_total counter\ny_total 2\n"
        );
    }

    #[test]
    fn an_empty_family_is_kept_or_left_out() {
        let mut kept = String::new();
        table(&mut kept, &ROWS[..1], &vec![], Empty::Keep);
        assert_eq!(kept, "# HELP x_ratio An x.\n# TYPE x_ratio gauge\n");
        let mut omitted = String::from("# before\n");
        table(&mut omitted, &ROWS[..1], &vec![], Empty::Omit);
        assert_eq!(omitted, "# before\n");
    }

    #[test]
    fn a_histogram_writes_buckets_sum_and_count() {
        let mut out = String::new();
        let h = Histogram::new(&[1.0]);
        family(
            &mut out,
            &Family::histogram("h", "An h."),
            Empty::Keep,
            |s| s.histogram(&[("a", "b")], &h),
        );
        assert!(out.contains("h_bucket{a=\"b\",le=\"1\"} 0\n"), "{out}");
        assert!(out.contains("h_bucket{a=\"b\",le=\"+Inf\"} 0\n"), "{out}");
        assert!(
            out.ends_with("h_sum{a=\"b\"} 0\nh_count{a=\"b\"} 0\n"),
            "{out}"
        );
    }
}
