//! H.265 end to end in a second WebRTC stack: a GStreamer `webrtcbin` viewer (Chromium here has
//! no H.265 decoder) negotiates with the node over the real signaling WebSocket and decodes with
//! `avdec_h265`. The webrtc-rs viewer runs the same end-to-end body for H.264 and H.265 in
//! `streaming_webrtc`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudphone_signaling::{Candidate, ClientMessage, Definition, EncodingType, NodeMessage};
use cloudphone_testkit::live::{on_src_pads, recvonly_webrtcbin};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;
use tokio::sync::mpsc;

use crate::support::streaming::{Counters, Node, Signaling, count_decoded, element, hello};

/// What webrtcbin's callbacks hand to the signaling loop.
enum FromBin {
    Offer(String),
    Candidate(u32, String),
}

/// Builds `webrtcbin` with one recvonly H.265 transceiver; decoded frames are counted.
fn webrtcbin_viewer(
    to_ws: mpsc::UnboundedSender<FromBin>,
    decoded: Arc<Counters>,
) -> (gst::Pipeline, gst::Element) {
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("encoding-name", "H265")
        .field("payload", 104i32)
        .field("clock-rate", 90000i32)
        .build();
    let (pipeline, bin) = recvonly_webrtcbin(&caps, Some(50)).unwrap();

    let offer_tx = to_ws.clone();
    bin.connect("on-negotiation-needed", false, move |values| {
        let bin = values[0].get::<gst::Element>().unwrap();
        let offer_tx = offer_tx.clone();
        let bin2 = bin.clone();
        let promise = gst::Promise::with_change_func(move |reply| {
            let reply = reply.unwrap().unwrap();
            let offer = reply
                .value("offer")
                .unwrap()
                .get::<gst_webrtc::WebRTCSessionDescription>()
                .unwrap();
            bin2.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>]);
            let _ = offer_tx.send(FromBin::Offer(offer.sdp().as_text().unwrap()));
        });
        bin.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
        None
    });
    bin.connect("on-ice-candidate", false, move |values| {
        let mline = values[1].get::<u32>().unwrap();
        let candidate = values[2].get::<String>().unwrap();
        let _ = to_ws.send(FromBin::Candidate(mline, candidate));
        None
    });
    on_src_pads(&pipeline, &bin, move |pipeline, pad| {
        let tail = gst::parse::bin_from_description(
            "rtph265depay ! h265parse ! avdec_h265 ! videoconvert ! appsink name=sink sync=false",
            true,
        )
        .unwrap();
        element::<gst_app::AppSink>(&tail, "sink")
            .set_callbacks(count_decoded(Arc::clone(&decoded)));
        pipeline.add(&tail).unwrap();
        tail.sync_state_with_parent().unwrap();
        pad.link(&tail.static_pad("sink").unwrap()).unwrap();
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_decodes_in_a_webrtcbin_viewer() {
    let mut node = Node::start("synthetic", |_| {}).await;
    node.create_instance("h1", 360, 640).await;
    node.open_session("h1", "dev-h", "token-h").await;

    let mut signaling = Signaling::connect(&node.ws_url).await;
    signaling
        .send(&ClientMessage::Hello(hello(
            "dev-h",
            "token-h",
            EncodingType::H265,
            Definition::P540,
        )))
        .await;
    let ready = signaling.recv().await.unwrap();
    let NodeMessage::Ready { video, .. } = &ready else {
        panic!("expected ready, got {ready:?}");
    };
    assert_eq!(video.codec, EncodingType::H265);

    let (to_ws, mut from_bin) = mpsc::unbounded_channel();
    let decoded = Arc::new(Counters::default());
    let (pipeline, bin) = webrtcbin_viewer(to_ws, Arc::clone(&decoded));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut answered = false;
    while decoded.frames.load(Ordering::Relaxed) < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} H.265 frames decoded (answered: {answered})",
            decoded.frames.load(Ordering::Relaxed)
        );
        tokio::select! {
            Some(m) = from_bin.recv() => match m {
                FromBin::Offer(sdp) => signaling.send(&ClientMessage::Offer { sdp }).await,
                FromBin::Candidate(mline, candidate) => {
                    signaling.send(&ClientMessage::Candidate(Candidate {
                        candidate,
                        sdp_mid: None,
                        sdp_mline_index: Some(mline as u16),
                    })).await;
                }
            },
            m = signaling.recv_quiet() => match m {
                Some(NodeMessage::Answer { sdp }) => {
                    assert!(sdp.contains("H265/90000"), "answer names H.265: {sdp}");
                    let message = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes()).unwrap();
                    let answer = gst_webrtc::WebRTCSessionDescription::new(
                        gst_webrtc::WebRTCSDPType::Answer,
                        message,
                    );
                    bin.emit_by_name::<()>("set-remote-description", &[&answer, &None::<gst::Promise>]);
                    answered = true;
                }
                Some(NodeMessage::Candidate(c)) => {
                    let mline = u32::from(c.sdp_mline_index.unwrap_or(0));
                    bin.emit_by_name::<()>("add-ice-candidate", &[&mline, &c.candidate]);
                }
                other => panic!("unexpected signaling message {other:?}"),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(decoded.width.load(Ordering::Relaxed), 540);
    assert_eq!(decoded.height.load(Ordering::Relaxed), 960);
    eprintln!(
        "H.265 540P in webrtcbin: {} frames decoded",
        decoded.frames.load(Ordering::Relaxed)
    );
    pipeline.set_state(gst::State::Null).unwrap();
    drop(signaling);
    node.shutdown().await;
}
