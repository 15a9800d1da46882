//! The application layer: one function per tenant operation, taking a typed command (already
//! parsed and validated by `cloudphone_api`) and answering a typed result or a
//! [`ServiceError`]. It holds the rules of the operation and knows nothing of HTTP: `http`
//! parses a request into the command, calls the service, and maps the error onto the spec's
//! `error_code` and status.
//!
//! # Layout
//! - [`apps`]: InstallApp's task and its jobs.
//! - [`commands`]: SyncCommand, AsyncCommand and GetTask.
//! - [`instances`]: ordering instances (placement, creation on the nodes), what can be ordered.
//! - [`lifecycle_data`]: backup, prepare (the restore queue) and its worker.
//! - [`live`]: the live edge's API (seed 003): signatures, tenants, groups, streams, and the
//!   nodes' view of streams.
//! - [`management`]: status, reset, reboot, assignment, deletion of instances a tenant has.
//! - [`usage`]: the AK/SK credentials of the usage APIs.
//! - [`usage_query`]: the vendor usage queries (Huawei Live, Volcengine) and ShowDomain.
//! - [`sessions`]: device tokens, the video matrix, stopping and releasing sessions.
//!
//! Helpers every resource group needs (ownership, the node of an instance) live here.

pub(crate) mod apps;
pub(crate) mod commands;
pub(crate) mod instances;
pub(crate) mod lifecycle_data;
pub(crate) mod live;
pub(crate) mod management;
pub(crate) mod sessions;
pub(crate) mod usage;
pub(crate) mod usage_query;

use cloudphone_api::error::ApiError;
use std::collections::HashMap;

use cloudphone_core::instance::{self, Plan, Refusal, TenantOp};
use cloudphone_core::liveness::NodeHealth;
use cloudphone_core::scheduling::NodeSlots;
use cloudphone_proto::node_v1 as pb;

use crate::AppState;
use crate::iam::Principal;
use crate::store::{InstanceRecord, NodeRecord, StoreError};

/// Everything a service can answer instead of a result; `http` maps each onto the spec.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// A refusal the spec names; its code and HTTP status come with it.
    #[error(transparent)]
    Refused(#[from] ApiError),
    /// The store failed: `KOOPHONE.API.9999`, with the details only in the log.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Loads the named instances, refusing the whole request (1001) if any is not the caller's:
/// an instance is the caller's when it is in the tenant *and the project* its token is scoped
/// to. Another project's instance, another tenant's and an unknown one all look the same.
pub(crate) async fn owned(
    state: &AppState,
    principal: &Principal,
    ids: &[String],
) -> Result<Vec<InstanceRecord>, ServiceError> {
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        match state.store.get_instance(id).await? {
            Some(record) if in_scope(principal, &record) => records.push(record),
            _ => return Err(ApiError::NoInstancePermission(id.clone()).into()),
        }
    }
    Ok(records)
}

/// Whether a token scoped to `principal`'s project may act on `record`.
pub(crate) fn in_scope(principal: &Principal, record: &InstanceRecord) -> bool {
    record.tenant_id == principal.tenant_id && record.project_id == principal.project_id
}

/// What a node needs to create the instance (also the spec a restore recreates it from).
pub(crate) fn create_request(record: &InstanceRecord) -> pb::CreateInstanceRequest {
    pb::CreateInstanceRequest {
        instance_id: record.instance_id.clone(),
        tenant_id: record.tenant_id.clone(),
        runtime: record.runtime.clone(),
        width: u32::try_from(record.width).unwrap_or(720),
        height: u32::try_from(record.height).unwrap_or(1280),
        os: record.os.clone(),
    }
}

/// Every registered node with its slots: the instances placed on it against its capacity,
/// eligible when the node is up: a snapshot, which the claims of `store::placement` check again
/// under their locks.
pub(crate) async fn nodes_with_slots(
    state: &AppState,
) -> Result<Vec<(NodeRecord, NodeSlots)>, StoreError> {
    let counts: HashMap<String, i64> = state.store.instance_counts().await?.into_iter().collect();
    let nodes = state.store.list_nodes().await?;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let used = counts.get(&n.node_id).copied().unwrap_or(0);
            let slots = NodeSlots {
                eligible: state.registry.health(&n.node_id) == NodeHealth::Up,
                used: u32::try_from(used).unwrap_or(u32::MAX),
                // Filled in by an order that has a per-node tenant quota.
                tenant_used: 0,
                capacity: u32::try_from(n.capacity).unwrap_or(0),
                node_id: n.node_id.clone(),
            };
            (n, slots)
        })
        .collect())
}

/// What `op` does with `record` under the core's lifecycle rules
/// (`cloudphone_core::instance::plan`), its refusal already mapped onto the documented code.
pub(crate) fn plan(
    state: &AppState,
    record: &InstanceRecord,
    op: TenantOp,
) -> Result<Plan, ServiceError> {
    let node_up = state.registry.health(&record.node_id) == NodeHealth::Up;
    instance::plan(op, record.state, node_up).map_err(|refusal| {
        let what = format!("instance {} is {}", record.instance_id, record.state);
        let what = if node_up || !instance::holds_slot(record.state) {
            what
        } else {
            format!("{what} on a host that is down")
        };
        ServiceError::Refused(match refusal {
            Refusal::BeingRestored => ApiError::BeingRestored(what),
            Refusal::BeingBackedUp => ApiError::BeingBackedUp(what),
            Refusal::Abnormal => ApiError::InstanceAbnormal(what),
            Refusal::NotRunning => ApiError::NotAllRunning(record.instance_id.clone()),
        })
    })
}

/// A client for the instance's node when that node is up.
pub(crate) fn node_of(
    state: &AppState,
    record: &InstanceRecord,
) -> Option<crate::nodes::NodeClient> {
    (state.registry.health(&record.node_id) == NodeHealth::Up)
        .then(|| state.registry.client(&record.node_id))
        .flatten()
}
