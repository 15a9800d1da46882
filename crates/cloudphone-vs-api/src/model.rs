//! The answers' JSON shapes with the document's field names. Every answer also carries
//! `RequestId`, which the server adds ([`Answer::to_json`]).

use serde::Serialize;

/// The document's `Stat` (device counts; part 1 has no devices, so zeros).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stats {
    pub device_num: i64,
    pub ipc_num: i64,
    pub ied_num: i64,
    pub platform_num: i64,
}

/// A group as DescribeGroup and DescribeGroups answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Group {
    pub id: String,
    pub name: String,
    pub description: String,
    pub region: String,
    pub app: String,
    pub in_protocol: String,
    pub out_protocol: String,
    pub enabled: bool,
    /// `on` (enabled) / `off` (halted).
    pub status: String,
    pub created_time: String,
    pub push_domain: String,
    pub play_domain: String,
    pub lazy_pull: bool,
    pub callback: String,
    pub gb_id: String,
    pub gb_ip: String,
    pub gb_udp_port: String,
    pub gb_tcp_port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
    pub push_rtmp_base_url: String,
}

/// A stream as DescribeStream and DescribeStreams answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stream {
    pub id: String,
    pub name: String,
    pub app: String,
    pub protocol: String,
    pub group_id: String,
    pub device_id: String,
    pub enabled: bool,
    /// `on` while a publisher sends, else `off`.
    pub status: String,
    pub created_time: String,
    pub start_time: String,
    pub stop_time: String,
    pub push_url: String,
    pub channel_name: String,
    /// Not in the document: whether ForbidVsStream holds it (the SDK's stream has no such
    /// field either; clients that do not know it ignore it).
    pub forbidden: bool,
    /// The publisher's figures (empty/zero until it sends video).
    pub codec: String,
    pub width: i64,
    pub height: i64,
    pub bitrate: i64,
}

/// One pushed-stream address (CreateRtmpGroupStreamurl(s)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PushUrl {
    /// The group's Id (the document answers the group's, not the stream's).
    pub id: String,
    pub push_url: String,
    /// Not in the document: the new stream's Id, which every stream Action takes.
    pub stream_id: String,
}

/// One row of BatchStart/StopStreams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchResult {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One row of ScreenShowStreams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScreenStream {
    pub id: String,
    pub name: String,
    pub in_protocol: String,
    /// A WHEP URL (POST an SDP offer) signed for an hour.
    pub url: String,
    pub device_name: String,
}

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Paging {
    pub page_size: i64,
    pub page_num: i64,
    pub page_count: i64,
    pub total_count: i64,
}

/// Every Action's answer, minus `RequestId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Only `RequestId` (Suspend/Renew/DeleteMtsService).
    Empty,
    Service {
        user_id: String,
        access_key_id: String,
        access_key_secret: String,
    },
    ServiceStatus(i64),
    /// `{Id}` (CreateGroup, ModifyGroup, Halt/EnableGroup, stream actions).
    Id(String),
    /// DeleteGroup's `{ID}` (as the document's example spells it) and `Id`.
    Deleted(String),
    Group(Box<Group>),
    Groups(Paging, Vec<Group>),
    PushUrl(PushUrl),
    PushUrls(Vec<PushUrl>),
    Stream(Box<Stream>),
    Streams(Paging, Vec<Stream>),
    StreamUrl {
        url: String,
        expire_time: i64,
    },
    Batch(Vec<BatchResult>),
    Screen(Paging, Vec<ScreenStream>),
}

fn merge(target: &mut serde_json::Map<String, serde_json::Value>, value: impl Serialize) {
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(value) {
        target.extend(fields);
    }
}

impl Answer {
    /// The JSON body, with `RequestId`.
    pub fn to_json(&self, request_id: &str) -> serde_json::Value {
        use serde_json::{Value, json};
        let mut body = serde_json::Map::new();
        match self {
            Answer::Empty => {}
            Answer::Service {
                user_id,
                access_key_id,
                access_key_secret,
            } => {
                body.insert("UserId".into(), json!(user_id));
                body.insert("UserAccessKeyId".into(), json!(access_key_id));
                body.insert("UserAccessKeySecret".into(), json!(access_key_secret));
            }
            Answer::ServiceStatus(status) => {
                body.insert("Status".into(), json!(status));
            }
            Answer::Id(id) => {
                body.insert("Id".into(), json!(id));
            }
            Answer::Deleted(id) => {
                body.insert("ID".into(), json!(id));
                body.insert("Id".into(), json!(id));
            }
            Answer::Group(group) => merge(&mut body, group),
            Answer::Groups(paging, groups) => {
                merge(&mut body, paging);
                body.insert("Groups".into(), json!(groups));
            }
            Answer::PushUrl(url) => merge(&mut body, url),
            Answer::PushUrls(urls) => {
                body.insert("Results".into(), json!(urls));
            }
            Answer::Stream(stream) => merge(&mut body, stream),
            Answer::Streams(paging, streams) => {
                merge(&mut body, paging);
                body.insert("Streams".into(), json!(streams));
            }
            Answer::StreamUrl { url, expire_time } => {
                body.insert("Url".into(), json!(url));
                body.insert("ExpireTime".into(), json!(expire_time));
            }
            Answer::Batch(results) => {
                body.insert("Results".into(), json!(results));
            }
            Answer::Screen(paging, streams) => {
                merge(&mut body, paging);
                body.insert("Streams".into(), json!(streams));
            }
        }
        body.insert("RequestId".into(), Value::String(request_id.to_string()));
        Value::Object(body)
    }
}
