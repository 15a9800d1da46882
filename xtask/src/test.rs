//! `cargo xtask test`: everything CI checks, in order, with a summary at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::deps::{self, Purpose};
use crate::pg::Postgres;
use crate::units;
use crate::util::{self, heading};

/// The database the tests use in the throwaway cluster.
const TEST_DATABASE: &str = "cloudphone_test";
/// The variable tests read to find that database.
const PG_URL_ENV: &str = "CLOUDPHONE_TEST_PG_URL";

pub(crate) fn run() -> Result<()> {
    // Ctrl-C reaches cargo and the tests too (same process group); we keep running just long
    // enough to stop PostgreSQL and print what happened.
    let interrupted = util::interrupt_flag()?;
    let mut steps = Steps {
        done: Vec::new(),
        interrupted,
    };
    let result = pipeline(&mut steps);
    steps.summary();
    print_test_counts();
    result?;
    let failed: Vec<&str> = steps
        .done
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The steps; `Err` means a step failed that the later ones cannot do without.
fn pipeline(steps: &mut Steps) -> Result<()> {
    let root = util::repo_root();
    steps.fatal(Purpose::Test.heading(), || deps::ensure(Purpose::Test))?;
    // pip waits on the network and the build on the CPU: the Python tools install while the
    // workspace compiles (about half a minute of a cold run, most of it the SDKs).
    let venvs = [
        std::thread::spawn({
            let root = root.clone();
            move || schemathesis_venv(&root)
        }),
        std::thread::spawn({
            let root = root.clone();
            move || sdk_venv(&root)
        }),
    ];
    steps.step("cargo fmt --check", || {
        util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    // On CI (cold), clippy lints the very build that makes the test binaries: one compile of
    // the workspace instead of a `check` pass and a `build` pass, about three minutes of a cold
    // run on 2 cores. Locally the two stay apart, so that `cargo xtask test` and a plain
    // `cargo test` share their build (clippy's wrapper is part of cargo's fingerprint).
    let lint = if std::env::var_os("CI").is_some() {
        clippy_driver()
    } else {
        None
    };
    let lint_env = |cmd: &mut std::process::Command| {
        if let Some(driver) = &lint {
            cmd.env("RUSTC_WORKSPACE_WRAPPER", driver)
                .env("CLIPPY_ARGS", "");
        }
    };
    if lint.is_none() {
        steps.step("cargo clippy", || {
            util::run(util::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    // Bins and tests in one build, so both get the same features: tests turn on tokio's
    // `test-util` (paused time), and daemons built apart from them would compile tokio and
    // everything above it (hyper, tonic, sqlx, webrtc) a second time, about two minutes cold.
    let targets: &[&str] = if lint.is_some() {
        &["--all-targets"]
    } else {
        &["--bins", "--tests"]
    };
    steps.fatal("cargo build", || {
        let mut cmd = util::cargo();
        cmd.args(["build", "--workspace"]).args(targets);
        lint_env(&mut cmd);
        util::run(&mut cmd)
    })?;
    if lint.is_some() {
        // Warnings do not stop the build (the tests still run); cargo replays each crate's
        // cached diagnostics on a fresh build, which is how they are counted here.
        steps.step("cargo clippy (in the build, -D warnings)", || {
            let mut cmd = util::cargo();
            cmd.args([
                "build",
                "--workspace",
                "--all-targets",
                "--message-format",
                "json",
            ]);
            lint_env(&mut cmd);
            let warnings = count_warnings(&util::output(&mut cmd)?);
            if warnings > 0 {
                bail!("{warnings} warnings from rustc or clippy (see the build above)");
            }
            Ok(())
        })?;
    }

    let [schemathesis, sdk] = venvs.map(|venv| {
        venv.join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the venv thread panicked")))
    });
    let schemathesis = steps.fatal("schemathesis venv", || schemathesis)?;
    // The SDK tests make the venv themselves if this failed (and say why).
    steps.step("SDK venv", || sdk.map(drop))?;

    let mut pg = steps.fatal("start PostgreSQL", || Postgres::start(TEST_DATABASE))?;
    let url = pg.url(TEST_DATABASE);
    println!("cluster in {}; {PG_URL_ENV}={url}", pg.dir().display());
    let nextest = has_nextest();
    steps.step("tests", || {
        let mut cmd = util::cargo();
        if nextest {
            cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        } else {
            cmd.args(["test", "--workspace", "--no-fail-fast"]);
        }
        // The daemons were built by the step above; tests need not each ask cargo again.
        lint_env(&mut cmd);
        util::run(
            cmd.env(PG_URL_ENV, &url)
                .env("CLOUDPHONE_TEST_PREBUILT", "1")
                .env(SCHEMATHESIS_ENV, &schemathesis),
        )
    })?;
    if nextest {
        // nextest does not run doctests.
        steps.step("doctests", || {
            let mut cmd = util::cargo();
            cmd.args(["test", "--workspace", "--doc", "--no-fail-fast"])
                .env(PG_URL_ENV, &url);
            lint_env(&mut cmd);
            util::run(&mut cmd)
        })?;
    }
    steps.step("stop PostgreSQL", || pg.stop())?;
    drop(pg);

    steps.step("systemd-analyze verify", || {
        units::verify(&root, &target_debug_dir()?)
    })?;
    Ok(())
}

/// Closes the run with one plain `tests: N passed, N failed` line, read from nextest's JUnit
/// report, so that whoever reads the log's last line sees the suite's real count.
fn print_test_counts() {
    let Ok(dir) = target_debug_dir() else { return };
    let Some(target) = dir.parent() else { return };
    let report = target.join("nextest/default/junit.xml");
    let Ok(xml) = std::fs::read_to_string(&report) else {
        println!("tests: no JUnit report at {}", report.display());
        return;
    };
    // The root <testsuites> element carries the totals.
    let attr = |name: &str| -> u64 {
        let Some(start) = xml.find("<testsuites") else {
            return 0;
        };
        let tag = &xml[start..xml[start..].find('>').map_or(xml.len(), |e| start + e)];
        tag.split(&format!(" {name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (total, failures, errors) = (attr("tests"), attr("failures"), attr("errors"));
    let failed = failures + errors;
    println!(
        "tests: {} passed, {} failed",
        total.saturating_sub(failed),
        failed
    );
}

/// The schemathesis CLI the property-based API test runs, pinned so runs are comparable.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Tells the test where the CLI is.
const SCHEMATHESIS_ENV: &str = "CLOUDPHONE_SCHEMATHESIS";

/// A venv under `target/` with schemathesis installed from PyPI (reused when already there).
fn schemathesis_venv(root: &std::path::Path) -> Result<PathBuf> {
    let venv = root.join("target/venv-st");
    install(&venv, &[SCHEMATHESIS], SCHEMATHESIS)?;
    Ok(venv.join("bin/st"))
}

/// `target/sdk-venv` with `tests/sdk/requirements.txt`: the vendors' SDKs the control tests drive.
/// Made exactly as the tests' `venv_python()` makes it (same lock, same marker), so they find it
/// ready; returns the venv's python.
fn sdk_venv(root: &std::path::Path) -> Result<PathBuf> {
    let venv = root.join("target/sdk-venv");
    let requirements = root.join("tests/sdk/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("read {}", requirements.display()))?;
    let lock = std::fs::File::create(root.join("target/sdk-venv.lock"))?;
    lock.lock()?;
    let path = requirements.to_string_lossy();
    install(&venv, &["-r", &path], &wanted)?;
    Ok(venv.join("bin/python"))
}

/// Makes `venv` (if needed) and `pip install`s `args` into it, unless its
/// `.requirements-installed` marker already says `wanted`.
fn install(venv: &std::path::Path, args: &[&str], wanted: &str) -> Result<()> {
    let marker = venv.join(".requirements-installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted) {
        return Ok(());
    }
    if !venv.join("bin/pip").exists() {
        util::run(
            std::process::Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(venv),
        )?;
    }
    util::run(
        std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .args(args),
    )?;
    std::fs::write(&marker, wanted).with_context(|| format!("write {}", marker.display()))
}

/// The toolchain's `clippy-driver`, if clippy is installed (it is a rustc that also lints).
fn clippy_driver() -> Option<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    let sysroot = String::from_utf8(out.stdout).ok()?;
    let driver = PathBuf::from(sysroot.trim()).join("bin/clippy-driver");
    driver.is_file().then_some(driver)
}

/// Warnings and errors among cargo's JSON messages (rustc's own "N warnings emitted" summaries
/// are left out, so the figure is the number of findings).
fn count_warnings(json_lines: &str) -> usize {
    json_lines
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-message")
        .filter(|msg| {
            let m = &msg["message"];
            matches!(m["level"].as_str(), Some("warning" | "error"))
                && !m["message"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("emitted") || t.starts_with("aborting"))
        })
        .count()
}

fn has_nextest() -> bool {
    util::cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `<target dir>/debug`, where `cargo build` put the daemons (honours CARGO_TARGET_DIR).
fn target_debug_dir() -> Result<PathBuf> {
    let out = util::output(util::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("cargo metadata output")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir).join("debug"))
}

/// What ran, for the summary.
struct Done {
    name: String,
    ok: bool,
    took: Duration,
}

struct Steps {
    done: Vec<Done>,
    interrupted: Arc<AtomicBool>,
}

impl Steps {
    /// Runs a step whose failure is recorded, after which the run goes on.
    fn step(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let _ = self.run(name, f);
        self.check_interrupted()
    }

    /// Runs a step the rest depends on: its failure ends the run.
    fn fatal<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let value = self.run(name, f);
        self.check_interrupted()?;
        value.with_context(|| format!("step `{name}` failed; later steps skipped"))
    }

    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        heading(name);
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        match &result {
            Ok(_) => println!("--- {name}: ok ({:.1} s)", took.as_secs_f64()),
            Err(e) => println!("--- {name}: FAILED ({:.1} s): {e:#}", took.as_secs_f64()),
        }
        self.done.push(Done {
            name: name.to_owned(),
            ok: result.is_ok(),
            took,
        });
        result
    }

    fn check_interrupted(&self) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn summary(&self) {
        heading("summary");
        for done in &self.done {
            println!(
                "{:<6} {:>7.1} s  {}",
                if done.ok { "ok" } else { "FAILED" },
                done.took.as_secs_f64(),
                done.name
            );
        }
    }
}
