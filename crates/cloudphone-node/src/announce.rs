//! Announcing this node to control (`ControlPlane.Announce` on control's node-facing listener):
//! repeated while no control holds a report stream open, so a node that starts before control,
//! or outlives a control restart, is found again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudphone_proto::node_v1::{self as pb, control_plane_client::ControlPlaneClient};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

/// How often to announce while nobody listens.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct Announcer {
    /// Control's node-facing gRPC endpoint; empty when control dials in by itself.
    pub control_endpoint: String,
    /// Never logged.
    pub enrollment_token: String,
    pub node_id: String,
    pub grpc_endpoint: String,
    pub open_streams: Arc<AtomicUsize>,
}

impl Announcer {
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if self.control_endpoint.is_empty() {
            tracing::info!("no control.endpoint configured: waiting for control to dial in");
            return;
        }
        let channel = match Endpoint::from_shared(self.control_endpoint.clone()) {
            Ok(endpoint) => endpoint
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(5))
                .connect_lazy(),
            Err(error) => {
                tracing::error!(%error, "control.endpoint is not a valid URI; not announcing");
                return;
            }
        };
        let Ok(bearer) = MetadataValue::try_from(format!("Bearer {}", self.enrollment_token))
        else {
            tracing::error!("the enrollment token is not valid in a header; not announcing");
            return;
        };
        let mut client = ControlPlaneClient::new(channel);
        loop {
            if self.open_streams.load(Ordering::SeqCst) == 0 {
                let mut request = tonic::Request::new(pb::AnnounceRequest {
                    node_id: self.node_id.clone(),
                    grpc_endpoint: self.grpc_endpoint.clone(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
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
