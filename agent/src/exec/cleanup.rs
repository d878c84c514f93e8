//! Taking back what the agent installed (`apimctl destroy`): a node's tree, only when it is a
//! real directory strictly inside the agent's install root, at least two levels down (the
//! install dir, then the tree in it), so no record, however damaged, can make the agent remove
//! the root itself, a folder the install dirs share, or anything outside; and never while a file
//! system is mounted in it (its files are not the node's to delete).

use std::path::{Component, Path};

use crate::exec::error::{ExecError, Result};
use crate::exec::{mount, unpack};

/// Removes the installed tree `home` (a path from a node record) and, when that leaves it empty,
/// the install dir holding it (with any staging leftovers in it). `Ok(false)`: nothing was there.
pub fn remove_installed_tree(install_root: &Path, home: &Path) -> Result<bool> {
    let refuse = |reason: &str| ExecError::RemoveRefused {
        path: home.to_path_buf(),
        reason: reason.to_owned(),
    };
    if !home.is_absolute() || home.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("not an absolute path without '..'"));
    }
    let Ok(rel) = home.strip_prefix(install_root) else {
        return Err(refuse("not inside the agent's install root"));
    };
    let depth = rel
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    if depth < 2 {
        return Err(refuse(
            "not an installed tree (an install dir and the pack's folder in it)",
        ));
    }
    let meta = match std::fs::symlink_metadata(home) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ExecError::io("stat installed tree", home, e)),
    };
    if !meta.file_type().is_dir() {
        return Err(refuse(
            "not a directory (the agent installs directories only)",
        ));
    }
    // Never through a mount: the caller unmounts first ([`mount::unmount_under`]).
    mount::refuse_if_mounted(home)?;
    std::fs::remove_dir_all(home).map_err(|e| ExecError::io("remove installed tree", home, e))?;
    if let Some(install_dir) = home.parent().filter(|p| *p != install_root) {
        unpack::clean_stale_staging(install_dir)?;
        // Only when empty: anything else there is not the agent's to remove.
        let _ = std::fs::remove_dir(install_dir);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_a_tree_inside_the_root_and_its_empty_install_dir_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let home = root.join("opt/app/node-1/product-1.0");
        std::fs::create_dir_all(home.join("logs")).unwrap();
        std::fs::write(home.join("logs/x.log"), "x").unwrap();
        std::fs::create_dir_all(root.join("opt/app/node-1/.apimctl-stage-1234")).unwrap();
        assert!(remove_installed_tree(&root, &home).unwrap());
        assert!(!home.exists());
        assert!(
            !root.join("opt/app/node-1").exists(),
            "empty install dir removed"
        );
        assert!(root.join("opt/app").exists(), "shared parents stay");
        assert!(!remove_installed_tree(&root, &home).unwrap(), "idempotent");
    }

    #[test]
    fn refuses_the_root_shallow_paths_outside_paths_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let other = d.path().join("other/tree");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::create_dir_all(root.join("opt/app")).unwrap();
        let refused = |p: &Path| {
            matches!(
                remove_installed_tree(&root, p),
                Err(ExecError::RemoveRefused { .. })
            )
        };
        assert!(refused(&root));
        assert!(refused(&root.join("opt")));
        assert!(refused(&other));
        assert!(refused(&root.join("opt/app/../../../other/tree")));
        std::os::unix::fs::symlink(&other, root.join("opt/app/link")).unwrap();
        assert!(refused(&root.join("opt/app/link")));
        assert!(other.exists(), "nothing outside the root was touched");
        assert!(root.join("opt/app/link").exists());
    }
}
