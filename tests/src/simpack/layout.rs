//! What a simulated pack contains, per kind and release: names, profiles, scripts, webapps.
//!
//! Facts follow the research notes on the real distributions (zip names, script names,
//! profile names per release, keystore formats); the file contents are our own stand-ins.

use std::fmt;

use super::SimPackError;

/// Which WSO2 distribution a pack imitates; 4.5 split the product into several packs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PackKind {
    /// The single all-in-one pack (`wso2am-<v>`), the only kind before 4.5.
    AllInOne,
    /// The 4.5+ API Control Plane pack (`wso2am-acp-<v>`), also runs the key manager.
    ApiControlPlane,
    /// The 4.5+ Universal Gateway pack (`wso2am-universal-gw-<v>`).
    UniversalGateway,
    /// The 4.5+ Traffic Manager pack (`wso2am-tm-<v>`).
    TrafficManager,
}

impl PackKind {
    /// Every kind, for tests that iterate over all packs.
    pub const ALL: [PackKind; 4] = [
        PackKind::AllInOne,
        PackKind::ApiControlPlane,
        PackKind::UniversalGateway,
        PackKind::TrafficManager,
    ];

    /// The zip/top-directory prefix before `-<version>`, as in the real assembly descriptors.
    pub fn prefix(self) -> &'static str {
        match self {
            PackKind::AllInOne => "wso2am",
            PackKind::ApiControlPlane => "wso2am-acp",
            PackKind::UniversalGateway => "wso2am-universal-gw",
            PackKind::TrafficManager => "wso2am-tm",
        }
    }

    /// The product name the server reports (`filter.properties` `product.name`).
    pub fn product_name(self) -> &'static str {
        match self {
            PackKind::AllInOne => "WSO2 API Manager",
            PackKind::ApiControlPlane => "WSO2 API Control Plane",
            PackKind::UniversalGateway => "WSO2 Universal Gateway",
            PackKind::TrafficManager => "WSO2 Traffic Manager",
        }
    }

    /// Recovers the kind from a product name (as written in `bin/version.txt`).
    pub fn from_product_name(name: &str) -> Option<PackKind> {
        PackKind::ALL
            .into_iter()
            .find(|k| k.product_name() == name.trim())
    }
}

impl fmt::Display for PackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// The release line a version belongs to; layout differences follow these lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Release {
    /// 3.2.x: five profiles, `wso2server.sh`, portals under `jaggeryapps/`.
    V3_2,
    /// 4.0.x: `api-manager.sh`, `*-deprecated` profiles, template swaps by `mv`.
    V4_0,
    /// 4.1.x: like 4.0, template swaps by `mv`+`cp`, gateway health check endpoint.
    V4_1,
    /// 4.2.x: portals exploded under `webapps/`, JDK 11–17.
    V4_2,
    /// 4.3.x: `api-key-manager-node` profile, JDK 11–21.
    V4_3,
    /// 4.4.x: like 4.3, keystores are PKCS12 bytes behind `.jks` names.
    V4_4,
    /// 4.5 and later: split packs; the all-in-one has no profile optimizer.
    V4_5,
}

impl Release {
    /// Maps a dotted version (`4.2.0`) to its release line.
    pub fn of(version: &str) -> Result<Release, SimPackError> {
        let bad = || SimPackError::BadVersion {
            version: version.to_string(),
        };
        let mut parts = version.split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let patch_ok = parts.next().is_some_and(|p| p.parse::<u32>().is_ok());
        if !patch_ok || parts.next().is_some() {
            return Err(bad());
        }
        Ok(match (major, minor) {
            (3, 2) => Release::V3_2,
            (4, 0) => Release::V4_0,
            (4, 1) => Release::V4_1,
            (4, 2) => Release::V4_2,
            (4, 3) => Release::V4_3,
            (4, 4) => Release::V4_4,
            (4, m) if m >= 5 => Release::V4_5,
            _ => return Err(bad()),
        })
    }
}

/// On-disk format of the keystores; 4.4 switched to PKCS12 bytes under `.jks` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreFormat {
    /// Sun JKS (`FEEDFEED` magic).
    Jks,
    /// PKCS#12 (DER, starts with `0x30`).
    Pkcs12,
}

impl StoreFormat {
    /// The `-storetype` value keytool understands.
    pub fn keytool_type(self) -> &'static str {
        match self {
            StoreFormat::Jks => "JKS",
            StoreFormat::Pkcs12 => "PKCS12",
        }
    }

    /// Detects the format from a keystore's first bytes.
    pub fn detect(bytes: &[u8]) -> Option<StoreFormat> {
        match bytes {
            [0xFE, 0xED, 0xFE, 0xED, ..] => Some(StoreFormat::Jks),
            [0x30, ..] => Some(StoreFormat::Pkcs12),
            _ => None,
        }
    }
}

/// Everything that differs between packs, computed from kind and version.
#[derive(Clone, Debug)]
pub struct PackLayout {
    /// Which distribution.
    pub kind: PackKind,
    /// Dotted version, e.g. `4.2.0`.
    pub version: String,
    /// Release line of `version`.
    pub release: Release,
    /// Zip name without `.zip`, also the single top directory inside it.
    pub top_dir: String,
    /// Product name reported by `/services/Version` (without the version suffix).
    pub product_name: &'static str,
    /// Server start scripts in `bin/` (all share the same contract).
    pub scripts: Vec<&'static str>,
    /// Whether `bin/profileSetup.sh` ships.
    pub profile_setup: bool,
    /// Profiles `profileSetup.sh` accepts (`-Dprofile=<name>` as `$1`).
    pub profiles: Vec<&'static str>,
    /// Files under `repository/resources/conf/deployment-templates/` (without `.toml`).
    pub templates: Vec<&'static str>,
    /// OSGi profile directories under `repository/components/`.
    pub osgi_profiles: Vec<&'static str>,
    /// Format of `wso2carbon.jks` and `client-truststore.jks`.
    pub store_format: StoreFormat,
    /// Carbon kernel version written to `bin/wso2carbon-version.txt`.
    pub kernel_version: &'static str,
    /// Oldest and newest JDK major version the start script accepts without complaint.
    pub jdk_range: (u32, u32),
    /// `.war` files under `repository/deployment/server/webapps/`.
    pub wars: Vec<&'static str>,
    /// Exploded webapp directories under `webapps/`.
    pub exploded_webapps: Vec<&'static str>,
    /// Portal apps under `repository/deployment/server/jaggeryapps/` (3.2–4.1 only).
    pub jaggery_apps: Vec<&'static str>,
}

impl PackLayout {
    /// Computes the layout for a kind and version; split kinds exist from 4.5 on.
    pub fn new(kind: PackKind, version: &str) -> Result<PackLayout, SimPackError> {
        let release = Release::of(version)?;
        if kind != PackKind::AllInOne && release < Release::V4_5 {
            return Err(SimPackError::UnsupportedVersion {
                kind,
                version: version.to_string(),
            });
        }
        let top_dir = format!("{}-{}", kind.prefix(), version);
        let scripts = match (kind, release) {
            (PackKind::AllInOne, Release::V3_2) => vec!["wso2server.sh"],
            (PackKind::AllInOne, _) => vec!["api-manager.sh"],
            (PackKind::ApiControlPlane, _) => vec!["api-cp.sh", "key-manager.sh"],
            (PackKind::UniversalGateway, _) => vec!["gateway.sh"],
            (PackKind::TrafficManager, _) => vec!["traffic-manager.sh"],
        };
        let profiles: Vec<&'static str> = match (kind, release) {
            (PackKind::AllInOne, Release::V3_2) => vec![
                "api-key-manager",
                "api-publisher",
                "api-devportal",
                "traffic-manager",
                "gateway-worker",
            ],
            (PackKind::AllInOne, Release::V4_0 | Release::V4_1) => vec![
                "api-key-manager-deprecated",
                "api-publisher-deprecated",
                "api-devportal-deprecated",
                "control-plane",
                "traffic-manager",
                "gateway-worker",
            ],
            (PackKind::AllInOne, Release::V4_2) => vec![
                "api-key-manager-deprecated",
                "control-plane",
                "traffic-manager",
                "gateway-worker",
            ],
            (PackKind::AllInOne, Release::V4_3 | Release::V4_4) => vec![
                "api-key-manager-node",
                "control-plane",
                "traffic-manager",
                "gateway-worker",
            ],
            (PackKind::ApiControlPlane, _) => vec!["key-manager"],
            _ => vec![],
        };
        let profile_setup = !profiles.is_empty();
        // The 4.5 TM pack still carries the old templates although it has no optimizer.
        let templates = if kind == PackKind::TrafficManager {
            vec![
                "control-plane",
                "gateway-worker",
                "api-key-manager-deprecated",
                "api-key-manager-node",
                "traffic-manager",
            ]
        } else {
            profiles.clone()
        };
        let osgi_profiles = match (kind, release) {
            (PackKind::AllInOne, Release::V3_2) => vec![
                "default",
                "api-key-manager",
                "api-publisher",
                "api-devportal",
                "traffic-manager",
                "gateway-worker",
            ],
            (PackKind::AllInOne, Release::V4_0 | Release::V4_1 | Release::V4_2) => vec![
                "default",
                "api-key-manager-deprecated",
                "api-publisher-deprecated",
                "api-devportal-deprecated",
                "control-plane",
                "traffic-manager",
                "gateway-worker",
            ],
            // No `api-key-manager-node` directory, as in the real 4.3/4.4 p2 build.
            (PackKind::AllInOne, Release::V4_3 | Release::V4_4) => {
                vec![
                    "default",
                    "control-plane",
                    "traffic-manager",
                    "gateway-worker",
                ]
            }
            _ => vec!["default"],
        };
        let store_format = if release >= Release::V4_4 {
            StoreFormat::Pkcs12
        } else {
            StoreFormat::Jks
        };
        let kernel_version = match release {
            Release::V3_2 => "4.6.0",
            Release::V4_0 => "4.6.1",
            Release::V4_1 => "4.6.3",
            Release::V4_2 => "4.8.1",
            Release::V4_3 => "4.9.10",
            Release::V4_4 => "4.9.27",
            Release::V4_5 => "4.9.28",
        };
        let jdk_range = match release {
            Release::V3_2 | Release::V4_0 | Release::V4_1 => (7, 11),
            Release::V4_2 => (11, 17),
            _ => (11, 21),
        };
        let (wars, exploded_webapps, jaggery_apps) = webapps(kind, release);
        Ok(PackLayout {
            kind,
            version: version.to_string(),
            release,
            top_dir,
            product_name: kind.product_name(),
            scripts,
            profile_setup,
            profiles,
            templates,
            osgi_profiles,
            store_format,
            kernel_version,
            jdk_range,
            wars,
            exploded_webapps,
            jaggery_apps,
        })
    }

    /// The first (main) start script.
    pub fn main_script(&self) -> &'static str {
        self.scripts[0]
    }

    /// Whether the gateway REST API (with its startup health check) exists in this release.
    pub fn has_gateway_healthcheck(&self) -> bool {
        self.release >= Release::V4_1 && self.wars.contains(&GATEWAY_WAR)
    }
}

/// Whether `profile` is one of the key manager optimizer profiles (`api-key-manager`,
/// `api-key-manager-deprecated`, `api-key-manager-node`, 4.5 ACP `key-manager`): after it only
/// the key manager webapps are left, which is what makes such a node a key manager.
pub fn is_key_manager_profile(profile: &str) -> bool {
    profile.starts_with("api-key-manager") || profile == "key-manager"
}

/// The gateway REST webapp that serves `server-startup-healthcheck`.
pub const GATEWAY_WAR: &str = "api#am#gateway#v2.war";

const IDENTITY_WARS: [&str; 5] = [
    "api#identity#consent-mgt#v1.0.war",
    "api#identity#recovery#v0.9.war",
    "api#identity#user#v1.0.war",
    "api#identity#oauth2#v1.0.war",
    "api#identity#oauth2#dcr#v1.1.war",
];

type Webapps = (Vec<&'static str>, Vec<&'static str>, Vec<&'static str>);

fn webapps(kind: PackKind, release: Release) -> Webapps {
    let endpoints = ["authenticationendpoint", "accountrecoveryendpoint"];
    let portals = ["publisher", "devportal", "admin"];
    match kind {
        PackKind::AllInOne if release == Release::V3_2 => {
            let mut wars = vec![
                "am#sample#calculator#v1.war",
                "am#sample#pizzashack#v1.war",
                "api#am#admin#v1.war",
                "api#am#publisher#v1.war",
                "api#am#store#v1.war",
                "client-registration#v0.17.war",
                "internal#data#v1.war",
                "keymanager-operations.war",
                "oauth2.war",
                "throttle#data#v1.war",
            ];
            wars.extend(IDENTITY_WARS);
            (wars, endpoints.to_vec(), portals.to_vec())
        }
        PackKind::AllInOne | PackKind::ApiControlPlane => {
            let mut wars = vec![
                "api#am#admin.war",
                "api#am#devportal.war",
                "api#am#publisher.war",
                "api#am#service-catalog#v1.war",
                "client-registration#v0.17.war",
                "internal#data#v1.war",
                "keymanager-operations.war",
                "oauth2.war",
            ];
            if release >= Release::V4_1 {
                wars.push("api#am#devops#v0.war");
            }
            if kind == PackKind::AllInOne {
                wars.extend([
                    GATEWAY_WAR,
                    "am#sample#calculator#v1.war",
                    "am#sample#pizzashack#v1.war",
                ]);
            }
            wars.extend(IDENTITY_WARS);
            wars.sort_unstable();
            if release <= Release::V4_1 {
                (wars, endpoints.to_vec(), portals.to_vec())
            } else {
                let mut exploded = portals.to_vec();
                exploded.extend(endpoints);
                (wars, exploded, vec![])
            }
        }
        PackKind::UniversalGateway => (
            vec![GATEWAY_WAR, "am#sample#pizzashack#v1.war"],
            vec![],
            vec![],
        ),
        PackKind::TrafficManager => (vec!["internal#data#v1.war"], vec![], vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_lines_parse_and_reject_garbage() {
        assert_eq!(Release::of("3.2.0").ok(), Some(Release::V3_2));
        assert_eq!(Release::of("4.4.0").ok(), Some(Release::V4_4));
        assert_eq!(Release::of("4.7.1").ok(), Some(Release::V4_5));
        for bad in ["4.2", "x.1.0", "3.1.0", "4.2.0.1", "5.0.0"] {
            assert!(Release::of(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn split_packs_need_4_5() {
        assert!(PackLayout::new(PackKind::UniversalGateway, "4.2.0").is_err());
        let acp = PackLayout::new(PackKind::ApiControlPlane, "4.5.0").expect("acp layout");
        assert_eq!(acp.scripts, vec!["api-cp.sh", "key-manager.sh"]);
        assert_eq!(acp.profiles, vec!["key-manager"]);
        assert!(!acp.has_gateway_healthcheck());
    }

    #[test]
    fn healthcheck_exists_from_4_1_in_gateway_capable_packs() {
        let l40 = PackLayout::new(PackKind::AllInOne, "4.0.0").expect("4.0");
        let l41 = PackLayout::new(PackKind::AllInOne, "4.1.0").expect("4.1");
        let gw = PackLayout::new(PackKind::UniversalGateway, "4.5.0").expect("gw");
        assert!(!l40.has_gateway_healthcheck());
        assert!(l41.has_gateway_healthcheck());
        assert!(gw.has_gateway_healthcheck());
    }

    #[test]
    fn store_format_detection() {
        assert_eq!(
            StoreFormat::detect(&[0xFE, 0xED, 0xFE, 0xED, 0]),
            Some(StoreFormat::Jks)
        );
        assert_eq!(
            StoreFormat::detect(&[0x30, 0x82]),
            Some(StoreFormat::Pkcs12)
        );
        assert_eq!(StoreFormat::detect(b"PK"), None);
    }
}
