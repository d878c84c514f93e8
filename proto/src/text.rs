//! Text an agent sends (a node's step, its last error, a command's message, facts) is untrusted
//! when it reaches an operator's terminal or a log: [`printable`] shows every control character,
//! line break and bidirectional override as a visible escape, so it can neither forge a line,
//! move the cursor, set a window title nor reorder what is shown.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        // Bidirectional embeddings, overrides and isolates ("Trojan source").
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        // Line and paragraph separators.
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `s` with every unsafe character escaped (`\n`, `\t`, `\r`, `\e`, else `\u{…}`); borrowed
/// when there is nothing to escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_and_bidi_overrides_become_visible() {
        assert!(matches!(
            printable("ready after 3.2 s"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("x\nvm-km-1 km-1 failed\r\u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "x\\nvm-km-1 km-1 failed\\r\\e[2J\\e]0;pwned\\u{7}"
        );
        assert_eq!(printable("a\u{202e}b\u{9b}c"), "a\\u{202e}b\\u{9b}c");
        assert_eq!(printable("déjà vu ✓"), "déjà vu ✓");
    }
}
