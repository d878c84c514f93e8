//! Who a node's commands run as, and the one environment they all get.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::unistd::User;

use crate::exec::error::{ExecError, Result};
use crate::exec::process::Credentials;

/// `PATH` given to node commands (after `$JAVA_HOME/bin`).
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who a command runs as: a switch (root → user) and the identity for `HOME`/`USER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Switch to this user before exec (only when the agent is root and the user is another).
    pub switch_to: Option<Credentials>,
    /// The user's name, for `USER` and `LOGNAME`.
    pub user: Option<String>,
    /// The user's home directory, for `HOME`.
    pub home: Option<PathBuf>,
}

/// Resolves `run_as` (`None`: the agent's own user). Another user needs the agent to be root;
/// the agent's own user by name needs no switch.
pub fn resolve_run_as(run_as: Option<&str>) -> Result<RunAs> {
    let euid = nix::unistd::geteuid();
    let Some(name) = run_as else {
        let me = User::from_uid(euid).ok().flatten();
        return Ok(RunAs {
            switch_to: None,
            user: me.as_ref().map(|u| u.name.clone()),
            home: me.map(|u| u.dir),
        });
    };
    let u = User::from_name(name)
        .map_err(|source| ExecError::UserLookup {
            user: name.to_string(),
            source,
        })?
        .ok_or_else(|| ExecError::UnknownUser {
            user: name.to_string(),
        })?;
    let switch_to = if euid.is_root() {
        Some(Credentials {
            user: name.to_string(),
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
    } else if u.uid == euid {
        None
    } else {
        return Err(ExecError::CannotSwitchUser {
            user: name.to_string(),
            euid: euid.as_raw(),
        });
    };
    Ok(RunAs {
        switch_to,
        user: Some(name.to_string()),
        home: Some(u.dir),
    })
}

/// The environment of every command of a node (start, stop, optimizer): nothing inherited, a
/// safe `PATH` after `$JAVA_HOME/bin`, `LANG`, `JAVA_HOME`, the run-as user's `HOME`, `USER`
/// and `LOGNAME`, then the spec's own variables (which win).
pub fn node_env(
    java_home: &Path,
    run_as: &RunAs,
    spec_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        format!("{}:{SAFE_PATH}", java_home.join("bin").display()),
    );
    env.insert("LANG".to_string(), "C.UTF-8".to_string());
    env.insert("JAVA_HOME".to_string(), java_home.display().to_string());
    env.insert(
        "HOME".to_string(),
        run_as
            .home
            .as_deref()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string(),
    );
    if let Some(u) = &run_as.user {
        env.insert("USER".to_string(), u.clone());
        env.insert("LOGNAME".to_string(), u.clone());
    }
    env.extend(spec_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_minimal_and_spec_wins() {
        let run_as = RunAs {
            switch_to: None,
            user: Some("app".into()),
            home: Some("/home/app".into()),
        };
        let extra = BTreeMap::from([
            ("JAVA_OPTS".to_string(), "-Xmx2g".to_string()),
            ("APP_HOME".to_string(), "/opt/n1".to_string()),
        ]);
        let env = node_env(Path::new("/jdk"), &run_as, &extra);
        let keys: Vec<_> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "APP_HOME",
                "HOME",
                "JAVA_HOME",
                "JAVA_OPTS",
                "LANG",
                "LOGNAME",
                "PATH",
                "USER"
            ]
        );
        assert_eq!(env["PATH"], format!("/jdk/bin:{SAFE_PATH}"));
        assert_eq!(env["HOME"], "/home/app");
    }
}
