//! [`Table`]: aligned text columns with a header row, as every listing command prints them
//! (`status`, `agents`, `history`, …). Widths come from the cells, never from the terminal,
//! so output is the same in a terminal, a pipe and a test. Every cell is shown through
//! [`printable`]: a name or message from an agent cannot break the table or drive the terminal.

use apim_proto::text::printable;

/// A table: a header, then rows; columns separated by two spaces, each as wide as its widest
/// cell; the last column is not padded (it may be long: a step, an error) and no line ends in
/// spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (upper case by convention: `MACHINE`, `NODE`, …).
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| printable(c.as_ref()).into_owned())
            .collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
        self
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header line and one line per row.
    pub fn lines(&self) -> Vec<String> {
        let width = |c: &str| c.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let last = widths.len().saturating_sub(1);
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|r| {
                let mut line = String::new();
                for (i, c) in r.iter().enumerate() {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    line.push_str(c);
                    if i < last {
                        line.extend(std::iter::repeat_n(' ', widths[i] - width(c)));
                    }
                }
                line.trim_end().to_string()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_their_widest_cell_and_lines_end_clean() {
        let mut t = Table::new(&["NAME", "N", "NOTE"]);
        t.row(["a", "10", ""])
            .row(["long-name", "2", "a long note"]);
        assert_eq!(
            t.lines(),
            [
                "NAME       N   NOTE",
                "a          10",
                "long-name  2   a long note"
            ]
        );
    }

    #[test]
    fn cells_cannot_forge_lines_or_escape_sequences() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["x\ny", "\u{1b}[2J"]);
        let lines = t.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], "x\\ny  \\e[2J");
    }
}
