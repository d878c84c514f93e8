//! What a load balancer in front of a role must forward, after the WSO2 guides' "Configuring
//! the Proxy Server and the Load Balancer" (3.x and 4.x): NGINX Community with `ip_hash` as the
//! sticky algorithm for the servlet port (management console, Publisher, Developer Portal: the
//! login session and the calls after it must reach one server), the gateway's API traffic on
//! 443 (→ 8243) and 80 (→ 8280), its WebSocket ports with the `Upgrade` headers, and the binary
//! ports of an event hub or traffic manager as plain TCP (NGINX `stream`).
//!
//! The balancer listens where the renderer's wiring points a role's LB hostname: `https://<lb>`
//! (443) for the servlet port, `http(s)://<lb>` and the base WebSocket ports for the gateway,
//! the base binary ports for an event hub. Each upstream server is the node's port **plus its
//! offset**.

use super::layout;
use super::ports::Port;
use super::release::{Product, ProductLine};
use super::roles::Role;

/// How a balancer forwards one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbProtocol {
    /// TLS terminated at the balancer with the LB hostname's certificate, re-encrypted to the
    /// node; `sticky`: one client stays on one node (`ip_hash`).
    Https {
        /// Session affinity.
        sticky: bool,
    },
    /// Plain HTTP.
    Http,
    /// HTTP with the WebSocket `Upgrade`/`Connection` headers passed on; `tls` as for HTTPS.
    WebSocket {
        /// TLS on both sides.
        tls: bool,
    },
    /// Plain TCP (`stream`): the binary event receivers and AMQP.
    Tcp,
}

/// One port a balancer listens on for a role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbPort {
    /// Where the balancer listens.
    pub listen: u16,
    /// The node port it forwards to (plus each node's offset).
    pub backend: Port,
    /// How.
    pub protocol: LbProtocol,
}

impl LbPort {
    /// Whether the port is forwarded in NGINX's `stream` context (no `server_name`: one listener
    /// per port and address).
    pub fn is_stream(self) -> bool {
        self.protocol == LbProtocol::Tcp
    }
}

/// HTTPS default port: where `https://<lb>` lands.
pub const HTTPS_LISTEN: u16 = 443;
/// HTTP default port: where `http://<lb>` lands.
pub const HTTP_LISTEN: u16 = 80;

/// The ports a balancer fronting `role` on `product` forwards.
pub fn fronted_ports(product: Product, role: Role) -> Vec<LbPort> {
    let servlet = LbPort {
        listen: HTTPS_LISTEN,
        backend: Port::Https,
        protocol: LbProtocol::Https { sticky: true },
    };
    let tcp = |p: Port| LbPort {
        listen: p.base(),
        backend: p,
        protocol: LbProtocol::Tcp,
    };
    let event_hub = [tcp(Port::Amqp), tcp(Port::Binary), tcp(Port::BinaryAuth)];
    match role {
        Role::Gateway => vec![
            LbPort {
                listen: HTTPS_LISTEN,
                backend: Port::PassthruHttps,
                protocol: LbProtocol::Https { sticky: false },
            },
            LbPort {
                listen: HTTP_LISTEN,
                backend: Port::PassthruHttp,
                protocol: LbProtocol::Http,
            },
            LbPort {
                listen: Port::Ws.base(),
                backend: Port::Ws,
                protocol: LbProtocol::WebSocket { tls: false },
            },
            LbPort {
                listen: Port::Wss.base(),
                backend: Port::Wss,
                protocol: LbProtocol::WebSocket { tls: true },
            },
        ],
        Role::TrafficManager => std::iter::once(servlet).chain(event_hub).collect(),
        Role::ControlPlane if product.line() != ProductLine::V3 => {
            std::iter::once(servlet).chain(event_hub).collect()
        }
        _ => vec![servlet],
    }
}

/// The request that shows a balancer serves `role`: a path on its first HTTP(S) listener and
/// the status expected (`0`: any status below 500, i.e. a node answered, not the balancer).
/// The gateway answers an unknown API context with 404 ("No matching resource found"); the
/// servlet roles answer `/services/Version`.
pub fn served_probe(role: Role) -> (&'static str, u16) {
    match role {
        Role::Gateway => ("/", 0),
        _ => (layout::VERSION_PATH, 200),
    }
}

/// The NGINX binary on a Debian/Ubuntu machine (the `nginx` package).
pub const NGINX_BINARY: &str = "/usr/sbin/nginx";

/// NGINX's TCP proxy module on Debian/Ubuntu (the `libnginx-mod-stream` package): a dynamic
/// module there, loaded by the file that uses `stream`.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servlet_port_is_sticky_and_event_hubs_are_tcp() {
        let v45 = Product::parse("wso2am-4.5.0").unwrap();
        let v32 = Product::parse("wso2am-3.2.0").unwrap();
        let cp = fronted_ports(v45, Role::ControlPlane);
        assert_eq!(cp[0].protocol, LbProtocol::Https { sticky: true });
        assert_eq!(cp[0].backend, Port::Https);
        let tcp: Vec<u16> = cp
            .iter()
            .filter(|p| p.is_stream())
            .map(|p| p.listen)
            .collect();
        assert_eq!(tcp, [5672, 9611, 9711]);
        for role in [Role::Publisher, Role::Devportal, Role::KeyManager] {
            assert_eq!(fronted_ports(v32, role), [cp[0]]);
        }
        let gw = fronted_ports(v45, Role::Gateway);
        assert_eq!(
            gw.iter()
                .map(|p| (p.listen, p.backend.base()))
                .collect::<Vec<_>>(),
            [(443, 8243), (80, 8280), (9099, 9099), (8099, 8099)]
        );
    }
}
