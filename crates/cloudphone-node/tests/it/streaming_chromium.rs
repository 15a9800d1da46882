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
