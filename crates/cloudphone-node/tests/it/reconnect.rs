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
