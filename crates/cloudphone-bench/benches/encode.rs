//! Encode latency per frame: the node's pipeline vs the bare encoder, per codec × definition
//! × fps. Writes `target/bench-parts/encode.json`.

use cloudphone_bench::{encode, parts};

fn main() -> anyhow::Result<()> {
    let smoke = parts::smoke_requested();
    let results = encode::run(smoke);
    let path = parts::write_part(&parts::parts_dir(), "encode", &results)?;
    println!("wrote {}", path.display());
    Ok(())
}
