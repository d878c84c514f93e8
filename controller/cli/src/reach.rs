//! Why the controller could not be reached, said so an operator can act: the address tried,
//! whether anything listens there (a plain TCP connect), what the TLS handshake said (wrong CA,
//! a certificate for another name, something that is not TLS, the operator certificate
//! refused), and which CA, certificate and key files were used (paths only).

use std::path::PathBuf;
use std::time::Duration;

use crate::client::Settings;

/// How long the TCP check waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The CA, operator certificate and key files a connection used, as the settings name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// The controller's CA certificate.
    pub ca: Option<PathBuf>,
    /// The operator certificate.
    pub cert: Option<PathBuf>,
    /// The operator key.
    pub key: Option<PathBuf>,
}

impl Files {
    /// The files `settings` name.
    pub fn of(settings: &Settings) -> Self {
        Files {
            ca: settings.ca.clone(),
            cert: settings.cert.clone(),
            key: settings.key.clone(),
        }
    }

    /// `files used: CA …, certificate …, key …`.
    pub fn hint(&self) -> String {
        let p = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("(none)".into(), |p| p.display().to_string())
        };
        format!(
            "files used: CA {}, certificate {}, key {}",
            p(&self.ca),
            p(&self.cert),
            p(&self.key)
        )
    }
}

/// What a plain TCP connect to the controller's address found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listening {
    /// A TCP connection succeeded: something listens.
    Yes,
    /// Refused: nothing listens on that port.
    Refused,
    /// No answer within the probe's timeout.
    NoAnswer,
    /// The host name does not resolve (the resolver's message).
    Unresolved(String),
    /// Another failure (its message).
    Failed(String),
}

/// A connection to the controller that could not be made, with what was found out about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// The address tried (`host:port`).
    pub address: String,
    /// The transport's explanation, without tonic's repetitions.
    pub cause: String,
    /// What a plain TCP connect found.
    pub listening: Listening,
    /// The files the connection used.
    pub files: Files,
    /// The addresses of a list tried before this one (the last), none answering.
    pub tried_before: Vec<Unreachable>,
}

impl Unreachable {
    /// One failure for the whole list tried in order (the last carries the ones before it);
    /// `None` when nothing was tried.
    pub fn all(mut tried: Vec<Unreachable>) -> Option<Self> {
        let mut last = tried.pop()?;
        last.tried_before = tried;
        Some(last)
    }

    /// Every address tried, in order.
    pub fn addresses(&self) -> Vec<&str> {
        self.tried_before
            .iter()
            .map(|u| u.address.as_str())
            .chain(std::iter::once(self.address.as_str()))
            .collect()
    }

    /// Diagnoses a failed connection to `address` (`reason`: the transport's error chain).
    pub async fn diagnose(address: &str, reason: &str, files: Files) -> Self {
        Unreachable {
            address: address.to_string(),
            cause: cause(reason),
            listening: probe(address).await,
            files,
            tried_before: Vec::new(),
        }
    }

    /// Whether something listens there and the failure came after TCP (TLS, protocol).
    pub fn is_tls(&self) -> bool {
        self.listening == Listening::Yes
    }

    /// One line: what failed, where, and the transport's words (for each address of a list).
    pub fn message(&self) -> String {
        if !self.tried_before.is_empty() {
            let each: Vec<String> = self
                .tried_before
                .iter()
                .chain(std::iter::once(self))
                .map(|u| format!("{} ({})", u.address, u.cause))
                .collect();
            return format!(
                "cannot reach any of the {} controllers tried: {}",
                each.len(),
                each.join(", ")
            );
        }
        if self.is_tls() {
            format!(
                "the TLS handshake with the controller at {} failed: {}",
                self.address, self.cause
            )
        } else {
            format!(
                "cannot reach the controller at {}: {}",
                self.address, self.cause
            )
        }
    }

    /// What the TCP check found and what the TLS error points at, for each address tried, then
    /// the files used.
    pub fn hints(&self) -> Vec<String> {
        let mut hints: Vec<String> = self
            .tried_before
            .iter()
            .flat_map(Unreachable::found)
            .collect();
        hints.extend(self.found());
        hints.push(self.files.hint());
        hints
    }

    /// What the TCP check found at this address and what its TLS error points at.
    fn found(&self) -> Vec<String> {
        let a = &self.address;
        let mut hints = vec![match &self.listening {
            Listening::Yes => format!(
                "something listens on {a} (a TCP connection succeeds): the controller, or \
                 another service on that port"
            ),
            Listening::Refused => format!(
                "nothing listens on {a} (TCP connection refused): is the controller running \
                 there, and is the address right (--controller, APIMCTL_CONTROLLER, or \
                 `controller` in the client config)?"
            ),
            Listening::NoAnswer => format!(
                "no TCP answer from {a} within {}s: a firewall, or a wrong address?",
                PROBE_TIMEOUT.as_secs()
            ),
            Listening::Unresolved(e) => format!("the host of {a} does not resolve: {e}"),
            Listening::Failed(e) => format!("a plain TCP connection to {a} fails too: {e}"),
        }];
        if self.is_tls()
            && let Some(h) = tls_hint(&self.cause, &self.files)
        {
            hints.push(h);
        }
        hints
    }
}

/// What a TLS error most likely means for the operator, when its words tell.
fn tls_hint(cause: &str, files: &Files) -> Option<String> {
    let has = |words: &[&str]| words.iter().any(|w| cause.contains(w));
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("(none)".into(), |p| p.display().to_string())
    };
    if has(&["NotValidForName", "not valid for name"]) {
        Some(
            "the controller's certificate does not name the host dialled: use one of the \
             controller's `server_names` in the address"
                .into(),
        )
    } else if has(&["Expired", "expired"]) && !has(&["alert"]) {
        Some(
            "the controller's certificate is expired or not yet valid (or this machine's clock \
             is wrong)"
                .into(),
        )
    } else if has(&["UnknownIssuer", "BadSignature", "invalid peer certificate"]) {
        Some(format!(
            "the controller's certificate does not verify against the CA file {}: is it this \
             controller's ca.pem (as `apimctl controller operator-cert` writes it)?",
            path(&files.ca)
        ))
    } else if has(&[
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "CertificateRevoked",
        "CertificateExpired",
        "AccessDenied",
        "DecryptError",
    ]) {
        Some(format!(
            "the controller rejected the operator certificate {}: issued by another \
             controller's CA, expired or revoked? Renew it with `apimctl renew-cert`, or issue \
             one on the controller host with `apimctl controller operator-cert`",
            path(&files.cert)
        ))
    } else if has(&["InvalidContentType", "corrupt message", "InvalidMessage"]) {
        Some(
            "what answers there does not speak TLS: is it the controller's port (`listen` in \
             controller.toml, 7443 by default)?"
                .into(),
        )
    } else {
        None
    }
}

/// A plain TCP connect to `address` (every address it resolves to, until one answers).
async fn probe(address: &str) -> Listening {
    let addrs: Vec<_> = match tokio::net::lookup_host(address).await {
        Ok(a) => a.collect(),
        Err(e) => return Listening::Unresolved(e.to_string()),
    };
    let mut found = Listening::Unresolved("no address".into());
    for addr in addrs {
        found = match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => return Listening::Yes,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Listening::Refused,
            Ok(Err(e)) => Listening::Failed(e.to_string()),
            Err(_) => Listening::NoAnswer,
        };
    }
    found
}

/// The transport's explanation without tonic's `transport error: ` and without the repetition
/// of its cause (`X: X` becomes `X`).
fn cause(reason: &str) -> String {
    let r = reason.strip_prefix("transport error: ").unwrap_or(reason);
    let mut at = 0;
    while let Some(i) = r[at..].find(": ") {
        let split = at + i;
        if r[..split] == r[split + 2..] {
            return r[..split].to_string();
        }
        at = split + 2;
    }
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Files {
        Files {
            ca: Some("/etc/apimctl/ca.pem".into()),
            cert: Some("/home/op/op.pem".into()),
            key: Some("/home/op/op-key.pem".into()),
        }
    }

    #[test]
    fn the_transport_cause_is_said_once() {
        assert_eq!(
            cause(
                "transport error: Connection refused (os error 111): Connection refused (os error 111)"
            ),
            "Connection refused (os error 111)"
        );
        assert_eq!(
            cause(
                "transport error: invalid peer certificate: BadSignature: invalid peer certificate: BadSignature"
            ),
            "invalid peer certificate: BadSignature"
        );
        assert_eq!(cause("a: b"), "a: b");
    }

    #[test]
    fn tls_failures_point_at_the_file_to_check() {
        let f = files();
        let ca = tls_hint("invalid peer certificate: UnknownIssuer", &f).expect("ca");
        assert!(ca.contains("/etc/apimctl/ca.pem"), "{ca}");
        let cert = tls_hint("received fatal alert: CertificateRequired", &f).expect("cert");
        assert!(cert.contains("/home/op/op.pem"), "{cert}");
        let name = tls_hint("invalid peer certificate: NotValidForName", &f).expect("name");
        assert!(name.contains("server_names"), "{name}");
        let plain =
            tls_hint("received corrupt message of type InvalidContentType", &f).expect("not tls");
        assert!(plain.contains("does not speak TLS"), "{plain}");
        assert_eq!(tls_hint("connection reset by peer", &f), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_found_refused_and_an_open_one_listening() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = open.local_addr().expect("addr").to_string();
        assert_eq!(probe(&addr).await, Listening::Yes);
        drop(open);
        assert_eq!(probe(&addr).await, Listening::Refused);
        let u = Unreachable::diagnose(&addr, "transport error: refused: refused", files()).await;
        assert!(!u.is_tls());
        assert_eq!(
            u.message(),
            format!("cannot reach the controller at {addr}: refused")
        );
        let hints = u.hints();
        assert!(
            hints[0].starts_with(&format!("nothing listens on {addr}")),
            "{hints:?}"
        );
        assert_eq!(
            hints.last().map(String::as_str),
            Some(
                "files used: CA /etc/apimctl/ca.pem, certificate /home/op/op.pem, key \
                 /home/op/op-key.pem"
            )
        );
    }
}
