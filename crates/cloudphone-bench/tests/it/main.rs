//! The bench crate's integration tests, one module per former test file, linked as one binary
//! (`cargo nextest run -p cloudphone-bench --test it -E 'test(/^smoke::/)'` runs one of them).

// Test code: a failed unwrap is a failed test (clippy allows it only inside `#[test]` fns).
#![allow(clippy::unwrap_used)]

mod impair;
mod live;
mod reconnect;
mod smoke;

use cloudphone_bench::live::{LiveArgs, LiveResults, Output, run};

/// Runs the live bench with `args` while `server` (what serves the stream) is up, then stops it:
/// the results, checked to have no failures and a latency cell with samples for each of
/// `outputs`.
async fn run_live(args: &LiveArgs, server: impl Sized, outputs: &[Output]) -> LiveResults {
    let r = run(args).await.unwrap();
    drop(server);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    for output in outputs {
        let cell = r.latency.iter().find(|c| c.output == *output);
        assert!(cell.is_some_and(|c| c.n > 0), "{output:?}: {cell:?}");
    }
    r
}
