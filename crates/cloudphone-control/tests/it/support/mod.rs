//! Helpers shared by control's test modules: the answer of a call that must succeed ([`ok`]), a
//! table of calls that must be refused ([`check_refusals`]), a GET ([`get`]), ListInstances with
//! a chosen `x-request-id` ([`list_with_request_id`]), a login as any user and project
//! ([`login_as`], over [`password_login`]); the instance calls several modules make
//! ([`run_in`], [`query_status`], [`row`], [`kill_node`], a signaling [`hello`]);
//! for the usage modules (`console_usage`, `usage_sdk`, `usage_rules`), the clock, Huawei's time
//! format, creating streaming domains, and a viewer holding a signaling session open (started
//! with a GetDeviceToken); for the SDK modules (`usage_sdk`, `aksk`), the venv holding the
//! official SDKs.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cloudphone_testkit::browser::workspace;
use cloudphone_testkit::fleet::Fleet;
use cloudphone_vs_api::{sign, timefmt};
use serde_json::{Value, json};

/// The body of an answer whose status and `error_code` say success (200 and "0"); fails the
/// test with the body otherwise.
#[track_caller]
pub(crate) fn ok((status, body): (u16, Value)) -> Value {
    assert_eq!(
        (status, cloudphone_testkit::fleet::error_code(&body)),
        (200, "0"),
        "{body}"
    );
    body
}

/// How a call is sent: with an `x-request-id` header (what most operations' pages list), or
/// with the token only.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sent {
    WithRequestId,
    TokenOnly,
}

/// 1001: another tenant's (or an unknown) instance.
pub(crate) const NOT_YOURS: (u16, &str) = (401, "KOOPHONE.API.1001");
/// 1000: a body that does not parse or validate.
pub(crate) const INVALID: (u16, &str) = (400, "KOOPHONE.API.1000");
/// 0002: no `x-request-id` where the operation's page lists one (the seeds answer it with 200).
pub(crate) const NO_REQUEST_ID: (u16, &str) = (200, "KOOPHONE.API.0002");

/// A POST expected to be refused: the token it carries, how it is sent, its JSON body, and the
/// (HTTP status, `error_code`) it must get.
pub(crate) type Refusal<'a> = (&'a str, Sent, &'a Value, (u16, &'a str));

/// POSTs each row's body to `path` and checks it is refused as the row says.
pub(crate) async fn check_refusals(fleet: &Fleet, path: &str, rows: &[Refusal<'_>]) {
    for (token, sent, body, expected) in rows {
        let (status, answer) = match sent {
            Sent::WithRequestId => fleet.post(path, token, body).await,
            Sent::TokenOnly => fleet.post_token_only(path, token, body).await,
        };
        let got = (status, cloudphone_testkit::fleet::error_code(&answer));
        assert_eq!(got, *expected, "{path} {body}: {answer}");
    }
}

/// `GET path` with `token` and an `x-request-id`: the status and the JSON body.
pub(crate) async fn get(fleet: &Fleet, path: &str, token: &str) -> (u16, Value) {
    fleet.call(reqwest::Method::GET, path, token, None).await
}

/// Runs `command` in instance `id` (SyncCommand), checks it succeeded and answers its output.
pub(crate) async fn run_in(fleet: &Fleet, token: &str, id: &str, command: &str) -> String {
    let request = json!({"command": command, "instance_ids": [id]});
    let body = ok(fleet
        .post("/v1/instances/sync-command", token, &request)
        .await);
    let result = &body["data"]["cmd_results"][0];
    assert_eq!(result["status"], 2, "{body}");
    result["execute_msg"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// BatchQueryStatus' `status` of instance `id` (-99 when the answer has none).
pub(crate) async fn query_status(fleet: &Fleet, token: &str, id: &str) -> i64 {
    let request = json!({"instance_ids": [id]});
    let (_, body) = fleet
        .post("/v1/instances/batch-query-status", token, &request)
        .await;
    body["data"]["status_results"][0]["status"]
        .as_i64()
        .unwrap_or(-99)
}

/// The ListInstances row of one instance (null when it is not listed).
pub(crate) async fn row(fleet: &Fleet, token: &str, id: &str) -> Value {
    let listing = fleet.list(token).await;
    listing["data"]["result"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["instance_id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// Kills the fleet's node (SIGKILL, as a host that vanishes) and waits until control sees it down.
pub(crate) async fn kill_node(fleet: &mut Fleet) {
    fleet
        .node
        .as_mut()
        .unwrap()
        .stop_with(nix::sys::signal::Signal::SIGKILL);
    fleet.wait_node("down", Duration::from_secs(10)).await;
}

/// ListInstances' first page with `token` and `request_id` as the `x-request-id` header (none:
/// no header), for the request-id rules: the status and the JSON body.
pub(crate) async fn list_with_request_id(
    fleet: &Fleet,
    token: &str,
    request_id: Option<&str>,
) -> (u16, Value) {
    let url = format!(
        "{}/v1/instances/batch-query?page_no=1&page_size=10",
        fleet.api
    );
    let mut request = fleet.http.get(url).header("x-auth-token", token);
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Huawei's `YYYY-MM-DDThh:mm:ssZ`.
pub(crate) fn iso(unix_ms: i64) -> String {
    cloudphone_usage::huawei::format_time(unix_ms)
}

/// Creates streaming domain `domain` of `tenant` through the admin CLI, as the tenant's
/// default (the one sessions bill under) when `default`.
pub(crate) fn create_domain(fleet: &Fleet, tenant: &str, domain: &str, default: bool) {
    let mut args = vec!["domain", "create", "--tenant", tenant, "--domain", domain];
    if default {
        args.push("--default");
    }
    fleet.admin(&args);
}

/// A signaling socket to `url` that has sent the hello for `device_id`/`token`, and the node's
/// first text answer to it.
pub(crate) async fn send_hello(
    url: &str,
    device_id: &str,
    token: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Value,
) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("signaling endpoint accepts");
    let hello = json!({"type": "hello", "device_id": device_id, "device_token": token,
        "network_type": "WIFI", "encoding_type": "H264", "definition": "540P"});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => break serde_json::from_str(&text).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no answer to hello: {other:?}"),
        }
    };
    (ws, first)
}

/// The node's first answer to a signaling hello for `device_id`/`token`; the socket is closed.
pub(crate) async fn hello(url: &str, device_id: &str, token: &str) -> Value {
    let (mut ws, first) = send_hello(url, device_id, token).await;
    let _ = ws.close(None).await;
    first
}

/// Holds a signaling session (hello → ready) open until `stop` resolves, which runs the node's
/// encoder; returns `ready` and how long the session was held after it.
pub(crate) async fn watch(
    url: &str,
    device_id: &str,
    token: &str,
    stop: impl std::future::Future<Output = ()>,
) -> (Value, Duration) {
    use futures::StreamExt;
    let (mut ws, ready) = send_hello(url, device_id, token).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    let held_from = Instant::now();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            message = ws.next() => if message.is_none() { break },
        }
    }
    let held = held_from.elapsed();
    let _ = ws.close(None).await;
    (ready, held)
}

/// A `stop` for [`watch`]: `hold` counted from when the session is ready (a bare `sleep` would
/// start counting at once, before connecting). A measurement window, not a wait for an expiry:
/// the node's encoder must really run `hold` for the tests to see `hold` billed.
pub(crate) async fn held_for(hold: Duration) {
    tokio::time::sleep(hold).await;
}

/// Waits (up to `within`) until control's store holds the final usage record of a session on
/// `instance`: from then on the session is billed from its records only, no longer "up to now"
/// as an open session is, so its figure is settled.
pub(crate) async fn final_usage_stored(
    fleet: &Fleet,
    tenant_id: &str,
    instance: &str,
    within: Duration,
) {
    use cloudphone_control::store::{SqlStore, Store};
    let store = SqlStore::connect(&fleet.store_url).await.unwrap();
    cloudphone_testkit::wait_for("the session's final usage record", within, || async {
        let now = now_ms();
        let rows = store
            .usage_between(tenant_id, now - 24 * 3_600_000, now + 3_600_000)
            .await
            .unwrap();
        rows.iter()
            .any(|r| r.instance_id == instance && r.is_final)
            .then_some(())
    })
    .await;
}

/// GetDeviceToken for `instance`, then a viewer in a task holding its session until `stop`
/// resolves (see [`watch`]). Returns the task and when the viewer was started.
pub(crate) async fn start_viewer(
    fleet: &Fleet,
    token: &str,
    instance: &str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (tokio::task::JoinHandle<(Value, Duration)>, Instant) {
    let (status, body) = fleet
        .post(&format!("/v1/instances/{instance}/auth"), token, &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].clone();
    let started = Instant::now();
    let viewer = tokio::spawn(async move {
        watch(
            data["resource"]["rtc"]["ice_signaling"]["signaling_url"]
                .as_str()
                .unwrap(),
            data["resource"]["device_id"].as_str().unwrap(),
            data["device_token"].as_str().unwrap(),
            stop,
        )
        .await
    });
    (viewer, started)
}

/// `POST /v3/auth/tokens` with the password of `user` of `domain`, scoped as `scope` says (a
/// project or the domain): the raw response.
pub(crate) async fn password_login(
    fleet: &Fleet,
    domain: &str,
    user: &str,
    password: &str,
    scope: Value,
) -> reqwest::Response {
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "password": password, "domain": {"name": domain}}}}, "scope": scope}});
    fleet
        .http
        .post(format!("{}/v3/auth/tokens", fleet.api))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Logs `user` of `domain` in to `project`; answers the status, the token (empty on failure),
/// the `Retry-After` header (if any) and the body.
pub(crate) async fn login_as(
    fleet: &Fleet,
    domain: &str,
    user: &str,
    password: &str,
    project: &str,
) -> (u16, String, Option<u64>, Value) {
    let scope = json!({"project": {"name": project}});
    let response = password_login(fleet, domain, user, password, scope).await;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let token = header("x-subject-token").unwrap_or_default();
    let retry_after = header("retry-after").map(|v| v.parse().unwrap());
    let status = response.status().as_u16();
    (
        status,
        token,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// `target/sdk-venv` with `tests/sdk/requirements.txt` installed (made once, then reused): the
/// official SDKs the `usage_sdk` and `aksk` modules drive.
pub(crate) fn venv_python() -> PathBuf {
    let venv = workspace().join("target/sdk-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".requirements-installed");
    let requirements = workspace().join("tests/sdk/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    // nextest runs each test in its own process: the first makes the venv while the others
    // wait here (without the lock they found a half-made venv, with python but no pip yet).
    std::fs::create_dir_all(workspace().join("target")).unwrap();
    let lock = std::fs::File::create(workspace().join("target/sdk-venv.lock")).unwrap();
    lock.lock().unwrap();
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(wanted.as_str()) {
        if !python.exists() {
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .unwrap();
            assert!(ok.success(), "python3 -m venv");
        }
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "-r"])
            .arg(&requirements)
            .status()
            .unwrap();
        assert!(ok.success(), "pip install -r tests/sdk/requirements.txt");
        std::fs::write(&ready, wanted).unwrap();
    }
    python
}

/// The two tests that run a store module's `suite` (an `async fn(impl Store)`) on each backend:
/// `$sqlite` on a SQLite file in a temporary directory, `$postgres` on a fresh PostgreSQL
/// database (`CLOUDPHONE_TEST_PG_URL`).
macro_rules! on_each_store {
    ($suite:ident: $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/control.db?mode=rwc", dir.path().display());
            $suite(store::open(&url).await.expect("open sqlite")).await;
        }

        #[tokio::test]
        async fn $postgres() {
            let url = cloudphone_testkit::postgres::fresh_database();
            $suite(store::open(&url).await.expect("open postgres")).await;
        }
    };
}
pub(crate) use on_each_store;

/// The live API document's signed GET query, as `key` (id, secret) signs it at `at_ms` with
/// `nonce`: the common parameters, `params`, and `Signature`, every name and value
/// percent-encoded.
pub(crate) fn signed_query(
    key: (&str, &str),
    action: &str,
    params: &[(&str, &str)],
    at_ms: i64,
    nonce: &str,
) -> String {
    let mut all: Vec<(String, String)> = vec![
        ("Format".into(), "JSON".into()),
        ("Version".into(), "2018-12-12".into()),
        ("AccessKeyId".into(), key.0.into()),
        ("SignatureMethod".into(), "HMAC-SHA1".into()),
        ("SignatureVersion".into(), "1.0".into()),
        ("SignatureNonce".into(), nonce.into()),
        ("Timestamp".into(), timefmt::format_unix_ms(at_ms)),
        ("Action".into(), action.into()),
    ];
    all.extend(params.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let signature = sign::rpc_signature(key.1, &sign::rpc_string_to_sign("GET", &all));
    all.push(("Signature".into(), signature));
    all.iter()
        .map(|(n, v)| format!("{}={}", sign::percent_encode(n), sign::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}
