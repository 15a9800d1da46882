//! The console's Live page in headless Chromium against real control + node processes: a VS
//! tenant, group and stream made through `/console/vs` (the page's own route to the live API),
//! a real `gst-launch-1.0 … rtmp2sink` push to the node, then the page: a wrong secret is
//! refused with the API's code; the tenant's key lists the group and the stream with its
//! status, codec and size as DescribeStream answers them; Play shows the stream over WebRTC
//! (WHEP from the node, a cross-origin `fetch`) until frames are decoded, and a screenshot is
//! kept in `target/console-live/`. Also: `/console/vs` is off when `[live_api]` is unset.

use std::process::Stdio;
use std::time::{Duration, Instant};

use cloudphone_testkit::browser::{Browser, workspace};
use cloudphone_testkit::fleet::Fleet;
use serde_json::{Value, json};

use crate::support::{now_ms, signed_query};

const OPERATOR: (&str, &str) = ("OPERATORKEY1", "operator-secret");

/// One call through control's `/console/vs`; status and body.
async fn vs(
    fleet: &Fleet,
    key: (&str, &str),
    action: &str,
    params: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!(
        "{}/console/vs?{}",
        fleet.api,
        signed_query(
            key,
            action,
            params,
            now_ms(),
            &uuid::Uuid::new_v4().to_string()
        )
    );
    let response = fleet.http.get(url).send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn vs_ok(fleet: &Fleet, key: (&str, &str), action: &str, params: &[(&str, &str)]) -> Value {
    let (status, body) = vs(fleet, key, action, params).await;
    assert_eq!(status, 200, "{action}: {body}");
    body
}

#[tokio::test]
async fn the_live_page_lists_a_tenants_streams_and_plays_one_over_webrtc() {
    let control = format!(
        "[live_api]\nlisten = \"127.0.0.1:0\"\noperator_access_key_id = \"{}\"\n\
         operator_access_key_secret = \"{}\"\n",
        OPERATOR.0, OPERATOR.1
    );
    let rtmp = cloudphone_testkit::free_port();
    let node = format!("[live]\nrtmp_listen = \"127.0.0.1:{rtmp}\"\n");
    let fleet = Fleet::up_with("synthetic", &control, &node).await;

    // The tenant, its group and stream, through the page's route.
    let opened = vs_ok(
        &fleet,
        OPERATOR,
        "CreateMtsService",
        &[("UserId", "CIDC-U-console")],
    )
    .await;
    let ak = opened["UserAccessKeyId"].as_str().unwrap().to_string();
    let sk = opened["UserAccessKeySecret"].as_str().unwrap().to_string();
    let tenant = (ak.as_str(), sk.as_str());
    let group = vs_ok(
        &fleet,
        tenant,
        "CreateGroup",
        &[
            ("Name", "lobby"),
            ("Region", "cn-north-7"),
            ("InProtocol", "rtmp"),
            ("OutProtocol", "flv,rtmp,webrtc"),
        ],
    )
    .await;
    let group_id = group["Id"].as_str().unwrap().to_string();
    let created = vs_ok(
        &fleet,
        tenant,
        "CreateRtmpGroupStreamurl",
        &[("Id", &group_id), ("Name", "door")],
    )
    .await;
    let stream_id = created["StreamId"].as_str().unwrap().to_string();

    // The push, once the stream has a node (its push URL), until the node reports it on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut push_url = created["PushUrl"].as_str().unwrap_or_default().to_string();
    while push_url.is_empty() {
        assert!(Instant::now() < deadline, "the stream never got a node");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = vs_ok(&fleet, tenant, "DescribeStream", &[("Id", &stream_id)]).await;
        push_url = s["PushUrl"].as_str().unwrap_or_default().to_string();
    }
    let pipeline = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse \
         ! flvmux streamable=true ! rtmp2sink location={push_url}"
    );
    let _push = tokio::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("gst-launch-1.0");
    let described = loop {
        let s = vs_ok(&fleet, tenant, "DescribeStream", &[("Id", &stream_id)]).await;
        if s["Status"] == "on" && s["Width"].as_i64().unwrap_or(0) > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the stream never went on: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(described["Width"], 320, "{described}");

    let mut browser = Browser::start(&format!("{}/console/live", fleet.api), &[]).await;
    browser
        .ok(json!({"cmd": "viewport", "width": 1100, "height": 900}))
        .await;

    // A wrong secret: the API's refusal, shown; the form stays.
    browser.fill("#akid", &ak).await;
    browser.fill("#aksecret", "not-the-secret").await;
    browser.click("#signinBtn").await;
    let error = wait_eval(&mut browser, "window.live.error", |v| v.is_string()).await;
    assert!(
        error.as_str().unwrap().contains("SignatureDoesNotMatch"),
        "{error}"
    );

    // The tenant's key: the group and the stream, with the node's figures.
    browser.fill("#aksecret", &sk).await;
    browser.click("#signinBtn").await;
    let row = format!("#rows tr[data-id='{stream_id}']");
    browser
        .ok(json!({"cmd": "wait_for", "selector": row, "state": "visible"}))
        .await;
    let cells = browser
        .ok(json!({"cmd": "eval", "expr": format!(
            "[...document.querySelectorAll(\"{row} td\")].map((td) => td.textContent)")}))
        .await;
    let codec = described["Codec"].as_str().unwrap();
    assert!(!codec.is_empty(), "{described}");
    assert_eq!(
        cells["value"],
        json!([
            format!("lobby ({group_id})"),
            stream_id,
            "door",
            "on",
            codec,
            "320×240",
            "Play"
        ]),
    );

    // Play: WebRTC frames decoded in the page.
    browser.click(&format!("{row} button.play")).await;
    let frames = wait_eval(&mut browser, "window.live.framesDecoded()", |v| {
        v.as_i64().unwrap_or(0) >= 30
    })
    .await;
    eprintln!("the Live page decoded {frames} frames");
    let dir = workspace().join("target/console-live");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("live.png");
    browser
        .ok(json!({"cmd": "screenshot", "path": shot, "full_page": true}))
        .await;
    let state = browser
        .ok(json!({"cmd": "eval", "expr": "[window.live.status, document.getElementById('video').videoWidth]"}))
        .await;
    assert_eq!(state["value"], json!(["connected", 320]), "{state}");
    browser.quit().await;
}

/// Evaluates `expr` until `done` holds for its value (20 s at most); the last value.
async fn wait_eval(browser: &mut Browser, expr: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = browser.call(json!({"cmd": "eval", "expr": expr})).await;
        if reply["ok"] == true && done(&reply["value"]) {
            return reply["value"].clone();
        }
        assert!(Instant::now() < deadline, "{expr} → {reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_consoles_route_to_the_live_api_is_off_without_live_api() {
    let mut fleet = Fleet::new(None, "synthetic");
    fleet.start_control();
    fleet.wait_healthy(&fleet.api.clone()).await;
    let (status, body) = vs(&fleet, OPERATOR, "GetMtsServiceStatus", &[("UserId", "x")]).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["Code"], "InvalidAction.NotFound", "{body}");
    // The page itself is still served (it says what the API answers).
    let page = fleet.get_unauthenticated("/console/live").await;
    assert_eq!(page.status(), 200);
}
