//! The node's HTTP side: `/healthz` and Prometheus `/metrics` (signaling joins it later).

use axum::Router;
use axum::routing::get;

pub(crate) use cloudphone_daemon::metrics_handle;

pub(crate) fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(|| async { metrics_handle().render() }))
}
