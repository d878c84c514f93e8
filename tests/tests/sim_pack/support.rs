//! What every simulated-pack test uses: building and unzipping packs, running scripts,
//! machines with their fake JDKs, reading logs and keystores.

pub use apim_e2e::fakejdk::{FakeJdk, JdkSettings, MachineSettings, make_fake_jdk};
pub use apim_e2e::probe::{
    http_get, https_get_insecure, loopback_for, tcp_open, tls_peer_certificate, wait_until,
};
pub use apim_e2e::simpack::{
    EvilEntry, Filler, PackInfo, PackKind, PackLayout, PackOptions, StoreFormat, build_pack,
};
pub use nix::sys::signal::{Signal, kill};
pub use nix::unistd::Pid;
pub use sha2::{Digest, Sha256};

pub use std::fs;
pub use std::net::{IpAddr, Ipv4Addr, SocketAddr};
pub use std::os::unix::fs::PermissionsExt;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Output};
pub use std::time::Duration;

pub const SIMJAVA: &str = env!("CARGO_BIN_EXE_apim-simjava");
/// Failure guard for polling; generous for a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(90);
pub const POLL: Duration = Duration::from_millis(50);

pub fn build(kind: PackKind, version: &str, dir: &Path) -> PackInfo {
    build_pack(kind, version, dir, &PackOptions::default())
        .unwrap_or_else(|e| panic!("building {kind} {version}: {e}"))
}

/// Unzips a pack into `dest` and returns CARBON_HOME.
pub fn unzip(pack: &PackInfo, dest: &Path) -> PathBuf {
    let file = fs::File::open(&pack.path).expect("open zip");
    let mut archive = zip::ZipArchive::new(file).expect("read zip");
    archive.extract(dest).expect("extract");
    dest.join(&pack.top_dir)
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn log_text(home: &Path) -> String {
    fs::read_to_string(home.join("repository/logs/wso2carbon.log")).unwrap_or_default()
}

pub fn wait_log(home: &Path, needle: &str) -> bool {
    wait_until(TIMEOUT, POLL, || log_text(home).contains(needle))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a script from `bin/` with `sh`, JAVA_HOME set or removed; CARBON_HOME never inherited.
pub fn sh(home: &Path, script: &str, args: &[&str], java_home: Option<&Path>) -> Output {
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
pub struct Machine {
    pub hosts: PathBuf,
    pub jdk: FakeJdk,
}

pub fn machine(root: &Path, name: &str, ip: Ipv4Addr, hosts: &[(&str, Ipv4Addr)]) -> Machine {
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

pub fn pid_of(home: &Path) -> Option<i32> {
    fs::read_to_string(home.join("wso2carbon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Kills whatever node still runs in `home` when a test ends (also when it fails).
pub struct NodeGuard(pub PathBuf);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let Some(pid) = pid_of(&self.0)
            && alive(pid)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

pub fn write_toml(home: &Path, text: &str) {
    fs::write(home.join("repository/conf/deployment.toml"), text).expect("write toml");
}

pub fn zip_names(pack: &PackInfo) -> Vec<(String, Option<u32>, bool)> {
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

pub fn keytool_list(store: &Path) -> String {
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

/// Kills a spawned child if the test fails before it is reaped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn scopeguard(child: std::process::Child) -> ChildGuard {
    ChildGuard(child)
}

/// `GET https://addr/path` with HTTP Basic credentials, certificate not verified; the status.
pub fn https_get_basic(addr: SocketAddr, sni: &str, path: &str, user: &str, pass: &str) -> u16 {
    apim_e2e::probe::https_get_basic(addr, sni, path, user, pass).expect("GET with basic auth")
}

/// Runs `bin/ciphertool.sh` with `args` (no terminal: stdin is empty).
pub fn ciphertool(home: &Path, args: &[&str], java_home: &Path) -> Output {
    Command::new("sh")
        .arg(home.join("bin/ciphertool.sh"))
        .args(args)
        .env("JAVA_HOME", java_home)
        .env_remove("CARBON_HOME")
        .env_remove("JAVA_OPTS")
        .stdin(std::process::Stdio::null())
        .current_dir(home.parent().expect("parent"))
        .output()
        .expect("run ciphertool.sh")
}

/// Waits for the server in `home` to stop and its pid to be gone.
pub fn stop_node(home: &Path, script: &str, java_home: &Path) {
    let pid = pid_of(home).expect("pid");
    assert!(
        sh(home, script, &["stop"], Some(java_home))
            .status
            .success()
    );
    assert!(
        wait_until(TIMEOUT, POLL, || !alive(pid)),
        "{script} did not stop"
    );
}
