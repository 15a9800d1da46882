//! `cloudphone-bench`: the report writer, the fleet benchmark for operators, the clock an x11
//! instance runs for the glass-to-glass bench, and that bench's receivers as a subprocess.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cloudphone-bench", about = "cloudphone benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write latest.json, REPORT.md and the plots from the benches' parts.
    Report {
        /// Results directory (default: benches/results, or CLOUDPHONE_BENCH_OUT).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Where the benches left their parts (default: target/bench-parts, or
        /// CLOUDPHONE_BENCH_PARTS).
        #[arg(long)]
        parts: Option<std::path::PathBuf>,
    },
    /// Launch instances through a deployment's public API and time them to running.
    Fleet(cloudphone_bench::fleet::FleetArgs),
    /// Draw the time as a block barcode on $DISPLAY's root window, forever.
    Clock,
    /// One glass-to-glass receiver (webrtc-rs, webrtcbin or headless Chromium) against a node's
    /// signaling URL; prints JSON events and the samples on stdout.
    GlassViewer(cloudphone_bench::glass_viewer::ViewerArgs),
    /// The live-edge bench against any server: RTMP push with the clock burned in, one
    /// decoding player per output given (glass-to-glass), then byte-reading players per core.
    Live(cloudphone_bench::live::LiveArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Report { dir, parts } => cloudphone_bench::report::write(
            &parts.unwrap_or_else(cloudphone_bench::parts::parts_dir),
            &dir.unwrap_or_else(cloudphone_bench::parts::results_dir),
        ),
        Command::Fleet(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            let results = rt.block_on(cloudphone_bench::fleet::run(args))?;
            println!("{}", serde_json::to_string_pretty(&results)?);
            if results.failures.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{} failures", results.failures.len())
            }
        }
        Command::Clock => cloudphone_bench::clock::run_writer(),
        Command::GlassViewer(args) => cloudphone_bench::glass_viewer::main(args),
        Command::Live(args) => cloudphone_bench::live::main(args),
    }
}
