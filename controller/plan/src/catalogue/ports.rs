//! The ports WSO2 API Manager listens on, by name, and which of them each role opens.
//!
//! Every port moves with the node's offset (`[server] offset`, or `-DportOffset`): the port a
//! node really uses is [`Port::at`] its offset. URLs written into `deployment.toml` are not
//! rewritten by the product, so the renderer applies the offset itself.

use super::{Product, ProductLine, Role};

/// A port of the product, named by what it serves; [`Port::base`] is its number at offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    /// 9443: HTTPS servlet and management (`transport.https.properties.port`).
    Https,
    /// 9763: HTTP servlet (`/services/Version`).
    Http,
    /// 8280: passthru HTTP, the gateway's API traffic.
    PassthruHttp,
    /// 8243: passthru HTTPS, the gateway's API traffic.
    PassthruHttps,
    /// 9099: WebSocket inbound (`apim.ws.port`).
    Ws,
    /// 8099: secure WebSocket inbound (`apim.wss.port`).
    Wss,
    /// 9021: WebSub event receiver, HTTP.
    WebSubHttp,
    /// 8021: WebSub event receiver, HTTPS.
    WebSubHttps,
    /// 5672: AMQP broker (throttle decisions, event hub topics; `tcp://` in URLs).
    Amqp,
    /// 8672: AMQP over TLS.
    AmqpSsl,
    /// 9611: binary event receiver (throttle and event hub events; `tcp://`).
    Binary,
    /// 9711: binary event receiver, authenticated (`ssl://`).
    BinaryAuth,
    /// 7611: thrift event receiver.
    Thrift,
    /// 7711: thrift event receiver, authenticated.
    ThriftAuth,
    /// 9999: JMX RMI registry.
    JmxRegistry,
    /// 11111: JMX RMI server.
    JmxServer,
    /// 10389: embedded LDAP (the 3.x key manager's).
    Ldap,
}

impl Port {
    /// The port's number at offset 0.
    pub const fn base(self) -> u16 {
        match self {
            Port::Https => 9443,
            Port::Http => 9763,
            Port::PassthruHttp => 8280,
            Port::PassthruHttps => 8243,
            Port::Ws => 9099,
            Port::Wss => 8099,
            Port::WebSubHttp => 9021,
            Port::WebSubHttps => 8021,
            Port::Amqp => 5672,
            Port::AmqpSsl => 8672,
            Port::Binary => 9611,
            Port::BinaryAuth => 9711,
            Port::Thrift => 7611,
            Port::ThriftAuth => 7711,
            Port::JmxRegistry => 9999,
            Port::JmxServer => 11111,
            Port::Ldap => 10389,
        }
    }

    /// The port a node with `offset` listens on (the validator keeps it within 65535).
    pub fn at(self, offset: u16) -> u16 {
        self.base() + offset
    }
}

/// The ports a role listens on that the readiness check waits for.
pub fn readiness_ports(product: Product, role: Role) -> Vec<Port> {
    let mut ports = vec![Port::Https, Port::Http];
    let event_hub = [Port::Amqp, Port::Binary, Port::BinaryAuth];
    match role {
        Role::Gateway => ports.extend([Port::PassthruHttp, Port::PassthruHttps]),
        Role::TrafficManager => ports.extend(event_hub),
        Role::ControlPlane if product.line() != ProductLine::V3 => ports.extend(event_hub),
        _ => {}
    }
    ports
}

/// Every port a role may open; used to detect offset collisions between nodes on one machine.
pub fn all_ports(product: Product, role: Role) -> Vec<Port> {
    // Servlet, JMX RMI registry and server, thrift event receivers.
    let mut ports = vec![
        Port::Https,
        Port::Http,
        Port::JmxRegistry,
        Port::JmxServer,
        Port::Thrift,
        Port::ThriftAuth,
    ];
    let event_hub = [Port::Amqp, Port::AmqpSsl, Port::Binary, Port::BinaryAuth];
    match role {
        Role::Gateway => ports.extend([
            Port::PassthruHttp,
            Port::PassthruHttps,
            Port::Ws,
            Port::Wss,
            Port::WebSubHttp,
            Port::WebSubHttps,
        ]),
        Role::TrafficManager | Role::ControlPlane => ports.extend(event_hub),
        // A key manager started without an OSGi profile (4.3+) runs the pack's default bundle
        // set, which holds the event hub (its server_role is control-plane, or the ACP's default).
        Role::KeyManager
            if product
                .role_profile(role)
                .is_some_and(|p| p.start_args.is_empty()) =>
        {
            ports.extend(event_hub)
        }
        _ => {}
    }
    if product.line() == ProductLine::V3 && role == Role::KeyManager {
        ports.push(Port::Ldap);
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_move_every_port_and_readiness_is_a_subset() {
        assert_eq!(Port::Amqp.at(3), 5675);
        assert_eq!(Port::BinaryAuth.at(3), 9714);
        let v45 = Product::parse("wso2am-4.5.0").unwrap();
        let v32 = Product::parse("wso2am-3.2.0").unwrap();
        for product in [v32, v45] {
            for role in product.roles() {
                let all = all_ports(product, *role);
                for p in readiness_ports(product, *role) {
                    assert!(all.contains(&p), "{role}: {p:?}");
                }
            }
        }
        assert_eq!(
            readiness_ports(v45, Role::TrafficManager)
                .iter()
                .map(|p| p.base())
                .collect::<Vec<_>>(),
            [9443, 9763, 5672, 9611, 9711]
        );
    }
}
