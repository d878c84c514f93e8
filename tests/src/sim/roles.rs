//! Which role a simulated node plays and which ports that role listens on (research §3).

use crate::simpack::PackKind;

/// The role a node runs as, derived from `-Dprofile`, `server.server_role` or the pack kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything in one JVM (the default profile of the all-in-one pack).
    AllInOne,
    /// 4.x control plane, or the 4.5 API Control Plane pack (with its event hub).
    ControlPlane,
    /// A key manager (any of the key manager profiles).
    KeyManager,
    /// A traffic manager.
    TrafficManager,
    /// A gateway worker or the universal gateway.
    Gateway,
    /// 3.x/4.0–4.1 publisher.
    Publisher,
    /// 3.x/4.0–4.1 developer portal.
    DevPortal,
}

/// What a listening port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// The HTTP servlet port (9763): `/services/Version`.
    Http,
    /// The HTTPS servlet/management port (9443): `/services/Version`, gateway health check.
    Https,
    /// The WebSocket port (9099): `GET /health`.
    WsHealth,
    /// The gateway's passthru HTTP port (8280): API traffic; with no API deployed, 404 for
    /// every path once started (503 before).
    PassthruHttp,
    /// The gateway's passthru HTTPS port (8243), as [`PortKind::PassthruHttp`] over TLS.
    PassthruHttps,
    /// Any other port: TCP accept only.
    Tcp,
}

impl Role {
    /// Maps a profile or `server_role` value to a role; `default` (or anything unknown) means
    /// what the pack runs without a profile.
    pub fn from_name(name: &str, kind: PackKind) -> Role {
        match name {
            "gateway-worker" => Role::Gateway,
            "traffic-manager" => Role::TrafficManager,
            "control-plane" => Role::ControlPlane,
            "api-key-manager"
            | "api-key-manager-deprecated"
            | "api-key-manager-node"
            | "key-manager" => Role::KeyManager,
            "api-publisher" | "api-publisher-deprecated" => Role::Publisher,
            "api-devportal" | "api-devportal-deprecated" => Role::DevPortal,
            _ => match kind {
                PackKind::AllInOne => Role::AllInOne,
                PackKind::ApiControlPlane => Role::ControlPlane,
                PackKind::UniversalGateway => Role::Gateway,
                PackKind::TrafficManager => Role::TrafficManager,
            },
        }
    }

    /// The role a node runs as: `-Dprofile` (unless `default`), else `server_role`; a node the
    /// pack runs as a control plane (or all-in-one) whose webapps were cut down to the key
    /// manager set by the key manager optimizer is a key manager. That is how 4.3/4.4
    /// (`api-key-manager-node.toml` says `server_role = "control-plane"`) and the 4.5 ACP
    /// (`key-manager.toml` says `default`) run key managers: the OSGi bundles are the default
    /// profile's, and profileSetup.sh left only the key manager's webapps.
    pub fn for_node(
        profile: Option<&str>,
        server_role: Option<&str>,
        kind: PackKind,
        km_webapps_only: bool,
    ) -> Role {
        let name = profile
            .filter(|p| *p != "default")
            .or(server_role)
            .unwrap_or("default");
        match Role::from_name(name, kind) {
            Role::ControlPlane | Role::AllInOne if km_webapps_only => Role::KeyManager,
            role => role,
        }
    }

    /// Whether the webapps under `server_dir` (`repository/deployment/server`) are the set the
    /// key manager optimizer leaves: the key manager operations app, and no publisher.
    pub fn km_webapps_only(server_dir: &std::path::Path) -> bool {
        let webapps = server_dir.join("webapps");
        let publisher = std::fs::read_dir(&webapps)
            .map(|entries| {
                entries.flatten().any(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("api#am#publisher") || name == "publisher"
                })
            })
            .unwrap_or(false)
            || server_dir.join("jaggeryapps/publisher").exists();
        webapps.join("keymanager-operations.war").exists() && !publisher
    }

    /// Whether this role serves the gateway REST API (if its webapp is deployed).
    pub fn serves_gateway_api(self) -> bool {
        matches!(self, Role::AllInOne | Role::Gateway)
    }

    /// Whether this role has the management console and portals (logs their URLs).
    pub fn has_ui(self) -> bool {
        matches!(
            self,
            Role::AllInOne
                | Role::ControlPlane
                | Role::Publisher
                | Role::DevPortal
                | Role::KeyManager
        )
    }

    /// Default (offset 0) ports of the role with what each speaks.
    pub fn ports(self) -> Vec<(u16, PortKind)> {
        let mut ports = vec![(9443, PortKind::Https), (9763, PortKind::Http)];
        let gateway = [
            (8280, PortKind::PassthruHttp),
            (8243, PortKind::PassthruHttps),
            (9099, PortKind::WsHealth),
            (8099, PortKind::Tcp),
        ];
        let event_hub = [
            (5672, PortKind::Tcp),
            (9611, PortKind::Tcp),
            (9711, PortKind::Tcp),
        ];
        match self {
            Role::AllInOne => {
                ports.extend(gateway);
                ports.extend(event_hub);
            }
            Role::Gateway => ports.extend(gateway),
            Role::TrafficManager | Role::ControlPlane => ports.extend(event_hub),
            Role::KeyManager | Role::Publisher | Role::DevPortal => {}
        }
        ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_map_to_roles() {
        assert_eq!(
            Role::from_name("api-key-manager-node", PackKind::AllInOne),
            Role::KeyManager
        );
        assert_eq!(
            Role::from_name("default", PackKind::UniversalGateway),
            Role::Gateway
        );
        assert_eq!(
            Role::from_name("default", PackKind::ApiControlPlane),
            Role::ControlPlane
        );
        assert_eq!(
            Role::from_name("default", PackKind::AllInOne),
            Role::AllInOne
        );
    }

    #[test]
    fn key_manager_webapps_make_a_control_plane_a_key_manager() {
        let km = |p, r, k, w| Role::for_node(p, r, k, w);
        let acp = PackKind::ApiControlPlane;
        assert_eq!(km(None, Some("default"), acp, true), Role::KeyManager);
        assert_eq!(km(None, Some("default"), acp, false), Role::ControlPlane);
        assert_eq!(
            km(
                Some("default"),
                Some("control-plane"),
                PackKind::AllInOne,
                true
            ),
            Role::KeyManager
        );
        assert_eq!(
            km(Some("gateway-worker"), None, PackKind::AllInOne, false),
            Role::Gateway
        );
    }

    #[test]
    fn gateway_and_tm_port_sets() {
        let gw: Vec<u16> = Role::Gateway.ports().into_iter().map(|p| p.0).collect();
        assert_eq!(gw, [9443, 9763, 8280, 8243, 9099, 8099]);
        let tm: Vec<u16> = Role::TrafficManager
            .ports()
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(tm, [9443, 9763, 5672, 9611, 9711]);
    }
}
