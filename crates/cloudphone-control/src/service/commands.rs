//! Commands and tasks: SyncCommand, AsyncCommand and GetTask. A job's failure carries the
//! vendor's code from `cloudphone_api::error::JobFailure`; GetTask polls the nodes for jobs
//! still running and stores what they answer.

use cloudphone_api::error::{ApiError, JobFailure};
use cloudphone_api::management::{
    self as wire, AsyncCommandInfo, CmdJob, CmdResult, CommandRequest, JobStatus,
};
use cloudphone_proto::node_v1 as pb;

use super::{ServiceError, node_of, owned};
use crate::AppState;
use crate::iam::Principal;
use crate::store::{InstanceRecord, JobRecord, TaskRecord};

/// How long SyncCommand waits for each command.
const SYNC_COMMAND_TIMEOUT_MS: u32 = 30_000;
/// How long an AsyncCommand job may run.
const ASYNC_COMMAND_TIMEOUT_MS: u32 = 600_000;
/// A command that ran and failed.
const COMMAND_FAILED: (&str, &str) = (
    JobFailure::CommandFailed.code(),
    JobFailure::CommandFailed.message(),
);
/// The instance is not in a state to run anything (or its node is unreachable).
const INSTANCE_ABNORMAL: (&str, &str) = (
    JobFailure::InstanceAbnormal.code(),
    JobFailure::InstanceAbnormal.message(),
);

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

/// A fresh id for a task or a job.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A new job of `task_id` on the instance, running and not yet handed to its node.
pub(crate) fn running_job(task_id: &str, record: &InstanceRecord, now_ms: i64) -> JobRecord {
    JobRecord {
        job_id: new_id(),
        task_id: task_id.to_string(),
        instance_id: record.instance_id.clone(),
        node_id: record.node_id.clone(),
        node_job_id: String::new(),
        status: JobStatus::Running as i64,
        error_code: String::new(),
        error_msg: String::new(),
        execute_msg: None,
        updated_at_ms: now_ms,
    }
}

/// The task's jobs as the answer lists them.
pub(crate) fn cmd_jobs(jobs: &[JobRecord]) -> Vec<CmdJob> {
    jobs.iter()
        .map(|j| CmdJob {
            instance_id: j.instance_id.clone(),
            job_id: j.job_id.clone(),
        })
        .collect()
}

/// A tenant's SyncCommand runs counted against its quota while they are in flight; dropping it
/// gives them back, however the call ends.
struct InFlight<'a> {
    state: &'a AppState,
    tenant_id: String,
    runs: u32,
}

impl<'a> InFlight<'a> {
    /// Counts `runs` more for the tenant, or refuses (`APIGW.0308`, 429) past its quota.
    fn admit(state: &'a AppState, tenant_id: &str, runs: u32) -> Result<Self, ServiceError> {
        let quota = state.config.quotas.concurrent_commands_per_tenant;
        let mut in_flight = state
            .commands_in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let running = in_flight.entry(tenant_id.to_string()).or_default();
        if running.saturating_add(runs) > quota {
            let running = *running;
            return Err(ApiError::Throttled(format!(
                "{running} commands running; the tenant's limit is {quota}"
            ))
            .into());
        }
        *running += runs;
        Ok(Self {
            state,
            tenant_id: tenant_id.to_string(),
            runs,
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .state
            .commands_in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(running) = in_flight.get_mut(&self.tenant_id) {
            *running = running.saturating_sub(self.runs);
            if *running == 0 {
                in_flight.remove(&self.tenant_id);
            }
        }
    }
}

/// SyncCommand: runs the command on every instance at once and answers with all results.
/// The runs count against the tenant's `[quotas] concurrent_commands_per_tenant` meanwhile.
pub(crate) async fn sync_command(
    state: &AppState,
    principal: &Principal,
    request: CommandRequest,
) -> Result<Vec<CmdResult>, ServiceError> {
    let records = owned(state, principal, &request.instance_ids).await?;
    let runs = u32::try_from(records.len()).unwrap_or(u32::MAX);
    let _in_flight = InFlight::admit(state, &principal.tenant_id, runs)?;
    let runs = records.iter().map(|record| {
        let command = request.command.clone();
        let client = node_of(state, record);
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
    Ok(futures::future::join_all(runs).await)
}

/// AsyncCommand: starts the command on every instance's node and records one task.
pub(crate) async fn async_command(
    state: &AppState,
    principal: &Principal,
    request: CommandRequest,
) -> Result<AsyncCommandInfo, ServiceError> {
    let records = owned(state, principal, &request.instance_ids).await?;
    let task_id = new_id();
    let now = crate::unix_ms();
    let mut jobs = Vec::with_capacity(records.len());
    for record in &records {
        let mut job = running_job(&task_id, record, now);
        let started = match node_of(state, record) {
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
    let cmd_jobs = cmd_jobs(&jobs);
    let task = TaskRecord {
        task_id: task_id.clone(),
        tenant_id: principal.tenant_id.clone(),
        project_id: principal.project_id.clone(),
        kind: "command".into(),
        created_at_ms: now,
        jobs,
    };
    state.store.insert_task(&task).await?;
    Ok(AsyncCommandInfo { task_id, cmd_jobs })
}

/// Asks the node how a still-running job is doing; a node that lost the job fails it.
async fn refresh_job(state: &AppState, job: &mut JobRecord) -> Result<(), ServiceError> {
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

/// GetTask: the task's jobs (1323 for another tenant's), polling the nodes for the ones still
/// running.
pub(crate) async fn get_task(
    state: &AppState,
    principal: &Principal,
    task_id: String,
) -> Result<Vec<JobRecord>, ServiceError> {
    let mut task = match state.store.get_task(&task_id).await? {
        Some(task)
            if task.tenant_id == principal.tenant_id
                && (task.project_id.is_empty() || task.project_id == principal.project_id) =>
        {
            task
        }
        // Another tenant's or another project's task does not exist for this caller.
        _ => return Err(ApiError::TaskNotFound(task_id).into()),
    };
    for job in &mut task.jobs {
        refresh_job(state, job).await?;
    }
    Ok(task.jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
