//! Aligned text tables for `vpnctl`'s human output.

/// A table with a header row; columns whose cells are all numbers are right-aligned.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut r: Vec<String> = cells.into_iter().map(Into::into).collect();
        r.resize(self.headers.len(), String::new());
        self.rows.push(r);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The header row and every row, columns separated by two spaces, no trailing blanks.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let width: Vec<usize> = (0..n)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.headers[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let numeric: Vec<bool> = (0..n)
            .map(|c| {
                !self.rows.is_empty()
                    && self.rows.iter().all(|r| is_number(&r[c]) || r[c] == "-")
                    && self.rows.iter().any(|r| is_number(&r[c]))
            })
            .collect();
        let mut out = String::new();
        for (i, r) in std::iter::once(&self.headers)
            .chain(self.rows.iter())
            .enumerate()
        {
            let mut line = String::new();
            for c in 0..n {
                if c > 0 {
                    line.push_str("  ");
                }
                let pad = width[c] - r[c].chars().count();
                if numeric[c] && i > 0 {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(&r[c]);
                } else if numeric[c] {
                    // Headers of numeric columns are right-aligned too.
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(&r[c]);
                } else {
                    line.push_str(&r[c]);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn is_number(s: &str) -> bool {
    let s = s.strip_suffix("/s").unwrap_or(s);
    !s.is_empty()
        && s.matches('.').count() <= 1
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',' || c == '-' || c == '+')
}

/// "0x0000f0e0": SPIs the way `ip xfrm` and strongSwan show them.
pub fn spi(v: u32) -> String {
    format!("0x{v:08x}")
}

/// Seconds as "1h02m03s" / "4m05s" / "12s".
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_and_right_aligns_numbers() {
        let mut t = Table::new(&["NAME", "PACKETS", "STATE"]);
        t.row(["east-west", "5", "ACTIVE"]);
        t.row(["a", "12345", "DOWN"]);
        let s = t.render();
        assert_eq!(
            s,
            "NAME       PACKETS  STATE\n\
             east-west        5  ACTIVE\n\
             a            12345  DOWN\n"
        );
    }

    #[test]
    fn header_only_and_short_rows() {
        let mut t = Table::new(&["A", "B"]);
        assert_eq!(t.render(), "A  B\n");
        t.row(["x"]);
        assert_eq!(t.render(), "A  B\nx\n");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn formats() {
        assert_eq!(spi(0xf0e0), "0x0000f0e0");
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(65), "1m05s");
        assert_eq!(duration(3723), "1h02m03s");
        assert!(is_number("1.5/s"));
        assert!(!is_number("-"));
        assert!(!is_number("10.1.0.0/24"));
        assert!(!is_number("10.1.0.5"));
    }
}
