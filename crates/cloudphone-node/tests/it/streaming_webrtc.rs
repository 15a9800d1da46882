//! Streaming end to end against an in-process node: gRPC StartSession → the real signaling
//! WebSocket → webrtc-rs viewer → GStreamer decoder. Synthetic instances (test pattern).

use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::{ByeReason, Definition, EncodingType, ErrorCode, NodeMessage};
use tokio_stream::StreamExt;

use crate::support::per_codec;
use crate::support::streaming::{Node, RustViewer, Signaling, hello};

/// A webrtc-rs viewer asking for `codec` at 540P gets it (in `ready` and in the SDP answer),
/// decodes it at 540x960, and the session's lifecycle holds: StopStreaming ends the stream with
/// bye and a final usage record in that codec, the same token reconnects, ReleaseSession ends
/// it and revokes the token.
async fn frames_arrive_decode_and_usage_is_reported(codec: EncodingType) {
    let name = format!("{codec:?}");
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("s1", 360, 640).await;
    let mut reports = node.open_reports().await;
    let session = node.open_session("s1", "dev-1", "token-1").await;
    assert_eq!(session.signaling_url, node.ws_url);
    assert!(!session.session_id.is_empty());

    let mut viewer = node.viewer("dev-1", "token-1", codec).await.unwrap();
    let NodeMessage::Ready { video, .. } = &viewer.ready else {
        unreachable!()
    };
    assert_eq!((video.width, video.height), (540, 960));
    assert_eq!(video.codec, codec);
    let answer = viewer.pc.remote_description().await.expect("an answer").sdp;
    assert!(
        answer.contains(&format!("{name}/90000")),
        "answer names {name}: {answer}"
    );
    let started = std::time::Instant::now();
    viewer.wait_frames(1, Duration::from_secs(20)).await;
    let first_frame = started.elapsed();
    viewer.wait_frames(30, Duration::from_secs(20)).await;
    assert_eq!(viewer.counters.width.load(Ordering::Relaxed), 540);
    assert_eq!(viewer.counters.height.load(Ordering::Relaxed), 960);
    let kbps = viewer.measure_kbps(Duration::from_secs(2)).await;
    eprintln!("{name} 540P: first frame {first_frame:?} after the answer, {kbps:.0} kbit/s");

    // StopStreaming ends the stream with bye; the session stays valid.
    assert_eq!(node.stop_streaming("s1").await, 1);
    viewer.expect_bye(ByeReason::Stopped).await;
    drop(viewer);

    // The encoder run ends with a final usage record.
    let record = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(report)) = reports.next().await {
            if let Some(pb::node_report::Report::Usage(u)) = report.report
                && u.r#final
            {
                return u;
            }
        }
        panic!("report stream ended");
    })
    .await
    .expect("a final usage record");
    assert_eq!(record.instance_id, "s1");
    assert_eq!(record.tenant_id, "tenant-1");
    assert_eq!(record.codec, name);
    assert_eq!((record.width, record.height), (540, 960));
    assert!(record.end_unix_ms > record.start_unix_ms);

    // Reconnecting after StopStreaming works with the same token.
    let mut again = node.viewer("dev-1", "token-1", codec).await.unwrap();
    again.wait_frames(10, Duration::from_secs(20)).await;

    // ReleaseSession ends it and revokes the token.
    assert_eq!(node.release_session("s1").await, 1);
    again.expect_bye(ByeReason::Released).await;
    drop(again);
    let refused = node
        .viewer("dev-1", "token-1", codec)
        .await
        .err()
        .expect("a released token is refused");
    assert!(matches!(
        refused,
        NodeMessage::Error {
            code: ErrorCode::UnknownDevice,
            ..
        }
    ));
    node.shutdown().await;
}

per_codec!(frames_arrive_decode_and_usage_is_reported(
    EncodingType::H264 => h264_frames_arrive_decode_and_usage_is_reported,
    EncodingType::H265 => h265_frames_arrive_decode_and_usage_is_reported,
));

/// Says hello and expects an error with `code`, then the socket closing.
async fn expect_refusal(url: &str, device: &str, token: &str, code: ErrorCode) {
    let mut s = Signaling::connect(url).await;
    s.send(&cloudphone_signaling::ClientMessage::Hello(hello(
        device,
        token,
        EncodingType::H264,
        Definition::P540,
    )))
    .await;
    match s.recv().await {
        Some(NodeMessage::Error { code: got, .. }) => assert_eq!(got, code, "{device}/{token}"),
        other => panic!("expected error {code:?}, got {other:?}"),
    }
    assert_eq!(s.recv().await, None, "socket closes after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_sessions_expire() {
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("a", 360, 640).await;
    node.create_instance("b", 360, 640).await;
    node.open_session("a", "dev-a", "token-a").await;
    node.open_session("b", "dev-b", "token-b").await;
    node.start_session("a", "dev-short", "token-short", Duration::from_millis(1500))
        .await;

    expect_refusal(&node.ws_url, "dev-a", "wrong", ErrorCode::BadToken).await;
    // Another instance's token with this device id.
    expect_refusal(&node.ws_url, "dev-a", "token-b", ErrorCode::BadToken).await;
    expect_refusal(&node.ws_url, "dev-zzz", "token-a", ErrorCode::UnknownDevice).await;
    // Not a hello first.
    let mut s = Signaling::connect(&node.ws_url).await;
    s.send(&cloudphone_signaling::ClientMessage::Offer { sdp: "v=0".into() })
        .await;
    assert!(matches!(
        s.recv().await,
        Some(NodeMessage::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));

    // A live stream ends with bye "expired" at expires_at; a later hello is refused.
    let mut short = node
        .viewer("dev-short", "token-short", EncodingType::H264)
        .await
        .unwrap();
    assert_eq!(
        short.pump_for(Duration::from_secs(10)).await,
        Some(NodeMessage::Bye {
            reason: ByeReason::Expired
        })
    );
    expect_refusal(&node.ws_url, "dev-short", "token-short", ErrorCode::Expired).await;

    // Bad StartSession input is refused by gRPC.
    let bad = node
        .grpc
        .start_session(pb::StartSessionRequest {
            instance_id: "a".into(),
            device_token_sha256: "nothex".into(),
            expires_at_unix_ms: cloudphone_node::unix_ms() + 60_000,
            user_id: String::new(),
            tenant_id: String::new(),
            device_id: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    node.shutdown().await;
}

/// The whole matrix with every cell at `kbps` / 30 fps.
fn matrix(instance: &str, kbps: u32) -> pb::SetVideoConfigRequest {
    let mut profiles = Vec::new();
    for network in ["WIFI", "MOBILE_NETWORK", "WIRED"] {
        for codec in ["H264", "H265"] {
            profiles.push(pb::VideoProfile {
                network_type: network.into(),
                encoding_type: codec.into(),
                specs: ["540P", "720P", "1080P"]
                    .into_iter()
                    .map(|d| pb::VideoSpec {
                        definition: d.into(),
                        code_rate_kbps: kbps,
                        fps: 30,
                    })
                    .collect(),
            });
        }
    }
    pb::SetVideoConfigRequest {
        instance_id: instance.into(),
        profiles,
    }
}

/// Measures one-second windows until the rate is within ±30 % of `target`; returns how long
/// (from the call) that took and the rate.
async fn settle(viewer: &mut RustViewer, target: f64, within: Duration) -> (Duration, f64) {
    let start = std::time::Instant::now();
    let mut last = 0.0;
    while start.elapsed() < within {
        last = viewer.measure_kbps(Duration::from_secs(1)).await;
        if (last - target).abs() <= target * 0.3 {
            return (start.elapsed(), last);
        }
    }
    panic!("receive rate {last:.0} kbit/s did not reach {target} kbit/s within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_video_config_moves_the_live_bitrate() {
    // A moving zone plate keeps the encoder at its target whatever the target is.
    let mut node = Node::start("synthetic", |c| {
        c.webrtc.synthetic_pattern = "zone-plate kx2=20 ky2=20 kt=1".into();
    })
    .await;
    node.create_instance("v1", 360, 640).await;
    node.grpc
        .set_video_config(matrix("v1", 2000))
        .await
        .unwrap();
    node.open_session("v1", "dev-v", "token-v").await;
    let mut viewer = node
        .viewer("dev-v", "token-v", EncodingType::H264)
        .await
        .unwrap();
    let NodeMessage::Ready { video, .. } = &viewer.ready else {
        unreachable!()
    };
    assert_eq!(video.bitrate_kbps, 2000);
    viewer.wait_frames(10, Duration::from_secs(20)).await;
    // x264 (ultrafast, 1.5-frame VBV) undershoots its target on this content by a steady
    // factor (~0.65 here); calibrate it at the first target, then expect that same factor
    // of each new target.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Under a loaded CI machine the stream has once paused for a few seconds right after its
    // first frames (an open issue, see the session notes); calibrate only once media flows at
    // the target, then measure the factor over a longer window.
    for _ in 0..8 {
        let rate = viewer.measure_kbps(Duration::from_secs(1)).await;
        if (0.4..=1.3).contains(&(rate / 2000.0)) {
            break;
        }
    }
    let initial = viewer.measure_kbps(Duration::from_secs(3)).await;
    let factor = initial / 2000.0;
    assert!(
        (0.4..=1.3).contains(&factor),
        "{initial:.0} kbit/s at a 2000 kbit/s target"
    );

    for target in [600u32, 1500] {
        let updated = node
            .grpc
            .set_video_config(matrix("v1", target))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updated.sessions_updated, 1);
        let (took, rate) = settle(
            &mut viewer,
            f64::from(target) * factor,
            Duration::from_secs(5),
        )
        .await;
        eprintln!(
            "SetVideoConfig 2000 → … → {target} kbit/s: measured {rate:.0} kbit/s after {took:?} (at 2000: {initial:.0}, factor {factor:.2})"
        );
    }
    // A bad matrix is refused and changes nothing.
    let mut bad = matrix("v1", 600);
    bad.profiles.pop();
    assert_eq!(
        node.grpc.set_video_config(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    drop(viewer);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_is_served_over_wss_with_a_certificate() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A leaf, not a CA: webpki refuses a CA certificate as a server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (c, k) = (cert.clone(), key.clone());
    let mut node = Node::start("synthetic", move |config| {
        config.webrtc.tls_cert = Some(c);
        config.webrtc.tls_key = Some(k);
        config.http.public_url = format!("wss://{}", config.http.listen);
    })
    .await;
    node.create_instance("t1", 360, 640).await;
    let session = node.open_session("t1", "dev-t", "token-t").await;
    assert_eq!(
        session.signaling_url,
        format!("wss://{}/v1/signaling", node.http)
    );

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(node.http).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(session.signaling_url.as_str(), tls)
        .await
        .unwrap();
    use futures::SinkExt;
    let hello = cloudphone_signaling::ClientMessage::Hello(hello(
        "dev-t",
        "wrong",
        EncodingType::H264,
        Definition::P540,
    ));
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        serde_json::to_string(&hello).unwrap(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply: NodeMessage = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert!(matches!(
        reply,
        NodeMessage::Error {
            code: ErrorCode::BadToken,
            ..
        }
    ));
    // Plain HTTP is not served next to TLS.
    let plain = reqwest::get(format!("http://{}/healthz", node.http)).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    node.shutdown().await;
}

/// Usage records that arrive within `window`.
pub(crate) async fn usage_within(
    reports: &mut tonic::Streaming<pb::NodeReport>,
    window: Duration,
) -> Vec<pb::UsageRecord> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(Ok(report))) = tokio::time::timeout_at(deadline, reports.next()).await {
        if let Some(pb::node_report::Report::Usage(u)) = report.report {
            out.push(u);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_one_profile_share_one_encoder_and_its_usage() {
    let mut node = Node::start("synthetic", |c| c.webrtc.usage_interval_secs = 1).await;
    node.create_instance("m1", 360, 640).await;
    let mut reports = node.open_reports().await;
    node.open_session("m1", "dev-1", "t1").await;
    node.open_session("m1", "dev-2", "t2").await;
    let mut first = node
        .viewer("dev-1", "t1", EncodingType::H264)
        .await
        .unwrap();
    first.wait_frames(5, Duration::from_secs(20)).await;
    // The second viewer joins a running encoder: it can only decode once a key frame is
    // made for it (asked for when its peer connects).
    let mut second = node
        .viewer("dev-2", "t2", EncodingType::H264)
        .await
        .unwrap();
    let joined = std::time::Instant::now();
    second.wait_frames(1, Duration::from_secs(5)).await;
    eprintln!(
        "second viewer: first frame {:?} after its answer",
        joined.elapsed()
    );
    drop(first);
    let frames = second.counters.frames.load(Ordering::Relaxed);
    second
        .wait_frames(frames + 20, Duration::from_secs(5))
        .await;

    let records = usage_within(&mut reports, Duration::from_secs(2)).await;
    assert!(
        records.iter().all(|r| !r.r#final),
        "the encoder outlives its first viewer: {records:?}"
    );
    drop(second);
    let mut all = records;
    all.extend(usage_within(&mut reports, Duration::from_secs(3)).await);
    let finals: Vec<_> = all.iter().filter(|r| r.r#final).collect();
    assert_eq!(finals.len(), 1, "{all:?}");
    // One encoder session: partial records every second, each starting where the last ended.
    assert!(all.iter().all(|r| r.session_id == finals[0].session_id));
    assert!(all.len() >= 3, "{all:?}");
    for pair in all.windows(2) {
        assert_eq!(pair[0].end_unix_ms, pair[1].start_unix_ms);
        assert_ne!(pair[0].record_id, pair[1].record_id);
    }
    node.shutdown().await;
}
