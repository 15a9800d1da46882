//! ListInstances and GetDeviceToken under wrk against a throwaway deployment (control + one
//! synthetic node), on SQLite and then on PostgreSQL (skipped, and said so, when no server can
//! be had). Writes `target/bench-parts/api.json`; fails when any answer was not a clean 2xx.

use cloudphone_bench::api::{self, Deployment};
use cloudphone_bench::parts;

fn main() -> anyhow::Result<()> {
    let smoke = parts::smoke_requested();
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(api::run(smoke, &Deployment::MEASURED))?;
    let path = parts::write_part(&parts::parts_dir(), "api", &results)?;
    println!("wrote {}", path.display());
    if !results.failures.is_empty() {
        anyhow::bail!("api: {}", results.failures.join("; "));
    }
    Ok(())
}
