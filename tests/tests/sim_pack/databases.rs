//! A node on MariaDB or PostgreSQL (real local servers, `apim_testkit::db`) becomes ready only
//! with the JDBC driver in `repository/components/lib`, a login the server accepts and the
//! tables of the pack's own `dbscripts/`; each failure leaves the product's line in the log and
//! a running node that never listens.

use super::support::*;
use apim_e2e::simpack::{APIM_DB_TABLES, SHARED_DB_TABLES, driver_jar};
use apim_testkit::db::{Engine, TestDb};

const MYSQL_DRIVER: &str = "com.mysql.cj.jdbc.Driver";
const PG_DRIVER: &str = "org.postgresql.Driver";

/// A node of one pack on one machine, started and stopped by its main script.
struct Node {
    home: PathBuf,
    script: &'static str,
    machine: Machine,
    ip: Ipv4Addr,
    _guard: NodeGuard,
}

impl Node {
    fn new(tmp: &Path, test: &str, kind: PackKind, version: &str) -> Node {
        let ip = loopback_for(test, 1);
        let machine = machine(tmp, "vm-db", ip, &[]);
        let home = unzip(&build(kind, version, tmp), &tmp.join("opt"));
        let script = PackLayout::new(kind, version)
            .expect("layout")
            .main_script();
        Node {
            _guard: NodeGuard(home.clone()),
            home,
            script,
            machine,
            ip,
        }
    }

    /// Points `[database.shared_db]` and `[database.apim_db]` at the test databases.
    fn use_databases(&self, shared: &TestDb, apim: &TestDb, apim_password: &str) {
        let path = self.home.join("repository/conf/deployment.toml");
        let mut doc: toml::Table = read(&path).parse().expect("shipped toml");
        let databases = doc
            .entry("database")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("[database]");
        for (key, db, password) in [
            ("shared_db", shared, shared.password.as_str()),
            ("apim_db", apim, apim_password),
        ] {
            let mut t = toml::Table::new();
            t.insert("url".into(), db.jdbc_url().into());
            t.insert("username".into(), db.user.clone().into());
            t.insert("password".into(), password.into());
            databases.insert(key.into(), toml::Value::Table(t));
        }
        write_toml(&self.home, &toml::to_string(&doc).expect("toml"));
    }

    fn put_driver(&self, dir: &str, jar: &str, class: &str) {
        let d = self.home.join("repository/components").join(dir);
        fs::create_dir_all(&d).expect("components dir");
        fs::write(d.join(jar), driver_jar(class)).expect("driver jar");
    }

    fn remove_driver(&self, dir: &str, jar: &str) {
        let _ = fs::remove_file(self.home.join("repository/components").join(dir).join(jar));
    }

    /// Starts with a fresh log, so that every wait reads only this run's lines.
    fn start(&self) {
        let _ = fs::remove_file(self.home.join("repository/logs/wso2carbon.log"));
        let out = sh(
            &self.home,
            self.script,
            &["start"],
            Some(&self.machine.jdk.home),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn stop(&self) {
        stop_node(&self.home, self.script, &self.machine.jdk.home);
    }

    /// Waits for `line` in the log, then checks the node runs but is not ready.
    fn assert_not_ready_with(&self, line: &str) {
        assert!(
            wait_log(&self.home, line),
            "{line}:\n{}",
            log_text(&self.home)
        );
        let log = log_text(&self.home);
        assert!(!log.contains("WSO2 Carbon started in"), "{log}");
        assert!(alive(pid_of(&self.home).expect("pid")), "keeps running");
        assert!(
            !tcp_open(addr(self.ip, 9443)) && !tcp_open(addr(self.ip, 9763)),
            "nothing listens"
        );
        assert!(http_get(addr(self.ip, 9763), "/services/Version").is_err());
    }

    fn assert_ready(&self) {
        assert!(
            wait_log(&self.home, "WSO2 Carbon started in"),
            "{}",
            log_text(&self.home)
        );
        let v = http_get(addr(self.ip, 9763), "/services/Version").expect("version");
        assert_eq!(v.status, 200);
    }

    /// Runs the pack's own scripts for `engine` on the two databases, as an operator would.
    fn run_dbscripts(&self, engine: &str, shared: &TestDb, apim: &TestDb) {
        shared.exec(&read(&self.home.join(format!("dbscripts/{engine}.sql"))));
        apim.exec(&read(
            &self.home.join(format!("dbscripts/apimgt/{engine}.sql")),
        ));
    }
}

fn lower(tables: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = tables.iter().map(|t| t.to_lowercase()).collect();
    v.sort();
    v
}

#[test]
fn a_node_on_mariadb_needs_the_driver_in_lib_the_login_and_the_pack_tables() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::new(tmp.path(), "db_mariadb", PackKind::AllInOne, "4.2.0");
    let shared = TestDb::create(Engine::MariaDb);
    let apim = TestDb::create(Engine::MariaDb);
    node.use_databases(&shared, &apim, &apim.password);
    let jar = "mysql-connector-j-8.4.0.jar";

    // No driver anywhere: the pool cannot load the class; the user core does not start.
    node.start();
    node.assert_not_ready_with(&format!(
        "java.sql.SQLException: Unable to load class: {MYSQL_DRIVER}"
    ));
    assert!(log_text(&node.home).contains("Cannot start User Manager Core bundle"));
    node.stop();

    // The jar only in dropins does not count.
    node.put_driver("dropins", jar, MYSQL_DRIVER);
    node.start();
    node.assert_not_ready_with(&format!("Unable to load class: {MYSQL_DRIVER}"));
    node.stop();
    node.remove_driver("dropins", jar);

    // In lib, on empty databases: the first table the server reads is missing.
    node.put_driver("lib", jar, MYSQL_DRIVER);
    node.start();
    node.assert_not_ready_with(&format!(
        "java.sql.SQLSyntaxErrorException: Table '{}.{}' doesn't exist",
        shared.name, SHARED_DB_TABLES[0]
    ));
    node.stop();

    // The pack's own scripts: every table there, the node becomes ready.
    node.run_dbscripts("mysql", &shared, &apim);
    assert_eq!(shared.tables(), lower(SHARED_DB_TABLES));
    assert_eq!(apim.tables(), lower(APIM_DB_TABLES));
    node.start();
    node.assert_ready();
    node.stop();

    // A password the server rejects: the login line, not ready.
    node.use_databases(&shared, &apim, "not-the-password");
    node.start();
    node.assert_not_ready_with(&format!("Access denied for user '{}'", apim.user));
    assert!(
        log_text(&node.home).contains("Error while initializing the API manager component"),
        "the API-M database fails the API manager component"
    );
    node.stop();
}

#[test]
fn a_node_on_postgresql_needs_the_driver_the_login_and_the_pack_tables() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::new(
        tmp.path(),
        "db_postgres",
        PackKind::ApiControlPlane,
        "4.5.0",
    );
    let shared = TestDb::create(Engine::Postgres);
    let apim = TestDb::create(Engine::Postgres);
    node.use_databases(&shared, &apim, &apim.password);
    let jar = "postgresql-42.7.4.jar";

    node.start();
    node.assert_not_ready_with(&format!("Unable to load class: {PG_DRIVER}"));
    node.stop();

    node.put_driver("lib", jar, PG_DRIVER);
    node.start();
    node.assert_not_ready_with(&format!(
        "org.postgresql.util.PSQLException: ERROR: relation \"{}\" does not exist",
        SHARED_DB_TABLES[0].to_lowercase()
    ));
    node.stop();

    node.run_dbscripts("postgresql", &shared, &apim);
    assert_eq!(apim.tables(), lower(APIM_DB_TABLES));
    node.start();
    node.assert_ready();
    node.stop();

    node.use_databases(&shared, &apim, "not-the-password");
    node.start();
    node.assert_not_ready_with(&format!(
        "org.postgresql.util.PSQLException: FATAL: password authentication failed for user \"{}\"",
        apim.user
    ));
    node.stop();
}

#[test]
fn an_unreachable_database_server_keeps_the_node_from_ready() {
    let tmp = tempfile::tempdir().expect("tmp");
    let node = Node::new(
        tmp.path(),
        "db_refused",
        PackKind::UniversalGateway,
        "4.5.0",
    );
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let path = node.home.join("repository/conf/deployment.toml");
    let shipped = read(&path);
    let mut doc: toml::Table = shipped.parse().expect("toml");
    let db = doc
        .get_mut("database")
        .and_then(|d| d.get_mut("shared_db"))
        .and_then(toml::Value::as_table_mut)
        .expect("[database.shared_db]");
    db.insert(
        "url".into(),
        format!("jdbc:mysql://127.0.0.1:{port}/shared_db").into(),
    );
    write_toml(&node.home, &toml::to_string(&doc).expect("toml"));
    node.put_driver("lib", "mysql-connector-j-8.4.0.jar", MYSQL_DRIVER);
    node.start();
    node.assert_not_ready_with("Communications link failure");
    assert!(log_text(&node.home).contains("java.net.ConnectException: Connection refused"));
    node.stop();
}
