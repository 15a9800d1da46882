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

/// Android capture that does not stop (issue 16): the adb double's `screenrecord` stops after
/// its `--time-limit` as a device's does (180 s there; 2 s here, the same parameter), and the
/// pipeline keeps producing frames across the runs, one after the other, with no gap longer
/// than one second (a GOP of ours is 10 s), and no error or end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenrecord_is_restarted_past_its_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let double =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/adb-double.sh");
    std::os::unix::fs::symlink(double, dir.path().join("adb")).unwrap();
    let options = PipelineOptions {
        adb: dir.path().join("adb"),
        screenrecord_time_limit: Duration::from_secs(2),
        ..PipelineOptions::default()
    };
    let source = CaptureSource::Adb {
        serial: "emulator-5554".into(),
        width: 180,
        height: 320,
    };
    let (pipe, mut rx) =
        EncodePipeline::start_with(&source, &settings(Codec::H264, 180, 320, 30, 500), &options)
            .expect("start");
    let (first, waited) = first_packet(&mut rx, Duration::from_secs(10)).await;
    let mut packets = vec![first];
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    // Three limits' worth: at least two restarts.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
            Ok(Some(p)) => {
                longest_gap = longest_gap.max(last.elapsed());
                last = Instant::now();
                packets.push(p);
            }
            Ok(None) => panic!("the pipeline stopped: {:?}", pipe.stats()),
            Err(_) => panic!("no packet for 3 s: {:?}", pipe.stats()),
        }
    }
    let stats = pipe.stats();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    let runs = log.lines().filter(|l| l.contains("screenrecord")).count();
    eprintln!(
        "adb double, 2 s screenrecord limit: first packet after {waited:?}, {runs} runs in 7 s, longest gap between packets {longest_gap:?}, {} packets",
        packets.len()
    );
    assert!(runs >= 3, "screenrecord ran {runs} times:\n{log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("screenrecord"))
            .all(|l| l.contains("--time-limit=2") && l.contains("--size=180x320")),
        "{log}"
    );
    assert_eq!(stats.error, None, "{stats:?}");
    assert!(!stats.ended, "{stats:?}");
    assert!(
        longest_gap < Duration::from_secs(1),
        "the picture stopped for {longest_gap:?} at a restart"
    );
    check_rtp(&packets);
    let decoded = decode(Codec::H264, &packets);
    assert!(decoded.len() > 150, "{} frames decoded", decoded.len());
    assert!(decoded.iter().all(|s| *s == (180, 320)), "{decoded:?}");
}
