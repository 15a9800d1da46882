//! Managing instances a tenant already has: BatchQueryStatus, BatchReset, BatchRebootInstance,
//! AssignInstance, UnassignInstance and DeleteInstance. Every operation checks that *all* named instances are
//! the caller's before it changes any of them, and writes its rows in one transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cloudphone_api::error::ApiError;
use cloudphone_api::management::Binding;
use cloudphone_core::instance::{self, ControlState, PhoneStatus, Plan, TenantOp};
use cloudphone_core::lifecycle::{self, Operation};
use cloudphone_proto::node_v1 as pb;

use super::{ServiceError, node_of, owned};
use crate::AppState;
use crate::iam::Principal;
use crate::store::InstanceRecord;

/// BatchQueryStatus: each instance's status, in the order asked. The state gives all but one
/// status; "streaming" (3) is a property of the node's sessions, so the nodes of the running
/// instances are asked which of theirs have a viewer (one call per node). A node that does not
/// answer leaves its instances at what their state says.
pub(crate) async fn query_status(
    state: &AppState,
    principal: &Principal,
    ids: &[String],
) -> Result<Vec<(String, PhoneStatus)>, ServiceError> {
    let records = owned(state, principal, ids).await?;
    let mut streaming: HashMap<String, HashSet<String>> = HashMap::new();
    for record in &records {
        if record.state != ControlState::RUNNING || streaming.contains_key(&record.node_id) {
            continue;
        }
        let Some(mut client) = node_of(state, record) else {
            continue;
        };
        let on_node = match client.list_streaming(pb::ListStreamingRequest {}).await {
            Ok(answer) => answer.into_inner().instance_ids.into_iter().collect(),
            Err(status) => {
                tracing::warn!(node_id = %record.node_id, %status, "node did not say what streams");
                HashSet::new()
            }
        };
        streaming.insert(record.node_id.clone(), on_node);
    }
    Ok(records
        .into_iter()
        .map(|r| {
            let viewed = streaming
                .get(&r.node_id)
                .is_some_and(|ids| ids.contains(&r.instance_id));
            let status = instance::phone_status(r.state, viewed);
            (r.instance_id, status)
        })
        .collect())
}

/// BatchReset: wipes each instance's data and restarts it. Where the data is follows from the
/// state (`cloudphone_core::instance::plan`): on a host that is up (the node resets it), or
/// only in an archive (the archive is deleted, so the phone comes back fresh when prepared).
/// One instance the rules refuse (being backed up 2006, being restored 2005, host down or mid
/// operation 62010) refuses the whole call, and nothing changes.
pub(crate) async fn reset(
    state: &Arc<AppState>,
    principal: &Principal,
    ids: &[String],
) -> Result<(), ServiceError> {
    let records = owned(state, principal, ids).await?;
    let (on_node, archived) = split_wipes(state, records, TenantOp::Reset).await?;
    wipe(state, &[], &archived, on_node).await
}

/// Splits instances to wipe into those their node wipes and those only in an archive, or the
/// first refusal. A phone control saw mid-operation (creating, starting, resetting) is asked
/// about first: control's state may be a report behind the node's (a late "starting" after
/// the "running" of the create call), and a phone that runs can be wiped.
async fn split_wipes(
    state: &AppState,
    records: Vec<InstanceRecord>,
    op: TenantOp,
) -> Result<(Vec<InstanceRecord>, Vec<String>), ServiceError> {
    let mut on_node = Vec::new();
    let mut archived = Vec::new();
    for mut record in records {
        if matches!(
            super::plan(state, &record, op),
            Err(ServiceError::Refused(ApiError::InstanceAbnormal(_)))
        ) && let Some(mut client) = node_of(state, &record)
        {
            let target = pb::InstanceRef {
                instance_id: record.instance_id.clone(),
            };
            if let Ok(status) = client.get_instance_status(target).await {
                record.state = crate::nodes::reported_state(status.into_inner().state);
            }
        }
        match super::plan(state, &record, op)? {
            Plan::OnNode => on_node.push(record),
            Plan::Archive => archived.push(record.instance_id),
            Plan::Nothing => {}
        }
    }
    Ok((on_node, archived))
}

/// Unbinds `unbind` and wipes `archived` (one transaction), deletes those archives, then
/// starts the node resets of `on_node`.
async fn wipe(
    state: &Arc<AppState>,
    unbind: &[String],
    archived: &[String],
    on_node: Vec<InstanceRecord>,
) -> Result<(), ServiceError> {
    if !unbind.is_empty() || !archived.is_empty() {
        let Some(uris) = state
            .store
            .wipe_archives(unbind, archived, crate::unix_ms())
            .await?
        else {
            // A restore claimed one of them between the read and the write.
            return Err(ApiError::BeingRestored(archived.join(",")).into());
        };
        for uri in uris {
            super::lifecycle_data::remove_archive(&uri).await;
        }
    }
    start_lifecycle(state, on_node, Operation::Reset).await
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
        .filter(|r| super::plan(state, r, TenantOp::Reboot).is_err())
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
/// data ("调用后会清除用户云机使用数据") wherever it is, under the same rules as BatchReset: on
/// its host, or in its archive (deleted at once; the phone comes back fresh when prepared).
/// A wipe that cannot happen now (host down, backup or restore in flight) refuses the whole
/// call with its code and the bindings stay: the next user never inherits the data.
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
    let unbind: Vec<String> = bindings.iter().map(|b| b.instance_id.clone()).collect();
    let (on_node, archived) = split_wipes(state, records, TenantOp::Unassign).await?;
    wipe(state, &unbind, &archived, on_node).await
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
