//! `cargo xtask bench`: builds the daemons and the bench targets, runs every bench in turn
//! (a failing one does not stop the others), then writes `benches/results/latest.json`,
//! `REPORT.md` and the plots from what they measured.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::util::{self, heading};

/// The benches, in the order they run: the CPU-heavy ones first, while nothing else runs.
const BENCHES: [&str; 4] = ["encode", "density", "glass", "fleet"];

pub(crate) struct Options {
    /// Seconds-long versions, results in `target/bench-smoke` instead of `benches/results`.
    pub smoke: bool,
    /// Build with the release profile instead of dev (a cold release build of the node's
    /// dependencies takes several minutes on 2 cores; encoders are C either way).
    pub release: bool,
}

pub(crate) fn run(options: Options) -> Result<()> {
    let started = Instant::now();
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
    util::run(util::cargo().args([
        "build",
        "--bins",
        "-p",
        "cloudphone-control",
        "-p",
        "cloudphone-node",
    ]))?;
    util::run(util::cargo().args([
        "bench",
        "--no-run",
        "--profile",
        profile,
        "-p",
        "cloudphone-bench",
    ]))?;

    let mut failed = Vec::new();
    for bench in BENCHES {
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
        if let Err(e) = util::run(&mut cmd) {
            println!("--- bench {bench}: FAILED: {e:#}");
            failed.push(bench);
        }
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
