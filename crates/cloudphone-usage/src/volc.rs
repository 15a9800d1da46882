//! Volcengine `POST /?Action=DescribeLiveTranscodeData&Version=2023-01-01` (seed 002): body,
//! rules, `ResponseMetadata`/`Result`, and every error of the document plus the common ones
//! authentication and throttling need.
//!
//! Time rules:
//! - `StartTime`/`EndTime` required, RFC 3339 with an offset, second precision.
//! - Days are aligned to `StartTime`'s offset (local midnight); `TimeStamp`s carry that offset.
//! - Usage inside `[StartTime, EndTime)` counts; `EndTime` must be after `StartTime`.
//! - `Aggregation` 86400 only (default 86400); span ≤ 93 days; history ≤ 366 days
//!   (`StartTime` ≥ now − 366 d).

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use crate::DAY_MS;
use crate::meter::Grid;

pub const ACTION: &str = "DescribeLiveTranscodeData";
pub const VERSION: &str = "2023-01-01";
pub const SERVICE: &str = "live";
pub const MAX_SPAN_MS: i64 = 93 * DAY_MS;
pub const MAX_HISTORY_MS: i64 = 366 * DAY_MS;

/// The request body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TranscodeRequest {
    pub domain_list: Option<Vec<String>>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub aggregation: Option<i64>,
    pub app: Option<String>,
    pub stream: Option<String>,
}

/// Errors with their HTTP status and codes: the document's table, then the common codes
/// (BytePlus/Volcengine OpenAPI common error list) for authentication, routing and throttling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolcError {
    #[error("{0}")]
    InvalidParam(String),
    #[error("Request parameter error, please check input data")]
    BindError,
    #[error(
        "this AccountID does not have permission to access the corresponding resource, please check the request parameters"
    )]
    AccountIdNotAllow,
    #[error("resource not found")]
    ResourceNotFound,
    #[error("an internal error occurred, please contact the administrator.")]
    InternalError,
    #[error("Request is missing Authentication Token.")]
    MissingAuthenticationToken,
    #[error("The request signature of the request is invalid: {0}")]
    InvalidAuthorization(String),
    #[error("The signature of the request is expired.")]
    InvalidTimestamp,
    #[error("The accesskey included in the request is invalid.")]
    InvalidAccessKey,
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your Secret Access Key and signing method. Consult the service documentation for details."
    )]
    SignatureDoesNotMatch,
    #[error("Could not find operation {0} for version {1}.")]
    InvalidActionOrVersion(String, String),
    #[error("Request flow limit exceeded: 100 requests per minute per user.")]
    FlowLimitExceeded,
}

impl VolcError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidParam(_) => "InvalidParam",
            Self::BindError => "InvalidParam.BindError",
            Self::AccountIdNotAllow => "RequestForbidden.AccountIDNotAllow",
            Self::ResourceNotFound => "ResourceNotFound",
            Self::InternalError => "InternalError",
            Self::MissingAuthenticationToken => "MissingAuthenticationToken",
            Self::InvalidAuthorization(_) => "InvalidAuthorization",
            Self::InvalidTimestamp => "InvalidTimestamp",
            Self::InvalidAccessKey => "InvalidAccessKey",
            Self::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Self::InvalidActionOrVersion(..) => "InvalidActionOrVersion",
            Self::FlowLimitExceeded => "FlowLimitExceeded",
        }
    }

    /// The common list's numeric `CodeN` where it has one.
    pub fn code_n(&self) -> Option<u32> {
        match self {
            Self::MissingAuthenticationToken => Some(100_003),
            Self::InvalidTimestamp => Some(100_006),
            Self::InvalidActionOrVersion(..) => Some(100_008),
            Self::InvalidAccessKey => Some(100_009),
            Self::SignatureDoesNotMatch => Some(100_010),
            Self::FlowLimitExceeded => Some(100_018),
            _ => None,
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidParam(_) | Self::BindError | Self::InvalidTimestamp => 400,
            Self::MissingAuthenticationToken
            | Self::InvalidAuthorization(_)
            | Self::InvalidAccessKey
            | Self::SignatureDoesNotMatch => 401,
            Self::AccountIdNotAllow => 403,
            Self::ResourceNotFound | Self::InvalidActionOrVersion(..) => 404,
            Self::FlowLimitExceeded => 429,
            Self::InternalError => 500,
        }
    }
}

/// `ResponseMetadata`, with `Error` on failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseMetadata {
    pub request_id: String,
    pub action: String,
    pub version: String,
    pub service: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<ErrorInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorInfo {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code_n: Option<u32>,
    pub code: String,
    pub message: String,
}

impl ResponseMetadata {
    pub fn new(request_id: &str, region: &str) -> Self {
        Self {
            request_id: request_id.to_string(),
            action: ACTION.to_string(),
            version: VERSION.to_string(),
            service: SERVICE.to_string(),
            region: region.to_string(),
            error: None,
        }
    }
}

/// An error response body.
pub fn error_body(error: &VolcError, request_id: &str, region: &str) -> serde_json::Value {
    let mut meta = ResponseMetadata::new(request_id, region);
    meta.error = Some(ErrorInfo {
        code_n: error.code_n(),
        code: error.code().to_string(),
        message: error.to_string(),
    });
    serde_json::json!({ "ResponseMetadata": meta })
}

/// One (day, class) entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TranscodeDataEntry {
    pub duration: f64,
    pub resolution: String,
    pub time_stamp: String,
    pub transcode_type: String,
}

/// `Result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TranscodeResult {
    pub domain_list: Vec<String>,
    pub start_time: String,
    pub end_time: String,
    pub aggregation: i64,
    pub duration: f64,
    pub transcode_data_list: Vec<TranscodeDataEntry>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream: Option<String>,
}

/// Parses the body; a wrong type is `InvalidParam.BindError`, an empty body is `{}`.
pub fn parse_body(body: &[u8]) -> Result<TranscodeRequest, VolcError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TranscodeRequest::default());
    }
    serde_json::from_slice(body).map_err(|_| VolcError::BindError)
}

/// A validated query window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
    /// `StartTime`'s UTC offset; days start at its midnight.
    pub offset_secs: i32,
}

impl Window {
    pub fn grid(&self) -> Grid {
        Grid::days_at_offset(self.offset_secs)
    }
}

/// Parses an RFC 3339 time to (Unix ms, offset seconds).
pub fn parse_time(text: &str) -> Option<(i64, i32)> {
    let t = time::OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some((t.unix_timestamp() * 1000, t.offset().whole_seconds()))
}

/// Formats Unix ms as RFC 3339 at `offset_secs` (`+08:00`, or `Z` at zero).
pub fn format_time(unix_ms: i64, offset_secs: i32) -> String {
    let offset = time::UtcOffset::from_whole_seconds(offset_secs).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .map(|t| t.to_offset(offset))
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Applies every rule of the document (see the module docs).
pub fn window(req: &TranscodeRequest, now_ms: i64) -> Result<Window, VolcError> {
    let invalid = |m: &str| VolcError::InvalidParam(m.to_string());
    let start_text = req
        .start_time
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("StartTime is required"))?;
    let end_text = req
        .end_time
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("EndTime is required"))?;
    let (start, offset) =
        parse_time(start_text).ok_or_else(|| invalid("StartTime is not an RFC3339 time"))?;
    let (end, _) = parse_time(end_text).ok_or_else(|| invalid("EndTime is not an RFC3339 time"))?;
    match req.aggregation {
        None | Some(86_400) => {}
        Some(_) => return Err(invalid("Aggregation supports only 86400")),
    }
    if end <= start {
        return Err(invalid("EndTime must be later than StartTime"));
    }
    if end - start > MAX_SPAN_MS {
        return Err(invalid("the time span exceeds 93 days"));
    }
    if start < now_ms - MAX_HISTORY_MS {
        return Err(invalid("StartTime is more than 366 days ago"));
    }
    Ok(Window {
        start_ms: start,
        end_ms: end,
        offset_secs: offset,
    })
}

/// Builds `Result` from milliseconds per (day start, (TranscodeType, Resolution)); only classes
/// with usage are listed, days in order.
pub fn result(
    req: &TranscodeRequest,
    domains: Vec<String>,
    window: &Window,
    totals: &std::collections::BTreeMap<(i64, (String, String)), i64>,
) -> TranscodeResult {
    let total_ms: i64 = totals.values().sum();
    TranscodeResult {
        domain_list: domains,
        start_time: req.start_time.clone().unwrap_or_default(),
        end_time: req.end_time.clone().unwrap_or_default(),
        aggregation: 86_400,
        duration: crate::meter::minutes(total_ms),
        transcode_data_list: totals
            .iter()
            .filter(|(_, ms)| **ms > 0)
            .map(|((day, (kind, resolution)), ms)| TranscodeDataEntry {
                duration: crate::meter::minutes(*ms),
                resolution: resolution.clone(),
                time_stamp: format_time(*day, window.offset_secs),
                transcode_type: kind.clone(),
            })
            .collect(),
        app: req.app.clone().filter(|s| !s.is_empty()),
        stream: req.stream.clone().filter(|s| !s.is_empty()),
    }
}
