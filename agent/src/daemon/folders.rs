//! Folders a node shares with the other nodes of its group, synchronised through the controller
//! (`SharedFolders` sync: 3.x gateways in HA). The agent knows only folders and files.
//!
//! Per group (one node of it per machine) the agent keeps a *manifest*: the group's files as
//! the node last agreed with them (sha256 by path) and the group revision that agreement is at,
//! persisted in `<state>/folders/<node>.json`. A local change is what differs from the manifest;
//! it is pushed with the manifest's revision as base, and the controller's answer (everything
//! newer, the node's own change included) moves the manifest on. So a node cut off for a while
//! pushes what it changed meanwhile and gets what it missed when its stream returns.
//!
//! Joining (no manifest yet, or another home): the node pushes what it has, the group keeps its
//! own files where it has any, and until the answer is complete (`caught_up`) every file the
//! group sends replaces the node's. Afterwards a file the node changed itself since the
//! manifest (not yet pushed) is kept over the group's (it is pushed next, and the later write
//! wins); every other file follows the group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apim_proto::v1::{ArtifactPush, ArtifactUpdate, MachineSpec, SharedFile, shared_folders::How};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::daemon::config::AgentConfig;
use crate::daemon::converge::OPTIMIZED_MARKER;
use crate::daemon::report::{StatusBoard, Update};
use crate::exec::folders::{self, Scanner};
use crate::exec::process;

/// The folder of the agent's state dir holding the manifests (removed by a destroy).
pub const STATE_DIR: &str = "folders";

/// The first wait before a group's files that could not be taken are asked for again.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest such wait.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Most bytes of file content per push (well under the gRPC message limit).
const PUSH_BYTES: usize = 3 << 20;

/// What the agent remembers of a group between streams and restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    /// The node's home the files are under (another home: joining again).
    home: PathBuf,
    /// The group.
    group: String,
    /// The group revision the files are at (0: never caught up).
    revision: u64,
    /// sha256 by path relative to the home.
    files: BTreeMap<String, String>,
}

/// One group this machine takes part in, through one node.
#[derive(Debug)]
struct Member {
    node: String,
    home: PathBuf,
    dirs: Vec<String>,
    owner: Option<(u32, u32)>,
    manifest: Manifest,
    scanner: Scanner,
    /// Pushed on this stream and not yet come back: path -> sha256 ("" deleted).
    in_flight: BTreeMap<String, String>,
    /// Pushed on this stream (the controller follows the group for it).
    joined: bool,
    /// Joined without a manifest and not caught up yet: the group's files win.
    joining: bool,
    /// What went wrong in the last scan (reading the folders), if anything.
    push_problem: Option<String>,
    /// What went wrong taking the group's files, if anything (asked for again until it works).
    take_problem: Option<String>,
    /// After a failed take: not asked for again before this, and the wait after the next
    /// failure (doubling up to [`RETRY_MAX`]).
    retry: Option<(std::time::Instant, std::time::Duration)>,
    /// The state last put on the board.
    shown: String,
}

impl Member {
    /// Forgets a join that did not complete: its manifest is partial (and was never saved),
    /// so the node joins again from nothing.
    fn restart_join(&mut self) {
        self.joining = false;
        self.manifest = Manifest {
            home: self.home.clone(),
            group: self.manifest.group.clone(),
            ..Manifest::default()
        };
    }

    /// The node's shared-folders state for status.
    fn state(&self, group: &str) -> String {
        if let Some(p) = self.take_problem.as_ref().or(self.push_problem.as_ref()) {
            return format!("{group}: {p}");
        }
        if self.joining || !self.joined {
            return format!("joining {group}");
        }
        if !self.in_flight.is_empty() {
            return format!("{group}: sending {} file(s)", self.in_flight.len());
        }
        format!("{group}: in step at revision {}", self.manifest.revision)
    }
}

/// Every group of the held spec's nodes whose home is in place.
#[derive(Debug)]
pub struct FolderSync {
    board: Arc<StatusBoard>,
    dir: PathBuf,
    groups: BTreeMap<String, Member>,
    generation: Option<u64>,
    /// A node of the held spec shares folders but its home is not in place yet.
    pending: bool,
}

impl FolderSync {
    /// Keeps its manifests under `<state_dir>/`[`STATE_DIR`]; says how each node's folders are
    /// on `board`.
    pub fn new(state_dir: &Path, board: Arc<StatusBoard>) -> Self {
        FolderSync {
            board,
            dir: state_dir.join(STATE_DIR),
            groups: BTreeMap::new(),
            generation: None,
            pending: false,
        }
    }

    /// A new stream: nothing is in flight and every group is joined again.
    pub fn reconnected(&mut self) {
        for m in self.groups.values_mut() {
            m.in_flight.clear();
            m.joined = false;
            if m.joining {
                m.restart_join();
            }
        }
    }

    /// Follows the held spec: its nodes with synchronised folders whose home is in place (the
    /// pack installed and, when the spec has one, its optimizer run).
    pub fn refresh(&mut self, spec: Option<&MachineSpec>, config: &AgentConfig) {
        let generation = spec.map(|s| s.generation);
        let mut wanted = BTreeMap::new();
        self.pending = false;
        for n in spec.iter().flat_map(|s| s.nodes.iter()) {
            let Some(shared) = &n.shared else { continue };
            let Some(How::Sync(sync)) = &shared.how else {
                continue;
            };
            if wanted.contains_key(&shared.group) {
                tracing::warn!(node = %n.name, group = %shared.group, "a second node of the group on this machine: only the first is synchronised");
                continue;
            }
            let Some(top) = n.pack.as_ref().map(|p| p.top_dir.clone()) else {
                continue;
            };
            let Ok(root) = config.rooted(&n.name, &n.install_dir) else {
                continue;
            };
            let home = root.join(top);
            let ready =
                home.is_dir() && (n.optimizer.is_none() || home.join(OPTIMIZED_MARKER).exists());
            if !ready {
                self.pending = true;
                continue;
            }
            let owner = (!n.run_as_user.is_empty())
                .then(|| process::resolve_run_as(Some(&n.run_as_user)).ok())
                .flatten()
                .and_then(|r| r.switch_to)
                .map(|c| (c.uid, c.gid));
            wanted.insert(
                shared.group.clone(),
                (n.name.clone(), home, sync.dirs.clone(), owner),
            );
        }
        self.groups.retain(|g, m| {
            wanted.get(g).is_some_and(|(node, home, dirs, _)| {
                *node == m.node && *home == m.home && *dirs == m.dirs
            })
        });
        for (group, (node, home, dirs, owner)) in wanted {
            if self.groups.contains_key(&group) {
                continue;
            }
            let manifest = self
                .load(&node)
                .filter(|m| m.home == home && m.group == group)
                .unwrap_or_else(|| Manifest {
                    home: home.clone(),
                    group: group.clone(),
                    ..Manifest::default()
                });
            tracing::info!(node = %node, group = %group, revision = manifest.revision, "synchronising shared folders");
            self.groups.insert(
                group,
                Member {
                    node,
                    home,
                    dirs: dirs
                        .into_iter()
                        .filter(|d| apim_proto::shared_paths::is_plain(d))
                        .collect(),
                    owner,
                    manifest,
                    scanner: Scanner::default(),
                    in_flight: BTreeMap::new(),
                    joined: false,
                    joining: false,
                    push_problem: None,
                    take_problem: None,
                    retry: None,
                    shown: String::new(),
                },
            );
        }
        self.generation = generation;
    }

    /// Whether [`FolderSync::refresh`] has something to do for the held `generation`: another
    /// spec, or a sharing node whose home was not in place yet.
    pub fn stale(&self, generation: u64) -> bool {
        self.pending || self.generation != Some(generation)
    }

    /// What to send: a join for every group not joined on this stream, and each joined
    /// group's local changes not already in flight.
    pub fn pushes(&mut self) -> Vec<ArtifactPush> {
        let mut out = Vec::new();
        for (group, m) in &mut self.groups {
            if m.joining {
                continue; // its answer is on the way
            }
            if !m.joined
                && let Some((at, _)) = m.retry
                && std::time::Instant::now() < at
            {
                continue; // a failed take is asked for again later
            }
            let local = match m.scanner.scan(&m.home, &m.dirs) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(node = %m.node, group = %group, error = %e, "cannot scan the shared folders");
                    m.push_problem = Some(format!("cannot read the folders: {e}"));
                    continue;
                }
            };
            m.push_problem = None;
            for big in &m.scanner.too_big {
                tracing::warn!(node = %m.node, file = %big, limit = folders::MAX_FILE_BYTES, "file too big to share: kept on this machine only");
            }
            let fresh = m.manifest.revision == 0 && m.manifest.files.is_empty();
            let mut changed: Vec<(String, Option<String>)> = Vec::new();
            for (path, sha) in &local {
                if m.manifest.files.get(path) != Some(sha) {
                    changed.push((path.clone(), Some(sha.clone())));
                }
            }
            if !fresh {
                for path in m.manifest.files.keys() {
                    if !local.contains_key(path) {
                        changed.push((path.clone(), None));
                    }
                }
            }
            changed.retain(|(p, sha)| m.in_flight.get(p) != Some(&sha.clone().unwrap_or_default()));
            if changed.is_empty() && m.joined {
                continue;
            }
            let mut files = Vec::new();
            for (path, sha) in changed {
                let file = match sha {
                    None => SharedFile {
                        path,
                        deleted: true,
                        ..SharedFile::default()
                    },
                    Some(_) => match folders::read(&m.home, &path) {
                        Ok(Some(content)) => SharedFile {
                            sha256: hex::encode(Sha256::digest(&content)),
                            path,
                            content,
                            deleted: false,
                        },
                        // Gone since the scan: the next scan sees it.
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(node = %m.node, file = %path, error = %e, "cannot read a shared file");
                            m.push_problem = Some(format!("cannot read {path}: {e}"));
                            continue;
                        }
                    },
                };
                m.in_flight.insert(file.path.clone(), file.sha256.clone());
                files.push(file);
            }
            if !m.joined {
                m.joined = true;
                m.joining = fresh;
            }
            for batch in batches(files) {
                out.push(ArtifactPush {
                    group: group.clone(),
                    base_revision: m.manifest.revision,
                    files: batch,
                });
            }
        }
        self.show();
        out
    }

    /// Takes the group's changes into the node's folders.
    pub fn apply(&mut self, u: &ArtifactUpdate) {
        let Some(m) = self.groups.get_mut(&u.group) else {
            return;
        };
        let group_wins = m.joining;
        let mut failed = None;
        for f in &u.files {
            if !folders::inside(&m.dirs, &f.path) {
                tracing::warn!(node = %m.node, file = %apim_proto::text::printable(&f.path), "shared file outside the group's folders: ignored");
                continue;
            }
            if !f.deleted && hex::encode(Sha256::digest(&f.content)) != f.sha256 {
                tracing::warn!(node = %m.node, file = %f.path, "shared file does not match its sha256: ignored");
                continue;
            }
            let want = (!f.deleted).then(|| f.sha256.clone());
            let local = match folders::read(&m.home, &f.path) {
                Ok(b) => b.map(|b| hex::encode(Sha256::digest(&b))),
                Err(e) => {
                    tracing::warn!(node = %m.node, file = %f.path, error = %e, "cannot read a shared file");
                    failed = Some(format!("cannot read {}: {e}", f.path));
                    continue;
                }
            };
            let base = m.manifest.files.get(&f.path).cloned();
            if local != want && (group_wins || local == base) {
                let done = match &want {
                    Some(_) => folders::write(&m.home, &f.path, &f.content, m.owner),
                    None => folders::delete(&m.home, &f.path),
                };
                if let Err(e) = done {
                    tracing::warn!(node = %m.node, file = %f.path, error = %e, "cannot take a shared file");
                    failed = Some(format!("cannot take {}: {e}", f.path));
                    continue;
                }
                tracing::debug!(node = %m.node, file = %f.path, deleted = f.deleted, "shared file taken from the group");
            }
            match want {
                Some(sha) => m.manifest.files.insert(f.path.clone(), sha),
                None => m.manifest.files.remove(&f.path),
            };
            // Whatever was pushed for the path is answered by the group's newest state: if
            // that is not ours, our copy (kept above when it changed here) is pushed again.
            m.in_flight.remove(&f.path);
        }
        if let Some(problem) = failed {
            // Not at this revision yet: the manifest stays where it was for what failed (so
            // the old copy here is not taken for a change), and the group is asked again from
            // the manifest's revision on the next scan. A join starts over.
            m.take_problem = Some(problem);
            m.joined = false;
            let wait = m.retry.map_or(RETRY_FIRST, |(_, w)| (w * 2).min(RETRY_MAX));
            m.retry = Some((std::time::Instant::now() + wait, wait));
            if m.joining {
                m.restart_join();
            }
        } else {
            m.take_problem = None;
            m.retry = None;
            m.manifest.revision = m.manifest.revision.max(u.revision);
            if u.caught_up {
                m.joining = false;
            }
            // A join in the middle of its answer is not a manifest to resume from.
            if !m.joining {
                let (node, manifest) = (m.node.clone(), m.manifest.clone());
                self.save(&node, &manifest);
            }
        }
        self.show();
    }

    /// Puts each node's shared-folders state on the board when it changed.
    fn show(&mut self) {
        for (group, m) in &mut self.groups {
            let state = m.state(group);
            if state != m.shown {
                m.shown = state.clone();
                self.board.update(
                    &m.node,
                    Update {
                        shared: Some(state),
                        ..Update::default()
                    },
                );
            }
        }
    }

    fn load(&self, node: &str) -> Option<Manifest> {
        let bytes = std::fs::read(self.dir.join(format!("{node}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save(&self, node: &str, m: &Manifest) {
        let path = self.dir.join(format!("{node}.json"));
        let saved = std::fs::create_dir_all(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|()| serde_json::to_vec(m).map_err(|e| e.to_string()))
            .and_then(|b| apim_atomic::write_atomic(&path, &b, 0o600).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::warn!(node = %node, error = %e, "cannot save the shared folders' manifest");
        }
    }
}

/// Files in pushes of at most [`PUSH_BYTES`] (an empty list is one empty push: a join).
fn batches(files: Vec<SharedFile>) -> Vec<Vec<SharedFile>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for f in files {
        let size = f.content.len() + f.path.len();
        if bytes + size > PUSH_BYTES && !out.last().is_some_and(Vec::is_empty) {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = out.last_mut() {
            last.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use apim_certs::tls::ControllerEndpoint;
    use apim_proto::v1::{ArtifactRef, NodeSpec, SharedFolders, SyncedFolders};

    use super::*;

    const DIRS: [&str; 2] = ["r/syn", "r/plans"];

    struct Rig {
        _dir: tempfile::TempDir,
        config: AgentConfig,
        home: PathBuf,
        spec: MachineSpec,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = ControllerEndpoint::parse("127.0.0.1:1").unwrap();
        let mut config = AgentConfig::new(endpoint, "vm-a");
        config.install_root = dir.path().join("root");
        config.state_dir = dir.path().join("state");
        let node = NodeSpec {
            name: "gw-1".into(),
            install_dir: "/opt/gw-1".into(),
            pack: Some(ArtifactRef {
                top_dir: "pack".into(),
                ..ArtifactRef::default()
            }),
            shared: Some(SharedFolders {
                group: "group/G".into(),
                how: Some(How::Sync(SyncedFolders {
                    dirs: DIRS.map(String::from).to_vec(),
                })),
            }),
            ..NodeSpec::default()
        };
        let spec = MachineSpec {
            machine: "vm-a".into(),
            generation: 1,
            nodes: vec![node],
            ..MachineSpec::default()
        };
        let home = config.install_root.join("opt/gw-1/pack");
        Rig {
            _dir: dir,
            config,
            home,
            spec,
        }
    }

    fn sha(b: &str) -> String {
        hex::encode(Sha256::digest(b.as_bytes()))
    }

    fn file(path: &str, c: &str) -> SharedFile {
        SharedFile {
            path: path.into(),
            content: c.as_bytes().to_vec(),
            sha256: sha(c),
            deleted: false,
        }
    }

    fn update(revision: u64, files: Vec<SharedFile>, caught_up: bool) -> ArtifactUpdate {
        ArtifactUpdate {
            group: "group/G".into(),
            revision,
            files,
            caught_up,
        }
    }

    fn read(home: &Path, rel: &str) -> Option<String> {
        std::fs::read_to_string(home.join(rel)).ok()
    }

    fn paths(p: &[ArtifactPush]) -> Vec<(String, bool)> {
        p.iter()
            .flat_map(|p| p.files.iter().map(|f| (f.path.clone(), f.deleted)))
            .collect()
    }

    #[test]
    fn a_node_joins_takes_the_groups_files_and_then_pushes_only_its_own_changes() {
        let r = rig();
        let board = Arc::new(StatusBoard::default());
        let shown = || {
            board
                .snapshot()
                .nodes
                .iter()
                .find(|n| n.node == "gw-1")
                .map(|n| n.shared.clone())
                .unwrap_or_default()
        };
        let mut s = FolderSync::new(&r.config.state_dir, Arc::clone(&board));
        s.refresh(Some(&r.spec), &r.config);
        assert!(s.pushes().is_empty(), "no home yet: nothing to join");
        assert!(s.stale(1), "a sharing node waits for its home");
        std::fs::create_dir_all(&r.home).unwrap();
        folders::write(&r.home, "r/syn/a.xml", b"pack-a", None).unwrap();
        folders::write(&r.home, "r/syn/b.xml", b"pack-b", None).unwrap();
        s.refresh(Some(&r.spec), &r.config);
        assert!(!s.stale(1));

        // Joining: everything it has, base 0; nothing more until the answer is whole.
        let join = s.pushes();
        assert_eq!(join.len(), 1);
        assert_eq!(join[0].base_revision, 0);
        assert_eq!(paths(&join).len(), 2);
        assert!(s.pushes().is_empty(), "waits for its answer");
        assert_eq!(shown(), "joining group/G");
        // The group had a.xml otherwise, and a tombstone for b.xml: the group's win.
        let gone = SharedFile {
            path: "r/syn/b.xml".into(),
            deleted: true,
            ..SharedFile::default()
        };
        s.apply(&update(5, vec![file("r/syn/a.xml", "group-a")], false));
        s.apply(&update(6, vec![gone], true));
        assert_eq!(read(&r.home, "r/syn/a.xml").as_deref(), Some("group-a"));
        assert_eq!(read(&r.home, "r/syn/b.xml"), None);
        assert!(s.pushes().is_empty(), "in step with the group");
        assert_eq!(shown(), "group/G: in step at revision 6");
        // Saved: another agent run resumes from revision 6.
        let again = FolderSync::new(&r.config.state_dir, Arc::default())
            .load("gw-1")
            .unwrap();
        assert_eq!(again.revision, 6);

        // A change here goes out once, with its base; the echo settles it.
        folders::write(&r.home, "r/plans/p.siddhiql", b"mine", None).unwrap();
        let p = s.pushes();
        assert_eq!(p[0].base_revision, 6);
        assert_eq!(paths(&p), [("r/plans/p.siddhiql".to_string(), false)]);
        assert!(s.pushes().is_empty(), "in flight: not pushed twice");
        s.apply(&update(7, vec![file("r/plans/p.siddhiql", "mine")], true));
        assert!(s.pushes().is_empty());

        // The group deletes a file unchanged here: deleted here too.
        let del = SharedFile {
            path: "r/plans/p.siddhiql".into(),
            deleted: true,
            ..SharedFile::default()
        };
        s.apply(&update(8, vec![del], true));
        assert_eq!(read(&r.home, "r/plans/p.siddhiql"), None);

        // The group changes a file this node changed too, before it pushed: its own copy is
        // kept and pushed (the later write wins everywhere).
        folders::write(&r.home, "r/syn/a.xml", b"local-edit", None).unwrap();
        s.apply(&update(9, vec![file("r/syn/a.xml", "remote-edit")], true));
        assert_eq!(read(&r.home, "r/syn/a.xml").as_deref(), Some("local-edit"));
        let p = s.pushes();
        assert_eq!(paths(&p), [("r/syn/a.xml".to_string(), false)]);
        assert_eq!(p[0].base_revision, 9);

        // A path outside the folders or a lying digest is not taken.
        let mut lie = file("r/syn/c.xml", "x");
        lie.sha256 = sha("y");
        s.apply(&update(10, vec![file("r/webapps/x", "x"), lie], true));
        assert_eq!(read(&r.home, "r/webapps/x"), None);
        assert_eq!(read(&r.home, "r/syn/c.xml"), None);

        // A file that cannot be written here (a folder in its way): status says so, the
        // revision stays, and the group is asked again from it on the next scan.
        std::fs::create_dir_all(r.home.join("r/syn/d.xml")).unwrap();
        s.apply(&update(11, vec![file("r/syn/d.xml", "d")], true));
        assert!(shown().contains("cannot take r/syn/d.xml"), "{}", shown());
        assert!(s.pushes().is_empty(), "not asked again at once");
        let due = s.groups.get_mut("group/G").unwrap();
        let (_, wait) = due.retry.unwrap();
        assert_eq!(wait, RETRY_FIRST);
        due.retry = Some((std::time::Instant::now(), wait));
        let retry = s.pushes();
        assert_eq!(retry.len(), 1);
        assert_eq!(
            retry[0].base_revision, 10,
            "asked again from before the failure"
        );
        std::fs::remove_dir(r.home.join("r/syn/d.xml")).unwrap();
        s.apply(&update(11, vec![file("r/syn/d.xml", "d")], true));
        assert_eq!(read(&r.home, "r/syn/d.xml").as_deref(), Some("d"));
        assert!(!shown().contains("cannot"), "{}", shown());
    }

    #[test]
    fn a_join_cut_off_before_its_answer_was_whole_joins_again_from_nothing() {
        let r = rig();
        let mut s = FolderSync::new(&r.config.state_dir, Arc::default());
        std::fs::create_dir_all(&r.home).unwrap();
        folders::write(&r.home, "r/syn/a.xml", b"pack-a", None).unwrap();
        s.refresh(Some(&r.spec), &r.config);
        assert_eq!(s.pushes()[0].base_revision, 0);
        s.apply(&update(3, vec![file("r/syn/z.xml", "z")], false));
        s.reconnected();
        let again = s.pushes();
        assert_eq!(
            again[0].base_revision, 0,
            "a join again, not a partial manifest"
        );
        assert!(
            FolderSync::new(&r.config.state_dir, Arc::default())
                .load("gw-1")
                .is_none(),
            "never saved"
        );
    }
}
