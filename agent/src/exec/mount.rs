//! File systems mounted into a node's tree: whether a path is a mount point (from
//! `/proc/self/mountinfo`, which describes this process's own mount namespace), mounting a
//! shared file system there (`mount`, argv only), unmounting, and the guard every removal of a
//! tree goes through: never delete files through a mount (the content belongs to every machine
//! sharing it).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::exec::error::{ExecError, Result};

/// This process's mount table.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// How long `mount` or `umount` may take (an NFS server that does not answer would otherwise
/// hold the converge for minutes).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// The `fstype` that means a bind mount of an absolute path.
pub const BIND: &str = "bind";

/// One line of `mountinfo`: the fields the agent uses, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The folder of the mounted file system shown here (a bind mount's sub-folder).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The file system type, e.g. `nfs4`, `ext4`.
    pub fstype: String,
    /// What was mounted, as the kernel shows it, e.g. `nfs.example.com:/exports/gw`.
    pub source: String,
}

/// What to mount where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// What to mount (`mount`'s source; an absolute path for [`BIND`]).
    pub source: String,
    /// Where (a folder).
    pub target: PathBuf,
    /// The file system type, or [`BIND`].
    pub fstype: String,
    /// `mount -o` options (empty: none).
    pub options: String,
}

/// `\NNN` (octal) escapes of `mountinfo` (space, tab, newline, backslash) back to bytes.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                match u8::try_from(v) {
                    Ok(byte) => out.push(byte),
                    Err(_) => out.extend_from_slice(&b[i..i + 4]),
                }
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

/// The entries of a `mountinfo` text, in its order (a later entry on the same mount point is
/// mounted over the earlier). Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 {
        return None;
    }
    let fstype = fields.get(sep + 1)?;
    let source = fields.get(sep + 2)?;
    Some(MountEntry {
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        fstype: unescape(fstype).to_string_lossy().into_owned(),
        source: unescape(source).to_string_lossy().into_owned(),
    })
}

/// This process's mount table.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string(MOUNTINFO)
        .map_err(|e| ExecError::io("read the mount table", MOUNTINFO, e))?;
    Ok(parse_mountinfo(&text))
}

/// `path` as the mount table names it (symlinks resolved); `None`: it does not exist.
fn canonical(path: &Path) -> Result<Option<PathBuf>> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ExecError::io("resolve", path, e)),
    }
}

/// The file system mounted at `path` (the top one when several are stacked), if any.
pub fn mounted_at(table: &[MountEntry], path: &Path) -> Result<Option<MountEntry>> {
    let Some(p) = canonical(path)? else {
        return Ok(None);
    };
    Ok(table.iter().rev().find(|m| m.mount_point == p).cloned())
}

/// Every mount point at or below `path`, deepest first (the order to unmount them in).
pub fn mounts_under(table: &[MountEntry], path: &Path) -> Result<Vec<PathBuf>> {
    let Some(p) = canonical(path)? else {
        return Ok(Vec::new());
    };
    let mut v: Vec<PathBuf> = table
        .iter()
        .filter(|m| m.mount_point.starts_with(&p))
        .map(|m| m.mount_point.clone())
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v.dedup();
    Ok(v)
}

/// Refuses (names the first mount point) when anything is mounted at or below `path`: the
/// guard before a tree is removed.
pub fn refuse_if_mounted(path: &Path) -> Result<()> {
    match mounts_under(&mounts()?, path)?.first() {
        None => Ok(()),
        Some(m) => Err(ExecError::RemoveRefused {
            path: path.to_path_buf(),
            reason: format!(
                "a file system is mounted at {} (its files are not this node's to delete)",
                m.display()
            ),
        }),
    }
}

/// Whether `target` is a mount point of `spec.source`: for [`BIND`], the folder there is the
/// source folder itself (same device and inode); otherwise the table's source for it is
/// `spec.source` (a trailing `/` aside) and its type starts with `spec.fstype` (`nfs` is shown
/// as `nfs4` when version 4 was negotiated). `Err` describes what is there instead.
pub fn check_mounted(table: &[MountEntry], spec: &MountSpec) -> std::result::Result<(), String> {
    let entry = match mounted_at(table, &spec.target) {
        Ok(Some(e)) => e,
        Ok(None) => return Err("not a mount point".into()),
        Err(e) => return Err(e.to_string()),
    };
    if spec.fstype == BIND {
        let (src, dst) = match (
            std::fs::metadata(&spec.source),
            std::fs::metadata(&spec.target),
        ) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) => return Err(format!("the source cannot be read: {e}")),
            (_, Err(e)) => return Err(format!("the folder cannot be read: {e}")),
        };
        return if (src.dev(), src.ino()) == (dst.dev(), dst.ino()) {
            Ok(())
        } else {
            Err(format!(
                "another folder is mounted there ({} {})",
                entry.source,
                entry.root.display()
            ))
        };
    }
    let trim = |s: &str| s.trim_end_matches('/').to_owned();
    if trim(&entry.source) == trim(&spec.source) && entry.fstype.starts_with(&spec.fstype) {
        Ok(())
    } else {
        Err(format!(
            "{} ({}) is mounted there instead",
            entry.source, entry.fstype
        ))
    }
}

/// `mount`'s argv for `spec` (program first): `mount --bind <src> <dst>` for [`BIND`], else
/// `mount -t <fstype> [-o <options>] <src> <dst>`. Never a shell string.
pub fn mount_argv(spec: &MountSpec) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["mount".into()];
    if spec.fstype == BIND {
        v.push("--bind".into());
    } else {
        v.push("-t".into());
        v.push(spec.fstype.clone().into());
        if !spec.options.is_empty() {
            v.push("-o".into());
            v.push(spec.options.clone().into());
        }
    }
    v.push(spec.source.clone().into());
    v.push(spec.target.clone().into_os_string());
    v
}

/// `umount`'s argv for `target` (program first).
pub fn umount_argv(target: &Path) -> Vec<OsString> {
    vec!["umount".into(), target.as_os_str().to_owned()]
}

/// Runs `argv` (program first) with [`MOUNT_TIMEOUT`]; `Err(reason)`: it could not run, timed
/// out, or failed (its stderr, trimmed, as `mount` wrote it: the caller escapes it).
async fn run(argv: &[OsString]) -> std::result::Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty argv")?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    match tokio::time::timeout(MOUNT_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{} did not finish within {} s",
            program.to_string_lossy(),
            MOUNT_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("{}: {e}", program.to_string_lossy())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            Err(if err.is_empty() {
                format!("{} exited with {}", program.to_string_lossy(), out.status)
            } else {
                apim_proto::text::printable(&err.chars().take(2000).collect::<String>())
                    .into_owned()
            })
        }
    }
}

/// Mounts `spec` (see [`mount_argv`]).
pub async fn mount(spec: &MountSpec) -> Result<()> {
    run(&mount_argv(spec))
        .await
        .map_err(|reason| ExecError::Mount {
            source_fs: spec.source.clone(),
            target: spec.target.clone(),
            reason,
        })
}

/// Unmounts whatever is mounted at `target` (the top one).
pub async fn unmount(target: &Path) -> Result<()> {
    run(&umount_argv(target))
        .await
        .map_err(|reason| ExecError::Unmount {
            target: target.to_path_buf(),
            reason,
        })
}

/// Unmounts everything mounted at or below `path`, deepest first, and checks that nothing is
/// left (a tree is removed only then).
pub async fn unmount_under(path: &Path) -> Result<()> {
    for m in mounts_under(&mounts()?, path)? {
        tracing::info!(mount_point = %m.display(), "unmounting before the tree is removed");
        unmount(&m).await?;
    }
    if let Some(m) = mounts_under(&mounts()?, path)?.first() {
        return Err(ExecError::Unmount {
            target: m.clone(),
            reason: "still mounted after umount".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 22 0:32 / /tmp rw,nosuid,nodev shared:14 - tmpfs tmpfs rw,size=1024k
120 36 8:1 /srv/share\\040one /tmp/gw/with\\040space/server rw,relatime shared:1 - ext4 /dev/sda1 rw
121 22 0:50 / /opt/app/node-1/home/shared/server rw,relatime master:3 - nfs4 nfs.example.com:/exports/gw rw,vers=4.2
122 22 0:51 / /odd\\134path\\011tab rw - nfs nfs.example.com:/exports/x/ rw
garbage line
";

    #[test]
    fn mountinfo_lines_parse_with_their_octal_escapes() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 5, "the garbage line is skipped: {t:?}");
        assert_eq!(t[0].mount_point, Path::new("/"));
        assert_eq!(t[0].source, "/dev/sda1");
        assert_eq!(t[2].root, Path::new("/srv/share one"));
        assert_eq!(t[2].mount_point, Path::new("/tmp/gw/with space/server"));
        assert_eq!(t[3].fstype, "nfs4");
        assert_eq!(t[3].source, "nfs.example.com:/exports/gw");
        assert_eq!(t[4].mount_point, Path::new("/odd\\path\ttab"));
        // No optional fields at all, and an escape that is not octal stays as written.
        assert_eq!(unescape("a\\x41b\\1"), OsString::from("a\\x41b\\1"));
        assert_eq!(unescape("\\012"), OsString::from("\n"));
    }

    #[test]
    fn mount_points_at_and_under_a_path_deepest_first() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let home = root.join("home");
        std::fs::create_dir_all(home.join("a/b")).unwrap();
        let line = |id: u32, p: &Path| {
            format!(
                "{id} 22 0:9 / {} rw - ext4 /dev/x rw\n",
                p.display().to_string().replace(' ', "\\040")
            )
        };
        let text = [
            line(1, &home.join("a")),
            line(2, &home.join("a/b")),
            line(3, &root.join("homeless")),
        ]
        .concat();
        let t = parse_mountinfo(&text);
        assert_eq!(
            mounts_under(&t, &home).unwrap(),
            [home.join("a/b"), home.join("a")]
        );
        assert!(mounted_at(&t, &home).unwrap().is_none());
        assert_eq!(
            mounted_at(&t, &home.join("a/b")).unwrap().unwrap().source,
            "/dev/x"
        );
        // Through a symlink, the canonical path is what counts.
        std::os::unix::fs::symlink(&home, root.join("link")).unwrap();
        assert_eq!(mounts_under(&t, &root.join("link")).unwrap().len(), 2);
        assert!(
            mounts_under(&t, &root.join("missing")).unwrap().is_empty(),
            "nothing is mounted below a path that does not exist"
        );
    }

    #[test]
    fn a_mount_of_another_source_is_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let target = std::fs::canonicalize(d.path()).unwrap();
        let table = parse_mountinfo(&format!(
            "1 22 0:50 / {} rw - nfs4 nfs.example.com:/exports/gw/ rw\n",
            target.display()
        ));
        let spec = |source: &str, fstype: &str| MountSpec {
            source: source.into(),
            target: target.clone(),
            fstype: fstype.into(),
            options: String::new(),
        };
        assert_eq!(
            check_mounted(&table, &spec("nfs.example.com:/exports/gw", "nfs")),
            Ok(())
        );
        let other = check_mounted(&table, &spec("nfs.example.com:/exports/other", "nfs"));
        assert!(other.unwrap_err().contains("instead"));
        assert_eq!(
            check_mounted(&[], &spec("x:/y", "nfs")),
            Err("not a mount point".into())
        );
        // A bind mount is its source folder itself: here the target is not the source.
        let src = tempfile::tempdir().unwrap();
        let bind = spec(&src.path().display().to_string(), BIND);
        assert!(
            check_mounted(&table, &bind)
                .unwrap_err()
                .contains("another folder")
        );
    }

    #[test]
    fn argv_never_a_shell_string() {
        let mut s = MountSpec {
            source: "/srv/share; rm -rf /".into(),
            target: PathBuf::from("/opt/x y/server"),
            fstype: BIND.into(),
            options: "ro".into(),
        };
        assert_eq!(
            mount_argv(&s),
            ["mount", "--bind", "/srv/share; rm -rf /", "/opt/x y/server"].map(OsString::from)
        );
        s.fstype = "nfs".into();
        s.source = "nfs.example.com:/exports/gw".into();
        assert_eq!(
            mount_argv(&s),
            [
                "mount",
                "-t",
                "nfs",
                "-o",
                "ro",
                "nfs.example.com:/exports/gw",
                "/opt/x y/server"
            ]
            .map(OsString::from)
        );
        s.options.clear();
        assert_eq!(mount_argv(&s).len(), 5, "no -o without options");
        assert_eq!(
            umount_argv(Path::new("/opt/x y/server")),
            ["umount", "/opt/x y/server"].map(OsString::from)
        );
    }

    #[tokio::test]
    async fn a_failed_mount_names_source_target_and_what_mount_said() {
        let d = tempfile::tempdir().unwrap();
        let spec = MountSpec {
            source: d.path().join("no-such-source").display().to_string(),
            target: d.path().join("no-such-target"),
            fstype: "apimctl-no-such-fstype".into(),
            options: String::new(),
        };
        let e = mount(&spec).await.unwrap_err().to_string();
        assert!(
            e.contains("no-such-source") && e.contains("no-such-target"),
            "{e}"
        );
        assert!(e.contains(": "), "mount's own words follow: {e}");
    }

    #[test]
    fn a_tree_with_nothing_mounted_may_be_removed() {
        let d = tempfile::tempdir().unwrap();
        refuse_if_mounted(d.path()).unwrap();
        // `/` has mounts below it on any machine.
        assert!(matches!(
            refuse_if_mounted(Path::new("/")),
            Err(ExecError::RemoveRefused { .. })
        ));
    }
}
