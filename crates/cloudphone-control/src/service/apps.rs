//! InstallApp: a `ZGCA…` task with one job per instance; each job downloads, checks and
//! installs the package on the instance's node, and GetTask reports how it went.

use std::sync::Arc;

use cloudphone_api::apps::{INSTALL_TASK_PREFIX, InstallAppResult, InstallOrder};
use cloudphone_api::error::JobFailure;
use cloudphone_api::management::JobStatus;
use cloudphone_proto::node_v1 as pb;

use super::commands::{cmd_jobs, new_id, running_job};
use super::{ServiceError, node_of, owned};
use crate::AppState;
use crate::iam::Principal;
use crate::store::{InstanceRecord, JobRecord, TaskRecord};

/// The seed's code and message for each way an installation can fail.
fn failure_code(failure: pb::InstallFailure) -> (&'static str, &'static str) {
    let failure = match failure {
        pb::InstallFailure::None => return ("", ""),
        pb::InstallFailure::Download | pb::InstallFailure::Checksum | pb::InstallFailure::Size => {
            JobFailure::DownloadFailed
        }
        pb::InstallFailure::NoSpace => JobFailure::NoSpace,
        pb::InstallFailure::VersionConflict => JobFailure::VersionConflict,
        pb::InstallFailure::Install => JobFailure::InstallFailed,
    };
    (failure.code(), failure.message())
}

/// InstallApp: one `ZGCA…` task with a job per instance, recorded in one transaction; the
/// installs run in the background and GetTask reports them.
pub(crate) async fn install(
    state: &Arc<AppState>,
    principal: &Principal,
    order: InstallOrder,
) -> Result<InstallAppResult, ServiceError> {
    let records = owned(state, principal, &order.instance_ids).await?;
    let task_id = format!("{INSTALL_TASK_PREFIX}{}", new_id());
    let now = crate::unix_ms();
    let jobs: Vec<JobRecord> = records
        .iter()
        .map(|record| running_job(&task_id, record, now))
        .collect();
    let cmd_jobs = cmd_jobs(&jobs);
    state
        .store
        .insert_task(&TaskRecord {
            task_id: task_id.clone(),
            tenant_id: principal.tenant_id.clone(),
            project_id: principal.project_id.clone(),
            kind: "install".into(),
            created_at_ms: now,
            jobs: jobs.clone(),
        })
        .await?;
    tracing::info!(task_id, object = %order.object_name, version = %order.object_version, fast = order.fast, "install ordered");
    tokio::spawn(run_jobs(Arc::clone(state), order, records, jobs));
    Ok(InstallAppResult { cmd_jobs, task_id })
}

/// Installs on every instance at once and records each outcome in its job.
async fn run_jobs(
    state: Arc<AppState>,
    order: InstallOrder,
    records: Vec<InstanceRecord>,
    jobs: Vec<JobRecord>,
) {
    let runs = records.into_iter().zip(jobs).map(|(record, mut job)| {
        let state = Arc::clone(&state);
        let order = order.clone();
        async move {
            let outcome = match node_of(&state, &record) {
                Some(mut client) => client
                    .install_app(pb::InstallAppRequest {
                        instance_id: record.instance_id.clone(),
                        package_url: order.url.clone(),
                        md5: order.md5.clone(),
                        // The order's `object_size`: the node refuses a package outside it.
                        size: Some(pb::SizeRange {
                            min_bytes: order.size.min_bytes,
                            max_bytes: order.size.max_bytes,
                        }),
                    })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string()),
                None => Err("the instance's host is down".to_string()),
            };
            match outcome {
                Ok(answer) => {
                    let failure = pb::InstallFailure::try_from(answer.failure)
                        .unwrap_or(pb::InstallFailure::Install);
                    let (code, msg) = failure_code(failure);
                    job.status = if failure == pb::InstallFailure::None {
                        JobStatus::Succeeded
                    } else {
                        JobStatus::Failed
                    } as i64;
                    job.error_code = code.into();
                    job.error_msg = msg.into();
                    job.execute_msg = Some(if answer.message.is_empty() {
                        format!("installed {} {}", order.object_name, order.object_version)
                    } else {
                        answer.message
                    });
                }
                Err(detail) => {
                    job.status = JobStatus::Failed as i64;
                    job.error_code = JobFailure::InstanceAbnormal.code().into();
                    job.error_msg = JobFailure::InstanceAbnormal.message().into();
                    job.execute_msg = Some(detail);
                }
            }
            job.updated_at_ms = crate::unix_ms();
            if let Err(error) = state.store.update_job(&job).await {
                tracing::error!(job_id = %job.job_id, %error, "could not record install result");
            }
        }
    });
    futures::future::join_all(runs).await;
}
