//! Operator and node-facing endpoints under `/internal/v1`: node announcements and the node list.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AppStateRef;

/// What a node sends when it starts (and again while no control is connected to it).
#[derive(Debug, Deserialize)]
pub struct Announce {
    pub node_id: String,
    pub grpc_endpoint: String,
}

/// Compares secrets by digest so the comparison takes the same time wherever they differ.
fn same_secret(presented: &str, expected: &str) -> bool {
    Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.as_bytes())
}

pub async fn announce(state: AppStateRef, headers: HeaderMap, body: Bytes) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = &state.config.nodes.enrollment_token;
    if expected.is_empty() || !same_secret(presented, expected) {
        tracing::warn!("node announcement with a wrong enrollment token");
        return (StatusCode::UNAUTHORIZED, "wrong enrollment token").into_response();
    }
    let announce: Announce = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid announcement: {e}"),
            )
                .into_response();
        }
    };
    let id_ok = !announce.node_id.is_empty()
        && announce.node_id.len() <= 64
        && announce
            .node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !id_ok || !announce.grpc_endpoint.starts_with("http") {
        return (StatusCode::BAD_REQUEST, "node_id or grpc_endpoint invalid").into_response();
    }
    tracing::info!(node_id = %announce.node_id, endpoint = %announce.grpc_endpoint, "node announced itself");
    state
        .registry
        .announce(&announce.node_id, &announce.grpc_endpoint);
    StatusCode::NO_CONTENT.into_response()
}

/// One node as operators see it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    pub node_id: String,
    pub status: String,
    pub region: String,
    pub capacity: i64,
    pub runtimes: Vec<String>,
    pub encoders: Vec<String>,
    pub version: String,
}

pub async fn list_nodes(state: AppStateRef) -> Response {
    match state.store.list_nodes().await {
        Ok(nodes) => {
            let views: Vec<NodeView> = nodes
                .into_iter()
                .map(|n| NodeView {
                    node_id: n.node_id,
                    status: n.status,
                    region: n.region,
                    capacity: n.capacity,
                    runtimes: n.runtimes,
                    encoders: n.encoders,
                    version: n.version,
                })
                .collect();
            axum::Json(serde_json::json!({ "nodes": views })).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "listing nodes failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
