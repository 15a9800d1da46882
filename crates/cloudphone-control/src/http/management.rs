//! Instance management handlers: SyncCommand, AsyncCommand, GetTask, BatchQueryStatus,
//! BatchReset, BatchRebootInstance, AssignInstance, UnassignInstance, DeleteInstance,
//! GetDeviceToken, StopInstancesStreaming and ReleaseInstancesSession.
//!
//! Every handler checks that *all* named instances belong to the caller's tenant before it acts
//! on any of them: another tenant's (or an unknown) instance is `KOOPHONE.API.1001` and nothing
//! changes.

use axum::body::Bytes;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use cloudphone_api::error::{ApiError, ErrorBody};
use cloudphone_api::management::SetVideoConfigRequest;
use cloudphone_api::management::{
    self as wire, CmdResultWrapper, CommandRequest, DataResponse, DeleteRequest, DeviceResource,
    DeviceTokenData, DeviceTokenRequest, IceSignaling, InstanceIdRequest, InstanceIdsRequest,
    JobDetail, JobDetailWrapper, NullDataResponse, Rtc, Sdk, SdkAddress, StatusResult,
    StatusResultWrapper, UserInstancesRequest,
};
use cloudphone_core::video::{VideoCell, VideoConfig, VideoConfigError};

use super::{ApiFailure, AppStateRef, Caller, TokenCaller, parse_json};
use crate::service::commands;
use crate::service::management;
use crate::service::sessions::{self, DeviceSession, SessionCall};

/// The `"OK"`-spelled success body some operations answer with.
fn ok_upper() -> Response {
    axum::Json(ErrorBody {
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response()
}

fn ok_body() -> Response {
    axum::Json(ErrorBody {
        error_code: "0".into(),
        error_msg: "ok".into(),
    })
    .into_response()
}

/// SyncCommand: runs the command on every instance at once and answers with all results.
pub(super) async fn sync_command(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<CommandRequest>(&body)?.validate()?;
    let cmd_results = commands::sync_command(&state, &caller.principal, request).await?;
    Ok(axum::Json(DataResponse::ok(CmdResultWrapper { cmd_results })).into_response())
}

/// AsyncCommand: starts the command on every instance's node and records one task.
pub(super) async fn async_command(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<CommandRequest>(&body)?.validate()?;
    let info = commands::async_command(&state, &caller.principal, request).await?;
    Ok(axum::Json(DataResponse::ok(info)).into_response())
}

/// GetTask: the task's jobs, polling the nodes for the ones still running.
pub(super) async fn get_task(
    state: AppStateRef,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Response, ApiFailure> {
    if task_id.is_empty() || task_id.len() > 64 {
        return Err(ApiError::InvalidParameter("task_id has 1..=64 characters".into()).into());
    }
    let jobs = commands::get_task(&state, &caller.principal, task_id)
        .await?
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

/// BatchQueryStatus.
pub(super) async fn batch_query_status(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<InstanceIdsRequest>(&body)?.validate()?;
    let statuses = management::query_status(&state, &caller.principal, &ids).await?;
    let status_results = statuses
        .into_iter()
        .map(|(instance_id, status)| StatusResult {
            instance_id,
            status: status as i32,
        })
        .collect();
    Ok(axum::Json(DataResponse::ok(StatusResultWrapper { status_results })).into_response())
}

/// BatchReset: wipes each instance's data and restarts it; `running_status` shows 4 meanwhile.
pub(super) async fn batch_reset(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<InstanceIdsRequest>(&body)?.validate()?;
    management::reset(&state, &caller.principal, &ids).await?;
    Ok(ok_body())
}

/// BatchRebootInstance: every instance must be running (else 5005 and none reboots).
pub(super) async fn batch_reboot(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<InstanceIdsRequest>(&body)?.validate()?;
    management::reboot(&state, &caller.principal, &ids).await?;
    Ok(axum::Json(ErrorBody {
        error_code: "0".into(),
        error_msg: "OK".into(),
    })
    .into_response())
}

/// AssignInstance: binds each instance to a user; an instance bound to someone else is 2209.
pub(super) async fn assign(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let bindings = parse_json::<UserInstancesRequest>(&body)?.validate()?;
    management::assign(&state, &caller.principal, &bindings).await?;
    Ok(ok_body())
}

/// UnassignInstance: removes each binding (2210 if it does not exist) and wipes the user's data.
pub(super) async fn unassign(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let bindings = parse_json::<UserInstancesRequest>(&body)?.validate()?;
    management::unassign(&state, &caller.principal, &bindings).await?;
    Ok(ok_body())
}

/// DeleteInstance: unsubscribes instances; the node removes them and all their data.
pub(super) async fn delete(
    state: AppStateRef,
    caller: TokenCaller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let ids = parse_json::<DeleteRequest>(&body)?.validate()?;
    management::delete(&state, &caller.principal, &ids).await?;
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

/// StopInstancesStreaming.
pub(super) async fn stop_streaming(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let id = parse_json::<InstanceIdRequest>(&body)?.validate()?;
    let call = SessionCall::StopStreaming;
    sessions::session_call(&state, &caller.principal, id, call).await?;
    Ok(ok_upper())
}

/// ReleaseInstancesSession.
pub(super) async fn release_session(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let id = parse_json::<InstanceIdRequest>(&body)?.validate()?;
    let call = SessionCall::Release;
    sessions::session_call(&state, &caller.principal, id, call).await?;
    Ok(ok_upper())
}

/// GetDeviceToken: the token, and where to present it.
pub(super) async fn device_token(
    state: AppStateRef,
    caller: TokenCaller,
    Path(instance_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    wire::validate_instance_id("instance_id", &instance_id)?;
    // The seed's call has no body: an empty one is today's owner token (docs/api-notes.md).
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        DeviceTokenRequest::default()
    } else {
        parse_json::<DeviceTokenRequest>(&body)?
    };
    let renew = request.renewal()?;
    let role = request.validate()?;
    let session = match renew {
        Some(token) => {
            sessions::renew_device_token(
                &state,
                &caller.principal,
                instance_id.clone(),
                role,
                token,
            )
            .await?
        }
        None => {
            sessions::device_token(&state, &caller.principal, instance_id.clone(), role).await?
        }
    };
    Ok(axum::Json(DataResponse::ok(device_token_data(session, instance_id))).into_response())
}

/// GetDeviceToken's `atype` for the one audio transport there is: the instance's sound is an
/// Opus track (48 kHz stereo, 10 ms frames) in the same WebRTC connection as the video,
/// negotiated over the signaling socket at `aport` (docs/api-notes.md).
const ATYPE_OPUS_IN_WEBRTC: u32 = 1;

/// GetDeviceToken's `data`: the SDK's external address is the signaling host, its `aport` the
/// signaling port (where the audio, like the video, is negotiated).
fn device_token_data(session: DeviceSession, instance_id: String) -> DeviceTokenData {
    let empty = SdkAddress {
        address: None,
        aport: None,
        atype: None,
        address_ipv6: None,
    };
    DeviceTokenData {
        resource: DeviceResource {
            sdk: Sdk {
                internal: empty.clone(),
                external: SdkAddress {
                    address: url_host(&session.signaling_url),
                    aport: url_port(&session.signaling_url),
                    atype: Some(ATYPE_OPUS_IN_WEBRTC),
                    ..empty
                },
            },
            rtc: Rtc {
                ice_signaling: IceSignaling {
                    signaling_url: session.signaling_url,
                    expired_time: Some(session.expired_time_secs.to_string()),
                    ice_servers: session.ice_servers,
                },
            },
            device_id: session.device_id,
            kp_id: instance_id,
        },
        device_token: session.device_token,
    }
}

/// SetVideoConfig: the full 6-combination matrix (1005 when one is missing) for every instance.
pub(super) async fn set_video_config(
    state: AppStateRef,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let request = parse_json::<SetVideoConfigRequest>(&body)?;
    wire::validate_instance_ids("instance_ids", &request.instance_ids)?;
    let config = video_config(&request)?;
    sessions::set_video_config(&state, &caller.principal, &request.instance_ids, &config).await?;
    Ok(ok_body())
}

/// Parses SetVideoConfig's settings into the matrix.
fn video_config(request: &SetVideoConfigRequest) -> Result<VideoConfig, ApiError> {
    let cells: Vec<VideoCell> = request
        .instance_settings
        .iter()
        .map(|s| VideoCell {
            network_type: s.network_type.clone(),
            encoding_type: s.encoding_type.clone(),
            specs: s.specs(),
        })
        .collect();
    VideoConfig::from_cells(&cells).map_err(|error| match error {
        VideoConfigError::MissingCombination { .. } => {
            ApiError::MissingVideoCombination(error.to_string())
        }
        other => ApiError::InvalidParameter(other.to_string()),
    })
}

/// The host part of a URL, for the SDK address fields.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_string())
}

/// The port of a `ws(s)://` or `http(s)://` URL, the scheme's default when it names none.
fn url_port(url: &str) -> Option<u32> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    // After an IPv6 literal's closing bracket, or after the host.
    let tail = authority.rsplit_once(']').map_or(authority, |(_, t)| t);
    match tail.rsplit_once(':') {
        Some((_, port)) => port.parse::<u16>().ok().map(u32::from),
        None => match scheme {
            "ws" | "http" => Some(80),
            "wss" | "https" => Some(443),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_urls() {
        assert_eq!(url_port("ws://10.0.0.5:8090/v1/signaling"), Some(8090));
        assert_eq!(url_port("wss://node.example.com/v1/signaling"), Some(443));
        assert_eq!(url_port("ws://[fd00::2]:9000/v1/signaling"), Some(9000));
        assert_eq!(url_port("ws://[fd00::2]/v1/signaling"), Some(80));
        assert_eq!(url_port("ws://host:99999/"), None);
        assert_eq!(url_port("nonsense"), None);
    }

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
}
