//! How a portable role (`gateway`, `key-manager`, …) runs on each release: the pack it is
//! installed from, its start script, the profile the optimizer runs with, the start command's
//! arguments, its `server_role`, its cache-invalidation domain, its place in the start order and
//! whether it keeps API metadata in `apim_db`.

use std::fmt;

use super::layout;
use super::{PackKind, Product, ProductLine};

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

/// How one role of one release is installed, optimized, started and configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleProfile {
    /// The pack the node is unpacked from.
    pub pack: PackKind,
    /// The start (and stop) script under `bin/`.
    pub script: &'static str,
    /// The profile `bin/profileSetup.sh` runs with once after unpacking; `None`: no optimizer.
    pub optimizer_profile: Option<&'static str>,
    /// Arguments of the start command between the script and `start`.
    pub start_args: Vec<String>,
    /// The `[server] server_role` value.
    pub server_role: &'static str,
}

impl RoleProfile {
    /// A row of the table below. The start command passes `-Dprofile=<optimizer profile>` only
    /// where that profile is an OSGi profile folder of the pack ([`Product::osgi_profiles`]):
    /// Equinox takes `repository/components/<profile>/` as its install area, so a profile that
    /// is only an optimizer template (4.3–4.4 `api-key-manager-node`, 4.5 ACP `key-manager`)
    /// starts the server with the pack's `default` bundle set, as WSO2's own images do.
    fn row(
        product: &Product,
        pack: PackKind,
        script: &'static str,
        optimizer_profile: Option<&'static str>,
        server_role: &'static str,
    ) -> RoleProfile {
        let start_profile = optimizer_profile.filter(|p| product.osgi_profiles(pack).contains(p));
        RoleProfile {
            pack,
            script,
            optimizer_profile,
            start_args: start_profile.map(layout::profile_arg).into_iter().collect(),
            server_role,
        }
    }

    /// The file (relative to the carbon home) a node's `deployment.toml` is merged onto.
    pub fn base_config_file(&self) -> String {
        layout::base_config_file(self.optimizer_profile)
    }

    /// Whether the optimizer runs after a fresh unpack.
    pub fn optimizes(&self) -> bool {
        self.optimizer_profile.is_some()
    }

    /// The optimizer's argv (relative to the carbon home), if the role runs it.
    pub fn optimizer_argv(&self) -> Option<Vec<String>> {
        self.optimizer_profile.map(|p| {
            vec![
                layout::OPTIMIZER_SCRIPT.to_string(),
                layout::profile_arg(p),
                layout::OPTIMIZER_SKIP_CONFIG.to_string(),
            ]
        })
    }

    /// The start command's argv (relative to the carbon home).
    pub fn start_argv(&self) -> Vec<String> {
        let mut argv = vec![layout::script_path(self.script)];
        argv.extend(self.start_args.iter().cloned());
        argv.push(layout::START_VERB.to_string());
        argv
    }

    /// The stop command's argv (relative to the carbon home).
    pub fn stop_argv(&self) -> Vec<String> {
        vec![
            layout::script_path(self.script),
            layout::STOP_VERB.to_string(),
        ]
    }
}

impl Product {
    /// How `role` is installed and started on this release; `None` if the release has no such role.
    pub fn role_profile(&self, role: Role) -> Option<RoleProfile> {
        use PackKind::*;
        let row = |pack, script, optimizer_profile, server_role| {
            RoleProfile::row(self, pack, script, optimizer_profile, server_role)
        };
        match self.line() {
            ProductLine::V3 => {
                let profile = match role {
                    Role::KeyManager => "api-key-manager",
                    Role::TrafficManager => "traffic-manager",
                    Role::Publisher => "api-publisher",
                    Role::Devportal => "api-devportal",
                    Role::Gateway => "gateway-worker",
                    Role::ControlPlane => return None,
                };
                Some(row(AllInOne, "wso2server.sh", Some(profile), profile))
            }
            ProductLine::V4 => {
                let (profile, server_role) = match role {
                    Role::ControlPlane => ("control-plane", "control-plane"),
                    Role::TrafficManager => ("traffic-manager", "traffic-manager"),
                    Role::Gateway => ("gateway-worker", "gateway-worker"),
                    Role::KeyManager if self.minor <= 2 => {
                        ("api-key-manager-deprecated", "api-key-manager-deprecated")
                    }
                    // 4.3/4.4: the template of this profile sets server_role = "control-plane"
                    // and the pack has no OSGi profile of that name (started without one).
                    Role::KeyManager => ("api-key-manager-node", "control-plane"),
                    Role::Publisher | Role::Devportal => return None,
                };
                Some(row(AllInOne, "api-manager.sh", Some(profile), server_role))
            }
            ProductLine::V45Split => match role {
                Role::ControlPlane => Some(row(ControlPlane, "api-cp.sh", None, "default")),
                // The ACP's optimizer knows `key-manager`; the pack has no such OSGi profile.
                Role::KeyManager => Some(row(
                    ControlPlane,
                    "key-manager.sh",
                    Some("key-manager"),
                    "default",
                )),
                Role::Gateway => Some(row(Gateway, "gateway.sh", None, "default")),
                Role::TrafficManager => {
                    Some(row(TrafficManager, "traffic-manager.sh", None, "default"))
                }
                Role::Publisher | Role::Devportal => None,
            },
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

    /// Whether a role's `deployment.toml` gets `[apim.analytics]`: on 3.x the profiles whose
    /// 3.2 deployment templates configure it (publisher, devportal and gateway publish to or
    /// read from the API-M Analytics server); on 4.x and 4.5+ the gateway only, the one node
    /// the guides (4.5 guide, step 5) and the 4.2 templates configure to publish to the
    /// analytics cloud (the control-plane and key-manager templates carry no such section).
    pub fn configures_analytics(&self, role: Role) -> bool {
        match self.line() {
            ProductLine::V3 => matches!(role, Role::Publisher | Role::Devportal | Role::Gateway),
            ProductLine::V4 | ProductLine::V45Split => role == Role::Gateway,
        }
    }

    /// Whether the release's analytics is the 4.x analytics cloud, configured with a
    /// `config_endpoint` and an on-premise `auth_token` (3.x publishes to its own API-M
    /// Analytics server instead).
    pub fn has_cloud_analytics(&self) -> bool {
        self.line() != ProductLine::V3
    }

    /// Whether a role keeps API metadata in `apim_db` on this release.
    pub fn needs_apim_db(&self, role: Role) -> bool {
        match self.line() {
            ProductLine::V3 => role != Role::Gateway,
            ProductLine::V4 => matches!(
                role,
                Role::ControlPlane | Role::TrafficManager | Role::KeyManager
            ),
            ProductLine::V45Split => matches!(role, Role::ControlPlane | Role::KeyManager),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_follow_the_release() {
        let v3 = Product::parse("wso2am-3.2.0").unwrap();
        assert_eq!(
            v3.role_profile(Role::Devportal).unwrap().optimizer_profile,
            Some("api-devportal")
        );
        assert!(v3.role_profile(Role::ControlPlane).is_none());
        let v43 = Product::parse("wso2am-4.3.0").unwrap();
        let km = v43.role_profile(Role::KeyManager).unwrap();
        assert_eq!(
            (km.optimizer_profile, km.server_role),
            (Some("api-key-manager-node"), "control-plane")
        );
        let v45 = Product::parse("wso2am-4.5.0").unwrap();
        let gw = v45.role_profile(Role::Gateway).unwrap();
        assert_eq!(
            (gw.pack, gw.script, gw.optimizer_profile),
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

    #[test]
    fn commands_come_from_the_row() {
        let v43 = Product::parse("wso2am-4.3.0").unwrap();
        let km = v43.role_profile(Role::KeyManager).unwrap();
        assert!(km.optimizes());
        assert_eq!(
            km.optimizer_argv().unwrap(),
            [
                "bin/profileSetup.sh",
                "-Dprofile=api-key-manager-node",
                "--skipConfigOptimization"
            ]
        );
        // No OSGi profile of that name: the server starts on the default bundle set.
        assert_eq!(km.start_argv(), ["bin/api-manager.sh", "start"]);
        assert_eq!(km.stop_argv(), ["bin/api-manager.sh", "stop"]);
        let v45 = Product::parse("wso2am-4.5.0").unwrap();
        let km = v45.role_profile(Role::KeyManager).unwrap();
        assert_eq!(
            km.optimizer_argv().unwrap(),
            [
                "bin/profileSetup.sh",
                "-Dprofile=key-manager",
                "--skipConfigOptimization"
            ]
        );
        assert_eq!(km.start_argv(), ["bin/key-manager.sh", "start"]);
        let cp = v45.role_profile(Role::ControlPlane).unwrap();
        assert!(!cp.optimizes() && cp.optimizer_argv().is_none());
        assert_eq!(cp.start_argv(), ["bin/api-cp.sh", "start"]);
    }

    /// wso2_internals §2, release by release: the optimizer's profile and the start command's
    /// `-Dprofile` (only where the pack has that OSGi profile).
    #[test]
    fn every_release_starts_with_a_profile_only_where_its_osgi_folder_exists() {
        let expect = |v: &str, role: Role, optimizer: Option<&str>, start: Option<&str>| {
            let product = Product::parse(&format!("wso2am-{v}")).unwrap();
            let p = product.role_profile(role).unwrap();
            assert_eq!(p.optimizer_profile, optimizer, "{v} {role}: optimizer");
            let start_arg = start.map(layout::profile_arg);
            assert_eq!(
                p.start_args,
                start_arg.into_iter().collect::<Vec<_>>(),
                "{v} {role}"
            );
        };
        for v in ["3.0.0", "3.1.0", "3.2.0"] {
            for (role, p) in [
                (Role::KeyManager, "api-key-manager"),
                (Role::TrafficManager, "traffic-manager"),
                (Role::Publisher, "api-publisher"),
                (Role::Devportal, "api-devportal"),
                (Role::Gateway, "gateway-worker"),
            ] {
                expect(v, role, Some(p), Some(p));
            }
        }
        for v in ["4.0.0", "4.1.0", "4.2.0", "4.3.0", "4.4.0"] {
            for (role, p) in [
                (Role::ControlPlane, "control-plane"),
                (Role::TrafficManager, "traffic-manager"),
                (Role::Gateway, "gateway-worker"),
            ] {
                expect(v, role, Some(p), Some(p));
            }
        }
        for v in ["4.0.0", "4.1.0", "4.2.0"] {
            let p = "api-key-manager-deprecated";
            expect(v, Role::KeyManager, Some(p), Some(p));
        }
        for v in ["4.3.0", "4.4.0"] {
            expect(v, Role::KeyManager, Some("api-key-manager-node"), None);
        }
        for v in ["4.5.0", "4.6.0", "4.7.0"] {
            expect(v, Role::KeyManager, Some("key-manager"), None);
            for role in [Role::ControlPlane, Role::TrafficManager, Role::Gateway] {
                expect(v, role, None, None);
            }
        }
        // And the rule itself, for every row: a start profile is always an OSGi folder of the
        // pack, and an optimizer profile that is one is always started with.
        for v in [
            "3.2.0", "4.0.0", "4.2.0", "4.3.0", "4.4.0", "4.5.0", "4.7.0",
        ] {
            let product = Product::parse(&format!("wso2am-{v}")).unwrap();
            for role in product.roles() {
                let p = product.role_profile(*role).unwrap();
                let osgi = product.osgi_profiles(p.pack);
                let started = p
                    .start_args
                    .iter()
                    .find_map(|a| a.strip_prefix(layout::PROFILE_ARG_PREFIX));
                assert!(started.is_none_or(|s| osgi.contains(&s)), "{v} {role}");
                if let Some(o) = p.optimizer_profile.filter(|o| osgi.contains(o)) {
                    assert_eq!(started, Some(o), "{v} {role}");
                }
            }
        }
    }
}
