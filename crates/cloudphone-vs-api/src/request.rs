//! A request's parameters (query and form body merged, decoded), the common parameters of
//! both signature schemes, the Actions of part 1, and each Action's parameters parsed into a
//! typed [`Command`]. Where the document and the SDK name a parameter differently both are
//! accepted (docs/live-api.md, "Readings").

use crate::VERSION;
use crate::error::VsError;
use crate::sign::{Acs3Authorization, parse_acs3_authorization};
use crate::timefmt;

/// The decoded parameters of one request, in the order received (query first, then body).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The first value of `name`, empty or not.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value among `names` (a document name and the SDK's).
    pub fn any(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .filter_map(|name| self.get(name))
            .find(|v| !v.is_empty())
    }

    /// `name`'s value; absent or empty is `MissingParameter`.
    pub fn required(&self, name: &str) -> Result<&str, VsError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| VsError::MissingParameter(name.to_string()))
    }

    /// A Bool parameter: `true`/`false` in any case (the SDK's `v2` sends `True`/`False`);
    /// absent or empty is `None`.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, VsError> {
        match self.get(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(_) => Err(VsError::InvalidParameter(name.to_string())),
        }
    }

    /// An Int parameter within `range`; absent or empty is `None`.
    pub fn int(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, VsError> {
        match self.get(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .map(Some)
                .ok_or_else(|| VsError::InvalidParameter(name.to_string())),
        }
    }
}

/// How a request proves who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The document's HMAC-SHA1 (GET, or POST from the SDK's `v2`).
    Rpc { signature: String },
    /// The SDK's default `ACS3-HMAC-SHA256`.
    Acs3(Acs3Authorization),
}

/// The common parameters of a request, whichever scheme signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub action: String,
    pub access_key_id: String,
    pub nonce: String,
    /// `Timestamp` or `x-acs-date`, Unix milliseconds.
    pub timestamp_ms: i64,
    pub credentials: Credentials,
}

/// The common parameters: from `Authorization` and the `x-acs-*` headers when the request
/// carries an ACS3 `Authorization`, else from the document's common request parameters.
/// `header` answers a lower-case header name.
pub fn common<'a>(
    params: &'a Params,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<Common, VsError> {
    if let Some(authorization) = header("authorization").filter(|v| !v.trim().is_empty()) {
        let auth = parse_acs3_authorization(authorization)
            .ok_or_else(|| VsError::InvalidParameter("Authorization".into()))?;
        let need = |name: &str| {
            header(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| VsError::MissingParameter(name.to_string()))
        };
        if need("x-acs-version")? != VERSION {
            return Err(VsError::InvalidVersion);
        }
        let date = need("x-acs-date")?;
        return Ok(Common {
            action: need("x-acs-action")?.to_string(),
            access_key_id: auth.access_key_id.clone(),
            nonce: need("x-acs-signature-nonce")?.to_string(),
            timestamp_ms: timefmt::parse_to_unix_ms(date)
                .ok_or_else(|| VsError::InvalidParameter("x-acs-date".into()))?,
            credentials: Credentials::Acs3(auth),
        });
    }
    let action = params.required("Action")?.to_string();
    if params.required("Version")? != VERSION {
        return Err(VsError::InvalidVersion);
    }
    let access_key_id = params.required("AccessKeyId")?.to_string();
    let signature = params.required("Signature")?.to_string();
    if !params
        .required("SignatureMethod")?
        .eq_ignore_ascii_case("HMAC-SHA1")
    {
        return Err(VsError::InvalidParameter("SignatureMethod".into()));
    }
    // The table names it `signature_version`, every example `SignatureVersion`.
    let version = params
        .any(&["SignatureVersion", "signature_version"])
        .ok_or_else(|| VsError::MissingParameter("SignatureVersion".into()))?;
    if version != "1.0" {
        return Err(VsError::InvalidParameter("SignatureVersion".into()));
    }
    let nonce = params.required("SignatureNonce")?.to_string();
    let timestamp_ms = timefmt::parse_to_unix_ms(params.required("Timestamp")?)
        .ok_or_else(|| VsError::InvalidParameter("Timestamp".into()))?;
    Ok(Common {
        action,
        access_key_id,
        nonce,
        timestamp_ms,
        credentials: Credentials::Rpc { signature },
    })
}

macro_rules! actions {
    ($($name:ident),* $(,)?) => {
        /// The Actions of part 1 (service, group and stream), by their document names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action { $($name),* }

        impl Action {
            pub const ALL: &'static [Action] = &[$(Action::$name),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Action::$name => stringify!($name)),* }
            }

            /// The Action named `name`, if this API has it.
            pub fn parse(name: &str) -> Option<Self> {
                match name { $(stringify!($name) => Some(Action::$name),)* _ => None }
            }
        }
    };
}

actions!(
    CreateMtsService,
    SuspendMtsService,
    RenewMtsService,
    DeleteMtsService,
    GetMtsServiceStatus,
    CreateGroup,
    DeleteGroup,
    DescribeGroup,
    DescribeGroups,
    ModifyGroup,
    HaltGroup,
    EnableGroup,
    CreateRtmpGroupStreamurl,
    CreateRtmpGroupStreamurls,
    DescribeStream,
    DescribeStreams,
    DescribeStreamURL,
    StartStream,
    StopStream,
    BatchStartStreams,
    BatchStopStreams,
    ForbidVsStream,
    ResumeVsStream,
    ScreenShowStreams,
    ModifyStream,
);

impl Action {
    /// The service (tenant) Actions, which only the operator's key may call; every other
    /// Action is a tenant's.
    pub fn is_service(self) -> bool {
        matches!(
            self,
            Action::CreateMtsService
                | Action::SuspendMtsService
                | Action::RenewMtsService
                | Action::DeleteMtsService
                | Action::GetMtsServiceStatus
        )
    }
}

/// A group's access protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InProtocol {
    Gb28181,
    Rtmp,
}

impl InProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gb28181 => "gb28181",
            Self::Rtmp => "rtmp",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "gb28181" => Some(Self::Gb28181),
            "rtmp" => Some(Self::Rtmp),
            _ => None,
        }
    }
}

/// Play protocols: the group's `OutProtocol` list and DescribeStreamURL's one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutProtocol {
    Flv,
    Hls,
    Rtmp,
    Webrtc,
}

impl OutProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flv => "flv",
            Self::Hls => "hls",
            Self::Rtmp => "rtmp",
            Self::Webrtc => "webrtc",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "flv" => Some(Self::Flv),
            "hls" => Some(Self::Hls),
            "rtmp" => Some(Self::Rtmp),
            "webrtc" => Some(Self::Webrtc),
            _ => None,
        }
    }
}

/// A comma-separated `OutProtocol` list, as stored and answered (`flv,rtmp,hls`): each value
/// known, none twice, at least one.
fn out_protocols(text: &str, name: &str) -> Result<String, VsError> {
    let mut seen: Vec<OutProtocol> = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let protocol =
            OutProtocol::parse(part).ok_or_else(|| VsError::InvalidParameter(name.to_string()))?;
        if !seen.contains(&protocol) {
            seen.push(protocol);
        }
    }
    if seen.is_empty() {
        return Err(VsError::InvalidParameter(name.to_string()));
    }
    Ok(seen
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(","))
}

/// Longest name or description kept (the document sets none; this bounds a row).
const MAX_TEXT: usize = 256;

fn text(params: &Params, name: &str) -> Result<Option<String>, VsError> {
    match params.get(name) {
        None => Ok(None),
        Some(v) if v.chars().count() > MAX_TEXT => Err(VsError::InvalidParameter(name.into())),
        Some(v) => Ok(Some(v.to_string())),
    }
}

fn required_text(params: &Params, name: &str) -> Result<String, VsError> {
    let value = params.required(name)?;
    if value.chars().count() > MAX_TEXT {
        return Err(VsError::InvalidParameter(name.into()));
    }
    Ok(value.to_string())
}

/// A group or stream Id: the document's 16-digit (or longer, as its examples') decimal.
fn id(params: &Params, name: &str) -> Result<String, VsError> {
    let value = params.required(name)?.trim();
    if !is_id(value) {
        return Err(VsError::InvalidParameter(name.into()));
    }
    Ok(value.to_string())
}

/// Whether `text` can be an Id: 1 to 20 decimal digits.
pub fn is_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A comma-separated Id list (BatchStart/StopStreams), at most 100.
fn id_list(params: &Params, name: &str) -> Result<Vec<String>, VsError> {
    let ids: Vec<String> = params
        .required(name)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() || ids.len() > 100 {
        return Err(VsError::InvalidParameter(name.into()));
    }
    Ok(ids)
}

/// PageSize/PageNum with the document's defaults (20, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub size: i64,
    pub num: i64,
}

impl Page {
    fn parse(params: &Params) -> Result<Self, VsError> {
        Ok(Self {
            size: params.int("PageSize", 1..=1000)?.unwrap_or(20),
            num: params.int("PageNum", 1..=1_000_000)?.unwrap_or(1),
        })
    }

    /// Rows skipped before this page.
    pub fn offset(self) -> i64 {
        (self.num - 1) * self.size
    }

    /// `PageCount` for `total` rows.
    pub fn count(self, total: i64) -> i64 {
        (total + self.size - 1) / self.size
    }
}

/// A list's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Id,
    Name,
    CreatedTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub by: SortBy,
    pub descending: bool,
}

impl Sort {
    fn parse(params: &Params) -> Result<Self, VsError> {
        let by = match params.any(&["SortBy"]).map(str::to_ascii_lowercase) {
            None => SortBy::Id,
            Some(v) if v == "id" => SortBy::Id,
            Some(v) if v == "name" => SortBy::Name,
            Some(v) if v == "createdtime" || v == "created_time" => SortBy::CreatedTime,
            Some(_) => return Err(VsError::InvalidParameter("SortBy".into())),
        };
        let descending = match params.any(&["SortDirection"]).map(str::to_ascii_lowercase) {
            None => false,
            Some(v) if v == "asc" => false,
            Some(v) if v == "desc" => true,
            Some(_) => return Err(VsError::InvalidParameter("SortDirection".into())),
        };
        Ok(Self { by, descending })
    }
}

/// An `on`/`off` Status filter.
fn on_off(params: &Params, name: &str) -> Result<Option<bool>, VsError> {
    match params.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(_) => Err(VsError::InvalidParameter(name.into())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    pub name: String,
    pub description: String,
    pub region: String,
    pub app: String,
    pub in_protocol: InProtocol,
    /// Normalised comma list.
    pub out_protocol: String,
    pub lazy_pull: bool,
    pub callback: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupChange {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub region: Option<String>,
    pub in_protocol: Option<InProtocol>,
    pub out_protocol: Option<String>,
    pub enabled: Option<bool>,
    pub lazy_pull: Option<bool>,
    pub callback: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupQuery {
    pub id: Option<String>,
    pub name: Option<String>,
    pub region: Option<String>,
    pub in_protocol: Option<InProtocol>,
    /// `on` (enabled) / `off`.
    pub enabled: Option<bool>,
    pub sort: Sort,
    pub page: Page,
    pub include_stats: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQuery {
    pub id: Option<String>,
    pub group_id: Option<String>,
    pub device_id: Option<String>,
    pub app: Option<String>,
    pub name: Option<String>,
    /// `on` / `off`.
    pub on: Option<bool>,
    /// Created at or after / before, Unix ms.
    pub created_from_ms: Option<i64>,
    pub created_to_ms: Option<i64>,
    pub sort: Sort,
    pub page: Page,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrlRequest {
    pub id: String,
    pub out_protocol: OutProtocol,
    pub auth_key: String,
    /// Seconds the URL stays valid (default 3600).
    pub expire_secs: i64,
}

/// One Action's parameters, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateMtsService {
        user_id: String,
    },
    SuspendMtsService {
        user_id: String,
    },
    RenewMtsService {
        user_id: String,
    },
    DeleteMtsService {
        user_id: String,
    },
    GetMtsServiceStatus {
        user_id: String,
    },
    CreateGroup(NewGroup),
    DeleteGroup {
        id: String,
    },
    DescribeGroup {
        id: String,
        include_stats: bool,
    },
    DescribeGroups(GroupQuery),
    ModifyGroup(GroupChange),
    HaltGroup {
        id: String,
    },
    EnableGroup {
        id: String,
    },
    CreateRtmpGroupStreamurls {
        group_id: String,
        names: Vec<String>,
        plural: bool,
    },
    DescribeStream {
        id: String,
    },
    DescribeStreams(StreamQuery),
    DescribeStreamUrl(StreamUrlRequest),
    StartStream {
        id: String,
    },
    StopStream {
        id: String,
    },
    BatchStartStreams {
        ids: Vec<String>,
    },
    BatchStopStreams {
        ids: Vec<String>,
    },
    ForbidVsStream {
        id: String,
    },
    ResumeVsStream {
        id: String,
    },
    ScreenShowStreams {
        group_id: Option<String>,
        page: Page,
    },
    ModifyStream {
        id: String,
        group_id: String,
        name: String,
    },
}

/// A service `UserId`: 1 to 64 printable ASCII characters (the document's are 32 hex digits).
fn user_id(params: &Params) -> Result<String, VsError> {
    let value = params.required("UserId")?;
    if value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(VsError::InvalidParameter("UserId".into()));
    }
    Ok(value.to_string())
}

/// ForbidVsStream/ResumeVsStream's stream: the document's `Id`, or the SDK's `StreamName`
/// (the last segment of the push URL, which is the Id).
fn forbid_target(params: &Params) -> Result<String, VsError> {
    let value = params
        .any(&["Id", "StreamName"])
        .ok_or_else(|| VsError::MissingParameter("Id".into()))?
        .trim();
    if !is_id(value) {
        return Err(VsError::InvalidParameter("Id".into()));
    }
    Ok(value.to_string())
}

impl Command {
    /// `action`'s parameters from `params`.
    pub fn parse(action: Action, params: &Params) -> Result<Self, VsError> {
        Ok(match action {
            Action::CreateMtsService => Command::CreateMtsService {
                user_id: user_id(params)?,
            },
            Action::SuspendMtsService => Command::SuspendMtsService {
                user_id: user_id(params)?,
            },
            Action::RenewMtsService => Command::RenewMtsService {
                user_id: user_id(params)?,
            },
            Action::DeleteMtsService => Command::DeleteMtsService {
                user_id: user_id(params)?,
            },
            Action::GetMtsServiceStatus => Command::GetMtsServiceStatus {
                user_id: user_id(params)?,
            },
            Action::CreateGroup => Command::CreateGroup(NewGroup {
                name: required_text(params, "Name")?,
                description: text(params, "Description")?.unwrap_or_default(),
                region: required_text(params, "Region")?,
                app: match text(params, "App")?.filter(|a| !a.is_empty()) {
                    None => "live".into(),
                    Some(app) if is_app(&app) => app,
                    Some(_) => return Err(VsError::InvalidParameter("App".into())),
                },
                in_protocol: InProtocol::parse(params.required("InProtocol")?)
                    .ok_or_else(|| VsError::InvalidParameter("InProtocol".into()))?,
                out_protocol: out_protocols(params.required("OutProtocol")?, "OutProtocol")?,
                lazy_pull: params.bool("LazyPull")?.unwrap_or(false),
                callback: text(params, "Callback")?.unwrap_or_default(),
            }),
            Action::DeleteGroup => Command::DeleteGroup {
                id: id(params, "Id")?,
            },
            Action::DescribeGroup => Command::DescribeGroup {
                id: id(params, "Id")?,
                include_stats: params.bool("IncludeStats")?.unwrap_or(false),
            },
            Action::DescribeGroups => Command::DescribeGroups(GroupQuery {
                id: params.any(&["Id"]).map(str::to_string),
                name: params.any(&["Name"]).map(str::to_string),
                region: params.any(&["Region"]).map(str::to_string),
                in_protocol: match params.any(&["InProtocol"]) {
                    None => None,
                    Some(p) => Some(
                        InProtocol::parse(p)
                            .ok_or_else(|| VsError::InvalidParameter("InProtocol".into()))?,
                    ),
                },
                enabled: on_off(params, "Status")?,
                sort: Sort::parse(params)?,
                page: Page::parse(params)?,
                include_stats: params.bool("IncludeStats")?.unwrap_or(false),
            }),
            Action::ModifyGroup => Command::ModifyGroup(GroupChange {
                id: id(params, "Id")?,
                // An empty Name would leave a group nobody can find by name: ignored.
                name: text(params, "Name")?.filter(|n| !n.is_empty()),
                description: text(params, "Description")?,
                region: text(params, "Region")?.filter(|r| !r.is_empty()),
                in_protocol: match params.any(&["InProtocol"]) {
                    None => None,
                    Some(p) => Some(
                        InProtocol::parse(p)
                            .ok_or_else(|| VsError::InvalidParameter("InProtocol".into()))?,
                    ),
                },
                out_protocol: match params.any(&["OutProtocol"]) {
                    None => None,
                    Some(p) => Some(out_protocols(p, "OutProtocol")?),
                },
                enabled: params.bool("Enabled")?,
                lazy_pull: params.bool("LazyPull")?,
                callback: text(params, "Callback")?,
            }),
            Action::HaltGroup => Command::HaltGroup {
                id: id(params, "Id")?,
            },
            Action::EnableGroup => Command::EnableGroup {
                id: id(params, "Id")?,
            },
            Action::CreateRtmpGroupStreamurl => Command::CreateRtmpGroupStreamurls {
                group_id: id(params, "Id")?,
                names: vec![required_text(params, "Name")?],
                plural: false,
            },
            Action::CreateRtmpGroupStreamurls => Command::CreateRtmpGroupStreamurls {
                group_id: id(params, "Id")?,
                names: name_array(params.required("Name")?)?,
                plural: true,
            },
            Action::DescribeStream => Command::DescribeStream {
                id: id(params, "Id")?,
            },
            Action::DescribeStreams => {
                let time = |name: &str| -> Result<Option<i64>, VsError> {
                    match params.any(&[name]) {
                        None => Ok(None),
                        Some(t) => timefmt::parse_to_unix_ms(t)
                            .map(Some)
                            .ok_or_else(|| VsError::InvalidParameter(name.into())),
                    }
                };
                let (from, to) = (time("StartTime")?, time("StopTime")?);
                if let (Some(from), Some(to)) = (from, to)
                    && to <= from
                {
                    return Err(VsError::InvalidParameter("StopTime".into()));
                }
                Command::DescribeStreams(StreamQuery {
                    id: params.any(&["Id"]).map(str::to_string),
                    group_id: params.any(&["GroupId"]).map(str::to_string),
                    device_id: params.any(&["DeviceId"]).map(str::to_string),
                    app: params.any(&["App"]).map(str::to_string),
                    name: params.any(&["Name"]).map(str::to_string),
                    on: on_off(params, "Status")?,
                    created_from_ms: from,
                    created_to_ms: to,
                    sort: Sort::parse(params)?,
                    page: Page::parse(params)?,
                })
            }
            Action::DescribeStreamURL => {
                if let Some(kind) = params.any(&["Type"])
                    && !kind.eq_ignore_ascii_case("live")
                {
                    // vod is an NVR's recording (part 3).
                    return Err(VsError::InvalidParameter("Type".into()));
                }
                Command::DescribeStreamUrl(StreamUrlRequest {
                    id: id(params, "Id")?,
                    out_protocol: OutProtocol::parse(params.required("OutProtocol")?)
                        .ok_or_else(|| VsError::InvalidParameter("OutProtocol".into()))?,
                    auth_key: required_text(params, "AuthKey")?,
                    expire_secs: params.int("Expire", 1..=10 * 365 * 86_400)?.unwrap_or(3600),
                })
            }
            Action::StartStream => Command::StartStream {
                id: id(params, "Id")?,
            },
            Action::StopStream => Command::StopStream {
                id: id(params, "Id")?,
            },
            Action::BatchStartStreams => Command::BatchStartStreams {
                ids: id_list(params, "Id")?,
            },
            Action::BatchStopStreams => Command::BatchStopStreams {
                ids: id_list(params, "Id")?,
            },
            Action::ForbidVsStream => Command::ForbidVsStream {
                id: forbid_target(params)?,
            },
            Action::ResumeVsStream => Command::ResumeVsStream {
                id: forbid_target(params)?,
            },
            Action::ScreenShowStreams => Command::ScreenShowStreams {
                group_id: params.any(&["GroupId"]).map(str::to_string),
                page: Page::parse(params)?,
            },
            Action::ModifyStream => Command::ModifyStream {
                id: id(params, "Id")?,
                group_id: id(params, "GroupId")?,
                name: required_text(params, "Name")?,
            },
        })
    }
}

/// An App name: it becomes a URL path segment, so letters, digits, `-`, `_`, `.` only.
fn is_app(app: &str) -> bool {
    app.len() <= 64
        && app != "."
        && app != ".."
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// CreateRtmpGroupStreamurls' `Name`: a JSON array of strings (the document's example
/// `["45645","4454"]`), 1 to 100 of them.
fn name_array(text: &str) -> Result<Vec<String>, VsError> {
    let invalid = || VsError::InvalidParameter("Name".into());
    let names: Vec<String> = serde_json::from_str(text).map_err(|_| invalid())?;
    if names.is_empty()
        || names.len() > 100
        || names
            .iter()
            .any(|n| n.is_empty() || n.chars().count() > MAX_TEXT)
    {
        return Err(invalid());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Params {
        Params(
            list.iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn every_action_name_round_trips() {
        assert_eq!(Action::ALL.len(), 25);
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(*action));
        }
        assert_eq!(Action::parse("DescribeGroupz"), None);
    }

    #[test]
    fn rpc_common_parameters_accept_both_names_of_the_signature_version() {
        for version_name in ["SignatureVersion", "signature_version"] {
            let p = params(&[
                ("Action", "DescribeGroup"),
                ("Version", "2018-12-12"),
                ("AccessKeyId", "testid"),
                ("Signature", "x"),
                ("SignatureMethod", "HMAC-SHA1"),
                (version_name, "1.0"),
                ("SignatureNonce", "n"),
                ("Timestamp", "2019-02-28T00:00:00Z"),
            ]);
            let common = common(&p, |_| None).unwrap();
            assert_eq!(common.timestamp_ms, 1_551_312_000_000);
        }
        let p = params(&[("Action", "DescribeGroup"), ("Version", "2018-12-12")]);
        assert_eq!(
            common(&p, |_| None),
            Err(VsError::MissingParameter("AccessKeyId".into()))
        );
    }

    #[test]
    fn commands_parse_the_documents_examples() {
        let create = params(&[
            ("Name", "sapcename1"),
            ("Description", "spacedesc"),
            ("Region", "cn-shanghai"),
            ("InProtocol", "rtmp"),
            ("OutProtocol", "flv,rtmp,hls"),
            ("LazyPull", "False"),
        ]);
        let Command::CreateGroup(group) = Command::parse(Action::CreateGroup, &create).unwrap()
        else {
            panic!()
        };
        assert_eq!(group.app, "live");
        assert_eq!(group.out_protocol, "flv,rtmp,hls");
        let urls = params(&[("Id", "1624428048761368"), ("Name", "[\"45645\",\"4454\"]")]);
        assert_eq!(
            Command::parse(Action::CreateRtmpGroupStreamurls, &urls).unwrap(),
            Command::CreateRtmpGroupStreamurls {
                group_id: "1624428048761368".into(),
                names: vec!["45645".into(), "4454".into()],
                plural: true
            }
        );
        let sdk_forbid = params(&[("AppName", "live"), ("StreamName", "1624428150544871")]);
        assert_eq!(
            Command::parse(Action::ForbidVsStream, &sdk_forbid).unwrap(),
            Command::ForbidVsStream {
                id: "1624428150544871".into()
            }
        );
        for (action, bad, code) in [
            (Action::DescribeGroup, params(&[]), "MissingParameter"),
            (
                Action::DescribeGroup,
                params(&[("Id", "abc")]),
                "InvalidParameter",
            ),
            (
                Action::DescribeGroups,
                params(&[("PageSize", "0")]),
                "InvalidParameter",
            ),
            (
                Action::DescribeStreamURL,
                params(&[("Id", "1"), ("OutProtocol", "rtsp"), ("AuthKey", "k")]),
                "InvalidParameter",
            ),
            (
                Action::CreateRtmpGroupStreamurls,
                params(&[("Id", "1"), ("Name", "notjson")]),
                "InvalidParameter",
            ),
        ] {
            assert_eq!(
                Command::parse(action, &bad).unwrap_err().code(),
                code,
                "{action:?}"
            );
        }
    }
}
