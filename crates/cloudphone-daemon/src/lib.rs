//! What both daemons (`cloudphone-control` and `cloudphone-node`) do the same way around their
//! service: reading the TOML config file, logging setup, the ready file, the shutdown signal,
//! the Prometheus recorder and the wall clock in milliseconds; `tls` serves a router over
//! rustls, `secret` holds strings that `Debug` never prints. Nothing here knows either
//! daemon's configuration or API.
#![forbid(unsafe_code)]

pub mod secret;
pub mod tls;

pub use secret::Secret;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

/// The configuration in the TOML file at `path`, or the defaults when there is no file.
pub fn read_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, FileError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| FileError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Milliseconds since the Unix epoch, the unit every stored and reported time uses.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Writes `{"http": "<addr>", "grpc": "<addr>"}` (the bound addresses, port 0 resolved) to
/// `path` through a temporary file and a rename, so a reader never sees half of it.
pub fn write_ready_file(path: &Path, http: SocketAddr, grpc: SocketAddr) -> std::io::Result<()> {
    let body = serde_json::json!({"http": http.to_string(), "grpc": grpc.to_string()});
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, format!("{body}\n"))?;
    std::fs::rename(&partial, path)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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

/// The process-wide Prometheus recorder (there can be only one per process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then this handle just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
