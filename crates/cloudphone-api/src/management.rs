//! Instance management bodies (seed 001 §4.1, §4.2.3, §4.3.4–5): commands, tasks, status, reset,
//! reboot, assignment, deletion, device tokens, streaming stop and session release.

use serde::{Deserialize, Serialize};

use cloudphone_core::instance::InstanceId;

use crate::error::{ApiError, ErrorBody};

/// Most instances one request may name.
pub const MAX_INSTANCES_PER_REQUEST: usize = 100;
/// Longest instance id.
pub use cloudphone_core::instance::MAX_INSTANCE_ID_LEN;
/// Longest command, in bytes.
pub const MAX_COMMAND_BYTES: usize = 1024;
/// Longest `execute_msg`, in bytes.
pub const MAX_EXECUTE_MSG_BYTES: usize = 1024;

/// Checks a list of instance ids: 1..=100 valid ids, no duplicates.
pub fn validate_instance_ids(field: &str, ids: &[String]) -> Result<(), ApiError> {
    if ids.is_empty() || ids.len() > MAX_INSTANCES_PER_REQUEST {
        return Err(ApiError::InvalidParameter(format!(
            "{field} must hold 1..={MAX_INSTANCES_PER_REQUEST} instance ids"
        )));
    }
    for id in ids {
        validate_instance_id(field, id)?;
    }
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(ApiError::InvalidParameter(format!(
            "{field} repeats an instance id"
        )));
    }
    Ok(())
}

/// Checks one instance id against the one rule ids follow (`cloudphone_core::instance::InstanceId`).
pub fn validate_instance_id(field: &str, id: &str) -> Result<InstanceId, ApiError> {
    InstanceId::parse(id).map_err(|error| ApiError::InvalidParameter(format!("{field}: {error}")))
}

/// Checks a SyncCommand/AsyncCommand command: at most 1024 bytes of letters, digits, `_ . / : -`
/// and spaces (the seeds' charset, plus the spaces their own example uses).
pub fn validate_command(command: &str) -> Result<(), ApiError> {
    if command.trim().is_empty() || command.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::InvalidParameter(format!(
            "command must be 1..={MAX_COMMAND_BYTES} bytes"
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_./:- ".contains(c);
    if let Some(bad) = command.chars().find(|c| !allowed(*c)) {
        return Err(ApiError::InvalidParameter(format!(
            "command may hold letters, digits, '_', '.', '/', ':', '-' and spaces, not {bad:?}"
        )));
    }
    Ok(())
}

/// Cuts text to at most `max` bytes on a character boundary.
pub fn truncate_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// `{"instance_ids": [...]}` (BatchQueryStatus, BatchReset, BatchRebootInstance, …).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct InstanceIdsRequest {
    pub instance_ids: Vec<String>,
}

impl InstanceIdsRequest {
    pub fn validate(self) -> Result<Vec<String>, ApiError> {
        validate_instance_ids("instance_ids", &self.instance_ids)?;
        Ok(self.instance_ids)
    }
}

/// `{"command": "...", "instance_ids": [...]}` (SyncCommand, AsyncCommand).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CommandRequest {
    pub command: String,
    pub instance_ids: Vec<String>,
}

impl CommandRequest {
    pub fn validate(self) -> Result<Self, ApiError> {
        validate_command(&self.command)?;
        validate_instance_ids("instance_ids", &self.instance_ids)?;
        Ok(self)
    }
}

/// Task / command status: 1 running, 2 succeeded, -1 failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Running = 1,
    Succeeded = 2,
    Failed = -1,
}

/// One instance's SyncCommand result (table 4-5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CmdResult {
    pub instance_id: String,
    pub status: i32,
    pub error_code: String,
    pub error_msg: String,
    pub execute_msg: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CmdResultWrapper {
    pub cmd_results: Vec<CmdResult>,
}

/// Any `{"data": ..., "error_code": "0", "error_msg": "ok"}` success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataResponse<T> {
    pub data: T,
    pub error_code: String,
    pub error_msg: String,
}

impl<T> DataResponse<T> {
    pub fn ok(data: T) -> Self {
        let ok = ErrorBody::ok();
        Self {
            data,
            error_code: ok.error_code,
            error_msg: ok.error_msg,
        }
    }
}

/// AsyncCommand answer (tables 4-11, 4-12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AsyncCommandInfo {
    pub task_id: String,
    pub cmd_jobs: Vec<CmdJob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CmdJob {
    pub instance_id: String,
    pub job_id: String,
}

/// GetTask answer (tables 4-18, 4-19).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobDetailWrapper {
    pub jobs: Vec<JobDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobDetail {
    pub job_id: String,
    pub status: i32,
    pub error_code: String,
    pub error_msg: String,
    /// `null` while the job has not produced output.
    pub execute_msg: Option<String>,
}

/// BatchQueryStatus `status` (table 4-34); defined next to the rule that computes it.
pub use cloudphone_core::instance::PhoneStatus;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusResultWrapper {
    pub status_results: Vec<StatusResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusResult {
    pub instance_id: String,
    pub status: i32,
}

/// A user id as clients send it: the tables say String, the Unassign example sends a number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum UserId {
    Text(String),
    Number(u64),
}

impl UserId {
    pub fn into_string(self) -> String {
        match self {
            UserId::Text(text) => text,
            UserId::Number(n) => n.to_string(),
        }
    }
}

/// One `user_instances` entry (tables 4-54, 4-60).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct UserInstance {
    pub user_id: UserId,
    pub instance_id: String,
}

/// AssignInstance / UnassignInstance body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct UserInstancesRequest {
    pub user_instances: Vec<UserInstance>,
}

/// A validated (user, instance) binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub user_id: String,
    pub instance_id: String,
}

impl UserInstancesRequest {
    pub fn validate(self) -> Result<Vec<Binding>, ApiError> {
        if self.user_instances.is_empty() || self.user_instances.len() > MAX_INSTANCES_PER_REQUEST {
            return Err(ApiError::InvalidParameter(format!(
                "user_instances must hold 1..={MAX_INSTANCES_PER_REQUEST} entries"
            )));
        }
        let bindings: Vec<Binding> = self
            .user_instances
            .into_iter()
            .map(|ui| Binding {
                user_id: ui.user_id.into_string(),
                instance_id: ui.instance_id,
            })
            .collect();
        for binding in &bindings {
            validate_instance_id("user_instances.instance_id", &binding.instance_id)?;
            if binding.user_id.is_empty() || binding.user_id.chars().count() > 32 {
                return Err(ApiError::InvalidParameter(
                    "user_instances.user_id has 1..=32 characters".into(),
                ));
            }
        }
        let ids: Vec<String> = bindings.iter().map(|b| b.instance_id.clone()).collect();
        validate_instance_ids("user_instances.instance_id", &ids)?;
        Ok(bindings)
    }
}

/// DeleteInstance body (table 4-94).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequest {
    pub instance_id_list: Vec<String>,
}

impl DeleteRequest {
    pub fn validate(self) -> Result<Vec<String>, ApiError> {
        validate_instance_ids("instanceIdList", &self.instance_id_list)?;
        Ok(self.instance_id_list)
    }
}

/// `{"data": null, "error_code": "0", "error_msg": "OK"}` (DeleteInstance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NullDataResponse {
    pub data: Option<String>,
    pub error_code: String,
    pub error_msg: String,
}

/// `{"instance_id": "..."}` (StopInstancesStreaming, ReleaseInstancesSession).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct InstanceIdRequest {
    pub instance_id: String,
}

impl InstanceIdRequest {
    pub fn validate(self) -> Result<String, ApiError> {
        validate_instance_id("instance_id", &self.instance_id)?;
        Ok(self.instance_id)
    }
}

/// GetDeviceToken's optional body, an extension (docs/api-notes.md): `{"role": "owner"}` or
/// `{"role": "observer"}`. The seed's GetDeviceToken has no body; without one, or without
/// `role`, the token is an owner's, as before.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct DeviceTokenRequest {
    /// `owner` (drives the phone) or `observer` (view only); absent: `owner`.
    #[serde(default)]
    pub role: Option<String>,
    /// A device token of this user, instance and role that is still live: extend it instead of
    /// minting a new one (an extension, docs/api-notes.md). The answer carries the same token
    /// with a new `expired_time`; absent: a new token, as before.
    #[serde(default)]
    pub renew: Option<String>,
}

impl DeviceTokenRequest {
    /// The role asked for; anything but the two spellings is `KOOPHONE.API.1000`.
    pub fn validate(self) -> Result<cloudphone_core::role::Role, ApiError> {
        match self.role {
            None => Ok(cloudphone_core::role::Role::default()),
            Some(role) => cloudphone_core::role::Role::parse(&role)
                .map_err(|e| ApiError::InvalidParameter(e.to_string())),
        }
    }

    /// The token to renew, if asked: one GetDeviceToken could have minted (32 lowercase hex
    /// digits), else `KOOPHONE.API.1000`.
    pub fn renewal(&self) -> Result<Option<String>, ApiError> {
        match &self.renew {
            None => Ok(None),
            Some(token)
                if token.len() == 32
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Some(token.clone()))
            }
            Some(_) => Err(ApiError::InvalidParameter(
                "renew must be a device token (32 hex digits)".into(),
            )),
        }
    }
}

/// GetDeviceToken `data` (tables 4-44..4-50). `Debug` leaves the token out.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceTokenData {
    pub resource: DeviceResource,
    pub device_token: String,
}

impl std::fmt::Debug for DeviceTokenData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTokenData {{ resource: {:?}, .. }}", self.resource)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceResource {
    pub sdk: Sdk,
    pub rtc: Rtc,
    pub device_id: String,
    pub kp_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sdk {
    pub internal: SdkAddress,
    pub external: SdkAddress,
}

/// Address of the (vendor) SDK endpoint; cloudphone streams over WebRTC, so the fields are the
/// signaling host and nulls where the vendor's audio-port scheme has no counterpart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SdkAddress {
    pub address: Option<String>,
    pub aport: Option<u32>,
    pub atype: Option<u32>,
    pub address_ipv6: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rtc {
    pub ice_signaling: IceSignaling,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IceSignaling {
    pub signaling_url: String,
    /// Seconds the token allows streaming for, as a string (table 4-50).
    pub expired_time: Option<String>,
    pub ice_servers: Vec<String>,
}

/// SetVideoConfig body (tables 4-23..4-26).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SetVideoConfigRequest {
    pub instance_ids: Vec<String>,
    pub instance_settings: Vec<InstanceSetting>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct InstanceSetting {
    pub network_type: String,
    pub encoding_type: String,
    pub video_spec_groups: Vec<VideoSpecGroup>,
}

/// One group of per-definition specs. Field names are the seeds', capital `P` included.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[allow(non_snake_case)]
pub struct VideoSpecGroup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_540P: Option<VideoSpecBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_720P: Option<VideoSpecBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_1080P: Option<VideoSpecBody>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct VideoSpecBody {
    /// kbit/s, 100..=10000 in steps of 100.
    pub code_rate: u32,
    /// 30 or 60.
    pub fps: u32,
}

impl InstanceSetting {
    /// Every `(definition, code_rate, fps)` this setting names, across all of its groups.
    pub fn specs(&self) -> Vec<(String, u32, u32)> {
        let mut specs = Vec::new();
        for group in &self.video_spec_groups {
            for (name, spec) in [
                ("540P", &group.definition_540P),
                ("720P", &group.definition_720P),
                ("1080P", &group.definition_1080P),
            ] {
                if let Some(spec) = spec {
                    specs.push((name.to_string(), spec.code_rate, spec.fps));
                }
            }
        }
        specs
    }
}

/// BatchBackupInstances body: the table's `instance_ids`, or the example's `user_id` +
/// `instance_id` (see `docs/api-notes.md`); both may be given.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct BackupRequest {
    #[serde(default)]
    pub instance_ids: Option<Vec<String>>,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<UserId>,
}

/// BatchPrepareInstances body (table 4-98).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PrepareRequest {
    pub user_id: UserId,
    pub instance_ids: Vec<String>,
}

/// ShowProgress body (table 4-105).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ProgressRequest {
    pub user_id: UserId,
    pub instance_id: String,
}

/// InstanceStatusWrapper (table 4-100).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PrepareStatusList {
    pub status_list: Vec<PrepareInstanceStatus>,
}

/// InstanceStatus (table 4-101).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PrepareInstanceStatus {
    pub instance_id: String,
    pub status: i32,
}

/// ShowProgress `data` (table 4-107).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub status: i32,
    #[serde(rename = "waitingCount")]
    pub waiting_count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_follow_the_charset_and_size() {
        assert!(validate_command("ls -l /system").is_ok());
        assert!(validate_command("getprop ro.build.version:x_y").is_ok());
        for bad in [
            "",
            "   ",
            "ls; rm -rf /",
            "echo $HOME",
            "a|b",
            "cat `x`",
            "x&y",
            "a\nb",
            "ü",
        ] {
            assert_eq!(
                validate_command(bad).unwrap_err().code(),
                "KOOPHONE.API.1000",
                "{bad:?}"
            );
        }
        assert!(validate_command(&"a".repeat(1024)).is_ok());
        assert!(validate_command(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn instance_id_lists() {
        let ids = |n: usize| (0..n).map(|i| format!("i{i}")).collect::<Vec<_>>();
        assert!(validate_instance_ids("x", &ids(100)).is_ok());
        assert!(validate_instance_ids("x", &ids(101)).is_err());
        assert!(validate_instance_ids("x", &[]).is_err());
        assert!(validate_instance_ids("x", &["a".repeat(33)]).is_err());
        assert!(validate_instance_ids("x", &["a".into(), "a".into()]).is_err());
    }

    #[test]
    fn user_ids_may_be_numbers() {
        let body: UserInstancesRequest = serde_json::from_value(
            json!({"user_instances": [{"instance_id": "a44uhlf7", "user_id": 1123422}]}),
        )
        .unwrap();
        let bindings = body.validate().unwrap();
        assert_eq!(bindings[0].user_id, "1123422");
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes("héllo", 3), "hé");
        assert_eq!(truncate_bytes("abc", 10), "abc");
    }
}
