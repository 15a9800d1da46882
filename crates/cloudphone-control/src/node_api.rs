//! The `ControlPlane` gRPC service nodes (and operators' tools) call on control's own
//! node-facing listener (`[nodes].listen`), kept off the tenant API's listener: a node's
//! announcement ("I exist, dial me here") and the node list. Every call must carry the
//! enrollment token, compared by digest and never logged.

use std::sync::Arc;

use cloudphone_core::liveness::NodeHealth;
use cloudphone_proto::node_v1::{self as pb, control_plane_server::ControlPlane};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::nodes::Registry;
use crate::store::{NodeRecord, Store};

/// Serves `ControlPlane` for one control process.
pub(crate) struct ControlPlaneService {
    /// The shared secret every call must present; empty refuses every call.
    enrollment_token: String,
    /// Where an accepted announcement goes: the registry dials the node back.
    registry: Arc<Registry>,
    /// Where the node list is read from (health as last recorded).
    store: Arc<dyn Store>,
}

impl ControlPlaneService {
    pub(crate) fn new(
        enrollment_token: String,
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
    ) -> Self {
        Self {
            enrollment_token,
            registry,
            store,
        }
    }

    /// Refuses a call whose `authorization: Bearer` metadata is not the enrollment token.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if self.enrollment_token.is_empty() || !same_secret(presented, &self.enrollment_token) {
            tracing::warn!("node-facing call with a wrong enrollment token");
            return Err(Status::unauthenticated("wrong enrollment token"));
        }
        Ok(())
    }
}

/// Compares secrets by digest so the comparison takes the same time wherever they differ.
fn same_secret(presented: &str, expected: &str) -> bool {
    Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.as_bytes())
}

/// A node id control accepts: what the store and logs can carry without escaping.
fn valid_node_id(node_id: &str) -> bool {
    !node_id.is_empty()
        && node_id.len() <= 64
        && node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn announce(
        &self,
        request: Request<pb::AnnounceRequest>,
    ) -> Result<Response<pb::AnnounceResponse>, Status> {
        self.authorize(&request)?;
        let announce = request.into_inner();
        if !valid_node_id(&announce.node_id) || !announce.grpc_endpoint.starts_with("http") {
            return Err(Status::invalid_argument("node_id or grpc_endpoint invalid"));
        }
        tracing::info!(node_id = %announce.node_id, endpoint = %announce.grpc_endpoint, "node announced itself");
        self.registry
            .announce(&announce.node_id, &announce.grpc_endpoint);
        Ok(Response::new(pb::AnnounceResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.authorize(&request)?;
        let nodes = self.store.list_nodes().await.map_err(|error| {
            tracing::error!(%error, "listing nodes failed");
            Status::internal("listing nodes failed")
        })?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_info).collect(),
        }))
    }
}

/// The wire form of a stored node.
pub(crate) fn node_info(node: NodeRecord) -> pb::NodeInfo {
    let health = if node.status == NodeHealth::Up.as_str() {
        pb::NodeHealth::Up
    } else if node.status == NodeHealth::Down.as_str() {
        pb::NodeHealth::Down
    } else {
        pb::NodeHealth::Unspecified
    };
    pb::NodeInfo {
        node_id: node.node_id,
        health: health.into(),
        region: node.region,
        capacity: u32::try_from(node.capacity).unwrap_or(0),
        runtimes: node.runtimes,
        encoders: node.encoders,
        version: node.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service over a fresh store; the store lives as long as the returned directory.
    async fn make_service(token: &str) -> (ControlPlaneService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/c.db?mode=rwc", dir.path().display());
        let store: Arc<dyn Store> = Arc::new(crate::store::open(&url).await.unwrap());
        store.migrate().await.unwrap();
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let registry = Registry::new(Arc::clone(&store), 1_000, stop_rx);
        (
            ControlPlaneService::new(token.to_string(), registry, store),
            dir,
        )
    }

    fn with_token<T>(message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        let bearer = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        request
    }

    fn code<T>(result: Result<T, Status>) -> Option<tonic::Code> {
        result.err().map(|status| status.code())
    }

    fn announce(node_id: &str) -> pb::AnnounceRequest {
        pb::AnnounceRequest {
            node_id: node_id.into(),
            grpc_endpoint: "http://127.0.0.1:1".into(),
        }
    }

    #[tokio::test]
    async fn every_call_needs_the_enrollment_token() {
        let (service, _dir) = make_service("s3cret").await;
        assert_eq!(
            code(service.announce(with_token(announce("n1"), "wrong")).await),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(service.announce(Request::new(announce("n1"))).await),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(
                service
                    .list_nodes(with_token(pb::ListNodesRequest {}, "wrong"))
                    .await
            ),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(
                service
                    .announce(with_token(announce("a b"), "s3cret"))
                    .await
            ),
            Some(tonic::Code::InvalidArgument)
        );
        assert!(
            service
                .announce(with_token(announce("n1"), "s3cret"))
                .await
                .is_ok()
        );
        let listed = service
            .list_nodes(with_token(pb::ListNodesRequest {}, "s3cret"))
            .await
            .unwrap();
        assert!(
            listed.into_inner().nodes.is_empty(),
            "stored only once it reports"
        );
        // No token configured: nobody may announce.
        let (closed, _closed_dir) = make_service("").await;
        assert_eq!(
            code(closed.announce(with_token(announce("n1"), "")).await),
            Some(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn node_ids_are_short_and_plain() {
        assert!(valid_node_id("node-a.b_1"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a b"));
        assert!(!valid_node_id(&"x".repeat(65)));
    }
}
