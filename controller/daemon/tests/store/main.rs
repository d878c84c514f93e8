//! The store's behaviour on both engines: every test of [`suite`] runs once on the embedded
//! SQLite file and once on a fresh database of the local PostgreSQL server (apim-e2e's
//! `TestDb`: a missing server is a failure naming the package, never a skip). Then what only
//! PostgreSQL has: several controllers on one database, a newer schema, a foreign key file.

use std::collections::BTreeMap;
use std::path::Path;

use apim_controller::store::{
    Engine, PgTarget, Phase, RolloutRecord, RunState, Store, StoreError, StoredAgent,
};
use apim_e2e::db::{self, TestDb};
use apim_proto::v1::{MachineSpec, NodeSpec};

mod postgres_only;
mod two_controllers;

/// A store of `engine` over a fresh database (PostgreSQL) or data directory (SQLite).
struct Opened {
    store: Store,
    _dir: tempfile::TempDir,
    db: Option<TestDb>,
}

fn target(db: &TestDb) -> PgTarget {
    let url = format!("postgres://{}@{}:{}/{}", db.user, db.host, db.port, db.name);
    PgTarget::new(&url, Some(&db.password)).expect("valid url")
}

fn open(engine: Engine) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    match engine {
        Engine::Sqlite => Opened {
            store: Store::open(&dir.path().join("data")).unwrap(),
            _dir: dir,
            db: None,
        },
        Engine::Postgres => {
            let db = TestDb::create(db::Engine::Postgres);
            let store = Store::open_postgres(target(&db), &dir.path().join("data")).unwrap();
            Opened {
                store,
                _dir: dir,
                db: Some(db),
            }
        }
    }
}

fn spec(machine: &str, generation: u64, secret: &str) -> MachineSpec {
    MachineSpec {
        machine: machine.into(),
        generation,
        plan_generation: generation,
        nodes: vec![NodeSpec {
            name: "km-1".into(),
            deployment_toml: format!("[super_admin]\npassword = \"{secret}\"\n"),
            ..Default::default()
        }],
        ..MachineSpec::default()
    }
}

fn rollout(id: &str, generation: u64) -> RolloutRecord {
    RolloutRecord {
        id: id.into(),
        generation,
        state: Phase::Starting,
        tier: 0,
        message: String::new(),
        rollback: false,
        max_parallel: 1,
        health_timeout_s: 60,
        tiers: Vec::new(),
        ha_roles: Default::default(),
        nodes: BTreeMap::new(),
        machines: BTreeMap::new(),
        settled_at_ms: None,
    }
}

/// Runs `$body(store)` on both engines, each its own test.
macro_rules! both {
    ($($name:ident => $body:expr;)*) => {
        mod sqlite {
            use super::*;
            $( #[test] fn $name() { let o = open(Engine::Sqlite); ($body)(&o.store); } )*
        }
        mod postgres {
            use super::*;
            $( #[test] fn $name() { let o = open(Engine::Postgres); assert!(o.db.is_some()); ($body)(&o.store); } )*
        }
    };
}

both! {
    plans_are_numbered_and_keep_their_secrets => |s: &Store| {
        let secrets: BTreeMap<String, String> = [("env:DB".into(), "pw".into())].into();
        let g1 = s.write(|tx| tx.insert_plan("alice", "p.toml", "[cluster]\n", &secrets)).unwrap();
        let g2 = s.write(|tx| tx.insert_plan("bob", "p.toml", "[cluster]\n#2", &BTreeMap::new())).unwrap();
        assert_eq!((g1, g2), (1, 2));
        assert_eq!(s.read(|tx| tx.latest_generation()).unwrap(), 2);
        let p = s.read(|tx| tx.plan(1)).unwrap().unwrap();
        assert_eq!((p.author.as_str(), p.plan_toml.as_str()), ("alice", "[cluster]\n"));
        assert_eq!(p.secrets["env:DB"], "pw");
        assert!(s.read(|tx| tx.plan(3)).unwrap().is_none());
        let run = RunState { stopped: ["gw-1".to_string()].into(), ..RunState::default() };
        s.write(|tx| tx.set_run_state(2, &run)).unwrap();
        assert_eq!(s.read(|tx| tx.run_state(2)).unwrap(), run);
        assert_eq!(s.read(|tx| tx.run_state(1)).unwrap(), RunState::default());
    };
    a_failed_transaction_writes_nothing => |s: &Store| {
        let before = s.read(|tx| tx.revision()).unwrap();
        let r: Result<(), StoreError> = s.write(|tx| {
            tx.insert_plan("a", "p", "t", &BTreeMap::new())?;
            tx.save_spec(&spec("vm-a", 1, "x"))?;
            Err(StoreError::Corrupt { what: "test", reason: "abort".into() })
        });
        assert!(r.is_err());
        assert_eq!(s.read(|tx| tx.latest_generation()).unwrap(), 0);
        assert!(s.read(|tx| tx.specs()).unwrap().is_empty());
        assert_eq!(s.read(|tx| tx.revision()).unwrap(), before, "no revision for nothing written");
        s.write(|tx| tx.save_spec(&spec("vm-a", 1, "x"))).unwrap();
        assert_eq!(s.read(|tx| tx.revision()).unwrap(), before + 1, "every write bumps it");
    };
    specs_history_baseline_and_targets_round_trip => |s: &Store| {
        s.write(|tx| {
            tx.save_spec(&spec("vm-b", 4, "s"))?;
            tx.save_spec(&spec("vm-a", 3, "s"))?;
            tx.save_spec(&spec("vm-a", 5, "s"))?;
            tx.set_baseline(&[spec("vm-a", 3, "s")])?;
            tx.save_targets("rollout-1", &[spec("vm-a", 5, "s"), spec("vm-b", 4, "s")])
        }).unwrap();
        let specs = s.read(|tx| tx.specs()).unwrap();
        assert_eq!(specs.iter().map(|s| (s.machine.as_str(), s.generation)).collect::<Vec<_>>(),
                   [("vm-a", 5), ("vm-b", 4)]);
        assert_eq!(s.read(|tx| tx.plan_generation_of("vm-a", 3)).unwrap(), Some(3));
        assert_eq!(s.read(|tx| tx.plan_generation_of("vm-a", 9)).unwrap(), None);
        assert_eq!(s.read(|tx| tx.baseline()).unwrap()["vm-a"].generation, 3);
        let t = s.read(|tx| tx.targets("rollout-1")).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t["vm-a"].nodes[0].deployment_toml.contains("password"));
    };
    rollouts_agents_tokens_and_artifacts_round_trip => |s: &Store| {
        let r = rollout("rollout-2", 2);
        s.write(|tx| { tx.save_rollout(&rollout("rollout-1", 1))?; tx.save_rollout(&r) }).unwrap();
        assert_eq!(s.read(|tx| tx.latest_rollout()).unwrap().unwrap().id, "rollout-2");
        assert_eq!(s.read(|tx| tx.rollouts_by_generation()).unwrap().len(), 2);
        let agent = StoredAgent { held_generation: 7, cert_serial: Some("ab".into()), ..StoredAgent::default() };
        s.write(|tx| tx.save_agent("vm-a", &agent)).unwrap();
        s.write(|tx| tx.save_agent("vm-a", &agent)).unwrap();
        assert_eq!(s.read(|tx| tx.agents()).unwrap()["vm-a"], agent);
        let row = apim_controller::store::ArtifactRow { sha256: "00ff".into(), size: 42, name: "pack.zip".into() };
        s.write(|tx| { tx.record_artifact(&row)?; tx.record_artifact(&row) }).unwrap();
        assert_eq!(s.read(|tx| tx.artifacts()).unwrap(), vec![row]);
        s.write(|tx| tx.forget_artifact("00ff")).unwrap();
        assert!(s.read(|tx| tx.artifacts()).unwrap().is_empty());
        s.write(|tx| tx.set_drift_repair(true)).unwrap();
        assert!(s.read(|tx| tx.drift_repair()).unwrap());
        assert!(s.read(|tx| tx.tokens()).unwrap().records().next().is_none());
    };
    shared_folder_files_keep_the_newest_state_by_revision => |s: &Store| {
        use apim_controller::store::Put;
        use apim_proto::v1::SharedFile;
        use sha2::Digest;
        let f = |path: &str, c: &str| SharedFile {
            path: path.into(),
            content: c.as_bytes().to_vec(),
            sha256: hex::encode(sha2::Sha256::digest(c.as_bytes())),
            deleted: false,
        };
        let gone = |path: &str| SharedFile { path: path.into(), deleted: true, ..SharedFile::default() };
        let put = |file: &SharedFile, joining: bool| {
            s.write(|tx| tx.put_folder_file("g", file, joining)).unwrap()
        };
        assert_eq!(put(&gone("d/never"), false), Put::Same, "deleting what never was");
        assert_eq!(put(&f("d/a", "1"), true), Put::Written);
        assert_eq!(put(&f("d/a", "other"), true), Put::GroupKept, "a joiner does not overwrite");
        assert_eq!(put(&f("d/a", "1"), false), Put::Same);
        let r1 = s.read(|tx| tx.folder_revision()).unwrap();
        assert_eq!(put(&f("d/b", "2"), false), Put::Written);
        assert_eq!(put(&gone("d/a"), false), Put::Written);
        assert_eq!(put(&gone("d/a"), true), Put::GroupKept, "a tombstone is the group's too");
        let since = s.read(|tx| tx.folder_files_since("g", r1)).unwrap();
        let got: Vec<(&str, bool)> = since.iter().map(|(f, _)| (f.path.as_str(), f.deleted)).collect();
        assert_eq!(got, [("d/b", false), ("d/a", true)], "in revision order, newest state only");
        assert!(since[0].1 < since[1].1);
        assert_eq!(since[0].0.content, b"2");
        assert!(since[1].0.content.is_empty() && since[1].0.sha256.is_empty());
        assert_eq!(s.read(|tx| tx.folder_revision()).unwrap(), since[1].1);
        assert!(s.read(|tx| tx.folder_files_since("g", since[1].1)).unwrap().is_empty());
        assert!(s.read(|tx| tx.folder_files_since("other", 0)).unwrap().is_empty());
        // A destroy forgets them: a path is new to the group again.
        s.write(|tx| tx.forget_folder_files()).unwrap();
        assert!(s.read(|tx| tx.folder_files_since("g", 0)).unwrap().is_empty());
        assert_eq!(put(&f("d/a", "other"), true), Put::Written);
    };
    old_secrets_are_pruned_but_the_baselines_are_kept => |s: &Store| {
        let secrets = |g: u64| -> BTreeMap<String, String> { [("env:PW".to_string(), format!("pw-{g}"))].into() };
        for g in 1..=12 {
            s.write(|tx| {
                let g = tx.insert_plan("a", "p", "t", &secrets(g))?;
                if g == 1 { tx.set_baseline(&[spec("vm-a", 1, "pw-1")])?; }
                Ok(())
            }).unwrap();
        }
        let kept = |g: u64| s.read(|tx| tx.plan(g)).unwrap().unwrap().secrets.get("env:PW").cloned();
        assert_eq!(kept(1).as_deref(), Some("pw-1"), "the baseline's plan keeps its secrets");
        assert_eq!(kept(2), None);
        assert_eq!(kept(12).as_deref(), Some("pw-12"));
    };
}

/// Bytes of every row of `table`, as text, for "no secret in clear" checks.
fn postgres_dump(db: &TestDb, table: &str) -> String {
    postgres_only::raw(db)
        .query(&format!("SELECT CAST(t AS TEXT) FROM {table} t"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a data directory's key file is.
fn key_file(dir: &Path) -> std::path::PathBuf {
    dir.join(apim_controller::store::KEY_FILE)
}
