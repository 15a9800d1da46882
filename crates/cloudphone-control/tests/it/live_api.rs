//! The live edge's API (seed 003, Version 2018-12-12) on control's `[live_api]` listener,
//! over HTTP against a live control: the document's own worked signature example, every
//! refusal of the gateway rules with its code and status (wrong secret, reused nonce, stale
//! timestamp, unknown Action or key, another tenant's group or stream, a suspended tenant),
//! each of the 25 Actions' happy path and not-found, signed GETs written from the document,
//! and the official SDK (`alibabacloud-vs20181212`) with its default ACS3 signing and with
//! `signature_algorithm='v2'`. No request gets a 5xx, and every answer carries `RequestId`.
//!
//! The node side (RTMP ingest and players) is not here: a stream's node is the fleet's real
//! node, recorded as offering a live edge at made-up base URLs, so URLs can be checked for
//! their shape and signature; its reports are written with the store's own code.

use std::process::{Command, Stdio};
use std::time::Duration;

use cloudphone_control::store::{self, LiveStore, StreamReport, VsNode};
use cloudphone_testkit::browser::workspace;
use cloudphone_testkit::fleet::{Fleet, NODE_ID};
use cloudphone_vs_api::timefmt;
use serde_json::{Value, json};

use crate::support::{now_ms, signed_query, venv_python};

/// The operator's key: the document's worked example's, so its signed URL verifies here.
const OPERATOR: (&str, &str) = ("testid", "testsecret");
const CONTROL: &str = "[live_api]\nlisten = \"127.0.0.1:0\"\nhost_id = \"vs.test\"\n\
    operator_access_key_id = \"testid\"\noperator_access_key_secret = \"testsecret\"\n";
const RTMP_BASE: &str = "rtmp://127.0.0.1:1935";
const HTTP_BASE: &str = "http://127.0.0.1:8080";

/// A key pair.
type Key = (String, String);

fn operator() -> Key {
    (OPERATOR.0.to_string(), OPERATOR.1.to_string())
}

/// A control serving the VS API, and a client for it.
struct Vs {
    fleet: Fleet,
    /// `http://127.0.0.1:PORT` of the live API listener.
    base: String,
    http: reqwest::Client,
}

/// A random nonce.
fn nonce() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Vs {
    /// Control alone (no node), serving the VS API.
    async fn control_only() -> Self {
        Self::control_with("").await
    }

    /// Control alone, with `extra` appended to its `[live_api]` section.
    async fn control_with(extra: &str) -> Self {
        let mut fleet = Fleet::new(None, "synthetic");
        fleet.control_extra = format!("{CONTROL}{extra}");
        fleet.start_control();
        fleet.wait_healthy(&fleet.api.clone()).await;
        Self::over(fleet)
    }

    /// Control and its node, the node recorded as offering a live edge.
    async fn with_live_node() -> Self {
        let fleet = Fleet::up_with("synthetic", CONTROL, "").await;
        let vs = Self::over(fleet);
        let store = store::open(&vs.fleet.store_url).await.unwrap();
        // The node's own announcement (no live edge yet) is recorded first; then it is made
        // to offer one, as a node with RTMP ingest announces.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.vs_node(NODE_ID).await.unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the node never announced"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let node = VsNode {
            node_id: NODE_ID.into(),
            region: "cn-north-7".into(),
            rtmp_base_url: RTMP_BASE.into(),
            http_base_url: HTTP_BASE.into(),
        };
        store.vs_put_node(&node, now_ms()).await.unwrap();
        vs
    }

    fn over(fleet: Fleet) -> Self {
        let ready: Value =
            serde_json::from_str(&std::fs::read_to_string(fleet.path("control.ready")).unwrap())
                .unwrap();
        let base = format!("http://{}", ready["live_api"].as_str().unwrap());
        Self {
            fleet,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// `GET /?query`: the status and body, checked to carry `RequestId` and no 5xx.
    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path_and_query, Vec::new())
            .await
    }

    /// Any request: the status and body, checked to carry `RequestId` and no 5xx.
    async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path_and_query}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let header = response
            .headers()
            .get("x-acs-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = response.json().await.unwrap();
        assert!(status < 500, "{path_and_query}: {status} {body}");
        let request_id = body["RequestId"].as_str().unwrap_or_default();
        assert!(!request_id.is_empty(), "{body}");
        assert_eq!(header.as_deref(), Some(request_id));
        if status != 200 {
            assert_eq!(body["HostId"], "vs.test", "{body}");
            assert!(body["Message"].as_str().is_some(), "{body}");
        }
        (status, body)
    }

    /// A signed GET of `action` by `key` now.
    async fn call(&self, key: &Key, action: &str, params: &[(&str, &str)]) -> (u16, Value) {
        self.get(&format!(
            "/?{}",
            signed_query((&key.0, &key.1), action, params, now_ms(), &nonce())
        ))
        .await
    }

    /// A call that must succeed: its body.
    async fn ok(&self, key: &Key, action: &str, params: &[(&str, &str)]) -> Value {
        let (status, body) = self.call(key, action, params).await;
        assert_eq!(status, 200, "{action} {params:?}: {body}");
        body
    }

    /// A call that must be refused with `(status, code)`.
    async fn refused(
        &self,
        key: &Key,
        action: &str,
        params: &[(&str, &str)],
        expected: (u16, &str),
    ) {
        let answer = self.call(key, action, params).await;
        assert_code(answer, expected, &format!("{action} {params:?}"));
    }

    /// A GET as it is written that must be refused with `(status, code)`.
    async fn get_refused(&self, path_and_query: &str, expected: (u16, &str)) {
        let answer = self.get(path_and_query).await;
        assert_code(answer, expected, path_and_query);
    }

    /// GetMtsServiceStatus of `user_id`, asked by the operator.
    async fn service_status(&self, user_id: &str) -> i64 {
        let body = self
            .ok(&operator(), "GetMtsServiceStatus", &[("UserId", user_id)])
            .await;
        body["Status"].as_i64().unwrap()
    }

    /// Opens a service for `user_id`: its key pair.
    async fn service(&self, user_id: &str) -> Key {
        let body = self
            .ok(
                &operator(),
                "CreateMtsService",
                &[
                    ("UserId", user_id),
                    (
                        "AccessInfo",
                        "{\"AccessKeyId\":\"demo\",\"AccessKeySecret\":\"demo\"}",
                    ),
                ],
            )
            .await;
        assert_eq!(body["UserId"], user_id);
        (
            body["UserAccessKeyId"].as_str().unwrap().to_string(),
            body["UserAccessKeySecret"].as_str().unwrap().to_string(),
        )
    }

    async fn group(&self, key: &Key, name: &str, out: &str) -> String {
        let body = self
            .ok(
                key,
                "CreateGroup",
                &[
                    ("Name", name),
                    ("Region", "cn-north-7"),
                    ("InProtocol", "rtmp"),
                    ("OutProtocol", out),
                ],
            )
            .await;
        let id = body["Id"].as_str().unwrap().to_string();
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit()),
            "{id}"
        );
        id
    }

    /// A stream of `group`: its id and push URL.
    async fn stream(&self, key: &Key, group: &str, name: &str) -> (String, String) {
        let body = self
            .ok(
                key,
                "CreateRtmpGroupStreamurl",
                &[("Id", group), ("Name", name), ("AccessInfo", "{}")],
            )
            .await;
        assert_eq!(body["Id"], group);
        (
            body["StreamId"].as_str().unwrap().to_string(),
            body["PushUrl"].as_str().unwrap().to_string(),
        )
    }
}

/// Checks an answer's `(status, Code)`.
fn assert_code((status, body): (u16, Value), expected: (u16, &str), context: &str) {
    assert_eq!(
        (status, body["Code"].as_str().unwrap_or_default()),
        expected,
        "{context}: {body}"
    );
}

/// A call's parameters.
type Params<'a> = Vec<(&'static str, &'a str)>;

/// Every Action that names one group or stream, with its parameters for `group` or `stream`
/// and its refusal when the caller has no such group or stream.
fn naming_actions<'a>(
    group: &'a str,
    stream: &'a str,
) -> Vec<(&'static str, Params<'a>, (u16, &'static str))> {
    let mut actions = Vec::new();
    for action in ["DescribeGroup", "HaltGroup", "EnableGroup", "DeleteGroup"] {
        actions.push((action, vec![("Id", group)], GROUP_NOT_FOUND));
    }
    for (action, name) in [
        ("ModifyGroup", "x"),
        ("CreateRtmpGroupStreamurl", "x"),
        ("CreateRtmpGroupStreamurls", "[\"x\"]"),
    ] {
        actions.push((action, vec![("Id", group), ("Name", name)], GROUP_NOT_FOUND));
    }
    for action in [
        "DescribeStream",
        "StartStream",
        "StopStream",
        "ForbidVsStream",
        "ResumeVsStream",
    ] {
        actions.push((action, vec![("Id", stream)], STREAM_NOT_FOUND));
    }
    let url = vec![("Id", stream), ("OutProtocol", "flv"), ("AuthKey", "k")];
    actions.push(("DescribeStreamURL", url, STREAM_NOT_FOUND));
    actions
}

/// An id nobody has.
const UNKNOWN: &str = "1000000000000001";
const GROUP_NOT_FOUND: (u16, &str) = (404, "InvalidGroup.NotFound");
const STREAM_NOT_FOUND: (u16, &str) = (404, "InvalidStream.NotFound");

#[tokio::test]
async fn the_gateway_rules_refuse_with_their_codes_and_tenants_are_isolated() {
    let vs = Vs::control_only().await;
    // The document's worked example, byte for byte: the signature matches (AK testid, secret
    // testsecret), so what refuses it is only its 2019 timestamp.
    let example = "/?Format=JSON&SignatureMethod=HMAC-SHA1&Action=DescribeGroup&AccessKeyId=testid&SignatureNonce=c2fe8fbb-2977-4414-8d39-348d02419c1c&Version=2018-12-12&SignatureVersion=1.0&Timestamp=2019-02-28T00:00:00Z";
    for (signature, expected) in [
        (
            "sgILSN6tpSSOFF3I1NKD%2B%2Fz0Nos%3D",
            (400, "InvalidTimeStamp.Expired"),
        ),
        (
            "tgILSN6tpSSOFF3I1NKD%2B%2Fz0Nos%3D",
            (400, "SignatureDoesNotMatch"),
        ),
    ] {
        vs.get_refused(&format!("{example}&Signature={signature}"), expected)
            .await;
    }

    let acme = vs.service("CIDC-U-acme").await;
    let other = vs.service("CIDC-U-other").await;
    let group = vs.group(&acme, "acme cameras", "flv,rtmp").await;
    let (stream, _) = vs.stream(&acme, &group, "door").await;

    // Wrong secret; unknown key; unknown Action; missing and invalid parameters.
    let wrong = (acme.0.clone(), "not-the-secret".to_string());
    let nobody = (
        "0123456789abcdef0123456789abcdef".to_string(),
        acme.1.clone(),
    );
    let by_id = vec![("Id", group.as_str())];
    for (key, action, params, expected) in [
        (
            &wrong,
            "DescribeGroup",
            by_id.clone(),
            (400, "SignatureDoesNotMatch"),
        ),
        (
            &nobody,
            "DescribeGroup",
            by_id.clone(),
            (404, "InvalidAccessKeyId.NotFound"),
        ),
        (
            &acme,
            "DescribeGroupz",
            by_id.clone(),
            (404, "InvalidAction.NotFound"),
        ),
        (&acme, "DescribeGroup", vec![], (400, "MissingParameter")),
        (
            &acme,
            "DescribeGroup",
            vec![("Id", "abc")],
            (400, "InvalidParameter"),
        ),
    ] {
        vs.refused(key, action, &params, expected).await;
    }
    vs.get_refused("/elsewhere", (404, "InvalidAction.NotFound"))
        .await;

    // A replayed request (same nonce) is refused; a fresh nonce is not.
    let query = signed_query(
        (&acme.0, &acme.1),
        "DescribeGroup",
        &[("Id", &group)],
        now_ms(),
        &nonce(),
    );
    assert_eq!(vs.get(&format!("/?{query}")).await.0, 200);
    vs.get_refused(&format!("/?{query}"), (400, "SignatureNonceUsed"))
        .await;

    // The ±15 min window, either way.
    for (offset_ms, expected) in [
        (-16 * 60_000, 400),
        (16 * 60_000, 400),
        (-14 * 60_000, 200),
        (14 * 60_000, 200),
    ] {
        let query = signed_query(
            (&acme.0, &acme.1),
            "DescribeGroup",
            &[("Id", &group)],
            now_ms() + offset_ms,
            &nonce(),
        );
        let (status, body) = vs.get(&format!("/?{query}")).await;
        assert_eq!(status, expected, "{offset_ms}: {body}");
        if expected == 400 {
            assert_eq!(body["Code"], "InvalidTimeStamp.Expired");
        }
    }

    // Another tenant's group and stream are not found, whatever the Action.
    for (action, params, expected) in naming_actions(&group, &stream) {
        vs.refused(&other, action, &params, expected).await;
    }
    let listed = vs.ok(&other, "DescribeGroups", &[]).await;
    assert_eq!(listed["TotalCount"], 0, "{listed}");
    let listed = vs.ok(&other, "DescribeStreams", &[]).await;
    assert_eq!(listed["TotalCount"], 0, "{listed}");
    let batch = vs.ok(&other, "BatchStopStreams", &[("Id", &stream)]).await;
    assert_eq!(
        batch["Results"],
        json!([{"Id": stream, "Error": "Stream not found"}])
    );
    // Nothing of acme's changed.
    let described = vs.ok(&acme, "DescribeStream", &[("Id", &stream)]).await;
    assert_eq!(described["Enabled"], true);

    // Roles: only the operator manages services, only tenants groups and streams.
    vs.refused(
        &acme,
        "CreateMtsService",
        &[("UserId", "CIDC-U-x")],
        (403, "Forbidden"),
    )
    .await;
    vs.refused(&operator(), "DescribeGroups", &[], (403, "Forbidden"))
        .await;

    // The service's life: suspended keys are refused, renewed ones work, deleted ones are gone.
    let op = operator();
    assert_eq!(vs.service_status("CIDC-U-acme").await, 2);
    assert_eq!(vs.service_status("CIDC-U-none").await, 0);
    // Each step: who calls which Action, its refusal (`None`: it succeeds), and acme's
    // service status after it, where it changes.
    let acme_id = vec![("UserId", "CIDC-U-acme")];
    let none_id = vec![("UserId", "CIDC-U-none")];
    let by_id = vec![("Id", group.as_str())];
    let not_found = (404, "InvalidUser.NotFound");
    for (key, action, params, refusal, status) in [
        (
            &op,
            "CreateMtsService",
            acme_id.clone(),
            Some((400, "InvalidUser.AlreadyExists")),
            None,
        ),
        (&op, "SuspendMtsService", none_id, Some(not_found), None),
        (&op, "SuspendMtsService", acme_id.clone(), None, Some(1)),
        (
            &acme,
            "DescribeGroup",
            by_id.clone(),
            Some((403, "Forbidden")),
            None,
        ),
        (&other, "DescribeGroups", vec![], None, None),
        (&op, "RenewMtsService", acme_id.clone(), None, None),
        (&acme, "DescribeGroup", by_id, None, None),
        (&op, "DeleteMtsService", acme_id.clone(), None, Some(3)),
        (
            &acme,
            "DescribeGroups",
            vec![],
            Some((404, "InvalidAccessKeyId.NotFound")),
            None,
        ),
        (&op, "RenewMtsService", acme_id, Some(not_found), None),
    ] {
        match refusal {
            Some(expected) => vs.refused(key, action, &params, expected).await,
            None => drop(vs.ok(key, action, &params).await),
        }
        if let Some(status) = status {
            assert_eq!(vs.service_status("CIDC-U-acme").await, status, "{action}");
        }
    }
    // A deleted service can be opened again: new keys, nothing of the old groups.
    let again = vs.service("CIDC-U-acme").await;
    assert_ne!(again, acme);
    vs.refused(&again, "DescribeGroup", &[("Id", &group)], GROUP_NOT_FOUND)
        .await;
}

#[tokio::test]
async fn every_action_works_as_the_document_describes_and_refuses_unknown_ids() {
    let vs = Vs::with_live_node().await;
    let key = vs.service("CIDC-U-0123456789abcdef").await;

    // Groups: create, describe (with stats), list with paging and order, modify.
    let a = vs.group(&key, "b-cams", "flv,rtmp,hls").await;
    let b = vs.group(&key, "a-cams", "flv").await;
    let c = vs.group(&key, "c-cams", "hls").await;
    let described = vs
        .ok(
            &key,
            "DescribeGroup",
            &[("Id", &a), ("IncludeStats", "true")],
        )
        .await;
    for (field, value) in [
        ("Id", json!(a)),
        ("Name", json!("b-cams")),
        ("Region", json!("cn-north-7")),
        ("App", json!("live")),
        ("InProtocol", json!("rtmp")),
        ("OutProtocol", json!("flv,rtmp,hls")),
        ("Enabled", json!(true)),
        ("Status", json!("on")),
        ("PushRtmpBaseUrl", json!(format!("{RTMP_BASE}/live"))),
        (
            "Stats",
            json!({"DeviceNum": 0, "IpcNum": 0, "IedNum": 0, "PlatformNum": 0}),
        ),
    ] {
        assert_eq!(described[field], value, "{field}: {described}");
    }
    assert!(timefmt::parse_to_unix_ms(described["CreatedTime"].as_str().unwrap()).is_some());
    let page = vs
        .ok(
            &key,
            "DescribeGroups",
            &[
                ("SortBy", "name"),
                ("SortDirection", "desc"),
                ("PageSize", "2"),
                ("PageNum", "2"),
            ],
        )
        .await;
    assert_eq!(
        (page["TotalCount"].clone(), page["PageCount"].clone()),
        (json!(3), json!(2))
    );
    assert_eq!(page["Groups"].as_array().unwrap().len(), 1);
    assert_eq!(page["Groups"][0]["Name"], "a-cams", "{page}");
    let by_name = vs.ok(&key, "DescribeGroups", &[("Name", "c-cams")]).await;
    assert_eq!(by_name["Groups"][0]["Id"], json!(c));
    vs.ok(
        &key,
        "ModifyGroup",
        &[("Id", &b), ("Name", "a-cams-2"), ("Description", "lobby")],
    )
    .await;
    let modified = vs.ok(&key, "DescribeGroup", &[("Id", &b)]).await;
    assert_eq!(
        (modified["Name"].clone(), modified["Description"].clone()),
        (json!("a-cams-2"), json!("lobby"))
    );
    assert!(modified.get("Stats").is_none(), "{modified}");

    // Push URLs: one, and several at once (Name as a JSON array).
    let (s1, push) = vs.stream(&key, &a, "door").await;
    let prefix = format!("{RTMP_BASE}/live/{s1}?auth_key=4102444800-0-0-");
    assert!(
        push.starts_with(&prefix) && push.len() == prefix.len() + 32,
        "{push}"
    );
    let many = vs
        .ok(
            &key,
            "CreateRtmpGroupStreamurls",
            &[
                ("Id", &a),
                ("Name", "[\"hall\",\"yard\"]"),
                ("AccessInfo", "{}"),
            ],
        )
        .await;
    let results = many["Results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{many}");
    let s2 = results[0]["StreamId"].as_str().unwrap().to_string();
    let s3 = results[1]["StreamId"].as_str().unwrap().to_string();
    assert!(results.iter().all(|r| r["Id"] == json!(a)));

    // Streams: describe, list and filter.
    let stream = vs.ok(&key, "DescribeStream", &[("Id", &s1)]).await;
    for (field, value) in [
        ("Id", json!(s1)),
        ("Name", json!("door")),
        ("App", json!("live")),
        ("Protocol", json!("rtmp")),
        ("GroupId", json!(a)),
        ("Enabled", json!(true)),
        ("Status", json!("off")),
        ("PushUrl", json!(push)),
        ("StartTime", json!("")),
    ] {
        assert_eq!(stream[field], value, "{field}: {stream}");
    }
    let listed = vs
        .ok(
            &key,
            "DescribeStreams",
            &[("GroupId", &a), ("SortBy", "name")],
        )
        .await;
    assert_eq!(listed["TotalCount"], 3);
    let names: Vec<&str> = listed["Streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["door", "hall", "yard"]);
    assert_eq!(
        vs.ok(&key, "DescribeStreams", &[("Name", "hall")]).await["Streams"][0]["Id"],
        json!(s2)
    );
    assert_eq!(
        vs.ok(&key, "DescribeStreams", &[("Status", "on")]).await["TotalCount"],
        0
    );
    assert_eq!(
        vs.ok(&key, "DescribeStreams", &[("GroupId", &b)]).await["TotalCount"],
        0
    );

    // Play URLs: signed with the AuthKey, for the group's protocols (and WHEP).
    let before = now_ms() / 1000;
    let url = vs
        .ok(
            &key,
            "DescribeStreamURL",
            &[("Id", &s1), ("OutProtocol", "flv"), ("AuthKey", "my-key")],
        )
        .await;
    let expire = url["ExpireTime"].as_i64().unwrap();
    assert!((before + 3600..=before + 3602).contains(&expire), "{url}");
    let text = url["Url"].as_str().unwrap();
    let (base, auth) = text.split_once("?auth_key=").unwrap();
    assert_eq!(base, format!("{HTTP_BASE}/live/{s1}.flv"));
    let uri = format!("/live/{s1}.flv");
    assert!(cloudphone_core::play_auth::verify(&uri, auth, &["my-key"], before).is_ok());
    assert!(cloudphone_core::play_auth::verify(&uri, auth, &["other-key"], before).is_err());
    let short = vs
        .ok(
            &key,
            "DescribeStreamURL",
            &[
                ("Id", &s1),
                ("OutProtocol", "webrtc"),
                ("AuthKey", "k2"),
                ("Expire", "60"),
            ],
        )
        .await;
    assert!(
        short["Url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{HTTP_BASE}/live/{s1}/whep?auth_key="))
    );
    assert!(short["ExpireTime"].as_i64().unwrap() <= before + 62);
    let (sb, _) = vs.stream(&key, &b, "flv-only").await;
    vs.refused(
        &key,
        "DescribeStreamURL",
        &[("Id", &sb), ("OutProtocol", "hls"), ("AuthKey", "k")],
        (400, "InvalidParameter"),
    )
    .await;

    // Switches: stop/start, forbid/resume, in batches, and renaming.
    // Each switch as DescribeStream then sees it.
    let ids = format!("{s2},{s3},{UNKNOWN}");
    let start = [("AccessInfo", "{}")];
    for (action, params, seen, field, value) in [
        (
            "StopStream",
            vec![("Id", s1.as_str())],
            &s1,
            "Enabled",
            json!(false),
        ),
        (
            "StartStream",
            vec![("Id", s1.as_str()), start[0]],
            &s1,
            "Enabled",
            json!(true),
        ),
        (
            "ForbidVsStream",
            vec![("Id", s1.as_str())],
            &s1,
            "Forbidden",
            json!(true),
        ),
        (
            "ResumeVsStream",
            vec![("Id", s1.as_str())],
            &s1,
            "Forbidden",
            json!(false),
        ),
        (
            "BatchStopStreams",
            vec![("Id", ids.as_str())],
            &s3,
            "Enabled",
            json!(false),
        ),
        (
            "BatchStartStreams",
            vec![("Id", ids.as_str()), start[0]],
            &s3,
            "Enabled",
            json!(true),
        ),
        (
            "ModifyStream",
            vec![
                ("Id", s2.as_str()),
                ("GroupId", a.as_str()),
                ("Name", "hall-2"),
            ],
            &s2,
            "Name",
            json!("hall-2"),
        ),
    ] {
        let answer = vs.ok(&key, action, &params).await;
        if action == "BatchStopStreams" {
            assert_eq!(
                answer["Results"],
                json!([{"Id": s2}, {"Id": s3}, {"Id": UNKNOWN, "Error": "Stream not found"}])
            );
        }
        let described = vs.ok(&key, "DescribeStream", &[("Id", seen)]).await;
        assert_eq!(described[field], value, "{action}: {described}");
    }
    vs.refused(
        &key,
        "ModifyStream",
        &[("Id", &s2), ("GroupId", &b), ("Name", "x")],
        STREAM_NOT_FOUND,
    )
    .await;

    // A publisher the node reports: the stream shows on, and ScreenShowStreams lists its WHEP URL.
    let store = store::open(&vs.fleet.store_url).await.unwrap();
    let started = now_ms() / 1000 * 1000;
    let report = StreamReport {
        stream_id: s1.clone(),
        is_on: true,
        codec: "H264".into(),
        width: 1280,
        height: 720,
        bitrate_bps: 2_000_000,
        started_at_ms: Some(started),
        stopped_at_ms: None,
    };
    assert!(store.vs_record_report(NODE_ID, &report).await.unwrap());
    let on = vs.ok(&key, "DescribeStream", &[("Id", &s1)]).await;
    assert_eq!(
        (
            on["Status"].clone(),
            on["StartTime"].clone(),
            on["Width"].clone()
        ),
        (
            json!("on"),
            json!(timefmt::format_unix_ms(started)),
            json!(1280)
        )
    );
    let screen = vs.ok(&key, "ScreenShowStreams", &[("GroupId", &a)]).await;
    assert_eq!(screen["TotalCount"], 1, "{screen}");
    assert_eq!(screen["Streams"][0]["Id"], json!(s1));
    assert_eq!(screen["Streams"][0]["InProtocol"], "rtmp");
    assert!(
        screen["Streams"][0]["Url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{HTTP_BASE}/live/{s1}/whep?auth_key="))
    );
    assert_eq!(
        vs.ok(&key, "ScreenShowStreams", &[("GroupId", &b)]).await["TotalCount"],
        0
    );

    // Halt, enable, halt, delete: an enabled group cannot be deleted; a deleted one's streams go.
    vs.ok(&key, "HaltGroup", &[("Id", &a)]).await;
    let halted = vs.ok(&key, "DescribeGroup", &[("Id", &a)]).await;
    assert_eq!(
        (halted["Enabled"].clone(), halted["Status"].clone()),
        (json!(false), json!("off"))
    );
    assert_eq!(
        vs.ok(&key, "DescribeGroups", &[("Status", "off")]).await["TotalCount"],
        1
    );
    vs.ok(&key, "EnableGroup", &[("Id", &a)]).await;
    vs.refused(
        &key,
        "DeleteGroup",
        &[("Id", &a)],
        (400, "IncorrectGroupStatus"),
    )
    .await;
    vs.ok(&key, "HaltGroup", &[("Id", &a)]).await;
    let deleted = vs.ok(&key, "DeleteGroup", &[("Id", &a)]).await;
    assert_eq!(
        (deleted["ID"].clone(), deleted["Id"].clone()),
        (json!(a), json!(a))
    );
    vs.refused(&key, "DescribeStream", &[("Id", &s1)], STREAM_NOT_FOUND)
        .await;
    vs.refused(&key, "DescribeGroup", &[("Id", &a)], GROUP_NOT_FOUND)
        .await;

    // Every Action that names a group or a stream refuses an unknown one.
    let mut actions = naming_actions(UNKNOWN, UNKNOWN);
    actions.push((
        "ModifyStream",
        vec![("Id", UNKNOWN), ("GroupId", b.as_str()), ("Name", "x")],
        STREAM_NOT_FOUND,
    ));
    actions.push((
        "ModifyStream",
        vec![("Id", sb.as_str()), ("GroupId", UNKNOWN), ("Name", "x")],
        GROUP_NOT_FOUND,
    ));
    for (action, params, expected) in actions {
        vs.refused(&key, action, &params, expected).await;
    }
}

#[tokio::test]
async fn each_key_has_a_request_budget() {
    // Three signed requests per key per hour (no test lasts that long, so nothing slides out).
    let vs = Vs::control_with("rate_limit = 3\nrate_window_ms = 3600000\n").await;
    let op = operator();
    let user = [("UserId", "CIDC-U-budget")];
    vs.ok(&op, "GetMtsServiceStatus", &user).await;
    // A request that fails its signature is not counted.
    let wrong = (op.0.clone(), "wrong".to_string());
    vs.refused(
        &wrong,
        "GetMtsServiceStatus",
        &user,
        (400, "SignatureDoesNotMatch"),
    )
    .await;
    let key = vs.service("CIDC-U-budget").await;
    vs.ok(&op, "GetMtsServiceStatus", &user).await;
    vs.refused(&op, "GetMtsServiceStatus", &user, (429, "Throttling"))
        .await;
    // Another key has its own budget.
    vs.ok(&key, "DescribeGroups", &[]).await;
}

/// Runs `tests/sdk/vs.py` (the official SDK) with `algorithm` against `vs`.
fn run_sdk(base: &str, algorithm: Option<&str>, user_id: &str) -> Value {
    let python = venv_python();
    let mut child = Command::new(python)
        .arg(workspace().join("tests/sdk/vs.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({
        "endpoint": base.trim_start_matches("http://"),
        "operator": [OPERATOR.0, OPERATOR.1],
        "algorithm": algorithm,
        "user_id": user_id,
    });
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.to_string().as_bytes()).unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "vs.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn the_official_sdk_drives_service_group_push_url_and_stream_with_both_signatures() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    assert!(python.exists());
    let vs = Vs::control_only().await;
    for (algorithm, user_id) in [(None, "CIDC-U-acs3"), (Some("v2"), "CIDC-U-v2")] {
        let base = vs.base.clone();
        let out = tokio::task::spawn_blocking(move || run_sdk(&base, algorithm, user_id))
            .await
            .unwrap();
        let label = format!("{algorithm:?}");
        assert_eq!(out["service"]["UserId"], user_id, "{label}: {out}");
        let key = (
            out["service"]["UserAccessKeyId"]
                .as_str()
                .unwrap()
                .to_string(),
            out["service"]["UserAccessKeySecret"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let group = out["group_id"].as_str().unwrap();
        let described = &out["describe_group"];
        // "sdk group": a space, sent as `+` by the v2 signer and `%20` by ACS3.
        assert_eq!(described["Name"], "sdk group", "{label}: {out}");
        assert_eq!(described["Description"], "made by the SDK");
        assert_eq!(described["OutProtocol"], "flv,rtmp,hls");
        assert_eq!(described["LazyPull"], false);
        assert_eq!(described["Stats"]["DeviceNum"], 0);
        let stream_id = out["push"]["StreamId"].as_str().unwrap();
        assert_eq!(out["push"]["Id"], group);
        assert_eq!(out["stream"]["Id"], stream_id);
        assert_eq!(out["stream"]["GroupId"], group);
        assert_eq!(out["stream"]["Name"], "cam 1");
        assert_eq!(out["stream"]["Status"], "off");
        assert_eq!(out["groups"]["TotalCount"], 1, "{label}: {out}");
        assert_eq!(out["groups"]["Groups"][0]["Id"], group);
        assert_eq!(
            out["not_found"],
            json!({"code": "InvalidGroup.NotFound", "status": 404})
        );
        assert_eq!(
            out["tenant_on_service_action"],
            json!({"code": "Forbidden", "status": 403})
        );
        // The SDK's ForbidVsStream (AppName + StreamName) forbade the stream; a signed GET
        // written from the document sees it with the same keys.
        let stream = vs.ok(&key, "DescribeStream", &[("Id", stream_id)]).await;
        assert_eq!(stream["Forbidden"], true, "{label}: {stream}");
        // (The SDK's stream model has no PushUrl; the document's answer does.)
        assert_eq!(stream["PushUrl"], out["push"]["PushUrl"]);
    }
}
