//! Fleet launch through the public API against a throwaway deployment (control + one x11
//! node, as the tests run them). Writes `target/bench-parts/fleet.json`.

use cloudphone_bench::{fleet, parts};
use cloudphone_testkit::fleet::Fleet;

fn main() -> anyhow::Result<()> {
    let smoke = parts::smoke_requested();
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(async {
        let fleet = Fleet::up("x11").await;
        let args = fleet::FleetArgs {
            api: fleet.api.clone(),
            domain: "acme".into(),
            user: "dev".into(),
            password: "correct-horse-1".into(),
            project: "cn-north-7".into(),
            // The test node's capacity is 4.
            count: if smoke { 1 } else { 4 },
            rate: 2.0,
            sku: "kp.x11.720p".into(),
            region: "cn-north-7".into(),
            timeout_secs: 60,
            cleanup: true,
            stream_secs: if smoke { 1 } else { 5 },
        };
        let r = fleet::run(args).await;
        drop(fleet);
        r
    })?;
    let path = parts::write_part(&parts::parts_dir(), "fleet", &results)?;
    println!("wrote {}", path.display());
    Ok(())
}
