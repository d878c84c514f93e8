//! Integration tests of the agent's exec layer against real files, real processes and real
//! sockets on loopback, all inside temp dirs: one module per area, one test binary (link time).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::TempDir;

#[path = "../support/mod.rs"]
mod support;

mod facts;
mod health;
mod hosts;
mod ledger;
mod process;
mod unpack;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}
