//! Issue 15's first Done-when item against real daemons: a real control (serving the VS API on
//! `[live_api]`) and a real node (RTMP ingest on `[live] rtmp_listen`), driven by three clients
//! in turn — the official SDK with its default ACS3-HMAC-SHA256 signing, the SDK with
//! `signature_algorithm='v2'`, and signed GETs written here from the document (HMAC-SHA1
//! computed with `hmac`/`sha1` directly, not with cloudphone-vs-api's code) — each through:
//! tenant → group → push URL → a `gst-launch-1.0 … rtmp2sink` push → DescribeStream `on` →
//! FLV, RTMP, HLS and WHEP players (URLs from DescribeStreamURL and ScreenShowStreams) each
//! decoding > 30 frames → ForbidVsStream drops the publisher within 5 s and refuses a new push →
//! ResumeVsStream admits it again (`on`) → the publisher stops → `off`. No API request gets a
//! 5xx. The three runs share nothing but the binaries; they hold one lock so that only one
//! encoder and its players run at a time on the 2-core machine.

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cloudphone_testkit::browser::workspace;
use cloudphone_testkit::fleet::Fleet;
use cloudphone_testkit::live::{Player, rtmp_push};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};

use crate::support::{iso, now_ms, venv_python};

const OPERATOR: (&str, &str) = ("OPERATORKEYID00000000000000000001", "operator-secret");
const CONTROL: &str = "[live_api]\nlisten = \"127.0.0.1:0\"\n\
    operator_access_key_id = \"OPERATORKEYID00000000000000000001\"\n\
    operator_access_key_secret = \"operator-secret\"\n";
const NODE: &str = "[live]\nrtmp_listen = \"127.0.0.1:0\"\n";
/// How long a player may take to decode its frames, and a stream to show `on`.
const WAIT: Duration = Duration::from_secs(60);
/// The node reports every 2 s; a stopped publisher shows `off` well within this.
const OFF_WITHIN: Duration = Duration::from_secs(10);
/// Frames each player must decode.
const FRAMES: u64 = 31;

type Key = (String, String);

/// Which client drives the API.
#[derive(Debug, Clone, Copy)]
enum Client {
    /// `tests/sdk/vs.py serve`: the official SDK, default signing (None) or `Some("v2")`.
    Sdk(Option<&'static str>),
    /// Signed GETs built here from the document's scheme.
    Document,
}

/// The document's percent-encoding: RFC 3986 unreserved characters kept, everything else
/// `%XX` (upper-case hex), so a space is `%20`.
fn percent(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A GET query signed as the document says: common parameters plus `params`, sorted, encoded,
/// `GET&%2F&` + percent(canonical), HMAC-SHA1 keyed with `secret&`, Base64.
fn document_query(key: &Key, action: &str, params: &[(&str, &str)]) -> String {
    let nonce = uuid::Uuid::new_v4().to_string();
    let timestamp = iso(now_ms());
    let mut all: Vec<(&str, &str)> = vec![
        ("AccessKeyId", &key.0),
        ("Action", action),
        ("Format", "JSON"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", &nonce),
        ("SignatureVersion", "1.0"),
        ("Timestamp", &timestamp),
        ("Version", "2018-12-12"),
    ];
    all.extend_from_slice(params);
    let mut encoded: Vec<(String, String)> =
        all.iter().map(|(n, v)| (percent(n), percent(v))).collect();
    encoded.sort();
    let canonical = encoded
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!("GET&{}&{}", percent("/"), percent(&canonical));
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{}&", key.1).as_bytes()).unwrap();
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("{canonical}&Signature={}", percent(&signature))
}

/// A fleet serving the VS API with a live node, and the API's base URL.
struct Live {
    /// Held for its daemons (dropping it stops them).
    _fleet: Fleet,
    base: String,
    http: reqwest::Client,
    /// `vs.py serve`, started by the first SDK step.
    sdk: tokio::sync::Mutex<Option<SdkProcess>>,
}

impl Live {
    async fn up() -> Self {
        let fleet = Fleet::up_with("synthetic", CONTROL, NODE).await;
        let ready: Value =
            serde_json::from_str(&std::fs::read_to_string(fleet.path("control.ready")).unwrap())
                .unwrap();
        let base = format!("http://{}", ready["live_api"].as_str().unwrap());
        Self {
            _fleet: fleet,
            base,
            http: reqwest::Client::new(),
            sdk: tokio::sync::Mutex::new(None),
        }
    }

    /// One step of the scenario by `client` with `key`: the answer's body. Any refusal fails
    /// the test (with its status: no 5xx, and here no 4xx either).
    async fn step(&self, client: Client, key: &Key, step: &str, args: Value) -> Value {
        self.step_at(client, key, step, args).await.0
    }

    /// [`Live::step`], and when the request left (Unix ms; for the SDK, when it was called).
    async fn step_at(&self, client: Client, key: &Key, step: &str, args: Value) -> (Value, i64) {
        match client {
            Client::Sdk(algorithm) => {
                let mut input = args;
                input["endpoint"] = json!(self.base.trim_start_matches("http://"));
                input["key"] = json!([key.0, key.1]);
                input["algorithm"] = json!(algorithm);
                input["step"] = json!(step);
                let mut sdk = self.sdk.lock().await;
                if sdk.is_none() {
                    *sdk = Some(SdkProcess::start());
                }
                let out = sdk.as_mut().unwrap().call(&input).await;
                (out["answer"].clone(), out["sent_unix_ms"].as_i64().unwrap())
            }
            Client::Document => {
                let (action, params) = document_action(step, &args);
                let params: Vec<(&str, &str)> =
                    params.iter().map(|(n, v)| (*n, v.as_str())).collect();
                let url = format!("{}/?{}", self.base, document_query(key, action, &params));
                let sent = now_ms();
                let response = self.http.get(&url).send().await.unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                assert!(status < 500, "{action}: {status} {body}");
                assert_eq!(status, 200, "{action} {params:?}: {body}");
                assert!(body["RequestId"].as_str().is_some(), "{body}");
                (body, sent)
            }
        }
    }
}

/// The Action and parameters of `step` (as `vs.py` names them), for the document's client.
fn document_action(step: &str, a: &Value) -> (&'static str, Vec<(&'static str, String)>) {
    let s = |name: &str| a[name].as_str().unwrap().to_string();
    match step {
        "service" => (
            "CreateMtsService",
            vec![
                ("UserId", s("user_id")),
                (
                    "AccessInfo",
                    "{\"AccessKeyId\":\"demo\",\"AccessKeySecret\":\"demo\"}".into(),
                ),
            ],
        ),
        "group" => (
            "CreateGroup",
            vec![
                ("Name", s("name")),
                ("Region", "cn-north-7".into()),
                ("InProtocol", "rtmp".into()),
                ("OutProtocol", s("out_protocol")),
            ],
        ),
        "push" => (
            "CreateRtmpGroupStreamurl",
            vec![
                ("Id", s("group_id")),
                ("Name", s("name")),
                ("AccessInfo", "{}".into()),
            ],
        ),
        "describe_stream" => ("DescribeStream", vec![("Id", s("id"))]),
        "stream_url" => (
            "DescribeStreamURL",
            vec![
                ("Id", s("id")),
                ("OutProtocol", s("out_protocol")),
                ("AuthKey", s("auth_key")),
                ("Expire", "600".into()),
            ],
        ),
        "screen_show" => (
            "ScreenShowStreams",
            vec![
                ("GroupId", s("group_id")),
                ("PageNum", "1".into()),
                ("PageSize", "20".into()),
            ],
        ),
        "forbid" => ("ForbidVsStream", vec![("Id", s("id"))]),
        "resume" => ("ResumeVsStream", vec![("Id", s("id"))]),
        other => panic!("no step {other}"),
    }
}

/// `tests/sdk/vs.py serve`: one interpreter with the SDK loaded for a whole scenario, a step
/// a line (a Python start per call would cost about a second each on a loaded machine).
struct SdkProcess {
    child: Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl SdkProcess {
    fn start() -> Self {
        let mut child = Command::new(venv_python())
            .arg(workspace().join("tests/sdk/vs.py"))
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// One step (`input["step"]`): its answer. A refusal (the SDK raised) fails the test with
    /// the status the server gave.
    async fn call(&mut self, input: &Value) -> Value {
        let step = input["step"].clone();
        self.stdin
            .write_all(format!("{input}\n").as_bytes())
            .await
            .unwrap();
        let line = self.lines.next_line().await.unwrap();
        let Some(line) = line else {
            panic!("vs.py {step}: exited ({:?})", self.child.try_wait());
        };
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert!(
            answer["status"].as_u64().is_none_or(|s| s < 500),
            "vs.py {step}: a 5xx: {answer}"
        );
        assert_eq!(answer["ok"], true, "vs.py {step}: {answer}");
        answer
    }
}

/// Waits until the push process fails (refused or dropped) within `within`: how long it took.
async fn fails_within(child: &mut Child, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let status = tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what}: the publisher still runs after {within:?}"))
        .unwrap();
    assert!(!status.success(), "{what}: the push fails: {status}");
    start.elapsed()
}

/// Polls DescribeStream (through `client`) until `Status` is `status`, within `within`.
async fn wait_status(
    live: &Live,
    client: Client,
    key: &Key,
    id: &str,
    status: &str,
    within: Duration,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let stream = live
            .step(client, key, "describe_stream", json!({"id": id}))
            .await;
        if stream["Status"] == status {
            return (stream, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "{client:?}: the stream is not {status} after {within:?}: {stream}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A play URL from DescribeStreamURL, checked for its shape.
async fn play_url(live: &Live, client: Client, key: &Key, id: &str, protocol: &str) -> String {
    let answer = live
        .step(
            client,
            key,
            "stream_url",
            json!({"id": id, "out_protocol": protocol, "auth_key": format!("play-{protocol}")}),
        )
        .await;
    let url = answer["Url"].as_str().unwrap().to_string();
    assert!(url.contains(&format!("/live/{id}")), "{answer}");
    assert!(url.contains("?auth_key="), "{answer}");
    url
}

/// DescribeStream's `Forbidden` (beyond the document) is `forbidden`; the SDK's model has no
/// such field (its `to_map` drops it), so there only the document's client can check it.
fn assert_forbidden(client: Client, stream: &Value, forbidden: bool) {
    match client {
        Client::Document => assert_eq!(stream["Forbidden"], forbidden, "{stream}"),
        Client::Sdk(_) => assert!(stream.get("Forbidden").is_none(), "{stream}"),
    }
}

/// The whole scenario with one client.
async fn scenario(client: Client, user_id: &str) {
    // One run at a time: each runs an encoder and four decoders on a 2-core machine.
    let _ = std::fs::create_dir_all(workspace().join("target"));
    let lock = std::fs::File::create(workspace().join("target/live-e2e.lock")).unwrap();
    let lock = tokio::task::spawn_blocking(move || {
        lock.lock().unwrap();
        lock
    })
    .await
    .unwrap();
    if matches!(client, Client::Sdk(_)) {
        tokio::task::spawn_blocking(venv_python).await.unwrap();
    }
    let begun = Instant::now();
    let live = Live::up().await;
    eprintln!("{client:?}: fleet up after {:?}", begun.elapsed());
    let operator = (OPERATOR.0.to_string(), OPERATOR.1.to_string());

    // Tenant → group → push URL.
    let service = live
        .step(client, &operator, "service", json!({"user_id": user_id}))
        .await;
    assert_eq!(service["UserId"], user_id, "{service}");
    let key = (
        service["UserAccessKeyId"].as_str().unwrap().to_string(),
        service["UserAccessKeySecret"].as_str().unwrap().to_string(),
    );
    let group = live
        .step(
            client,
            &key,
            "group",
            json!({"name": "e2e cameras", "out_protocol": "flv,rtmp,hls"}),
        )
        .await;
    let group_id = group["Id"].as_str().unwrap().to_string();
    let created = live
        .step(
            client,
            &key,
            "push",
            json!({"group_id": group_id, "name": "door"}),
        )
        .await;
    let id = created["StreamId"].as_str().unwrap().to_string();
    let push_url = created["PushUrl"].as_str().unwrap().to_string();
    assert!(
        push_url.starts_with("rtmp://127.0.0.1:")
            && push_url.contains(&format!("/live/{id}?auth_key=")),
        "{created}"
    );

    // The push: DescribeStream shows it on.
    let mut pusher = rtmp_push(&push_url, true);
    let (on, took) = wait_status(&live, client, &key, &id, "on", WAIT).await;
    eprintln!("{client:?}: on {took:?} after the push started");
    assert_eq!(on["Id"], json!(id));

    // FLV, RTMP, HLS and WHEP players, their URLs as a client gets them.
    let flv = Player::flv(&play_url(&live, client, &key, &id, "flv").await);
    let rtmp = Player::rtmp(&play_url(&live, client, &key, &id, "rtmp").await);
    let hls_url = play_url(&live, client, &key, &id, "hls").await;
    // The node answers its playlist 503 + Retry-After until the first segment is cut
    // (docs/live.md); a player that follows Retry-After waits: hlsdemux does not, so wait here.
    let start = Instant::now();
    loop {
        let status = live.http.get(&hls_url).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "HLS playlist");
        assert!(start.elapsed() < WAIT, "no HLS playlist in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let hls = Player::hls(&hls_url);
    let screen = live
        .step(client, &key, "screen_show", json!({"group_id": group_id}))
        .await;
    let streams = screen["Streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "{screen}");
    assert_eq!(streams[0]["Id"], json!(id));
    let whep_url = streams[0]["Url"].as_str().unwrap().to_string();
    assert!(
        whep_url.contains(&format!("/live/{id}/whep?auth_key=")),
        "{screen}"
    );
    let mut whep = Player::whep(&whep_url).await;
    // Once in a cold CI run on a loaded 2-core machine a first WHEP session decoded nothing
    // (not reproduced when quiet; under investigation). A browser player retries; so does this
    // one, once, saying so, and the states of the session it gave up on are printed.
    if !whep.reaches(FRAMES, Duration::from_secs(20)).await {
        eprintln!(
            "WHEP: no frames in 20 s ({}); a second session",
            whep.webrtc_states()
        );
        drop(whep);
        whep = Player::whep(&whep_url).await;
    }
    for player in [&flv, &rtmp, &hls, &whep] {
        player.wait_frames(FRAMES, WAIT).await;
    }
    drop((flv, rtmp, hls, whep));
    eprintln!("{client:?}: four players decoded by {:?}", begun.elapsed());

    // Forbid: the publisher is dropped within 5 s of the request and a new push is refused.
    // Its exit is stamped as it happens; the request's departure by the client (the SDK's
    // interpreter start is not the server's time).
    let exited = tokio::spawn(async move {
        let status = pusher.wait().await.unwrap();
        (status, now_ms())
    });
    let (_, sent_ms) = live
        .step_at(client, &key, "forbid", json!({"id": id}))
        .await;
    let (status, exit_ms) = tokio::time::timeout(Duration::from_secs(10), exited)
        .await
        .expect("the publisher exits after ForbidVsStream")
        .unwrap();
    assert!(!status.success(), "the dropped push fails: {status}");
    let took = exit_ms - sent_ms;
    eprintln!("{client:?}: the publisher exited {took} ms after ForbidVsStream was sent");
    assert!(
        (0..5_000).contains(&took),
        "the publisher exited {took} ms after ForbidVsStream"
    );
    let stream = live
        .step(client, &key, "describe_stream", json!({"id": id}))
        .await;
    assert_forbidden(client, &stream, true);
    let mut refused = rtmp_push(&push_url, true);
    let took = fails_within(
        &mut refused,
        Duration::from_secs(10),
        "a push while forbidden",
    )
    .await;
    eprintln!("{client:?}: a push while forbidden refused in {took:?}");
    let stream = live
        .step(client, &key, "describe_stream", json!({"id": id}))
        .await;
    assert_eq!(
        stream["Status"], "off",
        "a refused push is not on: {stream}"
    );

    // Resume: a push is accepted again and shows on.
    live.step(client, &key, "resume", json!({"id": id})).await;
    let mut pusher = rtmp_push(&push_url, true);
    let (on_again, _) = wait_status(&live, client, &key, &id, "on", WAIT).await;
    assert_forbidden(client, &on_again, false);
    // Still publishing a moment later: admitted, not accepted then dropped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        pusher.try_wait().unwrap().is_none(),
        "the resumed push runs"
    );

    // The publisher stops: off.
    pusher.start_kill().unwrap();
    let _ = pusher.wait().await;
    let (off, took) = wait_status(&live, client, &key, &id, "off", OFF_WITHIN).await;
    eprintln!("{client:?}: off {took:?} after the publisher stopped");
    if matches!(client, Client::Document) {
        // (The SDK's DescribeStream model has no StopTime: its `to_map` drops it.)
        assert!(
            !off["StopTime"].as_str().unwrap_or_default().is_empty(),
            "{off}"
        );
    }
    drop(live);
    eprintln!("{client:?}: done after {:?}", begun.elapsed());
    drop(lock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_e2e_with_the_official_sdk_default_acs3_signing() {
    scenario(Client::Sdk(None), "CIDC-U-e2eacs3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_e2e_with_the_official_sdk_v2_signing() {
    scenario(Client::Sdk(Some("v2")), "CIDC-U-e2ev2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_e2e_with_signed_gets_written_from_the_document() {
    scenario(Client::Document, "CIDC-U-e2edoc").await;
}
