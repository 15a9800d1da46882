//! `cloudphone-bench`: the report writer, the fleet benchmark for operators, and the clock
//! an x11 instance runs for the glass-to-glass bench.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cloudphone-bench", about = "cloudphone benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Draw the time as a block barcode on $DISPLAY's root window, forever.
    Clock,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Clock => cloudphone_bench::clock::run_writer(),
    }
}
