//! The test databases: created on the running (or started) server, usable by their own user
//! over TCP, gone with their user after Drop.

use apim_testkit::db::{Engine, TestDb};

fn lifecycle(engine: Engine) {
    let db = TestDb::create(engine);
    assert_eq!(db.host, "127.0.0.1");
    assert!(db.name.starts_with("apimt_"), "{}", db.name);
    assert!(
        !format!("{db:?}").contains(&db.password),
        "Debug shows the password"
    );
    assert!(db.tables().is_empty());
    db.exec("CREATE TABLE Zeta (id INT); CREATE TABLE alpha (id INT);");
    assert_eq!(db.tables(), ["alpha", "zeta"]);
    let other = TestDb::create(engine);
    assert_ne!(other.name, db.name);
    assert!(other.tables().is_empty(), "databases are separate");
    let url = db.jdbc_url();
    let scheme = match engine {
        Engine::MariaDb => "mysql",
        Engine::Postgres => "postgresql",
    };
    assert_eq!(
        url,
        format!("jdbc:{scheme}://127.0.0.1:{}/{}", db.port, db.name)
    );
    let name = db.name.clone();
    drop(db);
    assert!(
        !exists(engine, &name),
        "{name} (database or user) left after Drop"
    );
    assert!(exists(engine, &other.name));
}

/// Whether a database or user of that name exists, asked as the server's administrator.
fn exists(engine: Engine, name: &str) -> bool {
    let (program, args): (&str, Vec<String>) = match engine {
        Engine::MariaDb => (
            "mariadb",
            vec![
                "-u".into(),
                "root".into(),
                "-N".into(),
                "-B".into(),
                "-e".into(),
                format!(
                    "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{name}' \
                     UNION ALL SELECT COUNT(*) FROM mysql.user WHERE user = '{name}'"
                ),
            ],
        ),
        Engine::Postgres => (
            "runuser",
            vec![
                "-u".into(),
                "postgres".into(),
                "--".into(),
                "psql".into(),
                "-X".into(),
                "-tA".into(),
                "-c".into(),
                format!(
                    "SELECT COUNT(*) FROM pg_database WHERE datname = '{name}' \
                     UNION ALL SELECT COUNT(*) FROM pg_roles WHERE rolname = '{name}'"
                ),
            ],
        ),
    };
    let out = std::process::Command::new(program)
        .args(&args)
        .output()
        .expect("run the admin client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() != "0")
}

#[test]
fn mariadb_database_lifecycle() {
    lifecycle(Engine::MariaDb);
}

#[test]
fn postgres_database_lifecycle() {
    lifecycle(Engine::Postgres);
}
