//! A `deployment.toml` under construction: dotted-path setters, arrays of tables, deep merge.

use toml::{Table, Value};

/// A string value.
pub fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// An array of strings.
pub fn arr<I, T>(items: I) -> Value
where
    I: IntoIterator<Item = T>,
    T: Into<String>,
{
    Value::Array(items.into_iter().map(|i| Value::String(i.into())).collect())
}

/// A TOML document built in the order sections are first touched.
#[derive(Default)]
pub struct Doc {
    root: Table,
}

impl Doc {
    /// An empty document.
    pub fn new() -> Self {
        Doc::default()
    }

    fn table_at(&mut self, parts: &[&str]) -> &mut Table {
        let mut t = &mut self.root;
        for p in parts {
            let entry = t
                .entry(p.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            t = entry.as_table_mut().expect("just made a table");
        }
        t
    }

    /// Sets `a.b.c = value`, creating tables on the way (keys themselves never contain dots).
    pub fn set(&mut self, path: &str, value: Value) {
        let parts: Vec<&str> = path.split('.').collect();
        let (last, parents) = parts.split_last().expect("non-empty path");
        self.table_at(parents).insert(last.to_string(), value);
    }

    /// Appends a table to the array of tables at `path` (`[[a.b]]`).
    pub fn push(&mut self, path: &str, table: Table) {
        let parts: Vec<&str> = path.split('.').collect();
        let (last, parents) = parts.split_last().expect("non-empty path");
        let parent = self.table_at(parents);
        let entry = parent
            .entry(last.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !entry.is_array() {
            *entry = Value::Array(Vec::new());
        }
        entry
            .as_array_mut()
            .expect("just made an array")
            .push(Value::Table(table));
    }

    /// Deep-merges an override: tables merge key by key, anything else replaces.
    pub fn merge(&mut self, over: &Table) {
        merge_into(&mut self.root, over);
    }

    /// The document as TOML text.
    pub fn to_text(&self) -> String {
        to_text(&self.root)
    }

    /// The document's tree.
    pub fn into_table(self) -> Table {
        self.root
    }
}

/// A document's tree as TOML text.
pub fn to_text(table: &Table) -> String {
    toml::to_string(table).expect("a table of plain values always serializes")
}

impl std::fmt::Display for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

fn merge_into(base: &mut Table, over: &Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge_into(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_push_and_merge() {
        let mut d = Doc::new();
        d.set("server.hostname", s("a"));
        d.set("apim.cors.allow_origins", s("*"));
        let mut t = Table::new();
        t.insert("urls".into(), arr(["tcp://x:9611"]));
        d.push("apim.event_hub.publish.url_group", t);
        let over: Table = "[apim.cors]\nallow_origins = \"https://x\"\nallow_credentials = true\n[server]\noffset = 2\n"
            .parse()
            .unwrap();
        d.merge(&over);
        let back: Table = d.to_text().parse().unwrap();
        assert_eq!(back["server"]["hostname"].as_str(), Some("a"));
        assert_eq!(back["server"]["offset"].as_integer(), Some(2));
        assert_eq!(
            back["apim"]["cors"]["allow_origins"].as_str(),
            Some("https://x")
        );
        assert_eq!(
            back["apim"]["cors"]["allow_credentials"].as_bool(),
            Some(true)
        );
        assert_eq!(
            back["apim"]["event_hub"]["publish"]["url_group"][0]["urls"][0].as_str(),
            Some("tcp://x:9611")
        );
    }
}
