//! Test-only: a real H.264 publisher for the hub (GStreamer `x264enc ! flvmux` split into FLV
//! tags), so the HLS and WHEP outputs are tested on what an encoder really sends.
//!
//! The FLV tag splitter here is this module's own (the RTMP/HTTP-FLV side has its own in
//! `live/flv*.rs`); it reads an FLV byte stream in chunks of any size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use bytes::{Buf, Bytes, BytesMut};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::live::hub::{Hub, Tag, TagKind};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FlvError {
    #[error("not an FLV stream")]
    Signature,
    #[error("unknown tag type {0}")]
    TagType(u8),
}

/// Splits an FLV byte stream into tags, whatever the chunking.
#[derive(Default)]
pub(crate) struct FlvSplitter {
    buf: BytesMut,
    header_done: bool,
}

impl FlvSplitter {
    /// Takes the next chunk; returns the tags it completes.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Tag>, FlvError> {
        self.buf.extend_from_slice(chunk);
        let mut tags = Vec::new();
        if !self.header_done {
            if self.buf.len() < 3 {
                return Ok(tags);
            }
            if &self.buf[..3] != b"FLV" {
                return Err(FlvError::Signature);
            }
            if self.buf.len() < 9 {
                return Ok(tags);
            }
            let offset = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]);
            // The header, then PreviousTagSize0.
            let skip = offset as usize + 4;
            if self.buf.len() < skip {
                return Ok(tags);
            }
            self.buf.advance(skip);
            self.header_done = true;
        }
        while self.buf.len() >= 11 {
            let size = u32::from_be_bytes([0, self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if self.buf.len() < 11 + size + 4 {
                break;
            }
            let kind = match self.buf[0] & 0x1f {
                8 => TagKind::Audio,
                9 => TagKind::Video,
                18 => TagKind::Script,
                other => return Err(FlvError::TagType(other)),
            };
            let timestamp_ms =
                u32::from_be_bytes([self.buf[7], self.buf[4], self.buf[5], self.buf[6]]);
            self.buf.advance(11);
            let data = self.buf.split_to(size).freeze();
            self.buf.advance(4);
            tags.push(Tag::new(kind, timestamp_ms, data));
        }
        Ok(tags)
    }
}

/// A live x264 encoder publishing `stream_id` into a hub until dropped (the publisher then
/// leaves, as an RTMP client disconnecting does).
pub(crate) struct TestPublisher {
    pipeline: gst::Pipeline,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestPublisher {
    /// 320×240 4:2:0 at 30 fps in High profile (as OBS and ffmpeg push), a keyframe every
    /// `gop_frames` frames.
    pub(crate) fn start(hub: &Arc<Hub>, stream_id: &str, gop_frames: u32) -> Self {
        Self::start_with(hub, stream_id, gop_frames, false)
    }

    /// As [`TestPublisher::start`], with AAC audio (a tone) when `audio`.
    pub(crate) fn start_with(
        hub: &Arc<Hub>,
        stream_id: &str,
        gop_frames: u32,
        audio: bool,
    ) -> Self {
        gst::init().expect("gstreamer");
        let publisher = hub.publish(stream_id).expect("stream free");
        let audio_branch = if audio {
            "audiotestsrc is-live=true ! audioconvert ! voaacenc ! aacparse ! mux. "
        } else {
            ""
        };
        let line = format!(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
             ! x264enc tune=zerolatency speed-preset=superfast key-int-max={gop_frames} \
             ! video/x-h264,profile=high ! h264parse ! mux. {audio_branch}flvmux name=mux streamable=true \
             ! appsink name=sink sync=false"
        );
        let pipeline = gst::parse::launch(&line)
            .expect("pipeline")
            .downcast::<gst::Pipeline>()
            .expect("a pipeline");
        let sink = pipeline
            .by_name("sink")
            .expect("sink")
            .downcast::<gst_app::AppSink>()
            .expect("appsink");
        pipeline.set_state(gst::State::Playing).expect("playing");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut splitter = FlvSplitter::default();
            while !stopping.load(Ordering::Relaxed) {
                let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(100)) else {
                    continue;
                };
                let Some(buffer) = sample.buffer() else {
                    continue;
                };
                let Ok(map) = buffer.map_readable() else {
                    continue;
                };
                for tag in splitter.push(&map).expect("flvmux output") {
                    publisher.send(without_inband_parameter_sets(tag));
                }
            }
            // `publisher` drops here: the stream ends for every player.
        });
        Self {
            pipeline,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestPublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// x264 repeats SPS and PPS in every keyframe; RTMP encoders with global headers (ffmpeg, OBS)
/// send them only in the sequence header. Dropping them here makes the outputs prove they put
/// the parameter sets back themselves.
fn without_inband_parameter_sets(tag: Tag) -> Tag {
    if tag.kind != TagKind::Video || tag.data.get(1) != Some(&1) || tag.data.len() < 5 {
        return tag;
    }
    // flvmux writes 4-byte NAL unit lengths.
    let mut out = tag.data[..5].to_vec();
    let mut at = 5;
    while at + 4 <= tag.data.len() {
        let len = u32::from_be_bytes([
            tag.data[at],
            tag.data[at + 1],
            tag.data[at + 2],
            tag.data[at + 3],
        ]) as usize;
        let end = (at + 4 + len).min(tag.data.len());
        let nal_type = tag.data.get(at + 4).map_or(0, |b| b & 0x1f);
        if !matches!(nal_type, 7..=9) {
            out.extend_from_slice(&tag.data[at..end]);
        }
        at = end;
    }
    Tag::new(tag.kind, tag.timestamp_ms, Bytes::from(out))
}

/// Waits (polling, bounded) until the hub has a keyframe for `stream_id` to give late joiners.
pub(crate) async fn wait_for_keyframe(hub: &Hub, stream_id: &str) {
    for _ in 0..100 {
        if hub
            .subscribe(stream_id)
            .is_some_and(|s| s.first.iter().any(Tag::is_keyframe))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no keyframe from the test publisher");
}

/// What one MPEG-TS file decodes to: video frames and audio buffers (through `decodebin`:
/// `tsdemux`, `h264parse ! avdec_h264`, an AAC decoder).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Decoded {
    pub(crate) video_frames: usize,
    pub(crate) audio_buffers: usize,
}

pub(crate) fn decode_ts(ts: &[u8]) -> Decoded {
    use std::sync::atomic::AtomicUsize;
    let pipeline = gst::parse::launch(
        "appsrc name=src caps=video/mpegts,systemstream=true,packetsize=188 ! decodebin name=d",
    )
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let src = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .expect("appsrc");
    let video = Arc::new(AtomicUsize::new(0));
    let audio = Arc::new(AtomicUsize::new(0));
    let (v, a) = (Arc::clone(&video), Arc::clone(&audio));
    let weak = pipeline.downgrade();
    pipeline
        .by_name("d")
        .expect("decodebin")
        .connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let caps = pad.current_caps().expect("caps");
            let name = caps.structure(0).expect("structure").name().to_string();
            let counter = if name.starts_with("video/") {
                Arc::clone(&v)
            } else {
                Arc::clone(&a)
            };
            let sink = gst::ElementFactory::make("fakesink")
                .property("sync", false)
                .build()
                .expect("fakesink");
            pipeline.add(&sink).expect("add");
            sink.sync_state_with_parent().expect("sync state");
            pad.link(&sink.static_pad("sink").expect("pad"))
                .expect("link");
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                counter.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        });
    pipeline.set_state(gst::State::Playing).expect("playing");
    src.push_buffer(gst::Buffer::from_slice(ts.to_vec()))
        .expect("push");
    src.end_of_stream().expect("eos");
    let bus = pipeline.bus().expect("bus");
    let end = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(10),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    if let Some(msg) = end
        && let gst::MessageView::Error(err) = msg.view()
    {
        panic!("decoding a segment: {}", err.error());
    }
    let _ = pipeline.set_state(gst::State::Null);
    Decoded {
        video_frames: video.load(Ordering::Relaxed),
        audio_buffers: audio.load(Ordering::Relaxed),
    }
}

/// Test helper: `Bytes` of an FLV stream made of `tags`.
pub(crate) fn flv_bytes(tags: &[Tag]) -> Bytes {
    let mut out = bytes::BytesMut::from(&crate::live::flv::header(true)[..]);
    for tag in tags {
        crate::live::flv::put_tag(&mut out, tag);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(kind: TagKind, ts: u32, data: &'static [u8]) -> Tag {
        Tag::new(kind, ts, Bytes::from_static(data))
    }

    #[test]
    fn tags_round_trip_through_the_writer_in_any_chunking() {
        let tags = vec![
            tag(TagKind::Script, 0, b"\x02\x00\x0aonMetaData"),
            tag(TagKind::Video, 0, &[0x17, 0, 0, 0, 0, 1, 2]),
            tag(TagKind::Audio, 20, &[0xaf, 1, 9]),
            // A timestamp past 24 bits uses the extension byte.
            tag(TagKind::Video, 0x0123_4567, &[0x27, 1, 0, 0, 0]),
        ];
        let bytes = flv_bytes(&tags);
        for chunk in [1, 2, 7, 13, bytes.len()] {
            let mut splitter = FlvSplitter::default();
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                out.extend(splitter.push(piece).unwrap());
            }
            let got: Vec<(TagKind, u32, Bytes)> = out
                .into_iter()
                .map(|t| (t.kind, t.timestamp_ms, t.data))
                .collect();
            let want: Vec<(TagKind, u32, Bytes)> = tags
                .iter()
                .map(|t| (t.kind, t.timestamp_ms, t.data.clone()))
                .collect();
            assert_eq!(got, want, "chunks of {chunk}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(
            FlvSplitter::default().push(b"GIF89a").err(),
            Some(FlvError::Signature)
        );
        let mut bytes = crate::live::flv::header(false).to_vec();
        bytes.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]);
        assert_eq!(
            FlvSplitter::default().push(&bytes).err(),
            Some(FlvError::TagType(7))
        );
    }

    #[tokio::test]
    async fn a_real_encoder_publishes_headers_and_keyframes() {
        let hub = Arc::new(Hub::default());
        let publisher = TestPublisher::start(&hub, "1624428150544871", 30);
        wait_for_keyframe(&hub, "1624428150544871").await;
        let sub = hub.subscribe("1624428150544871").unwrap();
        assert!(sub.first.iter().any(|t| t.kind == TagKind::Script));
        assert!(sub.first.iter().any(Tag::is_sequence_header));
        drop(publisher);
        assert!(hub.subscribe("1624428150544871").is_none());
    }
}
