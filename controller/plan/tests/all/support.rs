//! Shared helpers: a valid base plan in a temp dir (with a real pack file and secret files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apim_plan::diag::{Report, Severity, line_col};
use apim_plan::validate::{self, Options};

/// The repository's deploy/examples folder.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples")
}

/// A temp dir holding a small 4.5 pack set (zips laid out like the real ones) and secret files,
/// plus the plan text that uses them.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// sha256 of the traffic manager pack.
    pub sha: String,
    /// sha256 of each pack, by its top directory.
    pub shas: BTreeMap<String, String>,
}

/// A zip with one file under `top/`.
pub fn tiny_pack(top: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        format!("{top}/bin/version.txt"),
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    w.write_all(top.as_bytes()).unwrap();
    w.finish().unwrap().into_inner()
}

impl Fixture {
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
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        for name in ["admin", "db", "ks"] {
            std::fs::write(dir.path().join("secrets").join(name), "s3cret\n").unwrap();
        }
        let sha = shas["wso2am-tm-4.5.0"].clone();
        Fixture { dir, sha, shas }
    }

    /// A valid 4.5 single-node plan (one control plane, gateway and traffic manager).
    pub fn base_plan(&self) -> String {
        BASE.replace("@SHA_ACP@", &self.shas["wso2am-acp-4.5.0"])
            .replace("@SHA_GW@", &self.shas["wso2am-universal-gw-4.5.0"])
            .replace("@SHA_TM@", &self.shas["wso2am-tm-4.5.0"])
    }

    pub fn check(&self, text: &str) -> Report {
        self.check_env(text, &BTreeMap::new())
    }

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
