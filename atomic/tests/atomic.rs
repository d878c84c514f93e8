//! The atomic write against real files in temp dirs: modes, crashes, planted symlinks, failing
//! renames, no-clobber, concurrent writers.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use apim_atomic::{
    AtomicError, AtomicWriter, FaultPoint, FileOps, WriteMethod, temp_files_of, temp_path_for,
    write_atomic,
};
use nix::fcntl::{Flock, FlockArg};
use tempfile::TempDir;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The sorted names in `p`.
fn dir_entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn atomic_write_creates_and_replaces_with_exact_mode() {
    let d = tmp();
    let p = d.path().join("deployment.toml");
    write_atomic(&p, b"first", 0o600).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"first");
    assert_eq!(mode_of(&p), 0o600);
    write_atomic(&p, b"second version", 0o640).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second version");
    assert_eq!(mode_of(&p), 0o640);
    assert_eq!(dir_entries(d.path()), vec!["deployment.toml"]);
}

#[test]
fn atomic_crash_before_rename_keeps_old_file_and_next_write_cleans_up() {
    let d = tmp();
    let p = d.path().join("deployment.toml");
    write_atomic(&p, b"old content", 0o600).unwrap();
    let err = AtomicWriter::new(0o600)
        .simulate_crash(FaultPoint::BeforeRename)
        .write(&p, b"new content")
        .unwrap_err();
    assert!(
        matches!(
            err,
            AtomicError::SimulatedCrash {
                point: FaultPoint::BeforeRename,
                ..
            }
        ),
        "{err}"
    );
    // The target is untouched; the complete temp file is what a crash leaves.
    assert_eq!(std::fs::read(&p).unwrap(), b"old content");
    let temps = temp_files_of(&p).unwrap();
    assert_eq!(temps.len(), 1, "{temps:?}");
    let t = &temps[0];
    assert_eq!(std::fs::read(t).unwrap(), b"new content");
    // The next write removes the leftover and lands.
    write_atomic(&p, b"newer", 0o600).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"newer");
    assert!(!t.exists());
    assert_eq!(dir_entries(d.path()), vec!["deployment.toml"]);
}

#[test]
fn atomic_crash_mid_write_never_tears_the_target() {
    let d = tmp();
    let p = d.path().join("state.json");
    write_atomic(&p, b"{\"generation\": 1}", 0o600).unwrap();
    let big = vec![b'x'; 100_000];
    let err = AtomicWriter::new(0o600)
        .simulate_crash(FaultPoint::MidWrite)
        .write(&p, &big)
        .unwrap_err();
    assert!(matches!(
        err,
        AtomicError::SimulatedCrash {
            point: FaultPoint::MidWrite,
            ..
        }
    ));
    assert_eq!(std::fs::read(&p).unwrap(), b"{\"generation\": 1}");
    let temps = temp_files_of(&p).unwrap();
    assert_eq!(temps.len(), 1, "{temps:?}");
    assert_eq!(
        std::fs::read(&temps[0]).unwrap().len(),
        50_000,
        "torn temp file"
    );
    write_atomic(&p, &big, 0o600).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), big);
    assert_eq!(dir_entries(d.path()), vec!["state.json"]);
}

#[test]
fn atomic_write_never_follows_a_planted_symlink() {
    let d = tmp();
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let sub = d.path().join("conf");
    std::fs::create_dir(&sub).unwrap();
    let p = sub.join("deployment.toml");
    // A link where a temp file of the target could be, and one at the fixed name of old agents.
    std::os::unix::fs::symlink(&victim, temp_path_for(&p)).unwrap();
    std::os::unix::fs::symlink(&victim, sub.join(".deployment.toml.apimctl-tmp")).unwrap();
    write_atomic(&p, b"secret = 1", 0o600).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(&p).unwrap(), b"secret = 1");
    assert!(
        !std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The planted links were taken for leftovers and removed, never followed.
    assert_eq!(dir_entries(&sub), vec!["deployment.toml"]);
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

#[test]
fn atomic_rename_failure_leaves_old_file_and_no_temp() {
    let d = tmp();
    let p = d.path().join("f");
    write_atomic(&p, b"old", 0o644).unwrap();
    let ops = FailingRename {
        errno: nix::libc::EACCES,
        calls: Mutex::new(0),
    };
    let err = AtomicWriter::new(0o644)
        .file_ops(&ops)
        .write(&p, b"new")
        .unwrap_err();
    assert!(matches!(err, AtomicError::Io { .. }), "{err}");
    assert_eq!(*ops.calls.lock().unwrap(), 1);
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    assert_eq!(dir_entries(d.path()), vec!["f"]);
}

#[test]
fn a_busy_rename_falls_back_to_an_in_place_write_when_allowed() {
    let d = tmp();
    let p = d.path().join("hosts");
    write_atomic(&p, b"old", 0o644).unwrap();
    let ino = std::fs::metadata(&p).unwrap().ino();
    let ops = FailingRename {
        errno: nix::libc::EBUSY,
        calls: Mutex::new(0),
    };
    let refused = AtomicWriter::new(0o644).file_ops(&ops).write(&p, b"new");
    assert!(refused.is_err(), "no fallback unless asked for");
    let method = AtomicWriter::new(0o644)
        .in_place_fallback(true)
        .file_ops(&ops)
        .write(&p, b"new bytes")
        .unwrap();
    assert_eq!(method, WriteMethod::InPlace);
    assert_eq!(std::fs::read(&p).unwrap(), b"new bytes");
    assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino, "the same inode");
    assert_eq!(dir_entries(d.path()), vec!["hosts"]);
}

#[test]
fn no_clobber_creates_once_and_refuses_an_existing_target() {
    let d = tmp();
    let p = d.path().join("ca.key");
    AtomicWriter::new(0o600)
        .no_clobber(true)
        .write(&p, b"first")
        .unwrap();
    let err = AtomicWriter::new(0o600)
        .no_clobber(true)
        .write(&p, b"second")
        .unwrap_err();
    match &err {
        AtomicError::Io { source, .. } => {
            assert_eq!(source.kind(), io::ErrorKind::AlreadyExists, "{err}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&p).unwrap(), b"first");
    assert_eq!(dir_entries(d.path()), vec!["ca.key"]);
}

#[test]
fn the_owner_is_set_before_the_file_appears() {
    let d = tmp();
    let p = d.path().join("owned");
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    AtomicWriter::new(0o640)
        .owner(uid.as_raw(), gid.as_raw())
        .write(&p, b"x")
        .unwrap();
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (uid.as_raw(), gid.as_raw()));
    assert_eq!(mode_of(&p), 0o640);
}

#[test]
fn a_temp_file_a_live_writer_holds_is_left_alone() {
    let d = tmp();
    let p = d.path().join("spec.json");
    // Another writer of the same target, in the middle of its write: its temp file is locked.
    let theirs = temp_path_for(&p);
    let f = std::fs::File::create_new(&theirs).unwrap();
    let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).expect("flock");
    write_atomic(&p, b"mine", 0o600).unwrap();
    assert!(theirs.exists(), "a live writer's temp file was removed");
    drop(lock);
    // Once its writer is gone (a crash releases the lock), it is a leftover.
    write_atomic(&p, b"mine again", 0o600).unwrap();
    assert!(!theirs.exists());
    assert_eq!(dir_entries(d.path()), vec!["spec.json"]);
}

#[test]
fn concurrent_writers_of_one_target_all_land() {
    let d = tmp();
    let p = d.path().join("shared");
    std::thread::scope(|s| {
        for i in 0..8u8 {
            let p = &p;
            s.spawn(move || {
                for round in 0..25u8 {
                    write_atomic(p, &[i; 64].map(|b| b ^ round), 0o600).expect("write");
                }
            });
        }
    });
    let content = std::fs::read(&p).unwrap();
    assert_eq!(content.len(), 64);
    assert!(
        content.iter().all(|b| *b == content[0]),
        "torn: {content:?}"
    );
    assert_eq!(dir_entries(d.path()), vec!["shared"]);
}

#[test]
fn a_missing_directory_is_reported_by_the_temp_file_it_prevents() {
    let d = tmp();
    let p = d.path().join("missing/file");
    let err = write_atomic(&p, b"x", 0o600).unwrap_err();
    match &err {
        AtomicError::Io { op, source, .. } => {
            assert_eq!(*op, "create temp file", "{err}");
            assert_eq!(source.kind(), io::ErrorKind::NotFound, "{err}");
        }
        other => panic!("{other:?}"),
    }
}
