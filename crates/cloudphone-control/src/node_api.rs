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

    #[test]
    fn node_ids_are_short_and_plain() {
        assert!(valid_node_id("node-a.b_1"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a b"));
        assert!(!valid_node_id(&"x".repeat(65)));
    }
}
