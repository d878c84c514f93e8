//! The managed hosts block: only its own lines, foreign bytes kept, bind mounts handled.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;

use apim_agent::exec::ExecError;
use apim_agent::exec::hosts::{self, BEGIN_MARKER, END_MARKER, HostsChange, HostsEntry, HostsFile};
use apim_atomic::{FileOps, WriteMethod};
use proptest::prelude::*;

use crate::support::dir_entries;
use crate::{mode_of, tmp};

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
