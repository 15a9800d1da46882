//! Definition switch without reconnecting (issue 16), through webrtc-rs viewers (Chromium's
//! side, with the time to the new size, is in `streaming_chromium`): a switching viewer moves
//! to the shared encoder of its new profile on the same connection, the encoder it left stops
//! with its last viewer, an observer may switch its own view, and a codec change is refused
//! while the stream carries on.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::{
    ClientMessage, Definition, DefinitionRefusal, EncodingType, NodeMessage,
};

use crate::streaming_webrtc::usage_within;
use crate::support::streaming::{Node, RustViewer};

/// Asks for `definition`; returns the `video` answer's size.
async fn switch(viewer: &mut RustViewer, definition: Definition) -> (u32, u32) {
    viewer
        .signaling
        .send(&ClientMessage::Definition {
            definition,
            encoding_type: None,
        })
        .await;
    match viewer.pump_for(Duration::from_secs(10)).await {
        Some(NodeMessage::Video { video }) => {
            assert_eq!(video.codec, EncodingType::H264);
            (video.width, video.height)
        }
        other => panic!("no video answer: {other:?}"),
    }
}

/// Decodes 15 more frames; returns the size they decode at.
async fn more_frames(viewer: &mut RustViewer) -> (u32, u32) {
    let frames = viewer.counters.frames.load(Ordering::Relaxed);
    viewer
        .wait_frames(frames + 15, Duration::from_secs(10))
        .await;
    (
        viewer.counters.width.load(Ordering::Relaxed),
        viewer.counters.height.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_moves_the_viewer_to_the_shared_encoder_of_its_new_profile() {
    let mut node = Node::start("synthetic", |c| c.webrtc.usage_interval_secs = 1).await;
    node.create_instance("d1", 360, 640).await;
    let mut reports = node.open_reports().await;
    node.open_session("d1", "dev-o", "t-o").await;
    node.authorize_as("d1", "dev-v", "t-v", pb::ViewerRole::Observer)
        .await
        .unwrap();
    let mut owner = node
        .viewer("dev-o", "t-o", EncodingType::H264)
        .await
        .unwrap();
    owner.wait_frames(5, Duration::from_secs(20)).await;
    let mut observer = node
        .viewer("dev-v", "t-v", EncodingType::H264)
        .await
        .unwrap();
    observer.wait_frames(5, Duration::from_secs(20)).await;
    assert_eq!(more_frames(&mut owner).await, (540, 960));

    // A codec change needs a new offer/answer: refused, the stream carries on.
    owner
        .signaling
        .send(&ClientMessage::Definition {
            definition: Definition::P720,
            encoding_type: Some(EncodingType::H265),
        })
        .await;
    match owner.pump_for(Duration::from_secs(5)).await {
        Some(NodeMessage::DefinitionRefused {
            definition: Definition::P720,
            reason: DefinitionRefusal::CodecChange,
            ..
        }) => {}
        other => panic!("codec change not refused: {other:?}"),
    }
    assert_eq!(more_frames(&mut owner).await, (540, 960));

    // The owner moves to 720P (a new encoder); the observer's 540P stream runs on.
    assert_eq!(switch(&mut owner, Definition::P720).await, (720, 1280));
    assert_eq!(more_frames(&mut owner).await, (720, 1280));
    assert_eq!(more_frames(&mut observer).await, (540, 960));
    // The observer follows: it joins the owner's encoder, and the 540P one, left without
    // viewers, stops.
    assert_eq!(switch(&mut observer, Definition::P720).await, (720, 1280));
    assert_eq!(more_frames(&mut observer).await, (720, 1280));
    assert_eq!(more_frames(&mut owner).await, (720, 1280));
    // Asking for the definition already streamed changes nothing.
    assert_eq!(switch(&mut owner, Definition::P720).await, (720, 1280));

    // One usage session per encoder run, by the width it encodes.
    let records = usage_within(&mut reports, Duration::from_secs(3)).await;
    let mut sessions: BTreeMap<String, (u32, bool)> = BTreeMap::new();
    for r in &records {
        let entry = sessions
            .entry(r.session_id.clone())
            .or_insert((r.width, false));
        entry.1 |= r.r#final;
    }
    let of_width = |w: u32| {
        sessions
            .values()
            .filter(|(width, _)| *width == w)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of_width(540),
        [&(540, true)],
        "the 540P encoder stopped: {records:?}"
    );
    assert_eq!(
        of_width(720),
        [&(720, false)],
        "both viewers share one running 720P encoder: {records:?}"
    );
    // Still the connections each viewer opened: no new hello was needed.
    assert_eq!(owner.pc.connection_state().to_string(), "connected");
    assert_eq!(observer.pc.connection_state().to_string(), "connected");
    drop(owner);
    drop(observer);
    node.shutdown().await;
}
