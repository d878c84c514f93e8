//! The pack's own file as the base of a node's `deployment.toml`: the rendered tree is merged
//! onto it, so every default the pack ships and the plan does not touch survives (docs/plan.md,
//! "The base file"). Tables merge key by key; an array of tables the plan writes replaces the
//! base's at the same path; any other value replaces the base's; a `[database.*]` section the
//! document has replaces the base's whole (a base `url` next to the plan's host and port would
//! win and point the node at the pack's H2 file). The base's comments, key order and layout are
//! kept where the plan leaves them.

use toml::Value;
use toml_edit::{ArrayOfTables, DocumentMut, InlineTable, Item, Table};

/// `tree` merged onto the TOML text `base`; `Err` says why the base does not parse (with its
/// line and column).
pub(super) fn merge(base: &str, tree: &toml::Table) -> Result<String, String> {
    let mut doc: DocumentMut = base
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string().trim_end().replace('\n', " "))?;
    // `[secrets]` is apimctl's (the secure vault appends it last); a pack's would clash.
    doc.as_table_mut()
        .remove(crate::catalogue::vault::SECRETS_TABLE);
    merge_table(doc.as_table_mut(), tree, &[]);
    Ok(doc.to_string())
}

/// Tables whose every subtable the document writes whole.
const WHOLE_SUBTABLES: [&str; 1] = ["database"];

fn is_table_array(a: &[Value]) -> bool {
    !a.is_empty() && a.iter().all(Value::is_table)
}

fn merge_table(base: &mut Table, over: &toml::Table, path: &[&str]) {
    let whole = matches!(path, [p] if WHOLE_SUBTABLES.contains(p));
    for (k, v) in over {
        match v {
            Value::Table(t) if whole => {
                let decor = base
                    .get(k)
                    .and_then(Item::as_table)
                    .map(|b| b.decor().clone());
                let mut n = new_table(t);
                if let Some(d) = decor {
                    *n.decor_mut() = d;
                }
                base.insert(k, Item::Table(n));
            }
            Value::Table(t) => match base.get_mut(k) {
                Some(Item::Table(b)) => merge_table(b, t, &[path, &[k.as_str()]].concat()),
                Some(Item::Value(toml_edit::Value::InlineTable(b))) => merge_inline(b, t),
                _ => {
                    base.insert(k, Item::Table(new_table(t)));
                }
            },
            Value::Array(a) if is_table_array(a) => {
                let mut aot = ArrayOfTables::new();
                for t in a.iter().filter_map(Value::as_table) {
                    aot.push(new_table(t));
                }
                base.insert(k, Item::ArrayOfTables(aot));
            }
            v => match base.get_mut(k) {
                Some(Item::Value(old)) => replace_value(old, value(v)),
                _ => {
                    base.insert(k, Item::Value(value(v)));
                }
            },
        }
    }
}

/// A table the base does not have, written as a `[header]` (or none, when it only holds
/// subtables).
fn new_table(t: &toml::Table) -> Table {
    let mut n = Table::new();
    n.set_implicit(!t.is_empty());
    merge_table(&mut n, t, &[]);
    n
}

/// Merging into an inline table of the base keeps it inline.
fn merge_inline(base: &mut InlineTable, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml_edit::Value::InlineTable(b)), Value::Table(t)) => merge_inline(b, t),
            (Some(old), v) => replace_value(old, value(v)),
            (None, v) => {
                base.insert(k, value(v));
            }
        }
    }
}

/// Replaces a value, keeping the spacing and the comment around it.
fn replace_value(old: &mut toml_edit::Value, new: toml_edit::Value) {
    let decor = old.decor().clone();
    *old = new;
    *old.decor_mut() = decor;
}

fn value(v: &Value) -> toml_edit::Value {
    match v {
        Value::String(s) => s.as_str().into(),
        Value::Integer(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Boolean(b) => (*b).into(),
        Value::Datetime(d) => {
            let text = d.to_string();
            text.parse::<toml_edit::Datetime>()
                .map_or_else(|_| text.as_str().into(), Into::into)
        }
        Value::Array(a) => toml_edit::Value::Array(a.iter().map(value).collect()),
        Value::Table(t) => {
            toml_edit::Value::InlineTable(t.iter().map(|(k, v)| (k.as_str(), value(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"# The pack's own comment.
[server]
hostname = "localhost"  # change me
node_ip = "127.0.0.1"

[super_admin]
username = "admin"
password = "admin"
create_admin_account = true

[[apim.gateway.environment]]
name = "Default"
type = "hybrid"

[[event_handler]]
name = "userPostSelfRegistration"
subscriptions = ["POST_ADD_USER"]

[service_provider]
sp_name_regex = "^[\\sa-zA-Z0-9._-]*$"

[database.apim_db]  # H2 out of the box
type = "h2"
url = "jdbc:h2:./repository/database/WSO2AM_DB"

[apim.throttling]
inline = { enable = true, limit = 1 }
"#;

    fn merged(over: &str) -> (String, toml::Table) {
        let text = merge(BASE, &over.parse().unwrap()).unwrap();
        assert_eq!(
            merge(&text, &over.parse().unwrap()).unwrap(),
            text,
            "idempotent"
        );
        let table = text.parse().unwrap();
        (text, table)
    }

    #[test]
    fn keeps_what_the_plan_does_not_touch_and_its_comments() {
        let (text, t) = merged(
            "[server]\nhostname = \"gw.example.com\"\noffset = 3\n[super_admin]\npassword = \"s3cret\"\n",
        );
        assert!(
            text.starts_with("# The pack's own comment.\n[server]\n"),
            "{text}"
        );
        assert!(
            text.contains("hostname = \"gw.example.com\"  # change me"),
            "{text}"
        );
        assert_eq!(t["server"]["offset"].as_integer(), Some(3));
        assert_eq!(t["server"]["node_ip"].as_str(), Some("127.0.0.1"));
        assert_eq!(
            t["super_admin"]["create_admin_account"].as_bool(),
            Some(true)
        );
        assert_eq!(t["super_admin"]["password"].as_str(), Some("s3cret"));
        assert_eq!(
            t["event_handler"][0]["name"].as_str(),
            Some("userPostSelfRegistration")
        );
        assert_eq!(
            t["service_provider"]["sp_name_regex"].as_str(),
            Some("^[\\sa-zA-Z0-9._-]*$")
        );
    }

    #[test]
    fn arrays_of_tables_replace_and_new_tables_are_added() {
        let (_, t) = merged(
            "[[apim.gateway.environment]]\nname = \"External\"\n[[apim.gateway.environment]]\nname = \"Internal\"\n[apim.key_manager]\nservice_url = \"https://km:9443/services/\"\n[apim.throttling.inline]\nlimit = 5\n",
        );
        let envs = t["apim"]["gateway"]["environment"].as_array().unwrap();
        assert_eq!(envs.len(), 2);
        assert_eq!(envs[0]["name"].as_str(), Some("External"));
        assert!(envs[0].get("type").is_none(), "replaced, not merged");
        assert_eq!(
            t["apim"]["key_manager"]["service_url"].as_str(),
            Some("https://km:9443/services/")
        );
        let inline = &t["apim"]["throttling"]["inline"];
        assert_eq!(
            (inline["enable"].as_bool(), inline["limit"].as_integer()),
            (Some(true), Some(5))
        );
    }

    #[test]
    fn a_database_section_is_replaced_whole() {
        let (text, t) = merged(
            "[database.apim_db]\ntype = \"mysql\"\nhostname = \"db\"\nport = 3306\nname = \"apim\"\n",
        );
        let db = t["database"]["apim_db"].as_table().unwrap();
        assert_eq!(db["type"].as_str(), Some("mysql"));
        assert!(db.get("url").is_none(), "the pack's H2 url is gone: {text}");
        assert!(
            text.contains("[database.apim_db]  # H2 out of the box"),
            "{text}"
        );
    }

    #[test]
    fn a_base_that_does_not_parse_says_where() {
        let e = merge("[server\nhostname = 1\n", &toml::Table::new()).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}
