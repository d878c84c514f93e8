//! `init_if_empty` against real MariaDB and PostgreSQL servers (apim_testkit::db): created once,
//! then already present; partial databases, SQL errors, bad logins, closed ports, held locks and
//! racing agents.

use std::time::{Duration, Instant};

use apim_dbinit::{
    DbError, Engine, Options, Outcome, Script, Secret, Target, init_if_empty, mysql_lock_name,
    postgres_lock_key, reachable,
};
use apim_testkit::db::{self, TestDb};
use sqlx::{ConnectOptions, Connection};

const MYSQL_REG: &str = include_str!("scripts/mysql.sql");
const MYSQL_APIMGT: &str = include_str!("scripts/mysql-apimgt.sql");
const PG_REG: &str = include_str!("scripts/postgresql.sql");
const PG_APIMGT: &str = include_str!("scripts/postgresql-apimgt.sql");

/// The tables the realistic scripts create, in script order.
const TABLES: [&str; 7] = [
    "reg_cluster_lock",
    "reg_path",
    "reg_resource",
    "um_tenant",
    "um_domain",
    "am_subscriber",
    "am_api",
];

fn engine_of(db: &TestDb) -> Engine {
    match db.engine {
        db::Engine::MariaDb => Engine::Mysql,
        db::Engine::Postgres => Engine::Postgres,
    }
}

fn target(db: &TestDb) -> Target {
    Target {
        engine: engine_of(db),
        host: db.host.clone(),
        port: db.port,
        database: db.name.clone(),
        username: db.user.clone(),
        password: Secret(db.password.clone()),
    }
}

fn script(name: &str, text: &str) -> Script {
    Script {
        name: name.to_owned(),
        text: text.to_owned(),
    }
}

/// The realistic scripts for the database's engine, and how many statements they hold.
fn product_scripts(db: &TestDb) -> (Vec<Script>, usize) {
    match db.engine {
        db::Engine::MariaDb => (
            vec![
                script("dbscripts/mysql.sql", MYSQL_REG),
                script("dbscripts/apimgt/mysql.sql", MYSQL_APIMGT),
            ],
            12 + 4,
        ),
        db::Engine::Postgres => (
            vec![
                script("dbscripts/postgresql.sql", PG_REG),
                script("dbscripts/apimgt/postgresql.sql", PG_APIMGT),
            ],
            16 + 8,
        ),
    }
}

fn sorted(tables: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    v.sort();
    v
}

/// Short waits so that a failing test fails quickly (guards, never synchronisation).
fn options() -> Options {
    Options {
        connect_timeout: Duration::from_secs(10),
        lock_timeout: Duration::from_secs(60),
    }
}

/// The rows of a table, counted as the database's user.
async fn rows(db: &TestDb, table: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    match db.engine {
        db::Engine::MariaDb => {
            let mut c = sqlx::mysql::MySqlConnectOptions::new()
                .host(&db.host)
                .port(db.port)
                .username(&db.user)
                .password(&db.password)
                .database(&db.name)
                .connect()
                .await
                .expect("connect");
            let n = sqlx::query_scalar(&sql)
                .fetch_one(&mut c)
                .await
                .expect("count");
            c.close().await.expect("close");
            n
        }
        db::Engine::Postgres => {
            let mut c = sqlx::postgres::PgConnectOptions::new_without_pgpass()
                .host(&db.host)
                .port(db.port)
                .username(&db.user)
                .password(&db.password)
                .database(&db.name)
                .connect()
                .await
                .expect("connect");
            let n = sqlx::query_scalar(&sql)
                .fetch_one(&mut c)
                .await
                .expect("count");
            c.close().await.expect("close");
            n
        }
    }
}

/// Runs the test body for MariaDB and for PostgreSQL, each its own test.
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() {
                super::$body(apim_testkit::db::Engine::MariaDb).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body(apim_testkit::db::Engine::Postgres).await;
            }
        }
    };
}

both!(
    fresh_database_is_created_then_already_present,
    created_then_present
);
async fn created_then_present(engine: db::Engine) {
    let db = TestDb::create(engine);
    let (scripts, statements) = product_scripts(&db);
    let outcome = init_if_empty(&target(&db), &scripts, &options()).await;
    let expected: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        outcome,
        Ok(Outcome::Created {
            tables: expected,
            statements
        })
    );
    assert_eq!(db.tables(), sorted(&TABLES));
    assert_eq!(rows(&db, "UM_DOMAIN").await, 4);
    assert_eq!(rows(&db, "AM_API").await, 2);

    let again = init_if_empty(&target(&db), &scripts, &options()).await;
    assert_eq!(again, Ok(Outcome::AlreadyPresent { tables: 7 }));
    assert_eq!(db.tables(), sorted(&TABLES), "nothing changed");
    assert_eq!(
        rows(&db, "UM_DOMAIN").await,
        4,
        "the inserts did not run again"
    );
    assert_eq!(rows(&db, "AM_API").await, 2);
}

both!(partial_database_is_refused_and_left_alone, partial);
async fn partial(engine: db::Engine) {
    let db = TestDb::create(engine);
    let (scripts, _) = product_scripts(&db);
    init_if_empty(&target(&db), &scripts, &options())
        .await
        .expect("create");
    db.exec("DROP TABLE AM_API;");
    let before = db.tables();
    let err = init_if_empty(&target(&db), &scripts, &options())
        .await
        .expect_err("partial");
    let mut found = sorted(&TABLES);
    found.retain(|t| t != "am_api");
    assert_eq!(
        err,
        DbError::Partial {
            database: db.name.clone(),
            found,
            missing: vec!["am_api".into()],
        }
    );
    assert!(err.to_string().contains("am_api"), "{err}");
    assert_eq!(db.tables(), before, "nothing created or dropped");
    assert_eq!(rows(&db, "UM_DOMAIN").await, 4);

    // A database holding one of the scripts' tables, made by someone else: refused too.
    let other = TestDb::create(engine);
    other.exec("CREATE TABLE Reg_Path (ID INT); CREATE TABLE UNRELATED (ID INT);");
    let err = init_if_empty(&target(&other), &scripts, &options()).await;
    assert!(
        matches!(&err, Err(DbError::Partial { found, missing, .. })
            if found == &["reg_path"] && missing.len() == 6),
        "{err:?}"
    );
    assert_eq!(other.tables(), ["reg_path", "unrelated"]);
}

both!(
    sql_error_names_script_line_statement_and_server_message,
    sql_error
);
async fn sql_error(engine: db::Engine) {
    let db = TestDb::create(engine);
    let text = "-- a broken script\nCREATE TABLE IF NOT EXISTS AM_FIRST (ID INT);\n\n\
                INSERT INTO AM_MISSING_TABLE\n    VALUES (1);\nCREATE TABLE AM_SECOND (ID INT);\n";
    let scripts = [script("dbscripts/broken.sql", text)];
    let err = init_if_empty(&target(&db), &scripts, &options())
        .await
        .expect_err("an SQL error");
    let DbError::Sql {
        script,
        line,
        statement,
        message,
    } = &err
    else {
        panic!("expected Sql, got {err:?}");
    };
    assert_eq!(script, "dbscripts/broken.sql");
    assert_eq!(*line, 4);
    assert_eq!(statement, "INSERT INTO AM_MISSING_TABLE VALUES (1)");
    assert!(
        message.to_lowercase().contains("am_missing_table"),
        "the server's message: {message}"
    );
    let shown = err.to_string();
    assert!(shown.contains("dbscripts/broken.sql line 4"), "{shown}");
    match engine {
        // MySQL's DDL commits as it goes: the first table is there, the rest never ran.
        db::Engine::MariaDb => assert_eq!(db.tables(), ["am_first"]),
        // PostgreSQL runs the scripts in one transaction: nothing is left.
        db::Engine::Postgres => assert!(db.tables().is_empty(), "{:?}", db.tables()),
    }
}

both!(bad_logins_are_auth_errors_without_the_password, bad_login);
async fn bad_login(engine: db::Engine) {
    let db = TestDb::create(engine);
    let (scripts, _) = product_scripts(&db);
    let wrong = format!("Wr0ng{}", &db.password[..12]);
    let mut t = target(&db);
    t.password = Secret(wrong.clone());
    let err = init_if_empty(&t, &scripts, &options())
        .await
        .expect_err("wrong password");
    assert!(
        matches!(&err, DbError::Auth { user, database, .. } if *user == db.user && *database == db.name),
        "{err:?}"
    );
    for shown in [err.to_string(), format!("{err:?}"), format!("{t:?}")] {
        assert!(!shown.contains(&wrong), "the password shows in {shown}");
        assert!(
            !shown.contains(&db.password[..12]),
            "the password shows in {shown}"
        );
    }

    let mut t = target(&db);
    t.database = format!("{}_nope", db.name);
    let err = init_if_empty(&t, &scripts, &options())
        .await
        .expect_err("unknown database");
    assert!(matches!(err, DbError::Auth { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(&db.password));
    assert!(db.tables().is_empty());
}

both!(a_closed_port_is_unreachable_quickly, closed_port);
async fn closed_port(engine: db::Engine) {
    let db = TestDb::create(engine);
    let (scripts, _) = product_scripts(&db);
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut t = target(&db);
    t.port = port;
    let started = Instant::now();
    let err = init_if_empty(&t, &scripts, &options())
        .await
        .expect_err("closed port");
    assert!(
        matches!(&err, DbError::Unreachable { addr, .. } if *addr == format!("127.0.0.1:{port}")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        reachable("127.0.0.1", port, Duration::from_secs(5))
            .await
            .is_err()
    );
    assert_eq!(
        reachable("127.0.0.1", db.port, Duration::from_secs(5)).await,
        Ok(())
    );
}

both!(racing_agents_run_the_scripts_once, race);
async fn race(engine: db::Engine) {
    let db = TestDb::create(engine);
    let (scripts, _) = product_scripts(&db);
    let (t, o) = (target(&db), options());
    let (a, b) = tokio::join!(
        init_if_empty(&t, &scripts, &o),
        init_if_empty(&t, &scripts, &o)
    );
    let outcomes = [a.expect("first agent"), b.expect("second agent")];
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Created { .. }))
        .count();
    let present = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::AlreadyPresent { tables: 7 }))
        .count();
    assert_eq!((created, present), (1, 1), "{outcomes:?}");
    assert_eq!(db.tables(), sorted(&TABLES));
    assert_eq!(rows(&db, "UM_DOMAIN").await, 4);
}

both!(a_held_lock_times_out_and_nothing_runs, held_lock);
async fn held_lock(engine: db::Engine) {
    let db = TestDb::create(engine);
    let (scripts, _) = product_scripts(&db);
    let o = Options {
        lock_timeout: Duration::from_secs(1),
        ..options()
    };
    // Another session (another agent) holds the database's init lock meanwhile.
    let err = match engine {
        db::Engine::MariaDb => {
            let mut other = sqlx::mysql::MySqlConnectOptions::new()
                .host(&db.host)
                .port(db.port)
                .username(&db.user)
                .password(&db.password)
                .database(&db.name)
                .connect()
                .await
                .expect("connect");
            let got: i64 = sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)")
                .bind(mysql_lock_name(&db.name))
                .fetch_one(&mut other)
                .await
                .expect("GET_LOCK");
            assert_eq!(got, 1);
            let err = init_if_empty(&target(&db), &scripts, &o).await;
            other.close().await.expect("close");
            err
        }
        db::Engine::Postgres => {
            let mut other = sqlx::postgres::PgConnectOptions::new_without_pgpass()
                .host(&db.host)
                .port(db.port)
                .username(&db.user)
                .password(&db.password)
                .database(&db.name)
                .connect()
                .await
                .expect("connect");
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(postgres_lock_key(&db.name))
                .execute(&mut other)
                .await
                .expect("lock");
            let err = init_if_empty(&target(&db), &scripts, &o).await;
            other.close().await.expect("close");
            err
        }
    };
    assert!(
        matches!(&err, Err(DbError::Lock { database, .. }) if *database == db.name),
        "{err:?}"
    );
    assert!(db.tables().is_empty(), "nothing ran");
    // Released (the other session ended): the next attempt creates.
    let outcome = init_if_empty(&target(&db), &scripts, &o).await;
    assert!(
        matches!(outcome, Ok(Outcome::Created { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn mysql_delimiter_scripts_create_procedures() {
    let db = TestDb::create(db::Engine::MariaDb);
    let text = "CREATE TABLE IF NOT EXISTS AM_TIER (NAME VARCHAR(64) PRIMARY KEY, QUOTA INT) ENGINE INNODB;\n\
        \n\
        DELIMITER //\n\
        CREATE PROCEDURE AM_ADD_TIER(IN tier VARCHAR(64), IN quota INT)\n\
        BEGIN\n\
            -- two statements; the second's ; does not end the procedure\n\
            DELETE FROM AM_TIER WHERE NAME = tier;\n\
            INSERT INTO AM_TIER (NAME, QUOTA) VALUES (tier, quota);\n\
        END//\n\
        DELIMITER ;\n\
        CALL AM_ADD_TIER('Gold', 5000);\n\
        CALL AM_ADD_TIER('Gold', 5000);\n";
    let outcome = init_if_empty(
        &target(&db),
        &[script("dbscripts/tiers.sql", text)],
        &options(),
    )
    .await;
    assert_eq!(
        outcome,
        Ok(Outcome::Created {
            tables: vec!["am_tier".into()],
            statements: 4
        })
    );
    assert_eq!(rows(&db, "AM_TIER").await, 1);
    db.exec("CALL AM_ADD_TIER('Silver', 2000);");
    assert_eq!(rows(&db, "AM_TIER").await, 2);
}

#[tokio::test]
async fn postgres_dollar_quoted_function_bodies() {
    let db = TestDb::create(db::Engine::Postgres);
    let text = "CREATE TABLE IF NOT EXISTS AM_TIER (NAME VARCHAR(64) PRIMARY KEY, QUOTA INT);\n\
        CREATE OR REPLACE FUNCTION am_add_tier(tier TEXT, quota INT) RETURNS void AS $body$\n\
        BEGIN\n\
            -- two statements; the second's ; does not end the function\n\
            DELETE FROM AM_TIER WHERE NAME = tier;\n\
            INSERT INTO AM_TIER (NAME, QUOTA) VALUES (tier, quota);\n\
        END;\n\
        $body$ LANGUAGE plpgsql;\n\
        DO $$ BEGIN PERFORM am_add_tier('Gold', 5000); PERFORM am_add_tier('Gold', 5000); END $$;\n";
    let outcome = init_if_empty(
        &target(&db),
        &[script("dbscripts/tiers.sql", text)],
        &options(),
    )
    .await;
    assert_eq!(
        outcome,
        Ok(Outcome::Created {
            tables: vec!["am_tier".into()],
            statements: 3
        })
    );
    assert_eq!(rows(&db, "AM_TIER").await, 1);
    db.exec("SELECT am_add_tier('Silver', 2000);");
    assert_eq!(rows(&db, "AM_TIER").await, 2);
}

#[tokio::test]
async fn unreadable_or_tableless_scripts_fail_before_connecting() {
    // Nothing listens here: the script errors come first.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let t = Target {
        engine: Engine::Postgres,
        host: "127.0.0.1".into(),
        port,
        database: "apim".into(),
        username: "apim".into(),
        password: Secret("s3cret-value".into()),
    };
    let scripts = [
        script("dbscripts/ok.sql", "CREATE TABLE A (ID INT);"),
        script(
            "dbscripts/bad.sql",
            "CREATE TABLE B (ID INT);\nINSERT INTO B VALUES ('x);\n",
        ),
    ];
    let err = init_if_empty(&t, &scripts, &options()).await;
    assert!(
        matches!(&err, Err(DbError::Script { script, line: 2, .. }) if script == "dbscripts/bad.sql"),
        "{err:?}"
    );
    let err = init_if_empty(
        &t,
        &[script("dbscripts/data.sql", "INSERT INTO A VALUES (1);")],
        &options(),
    )
    .await;
    assert!(matches!(err, Err(DbError::Script { .. })), "{err:?}");
    assert_eq!(format!("{t:?}").matches("s3cret-value").count(), 0);
    assert!(format!("{t:?}").contains("<redacted>"));
}
