//! Concurrent 720P30 H.264 encoders with < 1 % dropped frames vs the bare-encoder bound.
//! Writes `target/bench-parts/density.json`.

use cloudphone_bench::{density, parts};

fn main() -> anyhow::Result<()> {
    let results = density::run(parts::smoke_requested())?;
    let path = parts::write_part(&parts::parts_dir(), "density", &results)?;
    println!("wrote {}", path.display());
    Ok(())
}
