//! `[drivers]` and `[databases.*] init`: the rules and what each node's render carries.

use std::collections::BTreeMap;

use apim_plan::catalogue::DbType;
use apim_plan::pack::PackSet;
use apim_plan::render;
use apim_plan::validate::{self, Options};
use apim_testkit::plans::{Fixture, MYSQL_DRIVER_FILE, expect_error, mysql_driver_jar};

fn with(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "`{from}` not in base plan");
    base.replace(from, to)
}

/// The fixture's plan without its `[drivers]` table.
fn without_drivers(f: &Fixture) -> String {
    let text = f.base_plan();
    let start = text.find("\n[drivers]\n").expect("[drivers]");
    let end = start + 1 + text[start + 1..].find("\n\n").expect("end of [drivers]");
    format!("{}{}", &text[..start], &text[end..])
}

#[test]
fn a_server_database_without_its_driver_names_the_jar_to_get() {
    let f = Fixture::new();
    let text = without_drivers(&f);
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "apim_db is mysql, and [drivers] has no `mysql` jar",
        "\"mysql\"",
    );
    assert!(out.contains("mysql-connector-j"), "{out}");
    assert!(out.contains("shared_db is mysql"), "both databases: {out}");
}

#[test]
fn a_driver_that_is_not_the_plans_jar_is_refused_at_its_digest() {
    let f = Fixture::new();
    let jar = f.dir.path().join("drivers").join(MYSQL_DRIVER_FILE);
    std::fs::write(&jar, b"not the jar").unwrap();
    let text = f.base_plan();
    let r = f.check(&text);
    let sha = apim_plan::digest(&mysql_driver_jar());
    expect_error(&r, &text, "has sha256", &format!("\"{sha}\""));
}

#[test]
fn init_is_refused_where_apimctl_cannot_create_the_schema() {
    let f = Fixture::new();
    // Oracle: the scripts to run by hand are named.
    let text = with(
        &f.base_plan(),
        "[databases.apim_db]\ntype = \"mysql\"",
        "[databases.apim_db]\ninit = \"if-empty\"\ntype = \"oracle\"",
    );
    let text = with(
        &text,
        "[drivers]\n",
        "[drivers]\noracle = { path = \"drivers/mysql-connector-j-8.4.0.jar\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }\n",
    );
    let r = f.check(&text);
    let out = expect_error(
        &r,
        &text,
        "apimctl does not create oracle schemas: run dbscripts/apimgt/oracle.sql",
        "\"if-empty\"",
    );
    assert!(out.contains("remove `init`"), "{out}");

    // H2: the product makes its own.
    let text = with(
        &f.base_plan(),
        "[databases.shared_db]\ntype = \"mysql\"",
        "[databases.shared_db]\ninit = \"if-empty\"\ntype = \"h2\"",
    );
    let r = f.check(&text);
    expect_error(&r, &text, "shared_db is H2", "\"if-empty\"");

    // A JDBC URL apimctl cannot read host and name from.
    let text = with(
        &f.base_plan(),
        "[databases.apim_db]\ntype = \"mysql\"",
        "[databases.apim_db]\ninit = \"if-empty\"\nurl = \"jdbc:mysql:loadbalance://a,b/apim\"\ntype = \"mysql\"",
    );
    let r = f.check(&text);
    expect_error(&r, &text, "`init` needs apim_db's host", "\"if-empty\"");

    // An unknown value.
    let text = with(
        &f.base_plan(),
        "[databases.apim_db]\ntype = \"mysql\"",
        "[databases.apim_db]\ninit = \"always\"\ntype = \"mysql\"",
    );
    let r = f.check(&text);
    expect_error(
        &r,
        &text,
        "`init` in [databases.apim_db] is `always`",
        "\"always\"",
    );
}

#[test]
fn a_driver_no_database_uses_is_a_warning() {
    let f = Fixture::new();
    let sha = apim_plan::digest(&mysql_driver_jar());
    let text = with(
        &f.base_plan(),
        "[drivers]\n",
        &format!(
            "[drivers]\npostgres = {{ path = \"drivers/{MYSQL_DRIVER_FILE}\", sha256 = \"{sha}\" }}\n"
        ),
    );
    let r = f.check(&text);
    assert!(
        r.diagnostics
            .iter()
            .all(|d| d.severity != apim_plan::diag::Severity::Error),
        "{}",
        r.render()
    );
    assert!(
        r.render().contains("no database is postgres"),
        "{}",
        r.render()
    );
}

#[test]
fn nodes_carry_their_drivers_databases_and_one_initialiser_per_database() {
    let f = Fixture::new();
    let text = f.base_plan().replace(
        "name = \"apim_db\"\n",
        "name = \"apim_db\"\ninit = \"if-empty\"\n",
    );
    let text = text.replace(
        "name = \"shared_db\"\n",
        "name = \"shared_db\"\ninit = \"if-empty\"\n",
    );
    let path = f.dir.path().join("plan.toml");
    std::fs::write(&path, &text).unwrap();
    let (plan, report) = validate::check(&path, &text, &BTreeMap::new(), Options::default());
    let plan = plan.unwrap_or_else(|| panic!("{}", report.render()));
    let r = render::render(&plan, &BTreeMap::new(), &PackSet::none()).unwrap();
    let sha = apim_plan::digest(&mysql_driver_jar());
    let mut initialisers = BTreeMap::new();
    for n in r.nodes() {
        // Every node uses the shared database; in 4.5 the gateway and the traffic manager not
        // API-M's (their guide samples configure shared_db alone).
        assert_eq!(n.libs.len(), 1, "{}", n.name);
        assert_eq!(n.libs[0].file_name, MYSQL_DRIVER_FILE);
        assert_eq!(n.libs[0].sha256, sha);
        assert_eq!(n.libs[0].dir, "repository/components/lib");
        let ids: Vec<&str> = n.databases.iter().map(|d| d.id.as_str()).collect();
        let expected: &[&str] = if n.name == "gw-1" || n.name == "tm-1" {
            &["shared_db"]
        } else {
            &["shared_db", "apim_db"]
        };
        assert_eq!(ids, expected, "{}", n.name);
        for d in &n.databases {
            assert_eq!((d.host.as_str(), d.port), ("db.example.com", 3306));
            if let Some(init) = &d.init {
                assert_eq!(init.db_type, DbType::Mysql);
                assert_eq!(init.password.0, "s3cret\n".trim_end());
                let script = if d.id == "apim_db" {
                    "dbscripts/apimgt/mysql.sql"
                } else {
                    "dbscripts/mysql.sql"
                };
                assert_eq!(init.scripts, [script]);
                assert!(
                    initialisers.insert(d.id.clone(), n.name.clone()).is_none(),
                    "one initialiser for {}",
                    d.id
                );
            }
        }
        // A changed driver restarts the node: the jar is part of its configuration digest.
        assert_ne!(
            n.config_digest,
            apim_plan::digest(n.deployment_toml.as_bytes())
        );
    }
    // The first node in plan order that uses each.
    assert_eq!(
        initialisers,
        BTreeMap::from([
            ("apim_db".to_string(), "cp-1".to_string()),
            ("shared_db".to_string(), "cp-1".to_string())
        ])
    );
}
