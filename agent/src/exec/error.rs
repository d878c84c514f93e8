//! The one error type of the exec layer.
//!
//! Every variant carries the context an operator needs to act on it (the path, the entry, the
//! pid, the limit) so that a `failed(reason)` phase reported to the controller is self-explaining
//! without the agent's logs. Secrets never appear in an error: commands are described by their
//! program and argv (which by project rule never carry secrets), never by their environment.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the crate.
pub type Result<T, E = ExecError> = std::result::Result<T, E>;

/// Everything that can go wrong while the agent touches the machine.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A filesystem call failed; `op` says what the agent was doing, in words.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the agent was doing, e.g. "create temp file for".
        op: &'static str,
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A blocking task (zip extraction, hashing) panicked or was cancelled by the runtime.
    #[error("background task for {op} did not finish: {source}")]
    Join {
        /// What the task was doing.
        op: &'static str,
        /// The join error from tokio.
        #[source]
        source: tokio::task::JoinError,
    },

    /// An atomic file write failed (the error names the file and the step).
    #[error(transparent)]
    Write(#[from] apim_atomic::AtomicError),

    /// The ledger file exists but cannot be parsed; the agent refuses to guess its content.
    #[error("ledger {} is unreadable (refusing to treat it as empty): {reason}", path.display())]
    LedgerCorrupt {
        /// The ledger file.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
    },

    /// The value could not be serialised for the ledger (a bug in the value type).
    #[error("cannot serialise ledger value for {}: {source}", path.display())]
    LedgerSerialize {
        /// The ledger file.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A commit offered an older generation than the one the ledger holds (a stale controller
    /// or a replayed message); the held generation stays.
    #[error("ledger {} holds generation {held}; refusing older generation {offered}", path.display())]
    GenerationRegressed {
        /// The ledger file.
        path: PathBuf,
        /// The generation on disk.
        held: u64,
        /// The generation offered.
        offered: u64,
    },

    /// A commit offered the held generation with different content: generations must name one
    /// content only, so this is a controller bug and nothing is written.
    #[error("ledger {} already holds generation {generation} with different content", path.display())]
    GenerationConflict {
        /// The ledger file.
        path: PathBuf,
        /// The generation both values claim.
        generation: u64,
    },

    /// The expected sha256 given by the controller is not 64 hex digits.
    #[error("expected sha256 {value:?} is not 64 hex digits")]
    BadDigest {
        /// The value as given.
        value: String,
    },

    /// The file's sha256 is not the expected one: the pack is corrupt or not the one planned.
    #[error("sha256 mismatch for {}: expected {expected}, found {actual}", path.display())]
    ShaMismatch {
        /// The file that was hashed.
        path: PathBuf,
        /// The digest the plan names.
        expected: String,
        /// The digest of the bytes on disk.
        actual: String,
    },

    /// The zip library could not read the archive or one entry (corrupt data, CRC error, a
    /// compression method we do not build, declared size exceeded).
    #[error("cannot read zip {}{}: {source}", zip.display(), entry.as_deref().map(|e| format!(" entry {e:?}")).unwrap_or_default())]
    Zip {
        /// The archive.
        zip: PathBuf,
        /// The entry being read, when known.
        entry: Option<String>,
        /// The zip error.
        #[source]
        source: zip::result::ZipError,
    },

    /// An entry would escape the staging dir or is a kind of file we never create
    /// (path traversal, absolute path, symlink, device, duplicate name).
    #[error("refusing unsafe zip entry {entry:?} in {}: {reason}", zip.display())]
    UnsafeEntry {
        /// The archive.
        zip: PathBuf,
        /// The entry name as stored in the archive.
        entry: String,
        /// Why it is refused.
        reason: String,
    },

    /// An entry is not under the top directory the distribution must have.
    #[error("zip {} entry {entry:?} is not under the expected top directory {expected:?}", zip.display())]
    UnexpectedTopDir {
        /// The archive.
        zip: PathBuf,
        /// The entry name.
        entry: String,
        /// The top directory the plan expects (e.g. `product-1.0`).
        expected: String,
    },

    /// An entry's data is damaged: it does not inflate, inflates to more than the archive
    /// declares, or fails its CRC-32.
    #[error("zip {} is corrupt: entry {entry:?} {reason}", zip.display())]
    CorruptEntry {
        /// The archive.
        zip: PathBuf,
        /// The entry.
        entry: String,
        /// What is wrong with its data.
        reason: String,
    },

    /// The archive exceeds a zip-bomb guard.
    #[error("zip {} exceeds the {what} limit: {actual} > {limit}", zip.display())]
    ZipLimit {
        /// The archive.
        zip: PathBuf,
        /// Which limit ("entry count", "entry size", "total size").
        what: &'static str,
        /// The configured limit.
        limit: u64,
        /// The value found.
        actual: u64,
    },

    /// After extraction the staged tree does not contain exactly what was planned.
    #[error("staged tree {} failed verification: {reason}", path.display())]
    StagedTreeMismatch {
        /// The staged directory.
        path: PathBuf,
        /// What differed.
        reason: String,
    },

    /// The hosts file's managed block markers are damaged (a BEGIN without END, or several
    /// blocks); the agent will not guess which lines are its own.
    #[error("hosts file {} has a damaged apimctl block: {reason}", path.display())]
    HostsCorrupt {
        /// The hosts file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A hosts entry would produce an invalid or injected line.
    #[error("invalid hosts entry {entry}: {reason}")]
    InvalidHostsEntry {
        /// The entry, rendered for humans.
        entry: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The command line given for a node script is unusable.
    #[error("invalid command for {}: {reason}", home.display())]
    InvalidCommand {
        /// The node's home.
        home: PathBuf,
        /// Why.
        reason: String,
    },

    /// Another start or stop of the same node holds the node's lock.
    #[error("another start/stop of {} is in progress (lock {} is held)", home.display(), lock.display())]
    NodeBusy {
        /// The node's home.
        home: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },

    /// The `run_as` user does not exist on this machine.
    #[error("user {user:?} does not exist on this machine")]
    UnknownUser {
        /// The user name.
        user: String,
    },

    /// Looking up the `run_as` user failed.
    #[error("cannot look up user {user:?}: {source}")]
    UserLookup {
        /// The user name.
        user: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// `run_as` names another user but the agent is not root, so it cannot switch.
    #[error("cannot run as {user:?}: the agent runs as uid {euid}, not root")]
    CannotSwitchUser {
        /// The user asked for.
        user: String,
        /// The agent's effective uid.
        euid: u32,
    },

    /// The script could not be spawned at all (missing, not executable, bad interpreter).
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The script ran but exited unsuccessfully.
    #[error("{} {args:?} exited with {status}; output:\n{output}", program.display())]
    ScriptFailed {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// The exit status, rendered.
        status: String,
        /// The tail of its combined stdout/stderr.
        output: String,
    },

    /// The script did not finish in time and was killed.
    #[error("{} {args:?} did not finish within {timeout:?} and was killed; output:\n{output}", program.display())]
    ScriptTimeout {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// The time it was given.
        timeout: Duration,
        /// The tail of its output so far.
        output: String,
    },

    /// The start script returned but no live server pid appeared in the pid file.
    #[error("no live pid in {} within {waited:?} after start; script output:\n{output}", pid_file.display())]
    NoPidAfterStart {
        /// The pid file.
        pid_file: PathBuf,
        /// How long the agent waited.
        waited: Duration,
        /// The start script's output.
        output: String,
    },

    /// The server wrote its pid and died right away.
    #[error("server pid {pid} (from {}) died right after start; script output:\n{output}", pid_file.display())]
    DiedAfterStart {
        /// The pid file.
        pid_file: PathBuf,
        /// The dead pid.
        pid: i32,
        /// The start script's output.
        output: String,
    },

    /// Sending a signal failed for a reason other than "no such process".
    #[error("cannot send {signal} to pid {pid}: {source}")]
    Signal {
        /// The target pid.
        pid: i32,
        /// The signal name.
        signal: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// The process survived SIGKILL for the whole wait (uninterruptible sleep, or it is a
    /// zombie whose parent does not reap it).
    #[error("pid {pid} is still alive {waited:?} after SIGKILL")]
    StillAlive {
        /// The pid.
        pid: i32,
        /// How long the agent waited after SIGKILL.
        waited: Duration,
    },

    /// A readiness probe specification is unusable (bad URL, unsupported scheme).
    #[error("invalid readiness probe {probe:?}: {reason}")]
    InvalidProbe {
        /// The probe as given.
        probe: String,
        /// Why.
        reason: String,
    },

    /// The Java runtime at a `java_home` could not be identified.
    #[error("cannot determine the Java version at {}: {reason}", java_home.display())]
    JavaProbe {
        /// The JAVA_HOME that was probed.
        java_home: PathBuf,
        /// What failed (both the `java -version` run and the `release` file).
        reason: String,
    },

    /// Writing a keystore or importing a trusted certificate failed.
    #[error("keystores: {what}: {source}")]
    Keystore {
        /// Which store or step.
        what: String,
        /// The certs crate's error (boxed: it is large).
        #[source]
        source: Box<apim_certs::CertsError>,
    },

    /// A PEM in the keystore spec could not be parsed.
    #[error("keystores: {what} is not valid PEM")]
    BadPem {
        /// Which field.
        what: &'static str,
    },

    /// The keystore spec names a format or a path the agent cannot use.
    #[error("keystores: {reason}")]
    InvalidKeystoreSpec {
        /// What is wrong.
        reason: String,
    },

    /// The system information library could not read the machine's facts.
    #[error("cannot read machine facts: {reason}")]
    Facts {
        /// What failed.
        reason: String,
    },

    /// A log file was asked for that the agent does not serve (outside the node's log folder,
    /// not a regular file, a symlink leading out).
    #[error("log file {file:?} refused: {reason}")]
    LogRefused {
        /// The file as asked for (relative to the log folder).
        file: String,
        /// Why.
        reason: String,
    },

    /// A tree the agent was to remove is not one it may remove (not strictly inside its install
    /// root, or not a directory it made).
    #[error("refusing to remove {}: {reason}", path.display())]
    RemoveRefused {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// `mount` failed or timed out (`reason`: what it said, escaped).
    #[error("cannot mount {} on {}: {reason}", apim_proto::text::printable(source_fs), target.display())]
    Mount {
        /// What was to be mounted.
        source_fs: String,
        /// Where.
        target: PathBuf,
        /// `mount`'s error output (escaped), or why it did not finish.
        reason: String,
    },

    /// `umount` failed or timed out; nothing below the mount point is removed.
    #[error("cannot unmount {}: {reason}", target.display())]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// `umount`'s error output (escaped), or why it did not finish.
        reason: String,
    },
}

impl ExecError {
    /// Whether the archive itself was refused (unsafe entries, another top directory, a
    /// limit, damaged data, unreadable): the same pack will never unpack.
    pub fn is_refused_archive(&self) -> bool {
        matches!(
            self,
            ExecError::UnsafeEntry { .. }
                | ExecError::UnexpectedTopDir { .. }
                | ExecError::ZipLimit { .. }
                | ExecError::CorruptEntry { .. }
                | ExecError::Zip { .. }
        )
    }

    /// Shorthand for [`ExecError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExecError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
