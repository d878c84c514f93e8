//! The releases apimctl supports and what each one ships: product lines, packs, their top
//! directories and server names, the JDKs the start scripts accept, and release features.

use std::fmt;

use super::Role;

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

    /// The zip's base name (= its top directory) before `-<version>`.
    pub fn prefix(self) -> &'static str {
        match self {
            PackKind::AllInOne => "wso2am",
            PackKind::ControlPlane => "wso2am-acp",
            PackKind::Gateway => "wso2am-universal-gw",
            PackKind::TrafficManager => "wso2am-tm",
        }
    }

    /// The product name the pack's server reports, without the version.
    pub fn product_name(self) -> &'static str {
        match self {
            PackKind::AllInOne => "WSO2 API Manager",
            PackKind::ControlPlane => "WSO2 API Control Plane",
            PackKind::Gateway => "WSO2 Universal Gateway",
            PackKind::TrafficManager => "WSO2 Traffic Manager",
        }
    }
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

    /// Whether gateways keep deployed APIs on their own disk, so gateways in HA must share them
    /// (3.x); 4.x and later gateways pull their artifacts from the control plane.
    pub fn gateways_share_artifacts(&self) -> bool {
        self.line() == ProductLine::V3
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
        format!("{}-{}", pack.prefix(), self.version())
    }

    /// The product name `/services/Version` answers with, for readiness checks.
    pub fn server_name(&self, pack: PackKind) -> String {
        format!("{}-{}", pack.product_name(), self.version())
    }

    /// The OSGi profile folders under `repository/components/` of a pack (the p2 profiles the
    /// build creates): the only values a start command's `-Dprofile` may take, since Equinox
    /// boots from `repository/components/<profile>/configuration`. Optimizer profiles are not
    /// always among them: 4.3–4.4 `api-key-manager-node` and 4.5 ACP `key-manager` are only
    /// `profileSetup.sh` cases and `deployment-templates/` files.
    pub fn osgi_profiles(&self, pack: PackKind) -> &'static [&'static str] {
        match (self.line(), pack) {
            (ProductLine::V3, _) => &[
                "default",
                "api-key-manager",
                "api-publisher",
                "api-devportal",
                "traffic-manager",
                "gateway-worker",
            ],
            // 4.2 dropped the publisher and devportal optimizer cases, not their OSGi profiles.
            (ProductLine::V4, _) if self.minor <= 2 => &[
                "default",
                "api-key-manager-deprecated",
                "api-publisher-deprecated",
                "api-devportal-deprecated",
                "control-plane",
                "traffic-manager",
                "gateway-worker",
            ],
            (ProductLine::V4, _) => &[
                "default",
                "control-plane",
                "traffic-manager",
                "gateway-worker",
            ],
            (ProductLine::V45Split, _) => &["default"],
        }
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
    fn packs_are_named_after_their_release() {
        let v45 = Product::parse("wso2am-4.5.0").unwrap();
        assert_eq!(v45.pack_top_dir(PackKind::ControlPlane), "wso2am-acp-4.5.0");
        assert_eq!(
            v45.server_name(PackKind::Gateway),
            "WSO2 Universal Gateway-4.5.0"
        );
        let v32 = Product::parse("wso2am-3.2.0").unwrap();
        assert_eq!(v32.pack_top_dir(PackKind::AllInOne), "wso2am-3.2.0");
        assert_eq!(
            v32.server_name(PackKind::AllInOne),
            "WSO2 API Manager-3.2.0"
        );
    }
}
