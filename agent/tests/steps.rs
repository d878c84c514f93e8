//! Integration tests of the agent's building blocks against real files, real processes and
//! real sockets on loopback, all inside temp dirs. One test binary for the crate (link time).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

mod support;

use apim_agent::exec::ExecError;
use apim_agent::exec::arriving::{ArrivingPack, central_directory_start};
use apim_agent::exec::facts::{self, JavaFact, JavaVersionSource, Problem, Requirements};
use apim_agent::exec::health::{
    self, HttpProbe, LogProbe, ProcessProbe, ReadinessOutcome, ReadinessSpec, TcpProbe,
};
use apim_agent::exec::hosts::{self, BEGIN_MARKER, END_MARKER, HostsChange, HostsEntry, HostsFile};
use apim_agent::exec::ledger::{CommitOutcome, Generational, Ledger};
use apim_agent::exec::process::{
    self, CommandSpec, PidFileState, ProcessRunner, ScriptOutput, Server, StartOutcome, StartSpec,
    StopOutcome, StopSpec, StopVia, TokioRunner,
};
use apim_agent::exec::unpack::{self, UnpackLimits, ZipSource};
use apim_atomic::{FileOps, WriteMethod};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use support::dir_entries;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zip::write::SimpleFileOptions;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A rename that always fails with the given errno, counting calls.
struct FailingRename {
    errno: i32,
    calls: Mutex<u32>,
}

impl FileOps for FailingRename {
    fn rename(&self, _from: &Path, _to: &Path) -> io::Result<()> {
        *self.calls.lock().unwrap() += 1;
        Err(io::Error::from_raw_os_error(self.errno))
    }
}

// =============================================================================================
// ledger

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

// =============================================================================================
// unpack

const TOP: &str = "wso2am-9.9.9";

enum Item<'a> {
    /// Bytes, unix mode (None: a "Windows" entry without unix modes).
    File(&'a [u8], Option<u32>),
    Dir,
    Symlink(&'a str),
    /// A regular-looking entry whose external attributes carry this raw unix mode.
    RawMode(u32),
}

fn build_zip(path: &Path, items: &[(&str, Item<'_>)]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let deflate = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, item) in items {
        match item {
            Item::File(_, Some(mode)) => w
                .start_file(*name, deflate.unix_permissions(*mode))
                .unwrap(),
            Item::File(_, None) => w
                .start_file(*name, deflate.system(zip::System::Dos))
                .unwrap(),
            Item::Dir => w.add_directory(*name, deflate).unwrap(),
            Item::Symlink(target) => w.add_symlink(*name, *target, deflate).unwrap(),
            Item::RawMode(mode) => w
                .start_file(*name, deflate.external_attributes(mode << 16))
                .unwrap(),
        }
        if let Item::File(data, _) = item {
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap();
}

/// Deterministic, moderately compressible bytes.
fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            if i % 7 == 0 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
            }
            (x >> 33) as u8 % 32 + b'A'
        })
        .collect()
}

fn sha256_cli(p: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

struct GoodPack {
    _dir: TempDir,
    zip: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

fn good_pack() -> GoodPack {
    let dir = tmp();
    let zip = dir.path().join("pack.zip");
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            format!("{TOP}/bin/api-manager.sh"),
            b"#!/bin/sh\necho hi\n".to_vec(),
        ),
        (
            format!("{TOP}/bin/profileSetup.sh"),
            b"#!/bin/sh\n".to_vec(),
        ),
        (
            format!("{TOP}/repository/conf/deployment.toml"),
            b"[server]\noffset = 0\n".to_vec(),
        ),
        (format!("{TOP}/lib/big.jar"), payload(1 << 20, 7)),
        (format!("{TOP}/README.txt"), b"readme".to_vec()),
        (format!("{TOP}/empty.txt"), Vec::new()),
    ];
    for i in 0..300 {
        files.push((
            format!("{TOP}/repository/components/plugins/p{i:03}.jar"),
            payload(1000 + i * 37, i as u64),
        ));
    }
    let modes: BTreeMap<String, Option<u32>> = BTreeMap::from([
        (format!("{TOP}/bin/api-manager.sh"), None), // no unix mode: exec bit by rule
        (format!("{TOP}/bin/profileSetup.sh"), Some(0o644)), // unix mode without x: exec by rule
        (
            format!("{TOP}/repository/conf/deployment.toml"),
            Some(0o600),
        ),
        (format!("{TOP}/README.txt"), Some(0o4755)), // setuid stripped
    ]);
    let mut items: Vec<(&str, Item<'_>)> = vec![
        ("wso2am-9.9.9/", Item::Dir),
        ("wso2am-9.9.9/lib/", Item::Dir),
    ];
    for (name, data) in &files {
        let mode = modes.get(name).copied().unwrap_or(Some(0o644));
        items.push((name.as_str(), Item::File(data, mode)));
    }
    build_zip(&zip, &items);
    GoodPack {
        _dir: dir,
        zip,
        files,
    }
}

#[tokio::test]
async fn verify_sha256_accepts_the_right_digest_and_refuses_others() {
    let pack = good_pack();
    let digest = sha256_cli(&pack.zip);
    unpack::verify_sha256(&pack.zip, &digest).await.unwrap();
    unpack::verify_sha256(&pack.zip, &digest.to_uppercase())
        .await
        .unwrap();
    let wrong = format!("{}0", &digest[..63]);
    let wrong = if wrong == digest {
        format!("{}1", &digest[..63])
    } else {
        wrong
    };
    let err = unpack::verify_sha256(&pack.zip, &wrong).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::ShaMismatch { actual, .. } if *actual == digest),
        "{err}"
    );
    assert!(matches!(
        unpack::verify_sha256(&pack.zip, "abc").await,
        Err(ExecError::BadDigest { .. })
    ));
}

/// The fetcher's side of an arriving pack, played by a thread: the partial file, the tail in
/// memory (from the central directory on), and the body written in uneven pieces.
struct Arrival {
    _dir: TempDir,
    partial: PathBuf,
    data: Vec<u8>,
    pack: std::sync::Arc<ArrivingPack>,
}

impl Arrival {
    fn of(zip: &Path) -> Arrival {
        let data = std::fs::read(zip).unwrap();
        let dir = tmp();
        let partial = dir.path().join("pack.partial");
        std::fs::write(&partial, b"").unwrap();
        let probe_start = data.len().saturating_sub(64 * 1024);
        let cd = central_directory_start(&data[probe_start..], probe_start as u64)
            .expect("end record") as usize;
        let pack = ArrivingPack::new(
            partial.clone(),
            std::fs::File::open(&partial).unwrap(),
            data.len() as u64,
            0,
            data[cd..].to_vec(),
        );
        Arrival {
            _dir: dir,
            partial,
            data,
            pack: std::sync::Arc::new(pack),
        }
    }

    /// Starts staging the arriving pack into `staging`.
    fn stage(
        &self,
        staging: &Path,
    ) -> tokio::task::JoinHandle<apim_agent::exec::Result<unpack::StagedTree>> {
        let (source, staging) = (
            ZipSource::Arriving(self.pack.clone()),
            staging.to_path_buf(),
        );
        tokio::spawn(
            async move { unpack::stage(source, &staging, TOP, &UnpackLimits::default()).await },
        )
    }

    /// Appends the body up to `to` in 7919-byte pieces, announcing each.
    fn feed(&self, to: usize) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.partial)
            .unwrap();
        let mut at = self.pack.written() as usize;
        while at < to {
            let end = (at + 7919).min(to);
            f.write_all(&self.data[at..end]).unwrap();
            at = end;
            self.pack.advance(at as u64);
        }
    }
}

/// Polls (a failure guard, not a synchronisation sleep) until some staging dir under `root`
/// has `rel` in it.
fn wait_for_staged_file(root: &Path, rel: &str) {
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while !dir_entries(root)
        .iter()
        .any(|w| root.join(w).join(rel).exists())
    {
        assert!(
            std::time::Instant::now() < give_up,
            "{rel} never appeared while the pack was arriving"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A pack is unpacked while it arrives: with half the body written, the first entries are
/// already extracted; once the rest arrives the tree is exactly the pack's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_is_staged_while_it_arrives() {
    let pack = good_pack();
    let arrival = Arrival::of(&pack.zip);
    let root = tmp();
    let staging = root.path().join("staging");
    let stage = arrival.stage(&staging);
    let half = arrival.data.len() / 2;
    let arrival = tokio::task::spawn_blocking(move || {
        arrival.feed(half);
        wait_for_staged_file(&staging, &format!("{TOP}/bin/api-manager.sh"));
        assert!(arrival.pack.written() < arrival.pack.size());
        arrival.feed(arrival.data.len());
        arrival
    })
    .await
    .unwrap();
    let staged = stage.await.unwrap().unwrap();
    assert_eq!(staged.files, pack.files.len() as u64);
    for (name, data) in &pack.files {
        let p = staged.path().parent().unwrap().join(name);
        assert_eq!(&std::fs::read(&p).unwrap(), data, "{name}");
    }
    assert_eq!(mode_of(&staged.path().join("bin/profileSetup.sh")), 0o755);
    assert!(
        arrival
            .pack
            .tail_matches(&arrival.data[arrival.pack.tail_start() as usize..])
    );
    staged.discard().unwrap();
}

/// A download that ends early fails the extraction waiting for it; nothing is left staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_whose_download_fails_stages_nothing() {
    let pack = good_pack();
    let arrival = Arrival::of(&pack.zip);
    let root = tmp();
    let staging = root.path().join("staging");
    let stage = arrival.stage(&staging);
    let arrival = tokio::task::spawn_blocking(move || {
        arrival.feed(arrival.data.len() / 3);
        wait_for_staged_file(&staging, &format!("{TOP}/bin/api-manager.sh"));
        arrival.pack.fail("the controller went away");
        arrival
    })
    .await
    .unwrap();
    let err = stage.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("the controller went away"),
        "{err}"
    );
    assert_eq!(
        dir_entries(&root.path().join("staging")),
        Vec::<String>::new()
    );
    drop(arrival);
}

#[tokio::test]
async fn good_zip_stages_with_right_files_and_modes_then_installs() {
    let pack = good_pack();
    let root = tmp();
    let staging = root.path().join("staging");
    let staged = unpack::stage_zip(&pack.zip, &staging, TOP, &UnpackLimits::default())
        .await
        .unwrap();
    assert_eq!(staged.files, pack.files.len() as u64);
    let top = staged.path().to_path_buf();
    assert_eq!(top.file_name().unwrap(), TOP);
    for (name, data) in &pack.files {
        let p = top.parent().unwrap().join(name);
        assert_eq!(&std::fs::read(&p).unwrap(), data, "{name}");
    }
    assert_eq!(mode_of(&top.join("bin/api-manager.sh")), 0o755);
    assert_eq!(mode_of(&top.join("bin/profileSetup.sh")), 0o755);
    assert_eq!(mode_of(&top.join("repository/conf/deployment.toml")), 0o600);
    assert_eq!(mode_of(&top.join("README.txt")), 0o755);
    assert_eq!(mode_of(&top.join("lib/big.jar")), 0o644);
    assert_eq!(mode_of(&top.join("repository/conf")), 0o755);
    assert_eq!(mode_of(&top), 0o755);

    let dest = root.path().join("opt/wso2/km-1");
    let out = unpack::install_staged(staged, &dest).await.unwrap();
    assert!(!out.replaced_previous);
    assert_eq!(out.leftover, None);
    assert_eq!(
        std::fs::read(dest.join("bin/api-manager.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        dir_entries(&staging),
        Vec::<String>::new(),
        "staging dir cleaned"
    );
}

#[tokio::test]
async fn install_swaps_out_the_previous_tree_and_removes_it() {
    let pack = good_pack();
    let root = tmp();
    let staging = root.path().join("staging");
    let dest = root.path().join("node");
    std::fs::create_dir_all(dest.join("repository/logs")).unwrap();
    std::fs::write(dest.join("repository/logs/old.log"), b"old").unwrap();
    let staged = unpack::stage_zip(
        &pack.zip,
        &staging,
        TOP,
        &UnpackLimits {
            threads: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = unpack::install_staged(staged, &dest).await.unwrap();
    assert!(out.replaced_previous);
    assert!(!dest.join("repository/logs/old.log").exists());
    assert!(dest.join("lib/big.jar").is_file());
    assert_eq!(dir_entries(root.path()), vec!["node", "staging"]);
    assert_eq!(dir_entries(&staging), Vec::<String>::new());
}

/// Stage `zip` and assert it is refused and that nothing was written anywhere.
async fn assert_refused(zip: &Path, limits: &UnpackLimits) -> ExecError {
    let root = tmp();
    let staging = root.path().join("a/b/staging");
    std::fs::create_dir_all(&staging).unwrap();
    let passwd_before = std::fs::read("/etc/passwd").unwrap();
    let err = unpack::stage_zip(zip, &staging, TOP, limits)
        .await
        .unwrap_err();
    assert_eq!(
        dir_entries(&staging),
        Vec::<String>::new(),
        "nothing staged for {err}"
    );
    assert_eq!(
        dir_entries(&root.path().join("a/b")),
        vec!["staging"],
        "nothing next to staging"
    );
    assert_eq!(dir_entries(&root.path().join("a")), vec!["b"]);
    assert_eq!(dir_entries(root.path()), vec!["a"]);
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);
    err
}

#[tokio::test]
async fn unsafe_entries_are_refused_and_nothing_is_written() {
    let d = tmp();
    const OK: &str = "wso2am-9.9.9/ok.txt";
    let cases: Vec<(&str, Vec<(&str, Item<'_>)>)> = vec![
        (
            "dotdot",
            vec![
                (OK, Item::File(b"ok", Some(0o644))),
                ("../evil", Item::File(b"x", Some(0o644))),
            ],
        ),
        (
            "inner-dotdot",
            vec![
                (OK, Item::File(b"ok", Some(0o644))),
                ("wso2am-9.9.9/../../evil", Item::File(b"x", Some(0o644))),
            ],
        ),
        (
            "absolute",
            vec![
                (OK, Item::File(b"ok", Some(0o644))),
                ("/tmp/evil-abs", Item::File(b"x", Some(0o644))),
            ],
        ),
        (
            "symlink-abs",
            vec![
                (OK, Item::File(b"ok", Some(0o644))),
                ("wso2am-9.9.9/passwd", Item::Symlink("/etc/passwd")),
            ],
        ),
        (
            "symlink-rel",
            vec![
                (OK, Item::File(b"ok", Some(0o644))),
                ("wso2am-9.9.9/x", Item::Symlink("../../x")),
            ],
        ),
        (
            "symlink-then-write",
            vec![
                ("wso2am-9.9.9/etc", Item::Symlink("/etc")),
                (
                    "wso2am-9.9.9/etc/passwd",
                    Item::File(b"root::0:0::/:/bin/sh\n", Some(0o644)),
                ),
            ],
        ),
        (
            "duplicate-after-normalising",
            vec![
                (OK, Item::File(b"ok", Some(0o644))),
                ("wso2am-9.9.9//ok.txt", Item::File(b"x", Some(0o644))),
            ],
        ),
        (
            "file-and-dir",
            vec![
                ("wso2am-9.9.9/a", Item::File(b"x", Some(0o644))),
                ("wso2am-9.9.9/a/b", Item::File(b"y", Some(0o644))),
            ],
        ),
        (
            "backslash",
            vec![("wso2am-9.9.9\\..\\evil", Item::File(b"x", Some(0o644)))],
        ),
        (
            "top-is-a-file",
            vec![("wso2am-9.9.9", Item::File(b"x", Some(0o644)))],
        ),
        ("fifo", vec![("wso2am-9.9.9/fifo", Item::RawMode(0o010644))]),
        (
            "socket",
            vec![("wso2am-9.9.9/sock", Item::RawMode(0o140644))],
        ),
        (
            "block-device",
            vec![("wso2am-9.9.9/sda", Item::RawMode(0o060600))],
        ),
    ];
    for (label, items) in cases {
        let z = d.path().join(format!("{label}.zip"));
        build_zip(&z, &items);
        let err = assert_refused(&z, &UnpackLimits::default()).await;
        assert!(
            matches!(err, ExecError::UnsafeEntry { .. }),
            "{label}: {err}"
        );
    }
    assert!(!Path::new("/tmp/evil-abs").exists());
}

#[tokio::test]
async fn exact_duplicate_names_are_refused() {
    // The zip writer refuses duplicates, so rename the second entry in the raw bytes.
    let d = tmp();
    let z = d.path().join("dup.zip");
    build_zip(
        &z,
        &[
            ("wso2am-9.9.9/a1", Item::File(b"first", Some(0o644))),
            ("wso2am-9.9.9/a2", Item::File(b"second", Some(0o644))),
        ],
    );
    let mut bytes = std::fs::read(&z).unwrap();
    let (from, to) = (b"wso2am-9.9.9/a2", b"wso2am-9.9.9/a1");
    let mut i = 0;
    let mut replaced = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            replaced += 1;
        }
        i += 1;
    }
    assert_eq!(replaced, 2, "local header and central directory");
    std::fs::write(&z, &bytes).unwrap();
    let err = assert_refused(&z, &UnpackLimits::default()).await;
    assert!(
        matches!(&err, ExecError::UnsafeEntry { reason, .. } if reason.contains("twice")),
        "{err}"
    );
}

#[tokio::test]
async fn entries_outside_the_expected_top_dir_are_refused() {
    let d = tmp();
    let z = d.path().join("other.zip");
    build_zip(
        &z,
        &[
            ("wso2am-9.9.9/a", Item::File(b"a", Some(0o644))),
            ("other/b", Item::File(b"b", Some(0o644))),
        ],
    );
    let err = assert_refused(&z, &UnpackLimits::default()).await;
    assert!(matches!(err, ExecError::UnexpectedTopDir { .. }), "{err}");
}

#[tokio::test]
async fn zip_bomb_limits_are_enforced_before_writing() {
    let d = tmp();
    let z = d.path().join("many.zip");
    let items: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("{TOP}/f{i}"), vec![b'a'; 2000]))
        .collect();
    let refs: Vec<(&str, Item<'_>)> = items
        .iter()
        .map(|(n, b)| (n.as_str(), Item::File(b, Some(0o644))))
        .collect();
    build_zip(&z, &refs);
    let lim = |e: u64, s: u64, t: u64| UnpackLimits {
        max_entries: e,
        max_entry_size: s,
        max_total_size: t,
        threads: 2,
    };
    for (limits, what) in [
        (lim(3, 1 << 20, 1 << 30), "entry count"),
        (lim(100, 1000, 1 << 30), "entry size"),
        (lim(100, 1 << 20, 5000), "total size"),
    ] {
        let err = assert_refused(&z, &limits).await;
        assert!(
            matches!(&err, ExecError::ZipLimit { what: w, .. } if *w == what),
            "{what}: {err}"
        );
    }
    // A classic bomb: 16 MiB of zeros compress to ~16 KiB.
    let bomb = d.path().join("bomb.zip");
    let zeros = vec![0u8; 16 << 20];
    build_zip(
        &bomb,
        &[("wso2am-9.9.9/zeros", Item::File(&zeros, Some(0o644)))],
    );
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let err = assert_refused(&bomb, &lim(100, 4 << 20, 1 << 30)).await;
    assert!(
        matches!(
            err,
            ExecError::ZipLimit {
                what: "entry size",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_corrupt_entry_fails_and_cleans_the_staging_dir() {
    let pack = good_pack();
    let mut bytes = std::fs::read(&pack.zip).unwrap();
    // Flip bytes in the middle of big.jar's compressed data (CRC or inflate error).
    let at = bytes.len() / 3;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5a;
    }
    let d = tmp();
    let z = d.path().join("corrupt.zip");
    std::fs::write(&z, &bytes).unwrap();
    let err = assert_refused(&z, &UnpackLimits::default()).await;
    assert!(matches!(err, ExecError::Zip { .. }), "{err}");
}

#[test]
fn stale_staging_dirs_are_cleaned_and_nothing_else() {
    let d = tmp();
    std::fs::create_dir_all(d.path().join(".apimctl-stage-0123/wso2am-1/bin")).unwrap();
    std::fs::create_dir(d.path().join("keep-me")).unwrap();
    std::fs::write(d.path().join("pack.zip"), b"z").unwrap();
    assert_eq!(unpack::clean_stale_staging(d.path()).unwrap(), 1);
    assert_eq!(dir_entries(d.path()), vec!["keep-me", "pack.zip"]);
    assert_eq!(
        unpack::clean_stale_staging(&d.path().join("missing")).unwrap(),
        0
    );
}

#[tokio::test]
async fn staged_tree_can_be_given_to_the_run_as_user() {
    let pack = good_pack();
    let root = tmp();
    let staged = unpack::stage_zip(&pack.zip, root.path(), TOP, &UnpackLimits::default())
        .await
        .unwrap();
    let me = nix::unistd::geteuid().as_raw();
    let (uid, gid) = if me == 0 {
        (65534, 65534)
    } else {
        (me, nix::unistd::getegid().as_raw())
    };
    staged.chown_blocking(uid, gid).unwrap();
    for p in [
        staged.path().to_path_buf(),
        staged.path().join("bin/api-manager.sh"),
        staged.path().join("lib"),
    ] {
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (uid, gid), "{}", p.display());
    }
    staged.discard().unwrap();
    assert_eq!(dir_entries(root.path()), Vec::<String>::new());
}

// =============================================================================================
// hosts

fn entry(ip: &str, names: &[&str]) -> HostsEntry {
    HostsEntry::new(ip.parse().unwrap(), names.iter().copied())
}

const FOREIGN: &[u8] =
    b"127.0.0.1\tlocalhost\n# managed by cloud-init\n::1 ip6-localhost\n10.9.9.9 foreign.example";

#[test]
fn hosts_apply_adds_updates_and_removes_only_its_block() {
    let d = tmp();
    let p = d.path().join("hosts");
    std::fs::write(&p, FOREIGN).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    // As root, give the file a foreign owner: the atomic replace must keep it.
    let owner = if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(&p, Some(65534.into()), Some(65534.into())).unwrap();
        (65534, 65534)
    } else {
        let md = std::fs::metadata(&p).unwrap();
        (md.uid(), md.gid())
    };
    let entries = [
        entry("10.0.0.11", &["km.wso2.com"]),
        entry("10.0.0.12", &["tm.wso2.com", "tm"]),
    ];

    assert_eq!(
        hosts::apply(&p, &entries).unwrap(),
        HostsChange::Changed(WriteMethod::Renamed)
    );
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        text,
        format!(
            "{}\n{BEGIN_MARKER}\n10.0.0.11 km.wso2.com\n10.0.0.12 tm.wso2.com tm\n{END_MARKER}",
            String::from_utf8_lossy(FOREIGN)
        )
    );
    assert_eq!(mode_of(&p), 0o640, "mode preserved");
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), owner, "owner preserved");

    // Idempotent: no write at all.
    let ino = std::fs::metadata(&p).unwrap().ino();
    assert_eq!(hosts::apply(&p, &entries).unwrap(), HostsChange::Unchanged);
    assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);

    // Update in place, then remove: the original bytes come back.
    assert!(matches!(
        hosts::apply(&p, &entries[..1]).unwrap(),
        HostsChange::Changed(_)
    ));
    assert!(!std::fs::read_to_string(&p).unwrap().contains("tm.wso2.com"));
    assert!(matches!(
        hosts::apply(&p, &[]).unwrap(),
        HostsChange::Changed(_)
    ));
    assert_eq!(std::fs::read(&p).unwrap(), FOREIGN);
    assert_eq!(hosts::apply(&p, &[]).unwrap(), HostsChange::Unchanged);
    assert_eq!(dir_entries(d.path()), vec!["hosts"]);
}

#[test]
fn hosts_bind_mount_falls_back_to_in_place_write() {
    for errno in [nix::libc::EBUSY, nix::libc::EXDEV] {
        let d = tmp();
        let p = d.path().join("hosts");
        std::fs::write(&p, FOREIGN).unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        let ops = FailingRename {
            errno,
            calls: Mutex::new(0),
        };
        let file = HostsFile::new(&p).with_file_ops(&ops);
        let change = file.apply(&[entry("10.0.0.5", &["db.wso2.com"])]).unwrap();
        assert_eq!(change, HostsChange::Changed(WriteMethod::InPlace));
        assert_eq!(*ops.calls.lock().unwrap(), 1);
        assert_eq!(
            std::fs::metadata(&p).unwrap().ino(),
            ino,
            "same inode: written in place"
        );
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .ends_with(&format!("10.0.0.5 db.wso2.com\n{END_MARKER}"))
        );
        assert_eq!(dir_entries(d.path()), vec!["hosts"], "temp file removed");
    }
}

#[test]
fn hosts_damaged_block_is_refused_and_file_untouched() {
    let d = tmp();
    let p = d.path().join("hosts");
    let damaged = format!("127.0.0.1 localhost\n{BEGIN_MARKER}\n10.0.0.1 a\n");
    std::fs::write(&p, &damaged).unwrap();
    let err = hosts::apply(&p, &[entry("10.0.0.2", &["b"])]).unwrap_err();
    assert!(matches!(err, ExecError::HostsCorrupt { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), damaged);
}

#[test]
fn hosts_missing_file_is_created_only_when_there_is_something_to_write() {
    let d = tmp();
    let p = d.path().join("hosts");
    assert_eq!(hosts::apply(&p, &[]).unwrap(), HostsChange::Unchanged);
    assert!(!p.exists());
    hosts::apply(&p, &[entry("10.0.0.2", &["b"])]).unwrap();
    assert_eq!(mode_of(&p), 0o644);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        hosts::render_block(&[entry("10.0.0.2", &["b"])]).unwrap()
    );
}

fn foreign_content() -> impl Strategy<Value = Vec<u8>> {
    // Lines of arbitrary bytes (no '\n'), each ended by LF or CRLF, the last maybe by nothing.
    let line = proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..40);
    let term = prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..])];
    let last = prop_oneof![Just(&b""[..]), Just(&b"\n"[..]), Just(&b"\r\n"[..])];
    (
        proptest::collection::vec((line, term), 0..12),
        proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..20),
        last,
    )
        .prop_map(|(lines, tail, last)| {
            let mut v = Vec::new();
            for (l, t) in lines {
                v.extend(l);
                v.extend_from_slice(t);
            }
            v.extend(tail);
            v.extend_from_slice(last);
            v
        })
}

fn entries_strategy() -> impl Strategy<Value = Vec<HostsEntry>> {
    proptest::collection::vec(
        (
            any::<[u8; 4]>(),
            proptest::collection::vec("[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}", 1..4),
        ),
        1..6,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(ip, names)| HostsEntry::new(std::net::IpAddr::from(ip), names))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn hosts_foreign_content_round_trips_byte_for_byte(
        foreign in foreign_content(),
        first in entries_strategy(),
        second in entries_strategy(),
    ) {
        let d = tmp();
        let p = d.path().join("hosts");
        std::fs::write(&p, &foreign).unwrap();
        hosts::apply(&p, &first).unwrap();
        let once = std::fs::read(&p).unwrap();
        // apply twice == once, and the second is not even a write
        prop_assert_eq!(hosts::apply(&p, &first).unwrap(), HostsChange::Unchanged);
        prop_assert_eq!(std::fs::read(&p).unwrap(), once.clone());
        // every foreign byte is still there, in order, around the block
        let block = hosts::render_block(&first).unwrap();
        let once_text = String::from_utf8_lossy(&once).replace("\r\n", "\n");
        prop_assert!(once_text.contains(block.trim_end()));
        prop_assert!(once.starts_with(&foreign));
        // a change then removing all entries gives back the original file, block gone
        hosts::apply(&p, &second).unwrap();
        hosts::apply(&p, &[]).unwrap();
        let back = std::fs::read(&p).unwrap();
        prop_assert_eq!(&back, &foreign);
        prop_assert!(!String::from_utf8_lossy(&back).contains(BEGIN_MARKER));
    }

    #[test]
    fn hosts_block_between_foreign_lines_keeps_both_sides(
        before in foreign_content(),
        after in foreign_content(),
        first in entries_strategy(),
        second in entries_strategy(),
    ) {
        // A block an operator moved into the middle of the file stays there.
        let mut before = before;
        if !before.is_empty() && !before.ends_with(b"\n") {
            before.push(b'\n');
        }
        let mut file = before.clone();
        file.extend(hosts::render_block(&first).unwrap().into_bytes());
        file.extend(&after);
        let out = hosts::splice(&file, &second).unwrap();
        prop_assert!(out.starts_with(&before));
        prop_assert!(out.ends_with(&after));
        let mut expect = before.clone();
        expect.extend(hosts::render_block(&second).unwrap().into_bytes());
        expect.extend(&after);
        prop_assert_eq!(out, expect);
        let removed = hosts::splice(&file, &[]).unwrap();
        let mut expect = before;
        expect.extend(&after);
        prop_assert_eq!(removed, expect);
    }
}

// =============================================================================================
// process

/// The line Carbon logs when startup has finished.
const CARBON_STARTED: &str = "WSO2 Carbon started in";
/// The pid file WSO2 writes in its home.
const PID_FILE: &str = "wso2carbon.pid";
/// The JVM main class of every Carbon server.
const BOOTSTRAP_CLASS: &str = "org.wso2.carbon.bootstrap.Bootstrap";
/// The argument that names a Carbon server's home.
const HOME_ARG_PREFIX: &str = "-Dcarbon.home=";

/// A fake WSO2 start script with the real contract: `start` nohups `run` and returns at once,
/// `run` writes its own pid to wso2carbon.pid, logs the started line and runs until TERM;
/// `stop` sends TERM to the pid. `FAKE_MODE` selects misbehaviours.
const FAKE_SCRIPT: &str = r#"#!/bin/sh
CARBON_HOME=$(cd "$(dirname "$0")/.." && pwd)
PID_FILE="$CARBON_HOME/wso2carbon.pid"
LOG="$CARBON_HOME/repository/logs/wso2carbon.log"
cmd=""
for a in "$@"; do case "$a" in start|stop|run) cmd="$a";; esac; done
case "$cmd" in
start)
  echo start >> "$CARBON_HOME/starts.txt"
  env > "$CARBON_HOME/start-env.txt"
  for a in "$@"; do printf '%s\n' "$a"; done > "$CARBON_HOME/args.txt"
  echo "Starting fake WSO2"
  case "$FAKE_MODE" in
    fail) echo "boom: cannot start" >&2; exit 3 ;;
    hang) sleep 30; exit 0 ;;
    no-start) exit 0 ;;
    die) sh -c 'exit 0' & p=$!; wait $p; echo $p > "$PID_FILE"; exit 0 ;;
  esac
  nohup sh "$CARBON_HOME/bin/fake.sh" run >/dev/null 2>&1 &
  exit 0 ;;
stop)
  echo stop >> "$CARBON_HOME/stops.txt"
  kill -TERM "$(cat "$PID_FILE")"
  exit 0 ;;
run)
  mkdir -p "$CARBON_HOME/repository/logs"
  if [ "$FAKE_MODE" = ignore-term ]; then
    trap '' TERM
  else
    trap 'echo "INFO - Halting fake server" >> "$LOG"; exit 0' TERM
  fi
  echo $$ > "$PID_FILE"
  echo "TID: [-1234] [] [2024-01-01 00:00:00,000]  INFO {StartupFinalizerServiceComponent} - $STARTED_LINE" >> "$LOG"
  while :; do sleep 1; done ;;
esac
"#;

/// A node home with the fake script; kills a server left running when dropped.
struct FakeNode {
    dir: TempDir,
    home: PathBuf,
}

impl FakeNode {
    fn new() -> Self {
        let dir = tmp();
        let home = dir.path().join("carbon");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        std::fs::create_dir_all(home.join("repository/logs")).unwrap();
        let script = home.join("bin/fake.sh");
        std::fs::write(&script, FAKE_SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeNode { dir, home }
    }

    /// How the agent recognises this node's server: what the controller sends for WSO2.
    fn server(&self) -> Server {
        Server::new(&self.home, PID_FILE, BOOTSTRAP_CLASS, HOME_ARG_PREFIX)
    }

    fn start_spec(&self, mode: &str) -> StartSpec {
        let mut s = StartSpec::new(
            self.server(),
            vec!["bin/fake.sh".into(), "start".into()],
            "/usr/lib/jvm/fake-jdk",
        );
        // What the controller sends in the node's environment.
        s.env
            .insert("CARBON_HOME".into(), self.home.display().to_string());
        s.env.insert("FAKE_MODE".into(), mode.into());
        s.env
            .insert("STARTED_LINE".into(), format!("{CARBON_STARTED} 1 sec"));
        s.pid_timeout = Duration::from_secs(30);
        s
    }

    fn stop_spec(&self, mode: &str) -> StopSpec {
        let mut s = StopSpec::new(
            self.server(),
            vec!["bin/fake.sh".into(), "stop".into()],
            "/usr/lib/jvm/fake-jdk",
            Duration::from_secs(30),
        );
        s.env
            .insert("CARBON_HOME".into(), self.home.display().to_string());
        s.env.insert("FAKE_MODE".into(), mode.into());
        s
    }

    fn log(&self) -> PathBuf {
        self.home.join("repository/logs/wso2carbon.log")
    }

    fn starts(&self) -> usize {
        std::fs::read_to_string(self.home.join("starts.txt"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        if let Ok(PidFileState::Alive(pid)) = process::pid_file_state(&self.server()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = &self.dir;
    }
}

#[tokio::test]
async fn start_runs_once_and_a_second_start_sees_it_alive() {
    let node = FakeNode::new();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::None
    );
    let out = process::start(&TokioRunner, &node.start_spec("normal"))
        .await
        .unwrap();
    let StartOutcome::Started { pid, output } = out else {
        panic!("{out:?}")
    };
    assert!(output.status.success());
    assert!(
        output.output.contains("Starting fake WSO2"),
        "script output captured: {output:?}"
    );
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Alive(pid)
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains(&*node.home.to_string_lossy()));

    let again = process::start(&TokioRunner, &node.start_spec("normal"))
        .await
        .unwrap();
    assert_eq!(again, StartOutcome::AlreadyRunning { pid });
    assert_eq!(node.starts(), 1, "the script ran once");

    let stopped = process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
    assert_eq!(
        stopped,
        StopOutcome::Stopped {
            pid,
            via: StopVia::Script
        }
    );
    assert!(!process::pid_alive(pid));
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Stale(pid)
    );
    assert!(
        std::fs::read_to_string(node.log())
            .unwrap()
            .contains("Halting fake server")
    );
    // Stopping again: nothing runs, the stale file goes.
    assert_eq!(
        process::stop(&TokioRunner, &node.stop_spec("normal"))
            .await
            .unwrap(),
        StopOutcome::NotRunning
    );
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::None
    );
}

#[tokio::test]
async fn concurrent_starts_of_one_node_start_it_once() {
    let node = FakeNode::new();
    let spec = node.start_spec("normal");
    let (a, b) = tokio::join!(
        process::start(&TokioRunner, &spec),
        process::start(&TokioRunner, &spec)
    );
    let started = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Ok(StartOutcome::Started { .. })))
        .count();
    let busy = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(ExecError::NodeBusy { .. })))
        .count();
    assert_eq!((started, busy), (1, 1), "{a:?} / {b:?}");
    assert_eq!(node.starts(), 1);
    process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
}

#[tokio::test]
async fn script_gets_a_cleared_env_and_literal_argv() {
    let node = FakeNode::new();
    let mut spec = node.start_spec("normal");
    let evil = "-Dx=$(touch pwned); echo `id` > pwned2".to_string();
    spec.argv = vec![
        "bin/fake.sh".into(),
        "-Dprofile=gateway-worker".into(),
        evil.clone(),
        "start".into(),
    ];
    spec.env.insert("JAVA_OPTS".into(), "-Xmx64m".into());
    process::start(&TokioRunner, &spec).await.unwrap();
    let args = std::fs::read_to_string(node.home.join("args.txt")).unwrap();
    assert_eq!(args, format!("-Dprofile=gateway-worker\n{evil}\nstart\n"));
    assert!(!node.home.join("pwned").exists() && !node.home.join("pwned2").exists());

    let env = std::fs::read_to_string(node.home.join("start-env.txt")).unwrap();
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    let mut keys: Vec<&str> = vars
        .keys()
        .copied()
        .filter(|k| !shell_own.contains(k))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "CARBON_HOME",
            "FAKE_MODE",
            "HOME",
            "JAVA_HOME",
            "JAVA_OPTS",
            "LANG",
            "LOGNAME",
            "PATH",
            "STARTED_LINE",
            "USER"
        ],
        "nothing of the agent's own environment leaks"
    );
    assert_eq!(vars["JAVA_HOME"], "/usr/lib/jvm/fake-jdk");
    assert_eq!(vars["CARBON_HOME"], node.home.to_str().unwrap());
    assert!(vars["PATH"].starts_with("/usr/lib/jvm/fake-jdk/bin:"));
    process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_escalates_to_sigterm_and_sigkill() {
    // No stop script: the agent's SIGTERM does it.
    let node = FakeNode::new();
    let StartOutcome::Started { pid, .. } =
        process::start(&TokioRunner, &node.start_spec("normal"))
            .await
            .unwrap()
    else {
        panic!()
    };
    let mut spec = node.stop_spec("normal");
    spec.stop_argv.clear();
    assert_eq!(
        process::stop(&TokioRunner, &spec).await.unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Sigterm
        }
    );

    // TERM ignored: the script's stop and the agent's TERM fail, SIGKILL works.
    let node = FakeNode::new();
    let StartOutcome::Started { pid, .. } =
        process::start(&TokioRunner, &node.start_spec("ignore-term"))
            .await
            .unwrap()
    else {
        panic!()
    };
    let mut spec = node.stop_spec("ignore-term");
    spec.grace = Duration::from_millis(300);
    spec.term_grace = Duration::from_millis(300);
    assert_eq!(
        process::stop(&TokioRunner, &spec).await.unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Sigkill
        }
    );
    assert!(!process::pid_alive(pid));
    assert_eq!(
        std::fs::read_to_string(node.home.join("stops.txt")).unwrap(),
        "stop\n"
    );
}

#[tokio::test]
async fn stale_and_foreign_pid_files_do_not_block_a_start() {
    let node = FakeNode::new();
    let pid_file = node.home.join("wso2carbon.pid");
    // A pid that is alive but not this node (pid 1).
    std::fs::write(&pid_file, "1\n").unwrap();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Stale(1)
    );
    // A dead pid.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id() as i32;
    child.wait().unwrap();
    std::fs::write(&pid_file, format!("{dead}")).unwrap();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Stale(dead)
    );
    std::fs::write(&pid_file, "not a pid").unwrap();
    assert_eq!(
        process::pid_file_state(&node.server()).unwrap(),
        PidFileState::Garbage
    );

    let out = process::start(&TokioRunner, &node.start_spec("normal"))
        .await
        .unwrap();
    assert!(matches!(out, StartOutcome::Started { .. }), "{out:?}");
    process::stop(&TokioRunner, &node.stop_spec("normal"))
        .await
        .unwrap();
}

#[tokio::test]
async fn start_failures_are_reported_with_the_script_output() {
    let node = FakeNode::new();
    let err = process::start(&TokioRunner, &node.start_spec("fail"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ExecError::ScriptFailed { output, status, .. } if output.contains("boom: cannot start") && status == "exit code 3"),
        "{err}"
    );

    let mut spec = node.start_spec("no-start");
    spec.pid_timeout = Duration::from_millis(300);
    let err = process::start(&TokioRunner, &spec).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::NoPidAfterStart { output, .. } if output.contains("Starting fake WSO2")),
        "{err}"
    );

    let err = process::start(&TokioRunner, &node.start_spec("die"))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::DiedAfterStart { .. }), "{err}");

    let mut spec = node.start_spec("hang");
    spec.script_timeout = Duration::from_secs(2);
    let err = process::start(&TokioRunner, &spec).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::ScriptTimeout { output, .. } if output.contains("Starting fake WSO2")),
        "{err}"
    );

    let mut spec = node.start_spec("normal");
    spec.argv = vec!["bin/missing.sh".into(), "start".into()];
    assert!(matches!(
        process::start(&TokioRunner, &spec).await,
        Err(ExecError::Spawn { .. })
    ));
}

/// Records the command and fails it, so the test sees what the agent would run.
#[derive(Default)]
struct RecordingRunner(Mutex<Vec<CommandSpec>>);

impl ProcessRunner for RecordingRunner {
    async fn run(&self, cmd: &CommandSpec) -> apim_agent::exec::Result<ScriptOutput> {
        self.0.lock().unwrap().push(cmd.clone());
        Ok(ScriptOutput {
            status: process::ExitInfo {
                code: Some(1),
                signal: None,
            },
            output: "recorded".into(),
        })
    }
}

#[tokio::test]
async fn run_as_switches_user_only_when_root() {
    let node = FakeNode::new();
    let mut spec = node.start_spec("normal");
    spec.run_as = Some("nobody".into());
    let rec = RecordingRunner::default();
    let res = process::start(&rec, &spec).await;
    if nix::unistd::geteuid().is_root() {
        assert!(
            matches!(res, Err(ExecError::ScriptFailed { .. })),
            "{res:?}"
        );
        let cmd = rec.0.lock().unwrap()[0].clone();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let cr = cmd.credentials.clone().expect("credentials");
        assert_eq!((cr.uid, cr.gid), (nobody.uid.as_raw(), nobody.gid.as_raw()));
        assert_eq!(cmd.env["USER"], "nobody");
        assert_eq!(cmd.env["HOME"], nobody.dir.to_string_lossy());
        assert!(
            !format!("{cmd:?}").contains("1 sec"),
            "Debug shows env keys, not values"
        );
    } else {
        assert!(
            matches!(res, Err(ExecError::CannotSwitchUser { .. })),
            "{res:?}"
        );
        assert!(rec.0.lock().unwrap().is_empty());
    }
    spec.run_as = Some("no-such-user-apimctl".into());
    assert!(matches!(
        process::start(&rec, &spec).await,
        Err(ExecError::UnknownUser { .. })
    ));
}

#[tokio::test]
async fn run_as_really_runs_the_server_as_that_user() {
    let node = FakeNode::new();
    if !nix::unistd::geteuid().is_root() {
        let mut spec = node.start_spec("normal");
        spec.run_as = Some("nobody".into());
        let res = process::start(&TokioRunner, &spec).await;
        assert!(
            matches!(res, Err(ExecError::CannotSwitchUser { .. })),
            "{res:?}"
        );
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // nobody must reach and own its CARBON_HOME, as after StagedTree::chown_blocking.
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in [
        node.home.clone(),
        node.home.join("bin"),
        node.home.join("repository"),
        node.log().parent().unwrap().to_path_buf(),
    ] {
        nix::unistd::chown(&p, Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
    let mut spec = node.start_spec("normal");
    spec.run_as = Some("nobody".into());
    let StartOutcome::Started { pid, .. } = process::start(&TokioRunner, &spec).await.unwrap()
    else {
        panic!()
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(uids.iter().all(|u| *u == nobody.uid.as_raw()), "{uid_line}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.trim(), "Groups:", "supplementary groups dropped");
    let mut stop = node.stop_spec("normal");
    stop.run_as = Some("nobody".into());
    assert_eq!(
        process::stop(&TokioRunner, &stop).await.unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Script
        }
    );
}

// =============================================================================================
// health

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test]
async fn log_probe_ignores_the_line_from_a_previous_run() {
    let d = tmp();
    let log = d.path().join("wso2carbon.log");
    std::fs::write(
        &log,
        format!("old run\n... {CARBON_STARTED} 35 sec\nshutdown\n"),
    )
    .unwrap();
    let offset = health::log_offset(&log);
    let spec = ReadinessSpec {
        log: Some(LogProbe {
            path: log.clone(),
            needle: CARBON_STARTED.into(),
            start_offset: offset,
        }),
        ..Default::default()
    };
    let r = health::wait_ready(&spec, Duration::from_millis(300), never())
        .await
        .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut, "{r}");
    assert!(
        r.checks[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("not logged yet")
    );

    // The new run logs the line, split across two writes.
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(b"booting\nTID: [-1234] INFO - WSO2 Carbon st")
                .unwrap();
            f.flush().unwrap();
            tokio::task::yield_now().await;
            f.write_all(b"arted in 12 sec\n").unwrap();
        })
    };
    let r = health::wait_ready(&spec, Duration::from_secs(30), never())
        .await
        .unwrap();
    writer.await.unwrap();
    assert!(r.is_ready(), "{r}");

    // A rotated (shorter) file is read from its start.
    std::fs::write(&log, format!("{CARBON_STARTED} 1 sec\n")).unwrap();
    let r = health::wait_ready(&spec, Duration::from_secs(30), never())
        .await
        .unwrap();
    assert!(r.is_ready(), "{r}");
}

#[tokio::test]
async fn tcp_probe_passes_on_an_open_port_and_fails_on_a_closed_one() {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ok = ReadinessSpec {
        tcp: vec![TcpProbe {
            host: "127.0.0.1".into(),
            port: open_port,
        }],
        ..Default::default()
    };
    assert!(
        health::wait_ready(&ok, Duration::from_secs(30), never())
            .await
            .unwrap()
            .is_ready()
    );
    let bad = ReadinessSpec {
        tcp: vec![
            TcpProbe {
                host: "127.0.0.1".into(),
                port: open_port,
            },
            TcpProbe {
                host: "127.0.0.1".into(),
                port: closed_port,
            },
        ],
        ..Default::default()
    };
    let r = health::wait_ready(&bad, Duration::from_secs(2), never())
        .await
        .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut);
    assert!(r.checks[0].passed_after.is_some());
    assert!(r.checks[1].passed_after.is_none() && r.checks[1].attempts >= 1);
    assert!(r.checks[1].last_error.is_some(), "{r}");
}

/// A tiny HTTP/1.1 server: 200 for paths containing "ok" or "healthcheck", 500 otherwise.
async fn serve_http(listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    if let Ok(s) = acc.accept(sock).await {
                        answer(s).await;
                    }
                }
                None => answer(sock).await,
            }
        });
    }
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let status = if path.contains("ok") || path.contains("healthcheck") {
        "200 OK"
    } else {
        "500 Internal Server Error"
    };
    let _ = s
        .write_all(
            format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
                .as_bytes(),
        )
        .await;
    let _ = s.shutdown().await;
}

#[tokio::test]
async fn http_probe_checks_the_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_http(listener, None));
    let spec = ReadinessSpec {
        http: vec![HttpProbe {
            url: format!("http://127.0.0.2:{port}/services/Version?ok"),
            expect_status: 200,
            expect_body: None,
        }],
        ..Default::default()
    };
    assert!(
        health::wait_ready(&spec, Duration::from_secs(30), never())
            .await
            .unwrap()
            .is_ready()
    );
    let spec = ReadinessSpec {
        http: vec![HttpProbe {
            url: format!("http://127.0.0.2:{port}/fail"),
            expect_status: 200,
            expect_body: None,
        }],
        ..Default::default()
    };
    assert_eq!(
        health::probe_http(&spec.http[0].url, Duration::from_secs(10)).await,
        Ok(500)
    );
    let r = health::wait_ready(&spec, Duration::from_secs(2), never())
        .await
        .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut);
    assert_eq!(
        r.checks[0].last_error.as_deref(),
        Some("status 500, expected 200")
    );
    let bad = ReadinessSpec {
        http: vec![HttpProbe {
            url: "ftp://x/".into(),
            expect_status: 200,
            expect_body: None,
        }],
        ..Default::default()
    };
    assert!(matches!(
        health::wait_ready(&bad, Duration::from_secs(1), never()).await,
        Err(ExecError::InvalidProbe { .. })
    ));
    server.abort();
}

#[tokio::test]
async fn https_probe_accepts_the_nodes_self_signed_certificate() {
    let ck = rcgen::generate_simple_self_signed(vec!["gw.wso2.com".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_http(listener, Some(acceptor)));
    let url = format!("https://127.0.0.3:{port}/api/am/gateway/v2/server-startup-healthcheck");
    assert_eq!(
        health::probe_http(&url, Duration::from_secs(10)).await,
        Ok(200)
    );
    // Plain HTTP against the TLS port fails instead of hanging.
    assert!(
        health::probe_http(&url.replace("https", "http"), Duration::from_secs(10))
            .await
            .is_err()
    );
    server.abort();
}

#[tokio::test]
async fn a_dead_process_fails_fast_with_its_log_tail() {
    let node = FakeNode::new();
    std::fs::write(node.log(), "previous run\n").unwrap();
    let offset = health::log_offset(&node.log());
    std::fs::write(node.home.join("wso2carbon.pid"), "1").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(node.log())
        .unwrap();
    f.write_all(b"ERROR - Cannot start: port 9443 in use\n")
        .unwrap();
    let spec = ReadinessSpec {
        log: Some(LogProbe {
            path: node.log(),
            needle: CARBON_STARTED.into(),
            start_offset: offset,
        }),
        tcp: vec![TcpProbe {
            host: "127.0.0.1".into(),
            port: 1,
        }],
        process: Some(ProcessProbe {
            server: node.server(),
        }),
        ..Default::default()
    };
    let r = health::wait_ready(&spec, Duration::from_secs(60), never())
        .await
        .unwrap();
    let ReadinessOutcome::ProcessDied { state, log_tail } = &r.outcome else {
        panic!("{r}")
    };
    assert_eq!(state, "Stale(1)");
    assert_eq!(log_tail, "ERROR - Cannot start: port 9443 in use\n");
    assert!(r.elapsed < Duration::from_secs(30), "fails fast: {r}");
}

#[tokio::test]
async fn waiting_can_be_cancelled() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spec = ReadinessSpec {
        tcp: vec![TcpProbe {
            host: "127.0.0.1".into(),
            port: 1,
        }],
        ..Default::default()
    };
    let canceller = tokio::spawn(async move {
        let _ = tx.send(());
    });
    let r = health::wait_ready(&spec, Duration::from_secs(600), async {
        let _ = rx.await;
    })
    .await
    .unwrap();
    canceller.await.unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::Cancelled);
}

#[tokio::test]
async fn fake_node_start_wait_ready_stop() {
    let node = FakeNode::new();
    std::fs::write(
        node.log(),
        format!("{CARBON_STARTED} 99 sec (previous run)\n"),
    )
    .unwrap();
    let offset = health::log_offset(&node.log());
    let StartOutcome::Started { pid, .. } =
        process::start(&TokioRunner, &node.start_spec("normal"))
            .await
            .unwrap()
    else {
        panic!()
    };
    let spec = ReadinessSpec {
        log: Some(LogProbe {
            path: node.log(),
            needle: CARBON_STARTED.into(),
            start_offset: offset,
        }),
        process: Some(ProcessProbe {
            server: node.server(),
        }),
        ..Default::default()
    };
    let r = health::wait_ready(&spec, Duration::from_secs(60), never())
        .await
        .unwrap();
    assert!(r.is_ready(), "{r}");
    assert_eq!(r.checks.len(), 2);
    assert_eq!(
        process::stop(&TokioRunner, &node.stop_spec("normal"))
            .await
            .unwrap(),
        StopOutcome::Stopped {
            pid,
            via: StopVia::Script
        }
    );
}

// =============================================================================================
// facts

fn real_java_home() -> PathBuf {
    let java =
        std::fs::canonicalize("/usr/bin/java").expect("a JDK is installed on the build machines");
    java.parent().unwrap().parent().unwrap().to_path_buf()
}

fn write_script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn facts_describe_this_machine_and_its_jdk() {
    let d = tmp();
    let root = d.path().join("not/yet/created");
    let f = facts::gather(&root, Some(&real_java_home())).await.unwrap();
    assert!(f.cpus >= 1);
    assert!(f.memory_total > 0 && f.memory_available <= f.memory_total);
    assert!(!f.hostname.is_empty() && !f.kernel.is_empty());
    assert_eq!(f.disk_measured_at, d.path());
    assert!(f.disk_free > 0 && f.disk_free <= f.disk_total);
    let JavaFact::Found(j) = &f.java else {
        panic!("{:?}", f.java)
    };
    assert_eq!(j.source, JavaVersionSource::JavaVersionOutput);
    assert!(j.major >= 11, "{j:?}");
    assert!(
        facts::preflight(
            &f,
            &Requirements {
                jdk_min: 11,
                jdk_max: 21,
                pack_size: 1 << 20,
                min_memory: 0
            }
        )
        .is_empty()
    );
}

#[tokio::test]
async fn java_version_from_output_or_release_file() {
    let d = tmp();
    let jdk11 = d.path().join("jdk11");
    write_script(
        &jdk11.join("bin/java"),
        "#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n",
    );
    let j = facts::java_version(&jdk11).await.unwrap();
    assert_eq!(
        (j.version.as_str(), j.major, j.source),
        ("11.0.22", 11, JavaVersionSource::JavaVersionOutput)
    );

    let jre8 = d.path().join("jre8");
    std::fs::create_dir_all(&jre8).unwrap();
    std::fs::write(
        jre8.join("release"),
        "JAVA_VERSION=\"1.8.0_392\"\nOS_NAME=\"Linux\"\n",
    )
    .unwrap();
    let j = facts::java_version(&jre8).await.unwrap();
    assert_eq!((j.major, j.source), (8, JavaVersionSource::ReleaseFile));
    assert!(j.run_error.is_some());

    let broken = d.path().join("broken");
    write_script(
        &broken.join("bin/java"),
        "#!/bin/sh\necho 'Error: could not find libjava.so' >&2\nexit 1\n",
    );
    assert!(matches!(
        facts::java_version(&broken).await,
        Err(ExecError::JavaProbe { .. })
    ));
}

#[tokio::test]
async fn preflight_lists_every_problem() {
    let d = tmp();
    let jre8 = d.path().join("jre8");
    std::fs::create_dir_all(&jre8).unwrap();
    std::fs::write(jre8.join("release"), "JAVA_VERSION=\"1.8.0_392\"\n").unwrap();
    let f = facts::gather(d.path(), Some(&jre8)).await.unwrap();
    let req = Requirements {
        jdk_min: 11,
        jdk_max: 21,
        pack_size: u64::MAX / 4,
        min_memory: u64::MAX,
    };
    let problems = facts::preflight(&f, &req);
    assert!(
        matches!(&problems[0], Problem::JavaUnsupported { found, min: 11, max: 21 } if found == "1.8.0_392")
    );
    assert!(matches!(&problems[1], Problem::DiskTooSmall { .. }));
    assert!(matches!(&problems[2], Problem::MemoryTooSmall { .. }));
    assert_eq!(problems.len(), 3);
    assert!(problems[1].to_string().contains("3 x pack size"));

    let missing = facts::gather(d.path(), Some(&d.path().join("nope")))
        .await
        .unwrap();
    let problems = facts::preflight(
        &missing,
        &Requirements {
            jdk_min: 11,
            jdk_max: 21,
            pack_size: 0,
            min_memory: 0,
        },
    );
    assert!(
        matches!(problems.as_slice(), [Problem::JavaMissing { .. }]),
        "{problems:?}"
    );
}

#[tokio::test]
async fn http_probe_checks_the_body_when_asked() {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_http(listener, None));
    let url = format!("http://127.0.0.2:{port}/services/Version?ok");
    assert_eq!(
        health::probe_http_body(&url, Duration::from_secs(10)).await,
        Ok((200, "hi".to_string()))
    );
    let spec = |text: &str| ReadinessSpec {
        http: vec![HttpProbe {
            url: url.clone(),
            expect_status: 200,
            expect_body: Some(text.to_string()),
        }],
        ..Default::default()
    };
    let ready = health::wait_ready(&spec("hi"), Duration::from_secs(30), never())
        .await
        .unwrap();
    assert!(ready.is_ready());
    // Another server on the port (wrong product name) never counts as this node.
    let r = health::wait_ready(
        &spec("WSO2 API Manager-3.2.0"),
        Duration::from_secs(2),
        never(),
    )
    .await
    .unwrap();
    assert_eq!(r.outcome, ReadinessOutcome::TimedOut);
    let last = r
        .checks
        .iter()
        .find_map(|c| c.last_error.clone())
        .unwrap_or_default();
    assert!(last.contains("WSO2 API Manager-3.2.0"), "{last}");
    server.abort();
}
