//! Which process is a node's server: its pid file, and whether the pid in it is alive and ours.

use std::io;
use std::path::PathBuf;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::exec::error::{ExecError, Result};

/// A node's server as the agent finds it: its home and how its process is recognised (the
/// spec's `ServerProcess`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The node's home: the pack's top directory, the scripts' working directory.
    pub home: PathBuf,
    /// The file, relative to `home`, the server writes its own pid into.
    pub pid_file: PathBuf,
    /// The server's main class: a process whose command line has it and no
    /// `home_arg_prefix` argument runs from its working directory, so it is taken for this
    /// node's server. Empty: only a command line naming the home counts.
    pub main_class: String,
    /// The command-line prefix that names a server's home (e.g. `-Dapp.home=`).
    pub home_arg_prefix: String,
}

impl Server {
    /// A server at `home` recognised by `pid_file`, `main_class` and `home_arg_prefix`.
    pub fn new(
        home: impl Into<PathBuf>,
        pid_file: impl Into<PathBuf>,
        main_class: impl Into<String>,
        home_arg_prefix: impl Into<String>,
    ) -> Self {
        Server {
            home: home.into(),
            pid_file: pid_file.into(),
            main_class: main_class.into(),
            home_arg_prefix: home_arg_prefix.into(),
        }
    }

    /// The pid file's path.
    pub fn pid_file_path(&self) -> PathBuf {
        self.home.join(&self.pid_file)
    }
}

/// What a node's pid file says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidFileState {
    /// No pid file: the node never started (or the file was cleaned).
    None,
    /// The pid is alive and is this node's server.
    Alive(i32),
    /// The pid is dead, a zombie, or alive but some other program.
    Stale(i32),
    /// The file does not hold a positive pid (e.g. caught half-written).
    Garbage,
}

/// Read the node's pid file and check the pid (see [`is_our_server`] for "ours").
pub fn pid_file_state(server: &Server) -> Result<PidFileState> {
    let path = server.pid_file_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PidFileState::None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(PidFileState::Garbage),
        Err(e) => return Err(ExecError::io("read pid file", &path, e)),
    };
    Ok(match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => {
            if is_our_server(pid, server) {
                PidFileState::Alive(pid)
            } else {
                PidFileState::Stale(pid)
            }
        }
        _ => PidFileState::Garbage,
    })
}

/// Whether `pid` exists and is not a zombie. A pid owned by another user counts as alive.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => !is_zombie(pid),
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S …": comm may hold spaces and parens, so look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X")
}

/// Whether `pid` is alive and is the server of `server`'s node.
///
/// Its command line must name the home as a path (an argument equal to it, or holding it after
/// `=`/`:` and followed by `/`, `:` or the end — so `/opt/n1` never matches `/opt/n10`), or
/// have the server's main class and no home argument at all. If the command line cannot be
/// read (hidepid), the process is assumed to be ours: a false "alive" only delays a start, a
/// false "stale" would start a second server.
pub fn is_our_server(pid: i32, server: &Server) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return true;
    };
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    let home = &server.home;
    let mut homes = vec![home.as_os_str().as_encoded_bytes().to_vec()];
    if let Ok(c) = home.canonicalize() {
        homes.push(c.as_os_str().as_encoded_bytes().to_vec());
    }
    let names_home = args.iter().any(|a| {
        homes
            .iter()
            .any(|h| contains_path_token(a, h.strip_suffix(b"/").unwrap_or(h)))
    });
    if names_home {
        return true;
    }
    let main_class = server.main_class.as_bytes();
    let prefix = server.home_arg_prefix.as_bytes();
    let has_main_class = !main_class.is_empty() && args.contains(&main_class);
    let has_home_arg = !prefix.is_empty() && args.iter().any(|a| a.starts_with(prefix));
    has_main_class && !has_home_arg
}

fn contains_path_token(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || hay.len() < needle.len() {
        return false;
    }
    (0..=hay.len() - needle.len()).any(|i| {
        hay[i..].starts_with(needle)
            && (i == 0 || matches!(hay[i - 1], b'=' | b':'))
            && hay
                .get(i + needle.len())
                .is_none_or(|c| matches!(c, b'/' | b':'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_tokens_do_not_match_prefixes() {
        let h = b"/opt/app/n1";
        assert!(contains_path_token(b"/opt/app/n1", h));
        assert!(contains_path_token(b"-Dapp.home=/opt/app/n1", h));
        assert!(contains_path_token(b"/opt/app/n1/bin/x.sh", h));
        assert!(contains_path_token(b"a.jar:/opt/app/n1/lib/b.jar", h));
        assert!(!contains_path_token(b"/opt/app/n10/bin/x.sh", h));
        assert!(!contains_path_token(b"-Dapp.home=/opt/app/n10", h));
        assert!(!contains_path_token(b"x/opt/app/n1", h));
    }

    #[test]
    fn pid_one_is_not_a_node() {
        // Alive (init), but it is not the server of this home.
        let server = Server::new("/nonexistent/home", "server.pid", "", "");
        assert!(pid_alive(1));
        assert!(!is_our_server(1, &server));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-5));
    }
}
