//! The steps about the node's process: stop_requested, adopt_or_restart, start (and the wait
//! for readiness), and stopping a node that left the spec.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apim_proto::v1::{NodePhase, NodeSpec};

use super::{
    DEFAULT_READY_TIMEOUT, NodeExecutor, NodeTarget, Observed, Outcome, live_pid, rel_path,
    timeout_of,
};
use crate::daemon::error::{DaemonError, DaemonResult, OnNode};
use crate::daemon::report::Update;
use crate::exec::health::{
    self, HttpProbe, LogProbe, ProcessProbe, ReadinessOutcome, ReadinessSpec, TcpProbe,
};
use crate::exec::process::{self, Server, StartOutcome, StartSpec, StopSpec, TokioRunner};

impl NodeExecutor {
    /// Step 2: `desired = STOPPED` — a running node is stopped gracefully; the files stay.
    pub(super) async fn stop_requested(
        &mut self,
        t: &NodeTarget,
        node: &mut Observed,
    ) -> DaemonResult<Outcome> {
        if node.pid.is_some() {
            self.report(t.generation, NodePhase::Stopping, "stopping");
            self.stop(&t.spec, node.server()).await?;
        }
        self.stop_earlier_installs(t, node).await?;
        self.report_process(None, self.rec.applied_digest.as_deref().unwrap_or(""));
        self.report(t.generation, NodePhase::Stopped, "stopped on request");
        Ok(Outcome::Stopped)
    }

    /// Step 11: a node running this configuration is kept — reported healthy when this agent
    /// saw it healthy, checked for readiness (not restarted) when an earlier agent run started
    /// it. A node running another configuration is stopped. `None`: it must be started.
    pub(super) async fn adopt_or_restart(
        &mut self,
        t: &NodeTarget,
        node: &mut Observed,
        cancel: impl Future<Output = ()>,
    ) -> DaemonResult<Option<Outcome>> {
        let Some(pid) = node.pid else {
            return Ok(None);
        };
        let digest = t.spec.config_digest.as_str();
        if self.rec.applied_digest.as_deref() == Some(digest) {
            if self.healthy_digest.as_deref() == Some(digest) {
                self.report_process(Some(pid), digest);
                self.report(t.generation, NodePhase::Healthy, "running");
                return Ok(Some(Outcome::Healthy { pid }));
            }
            self.report(
                t.generation,
                NodePhase::Starting,
                "adopting the running node",
            );
            let ready = self.wait_ready(t, node.server(), None, pid, cancel).await?;
            return Ok(Some(ready));
        }
        self.report(
            t.generation,
            NodePhase::Stopping,
            "restarting for a new configuration",
        );
        self.stop(&t.spec, node.server()).await?;
        node.pid = None;
        Ok(None)
    }

    /// Step 12: record the digest, start the server, wait until it is ready.
    pub(super) async fn start(
        &mut self,
        t: &NodeTarget,
        node: &Observed,
        cancel: impl Future<Output = ()>,
    ) -> DaemonResult<Outcome> {
        let spec = &t.spec;
        let server = node.server();
        let start = spec.start.as_ref().ok_or_else(|| DaemonError::BadSpec {
            node: self.name.clone(),
            reason: "no start command".into(),
        })?;
        let log_path = self.readiness_log(spec, &node.home)?;
        let offset = log_path.as_deref().map(health::log_offset);
        self.report(t.generation, NodePhase::Starting, start.argv.join(" "));
        let mut s = StartSpec::new(server.clone(), start.argv.clone(), &spec.java_home);
        s.env = Self::env(spec, &server.home);
        s.run_as = Self::run_as_user(spec);
        if start.timeout_s > 0 {
            s.script_timeout = Duration::from_secs(u64::from(start.timeout_s));
        }
        // Recorded BEFORE the start: an agent killed right after the server started must find
        // the digest it runs, or its successor would restart a healthy server; and how to stop
        // it, for a later spec with another home. Recording it first is harmless: with no live
        // process the next converge starts one anyway.
        let mut rec = self.rec.clone();
        rec.applied_digest = Some(spec.config_digest.clone());
        rec.server = Self::server_record(spec, &server.home);
        self.set_record(rec)?;
        self.write_start_files(spec, &server.home)?;
        let outcome = process::start(&TokioRunner, &s).await.on(&self.name);
        let pid = match outcome {
            Ok(StartOutcome::Started { pid, .. }) => pid,
            Ok(StartOutcome::AlreadyRunning { pid }) => {
                self.remove_start_files(spec, &server.home);
                pid
            }
            Err(e) => {
                self.remove_start_files(spec, &server.home);
                return Err(e);
            }
        };
        self.report_process(Some(pid), &spec.config_digest);
        self.step(format!("started (pid {pid}); waiting for readiness"));
        let ready = self
            .wait_ready(t, server, log_path.zip(offset), pid, cancel)
            .await;
        self.remove_start_files(spec, &server.home);
        ready
    }

    /// The log file the readiness check reads, when the spec asks for a log line: an empty
    /// `log_file` or `log_line` disables the check.
    pub(super) fn readiness_log(
        &self,
        spec: &NodeSpec,
        home: &Path,
    ) -> DaemonResult<Option<PathBuf>> {
        let Some(r) = spec
            .readiness
            .as_ref()
            .filter(|r| !r.log_file.is_empty() && !r.log_line.is_empty())
        else {
            return Ok(None);
        };
        Ok(Some(home.join(rel_path(
            &self.name,
            "readiness.log_file",
            &r.log_file,
        )?)))
    }

    /// Waits until every readiness probe of the spec passes (the log line only after the
    /// start's `log` offset), the server dies, the deadline passes or `cancel` completes.
    async fn wait_ready(
        &mut self,
        t: &NodeTarget,
        server: &Server,
        log: Option<(PathBuf, u64)>,
        pid: i32,
        cancel: impl Future<Output = ()>,
    ) -> DaemonResult<Outcome> {
        let spec = &t.spec;
        let r = spec.readiness.clone().unwrap_or_default();
        let host = if r.address.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            r.address.clone()
        };
        let mut tcp = Vec::new();
        for p in &r.tcp_ports {
            let port = u16::try_from(*p).map_err(|_| DaemonError::BadSpec {
                node: self.name.clone(),
                reason: format!("readiness port {p} out of range"),
            })?;
            tcp.push(TcpProbe {
                host: host.clone(),
                port,
            });
        }
        let rs = ReadinessSpec {
            log: log.map(|(path, start_offset)| LogProbe {
                path,
                needle: r.log_line.clone(),
                start_offset,
            }),
            tcp,
            http: r
                .http_urls
                .iter()
                .map(|h| HttpProbe {
                    url: h.url.clone(),
                    expect_status: u16::try_from(h.expect_status).unwrap_or(200),
                    expect_body: h.expect_body.clone(),
                })
                .collect(),
            process: Some(ProcessProbe {
                server: server.clone(),
            }),
            attempt_timeout: Duration::ZERO,
        };
        let report =
            health::wait_ready(&rs, timeout_of(r.timeout_s, DEFAULT_READY_TIMEOUT), cancel)
                .await
                .on(&self.name)?;
        match report.outcome {
            ReadinessOutcome::Ready => {
                self.healthy_digest = Some(spec.config_digest.clone());
                self.ctx.board.update(
                    &self.name,
                    Update {
                        last_error: Some(String::new()),
                        ..Update::default()
                    },
                );
                self.report_process(Some(pid), &spec.config_digest);
                self.report(
                    t.generation,
                    NodePhase::Healthy,
                    format!("ready after {:.1} s", report.elapsed.as_secs_f64()),
                );
                Ok(Outcome::Healthy { pid })
            }
            ReadinessOutcome::Cancelled => Ok(Outcome::Superseded),
            _ => {
                self.report_process(live_pid(server), &spec.config_digest);
                Err(DaemonError::NotReady {
                    node: self.name.clone(),
                    report: report.to_string(),
                })
            }
        }
    }

    /// Stops the node's server: its stop script, then signals ([`process::stop`]).
    pub(super) async fn stop(&mut self, spec: &NodeSpec, server: &Server) -> DaemonResult<()> {
        self.healthy_digest = None;
        let out = process::stop(&TokioRunner, &self.stop_spec(spec, server))
            .await
            .on(&self.name)?;
        tracing::info!(node = %self.name, outcome = ?out, "node stopped");
        self.report_process(None, self.rec.applied_digest.as_deref().unwrap_or(""));
        Ok(())
    }

    /// Stops the node (it left the spec), and any server of an earlier install of it; used by
    /// the machine worker.
    pub async fn stop_for_removal(&mut self, spec: &NodeSpec) -> DaemonResult<()> {
        let home = self.home(spec)?;
        for e in self.earlier_servers(spec, &home) {
            process::stop(&TokioRunner, &e.stop).await.on(&self.name)?;
        }
        let Some(server) = self.server(spec, &home)? else {
            return Ok(());
        };
        if live_pid(&server).is_some() {
            self.stop(spec, &server).await?;
        }
        Ok(())
    }

    /// Removes every tree the node's record names (current, previous, retired; only real
    /// directories inside the install root, see [`crate::exec::cleanup`]) and then the record
    /// itself: for a node that left the spec, once stopped, and for a destroy. A file system
    /// mounted in a tree (a shared folder) is unmounted first; one that will not unmount keeps
    /// its tree (nothing is deleted through it). Returns what could not be removed (the record
    /// stays while a tree does).
    pub async fn remove_installed(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for home in self.rec.installed_trees() {
            if let Err(e) = crate::exec::mount::unmount_under(&home).await {
                errors.push(format!("{}: {} is kept: {e}", self.name, home.display()));
                continue;
            }
            match crate::exec::cleanup::remove_installed_tree(&self.ctx.config.install_root, &home)
            {
                Ok(was) => {
                    tracing::info!(node = %self.name, home = %home.display(), removed = was, "installed tree removed");
                }
                Err(e) => errors.push(format!("{}: {e}", self.name)),
            }
        }
        if errors.is_empty() {
            let file = self
                .ctx
                .config
                .nodes_dir()
                .join(format!("{}.json", self.name));
            match std::fs::remove_file(&file) {
                Ok(()) => self.rec = super::NodeRecord::default(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing {}: {e}", file.display())),
            }
        }
        errors
    }

    pub(super) fn stop_spec(&self, spec: &NodeSpec, server: &Server) -> StopSpec {
        let argv = spec
            .stop
            .as_ref()
            .map(|s| s.argv.clone())
            .unwrap_or_default();
        let mut s = StopSpec::new(
            server.clone(),
            argv,
            &spec.java_home,
            self.ctx.config.timings.stop_grace,
        );
        s.env = Self::env(spec, &server.home);
        s.run_as = Self::run_as_user(spec);
        if let Some(t) = spec.stop.as_ref().map(|s| s.timeout_s).filter(|t| *t > 0) {
            s.script_timeout = Duration::from_secs(u64::from(t));
        }
        s
    }
}
