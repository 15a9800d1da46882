//! H.265 encode pipeline against real GStreamer: RTP (RFC 7798 payloading) that decodes at the
//! requested size, live bitrate changes, and key frames on request.

use crate::support::pipeline::*;

use std::time::{Duration, Instant};

use cloudphone_core::video::Codec;
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::rtp::starts_keyframe;
use cloudphone_node::streaming::pipeline::{EncodePipeline, PipelineOptions};

const PORTRAIT_720: CaptureSource = CaptureSource::TestPattern {
    width: 720,
    height: 1280,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_packets_are_rtp_and_decode_at_the_requested_size() {
    let started = Instant::now();
    let (pipe, mut rx) =
        EncodePipeline::start(&PORTRAIT_720, &settings(Codec::H265, 720, 1280, 30, 2000))
            .expect("start");
    let (first, _) = first_packet(&mut rx, Duration::from_secs(2)).await;
    eprintln!(
        "h265: first RTP packet {:?} after start()",
        started.elapsed()
    );
    let mut packets = vec![first];
    packets.extend(collect_for(&mut rx, Duration::from_millis(1500)).await);

    let frames = check_rtp(&packets);
    assert!(frames >= 20, "only {frames} frames in 1.5 s");
    // VPS/SPS/PPS lead the stream, then the key picture.
    assert!(starts_keyframe(Codec::H265, &packets[0]));
    let decoded = decode(Codec::H265, &packets);
    assert!(decoded.len() >= 20, "decoded {} frames", decoded.len());
    assert!(decoded.iter().all(|s| *s == (720, 1280)), "{decoded:?}");

    let stats = pipe.stats();
    assert_eq!(stats.encoder, "x265enc");
    assert_eq!(stats.error, None);
    assert_eq!(stats.packets_dropped, 0);
    let lat = &stats.encode_latency_ms_recent;
    assert!(lat.len() >= 20, "{} encode latency samples", lat.len());
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    eprintln!("h265 720x1280: encode {mean:.1} ms/frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_set_bitrate_changes_the_output_rate() {
    let options = PipelineOptions {
        test_pattern: "zone-plate kx2=20 ky2=20 kt=1".into(),
        ..PipelineOptions::default()
    };
    // x265's ceiling is its start rate (see set_bitrate), so start high and go down, as
    // congestion control does.
    let (pipe, mut rx) = EncodePipeline::start_with(
        &PORTRAIT_720,
        &settings(Codec::H265, 720, 1280, 30, 4000),
        &options,
    )
    .expect("start");
    first_packet(&mut rx, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let high = measure_kbps(&mut rx, Duration::from_secs(3)).await;
    pipe.set_bitrate(500);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let low = measure_kbps(&mut rx, Duration::from_secs(3)).await;
    eprintln!("h265 measured: {high:.0} kbit/s at 4000, then {low:.0} kbit/s at 500");
    assert_eq!(pipe.stats().error, None);
    assert_eq!(pipe.settings().bitrate_kbps, 500);
    assert!(low <= 800.0, "{low} kbit/s at a 500 target");
    assert!(high >= 3.0 * low, "{high} vs {low}");

    // Above the start rate is clamped; a 2 % step is not worth a key frame.
    pipe.set_bitrate(8000);
    assert_eq!(pipe.settings().bitrate_kbps, 4000);
    pipe.set_bitrate(3920);
    assert_eq!(pipe.stats().bitrate_kbps, 4000);
    pipe.set_bitrate(3000);
    assert_eq!(pipe.stats().bitrate_kbps, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_request_keyframe_sends_an_irap_soon() {
    let (pipe, mut rx) =
        EncodePipeline::start(&PORTRAIT_720, &settings(Codec::H265, 720, 1280, 30, 2000))
            .expect("start");
    first_packet(&mut rx, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drain(&mut rx);
    let quiet = collect_for(&mut rx, Duration::from_millis(1500)).await;
    assert!(count_markers(&quiet) >= 30);
    assert_eq!(keyframe_timestamps(Codec::H265, &quiet), Vec::<u32>::new());

    let asked = Instant::now();
    pipe.request_keyframe();
    let mut seen = None;
    while asked.elapsed() < Duration::from_secs(1) {
        let burst = collect_for(&mut rx, Duration::from_millis(20)).await;
        if !keyframe_timestamps(Codec::H265, &burst).is_empty() {
            seen = Some(asked.elapsed());
            break;
        }
    }
    let seen = seen.expect("no IRAP picture within 1 s of the request");
    eprintln!("h265: key frame on the wire {seen:?} after request_keyframe");
    assert!(seen < Duration::from_millis(300), "{seen:?}");
}
