//! `cargo xtask`: the project's developer commands (run a demo, run what CI runs), written in
//! Rust so they need nothing but cargo. See `cargo xtask help`.

mod bench;
mod demo;
mod deps;
mod pg;
mod test;
mod units;
mod util;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

const HELP: &str = "\
cargo xtask <COMMAND>

Commands:
  demo [--no-wait] [--replicas N]
                         Run control and a node locally with a demo tenant and three phones
                         and a live-API tenant with one RTMP stream, print how to reach them
                         (push command, play URLs), and wait for Ctrl-C. --no-wait pushes to
                         the stream, plays it back over HTTP-FLV, and tears everything down
                         (a smoke test). --replicas N (N > 1): N control processes on a
                         throwaway PostgreSQL, each on its own ports; every API URL goes into
                         target/demo/demo.json as \"api_urls\".
  test                   What CI runs: install-deps, fmt, clippy, build, the test suite against
                         a throwaway PostgreSQL, and systemd-analyze verify on deploy/systemd.
  ci                     The same as `test`.
  bench [--smoke] [--release]
                         Run every benchmark and write benches/results/{latest.json,REPORT.md,
                         *.png}; --smoke: the seconds-long versions, into target/bench-smoke.
  install-deps [--test]  Install the missing system packages (apt-get, as root) for the demo,
                         or with --test for the test suite and the benches too.
  help                   This text.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let (command, flags) = match args.split_first() {
        Some((command, flags)) => (command.as_str(), flags),
        None => {
            print!("{HELP}");
            bail!("no command given");
        }
    };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    match (command, flags.as_slice()) {
        ("demo", flags) if demo::Options::parse(flags).is_some() => {
            demo::run(demo::Options::parse(flags).context("demo flags")?)
        }
        ("test" | "ci", []) => test::run(),
        ("bench", flags) if flags.iter().all(|f| matches!(*f, "--smoke" | "--release")) => {
            bench::run(bench::Options {
                smoke: flags.contains(&"--smoke"),
                release: flags.contains(&"--release"),
            })
        }
        ("install-deps", []) => install_deps(deps::Purpose::Demo),
        ("install-deps", ["--test"]) => install_deps(deps::Purpose::Test),
        ("help" | "--help" | "-h", _) => {
            print!("{HELP}");
            Ok(())
        }
        _ => {
            print!("{HELP}");
            bail!("unknown command or flags: {}", args.join(" "));
        }
    }
}

fn install_deps(purpose: deps::Purpose) -> Result<()> {
    util::heading(purpose.heading());
    deps::ensure(purpose)
}
