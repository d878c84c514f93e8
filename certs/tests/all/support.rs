//! Shared helpers: locating keytool/openssl, running them, inspecting their output.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use apim_certs::{CommandRunner, KeytoolCommand, SystemRunner};

/// Finds an executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The JDK's keytool: `$JAVA_HOME/bin/keytool`, else the one on PATH. Panics (fails the test)
/// with an actionable message if there is none: these tests must not silently skip.
pub fn keytool_path() -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let p = Path::new(&home).join("bin").join("keytool");
        if p.is_file() {
            return p;
        }
    }
    which("keytool").unwrap_or_else(|| {
        panic!(
            "keytool not found (neither $JAVA_HOME/bin/keytool nor on PATH): install a JDK, \
             e.g. `apt-get install openjdk-17-jdk-headless`; the keystore tests need the real keytool"
        )
    })
}

/// The openssl CLI. Panics with an actionable message if missing.
pub fn openssl_path() -> PathBuf {
    which("openssl").unwrap_or_else(|| {
        panic!("openssl CLI not found on PATH: install it (`apt-get install openssl`)")
    })
}

/// Runs a command and returns its output, failing the test (with the output) if it failed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `openssl <args>` and returns stdout as text.
pub fn openssl<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_ok(Command::new(openssl_path()).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs keytool with a password passed the same safe way the crate does (env var).
pub fn keytool_with_pass(args: &[&str], password: &str) -> Output {
    run_ok(
        Command::new(keytool_path())
            .args(args)
            .env("TEST_STORE_PASS", password),
    )
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Permission bits of a path.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// How many entries named `alias` a `keytool -list -v` listing has.
pub fn count_alias(listing: &str, alias: &str) -> usize {
    let want = format!("Alias name: {alias}");
    listing.lines().filter(|l| l.trim() == want).count()
}

/// The "Entry type:" line that follows `Alias name: alias` in a `keytool -list -v` listing.
pub fn entry_type(listing: &str, alias: &str) -> Option<String> {
    let want = format!("Alias name: {alias}");
    let mut lines = listing.lines().skip_while(|l| l.trim() != want);
    lines.next()?;
    lines
        .take(4)
        .find_map(|l| l.trim().strip_prefix("Entry type: ").map(str::to_owned))
}

/// The uppercase colon-separated SHA-256 fingerprint keytool prints for a DER certificate.
pub fn keytool_sha256(der: &[u8]) -> String {
    apim_certs::sha256_fingerprint(der)
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

/// A runner that executes for real and records every command, so tests can inspect the
/// argv and environment that actually reached the child processes.
#[derive(Default)]
pub struct RecordingRunner {
    pub seen: Mutex<Vec<KeytoolCommand>>,
}

impl CommandRunner for RecordingRunner {
    fn run(&self, cmd: &KeytoolCommand) -> std::io::Result<Output> {
        self.seen.lock().unwrap().push(cmd.clone());
        SystemRunner.run(cmd)
    }
}

impl RecordingRunner {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}
