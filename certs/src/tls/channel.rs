//! Dialling the controller: a tonic `Channel` whose connections are TCP + a rustls handshake
//! with a configuration of this module (tonic's own TLS stack is not used).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint, Uri};

use super::TlsError;

/// Where the controller listens, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerEndpoint {
    /// `host:port` to dial (a DNS name, an IPv4 address, or `[v6]`).
    pub address: String,
    /// The name checked against the controller certificate's SANs.
    pub server_name: String,
}

impl ControllerEndpoint {
    /// Parses `host:port`; the server name is the host (brackets of an IPv6 literal removed).
    pub fn parse(address: &str) -> Result<Self, TlsError> {
        let bad = |reason: &str| TlsError::Address {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        port.parse::<u16>().map_err(|_| bad("invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(ControllerEndpoint {
            address: address.to_owned(),
            server_name: host.to_owned(),
        })
    }

    /// Checks the server certificate against `name` instead of the dialled host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }
}

/// Connects now (TCP + TLS handshake), so a bad address or certificate fails here.
pub async fn connect(
    endpoint: &ControllerEndpoint,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    let (uri, dialer) = endpoint_and_dialer(endpoint, config, timeout)?;
    uri.connect_with_connector(dialer)
        .await
        .map_err(|e| TlsError::Connect {
            address: endpoint.address.clone(),
            reason: error_chain(&e),
        })
}

/// A channel that connects on first use and reconnects after failures (call it inside a tokio
/// runtime).
pub fn connect_lazy(
    endpoint: &ControllerEndpoint,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    let (uri, dialer) = endpoint_and_dialer(endpoint, config, timeout)?;
    Ok(uri.connect_with_connector_lazy(dialer))
}

/// Dials TCP and runs the TLS handshake with a fixed configuration; plugged into tonic with
/// `connect_with_connector` (the endpoint URI is `http://…` because TLS happens here).
#[derive(Clone)]
struct TlsDialer {
    address: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl Service<Uri> for TlsDialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.address).await?;
            tcp.set_nodelay(true)?;
            let tls = this.connector.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

fn endpoint_and_dialer(
    endpoint: &ControllerEndpoint,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(Endpoint, TlsDialer), TlsError> {
    let bad = |reason: String| TlsError::Address {
        address: endpoint.address.clone(),
        reason,
    };
    let server_name = ServerName::try_from(endpoint.server_name.clone())
        .map_err(|e| bad(format!("server name {:?}: {e}", endpoint.server_name)))?;
    let uri = Endpoint::from_shared(format!("http://{}", endpoint.address))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(timeout)
        // Packs arrive in 1 MiB messages: room for several in flight (hyper's client default
        // is a 2 MiB stream window).
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    Ok((
        uri,
        TlsDialer {
            address: endpoint.address.clone(),
            server_name,
            connector: TlsConnector::from(config),
        },
    ))
}

/// An error and its sources on one line (tonic's transport errors hide the cause otherwise).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_host_and_port() {
        let e = ControllerEndpoint::parse("ctl.example.com:7443").expect("dns");
        assert_eq!(e.server_name, "ctl.example.com");
        let e = ControllerEndpoint::parse("[::1]:7443").expect("v6");
        assert_eq!(
            (e.address.as_str(), e.server_name.as_str()),
            ("[::1]:7443", "::1")
        );
        let e = ControllerEndpoint::parse("10.0.0.5:7443")
            .expect("v4")
            .with_server_name("ctl");
        assert_eq!(e.server_name, "ctl");
        for bad in ["ctl.example.com", ":7443", "ctl:http", "ctl:70000"] {
            assert!(ControllerEndpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
