//! `MachineSpec.destroy` (`apimctl destroy`): the machine gives back what the agent put on it.
//!
//! Before a destroy spec is ledgered, [`remember`] keeps the spec it replaces in
//! `<state>/destroy-from.json` (0600: a spec carries secrets), so an agent restarted half-way still
//! knows how to stop each node. Once the node tasks have ended (each stops its node on the way
//! out), [`carry_out`]:
//!
//! 1. stops every node of the remembered spec that still runs (its stop command, then signals);
//! 2. removes the tree every node record names ([`cleanup::remove_installed_tree`]: only strictly
//!    inside the install root; a file system mounted in it, a shared folder, is unmounted first,
//!    and a tree whose mount will not go is kept: nothing is deleted through a mount), then the
//!    records;
//! 3. empties the pack cache;
//! 4. forgets the shared folders' manifests;
//! 5. removes the managed hosts block;
//! 6. forgets the remembered spec.
//!
//! Every step runs even when one before it failed, and the errors come back together (the
//! remembered spec stays, so the next destroy spec or agent start tries again). The identity and
//! the ledger stay: the agent stays enrolled, and the next spec installs anew.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use apim_proto::v1::MachineSpec;

use crate::daemon::converge::{ExecContext, NodeExecutor, validate_node_name};
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::machine::StoredSpec;
use crate::exec::hosts;

/// The remembered spec's file in the state dir.
const FROM_FILE: &str = "destroy-from.json";

fn from_path(state_dir: &Path) -> PathBuf {
    state_dir.join(FROM_FILE)
}

fn read_from(state_dir: &Path) -> DaemonResult<Option<MachineSpec>> {
    let path = from_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: StoredSpec =
                serde_json::from_slice(&bytes).map_err(|e| DaemonError::Config {
                    reason: format!("{}: {e}", path.display()),
                })?;
            stored.decode().map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DaemonError::io("read", &path, e)),
    }
}

/// Whether a destroy was begun and not finished.
pub fn pending(state_dir: &Path) -> bool {
    from_path(state_dir).exists()
}

/// Keeps the nodes of `held` (the spec a destroy spec replaces), merged with those an unfinished
/// destroy kept before; a held destroy spec adds nothing.
pub fn remember(state_dir: &Path, held: Option<&StoredSpec>) -> DaemonResult<()> {
    let Some(held) = held else { return Ok(()) };
    let spec = held.decode()?;
    if spec.destroy {
        return Ok(());
    }
    let mut nodes = read_from(state_dir)?.map(|s| s.nodes).unwrap_or_default();
    for n in &spec.nodes {
        nodes.retain(|o| o.name != n.name);
        nodes.push(n.clone());
    }
    let keep = MachineSpec { nodes, ..spec };
    let bytes =
        serde_json::to_vec(&StoredSpec::from_spec(&keep)).map_err(|e| DaemonError::Config {
            reason: format!("serialising the spec to destroy: {e}"),
        })?;
    crate::daemon::fetch::create_private_dir(state_dir)?;
    apim_atomic::write_atomic(&from_path(state_dir), &bytes, 0o600).on("machine")?;
    Ok(())
}

/// Forgets an unfinished destroy (a new spec replaced it).
pub fn forget(state_dir: &Path) {
    let path = from_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::warn!("a destroy was not finished; the new spec replaces it"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot remove"),
    }
}

/// Every node record in the state dir: (node, its file).
fn records(ctx: &ExecContext) -> DaemonResult<Vec<(String, PathBuf)>> {
    let dir = ctx.config.nodes_dir();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DaemonError::io("list node records", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let p = entry
            .map_err(|e| DaemonError::io("list node records", &dir, e))?
            .path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"));
        if let Some(name) = name.filter(|n| validate_node_name(n).is_ok()) {
            out.push((name.to_owned(), p.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// Carries out the destroy (see the module docs); the node tasks must have ended.
pub async fn carry_out(ctx: &Arc<ExecContext>) -> Result<(), String> {
    let state_dir = &ctx.config.state_dir;
    let mut errors: Vec<String> = Vec::new();
    let note = |errors: &mut Vec<String>, what: String| {
        tracing::error!(error = %what, "destroy");
        errors.push(what);
    };
    // 1. Stop what still runs, as the remembered spec says to.
    let from = match read_from(state_dir) {
        Ok(s) => s.map(|s| s.nodes).unwrap_or_default(),
        Err(e) => {
            note(&mut errors, e.to_string());
            Vec::new()
        }
    };
    for node in &from {
        let stopped = match NodeExecutor::load(&node.name, Arc::clone(ctx)) {
            Ok(mut exec) => exec.stop_for_removal(node).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stopped {
            note(&mut errors, format!("stopping {}: {e}", node.name));
        }
    }
    // 2. The trees the records name, then the records.
    match records(ctx) {
        Ok(records) => {
            for (name, _) in records {
                match NodeExecutor::load(&name, Arc::clone(ctx)) {
                    Ok(mut exec) => {
                        for e in exec.remove_installed().await {
                            note(&mut errors, e);
                        }
                    }
                    Err(e) => note(&mut errors, format!("{name}: {e}")),
                }
            }
        }
        Err(e) => note(&mut errors, e.to_string()),
    }
    // 3. The pack cache.
    match ctx.fetcher.clear() {
        Ok(n) => tracing::info!(files = n, "pack cache emptied"),
        Err(e) => note(&mut errors, e.to_string()),
    }
    // 4. What the agent knew of shared folders (their trees are gone).
    let folders = state_dir.join(crate::daemon::folders::STATE_DIR);
    if let Err(e) = std::fs::remove_dir_all(&folders)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        note(&mut errors, format!("removing {}: {e}", folders.display()));
    }
    // 5. The hosts block.
    if let Err(e) = hosts::apply(&ctx.config.hosts_file, &[]) {
        note(
            &mut errors,
            format!("removing the managed hosts block: {e}"),
        );
    }
    if errors.is_empty() {
        // 6. Done: nothing left to remember.
        let path = from_path(state_dir);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            note(&mut errors, format!("removing {}: {e}", path.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use apim_certs::tls::ControllerEndpoint;
    use apim_proto::v1::{ArtifactRef, HostsEntry, NodeSpec, ServerProcess};

    use super::*;
    use crate::daemon::config::AgentConfig;
    use crate::daemon::converge::NodeRecord;
    use crate::daemon::fetch::Fetcher;
    use crate::daemon::report::StatusBoard;
    use crate::exec::unpack::UnpackLimits;

    fn ctx(dir: &Path) -> Arc<ExecContext> {
        let endpoint = ControllerEndpoint::parse("127.0.0.1:1").expect("endpoint");
        let mut config = AgentConfig::new(endpoint, "vm-1");
        config.state_dir = dir.join("state");
        config.install_root = dir.join("root");
        config.hosts_file = dir.join("hosts");
        Arc::new(ExecContext {
            fetcher: Arc::new(Fetcher::new(config.cache_dir(), None, 1)),
            config,
            board: Arc::new(StatusBoard::new()),
            limits: UnpackLimits::default(),
        })
    }

    fn node(name: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            pack: Some(ArtifactRef {
                sha256: "ab".repeat(32),
                top_dir: "product-1.0".into(),
                ..ArtifactRef::default()
            }),
            install_dir: format!("/opt/app/{name}"),
            process: Some(ServerProcess {
                pid_file: "server.pid".into(),
                main_class: "app.Main".into(),
                home_arg_prefix: "-Dapp.home=".into(),
                home_env: "APP_HOME".into(),
            }),
            ..NodeSpec::default()
        }
    }

    /// An installed node: its tree under the install root and its record.
    fn installed(ctx: &ExecContext, name: &str) -> PathBuf {
        let home = ctx
            .config
            .install_root
            .join(format!("opt/app/{name}/product-1.0"));
        std::fs::create_dir_all(home.join("logs")).unwrap();
        std::fs::write(home.join("logs/server.log"), "x\n").unwrap();
        record(ctx, name, &home);
        home
    }

    fn record(ctx: &ExecContext, name: &str, home: &Path) {
        let rec = NodeRecord {
            pack_sha256: "ab".repeat(32),
            home: home.to_path_buf(),
            ..NodeRecord::default()
        };
        std::fs::create_dir_all(ctx.config.nodes_dir()).unwrap();
        std::fs::write(
            ctx.config.nodes_dir().join(format!("{name}.json")),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
    }

    fn held(nodes: Vec<NodeSpec>) -> StoredSpec {
        StoredSpec::from_spec(&MachineSpec {
            machine: "vm-1".into(),
            generation: 4,
            hosts_block: vec![HostsEntry {
                address: "10.0.0.1".into(),
                names: vec!["n1.test".into()],
            }],
            nodes,
            ..MachineSpec::default()
        })
    }

    #[tokio::test]
    async fn everything_the_agent_put_there_goes_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let state = &ctx.config.state_dir;
        let n1 = installed(&ctx, "n1");
        // A node that left the spec earlier: only its record remains to name its tree.
        let old = installed(&ctx, "old");
        let foreign = ctx.config.install_root.join("opt/app/other-tool/data.txt");
        std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
        std::fs::write(&foreign, "not ours").unwrap();
        std::fs::create_dir_all(ctx.config.cache_dir()).unwrap();
        std::fs::write(
            ctx.config
                .cache_dir()
                .join(format!("{}.zip", "ab".repeat(32))),
            "zip",
        )
        .unwrap();
        std::fs::write(&ctx.config.hosts_file, "127.0.0.1 localhost\n").unwrap();
        hosts::apply(
            &ctx.config.hosts_file,
            &[hosts::HostsEntry::new([10, 0, 0, 1].into(), ["n1.test"])],
        )
        .unwrap();
        remember(state, Some(&held(vec![node("n1")]))).unwrap();
        assert!(pending(state));
        let manifests = state.join(crate::daemon::folders::STATE_DIR);
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(manifests.join("n1.json"), "{}").unwrap();

        carry_out(&ctx).await.expect("destroyed");
        assert!(
            !manifests.exists(),
            "the shared folders' manifests are forgotten"
        );
        assert!(!n1.exists() && !old.exists(), "installed trees removed");
        assert!(!ctx.config.install_root.join("opt/app/n1").exists());
        assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "not ours");
        assert_eq!(
            std::fs::read_dir(ctx.config.nodes_dir()).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(ctx.config.cache_dir()).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_to_string(&ctx.config.hosts_file).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert!(!pending(state), "done: nothing left to remember");
        carry_out(&ctx)
            .await
            .expect("a second destroy has nothing to do");
    }

    #[tokio::test]
    async fn a_record_naming_a_tree_outside_the_root_fails_and_the_destroy_stays_pending() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let state = &ctx.config.state_dir;
        let outside = dir.path().join("elsewhere/tree");
        std::fs::create_dir_all(&outside).unwrap();
        record(&ctx, "n1", &outside);
        remember(state, Some(&held(vec![node("n1")]))).unwrap();
        let e = carry_out(&ctx).await.unwrap_err();
        assert!(e.contains("not inside the agent's install root"), "{e}");
        assert!(outside.exists(), "nothing outside the root is removed");
        assert!(pending(state), "kept for the next try");
    }

    #[test]
    fn an_unfinished_destroy_keeps_every_node_it_was_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        remember(state, Some(&held(vec![node("n1"), node("n2")]))).unwrap();
        // A newer spec replaced n2 by n3 before the destroy was finished; then a destroy again.
        remember(state, Some(&held(vec![node("n1"), node("n3")]))).unwrap();
        let kept: Vec<String> = read_from(state)
            .unwrap()
            .unwrap()
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(kept, ["n2", "n1", "n3"]);
        // A held destroy spec adds nothing.
        let mut destroy = held(Vec::new()).decode().unwrap();
        destroy.destroy = true;
        remember(state, Some(&StoredSpec::from_spec(&destroy))).unwrap();
        assert_eq!(read_from(state).unwrap().unwrap().nodes.len(), 3);
        forget(state);
        assert!(!pending(state));
    }
}
