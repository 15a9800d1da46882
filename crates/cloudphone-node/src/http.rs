//! The node's HTTP side: `/healthz` and Prometheus `/metrics` (signaling joins it later).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cloudphone_core::lifecycle::InstanceState;

pub(crate) use cloudphone_daemon::metrics_handle;

use crate::instances::InstanceManager;
use crate::runtime::Runtime;
use crate::streaming::sessions::Sessions;
use crate::usage_buffer::UsageBuffer;

/// How long `/healthz` gives each check: a health check must answer fast even when a disk or
/// a tool hangs (the runtime's own checks are bounded below this).
const CHECK_TIMEOUT: Duration = Duration::from_millis(900);

/// What `/healthz` and `/metrics` look at.
#[derive(Clone)]
pub(crate) struct Health {
    pub runtime: Arc<dyn Runtime>,
    pub manager: Arc<InstanceManager>,
    pub sessions: Arc<Sessions>,
    pub usage: UsageBuffer,
    /// Report streams open from control (`grpc::NodeService::open_streams`).
    pub report_streams: Arc<AtomicUsize>,
}

pub(crate) fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(health)
}

/// 200 when this node can run and stream instances and keep usage, else 503; the body says
/// which part failed, in words fit for an unauthenticated caller (no paths, no errors).
///
/// Control being disconnected is reported but does not fail the check: viewers keep streaming
/// and usage keeps buffering without it, and a node must look healthy before control first
/// dials it. Failed instances are counted, not failed on: one phone's crash is the crash
/// watcher's and control's to handle, not a reason to take the whole host out of service.
async fn healthz(State(health): State<Health>) -> Response {
    let runtime = match tokio::time::timeout(CHECK_TIMEOUT, health.runtime.health()).await {
        Ok(result) => result,
        Err(_) => Err("the runtime check did not answer".to_owned()),
    };
    let usage = health.usage.clone();
    let usage_ok = tokio::time::timeout(
        CHECK_TIMEOUT,
        tokio::task::spawn_blocking(move || usage.check_writable()),
    )
    .await;
    let usage_buffer = match usage_ok {
        Ok(Ok(Ok(()))) => "ok",
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "healthz: usage buffer not writable");
            "not_writable"
        }
        _ => "timeout",
    };
    let instances = health.manager.list().await;
    let count = |state: InstanceState| instances.iter().filter(|i| i.state == state).count();
    let streams = health.report_streams.load(Ordering::SeqCst);
    let ok = runtime.is_ok() && usage_buffer == "ok";
    let mut body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "runtime": if runtime.is_ok() { "ok" } else { "unavailable" },
        "runtime_name": health.runtime.name(),
        "usage_buffer": usage_buffer,
        "control": if streams > 0 { "connected" } else { "disconnected" },
        "instances": {
            "total": instances.len(),
            "running": count(InstanceState::Running),
            "failed": count(InstanceState::Failed),
        },
        "sessions": health.sessions.live_viewers(),
    });
    if let Err(problem) = runtime {
        body["runtime_problem"] = problem.into();
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn render_metrics(State(health): State<Health>) -> String {
    let instances = health.manager.list().await;
    let usage = health.usage.clone();
    let usage_records = tokio::task::spawn_blocking(move || usage.pending_count())
        .await
        .unwrap_or(0);
    let (encoders, encoder_kbps) = health.sessions.encoder_figures();
    crate::metrics::set(&crate::metrics::Snapshot {
        sessions: health.sessions.live_viewers(),
        encoders,
        encoder_kbps,
        usage_records,
        report_streams: health.report_streams.load(Ordering::SeqCst),
        instances: &instances,
    });
    metrics_handle().render()
}
