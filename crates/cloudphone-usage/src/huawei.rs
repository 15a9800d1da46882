//! Huawei Live `GET /v2/{project_id}/stats/transcode` (seed 004): query rules, error body,
//! response body.
//!
//! Time rules, in the document's words and our reading of them:
//! - `start_time`/`end_time` are `YYYY-MM-DDThh:mm:ssZ` (UTC) and are floored to the hour.
//! - `end_time` empty = now; `start_time` empty = the last 24 h (`end − 24 h`).
//! - `end_time` must be after `start_time` (as given, before flooring: two times inside one hour
//!   are a valid one-hour query).
//! - Span ≤ 31 days (floored end − floored start); history ≤ 1 year (floored start ≥ now − 365 d).
//! - Buckets are UTC hours from floored start to floored end, both included (the document's
//!   example asks 07:00–08:00 and gets both hours); hours after now are not listed.

use serde::{Deserialize, Serialize};
use time::macros::format_description;

use crate::meter::Grid;
use crate::{DAY_MS, HOUR_MS};

/// The longest query span: 31 days.
pub const MAX_SPAN_MS: i64 = 31 * DAY_MS;
/// How far back queries may reach: one year.
pub const MAX_HISTORY_MS: i64 = 365 * DAY_MS;

/// The query parameters of table 2.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TranscodeQuery {
    pub publish_domain: Option<String>,
    pub stream: Option<String>,
    pub start_time: Option<String>,
    pub end_time: Option<String>,
}

/// Errors with the document's body (`error_code`, `error_msg`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HuaweiError {
    /// The document's 400 example: `LIVE.100011001` "Invalid request parameter: publish_domain".
    #[error("Invalid request parameter: {0}")]
    InvalidParameter(String),
    /// Missing, unknown, expired or wrongly signed credentials (API gateway's 401).
    #[error("Incorrect IAM authentication information: {0}")]
    Unauthorized(String),
    /// Valid credentials for another project (API gateway's 403).
    #[error("The IAM user is not authorized to access the API")]
    Forbidden,
    #[error("Internal server error")]
    Internal,
}

impl HuaweiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidParameter(_) => "LIVE.100011001",
            Self::Unauthorized(_) => "APIGW.0301",
            Self::Forbidden => "APIGW.0302",
            Self::Internal => "LIVE.100011000",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidParameter(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden => 403,
            Self::Internal => 500,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error_code: self.code().to_string(),
            error_msg: self.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error_code: String,
    pub error_msg: String,
}

/// The hours a query covers: bucket starts from `first_hour_ms` to `last_hour_ms`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub first_hour_ms: i64,
    pub last_hour_ms: i64,
}

impl Window {
    /// Usage inside `[from, to)` lands in the listed hours.
    pub fn range_ms(&self) -> (i64, i64) {
        (self.first_hour_ms, self.last_hour_ms + HOUR_MS)
    }

    pub fn hours(&self) -> impl Iterator<Item = i64> + '_ {
        (0..)
            .map(move |k| self.first_hour_ms + k * HOUR_MS)
            .take_while(move |h| *h <= self.last_hour_ms)
    }
}

/// Parses `YYYY-MM-DDThh:mm:ssZ` to Unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(text, format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp() * 1000)
}

/// Formats Unix milliseconds as `YYYY-MM-DDThh:mm:ssZ`.
pub fn format_time(unix_ms: i64) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The publish domain a query names (required: the document's 400 example).
pub fn publish_domain(q: &TranscodeQuery) -> Result<&str, HuaweiError> {
    nonempty(&q.publish_domain)
        .ok_or_else(|| HuaweiError::InvalidParameter("publish_domain".into()))
}

/// Applies every time rule of the document (see the module docs).
pub fn window(q: &TranscodeQuery, now_ms: i64) -> Result<Window, HuaweiError> {
    let invalid = |what: &str| HuaweiError::InvalidParameter(what.to_string());
    let end = match nonempty(&q.end_time) {
        Some(text) => parse_time(text).ok_or_else(|| invalid("end_time"))?,
        None => now_ms,
    };
    let start = match nonempty(&q.start_time) {
        Some(text) => parse_time(text).ok_or_else(|| invalid("start_time"))?,
        None => end - DAY_MS,
    };
    if end <= start {
        return Err(invalid("end_time must be later than start_time"));
    }
    let (first, last) = (Grid::HOURS.floor(start), Grid::HOURS.floor(end));
    if last - first > MAX_SPAN_MS {
        return Err(invalid(
            "the span of start_time and end_time exceeds 31 days",
        ));
    }
    if first < Grid::HOURS.floor(now_ms) - MAX_HISTORY_MS {
        return Err(invalid("start_time is more than one year ago"));
    }
    Ok(Window {
        first_hour_ms: first,
        last_hour_ms: last.min(Grid::HOURS.floor(now_ms)),
    })
}

/// Table 7: one class's minutes in one hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscodeSpec {
    #[serde(rename = "type")]
    pub spec_type: String,
    pub value: f64,
}

/// Table 6: one hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscodeData {
    pub spec_list: Vec<TranscodeSpec>,
    pub time: String,
}

/// Table 5: the 200 body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscodeResponse {
    pub transcode_data_list: Vec<TranscodeData>,
    pub summary_list: Vec<TranscodeSpec>,
}

/// Builds the body from milliseconds per (hour, spec type). Every hour of the window is listed
/// (a sampling list); `spec_list` holds the classes with usage in it. Summaries add the exact
/// milliseconds, then round, so they never drift from rounding the hours.
pub fn response(
    window: &Window,
    totals: &std::collections::BTreeMap<(i64, String), i64>,
) -> TranscodeResponse {
    let mut summary: std::collections::BTreeMap<&str, i64> = Default::default();
    let transcode_data_list = window
        .hours()
        .map(|hour| TranscodeData {
            time: format_time(hour),
            spec_list: totals
                .range((hour, String::new())..(hour + 1, String::new()))
                .filter(|(_, ms)| **ms > 0)
                .map(|((_, spec), ms)| {
                    *summary.entry(spec.as_str()).or_insert(0) += ms;
                    TranscodeSpec {
                        spec_type: spec.clone(),
                        value: crate::meter::minutes_2dp(*ms),
                    }
                })
                .collect(),
        })
        .collect();
    TranscodeResponse {
        transcode_data_list,
        summary_list: summary
            .into_iter()
            .map(|(spec, ms)| TranscodeSpec {
                spec_type: spec.to_string(),
                value: crate::meter::minutes_2dp(ms),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// ShowDomain (`GET /v1/{project_id}/domain`)

/// Table 2 of the document: both optional. `enterprise_project_id` is accepted and ignored
/// (there are no enterprise projects here).
#[derive(Debug, Default, Deserialize)]
pub struct ShowDomainQuery {
    pub domain: Option<String>,
    #[allow(dead_code)]
    pub enterprise_project_id: Option<String>,
}

/// One entry of `domain_info` (the document's `DecoupledLiveDomainInfo`), with the fields that
/// have a meaning here. `is_default` is ours: cloud-phone sessions bill under that domain.
#[derive(Debug, Serialize)]
pub struct DomainInfo {
    pub domain: String,
    /// Always `push`: usage is reported per publish domain.
    pub domain_type: &'static str,
    pub region: String,
    /// `on`, or `off` once deleted (its past usage stays queryable).
    pub status: &'static str,
    pub create_time: String,
    pub is_default: bool,
}

#[derive(Debug, Serialize)]
pub struct ShowDomainResponse {
    pub total: usize,
    pub domain_info: Vec<DomainInfo>,
}
