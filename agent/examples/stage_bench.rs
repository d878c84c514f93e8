//! Time `stage_zip` on a real pack, to compare with `unzip -q`:
//!
//! ```text
//! cargo run --release -p apim-agent --example stage_bench -- PACK.zip STAGING_ROOT TOP_DIR [THREADS]
//! time unzip -q -d STAGING_ROOT/unzip PACK.zip
//! ```
//!
//! The staged tree is discarded afterwards. Like `unzip -q`, staging does not sync (the agent
//! syncs the filesystem once the node is serving).

use std::path::PathBuf;
use std::time::Instant;

use apim_agent::exec::unpack::{self, UnpackLimits};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: stage_bench PACK.zip STAGING_ROOT TOP_DIR [THREADS]";
    let zip = PathBuf::from(args.next().ok_or(usage)?);
    let root = PathBuf::from(args.next().ok_or(usage)?);
    let top = args.next().ok_or(usage)?;
    let threads = args.next().map(|t| t.parse()).transpose()?.unwrap_or(2);
    let limits = UnpackLimits {
        threads,
        ..UnpackLimits::default()
    };
    let t = Instant::now();
    let staged = unpack::stage_zip(&zip, &root, &top, &limits).await?;
    let elapsed = t.elapsed();
    println!(
        "staged {} files, {} dirs, {} MiB with {threads} thread(s) in {:.3} s",
        staged.files,
        staged.dirs,
        staged.bytes >> 20,
        elapsed.as_secs_f64()
    );
    staged.discard()?;
    Ok(())
}
