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
use std::time::{Duration, Instant};

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
                report(&ctx, &t, None, applied.as_deref(), &e, Vec::new(), None);
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
        let probed = Instant::now();
        let probes = probe_all(&t.spec).await;
        let pid = service::running_pid(&pid_file);
        report(
            &ctx,
            &t,
            pid,
            applied.as_deref(),
            &last_error,
            probes,
            Some(probed),
        );
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
    probed: Option<Instant>,
) {
    ctx.board.set_service(
        ServiceStatus {
            name: t.spec.name.clone(),
            generation: t.generation,
            running: pid.is_some(),
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            digest: applied.unwrap_or_default().to_string(),
            last_error: error.to_string(),
            probes,
            probed_ms_ago: None,
            probed_at_ms: None,
        },
        probed,
    );
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

#[cfg(test)]
mod tests {
    //! The service loop against a real process: a small script that checks its configuration
    //! file, starts a long-running child that writes a pid file, and on reload records which
    //! configuration is live.

    use std::path::Path;

    use apim_certs::tls::ControllerEndpoint;
    use apim_proto::v1::{ServiceFile as WireFile, ServiceProbe};

    use super::*;
    use crate::daemon::config::AgentConfig;
    use crate::daemon::fetch::Fetcher;
    use crate::daemon::report::StatusBoard;
    use crate::exec::unpack::UnpackLimits;

    const SCRIPT: &str = r#"case "$1" in
check) grep -q '^good' conf/app.conf || { echo "conf/app.conf: not good" >&2; exit 1; } ;;
start) cp conf/app.conf live.conf; sleep 600 >/dev/null 2>&1 & echo $! > run/app.pid ;;
reload) cp conf/app.conf live.conf ;;
esac
"#;

    fn ctx(dir: &Path) -> Arc<ExecContext> {
        let endpoint = ControllerEndpoint::parse("127.0.0.1:1").expect("endpoint");
        let mut config = AgentConfig::new(endpoint, "vm-1");
        config.state_dir = dir.join("state");
        config.install_root = dir.join("root");
        Arc::new(ExecContext {
            fetcher: Arc::new(Fetcher::new(config.cache_dir(), None, 1)),
            config,
            board: Arc::new(StatusBoard::new()),
            limits: UnpackLimits::default(),
        })
    }

    fn target(generation: u64, conf: &str, probe_port: u16) -> Arc<ServiceTarget> {
        let argv = |verb: &str| vec!["/bin/sh".to_string(), "svc.sh".into(), verb.into()];
        let mut spec = ManagedService {
            name: "app".into(),
            root: "/srv/app".into(),
            files: vec![
                WireFile {
                    path: "conf/app.conf".into(),
                    content: conf.into(),
                    mode: 0o644,
                    secret: false,
                },
                WireFile {
                    path: "svc.sh".into(),
                    content: SCRIPT.into(),
                    mode: 0o755,
                    secret: false,
                },
            ],
            dirs: vec!["run".into()],
            check_argv: argv("check"),
            start_argv: argv("start"),
            reload_argv: argv("reload"),
            pid_file: "run/app.pid".into(),
            probes: vec![ServiceProbe {
                name: "web".into(),
                url: "http://app.example/".into(),
                connect: format!("127.0.0.1:{probe_port}"),
                ca_pem: String::new(),
                expect_status: 0,
            }],
            digest: String::new(),
        };
        spec.digest = format!("digest-of-{conf}");
        Arc::new(ServiceTarget { generation, spec })
    }

    /// Polls the board until `cond` holds on the service's status (10 s failure guard).
    async fn wait(
        ctx: &ExecContext,
        what: &str,
        cond: impl Fn(&ServiceStatus) -> bool,
    ) -> ServiceStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = ctx
                .board
                .snapshot()
                .services
                .into_iter()
                .find(|s| s.name == "app");
            if let Some(s) = s.filter(|s| cond(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                ctx.board.snapshot().services
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_reloads_keeps_the_running_config_on_a_refused_check_restarts_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = ctx(dir.path());
        let root = ctx.config.rooted("app", "/srv/app").expect("rooted");
        // A closed port: the probe reports why it was not served.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (tx, rx) = watch::channel(Some(target(1, "good 1", port)));
        let task = tokio::spawn(service_loop(Arc::clone(&ctx), root.clone(), rx));

        // Started from the written files; the probe through it fails honestly.
        let s = wait(&ctx, "started", |s| {
            s.running && s.digest == "digest-of-good 1"
        })
        .await;
        let pid = s.pid.expect("a pid");
        assert_eq!(
            std::fs::read_to_string(root.join("live.conf")).unwrap(),
            "good 1"
        );
        assert_eq!(s.generation, 1);
        assert_eq!(s.probes.len(), 1);
        assert!(
            !s.probes[0].ok && s.probes[0].detail.contains("connect"),
            "{:?}",
            s.probes
        );

        // A new configuration: checked, then reloaded in the same process.
        tx.send_replace(Some(target(2, "good 2", port)));
        let s = wait(&ctx, "reloaded", |s| s.digest == "digest-of-good 2").await;
        assert_eq!(s.pid, Some(pid), "a reload keeps the process");
        assert_eq!(
            std::fs::read_to_string(root.join("live.conf")).unwrap(),
            "good 2"
        );
        assert!(s.last_error.is_empty(), "{s:?}");

        // A refused configuration: the error is reported, the old one stays on disk and live.
        tx.send_replace(Some(target(3, "bad 3", port)));
        let s = wait(&ctx, "the check's refusal", |s| !s.last_error.is_empty()).await;
        assert!(
            s.last_error
                .contains("check refused the configuration; the running configuration is kept"),
            "{}",
            s.last_error
        );
        assert!(
            s.last_error.contains("conf/app.conf: not good"),
            "{}",
            s.last_error
        );
        assert_eq!(s.digest, "digest-of-good 2");
        assert_eq!(s.pid, Some(pid));
        assert_eq!(
            std::fs::read_to_string(root.join("conf/app.conf")).unwrap(),
            "good 2"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("live.conf")).unwrap(),
            "good 2"
        );

        // Its process dies: started again with the configuration it is given.
        tx.send_replace(Some(target(4, "good 4", port)));
        wait(&ctx, "good 4 live", |s| s.digest == "digest-of-good 4").await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let s = wait(&ctx, "started again", |s| {
            s.running && s.pid.is_some_and(|p| p != pid)
        })
        .await;
        let pid2 = s.pid.unwrap();

        // It leaves the spec: stopped.
        tx.send_replace(None);
        task.await.unwrap();
        assert!(
            !crate::exec::process::pid_alive(i32::try_from(pid2).unwrap()),
            "stopped"
        );
    }

    #[test]
    fn paths_stay_inside_the_root_and_names_are_checked() {
        let root = Path::new("/r");
        assert_eq!(
            service::under(root, "conf/a").unwrap(),
            Path::new("/r/conf/a")
        );
        for bad in ["/etc/passwd", "../x", "conf/../../x", ""] {
            assert!(service::under(root, bad).is_err(), "{bad:?}");
        }
        assert!(valid_name("load-balancer"));
        for bad in ["", "Load", "a/b", "a b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
