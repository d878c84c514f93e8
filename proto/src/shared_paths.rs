//! The one rule for a file path of a shared-folder group (`SharedFile.path`,
//! `SyncedFolders.dirs`), checked by both sides: the controller on what an agent pushes, the
//! agent on what it is sent and on the folders its spec names.

/// Whether `p` is a plain relative path: not empty, not absolute, no empty, `.` or `..` part,
/// no control character or backslash.
pub fn is_plain(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.chars().any(|c| c.is_control() || c == '\\')
        && !p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
}

/// Whether `path` is plain and lies strictly inside one of `dirs`.
pub fn inside(dirs: &[String], path: &str) -> bool {
    is_plain(path)
        && dirs.iter().any(|d| {
            path.strip_prefix(d.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_strictly_inside_a_folder() {
        let dirs = vec!["r/syn".to_string(), "r/plans".to_string()];
        assert!(inside(&dirs, "r/syn/a"));
        for bad in [
            "r/syn",
            "r/synx/a",
            "r/syn/../x",
            "/r/syn/a",
            "r/syn//a",
            "r/syn/./a",
            "r/plans/\n",
            "r\\syn/a",
            "",
        ] {
            assert!(!inside(&dirs, bad), "{bad:?}");
        }
        assert!(is_plain("a/b") && !is_plain("a/../b") && !is_plain("/a"));
    }
}
