//! The audio encode pipeline: one per instance, capture → Opus (10 ms frames) → RTP, handing
//! complete RTP packets to the WebRTC side like the video pipeline does.
//!
//! # Sources
//! - [`AudioSource::Pulse`]: the monitor of the instance's own PulseAudio null sink
//!   (`pulsesrc server=unix:<socket> device=<sink>.monitor`), read in 10 ms segments from a
//!   40 ms ring.
//! - [`AudioSource::TestTone`]: `audiotestsrc` (a sine), optionally gated into beeps that start
//!   on whole seconds of the **system monotonic clock**; the synthetic runtime's video can
//!   flash on the same instants ([`super::FLASH_PATTERN`]), which is how the audio-video
//!   offset is measured.
//!
//! # Lip-sync
//! Every pipeline of the node (video and audio) runs on GStreamer's system clock
//! (`CLOCK_MONOTONIC`; a `pulsesrc` is not allowed to impose its own), so a buffer's
//! `PTS + base_time` is the monotonic instant it was captured, the same scale for both. Both
//! payloaders hand packets to the WebRTC tracks as soon as they exist (no queues or `sync`),
//! and webrtc-rs derives each stream's RTCP sender report (NTP ↔ RTP timestamp) from when its
//! packets were written, so what a browser lines up is capture time plus each pipeline's
//! latency: 10–40 ms of capture buffer + one 10 ms Opus frame for audio, the encode latency
//! (a few ms at 720P) for video. The residual offset is measured by the
//! `streaming_audio` tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use tokio::sync::mpsc;

use super::{
    MediaError, Outlet, RTP_MTU, init, install_bus, install_sink, lock, make, on_captured_buffer,
    play, rtp_sink,
};
use crate::runtime::AudioSource;

/// RTP payload type of the Opus packets; the WebRTC side rewrites it to the negotiated one.
pub(crate) const OPUS_PAYLOAD_TYPE: u32 = 111;
/// Opus frame length: 10 ms, half of the usual 20, for latency.
pub(crate) const OPUS_FRAME_MS: u32 = 10;
/// Opus bitrate, bit/s: transparent for speech and music at 48 kHz stereo.
pub(crate) const OPUS_BITRATE: i32 = 64_000;
/// How long each beep of a gated [`AudioSource::TestTone`] lasts, from the whole second.
pub(crate) const BEEP_MS: u64 = 100;
/// Packets buffered towards the WebRTC side (100 per second) before new ones are dropped.
const CHANNEL_CAPACITY: usize = 256;

/// A snapshot of an audio pipeline's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AudioStats {
    pub packets_out: u64,
    pub packets_dropped: u64,
    pub error: Option<String>,
    pub ended: bool,
}

/// One running audio pipeline. Dropping it stops the pipeline.
pub(crate) struct AudioPipeline {
    name: String,
    pipeline: gst::Pipeline,
    out: Arc<Outlet>,
}

impl std::fmt::Debug for AudioPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioPipeline")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// True while a gated tone is in its beep: the first [`BEEP_MS`] of each whole second of the
/// monotonic clock.
pub(crate) fn in_beep(clock_time_ns: u64) -> bool {
    clock_time_ns % 1_000_000_000 < BEEP_MS * 1_000_000
}

impl AudioPipeline {
    /// Builds and starts the pipeline. Each received [`Bytes`] is one complete RTP packet
    /// carrying one 10 ms Opus frame.
    pub(crate) fn start(
        source: &AudioSource,
    ) -> Result<(AudioPipeline, mpsc::Receiver<Bytes>), MediaError> {
        init()?;
        let name = format!("cpaudio{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let n = |suffix: &str| format!("{name}-{suffix}");
        let pipeline = gst::Pipeline::with_name(&name);
        // See the module docs: one clock for every pipeline of the node.
        pipeline.use_clock(Some(&gst::SystemClock::obtain()));

        let mut gate = false;
        let src = match source {
            AudioSource::Pulse { socket, sink } => {
                let src = make("pulsesrc", n("src"))?;
                src.set_property("server", format!("unix:{}", socket.display()));
                src.set_property("device", format!("{sink}.monitor"));
                // µs: 10 ms segments in a 40 ms ring (a 20 ms ring lost samples on a busy
                // 2-core host: the tone came out with gaps).
                src.set_property("buffer-time", 40_000i64);
                src.set_property("latency-time", 10_000i64);
                src.set_property("client-name", "cloudphone-node");
                // The pipeline runs on the system clock (module docs), not the sound server's.
                src.set_property("provide-clock", false);
                src
            }
            AudioSource::TestTone { freq_hz, beeps } => {
                let src = make("audiotestsrc", n("src"))?;
                src.set_property("is-live", true);
                src.set_property("freq", f64::from(*freq_hz));
                src.set_property("volume", 0.5f64);
                // 10 ms per buffer at 48 kHz.
                src.set_property("samplesperbuffer", 480i32);
                gate = *beeps;
                src
            }
        };
        let convert = make("audioconvert", n("convert"))?;
        let resample = make("audioresample", n("resample"))?;
        let caps = make("capsfilter", n("caps"))?;
        caps.set_property(
            "caps",
            gst::Caps::builder("audio/x-raw")
                .field("format", "S16LE")
                .field("layout", "interleaved")
                .field("rate", 48_000i32)
                .field("channels", 2i32)
                .build(),
        );
        let enc = make("opusenc", n("enc"))?;
        enc.set_property_from_str("frame-size", &OPUS_FRAME_MS.to_string());
        enc.set_property("bitrate", OPUS_BITRATE);
        // Loss resilience without retransmission: Opus's own forward error correction.
        enc.set_property("inband-fec", true);
        enc.set_property("packet-loss-percentage", 5i32);
        let pay = make("rtpopuspay", n("pay"))?;
        pay.set_property("pt", OPUS_PAYLOAD_TYPE);
        pay.set_property("mtu", RTP_MTU);
        let sink = rtp_sink(n("sink"));
        let chain: [&gst::Element; 7] = [
            &src,
            &convert,
            &resample,
            &caps,
            &enc,
            &pay,
            sink.upcast_ref(),
        ];
        pipeline.add_many(chain)?;
        gst::Element::link_many(chain)?;
        if gate {
            install_gate(&caps, &pipeline)?;
        }

        let out = Arc::new(Outlet::default());
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        install_sink(&sink, tx, &out, |_, _| {});
        install_bus(&pipeline, &name, &out, |_| {})?;
        let this = AudioPipeline {
            name,
            pipeline,
            out,
        };
        play(&this.pipeline, &this.out)?;
        tracing::info!(pipeline = %this.name, source = ?source, "audio pipeline started");
        Ok((this, rx))
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> AudioStats {
        AudioStats {
            packets_out: self.out.packets_out.load(Ordering::Relaxed),
            packets_dropped: self.out.packets_dropped.load(Ordering::Relaxed),
            error: lock(&self.out.error).clone(),
            ended: self.out.ended.load(Ordering::Relaxed),
        }
    }
}

impl Drop for AudioPipeline {
    fn drop(&mut self) {
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            tracing::warn!(pipeline = %self.name, error = %e, "stopping the audio pipeline failed");
        }
        tracing::debug!(pipeline = %self.name, "audio pipeline stopped");
    }
}

/// Silences every sample outside the beeps (S16LE stereo 48 kHz after the caps filter: 4 bytes
/// a frame); a sample's clock time is its buffer's plus its offset.
fn install_gate(caps: &gst::Element, pipeline: &gst::Pipeline) -> Result<(), MediaError> {
    on_captured_buffer(caps, pipeline, |_, buffer, start| {
        const FRAME_BYTES: usize = 4;
        const RATE: u64 = 48_000;
        let Ok(mut map) = buffer.map_writable() else {
            return;
        };
        for (i, frame) in map.as_mut_slice().chunks_mut(FRAME_BYTES).enumerate() {
            let t = start + (i as u64) * 1_000_000_000 / RATE;
            if !in_beep(t) {
                frame.fill(0);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beeps_start_on_whole_seconds() {
        assert!(in_beep(5_000_000_000));
        assert!(in_beep(5_099_999_999));
        assert!(!in_beep(5_100_000_000));
        assert!(!in_beep(5_999_999_999));
    }
}
