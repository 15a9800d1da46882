//! Error codes of the CloudDevice API (seed 001, appendix 6.2). The HTTP status each is sent
//! with on each operation is [`crate::status`]'s one rule.

use serde::{Deserialize, Serialize};

/// One error the tenant API can answer with. The `Display` text becomes `error_msg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[non_exhaustive]
pub enum ApiError {
    /// `KOOPHONE.API.0002`: the `x-request-id` header is missing.
    #[error("missing request header x-request-id")]
    MissingRequestId,
    /// `KOOPHONE.API.0003`: the `x-request-id` header is not a usable id.
    #[error("invalid request header x-request-id")]
    InvalidRequestId,
    /// `KOOPHONE.API.1000`: a parameter has the wrong type, size or value.
    #[error("request parameter error: {0}")]
    InvalidParameter(String),
    /// `KOOPHONE.API.1001`: the instance does not exist or belongs to another tenant.
    #[error("no permission for instance {0}")]
    NoInstancePermission(String),
    /// `KOOPHONE.API.1005`: SetVideoConfig lacks one of the six network × encoding combinations.
    #[error("the request must contain all encoding and network combinations: {0}")]
    MissingVideoCombination(String),
    /// `KOOPHONE.API.1323`: no such task.
    #[error("task {0} does not exist")]
    TaskNotFound(String),
    /// `KPAPI.2209`: the instance cannot be assigned (already bound to another user).
    #[error("no assignable device: {0}")]
    NoAssignableDevice(String),
    /// `KOOPHONE.API.2210`: the user-instance binding to remove does not exist.
    #[error("user and instance binding does not exist: {0}")]
    BindingNotFound(String),
    /// `KOOPHONE.API.2005`: the instance is on its way back from its archive (backed up,
    /// queued or being restored).
    #[error("instance is being restored: {0}")]
    BeingRestored(String),
    /// `KOOPHONE.API.2006`: the instance's data is being backed up.
    #[error("instance is being backed up: {0}")]
    BeingBackedUp(String),
    /// `KOOPHONE.API.62010`: the instance is not in a state to do this (host down, starting,
    /// resetting, failed).
    #[error("cloud instance abnormal: {0}")]
    InstanceAbnormal(String),
    /// `KOOPHONE.API.5001`: on-demand instances cannot be deleted.
    #[error("on-demand instances cannot be deleted: {0}")]
    OnDemandNotDeletable(String),
    /// `KOOPHONE.API.5005`: not every instance is running.
    #[error("not all instances are running: {0}")]
    NotAllRunning(String),
    /// `KOOPHONE.API.3008`: `fast_install` is neither 0 nor 1.
    #[error("fast_install must be 0 or 1")]
    FastInstallInvalid,
    /// `KOOPHONE.API.62006`: the package size is not a number.
    #[error("object_size must be a number (MB): {0}")]
    AppSizeNotNumber(String),
    /// `KOOPHONE.API.62015`: the package is larger than 2 GB.
    #[error("the application package exceeds the 2G limit")]
    AppTooLarge,
    /// `KOOPHONE.API.5002`: a time parameter is not `yyyy-MM-dd HH:mm:ss`.
    #[error("time format error: {0}")]
    TimeFormat(String),
    /// `KOOPHONE.API.5004`: the query end time is before its start time.
    #[error("query end time is earlier than query start time")]
    EndBeforeStart,
    /// `KOOPHONE.API.3001`: the instance SKU does not go with the bandwidth SKU.
    #[error("instance sku must match band sku: {0}")]
    SkuMismatch(String),
    /// `KOOPHONE.API.3002`: no such SKU or region.
    #[error("no such sku or region: {0}")]
    NoSuchSkuOrRegion(String),
    /// `KOOPHONE.API.3003`: a general instance needs an OS image version.
    #[error("os is required and must be AOSP9 or AOSP11")]
    OsRequired,
    /// `KOOPHONE.API.3006`: monthly periods run 1..=9.
    #[error("period num must be 1-9 when period type is month")]
    MonthPeriodRange,
    /// `KOOPHONE.API.3007`: yearly periods run 1..=3.
    #[error("period num must be 1-3 when period type is year")]
    YearPeriodRange,
    /// `KOOPHONE.API.40010`: the fleet cannot hold the instances ordered.
    #[error("insufficient inventory: {0}")]
    InsufficientInventory(String),
    /// `APIGW.0308` (429): the tenant is over a rate or concurrency limit (seed 001's `429 Too
    /// Many Requests`, answered with API gateway's throttling code; docs/api-notes.md).
    #[error("The throttling threshold has been reached: {0}")]
    Throttled(String),
    /// `KOOPHONE.API.6001`: neither a valid, unexpired token nor a valid AK/SK signature.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// `KOOPHONE.API.6002` (403, "没有许可"): authenticated, but not for a project this call
    /// may act in (an AK naming another tenant's project, a domain-scoped token).
    #[error("no permission: {0}")]
    NoPermission(String),
    /// `KOOPHONE.API.9999`: anything the tenant cannot fix. Details go to the log, not the body.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The `error_code` string, exactly as the seeds spell it.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingRequestId => "KOOPHONE.API.0002",
            ApiError::InvalidRequestId => "KOOPHONE.API.0003",
            ApiError::InvalidParameter(_) => "KOOPHONE.API.1000",
            ApiError::NoInstancePermission(_) => "KOOPHONE.API.1001",
            ApiError::MissingVideoCombination(_) => "KOOPHONE.API.1005",
            ApiError::TaskNotFound(_) => "KOOPHONE.API.1323",
            ApiError::NoAssignableDevice(_) => "KPAPI.2209",
            ApiError::BindingNotFound(_) => "KOOPHONE.API.2210",
            ApiError::BeingRestored(_) => "KOOPHONE.API.2005",
            ApiError::BeingBackedUp(_) => "KOOPHONE.API.2006",
            ApiError::InstanceAbnormal(_) => "KOOPHONE.API.62010",
            ApiError::OnDemandNotDeletable(_) => "KOOPHONE.API.5001",
            ApiError::NotAllRunning(_) => "KOOPHONE.API.5005",
            ApiError::FastInstallInvalid => "KOOPHONE.API.3008",
            ApiError::AppSizeNotNumber(_) => "KOOPHONE.API.62006",
            ApiError::AppTooLarge => "KOOPHONE.API.62015",
            ApiError::TimeFormat(_) => "KOOPHONE.API.5002",
            ApiError::EndBeforeStart => "KOOPHONE.API.5004",
            ApiError::SkuMismatch(_) => "KOOPHONE.API.3001",
            ApiError::NoSuchSkuOrRegion(_) => "KOOPHONE.API.3002",
            ApiError::OsRequired => "KOOPHONE.API.3003",
            ApiError::MonthPeriodRange => "KOOPHONE.API.3006",
            ApiError::YearPeriodRange => "KOOPHONE.API.3007",
            ApiError::InsufficientInventory(_) => "KOOPHONE.API.40010",
            ApiError::Throttled(_) => "APIGW.0308",
            ApiError::AuthenticationFailed => "KOOPHONE.API.6001",
            ApiError::NoPermission(_) => "KOOPHONE.API.6002",
            ApiError::Internal => "KOOPHONE.API.9999",
        }
    }

    /// The status the document gives this code before any operation's page applies (appendix
    /// 6.2); [`crate::status::status`] is what an operation sends it with.
    pub fn http_status(&self) -> u16 {
        crate::status::documented_status(self.code()).unwrap_or(400)
    }

    /// The response body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error_code: self.code().to_string(),
            error_msg: self.to_string(),
        }
    }
}

/// `{"error_code": "...", "error_msg": "..."}`, the body of every error and of plain successes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error_code: String,
    pub error_msg: String,
}

impl ErrorBody {
    /// The success body: `{"error_code":"0","error_msg":"ok"}`.
    pub fn ok() -> Self {
        Self {
            error_code: "0".into(),
            error_msg: "ok".into(),
        }
    }
}

/// Why one job of an asynchronous task (AsyncCommand, InstallApp) failed, as GetTask shows it
/// in the job's `error_code` and `error_msg`. Not an HTTP error: the GetTask call itself succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFailure {
    /// `CPS.0191`: the command ran and failed (seed example).
    CommandFailed,
    /// `KOOPHONE.API.62010`: the instance is not in a state to run anything.
    InstanceAbnormal,
    /// `KOOPHONE.API.62017`: the package could not be downloaded or failed its checks.
    DownloadFailed,
    /// `KOOPHONE.API.62019`: the package did not install.
    InstallFailed,
    /// `KOOPHONE.API.62020`: an installed version conflicts.
    VersionConflict,
    /// `KOOPHONE.API.62021`: the instance has no room for the package.
    NoSpace,
}

impl JobFailure {
    /// The job's `error_code`, as the seeds spell it.
    pub const fn code(self) -> &'static str {
        match self {
            JobFailure::CommandFailed => "CPS.0191",
            JobFailure::InstanceAbnormal => "KOOPHONE.API.62010",
            JobFailure::DownloadFailed => "KOOPHONE.API.62017",
            JobFailure::InstallFailed => "KOOPHONE.API.62019",
            JobFailure::VersionConflict => "KOOPHONE.API.62020",
            JobFailure::NoSpace => "KOOPHONE.API.62021",
        }
    }

    /// The job's usual `error_msg`.
    pub const fn message(self) -> &'static str {
        match self {
            JobFailure::CommandFailed => "Run command failed.",
            JobFailure::InstanceAbnormal => "cloud instance abnormal",
            JobFailure::DownloadFailed => "download failed, check install_package_url",
            JobFailure::InstallFailed => "install app failed",
            JobFailure::VersionConflict => "version conflict",
            JobFailure::NoSpace => "insufficient space",
        }
    }
}

/// Checks an `x-request-id` value: printable ASCII, 1..=128 characters.
pub fn validate_request_id(value: Option<&str>) -> Result<(), ApiError> {
    let value = value.ok_or(ApiError::MissingRequestId)?;
    let usable =
        !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    if usable {
        Ok(())
    } else {
        Err(ApiError::InvalidRequestId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_follow_the_appendix() {
        let s = || "x".to_string();
        let cases = [
            (ApiError::MissingRequestId, "KOOPHONE.API.0002", 200),
            (ApiError::InvalidRequestId, "KOOPHONE.API.0003", 400),
            (ApiError::InvalidParameter(s()), "KOOPHONE.API.1000", 400),
            (
                ApiError::NoInstancePermission(s()),
                "KOOPHONE.API.1001",
                401,
            ),
            (ApiError::AuthenticationFailed, "KOOPHONE.API.6001", 401),
            (ApiError::NoPermission(s()), "KOOPHONE.API.6002", 403),
            (ApiError::Throttled(s()), "APIGW.0308", 429),
            (
                ApiError::InsufficientInventory(s()),
                "KOOPHONE.API.40010",
                200,
            ),
            (ApiError::BeingRestored(s()), "KOOPHONE.API.2005", 200),
            (ApiError::BeingBackedUp(s()), "KOOPHONE.API.2006", 200),
            (ApiError::InstanceAbnormal(s()), "KOOPHONE.API.62010", 200),
            (ApiError::Internal, "KOOPHONE.API.9999", 500),
        ];
        for (error, code, status) in cases {
            assert_eq!(
                (error.code(), error.http_status()),
                (code, status),
                "{error:?}"
            );
        }
    }

    #[test]
    fn request_id_rules() {
        assert_eq!(validate_request_id(None), Err(ApiError::MissingRequestId));
        assert_eq!(
            validate_request_id(Some("")),
            Err(ApiError::InvalidRequestId)
        );
        assert_eq!(
            validate_request_id(Some("a b")),
            Err(ApiError::InvalidRequestId)
        );
        assert_eq!(
            validate_request_id(Some(&"x".repeat(129))),
            Err(ApiError::InvalidRequestId)
        );
        assert_eq!(validate_request_id(Some("0b1c-req-42")), Ok(()));
    }
}
