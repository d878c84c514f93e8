//! The simulator keeps its own tables of the product on purpose (an independent check of
//! apimctl's catalogue), so nothing keeps the two from drifting apart but this test: it compares
//! them release by release, role by role, and runs one simulated server the way the catalogue
//! says to, checking what the catalogue says it will see (optimizer markers, ready line, pid file,
//! command line, ports at an offset, the version endpoint).
//!
//! Where the two legitimately differ, the test says so explicitly ([`ONLY_SIMULATED_PROFILES`],
//! [`SIMULATED_RELEASES`], the JDK floor, the 4.5 all-in-one pack). A start command whose
//! `-Dprofile` names no OSGi profile folder of the pack fails it (the real launcher hangs).
//!
//! It also renders the example plans with apimctl's renderer and checks every key each node's
//! `deployment.toml` sets against the key catalogue the simulated pack ships (the templates,
//! `default.json`, `infer.json`, `key-mappings.json`): a key no pack uses is a misspelling.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use apim_e2e::fakejdk::{JdkSettings, MachineSettings, make_fake_jdk};
use apim_e2e::probe::{http_get, loopback_for, tcp_open, wait_until};
use apim_e2e::sim::roles::{PortKind, Role as SimRole};
use apim_e2e::simpack::{self, PackKind as SimPack, PackLayout, PackOptions, StoreFormat};
use apim_plan::catalogue::{
    PackKind, Port, Product, ProductLine, Role, all_ports, defaults, layout, readiness_ports,
};

const SIMJAVA: &str = env!("CARGO_BIN_EXE_apim-simjava");
/// Failure guard for polling; generous for a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(50);

/// The releases both sides know. apimctl also accepts 3.0 and 3.1, which the simulator does not
/// build (it has one 3.x layout, 3.2's).
const SIMULATED_RELEASES: [&str; 9] = [
    "3.2.0", "4.0.0", "4.1.0", "4.2.0", "4.3.0", "4.4.0", "4.5.0", "4.6.0", "4.7.0",
];

/// Profiles the simulated `profileSetup.sh` accepts (as the real one does) that apimctl never
/// runs: 4.0/4.1 still ship separate publisher and devportal profiles, which apimctl's 4.x roles
/// (control plane, traffic manager, gateway, key manager) do not use.
const ONLY_SIMULATED_PROFILES: [(&str, &str); 4] = [
    ("4.0.0", "api-publisher-deprecated"),
    ("4.0.0", "api-devportal-deprecated"),
    ("4.1.0", "api-publisher-deprecated"),
    ("4.1.0", "api-devportal-deprecated"),
];

fn sim_pack(pack: PackKind) -> SimPack {
    match pack {
        PackKind::AllInOne => SimPack::AllInOne,
        PackKind::ControlPlane => SimPack::ApiControlPlane,
        PackKind::Gateway => SimPack::UniversalGateway,
        PackKind::TrafficManager => SimPack::TrafficManager,
    }
}

fn sim_role(role: Role) -> SimRole {
    match role {
        Role::KeyManager => SimRole::KeyManager,
        Role::TrafficManager => SimRole::TrafficManager,
        Role::Publisher => SimRole::Publisher,
        Role::Devportal => SimRole::DevPortal,
        Role::Gateway => SimRole::Gateway,
        Role::ControlPlane => SimRole::ControlPlane,
    }
}

fn sim_layout(product: Product, pack: PackKind) -> PackLayout {
    PackLayout::new(sim_pack(pack), &product.version())
        .unwrap_or_else(|e| panic!("{product} {pack:?}: {e}"))
}

/// The `-Dprofile` value of a start command's arguments, if any.
fn start_profile(args: &[String]) -> Option<&str> {
    args.iter()
        .find_map(|a| a.strip_prefix(layout::PROFILE_ARG_PREFIX))
}

fn ports(list: impl IntoIterator<Item = u16>) -> BTreeSet<u16> {
    list.into_iter().collect()
}

#[test]
fn the_simulators_tables_match_the_catalogue() {
    for v in SIMULATED_RELEASES {
        let product = Product::parse(&format!("wso2am-{v}")).expect("a supported release");
        for pack in product.packs() {
            let sim = sim_layout(product, pack);
            assert_eq!(
                sim.top_dir,
                product.pack_top_dir(pack),
                "{product} {pack:?}"
            );
            assert_eq!(
                format!("{}-{v}", sim.product_name),
                product.server_name(pack),
                "{product} {pack:?}: /services/Version"
            );
            assert_eq!(
                sim.store_format == StoreFormat::Pkcs12,
                product.truststore_is_pkcs12(),
                "{product}: keystore bytes"
            );
            // The scripts, optimizer profiles and roles of this pack, as the catalogue uses them.
            let roles: Vec<Role> = product
                .roles()
                .iter()
                .copied()
                .filter(|r| product.role_profile(*r).expect("listed").pack == pack)
                .collect();
            let scripts: BTreeSet<&str> = roles
                .iter()
                .map(|r| product.role_profile(*r).unwrap().script)
                .collect();
            assert_eq!(
                scripts,
                sim.scripts.iter().copied().collect(),
                "{product} {pack:?}: start scripts"
            );
            let optimized: BTreeSet<&str> = roles
                .iter()
                .filter_map(|r| product.role_profile(*r).unwrap().optimizer_profile)
                .collect();
            let only_simulated: BTreeSet<&str> = ONLY_SIMULATED_PROFILES
                .iter()
                .filter(|(rv, _)| *rv == v)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(
                sim.profile_setup,
                !optimized.is_empty(),
                "{product} {pack:?}: profileSetup.sh"
            );
            assert_eq!(
                sim.profiles.iter().copied().collect::<BTreeSet<_>>(),
                &optimized | &only_simulated,
                "{product} {pack:?}: optimizer profiles"
            );
            assert_eq!(
                sim.osgi_profiles.iter().copied().collect::<BTreeSet<_>>(),
                product.osgi_profiles(pack).iter().copied().collect(),
                "{product} {pack:?}: OSGi profiles (what -Dprofile may name)"
            );
            for role in roles {
                check_role(product, role, &sim);
            }
        }
        // The catalogue's JDK floor is 8 where the 3.2–4.1 scripts say 1.7 (which no supported
        // server runs on); the ceilings agree.
        let sim_jdk = sim_layout(product, product.packs()[0]).jdk_range;
        let floor = if sim_jdk.0 == 7 { 8 } else { sim_jdk.0 };
        assert_eq!((floor, sim_jdk.1), product.jdk_range(), "{product}: JDKs");
        if product.line() == ProductLine::V45Split {
            // 4.5+ still ships an all-in-one pack, without the optimizer; apimctl runs the split
            // packs only.
            assert!(!product.packs().contains(&PackKind::AllInOne));
            assert!(!sim_layout(product, PackKind::AllInOne).profile_setup);
        }
    }
    assert_eq!(simpack::DEFAULT_STORE_PASSWORD, defaults::STORE_PASSWORD);
    assert_eq!(
        apim_e2e::sim::BOOTSTRAP_CLASS,
        layout::SERVER_PROCESS.main_class
    );
}

/// One role: the simulated server runs it as the same role, opens what the readiness check waits
/// for, and nothing the collision check does not know of; the gateway health check agrees.
fn check_role(product: Product, role: Role, sim: &PackLayout) {
    let profile = product.role_profile(role).expect("listed");
    let start = start_profile(&profile.start_args);
    if let Some(p) = start {
        assert!(
            sim.osgi_profiles.contains(&p),
            "{product} {role}: starts with -Dprofile={p}, which the pack has no OSGi folder for \
             (the real launcher hangs)"
        );
    }
    // The simulated server takes its role from -Dprofile, else from [server] server_role; a
    // node the key manager optimizer left with the key manager's webapps is a key manager.
    let km_webapps = profile
        .optimizer_profile
        .is_some_and(simpack::is_key_manager_profile);
    let as_simulated = SimRole::for_node(start, Some(profile.server_role), sim.kind, km_webapps);
    assert_eq!(as_simulated, sim_role(role), "{product} {role}: role");
    let opened = ports(as_simulated.ports().into_iter().map(|(p, _)| p));
    let ready = ports(readiness_ports(product, role).into_iter().map(Port::base));
    let known = ports(all_ports(product, role).into_iter().map(Port::base));
    assert!(
        ready.is_subset(&opened),
        "{product} {role}: waits for {ready:?}, the server opens {opened:?}"
    );
    assert!(
        opened.is_subset(&known),
        "{product} {role}: opens {opened:?}, the collision check knows {known:?}"
    );
    for (port, kind) in as_simulated.ports() {
        let named = match kind {
            PortKind::Http => Some(Port::Http),
            PortKind::Https => Some(Port::Https),
            PortKind::WsHealth => Some(Port::Ws),
            PortKind::PassthruHttp => Some(Port::PassthruHttp),
            PortKind::PassthruHttps => Some(Port::PassthruHttps),
            PortKind::Tcp => None,
        };
        if let Some(named) = named {
            assert_eq!(port, named.base(), "{product} {role}: {kind:?}");
        }
    }
    if role == Role::Gateway {
        assert_eq!(
            sim.has_gateway_healthcheck(),
            product.has_gateway_healthcheck(),
            "{product}: gateway health check"
        );
    }
}

/// Runs `argv` (relative to the carbon home, as the agent does) with `sh`.
fn run(home: &Path, argv: &[String], java_home: &Path) -> Output {
    Command::new("sh")
        .arg(home.join(&argv[0]))
        .args(&argv[1..])
        .env("JAVA_HOME", java_home)
        .env_remove("CARBON_HOME")
        .env_remove("JAVA_OPTS")
        .current_dir(home.parent().expect("parent"))
        .output()
        .expect("run sh")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&[o.stdout.as_slice(), o.stderr.as_slice()].concat()).into_owned()
}

/// Kills the simulated server when the test ends (also when it fails).
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = pid_in(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn pid_in(home: &Path) -> Option<u32> {
    fs::read_to_string(home.join(layout::SERVER_PROCESS.pid_file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_simulated_server_behaves_as_the_catalogue_says() {
    let product = Product::parse("wso2am-4.2.0").unwrap();
    let role = Role::TrafficManager;
    let profile = product.role_profile(role).unwrap();
    let offset = 3;
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("catalogue_drift", 1);
    let hosts = tmp.path().join("hosts");
    fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{ip} tm.example.com\n"),
    )
    .unwrap();
    let mut machine = MachineSettings::new(IpAddr::V4(ip), &hosts);
    machine.startup_delay_ms = 200;
    let jdk = make_fake_jdk(&tmp.path().join("jdk"), &JdkSettings::new(machine, SIMJAVA))
        .expect("fake jdk");
    let pack = simpack::build_pack(
        sim_pack(profile.pack),
        &product.version(),
        tmp.path(),
        &PackOptions::default(),
    )
    .expect("pack");
    assert_eq!(pack.top_dir, product.pack_top_dir(profile.pack));
    let file = fs::File::open(&pack.path).unwrap();
    zip::ZipArchive::new(file)
        .unwrap()
        .extract(tmp.path().join("opt"))
        .unwrap();
    let home = tmp.path().join("opt").join(&pack.top_dir);
    let _guard = Guard(home.clone());

    // The optimizer and its markers.
    let bad = vec![
        layout::OPTIMIZER_SCRIPT.to_string(),
        layout::profile_arg("no-such-profile"),
    ];
    let out = run(&home, &bad, &jdk.home);
    assert!(
        text(&out).contains(layout::OPTIMIZER_FAILURE),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(layout::OPTIMIZER_SUCCESS));
    let out = run(&home, &profile.optimizer_argv().unwrap(), &jdk.home);
    assert!(
        text(&out).contains(layout::OPTIMIZER_SUCCESS),
        "{}",
        text(&out)
    );

    // The config file, where the offset is set; peers are left out (this node talks to nobody).
    let config = home.join(layout::CONFIG_FILE);
    let kept: String = fs::read_to_string(&config)
        .expect("the optimizer leaves a config")
        .lines()
        .filter(|l| !l.contains("://"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut doc: toml::Table = kept.parse().expect("toml");
    let server = doc["server"].as_table_mut().expect("[server]");
    server.insert("offset".into(), toml::Value::Integer(offset.into()));
    server.insert("hostname".into(), "tm.example.com".into());
    fs::write(&config, toml::to_string(&doc).unwrap()).unwrap();

    // Start as the catalogue says; ready per the log line, pid file and ports it names.
    let out = run(&home, &profile.start_argv(), &jdk.home);
    assert!(out.status.success(), "{}", text(&out));
    let log = home.join(layout::LOG_FILE);
    assert!(
        wait_until(TIMEOUT, POLL, || fs::read_to_string(&log)
            .is_ok_and(|l| l.contains(layout::READY_LINE))),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let pid = pid_in(&home).expect("pid file");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("a live server");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let process = layout::SERVER_PROCESS;
    assert!(args.iter().any(|a| a == process.main_class), "{args:?}");
    let home_arg = args
        .iter()
        .find_map(|a| a.strip_prefix(process.home_arg_prefix))
        .expect("the home argument");
    assert_eq!(
        fs::canonicalize(home_arg).unwrap(),
        fs::canonicalize(&home).unwrap()
    );
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let home_env = format!("{}=", process.home_env);
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|e| e.starts_with(home_env.as_bytes())),
        "the scripts export {}",
        process.home_env
    );
    for port in readiness_ports(product, role) {
        let at = SocketAddr::new(IpAddr::V4(ip), port.at(offset));
        assert!(tcp_open(at), "{port:?} at offset {offset}");
    }
    assert!(!tcp_open(SocketAddr::new(
        IpAddr::V4(ip),
        Port::Https.base()
    )));
    let version = http_get(
        SocketAddr::new(IpAddr::V4(ip), Port::Http.at(offset)),
        layout::VERSION_PATH,
    )
    .expect("version");
    assert_eq!(version.status, 200);
    assert!(
        version.body.contains(&product.server_name(profile.pack)),
        "{}",
        version.body
    );

    let out = run(&home, &profile.stop_argv(), &jdk.home);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        wait_until(TIMEOUT, POLL, || !Path::new(&format!("/proc/{pid}"))
            .exists()
            || fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "the server stops"
    );
}

/// Every secret an example plan reads from the environment: any value will do.
struct AnyEnv;

impl apim_plan::secrets::EnvSource for AnyEnv {
    fn var(&self, _name: &str) -> Option<String> {
        Some("drift-test-value".to_string())
    }
}

/// Flattened keys of a `deployment.toml` (arrays of tables as their fields, `'a.b'` quoting).
fn toml_keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let seg = if k.contains('.') {
                    format!("'{k}'")
                } else {
                    k.clone()
                };
                let key = if prefix.is_empty() {
                    seg
                } else {
                    format!("{prefix}.{seg}")
                };
                toml_keys(&key, v, out);
            }
        }
        toml::Value::Array(items)
            if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
        {
            items.iter().for_each(|i| toml_keys(prefix, i, out));
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn every_key_the_renderer_writes_is_in_the_packs_catalogue() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut checked = 0;
    for plan in [
        "v3-single",
        "v3-ha",
        "v42-distributed",
        "v45-single",
        "v45-ha",
    ] {
        let path = examples.join(format!("{plan}.toml"));
        let (parsed, report) = apim_plan::validate::check_file(
            &path,
            &AnyEnv,
            apim_plan::validate::Options {
                verify_packs: false,
            },
        )
        .expect("read the example");
        let parsed = parsed.unwrap_or_else(|| panic!("{plan}: {}", report.render()));
        let render = apim_plan::render::render(&parsed, &AnyEnv, &apim_plan::pack::PackSet::none())
            .expect("render");
        for node in render.nodes() {
            let layout = sim_layout(render.product, node.pack);
            let catalogue = simpack::catalogue::for_layout(&layout);
            let doc: toml::Table = node.deployment_toml.parse().expect("rendered toml");
            let mut keys = BTreeSet::new();
            toml_keys("", &toml::Value::Table(doc), &mut keys);
            let unknown: Vec<&String> = keys.iter().filter(|k| !catalogue.knows(k)).collect();
            assert!(
                unknown.is_empty(),
                "{plan} {} ({}): keys no {} pack uses: {unknown:?}",
                node.name,
                node.role,
                layout.top_dir
            );
            checked += keys.len();
        }
    }
    assert!(checked > 500, "only {checked} keys checked");
}
