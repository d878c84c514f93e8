//! Unpack: digests, guarded staging (also while the pack arrives), install by swap.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apim_agent::exec::ExecError;
use apim_agent::exec::arriving::{ArrivingPack, central_directory_start};
use apim_agent::exec::unpack::{self, UnpackLimits, ZipSource};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

use crate::support::dir_entries;
use crate::{mode_of, tmp};

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
    // Flip bytes in the middle of the compressed data (CRC or inflate error).
    let at = bytes.len() / 3;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0x5a;
    }
    let d = tmp();
    let z = d.path().join("corrupt.zip");
    std::fs::write(&z, &bytes).unwrap();
    let err = assert_refused(&z, &UnpackLimits::default()).await;
    // Said as what it is: a damaged entry, named, not the zip reader's "File is larger than
    // its declared uncompressed size".
    assert!(matches!(err, ExecError::CorruptEntry { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("is corrupt: entry \"wso2am-9.9.9/"), "{text}");
    assert!(!text.contains("File is larger"), "{text}");
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
