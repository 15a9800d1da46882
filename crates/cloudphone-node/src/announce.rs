//! Announcing this node to control (`ControlPlane.Announce` on control's node-facing listener,
//! over mTLS with the node's enrolled certificate): repeated while no control holds a report
//! stream open, so a node that starts before control, or outlives a control restart, is found
//! again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudphone_proto::node_v1::{self as pb, control_plane_client::ControlPlaneClient};
use tokio::sync::watch;
use tonic::transport::Channel;

/// How often to announce while nobody listens.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct Announcer {
    /// The mTLS channel to control's node-facing listener; `None` when no control endpoint is
    /// configured (or the node serves plaintext for tests), so control must dial in by itself.
    pub control: Option<Channel>,
    pub node_id: String,
    pub grpc_endpoint: String,
    pub open_streams: Arc<AtomicUsize>,
}

impl Announcer {
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Some(channel) = self.control.clone() else {
            tracing::info!("no control.endpoint configured: waiting for control to dial in");
            return;
        };
        let mut client = ControlPlaneClient::new(channel);
        loop {
            if self.open_streams.load(Ordering::SeqCst) == 0 {
                let request = pb::AnnounceRequest {
                    node_id: self.node_id.clone(),
                    grpc_endpoint: self.grpc_endpoint.clone(),
                };
                match client.announce(request).await {
                    Ok(_) => tracing::debug!("announced to control"),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        tracing::debug!(%status, "control not reachable yet")
                    }
                    Err(status) => tracing::warn!(
                        code = ?status.code(),
                        message = status.message(),
                        "control refused the announcement"
                    ),
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
            }
        }
    }
}
