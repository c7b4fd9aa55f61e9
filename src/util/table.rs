//! The plain-text table printer shared by every layer's human-readable output.

/// Seconds as a short signed duration (`+9m 58s`, `-12s`, `+2h 1m`): how slack is written
/// everywhere, the status's tenants and the client's tables alike.
pub fn signed_duration(s: f64) -> String {
    let sign = if s < 0.0 { "-" } else { "+" };
    let t = s.abs().round() as u64;
    let (h, m, sec) = (t / 3600, (t / 60) % 60, t % 60);
    if h > 0 {
        format!("{sign}{h}h {m}m")
    } else if m > 0 {
        format!("{sign}{m}m {sec}s")
    } else {
        format!("{sign}{sec}s")
    }
}

/// An RFC 3339 time without its fraction of a second (`2026-11-28T17:54:04Z`): how times
/// are written in tables and in the status's set points.
pub fn to_the_second(t: &str) -> String {
    match t.find('.') {
        Some(dot) => {
            let frac_end = t[dot + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(t.len(), |i| dot + 1 + i);
            format!("{}{}", &t[..dot], &t[frac_end..])
        }
        None => t.to_string(),
    }
}

/// A text table: each column as wide as its widest cell (or a minimum), left-aligned unless
/// asked otherwise, columns separated by two spaces (or another gap), no trailing spaces.
/// The one table printer of the command-line outputs, client, bench and telemetry alike.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
    min_width: Vec<usize>,
    gap: Option<&'static str>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            right: vec![false; header.len()],
            min_width: vec![0; header.len()],
            gap: None,
        }
    }

    /// Makes the columns at least this wide, in order (fixed-width layouts).
    pub(crate) fn min_widths(mut self, widths: &[usize]) -> Self {
        for (m, &w) in self.min_width.iter_mut().zip(widths) {
            *m = w;
        }
        self
    }

    /// Separates the columns with `gap` instead of two spaces.
    pub fn gap(mut self, gap: &'static str) -> Self {
        self.gap = Some(gap);
        self
    }

    /// Right-aligns the columns at these indices (numbers).
    pub(crate) fn right_align(mut self, cols: &[usize]) -> Self {
        for &c in cols {
            if c < self.right.len() {
                self.right[c] = true;
            }
        }
        self
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.lines() {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// The table's lines without their `\n`: the header, then one per row in order (for
    /// layouts that put other lines between the rows).
    pub fn lines(&self) -> Vec<String> {
        let cols = self.header.len();
        let gap = self.gap.unwrap_or("  ");
        let mut width = self.min_width.clone();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = Vec::with_capacity(self.rows.len() + 1);
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in width.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str(gap);
                }
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < cols {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push(line.trim_end().to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["A", "NUM"]).right_align(&[1]);
        t.row(vec!["long name".into(), "5".into()]);
        t.row(vec!["x".into(), "12345".into()]);
        assert_eq!(
            t.render(),
            "A            NUM\nlong name      5\nx          12345\n"
        );
    }
}
