//! The control plane: tenant REST API, IAM, durable state and scheduling; a gRPC client of the
//! node agents. No media ever flows through it.
//!
//! # Layout
//! - [`config`]: TOML + environment configuration.
//! - [`store`]: durable state behind the `Store` trait (SQLite or PostgreSQL).
//! - [`iam`]: password logins, tokens, token checks.
//! - [`nodes`]: the node registry: report streams, liveness, gRPC clients.
//! - `node_api`: the `ControlPlane` gRPC service on the node-facing listener (announcements,
//!   the node list).
//! - [`admin`]: the operator CLI (`tenant create`).
//! - [`usage`]: transcode usage records, streaming domains, access keys.
//! - `http`: routes and handlers (private; the router is the interface).
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
mod http;
pub mod iam;
mod node_api;
pub mod nodes;
pub mod store;
pub mod usage;

use std::future::Future;
use std::sync::Arc;

use cloudphone_proto::node_v1::control_plane_server::ControlPlaneServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::ControlConfig;
use crate::nodes::Registry;
use crate::store::{Store, StoreError};

/// Milliseconds since the Unix epoch, the unit every stored time uses.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What every handler shares.
pub struct AppState {
    pub config: ControlConfig,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    /// Serialises placement so concurrent orders cannot oversubscribe a node.
    pub placement_lock: tokio::sync::Mutex<()>,
    /// Volcengine DescribeLiveTranscodeData's per-user request budget.
    pub volcengine_limiter: std::sync::Mutex<cloudphone_usage::ratelimit::RateLimiter>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("serving the node-facing gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Runs control on already-bound listeners (the tenant API's, and the node-facing gRPC one of
/// `[nodes].listen`) until `shutdown` resolves, then drains requests.
pub async fn run(
    config: ControlConfig,
    listener: TcpListener,
    node_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    let store: Arc<dyn Store> = Arc::new(store::open(&config.store.url).await?);
    store.migrate().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = Registry::new(
        Arc::clone(&store),
        config.nodes.heartbeat_timeout_ms,
        stop_rx.clone(),
    );
    registry.start().await?;
    spawn_token_purger(Arc::clone(&store), stop_rx.clone());
    let _ = http::metrics_handle();
    let volcengine_limiter = std::sync::Mutex::new(cloudphone_usage::ratelimit::RateLimiter::new(
        config.usage.volcengine_rate_limit,
        i64::try_from(config.usage.volcengine_rate_window_ms).unwrap_or(i64::MAX),
    ));
    let state = Arc::new(AppState {
        config,
        store,
        registry,
        placement_lock: tokio::sync::Mutex::new(()),
        volcengine_limiter,
    });
    let node_api = node_api::ControlPlaneService::new(
        state.config.nodes.enrollment_token.clone(),
        Arc::clone(&state.registry),
        Arc::clone(&state.store),
    );
    let mut grpc_stop = stop_rx;
    let grpc_addr = node_listener.local_addr()?;
    let grpc_server = tonic::transport::Server::builder()
        .add_service(ControlPlaneServer::new(node_api))
        .serve_with_incoming_shutdown(TcpListenerStream::new(node_listener), async move {
            let _ = grpc_stop.changed().await;
        });
    let grpc_task = tokio::spawn(grpc_server);
    let app = http::router(state);
    tracing::info!(http = %listener.local_addr()?, grpc = %grpc_addr, "control listening");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining requests");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            let _ = stop_tx.send(true);
        })
        .await?;
    // Announcements are short unary calls; bound the wait anyway.
    match tokio::time::timeout(std::time::Duration::from_secs(5), grpc_task).await {
        Ok(Ok(served)) => served?,
        Ok(Err(join)) => tracing::error!(%join, "node-facing gRPC server panicked"),
        Err(_) => tracing::warn!("node-facing gRPC calls still open after 5 s; leaving them"),
    }
    Ok(())
}

/// Drops expired tokens hourly so the table does not grow without bound.
fn spawn_token_purger(store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            match store.purge_expired_tokens(unix_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired tokens removed"),
                Err(error) => tracing::warn!(%error, "token purge failed"),
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            }
        }
    });
}
