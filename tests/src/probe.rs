//! Small blocking helpers for tests that look at simulated nodes: HTTP(S) GET, TCP probes,
//! polling with a timeout, and per-test loopback addresses so parallel tests never collide.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

/// A parsed HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// A distinct loopback address for a test: `127.x.y.idx` with x.y derived from `name`, so
/// tests (and the simulated machines inside one test) never share ports.
pub fn loopback_for(name: &str, idx: u8) -> Ipv4Addr {
    // FNV-1a: stable across runs and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let x = 10 + (h % 240) as u8;
    let y = ((h >> 8) % 250) as u8 + 1;
    Ipv4Addr::new(127, x, y, idx.max(1))
}

/// Polls `cond` every `interval` until it holds or `timeout` passes; returns whether it held.
/// The timeout is a failure guard, not a synchronisation device.
pub fn wait_until(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// Whether something accepts TCP connections at `addr`.
pub fn tcp_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header terminator"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

fn request(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n")
}

/// `GET http://addr/path` (the server closes the connection after the response).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request(&addr.to_string(), path).as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn insecure_client(sni: &str) -> std::io::Result<rustls::ClientConnection> {
    // The agent's own local-probe configuration: any certificate, any name.
    let config = apim_certs::tls::insecure_local_probe_config();
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)
}

/// The leaf certificate (DER) a TLS server at `addr` presents for `sni`, to check which
/// keystore a node serves from.
pub fn tls_peer_certificate(addr: SocketAddr, sni: &str) -> std::io::Result<Vec<u8>> {
    let mut conn = insecure_client(sni)?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| std::io::Error::other("no peer certificate"))
}

/// `GET https://addr/path` without verifying the certificate (tests probe simulated nodes
/// whose certificates they did not issue); `sni` is the server name to send.
pub fn https_get_insecure(
    addr: SocketAddr,
    sni: &str,
    path: &str,
) -> std::io::Result<HttpResponse> {
    parse_response(&exchange(insecure_client(sni)?, addr, &request(sni, path))?)
}

/// Sends `req` over TLS (`conn`) to `addr` and reads the whole response.
fn exchange(
    conn: rustls::ClientConnection,
    addr: SocketAddr,
    req: &str,
) -> std::io::Result<Vec<u8>> {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify still delivered the whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(raw)
}

/// The status of `GET https://addr/path` with HTTP Basic credentials `user:pass`, without
/// verifying the certificate.
pub fn https_get_basic(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    user: &str,
    pass: &str,
) -> std::io::Result<u16> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {sni}\r\nAuthorization: Basic {token}\r\nConnection: close\r\n\r\n"
    );
    Ok(parse_response(&exchange(insecure_client(sni)?, addr, &req)?)?.status)
}

/// `GET https://addr/path` with `sni` as server name and Host, the certificate verified against
/// the CA certificates in `ca_pem` (a balancer's certificate from the cluster CA).
pub fn https_get_verified(
    addr: SocketAddr,
    sni: &str,
    path: &str,
    ca_pem: &str,
) -> std::io::Result<HttpResponse> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(der.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(apim_certs::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    parse_response(&exchange(conn, addr, &request(sni, path))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_stable_and_distinct() {
        let a = loopback_for("test_a", 1);
        assert_eq!(a, loopback_for("test_a", 1));
        assert_ne!(a, loopback_for("test_b", 1));
        assert_ne!(a, loopback_for("test_a", 2));
        assert_eq!(a.octets()[0], 127);
        assert!(a.octets()[1] >= 10);
    }

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut n = 0;
        assert!(wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                n >= 3
            }
        ));
        assert!(!wait_until(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || false
        ));
    }

    #[test]
    fn parses_http_responses() {
        let r = parse_response(b"HTTP/1.1 500 Internal Server Error\r\nA: b\r\n\r\nbody")
            .expect("parse");
        assert_eq!(r.status, 500);
        assert_eq!(r.body, "body");
    }
}
