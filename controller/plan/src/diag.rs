//! Diagnostics about a plan: what is wrong, where (byte span → `file:line:col`), and a hint.
//!
//! The validator collects every problem instead of stopping at the first, so the operator fixes a
//! plan in one pass. Rendering shows `PLAN:LINE:COL: error: message`, the source line with the
//! offending text underlined, and the hint.

use std::fmt::Write as _;
use std::ops::Range;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The plan works but something is risky (e.g. a literal secret).
    Warning,
    /// The plan cannot be applied.
    Error,
}

/// One problem found in a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, naming the field or node.
    pub message: String,
    /// Byte range of the offending text in the plan.
    pub span: Range<usize>,
    /// How to fix it, if there is something useful to say.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            hint: None,
        }
    }

    /// A warning at `span`.
    pub fn warning(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            message: message.into(),
            span,
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The diagnostics of one plan file, with the text they point into.
#[derive(Clone, Debug)]
pub struct Report {
    /// The path as the operator gave it, for `file:line:col`.
    pub path: String,
    /// The plan text.
    pub source: String,
    /// Every diagnostic, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// Number of errors and warnings.
    pub fn counts(&self) -> (usize, usize) {
        let errors = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        (errors, self.diagnostics.len() - errors)
    }

    /// `file:line:col` of a diagnostic.
    pub fn location(&self, d: &Diagnostic) -> String {
        let (line, col) = line_col(&self.source, d.span.start);
        format!("{}:{line}:{col}", self.path)
    }

    /// Renders every diagnostic as plain text: location, message, the source line with the span
    /// underlined, and the hint.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            self.render_one(d, &mut out);
        }
        let (errors, warnings) = self.counts();
        if errors + warnings > 0 {
            let _ = writeln!(
                out,
                "{}: {errors} error(s), {warnings} warning(s)",
                self.path
            );
        }
        out
    }

    fn render_one(&self, d: &Diagnostic, out: &mut String) {
        let kind = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{}: {kind}: {}", self.location(d), d.message);
        let start = floor_char_boundary(&self.source, d.span.start.min(self.source.len()));
        let line_start = self.source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.source[start..]
            .find('\n')
            .map_or(self.source.len(), |i| start + i);
        let line_text = self.source[line_start..line_end].trim_end_matches('\r');
        let (line_no, col) = line_col(&self.source, start);
        let gutter = line_no.to_string().len();
        let end = floor_char_boundary(&self.source, d.span.end.min(line_end).max(start));
        let width = self.source[start..end].chars().count().max(1);
        // A very long line is shown as a window around the span (a plan may hold a 1 MB value).
        let skip = (col - 1).saturating_sub(SHOWN_BEFORE);
        let shown: String = line_text.chars().skip(skip).take(SHOWN_LINE).collect();
        let cut = line_text.chars().count() > skip + SHOWN_LINE;
        let _ = writeln!(out, "{:gutter$} |", "");
        let _ = writeln!(
            out,
            "{line_no} | {}{shown}{}",
            if skip > 0 { "…" } else { "" },
            if cut { "…" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:gutter$} | {}{}{}",
            "",
            if skip > 0 { " " } else { "" },
            " ".repeat(col - 1 - skip),
            "^".repeat(width.min(SHOWN_LINE - (col - 1 - skip)).max(1))
        );
        if let Some(hint) = &d.hint {
            let _ = writeln!(out, "{:gutter$} = hint: {hint}", "");
        }
        out.push('\n');
    }
}

/// Characters of a source line shown before a diagnostic's column, at most.
const SHOWN_BEFORE: usize = 40;
/// Characters of a source line shown, at most.
const SHOWN_LINE: usize = 160;

/// The known name closest to `unknown`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    unknown: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 8), (2, 3));
    }

    #[test]
    fn render_underlines_the_span() {
        let report = Report {
            path: "plan.toml".into(),
            source: "[cluster]\nnmae = \"x\"\n".into(),
            diagnostics: vec![
                Diagnostic::error(10..14, "unknown field `nmae` in [cluster]")
                    .with_hint("did you mean `name`?"),
            ],
        };
        let text = report.render();
        assert!(
            text.starts_with("plan.toml:2:1: error: unknown field `nmae`"),
            "{text}"
        );
        assert!(text.contains("2 | nmae = \"x\"\n  | ^^^^\n"), "{text}");
        assert!(text.contains("= hint: did you mean `name`?"), "{text}");
        assert!(text.contains("1 error(s), 0 warning(s)"));
    }

    #[test]
    fn a_long_line_is_shown_as_a_window_around_the_span() {
        let source = format!("name = \"{}\"\n", "x".repeat(10_000));
        let report = Report {
            path: "plan.toml".into(),
            source: source.clone(),
            diagnostics: vec![Diagnostic::error(5000..5003, "bad")],
        };
        let text = report.render();
        assert!(text.len() < 1000, "{} bytes", text.len());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].starts_with("1 | …x") && lines[2].ends_with("x…"),
            "{}",
            lines[2]
        );
        let caret = lines[3].find('^').unwrap();
        assert_eq!(caret, "1 | …".chars().count() + 40, "{}", lines[3]);
    }

    #[test]
    fn suggestions_need_to_be_close() {
        assert_eq!(
            did_you_mean("hostnmae", ["hostname", "offset"]),
            Some("hostname")
        );
        assert_eq!(did_you_mean("zzz", ["hostname", "offset"]), None);
    }
}
