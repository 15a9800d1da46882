//! Instance management handlers: SyncCommand, AsyncCommand, GetTask, BatchQueryStatus,
//! BatchReset, BatchRebootInstance, AssignInstance, UnassignInstance, DeleteInstance,
//! GetDeviceToken, StopInstancesStreaming and ReleaseInstancesSession.
//!
//! Every handler checks that *all* named instances belong to the caller's tenant before it acts
//! on any of them: another tenant's (or an unknown) instance is `KOOPHONE.API.1001` and nothing
//! changes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use cloudphone_api::error::{ApiError, ErrorBody};
use cloudphone_api::management::SetVideoConfigRequest;
use cloudphone_api::management::{
    self as wire, AsyncCommandInfo, CmdJob, CmdResult, CmdResultWrapper, CommandRequest,
    DataResponse, DeleteRequest, DeviceResource, DeviceTokenData, IceSignaling, InstanceIdRequest,
    InstanceIdsRequest, JobDetail, JobDetailWrapper, JobStatus, NullDataResponse, Rtc, Sdk,
    SdkAddress, StatusResult, StatusResultWrapper, UserInstancesRequest,
};
use cloudphone_core::instance::{self, ControlState};
use cloudphone_core::lifecycle::{self, Operation};
use cloudphone_core::liveness::NodeHealth;
use cloudphone_core::video::{
    Codec, Definition, NetworkType, VideoCell, VideoConfig, VideoConfigError,
};
use cloudphone_proto::node_v1::{self as pb, node_agent_client::NodeAgentClient};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::{ApiFailure, AppStateRef, Caller, TokenCaller, parse_json};
use crate::AppState;
use crate::store::{InstanceRecord, JobRecord, TaskRecord};

/// How long SyncCommand waits for each command.
const SYNC_COMMAND_TIMEOUT_MS: u32 = 30_000;
/// How long an AsyncCommand job may run.
const ASYNC_COMMAND_TIMEOUT_MS: u32 = 600_000;
/// The vendor's code for a command that ran and failed (seed example).
const COMMAND_FAILED: (&str, &str) = ("CPS.0191", "Run command failed.");
/// `KOOPHONE.API.62010`: the instance is not in a state to run anything.
const INSTANCE_ABNORMAL: (&str, &str) = ("KOOPHONE.API.62010", "cloud instance abnormal");

fn ok_body() -> Response {
    axum::Json(ErrorBody {
        error_code: "0".into(),
        error_msg: "ok".into(),
    })
    .into_response()
}

/// Loads the named instances, refusing the whole request if any is not the caller's.
pub(super) async fn owned(
    state: &AppState,
    tenant_id: &str,
    ids: &[String],
) -> Result<Vec<InstanceRecord>, ApiFailure> {
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        match state.store.get_instance(id).await? {
            Some(record) if record.tenant_id == tenant_id => records.push(record),
            _ => return Err(ApiError::NoInstancePermission(id.clone()).into()),
        }
    }
    Ok(records)
}

/// A client for the instance's node when that node is up.
pub(super) fn node_of(
    state: &AppState,
    record: &InstanceRecord,
) -> Option<NodeAgentClient<Channel>> {
    (state.registry.health(&record.node_id) == NodeHealth::Up)
        .then(|| state.registry.client(&record.node_id))
        .flatten()
}

fn execute_msg(result: &pb::CommandResult) -> String {
    let mut text = result.stdout.clone();
    if !result.stderr.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&result.stderr);
    }
    wire::truncate_bytes(&text, wire::MAX_EXECUTE_MSG_BYTES)
}

/// Status and codes of a finished command.
fn judge(result: &pb::CommandResult) -> (JobStatus, &'static str, &'static str) {
    if result.exit_code == 0 && !result.timed_out {
        (JobStatus::Succeeded, "", "")
    } else {
        (JobStatus::Failed, COMMAND_FAILED.0, COMMAND_FAILED.1)
    }
}

fn command_request(
    record: &InstanceRecord,
    command: &str,
    timeout_ms: u32,
) -> pb::RunCommandRequest {
    pb::RunCommandRequest {
        instance_id: record.instance_id.clone(),
        command: command.to_string(),
        timeout_ms,
        max_output_bytes: wire::MAX_EXECUTE_MSG_BYTES as u32,
    }
}

/// SyncCommand: runs the command on every instance at once and answers with all results.
pub async fn sync_command(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<CommandRequest>(&body)?.validate()?;
    let records = owned(&state, &caller.principal.tenant_id, &request.instance_ids).await?;
    let runs = records.iter().map(|record| {
        let command = request.command.clone();
        let client = node_of(&state, record);
        async move {
            let failed = |(code, msg): (&str, &str), execute: String| CmdResult {
                instance_id: record.instance_id.clone(),
                status: JobStatus::Failed as i32,
                error_code: code.into(),
                error_msg: msg.into(),
                execute_msg: execute,
            };
            let Some(mut client) = client else {
                return failed(INSTANCE_ABNORMAL, String::new());
            };
            match client
                .run_command(command_request(record, &command, SYNC_COMMAND_TIMEOUT_MS))
                .await
            {
                Ok(response) => {
                    let result = response.into_inner();
                    let (status, code, msg) = judge(&result);
                    CmdResult {
                        instance_id: record.instance_id.clone(),
                        status: status as i32,
                        error_code: code.into(),
                        error_msg: msg.into(),
                        execute_msg: execute_msg(&result),
                    }
                }
                Err(status) => failed(INSTANCE_ABNORMAL, status.message().to_string()),
            }
        }
    });
    let cmd_results = futures::future::join_all(runs).await;
    Ok(axum::Json(DataResponse::ok(CmdResultWrapper { cmd_results })).into_response())
}

pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// AsyncCommand: starts the command on every instance's node and records one task.
pub async fn async_command(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<CommandRequest>(&body)?.validate()?;
    let records = owned(&state, &caller.principal.tenant_id, &request.instance_ids).await?;
    let task_id = new_id();
    let now = crate::unix_ms();
    let mut jobs = Vec::with_capacity(records.len());
    for record in &records {
        let mut job = JobRecord {
            job_id: new_id(),
            task_id: task_id.clone(),
            instance_id: record.instance_id.clone(),
            node_id: record.node_id.clone(),
            node_job_id: String::new(),
            status: JobStatus::Running as i64,
            error_code: String::new(),
            error_msg: String::new(),
            execute_msg: None,
            updated_at_ms: now,
        };
        let started = match node_of(&state, record) {
            Some(mut client) => client
                .start_command(command_request(
                    record,
                    &request.command,
                    ASYNC_COMMAND_TIMEOUT_MS,
                ))
                .await
                .map(|r| r.into_inner().job_id)
                .map_err(|s| s.message().to_string()),
            None => Err("node down".to_string()),
        };
        match started {
            Ok(node_job_id) => job.node_job_id = node_job_id,
            Err(detail) => {
                job.status = JobStatus::Failed as i64;
                job.error_code = INSTANCE_ABNORMAL.0.into();
                job.error_msg = INSTANCE_ABNORMAL.1.into();
                job.execute_msg = Some(detail);
            }
        }
        jobs.push(job);
    }
    let cmd_jobs = jobs
        .iter()
        .map(|j| CmdJob {
            instance_id: j.instance_id.clone(),
            job_id: j.job_id.clone(),
        })
        .collect();
    let task = TaskRecord {
        task_id: task_id.clone(),
        tenant_id: caller.principal.tenant_id.clone(),
        kind: "command".into(),
        created_at_ms: now,
        jobs,
    };
    state.store.insert_task(&task).await?;
    Ok(axum::Json(DataResponse::ok(AsyncCommandInfo { task_id, cmd_jobs })).into_response())
}

/// Asks the node how a still-running job is doing; a node that lost the job fails it.
async fn refresh_job(state: &AppState, job: &mut JobRecord) -> Result<(), ApiFailure> {
    if job.status != JobStatus::Running as i64 || job.node_job_id.is_empty() {
        return Ok(());
    }
    let Some(mut client) = state.registry.client(&job.node_id) else {
        return Ok(());
    };
    let polled = client
        .get_command(pb::CommandJobRef {
            job_id: job.node_job_id.clone(),
        })
        .await;
    let changed = match polled {
        Ok(response) => {
            let node_job = response.into_inner();
            match pb::JobState::try_from(node_job.state).unwrap_or(pb::JobState::Unspecified) {
                pb::JobState::Done => {
                    let result = node_job.result.unwrap_or_default();
                    let (status, code, msg) = judge(&result);
                    job.status = status as i64;
                    job.error_code = code.into();
                    job.error_msg = msg.into();
                    job.execute_msg = Some(execute_msg(&result));
                    true
                }
                pb::JobState::Failed => {
                    job.status = JobStatus::Failed as i64;
                    job.error_code = INSTANCE_ABNORMAL.0.into();
                    job.error_msg = INSTANCE_ABNORMAL.1.into();
                    job.execute_msg = Some(node_job.error);
                    true
                }
                _ => false,
            }
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            // The node restarted and forgot the job: it will never finish.
            job.status = JobStatus::Failed as i64;
            job.error_code = INSTANCE_ABNORMAL.0.into();
            job.error_msg = "job lost: the instance's host restarted".into();
            true
        }
        // Node unreachable: report it as still running; a later poll settles it.
        Err(_) => false,
    };
    if changed {
        job.updated_at_ms = crate::unix_ms();
        state.store.update_job(job).await?;
    }
    Ok(())
}

/// GetTask: the task's jobs, polling the nodes for the ones still running.
pub async fn get_task(
    state: AppStateRef,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Response, ApiFailure> {
    if task_id.is_empty() || task_id.len() > 64 {
        return Err(ApiError::InvalidParameter("task_id has 1..=64 characters".into()).into());
    }
    let mut task = match state.store.get_task(&task_id).await? {
        Some(task) if task.tenant_id == caller.principal.tenant_id => task,
        // Another tenant's task does not exist for this caller.
        _ => return Err(ApiError::TaskNotFound(task_id).into()),
    };
    for job in &mut task.jobs {
        refresh_job(&state, job).await?;
    }
    let jobs = task
        .jobs
        .into_iter()
        .map(|j| JobDetail {
            job_id: j.job_id,
            status: j.status as i32,
            error_code: j.error_code,
            error_msg: j.error_msg,
            execute_msg: j.execute_msg,
        })
        .collect();
    Ok(axum::Json(DataResponse::ok(JobDetailWrapper { jobs })).into_response())
}

pub async fn batch_query_status(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<InstanceIdsRequest>(&body)?.validate()?;
    let records = owned(&state, &caller.principal.tenant_id, &ids).await?;
    let status_results = records
        .iter()
        .map(|r| StatusResult {
            instance_id: r.instance_id.clone(),
            status: instance::phone_status(r.state) as i32,
        })
        .collect();
    Ok(axum::Json(DataResponse::ok(StatusResultWrapper { status_results })).into_response())
}

/// Which node operation a background lifecycle call makes.
#[derive(Debug, Clone, Copy)]
enum Lifecycle {
    Reset,
    Reboot,
}

impl Lifecycle {
    fn operation(self) -> Operation {
        match self {
            Lifecycle::Reset => Operation::Reset,
            Lifecycle::Reboot => Operation::Reboot,
        }
    }
}

/// Marks the instances as in transition, then runs the node operation in the background; the
/// node's instance events bring the final state.
async fn start_lifecycle(
    state: &AppStateRef,
    records: Vec<InstanceRecord>,
    op: Lifecycle,
) -> Result<(), ApiFailure> {
    let transitional =
        lifecycle::transitional(op.operation()).map_or(ControlState::Unknown, ControlState::Node);
    let now = crate::unix_ms();
    for record in &records {
        state
            .store
            .set_instance_state(&record.instance_id, transitional, "", now)
            .await?;
    }
    let app: Arc<AppState> = Arc::clone(&state.0);
    tokio::spawn(async move {
        for record in records {
            let Some(mut client) = app.registry.client(&record.node_id) else {
                continue;
            };
            let target = pb::InstanceRef {
                instance_id: record.instance_id.clone(),
            };
            let outcome = match op {
                Lifecycle::Reset => client.reset_instance(target).await,
                Lifecycle::Reboot => client.reboot_instance(target).await,
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
    });
    Ok(())
}

/// BatchReset: wipes each instance's data and restarts it; `running_status` shows 4 meanwhile.
pub async fn batch_reset(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<InstanceIdsRequest>(&body)?.validate()?;
    let records = owned(&state, &caller.principal.tenant_id, &ids).await?;
    if let Some(down) = records.iter().find(|r| node_of(&state, r).is_none()) {
        return Err(ApiError::InvalidParameter(format!(
            "instance {} is unreachable",
            down.instance_id
        ))
        .into());
    }
    start_lifecycle(&state, records, Lifecycle::Reset).await?;
    Ok(ok_body())
}

/// BatchRebootInstance: every instance must be running (else 5005 and none reboots).
pub async fn batch_reboot(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<InstanceIdsRequest>(&body)?.validate()?;
    let records = owned(&state, &caller.principal.tenant_id, &ids).await?;
    let not_running: Vec<&str> = records
        .iter()
        .filter(|r| r.state != ControlState::RUNNING || node_of(&state, r).is_none())
        .map(|r| r.instance_id.as_str())
        .collect();
    if !not_running.is_empty() {
        return Err(ApiError::NotAllRunning(not_running.join(",")).into());
    }
    start_lifecycle(&state, records, Lifecycle::Reboot).await?;
    Ok(axum::Json(ErrorBody {
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}

/// AssignInstance: binds each instance to a user; an instance bound to someone else is 2209.
pub async fn assign(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let bindings = parse_json::<UserInstancesRequest>(&body)?.validate()?;
    let ids: Vec<String> = bindings.iter().map(|b| b.instance_id.clone()).collect();
    let records = owned(&state, &caller.principal.tenant_id, &ids).await?;
    for (binding, record) in bindings.iter().zip(&records) {
        if record
            .assign_user
            .as_deref()
            .is_some_and(|u| u != binding.user_id)
        {
            return Err(ApiError::NoAssignableDevice(record.instance_id.clone()).into());
        }
    }
    let now = crate::unix_ms();
    for binding in &bindings {
        state
            .store
            .set_assign_user(&binding.instance_id, Some(&binding.user_id), now)
            .await?;
    }
    Ok(ok_body())
}

/// UnassignInstance: removes each binding (2210 if it does not exist) and wipes the user's data.
pub async fn unassign(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let bindings = parse_json::<UserInstancesRequest>(&body)?.validate()?;
    let ids: Vec<String> = bindings.iter().map(|b| b.instance_id.clone()).collect();
    let records = owned(&state, &caller.principal.tenant_id, &ids).await?;
    for (binding, record) in bindings.iter().zip(&records) {
        if record.assign_user.as_deref() != Some(binding.user_id.as_str()) {
            return Err(ApiError::BindingNotFound(format!(
                "{} / {}",
                binding.user_id, binding.instance_id
            ))
            .into());
        }
    }
    let now = crate::unix_ms();
    for binding in &bindings {
        state
            .store
            .set_assign_user(&binding.instance_id, None, now)
            .await?;
    }
    // "调用后会清除用户云机使用数据": the user's data goes with the binding.
    let reachable: Vec<InstanceRecord> = records
        .into_iter()
        .filter(|r| node_of(&state, r).is_some())
        .collect();
    start_lifecycle(&state, reachable, Lifecycle::Reset).await?;
    Ok(ok_body())
}

/// DeleteInstance: unsubscribes instances; the node removes them and all their data.
pub async fn delete(
    state: AppStateRef,
    caller: TokenCaller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<DeleteRequest>(&body)?.validate()?;
    let records = owned(&state, &caller.principal.tenant_id, &ids).await?;
    for record in &records {
        if let Some(mut client) = node_of(&state, record) {
            let target = pb::InstanceRef {
                instance_id: record.instance_id.clone(),
            };
            if let Err(status) = client.delete_instance(target).await {
                tracing::warn!(instance_id = %record.instance_id, %status, "node delete failed; reconciled on its next announcement");
            }
        }
        // A node that was down drops the instance when it next announces it (see `nodes`).
        state.store.delete_instance(&record.instance_id).await?;
    }
    let ok = ErrorBody {
        error_code: "0".into(),
        error_msg: "OK".into(),
    };
    Ok(axum::Json(NullDataResponse {
        data: None,
        error_code: ok.error_code,
        error_msg: ok.error_msg,
    })
    .into_response())
}

/// StopInstancesStreaming / ReleaseInstancesSession: act on the node's live sessions.
async fn session_call(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
    release: bool,
) -> Result<Response, ApiFailure> {
    let id = parse_json::<InstanceIdRequest>(&body)?.validate()?;
    let record = owned(
        &state,
        &caller.principal.tenant_id,
        std::slice::from_ref(&id),
    )
    .await?
    .remove(0);
    let Some(mut client) = node_of(&state, &record) else {
        // An unreachable node streams nothing; there is nothing to stop.
        return Ok(axum::Json(ErrorBody {
            error_code: "0".into(),
            error_msg: "OK".into(),
        })
        .into_response());
    };
    let target = pb::InstanceRef { instance_id: id };
    let outcome = if release {
        client.release_session(target).await.map(|_| ())
    } else {
        client.stop_streaming(target).await.map(|_| ())
    };
    if let Err(status) = outcome {
        tracing::error!(%status, "node session call failed");
        return Err(ApiError::Internal.into());
    }
    Ok(axum::Json(ErrorBody {
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}

pub async fn stop_streaming(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    session_call(state, caller, body, false).await
}

pub async fn release_session(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    session_call(state, caller, body, true).await
}

/// How long a device token lets a viewer stream.
const DEVICE_TOKEN_TTL_SECS: i64 = 3600;

/// GetDeviceToken: a fresh random token bound to this instance and user, registered with the
/// instance's node (which only learns its SHA-256), and where to present it.
pub async fn device_token(
    state: AppStateRef,
    caller: TokenCaller,
    Path(instance_id): Path<String>,
) -> Result<Response, ApiFailure> {
    wire::validate_instance_id("instance_id", &instance_id)?;
    let record = owned(
        &state,
        &caller.principal.tenant_id,
        std::slice::from_ref(&instance_id),
    )
    .await?
    .remove(0);
    let Some(mut client) = node_of(&state, &record) else {
        return Err(ApiError::Internal.into());
    };
    // The node may have restarted since SetVideoConfig: send the tenant's matrix first.
    if let Some(config) = stored_video_config(&state, &instance_id).await?
        && let Err(status) = push_video_config(&mut client, &instance_id, &config).await
    {
        tracing::warn!(%status, "video config not pushed before the session");
    }
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let device_token = hex::encode(bytes);
    let device_id = new_id();
    let expires_at = crate::unix_ms() + DEVICE_TOKEN_TTL_SECS * 1000;
    let started = client
        .start_session(pb::StartSessionRequest {
            instance_id: instance_id.clone(),
            device_token_sha256: hex::encode(Sha256::digest(device_token.as_bytes())),
            expires_at_unix_ms: expires_at,
            user_id: caller.principal.user_id.clone(),
            tenant_id: caller.principal.tenant_id.clone(),
            device_id: device_id.clone(),
        })
        .await
        .map_err(|status| {
            tracing::error!(%status, "node refused StartSession");
            ApiFailure(ApiError::Internal)
        })?
        .into_inner();
    let host = url_host(&started.signaling_url);
    let empty = SdkAddress {
        address: None,
        aport: None,
        atype: None,
        address_ipv6: None,
    };
    let data = DeviceTokenData {
        resource: DeviceResource {
            sdk: Sdk {
                internal: empty.clone(),
                external: SdkAddress {
                    address: host,
                    ..empty
                },
            },
            rtc: Rtc {
                ice_signaling: IceSignaling {
                    signaling_url: started.signaling_url,
                    expired_time: Some(DEVICE_TOKEN_TTL_SECS.to_string()),
                    ice_servers: started.ice_servers,
                },
            },
            device_id,
            kp_id: instance_id,
        },
        device_token,
    };
    Ok(axum::Json(DataResponse::ok(data)).into_response())
}

/// The stored matrix as the node API carries it.
fn video_profiles(config: &VideoConfig) -> Vec<pb::VideoProfile> {
    let mut profiles = Vec::new();
    for network in NetworkType::ALL {
        for codec in Codec::ALL {
            let specs = Definition::ALL
                .iter()
                .map(|definition| {
                    let spec = config.get(network, codec, *definition);
                    pb::VideoSpec {
                        definition: definition.as_str().to_string(),
                        code_rate_kbps: spec.code_rate_kbps,
                        fps: spec.fps,
                    }
                })
                .collect();
            profiles.push(pb::VideoProfile {
                network_type: network.as_str().to_string(),
                encoding_type: codec.as_str().to_string(),
                specs,
            });
        }
    }
    profiles
}

/// Sends an instance's stored matrix to its node (live sessions adopt it at once).
async fn push_video_config(
    client: &mut NodeAgentClient<Channel>,
    instance_id: &str,
    config: &VideoConfig,
) -> Result<(), tonic::Status> {
    let request = pb::SetVideoConfigRequest {
        instance_id: instance_id.to_string(),
        profiles: video_profiles(config),
    };
    client.set_video_config(request).await.map(|_| ())
}

/// The instance's stored matrix, if SetVideoConfig was ever called for it.
async fn stored_video_config(
    state: &AppState,
    instance_id: &str,
) -> Result<Option<VideoConfig>, ApiFailure> {
    let json = state.store.video_config(instance_id).await?;
    if json.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(&json) {
        Ok(config) => Ok(Some(config)),
        Err(error) => {
            tracing::error!(instance_id, %error, "stored video config is unreadable");
            Err(ApiError::Internal.into())
        }
    }
}

/// SetVideoConfig: validates the full 6-combination matrix, stores it for every instance, and
/// pushes it to the nodes so live sessions change bitrate and fps without reconnecting.
pub async fn set_video_config(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<SetVideoConfigRequest>(&body)?;
    wire::validate_instance_ids("instance_ids", &request.instance_ids)?;
    let cells: Vec<VideoCell> = request
        .instance_settings
        .iter()
        .map(|s| VideoCell {
            network_type: s.network_type.clone(),
            encoding_type: s.encoding_type.clone(),
            specs: s.specs(),
        })
        .collect();
    let config = VideoConfig::from_cells(&cells).map_err(|error| match error {
        VideoConfigError::MissingCombination { .. } => {
            ApiError::MissingVideoCombination(error.to_string())
        }
        other => ApiError::InvalidParameter(other.to_string()),
    })?;
    let records = owned(&state, &caller.principal.tenant_id, &request.instance_ids).await?;
    let json = serde_json::to_string(&config).map_err(|_| ApiFailure(ApiError::Internal))?;
    state
        .store
        .set_video_config(&request.instance_ids, &json, crate::unix_ms())
        .await?;
    for record in &records {
        // A node that is down gets the matrix with the next GetDeviceToken.
        if let Some(mut client) = node_of(&state, record)
            && let Err(status) = push_video_config(&mut client, &record.instance_id, &config).await
        {
            tracing::warn!(instance_id = %record.instance_id, %status, "video config not pushed; sent with the next session");
        }
    }
    Ok(ok_body())
}

/// The host part of a URL, for the SDK address fields.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_host("ws://10.0.0.5:8090/v1/signaling").as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(
            url_host("wss://node.example.com/v1/signaling").as_deref(),
            Some("node.example.com")
        );
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn command_outcomes() {
        let ok = pb::CommandResult {
            exit_code: 0,
            stdout: "a".into(),
            ..Default::default()
        };
        assert_eq!(judge(&ok).0, JobStatus::Succeeded);
        let bad = pb::CommandResult {
            exit_code: 2,
            stderr: "no such file".into(),
            ..Default::default()
        };
        assert_eq!(
            judge(&bad),
            (JobStatus::Failed, "CPS.0191", "Run command failed.")
        );
        let slow = pb::CommandResult {
            exit_code: 0,
            timed_out: true,
            ..Default::default()
        };
        assert_eq!(judge(&slow).0, JobStatus::Failed);
        let both = pb::CommandResult {
            stdout: "out".into(),
            stderr: "err".into(),
            ..Default::default()
        };
        assert_eq!(execute_msg(&both), "out\nerr");
        let long = pb::CommandResult {
            stdout: "x".repeat(5000),
            ..Default::default()
        };
        assert_eq!(execute_msg(&long).len(), 1024);
    }
}
