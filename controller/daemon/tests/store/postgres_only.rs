//! What one engine has and the other has not: several controllers on one PostgreSQL database,
//! a schema newer than this build, a foreign key file, a dropped connection; legacy SQLite files.

use super::*;

/// A plain client on the test database, as its owner.
pub(super) fn raw(db: &TestDb) -> ::postgres::Client {
    ::postgres::Config::new()
        .host(&db.host)
        .port(db.port)
        .user(&db.user)
        .password(&db.password)
        .dbname(&db.name)
        .connect(::postgres::NoTls)
        .unwrap()
}

#[test]
fn two_controllers_open_one_database_at_once_and_migrate_it_once() {
    let db = TestDb::create(db::Engine::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // The first controller's key file, copied to the second (as the docs say).
    drop(Store::open(&a).unwrap());
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(key_file(&a), key_file(&b)).unwrap();
    let opened: Vec<Result<Store, StoreError>> = std::thread::scope(|s| {
        let ha = s.spawn(|| Store::open_postgres(target(&db), &a));
        let hb = s.spawn(|| Store::open_postgres(target(&db), &b));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    let stores: Vec<Store> = opened.into_iter().map(Result::unwrap).collect();
    let history: i64 = raw(&db)
        .query_one("SELECT COUNT(*) FROM refinery_schema_history", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        history,
        i64::from(apim_controller::store::migrate::SCHEMA_VERSION),
        "each migration recorded once"
    );
    let secrets: BTreeMap<String, String> = [("env:PW".into(), "s3cret".into())].into();
    stores[0]
        .write(|tx| tx.insert_plan("a", "p", "t", &secrets))
        .unwrap();
    let seen = stores[1].read(|tx| tx.plan(1)).unwrap().unwrap();
    assert_eq!(
        seen.secrets["env:PW"], "s3cret",
        "the other controller opens it"
    );
    assert!(
        stores[1].read(|tx| tx.revision()).unwrap() > 0,
        "and sees the revision move"
    );
}

#[test]
fn a_schema_newer_than_this_build_is_refused_untouched() {
    let db = TestDb::create(db::Engine::Postgres);
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open_postgres(target(&db), dir.path()).unwrap());
    raw(&db)
        .execute(
            "INSERT INTO refinery_schema_history(version, name, applied_on, checksum)
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
            &[],
        )
        .unwrap();
    let err = Store::open_postgres(target(&db), dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooNew {
                found: 99,
                known
            } if known == i64::from(apim_controller::store::migrate::SCHEMA_VERSION)
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade this controller"), "{err}");
}

#[test]
fn a_controller_with_another_key_file_is_refused_naming_it() {
    let db = TestDb::create(db::Engine::Postgres);
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open_postgres(target(&db), &dir.path().join("first")).unwrap());
    let other = dir.path().join("second");
    let err = Store::open_postgres(target(&db), &other).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&key_file(&other).display().to_string()) && text.contains("copy"),
        "{text}"
    );
}

#[test]
fn no_secret_is_stored_in_clear_in_postgresql() {
    let db = TestDb::create(db::Engine::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_postgres(target(&db), dir.path()).unwrap();
    let secret = "hunter2-in-postgres";
    s.write(|tx| {
        let secrets: BTreeMap<String, String> = [("env:DB".into(), secret.into())].into();
        tx.insert_plan("a", "p.toml", &format!("# {secret}"), &secrets)?;
        tx.save_spec(&spec("vm-a", 1, secret))?;
        tx.set_baseline(&[spec("vm-a", 1, secret)])?;
        tx.save_targets("rollout-1", &[spec("vm-a", 1, secret)])
    })
    .unwrap();
    for table in ["plans", "specs", "baseline", "rollout_targets", "kv"] {
        let dump = postgres_dump(&db, table);
        assert!(!dump.is_empty() || table == "kv", "{table} has rows");
        assert!(!dump.contains(secret), "{table} holds the secret in clear");
        assert!(
            !dump.contains(&hex_of(secret)),
            "{table} holds the secret's bytes"
        );
    }
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_password_in_the_url_is_refused_and_a_wrong_one_names_the_url_only() {
    let err = PgTarget::new("postgres://u:pw@127.0.0.1:5432/d", None).unwrap_err();
    assert!(
        err.to_string().contains("must not hold a password"),
        "{err}"
    );
    let db = TestDb::create(db::Engine::Postgres);
    let url = format!("postgres://{}@{}:{}/{}", db.user, db.host, db.port, db.name);
    let dir = tempfile::tempdir().unwrap();
    let bad = PgTarget::new(&url, Some("not-the-password")).unwrap();
    let err = Store::open_postgres(bad, dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&url) && text.contains("password"), "{text}");
    assert!(!text.contains(&db.password) && !text.contains("not-the-password"));
}

#[test]
fn a_dropped_connection_fails_one_call_clearly_and_the_next_reconnects() {
    let db = TestDb::create(db::Engine::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_postgres(target(&db), dir.path()).unwrap();
    s.write(|tx| tx.save_spec(&spec("vm-a", 1, "x"))).unwrap();
    // What a server restart does to an open connection: the server ends it.
    let killed: i64 = raw(&db)
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(killed >= 1);
    // Termination is asynchronous: wait (a guard, not a delay) until the backend is gone.
    let mut admin = raw(&db);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backend still there");
        std::thread::yield_now();
    }
    let err = s.read(|tx| tx.specs()).unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
    assert_eq!(s.read(|tx| tx.specs()).unwrap().len(), 1, "reconnected");
}

#[test]
fn a_legacy_sqlite_store_is_adopted_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        // A store as the controller before refinery left it at user_version 1.
        let c = rusqlite::Connection::open(data.join(apim_controller::store::DB_FILE)).unwrap();
        c.execute_batch(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE plans (generation INTEGER PRIMARY KEY, author TEXT NOT NULL,
               created_at INTEGER NOT NULL, plan_path TEXT NOT NULL, plan_toml TEXT NOT NULL,
               secrets TEXT NOT NULL);
             CREATE TABLE rollouts (id TEXT PRIMARY KEY, generation INTEGER NOT NULL,
               state TEXT NOT NULL, updated_at INTEGER NOT NULL, body TEXT NOT NULL);
             CREATE TABLE rollout_targets (rollout_id TEXT NOT NULL, machine TEXT NOT NULL,
               spec BLOB NOT NULL, PRIMARY KEY (rollout_id, machine));
             CREATE TABLE agents (machine TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE tokens (id TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE TABLE artifacts (sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL,
               name TEXT NOT NULL, stored_at INTEGER NOT NULL);
             CREATE TABLE specs (machine TEXT PRIMARY KEY, generation INTEGER NOT NULL,
               spec BLOB NOT NULL);
             CREATE TABLE baseline (machine TEXT PRIMARY KEY, spec BLOB NOT NULL);
             INSERT INTO plans VALUES (1, 'old', 0, 'p.toml', '[cluster]', '{\"env:X\":\"v\"}');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let s = Store::open(&data).unwrap();
    let p = s.read(|tx| tx.plan(1)).unwrap().unwrap();
    assert_eq!(
        (p.author.as_str(), p.secrets["env:X"].as_str()),
        ("old", "v")
    );
    s.write(|tx| tx.save_spec(&spec("vm-a", 2, "x"))).unwrap();
    assert_eq!(
        s.read(|tx| tx.plan_generation_of("vm-a", 2)).unwrap(),
        Some(2)
    );
    drop(s);
    let c = rusqlite::Connection::open(data.join(apim_controller::store::DB_FILE)).unwrap();
    let versions: Vec<i64> = c
        .prepare("SELECT version FROM refinery_schema_history ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let all: Vec<i64> = (1..=i64::from(apim_controller::store::migrate::SCHEMA_VERSION)).collect();
    assert_eq!(versions, all);
}

#[test]
fn shared_files_move_only_when_they_changed() {
    use apim_controller::shared::{Synced, pull_since, push_changed};
    let db = TestDb::create(db::Engine::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (dir.path().join("a"), dir.path().join("b"));
    let a = Store::open_postgres(target(&db), &ra).unwrap();
    std::fs::create_dir_all(&rb).unwrap();
    std::fs::copy(key_file(&ra), key_file(&rb)).unwrap();
    let b = Store::open_postgres(target(&db), &rb).unwrap();
    std::fs::create_dir_all(ra.join("pki/c1")).unwrap();
    std::fs::write(ra.join("pki/c1/ca.key"), "KEY-1").unwrap();
    std::fs::write(ra.join("pki/c1/ca.crt"), "CRT-1").unwrap();
    let (mut sa, mut sb) = (Synced::default(), Synced::default());
    push_changed(&a, &ra, "pki", true, &mut sa).unwrap();
    assert_eq!(pull_since(&b, &rb, "pki", &mut sb).unwrap(), 2);
    assert_eq!(
        std::fs::read_to_string(rb.join("pki/c1/ca.key")).unwrap(),
        "KEY-1"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(rb.join("pki/c1/ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        pull_since(&b, &rb, "pki", &mut sb).unwrap(),
        0,
        "nothing new"
    );
    let before = a.read(|tx| tx.revision()).unwrap();
    push_changed(&a, &ra, "pki", true, &mut sa).unwrap();
    assert_eq!(
        a.read(|tx| tx.revision()).unwrap(),
        before,
        "nothing changed: no write"
    );
    std::fs::write(rb.join("pki/c1/ca.crt"), "CRT-2, longer").unwrap();
    push_changed(&b, &rb, "pki", true, &mut sb).unwrap();
    assert_eq!(
        pull_since(&a, &ra, "pki", &mut sa).unwrap(),
        1,
        "only the changed file"
    );
    assert_eq!(
        std::fs::read_to_string(ra.join("pki/c1/ca.crt")).unwrap(),
        "CRT-2, longer"
    );
    let raw_rows = postgres_dump(&db, "shared_files");
    assert!(
        !raw_rows.contains("KEY-1") && !raw_rows.contains(&hex_of("KEY-1")),
        "sealed"
    );
}
