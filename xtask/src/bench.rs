//! `cargo xtask bench`: ensures the system packages, builds the daemons and the bench targets,
//! starts a throwaway PostgreSQL (for the api bench), runs every bench in turn (a failing one
//! does not stop the others), then writes `benches/results/latest.json`, `REPORT.md` and the
//! plots from what they measured.

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::deps::{self, Purpose};
use crate::pg::Postgres;
use crate::util::{self, heading};

/// The benches, in the order they run: the CPU-heavy ones first, while nothing else runs.
const BENCHES: [&str; 6] = ["encode", "density", "glass", "live", "fleet", "api"];
/// The api bench's PostgreSQL database, in a cluster started here as `cargo xtask test` does;
/// testkit creates a fresh database per deployment on the server of this URL.
const PG_DATABASE: &str = "cloudphone_bench";
const PG_URL_ENV: &str = "CLOUDPHONE_TEST_PG_URL";

pub(crate) struct Options {
    /// Seconds-long versions, results in `target/bench-smoke` instead of `benches/results`.
    pub smoke: bool,
    /// Build with the release profile instead of dev (a cold release build of the node's
    /// dependencies takes several minutes on 2 cores; encoders are C either way). The api and
    /// live benches run release daemons either way; the fleet bench always runs debug ones.
    pub release: bool,
}

pub(crate) fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    // Ctrl-C reaches cargo and the benches too (same process group); we stay alive to stop
    // PostgreSQL.
    let interrupted = util::interrupt_flag()?;
    heading(Purpose::Test.heading());
    deps::ensure(Purpose::Test)?;
    let root = util::repo_root();
    let profile = if options.release { "release" } else { "dev" };
    let parts = root.join(if options.smoke {
        "target/bench-smoke/parts"
    } else {
        "target/bench-parts"
    });
    let out = if options.smoke {
        root.join("target/bench-smoke")
    } else {
        root.join("benches/results")
    };
    // Old parts would put a previous run's figures into this report.
    let _ = std::fs::remove_dir_all(&parts);
    std::fs::create_dir_all(&parts)?;

    heading("build");
    // The fleet bench spawns the daemons (debug builds, as the tests do).
    util::build_daemons(false)?;
    if options.release {
        // The api bench measures the daemons themselves: release ones with --release.
        util::build_daemons(true)?;
    } else if !options.smoke {
        // The live bench compares the node with nginx (-O2): it measures a release node
        // either way (`CLOUDPHONE_BENCH_LIVE_NODE`, see cloudphone-bench's `live_node`); the
        // api bench's target is for release daemons, control and node
        // (`CLOUDPHONE_BENCH_API`, see cloudphone-bench's `api`).
        util::build_daemons(true)?;
    }
    util::run(util::cargo().args([
        "bench",
        "--no-run",
        "--profile",
        profile,
        "-p",
        "cloudphone-bench",
    ]))?;

    heading("start PostgreSQL");
    // Without it the api bench starts its own cluster through testkit, or records PostgreSQL
    // as skipped.
    let mut pg = match Postgres::start(PG_DATABASE) {
        Ok(pg) => Some(pg),
        Err(e) => {
            println!("--- PostgreSQL did not start ({e:#}); the api bench will say so");
            None
        }
    };

    let mut failed = Vec::new();
    for bench in BENCHES {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        heading(&format!("bench {bench}"));
        let mut cmd = util::cargo();
        cmd.args([
            "bench",
            "--profile",
            profile,
            "-p",
            "cloudphone-bench",
            "--bench",
            bench,
        ])
        .env("CLOUDPHONE_BENCH_PARTS", &parts)
        .env("CLOUDPHONE_BENCH_PROFILE", profile)
        .env("CLOUDPHONE_TEST_PREBUILT", "1");
        if options.smoke {
            cmd.env("CLOUDPHONE_BENCH_SMOKE", "1");
        }
        if let Some(pg) = &pg {
            cmd.env(PG_URL_ENV, pg.url(PG_DATABASE));
        }
        if let Err(e) = util::run(&mut cmd) {
            println!("--- bench {bench}: FAILED: {e:#}");
            failed.push(bench);
        }
    }
    if let Some(pg) = pg.as_mut() {
        heading("stop PostgreSQL");
        if let Err(e) = pg.stop() {
            println!("--- PostgreSQL did not stop: {e:#}");
        }
    }
    drop(pg);
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    heading("report");
    util::run(
        util::cargo()
            .args([
                "run",
                "--quiet",
                "--profile",
                profile,
                "-p",
                "cloudphone-bench",
                "--bin",
                "cloudphone-bench",
                "--",
                "report",
            ])
            .arg("--parts")
            .arg(&parts)
            .arg("--dir")
            .arg(&out)
            .env("CLOUDPHONE_BENCH_PROFILE", profile),
    )?;
    println!("bench: {:.0} s in all", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("benches failed: {}", failed.join(", "));
    }
    Ok(())
}
