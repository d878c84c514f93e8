//! One task per managed service of the held spec (`MachineSpec.services`).
//!
//! On a new target (or when the process is gone) the task writes the service's files, runs its
//! check — a refused configuration is put back on disk and the running process keeps the old
//! one, with the error in status — then starts the service when its pid file names no live
//! process, else reloads it (graceful). Between targets it probes through the service and
//! reports each probe, restarting the process if it died. A service that leaves the spec is
//! stopped (SIGTERM to its pid file's process).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apim_proto::v1::{ManagedService, ProbeStatus, ServiceStatus};
use tokio::sync::watch;

use crate::daemon::converge::ExecContext;
use crate::exec::service::{self, ServiceFile};

/// How long a check, start or reload may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often probes run and the process is looked at.
pub const POLL: Duration = Duration::from_millis(1000);

/// A service's target: the spec generation and the service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTarget {
    /// Machine spec generation.
    pub generation: u64,
    /// The service.
    pub spec: ManagedService,
}

/// Whether `name` is a valid service name: [a-z0-9-], 1 to 63 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Runs the service of `rx` until the sender goes (agent shutdown: the process keeps running) or
/// sends `None` (left the spec: the process is stopped).
pub async fn service_loop(
    ctx: Arc<ExecContext>,
    root: PathBuf,
    mut rx: watch::Receiver<Option<Arc<ServiceTarget>>>,
) {
    let mut applied: Option<String> = None;
    let mut last_error = String::new();
    loop {
        let target = rx.borrow_and_update().clone();
        let Some(t) = target else {
            let pid_file = service::under(&root, &last_pid_file(&ctx, &root)).ok();
            if let Some(p) = pid_file
                && let Err(e) = service::stop(&p, COMMAND_TIMEOUT).await
            {
                tracing::warn!(root = %root.display(), error = %e, "stopping a service that left the spec");
            }
            return;
        };
        let pid_file = match service::under(&root, &t.spec.pid_file) {
            Ok(p) => p,
            Err(e) => {
                report(&ctx, &t, None, applied.as_deref(), &e, Vec::new());
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        remember_pid_file(&root, &t.spec.pid_file);
        let running = service::running_pid(&pid_file);
        if applied.as_deref() != Some(t.spec.digest.as_str()) || running.is_none() {
            match apply(&root, &pid_file, &t.spec, running.is_some()).await {
                Ok(()) => {
                    applied = Some(t.spec.digest.clone());
                    last_error.clear();
                    tracing::info!(service = %t.spec.name, digest = %t.spec.digest, "service applied");
                }
                Err(e) => {
                    tracing::warn!(service = %t.spec.name, error = %e, "service not applied");
                    last_error = e;
                }
            }
        }
        let probes = probe_all(&t.spec).await;
        let pid = service::running_pid(&pid_file);
        report(&ctx, &t, pid, applied.as_deref(), &last_error, probes);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Writes, checks, and starts or reloads; a refused configuration is put back.
async fn apply(
    root: &Path,
    pid_file: &Path,
    spec: &ManagedService,
    running: bool,
) -> Result<(), String> {
    let files: Vec<ServiceFile> = spec
        .files
        .iter()
        .map(|f| ServiceFile {
            path: f.path.clone(),
            content: f.content.clone().into_bytes(),
            mode: f.mode,
        })
        .collect();
    let (root2, dirs) = (root.to_path_buf(), spec.dirs.clone());
    let (_, previous) =
        tokio::task::spawn_blocking(move || service::write_files(&root2, &dirs, &files))
            .await
            .map_err(|e| e.to_string())??;
    if let Err(e) = service::run(root, &spec.check_argv, COMMAND_TIMEOUT).await {
        let kept = if running {
            "; the running configuration is kept"
        } else {
            ""
        };
        service::restore(previous)?;
        return Err(format!("check refused the configuration{kept}: {e}"));
    }
    if running {
        service::run(root, &spec.reload_argv, COMMAND_TIMEOUT).await
    } else {
        service::run(root, &spec.start_argv, COMMAND_TIMEOUT).await?;
        service::wait_running(pid_file, COMMAND_TIMEOUT)
            .await
            .map(drop)
    }
}

async fn probe_all(spec: &ManagedService) -> Vec<ProbeStatus> {
    let mut out = Vec::new();
    for p in &spec.probes {
        let (ok, detail) = match service::probe(&p.url, &p.connect, &p.ca_pem, PROBE_TIMEOUT).await
        {
            Ok(status) => {
                let ok = if p.expect_status == 0 {
                    status < 500
                } else {
                    u32::from(status) == p.expect_status
                };
                (ok, format!("HTTP {status}"))
            }
            Err(e) => (false, e),
        };
        out.push(ProbeStatus {
            name: p.name.clone(),
            ok,
            detail,
        });
    }
    out
}

fn report(
    ctx: &ExecContext,
    t: &ServiceTarget,
    pid: Option<i32>,
    applied: Option<&str>,
    error: &str,
    probes: Vec<ProbeStatus>,
) {
    ctx.board.set_service(ServiceStatus {
        name: t.spec.name.clone(),
        generation: t.generation,
        running: pid.is_some(),
        pid: pid.and_then(|p| u32::try_from(p).ok()),
        digest: applied.unwrap_or_default().to_string(),
        last_error: error.to_string(),
        probes,
    });
}

/// The pid file of a service is remembered next to its root, so a service that left the spec
/// can still be stopped after an agent restart.
fn remember_pid_file(root: &Path, rel: &str) {
    let marker = root.join(".apimctl-pid-file");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(rel) {
        let _ = apim_atomic::write_atomic(&marker, rel.as_bytes(), 0o644);
    }
}

fn last_pid_file(_ctx: &ExecContext, root: &Path) -> String {
    std::fs::read_to_string(root.join(".apimctl-pid-file")).unwrap_or_default()
}
