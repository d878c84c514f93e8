//! The simulated Carbon server: pid file, config mapper checks, the OSGi profile launch (see
//! [`super::launcher`]), the secure vault (see [`super::vault`]), the pack defaults a role
//! needs (see [`super::packdefaults`]), role ports, peers, readiness, the HTTP answers (see
//! [`super::http`]), its databases (see [`super::db`]), and graceful shutdown on SIGTERM.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;

use super::JvmArgs;
use super::config::{NodeConfig, PeerUrl, check, kernel_defaults, peer_urls, resolve_value};
use super::hosts::Hosts;
use super::http::{Shared, USER_WAR, accept_loop};
use super::keystore::load_identity;
use super::log::CarbonLog;
use super::roles::{PortKind, Role};
use super::vault::{self, Vault};
use super::{db, launcher, packdefaults};
use crate::fakejdk::MachineSettings;
use crate::simpack::{GATEWAY_WAR, PackKind, Release, catalogue};

const MAIN: &str = "org.wso2.carbon.server.Main";
const CORE: &str = "org.wso2.carbon.core.internal.CarbonCoreActivator";
/// Synapse's main configuration file, relative to `repository/deployment/server`.
const SYNAPSE_XML: &str = "synapse-configs/default/synapse.xml";
const FINALIZER: &str = "org.wso2.carbon.core.internal.StartupFinalizerServiceComponent";
const SERVER_MANAGER: &str = "org.wso2.carbon.core.init.CarbonServerManager";
const STARTING: &str = "Starting WSO2 Carbon...";
/// The exit status that makes the start script's loop start the JVM again.
const RESTART_EXIT_STATUS: i32 = 121;
/// The status of a JVM ended by SIGTERM with no Carbon shutdown hook installed (128 + 15).
const SIGTERM_STATUS: i32 = 143;

/// Runs the server until SIGTERM (exit 0), a startup failure (exit 1) or a configured exit.
pub async fn run(jvm: JvmArgs, jdk_home: PathBuf, java_version: String) -> i32 {
    let started = Instant::now();
    let props = &jvm.sysprops;
    let carbon_home = props
        .get("carbon.home")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARBON_HOME").map(PathBuf::from))
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();

    // Machine-level problems are JVM-level failures: no pid file, `Error:` on stderr.
    let machine = match MachineSettings::load(&jdk_home) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    if let Err(e) = Hosts::load(&machine.hosts_file) {
        eprintln!("Error: {e}");
        return 1;
    }

    // Like Carbon's Main: the pid file first, before anything can fail.
    let pid_file = carbon_home.join("wso2carbon.pid");
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        eprintln!("Error: cannot write {}: {e}", pid_file.display());
        return 1;
    }
    let tmp = carbon_home.join("tmp");
    let _ = std::fs::create_dir_all(tmp.join("work"));
    let _ = std::fs::write(
        tmp.join(format!("carbon-{}.lck", std::process::id())),
        b"locked\n",
    );
    let log = Arc::new(CarbonLog::open(
        &carbon_home.join("repository/logs/wso2carbon.log"),
    ));

    let (kind, version) = match read_product(&carbon_home) {
        Ok(p) => p,
        Err(e) => {
            log.error(MAIN, &format!("Cannot start the server: {e}"));
            return 1;
        }
    };
    let release = match Release::of(&version) {
        Ok(r) => r,
        Err(e) => {
            log.error(MAIN, &format!("Cannot start the server: {e}"));
            return 1;
        }
    };
    let product = format!("{}-{version}", kind.product_name());

    // The config mapper.
    let conf_dir = props
        .get("carbon.config.dir.path")
        .map(PathBuf::from)
        .unwrap_or_else(|| carbon_home.join("repository/conf"));
    let toml_path = props
        .get("deployment.conf.file.path")
        .map(PathBuf::from)
        .unwrap_or_else(|| conf_dir.join("deployment.toml"));
    let text = match std::fs::read_to_string(&toml_path) {
        Ok(t) => t,
        Err(e) => {
            config_failure(
                &log,
                &format!(
                    "Configuration file {} cannot be read: {e}",
                    toml_path.display()
                ),
            );
            return 1;
        }
    };
    let cfg = NodeConfig::parse_lenient(&text);
    if let Some(err) = &cfg.parse_error {
        log.error(
            "org.wso2.carbon.nextgen.config.TomlParser",
            &format!(
                "Error while parsing TOML config file: {}",
                err.replace('\n', " ")
            ),
        );
    }
    let resources_dir = props
        .get("carbon.new.config.dir.path")
        .map(PathBuf::from)
        .unwrap_or_else(|| carbon_home.join(catalogue::CONF_DIR));
    let mut defaults = kernel_defaults();
    if let Ok(json) = std::fs::read_to_string(resources_dir.join("default.json")) {
        defaults.extend(catalogue::defaults_of(&json));
    }
    let env = |k: &str| std::env::var(k).ok();
    if let Err(e) = check(&cfg, &defaults, props, &env) {
        config_failure(&log, &e.to_string());
        return 1;
    }
    launcher::config_parser_lines(&log, &carbon_home, &resources_dir, &text);

    // Equinox starts from the OSGi profile folder -Dprofile names; without one, nothing starts.
    let profile = props
        .get("profile")
        .map_or(launcher::DEFAULT_PROFILE, String::as_str);
    if !launcher::profile_launches(&carbon_home, profile) {
        return hang_without_carbon().await;
    }
    let vault = vault::open(&carbon_home, &cfg, props, &defaults, &log).await;

    let role_name = props
        .get("profile")
        .cloned()
        .or_else(|| cfg.get_str("server.server_role").map(str::to_string))
        .unwrap_or_else(|| "default".to_string());
    let server_dir = carbon_home.join("repository/deployment/server");
    let role = Role::for_node(
        props.get("profile").map(String::as_str),
        cfg.get_str("server.server_role"),
        kind,
        Role::km_webapps_only(&server_dir),
    );
    let offset = match port_offset(props, &cfg) {
        Ok(o) => o,
        Err(msg) => {
            log.error(MAIN, &msg);
            return 1;
        }
    };
    let hostname = cfg
        .get_str("server.hostname")
        .unwrap_or("localhost")
        .to_string();
    let overrides = cfg.overrides();

    log.info(CORE, STARTING);
    log.info(
        CORE,
        &format!(
            "Operating System : Linux, {}",
            match std::env::consts::ARCH {
                "x86_64" => "amd64",
                other => other,
            }
        ),
    );
    log.info(CORE, &format!("Java Home        : {}", jdk_home.display()));
    log.info(CORE, &format!("Java Version     : {java_version}"));
    log.info(CORE, "Java VM          : OpenJDK 64-Bit Server VM");
    log.info(
        CORE,
        &format!("Carbon Home      : {}", carbon_home.display()),
    );
    log.info(CORE, &format!("Java Temp Dir    : {}", tmp.display()));
    let user = std::env::var("USER").unwrap_or_else(|_| "wso2carbon".to_string());
    log.info(CORE, &format!("User             : {user}, en-US, UTC"));
    if role_name != "default" {
        log.info(CORE, &format!("Server role      : {role_name}"));
    }

    let missing = packdefaults::missing(role, release, kind, &cfg.table);
    if !missing.is_empty() {
        for line in &missing {
            log.error(packdefaults::LOGGER, line);
        }
        return wait_for_shutdown(&log, kind).await;
    }
    let vault_secret = |alias: &str| Some(vault.secret(alias));
    let databases = db::Context {
        carbon_home: &carbon_home,
        cfg: &cfg,
        defaults: &defaults,
        props,
        secret: &vault_secret,
        hosts_file: &machine.hosts_file,
        log: &log,
    };
    if !db::check(&databases, role).await {
        return wait_for_shutdown(&log, kind).await;
    }

    // Synapse initialises from its configuration folder: a gateway without synapse.xml (e.g.
    // a shared folder mounted empty and never seeded) does not start.
    if role.serves_gateway_api() {
        let synapse = server_dir.join(SYNAPSE_XML);
        if !synapse.is_file() {
            log.error(
                "org.wso2.carbon.mediation.initializer.ServiceBusInitializer",
                &format!(
                    "Couldn't initialize the ESB...\norg.apache.synapse.SynapseException: \
                     The synapse.xml location {} doesn't exist",
                    synapse.display()
                ),
            );
            return 1;
        }
    }
    let war_present = server_dir.join("webapps").join(GATEWAY_WAR).exists();
    let secret = |alias: &str| Some(vault.secret(alias));
    let admin = server_dir.join("webapps").join(USER_WAR).exists().then(|| {
        let get = |k: &str| resolve_value(&cfg, k, &defaults, props, &env, &secret);
        (
            get("super_admin.username").unwrap_or_default(),
            get("super_admin.password").unwrap_or_default(),
        )
    });
    let shared = Arc::new(Shared {
        product: product.clone(),
        ready: AtomicBool::new(false),
        healthcheck: role.serves_gateway_api() && war_present && release >= Release::V4_1,
        admin,
    });
    let https_port = u32::from(9443u16) + offset;
    let tls = match tls_acceptor(&cfg, &carbon_home, &defaults, props, &vault) {
        Ok(t) => t,
        Err(e) => {
            log.error(
                "org.apache.catalina.core.StandardService",
                &format!("Failed to initialize connector [Connector[HTTP/1.1-{https_port}]]\njava.io.IOException: {e}"),
            );
            return 1;
        }
    };

    for (base, port_kind) in role.ports() {
        let port = match u16::try_from(u32::from(base) + offset) {
            Ok(p) => p,
            Err(_) => {
                log.error(
                    MAIN,
                    &format!("Port {base} + offset {offset} is out of range"),
                );
                return 1;
            }
        };
        let addr = SocketAddr::new(machine.bind_address, port);
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                log.error(
                    "org.apache.catalina.core.StandardService",
                    &format!("Failed to start connector on {addr}: {e}"),
                );
                return 1;
            }
        };
        log.info(listener_logger(base), &listener_message(base, addr));
        let shared = shared.clone();
        let tls =
            matches!(port_kind, PortKind::Https | PortKind::PassthruHttps).then(|| tls.clone());
        tokio::spawn(accept_loop(listener, port_kind, tls, shared));
    }

    let machine = Arc::new(machine);
    for peer in peer_urls(&cfg.table) {
        tokio::spawn(watch_peer(peer, machine.clone(), log.clone()));
    }

    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log.error(MAIN, &format!("Cannot install the shutdown hook: {e}"));
            return 1;
        }
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            log.error(MAIN, &format!("Cannot install the shutdown hook: {e}"));
            return 1;
        }
    };

    let delay = Duration::from_millis(
        overrides
            .startup_delay_ms
            .unwrap_or(machine.startup_delay_ms),
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = term.recv() => return shutdown(&log, kind),
        _ = int.recv() => return shutdown(&log, kind),
    }
    if !overrides.never_ready {
        log.info(FINALIZER, &format!("Server           :  {product}"));
        log.info(
            FINALIZER,
            &format!("WSO2 Carbon started in {} sec", started.elapsed().as_secs()),
        );
        if role.has_ui() {
            let https = https_port;
            log.info(
                "org.wso2.carbon.ui.internal.CarbonUIServiceComponent",
                &format!("Mgt Console URL  : https://{hostname}:{https}/carbon/"),
            );
            if matches!(role, Role::AllInOne | Role::ControlPlane) {
                log.info(
                    "org.wso2.carbon.ui.internal.CarbonUIServiceComponent",
                    &format!("API Developer Portal Default Context : https://{hostname}:{https}/devportal"),
                );
                log.info(
                    "org.wso2.carbon.ui.internal.CarbonUIServiceComponent",
                    &format!(
                        "API Publisher Default Context : https://{hostname}:{https}/publisher"
                    ),
                );
            }
        }
        shared.ready.store(true, Ordering::SeqCst);
    }
    if overrides.restart_requests > 0 && !overrides.never_ready {
        let log_path = carbon_home.join("repository/logs/wso2carbon.log");
        let starts = std::fs::read_to_string(&log_path)
            .map(|t| t.matches(STARTING).count())
            .unwrap_or(0);
        if starts <= overrides.restart_requests as usize {
            log.info(SERVER_MANAGER, "Restarting WSO2 Carbon...");
            return RESTART_EXIT_STATUS;
        }
    }
    if let Some(code) = overrides.exit_code {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(overrides.exit_after_ms)) => {
                log.error(MAIN, &format!("Unexpected failure; the server is exiting with status {code}"));
                return code;
            }
            _ = term.recv() => return shutdown(&log, kind),
            _ = int.recv() => return shutdown(&log, kind),
        }
    }
    tokio::select! {
        _ = term.recv() => shutdown(&log, kind),
        _ = int.recv() => shutdown(&log, kind),
    }
}

fn config_failure(log: &CarbonLog, reason: &str) {
    log.error(
        MAIN,
        &format!(
            "Error while performing configuration changes\norg.wso2.carbon.nextgen.config.ConfigParserException: {reason}"
        ),
    );
}

/// Equinox without bundles: nothing of Carbon runs, nothing is logged, nothing listens; the JVM
/// only ends on a signal, with no Carbon shutdown hook to log anything.
async fn hang_without_carbon() -> i32 {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return 1;
    };
    let Ok(mut int) = signal(SignalKind::interrupt()) else {
        return 1;
    };
    tokio::select! {
        _ = term.recv() => SIGTERM_STATUS,
        _ = int.recv() => 130,
    }
}

/// A Carbon that will not become ready: it runs, listens nowhere, and shuts down on a signal.
async fn wait_for_shutdown(log: &CarbonLog, kind: PackKind) -> i32 {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return 1;
    };
    let Ok(mut int) = signal(SignalKind::interrupt()) else {
        return 1;
    };
    tokio::select! {
        _ = term.recv() => shutdown(log, kind),
        _ = int.recv() => shutdown(log, kind),
    }
}

fn shutdown(log: &CarbonLog, kind: PackKind) -> i32 {
    log.info(SERVER_MANAGER, "Shutdown hook triggered....");
    log.info(
        SERVER_MANAGER,
        &format!("Gracefully shutting down {}...", kind.product_name()),
    );
    log.info(
        "org.wso2.carbon.core.ServerManagement",
        "Starting to switch to maintenance mode...",
    );
    log.info(
        "org.wso2.carbon.core.ServerManagement",
        "Stopped all transport listeners",
    );
    log.info(SERVER_MANAGER, "Shutting down OSGi framework...");
    log.info(SERVER_MANAGER, "Shutdown complete");
    log.info(SERVER_MANAGER, "Halting JVM");
    0
}

/// Reads `bin/version.txt` (`<Product Name> v<version>`).
fn read_product(carbon_home: &Path) -> Result<(PackKind, String), String> {
    let path = carbon_home.join("bin/version.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or_default().trim();
    let (name, version) = line
        .rsplit_once(" v")
        .ok_or_else(|| format!("{}: unexpected content {line:?}", path.display()))?;
    let kind = PackKind::from_product_name(name)
        .ok_or_else(|| format!("{}: unknown product {name:?}", path.display()))?;
    Ok((kind, version.to_string()))
}

/// `-DportOffset` wins over `[server] offset` (an integer or a numeric string).
fn port_offset(props: &BTreeMap<String, String>, cfg: &NodeConfig) -> Result<u32, String> {
    if let Some(v) = props.get("portOffset") {
        return v
            .trim()
            .parse()
            .map_err(|_| format!("Invalid port offset -DportOffset={v}"));
    }
    match cfg.get("server.offset") {
        None => Ok(0),
        Some(toml::Value::Integer(i)) => {
            u32::try_from(*i).map_err(|_| format!("Invalid port offset {i} in [server]"))
        }
        Some(toml::Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("Invalid port offset {s:?} in [server]")),
        Some(other) => Err(format!("Invalid port offset {other} in [server]")),
    }
}

fn listener_logger(base: u16) -> &'static str {
    match base {
        9443 | 9763 => "org.apache.coyote.http11.Http11NioProtocol",
        8280 | 8243 => {
            "org.apache.synapse.transport.passthru.core.PassThroughListeningIOReactorManager"
        }
        9099 | 8099 => {
            "org.wso2.carbon.inbound.endpoint.protocol.websocket.InboundWebsocketListener"
        }
        5672 => "org.wso2.andes.server.Broker",
        _ => "org.wso2.carbon.databridge.receiver.binary.internal.BinaryDataReceiver",
    }
}

fn listener_message(base: u16, addr: SocketAddr) -> String {
    match base {
        9443 => format!(
            "Starting ProtocolHandler [\"https-jsse-nio-{}\"]",
            addr.port()
        ),
        9763 => format!("Starting ProtocolHandler [\"http-nio-{}\"]", addr.port()),
        8280 => format!("Pass-through HTTP Listener started on {addr}"),
        8243 => format!("Pass-through HTTPS Listener started on {addr}"),
        9099 => format!("WebSocket inbound endpoint started on {addr}"),
        8099 => format!("Secure WebSocket inbound endpoint started on {addr}"),
        5672 => format!("Starting AMQP transport on {addr}"),
        9711 => format!("Started Binary SSL Transport on port : {}", addr.port()),
        _ => format!("Started Binary TCP Transport on port : {}", addr.port()),
    }
}

/// TLS for the servlet port from `[keystore.tls]` (default: the primary keystore), like Tomcat.
fn tls_acceptor(
    cfg: &NodeConfig,
    carbon_home: &Path,
    defaults: &BTreeMap<String, String>,
    props: &BTreeMap<String, String>,
    vault: &Vault,
) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let env = |k: &str| std::env::var(k).ok();
    // `$secret{}` values are what the vault resolved (the alias itself when it could not).
    let secret = |alias: &str| Some(vault.secret(alias));
    let get = |field: &str| {
        let key = format!("keystore.tls.{field}");
        resolve_value(cfg, &key, defaults, props, &env, &secret)
            .ok_or(format!("{key} cannot be resolved"))
    };
    let file_name = get("file_name")?;
    let password = get("password")?;
    let alias = get("alias")?;
    let key_password = get("key_password")?;
    let path = if Path::new(&file_name).is_absolute() {
        PathBuf::from(&file_name)
    } else {
        carbon_home
            .join("repository/resources/security")
            .join(&file_name)
    };
    let data = std::fs::read(&path).map_err(|e| format!("{} ({e})", path.display()))?;
    let identity = load_identity(&data, &password, &alias, &key_password)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let chain = identity
        .chain
        .into_iter()
        .map(CertificateDer::from)
        .collect::<Vec<_>>();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_pkcs8));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn describe_connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "Connection refused".to_string(),
        std::io::ErrorKind::TimedOut => "Connection timed out".to_string(),
        _ => e.to_string(),
    }
}

async fn try_peer(peer: &PeerUrl, machine: &MachineSettings) -> Result<(), String> {
    let hosts = Hosts::load(&machine.hosts_file).map_err(|e| e.to_string())?;
    let ip = hosts
        .resolve(&peer.host)
        .ok_or_else(|| format!("java.net.UnknownHostException: {}", peer.host))?;
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if ip.is_ipv4() == machine.bind_address.is_ipv4() {
        socket
            .bind(SocketAddr::new(machine.bind_address, 0))
            .map_err(|e| e.to_string())?;
    }
    let connect = socket.connect(SocketAddr::new(ip, peer.port));
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(describe_connect_error(&e)),
        Err(_) => Err("Connection timed out".to_string()),
    }
}

/// Retries a peer until it accepts a TCP connection, logging every failure with its name.
async fn watch_peer(peer: PeerUrl, machine: Arc<MachineSettings>, log: Arc<CarbonLog>) {
    let logger = match peer.scheme.as_str() {
        "https" => "org.wso2.carbon.apimgt.impl.utils.APIUtil",
        _ => "org.wso2.carbon.databridge.agent.endpoint.DataEndpointConnectionWorker",
    };
    // Back off like a real client: the first retries are quick, later ones at most 2 s apart.
    let first = Duration::from_millis(machine.peer_retry_ms.max(10));
    let cap = first.max(Duration::from_secs(2));
    let mut retry = first;
    loop {
        match try_peer(&peer, &machine).await {
            Ok(()) => {
                log.info(
                    logger,
                    &format!(
                        "Connected to peer {}:{} ({}:// from {})",
                        peer.host, peer.port, peer.scheme, peer.key
                    ),
                );
                return;
            }
            Err(why) => log.error(
                logger,
                &format!(
                    "Error while connecting to {}://{}:{} ({}). Peer {}:{} unreachable: {why}",
                    peer.scheme, peer.host, peer.port, peer.key, peer.host, peer.port
                ),
            ),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(cap);
    }
}
