//! BatchBackupInstances, BatchPrepareInstances and ShowProgress handlers, and ListInstances'
//! backup columns. The rules and the restore worker are `crate::service::lifecycle_data`.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use cloudphone_api::error::ApiError;
use cloudphone_api::instances::InstanceRow;
use cloudphone_api::management::{
    self as wire, BackupRequest, DataResponse, PrepareInstanceStatus as InstanceStatus,
    PrepareRequest, PrepareStatusList as StatusList, Progress, ProgressRequest, UserId,
};
use cloudphone_api::timefmt;
use serde::Serialize;

use super::{ApiFailure, AppStateRef, Caller, TokenCaller, parse_json};
use crate::AppState;
use crate::service::lifecycle_data;

/// Longest user id (tables 4-98 and 4-105).
const MAX_USER_ID_LEN: usize = 32;

fn ok<T: Serialize>(data: T) -> Response {
    axum::Json(DataResponse {
        data,
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response()
}

/// The seed example repeats an id; acting on it twice makes no sense, so repeats are dropped
/// (first occurrence kept) rather than refused.
fn dedupe(ids: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

fn user_id(user: UserId) -> Result<String, ApiFailure> {
    let user = user.into_string();
    if user.is_empty() || user.chars().count() > MAX_USER_ID_LEN {
        return Err(ApiError::InvalidParameter(format!(
            "user_id has 1..={MAX_USER_ID_LEN} characters"
        ))
        .into());
    }
    Ok(user)
}

/// BatchBackupInstances: the answer comes at once; the backups run in the background.
pub(super) async fn backup(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<BackupRequest>(&body)?;
    let mut ids = request.instance_ids.unwrap_or_default();
    ids.extend(request.instance_id);
    let ids = dedupe(ids);
    wire::validate_instance_ids("instance_ids", &ids)?;
    if let Some(user) = request.user_id {
        user_id(user)?;
    }
    lifecycle_data::backup(&state, &caller.principal, &ids).await?;
    Ok(axum::Json(cloudphone_api::error::ErrorBody {
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}

/// BatchPrepareInstances: binds the user and queues the backed-up instances; answers each
/// instance's status.
pub(super) async fn prepare(
    state: AppStateRef,
    caller: TokenCaller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<PrepareRequest>(&body)?;
    let user = user_id(request.user_id)?;
    let ids = dedupe(request.instance_ids);
    wire::validate_instance_ids("instance_ids", &ids)?;
    let statuses = lifecycle_data::prepare(&state, &caller.principal, &user, ids).await?;
    let status_list = statuses
        .into_iter()
        .map(|(instance_id, status)| InstanceStatus {
            instance_id,
            status: status as i32,
        })
        .collect();
    Ok(ok(StatusList { status_list }))
}

/// ShowProgress: where the instance is on its way to being streamable.
pub(super) async fn progress(
    state: AppStateRef,
    caller: TokenCaller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<ProgressRequest>(&body)?;
    let user = user_id(request.user_id)?;
    wire::validate_instance_id("instance_id", &request.instance_id)?;
    let (status, waiting_count) =
        lifecycle_data::progress(&state, &caller.principal, &user, request.instance_id).await?;
    Ok(ok(Progress {
        status: status as i32,
        waiting_count,
    }))
}

/// ListInstances' backup and restore columns (`running_status`, archived instances included, is
/// `cloudphone_core::instance::running_status`).
pub(super) async fn decorate_rows(
    state: &AppState,
    rows: &mut [InstanceRow],
) -> Result<(), ApiFailure> {
    let time = |ms: Option<i64>| ms.map(timefmt::format_unix_ms).unwrap_or_default();
    for row in rows {
        let Some(backup) = state.store.backup_state(&row.instance_id).await? else {
            continue;
        };
        row.backup_status = i32::try_from(backup.backup_status).unwrap_or(4);
        row.backup_time = time(backup.backup_time_ms);
        row.restore_status = i32::try_from(backup.restore_status).unwrap_or(4);
        row.restore_time = time(backup.restore_time_ms);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_are_dropped_in_order() {
        let ids = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(dedupe(ids), ["b", "a", "c"]);
    }
}
