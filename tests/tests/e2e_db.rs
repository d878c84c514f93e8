//! End-to-end on real database servers (MariaDB and PostgreSQL on loopback, started by
//! `.ci/run`; `apim_testkit::db` starts them when they are installed and stopped): the plan's
//! drivers placed in every node that uses a database, schemas created once from the packs'
//! scripts, and a database that is unreachable, refuses the login or holds part of a schema
//! halting the rollout before any node starts.

use std::path::Path;

use apim_e2e::cluster::{
    Cluster, PlanParams, ServerDb, Topology, all_healthy, find_files, rollout_state, status_nodes,
};
use apim_e2e::simpack::{APIM_DB_TABLES, SHARED_DB_TABLES};
use apim_testkit::db::{Engine, TestDb};
use apim_testkit::plans::{
    MYSQL_DRIVER_FILE, POSTGRES_DRIVER_FILE, mysql_driver_jar, postgres_driver_jar,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn started(topology: Topology, name: &str) -> Result<Cluster, Box<dyn std::error::Error>> {
    Ok(apim_e2e::cluster::started(topology, name, 100)?)
}

fn text(out: &std::process::Output) -> String {
    apim_e2e::cluster::output_text(out)
}

/// `[databases.*]` on `apim`/`shared`, created from empty by apimctl.
fn server_db(engine: Engine, apim: &TestDb, shared: &TestDb) -> ServerDb {
    let creds = |d: &TestDb| (d.name.clone(), d.user.clone(), d.password.clone());
    let (db_type, driver) = match engine {
        Engine::MariaDb => ("mysql", (MYSQL_DRIVER_FILE.to_string(), mysql_driver_jar())),
        Engine::Postgres => (
            "postgres",
            (POSTGRES_DRIVER_FILE.to_string(), postgres_driver_jar()),
        ),
    };
    ServerDb {
        db_type,
        port: apim.port,
        apim: creds(apim),
        shared: creds(shared),
        init: true,
        driver: Some(driver),
    }
}

fn lower(tables: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = tables.iter().map(|t| t.to_lowercase()).collect();
    v.sort();
    v
}

/// How many times an agent created a schema, over every agent's log.
fn schemas_created(c: &Cluster) -> Result<usize, Box<dyn std::error::Error>> {
    let mut n = 0;
    for e in std::fs::read_dir(c.root().join("logs"))? {
        let text = std::fs::read_to_string(e?.path()).unwrap_or_default();
        n += text
            .matches("database schema created from the pack's scripts")
            .count();
    }
    Ok(n)
}

/// Every node's drivers: the jar in `repository/components/lib` of each node's home.
fn assert_driver_in_every_node(c: &Cluster, jar: &str) -> TestResult {
    for n in c.node_names() {
        let m = c.machine_of(&n)?;
        let libs: Vec<_> = find_files(&m.install_root, jar)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&format!("/{n}/")))
            .collect();
        assert_eq!(libs.len(), 1, "{n}: {libs:?}");
        assert!(
            libs[0].ends_with(Path::new("repository/components/lib").join(jar)),
            "{n}: {libs:?}"
        );
    }
    Ok(())
}

/// From empty databases to healthy: each schema created exactly once, re-apply does nothing.
fn from_empty(engine: Engine, topology: Topology, name: &str, jar: &str) -> TestResult {
    let apim = TestDb::create(engine);
    let shared = TestDb::create(engine);
    assert!(apim.tables().is_empty() && shared.tables().is_empty());
    let c = started(topology, name)?;
    let params = PlanParams {
        database: Some(server_db(engine, &apim, &shared)),
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    let out = c.apply(&plan)?;
    assert!(out.status.success(), "apply failed: {}", text(&out));
    let s = c.status()?;
    assert!(all_healthy(&s, &c.node_names()), "not all healthy: {s}");
    assert_eq!(apim.tables(), lower(APIM_DB_TABLES));
    assert_eq!(shared.tables(), lower(SHARED_DB_TABLES));
    assert_eq!(
        schemas_created(&c)?,
        2,
        "one agent created each schema once"
    );
    assert_driver_in_every_node(&c, jar)?;

    // The same plan again: nothing to do, no script runs, the tables are as they were.
    let again = c.apply(&plan)?;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("\"state\":\"unchanged\""),
        "{}",
        text(&again)
    );
    assert_eq!(schemas_created(&c)?, 2);
    assert_eq!(apim.tables(), lower(APIM_DB_TABLES));
    Ok(())
}

#[test]
fn v3_five_node_on_mariadb_from_empty_databases_to_healthy() -> TestResult {
    from_empty(
        Engine::MariaDb,
        Topology::V3FiveNode,
        "e2e_db_mariadb",
        MYSQL_DRIVER_FILE,
    )
}

#[test]
fn v45_split_on_postgresql_from_empty_databases_to_healthy() -> TestResult {
    from_empty(
        Engine::Postgres,
        Topology::V45Ha,
        "e2e_db_postgres",
        POSTGRES_DRIVER_FILE,
    )
}

/// Applies `params`, expects the rollout to fail with `expect` in the status and no server
/// started anywhere.
fn halts_before_any_start(
    c: &Cluster,
    file: &str,
    params: &PlanParams,
    expect: &str,
) -> TestResult {
    let plan = c.write_plan(file, params)?;
    let out = c.apply(&plan)?;
    assert_eq!(out.status.code(), Some(1), "apply fails: {}", text(&out));
    let s = c.wait_rollout_done()?;
    assert_eq!(rollout_state(&s), Some("failed"), "{s}");
    let errors: Vec<String> = status_nodes(&s)
        .into_iter()
        .map(|(_, n)| n["last_error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains(expect)),
        "status shows `{expect}`: {s}"
    );
    let shown = String::from_utf8_lossy(&c.apimctl(&["status"])?.stdout).into_owned();
    assert!(shown.contains("failed"), "{shown}");
    for n in c.node_names() {
        assert_eq!(c.start_count(&n)?, 0, "{n} was never started");
        assert!(c.server_pids(&n)?.is_empty(), "{n} has no server");
    }
    Ok(())
}

#[test]
fn unreachable_wrong_login_and_partial_schema_halt_before_any_node_starts() -> TestResult {
    let apim = TestDb::create(Engine::MariaDb);
    let shared = TestDb::create(Engine::MariaDb);
    let c = started(Topology::V3FiveNode, "e2e_db_faults")?;
    let good = server_db(Engine::MariaDb, &apim, &shared);

    // 1. Nothing listens on the port: every machine's pre-flight says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let mut db = good.clone();
    db.port = port;
    let params = PlanParams {
        database: Some(db),
        ..PlanParams::default()
    };
    halts_before_any_start(
        &c,
        "unreachable.toml",
        &params,
        &format!("db.wso2.com:{port}: unreachable"),
    )?;

    // 2. The server refuses the login: the schema's creation says so, never the password.
    let mut db = good.clone();
    db.apim.2 = "not-the-password".into();
    db.shared.2 = "not-the-password".into();
    let params = PlanParams {
        database: Some(db),
        ..PlanParams::default()
    };
    halts_before_any_start(&c, "login.toml", &params, "refused user")?;
    let s = c.status()?.to_string();
    assert!(!s.contains("not-the-password"), "{s}");

    // 3. A database holding part of the schema is refused and left as it is.
    apim.exec("CREATE TABLE AM_API (API_ID INTEGER PRIMARY KEY)");
    let params = PlanParams {
        database: Some(good.clone()),
        ..PlanParams::default()
    };
    halts_before_any_start(&c, "partial.toml", &params, "is partly initialised")?;
    assert_eq!(
        apim.tables(),
        vec!["am_api".to_string()],
        "nothing created or dropped"
    );
    assert!(shared.tables().is_empty() || shared.tables() == lower(SHARED_DB_TABLES));
    Ok(())
}

#[test]
fn a_server_database_without_its_driver_is_a_validate_error() -> TestResult {
    let c = started(Topology::V3FiveNode, "e2e_db_driver")?;
    let params = PlanParams {
        database: Some(ServerDb {
            db_type: "mysql",
            port: 3306,
            apim: ("apim".into(), "u".into(), "p".into()),
            shared: ("shared".into(), "u".into(), "p".into()),
            init: false,
            driver: None,
        }),
        ..PlanParams::default()
    };
    let plan = c.write_plan("plan.toml", &params)?;
    let out = c.apimctl(&["validate", plan.to_str().ok_or("path")?])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apim_db is mysql, and [drivers] has no `mysql` jar")
            && err.contains("mysql-connector-j"),
        "{err}"
    );
    // apply refuses it too, and nothing reaches a machine.
    let out = c.apply(&plan)?;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    for n in c.node_names() {
        assert_eq!(c.start_count(&n)?, 0, "{n}");
    }
    Ok(())
}
