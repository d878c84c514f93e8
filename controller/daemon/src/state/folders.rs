//! Shared folders (3.x gateways in HA): which groups a machine's nodes are in, the checks on what
//! an agent pushes (untrusted: a group of its own, paths inside the group's folders, sizes and
//! digests that hold), and the revision watch the agent streams follow.

use std::collections::BTreeMap;

use apim_proto::v1::{ArtifactPush, ArtifactUpdate, SharedFile, shared_folders::How};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{ControllerState, StateError};
use crate::store::Put;

/// The largest file a group shares (Synapse configurations and execution plans are kilobytes);
/// it keeps every message well under the gRPC limit.
pub const MAX_FILE_BYTES: usize = 2 << 20;

/// How many bytes of files one `ArtifactUpdate` carries at most.
pub const UPDATE_BYTES: usize = 3 << 20;

/// The longest path accepted, in bytes.
const MAX_PATH: usize = 1024;

/// What one push did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Files recorded as the group's newest.
    pub written: usize,
    /// Files the group already held alike.
    pub same: usize,
    /// A joining node's files the group had otherwise (the group's kept).
    pub kept: usize,
}

impl ControllerState {
    /// The shared-folder groups the nodes of `machine`'s current spec synchronise, with their
    /// folders (relative to the carbon home).
    pub fn folder_groups(&self, machine: &str) -> BTreeMap<String, Vec<String>> {
        let spec = {
            let mut inner = self.lock();
            Self::spec_sender(&mut inner, machine).borrow().clone()
        };
        let mut out = BTreeMap::new();
        for node in spec.iter().flat_map(|s| s.nodes.iter()) {
            if let Some(shared) = &node.shared
                && let Some(How::Sync(sync)) = &shared.how
            {
                out.insert(shared.group.clone(), sync.dirs.clone());
            }
        }
        out
    }

    /// Records what `machine`'s agent pushed for a group, after checking it: a group of the
    /// machine's own spec (`None`: it is not, and nothing is taken), every path inside one of
    /// its folders, every digest right.
    pub fn push_folder_files(
        &self,
        machine: &str,
        push: &ArtifactPush,
    ) -> Result<Option<Pushed>, StateError> {
        let groups = self.folder_groups(machine);
        let Some(dirs) = groups.get(&push.group) else {
            // Not taken, not answered; the stream goes on (the agent may hold a spec older
            // than the one that took its node out of the group).
            self.refusals.count(
                machine,
                super::Refused {
                    foreign_pushes: 1,
                    ..super::Refused::default()
                },
            );
            return Ok(None);
        };
        for f in &push.files {
            check_file(dirs, f).map_err(|reason| StateError::BadPush {
                machine: machine.to_owned(),
                reason,
            })?;
        }
        let joining = push.base_revision == 0;
        let mut done = Pushed::default();
        if push.files.is_empty() {
            return Ok(Some(done));
        }
        let newest = self.store.write(|tx| {
            for f in &push.files {
                match tx.put_folder_file(&push.group, f, joining)? {
                    Put::Written => done.written += 1,
                    Put::Same => done.same += 1,
                    Put::GroupKept => done.kept += 1,
                }
            }
            // Inside the write: the revision it wrote at, whatever commits next.
            if done.written > 0 {
                tx.folder_revision()
            } else {
                Ok(0)
            }
        })?;
        self.folders_at(newest);
        Ok(Some(done))
    }

    /// What `group` gained after revision `after`, as updates of at most [`UPDATE_BYTES`] each
    /// (none when nothing changed). Each update's revision covers every file up to it, so a
    /// node that stops part way asks again from there and misses nothing.
    pub fn folder_changes(
        &self,
        group: &str,
        after: u64,
    ) -> Result<Vec<ArtifactUpdate>, StateError> {
        let rows = self.store.read(|tx| tx.folder_files_since(group, after))?;
        Ok(batches(group, rows))
    }

    /// Follows the newest shared-folder revision known to this controller.
    pub fn folders(&self) -> watch::Receiver<u64> {
        self.folders.subscribe()
    }

    /// Raises the shared-folder revision to `revision` (never lowers it).
    pub(super) fn folders_at(&self, revision: u64) {
        self.folders.send_if_modified(|r| {
            let raise = revision > *r;
            if raise {
                *r = revision;
            }
            raise
        });
    }
}

/// Splits files (in revision order, each with its revision) into updates of at most
/// [`UPDATE_BYTES`], cut only between revisions (an update's revision claims every file up to
/// it), so one revision's files (one push, itself at most that size) stay together.
fn batches(group: &str, rows: Vec<(SharedFile, u64)>) -> Vec<ArtifactUpdate> {
    let mut out = Vec::new();
    let mut files = Vec::new();
    let (mut bytes, mut last) = (0usize, 0u64);
    let update = |revision, files, caught_up| ArtifactUpdate {
        group: group.to_owned(),
        revision,
        files,
        caught_up,
    };
    for (file, revision) in rows {
        let size = file.content.len() + file.path.len();
        if !files.is_empty() && bytes + size > UPDATE_BYTES && revision > last {
            out.push(update(last, std::mem::take(&mut files), false));
            bytes = 0;
        }
        bytes += size;
        last = revision;
        files.push(file);
    }
    if !files.is_empty() {
        out.push(update(last, files, true));
    }
    out
}

/// Why `f` may not be taken into a group synchronising `dirs`, if it may not.
pub fn check_file(dirs: &[String], f: &SharedFile) -> Result<(), String> {
    let p = &f.path;
    let shown = apim_proto::text::printable(p);
    if p.is_empty() || p.len() > MAX_PATH {
        return Err(format!(
            "file path {shown:?} is empty or longer than {MAX_PATH} bytes"
        ));
    }
    if !apim_proto::shared_paths::inside(dirs, p) {
        return Err(format!(
            "file {shown:?} is not a plain relative path (no \"..\", \".\", empty parts, control \
             characters or backslashes) inside the group's folders"
        ));
    }
    if f.deleted {
        if !f.content.is_empty() {
            return Err(format!("deleted file {shown:?} carries content"));
        }
        return Ok(());
    }
    if f.content.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file {shown:?} is {} bytes, over the {MAX_FILE_BYTES}-byte limit",
            f.content.len()
        ));
    }
    let sha = hex::encode(Sha256::digest(&f.content));
    if sha != f.sha256 {
        return Err(format!("file {shown:?} does not match its sha256"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> SharedFile {
        SharedFile {
            path: path.into(),
            content: content.to_vec(),
            sha256: hex::encode(Sha256::digest(content)),
            deleted: false,
        }
    }

    #[test]
    fn only_plain_paths_inside_the_groups_folders_with_true_digests_are_taken() {
        let dirs = vec![
            "a/synapse-configs".to_string(),
            "a/executionplans".to_string(),
        ];
        assert_eq!(
            check_file(&dirs, &file("a/synapse-configs/default/api/x.xml", b"x")),
            Ok(())
        );
        for bad in [
            "a/synapse-configs",
            "a/synapse-configsX/y",
            "a/synapse-configs/../../etc/passwd",
            "/a/synapse-configs/x",
            "a/synapse-configs//x",
            "a/synapse-configs/./x",
            "a/synapse-configs/x\u{1b}[2J",
            "a/webapps/x.war",
        ] {
            assert!(
                check_file(&dirs, &file(bad, b"x")).is_err(),
                "{bad:?} taken"
            );
        }
        let mut lie = file("a/executionplans/p.siddhiql", b"x");
        lie.sha256 = hex::encode(Sha256::digest(b"y"));
        assert!(check_file(&dirs, &lie).unwrap_err().contains("sha256"));
        let big = file("a/executionplans/big", &vec![0u8; MAX_FILE_BYTES + 1]);
        assert!(check_file(&dirs, &big).unwrap_err().contains("limit"));
        let gone = SharedFile {
            deleted: true,
            ..SharedFile {
                path: "a/executionplans/p".into(),
                ..SharedFile::default()
            }
        };
        assert_eq!(check_file(&dirs, &gone), Ok(()));
    }

    #[test]
    fn updates_split_only_between_revisions_and_each_covers_what_it_carries() {
        let half = vec![0u8; UPDATE_BYTES / 2 + 1];
        let rows = vec![
            (file("d/1", &half), 5),
            (file("d/2", &half), 5),
            (file("d/3", &half), 5),
            (file("d/4", &half), 7),
            (file("d/5", b"x"), 9),
        ];
        let b = batches("g", rows);
        let shape: Vec<(u64, usize)> = b.iter().map(|u| (u.revision, u.files.len())).collect();
        // Three files of revision 5 stay together although two fill a batch.
        assert_eq!(shape, vec![(5, 3), (9, 2)]);
        let caught_up: Vec<bool> = b.iter().map(|u| u.caught_up).collect();
        assert_eq!(caught_up, [false, true]);
        assert!(batches("g", Vec::new()).is_empty());
        // Files of distinct revisions never make an update over the limit.
        let mib = vec![0u8; 1 << 20];
        let rows: Vec<_> = (1..=10)
            .map(|r| (file(&format!("d/{r}"), &mib), r))
            .collect();
        let b = batches("g", rows);
        assert!(
            b.iter()
                .all(|u| u.files.iter().map(|f| f.content.len()).sum::<usize>() <= UPDATE_BYTES)
        );
        assert_eq!(b.iter().map(|u| u.files.len()).sum::<usize>(), 10);
        assert_eq!(
            b.last().map(|u| (u.revision, u.caught_up)),
            Some((10, true))
        );
    }
}
