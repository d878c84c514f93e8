//! Readiness: is the node really up, not merely started?
//!
//! Each probe is a small async function with its own timeout; [`wait_ready`] runs all of a
//! node's probes in rounds (concurrently within a round) with a bounded exponential backoff
//! between rounds, until every probe has passed, the deadline passes, the caller cancels, or
//! the server process dies — which fails *fast*, with the tail of the node's log as the reason.
//!
//! Probes (the spec's `Readiness` says which, and with what):
//! * **log line** — the node's log file contains the spec's line, searched only *after* the
//!   offset recorded with [`log_offset`] before the start, so the line from a previous run does
//!   not count. A file that shrank (rotated) is read from its start.
//! * **TCP** — a connect to each listed port succeeds.
//! * **HTTP(S)** — `GET url` answers with the expected status (and, when asked, a body that
//!   contains a marker).
//! * **process** — the node's pid file still names a live server of this node.
//!
//! Passed probes stay passed (ports and log lines do not un-happen during startup); the process
//! probe is re-checked every round.

use std::fmt;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::exec::error::{ExecError, Result};
use crate::exec::process::{PidFileState, Server, pid_file_state};

/// The longest pause between two readiness rounds. Short, because a rollout's next tier
/// waits on this node: a probe that passed is not repeated, and a failing one is a refused
/// connection or an unchanged log file, so polling forty times a second costs next to nothing
/// (a server starting for a minute is 2,400 reads of a log tail), while every millisecond of
/// pause is added to each tier of the rollout (a 2 s cap once added up to 2 s per tier).
pub const READINESS_POLL_MAX: Duration = Duration::from_millis(25);

/// How much log is shown when the process died.
const LOG_TAIL_BYTES: u64 = 8 * 1024;

/// The size of `path` now (0 if it does not exist): record it *before* starting the node and
/// put it in [`LogProbe::start_offset`].
pub fn log_offset(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Wait for `needle` in a log file, after `start_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogProbe {
    /// The log file.
    pub path: PathBuf,
    /// The text to wait for (the line the server logs once it has started).
    pub needle: String,
    /// Only bytes after this offset count (from [`log_offset`] before the start).
    pub start_offset: u64,
}

/// Expect a TCP connect to succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProbe {
    /// Host name or address.
    pub host: String,
    /// Port (offset already applied).
    pub port: u16,
}

/// Expect `GET url` to answer with `expect_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `http://…` or `https://…` (https is not certificate-verified, see [`probe_http`]).
    pub url: String,
    /// The status that means ready.
    pub expect_status: u16,
    /// Text the body must contain (e.g. the product name `/services/Version` answers with), so
    /// another server answering on the port does not count as this node.
    pub expect_body: Option<String>,
}

/// Expect the node's server process to stay alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessProbe {
    /// The node's server (its pid file is read each round).
    pub server: Server,
}

/// Every probe of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadinessSpec {
    /// The log-line probe.
    pub log: Option<LogProbe>,
    /// TCP probes.
    pub tcp: Vec<TcpProbe>,
    /// HTTP probes.
    pub http: Vec<HttpProbe>,
    /// The liveness probe whose failure ends the wait at once.
    pub process: Option<ProcessProbe>,
    /// Timeout of one probe attempt (default 5 s when zero).
    pub attempt_timeout: Duration,
}

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadinessOutcome {
    /// Every probe passed.
    Ready,
    /// The deadline passed first.
    TimedOut,
    /// The server process is gone.
    ProcessDied {
        /// What the pid file said.
        state: String,
        /// The end of the node's log (after the start offset).
        log_tail: String,
    },
    /// The caller cancelled.
    Cancelled,
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// e.g. `log:<the line>`, `tcp:127.0.0.1:8443`, `http:https://…`, `process`.
    pub name: String,
    /// When it passed (since the wait began); `None` if it did not.
    pub passed_after: Option<Duration>,
    /// How many attempts ran.
    pub attempts: u32,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// The result of [`wait_ready`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessReport {
    /// How it ended.
    pub outcome: ReadinessOutcome,
    /// Per probe, in spec order: log, tcp…, http…, process.
    pub checks: Vec<CheckReport>,
    /// Time spent.
    pub elapsed: Duration,
}

impl ReadinessReport {
    /// True when the outcome is [`ReadinessOutcome::Ready`].
    pub fn is_ready(&self) -> bool {
        self.outcome == ReadinessOutcome::Ready
    }
}

impl fmt::Display for ReadinessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} after {:?}", self.outcome, self.elapsed)?;
        for c in &self.checks {
            match (c.passed_after, &c.last_error) {
                (Some(t), _) => write!(f, "; {} ok after {t:?}", c.name)?,
                (None, Some(e)) => write!(f, "; {} failing: {e}", c.name)?,
                (None, None) => write!(f, "; {} not run", c.name)?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// single probes

/// Incremental search of a growing log file.
#[derive(Debug)]
pub struct LogTail {
    probe: LogProbe,
    pos: u64,
    carry: Vec<u8>,
    found: bool,
}

impl LogTail {
    /// Start searching at `probe.start_offset`.
    pub fn new(probe: LogProbe) -> Self {
        LogTail {
            pos: probe.start_offset,
            probe,
            carry: Vec::new(),
            found: false,
        }
    }

    /// Read what was appended since the last call; true once the needle was seen.
    pub fn poll(&mut self) -> std::io::Result<bool> {
        if self.found {
            return Ok(true);
        }
        let mut f = match std::fs::File::open(&self.probe.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.pos {
            // Rotated or truncated: the new file is all new.
            self.pos = 0;
            self.carry.clear();
        }
        f.seek(SeekFrom::Start(self.pos))?;
        let needle = self.probe.needle.as_bytes();
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            self.pos += n as u64;
            let mut hay = std::mem::take(&mut self.carry);
            hay.extend_from_slice(&chunk[..n]);
            if needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle) {
                self.found = true;
                return Ok(true);
            }
            // Keep enough to find a needle split across two reads.
            let keep = needle.len().saturating_sub(1).min(hay.len());
            self.carry = hay[hay.len() - keep..].to_vec();
        }
        Ok(false)
    }
}

/// The last few KiB of `path` after `start_offset`, for error reports.
pub fn log_tail(path: &Path, start_offset: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if len < start_offset { 0 } else { start_offset };
    let from = from.max(len.saturating_sub(LOG_TAIL_BYTES));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_ok() {
        let _ = f.take(LOG_TAIL_BYTES).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Connect to `host:port` within `timeout`.
pub async fn probe_tcp(
    host: &str,
    port: u16,
    timeout: Duration,
) -> std::result::Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

/// `GET url` within `timeout`; `Ok(status)` whatever the status.
///
/// For `https` the server certificate is **not verified** (the handshake signature still is):
/// the agent probes its *own* node, on this machine, with
/// [`apim_certs::tls::insecure_local_probe_config`] (which says why that is right here).
pub async fn probe_http(url: &str, timeout: Duration) -> std::result::Result<u16, String> {
    probe_http_body(url, timeout)
        .await
        .map(|(status, _)| status)
}

/// Like [`probe_http`], also returning the start of the body (at most [`MAX_PROBE_BODY`] bytes).
pub async fn probe_http_body(
    url: &str,
    timeout: Duration,
) -> std::result::Result<(u16, String), String> {
    match tokio::time::timeout(timeout, http_get(url)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Health endpoints answer a few hundred bytes; more than this is not read.
pub const MAX_PROBE_BODY: usize = 64 * 1024;

pub(crate) struct ParsedUrl {
    pub(crate) https: bool,
    pub(crate) host: String,
    port: u16,
    path: String,
    authority: String,
}

pub(crate) fn parse_url(url: &str) -> std::result::Result<ParsedUrl, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let authority = uri.authority().ok_or("URL has no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    Ok(ParsedUrl {
        https,
        host,
        port,
        path,
        authority: authority.as_str().to_string(),
    })
}

async fn http_get(url: &str) -> std::result::Result<(u16, String), String> {
    let u = parse_url(url)?;
    let tcp = TcpStream::connect((u.host.as_str(), u.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if u.https {
        let name = ServerName::try_from(u.host.clone()).map_err(|e| format!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(apim_certs::tls::insecure_local_probe_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        send_get(TokioIo::new(tls), &u).await
    } else {
        send_get(TokioIo::new(tcp), &u).await
    }
}

pub(crate) async fn send_get<I>(io: I, u: &ParsedUrl) -> std::result::Result<(u16, String), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(u.path.as_str())
        .header(hyper::header::HOST, u.authority.as_str())
        .header(hyper::header::USER_AGENT, "apimctl-agent-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"));
    let result = match res {
        Ok(r) => {
            let status = r.status().as_u16();
            let mut body = r.into_body();
            let mut bytes = Vec::new();
            while bytes.len() < MAX_PROBE_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            bytes.extend_from_slice(data);
                        }
                    }
                    Some(Err(e)) => {
                        driver.abort();
                        return Err(format!("reading the body: {e}"));
                    }
                    None => break,
                }
            }
            bytes.truncate(MAX_PROBE_BODY);
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

// ---------------------------------------------------------------------------------------------
// the combined wait

enum Probe {
    Log(Box<LogTail>),
    Tcp(TcpProbe),
    Http(HttpProbe),
}

struct Check {
    probe: Probe,
    report: CheckReport,
}

/// Run every probe of `spec` until all pass, `deadline` elapses, `cancel` completes, or the
/// process probe fails. `Err` only for an unusable spec (bad URL); every runtime failure is in
/// the report.
pub async fn wait_ready(
    spec: &ReadinessSpec,
    deadline: Duration,
    cancel: impl Future<Output = ()>,
) -> Result<ReadinessReport> {
    for h in &spec.http {
        parse_url(&h.url).map_err(|reason| ExecError::InvalidProbe {
            probe: h.url.clone(),
            reason,
        })?;
    }
    let attempt_timeout = if spec.attempt_timeout.is_zero() {
        Duration::from_secs(5)
    } else {
        spec.attempt_timeout
    };
    let new_report = |name: String| CheckReport {
        name,
        passed_after: None,
        attempts: 0,
        last_error: None,
    };
    let mut checks: Vec<Check> = Vec::new();
    if let Some(l) = &spec.log {
        checks.push(Check {
            report: new_report(format!("log:{}", l.needle)),
            probe: Probe::Log(Box::new(LogTail::new(l.clone()))),
        });
    }
    for t in &spec.tcp {
        checks.push(Check {
            report: new_report(format!("tcp:{}:{}", t.host, t.port)),
            probe: Probe::Tcp(t.clone()),
        });
    }
    for h in &spec.http {
        checks.push(Check {
            report: new_report(format!("http:{}", h.url)),
            probe: Probe::Http(h.clone()),
        });
    }
    let mut process_report = spec
        .process
        .as_ref()
        .map(|_| new_report("process".to_string()));

    let started = Instant::now();
    let end = tokio::time::Instant::now() + deadline;
    tokio::pin!(cancel);
    let mut delay = Duration::from_millis(10);
    let finish = |outcome, checks: Vec<Check>, process_report: Option<CheckReport>| {
        let mut reports: Vec<CheckReport> = checks.into_iter().map(|c| c.report).collect();
        reports.extend(process_report);
        ReadinessReport {
            outcome,
            checks: reports,
            elapsed: started.elapsed(),
        }
    };

    loop {
        // Liveness first: a dead server fails fast.
        if let (Some(pp), Some(rep)) = (&spec.process, process_report.as_mut()) {
            rep.attempts += 1;
            let state = pid_file_state(&pp.server)
                .map_err(|e| e.to_string())
                .and_then(|s| match s {
                    PidFileState::Alive(_) => Ok(()),
                    other => Err(format!("{other:?}")),
                });
            match state {
                Ok(()) => {
                    rep.passed_after.get_or_insert(started.elapsed());
                }
                Err(state) => {
                    rep.passed_after = None;
                    rep.last_error = Some(format!("server not alive: pid file {state}"));
                    let log_tail = spec
                        .log
                        .as_ref()
                        .map(|l| log_tail(&l.path, l.start_offset))
                        .unwrap_or_default();
                    return Ok(finish(
                        ReadinessOutcome::ProcessDied { state, log_tail },
                        checks,
                        process_report,
                    ));
                }
            }
        }

        let round = futures::future::join_all(
            checks
                .iter_mut()
                .filter(|c| c.report.passed_after.is_none())
                .map(|c| run_check(c, attempt_timeout, started)),
        );
        // Biased: the round is polled first, so every probe gets at least one attempt even
        // when the deadline is already near.
        let interrupted = tokio::select! {
            biased;
            _ = round => None,
            _ = &mut cancel => Some(ReadinessOutcome::Cancelled),
            _ = tokio::time::sleep_until(end) => Some(ReadinessOutcome::TimedOut),
        };
        if let Some(outcome) = interrupted {
            return Ok(finish(outcome, checks, process_report));
        }
        if checks.iter().all(|c| c.report.passed_after.is_some()) {
            // One last liveness look so "ready" never reports a server that just died.
            let alive = spec
                .process
                .as_ref()
                .is_none_or(|pp| matches!(pid_file_state(&pp.server), Ok(PidFileState::Alive(_))));
            if alive {
                return Ok(finish(ReadinessOutcome::Ready, checks, process_report));
            }
            continue;
        }
        let interrupted = tokio::select! {
            biased;
            _ = &mut cancel => Some(ReadinessOutcome::Cancelled),
            _ = tokio::time::sleep_until(end) => Some(ReadinessOutcome::TimedOut),
            _ = tokio::time::sleep(delay) => None,
        };
        if let Some(outcome) = interrupted {
            return Ok(finish(outcome, checks, process_report));
        }
        delay = (delay * 2).min(READINESS_POLL_MAX);
    }
}

async fn run_check(c: &mut Check, attempt_timeout: Duration, started: Instant) {
    c.report.attempts += 1;
    let result = match &mut c.probe {
        Probe::Log(tail) => match tail.poll() {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{:?} not logged yet", tail.probe.needle)),
            Err(e) => Err(format!("reading {}: {e}", tail.probe.path.display())),
        },
        Probe::Tcp(t) => probe_tcp(&t.host, t.port, attempt_timeout).await,
        Probe::Http(h) => match probe_http_body(&h.url, attempt_timeout).await {
            Ok((s, _)) if s != h.expect_status => {
                Err(format!("status {s}, expected {}", h.expect_status))
            }
            Ok((_, body)) => match &h.expect_body {
                Some(text) if !body.contains(text.as_str()) => Err(format!(
                    "answered without {text:?} (another server on this port?)"
                )),
                _ => Ok(()),
            },
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => c.report.passed_after = Some(started.elapsed()),
        Err(e) => c.report.last_error = Some(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_default_ports() {
        let u = parse_url("https://127.0.0.1/api/x?y=1").unwrap();
        assert!(u.https);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 443, "/api/x?y=1")
        );
        let u = parse_url("http://[::1]:9763").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9763, "/")
        );
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("/relative").is_err());
    }
}
