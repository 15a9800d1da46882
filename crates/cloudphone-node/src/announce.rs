//! Announcing this node to control: repeated while no control holds a report stream open, so a
//! node that starts before control, or outlives a control restart, is found again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How often to announce while nobody listens.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

pub struct Announcer {
    pub control_url: String,
    /// Never logged.
    pub enrollment_token: String,
    pub node_id: String,
    pub grpc_endpoint: String,
    pub open_streams: Arc<AtomicUsize>,
}

impl Announcer {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if self.control_url.is_empty() {
            tracing::info!("no control.url configured: waiting for control to dial in");
            return;
        }
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "cannot build HTTP client; not announcing");
                return;
            }
        };
        let url = format!(
            "{}/internal/v1/nodes/announce",
            self.control_url.trim_end_matches('/')
        );
        let body =
            serde_json::json!({"node_id": self.node_id, "grpc_endpoint": self.grpc_endpoint});
        loop {
            if self.open_streams.load(Ordering::SeqCst) == 0 {
                match client
                    .post(&url)
                    .bearer_auth(&self.enrollment_token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => tracing::debug!("announced to control"),
                    Ok(r) => tracing::warn!(
                        status = r.status().as_u16(),
                        "control refused the announcement"
                    ),
                    Err(error) => tracing::debug!(%error, "control not reachable yet"),
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
            }
        }
    }
}
