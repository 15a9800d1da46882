//! Reconnecting after the node restarts: grants are kept in the state dir, so a viewer whose
//! stream the restart cut says hello again with the token it already has (no new StartSession,
//! i.e. no new GetDeviceToken) and video resumes; a grant that expired meanwhile is not
//! admitted. Also: a renewal extends only a live grant for the same token.
//! (The network-drop case runs behind the bench's userspace link: `cloudphone-bench`'s
//! `tests/it/reconnect.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cloudphone_signaling::{ByeReason, EncodingType, ErrorCode, NodeMessage};
use sha2::Digest;

use crate::support::streaming::{Node, RustViewer, WAIT, session_request};

/// Says hello with `device`/`token` until the node admits it (a restarted node re-adopts its
/// instances first and answers `not_running` meanwhile), as the player's backoff does; the
/// viewer, and when it was admitted.
async fn hello_until_admitted(node: &Node, device: &str, token: &str) -> (RustViewer, Instant) {
    let deadline = Instant::now() + WAIT;
    loop {
        match node.viewer(device, token, EncodingType::H264).await {
            Ok(viewer) => return (viewer, Instant::now()),
            Err(NodeMessage::Error {
                code: ErrorCode::NotRunning,
                ..
            }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("hello refused: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restart_keeps_live_tokens_and_video_resumes_with_the_same_token() {
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("rc1", 360, 640).await;
    node.open_session("rc1", "dev-live", "token-live").await;
    node.open_session("rc1", "dev-lapsed", "token-lapsed").await;
    let mut viewer = node
        .viewer("dev-live", "token-live", EncodingType::H264)
        .await
        .unwrap();
    viewer.wait_frames(5, WAIT).await;

    // On disk: digests only, readable by the node's user alone.
    let file = node.dir.path().join("sessions/grants.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("token-live"), "a token in clear: {text}");
    assert!(text.contains(&hex::encode(sha2::Sha256::digest(b"token-live"))));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let stopping = Instant::now();
    let node = node
        .restart(|dir| {
            // While the node is down, dev-lapsed's grant expires (edited on disk rather than
            // slept through).
            let path = dir.join("sessions/grants.json");
            let mut json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for g in json["grants"].as_array_mut().unwrap() {
                if g["device_id"] == "dev-lapsed" {
                    g["expires_at_unix_ms"] = (cloudphone_node::unix_ms() - 1).into();
                }
            }
            std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        })
        .await;
    let back = Instant::now();
    // The old stream ended with the node: the player hears it and reconnects.
    assert_eq!(
        viewer.pump_for(Duration::from_secs(5)).await,
        Some(NodeMessage::Bye {
            reason: ByeReason::Shutdown
        })
    );
    drop(viewer);

    // The same token, no StartSession on the new node.
    let (mut viewer, admitted) = hello_until_admitted(&node, "dev-live", "token-live").await;
    let frames_before = viewer
        .counters
        .frames
        .load(std::sync::atomic::Ordering::Relaxed);
    viewer.wait_frames(frames_before + 1, WAIT).await;
    let resumed = back.elapsed();
    eprintln!(
        "node restart: down for {:?}; back → admitted {:?}, → first frame {resumed:?}",
        back - stopping,
        admitted - back
    );
    assert!(
        resumed < Duration::from_secs(2),
        "video resumed {resumed:?} after the node was back"
    );

    // The grant that expired while the node was down is gone.
    match node
        .viewer("dev-lapsed", "token-lapsed", EncodingType::H264)
        .await
    {
        Err(NodeMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::UnknownDevice),
        Ok(_) => panic!("an expired grant was admitted after the restart"),
        Err(other) => panic!("unexpected answer: {other:?}"),
    }
    drop(viewer);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_extends_only_a_live_grant_for_the_same_token() {
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("rc2", 360, 640).await;
    node.start_session("rc2", "dev-r", "token-r", Duration::from_secs(60))
        .await;
    let renew = |token: &str, device: &str, tenant: &str, valid_for: Duration| {
        let mut r = session_request("rc2", device, token, valid_for);
        r.tenant_id = tenant.into();
        r.renew = true;
        r
    };
    let expiry_on_disk = |node: &Node| -> i64 {
        let path = node.dir.path().join("sessions/grants.json");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        json["grants"][0]["expires_at_unix_ms"].as_i64().unwrap()
    };
    let before = expiry_on_disk(&node);
    let tenant = session_request("rc2", "dev-r", "token-r", Duration::ZERO).tenant_id;

    // Another token, device or tenant: refused, nothing created or moved.
    for (token, device, tenant) in [
        ("token-other", "dev-r", tenant.as_str()),
        ("token-r", "dev-new", tenant.as_str()),
        ("token-r", "dev-r", "another-tenant"),
    ] {
        let status = node
            .grpc
            .start_session(renew(token, device, tenant, Duration::from_secs(3600)))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::FailedPrecondition,
            "{token} {device} {tenant}"
        );
    }
    assert_eq!(expiry_on_disk(&node), before);
    assert!(
        node.viewer("dev-new", "token-r", EncodingType::H264)
            .await
            .is_err(),
        "a refused renewal made a grant"
    );

    // The same token: the expiry moves an hour on, and the token keeps working.
    node.grpc
        .start_session(renew(
            "token-r",
            "dev-r",
            &tenant,
            Duration::from_secs(3600),
        ))
        .await
        .unwrap();
    let after = expiry_on_disk(&node);
    assert!(after >= before + 3_500_000, "{before} → {after}");
    let mut viewer = node
        .viewer("dev-r", "token-r", EncodingType::H264)
        .await
        .unwrap();
    viewer.wait_frames(3, WAIT).await;
    drop(viewer);
    node.shutdown().await;
}

/// What the player page reports: its reconnect count, ICE restarts, status and the current
/// peer connection's decoded video frames (0 without one).
const PLAYER_STATE: &str = r#"(async () => {
  const c = window.cloudphone;
  let frames = 0;
  if (c.pc) (await c.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") frames = s.framesDecoded || 0;
  });
  return { reconnects: c.reconnect.count, iceRestarts: c.reconnect.iceRestarts, status: c.status, frames };
})()"#;

/// The product's player (Chromium) reconnects by itself, with the same token, when the node
/// restarts under it: the socket closes (`bye shutdown`), the backoff retries hello until the
/// re-adopted instance runs, and video plays again on a new peer connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_reconnects_by_itself_after_a_node_restart() {
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("rc3", 360, 640).await;
    node.open_session("rc3", "dev-p", "token-p").await;
    let mut browser =
        cloudphone_testkit::browser::Browser::start(&node.player_page("dev-p", "token-p"), &[])
            .await;
    let playing = browser
        .call(serde_json::json!({"cmd":"wait_frames","n":10,"timeout_ms":30000}))
        .await;
    assert_eq!(playing["ok"], true, "{playing}");

    let node = node.restart(|_| {}).await;
    let back = Instant::now();
    let deadline = back + WAIT;
    let state = loop {
        let state = browser
            .ok(serde_json::json!({"cmd":"eval","expr":PLAYER_STATE}))
            .await["value"]
            .clone();
        if state["reconnects"].as_u64() >= Some(1) && state["frames"].as_u64() > Some(0) {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the player did not come back: {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resumed = back.elapsed();
    eprintln!(
        "player after a node restart: video again {resumed:?} after the node was back; {state}"
    );
    assert_eq!(state["status"], "connected", "{state}");
    assert!(
        resumed < Duration::from_secs(2),
        "video resumed {resumed:?} after the node was back"
    );
    browser.quit().await;
    node.shutdown().await;
}

/// The `a=ice-ufrag:` of an SDP.
fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned())
}

/// An ICE restart on the same session (what the player does on peer `disconnected` while its
/// socket is up): a second offer with new ICE credentials gets an answer with new ones from
/// the node, on the same socket and peer connection, and video carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_restart_offer_is_answered_on_the_same_session() {
    use cloudphone_signaling::ClientMessage;
    use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
    use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("rc4", 360, 640).await;
    node.open_session("rc4", "dev-i", "token-i").await;
    let mut viewer = node
        .viewer("dev-i", "token-i", EncodingType::H264)
        .await
        .unwrap();
    viewer.wait_frames(5, WAIT).await;
    let first_remote = viewer.pc.remote_description().await.unwrap().sdp;

    let offer = viewer
        .pc
        .create_offer(Some(RTCOfferOptions {
            ice_restart: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_ne!(
        ice_ufrag(&offer.sdp),
        ice_ufrag(&viewer.pc.local_description().await.unwrap().sdp)
    );
    viewer
        .pc
        .set_local_description(offer.clone())
        .await
        .unwrap();
    let restarted = Instant::now();
    viewer
        .signaling
        .send(&ClientMessage::Offer { sdp: offer.sdp })
        .await;
    let answer = match viewer.pump_for(Duration::from_secs(10)).await {
        Some(NodeMessage::Answer { sdp }) => sdp,
        other => panic!("expected an answer to the ICE restart, got {other:?}"),
    };
    assert_ne!(
        ice_ufrag(&answer),
        ice_ufrag(&first_remote),
        "the node's answer keeps its old ICE credentials"
    );
    viewer
        .pc
        .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    let frames = viewer
        .counters
        .frames
        .load(std::sync::atomic::Ordering::Relaxed);
    viewer.wait_frames(frames + 30, WAIT).await;
    eprintln!(
        "ICE restart: 30 more frames {:?} after the re-offer",
        restarted.elapsed()
    );
    drop(viewer);
    node.shutdown().await;
}
