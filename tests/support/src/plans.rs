//! The plans tests apply and check: the five-node 3.x plan the controller's and the CLI's
//! online tests roll out ([`plan_v3`], with the [`secrets`] it references), the 4.5 [`Fixture`]
//! (a valid plan beside its packs and secret files), tiny packs, the repository's examples, and
//! assertions on validation reports.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use apim_plan::diag::{Report, Severity, line_col};
use apim_plan::validate::{self, Options};

/// The resolved secrets the test plans reference.
pub fn secrets() -> HashMap<String, String> {
    [
        ("env:ADMIN_PW".to_string(), "admin-secret".to_string()),
        ("env:DB_PW".to_string(), "db-secret".to_string()),
        ("env:KS_PW".to_string(), "ks-secret".to_string()),
    ]
    .into()
}

/// The MySQL Connector/J driver class the simulated server looks for.
pub const MYSQL_DRIVER_CLASS: &str = "com.mysql.cj.jdbc.Driver";
/// The PostgreSQL JDBC driver class.
pub const POSTGRES_DRIVER_CLASS: &str = "org.postgresql.Driver";
/// The file name of the stand-in MySQL driver.
pub const MYSQL_DRIVER_FILE: &str = "mysql-connector-j-8.4.0.jar";
/// The file name of the stand-in PostgreSQL driver.
pub const POSTGRES_DRIVER_FILE: &str = "postgresql-42.7.4.jar";

/// A stand-in for mysql-connector-j: a jar holding the driver's class entry.
pub fn mysql_driver_jar() -> Vec<u8> {
    apim_e2e::simpack::driver_jar(MYSQL_DRIVER_CLASS)
}

/// A stand-in for the PostgreSQL JDBC driver.
pub fn postgres_driver_jar() -> Vec<u8> {
    apim_e2e::simpack::driver_jar(POSTGRES_DRIVER_CLASS)
}

/// `[drivers]` with the stand-in MySQL driver at `dir/<file>` (relative to the plan).
pub fn mysql_drivers_section(dir: &str) -> String {
    format!(
        "\n[drivers]\nmysql = {{ path = \"{dir}/{MYSQL_DRIVER_FILE}\", sha256 = \"{}\" }}\n",
        apim_plan::digest(&mysql_driver_jar())
    )
}

/// The five-node 3.x plan, one machine per node (127.0.0.x), with an optional gateway
/// override and failure policy.
pub fn plan_v3(pack_sha: &str, gateway_override: &str, on_failure: &str, timeout: &str) -> String {
    let nodes = [
        ("km-1", "key-manager", "km.wso2.com"),
        ("tm-1", "traffic-manager", "tm.wso2.com"),
        ("pub-1", "publisher", "pub.wso2.com"),
        ("dp-1", "devportal", "dp.wso2.com"),
        ("gw-1", "gateway", "gw.wso2.com"),
    ];
    let drivers = mysql_drivers_section("dist");
    let mut s = format!(
        r#"[cluster]
name = "apim-test"
product = "wso2am-3.2.0"
install_dir = "/opt/wso2"
java_home = "/usr/lib/jvm/java-11"

[distributions]
default = {{ path = "dist/wso2am-3.2.0.zip", sha256 = "{pack_sha}" }}
{drivers}
[admin]
username = "admin"
password = {{ env = "ADMIN_PW" }}

[databases.apim_db]
type = "mysql"
host = "db.wso2.com"
port = 3306
name = "apim_db"
username = "apim"
password = {{ env = "DB_PW" }}

[databases.shared_db]
type = "mysql"
host = "db.wso2.com"
port = 3306
name = "shared_db"
username = "apim"
password = {{ env = "DB_PW" }}

[tls]
issuer = "cluster-ca"
keystore_type = "PKCS12"
keystore_password = {{ env = "KS_PW" }}

[hosts]
"db.wso2.com" = "127.0.0.1"

[rollout]
max_parallel = 2
health_timeout = "{timeout}"
on_failure = "{on_failure}"
"#
    );
    for (i, (name, role, host)) in nodes.iter().enumerate() {
        s.push_str(&format!(
            "\n[[machines]]\nname = \"vm-{name}\"\naddress = \"127.0.1.{}\"\n\n[[nodes]]\nname = \"{name}\"\nmachine = \"vm-{name}\"\nrole = \"{role}\"\nhostname = \"{host}\"\noffset = 0\n",
            i + 1
        ));
    }
    if !gateway_override.is_empty() {
        s.push_str(&format!(
            "\n[overrides]\n\"node:gw-1\" = '''\n{gateway_override}\n'''\n"
        ));
    }
    s
}

/// Machines of [`plan_v3`].
pub const V3_MACHINES: [&str; 5] = ["vm-km-1", "vm-tm-1", "vm-pub-1", "vm-dp-1", "vm-gw-1"];

/// A zip laid out like a product pack: a version file and, for each role the pack runs, the
/// small base `deployment.toml` the renderer merges onto (the fake agents never unpack it; the
/// controller and the validator read its central directory and its configuration files).
pub fn tiny_pack(top: &str) -> Vec<u8> {
    pack_with(top, &[])
}

/// A [`tiny_pack`] with `extra` files (path under the top directory → text; a path of the tiny
/// pack is replaced).
pub fn pack_with(top: &str, extra: &[(String, String)]) -> Vec<u8> {
    use std::io::Write as _;
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    files.insert("bin/version.txt".into(), top.into());
    let product = top
        .rsplit_once('-')
        .and_then(|(_, v)| apim_plan::catalogue::Product::parse(&format!("wso2am-{v}")).ok());
    for p in product.iter() {
        for role in p.roles() {
            let profile = p.role_profile(*role).expect("the release's role");
            if p.pack_top_dir(profile.pack) == top {
                files.insert(
                    profile.base_config_file(),
                    "[server]\nhostname = \"localhost\"\n\n[[event_handler]]\nname = \"userPostSelfRegistration\"\n"
                        .into(),
                );
            }
        }
    }
    files.extend(extra.iter().cloned());
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, data) in files {
        w.start_file(
            format!("{top}/{path}"),
            zip::write::SimpleFileOptions::default(),
        )
        .expect("zip entry");
        w.write_all(data.as_bytes()).expect("zip data");
    }
    w.finish().expect("zip").into_inner()
}

/// A config-mapper template (for `repository/resources/conf/templates/`) that reads every
/// leaf key of the `deployment.toml` texts `docs` (arrays whole), and nothing else: a pack
/// whose product reads exactly what those documents write.
pub fn template_reading<'a>(docs: impl IntoIterator<Item = &'a str>) -> (String, String) {
    fn leaves(prefix: &str, t: &toml::Table, out: &mut std::collections::BTreeSet<String>) {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => leaves(&path, t, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
    let mut keys = std::collections::BTreeSet::new();
    for d in docs {
        leaves("", &d.parse().expect("a rendered document"), &mut keys);
    }
    let body: String = keys
        .iter()
        .map(|k| format!("<k>{{{{ {k} }}}}</k>\n"))
        .collect();
    (
        format!(
            "{}/repository/conf/keys.xml.j2",
            apim_plan::catalogue::layout::CONFIG_TEMPLATES_DIR
        ),
        body,
    )
}

/// The repository's `deploy/examples` folder.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples")
}

/// A temp dir holding a small 4.5 pack set (zips laid out like the real ones) and secret files,
/// plus the plan text that uses them.
pub struct Fixture {
    /// The plan's folder: `dist/*.zip`, `secrets/{admin,db,ks}`.
    pub dir: tempfile::TempDir,
    /// sha256 of the traffic manager pack.
    pub sha: String,
    /// sha256 of each pack, by its top directory.
    pub shas: BTreeMap<String, String>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// Writes the packs and secret files into a new temp dir.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dist")).unwrap();
        let mut shas = BTreeMap::new();
        for top in [
            "wso2am-acp-4.5.0",
            "wso2am-universal-gw-4.5.0",
            "wso2am-tm-4.5.0",
        ] {
            let bytes = tiny_pack(top);
            std::fs::write(dir.path().join("dist").join(format!("{top}.zip")), &bytes).unwrap();
            shas.insert(top.to_string(), apim_plan::digest(&bytes));
        }
        std::fs::create_dir_all(dir.path().join("drivers")).unwrap();
        std::fs::write(
            dir.path().join("drivers").join(MYSQL_DRIVER_FILE),
            mysql_driver_jar(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        for name in ["admin", "db", "ks"] {
            std::fs::write(dir.path().join("secrets").join(name), "s3cret\n").unwrap();
        }
        let sha = shas["wso2am-tm-4.5.0"].clone();
        Fixture { dir, sha, shas }
    }

    /// A valid 4.5 single-node plan (one control plane, gateway and traffic manager).
    pub fn base_plan(&self) -> String {
        BASE.replace("@DRIVERS@", &mysql_drivers_section("drivers"))
            .replace("@SHA_ACP@", &self.shas["wso2am-acp-4.5.0"])
            .replace("@SHA_GW@", &self.shas["wso2am-universal-gw-4.5.0"])
            .replace("@SHA_TM@", &self.shas["wso2am-tm-4.5.0"])
    }

    /// Validates `text` as `plan.toml` in the fixture's folder (packs verified).
    pub fn check(&self, text: &str) -> Report {
        self.check_env(text, &BTreeMap::new())
    }

    /// [`Fixture::check`] with `env` as the environment.
    pub fn check_env(&self, text: &str, env: &BTreeMap<String, String>) -> Report {
        let path = self.dir.path().join("plan.toml");
        std::fs::write(&path, text).unwrap();
        validate::check(&path, text, env, Options::default()).1
    }
}

const BASE: &str = r#"[cluster]
name = "t"
product = "wso2am-4.5.0"
java_home = "/usr/lib/jvm/java-17"

[distributions]
control-plane = { path = "dist/wso2am-acp-4.5.0.zip", sha256 = "@SHA_ACP@" }
gateway = { path = "dist/wso2am-universal-gw-4.5.0.zip", sha256 = "@SHA_GW@" }
traffic-manager = { path = "dist/wso2am-tm-4.5.0.zip", sha256 = "@SHA_TM@" }
@DRIVERS@
[admin]
password = { file = "secrets/admin" }

[databases.apim_db]
type = "mysql"
host = "db.example.com"
name = "apim_db"
username = "apim"
password = { file = "secrets/db" }

[databases.shared_db]
type = "mysql"
host = "db.example.com"
name = "shared_db"
username = "shared"
password = { file = "secrets/db" }

[tls]
keystore_password = { file = "secrets/ks" }

[[machines]]
name = "vm-1"
address = "10.0.0.1"

[[machines]]
name = "vm-2"
address = "10.0.0.2"

[[nodes]]
name = "cp-1"
machine = "vm-1"
role = "control-plane"
hostname = "cp.example.com"

[[nodes]]
name = "tm-1"
machine = "vm-1"
role = "traffic-manager"
hostname = "tm.example.com"
offset = 1

[[nodes]]
name = "gw-1"
machine = "vm-2"
role = "gateway"
hostname = "gw.example.com"
"#;

/// Asserts the report has an error whose message contains `needle`, located at the first
/// occurrence of `at` in `text` (line:col), and returns its rendered text.
pub fn expect_error(report: &Report, text: &str, needle: &str, at: &str) -> String {
    let offset = text
        .find(at)
        .unwrap_or_else(|| panic!("`{at}` not in plan text"));
    expect_error_at(report, text, needle, offset)
}

/// Like [`expect_error`], with the expected byte offset given directly.
pub fn expect_error_at(report: &Report, text: &str, needle: &str, offset: usize) -> String {
    let (line, col) = line_col(text, offset);
    let found = report
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error && d.message.contains(needle));
    let Some(d) = found else {
        panic!("no error containing `{needle}`; got:\n{}", report.render());
    };
    let loc = report.location(d);
    assert!(
        loc.ends_with(&format!(":{line}:{col}")),
        "error `{}` is at {loc}, expected line {line} col {col}\n{}",
        d.message,
        report.render()
    );
    report.render()
}
