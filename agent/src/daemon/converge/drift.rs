//! Drift: a node settled on its target, checked against what the agent wrote for it.
//!
//! What is compared, all named by the spec (the agent knows no product file):
//!
//! | what | against | reported as |
//! | --- | --- | --- |
//! | `deployment_toml_path` | the spec's `deployment_toml` | its dotted keys added, removed, changed; "not valid TOML"; "missing" |
//! | each `files` entry written with the configuration | its `content` | a `.toml` file by keys (unless secret); any other, or a secret one, "changed" |
//! | each store the certificates step wrote | the sha256 recorded when it wrote it | "changed", "missing" |
//! | the installed tree | the install record and the optimizer marker | "install tree": "missing", "optimizer marker missing" |
//! | the machine's managed hosts block | the spec's `hosts_block` | "hosts block": host names added, removed, changed; "missing"; "damaged: …" |
//!
//! Never a value: [`crate::exec::drift`] returns keys and verdicts only.

use std::path::Path;

use apim_proto::v1::Drift;

use super::{NodeExecutor, NodeTarget, OPTIMIZED_MARKER, rel_path};
use crate::exec::drift::{self, KeyDiff, TomlDrift};
use crate::exec::hosts::{self, BlockDrift};

/// The pseudo-file name of the machine's managed hosts block.
pub const HOSTS_BLOCK: &str = "hosts block";
/// The pseudo-file name of the node's installed tree.
pub const INSTALL_TREE: &str = "install tree";

fn verdict(file: &str, problem: &str) -> Drift {
    Drift {
        file: file.to_owned(),
        problem: problem.to_owned(),
        ..Drift::default()
    }
}

fn with_keys(file: &str, problem: &str, k: KeyDiff) -> Drift {
    Drift {
        file: file.to_owned(),
        problem: problem.to_owned(),
        added_keys: k.added,
        removed_keys: k.removed,
        changed_keys: k.changed,
        omitted_keys: u32::try_from(k.omitted).unwrap_or(u32::MAX),
    }
}

/// A TOML file against what was written.
fn toml_file(file: &str, written: &str, path: &Path) -> Option<Drift> {
    let Ok(bytes) = std::fs::read(path) else {
        return Some(verdict(file, "missing"));
    };
    match drift::toml_keys(written, &bytes) {
        TomlDrift::Same => None,
        TomlDrift::NotToml => Some(verdict(file, "not valid TOML")),
        TomlDrift::Keys(k) if k.is_empty() => {
            Some(verdict(file, "changed (comments, spacing or order only)"))
        }
        TomlDrift::Keys(k) => Some(with_keys(file, "changed", k)),
    }
}

/// Any other file: by its bytes only.
fn opaque_file(file: &str, written: &[u8], path: &Path) -> Option<Drift> {
    match std::fs::read(path) {
        Err(_) => Some(verdict(file, "missing")),
        Ok(b) if b == written => None,
        Ok(_) => Some(verdict(file, "changed")),
    }
}

impl NodeExecutor {
    /// What differs on disk from what this agent wrote for `t` (see the module docs). Call it
    /// only for a node settled on `t`: a node mid-converge differs by design.
    pub fn drift(&self, t: &NodeTarget) -> Vec<Drift> {
        let mut out = Vec::new();
        let spec = &t.spec;
        if let Ok(home) = self.home(spec) {
            self.node_drift(t, &home, &mut out);
        }
        if let Some(d) = self.hosts_drift(t) {
            out.push(d);
        }
        out
    }

    fn node_drift(&self, t: &NodeTarget, home: &Path, out: &mut Vec<Drift>) {
        let spec = &t.spec;
        if !home.is_dir() || self.rec.home != home {
            out.push(verdict(INSTALL_TREE, "missing"));
            return;
        }
        if spec.optimizer.is_some() && !home.join(OPTIMIZED_MARKER).exists() {
            out.push(verdict(INSTALL_TREE, "optimizer marker missing"));
        }
        if let Ok(rel) = rel_path(
            &self.name,
            "deployment_toml_path",
            &spec.deployment_toml_path,
        ) {
            let file = rel.to_string_lossy();
            out.extend(toml_file(&file, &spec.deployment_toml, &home.join(&rel)));
        }
        for f in spec.files.iter().filter(|f| !f.before_each_start) {
            let Ok(rel) = rel_path(&self.name, "files.path", &f.path) else {
                continue;
            };
            let path = home.join(&rel);
            let file = rel.to_string_lossy();
            let is_toml = rel.extension().is_some_and(|e| e == "toml");
            out.extend(if is_toml && !f.secret {
                toml_file(&file, &f.content, &path)
            } else {
                opaque_file(&file, f.content.as_bytes(), &path)
            });
        }
        for (rel, sha) in &self.rec.stores {
            match drift::sha256_file(&home.join(rel)) {
                None => out.push(verdict(rel, "missing")),
                Some(now) if now != *sha => out.push(verdict(rel, "changed")),
                Some(_) => {}
            }
        }
    }

    /// The machine's managed hosts block against the spec's.
    fn hosts_drift(&self, t: &NodeTarget) -> Option<Drift> {
        let existing = match std::fs::read(&self.ctx.config.hosts_file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(_) => return Some(verdict(HOSTS_BLOCK, "unreadable")),
        };
        match hosts::block_drift(&existing, &t.hosts)? {
            BlockDrift::Missing => Some(verdict(HOSTS_BLOCK, "missing")),
            BlockDrift::Damaged(why) => Some(verdict(HOSTS_BLOCK, &format!("damaged: {why}"))),
            BlockDrift::Changed(k) if k.is_empty() => Some(verdict(
                HOSTS_BLOCK,
                "changed (comments, spacing or order only)",
            )),
            BlockDrift::Changed(k) => Some(with_keys(HOSTS_BLOCK, "changed", k)),
        }
    }

    /// Checks `settled` (the target the node is healthy on; `None`: not settled, so no drift
    /// is known) and puts the result on the board.
    pub fn refresh_drift(&self, settled: Option<&NodeTarget>) {
        let drift = settled.map(|t| self.drift(t)).unwrap_or_default();
        let before = self.ctx.board.node(&self.name).map(|s| s.drift);
        if !drift.is_empty() && before.as_ref() != Some(&drift) {
            tracing::warn!(
                node = %self.name,
                files = ?drift.iter().map(|d| d.file.as_str()).collect::<Vec<_>>(),
                "drift: files differ from what the agent wrote"
            );
        }
        self.ctx.board.update(
            &self.name,
            crate::daemon::report::Update {
                drift: Some(drift),
                ..Default::default()
            },
        );
    }
}
