//! The simulated JVM behind a fake JDK's `bin/java` (the `apim-simjava` binary).
//!
//! `java -version` prints a plausible version; `java ... org.wso2.carbon.bootstrap.Bootstrap`
//! runs a simulated Carbon server (see [`server`], [`launcher`], [`vault`]);
//! `org.wso2.ciphertool.CipherTool` runs the cipher tool (see [`ciphertool`]) when its jar is on
//! the class path; any other main class fails like a JVM that cannot find it.

pub mod cipher;
pub mod ciphertool;
pub mod config;
pub mod db;
pub mod hosts;
pub mod http;
pub mod keystore;
pub mod launcher;
pub mod log;
pub mod packdefaults;
pub mod props;
pub mod roles;
pub mod server;
pub mod vault;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The Carbon launcher class the start scripts run.
pub const BOOTSTRAP_CLASS: &str = "org.wso2.carbon.bootstrap.Bootstrap";

/// A `java` command line, split the way the JVM reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JvmArgs {
    /// `-Dk=v` options, JVM options and program arguments alike (Carbon's `Main` turns
    /// program `-Dk=v` arguments into system properties too); later ones win.
    pub sysprops: BTreeMap<String, String>,
    /// The main class, if one was given.
    pub main_class: Option<String>,
    /// Arguments after the main class.
    pub app_args: Vec<String>,
    /// The `-classpath` / `-cp` value, if given.
    pub classpath: Option<String>,
    /// `-version` was given before any main class.
    pub version: bool,
}

impl JvmArgs {
    /// Parses the arguments after `argv[0]`.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> JvmArgs {
        let mut out = JvmArgs::default();
        let mut it = args.iter().map(AsRef::as_ref);
        while let Some(a) = it.next() {
            if out.main_class.is_some() {
                out.app_args.push(a.to_string());
                insert_prop(&mut out.sysprops, a);
                continue;
            }
            match a {
                "-version" | "--version" | "-showversion" => out.version = true,
                "-cp" | "-classpath" | "--class-path" => {
                    out.classpath = it.next().map(str::to_string);
                }
                _ if a.starts_with("-D") => insert_prop(&mut out.sysprops, a),
                _ if a.starts_with('-') => {}
                _ => out.main_class = Some(a.to_string()),
            }
        }
        out
    }
}

fn insert_prop(props: &mut BTreeMap<String, String>, arg: &str) {
    if let Some(kv) = arg.strip_prefix("-D") {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !k.is_empty() {
            props.insert(k.to_string(), v.to_string());
        }
    }
}

/// Finds the fake JDK this process runs from: `argv[0]` is `<jdk>/bin/java` when the scripts
/// run `"$JAVA_HOME/bin/java"`; else `$JAVA_HOME`; else the binary's own location.
pub fn locate_jdk_home(argv0: &str) -> PathBuf {
    if argv0.contains('/') {
        let p = Path::new(argv0);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        if let Some(home) = abs.parent().and_then(Path::parent) {
            return home.to_path_buf();
        }
    }
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        return PathBuf::from(home);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_default()
}

/// The `java -version` text (goes to stderr, like the real JVM).
pub fn version_text(java_version: &str) -> String {
    format!(
        "openjdk version \"{v}\" 2023-10-17\nOpenJDK Runtime Environment Temurin-{v}+9 (build {v}+9)\nOpenJDK 64-Bit Server VM Temurin-{v}+9 (build {v}+9, mixed mode, sharing)\n",
        v = java_version
    )
}

/// Entry point of `apim-simjava`; returns the process exit code.
pub fn main_entry(argv: Vec<String>) -> i32 {
    let argv0 = argv.first().cloned().unwrap_or_default();
    let jvm = JvmArgs::parse(&argv[1.min(argv.len())..]);
    let jdk_home = locate_jdk_home(&argv0);
    let java_version =
        crate::fakejdk::java_version(&jdk_home).unwrap_or_else(|| "17.0.9".to_string());
    if jvm.version {
        eprint!("{}", version_text(&java_version));
        return 0;
    }
    match jvm.main_class.as_deref() {
        None => {
            eprintln!("Usage: java [options] <mainclass> [args...]");
            1
        }
        Some(BOOTSTRAP_CLASS) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("Error: cannot start the runtime: {e}");
                    return 1;
                }
            };
            runtime.block_on(server::run(jvm, jdk_home, java_version))
        }
        Some(ciphertool::CIPHERTOOL_CLASS) if on_classpath(&jvm, "org.wso2.ciphertool") => {
            ciphertool::run(&jvm)
        }
        Some(other) => {
            eprintln!(
                "Error: Could not find or load main class {other}\nCaused by: java.lang.ClassNotFoundException: {other}"
            );
            1
        }
    }
}

/// Whether the class path holds an existing jar whose file name starts with `prefix`.
fn on_classpath(jvm: &JvmArgs, prefix: &str) -> bool {
    jvm.classpath.as_deref().is_some_and(|cp| {
        cp.split(':').any(|entry| {
            let p = Path::new(entry);
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jvm_args_split_like_java() {
        let a = JvmArgs::parse(&[
            "-Xms256m",
            "-classpath",
            ":/x.jar",
            "-Dcarbon.home=/opt/wso2am",
            "-DportOffset=1",
            BOOTSTRAP_CLASS,
            "-Dprofile=gateway-worker",
            "-DportOffset=3",
            "extra",
        ]);
        assert_eq!(a.main_class.as_deref(), Some(BOOTSTRAP_CLASS));
        assert_eq!(a.sysprops["carbon.home"], "/opt/wso2am");
        assert_eq!(a.sysprops["portOffset"], "3");
        assert_eq!(a.sysprops["profile"], "gateway-worker");
        assert_eq!(a.app_args.len(), 3);
        assert!(!a.version);
        assert!(JvmArgs::parse(&["-version"]).version);
    }

    #[test]
    fn jdk_home_from_argv0() {
        assert_eq!(
            locate_jdk_home("/machines/m1/jdk/bin/java"),
            PathBuf::from("/machines/m1/jdk")
        );
    }
}
