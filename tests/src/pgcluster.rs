//! A PostgreSQL server of a test's own (`pg_createcluster <ver> <name> -p <port>`): a real
//! server the test may stop and start (a database restart under a running controller) without
//! touching the shared `main` cluster other tests use. Dropped (`pg_dropcluster --stop`) with
//! the value.

use std::process::Command;

use crate::db::{
    check, postgres_admin, postgres_ready, postgres_version, random_password, run, run_stdin,
    wait_for,
};

/// A private PostgreSQL cluster with one database owned by one password-authenticated user.
pub struct PrivatePostgres {
    version: String,
    name: String,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The database (and its owner's name).
    pub database: String,
    /// The owner's password (alphanumeric).
    pub password: String,
}

impl std::fmt::Debug for PrivatePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePostgres")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PrivatePostgres {
    /// Creates and starts the cluster (`tag` names it), then the database `apimctl` and its
    /// owner. Panics with the reason (a test failure, never a skip) when PostgreSQL is missing.
    pub fn start(tag: &str) -> PrivatePostgres {
        let version = postgres_version()
            .expect("PostgreSQL server is not installed: apt-get install -y postgresql");
        let name = format!("apim{tag}{}", std::process::id());
        let port = free_port();
        let mut drop_old = Command::new("pg_dropcluster");
        drop_old.args(["--stop", &version, &name]);
        let _ = run(drop_old);
        let mut create = Command::new("pg_createcluster");
        create.args([&version, &name, "-p", &port.to_string(), "--start"]);
        if let Err(e) = run(create) {
            panic!("pg_createcluster {version} {name}: {e}");
        }
        let pg = PrivatePostgres {
            version,
            name,
            port,
            database: "apimctl".into(),
            password: random_password(),
        };
        pg.wait_ready();
        let sql = format!(
            "CREATE ROLE apimctl LOGIN PASSWORD '{}';\nCREATE DATABASE apimctl OWNER apimctl;\n",
            pg.password
        );
        let mut psql = postgres_admin();
        psql.args(["-p", &port.to_string()]);
        if let Err(e) = run_stdin(psql, &sql).and_then(check) {
            panic!(
                "creating the store database: {}",
                e.replace(&pg.password, "<redacted>")
            );
        }
        pg
    }

    /// `postgres://apimctl@127.0.0.1:<port>/apimctl` (the password goes separately).
    pub fn url(&self) -> String {
        format!("postgres://apimctl@127.0.0.1:{}/apimctl", self.port)
    }

    /// Stops the server (fast shutdown: open connections are ended, as in a restart).
    pub fn stop(&self) {
        let mut cmd = Command::new("pg_ctlcluster");
        cmd.args([&self.version, &self.name, "stop", "-m", "fast"]);
        if let Err(e) = run(cmd) {
            panic!("stopping {}: {e}", self.name);
        }
    }

    /// Starts it again and waits until it accepts connections.
    pub fn restart(&self) {
        let mut cmd = Command::new("pg_ctlcluster");
        cmd.args([&self.version, &self.name, "start"]);
        if let Err(e) = run(cmd) {
            panic!("starting {}: {e}", self.name);
        }
        self.wait_ready();
    }

    fn wait_ready(&self) {
        wait_for("the private PostgreSQL to accept connections", || {
            postgres_ready(self.port)
        });
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut cmd = Command::new("pg_dropcluster");
        cmd.args(["--stop", &self.version, &self.name]);
        if let Err(e) = run(cmd) {
            eprintln!("dropping cluster {}: {e}", self.name);
        }
    }
}
