//! The adb capture path (`adb exec-out screenrecord` → decode → our encoder).
//!
//! Without a device, the test checks what a dead capture process does: it must show up in the
//! stats (error or end of stream) instead of a silent stall. With a device named in
//! `CLOUDPHONE_TEST_ADB_SERIAL`, it also streams from it and decodes the result; `adb devices`
//! is not probed, because that would leave an adb server running after the test.

use std::time::{Duration, Instant};

use cloudphone_core::video::Codec;
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::{EncodePipeline, PipelineOptions};

use crate::support::pipeline::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_capture_process_is_reported() {
    // `false` stands in for an adb whose device is gone: it exits at once, writing nothing.
    let options = PipelineOptions {
        adb: "/bin/false".into(),
        ..PipelineOptions::default()
    };
    let source = CaptureSource::Adb {
        serial: "no-such-device".into(),
        width: 720,
        height: 1280,
    };
    let (pipe, mut rx) = EncodePipeline::start_with(
        &source,
        &settings(Codec::H264, 720, 1280, 30, 1000),
        &options,
    )
    .expect("start");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stats = pipe.stats();
    while stats.error.is_none() && !stats.ended && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stats = pipe.stats();
    }
    eprintln!(
        "adb dead child: error={:?} ended={}",
        stats.error, stats.ended
    );
    assert!(stats.error.is_some() || stats.ended, "{stats:?}");
    assert_eq!(stats.packets_out, 0);
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_streams_when_one_is_named() {
    let Ok(serial) = std::env::var("CLOUDPHONE_TEST_ADB_SERIAL") else {
        eprintln!("pipeline_adb: CLOUDPHONE_TEST_ADB_SERIAL is not set; no device to stream");
        return;
    };
    let source = CaptureSource::Adb {
        serial,
        width: 720,
        height: 1280,
    };
    let (pipe, mut rx) =
        EncodePipeline::start(&source, &settings(Codec::H264, 720, 1280, 30, 2000)).expect("start");
    let (first, waited) = first_packet(&mut rx, Duration::from_secs(5)).await;
    eprintln!("adb: first RTP packet after {waited:?}");
    let mut packets = vec![first];
    packets.extend(collect_for(&mut rx, Duration::from_secs(2)).await);
    check_rtp(&packets);
    let decoded = decode(Codec::H264, &packets);
    assert!(!decoded.is_empty());
    assert!(decoded.iter().all(|s| *s == (720, 1280)), "{decoded:?}");
    assert_eq!(pipe.stats().error, None);
}
