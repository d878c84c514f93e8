//! The simulated WSO2 distributions behave like the real ones where an agent can look:
//! zip layout, keystores, profileSetup.sh, the start scripts' contract, the simulated JVM's
//! log lines, ports, `/services/Version`, the gateway health check, config errors and peers.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use apim_e2e::fakejdk::{FakeJdk, JdkSettings, MachineSettings, make_fake_jdk};
use apim_e2e::probe::{
    http_get, https_get_insecure, loopback_for, tcp_open, tls_peer_certificate, wait_until,
};
use apim_e2e::simpack::{
    EvilEntry, Filler, PackInfo, PackKind, PackLayout, PackOptions, StoreFormat, build_pack,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

const SIMJAVA: &str = env!("CARGO_BIN_EXE_apim-simjava");
/// Failure guard for polling; generous for a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(50);

fn build(kind: PackKind, version: &str, dir: &Path) -> PackInfo {
    build_pack(kind, version, dir, &PackOptions::default())
        .unwrap_or_else(|e| panic!("building {kind} {version}: {e}"))
}

/// Unzips a pack into `dest` and returns CARBON_HOME.
fn unzip(pack: &PackInfo, dest: &Path) -> PathBuf {
    let file = fs::File::open(&pack.path).expect("open zip");
    let mut archive = zip::ZipArchive::new(file).expect("read zip");
    archive.extract(dest).expect("extract");
    dest.join(&pack.top_dir)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn log_text(home: &Path) -> String {
    fs::read_to_string(home.join("repository/logs/wso2carbon.log")).unwrap_or_default()
}

fn wait_log(home: &Path, needle: &str) -> bool {
    wait_until(TIMEOUT, POLL, || log_text(home).contains(needle))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a script from `bin/` with `sh`, JAVA_HOME set or removed; CARBON_HOME never inherited.
fn sh(home: &Path, script: &str, args: &[&str], java_home: Option<&Path>) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(home.join("bin").join(script))
        .args(args)
        .env_remove("CARBON_HOME")
        .env_remove("JAVA_OPTS")
        .current_dir(home.parent().expect("parent"));
    match java_home {
        Some(j) => cmd.env("JAVA_HOME", j),
        None => cmd.env_remove("JAVA_HOME"),
    };
    cmd.output().expect("run sh")
}

/// A simulated machine: its loopback address, hosts file and fake JDK.
struct Machine {
    hosts: PathBuf,
    jdk: FakeJdk,
}

fn machine(root: &Path, name: &str, ip: Ipv4Addr, hosts: &[(&str, Ipv4Addr)]) -> Machine {
    let dir = root.join(name);
    fs::create_dir_all(&dir).expect("machine dir");
    let hosts_path = dir.join("hosts");
    let mut text = format!("127.0.0.1 localhost\n{ip} {name}\n");
    for (host, addr) in hosts {
        text.push_str(&format!("{addr} {host}\n"));
    }
    fs::write(&hosts_path, text).expect("hosts");
    let mut machine = MachineSettings::new(IpAddr::V4(ip), &hosts_path);
    machine.startup_delay_ms = 200;
    let jdk =
        make_fake_jdk(&dir.join("jdk"), &JdkSettings::new(machine, SIMJAVA)).expect("fake jdk");
    Machine {
        hosts: hosts_path,
        jdk,
    }
}

fn pid_of(home: &Path) -> Option<i32> {
    fs::read_to_string(home.join("wso2carbon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Kills whatever node still runs in `home` when a test ends (also when it fails).
struct NodeGuard(PathBuf);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(pid) = pid_of(&self.0)
            && alive(pid)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn write_toml(home: &Path, text: &str) {
    fs::write(home.join("repository/conf/deployment.toml"), text).expect("write toml");
}

fn zip_names(pack: &PackInfo) -> Vec<(String, Option<u32>, bool)> {
    let mut archive = zip::ZipArchive::new(fs::File::open(&pack.path).expect("open")).expect("zip");
    (0..archive.len())
        .map(|i| {
            let f = archive.by_index_raw(i).expect("entry");
            (
                f.name().expect("name").to_string(),
                f.unix_mode(),
                f.is_symlink(),
            )
        })
        .collect()
}

fn keytool_list(store: &Path) -> String {
    let keytool = apim_e2e::simpack::find_keytool().expect("keytool");
    let out = Command::new(keytool)
        .args(["-list", "-keystore"])
        .arg(store)
        .args(["-storepass:env", "SIM_TEST_PASS"])
        .env("SIM_TEST_PASS", "wso2carbon")
        .output()
        .expect("keytool -list");
    assert!(
        out.status.success(),
        "keytool -list failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn check_layout(kind: PackKind, version: &str, root: &Path, list_keystores: bool) {
    let layout = PackLayout::new(kind, version).expect("layout");
    let pack = build(kind, version, root);
    let top = &layout.top_dir;
    assert_eq!(pack.top_dir, *top);
    assert_eq!(pack.path, root.join(format!("{top}.zip")));
    let bytes = fs::read(&pack.path).expect("zip bytes");
    assert_eq!(pack.size, bytes.len() as u64);
    assert_eq!(pack.sha256, hex::encode(Sha256::digest(&bytes)));

    let names = zip_names(&pack);
    for (name, _, _) in &names {
        assert!(
            name.starts_with(&format!("{top}/")),
            "{name} outside {top}/"
        );
    }
    let mode_of = |rel: &str| {
        let full = format!("{top}/{rel}");
        names
            .iter()
            .find(|(n, _, _)| *n == full)
            .unwrap_or_else(|| panic!("{full} missing"))
            .1
            .expect("unix mode")
            & 0o777
    };
    for script in &layout.scripts {
        assert_eq!(mode_of(&format!("bin/{script}")), 0o755, "{script}");
    }
    let has_setup = names
        .iter()
        .any(|(n, _, _)| n.ends_with("/bin/profileSetup.sh"));
    assert_eq!(has_setup, layout.profile_setup, "{top} profileSetup.sh");
    if has_setup {
        assert_eq!(mode_of("bin/profileSetup.sh"), 0o755);
    }
    assert_eq!(mode_of("bin/version.txt"), 0o644);
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == &format!("{top}/repository/logs/"))
    );

    let home = unzip(&pack, &root.join("x"));
    assert_eq!(
        read(&home.join("bin/version.txt")).trim(),
        format!("{} v{version}", kind.product_name())
    );
    assert!(read(&home.join("repository/conf/deployment.toml")).contains("[super_admin]"));
    for t in &layout.templates {
        let tpl = home.join(format!(
            "repository/resources/conf/deployment-templates/{t}.toml"
        ));
        assert!(tpl.is_file(), "{}", tpl.display());
    }
    let webapps = home.join("repository/deployment/server/webapps");
    for war in &layout.wars {
        let f = webapps.join(war);
        let archive = zip::ZipArchive::new(fs::File::open(&f).expect("war")).expect("war is a zip");
        assert!(!archive.is_empty());
    }
    for dir in &layout.exploded_webapps {
        assert!(webapps.join(dir).join("WEB-INF/web.xml").is_file(), "{dir}");
    }
    let sec = home.join("repository/resources/security");
    for store in ["wso2carbon.jks", "client-truststore.jks"] {
        let bytes = fs::read(sec.join(store)).expect("store");
        assert_eq!(
            StoreFormat::detect(&bytes),
            Some(layout.store_format),
            "{top} {store}"
        );
    }
    if list_keystores {
        let trust = keytool_list(&sec.join("client-truststore.jks"));
        assert!(trust.contains("wso2carbon, "), "{trust}");
        assert!(trust.contains("gateway_certificate_alias, "), "{trust}");
        assert!(trust.contains("trustedCertEntry"), "{trust}");
        let ks = keytool_list(&sec.join("wso2carbon.jks"));
        assert!(
            ks.contains("wso2carbon, ") && ks.contains("PrivateKeyEntry"),
            "{ks}"
        );
    }
}

#[test]
fn all_in_one_packs_have_the_real_layout() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (v, list) in [
        ("3.2.0", true),
        ("4.0.0", false),
        ("4.1.0", false),
        ("4.2.0", false),
        ("4.3.0", false),
        ("4.4.0", true),
        ("4.5.0", false),
    ] {
        check_layout(PackKind::AllInOne, v, &tmp.path().join(v), list);
    }
    let l32 = PackLayout::new(PackKind::AllInOne, "3.2.0").expect("3.2");
    assert_eq!(l32.scripts, ["wso2server.sh"]);
    assert_eq!(l32.store_format, StoreFormat::Jks);
    let l44 = PackLayout::new(PackKind::AllInOne, "4.4.0").expect("4.4");
    assert_eq!(l44.scripts, ["api-manager.sh"]);
    assert_eq!(l44.store_format, StoreFormat::Pkcs12);
    assert!(
        !PackLayout::new(PackKind::AllInOne, "4.5.0")
            .expect("4.5")
            .profile_setup
    );
}

#[test]
fn split_4_5_packs_have_the_real_layout() {
    let tmp = tempfile::tempdir().expect("tmp");
    for kind in [
        PackKind::ApiControlPlane,
        PackKind::UniversalGateway,
        PackKind::TrafficManager,
    ] {
        check_layout(
            kind,
            "4.5.0",
            &tmp.path().join(kind.prefix()),
            kind == PackKind::UniversalGateway,
        );
    }
    let gw = PackLayout::new(PackKind::UniversalGateway, "4.5.0").expect("gw");
    assert_eq!(gw.top_dir, "wso2am-universal-gw-4.5.0");
    assert_eq!(gw.scripts, ["gateway.sh"]);
    let tm = PackLayout::new(PackKind::TrafficManager, "4.5.0").expect("tm");
    assert_eq!(tm.scripts, ["traffic-manager.sh"]);
}

#[test]
fn profile_setup_3_2_gateway_worker_and_bad_profiles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pack = build(PackKind::AllInOne, "3.2.0", tmp.path());

    let home = unzip(&pack, &tmp.path().join("good"));
    let original = read(&home.join("repository/conf/deployment.toml"));
    // run from elsewhere: the script cds to its own directory
    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=gateway-worker"],
        None,
    );
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("Starting to optimize API Manager for the Gateway worker profile"),
        "{text}"
    );
    assert!(
        text.contains(
            "Renamed the existing ../repository/conf/deployment.toml file as deployment.toml.backup"
        ),
        "{text}"
    );
    assert!(text.contains("INFO - Finished the optimizations"), "{text}");
    let stamped = text
        .lines()
        .filter(|l| l.starts_with("[20") && l.contains("] INFO - "))
        .count();
    assert!(stamped >= 5, "{text}");
    assert_eq!(
        read(&home.join("repository/conf/deployment.toml.backup")),
        original
    );
    assert!(
        read(&home.join("repository/conf/deployment.toml"))
            .contains("server_role = \"gateway-worker\"")
    );
    let webapps: Vec<String> = fs::read_dir(home.join("repository/deployment/server/webapps"))
        .expect("webapps")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(webapps, ["am#sample#pizzashack#v1.war"]);
    let jaggery =
        fs::read_dir(home.join("repository/deployment/server/jaggeryapps")).expect("jaggery");
    assert_eq!(jaggery.count(), 0);
    let t = home.join("repository/resources/conf/templates/repository");
    assert!(
        !t.join("deployment/server/webapps/authenticationendpoint/WEB-INF/web.xml.j2")
            .exists()
    );
    assert!(read(&t.join("conf/tomcat/carbon/WEB-INF/web.xml.j2")).contains("web_TM_GW"));

    // An unknown profile, and a valid profile that is not $1: message, exit 0, nothing touched.
    for args in [
        vec!["-Dprofile=control-plane"],
        vec!["--skipConfigOptimization", "-Dprofile=gateway-worker"],
        vec![],
    ] {
        let home = unzip(&pack, &tmp.path().join(format!("bad{}", args.len())));
        let out = sh(&home, "profileSetup.sh", &args, None);
        assert!(out.status.success(), "{args:?}");
        let text = stdout(&out);
        assert!(
            text.contains("Profile is not specified properly, please try again"),
            "{text}"
        );
        assert!(!text.contains("Finished the optimizations"), "{text}");
        assert_eq!(
            read(&home.join("repository/conf/deployment.toml")),
            original
        );
        assert!(!home.join("repository/conf/deployment.toml.backup").exists());
        fs::remove_dir_all(home.parent().expect("parent")).expect("cleanup");
    }
}

#[test]
fn profile_setup_4_x_skip_config_and_non_idempotency() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("cp"));
    let conf = home.join("repository/conf");
    let axis2 = home.join("repository/resources/conf/templates/repository/conf/axis2");
    let webapps = home.join("repository/deployment/server/webapps");
    let original_axis2 = read(&axis2.join("axis2.xml.j2"));
    let edited = "# operator's config\n[server]\nhostname = \"cp.wso2.com\"\n";
    write_toml(&home, edited);

    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=control-plane", "--skipConfigOptimization"],
        None,
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("Finished the optimizations"));
    assert_eq!(
        read(&conf.join("deployment.toml")),
        edited,
        "skip keeps the toml"
    );
    assert!(!conf.join("deployment.toml.backup").exists());
    assert!(!webapps.join("api#am#gateway#v2.war").exists());
    assert!(webapps.join("api#am#publisher.war").exists());
    assert!(webapps.join("publisher").is_dir());
    assert!(read(&axis2.join("axis2.xml.j2")).contains("axis2_ControlPlane"));
    assert_eq!(read(&axis2.join("axis2.xml.j2.backup")), original_axis2);
    let inbound = home.join("repository/deployment/server/synapse-configs/default");
    assert!(inbound.join("synapse.xml").exists());
    assert!(!inbound.join("inbound-endpoints").exists());

    // 4.1+: mv then cp, so a second run backs up the swapped template: the original is lost.
    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=control-plane", "skipConfigOptimization"],
        None,
    );
    assert!(out.status.success());
    assert!(read(&axis2.join("axis2.xml.j2.backup")).contains("axis2_ControlPlane"));

    // Without skip the toml is replaced; a second run backs up the template over the user's file.
    let out = sh(&home, "profileSetup.sh", &["-Dprofile=control-plane"], None);
    assert!(out.status.success());
    assert_eq!(read(&conf.join("deployment.toml.backup")), edited);
    let template =
        read(&home.join("repository/resources/conf/deployment-templates/control-plane.toml"));
    assert_eq!(read(&conf.join("deployment.toml")), template);
    let out = sh(&home, "profileSetup.sh", &["-Dprofile=control-plane"], None);
    assert!(out.status.success());
    assert_eq!(
        read(&conf.join("deployment.toml.backup")),
        template,
        "the user's edits are gone"
    );

    // 3.2–4.0: the swap is a mv; a second run finds no _TM template and leaves the backup alone.
    let pack40 = build(PackKind::AllInOne, "4.0.0", &tmp.path().join("p40"));
    let home40 = unzip(&pack40, &tmp.path().join("tm40"));
    let axis2_40 = home40.join("repository/resources/conf/templates/repository/conf/axis2");
    let original40 = read(&axis2_40.join("axis2.xml.j2"));
    for _ in 0..2 {
        let out = sh(
            &home40,
            "profileSetup.sh",
            &["-Dprofile=traffic-manager"],
            None,
        );
        assert!(out.status.success());
    }
    assert!(!axis2_40.join("axis2_TM.xml.j2").exists());
    assert!(read(&axis2_40.join("axis2.xml.j2")).contains("axis2_TM"));
    assert_eq!(read(&axis2_40.join("axis2.xml.j2.backup")), original40);
    let left: Vec<String> = fs::read_dir(home40.join("repository/deployment/server/webapps"))
        .expect("webapps")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["internal#data#v1.war"]);
    let syn: Vec<String> =
        fs::read_dir(home40.join("repository/deployment/server/synapse-configs/default"))
            .expect("synapse")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(syn, ["synapse.xml"]);
}

#[test]
fn profile_setup_acp_accepts_only_key_manager() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pack = build(PackKind::ApiControlPlane, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("a"));
    let out = sh(&home, "profileSetup.sh", &["-Dprofile=control-plane"], None);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Profile is not specified properly, please try again"));

    let out = sh(&home, "profileSetup.sh", &["-Dprofile=key-manager"], None);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Finished the optimizations"));
    let toml = read(&home.join("repository/conf/deployment.toml"));
    assert!(
        toml.contains("server_role = \"default\""),
        "4.5 ACP key-manager.toml oddity"
    );
    let webapps = home.join("repository/deployment/server/webapps");
    assert!(webapps.join("keymanager-operations.war").exists());
    assert!(webapps.join("oauth2.war").exists());
    assert!(webapps.join("authenticationendpoint").is_dir());
    assert!(!webapps.join("api#am#publisher.war").exists());
    assert!(!webapps.join("publisher").exists());
    // the ACP key manager keeps the synapse configs
    assert!(
        home.join("repository/deployment/server/synapse-configs/default/api")
            .is_dir()
    );
    assert!(
        !home
            .join("repository/conf/axis2/axis2_blocking_client.xml")
            .exists()
    );
}

#[test]
fn start_scripts_check_java_home_first_with_the_real_messages() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = machine(tmp.path(), "vm-java", loopback_for("java_home", 1), &[]);
    for (kind, script) in [
        (PackKind::AllInOne, "api-manager.sh"),
        (PackKind::UniversalGateway, "gateway.sh"),
    ] {
        let pack = build(
            kind,
            if kind == PackKind::AllInOne {
                "4.2.0"
            } else {
                "4.5.0"
            },
            tmp.path(),
        );
        let home = unzip(&pack, &tmp.path().join(kind.prefix()));
        for args in [vec!["start"], vec![]] {
            let out = sh(&home, script, &args, None);
            assert_eq!(out.status.code(), Some(1), "{script} {args:?}");
            assert_eq!(
                stdout(&out),
                "Error: JAVA_HOME is not defined correctly.\n CARBON cannot execute java\n"
            );
        }
        let nowhere = tmp.path().join("no-jdk");
        let out = sh(&home, script, &["start"], Some(&nowhere));
        assert_eq!(out.status.code(), Some(1));
        assert!(stdout(&out).contains(&format!(
            " CARBON cannot execute {}/bin/java",
            nowhere.display()
        )));
        assert!(!home.join("wso2carbon.pid").exists(), "nothing was started");

        let out = sh(&home, script, &["version"], Some(&m.jdk.home));
        assert!(out.status.success());
        assert!(stdout(&out).contains(&format!("{} v", kind.product_name())));
        assert!(stdout(&out).contains("WSO2 Carbon Framework v"));
    }
}

#[test]
fn simulated_java_behaves_like_a_jvm_outside_the_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = machine(tmp.path(), "vm-jvm", loopback_for("jvm", 1), &[]);
    let located = apim_e2e::fakejdk::locate_simjava().expect("simjava next to the test binary");
    assert_eq!(
        located.canonicalize().expect("located"),
        Path::new(SIMJAVA).canonicalize().expect("simjava")
    );
    let out = Command::new(&m.jdk.java)
        .arg("-version")
        .output()
        .expect("java -version");
    assert!(out.status.success());
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).starts_with("openjdk version \"17.0.9\""),
        "{}",
        stderr(&out)
    );
    let keytool = Command::new(&m.jdk.keytool)
        .arg("-help")
        .output()
        .expect("keytool");
    assert!(
        String::from_utf8_lossy(&[keytool.stdout, keytool.stderr].concat())
            .contains("Key and Certificate Management Tool")
    );

    let out = Command::new(&m.jdk.java)
        .args(["-cp", "x", "org.wso2.ciphertool.CipherTool"])
        .output()
        .expect("java");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Could not find or load main class org.wso2.ciphertool.CipherTool")
    );

    // A broken hosts file is a machine problem: the JVM fails before writing a pid file.
    let pack = build(PackKind::TrafficManager, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("tm"));
    fs::write(
        &m.hosts,
        "127.0.0.1 localhost\nnot-an-address tm.wso2.com\n",
    )
    .expect("hosts");
    let out = Command::new(&m.jdk.java)
        .arg(format!("-Dcarbon.home={}", home.display()))
        .arg("org.wso2.carbon.bootstrap.Bootstrap")
        .output()
        .expect("java");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("Error: "), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert!(!home.join("wso2carbon.pid").exists());
}

#[test]
fn gateway_node_start_health_stop_restart_via_script() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("gateway_lifecycle", 1);
    let m = machine(tmp.path(), "vm-gw", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let out = sh(
        &home,
        "profileSetup.sh",
        &["-Dprofile=gateway-worker"],
        None,
    );
    assert!(out.status.success());
    let mut toml = read(&home.join("repository/conf/deployment.toml"));
    // the renderer would write real peers; this node talks to nobody
    toml = toml.replace("hostname = \"localhost\"", "hostname = \"gw.wso2.com\"");
    toml = toml
        .lines()
        .filter(|l| !l.contains("://"))
        .collect::<Vec<_>>()
        .join("\n");
    write_toml(&home, &toml);

    let out = sh(
        &home,
        "api-manager.sh",
        &["start", "-Dprofile=gateway-worker", "-DportOffset=2"],
        Some(&m.jdk.home),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).is_empty(),
        "daemon mode discards output: {}",
        stdout(&out)
    );

    assert!(
        wait_log(&home, "WSO2 Carbon started in"),
        "{}",
        log_text(&home)
    );
    let log = log_text(&home);
    let server_line = log
        .find("Server           :  WSO2 API Manager-4.2.0")
        .expect("Server line");
    let started_line = log.find("WSO2 Carbon started in").expect("started line");
    assert!(server_line < started_line);
    assert!(log.lines().any(|l| l.starts_with("TID: [-1234] [] [20")
        && l.contains("]  INFO {org.wso2.carbon.core.internal.StartupFinalizerServiceComponent} - WSO2 Carbon started in ")
        && l.ends_with(" sec")), "{log}");
    assert!(log.contains("Server role      : gateway-worker"));

    let pid = pid_of(&home).expect("pid file");
    assert!(alive(pid));
    let version = http_get(addr(ip, 9765), "/services/Version").expect("version");
    assert_eq!(version.status, 200);
    assert_eq!(
        version.body,
        "<ns:getVersionResponse xmlns:ns=\"http://version.services.core.carbon.wso2.org\"><return>WSO2 API Manager-4.2.0</return></ns:getVersionResponse>"
    );
    let health = https_get_insecure(
        addr(ip, 9445),
        "gw.wso2.com",
        "/api/am/gateway/v2/server-startup-healthcheck",
    )
    .expect("health");
    assert_eq!(health.status, 200);
    assert_eq!(
        https_get_insecure(addr(ip, 9445), "gw.wso2.com", "/services/Version")
            .expect("v")
            .status,
        200
    );
    assert_eq!(
        http_get(addr(ip, 9101), "/health")
            .expect("ws health")
            .status,
        200
    );
    for port in [9445, 9765, 8282, 8245, 9101, 8101] {
        assert!(tcp_open(addr(ip, port)), "port {port}");
    }
    for port in [9443, 5674, 9613] {
        assert!(!tcp_open(addr(ip, port)), "port {port} should be closed");
    }
    assert!(
        !tcp_open(addr(Ipv4Addr::LOCALHOST, 9445)),
        "binds only the machine's address"
    );

    let out = sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert_eq!(stdout(&out), "Process is already running\n");

    // restart: TERM, wait for the pid to go, start again; tmp/ is emptied by the new start
    let lock = home.join(format!("tmp/carbon-{pid}.lck"));
    assert!(lock.exists());
    let out = sh(
        &home,
        "api-manager.sh",
        &["restart", "-Dprofile=gateway-worker", "-DportOffset=2"],
        Some(&m.jdk.home),
    );
    assert!(out.status.success());
    assert!(!alive(pid));
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 2));
    let pid2 = pid_of(&home).expect("new pid");
    assert_ne!(pid, pid2);
    assert!(!lock.exists(), "tmp/* emptied on start");
    assert!(log_text(&home).contains("Gracefully shutting down WSO2 API Manager"));

    let out = sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert!(
        wait_until(TIMEOUT, POLL, || !alive(pid2)),
        "node did not stop"
    );
    assert!(log_text(&home).trim_end().ends_with("Halting JVM"));
    assert_eq!(
        pid_of(&home),
        Some(pid2),
        "the pid file stays behind, stale"
    );
    assert!(wait_until(TIMEOUT, POLL, || !tcp_open(addr(ip, 9765))));
}

#[test]
fn never_ready_gateway_listens_with_health_500() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("never_ready", 1);
    let m = machine(tmp.path(), "vm-ugw", ip, &[]);
    let pack = build(PackKind::UniversalGateway, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(&home, &format!("{toml}\n[apimsim]\nnever_ready = true\n"));

    let out = sh(&home, "gateway.sh", &["start"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert!(wait_until(TIMEOUT, POLL, || http_get(
        addr(ip, 9763),
        "/services/Version"
    )
    .is_ok()));
    let v = http_get(addr(ip, 9763), "/services/Version").expect("version");
    assert!(
        v.body
            .contains("<return>WSO2 Universal Gateway-4.5.0</return>"),
        "{}",
        v.body
    );
    let h = https_get_insecure(
        addr(ip, 9443),
        "localhost",
        "/api/am/gateway/v2/server-startup-healthcheck",
    )
    .expect("health");
    assert_eq!(h.status, 500);
    assert_eq!(http_get(addr(ip, 9099), "/health").expect("ws").status, 503);
    assert!(log_text(&home).contains("Starting WSO2 Carbon..."));
    assert!(!log_text(&home).contains("WSO2 Carbon started in"));

    let pid = pid_of(&home).expect("pid");
    let out = sh(&home, "gateway.sh", &["stop"], Some(&m.jdk.home));
    assert!(out.status.success());
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
}

#[test]
fn exit_code_override_kills_a_started_node() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("exit_code", 1);
    let m = machine(tmp.path(), "vm-tm", ip, &[]);
    let pack = build(PackKind::TrafficManager, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(
        &home,
        &format!("{toml}\n[apimsim]\nexit_code = 3\nexit_after_ms = 100\n"),
    );

    // Foreground run: the script waits for java; status 3 is not 121, so no restart.
    let out = sh(
        &home,
        "traffic-manager.sh",
        &["-DportOffset=1"],
        Some(&m.jdk.home),
    );
    assert!(out.status.success(), "the script loop itself ends with 0");
    let text = stdout(&out);
    assert!(
        text.contains("JAVA_HOME environment variable is set to"),
        "{text}"
    );
    assert!(
        text.contains("Using Java memory options: -Xms256m -Xmx1024m"),
        "{text}"
    );
    assert!(
        text.contains("Started Binary TCP Transport on port : 9612"),
        "{text}"
    );
    let log = log_text(&home);
    assert_eq!(
        log.matches("Starting WSO2 Carbon...").count(),
        1,
        "no restart loop for 3"
    );
    assert!(log.contains("Server           :  WSO2 Traffic Manager-4.5.0"));
    assert!(log.contains("exiting with status 3"));
    let pid = pid_of(&home).expect("pid");
    assert!(!alive(pid));
}

#[test]
fn config_errors_exit_1_with_the_real_messages() {
    let tmp = tempfile::tempdir().expect("tmp");
    let m = machine(tmp.path(), "vm-cfg", loopback_for("config_errors", 1), &[]);
    let pack = build(PackKind::AllInOne, "3.2.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let base = read(&home.join("repository/conf/deployment.toml"));
    let java = |home: &Path| {
        Command::new(&m.jdk.java)
            .arg(format!("-Dcarbon.home={}", home.display()))
            .arg("org.wso2.carbon.bootstrap.Bootstrap")
            .output()
            .expect("java")
    };

    // Through the script in the foreground: JDK warning, the mapper's messages; loop ends 0.
    write_toml(
        &home,
        &format!("{base}\n[apim.throttling]\nusername = \"$ref{{super_admin.user}}\"\n"),
    );
    let out = sh(&home, "wso2server.sh", &[], Some(&m.jdk.home));
    let text = stdout(&out);
    assert!(
        text.contains(" [ERROR] CARBON is supported only between JDK 1.7 and JDK 11"),
        "{text}"
    );
    assert!(
        text.contains("Error while performing configuration changes"),
        "{text}"
    );
    assert!(
        text.contains("References can't be resolved for [$ref{super_admin.user}]"),
        "{text}"
    );
    assert!(log_text(&home).contains(
        "ERROR {org.wso2.carbon.server.Main} - Error while performing configuration changes"
    ));
    assert!(
        home.join("wso2carbon.pid").exists(),
        "pid file is written before the mapper runs"
    );

    // The JVM's own status is 1.
    let out = java(&home);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("References can't be resolved for [$ref{super_admin.user}]"));

    write_toml(
        &home,
        &format!("{base}\n[apim.x]\npassword = \"$secret{{admin_password}}\"\n"),
    );
    let out = java(&home);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("References can't be resolved for [$secret{admin_password}]"));

    write_toml(
        &home,
        &format!(
            "{base}\n[apim.x]\npassword = \"$secret{{admin_password}}\"\n\n[secrets]\nadmin_password = \"[admin]\"\n"
        ),
    );
    let out = java(&home);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("Secret References can't be Plain-Text for [admin_password]"));

    // `${...}` is kept verbatim, unknown keys are ignored and a syntax error is only logged.
    write_toml(
        &home,
        &format!(
            "{base}\n[made_up]\nkey = \"${{carbon.host}}:${{nope}}\"\n[apimsim]\nstartup_delay_ms = 0\n"
        ),
    );
    let child = Command::new(&m.jdk.java)
        .arg(format!("-Dcarbon.home={}", home.display()))
        .arg("org.wso2.carbon.bootstrap.Bootstrap")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut child = scopeguard(child);
    assert!(
        wait_log(&home, "WSO2 Carbon started in"),
        "{}",
        log_text(&home)
    );
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("term");
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// Kills a spawned child if the test fails before it is reaped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn scopeguard(child: std::process::Child) -> ChildGuard {
    ChildGuard(child)
}

#[test]
fn peer_unreachable_is_logged_until_it_comes_up() {
    let tmp = tempfile::tempdir().expect("tmp");
    let gw_ip = loopback_for("peers", 1);
    let tm_ip = loopback_for("peers", 2);
    let gw = machine(tmp.path(), "vm-gw", gw_ip, &[("tm.wso2.com", tm_ip)]);
    let tm = machine(tmp.path(), "vm-tm", tm_ip, &[("gw.wso2.com", gw_ip)]);
    let pack = build(PackKind::AllInOne, "4.2.0", tmp.path());
    let gw_home = unzip(&pack, &tmp.path().join("gw"));
    let tm_home = unzip(&pack, &tmp.path().join("tm"));
    let _g1 = NodeGuard(gw_home.clone());
    let _g2 = NodeGuard(tm_home.clone());
    assert!(
        sh(
            &gw_home,
            "profileSetup.sh",
            &["-Dprofile=gateway-worker"],
            None
        )
        .status
        .success()
    );
    assert!(
        sh(
            &tm_home,
            "profileSetup.sh",
            &["-Dprofile=traffic-manager"],
            None
        )
        .status
        .success()
    );
    write_toml(
        &gw_home,
        r#"[server]
hostname = "gw.wso2.com"
server_role = "gateway-worker"

[apim.throttling]
username = "$ref{super_admin.username}"
service_url = "https://tm.wso2.com:9446/services/"
throttle_decision_endpoints = ["tcp://tm.wso2.com:5675"]

[[apim.throttling.url_group]]
traffic_manager_urls = ["tcp://tm.wso2.com:9614"]
traffic_manager_auth_urls = ["ssl://tm.wso2.com:9714"]

[apim.key_manager]
service_url = "https://km-lb.wso2.com/services/"

[apim.analytics]
config_endpoint = "tcp://ghost.wso2.com:7612"
"#,
    );
    write_toml(
        &tm_home,
        "[server]\nhostname = \"tm.wso2.com\"\nserver_role = \"traffic-manager\"\noffset = 3\n",
    );

    assert!(
        sh(&gw_home, "api-manager.sh", &["start"], Some(&gw.jdk.home))
            .status
            .success()
    );
    assert!(
        wait_log(
            &gw_home,
            "Peer tm.wso2.com:5675 unreachable: Connection refused"
        ),
        "{}",
        log_text(&gw_home)
    );
    assert!(wait_log(
        &gw_home,
        "Peer ghost.wso2.com:7612 unreachable: java.net.UnknownHostException: ghost.wso2.com"
    ));
    // ready regardless of its peers, like the real server
    assert!(wait_log(&gw_home, "WSO2 Carbon started in"));
    assert!(
        !log_text(&gw_home).contains("km-lb.wso2.com"),
        "port-less LB URLs are not probed"
    );

    assert!(
        sh(&tm_home, "api-manager.sh", &["start"], Some(&tm.jdk.home))
            .status
            .success()
    );
    assert!(wait_log(&tm_home, "WSO2 Carbon started in"));
    for port in [5675, 9614, 9714, 9446] {
        assert!(
            wait_log(&gw_home, &format!("Connected to peer tm.wso2.com:{port}")),
            "{port}: {}",
            log_text(&gw_home)
        );
    }
    let log = log_text(&gw_home);
    for port in [5675, 9614, 9714] {
        let connected = log
            .find(&format!("Connected to peer tm.wso2.com:{port}"))
            .expect("connected");
        let last_error = log
            .rfind(&format!("Peer tm.wso2.com:{port} unreachable"))
            .expect("was unreachable");
        assert!(last_error < connected, "errors after connecting for {port}");
    }
    // The peer watcher stops after connecting, while the unknown host keeps being reported.
    let ghost_count = log.matches("Peer ghost.wso2.com:7612 unreachable").count();
    assert!(wait_until(TIMEOUT, POLL, || log_text(&gw_home)
        .matches("Peer ghost.wso2.com:7612 unreachable")
        .count()
        > ghost_count));
    assert_eq!(
        log_text(&gw_home)
            .matches("Connected to peer tm.wso2.com:5675")
            .count(),
        1
    );

    for (home, jdk) in [(&gw_home, &gw.jdk.home), (&tm_home, &tm.jdk.home)] {
        let pid = pid_of(home).expect("pid");
        assert!(
            sh(home, "api-manager.sh", &["stop"], Some(jdk))
                .status
                .success()
        );
        assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
    }
}

#[test]
fn control_plane_and_key_manager_4_5_ports_and_version() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("acp", 1);
    let m = machine(tmp.path(), "vm-acp", ip, &[]);
    let pack = build(PackKind::ApiControlPlane, "4.5.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("acp"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(&home, &toml.replace("#offset = 0", "offset = 1"));

    assert!(
        sh(&home, "api-cp.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_log(&home, "WSO2 Carbon started in"));
    let v = http_get(addr(ip, 9764), "/services/Version").expect("version");
    assert!(
        v.body
            .contains("<return>WSO2 API Control Plane-4.5.0</return>")
    );
    for port in [9444, 9764, 5673, 9612, 9712] {
        assert!(tcp_open(addr(ip, port)), "event hub port {port}");
    }
    let h = https_get_insecure(
        addr(ip, 9444),
        "localhost",
        "/api/am/gateway/v2/server-startup-healthcheck",
    )
    .expect("h");
    assert_eq!(h.status, 404, "no gateway REST API on a control plane");
    assert!(log_text(&home).contains("Mgt Console URL  : https://localhost:9444/carbon/"));
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "api-cp.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));

    // key-manager.sh with -DportOffset winning over [server] offset; a key manager has no event hub
    assert!(
        sh(
            &home,
            "key-manager.sh",
            &["start", "-Dprofile=key-manager", "-DportOffset=4"],
            Some(&m.jdk.home)
        )
        .status
        .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 2));
    assert!(tcp_open(addr(ip, 9447)));
    assert!(!tcp_open(addr(ip, 5676)));
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "key-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
}

#[test]
fn evil_entries_are_in_the_zip_as_requested() {
    let tmp = tempfile::tempdir().expect("tmp");
    let opts = PackOptions {
        evil: EvilEntry::ALL.to_vec(),
        ..PackOptions::default()
    };
    let pack = build_pack(PackKind::AllInOne, "4.2.0", tmp.path(), &opts).expect("evil pack");
    let names = zip_names(&pack);
    let top = &pack.top_dir;
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == &format!("{top}/bin/api-manager.sh"))
    );
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == &format!("{top}/../../apim-evil-traversal.txt"))
    );
    assert!(
        names
            .iter()
            .any(|(n, _, _)| n == "/tmp/apim-evil-absolute.txt")
    );
    let mut archive = zip::ZipArchive::new(fs::File::open(&pack.path).expect("open")).expect("zip");
    for (name, target) in [
        (
            format!("{top}/repository/logs/escape"),
            "../../../../apim-evil-outside",
        ),
        (format!("{top}/repository/conf/link"), "/tmp"),
    ] {
        let mut f = archive.by_name(&name).expect("symlink entry");
        assert!(f.is_symlink(), "{name}");
        assert_eq!(f.unix_mode().expect("mode") & 0o170000, 0o120000);
        let mut content = String::new();
        std::io::Read::read_to_string(&mut f, &mut content).expect("target");
        assert_eq!(content, target);
    }
    assert!(names.iter().any(|(n, _, _)| n == &format!("{top}/repository/conf/link/apim-evil-through-link.txt")));
}

#[test]
fn filler_pads_a_pack_with_compressible_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let plain = build(PackKind::TrafficManager, "4.5.0", &tmp.path().join("plain"));
    let again = build(PackKind::TrafficManager, "4.5.0", &tmp.path().join("again"));
    assert_eq!(
        plain.sha256, again.sha256,
        "builds in one process are reproducible"
    );
    let opts = PackOptions {
        filler: Some(Filler {
            files: 50,
            bytes: 2_000_003,
        }),
        ..PackOptions::default()
    };
    let padded = build_pack(
        PackKind::TrafficManager,
        "4.5.0",
        &tmp.path().join("padded"),
        &opts,
    )
    .expect("padded");
    let mut archive =
        zip::ZipArchive::new(fs::File::open(&padded.path).expect("open")).expect("zip");
    let mut count = 0;
    let mut total = 0;
    for i in 0..archive.len() {
        let f = archive.by_index(i).expect("entry");
        if f.name()
            .expect("name")
            .contains("/repository/components/plugins/org.wso2.sim.filler.")
        {
            count += 1;
            total += f.size();
        }
    }
    assert_eq!(count, 50);
    assert_eq!(total, 2_000_003);
    let grown = padded.size - plain.size;
    assert!(grown < 1_000_000, "filler should compress: grew {grown}");
    assert!(
        grown > 100_000,
        "filler should not be trivial: grew {grown}"
    );
    let mode = fs::metadata(&padded.path)
        .expect("meta")
        .permissions()
        .mode();
    assert!(mode & 0o400 != 0);
}

fn export_cert_der(store: &Path, alias: &str, pass: &str) -> Vec<u8> {
    let keytool = apim_e2e::simpack::find_keytool().expect("keytool");
    let out = Command::new(keytool)
        .args(["-exportcert", "-alias", alias, "-keystore"])
        .arg(store)
        .args(["-storepass:env", "SIM_TEST_PASS"])
        .env("SIM_TEST_PASS", pass)
        .output()
        .expect("keytool -exportcert");
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

#[test]
fn tls_is_served_from_the_configured_keystore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("tls_keystore", 1);
    let m = machine(tmp.path(), "vm-tls", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.4.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let sec = home.join("repository/resources/security");
    let base = read(&home.join("repository/conf/deployment.toml"));

    // The shipped keystore (PKCS12 bytes behind a .jks name in 4.4).
    assert!(
        sh(&home, "api-manager.sh", &["start"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_log(&home, "WSO2 Carbon started in"));
    let served = tls_peer_certificate(addr(ip, 9443), "localhost").expect("cert");
    assert_eq!(
        served,
        export_cert_der(&sec.join("wso2carbon.jks"), "wso2carbon", "wso2carbon")
    );
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));

    // An operator's JKS keystore with its own password, passed through the environment.
    let keytool = apim_e2e::simpack::find_keytool().expect("keytool");
    let out = Command::new(keytool)
        .args([
            "-genkeypair",
            "-alias",
            "gw",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-validity",
            "30",
            "-dname",
            "CN=gw.wso2.com",
            "-storetype",
            "JKS",
            "-storepass:env",
            "P",
            "-keypass:env",
            "P",
            "-keystore",
        ])
        .arg(sec.join("gw.jks"))
        .env("P", "gw-pass")
        .output()
        .expect("keytool");
    assert!(out.status.success(), "{}", stderr(&out));
    let tls_table = "[keystore.tls]\nfile_name = \"gw.jks\"\ntype = \"JKS\"\npassword = \"$env{GW_KS_PASS}\"\nalias = \"gw\"\nkey_password = \"$env{GW_KS_PASS}\"\n";
    let without_tls = base.replace("[keystore.tls]", "[keystore.tls_shipped]");
    write_toml(&home, &format!("{without_tls}\n{tls_table}"));
    let mut cmd = Command::new("sh");
    cmd.arg(home.join("bin/api-manager.sh"))
        .arg("start")
        .env("JAVA_HOME", &m.jdk.home)
        .env("GW_KS_PASS", "gw-pass")
        .env_remove("CARBON_HOME");
    assert!(cmd.output().expect("start").status.success());
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 2));
    let served = tls_peer_certificate(addr(ip, 9443), "gw.wso2.com").expect("cert");
    assert_eq!(
        served,
        export_cert_der(&sec.join("gw.jks"), "gw", "gw-pass")
    );
    let pid = pid_of(&home).expect("pid");
    assert!(
        sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));

    // A wrong password stops the server with the JDK's message.
    let out = Command::new(&m.jdk.java)
        .arg(format!("-Dcarbon.home={}", home.display()))
        .arg("org.wso2.carbon.bootstrap.Bootstrap")
        .env("GW_KS_PASS", "wrong")
        .output()
        .expect("java");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("Keystore was tampered with, or password was incorrect"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn exit_status_121_restarts_the_jvm_in_the_script_loop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ip = loopback_for("restart_loop", 1);
    let m = machine(tmp.path(), "vm-loop", ip, &[]);
    let pack = build(PackKind::AllInOne, "4.3.0", tmp.path());
    let home = unzip(&pack, &tmp.path().join("opt"));
    let _guard = NodeGuard(home.clone());
    let toml = read(&home.join("repository/conf/deployment.toml"));
    write_toml(&home, &format!("{toml}\n[apimsim]\nrestart_requests = 2\n"));

    assert!(
        sh(
            &home,
            "api-manager.sh",
            &["start", "-DportOffset=5"],
            Some(&m.jdk.home)
        )
        .status
        .success()
    );
    // Two restarts requested, so the third JVM stays up.
    assert!(wait_until(TIMEOUT, POLL, || log_text(&home)
        .matches("WSO2 Carbon started in")
        .count()
        == 3));
    let log = log_text(&home);
    assert_eq!(log.matches("Restarting WSO2 Carbon...").count(), 2);
    assert_eq!(log.matches("Starting WSO2 Carbon...").count(), 3);
    let pid = pid_of(&home).expect("pid");
    assert!(alive(pid));
    assert!(
        tcp_open(addr(ip, 9448)),
        "offset passed to every JVM of the loop"
    );
    assert!(
        sh(&home, "api-manager.sh", &["stop"], Some(&m.jdk.home))
            .status
            .success()
    );
    assert!(wait_until(TIMEOUT, POLL, || !alive(pid)));
    assert_eq!(
        log_text(&home).matches("Starting WSO2 Carbon...").count(),
        3,
        "exit 0 ends the loop"
    );
}
