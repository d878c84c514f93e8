//! The steps that prepare an installed tree: optimize_once, configure, certificates.

use std::os::unix::fs::PermissionsExt;

use std::path::Path;

use apim_proto::v1::{NodeFile, NodePhase, NodeSpec};

use super::{
    DEFAULT_SCRIPT_TIMEOUT, NodeExecutor, NodeTarget, OPTIMIZED_MARKER, Observed, rel_path,
    timeout_of,
};
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::exec::process::{self, CommandSpec, ProcessRunner, TokioRunner};
use crate::exec::{drift, keystores};

/// How much of the optimizer's output a failure report quotes.
const OUTPUT_QUOTED: usize = 2000;

impl NodeExecutor {
    /// Step 7: the spec's optimizer, once per fresh tree: it is not idempotent (it rewrites
    /// the tree's configuration), so a marker file in the home says it ran.
    pub(super) async fn optimize_once(&self, t: &NodeTarget, node: &Observed) -> DaemonResult<()> {
        let spec = &t.spec;
        let Some(opt) = &spec.optimizer else {
            return Ok(());
        };
        if node.home.join(OPTIMIZED_MARKER).exists() {
            return Ok(());
        }
        self.report(t.generation, NodePhase::Optimizing, opt.argv.join(" "));
        let fail = |reason: String| DaemonError::Optimizer {
            node: self.name.clone(),
            reason,
        };
        let (first, rest) = opt
            .argv
            .split_first()
            .ok_or_else(|| fail("empty argv".into()))?;
        let program = node
            .home
            .join(rel_path(&self.name, "optimizer.argv[0]", first)?);
        let run_as = self.run_as(spec)?;
        let cmd = CommandSpec {
            program,
            args: rest.to_vec(),
            cwd: node.home.clone(),
            env: process::node_env(
                spec.java_home.as_ref(),
                &run_as,
                &Self::env(spec, &node.home),
            ),
            credentials: run_as.switch_to,
            timeout: timeout_of(opt.timeout_s, DEFAULT_SCRIPT_TIMEOUT),
        };
        let out = TokioRunner.run(&cmd).await.on(&self.name)?;
        let tail = |s: &str| {
            let skip = s.chars().count().saturating_sub(OUTPUT_QUOTED);
            s.chars().skip(skip).collect::<String>()
        };
        if !out.status.success() {
            return Err(fail(format!(
                "{}; output: {}",
                out.status,
                tail(&out.output)
            )));
        }
        if let Some(m) = opt
            .failure_markers
            .iter()
            .find(|m| out.output.contains(m.as_str()))
        {
            return Err(fail(format!(
                "its output says {m:?} (it exits 0 on failure); output: {}",
                tail(&out.output)
            )));
        }
        if let Some(m) = &opt.success_marker
            && !out.output.contains(m.as_str())
        {
            return Err(fail(format!(
                "its output lacks {m:?}; output: {}",
                tail(&out.output)
            )));
        }
        let mut writer = apim_atomic::AtomicWriter::new(0o644);
        if let Some(c) = self.run_as(spec)?.switch_to {
            writer = writer.owner(c.uid, c.gid);
        }
        writer
            .write(
                &node.home.join(OPTIMIZED_MARKER),
                format!("{}\n", opt.argv.join(" ")).as_bytes(),
            )
            .map(|_| ())
            .on(&self.name)
    }

    /// Step 9: the rendered configuration file, written only when its bytes differ: mode 0600
    /// and owned by the run-as user, as it holds the cluster's secrets.
    pub(super) fn configure(&self, t: &NodeTarget, node: &Observed) -> DaemonResult<()> {
        let spec = &t.spec;
        let rel = rel_path(
            &self.name,
            "deployment_toml_path",
            &spec.deployment_toml_path,
        )?;
        let path = node.home.join(rel);
        let current = std::fs::read(&path).ok();
        if current.as_deref() != Some(spec.deployment_toml.as_bytes()) {
            self.report(
                t.generation,
                NodePhase::Configuring,
                "writing deployment.toml",
            );
            let mut writer = apim_atomic::AtomicWriter::new(0o600);
            if let Some(c) = self.run_as(spec)?.switch_to {
                writer = writer.owner(c.uid, c.gid);
            }
            writer
                .write(&path, spec.deployment_toml.as_bytes())
                .on(&self.name)?;
        } else {
            let mode = std::fs::metadata(&path)
                .map_err(|e| DaemonError::io("stat", &path, e))?
                .permissions()
                .mode();
            if mode & 0o777 != 0o600 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| DaemonError::io("chmod 0600", &path, e))?;
            }
        }
        Ok(())
    }

    /// With step 9: the spec's other files written with the configuration (not those for each
    /// start), each only when its bytes differ; 0600 when secret, else 0644; owned by the run-as
    /// user.
    pub(super) fn write_config_files(&self, t: &NodeTarget, node: &Observed) -> DaemonResult<()> {
        for f in t.spec.files.iter().filter(|f| !f.before_each_start) {
            self.write_file_at(&t.spec, &node.home, f, true)?;
        }
        Ok(())
    }

    /// The spec's files the server consumes at start (the secure vault's password file),
    /// written right before each start.
    pub(super) fn write_start_files(&self, spec: &NodeSpec, home: &Path) -> DaemonResult<()> {
        for f in spec.files.iter().filter(|f| f.before_each_start) {
            self.write_file_at(spec, home, f, false)?;
        }
        Ok(())
    }

    /// Removes what is left of the start files once the start is over: the server deletes
    /// them when it reads them; one it did not read must not stay on disk (it holds a secret).
    pub(super) fn remove_start_files(&self, spec: &NodeSpec, home: &Path) {
        for f in spec.files.iter().filter(|f| f.before_each_start) {
            if let Ok(rel) = rel_path(&self.name, "files.path", &f.path) {
                let path = home.join(rel);
                if path.exists() {
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(node = %self.name, path = %path.display(), error = %e,
                            "could not remove a start file the server left");
                    } else {
                        tracing::info!(node = %self.name, path = %path.display(),
                            "removed a start file the server did not consume");
                    }
                }
            }
        }
    }

    fn write_file_at(
        &self,
        spec: &NodeSpec,
        home: &Path,
        f: &NodeFile,
        only_if_changed: bool,
    ) -> DaemonResult<()> {
        let path = home.join(rel_path(&self.name, "files.path", &f.path)?);
        if only_if_changed && std::fs::read(&path).ok().as_deref() == Some(f.content.as_bytes()) {
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            self.create_dir_owned(spec, dir)?;
        }
        let mut writer = apim_atomic::AtomicWriter::new(if f.secret { 0o600 } else { 0o644 });
        if let Some(c) = self.run_as(spec)?.switch_to {
            writer = writer.owner(c.uid, c.gid);
        }
        writer.write(&path, f.content.as_bytes()).on(&self.name)?;
        Ok(())
    }

    /// Step 10: the keystores, written (and handed to the run-as user) only when their spec's
    /// digest differs from the one recorded or a store on disk is not the one written (its
    /// sha256 is recorded after each write).
    pub(super) async fn certificates(
        &mut self,
        t: &NodeTarget,
        node: &Observed,
    ) -> DaemonResult<()> {
        let Some(ks) = t.spec.keystores.clone() else {
            return Ok(());
        };
        let digest = keystores::keystores_digest(&ks);
        if self.rec.keystores_digest.as_deref() == Some(digest.as_str())
            && self.stores_intact(&node.home)
        {
            return Ok(());
        }
        self.report(t.generation, NodePhase::Certificates, "writing keystores");
        let home = node.home.clone();
        let owner = self.run_as(&t.spec)?.switch_to.map(|c| (c.uid, c.gid));
        let stores = tokio::task::spawn_blocking(move || {
            keystores::write_keystores_blocking(&home, &ks)?;
            if let Some((uid, gid)) = owner {
                keystores::chown_stores(&home, &ks, uid, gid)?;
            }
            Ok::<_, crate::exec::ExecError>(
                keystores::written_stores(&ks)
                    .into_iter()
                    .filter_map(|rel| {
                        drift::sha256_file(&home.join(rel)).map(|sha| (rel.to_owned(), sha))
                    })
                    .collect(),
            )
        })
        .await
        .map_err(|source| DaemonError::Join {
            op: "keystores",
            source,
        })?
        .on(&self.name)?;
        let mut rec = self.rec.clone();
        rec.keystores_digest = Some(digest);
        rec.stores = stores;
        self.set_record(rec)
    }

    /// Whether every store the agent wrote still has the bytes it wrote.
    pub(super) fn stores_intact(&self, home: &Path) -> bool {
        self.rec
            .stores
            .iter()
            .all(|(rel, sha)| drift::sha256_file(&home.join(rel)).as_deref() == Some(sha.as_str()))
    }
}
