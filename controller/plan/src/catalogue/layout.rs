//! Where things are in a node's carbon home (the unpacked pack), how the optimizer and the start
//! scripts are called, how a running server shows itself (log line, pid file, command line) and
//! the HTTP paths it serves. The same for every supported release.

/// The server's configuration, relative to the carbon home.
pub const CONFIG_FILE: &str = "repository/conf/deployment.toml";

/// The optimizer's per-profile configurations, relative to the carbon home: `profileSetup.sh`
/// copies `<profile>.toml` over [`CONFIG_FILE`] (wso2_internals.md §2).
pub const DEPLOYMENT_TEMPLATES_DIR: &str = "repository/resources/conf/deployment-templates";

/// The config mapper's Jinja templates (`**.j2`), relative to the carbon home: every key a
/// `deployment.toml` can set that is not in a rule file is a variable of one of these.
pub const CONFIG_TEMPLATES_DIR: &str = "repository/resources/conf/templates";

/// The config mapper's rule files, relative to the carbon home: defaults, inferences and key
/// renames, whose keys are the rest of what a `deployment.toml` can set (wso2_internals.md §5).
pub const KEY_RULE_FILES: [&str; 3] = [
    "repository/resources/conf/default.json",
    "repository/resources/conf/infer.json",
    "repository/resources/conf/key-mappings.json",
];

/// The file a node's `deployment.toml` starts from: what the optimizer installs for its profile,
/// else what the pack ships.
pub fn base_config_file(optimizer_profile: Option<&str>) -> String {
    match optimizer_profile {
        Some(p) => format!("{DEPLOYMENT_TEMPLATES_DIR}/{p}.toml"),
        None => CONFIG_FILE.to_string(),
    }
}

/// Keystores and truststores, relative to the carbon home; `[keystore.*] file_name` and
/// `[truststore] file_name` are resolved here.
pub const SECURITY_DIR: &str = "repository/resources/security";

/// The server's log folder, relative to the carbon home: what `apimctl logs` may read.
pub const LOG_DIR: &str = "repository/logs";

/// The carbon log, relative to the carbon home (in [`LOG_DIR`]).
pub const LOG_FILE: &str = "repository/logs/wso2carbon.log";

/// What the carbon log says once the server has started
/// (`StartupFinalizerServiceComponent`: `WSO2 Carbon started in <n> sec`).
pub const READY_LINE: &str = "WSO2 Carbon started in";

/// The folder of the start scripts, relative to the carbon home.
pub const BIN_DIR: &str = "bin";

/// The profile optimizer, relative to the carbon home; run once after unpacking.
pub const OPTIMIZER_SCRIPT: &str = "bin/profileSetup.sh";

/// Tells the optimizer to leave `deployment.toml` alone: apimctl writes the whole file itself
/// (from the same template), so nothing depends on what the optimizer copied.
pub const OPTIMIZER_SKIP_CONFIG: &str = "--skipConfigOptimization";

/// What the optimizer prints when it worked (it exits 0 either way).
pub const OPTIMIZER_SUCCESS: &str = "Finished the optimizations";

/// What the optimizer prints for a profile it does not know.
pub const OPTIMIZER_FAILURE: &str = "Profile is not specified properly";

/// The argument that names a profile, to the optimizer and to the start scripts.
pub const PROFILE_ARG_PREFIX: &str = "-Dprofile=";

/// The start scripts' verb that starts the server in the background.
pub const START_VERB: &str = "start";

/// The start scripts' verb that stops it.
pub const STOP_VERB: &str = "stop";

/// `-Dprofile=<profile>`.
pub fn profile_arg(profile: &str) -> String {
    format!("{PROFILE_ARG_PREFIX}{profile}")
}

/// `bin/<script>`.
pub fn script_path(script: &str) -> String {
    format!("{BIN_DIR}/{script}")
}

/// How the server process can be recognised on a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerProcess {
    /// The pid file the server writes, relative to the carbon home.
    pub pid_file: &'static str,
    /// The JVM's main class.
    pub main_class: &'static str,
    /// The JVM argument that names the carbon home (the home follows it).
    pub home_arg_prefix: &'static str,
    /// The environment variable the start scripts take the carbon home from.
    pub home_env: &'static str,
}

/// 3.x gateways keep every deployed API here (Synapse configurations, throttling execution
/// plans, event publishers): the 3.x guide (step 6.5) has all gateways of a cluster share it
/// (NFS recommended), or an API published through the gateway LB lands on one gateway only.
pub const GATEWAY_SHARED_DIR: &str = "repository/deployment/server";

/// The folders of [`GATEWAY_SHARED_DIR`] whose files are the deployed APIs and throttling
/// policies: what apimctl keeps in step when it synchronises the gateways itself.
pub const GATEWAY_SYNCED_DIRS: [&str; 2] = [
    "repository/deployment/server/synapse-configs",
    "repository/deployment/server/executionplans",
];

/// The carbon server's process identity.
pub const SERVER_PROCESS: ServerProcess = ServerProcess {
    pid_file: "wso2carbon.pid",
    main_class: "org.wso2.carbon.bootstrap.Bootstrap",
    home_arg_prefix: "-Dcarbon.home=",
    home_env: "CARBON_HOME",
};

/// Served on the HTTP servlet port: answers with the server name and version.
pub const VERSION_PATH: &str = "/services/Version";

/// Served by gateways (4.1 and later) on the HTTPS port: 200 once every API is deployed.
pub const GATEWAY_HEALTHCHECK_PATH: &str = "/api/am/gateway/v2/server-startup-healthcheck";

/// The admin services' base path peers call (key manager, event hub, throttling, gateways).
pub const SERVICES_PATH: &str = "/services/";

/// The developer portal's path.
pub const DEVPORTAL_PATH: &str = "/devportal";

/// The token revocation notification endpoint's path (`internal#data#v1` webapp).
pub const NOTIFY_PATH: &str = "/internal/data/v1/notify";

/// The OAuth2 revoke endpoint's path.
pub const REVOKE_PATH: &str = "/oauth2/revoke";
