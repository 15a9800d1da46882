//! Every rule of the two usage documents over HTTP, against a live control: Huawei Live
//! `GET /v2/{project_id}/stats/transcode` (seed 004) and Volcengine `DescribeLiveTranscodeData`
//! (seed 002). Time rules just inside and just outside each limit, filters, rounding, request
//! ids, every error we produce with its HTTP status, the per-user rate limit (its window's end
//! is tested in paused time, in control's `http::tests`), signatures (wrong key, stale date, altered query/body)
//! and tenant isolation.
//!
//! No node runs: usage rows are written into control's store with the store's own code, at
//! chosen times (the streaming path is `usage_sdk.rs`'s). Requests are signed with
//! `cloudphone_usage::sign`, which reproduces the official SDKs' signatures byte for byte
//! (`cloudphone-usage/tests/it/signatures.rs`).

use std::time::{Duration, Instant};

use cloudphone_control::store::{self, DomainRecord, Store, UsageRow};
use cloudphone_testkit::fleet::Fleet;
use cloudphone_usage::sign::{self, RequestParts};
use cloudphone_usage::{DAY_MS, HOUR_MS, volc};
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::Digest;

use crate::support::{iso, now_ms};

const MIN_MS: i64 = 60_000;
const ACME_LIVE: &str = "live.acme.example";
/// Deleted ten days ago; still reported (seed 002: "含删除域名").
const ACME_OLD: &str = "old.acme.example";
const OTHER_LIVE: &str = "live.other.example";
const VOLC_QUERY: &str = "Action=DescribeLiveTranscodeData&Version=2023-01-01";

fn hour_floor(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// RFC 3339 at an offset (`Z` at zero).
fn rfc(ms: i64, offset_secs: i32) -> String {
    volc::format_time(ms, offset_secs)
}

/// The SDKs' signing date, `YYYYMMDDThhmmssZ`.
fn basic_date(ms: i64) -> String {
    iso(ms).replace(['-', ':'], "")
}

struct Account {
    token: String,
    project_id: String,
    tenant_id: String,
    ak: String,
    sk: String,
}

/// A live control with tenants `acme` and `other`, an AK/SK each, streaming domains and usage.
struct Api {
    fleet: Fleet,
    acme: Account,
    other: Account,
    /// The hour acme's hourly usage starts in (two days ago).
    h0: i64,
    /// UTC midnight of the day (five days ago) of acme's session crossing 16:00Z, which is
    /// midnight at +08:00.
    day: i64,
}

async fn account(fleet: &Fleet, domain: &str, password: &str) -> Account {
    let login = fleet.scoped_login(domain, password).await;
    let (ak, sk) = fleet.access_key(&login.token, "rules").await;
    Account {
        ak,
        sk,
        token: login.token,
        project_id: login.project_id,
        tenant_id: login.tenant_id,
    }
}

/// One usage session of one record.
struct Seed {
    domain: &'static str,
    app: &'static str,
    stream: &'static str,
    codec: &'static str,
    size: (i64, i64),
    start_ms: i64,
    duration_ms: i64,
}

fn row(tenant_id: &str, s: &Seed) -> UsageRow {
    let id = uuid::Uuid::new_v4().simple().to_string();
    UsageRow {
        record_id: id.clone(),
        session_id: id,
        tenant_id: tenant_id.to_string(),
        instance_id: s.stream.to_string(),
        node_id: "node-a".into(),
        domain: s.domain.into(),
        app: s.app.into(),
        stream: s.stream.into(),
        codec: s.codec.into(),
        width: s.size.0,
        height: s.size.1,
        start_ms: s.start_ms,
        end_ms: s.start_ms + s.duration_ms,
        is_final: true,
        received_at_ms: s.start_ms + s.duration_ms,
    }
}

impl Api {
    /// Control (with `control_extra` appended to its config), both tenants, and the usage:
    /// - acme, `live.acme.example`, app `cloudphone`: `inst-a` H.264 720×1280 12.345 s at
    ///   h0+10 min and 4 s at h0+1 h 40 min; `inst-b` H.265 1080×1920 30 s at h0+1 h;
    /// - acme, `old.acme.example` (deleted): `inst-c` H.264 480×640 60 s at h0+5 min;
    /// - acme, `live.acme.example`, app `otherapp`: `inst-d` H.264 720×1280, day 15:30Z–16:30Z;
    /// - other, `live.other.example`: `inst-e` H.264 720×1280 120 s at h0+10 min.
    async fn up(control_extra: &str) -> Self {
        let mut fleet = Fleet::new(None, "synthetic");
        fleet.control_extra = control_extra.to_string();
        fleet.create_tenant("acme", "correct-horse-1");
        fleet.create_tenant("other", "correct-horse-2");
        fleet.start_control();
        fleet.wait_healthy(&fleet.api.clone()).await;
        let acme = account(&fleet, "acme", "correct-horse-1").await;
        let other = account(&fleet, "other", "correct-horse-2").await;
        let now = now_ms();
        let h0 = hour_floor(now) - 48 * HOUR_MS;
        let day = now.div_euclid(DAY_MS) * DAY_MS - 5 * DAY_MS;

        let store = store::open(&fleet.store_url).await.unwrap();
        let domains = [
            (ACME_LIVE, &acme.tenant_id, None),
            (ACME_OLD, &acme.tenant_id, Some(now - 10 * DAY_MS)),
            (OTHER_LIVE, &other.tenant_id, None),
        ];
        for (domain, tenant_id, deleted_at_ms) in domains {
            store
                .create_domain(&DomainRecord {
                    domain: domain.into(),
                    tenant_id: tenant_id.clone(),
                    is_default: deleted_at_ms.is_none(),
                    created_at_ms: now - 400 * DAY_MS,
                    deleted_at_ms,
                })
                .await
                .unwrap();
        }
        let seed = |(domain, app, stream, codec, size, start_ms, duration_ms)| Seed {
            domain,
            app,
            stream,
            codec,
            size,
            start_ms,
            duration_ms,
        };
        let hd = (720, 1280);
        // (domain, app, stream, codec, size, start, duration), one row a line.
        #[rustfmt::skip]
        let acme_seeds = [
            (ACME_LIVE, "cloudphone", "inst-a", "H264", hd, h0 + 10 * MIN_MS, 12_345),
            (ACME_LIVE, "cloudphone", "inst-a", "H264", hd, h0 + 100 * MIN_MS, 4_000),
            (ACME_LIVE, "cloudphone", "inst-b", "H265", (1080, 1920), h0 + HOUR_MS, 30_000),
            (ACME_OLD, "cloudphone", "inst-c", "H264", (480, 640), h0 + 5 * MIN_MS, 60_000),
            (ACME_LIVE, "otherapp", "inst-d", "H264", hd, day + 930 * MIN_MS, HOUR_MS),
        ];
        let acme_rows = acme_seeds
            .into_iter()
            .map(|s| row(&acme.tenant_id, &seed(s)))
            .collect::<Vec<_>>();
        let other_row = seed((
            OTHER_LIVE,
            "cloudphone",
            "inst-e",
            "H264",
            hd,
            h0 + 10 * MIN_MS,
            120_000,
        ));
        store.store_usage(&acme_rows).await.unwrap();
        store
            .store_usage(&[row(&other.tenant_id, &other_row)])
            .await
            .unwrap();
        Self {
            fleet,
            acme,
            other,
            h0,
            day,
        }
    }

    /// A Huawei query with acme's token on acme's project.
    async fn huawei(&self, query: &str) -> Answer {
        Call::huawei(self, &self.acme.project_id, query)
            .with("x-auth-token", &self.acme.token)
            .send(self)
            .await
    }

    /// A Volcengine call signed with acme's key.
    async fn volc(&self, body: &Value) -> Answer {
        Call::volc(self, body)
            .signed_volc(&self.acme.ak, &self.acme.sk)
            .send(self)
            .await
    }
}

/// An HTTP request kept in parts, so it can be signed and then altered.
#[derive(Clone)]
struct Call {
    method: &'static str,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Answer {
    status: u16,
    request_id: Option<String>,
    body: Value,
}

impl Call {
    /// `GET /v2/{project}/stats/transcode?{query}` with the headers the Python SDK signs.
    fn huawei(api: &Api, project: &str, query: &str) -> Self {
        Self {
            method: "GET",
            path: format!("/v2/{project}/stats/transcode"),
            query: query.to_string(),
            headers: vec![
                (
                    "host".into(),
                    format!("127.0.0.1:{}", api.fleet.control_port),
                ),
                ("content-type".into(), "application/json".into()),
                ("x-project-id".into(), project.into()),
                ("x-sdk-date".into(), basic_date(now_ms())),
            ],
            body: Vec::new(),
        }
    }

    /// `POST /?Action=DescribeLiveTranscodeData&Version=2023-01-01` with `body`.
    fn volc(api: &Api, body: &Value) -> Self {
        Self::volc_raw(api, body.to_string().into_bytes())
    }

    fn volc_raw(api: &Api, body: Vec<u8>) -> Self {
        Self {
            method: "POST",
            path: "/".into(),
            query: VOLC_QUERY.into(),
            headers: vec![
                (
                    "host".into(),
                    format!("127.0.0.1:{}", api.fleet.control_port),
                ),
                ("content-type".into(), "application/json".into()),
                ("x-date".into(), basic_date(now_ms())),
                (
                    "x-content-sha256".into(),
                    hex::encode(sha2::Sha256::digest(&body)),
                ),
            ],
            body,
        }
    }

    /// Sets (or adds) a header.
    fn with(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }

    fn signed_headers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.headers.iter().map(|(k, _)| k.clone()).collect();
        names.sort();
        names
    }

    /// Signs every header present, as huaweicloudsdkcore's `Signer` does.
    fn signed_huawei(self, ak: &str, sk: &str) -> Self {
        let auth = sign::huawei::sign(&self.parts(), ak, sk, &self.signed_headers()).unwrap();
        self.with("authorization", &auth)
    }

    /// Signs every header present, as volcengine's `SignerV4` does.
    fn signed_volc(self, ak: &str, sk: &str) -> Self {
        let auth =
            sign::volc::sign(&self.parts(), ak, sk, "cn-north-1", &self.signed_headers()).unwrap();
        self.with("authorization", &auth)
    }

    async fn send(&self, api: &Api) -> Answer {
        let url = if self.query.is_empty() {
            format!("{}{}", api.fleet.api, self.path)
        } else {
            format!("{}{}?{}", api.fleet.api, self.path, self.query)
        };
        let mut request = api
            .fleet
            .http
            .request(
                reqwest::Method::from_bytes(self.method.as_bytes()).unwrap(),
                url,
            )
            .body(self.body.clone());
        for (k, v) in &self.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.json().await.unwrap_or(Value::Null);
        if self.path.starts_with("/v2/") {
            // Seed 004, tables 4 and 9: X-Request-Id on every answer.
            assert!(
                request_id.as_deref().is_some_and(|id| !id.is_empty()),
                "no X-Request-Id: {status} {body}"
            );
        } else {
            let meta = &body["ResponseMetadata"];
            assert!(
                meta["RequestId"].as_str().is_some_and(|id| !id.is_empty()),
                "{body}"
            );
            assert_eq!(
                (&meta["Action"], &meta["Version"], &meta["Service"]),
                (
                    &json!("DescribeLiveTranscodeData"),
                    &json!("2023-01-01"),
                    &json!("live")
                ),
                "{body}"
            );
        }
        Answer {
            status,
            request_id,
            body,
        }
    }
}

impl Answer {
    /// Asserts the Huawei error (status, `error_code`, `error_msg`) and that it carries no data.
    fn huawei_error(&self, status: u16, code: &str, msg: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error_code"], code, "{}", self.body);
        let text = self.body["error_msg"].as_str().unwrap_or_default();
        assert!(text.contains(msg), "{text:?} lacks {msg:?}");
        assert!(self.body.get("transcode_data_list").is_none());
        assert!(self.body.get("summary_list").is_none());
    }

    /// Asserts the Volcengine error (status, `Error.Code`, `CodeN` where the common list has
    /// one) and that it carries no `Result`.
    fn volc_error(&self, status: u16, code: &str, code_n: Option<u64>) {
        assert_eq!(self.status, status, "{}", self.body);
        let error = &self.body["ResponseMetadata"]["Error"];
        assert_eq!(error["Code"], code, "{}", self.body);
        assert_eq!(error["CodeN"].as_u64(), code_n, "{}", self.body);
        assert!(error["Message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(self.body.get("Result").is_none(), "{}", self.body);
    }

    fn ok(&self) -> &Value {
        assert_eq!(self.status, 200, "{}", self.body);
        if let Some(result) = self.body.get("Result") {
            assert!(self.body["ResponseMetadata"].get("Error").is_none());
            return result;
        }
        &self.body
    }

    /// Huawei: the `time`s of `transcode_data_list`.
    fn hours(&self) -> Vec<String> {
        self.ok()["transcode_data_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["time"].as_str().unwrap().to_string())
            .collect()
    }

    /// Volcengine: (TimeStamp, TranscodeType, Resolution, Duration) of each entry.
    fn entries(&self) -> Vec<(String, String, String, f64)> {
        self.ok()["TranscodeDataList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["TimeStamp"].as_str().unwrap().into(),
                    e["TranscodeType"].as_str().unwrap().into(),
                    e["Resolution"].as_str().unwrap().into(),
                    e["Duration"].as_f64().unwrap(),
                )
            })
            .collect()
    }

    /// Volcengine: minutes of one class over all days.
    fn class_minutes(&self, kind: &str, resolution: &str) -> f64 {
        self.entries()
            .iter()
            .filter(|e| e.1 == kind && e.2 == resolution)
            .map(|e| e.3)
            .sum()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Signing times around the 15 min bound on clock skew, and whether each is accepted: 5 s inside
/// it either way, 5 s outside.
const SKEWS: [(i64, bool); 4] = [
    (-15 * MIN_MS + 5000, true),
    (15 * MIN_MS - 5000, true),
    (-15 * MIN_MS - 5000, false),
    (15 * MIN_MS + 5000, false),
];

/// Sends, for each of [`SKEWS`], the call `signed_at` makes signed at now + that offset: an
/// accepted one must answer 200, a refused one goes to `refused` to check its error.
async fn check_skews(api: &Api, signed_at: impl Fn(i64) -> Call, refused: impl Fn(Answer)) {
    for (offset, ok) in SKEWS {
        let a = signed_at(now_ms() + offset).send(api).await;
        if ok {
            assert_eq!(a.status, 200, "{offset}: {}", a.body);
        } else {
            refused(a);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Huawei (seed 004)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_time_rules_at_their_boundaries() {
    let api = Api::up("").await;
    let h0 = api.h0;
    let q = |start: &str, end: &str| {
        format!("publish_domain={ACME_LIVE}&start_time={start}&end_time={end}")
    };

    // Floored to the hour, both end hours listed: the 10:00 session counts although it ended
    // before start_time's minutes, and the 1 h 40 min one although end_time says 1 h 20 min.
    let a = api
        .huawei(&q(
            &iso(h0 + 20 * MIN_MS + 40_000),
            &iso(h0 + HOUR_MS + 20 * MIN_MS),
        ))
        .await;
    assert_eq!(a.hours(), [iso(h0), iso(h0 + HOUR_MS)]);
    let body = a.ok();
    assert_eq!(
        body["transcode_data_list"][0]["spec_list"],
        json!([{"type": "H264_HD", "value": 0.21}])
    );
    assert_eq!(
        body["transcode_data_list"][1]["spec_list"],
        json!([{"type": "H264_HD", "value": 0.07}, {"type": "H265_FHD", "value": 0.5}])
    );

    // end_time must be later than start_time: equal is refused, one second later is one hour.
    let at = iso(h0 + 20 * MIN_MS);
    api.huawei(&q(&at, &at)).await.huawei_error(
        400,
        "LIVE.100011001",
        "Invalid request parameter: end_time must be later than start_time",
    );
    let one_later = api.huawei(&q(&at, &iso(h0 + 20 * MIN_MS + 1000))).await;
    assert_eq!(one_later.hours(), [iso(h0)]);
    api.huawei(&q(&iso(h0 + HOUR_MS), &iso(h0)))
        .await
        .huawei_error(400, "LIVE.100011001", "end_time");

    // start_time empty: the 24 h before end_time.
    let end = h0 + 2 * HOUR_MS + 30 * MIN_MS;
    let a = api
        .huawei(&format!("publish_domain={ACME_LIVE}&end_time={}", iso(end)))
        .await;
    let hours = a.hours();
    assert_eq!(hours.len(), 25);
    assert_eq!(hours[0], iso(hour_floor(end - DAY_MS)));
    assert_eq!(hours[24], iso(h0 + 2 * HOUR_MS));
    assert_eq!(
        a.ok()["summary_list"],
        json!([{"type": "H264_HD", "value": 0.27}, {"type": "H265_FHD", "value": 0.5}])
    );

    // The rules relative to the current hour (both times empty, end_time empty, hours after
    // now, history ≤ 1 year) are `http::tests::huawei_hours_relative_to_now_on_a_controlled_clock`
    // in control, with "now" at a chosen half past the hour instead of retrying until the hour
    // did not change.

    // Span ≤ 31 days between the floored times: 31 days and 59 min 59 s as given is 31 days
    // floored (745 hours listed); one second more is 31 days and an hour.
    let start = hour_floor(now_ms()) - 40 * DAY_MS;
    let a = api
        .huawei(&q(
            &iso(start + 59 * MIN_MS),
            &iso(start + 31 * DAY_MS + HOUR_MS - 1000),
        ))
        .await;
    assert_eq!(a.hours().len(), 31 * 24 + 1);
    api.huawei(&q(
        &iso(start + 59 * MIN_MS),
        &iso(start + 31 * DAY_MS + HOUR_MS),
    ))
    .await
    .huawei_error(400, "LIVE.100011001", "exceeds 31 days");

    // The document's format only: UTC with Z, no offsets, no fractions.
    for bad in [
        "2026-11-20T07:00:00+08:00",
        "2026-11-20 07:00:00",
        "2026-11-20T07:00:00.5Z",
    ] {
        let encoded = bad.replace('+', "%2B").replace(' ', "%20");
        api.huawei(&q(&encoded, &iso(h0))).await.huawei_error(
            400,
            "LIVE.100011001",
            "Invalid request parameter: start_time",
        );
        api.huawei(&q(&iso(h0), &encoded)).await.huawei_error(
            400,
            "LIVE.100011001",
            "Invalid request parameter: end_time",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_domain_stream_rounding_and_request_ids() {
    let api = Api::up("").await;
    let h0 = api.h0;
    let window = format!("start_time={}&end_time={}", iso(h0), iso(h0 + HOUR_MS));

    // publish_domain is required: the document's 400 example, to the letter.
    let example = json!({"error_code": "LIVE.100011001",
        "error_msg": "Invalid request parameter: publish_domain"});
    for query in [window.clone(), format!("publish_domain=&{window}")] {
        let a = api.huawei(&query).await;
        assert_eq!((a.status, &a.body), (400, &example));
    }
    // Another tenant's domain answers exactly like one that does not exist, with no data.
    for domain in [OTHER_LIVE, "nowhere.example"] {
        let a = api
            .huawei(&format!("publish_domain={domain}&{window}"))
            .await;
        assert_eq!((a.status, &a.body), (400, &example));
    }

    // Minutes rounded to 2 decimals per hour; the summary rounds the exact total (12.345 s +
    // 4 s = 0.2724 min → 0.27, where the rounded hours would add to 0.28).
    let a = api
        .huawei(&format!("publish_domain={ACME_LIVE}&{window}"))
        .await;
    assert_eq!(
        a.ok(),
        &json!({
            "transcode_data_list": [
                {"time": iso(h0), "spec_list": [{"type": "H264_HD", "value": 0.21}]},
                {"time": iso(h0 + HOUR_MS), "spec_list": [
                    {"type": "H264_HD", "value": 0.07}, {"type": "H265_FHD", "value": 0.5}]},
            ],
            "summary_list": [{"type": "H264_HD", "value": 0.27}, {"type": "H265_FHD", "value": 0.5}],
        })
    );
    // The stream filter; an unknown stream lists the hours with nothing in them.
    let a = api
        .huawei(&format!(
            "publish_domain={ACME_LIVE}&stream=inst-b&{window}"
        ))
        .await;
    assert_eq!(
        a.ok()["summary_list"],
        json!([{"type": "H265_FHD", "value": 0.5}])
    );
    assert_eq!(a.ok()["transcode_data_list"][0]["spec_list"], json!([]));
    let a = api
        .huawei(&format!(
            "publish_domain={ACME_LIVE}&stream=inst-z&{window}"
        ))
        .await;
    assert_eq!(a.hours().len(), 2);
    assert_eq!(a.ok()["summary_list"], json!([]));
    // A deleted domain of the tenant's still answers for the usage it had.
    let a = api
        .huawei(&format!("publish_domain={ACME_OLD}&{window}"))
        .await;
    assert_eq!(
        a.ok()["summary_list"],
        json!([{"type": "H264_SD", "value": 1.0}])
    );

    // X-Request-Id: the client's is echoed on success and failure alike, one is made up when
    // the client sends none (`send` checks every answer has one).
    for query in [
        format!("publish_domain={ACME_LIVE}&{window}"),
        window.clone(),
    ] {
        let a = Call::huawei(&api, &api.acme.project_id, &query)
            .with("x-auth-token", &api.acme.token)
            .with("x-request-id", "rules-echo-1")
            .send(&api)
            .await;
        assert_eq!(a.request_id.as_deref(), Some("rules-echo-1"));
    }
    let first = api.huawei(&window).await.request_id;
    assert_ne!(first, api.huawei(&window).await.request_id);
}

// ---------------------------------------------------------------------------------------------
// Volcengine (seed 002)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volcengine_time_rules_at_their_boundaries() {
    let api = Api::up("").await;
    let day = api.day;
    let body = |start: String, end: String| json!({"StartTime": start, "EndTime": end, "Aggregation": 86400, "App": "otherapp"});

    // Days start at midnight of StartTime's offset. The 60 min session runs 15:30Z–16:30Z,
    // i.e. 23:30–00:30 at +08:00 (30 min on each day) and 10:00–11:00 at -05:30.
    let east = 8 * 3600;
    let local_day = day - 8 * HOUR_MS;
    let a = api
        .volc(&body(
            rfc(local_day - DAY_MS, east),
            rfc(local_day + 2 * DAY_MS, east),
        ))
        .await;
    let kind = ("Normal_H264".to_string(), "720P".to_string());
    assert_eq!(
        a.entries(),
        [
            (rfc(local_day, east), kind.0.clone(), kind.1.clone(), 30.0),
            (
                rfc(local_day + DAY_MS, east),
                kind.0.clone(),
                kind.1.clone(),
                30.0
            ),
        ]
    );
    assert!(rfc(local_day, east).ends_with("T00:00:00+08:00"));
    let result = a.ok();
    assert_eq!(result["StartTime"], rfc(local_day - DAY_MS, east));
    assert_eq!(result["Aggregation"], 86400);
    assert!(close(result["Duration"].as_f64().unwrap(), 60.0));
    assert_eq!(result["App"], "otherapp");
    let a = api
        .volc(&body(rfc(day - DAY_MS, 0), rfc(day + 2 * DAY_MS, 0)))
        .await;
    assert_eq!(
        a.entries(),
        [(rfc(day, 0), kind.0.clone(), kind.1.clone(), 60.0)]
    );
    assert!(rfc(day, 0).ends_with("T00:00:00Z"));
    let west = -(5 * 3600 + 1800);
    let local_day = day + 5 * HOUR_MS + 30 * MIN_MS;
    let a = api
        .volc(&body(
            rfc(local_day - DAY_MS, west),
            rfc(local_day + DAY_MS, west),
        ))
        .await;
    assert_eq!(
        a.entries(),
        [(rfc(local_day, west), kind.0.clone(), kind.1.clone(), 60.0)]
    );
    assert!(rfc(local_day, west).ends_with("T00:00:00-05:30"));

    // Usage inside [StartTime, EndTime) counts: the window cut at 16:00Z keeps half.
    let cut = day + 16 * HOUR_MS;
    let a = api
        .volc(&body(rfc(cut, east), rfc(cut + DAY_MS, east)))
        .await;
    assert!(close(a.class_minutes(&kind.0, &kind.1), 30.0));
    let a = api.volc(&body(rfc(cut - DAY_MS, 0), rfc(cut, 0))).await;
    assert!(close(a.class_minutes(&kind.0, &kind.1), 30.0));

    // EndTime after StartTime: equal is refused, one second later accepted.
    let start = rfc(day, east);
    api.volc(&body(start.clone(), start.clone()))
        .await
        .volc_error(400, "InvalidParam", None);
    assert_eq!(
        api.volc(&body(start.clone(), rfc(day + 1000, east)))
            .await
            .status,
        200
    );
    // Required, RFC 3339 with an offset.
    for (start, end) in [
        (None, Some(rfc(day, 0))),
        (Some(rfc(day, 0)), None),
        (Some("2026-01-01T00:00:00".to_string()), Some(rfc(day, 0))),
        (Some(rfc(day - DAY_MS, 0)), Some(iso(day).replace('Z', ""))),
    ] {
        let mut b = json!({"Aggregation": 86400});
        if let Some(s) = start {
            b["StartTime"] = json!(s);
        }
        if let Some(e) = end {
            b["EndTime"] = json!(e);
        }
        api.volc(&b).await.volc_error(400, "InvalidParam", None);
    }

    // Aggregation: 86400 only, and 86400 when absent.
    let mut b = body(rfc(day, 0), rfc(day + DAY_MS, 0));
    b.as_object_mut().unwrap().remove("Aggregation");
    assert_eq!(api.volc(&b).await.ok()["Aggregation"], 86400);
    for other in [3600, 86401, 0] {
        b["Aggregation"] = json!(other);
        api.volc(&b).await.volc_error(400, "InvalidParam", None);
    }

    // Span ≤ 93 days: exactly 93 days accepted, one second more refused.
    let now = now_ms() / 1000 * 1000;
    let start = now - 100 * DAY_MS;
    let a = api
        .volc(&body(rfc(start, east), rfc(start + 93 * DAY_MS, east)))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    api.volc(&body(
        rfc(start, east),
        rfc(start + 93 * DAY_MS + 1000, east),
    ))
    .await
    .volc_error(400, "InvalidParam", None);

    // History ≤ 366 days: a StartTime 366 days ago (plus the seconds this request may take to
    // arrive) is accepted, one second older is refused.
    let oldest = now_ms() / 1000 * 1000 - 366 * DAY_MS;
    let a = api
        .volc(&body(rfc(oldest + 5000, 0), rfc(oldest + DAY_MS, 0)))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    api.volc(&body(rfc(oldest - 1000, 0), rfc(oldest + DAY_MS, 0)))
        .await
        .volc_error(400, "InvalidParam", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volcengine_domains_filters_and_every_error() {
    let mut api = Api::up("").await;
    let h0 = api.h0;
    let (start, end) = (rfc(h0 - DAY_MS, 0), rfc(h0 + DAY_MS, 0));
    let window = json!({"StartTime": start, "EndTime": end});
    let with = |extra: Value| {
        let mut b = window.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };

    // DomainList absent or empty: all of the account's domains, the deleted one included, and
    // nobody else's usage.
    for b in [window.clone(), with(json!({"DomainList": []}))] {
        let a = api.volc(&b).await;
        let mut domains: Vec<String> =
            serde_json::from_value(a.ok()["DomainList"].clone()).unwrap();
        domains.sort();
        assert_eq!(domains, [ACME_LIVE, ACME_OLD]);
        assert!(close(a.class_minutes("Normal_H264", "480P"), 1.0));
        assert!(close(
            a.class_minutes("Normal_H264", "720P"),
            16_345.0 / 60_000.0
        ));
        assert!(close(a.class_minutes("Normal_H265", "1080P"), 0.5));
        assert!(close(
            a.ok()["Duration"].as_f64().unwrap(),
            (60_000.0 + 16_345.0 + 30_000.0) / 60_000.0
        ));
        assert_eq!(a.ok()["StartTime"], start);
        assert_eq!(a.ok()["EndTime"], end);
    }
    let a = api.volc(&with(json!({"DomainList": [ACME_OLD]}))).await;
    assert_eq!(a.ok()["DomainList"], json!([ACME_OLD]));
    assert_eq!(a.entries().len(), 1);
    assert!(close(a.class_minutes("Normal_H264", "480P"), 1.0));

    // App and Stream filters, echoed in Result.
    let a = api.volc(&with(json!({"Stream": "inst-b"}))).await;
    assert_eq!(a.ok()["Stream"], "inst-b");
    assert_eq!(a.entries().len(), 1);
    assert!(close(a.class_minutes("Normal_H265", "1080P"), 0.5));
    let a = api
        .volc(&with(json!({"App": "cloudphone", "Stream": "inst-a"})))
        .await;
    assert!(close(
        a.class_minutes("Normal_H264", "720P"),
        16_345.0 / 60_000.0
    ));
    assert_eq!(
        a.entries().len(),
        a.entries().iter().filter(|e| e.2 == "720P").count()
    );
    let a = api.volc(&with(json!({"App": "otherapp"}))).await;
    assert_eq!(
        (a.entries().len(), a.ok()["Duration"].as_f64()),
        (0, Some(0.0))
    );
    assert_eq!(a.ok()["App"], "otherapp");

    // The document's errors, each with its HTTP status.
    // InvalidParam (400): a rule broken.
    api.volc(&with(json!({"Aggregation": 3600})))
        .await
        .volc_error(400, "InvalidParam", None);
    // InvalidParam.BindError (400): a body of the wrong shape or type.
    for bad in [
        with(json!({"Aggregation": "86400"})),
        with(json!({"DomainList": ACME_LIVE})),
        json!({"StartTime": 20260101, "EndTime": end}),
    ] {
        let a = api.volc(&bad).await;
        a.volc_error(400, "InvalidParam.BindError", None);
        assert_eq!(
            a.body["ResponseMetadata"]["Error"]["Message"],
            "Request parameter error, please check input data"
        );
    }
    Call::volc_raw(&api, b"{\"StartTime\":".to_vec())
        .signed_volc(&api.acme.ak, &api.acme.sk)
        .send(&api)
        .await
        .volc_error(400, "InvalidParam.BindError", None);
    // RequestForbidden.AccountIDNotAllow (403): another account's domain, or one that exists
    // nowhere (answered alike, so nobody learns which domains exist), alone or among its own.
    for asked in [
        json!([OTHER_LIVE]),
        json!(["nowhere.example"]),
        json!([ACME_LIVE, OTHER_LIVE]),
    ] {
        let a = api.volc(&with(json!({"DomainList": asked}))).await;
        a.volc_error(403, "RequestForbidden.AccountIDNotAllow", None);
        assert_eq!(
            a.body["ResponseMetadata"]["Error"]["Message"],
            "this AccountID does not have permission to access the corresponding resource, please check the request parameters"
        );
    }
    // The other account sees its own usage only.
    let a = Call::volc(&api, &window)
        .signed_volc(&api.other.ak, &api.other.sk)
        .send(&api)
        .await;
    assert_eq!(a.ok()["DomainList"], json!([OTHER_LIVE]));
    assert!(close(a.ok()["Duration"].as_f64().unwrap(), 2.0));

    // InternalError (500): control cannot use its stored secrets (the sealing key file was
    // replaced), which is control's fault, not a bad signature. Huawei's side answers 500 too.
    let key_file = api.fleet.path("usage-secrets.key");
    assert!(key_file.exists());
    api.fleet
        .control
        .as_mut()
        .unwrap()
        .stop_with(nix::sys::signal::Signal::SIGTERM);
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    api.fleet.start_control();
    api.fleet.wait_healthy(&api.fleet.api.clone()).await;
    api.volc(&window)
        .await
        .volc_error(500, "InternalError", None);
    Call::huawei(
        &api,
        &api.acme.project_id,
        &format!("publish_domain={ACME_LIVE}"),
    )
    .signed_huawei(&api.acme.ak, &api.acme.sk)
    .send(&api)
    .await
    .huawei_error(500, "LIVE.100011000", "Internal server error");
}

/// The budget over HTTP; that the window reopens a minute after the first request is
/// `http::tests::volcengine_rate_window_reopens_in_tokio_time`, in tokio's paused time instead of
/// waiting out the window here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volcengine_rate_limit_refuses_the_101st_request_of_a_window_per_user() {
    // The document's 100 requests per minute (the default config).
    let window = Duration::from_secs(60);
    let api = Api::up("").await;
    let now = now_ms();
    let body = json!({"StartTime": rfc(now - DAY_MS, 0), "EndTime": rfc(now, 0)});
    // Eight at a time, so a busy machine still fills the budget well inside the window.
    let first = Instant::now();
    let answers: Vec<Answer> = futures::stream::iter(0..100)
        .map(|_| api.volc(&body))
        .buffer_unordered(8)
        .collect()
        .await;
    let filled = first.elapsed();
    eprintln!("100 requests accepted in {filled:?}");
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert!(
        filled < window - Duration::from_secs(1),
        "100 requests took {filled:?}: too slow to test a {window:?} window"
    );
    // The 101st: FlowLimitExceeded (429), and so is the next (refusals do not extend it).
    for _ in 0..2 {
        api.volc(&body)
            .await
            .volc_error(429, "FlowLimitExceeded", Some(100_018));
    }
    // Per user: a second key of the same user shares the budget; another user has their own.
    let (ak2, sk2) = api.fleet.access_key(&api.acme.token, "second").await;
    Call::volc(&api, &body)
        .signed_volc(&ak2, &sk2)
        .send(&api)
        .await
        .volc_error(429, "FlowLimitExceeded", Some(100_018));
    let other = Call::volc(&api, &body)
        .signed_volc(&api.other.ak, &api.other.sk)
        .send(&api)
        .await;
    assert_eq!(other.status, 200, "{}", other.body);
}

// ---------------------------------------------------------------------------------------------
// Signatures and tenants, both schemes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_signatures_and_tenants_over_http() {
    let api = Api::up("").await;
    let (acme, other) = (&api.acme, &api.other);
    let query = format!("publish_domain={ACME_LIVE}&start_time={}", iso(api.h0));
    let call = |date_ms: i64| {
        Call::huawei(&api, &acme.project_id, &query).with("x-sdk-date", &basic_date(date_ms))
    };
    let unauthorized = |a: Answer| a.huawei_error(401, "APIGW.0301", "");

    // The signature the SDK makes verifies.
    let a = call(now_ms())
        .signed_huawei(&acme.ak, &acme.sk)
        .send(&api)
        .await;
    assert_eq!(a.ok()["summary_list"][0]["type"], "H264_HD");
    // Wrong key, unknown key, no credentials at all.
    unauthorized(
        call(now_ms())
            .signed_huawei(&acme.ak, &other.sk)
            .send(&api)
            .await,
    );
    unauthorized(
        call(now_ms())
            .signed_huawei("NOSUCHKEY00000000000", &acme.sk)
            .send(&api)
            .await,
    );
    unauthorized(call(now_ms()).send(&api).await);
    // Clock skew: 14 min 55 s either way is accepted, 15 min 5 s is not.
    check_skews(
        &api,
        |date_ms| call(date_ms).signed_huawei(&acme.ak, &acme.sk),
        unauthorized,
    )
    .await;
    // Altered after signing: the query (another stream, an added parameter), a signed header.
    let signed = call(now_ms()).signed_huawei(&acme.ak, &acme.sk);
    for altered in [
        Call {
            query: format!("{query}&stream=inst-b"),
            ..signed.clone()
        },
        Call {
            query: query.replace(ACME_LIVE, ACME_OLD),
            ..signed.clone()
        },
        signed.clone().with("content-type", "text/plain"),
    ] {
        unauthorized(altered.send(&api).await);
    }
    // A signature that leaves X-Sdk-Date out could be replayed forever: refused.
    let mut unsigned_date = call(now_ms());
    let names: Vec<String> = vec!["content-type".into(), "host".into(), "x-project-id".into()];
    let auth = sign::huawei::sign(&unsigned_date.parts(), &acme.ak, &acme.sk, &names).unwrap();
    unsigned_date = unsigned_date.with("authorization", &auth);
    unauthorized(unsigned_date.send(&api).await);

    // Another tenant's project: with acme's key (signed for it, or for acme's own project in
    // X-Project-Id), or acme's token, 403 and no data. A project that exists nowhere answers the
    // same.
    let on = |project: &str| Call::huawei(&api, project, &query);
    for refused in [
        on(&other.project_id).signed_huawei(&acme.ak, &acme.sk),
        on(&other.project_id)
            .with("x-project-id", &acme.project_id)
            .signed_huawei(&acme.ak, &acme.sk),
        on(&other.project_id).with("x-auth-token", &acme.token),
        on("0123456789abcdef0123456789abcdef").signed_huawei(&acme.ak, &acme.sk),
    ] {
        refused
            .send(&api)
            .await
            .huawei_error(403, "APIGW.0302", "not authorized");
    }
    // Another tenant's domain on the own project: the document's 400, no data.
    let a = Call::huawei(
        &api,
        &acme.project_id,
        &format!("publish_domain={OTHER_LIVE}"),
    )
    .signed_huawei(&acme.ak, &acme.sk)
    .send(&api)
    .await;
    a.huawei_error(
        400,
        "LIVE.100011001",
        "Invalid request parameter: publish_domain",
    );
    // A bad token, and a deleted key.
    unauthorized(
        Call::huawei(&api, &acme.project_id, &query)
            .with("x-auth-token", "not-a-token")
            .send(&api)
            .await,
    );
    let deleted = api
        .fleet
        .http
        .delete(format!(
            "{}/v3.0/OS-CREDENTIAL/credentials/{}",
            api.fleet.api, acme.ak
        ))
        .header("x-auth-token", &acme.token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    unauthorized(
        call(now_ms())
            .signed_huawei(&acme.ak, &acme.sk)
            .send(&api)
            .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volcengine_signatures_and_tenants_over_http() {
    let api = Api::up("").await;
    let (acme, other) = (&api.acme, &api.other);
    let body = json!({"DomainList": [ACME_LIVE], "StartTime": rfc(api.h0 - DAY_MS, 0),
        "EndTime": rfc(api.h0 + DAY_MS, 0), "Aggregation": 86400});
    let call = |date_ms: i64| Call::volc(&api, &body).with("x-date", &basic_date(date_ms));

    // The signature the SDK makes verifies.
    let a = call(now_ms())
        .signed_volc(&acme.ak, &acme.sk)
        .send(&api)
        .await;
    assert!(a.ok()["Duration"].as_f64().unwrap() > 0.0);
    assert_eq!(a.body["ResponseMetadata"]["Region"], "cn-north-1");
    // Wrong key: SignatureDoesNotMatch; unknown key: InvalidAccessKey; none:
    // MissingAuthenticationToken; malformed, or signed for another service: InvalidAuthorization.
    call(now_ms())
        .signed_volc(&acme.ak, &other.sk)
        .send(&api)
        .await
        .volc_error(401, "SignatureDoesNotMatch", Some(100_010));
    call(now_ms())
        .signed_volc("NOSUCHKEY00000000000", &acme.sk)
        .send(&api)
        .await
        .volc_error(401, "InvalidAccessKey", Some(100_009));
    call(now_ms())
        .send(&api)
        .await
        .volc_error(401, "MissingAuthenticationToken", Some(100_003));
    let signed = call(now_ms()).signed_volc(&acme.ak, &acme.sk);
    let auth = signed.parts().header("authorization").unwrap().to_string();
    for bad in [
        "HMAC-SHA256 Credential=x".to_string(),
        auth.replace("/live/request", "/vod/request"),
    ] {
        signed
            .clone()
            .with("authorization", &bad)
            .send(&api)
            .await
            .volc_error(401, "InvalidAuthorization", None);
    }
    // Clock skew: 14 min 55 s either way is accepted, 15 min 5 s is InvalidTimestamp.
    check_skews(
        &api,
        |date_ms| call(date_ms).signed_volc(&acme.ak, &acme.sk),
        |a| a.volc_error(400, "InvalidTimestamp", Some(100_006)),
    )
    .await;
    // Altered after signing: the body (with X-Content-Sha256 left alone, or recomputed), the
    // query, a signed header.
    let mut other_body = body.clone();
    other_body["DomainList"] = json!([ACME_OLD]);
    let other_bytes = other_body.to_string().into_bytes();
    let recomputed = hex::encode(sha2::Sha256::digest(&other_bytes));
    for altered in [
        Call {
            body: other_bytes.clone(),
            ..signed.clone()
        },
        Call {
            body: other_bytes.clone(),
            ..signed.clone()
        }
        .with("x-content-sha256", &recomputed),
        Call {
            query: format!("{VOLC_QUERY}&Extra=1"),
            ..signed.clone()
        },
        signed.clone().with("content-type", "text/plain"),
    ] {
        altered
            .send(&api)
            .await
            .volc_error(401, "SignatureDoesNotMatch", Some(100_010));
    }
    // Another action or version: InvalidActionOrVersion (404), signed or not.
    for query in [
        "Action=DescribeLiveTranscodeData&Version=2020-08-01",
        "Action=DescribeLiveBandwidthData&Version=2023-01-01",
    ] {
        Call {
            query: query.into(),
            ..call(now_ms())
        }
        .signed_volc(&acme.ak, &acme.sk)
        .send(&api)
        .await
        .volc_error(404, "InvalidActionOrVersion", Some(100_008));
    }
    // Another tenant's domain: RequestForbidden.AccountIDNotAllow, no data; the other tenant's
    // own key on acme's domain alike.
    let mut foreign = body.clone();
    foreign["DomainList"] = json!([OTHER_LIVE]);
    Call::volc(&api, &foreign)
        .signed_volc(&acme.ak, &acme.sk)
        .send(&api)
        .await
        .volc_error(403, "RequestForbidden.AccountIDNotAllow", None);
    call(now_ms())
        .signed_volc(&other.ak, &other.sk)
        .send(&api)
        .await
        .volc_error(403, "RequestForbidden.AccountIDNotAllow", None);
}
