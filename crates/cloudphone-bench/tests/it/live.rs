//! The live bench's FLV and WHEP players against stand-ins for our node (nginx-rtmp has
//! neither output): an HTTP-FLV relay of nginx's RTMP (`rtmp2src` per viewer, its FLV bytes as
//! the HTTP body, as a node passes tags through) and a WHEP server on `webrtcbin` sending its
//! own clock-stamped stream.

use std::sync::Arc;

use cloudphone_bench::{clock, live, live_nginx};
use cloudphone_testkit::live::{local_description, set_remote_description};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_webrtc as gst_webrtc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::run_live;

/// Reads a request's head and, for a POST, its body (by Content-Length).
async fn read_request(sock: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the request ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body)
}

/// Serves `GET /…flv` as nginx's RTMP stream `rtmp` re-read per viewer, FLV bytes as they come.
async fn flv_relay(rtmp: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let rtmp = rtmp.clone();
            tokio::spawn(async move {
                let _ = read_request(&mut sock).await;
                let pipeline =
                    gst::parse::launch("rtmp2src name=src ! appsink name=sink sync=false")
                        .unwrap()
                        .downcast::<gst::Pipeline>()
                        .unwrap();
                pipeline
                    .by_name("src")
                    .unwrap()
                    .set_property("location", rtmp.as_str());
                let sink = pipeline
                    .by_name("sink")
                    .unwrap()
                    .downcast::<gst_app::AppSink>()
                    .unwrap();
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
                sink.set_callbacks(
                    gst_app::AppSinkCallbacks::builder()
                        .new_sample(move |s| {
                            let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                            let bytes = sample
                                .buffer()
                                .and_then(|b| b.map_readable().ok().map(|m| m.to_vec()))
                                .unwrap_or_default();
                            tx.blocking_send(bytes)
                                .map_err(|_| gst::FlowError::Flushing)?;
                            Ok(gst::FlowSuccess::Ok)
                        })
                        .build(),
                );
                pipeline.set_state(gst::State::Playing).unwrap();
                let head =
                    b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nConnection: close\r\n\r\n";
                if sock.write_all(head).await.is_ok() {
                    while let Some(bytes) = rx.recv().await {
                        if sock.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                }
                drop(rx);
                let _ = pipeline.set_state(gst::State::Null);
            });
        }
    });
    format!("http://{addr}/live/bench.flv")
}

/// One WHEP session: webrtcbin sending a clock-stamped H.264 test stream, answering `offer`.
fn whep_answer(offer: &str) -> (gst::Pipeline, String) {
    let pipeline = gst::parse::launch(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=640,height=360,framerate=30/1 \
         ! identity name=stamp ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 \
         ! video/x-h264,profile=constrained-baseline ! rtph264pay config-interval=-1 pt=102 \
         ! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000 \
         ! webrtcbin name=w bundle-policy=max-bundle",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline
        .by_name("stamp")
        .unwrap()
        .static_pad("src")
        .unwrap()
        .add_probe(gst::PadProbeType::BUFFER, |_, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &mut info.data {
                let b = b.make_mut();
                if let Ok(mut m) = b.map_writable() {
                    live::stamp_luma(m.as_mut_slice(), 640, 360, 640, clock::now_ticks());
                }
            }
            gst::PadProbeReturn::Ok
        });
    let w = pipeline.by_name("w").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    set_remote_description(&w, gst_webrtc::WebRTCSDPType::Offer, offer).unwrap();
    let answer = local_description(&w, gst_webrtc::WebRTCSDPType::Answer).unwrap();
    (pipeline, answer)
}

/// A WHEP endpoint: POST offer → 201 + answer + Location; DELETE → 200.
async fn whep_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut sessions = Vec::new();
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (head, body) = read_request(&mut sock).await;
            let line = head.lines().next().unwrap_or_default().to_owned();
            s.lock().unwrap().push(line.clone());
            if line.starts_with("POST") {
                let offer = String::from_utf8(body).unwrap();
                let (pipeline, answer) = tokio::task::spawn_blocking(move || whep_answer(&offer))
                    .await
                    .unwrap();
                sessions.push(pipeline);
                let resp = format!(
                    "HTTP/1.1 201 Created\r\nContent-Type: application/sdp\r\nLocation: /live/bench/whep/s{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    sessions.len(),
                    answer.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            } else {
                for p in sessions.drain(..) {
                    let _ = p.set_state(gst::State::Null);
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        }
    });
    (
        format!("http://{addr}/live/bench/whep?auth_key=0-0-0-0"),
        seen,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flv_and_whep_players_read_the_clock_and_flv_players_are_counted() {
    gst::init().unwrap();
    let nginx = live_nginx::Nginx::start().unwrap();
    let flv = flv_relay(nginx.push_url()).await;
    let (whep, requests) = whep_server().await;
    let args = live::LiveArgs::parse_from([
        "--smoke",
        "--push",
        &nginx.push_url(),
        "--flv",
        &flv,
        "--whep",
        &whep,
        "--server-pid",
        &std::process::id().to_string(),
    ])
    .unwrap();
    let r = run_live(&args, nginx, &[live::Output::Flv, live::Output::Whep]).await;
    let requests = requests.lock().unwrap().clone();
    assert!(
        requests[0].starts_with("POST /live/bench/whep?auth_key="),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|l| l.starts_with("DELETE /live/bench/whep/s1")),
        "{requests:?}"
    );
    assert_eq!(r.load.len(), 1);
    let level = &r.load[0].levels[0];
    assert_eq!(
        (r.load[0].output, level.connected),
        (live::Output::Flv, 5),
        "{level:?}"
    );
    assert!(level.loss < 0.5, "{level:?}");
}

/// The bench against our real node, as `cargo bench --bench live` starts it: a
/// `cloudphone-node` process enrolled with a throwaway control, the stream admitted through
/// `PutLiveStream`, signed URLs; every output plays the clock back and both load protocols
/// count the node's CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_starts_our_node_and_measures_every_output() {
    gst::init().unwrap();
    let node = cloudphone_bench::live_node::LiveNode::start()
        .await
        .unwrap();
    let mut argv = node.url_args();
    argv.extend([
        "--smoke".into(),
        "--server-pid".into(),
        node.pid().to_string(),
    ]);
    let args = live::LiveArgs::parse_from(argv).unwrap();
    let r = run_live(&args, node, &live::Output::ALL).await;
    let outputs: Vec<_> = r.load.iter().map(|l| l.output).collect();
    assert_eq!(outputs, [live::Output::Rtmp, live::Output::Flv]);
    for run in &r.load {
        let level = &run.levels[0];
        assert_eq!(level.connected, 5, "{level:?}");
        assert!(level.server_cpu_percent > 0.0, "{level:?}");
    }
}
