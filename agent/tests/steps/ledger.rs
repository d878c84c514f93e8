//! The ledger: generations persisted atomically, older ones refused, corruption never guessed.

use std::os::unix::fs::MetadataExt;

use apim_agent::exec::ExecError;
use apim_agent::exec::ledger::{CommitOutcome, Generational, Ledger};
use serde::{Deserialize, Serialize};

use crate::support::dir_entries;
use crate::{mode_of, tmp};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Spec {
    generation: u64,
    nodes: Vec<String>,
    db_password: String,
}

impl Generational for Spec {
    fn generation(&self) -> u64 {
        self.generation
    }
}

fn spec(generation: u64, nodes: &[&str]) -> Spec {
    Spec {
        generation,
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        db_password: "s3cret".into(),
    }
}

#[test]
fn ledger_commits_persists_and_reloads() {
    let d = tmp();
    let state = d.path().join("state");
    let mut l: Ledger<Spec> = Ledger::load(&state, "machine-spec").unwrap();
    assert_eq!(l.generation(), None);
    assert_eq!(mode_of(&state), 0o700);
    assert_eq!(
        l.commit(spec(1, &["km-1"])).unwrap(),
        CommitOutcome::Committed { previous: None }
    );
    assert_eq!(
        l.commit(spec(3, &["km-1", "gw-1"])).unwrap(),
        CommitOutcome::Committed { previous: Some(1) }
    );
    assert_eq!(mode_of(l.path()), 0o600, "the spec holds passwords");
    let again: Ledger<Spec> = Ledger::load(&state, "machine-spec").unwrap();
    assert_eq!(again.current(), Some(&spec(3, &["km-1", "gw-1"])));
    assert_eq!(dir_entries(&state), vec!["machine-spec.json"]);
}

#[test]
fn ledger_refuses_an_older_generation_and_keeps_the_file() {
    let d = tmp();
    let mut l: Ledger<Spec> = Ledger::load(d.path(), "spec").unwrap();
    l.commit(spec(5, &["a"])).unwrap();
    let before = std::fs::read(l.path()).unwrap();
    let err = l.commit(spec(4, &["b"])).unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::GenerationRegressed {
                held: 5,
                offered: 4,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(l.path()).unwrap(), before);
    assert_eq!(l.generation(), Some(5));
}

#[test]
fn ledger_same_generation_same_content_is_a_no_op() {
    let d = tmp();
    let mut l: Ledger<Spec> = Ledger::load(d.path(), "spec").unwrap();
    l.commit(spec(2, &["a"])).unwrap();
    let ino = std::fs::metadata(l.path()).unwrap().ino();
    assert_eq!(l.commit(spec(2, &["a"])).unwrap(), CommitOutcome::Unchanged);
    assert_eq!(
        std::fs::metadata(l.path()).unwrap().ino(),
        ino,
        "no rewrite happened"
    );
}

#[test]
fn ledger_same_generation_different_content_is_refused() {
    let d = tmp();
    let mut l: Ledger<Spec> = Ledger::load(d.path(), "spec").unwrap();
    l.commit(spec(2, &["a"])).unwrap();
    let err = l.commit(spec(2, &["b"])).unwrap_err();
    assert!(
        matches!(err, ExecError::GenerationConflict { generation: 2, .. }),
        "{err}"
    );
    let reloaded: Ledger<Spec> = Ledger::load(d.path(), "spec").unwrap();
    assert_eq!(reloaded.current(), Some(&spec(2, &["a"])));
}

#[test]
fn ledger_refuses_to_load_a_corrupt_file() {
    let d = tmp();
    std::fs::write(d.path().join("spec.json"), b"{\"format\":1,\"generation\":").unwrap();
    let err = Ledger::<Spec>::load(d.path(), "spec").unwrap_err();
    assert!(matches!(err, ExecError::LedgerCorrupt { .. }), "{err}");
    // An envelope that disagrees with its value is corrupt too.
    let lie = serde_json::json!({"format": 1, "generation": 9, "value": spec(2, &["a"])});
    std::fs::write(d.path().join("spec.json"), lie.to_string()).unwrap();
    assert!(matches!(
        Ledger::<Spec>::load(d.path(), "spec"),
        Err(ExecError::LedgerCorrupt { .. })
    ));
}
