//! Splitting SQL script text into statements, and finding the tables a script creates.
//!
//! The splitter reads quotes and comments as each engine's own command-line client does, so a
//! `;` inside a string, an identifier, a comment or a PostgreSQL dollar-quoted body never ends a
//! statement. Comments outside MySQL's executable `/*! … */` form are replaced by whitespace
//! (the statement's text keeps its shape; a statement of only comments is dropped).

use crate::{DbError, Engine, Statement};

/// The splitter's position in a script.
struct Cursor {
    engine: Engine,
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Cursor {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        let mut i = self.pos;
        for c in s.chars() {
            match self.chars.get(i) {
                Some(d) if *d == c => i += 1,
                _ => return false,
            }
        }
        true
    }

    fn starts_with_ignore_case(&self, s: &str) -> bool {
        let mut i = self.pos;
        for c in s.chars() {
            match self.chars.get(i) {
                Some(d) if d.eq_ignore_ascii_case(&c) => i += 1,
                _ => return false,
            }
        }
        true
    }

    /// Consumes one character, counting lines.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn prev_is_ident(&self) -> bool {
        self.pos > 0 && is_ident_char(self.chars[self.pos - 1])
    }

    fn error(&self, line: usize, reason: impl Into<String>) -> DbError {
        DbError::Script {
            script: String::new(),
            line,
            reason: reason.into(),
        }
    }

    /// Whether a line comment starts here (`--` and, for MySQL, `#`).
    fn at_line_comment(&self) -> bool {
        match self.engine {
            // MySQL needs whitespace (or a control character, or the end) after `--`.
            Engine::Mysql => {
                self.peek(0) == Some('#')
                    || (self.starts_with("--")
                        && self
                            .peek(2)
                            .is_none_or(|c| c.is_whitespace() || c.is_control()))
            }
            Engine::Postgres => self.starts_with("--"),
        }
    }

    /// Skips a line comment up to (not including) its newline.
    fn skip_line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// Skips a block comment (nested in PostgreSQL), pushing its newlines to `out`.
    fn skip_block_comment(&mut self, out: &mut String) -> Result<(), DbError> {
        let start = self.line;
        self.bump();
        self.bump();
        let mut depth = 1usize;
        loop {
            if self.starts_with("*/") {
                self.bump();
                self.bump();
                depth -= 1;
                if depth == 0 {
                    out.push(' ');
                    return Ok(());
                }
            } else if self.engine == Engine::Postgres && self.starts_with("/*") {
                self.bump();
                self.bump();
                depth += 1;
            } else {
                match self.bump() {
                    Some('\n') => out.push('\n'),
                    Some(_) => {}
                    None => return Err(self.error(start, "unterminated /* comment")),
                }
            }
        }
    }

    /// Copies a quoted string or identifier to `out`. `backslash`: backslash escapes the next
    /// character. A doubled quote is always the quote itself.
    fn copy_quoted(&mut self, out: &mut String, backslash: bool) -> Result<(), DbError> {
        let start = self.line;
        let quote = self.bump().expect("at a quote");
        out.push(quote);
        loop {
            let Some(c) = self.bump() else {
                let what = match quote {
                    '\'' => "string",
                    '`' => "`identifier`",
                    _ => "quoted identifier or string",
                };
                return Err(self.error(start, format!("unterminated {what} (opened with {quote})")));
            };
            out.push(c);
            if backslash && c == '\\' {
                if let Some(n) = self.bump() {
                    out.push(n);
                }
            } else if c == quote {
                if self.peek(0) == Some(quote) {
                    out.push(self.bump().expect("peeked"));
                } else {
                    return Ok(());
                }
            }
        }
    }

    /// The dollar-quote tag (`$$` or `$tag$`) starting here, if any (PostgreSQL).
    fn dollar_tag(&self) -> Option<String> {
        if self.peek(0) != Some('$') || self.prev_is_ident() {
            return None;
        }
        let mut tag = String::from("$");
        let mut i = 1;
        while let Some(c) = self.peek(i) {
            if c == '$' {
                tag.push('$');
                return Some(tag);
            }
            let ok = if i == 1 {
                c.is_alphabetic() || c == '_'
            } else {
                is_ident_char(c)
            };
            if !ok {
                return None;
            }
            tag.push(c);
            i += 1;
        }
        None
    }

    /// Copies a dollar-quoted string whose opening `tag` starts here.
    fn copy_dollar(&mut self, out: &mut String, tag: &str) -> Result<(), DbError> {
        let start = self.line;
        for _ in tag.chars() {
            out.push(self.bump().expect("tag"));
        }
        loop {
            if self.starts_with(tag) {
                for _ in tag.chars() {
                    out.push(self.bump().expect("tag"));
                }
                return Ok(());
            }
            match self.bump() {
                Some(c) => out.push(c),
                None => return Err(self.error(start, format!("unterminated {tag} quoted body"))),
            }
        }
    }

    /// A `DELIMITER x` directive starting here (MySQL, at a statement's start): the new
    /// delimiter, the directive consumed up to its newline.
    fn delimiter_directive(&mut self) -> Result<Option<String>, DbError> {
        if self.engine != Engine::Mysql
            || !self.starts_with_ignore_case("delimiter")
            || !self.peek(9).is_some_and(|c| c == ' ' || c == '\t')
        {
            return Ok(None);
        }
        let line = self.line;
        self.pos += 9;
        let mut rest = String::new();
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                break;
            }
            rest.push(c);
            self.bump();
        }
        let delim = rest.split_whitespace().next().unwrap_or("").to_owned();
        if delim.is_empty() {
            return Err(self.error(line, "DELIMITER without a delimiter"));
        }
        Ok(Some(delim))
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Splits a script into statements with their first line; handles `--` comments, `#` comments
/// (mysql), `/* */`, '…' "…" `…` quoting with doubled-quote and backslash escapes as each engine
/// reads them, PostgreSQL dollar quoting ($$…$$, $tag$…$tag$), MySQL `DELIMITER x` directives, a
/// last statement without `;`, and drops empty statements.
///
/// MySQL: `'…'` and `"…"` are strings with backslash escapes, `` `…` `` identifiers; `--` is a
/// comment only before whitespace. PostgreSQL: `'…'` standard strings (no backslash escapes,
/// except in `E'…'`), `"…"` identifiers, nested `/* */`. The errors are [`DbError::Script`]
/// with an empty `script` (the caller names it).
pub fn split(engine: Engine, script: &str) -> Result<Vec<Statement>, DbError> {
    let mut cur = Cursor {
        engine,
        chars: script.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut delimiter = String::from(";");
    let mut out = Vec::new();
    let mut text = String::new();
    // The line of the statement's first character that is neither whitespace nor comment.
    let mut first: Option<usize> = None;
    let finish = |text: &mut String, first: &mut Option<usize>, out: &mut Vec<Statement>| {
        let t = text.trim();
        if let Some(line) = first.take()
            && !t.is_empty()
        {
            out.push(Statement {
                text: t.to_owned(),
                line,
            });
        }
        text.clear();
    };
    while let Some(c) = cur.peek(0) {
        if first.is_none() {
            if c.is_whitespace() {
                cur.bump();
                continue;
            }
            if let Some(d) = cur.delimiter_directive()? {
                delimiter = d;
                continue;
            }
        }
        if cur.starts_with(&delimiter) {
            for _ in delimiter.chars() {
                cur.bump();
            }
            finish(&mut text, &mut first, &mut out);
            continue;
        }
        if cur.at_line_comment() {
            cur.skip_line_comment();
            continue;
        }
        if cur.starts_with("/*") && !(engine == Engine::Mysql && cur.peek(2) == Some('!')) {
            cur.skip_block_comment(&mut text)?;
            continue;
        }
        first.get_or_insert(cur.line);
        match (engine, c) {
            (Engine::Mysql, '\'' | '"') => cur.copy_quoted(&mut text, true)?,
            (Engine::Mysql, '`') => cur.copy_quoted(&mut text, false)?,
            (Engine::Postgres, '"') => cur.copy_quoted(&mut text, false)?,
            (Engine::Postgres, '\'') => {
                // E'…' (escape string): backslash escapes; 'E' must start a token.
                let escape = text.ends_with(['e', 'E']) && {
                    let before = text[..text.len() - 1].chars().next_back();
                    !before.is_some_and(is_ident_char)
                };
                cur.copy_quoted(&mut text, escape)?;
            }
            (Engine::Postgres, '$') => match cur.dollar_tag() {
                Some(tag) => cur.copy_dollar(&mut text, &tag)?,
                None => text.push(cur.bump().expect("peeked")),
            },
            (Engine::Mysql, '/') if cur.starts_with("/*!") => {
                // Executable comment: kept verbatim.
                let start = cur.line;
                while !cur.starts_with("*/") {
                    match cur.bump() {
                        Some(ch) => text.push(ch),
                        None => return Err(cur.error(start, "unterminated /*! comment")),
                    }
                }
                cur.bump();
                cur.bump();
                text.push_str("*/");
            }
            _ => text.push(cur.bump().expect("peeked")),
        }
    }
    finish(&mut text, &mut first, &mut out);
    Ok(out)
}

/// A token at the head of a statement.
#[derive(Debug, PartialEq)]
enum Token {
    /// A bare word, as written.
    Word(String),
    /// A quoted identifier's content.
    Quoted(String),
    /// Any other character.
    Punct(char),
}

/// The first `max` tokens of a statement's text (comments were already removed by [`split`]).
fn head_tokens(text: &str, max: usize) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut tokens = Vec::new();
    while i < chars.len() && tokens.len() < max {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if is_ident_char(c) {
            let start = i;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else if c == '"' || c == '`' || c == '[' {
            let close = if c == '[' { ']' } else { c };
            let mut s = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == close {
                    if chars.get(i + 1) == Some(&close) && close != ']' {
                        s.push(close);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                s.push(chars[i]);
                i += 1;
            }
            tokens.push(Token::Quoted(s));
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

/// The table a `CREATE TABLE` statement creates (lower-cased, without its schema), if it is one.
/// Temporary tables do not count: they do not outlive the session.
pub(crate) fn created_table(text: &str) -> Option<String> {
    let tokens = head_tokens(text, 16);
    let word = |i: usize, w: &str| matches!(tokens.get(i), Some(Token::Word(x)) if x.eq_ignore_ascii_case(w));
    if !word(0, "create") {
        return None;
    }
    let mut i = 1;
    if word(i, "or") && word(i + 1, "replace") {
        i += 2;
    }
    if word(i, "temporary") || word(i, "temp") {
        return None;
    }
    if (word(i, "global") || word(i, "local")) && (word(i + 1, "temporary") || word(i + 1, "temp"))
    {
        return None;
    }
    if word(i, "unlogged") {
        i += 1;
    }
    if !word(i, "table") {
        return None;
    }
    i += 1;
    if word(i, "if") && word(i + 1, "not") && word(i + 2, "exists") {
        i += 3;
    }
    // [schema.]name: the last part before anything that is not a dot.
    let mut name = None;
    loop {
        match tokens.get(i) {
            Some(Token::Word(w) | Token::Quoted(w)) => name = Some(w.to_lowercase()),
            _ => return name,
        }
        if tokens.get(i + 1) == Some(&Token::Punct('.')) {
            i += 2;
        } else {
            return name;
        }
    }
}

/// The tables a script creates (`CREATE TABLE [IF NOT EXISTS] [schema.]name`, any quoting),
/// lower-cased, de-duplicated, in order.
pub fn tables_of(engine: Engine, script: &str) -> Result<Vec<String>, DbError> {
    let mut tables: Vec<String> = Vec::new();
    for s in split(engine, script)? {
        if let Some(t) = created_table(&s.text)
            && !tables.contains(&t)
        {
            tables.push(t);
        }
    }
    Ok(tables)
}
