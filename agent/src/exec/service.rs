//! A managed service's OS effects (`MachineSpec.services`): its files written atomically under
//! its root (kept or put back whole, so the disk holds what runs), its argv run in its root with
//! a bounded time and the output kept for the error, its pid file read, its process signalled,
//! and an HTTP probe through it that verifies the answer's certificate against a given CA.
//!
//! Nothing here knows what the service is: every path, argv and URL comes from the spec. Errors
//! are text for the service's status (they reach the operator as the service's last error).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::exec::health::{parse_url, send_get};
use crate::exec::process::pid_alive;

/// One file to write: path relative to the root, content, mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFile {
    /// Relative path (checked by [`under`]).
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Permission bits (0 = 0600).
    pub mode: u32,
}

/// `rel` under `root`, refusing absolute paths, `..` and empty paths.
pub fn under(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    let mut out = root.to_path_buf();
    let mut any = false;
    for c in p.components() {
        match c {
            Component::Normal(n) => {
                out.push(n);
                any = true;
            }
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "path {rel:?} must stay inside the service's folder"
                ));
            }
        }
    }
    if !any {
        return Err(format!("path {rel:?} names no file"));
    }
    Ok(out)
}

/// A file's content and mode before it was replaced (`None`: it did not exist).
type Before = Option<(Vec<u8>, u32)>;

/// What [`write_files`] replaced, to put back when the new files are refused.
#[derive(Debug, Default)]
pub struct Previous(Vec<(PathBuf, Before)>);

/// Creates `dirs` (0755) and writes `files` atomically under `root`, each only when its content
/// or mode differs. Returns whether anything changed and what was there before.
pub fn write_files(
    root: &Path,
    dirs: &[String],
    files: &[ServiceFile],
) -> Result<(bool, Previous), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let mkdir = |d: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(d)
            .map_err(|e| format!("create {}: {e}", d.display()))
    };
    mkdir(root)?;
    for d in dirs {
        mkdir(&under(root, d)?)?;
    }
    let mut previous = Previous::default();
    let mut changed = false;
    for f in files {
        let path = under(root, &f.path)?;
        let mode = if f.mode == 0 { 0o600 } else { f.mode & 0o777 };
        let old = std::fs::read(&path).ok().map(|bytes| {
            let m = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode() & 0o777);
            (bytes, m)
        });
        if old
            .as_ref()
            .is_some_and(|(b, m)| *b == f.content && *m == mode)
        {
            continue;
        }
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        apim_atomic::write_atomic(&path, &f.content, mode).map_err(|e| e.to_string())?;
        previous.0.push((path, old));
        changed = true;
    }
    Ok((changed, previous))
}

/// Puts back what [`write_files`] replaced (a file that did not exist is removed).
pub fn restore(previous: Previous) -> Result<(), String> {
    for (path, old) in previous.0 {
        match old {
            Some((bytes, mode)) => {
                apim_atomic::write_atomic(&path, &bytes, mode).map_err(|e| e.to_string())?
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("remove {}: {e}", path.display()));
                }
                _ => {}
            },
        }
    }
    Ok(())
}

/// How much of a command's output an error quotes.
const OUTPUT_TAIL: usize = 2000;

/// Runs `argv` in `root` within `timeout`; `Err` with the exit status and the end of its output
/// when it fails. Output goes to a file in `root` (a daemonising child keeps no pipe of ours
/// open), read back after the exit.
pub async fn run(root: &Path, argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty argv".into());
    };
    let out_path = root.join(".apimctl-command.out");
    let out = std::fs::File::create(&out_path)
        .map_err(|e| format!("create {}: {e}", out_path.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", out_path.display()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(r) => r.map_err(|e| format!("{program}: {e}"))?,
        Err(_) => {
            return Err(format!(
                "{} did not finish within {timeout:?}",
                argv.join(" ")
            ));
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read(&out_path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let tail: String = {
        let t = text.trim();
        let start = t.len().saturating_sub(OUTPUT_TAIL);
        let start = (start..=t.len())
            .find(|i| t.is_char_boundary(*i))
            .unwrap_or(t.len());
        t[start..].to_string()
    };
    Err(format!("{} failed ({status}): {tail}", argv.join(" ")))
}

/// The live process the pid file names, if any.
pub fn running_pid(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
}

/// Waits (bounded) until the pid file names a live process.
pub async fn wait_running(pid_file: &Path, timeout: Duration) -> Result<i32, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(pid) = running_pid(pid_file) {
            return Ok(pid);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "started, but {} names no live process within {timeout:?}",
                pid_file.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to the service's process and waits (bounded) for it to go.
pub async fn stop(pid_file: &Path, timeout: Duration) -> Result<(), String> {
    let Some(pid) = running_pid(pid_file) else {
        return Ok(());
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|e| format!("signal {pid}: {e}"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    while pid_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "process {pid} still runs {timeout:?} after SIGTERM"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `GET url` through `connect` ("address:port"), sending the URL's host as Host and TLS server
/// name; for https the certificate must chain to `ca_pem`. `Ok(status)` whatever the status.
pub async fn probe(
    url: &str,
    connect: &str,
    ca_pem: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let fut = async {
        let u = parse_url(url)?;
        let tcp = TcpStream::connect(connect)
            .await
            .map_err(|e| format!("connect {connect}: {e}"))?;
        if !u.https {
            return send_get(TokioIo::new(tcp), &u).await;
        }
        let config = verifying_config(ca_pem)?;
        let name = ServerName::try_from(u.host.clone()).map_err(|e| format!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        send_get(TokioIo::new(tls), &u).await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map(|(status, _)| status),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A TLS client trusting only the certificates in `ca_pem`.
fn verifying_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(der.map_err(|e| format!("CA certificate: {e}"))?)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the answer with".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(apim_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
