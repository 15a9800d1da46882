//! `cloudphone-node`: the per-host agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use cloudphone_node::config::NodeConfig;

#[derive(Parser)]
#[command(name = "cloudphone-node", version, about = "cloudphone per-host agent")]
struct Cli {
    /// Configuration file (TOML); `CLOUDPHONE_NODE_*` variables override it.
    #[arg(long, env = "CLOUDPHONE_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Once both listeners are bound, write their addresses here as
    /// `{"http": "IP:PORT", "grpc": "IP:PORT"}` (for `listen` addresses with port 0).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cloudphone_daemon::init_tracing();
    let config = NodeConfig::load(cli.config.as_deref(), |n| std::env::var(n).ok())
        .context("loading configuration")?;
    let grpc = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("binding gRPC {}", config.grpc.listen))?;
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http.listen))?;
    if let Some(path) = &cli.ready_file {
        cloudphone_daemon::write_ready_file(path, http.local_addr()?, grpc.local_addr()?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    cloudphone_node::run(config, grpc, http, cloudphone_daemon::shutdown_signal()).await?;
    Ok(())
}
