//! The live edge end to end on an in-process node: control's admission calls over gRPC, a real
//! `gst-launch-1.0 … rtmp2sink` push, GStreamer players over HTTP-FLV and RTMP counting decoded
//! frames, refusals (403/404, a refused push), Forbid dropping a publisher within 5 s, and the
//! stream's status on the report stream.

use std::process::Stdio;
use std::time::{Duration, Instant};

use cloudphone_core::play_auth;
use cloudphone_proto::node_v1 as pb;
use cloudphone_proto::node_v1::node_report::Report;
use cloudphone_testkit::live::{Player, rtmp_push};
use tokio::process::{Child, Command};

use crate::support::streaming::{Node, WAIT};

const ID: &str = "1624428150544871";
const APP: &str = "live";
const PUSH_KEY: &str = "push-secret";
const PLAY_KEY: &str = "play-secret";
/// Push URLs never expire in practice (control signs them far into the future).
const FAR: i64 = 4_000_000_000;

fn stream(admitted: bool) -> pb::LiveStream {
    pb::LiveStream {
        stream_id: ID.into(),
        app: APP.into(),
        tenant_id: "CIDC-U-test".into(),
        group_id: "1624428150544000".into(),
        admitted,
        out_protocols: vec!["flv".into(), "rtmp".into()],
        push_key: PUSH_KEY.into(),
        play_keys: vec!["old-key".into(), PLAY_KEY.into()],
    }
}

fn play_url(base: &str, path: &str, key: &str) -> String {
    let expires = cloudphone_node::unix_ms() / 1000 + 600;
    let auth = play_auth::sign(path, key, expires, "r4nd", "0");
    format!("{base}{path}?auth_key={auth}")
}

/// A node with its RTMP ingest on and its report stream open: the node, the report stream past
/// the announcement, and the announcement.
async fn live_node() -> (Node, tonic::Streaming<pb::NodeReport>, pb::NodeAnnouncement) {
    let mut node = Node::start("synthetic", |c| {
        c.live.rtmp_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut reports = node.open_reports().await;
    let Some(Report::Announcement(announcement)) = reports.message().await.unwrap().unwrap().report
    else {
        panic!("the announcement comes first");
    };
    (node, reports, announcement)
}

/// The stream's push URL on the node's RTMP base `rtmp`, signed with the push key.
fn push_url(rtmp: &str) -> String {
    let push_path = format!("/{APP}/{ID}");
    format!(
        "{rtmp}{push_path}?auth_key={}",
        play_auth::sign(&push_path, PUSH_KEY, FAR, "0", "0")
    )
}

/// The next status of the stream on the report stream, skipping everything else.
async fn next_status(reports: &mut tonic::Streaming<pb::NodeReport>) -> pb::LiveStreamStatus {
    tokio::time::timeout(WAIT, async {
        loop {
            let report = reports
                .message()
                .await
                .unwrap()
                .expect("report stream open");
            if let Some(Report::LiveStream(s)) = report.report
                && s.stream_id == ID
            {
                return s;
            }
        }
    })
    .await
    .expect("a live stream status in time")
}

/// A TCP connection to the node's RTMP port that has completed the client handshake.
async fn rtmp_client(base: &str) -> tokio::net::TcpStream {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(base.trim_start_matches("rtmp://"))
        .await
        .unwrap();
    let mut handshake = Handshake::new(PeerType::Client);
    socket
        .write_all(&handshake.generate_outbound_p0_and_p1().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the node completes the handshake");
        match handshake.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.unwrap();
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                socket.write_all(&response_bytes).await.unwrap();
                return socket;
            }
        }
    }
}

/// Reads until the node closes `socket` (within 5 s).
async fn assert_closes(socket: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the node closes the connection");
}

/// Waits for a status with `on` as given.
async fn wait_on(reports: &mut tonic::Streaming<pb::NodeReport>, on: bool) -> pb::LiveStreamStatus {
    loop {
        let s = next_status(reports).await;
        if s.on == on {
            return s;
        }
    }
}

/// Waits until the push process fails (refused or dropped), within `within`.
async fn fails_within(child: &mut Child, within: Duration) -> Duration {
    let start = Instant::now();
    let status = tokio::time::timeout(within, child.wait())
        .await
        .expect("the push ends in time")
        .unwrap();
    assert!(!status.success(), "the push fails: {status}");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rtmp_push_plays_over_flv_and_rtmp_and_obeys_control() {
    let (mut node, mut reports, announcement) = live_node().await;
    let rtmp = announcement.live_rtmp_base_url.clone();
    let http = announcement.live_http_base_url.clone();
    assert!(rtmp.starts_with("rtmp://127.0.0.1:"), "{rtmp}");
    assert_eq!(http, format!("http://{}", node.http));
    assert!(announcement.live_streams.is_empty());

    // A stream whose id could not be a URL path segment is refused.
    let mut bad = stream(true);
    bad.stream_id = "../1624428150544871".into();
    let refused = node.grpc.put_live_stream(bad).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Control admits the stream.
    let put = node.grpc.put_live_stream(stream(true)).await.unwrap();
    assert!(!put.into_inner().publisher_dropped);
    let push_path = format!("/{APP}/{ID}");
    let push_url = push_url(&rtmp);

    // A push signed with another key is refused.
    let bad = format!(
        "{rtmp}{push_path}?auth_key={}",
        play_auth::sign(&push_path, PLAY_KEY, FAR, "0", "0")
    );
    let mut refused = rtmp_push(&bad, false);
    fails_within(&mut refused, Duration::from_secs(10)).await;

    // Known and admitted, but nobody publishes yet: 404.
    let flv_path = format!("/{APP}/{ID}.flv");
    let client = reqwest::Client::new();
    let status = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(play_url(&http, &flv_path, PLAY_KEY)).await, 404);

    let mut pusher = rtmp_push(&push_url, false);
    let on = wait_on(&mut reports, true).await;
    assert!(!on.publish_id.is_empty() && on.started_unix_ms > 0);
    // Figures every few seconds while on: codec and size from the sequence header.
    let figures = loop {
        let s = next_status(&mut reports).await;
        if s.frames_in > 0 && !s.codec.is_empty() {
            break s;
        }
    };
    assert_eq!(
        (figures.codec.as_str(), figures.width, figures.height),
        ("H264", 320, 240)
    );
    assert!(
        figures.bytes_in > 0 && figures.bitrate_bps > 0,
        "{figures:?}"
    );

    // HTTP-FLV and RTMP players decode it.
    let flv = Player::flv(&play_url(&http, &flv_path, PLAY_KEY));
    let rtmp_player = Player::rtmp(&play_url(&rtmp, &push_path, PLAY_KEY));
    flv.wait_frames(45, WAIT).await;
    rtmp_player.wait_frames(45, WAIT).await;

    // Refusals over HTTP: bad, expired or missing auth_key, the push key, an output the group
    // does not allow: 403; an unknown stream: 404.
    let response = client
        .get(play_url(&http, &flv_path, PLAY_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "video/x-flv");
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    drop(response);
    assert_eq!(status(play_url(&http, &flv_path, "wrong")).await, 403);
    assert_eq!(status(play_url(&http, &flv_path, PUSH_KEY)).await, 403);
    let expired = play_auth::sign(&flv_path, PLAY_KEY, 1_000, "0", "0");
    assert_eq!(
        status(format!("{http}{flv_path}?auth_key={expired}")).await,
        403
    );
    assert_eq!(status(format!("{http}{flv_path}")).await, 403);
    let hls_path = format!("/{APP}/{ID}.m3u8");
    assert_eq!(status(play_url(&http, &hls_path, PLAY_KEY)).await, 403);
    let unknown = format!("/{APP}/1624428150544999.flv");
    assert_eq!(status(play_url(&http, &unknown, PLAY_KEY)).await, 404);

    // An RTMP play signed with a wrong key is refused.
    let mut bad_play = Command::new("gst-launch-1.0")
        .args(["-q", "rtmp2src"])
        .arg(format!("location={}", play_url(&rtmp, &push_path, "wrong")))
        .args(["!", "fakesink"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    fails_within(&mut bad_play, Duration::from_secs(10)).await;

    // Garbage on the RTMP port closes that connection only: the players keep decoding.
    let mut junk = tokio::net::TcpStream::connect(rtmp.trim_start_matches("rtmp://"))
        .await
        .unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Not RTMP version 3: the handshake fails and the node hangs up.
        junk.write_all(&[0x55; 1537]).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), junk.read(&mut buf))
            .await
            .expect("the node answers or hangs up in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the node closes a connection that speaks no RTMP: {read:?}"
        );
    }
    // After a good handshake, a message the RTMP parser cannot take (an `@setDataFrame` without
    // its arguments) closes that connection too.
    let mut bad = rtmp_client(&rtmp).await;
    {
        use tokio::io::AsyncWriteExt;
        let body = b"\x02\x00\x0d@setDataFrame";
        let mut chunk = vec![0x03, 0, 0, 0, 0, 0, body.len() as u8, 18, 0, 0, 0, 0];
        chunk.extend_from_slice(body);
        bad.write_all(&chunk).await.unwrap();
    }
    assert_closes(&mut bad).await;
    flv.wait_frames(flv.frames() + 30, WAIT).await;

    // The announcement of a new report stream lists the stream as on.
    let mut second = node.open_reports().await;
    let Some(Report::Announcement(again)) = second.message().await.unwrap().unwrap().report else {
        panic!("the announcement comes first");
    };
    assert_eq!(again.live_streams.len(), 1);
    assert!(again.live_streams[0].on);
    drop(second);

    // Forbid: the publisher is dropped within 5 s, and a new push is refused.
    let put = node.grpc.put_live_stream(stream(false)).await.unwrap();
    assert!(put.into_inner().publisher_dropped);
    let took = fails_within(&mut pusher, Duration::from_secs(5)).await;
    let off = wait_on(&mut reports, false).await;
    assert!(
        off.stopped_unix_ms >= off.started_unix_ms && off.frames_in > 0,
        "{off:?}"
    );
    eprintln!("publisher dropped {took:?} after Forbid");
    let mut forbidden = rtmp_push(&push_url, false);
    fails_within(&mut forbidden, Duration::from_secs(10)).await;
    assert_eq!(status(play_url(&http, &flv_path, PLAY_KEY)).await, 403);

    // Resume: admitted again, the push is accepted; stopping it shows the stream off.
    node.grpc.put_live_stream(stream(true)).await.unwrap();
    let mut pusher = rtmp_push(&push_url, false);
    let on_again = wait_on(&mut reports, true).await;
    assert_ne!(on_again.publish_id, on.publish_id, "a new publish session");
    pusher.start_kill().unwrap();
    let _ = pusher.wait().await;
    let off = wait_on(&mut reports, false).await;
    assert_eq!(off.publish_id, on_again.publish_id);

    // RemoveLiveStream: the stream is unknown again.
    let removed = node
        .grpc
        .remove_live_stream(pb::LiveStreamRef {
            stream_id: ID.into(),
        })
        .await
        .unwrap();
    assert!(!removed.into_inner().publisher_dropped);
    assert_eq!(status(play_url(&http, &flv_path, PLAY_KEY)).await, 404);
    node.shutdown().await;
}

/// A push with audio: the FLV header says so, a player first gets the metadata and both sequence
/// headers, the audio tags pass through, and a GStreamer player that drains the audio pad decodes
/// the video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rtmp_audio_and_video_pass_through_to_flv() {
    let (mut node, mut reports, announcement) = live_node().await;
    let (rtmp, http) = (
        announcement.live_rtmp_base_url,
        announcement.live_http_base_url,
    );
    node.grpc.put_live_stream(stream(true)).await.unwrap();
    let _pusher = rtmp_push(&push_url(&rtmp), true);
    wait_on(&mut reports, true).await;
    // Let a keyframe and some audio reach the hub.
    loop {
        let s = next_status(&mut reports).await;
        if s.frames_in > 30 {
            break;
        }
    }

    let flv_path = format!("/{APP}/{ID}.flv");
    let mut response = reqwest::get(play_url(&http, &flv_path, PLAY_KEY))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut bytes = Vec::new();
    // FLV tag types in order, with whether each is a sequence header (AVC/AAC packet type 0).
    let mut tags: Vec<(u8, bool)> = Vec::new();
    let mut at = 13;
    tokio::time::timeout(WAIT, async {
        while tags.iter().filter(|(t, _)| *t == 8).count() < 10 {
            let chunk = response.chunk().await.unwrap().expect("the stream goes on");
            bytes.extend_from_slice(&chunk);
            while bytes.len() >= at + 11 {
                let kind = bytes[at];
                let len = u32::from_be_bytes([0, bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                let end = at + 11 + len as usize + 4;
                if bytes.len() < end {
                    break;
                }
                let body = &bytes[at + 11..at + 11 + len as usize];
                tags.push((kind, body.get(1) == Some(&0) && kind != 18));
                at = end;
            }
        }
    })
    .await
    .expect("ten audio tags in time");
    assert_eq!(&bytes[..5], b"FLV\x01\x05", "audio and video flags");
    assert_eq!(tags[0], (18, false), "metadata first");
    assert_eq!(tags[1], (9, true), "then the AVC sequence header");
    assert_eq!(tags[2], (8, true), "then the AAC sequence header");
    assert_eq!(tags[3].0, 9, "then the GOP from its keyframe");

    let player = Player::flv(&play_url(&http, &flv_path, PLAY_KEY));
    player.wait_frames(30, WAIT).await;
    node.shutdown().await;
}

/// HLS and WHEP through the node's own routes: a GStreamer HLS client decodes the pushed stream
/// (segment URLs carry the playlist's auth_key), and WHEP answers only with a valid key, refuses
/// a body that is no SDP offer with 400, and a session of another stream is not found.
#[tokio::test(flavor = "multi_thread")]
async fn live_hls_and_whep_are_served_on_the_node_routes() {
    let (mut node, mut reports, announcement) = live_node().await;
    let (rtmp, http) = (
        announcement.live_rtmp_base_url.clone(),
        announcement.live_http_base_url.clone(),
    );
    let mut all = stream(true);
    all.out_protocols = ["flv", "hls", "rtmp", "webrtc"].map(String::from).to_vec();
    node.grpc.put_live_stream(all).await.unwrap();
    let _pusher = rtmp_push(&push_url(&rtmp), false);
    wait_on(&mut reports, true).await;

    let hls_path = format!("/{APP}/{ID}.m3u8");
    let playlist_url = play_url(&http, &hls_path, PLAY_KEY);
    let client = reqwest::Client::new();
    // The first playlist needs a segment: the node answers 503 + Retry-After until then.
    let playlist = loop {
        let response = client.get(&playlist_url).send().await.unwrap();
        match response.status().as_u16() {
            200 => {
                assert_eq!(
                    response.headers()["content-type"],
                    "application/vnd.apple.mpegurl"
                );
                break response.text().await.unwrap();
            }
            503 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("playlist: {other}"),
        }
    };
    let segment = playlist
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .expect("a segment URI");
    assert!(segment.contains("auth_key="), "{segment}");
    let segment_url = format!("{http}/{APP}/{segment}");
    let bytes = client.get(&segment_url).send().await.unwrap();
    assert_eq!(bytes.status(), 200);
    assert_eq!(bytes.headers()["content-type"], "video/mp2t");
    assert_eq!(bytes.bytes().await.unwrap()[0], 0x47, "an MPEG-TS packet");
    // The segment without the key, or with a key for another path: 403.
    let bare = segment_url.split('?').next().unwrap().to_owned();
    assert_eq!(client.get(&bare).send().await.unwrap().status(), 403);
    let hls = Player::hls(&playlist_url);
    hls.wait_frames(30, WAIT).await;

    // WHEP: the key is checked first, then the offer.
    let whep_path = format!("/{APP}/{ID}/whep");
    let offer = |url: String, body: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(url)
                .header("content-type", "application/sdp")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        offer(play_url(&http, &whep_path, "wrong"), "v=0").await,
        403
    );
    assert_eq!(
        offer(play_url(&http, &whep_path, PLAY_KEY), "not an offer").await,
        400
    );
    let end = client
        .delete(play_url(
            &http,
            &format!("{whep_path}/0123456789abcdef"),
            PLAY_KEY,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(end.status(), 403, "a DELETE is signed over the offer's URI");
    let end = client
        .delete(format!(
            "{http}{whep_path}/0123456789abcdef?auth_key={}",
            play_auth::sign(&whep_path, PLAY_KEY, FAR, "0", "0")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(end.status(), 404);
    node.shutdown().await;
}
