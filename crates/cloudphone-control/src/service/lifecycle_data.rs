//! Instance data lifecycle: BatchBackupInstances, BatchPrepareInstances and ShowProgress, and the
//! worker that restores prepared instances as host slots free up (started and stopped by
//! `crate::run`).
//!
//! A backup archives the instance's data dir (on its node, to `<backup dir>/<tenant>/<id>.tar.gz`)
//! and then removes the instance from the node, so it holds no slot while `backed_up`. Preparing
//! it puts it in a FIFO queue (`cloudphone_core::prepare`, persisted as `prepare_queued_at_ms`);
//! the worker admits queued instances onto nodes with free capacity and asks each node to restore
//! it. Every state lives in the store, so the queue survives a control restart and several
//! replicas can run the worker (claiming an instance is a conditional update).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudphone_api::error::ApiError;
use cloudphone_core::instance::{
    self, BackupPlan, ControlState, InstanceId, PrepareStatus, ProgressStatus,
};
use cloudphone_core::liveness::NodeHealth;
use cloudphone_core::prepare::{Pool, PoolNode, PrepareQueue, Waiting};
use cloudphone_proto::node_v1 as pb;
use tokio::sync::watch;

use super::{ServiceError, owned};
use crate::AppState;
use crate::iam::Principal;
use crate::store::{InstanceRecord, StoreError};

/// How often the worker looks at the queue even when nothing woke it: slots also free up
/// through DeleteInstance and nodes coming back, which do not wake it.
const WORKER_PERIOD: Duration = Duration::from_secs(1);

fn node_up(state: &AppState, node_id: &str) -> bool {
    state.registry.health(node_id) == NodeHealth::Up
}

/// Wakes the restore worker: the queue changed or a slot may have freed.
fn wake(state: &AppState) {
    state.restore_wake.notify_one();
}

/// Ids become path components of the archive: allow nothing that could climb or nest. A
/// tenant id is held to the same rule as an instance id.
fn path_safe(part: &str) -> bool {
    InstanceId::parse(part).is_ok()
}

/// `file://<dir>/<tenant_id>/<instance_id>.tar.gz`.
fn archive_uri(dir: &Path, record: &InstanceRecord) -> Result<String, ServiceError> {
    if !path_safe(&record.tenant_id) || !path_safe(&record.instance_id) {
        tracing::error!(instance_id = %record.instance_id, "ids unfit for an archive path");
        return Err(ApiError::Internal.into());
    }
    let path = dir
        .join(&record.tenant_id)
        .join(format!("{}.tar.gz", record.instance_id));
    Ok(format!("file://{}", path.display()))
}

/// The runtime whose instances cannot be backed up (see `docs/api-notes.md`).
const ANDROID_RUNTIME: &str = "android";

fn backup_dir(state: &AppState) -> Result<PathBuf, ServiceError> {
    let cwd = std::env::current_dir().map_err(|error| {
        tracing::error!(%error, "no working dir to resolve the backup dir against");
        ServiceError::Refused(ApiError::Internal)
    })?;
    Ok(state.config.backup_dir(&cwd))
}

/// BatchBackupInstances: archives each instance's data and releases its host slot, in the
/// background. All instances must be the caller's (1001) and in a state that can be backed up
/// (1000), or nothing happens.
pub(crate) async fn backup(
    state: &Arc<AppState>,
    principal: &Principal,
    ids: &[String],
) -> Result<(), ServiceError> {
    let records = owned(state, principal, ids).await?;
    let mut todo = Vec::new();
    for record in records {
        // An android instance's phone is its device, which the node cannot archive: refused
        // before anything changes, rather than archiving nothing and releasing the device.
        if record.runtime == ANDROID_RUNTIME {
            return Err(ApiError::InvalidParameter(format!(
                "instance {} runs on an android device, which cannot be backed up",
                record.instance_id
            ))
            .into());
        }
        match instance::backup_plan(record.state) {
            BackupPlan::Skip => {}
            BackupPlan::Start if node_up(state, &record.node_id) => todo.push(record),
            BackupPlan::Start => {
                return Err(ApiError::InvalidParameter(format!(
                    "instance {} is unreachable",
                    record.instance_id
                ))
                .into());
            }
            BackupPlan::Refuse => {
                return Err(ApiError::InvalidParameter(format!(
                    "instance {} cannot be backed up while {}",
                    record.instance_id, record.state
                ))
                .into());
            }
        }
    }
    let dir = backup_dir(state)?;
    let mut jobs = Vec::with_capacity(todo.len());
    for record in todo {
        let uri = archive_uri(&dir, &record)?;
        jobs.push((record, uri));
    }
    let marks: Vec<(String, String)> = jobs
        .iter()
        .map(|(r, uri)| (r.instance_id.clone(), uri.clone()))
        .collect();
    state.store.begin_backup(&marks, crate::unix_ms()).await?;
    let app = Arc::clone(state);
    tokio::spawn(async move {
        let runs = jobs
            .into_iter()
            .map(|(record, uri)| run_backup(Arc::clone(&app), record, uri));
        futures::future::join_all(runs).await;
    });
    Ok(())
}

/// One node BackupInstance call and its outcome in the store.
async fn run_backup(app: Arc<AppState>, record: InstanceRecord, uri: String) {
    let id = &record.instance_id;
    let outcome = match app.registry.client(&record.node_id) {
        Some(mut client) => client
            .backup_instance(pb::BackupInstanceRequest {
                instance_id: id.clone(),
                destination_uri: uri.clone(),
            })
            .await
            .map(|r| r.into_inner().archive_bytes),
        None => Err(tonic::Status::unavailable("node not connected")),
    };
    let error = match outcome {
        Ok(bytes) => {
            tracing::info!(instance_id = %id, bytes, %uri, "instance backed up");
            None
        }
        Err(status) => {
            tracing::warn!(instance_id = %id, %status, "backup failed");
            Some(format!("backup failed: {}", status.message()))
        }
    };
    if let Err(error) = app
        .store
        .finish_backup(id, error.as_deref(), crate::unix_ms())
        .await
    {
        tracing::error!(instance_id = %id, %error, "could not record the backup");
    }
    // A slot freed, or the instance was prepared while it was being backed up.
    wake(&app);
}

/// The prepare queue as the store has it.
async fn load_queue(state: &AppState) -> Result<PrepareQueue, StoreError> {
    let queued = state.store.queued_instances().await?;
    Ok(PrepareQueue::from_entries(
        queued
            .into_iter()
            .map(|(record, since_ms)| Waiting {
                instance_id: record.instance_id,
                pool: Pool {
                    region: record.region,
                    runtime: record.runtime,
                },
                since_ms,
            })
            .collect(),
    ))
}

/// BatchPrepareInstances: binds `user` to each instance (2209 if bound to someone else) and
/// queues the backed-up ones for restoring, in one transaction; answers each instance's status.
pub(crate) async fn prepare(
    state: &AppState,
    principal: &Principal,
    user: &str,
    ids: Vec<String>,
) -> Result<Vec<(String, PrepareStatus)>, ServiceError> {
    let records = owned(state, principal, &ids).await?;
    if let Some(taken) = records
        .iter()
        .find(|r| r.assign_user.as_deref().is_some_and(|u| u != user))
    {
        return Err(ApiError::NoAssignableDevice(taken.instance_id.clone()).into());
    }
    let assign: Vec<(String, String)> = records
        .iter()
        .filter(|r| r.assign_user.is_none())
        .map(|r| (r.instance_id.clone(), user.to_string()))
        .collect();
    let queue: Vec<String> = records
        .iter()
        .filter(|r| instance::may_prepare(r.state))
        .map(|r| r.instance_id.clone())
        .collect();
    state
        .store
        .prepare_instances(&assign, &queue, crate::unix_ms())
        .await?;
    wake(state);
    let mut statuses = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(record) = state.store.get_instance(&id).await? else {
            // Deleted meanwhile: it no longer exists for the caller.
            return Err(ApiError::NoInstancePermission(id).into());
        };
        let status = instance::prepare_status(record.state, node_up(state, &record.node_id));
        statuses.push((id, status));
    }
    Ok(statuses)
}

/// ShowProgress: where the instance is on its way to being streamable, and its place in the
/// queue while queued. `user` must be the one the instance is bound to (else 1001, as for an
/// instance that is not the caller's).
pub(crate) async fn progress(
    state: &AppState,
    principal: &Principal,
    user: &str,
    id: String,
) -> Result<(ProgressStatus, u32), ServiceError> {
    let record = owned(state, principal, std::slice::from_ref(&id))
        .await?
        .remove(0);
    if record.assign_user.as_deref() != Some(user) {
        return Err(ApiError::NoInstancePermission(id).into());
    }
    let status = instance::progress_status(record.state, node_up(state, &record.node_id));
    let waiting_count = match status {
        ProgressStatus::Queued => load_queue(state).await?.waiting_count(&id).unwrap_or(1),
        _ => 0,
    };
    Ok((status, waiting_count))
}

/// The restore worker: admits queued instances whenever woken (or every `WORKER_PERIOD`) until
/// `shutdown` turns true. Restores it started finish on their own; their outcome is in the store.
/// Only the replicas' leader admits (`crate::leader`): one worker per fleet, so a wake-up on
/// another replica is seen within the leader's own `WORKER_PERIOD`.
pub(crate) async fn worker(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut leader = state.leader.subscribe();
    loop {
        if !crate::leader::until_leading(&mut leader, &mut shutdown).await {
            return;
        }
        if let Err(error) = admit(&state).await {
            tracing::warn!(%error, "prepare queue: admission failed");
        }
        tokio::select! {
            changed = shutdown.changed() => {
                // A dropped sender means `run` is gone too.
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
            _ = state.restore_wake.notified() => {}
            _ = tokio::time::sleep(WORKER_PERIOD) => {}
        }
    }
}

/// Admits what fits, in queue order, and starts a restore for each admitted instance.
async fn admit(state: &Arc<AppState>) -> Result<(), StoreError> {
    let queued = state.store.queued_instances().await?;
    if queued.is_empty() {
        return Ok(());
    }
    let mut records: HashMap<String, (InstanceRecord, i64)> = queued
        .iter()
        .map(|(r, since)| (r.instance_id.clone(), (r.clone(), *since)))
        .collect();
    let mut queue = load_queue(state).await?;
    // The snapshot picks a node per instance; each claim checks that node's room again under
    // its row lock (`store::placement`), so replicas and CreateInstance never share a slot.
    let claimed = {
        let nodes: Vec<PoolNode> = super::nodes_with_slots(state)
            .await?
            .into_iter()
            .map(|(n, slots)| PoolNode {
                slots,
                region: n.region,
                runtimes: n.runtimes,
            })
            .collect();
        let now = crate::unix_ms();
        let mut claimed = Vec::new();
        for admission in queue.admit(&nodes) {
            if state
                .store
                .claim_restore_slot(&admission.instance_id, &admission.node_id, now)
                .await?
            {
                claimed.push(admission);
            }
        }
        claimed
    };
    for admission in claimed {
        let Some((mut record, since)) = records.remove(&admission.instance_id) else {
            continue;
        };
        record.node_id = admission.node_id;
        tracing::info!(instance_id = %record.instance_id, node_id = %record.node_id, "restoring a prepared instance");
        tokio::spawn(restore(Arc::clone(state), record, since));
    }
    Ok(())
}

/// One node RestoreInstance call and its outcome in the store.
async fn restore(app: Arc<AppState>, record: InstanceRecord, since_ms: i64) {
    let id = record.instance_id.clone();
    let source_uri = match app.store.backup_state(&id).await {
        Ok(Some(backup)) => backup.backup_uri,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(instance_id = %id, %error, "could not read the archive location");
            if let Err(error) = app.store.requeue(&id, since_ms).await {
                tracing::error!(instance_id = %id, %error, "could not requeue");
            }
            return;
        }
    };
    let spec = super::create_request(&record);
    let outcome = match app.registry.client(&record.node_id) {
        // The archive was wiped (UnassignInstance or BatchReset while archived): the phone
        // comes back as a fresh one, created from the same spec.
        Some(mut client) if source_uri.is_empty() => {
            tracing::info!(instance_id = %id, "archive wiped: restoring as a fresh phone");
            client.create_instance(spec).await.map(|r| r.into_inner())
        }
        Some(mut client) => client
            .restore_instance(pb::RestoreInstanceRequest {
                instance_id: id.clone(),
                source_uri: source_uri.clone(),
                spec: Some(spec),
            })
            .await
            .map(|r| r.into_inner()),
        None => Err(tonic::Status::unavailable("node not connected")),
    };
    let now = crate::unix_ms();
    let recorded = match outcome {
        Ok(status) if status.state == pb::InstanceState::Running as i32 => {
            tracing::info!(instance_id = %id, "instance restored");
            remove_archive(&source_uri).await;
            app.store
                .finish_restore(&id, ControlState::RUNNING, "", 2, now)
                .await
        }
        // Restored but not running (e.g. it failed to start): it is on the node, as it says.
        Ok(status) => {
            app.store
                .finish_restore(
                    &id,
                    crate::nodes::reported_state(status.state),
                    &status.message,
                    3,
                    now,
                )
                .await
        }
        // The node had no room after all (or is going away): back in line, same place.
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable
            ) =>
        {
            tracing::warn!(instance_id = %id, %status, "restore deferred");
            app.store.requeue(&id, since_ms).await
        }
        Err(status) => {
            tracing::warn!(instance_id = %id, %status, "restore failed");
            app.store
                .finish_restore(
                    &id,
                    ControlState::RestoreFailed,
                    &format!("restore failed: {}", status.message()),
                    3,
                    now,
                )
                .await
        }
    };
    if let Err(error) = recorded {
        tracing::error!(instance_id = %id, %error, "could not record the restore");
    }
    wake(&app);
}

/// The data is back on a host and will diverge from the archive: drop the stale copy.
pub(crate) async fn remove_archive(uri: &str) {
    let Some(path) = uri.strip_prefix("file://") else {
        return;
    };
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path, %error, "could not remove a restored archive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: ControlState) -> InstanceRecord {
        InstanceRecord {
            state,
            ..InstanceRecord::sample("i1", "t-1", "p", "n1")
        }
    }

    #[test]
    fn archive_paths() {
        let uri = archive_uri(Path::new("/b"), &record(ControlState::RUNNING)).unwrap();
        assert_eq!(uri, "file:///b/t-1/i1.tar.gz");
        let mut bad = record(ControlState::RUNNING);
        bad.tenant_id = "../etc".into();
        assert!(archive_uri(Path::new("/b"), &bad).is_err());
    }
}
