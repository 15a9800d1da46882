//! Headless Chromium plays an x11 instance through the real player page
//! (`crates/cloudphone-control/assets/player.html`), driven by playwright-core from
//! `tests/browser/`: H.264 frames decode at the chosen size, and a tap on the video travels the
//! `input` data channel into the instance (xeyes' pupils follow the pointer, so the X display's
//! pixels change). Also: stopping a streamed x11 instance ends its stream without taking the
//! node down (capture stops before the X server does).

use std::time::Duration;

use cloudphone_testkit::browser::Browser;
use serde_json::{Value, json};

use crate::support::streaming::Node;

const W: u32 = 360;
const H: u32 = 640;

fn screenshot(display: &str) -> Vec<u8> {
    crate::support::x11::screenshot(display, W, H)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_decodes_h264_and_taps_reach_the_instance() {
    let mut node = Node::start("x11", |_| {}).await;
    node.create_instance("x1", W, H).await;
    node.open_session("x1", "dev-c", "token-c").await;
    let pids: Value = serde_json::from_slice(
        &std::fs::read(node.dir.path().join("instances/x1/pids.json")).unwrap(),
    )
    .unwrap();
    let display = format!(
        ":{}",
        pids["display"].as_u64().expect("display in pids.json")
    );

    let mut browser = Browser::start(&node.player_page("dev-c", "token-c"), &[]).await;
    // From page load (autoconnect) to the first decoded frame: signaling, encoder start, ICE,
    // DTLS, the first key frame and its decode.
    let started = std::time::Instant::now();
    let first = browser
        .call(json!({"cmd":"wait_frames","n":1,"timeout_ms":30000}))
        .await;
    assert_eq!(first["ok"], true, "{first}");
    let first_frame = started.elapsed();
    let playing = browser
        .call(json!({"cmd":"wait_frames","n":60,"timeout_ms":30000}))
        .await;
    assert_eq!(playing["ok"], true, "{playing}");
    let stats = &playing["stats"];
    assert_eq!(stats["frameWidth"], 540, "{stats}");
    assert_eq!(stats["frameHeight"], 960, "{stats}");
    assert_eq!(stats["codec"], "video/H264", "{stats}");

    // A tap in the top-left corner moves the X pointer there; xeyes redraws its pupils.
    let before = screenshot(&display);
    let tapped = browser.call(json!({"cmd":"tap","x":0.05,"y":0.05})).await;
    assert_eq!(tapped["ok"], true, "{tapped}");
    let changed = cloudphone_testkit::wait_for("pixels to change", Duration::from_secs(5), || {
        let display = display.clone();
        let before = before.clone();
        async move {
            let after = screenshot(&display);
            let diff = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            (diff > 100).then_some(diff)
        }
    })
    .await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = browser.call(json!({"cmd":"stats"})).await;
    let s = &after["stats"];
    eprintln!(
        "chromium H.264 540P: first frame {first_frame:?} after load, {} frames decoded, {} fps, {} kbit/s, rtt {} ms, jitter {} ms, dropped {}, decode {} ms/frame; tap changed {changed} bytes of the display",
        s["framesDecoded"],
        s["fps"],
        s["kbps"],
        s["rttMs"],
        s["jitterMs"],
        s["framesDropped"],
        s["decodeMs"]
    );
    assert!(s["framesDecoded"].as_u64().unwrap() > stats["framesDecoded"].as_u64().unwrap());
    browser.quit().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_streamed_x11_instance_ends_the_stream() {
    let mut node = Node::start("x11", |_| {}).await;
    node.create_instance("x2", W, H).await;
    node.open_session("x2", "dev-s", "token-s").await;
    let mut viewer = node
        .viewer("dev-s", "token-s", cloudphone_signaling::EncodingType::H264)
        .await
        .unwrap();
    viewer.wait_frames(10, Duration::from_secs(20)).await;
    node.grpc
        .stop_instance(cloudphone_proto::node_v1::InstanceRef {
            instance_id: "x2".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        viewer.pump_for(Duration::from_secs(10)).await,
        Some(cloudphone_signaling::NodeMessage::Bye {
            reason: cloudphone_signaling::ByeReason::InstanceGone
        })
    );
    node.shutdown().await;
}

/// A definition switch mid-session (issue 16): the player's Definition selector asks for
/// 720P while streaming 540P; the node moves the viewer to the 720P encoder on the same peer
/// connection, and the video element shows 720×1280 within 1 s of the request, with no new
/// hello (the same WebSocket and RTCPeerConnection) and frames still decoding after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_switch_shows_the_new_size_within_a_second_on_the_same_connection() {
    let mut node = Node::start("x11", |_| {}).await;
    node.create_instance("x3", W, H).await;
    node.open_session("x3", "dev-d", "token-d").await;
    let mut browser = Browser::start(&node.player_page("dev-d", "token-d"), &[]).await;
    let playing = browser
        .call(json!({"cmd":"wait_frames","n":30,"timeout_ms":30000}))
        .await;
    assert_eq!(playing["ok"], true, "{playing}");
    assert_eq!(playing["stats"]["frameWidth"], 540, "{playing}");
    // Marks the connection objects, so a reconnect (a new hello) would show.
    browser
        .ok(json!({"cmd":"eval","expr":"(window.__before = {ws: window.cloudphone.ws, pc: window.cloudphone.pc}, true)"}))
        .await;

    let mut figures = Vec::new();
    for (definition, width, height) in [("720P", 720, 1280), ("540P", 540, 960)] {
        browser.select("#definition", definition).await;
        let expr = "(() => { const s = window.cloudphone.switch, v = document.getElementById('video'); \
            return { asked: s ? s.definition : null, shownMs: s && s.shownAt !== null ? s.shownAt - s.askedAt : null, \
            refused: s ? s.refused || null : null, width: v.videoWidth, height: v.videoHeight, \
            video: window.cloudphone.video, status: window.cloudphone.status, \
            samePc: window.cloudphone.pc === window.__before.pc, sameWs: window.cloudphone.ws === window.__before.ws }; })()";
        // Polled from here; the time itself is measured in the page (request → resize event).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let shown = loop {
            let v = browser.ok(json!({"cmd":"eval","expr":expr})).await["value"].clone();
            assert!(v["refused"].is_null(), "{v}");
            if v["shownMs"].as_f64().is_some() {
                break v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the new size never showed: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(shown["asked"], definition, "{shown}");
        assert_eq!(
            (shown["width"].as_u64(), shown["height"].as_u64()),
            (Some(width), Some(height)),
            "{shown}"
        );
        assert_eq!(shown["video"]["width"], width, "{shown}");
        assert_eq!(shown["video"]["height"], height, "{shown}");
        assert_eq!(shown["samePc"], true, "a new peer connection: {shown}");
        assert_eq!(
            shown["sameWs"], true,
            "a new signaling socket (hello): {shown}"
        );
        assert_eq!(shown["status"], "connected", "{shown}");
        let ms = shown["shownMs"].as_f64().unwrap();
        figures.push((definition, ms));
        assert!(ms <= 1000.0, "{definition} shown {ms} ms after the request");
        // Still playing at the new size, decoded by the same receiver.
        let before = browser.call(json!({"cmd":"stats"})).await["stats"]["framesDecoded"]
            .as_u64()
            .unwrap();
        let after = browser
            .call(json!({"cmd":"wait_frames","n":before + 15,"timeout_ms":10000}))
            .await;
        assert_eq!(after["ok"], true, "{after}");
        assert_eq!(after["stats"]["frameWidth"], width, "{after}");
        assert_eq!(after["stats"]["frameHeight"], height, "{after}");
    }
    eprintln!("chromium definition switch, request → new size on the video element: {figures:?}");
    browser.quit().await;
    node.shutdown().await;
}
