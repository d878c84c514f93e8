//! Machine facts for pre-flight checks, and the checks themselves.
//!
//! [`gather`] collects what the controller needs to know before it sends a pack to a machine:
//! CPUs, memory, OS, kernel and host name (via `sysinfo`), the free space of the filesystem
//! that will hold the install root (via `statvfs` on the install root, or its nearest existing
//! ancestor — the truth for that path even inside containers and on bind mounts, where
//! `sysinfo`'s list of mounted disks may not contain it), and the Java version at a JAVA_HOME.
//!
//! The Java version comes from running `$JAVA_HOME/bin/java -version` (it prints to stderr, e.g.
//! `openjdk version "17.0.9" 2023-10-17`, or `java version "1.8.0_392"`) — proof that the JVM
//! actually runs on this machine — and falls back to the `release` file's `JAVA_VERSION=` when
//! the binary cannot be run, saying so in [`JavaInfo::source`].
//!
//! [`preflight`] turns facts + [`Requirements`] into a list of [`Problem`]s (empty = go).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exec::error::{ExecError, Result};

/// Where a Java version was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JavaVersionSource {
    /// `java -version` ran and printed it.
    JavaVersionOutput,
    /// Only the JDK's `release` file could be read; the binary did not run.
    ReleaseFile,
}

/// The JDK found at a JAVA_HOME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JavaInfo {
    /// The JAVA_HOME probed.
    pub java_home: PathBuf,
    /// The full version string, e.g. `17.0.9` or `1.8.0_392`.
    pub version: String,
    /// The feature release: 8, 11, 17, 21…
    pub major: u32,
    /// Where the version came from.
    pub source: JavaVersionSource,
    /// Why `java -version` could not be used, when the release file was.
    pub run_error: Option<String>,
}

/// The Java part of the facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JavaFact {
    /// No JAVA_HOME was asked about.
    NotChecked,
    /// A JDK was identified.
    Found(JavaInfo),
    /// Nothing usable at the JAVA_HOME.
    Missing {
        /// The JAVA_HOME probed.
        java_home: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the agent reports about its machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    /// Host name.
    pub hostname: String,
    /// OS name and version, e.g. `Linux 12 (bookworm)`.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Available memory, bytes.
    pub memory_available: u64,
    /// The install root the disk figures are about.
    pub install_root: PathBuf,
    /// The path actually measured (the install root or its nearest existing ancestor).
    pub disk_measured_at: PathBuf,
    /// Bytes available to unprivileged users on that filesystem.
    pub disk_free: u64,
    /// Filesystem size, bytes.
    pub disk_total: u64,
    /// The JDK.
    pub java: JavaFact,
}

/// Collect the facts; `java_home` is probed when given.
pub async fn gather(install_root: &Path, java_home: Option<&Path>) -> Result<MachineFacts> {
    let root = install_root.to_path_buf();
    let sys = tokio::task::spawn_blocking(move || system_facts(&root))
        .await
        .map_err(|source| ExecError::Join {
            op: "machine facts",
            source,
        })??;
    let java = match java_home {
        None => JavaFact::NotChecked,
        Some(h) => match java_version(h).await {
            Ok(j) => JavaFact::Found(j),
            Err(e) => JavaFact::Missing {
                java_home: h.to_path_buf(),
                reason: e.to_string(),
            },
        },
    };
    Ok(MachineFacts { java, ..sys })
}

fn system_facts(install_root: &Path) -> Result<MachineFacts> {
    use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    )
    .map_err(|e| ExecError::Facts {
        reason: e.to_string(),
    })?;
    let (measured, vfs) = statvfs_nearest(install_root)?;
    let frsize = vfs.fragment_size();
    let os = System::long_os_version()
        .or_else(|_| System::name())
        .unwrap_or_else(|_| "unknown".into());
    Ok(MachineFacts {
        hostname: System::host_name().unwrap_or_else(|_| "unknown".into()),
        os,
        kernel: System::kernel_version().unwrap_or_else(|_| "unknown".into()),
        cpus: sys.cpus().len(),
        memory_total: sys.total_memory(),
        memory_available: sys.available_memory(),
        install_root: install_root.to_path_buf(),
        disk_measured_at: measured,
        disk_free: vfs.blocks_available() * frsize,
        disk_total: vfs.blocks() * frsize,
        java: JavaFact::NotChecked,
    })
}

/// `statvfs` of `path` or of its nearest existing ancestor.
fn statvfs_nearest(path: &Path) -> Result<(PathBuf, nix::sys::statvfs::Statvfs)> {
    let mut p = path;
    loop {
        match nix::sys::statvfs::statvfs(p) {
            Ok(v) => return Ok((p.to_path_buf(), v)),
            Err(nix::errno::Errno::ENOENT) => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => {
                    return Err(ExecError::io(
                        "statvfs",
                        path,
                        nix::errno::Errno::ENOENT.into(),
                    ));
                }
            },
            Err(e) => return Err(ExecError::io("statvfs", p, e.into())),
        }
    }
}

/// Identify the JDK at `java_home` (see the module docs).
pub async fn java_version(java_home: &Path) -> Result<JavaInfo> {
    let java = java_home.join("bin").join("java");
    let run_error = match run_java_version(&java).await {
        Ok(text) => match parse_java_version_output(&text) {
            Some((version, major)) => {
                return Ok(JavaInfo {
                    java_home: java_home.to_path_buf(),
                    version,
                    major,
                    source: JavaVersionSource::JavaVersionOutput,
                    run_error: None,
                });
            }
            None => format!("unrecognised `java -version` output: {:?}", text.trim()),
        },
        Err(e) => e,
    };
    let release = java_home.join("release");
    match std::fs::read_to_string(&release) {
        Ok(text) => match parse_release_file(&text) {
            Some((version, major)) => Ok(JavaInfo {
                java_home: java_home.to_path_buf(),
                version,
                major,
                source: JavaVersionSource::ReleaseFile,
                run_error: Some(run_error),
            }),
            None => Err(ExecError::JavaProbe {
                java_home: java_home.to_path_buf(),
                reason: format!("{run_error}; and {} has no JAVA_VERSION", release.display()),
            }),
        },
        Err(e) => Err(ExecError::JavaProbe {
            java_home: java_home.to_path_buf(),
            reason: format!("{run_error}; and cannot read {}: {e}", release.display()),
        }),
    }
}

async fn run_java_version(java: &Path) -> std::result::Result<String, String> {
    let mut cmd = tokio::process::Command::new(java);
    cmd.arg("-version")
        .env_clear()
        .env("PATH", crate::exec::process::SAFE_PATH)
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| format!("{} -version did not finish in 30 s", java.display()))?
        .map_err(|e| format!("cannot run {}: {e}", java.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} -version failed ({}): {}",
            java.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // -version writes to stderr; some builds also to stdout.
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok(text)
}

/// Parse `java -version` output: the first quoted version on a `… version "x"` line.
pub fn parse_java_version_output(text: &str) -> Option<(String, u32)> {
    text.lines().find_map(|l| {
        let after = &l[l.find(" version \"")? + " version \"".len()..];
        let v = &after[..after.find('"')?];
        java_major(v).map(|m| (v.to_string(), m))
    })
}

/// Parse a JDK `release` file's `JAVA_VERSION="…"`.
pub fn parse_release_file(text: &str) -> Option<(String, u32)> {
    text.lines().find_map(|l| {
        let v = l
            .trim()
            .strip_prefix("JAVA_VERSION=")?
            .trim()
            .trim_matches('"');
        java_major(v).map(|m| (v.to_string(), m))
    })
}

/// The feature release of a version string: `1.8.0_392` → 8, `17.0.9` → 17, `21` → 21,
/// `22-ea` → 22.
pub fn java_major(version: &str) -> Option<u32> {
    let mut parts = version.split(['.', '_', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

/// The machine's total memory, bytes (what [`MachineFacts::memory_total`] reports; cheap: one
/// read of the kernel's memory figures).
pub fn memory_total() -> Result<u64> {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    )
    .map_err(|e| ExecError::Facts {
        reason: e.to_string(),
    })?;
    Ok(sys.total_memory())
}

/// The memory problem, if a machine with `total` bytes cannot hold nodes that need `needed`
/// bytes together (0: not checked).
pub fn memory_problem(total: u64, needed: u64) -> Option<Problem> {
    (needed > 0 && total < needed).then_some(Problem::MemoryTooSmall { total, needed })
}

/// What a node's pack needs from the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Lowest supported JDK feature release (e.g. 11 for 4.2+).
    pub jdk_min: u32,
    /// Highest supported JDK feature release (e.g. 21 for 4.3+).
    pub jdk_max: u32,
    /// Size of the pack (zip) in bytes; free disk must be at least three times this
    /// (zip + staged tree + the tree being replaced).
    pub pack_size: u64,
    /// Memory the machine's nodes need together, bytes (0: not checked).
    pub min_memory: u64,
}

/// One reason the machine is not ready for the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Problem {
    /// No usable JDK at the JAVA_HOME.
    JavaMissing {
        /// Why.
        reason: String,
    },
    /// The JDK's feature release is outside the supported range.
    JavaUnsupported {
        /// The version found.
        found: String,
        /// Lowest supported release.
        min: u32,
        /// Highest supported release.
        max: u32,
    },
    /// Not enough free disk for the install root.
    DiskTooSmall {
        /// The path measured.
        path: PathBuf,
        /// Bytes free.
        free: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// Not enough memory.
    MemoryTooSmall {
        /// Bytes in the machine.
        total: u64,
        /// Bytes needed.
        needed: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::JavaMissing { reason } => write!(f, "no usable JDK: {reason}"),
            Problem::JavaUnsupported { found, min, max } => {
                write!(f, "JDK {found} is not supported (need {min}..={max})")
            }
            Problem::DiskTooSmall { path, free, needed } => write!(
                f,
                "{} has {} MiB free, need {} MiB (3 x pack size)",
                path.display(),
                free >> 20,
                needed >> 20
            ),
            Problem::MemoryTooSmall { total, needed } => write!(
                f,
                "the machine has {} MiB of memory, its nodes need {} MiB",
                total >> 20,
                needed.div_ceil(1 << 20)
            ),
        }
    }
}

/// Check `facts` against `req`; empty means the machine can take the node. A JDK that was
/// not checked is not a problem here (the caller decides whether to probe).
pub fn preflight(facts: &MachineFacts, req: &Requirements) -> Vec<Problem> {
    let mut problems = Vec::new();
    match &facts.java {
        JavaFact::NotChecked => {}
        JavaFact::Missing { reason, .. } => problems.push(Problem::JavaMissing {
            reason: reason.clone(),
        }),
        JavaFact::Found(j) if j.major < req.jdk_min || j.major > req.jdk_max => {
            problems.push(Problem::JavaUnsupported {
                found: j.version.clone(),
                min: req.jdk_min,
                max: req.jdk_max,
            })
        }
        JavaFact::Found(_) => {}
    }
    let needed = req.pack_size.saturating_mul(3);
    if facts.disk_free < needed {
        problems.push(Problem::DiskTooSmall {
            path: facts.disk_measured_at.clone(),
            free: facts.disk_free,
            needed,
        });
    }
    problems.extend(memory_problem(facts.memory_total, req.min_memory));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_versions_parse() {
        let out =
            "openjdk version \"17.0.9\" 2023-10-17\nOpenJDK Runtime Environment (build 17.0.9+9)\n";
        assert_eq!(parse_java_version_output(out), Some(("17.0.9".into(), 17)));
        let old = "java version \"1.8.0_392\"\nJava(TM) SE Runtime Environment";
        assert_eq!(
            parse_java_version_output(old),
            Some(("1.8.0_392".into(), 8))
        );
        assert_eq!(
            parse_java_version_output("openjdk version \"22-ea\" 2024-03-19"),
            Some(("22-ea".into(), 22))
        );
        assert_eq!(parse_java_version_output("garbage"), None);
        let rel = "IMPLEMENTOR=\"Eclipse Adoptium\"\nJAVA_VERSION=\"21.0.2\"\n";
        assert_eq!(parse_release_file(rel), Some(("21.0.2".into(), 21)));
        assert_eq!(java_major("11"), Some(11));
        assert_eq!(java_major("x"), None);
    }

    #[test]
    fn memory_is_checked_against_the_sum_when_there_is_one() {
        const MIB: u64 = 1 << 20;
        assert_eq!(memory_problem(4096 * MIB, 0), None, "0: not checked");
        assert_eq!(memory_problem(4096 * MIB, 4096 * MIB), None);
        let p = memory_problem(4096 * MIB, 4096 * MIB + 1).expect("short");
        assert_eq!(
            p.to_string(),
            "the machine has 4096 MiB of memory, its nodes need 4097 MiB"
        );
        assert!(memory_total().unwrap() > 0);
    }
}
