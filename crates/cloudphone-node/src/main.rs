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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    let config = NodeConfig::load(cli.config.as_deref(), |n| std::env::var(n).ok())
        .context("loading configuration")?;
    let grpc = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("binding gRPC {}", config.grpc.listen))?;
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http.listen))?;
    if let Some(path) = &cli.ready_file {
        write_ready_file(path, http.local_addr()?, grpc.local_addr()?)?;
    }
    cloudphone_node::run(config, grpc, http, shutdown_signal()).await?;
    Ok(())
}

/// Writes `{"http": "<addr>", "grpc": "<addr>"}` (the bound addresses, port 0 resolved) to
/// `path` through a temporary file and a rename, so a reader never sees half of it.
fn write_ready_file(
    path: &std::path::Path,
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"http": http.to_string(), "grpc": grpc.to_string()});
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, format!("{body}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
