//! Glass-to-glass latency and time to first frame through an in-process node (x11 runtime,
//! the clock as the instance's app, webrtc-rs viewer). Writes `target/bench-parts/glass.json`.

use std::path::Path;

use cloudphone_bench::{glass, parts};

fn main() -> anyhow::Result<()> {
    let smoke = parts::smoke_requested();
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(glass::run(
        smoke,
        Path::new(env!("CARGO_BIN_EXE_cloudphone-bench")),
    ))?;
    let path = parts::write_part(&parts::parts_dir(), "glass", &results)?;
    println!("wrote {}", path.display());
    Ok(())
}
