//! A small schema walker over a spanned TOML tree.
//!
//! serde stops at the first problem; an operator wants all of them. Each [`Fields`] reads the keys
//! the schema knows, records type errors with the value's span, and reports every key it was
//! never asked for as an unknown field, with the nearest known name as a hint.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, did_you_mean};

/// A value with the byte span it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At<T> {
    /// The value.
    pub value: T,
    /// Byte range in the plan text.
    pub span: Range<usize>,
}

impl<T> At<T> {
    /// Wraps a value with its span.
    pub fn new(value: T, span: Range<usize>) -> Self {
        At { value, span }
    }
}

/// Spanned TOML value, as toml's parser hands it out.
pub type SpannedValue<'i> = toml::Spanned<DeValue<'i>>;

/// Reads the fields of one table and remembers which ones were read.
pub struct Fields<'t, 'i> {
    table: &'t DeTable<'i>,
    /// Human name of the table, e.g. `[cluster]` or `[[nodes]] #2`.
    pub name: String,
    /// Span of the whole table, for "missing field" errors.
    pub span: Range<usize>,
    known: Vec<&'static str>,
}

impl<'t, 'i> Fields<'t, 'i> {
    /// Starts reading `table`.
    pub fn new(table: &'t DeTable<'i>, name: impl Into<String>, span: Range<usize>) -> Self {
        Fields {
            table,
            name: name.into(),
            span,
            known: Vec::new(),
        }
    }

    /// The raw value of `key`, marking it as known.
    pub fn raw(&mut self, key: &'static str) -> Option<&'t SpannedValue<'i>> {
        self.known.push(key);
        self.table.get(key)
    }

    /// Span of the key `key` itself (for duplicate or bad-key errors).
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(k, _)| k.span())
    }

    fn type_error(
        &self,
        key: &str,
        value: &SpannedValue<'i>,
        want: &str,
        out: &mut Vec<Diagnostic>,
    ) {
        out.push(Diagnostic::error(
            value.span(),
            format!(
                "`{key}` in {} must be {want}, found {}",
                self.name,
                value.get_ref().type_str()
            ),
        ));
    }

    /// A required field is missing.
    pub fn missing(&self, key: &str, out: &mut Vec<Diagnostic>, hint: &str) {
        out.push(
            Diagnostic::error(
                self.span.clone(),
                format!("{} is missing `{key}`", self.name),
            )
            .with_hint(hint.to_string()),
        );
    }

    /// An optional string field.
    pub fn string(&mut self, key: &'static str, out: &mut Vec<Diagnostic>) -> Option<At<String>> {
        let v = self.raw(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(At::new(s.to_string(), v.span())),
            None => {
                self.type_error(key, v, "a string", out);
                None
            }
        }
    }

    /// A required string field.
    pub fn req_string(
        &mut self,
        key: &'static str,
        out: &mut Vec<Diagnostic>,
        hint: &str,
    ) -> Option<At<String>> {
        let present = self.table.get(key).is_some();
        let v = self.string(key, out);
        if !present {
            self.missing(key, out, hint);
        }
        v
    }

    /// An optional boolean field.
    pub fn bool(&mut self, key: &'static str, out: &mut Vec<Diagnostic>) -> Option<At<bool>> {
        let v = self.raw(key)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(At::new(b, v.span())),
            None => {
                self.type_error(key, v, "true or false", out);
                None
            }
        }
    }

    /// An optional integer field within `range`.
    pub fn int(
        &mut self,
        key: &'static str,
        range: std::ops::RangeInclusive<i64>,
        out: &mut Vec<Diagnostic>,
    ) -> Option<At<i64>> {
        let v = self.raw(key)?;
        let Some(int) = v.get_ref().as_integer() else {
            self.type_error(key, v, "an integer", out);
            return None;
        };
        let parsed = i64::from_str_radix(&int.as_str().replace('_', ""), int.radix()).ok();
        match parsed {
            Some(n) if range.contains(&n) => Some(At::new(n, v.span())),
            Some(n) => {
                out.push(Diagnostic::error(
                    v.span(),
                    format!(
                        "`{key}` in {} is {n}, outside {}..={}",
                        self.name,
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
            None => {
                out.push(Diagnostic::error(
                    v.span(),
                    format!(
                        "`{key}` in {} is {}, outside {}..={}",
                        self.name,
                        int.as_str(),
                        range.start(),
                        range.end()
                    ),
                ));
                None
            }
        }
    }

    /// An optional array of strings.
    pub fn strings(
        &mut self,
        key: &'static str,
        out: &mut Vec<Diagnostic>,
    ) -> Option<Vec<At<String>>> {
        let v = self.raw(key)?;
        let Some(items) = v.get_ref().as_array() else {
            self.type_error(key, v, "an array of strings", out);
            return None;
        };
        let mut result = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => result.push(At::new(s.to_string(), item.span())),
                None => self.type_error(key, item, "a string", out),
            }
        }
        Some(result)
    }

    /// An optional sub-table, read with its own [`Fields`].
    pub fn table(
        &mut self,
        key: &'static str,
        out: &mut Vec<Diagnostic>,
    ) -> Option<Fields<'t, 'i>> {
        let v = self.raw(key)?;
        match v.get_ref().as_table() {
            Some(t) => Some(Fields::new(t, format!("[{key}]"), v.span())),
            None => {
                self.type_error(key, v, "a table", out);
                None
            }
        }
    }

    /// An optional array of tables (`[[key]]`), each read with its own [`Fields`].
    pub fn tables(&mut self, key: &'static str, out: &mut Vec<Diagnostic>) -> Vec<Fields<'t, 'i>> {
        let Some(v) = self.raw(key) else {
            return Vec::new();
        };
        let Some(items) = v.get_ref().as_array() else {
            self.type_error(key, v, "an array of tables ([[...]])", out);
            return Vec::new();
        };
        let mut result = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_table() {
                Some(t) => {
                    result.push(Fields::new(t, format!("[[{key}]] #{}", i + 1), item.span()))
                }
                None => self.type_error(key, item, "a table", out),
            }
        }
        result
    }

    /// Every entry of a free-form table (keys chosen by the operator), in source order.
    pub fn entries(&self) -> Vec<(At<String>, &'t SpannedValue<'i>)> {
        let mut entries: Vec<_> = self
            .table
            .iter()
            .map(|(k, v)| (At::new(k.get_ref().to_string(), k.span()), v))
            .collect();
        entries.sort_by_key(|(k, _)| k.span.start);
        entries
    }

    /// Reports every key that was never read as unknown, suggesting the nearest known key.
    pub fn finish(self, out: &mut Vec<Diagnostic>) {
        self.finish_except(|_| false, out);
    }

    /// [`Fields::finish`] for a table that also holds free-form keys (those `free` accepts,
    /// read with [`Fields::entries`]) beside its fields.
    pub fn finish_except(self, free: impl Fn(&str) -> bool, out: &mut Vec<Diagnostic>) {
        for (k, _) in self.table.iter() {
            let key = k.get_ref().as_ref();
            if self.known.contains(&key) || free(key) {
                continue;
            }
            let mut d =
                Diagnostic::error(k.span(), format!("unknown field `{key}` in {}", self.name));
            d = match did_you_mean(key, self.known.iter().copied()) {
                Some(near) => d.with_hint(format!("did you mean `{near}`?")),
                None => d.with_hint(format!("known fields: {}", self.known.join(", "))),
            };
            out.push(d);
        }
    }
}
