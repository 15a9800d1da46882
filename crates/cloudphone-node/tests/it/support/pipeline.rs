//! Shared helpers for the `pipeline_*` tests: collecting RTP from a running pipeline, checking
//! it against RFC 3550, and decoding it back through a real depayloader and decoder.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudphone_core::video::Codec;
use cloudphone_node::streaming::pipeline::rtp::{RtpHeader, starts_keyframe};
use cloudphone_node::streaming::pipeline::{EncoderSettings, RTP_PAYLOAD_TYPE};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc::Receiver;

pub(crate) fn settings(
    codec: Codec,
    width: u32,
    height: u32,
    fps: u32,
    kbps: u32,
) -> EncoderSettings {
    EncoderSettings {
        codec,
        width,
        height,
        fps,
        bitrate_kbps: kbps,
        encoder: None,
    }
}

/// Waits for the first packet; returns it with how long it took.
pub(crate) async fn first_packet(rx: &mut Receiver<Bytes>, within: Duration) -> (Bytes, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(p)) => (p, started.elapsed()),
        Ok(None) => panic!("channel closed before the first packet"),
        Err(_) => panic!("no RTP packet within {within:?}"),
    }
}

/// The first packet (within 2 s) and all that follow it for 1.5 s from a pipeline whose
/// `start()` was called at `started`; prints how long the first one took under `label`.
pub(crate) async fn first_packets(
    rx: &mut Receiver<Bytes>,
    label: &str,
    started: Instant,
) -> Vec<Bytes> {
    let (first, waited) = first_packet(rx, Duration::from_secs(2)).await;
    eprintln!(
        "{label}: first RTP packet {:?} after start() was called ({waited:?} after it returned)",
        started.elapsed()
    );
    let mut packets = vec![first];
    packets.extend(collect_for(rx, Duration::from_millis(1500)).await);
    packets
}

/// Every packet received during `duration`.
pub(crate) async fn collect_for(rx: &mut Receiver<Bytes>, duration: Duration) -> Vec<Bytes> {
    let deadline = tokio::time::Instant::now() + duration;
    let mut out = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push(p);
    }
    out
}

/// Drains whatever is queued without waiting.
pub(crate) fn drain(rx: &mut Receiver<Bytes>) -> usize {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

pub(crate) fn header(p: &[u8]) -> RtpHeader {
    RtpHeader::parse(p).unwrap_or_else(|| panic!("not RTP: {:02x?}", &p[..p.len().min(16)]))
}

/// RFC 3550 checks over a contiguous run of packets: version 2, our payload type, one SSRC,
/// sequence numbers +1 each, one RTP timestamp per frame changing only after a marker.
/// Returns the number of frames (marker packets).
pub(crate) fn check_rtp(packets: &[Bytes]) -> usize {
    assert!(!packets.is_empty(), "no packets");
    let first = header(&packets[0]);
    let mut prev: Option<RtpHeader> = None;
    let mut frames = 0;
    for p in packets {
        assert!(
            p.len() <= 1200,
            "packet of {} bytes exceeds the MTU",
            p.len()
        );
        let h = header(p);
        assert_eq!(h.version, 2);
        assert_eq!(u32::from(h.payload_type), RTP_PAYLOAD_TYPE);
        assert_eq!(h.ssrc, first.ssrc);
        if let Some(prev) = prev {
            assert_eq!(h.sequence, prev.sequence.wrapping_add(1), "sequence gap");
            if prev.marker {
                assert_ne!(h.timestamp, prev.timestamp, "new frame, same timestamp");
            } else {
                assert_eq!(h.timestamp, prev.timestamp, "timestamp changed mid-frame");
            }
        }
        frames += usize::from(h.marker);
        prev = Some(h);
    }
    frames
}

pub(crate) fn count_markers(packets: &[Bytes]) -> usize {
    packets.iter().filter(|p| header(p).marker).count()
}

/// RTP timestamps of the key frames among `packets` (one per frame, even when the encoder
/// cut the frame into several slices).
pub(crate) fn keyframe_timestamps(codec: Codec, packets: &[Bytes]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for p in packets.iter().filter(|p| starts_keyframe(codec, p)) {
        let ts = header(p).timestamp;
        if out.last() != Some(&ts) {
            out.push(ts);
        }
    }
    out
}

/// `/proc/self/task/<tid>/stat` of each of this process's threads whose name starts with
/// `prefix`, by thread id, as the numeric fields after the parenthesised name (index 0 is
/// field 3, the state, which reads as 0).
pub(crate) fn thread_stats(prefix: &str) -> std::collections::HashMap<String, Vec<u64>> {
    let mut out = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("proc")
        .flatten()
    {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let fields = after
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .collect();
        out.insert(entry.file_name().to_string_lossy().into_owned(), fields);
    }
    out
}

/// CPU time (clock ticks) used so far by each of this process's threads whose name starts
/// with `prefix`, by thread id: utime (field 14) + stime (15).
pub(crate) fn cpu_ticks_of_threads(prefix: &str) -> std::collections::HashMap<String, u64> {
    thread_stats(prefix)
        .into_iter()
        .map(|(tid, f)| {
            let field = |i: usize| f.get(i).copied().unwrap_or(0);
            (tid, field(11) + field(12))
        })
        .collect()
}

/// Feeds RTP packets through `appsrc ! rtphXXXdepay ! avdec_hXXX ! appsink` and returns the
/// size of every decoded frame.
pub(crate) fn decode(codec: Codec, packets: &[Bytes]) -> Vec<(i32, i32)> {
    gst::init().expect("gst init");
    let (name, depay, dec) = match codec {
        Codec::H264 => ("H264", "rtph264depay", "avdec_h264"),
        Codec::H265 => ("H265", "rtph265depay", "avdec_h265"),
    };
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("clock-rate", 90_000i32)
        .field("encoding-name", name)
        .field("payload", RTP_PAYLOAD_TYPE as i32)
        .build();
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .format(gst::Format::Time)
        .build();
    let depay = gst::ElementFactory::make(depay).build().expect("depay");
    let dec = gst::ElementFactory::make(dec).build().expect("decoder");
    let sink = gst_app::AppSink::builder().sync(false).build();
    let pipeline = gst::Pipeline::new();
    pipeline
        .add_many([src.upcast_ref(), &depay, &dec, sink.upcast_ref()])
        .expect("add");
    gst::Element::link_many([src.upcast_ref(), &depay, &dec, sink.upcast_ref()]).expect("link");
    pipeline.set_state(gst::State::Playing).expect("play");
    for p in packets {
        src.push_buffer(gst::Buffer::from_slice(p.clone()))
            .expect("push");
    }
    src.end_of_stream().expect("eos");
    let mut sizes = Vec::new();
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(5)) {
        let s = sample
            .caps()
            .and_then(|c| c.structure(0).map(|s| s.to_owned()));
        let s = s.expect("decoded caps");
        sizes.push((
            s.get::<i32>("width").expect("width"),
            s.get::<i32>("height").expect("height"),
        ));
    }
    pipeline.set_state(gst::State::Null).expect("stop");
    sizes
}

/// Names (comm) of this process's threads.
pub(crate) fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Bytes received per second over `duration`, after dropping what was queued.
pub(crate) async fn measure_kbps(rx: &mut Receiver<Bytes>, duration: Duration) -> f64 {
    drain(rx);
    let packets = collect_for(rx, duration).await;
    let bytes: usize = packets.iter().map(|p| p.len()).sum();
    bytes as f64 * 8.0 / 1000.0 / duration.as_secs_f64()
}
