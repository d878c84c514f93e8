//! Real database servers for tests: a fresh MariaDB or PostgreSQL database with its own owner
//! user on the local server, dropped (database and user) when the [`TestDb`] is dropped.
//!
//! Admin work goes through the CLI clients as the servers' administrators (`mariadb`/`mysql` as
//! root over the unix socket, `runuser -u postgres -- psql`), with SQL on standard input so that
//! passwords never appear in a process's argv. User-level work ([`TestDb::exec`],
//! [`TestDb::tables`]) connects over TCP to 127.0.0.1 as the database's own user, the password in
//! the environment (`MYSQL_PWD`, `PGPASSWORD`).
//!
//! A missing server is a test failure naming the package to install, never a skip.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How to install both servers (shown when one is missing).
const INSTALL: &str = "install the servers with: apt-get update && \
     DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server mariadb-client postgresql";

/// Upper bound for a server to accept connections after it was started (a failure guard).
const START_PATIENCE: Duration = Duration::from_secs(60);

/// Serialises server checks and starts within the process (tests run concurrently); a file lock
/// ([`LOCK_FILE`]) does the same across processes (nextest runs each test in its own).
static SERVER: Mutex<()> = Mutex::new(());

/// The lock file that serialises server starts across test processes.
const LOCK_FILE: &str = "/tmp/apim-testkit-db.lock";

/// Makes database names unique within the process (the pid makes them unique across processes).
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Which local database server a [`TestDb`] lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// MariaDB (speaks the MySQL protocol), the `mariadb-server` package.
    MariaDb,
    /// PostgreSQL, the `postgresql` package.
    Postgres,
}

/// A fresh database with its own owner user, dropped (database and user) on Drop.
pub struct TestDb {
    /// The server's engine.
    pub engine: Engine,
    /// The server's address for TCP clients: always "127.0.0.1".
    pub host: String,
    /// The server's TCP port, as the running server reports it.
    pub port: u16,
    /// The database's name (`apimt_<pid>_<counter>`, lower case, valid in both engines).
    pub name: String,
    /// The database's own user (same as the name); it has all privileges on this database only.
    pub user: String,
    /// The user's random password (alphanumeric; never shown by Debug).
    pub password: String,
}

impl fmt::Debug for TestDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDb")
            .field("engine", &self.engine)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl TestDb {
    /// Ensures the local server of `engine` runs (starts it if installed and stopped; panics with
    /// how to install it if not installed), then creates a uniquely named database and user
    /// (names like apimt_<pid>_<counter>, valid in both engines, lower case) whose password is
    /// random; the user owns/has all privileges on that database only.
    pub fn create(engine: Engine) -> TestDb {
        let port = {
            let _guard = SERVER.lock().unwrap_or_else(|p| p.into_inner());
            let _flock = lock_servers();
            match engine {
                Engine::MariaDb => mariadb_ensure_running(),
                Engine::Postgres => postgres_ensure_running(),
            }
        };
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("apimt_{}_{n}", std::process::id());
        let password = random_password();
        let db = TestDb {
            engine,
            host: "127.0.0.1".to_owned(),
            port,
            name: name.clone(),
            user: name.clone(),
            password,
        };
        // A database of the same name can only be left over from a killed process whose pid was
        // reused: drop it first.
        let sql = match engine {
            Engine::MariaDb => format!(
                "DROP DATABASE IF EXISTS `{name}`;\n\
                 DROP USER IF EXISTS '{name}'@'%';\n\
                 CREATE DATABASE `{name}`;\n\
                 CREATE USER '{name}'@'%' IDENTIFIED BY '{pw}';\n\
                 GRANT ALL PRIVILEGES ON `{name}`.* TO '{name}'@'%';\n",
                pw = db.password
            ),
            Engine::Postgres => format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE);\n\
                 DROP ROLE IF EXISTS \"{name}\";\n\
                 CREATE ROLE \"{name}\" LOGIN PASSWORD '{pw}';\n\
                 CREATE DATABASE \"{name}\" OWNER \"{name}\";\n\
                 REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC;\n",
                pw = db.password
            ),
        };
        if let Err(e) = db.admin(&sql) {
            panic!("creating test database {name}: {e}");
        }
        db
    }

    /// Runs SQL as that database's own user (for test setup: create or drop a table).
    pub fn exec(&self, sql: &str) {
        let out = run_stdin(self.user_command(), sql);
        if let Err(e) = out.and_then(check) {
            panic!("exec on {} as its user: {}", self.name, self.redact(&e));
        }
    }

    /// The tables of the database, lower-cased, sorted.
    pub fn tables(&self) -> Vec<String> {
        let sql = match self.engine {
            Engine::MariaDb => {
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = DATABASE();\n"
            }
            Engine::Postgres => {
                "SELECT tablename FROM pg_catalog.pg_tables \
                 WHERE schemaname = current_schema();\n"
            }
        };
        let mut cmd = self.user_command();
        match self.engine {
            Engine::MariaDb => cmd.arg("--skip-column-names"),
            Engine::Postgres => cmd.args(["--tuples-only", "--no-align"]),
        };
        let out = match run_stdin(cmd, sql).and_then(check) {
            Ok(out) => out,
            Err(e) => panic!("listing the tables of {}: {}", self.name, self.redact(&e)),
        };
        let mut tables: Vec<String> = out
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect();
        tables.sort();
        tables
    }

    /// A JDBC URL for it (jdbc:mysql://127.0.0.1:PORT/NAME or jdbc:postgresql://127.0.0.1:PORT/NAME).
    pub fn jdbc_url(&self) -> String {
        let scheme = match self.engine {
            Engine::MariaDb => "mysql",
            Engine::Postgres => "postgresql",
        };
        format!("jdbc:{scheme}://{}:{}/{}", self.host, self.port, self.name)
    }

    /// A client connected over TCP as the database's user, reading SQL from standard input and
    /// stopping at the first error.
    fn user_command(&self) -> Command {
        let port = self.port.to_string();
        match self.engine {
            Engine::MariaDb => {
                let mut cmd = Command::new(mariadb_client());
                cmd.args(["--no-defaults", "--protocol=TCP", "--batch"])
                    .args([
                        "-h", &self.host, "-P", &port, "-u", &self.user, "-D", &self.name,
                    ])
                    .env("MYSQL_PWD", &self.password);
                cmd
            }
            Engine::Postgres => {
                let mut cmd = Command::new("psql");
                cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                    .args([
                        "-h", &self.host, "-p", &port, "-U", &self.user, "-d", &self.name,
                    ])
                    .env("PGPASSWORD", &self.password)
                    .env("PGCONNECT_TIMEOUT", "10");
                cmd
            }
        }
    }

    /// Runs SQL as the server's administrator; errors have the password redacted.
    fn admin(&self, sql: &str) -> Result<String, String> {
        let cmd = match self.engine {
            Engine::MariaDb => mariadb_admin(),
            Engine::Postgres => postgres_admin(),
        };
        run_stdin(cmd, sql)
            .and_then(check)
            .map_err(|e| self.redact(&e))
    }

    /// `text` with the password replaced.
    fn redact(&self, text: &str) -> String {
        text.replace(&self.password, "<redacted>")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = &self.name;
        let sql = match self.engine {
            Engine::MariaDb => {
                format!("DROP DATABASE IF EXISTS `{name}`;\nDROP USER IF EXISTS '{name}'@'%';\n")
            }
            Engine::Postgres => format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE);\nDROP ROLE IF EXISTS \"{name}\";\n"
            ),
        };
        if let Err(e) = self.admin(&sql) {
            // Never panic in drop (it may run while unwinding); a leftover is dropped by the next
            // process that gets this pid.
            eprintln!("dropping test database {name}: {e}");
        }
    }
}

/// The port of the local server of `engine` when it runs; otherwise how to start it. Never
/// starts anything (the quickstart uses a server the operator runs).
pub fn running_server(engine: Engine) -> Result<u16, String> {
    match engine {
        Engine::MariaDb => mariadb_port().map_err(|e| {
            format!(
                "no MariaDB server answers here ({e}); start one with `service mariadb start` \
                 (install: apt-get install mariadb-server mariadb-client)"
            )
        }),
        Engine::Postgres => {
            let running = postgres_version()
                .and_then(|v| postgres_cluster(&v).ok().flatten())
                .filter(|(port, online)| *online && postgres_ready(*port).is_ok());
            running.map(|(port, _)| port).ok_or_else(|| {
                "no PostgreSQL server answers here; start one with `pg_ctlcluster <version> main \
                 start` (install: apt-get install postgresql)"
                    .to_string()
            })
        }
    }
}

/// Makes database `name` with its owner `name` (password `password`) on the running server of
/// `engine` unless they exist; never drops anything. Returns the server's port.
pub fn provision(engine: Engine, name: &str, password: &str) -> Result<u16, String> {
    let port = running_server(engine)?;
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if !name.chars().all(ok) || !password.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "refusing database name {name:?} or a password with symbols"
        ));
    }
    let (cmd, sql) = match engine {
        Engine::MariaDb => (
            mariadb_admin(),
            format!(
                "CREATE DATABASE IF NOT EXISTS `{name}`;\n\
                 CREATE USER IF NOT EXISTS '{name}'@'%' IDENTIFIED BY '{password}';\n\
                 ALTER USER '{name}'@'%' IDENTIFIED BY '{password}';\n\
                 GRANT ALL PRIVILEGES ON `{name}`.* TO '{name}'@'%';\n"
            ),
        ),
        Engine::Postgres => (
            postgres_admin(),
            format!(
                "SELECT 'CREATE ROLE \"{name}\" LOGIN' WHERE NOT EXISTS \
                 (SELECT FROM pg_roles WHERE rolname = '{name}')\\gexec\n\
                 ALTER ROLE \"{name}\" LOGIN PASSWORD '{password}';\n\
                 SELECT 'CREATE DATABASE \"{name}\" OWNER \"{name}\"' WHERE NOT EXISTS \
                 (SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
            ),
        ),
    };
    run_stdin(cmd, &sql)
        .and_then(check)
        .map_err(|e| e.replace(password, "<redacted>"))?;
    Ok(port)
}

/// Holds the cross-process server lock until dropped.
fn lock_servers() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .unwrap_or_else(|e| panic!("opening {LOCK_FILE}: {e}"));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("locking {LOCK_FILE}: {e}"))
}

/// 32 random alphanumeric characters from the kernel's generator.
pub(crate) fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut buf = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf.iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Runs `cmd` with `input` on standard input; Err if it cannot be started.
pub(crate) fn run_stdin(mut cmd: Command, input: &str) -> Result<Output, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}; {INSTALL}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    written.map_err(|e| format!("writing to {program}: {e}"))?;
    Ok(out)
}

/// The standard output of a successful run, else its status and standard error.
pub(crate) fn check(out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command to completion with no input; its stdout if it succeeded.
pub(crate) fn run(cmd: Command) -> Result<String, String> {
    run_stdin(cmd, "").and_then(check)
}

/// Polls `probe` until it returns Some, up to [`START_PATIENCE`] (a failure guard).
pub(crate) fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The MariaDB client's name (`mariadb`, else the older `mysql`).
fn mariadb_client() -> &'static str {
    if Path::new("/usr/bin/mariadb").exists() {
        "mariadb"
    } else {
        "mysql"
    }
}

/// The MariaDB client as root over the unix socket.
fn mariadb_admin() -> Command {
    let mut cmd = Command::new(mariadb_client());
    cmd.args([
        "--protocol=SOCKET",
        "-u",
        "root",
        "--batch",
        "--skip-column-names",
    ]);
    cmd
}

/// The server's TCP port if it answers root over the socket.
fn mariadb_port() -> Result<u16, String> {
    let mut cmd = mariadb_admin();
    cmd.args(["-e", "SELECT @@port"]);
    let out = run(cmd)?;
    out.trim()
        .parse()
        .map_err(|e| format!("MariaDB reported port {out:?}: {e}"))
}

/// Starts MariaDB if it is stopped; its TCP port.
fn mariadb_ensure_running() -> u16 {
    if let Ok(port) = mariadb_port() {
        return port;
    }
    let installed = ["/usr/sbin/mariadbd", "/usr/sbin/mysqld"]
        .iter()
        .any(|p| Path::new(p).exists());
    assert!(installed, "MariaDB server is not installed: {INSTALL}");
    let mut start = Command::new("service");
    start.args(["mariadb", "start"]);
    if let Err(e) = run(start) {
        // No service manager (or it failed): run the server's own wrapper in the background, as
        // its init script does. It outlives this process, as a started service would.
        eprintln!("`service mariadb start` failed ({e}); starting mysqld_safe");
        let mut dir = Command::new("install");
        dir.args(["-d", "-o", "mysql", "-g", "mysql", "/run/mysqld"]);
        if let Err(e) = run(dir) {
            panic!("creating /run/mysqld for MariaDB failed: {e}");
        }
        let spawned = Command::new("mysqld_safe")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            panic!("neither `service mariadb start` nor mysqld_safe could start MariaDB: {e}");
        }
    }
    wait_for("MariaDB to accept connections", mariadb_port)
}

/// The PostgreSQL admin client (`psql` as the postgres system user, over the unix socket).
pub(crate) fn postgres_admin() -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args([
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
    ])
    .args(["--tuples-only", "--no-align"]);
    cmd
}

/// The newest installed PostgreSQL server version (`/usr/lib/postgresql/<ver>/bin/postgres`).
pub(crate) fn postgres_version() -> Option<String> {
    let mut versions: Vec<(u32, String)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("bin/postgres").exists())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().into_owned();
            Some((v.parse::<u32>().ok()?, v))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, v)| v)
}

/// The cluster `<ver> main`'s (port, online) from `pg_lsclusters`.
fn postgres_cluster(version: &str) -> Result<Option<(u16, bool)>, String> {
    let mut cmd = Command::new("pg_lsclusters");
    cmd.arg("--no-header");
    let out = run(cmd)?;
    Ok(out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 4 && f[0] == version && f[1] == "main" {
            Some((f[2].parse().ok()?, f[3] == "online"))
        } else {
            None
        }
    }))
}

/// Whether the server on `port` accepts TCP connections on 127.0.0.1.
pub(crate) fn postgres_ready(port: u16) -> Result<(), String> {
    let mut cmd = Command::new("pg_isready");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "5"]);
    run(cmd).map(|_| ())
}

/// Starts PostgreSQL's main cluster if it is stopped (creating it if the package left none);
/// its TCP port.
fn postgres_ensure_running() -> u16 {
    let Some(version) = postgres_version() else {
        panic!("PostgreSQL server is not installed: {INSTALL}");
    };
    let cluster = postgres_cluster(&version)
        .unwrap_or_else(|e| panic!("pg_lsclusters failed: {e}; {INSTALL}"));
    let port = match cluster {
        Some((port, true)) => port,
        Some((port, false)) => {
            pg_ctlcluster(&version);
            port
        }
        None => {
            let mut create = Command::new("pg_createcluster");
            create.args([version.as_str(), "main"]);
            if let Err(e) = run(create) {
                panic!("`pg_createcluster {version} main` failed: {e}");
            }
            pg_ctlcluster(&version);
            match postgres_cluster(&version) {
                Ok(Some((port, _))) => port,
                other => panic!("no cluster {version} main after creating it: {other:?}"),
            }
        }
    };
    wait_for("PostgreSQL to accept connections", || postgres_ready(port));
    port
}

/// `pg_ctlcluster <ver> main start`.
fn pg_ctlcluster(version: &str) {
    let mut start = Command::new("pg_ctlcluster");
    start.args([version, "main", "start"]);
    if let Err(e) = run(start) {
        // Another process may have started it meanwhile: only fail if it is still down.
        if !matches!(postgres_cluster(version), Ok(Some((_, true)))) {
            panic!("`pg_ctlcluster {version} main start` failed: {e}");
        }
    }
}
