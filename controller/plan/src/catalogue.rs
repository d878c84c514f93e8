//! What each WSO2 API Manager release looks like: product lines, packs, roles, profiles, scripts
//! and ports.
//!
//! This is the only place that knows how a portable role (`gateway`, `key-manager`, …) maps to a
//! pack, a start script and a `-Dprofile` for a given release. Facts come from the product's
//! assembly files and startup scripts (see `docs/plan.md` for the table).

use std::fmt;

/// A portable node role, independent of the release's profile names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Key Manager (3.x profile `api-key-manager`; optional separate node on 4.x).
    KeyManager,
    /// Traffic Manager (throttling decisions; event hub on 3.x).
    TrafficManager,
    /// API Publisher (3.x only).
    Publisher,
    /// Developer Portal (3.x only).
    Devportal,
    /// API Gateway (`gateway-worker`, or the 4.5 Universal Gateway).
    Gateway,
    /// Control plane: publisher, devportal, key manager and event hub in one (4.x).
    ControlPlane,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 6] = [
        Role::KeyManager,
        Role::TrafficManager,
        Role::Publisher,
        Role::Devportal,
        Role::Gateway,
        Role::ControlPlane,
    ];

    /// The name operators write in `plan.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::KeyManager => "key-manager",
            Role::TrafficManager => "traffic-manager",
            Role::Publisher => "publisher",
            Role::Devportal => "devportal",
            Role::Gateway => "gateway",
            Role::ControlPlane => "control-plane",
        }
    }

    /// Parses a plan role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The cache-invalidation domain the guides give this role.
    pub fn cache_domain(self) -> &'static str {
        match self {
            Role::KeyManager => "km-domain",
            Role::TrafficManager => "tm-domain",
            Role::Publisher => "publisher-domain",
            Role::Devportal => "devportal-domain",
            Role::Gateway => "gateway-domain",
            Role::ControlPlane => "control-plane-domain",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three layouts WSO2 has shipped API Manager in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProductLine {
    /// 3.0–3.2: one pack, `wso2server.sh`, five profiles.
    V3,
    /// 4.0–4.4: one pack, `api-manager.sh`, control-plane / traffic-manager / gateway-worker.
    V4,
    /// 4.5 and later: separate API Control Plane, Universal Gateway and Traffic Manager packs.
    V45Split,
}

/// Which distribution a node is installed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackKind {
    /// The single pack of 3.x and 4.0–4.4 (`wso2am-<v>`).
    AllInOne,
    /// The 4.5+ API Control Plane pack (`wso2am-acp-<v>`).
    ControlPlane,
    /// The 4.5+ Universal Gateway pack (`wso2am-universal-gw-<v>`).
    Gateway,
    /// The 4.5+ Traffic Manager pack (`wso2am-tm-<v>`).
    TrafficManager,
}

impl PackKind {
    /// The key under `[distributions]` in the plan.
    pub fn plan_key(self) -> &'static str {
        match self {
            PackKind::AllInOne => "default",
            PackKind::ControlPlane => "control-plane",
            PackKind::Gateway => "gateway",
            PackKind::TrafficManager => "traffic-manager",
        }
    }

    /// Every pack kind, in a fixed order.
    pub const ALL: [PackKind; 4] = [
        PackKind::AllInOne,
        PackKind::ControlPlane,
        PackKind::Gateway,
        PackKind::TrafficManager,
    ];
}

/// A supported API Manager release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    /// Major version (3 or 4).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

/// How one role of one release is installed, optimized, started and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleProfile {
    /// The pack the node is unpacked from.
    pub pack: PackKind,
    /// The start script under `bin/`.
    pub script: &'static str,
    /// The `-Dprofile` value, if the role runs a profile.
    pub profile: Option<&'static str>,
    /// Whether `bin/profileSetup.sh` must run once after unpacking.
    pub optimize: bool,
    /// The `[server] server_role` value.
    pub server_role: &'static str,
}

/// Base ports (offset 0) a role listens on and the readiness check waits for.
pub fn readiness_ports(product: Product, role: Role) -> Vec<u16> {
    let mut ports = vec![9443, 9763];
    match role {
        Role::Gateway => ports.extend([8280, 8243]),
        Role::TrafficManager => ports.extend([5672, 9611, 9711]),
        Role::ControlPlane if product.line() != ProductLine::V3 => ports.extend([5672, 9611, 9711]),
        _ => {}
    }
    ports
}

/// Every base port a role may open; used to detect offset collisions between nodes on one machine.
pub fn all_ports(product: Product, role: Role) -> Vec<u16> {
    // Servlet, JMX RMI registry and server, KDC, thrift event receivers.
    let mut ports = vec![9443, 9763, 9999, 11111, 7611, 7711];
    match role {
        Role::Gateway => ports.extend([8280, 8243, 9099, 8099, 9021, 8021]),
        Role::TrafficManager => ports.extend([5672, 8672, 9611, 9711]),
        Role::ControlPlane => ports.extend([5672, 8672, 9611, 9711]),
        _ => {}
    }
    if product.line() == ProductLine::V3 && role == Role::KeyManager {
        ports.push(10389);
    }
    ports
}

impl Product {
    /// Parses a product id such as `wso2am-3.2.0` or `wso2am-4.5.0`.
    pub fn parse(id: &str) -> Result<Product, String> {
        let version = id
            .strip_prefix("wso2am-")
            .ok_or_else(|| format!("product must look like `wso2am-<version>`, found `{id}`"))?;
        let parts: Vec<&str> = version.split('.').collect();
        let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
        let Some(nums) = nums.filter(|n| n.len() == 3) else {
            return Err(format!(
                "`{version}` is not a version like 3.2.0 (product ids: {})",
                Product::SUPPORTED.join(", ")
            ));
        };
        let product = Product {
            major: nums[0],
            minor: nums[1],
            patch: nums[2],
        };
        let supported = matches!((product.major, product.minor), (3, 0..=2) | (4, 0..=7));
        if !supported {
            return Err(format!(
                "WSO2 API Manager {version} is not supported (supported: {})",
                Product::SUPPORTED.join(", ")
            ));
        }
        Ok(product)
    }

    /// The product ids apimctl knows, for messages.
    pub const SUPPORTED: [&'static str; 3] = [
        "wso2am-3.0.0..3.2.0",
        "wso2am-4.0.0..4.4.0",
        "wso2am-4.5.0..4.7.0",
    ];

    /// `3.2.0`.
    pub fn version(&self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.patch)
    }

    /// Which layout this release uses.
    pub fn line(&self) -> ProductLine {
        match (self.major, self.minor) {
            (3, _) => ProductLine::V3,
            (4, 0..=4) => ProductLine::V4,
            _ => ProductLine::V45Split,
        }
    }

    /// The packs this release ships, in a fixed order.
    pub fn packs(&self) -> Vec<PackKind> {
        match self.line() {
            ProductLine::V3 | ProductLine::V4 => vec![PackKind::AllInOne],
            ProductLine::V45Split => vec![
                PackKind::ControlPlane,
                PackKind::Gateway,
                PackKind::TrafficManager,
            ],
        }
    }

    /// The top directory of a pack's zip (and the zip's base name).
    pub fn pack_top_dir(&self, pack: PackKind) -> String {
        let v = self.version();
        match pack {
            PackKind::AllInOne => format!("wso2am-{v}"),
            PackKind::ControlPlane => format!("wso2am-acp-{v}"),
            PackKind::Gateway => format!("wso2am-universal-gw-{v}"),
            PackKind::TrafficManager => format!("wso2am-tm-{v}"),
        }
    }

    /// The product name `/services/Version` answers with, for readiness checks.
    pub fn server_name(&self, pack: PackKind) -> String {
        let name = match pack {
            PackKind::AllInOne => "WSO2 API Manager",
            PackKind::ControlPlane => "WSO2 API Control Plane",
            PackKind::Gateway => "WSO2 Universal Gateway",
            PackKind::TrafficManager => "WSO2 Traffic Manager",
        };
        format!("{name}-{}", self.version())
    }

    /// Roles this release can run, required ones first.
    pub fn roles(&self) -> &'static [Role] {
        match self.line() {
            ProductLine::V3 => &[
                Role::KeyManager,
                Role::TrafficManager,
                Role::Publisher,
                Role::Devportal,
                Role::Gateway,
            ],
            ProductLine::V4 | ProductLine::V45Split => &[
                Role::ControlPlane,
                Role::TrafficManager,
                Role::Gateway,
                Role::KeyManager,
            ],
        }
    }

    /// Roles a working cluster of this release must have at least one node of.
    pub fn required_roles(&self) -> &'static [Role] {
        match self.line() {
            ProductLine::V3 => self.roles(),
            ProductLine::V4 | ProductLine::V45Split => {
                &[Role::ControlPlane, Role::TrafficManager, Role::Gateway]
            }
        }
    }

    /// The guides' start order: a lower rank starts earlier. A node only waits for peers of a
    /// strictly lower rank, which breaks the mutual references (KM ↔ TM, CP ↔ GW) the wiring has.
    pub fn start_rank(&self, role: Role) -> u32 {
        match self.line() {
            ProductLine::V3 => match role {
                Role::KeyManager => 0,
                Role::TrafficManager => 1,
                Role::Publisher => 2,
                Role::Devportal => 3,
                Role::Gateway | Role::ControlPlane => 4,
            },
            ProductLine::V4 | ProductLine::V45Split => match role {
                Role::KeyManager => 0,
                Role::ControlPlane | Role::Publisher | Role::Devportal => 1,
                Role::TrafficManager => 2,
                Role::Gateway => 3,
            },
        }
    }

    /// Whether the gateway serves `/api/am/gateway/v2/server-startup-healthcheck` (4.1 and later).
    pub fn has_gateway_healthcheck(&self) -> bool {
        self.major > 4 || (self.major == 4 && self.minor >= 1)
    }

    /// The JDK feature releases this release's start scripts support (the scripts' own check;
    /// JDK 8 as the floor where they say 1.7).
    pub fn jdk_range(&self) -> (u32, u32) {
        match (self.major, self.minor) {
            (3, _) | (4, 0 | 1) => (8, 11),
            (4, 2) => (11, 17),
            _ => (11, 21),
        }
    }

    /// Whether `client-truststore.jks` in the pack is PKCS12 bytes (4.4 and later).
    pub fn truststore_is_pkcs12(&self) -> bool {
        self.major == 4 && self.minor >= 4
    }

    /// How `role` is installed and started on this release; `None` if the release has no such role.
    pub fn role_profile(&self, role: Role) -> Option<RoleProfile> {
        let p = |pack, script, profile: Option<&'static str>, optimize, server_role| RoleProfile {
            pack,
            script,
            profile,
            optimize,
            server_role,
        };
        use PackKind::*;
        match self.line() {
            ProductLine::V3 => {
                let s = "wso2server.sh";
                let profile = match role {
                    Role::KeyManager => "api-key-manager",
                    Role::TrafficManager => "traffic-manager",
                    Role::Publisher => "api-publisher",
                    Role::Devportal => "api-devportal",
                    Role::Gateway => "gateway-worker",
                    Role::ControlPlane => return None,
                };
                Some(p(AllInOne, s, Some(profile), true, profile))
            }
            ProductLine::V4 => {
                let s = "api-manager.sh";
                match role {
                    Role::ControlPlane => {
                        Some(p(AllInOne, s, Some("control-plane"), true, "control-plane"))
                    }
                    Role::TrafficManager => Some(p(
                        AllInOne,
                        s,
                        Some("traffic-manager"),
                        true,
                        "traffic-manager",
                    )),
                    Role::Gateway => Some(p(
                        AllInOne,
                        s,
                        Some("gateway-worker"),
                        true,
                        "gateway-worker",
                    )),
                    Role::KeyManager if self.minor <= 2 => Some(p(
                        AllInOne,
                        s,
                        Some("api-key-manager-deprecated"),
                        true,
                        "api-key-manager-deprecated",
                    )),
                    // 4.3/4.4: the template of this profile sets server_role = "control-plane".
                    Role::KeyManager => Some(p(
                        AllInOne,
                        s,
                        Some("api-key-manager-node"),
                        true,
                        "control-plane",
                    )),
                    Role::Publisher | Role::Devportal => None,
                }
            }
            ProductLine::V45Split => match role {
                Role::ControlPlane => Some(p(ControlPlane, "api-cp.sh", None, false, "default")),
                Role::KeyManager => Some(p(
                    ControlPlane,
                    "key-manager.sh",
                    Some("key-manager"),
                    true,
                    "default",
                )),
                Role::Gateway => Some(p(Gateway, "gateway.sh", None, false, "default")),
                Role::TrafficManager => Some(p(
                    TrafficManager,
                    "traffic-manager.sh",
                    None,
                    false,
                    "default",
                )),
                Role::Publisher | Role::Devportal => None,
            },
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wso2am-{}", self.version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_versions_and_rejects_others() {
        assert_eq!(
            Product::parse("wso2am-3.2.0").unwrap().line(),
            ProductLine::V3
        );
        assert_eq!(
            Product::parse("wso2am-4.2.0").unwrap().line(),
            ProductLine::V4
        );
        assert_eq!(
            Product::parse("wso2am-4.5.0").unwrap().line(),
            ProductLine::V45Split
        );
        assert!(
            Product::parse("wso2am-2.6.0")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            Product::parse("apim-4.2.0")
                .unwrap_err()
                .contains("wso2am-")
        );
        assert!(Product::parse("wso2am-4.x").is_err());
    }

    #[test]
    fn profiles_follow_the_release() {
        let v3 = Product::parse("wso2am-3.2.0").unwrap();
        assert_eq!(
            v3.role_profile(Role::Devportal).unwrap().profile,
            Some("api-devportal")
        );
        assert!(v3.role_profile(Role::ControlPlane).is_none());
        let v43 = Product::parse("wso2am-4.3.0").unwrap();
        let km = v43.role_profile(Role::KeyManager).unwrap();
        assert_eq!(
            (km.profile, km.server_role),
            (Some("api-key-manager-node"), "control-plane")
        );
        let v45 = Product::parse("wso2am-4.5.0").unwrap();
        let gw = v45.role_profile(Role::Gateway).unwrap();
        assert_eq!(
            (gw.pack, gw.script, gw.profile),
            (PackKind::Gateway, "gateway.sh", None)
        );
        assert_eq!(v45.pack_top_dir(PackKind::ControlPlane), "wso2am-acp-4.5.0");
        assert!(v45.role_profile(Role::Publisher).is_none());
        assert_eq!(v3.jdk_range(), (8, 11));
        assert_eq!(
            Product::parse("wso2am-4.2.0").unwrap().jdk_range(),
            (11, 17)
        );
        assert_eq!(v45.jdk_range(), (11, 21));
    }
}
