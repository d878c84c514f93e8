//! The simulated server's HTTP(S) answers: `/services/Version`, the gateway startup health
//! check, the WebSocket port's `/health`, and one authenticated endpoint that shows which super
//! admin password the server really has (after the secure vault resolved it):
//! `GET /api/identity/user/v1.0/me` with HTTP Basic credentials (API-M's identity user REST API,
//! `api#identity#user#v1.0.war`, deployed on key managers, control planes and all-in-one nodes)
//! answers 200 with the user's name for the super admin's credentials and 401 otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::roles::PortKind;

/// The gateway REST API's readiness probe.
pub const HEALTHCHECK_PATH: &str = "/api/am/gateway/v2/server-startup-healthcheck";
/// The identity user REST API's "who am I" resource (Basic auth).
pub const ME_PATH: &str = "/api/identity/user/v1.0/me";
/// The webapp that serves [`ME_PATH`].
pub const USER_WAR: &str = "api#identity#user#v1.0.war";

/// What the HTTP handlers need to know.
pub struct Shared {
    /// `<product name>-<version>`.
    pub product: String,
    /// Set once "WSO2 Carbon started in" is logged.
    pub ready: AtomicBool,
    /// Whether the gateway health check is served.
    pub healthcheck: bool,
    /// The super admin's user name and effective password, when [`ME_PATH`] is served.
    pub admin: Option<(String, String)>,
}

/// Serves one listener until the process ends.
pub async fn accept_loop(
    listener: TcpListener,
    kind: PortKind,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match (kind, tls) {
                (PortKind::Tcp, _) => drop(sock),
                (_, Some(tls)) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), tls.accept(sock)).await;
                    if let Ok(Ok(stream)) = handshake {
                        respond(stream, kind, &shared).await;
                    }
                }
                (_, None) => respond(sock, kind, &shared).await,
            }
        });
    }
}

/// Reads one request head and answers it; `Connection: close` always.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    kind: PortKind,
    shared: &Shared,
) {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Some(());
            }
            if buf.len() > 16 * 1024 {
                return None;
            }
        }
    })
    .await;
    if !matches!(head, Ok(Some(()))) {
        return;
    }
    let text = String::from_utf8_lossy(&buf);
    let auth = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    let mut first = text.lines().next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default();
    let target = first.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let ready = shared.ready.load(Ordering::SeqCst);
    let (status, ctype, body) = route(method, path, auth.as_deref(), kind, ready, shared);
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let body_out = if method == "HEAD" { "" } else { body.as_str() };
    let challenge = if status == 401 {
        "WWW-Authenticate: Basic realm=\"WSO2 API Manager\"\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{challenge}Server: WSO2 Carbon Server\r\nConnection: close\r\n\r\n{body_out}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Whether `auth` (an `Authorization` header) carries the super admin's credentials.
fn is_admin(auth: Option<&str>, admin: &(String, String)) -> bool {
    let Some(encoded) = auth.and_then(|a| a.strip_prefix("Basic ").or(a.strip_prefix("basic ")))
    else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let text = String::from_utf8_lossy(&decoded);
    text.split_once(':')
        .is_some_and(|(u, p)| u == admin.0 && p == admin.1)
}

fn route(
    method: &str,
    path: &str,
    auth: Option<&str>,
    kind: PortKind,
    ready: bool,
    shared: &Shared,
) -> (u16, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", String::new());
    }
    if matches!(kind, PortKind::PassthruHttp | PortKind::PassthruHttps) {
        // Synapse's answer for a context no API serves (none is deployed in the simulation).
        return if ready {
            (
                404,
                "application/xml",
                format!(
                    "<am:fault xmlns:am=\"http://wso2.org/apimanager\"><am:code>404</am:code><am:type>Status report</am:type><am:message>Not Found</am:message><am:description>The requested resource ({path}) is not available.</am:description></am:fault>"
                ),
            )
        } else {
            (503, "text/plain", String::new())
        };
    }
    let path = path.trim_end_matches('/');
    match (kind, path) {
        (PortKind::Http | PortKind::Https, "/services/Version") => (
            200,
            "text/xml; charset=UTF-8",
            format!(
                "<ns:getVersionResponse xmlns:ns=\"http://version.services.core.carbon.wso2.org\"><return>{}</return></ns:getVersionResponse>",
                shared.product
            ),
        ),
        (PortKind::Https, HEALTHCHECK_PATH) if shared.healthcheck => {
            if ready {
                (200, "application/json", String::new())
            } else {
                (
                    500,
                    "application/json",
                    "{\"code\":500,\"message\":\"Internal Server Error\",\"description\":\"Not all APIs are deployed\"}".to_string(),
                )
            }
        }
        (PortKind::Https, ME_PATH) if shared.admin.is_some() => match &shared.admin {
            Some(admin) if ready && is_admin(auth, admin) => (
                200,
                "application/json",
                format!(
                    "{{\"basic\":{{\"http://wso2.org/claims/username\":\"{}\"}}}}",
                    admin.0
                ),
            ),
            Some(_) if ready => (
                401,
                "application/json",
                "{\"code\":\"401\",\"message\":\"Unauthorized\",\"description\":\"Authentication failed for this resource.\"}".to_string(),
            ),
            _ => (503, "text/plain", String::new()),
        },
        (PortKind::WsHealth, "/health") => {
            if ready {
                (200, "text/plain", "OK".to_string())
            } else {
                (503, "text/plain", String::new())
            }
        }
        _ => (404, "text/plain", String::new()),
    }
}
