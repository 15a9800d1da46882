//! The encode pipeline against real GStreamer, for H.264 and H.265 alike (one test body, run
//! once per codec): RTP shape (RFC 6184 / RFC 7798 payloading), decodability at the requested
//! size, live bitrate changes and key frames on request; then, on H.264, live frame-rate
//! changes, a clean stop, bad settings, encoder detection and real-time scheduling.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudphone_core::video::Codec;
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::rtp::starts_keyframe;
use cloudphone_node::streaming::pipeline::{
    EncodePipeline, MediaError, PipelineOptions, available_encoders,
};
use tokio::sync::mpsc::Receiver;

use crate::support::per_codec;
use crate::support::pipeline::*;

const PORTRAIT_720: CaptureSource = CaptureSource::TestPattern {
    width: 720,
    height: 1280,
};

/// The 720×1280 test pattern encoded at 30 fps as `codec` at `kbps` with `options`, once its
/// first packet is out (within 2 s).
async fn flowing(
    codec: Codec,
    kbps: u32,
    options: &PipelineOptions,
) -> (EncodePipeline, Receiver<Bytes>) {
    let (pipe, mut rx) = EncodePipeline::start_with(
        &PORTRAIT_720,
        &settings(codec, 720, 1280, 30, kbps),
        options,
    )
    .expect("start");
    first_packet(&mut rx, Duration::from_secs(2)).await;
    (pipe, rx)
}

/// The software encoder the pipeline picks for `codec` on a machine without hardware ones.
fn software_encoder(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "x264enc",
        Codec::H265 => "x265enc",
    }
}

/// The stream is RTP that decodes at the requested size from its first packet (which opens a
/// key frame, parameter sets first), and the pipeline's stats account for it.
async fn packets_are_rtp_and_decode_at_the_requested_size(codec: Codec) {
    let started = Instant::now();
    let (pipe, mut rx) =
        EncodePipeline::start(&PORTRAIT_720, &settings(codec, 720, 1280, 30, 2000)).expect("start");
    let packets = first_packets(&mut rx, &codec.to_string(), started).await;

    let frames = check_rtp(&packets);
    assert!(frames >= 20, "only {frames} frames in 1.5 s");
    // The stream opens with a key frame (parameter sets first: SPS/PPS, or VPS/SPS/PPS), so a
    // decoder can start from the first packet.
    assert!(
        starts_keyframe(codec, &packets[0]),
        "{:02x?}",
        &packets[0][..16]
    );
    assert_eq!(
        keyframe_timestamps(codec, &packets).first(),
        Some(&header(&packets[0]).timestamp)
    );
    let decoded = decode(codec, &packets);
    assert!(decoded.len() >= 20, "decoded {} frames", decoded.len());
    assert!(decoded.iter().all(|s| *s == (720, 1280)), "{decoded:?}");

    let encoder = software_encoder(codec);
    let stats = pipe.stats();
    assert_eq!(stats.encoder, encoder);
    assert_eq!(stats.error, None);
    assert!(stats.packets_out >= packets.len() as u64);
    assert_eq!(stats.packets_dropped, 0);
    assert!(stats.frames_captured >= stats.frames_encoded && stats.frames_encoded >= 20);
    let lat = &stats.encode_latency_ms_recent;
    assert!(lat.len() >= 20, "{} encode latency samples", lat.len());
    assert!(lat.iter().all(|ms| (0.0..1000.0).contains(ms)), "{lat:?}");
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    let e2e = &stats.pipeline_latency_ms_recent;
    assert!(!e2e.is_empty());
    let e2e_mean = e2e.iter().sum::<f64>() / e2e.len() as f64;
    eprintln!("{codec} 720x1280: encode {mean:.1} ms/frame, capture→RTP {e2e_mean:.1} ms");
    assert_eq!(pipe.settings().encoder.as_deref(), Some(encoder));
}

per_codec!(packets_are_rtp_and_decode_at_the_requested_size(
    Codec::H264 => h264_packets_are_rtp_and_decode_at_the_requested_size,
    Codec::H265 => h265_packets_are_rtp_and_decode_at_the_requested_size,
));

/// A live bitrate change from `from` to `to` kbit/s shows in the measured output rate: the
/// lower of the two rates stays under 800 kbit/s (both cases use 500) and the higher is at
/// least `ratio` times it. Returns the pipeline, running at `to`.
async fn set_bitrate_changes_the_output_rate(
    codec: Codec,
    from: u32,
    to: u32,
    ratio: f64,
) -> EncodePipeline {
    // A busy pattern: "ball" needs far less than either target and would hide the change.
    let options = PipelineOptions {
        test_pattern: "zone-plate kx2=20 ky2=20 kt=1".into(),
        ..PipelineOptions::default()
    };
    let (pipe, mut rx) = flowing(codec, from, &options).await;
    // Animate the zone plate so every frame differs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = measure_kbps(&mut rx, Duration::from_secs(3)).await;
    pipe.set_bitrate(to);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = measure_kbps(&mut rx, Duration::from_secs(3)).await;
    eprintln!("{codec} measured: {before:.0} kbit/s at {from}, then {after:.0} kbit/s at {to}");
    assert_eq!(pipe.stats().error, None);
    assert_eq!(pipe.settings().bitrate_kbps, to);
    assert_eq!(pipe.stats().bitrate_kbps, to);
    let (low, high) = if to > from {
        (before, after)
    } else {
        (after, before)
    };
    assert!(low <= 800.0, "{low} kbit/s at a 500 target");
    assert!(high >= ratio * low, "{high} vs {low}");
    pipe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_set_bitrate_changes_the_output_rate() {
    set_bitrate_changes_the_output_rate(Codec::H264, 500, 4000, 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_set_bitrate_changes_the_output_rate() {
    // x265's ceiling is its start rate (see set_bitrate), so start high and go down, as
    // congestion control does.
    let pipe = set_bitrate_changes_the_output_rate(Codec::H265, 4000, 500, 3.0).await;
    // Above the start rate is clamped; a 2 % step is not worth a key frame.
    pipe.set_bitrate(8000);
    assert_eq!(pipe.settings().bitrate_kbps, 4000);
    pipe.set_bitrate(3920);
    assert_eq!(pipe.stats().bitrate_kbps, 4000);
    pipe.set_bitrate(3000);
    assert_eq!(pipe.stats().bitrate_kbps, 3000);
}

/// With a 10 s GOP no key frame comes unasked after the opening one; one asked for is on the
/// wire within 1 s (an IDR on H.264, an IRAP picture on H.265): the GOP cannot have brought it.
/// How soon exactly is printed, not asserted: a 300 ms pass mark failed (357 ms) on a 2-core
/// host busy compiling, which says nothing about the encoder.
async fn request_keyframe_sends_one_soon(codec: Codec) {
    let (pipe, mut rx) = flowing(codec, 2000, &PipelineOptions::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drain(&mut rx);
    // The GOP is 10 s: after the opening key frame, none comes unasked.
    let quiet = collect_for(&mut rx, Duration::from_millis(1500)).await;
    assert!(count_markers(&quiet) >= 30);
    assert_eq!(keyframe_timestamps(codec, &quiet), Vec::<u32>::new());

    let asked = Instant::now();
    pipe.request_keyframe();
    let mut seen = None;
    while asked.elapsed() < Duration::from_secs(2) {
        let burst = collect_for(&mut rx, Duration::from_millis(20)).await;
        if !keyframe_timestamps(codec, &burst).is_empty() {
            seen = Some(asked.elapsed());
            break;
        }
    }
    let seen = seen.expect("no key frame within 2 s of the request");
    eprintln!("{codec}: key frame on the wire {seen:?} after request_keyframe");
    assert!(seen < Duration::from_secs(1), "{seen:?}");
}

per_codec!(request_keyframe_sends_one_soon(
    Codec::H264 => h264_request_keyframe_sends_an_idr_soon,
    Codec::H265 => h265_request_keyframe_sends_an_irap_soon,
));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_set_fps_changes_the_frame_rate() {
    let (pipe, mut rx) = flowing(Codec::H264, 2000, &PipelineOptions::default()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(&mut rx);
    let at30 = collect_for(&mut rx, Duration::from_secs(2)).await;
    pipe.set_fps(60);
    tokio::time::sleep(Duration::from_millis(700)).await;
    drain(&mut rx);
    let at60 = collect_for(&mut rx, Duration::from_secs(2)).await;
    let (f30, f60) = (
        count_markers(&at30) as f64 / 2.0,
        count_markers(&at60) as f64 / 2.0,
    );
    eprintln!("h264 frame rate: {f30} fps at 30, {f60} fps at 60");
    assert!((25.0..=35.0).contains(&f30), "{f30}");
    assert!(f60 >= 50.0, "{f60}");
    // The RTP clock agrees: 90 kHz / 60 = 1500 ticks per frame.
    check_rtp(&at60);
    let stamps: Vec<u32> = at60
        .iter()
        .map(|p| header(p))
        .filter(|h| h.marker)
        .map(|h| h.timestamp)
        .collect();
    let deltas: Vec<u32> = stamps.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let median = {
        let mut d = deltas.clone();
        d.sort_unstable();
        d[d.len() / 2]
    };
    assert!(
        (1400..=1600).contains(&median),
        "median RTP delta {median}: {deltas:?}"
    );
    assert_eq!(pipe.stats().fps, 60);
    assert_eq!(pipe.settings().fps, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pipeline_stops_its_threads() {
    let (pipe, mut rx) = flowing(Codec::H264, 1000, &PipelineOptions::default()).await;
    let prefix = format!("{}-", pipe.name());
    let running = thread_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .count();
    assert!(
        running >= 2,
        "expected source and encoder threads named {prefix}*"
    );
    // While it runs, its threads burn CPU (capture and encode at 30 fps) ...
    let before = cpu_ticks_of_threads(&prefix);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let busy = cpu_ticks_of_threads(&prefix);
    let grew = busy
        .iter()
        .any(|(tid, t)| before.get(tid).is_some_and(|b| t > b));
    assert!(grew, "running threads used no CPU: {before:?} → {busy:?}");
    drop(pipe);
    // ... and after drop none does: GStreamer's task pool may keep idle threads (with their
    // old names) for reuse, and x264's workers take a moment to exit, but no thread that is
    // still there does pipeline work any more.
    let stopped = cpu_ticks_of_threads(&prefix);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = cpu_ticks_of_threads(&prefix);
    for (tid, ticks) in &later {
        if let Some(at_drop) = stopped.get(tid) {
            assert_eq!(ticks, at_drop, "thread {tid} still working after drop");
        }
    }
    // The appsink callback (the only sender) is gone with the pipeline: the channel closes.
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while rx.recv().await.is_some() {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "channel still open: the pipeline was not freed"
    );
}

#[test]
fn bad_settings_and_missing_elements_are_errors() {
    let mut s = settings(Codec::H264, 721, 1280, 30, 1000);
    assert!(matches!(
        EncodePipeline::start(&PORTRAIT_720, &s),
        Err(MediaError::InvalidSettings(_))
    ));
    s.width = 720;
    s.fps = 0;
    assert!(matches!(
        EncodePipeline::start(&PORTRAIT_720, &s),
        Err(MediaError::InvalidSettings(_))
    ));
    s.fps = 30;
    s.encoder = Some("nosuchenc".into());
    assert!(
        matches!(EncodePipeline::start(&PORTRAIT_720, &s), Err(MediaError::MissingElement(ref e)) if e == "nosuchenc")
    );
    // An X display that does not exist fails at start, with the element's own message.
    let bad_display = CaptureSource::X11 {
        display: ":299999".into(),
        width: 720,
        height: 1280,
    };
    let err = EncodePipeline::start(&bad_display, &settings(Codec::H264, 720, 1280, 30, 1000))
        .expect_err("no such display");
    assert!(matches!(err, MediaError::Start(_)), "{err:?}");
    eprintln!("bad display: {err}");
}

#[test]
fn software_encoders_are_detected() {
    let found = available_encoders();
    assert!(found.iter().any(|e| e == "x264enc"), "{found:?}");
    assert!(found.iter().any(|e| e == "x265enc"), "{found:?}");
    // Preference order: H.264 encoders before H.265 ones, x264 before openh264.
    let pos = |n: &str| found.iter().position(|e| e == n);
    if let (Some(x), Some(o)) = (pos("x264enc"), pos("openh264enc")) {
        assert!(x < o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_threads_run_under_sched_rr_and_can_be_left_normal() {
    // (scheduling policy, rt_priority) of this process's threads named `prefix*`: stat
    // fields 41 and 40.
    fn policies(prefix: &str) -> Vec<(u64, u64)> {
        thread_stats(prefix)
            .values()
            .map(|f| (f[38], f[37]))
            .collect()
    }
    const SCHED_RR: u64 = 2;
    let root = nix::unistd::geteuid().is_root();

    let (pipe, _rx) = flowing(Codec::H264, 1000, &PipelineOptions::default()).await;
    let stats = pipe.stats();
    let seen = policies(&format!("{}-", pipe.name()));
    assert!(stats.streaming_threads >= 2, "{stats:?}");
    if root {
        assert_eq!(stats.realtime_threads, stats.streaming_threads, "{stats:?}");
        assert!(
            seen.iter().filter(|p| **p == (SCHED_RR, 10)).count() >= 2,
            "{seen:?}"
        );
    }
    drop(pipe);

    let options = PipelineOptions {
        realtime_priority: 0,
        ..PipelineOptions::default()
    };
    let (pipe, _rx) = flowing(Codec::H264, 1000, &options).await;
    assert_eq!(pipe.stats().realtime_threads, 0);
    let seen = policies(&format!("{}-", pipe.name()));
    assert!(
        !seen.is_empty() && seen.iter().all(|p| p.0 == 0),
        "{seen:?}"
    );
}
