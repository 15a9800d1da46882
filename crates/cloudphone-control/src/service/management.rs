//! Managing instances a tenant already has: BatchQueryStatus, BatchReset, BatchRebootInstance,
//! AssignInstance, UnassignInstance and DeleteInstance. Every operation checks that *all* named instances are
//! the caller's before it changes any of them, and writes its rows in one transaction.

use std::sync::Arc;

use cloudphone_api::error::ApiError;
use cloudphone_api::management::Binding;
use cloudphone_core::instance::{self, ControlState, PhoneStatus};
use cloudphone_core::lifecycle::{self, Operation};
use cloudphone_proto::node_v1 as pb;

use super::{ServiceError, node_of, owned};
use crate::AppState;
use crate::iam::Principal;
use crate::store::InstanceRecord;

/// BatchQueryStatus: each instance's status, in the order asked.
pub(crate) async fn query_status(
    state: &AppState,
    principal: &Principal,
    ids: &[String],
) -> Result<Vec<(String, PhoneStatus)>, ServiceError> {
    let records = owned(state, principal, ids).await?;
    Ok(records
        .into_iter()
        .map(|r| (r.instance_id, instance::phone_status(r.state)))
        .collect())
}

/// BatchReset: wipes each instance's data and restarts it; every node must be reachable.
pub(crate) async fn reset(
    state: &Arc<AppState>,
    principal: &Principal,
    ids: &[String],
) -> Result<(), ServiceError> {
    let records = owned(state, principal, ids).await?;
    if let Some(down) = records.iter().find(|r| node_of(state, r).is_none()) {
        return Err(ApiError::InvalidParameter(format!(
            "instance {} is unreachable",
            down.instance_id
        ))
        .into());
    }
    start_lifecycle(state, records, Operation::Reset).await
}

/// BatchRebootInstance: every instance must be running on a reachable node (else 5005 and none
/// reboots).
pub(crate) async fn reboot(
    state: &Arc<AppState>,
    principal: &Principal,
    ids: &[String],
) -> Result<(), ServiceError> {
    let records = owned(state, principal, ids).await?;
    let not_running: Vec<&str> = records
        .iter()
        .filter(|r| r.state != ControlState::RUNNING || node_of(state, r).is_none())
        .map(|r| r.instance_id.as_str())
        .collect();
    if !not_running.is_empty() {
        return Err(ApiError::NotAllRunning(not_running.join(",")).into());
    }
    start_lifecycle(state, records, Operation::Reboot).await
}

/// The instances the bindings name, in their order, when all are the caller's (see `owned`).
async fn owned_bindings(
    state: &AppState,
    principal: &Principal,
    bindings: &[Binding],
) -> Result<Vec<InstanceRecord>, ServiceError> {
    let ids: Vec<String> = bindings.iter().map(|b| b.instance_id.clone()).collect();
    owned(state, principal, &ids).await
}

/// AssignInstance: binds each instance to its user; one bound to someone else is 2209 and
/// nothing changes.
pub(crate) async fn assign(
    state: &AppState,
    principal: &Principal,
    bindings: &[Binding],
) -> Result<(), ServiceError> {
    let records = owned_bindings(state, principal, bindings).await?;
    for (binding, record) in bindings.iter().zip(&records) {
        if record
            .assign_user
            .as_deref()
            .is_some_and(|u| u != binding.user_id)
        {
            return Err(ApiError::NoAssignableDevice(record.instance_id.clone()).into());
        }
    }
    let rows: Vec<(String, Option<String>)> = bindings
        .iter()
        .map(|b| (b.instance_id.clone(), Some(b.user_id.clone())))
        .collect();
    state
        .store
        .set_assign_users(&rows, crate::unix_ms())
        .await?;
    Ok(())
}

/// UnassignInstance: removes each binding (2210 if one does not exist) and wipes the user's
/// data ("调用后会清除用户云机使用数据") on the instances whose node is reachable.
pub(crate) async fn unassign(
    state: &Arc<AppState>,
    principal: &Principal,
    bindings: &[Binding],
) -> Result<(), ServiceError> {
    let records = owned_bindings(state, principal, bindings).await?;
    for (binding, record) in bindings.iter().zip(&records) {
        if record.assign_user.as_deref() != Some(binding.user_id.as_str()) {
            return Err(ApiError::BindingNotFound(format!(
                "{} / {}",
                binding.user_id, binding.instance_id
            ))
            .into());
        }
    }
    let rows: Vec<(String, Option<String>)> = bindings
        .iter()
        .map(|b| (b.instance_id.clone(), None))
        .collect();
    state
        .store
        .set_assign_users(&rows, crate::unix_ms())
        .await?;
    let reachable: Vec<InstanceRecord> = records
        .into_iter()
        .filter(|r| node_of(state, r).is_some())
        .collect();
    start_lifecycle(state, reachable, Operation::Reset).await
}

/// DeleteInstance: asks each reachable node to remove its instance, then drops every row in
/// one transaction. A node that was down (or failed the call) drops the instance when it next
/// announces it, since control no longer has it (see `nodes`).
pub(crate) async fn delete(
    state: &AppState,
    principal: &Principal,
    ids: &[String],
) -> Result<(), ServiceError> {
    let records = owned(state, principal, ids).await?;
    for record in &records {
        if let Some(mut client) = node_of(state, record) {
            let target = pb::InstanceRef {
                instance_id: record.instance_id.clone(),
            };
            if let Err(status) = client.delete_instance(target).await {
                tracing::warn!(instance_id = %record.instance_id, %status, "node delete failed; reconciled on its next announcement");
            }
        }
    }
    state.store.delete_instances(ids).await?;
    Ok(())
}

/// Marks the instances as in transition (one transaction), then runs the node operation in the
/// background; the node's answer, and later its instance events, bring the final state.
async fn start_lifecycle(
    state: &Arc<AppState>,
    records: Vec<InstanceRecord>,
    op: Operation,
) -> Result<(), ServiceError> {
    if let Some(transitional) = lifecycle::transitional(op) {
        let ids: Vec<String> = records.iter().map(|r| r.instance_id.clone()).collect();
        state
            .store
            .set_instance_states(&ids, transitional.into(), crate::unix_ms())
            .await?;
    }
    let app = Arc::clone(state);
    tokio::spawn(async move {
        for record in records {
            run_lifecycle(&app, &record, op).await;
        }
    });
    Ok(())
}

/// One node reset or reboot and the state it answered with.
async fn run_lifecycle(app: &AppState, record: &InstanceRecord, op: Operation) {
    let Some(mut client) = app.registry.client(&record.node_id) else {
        return;
    };
    let target = pb::InstanceRef {
        instance_id: record.instance_id.clone(),
    };
    let outcome = match op {
        Operation::Reboot => client.reboot_instance(target).await,
        Operation::Reset => client.reset_instance(target).await,
        other => {
            tracing::error!(op = %other, "not a node lifecycle operation");
            return;
        }
    };
    let (reported, message) = match outcome {
        Ok(status) => {
            let status = status.into_inner();
            (crate::nodes::reported_state(status.state), status.message)
        }
        Err(status) => (ControlState::FAILED, status.message().to_string()),
    };
    if let Err(error) = app
        .store
        .set_instance_state(&record.instance_id, reported, &message, crate::unix_ms())
        .await
    {
        tracing::error!(instance_id = %record.instance_id, %error, "could not record state");
    }
}
