//! Names and paths that become file names, certificate names, command arguments and paths on
//! every machine: only a documented safe set passes, so nothing a plan says can escape a folder,
//! reach a shell, or overflow an X.509 name.
//!
//! - cluster, machine and node names: `[a-z0-9][a-z0-9._-]{0,62}` (at most 63 characters: a
//!   cluster name is a certificate's CN, which X.509 limits to 64);
//! - `install_dir` and `java_home` (cluster and machine): absolute, normalised (no `.` or `..`
//!   component, no `//`, no trailing `/`), of `[A-Za-z0-9._+@-]` between the slashes;
//! - `run_as`: a portable user name, `[a-z_][a-z0-9_-]{0,31}`.

use crate::diag::Diagnostic;
use crate::plan::{At, Plan};

/// Longest cluster, machine or node name.
pub const MAX_NAME: usize = 63;

/// Whether `s` is a safe cluster, machine or node name.
pub fn is_safe_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

/// Why `s` is not an absolute, normalised path of safe characters, if it is not.
pub fn path_problem(s: &str) -> Option<&'static str> {
    let Some(rest) = s.strip_prefix('/') else {
        return Some("must be an absolute path");
    };
    if rest.is_empty() {
        return Some("must not be `/`");
    }
    for part in rest.split('/') {
        match part {
            "" => return Some("must not hold `//` or end with `/`"),
            "." | ".." => return Some("must not hold `.` or `..` components"),
            p if !p.bytes().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'@' | b'-')
            }) =>
            {
                return Some("may only hold letters, digits and `._+@-` between slashes");
            }
            _ => {}
        }
    }
    None
}

/// Whether `s` is a portable user name.
pub fn is_user_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

fn name(what: &str, n: &At<String>, out: &mut Vec<Diagnostic>) {
    if !is_safe_name(&n.value) {
        let shown = if n.value.chars().count() > MAX_NAME {
            format!(
                "is {} characters long (at most {MAX_NAME})",
                n.value.chars().count()
            )
        } else {
            format!("`{}` is not allowed", n.value.escape_debug())
        };
        out.push(
            Diagnostic::error(n.span.clone(), format!("{what} name {shown}"))
            .with_hint(format!(
                "1-{MAX_NAME} of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit (it becomes file and certificate names)"
            )),
        );
    }
}

fn path(what: &str, p: &At<String>, out: &mut Vec<Diagnostic>) {
    if let Some(why) = path_problem(&p.value) {
        out.push(
            Diagnostic::error(
                p.span.clone(),
                format!("`{what}` `{}` {why}", p.value.escape_debug()),
            )
            .with_hint("e.g. \"/opt/wso2\" or \"/usr/lib/jvm/java-17-openjdk-amd64\""),
        );
    }
}

fn user(u: &At<String>, out: &mut Vec<Diagnostic>) {
    if !is_user_name(&u.value) {
        out.push(
            Diagnostic::error(
                u.span.clone(),
                format!(
                    "`run_as` `{}` is not a valid user name",
                    u.value.escape_debug()
                ),
            )
            .with_hint("a system user such as \"wso2\": a-z, 0-9, `_`, `-`, at most 32"),
        );
    }
}

/// Every name and path of the plan against the safe sets above.
pub fn check(p: &Plan, out: &mut Vec<Diagnostic>) {
    name("cluster", &p.cluster.name, out);
    path("install_dir", &p.cluster.install_dir, out);
    path("java_home", &p.cluster.java_home, out);
    if let Some(u) = &p.cluster.run_as {
        user(u, out);
    }
    for m in &p.machines {
        name("machine", &m.name, out);
        for (what, v) in [("install_dir", &m.install_dir), ("java_home", &m.java_home)] {
            if let Some(v) = v {
                path(what, v, out);
            }
        }
        if let Some(u) = &m.run_as {
            user(u, out);
        }
    }
    for n in &p.nodes {
        name("node", &n.name, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_users() {
        for good in ["km-1", "vm-gw-1", "apim.prod_2", "0"] {
            assert!(is_safe_name(good), "{good}");
        }
        let long = "a".repeat(64);
        for bad in [
            "../../etc",
            "gw/1",
            "km;reboot",
            "m2$(id)",
            "Km-1",
            "-x",
            "",
            &long,
        ] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        assert_eq!(path_problem("/opt/wso2"), None);
        assert_eq!(path_problem("/usr/lib/jvm/java-17-openjdk-amd64"), None);
        assert!(path_problem("opt/wso2").unwrap().contains("absolute"));
        assert!(path_problem("/opt/../../etc").unwrap().contains(".."));
        assert!(path_problem("/opt//wso2").is_some());
        assert!(path_problem("/opt/wso2/").is_some());
        assert!(path_problem("/usr/lib/jvm/$(reboot)").is_some());
        assert!(path_problem("/usr/lib/jvm/java 17").is_some());
        assert!(is_user_name("wso2") && is_user_name("_apim"));
        for bad in ["root;id", "wso2 x", "Wso2", "1wso2", "a$"] {
            assert!(!is_user_name(bad), "{bad}");
        }
    }
}
