//! Streaming: capture → encode (GStreamer) → WebRTC to viewers, driven by SetVideoConfig.
//!
//! - [`pipeline`]: the GStreamer encode pipeline.
//! - [`sessions`]: StartSession grants, viewers, shared encoders, usage records.
//! - [`signaling`]: the viewer's WebSocket (`/v1/signaling`).
//! - [`peer`]: webrtc-rs peer connections and codec registration.
//! - [`input`]: the `input` data channel → runtime input events.
//! - [`channel`]: the `input` data channel's tasks (input, clipboard, screenshots).
//! - [`ice`]: ICE servers and TURN REST credentials for viewers.
//! - [`definition`]: a viewer's definition switch on the same peer connection.

pub(crate) mod channel;
pub(crate) mod definition;
pub(crate) mod ice;
pub(crate) mod input;
pub(crate) mod peer;
pub mod pipeline;
pub mod priority;
pub(crate) mod sessions;
pub(crate) mod signaling;

use std::sync::Arc;

use crate::runtime::AudioSource;
use crate::streaming::pipeline::audio::AudioPipeline;
use crate::streaming::pipeline::{EncodePipeline, EncoderSettings, FLASH_PATTERN, PipelineOptions};
use crate::streaming::sessions::{AudioEncoder, AudioFactory, Encoder, EncoderFactory};

impl Encoder for EncodePipeline {
    fn set_bitrate(&self, kbps: u32) {
        EncodePipeline::set_bitrate(self, kbps);
    }
    fn set_fps(&self, fps: u32) {
        EncodePipeline::set_fps(self, fps);
    }
    fn request_keyframe(&self) {
        EncodePipeline::request_keyframe(self);
    }
    fn failure(&self) -> Option<String> {
        let stats = self.stats();
        stats
            .error
            .or_else(|| stats.ended.then(|| "capture ended".to_owned()))
    }
    fn frames_dropped(&self) -> u64 {
        let stats = self.stats();
        // One frame may be inside the encoder at any moment: not dropped, just not out yet.
        stats
            .frames_captured
            .saturating_sub(stats.frames_encoded)
            .saturating_sub(1)
    }
}

/// The encoder factory the node runs with: a GStreamer [`EncodePipeline`] per profile, the
/// best encoder element the host has.
pub(crate) fn encoder_factory(options: PipelineOptions) -> EncoderFactory {
    Arc::new(move |request| {
        let settings = EncoderSettings {
            codec: request.codec,
            width: request.width,
            height: request.height,
            fps: request.fps,
            bitrate_kbps: request.bitrate_kbps,
            encoder: None,
        };
        EncodePipeline::start_with(&request.source, &settings, &options)
            .map(|(pipeline, packets)| (Box::new(pipeline) as Box<dyn Encoder>, packets))
            .map_err(|e| e.to_string())
    })
}

impl AudioEncoder for AudioPipeline {
    fn failure(&self) -> Option<String> {
        let stats = self.stats();
        stats
            .error
            .or_else(|| stats.ended.then(|| "audio capture ended".to_owned()))
    }
}

/// The audio encoder factory the node runs with: a GStreamer [`AudioPipeline`] per instance.
/// With the [`FLASH_PATTERN`] test pattern, a test tone beeps when the video flashes.
pub(crate) fn audio_factory(options: &PipelineOptions) -> AudioFactory {
    let flash = options.test_pattern == FLASH_PATTERN;
    Arc::new(move |source| {
        let source = match source {
            AudioSource::TestTone { freq_hz, beeps } => AudioSource::TestTone {
                freq_hz: *freq_hz,
                beeps: *beeps || flash,
            },
            other => other.clone(),
        };
        AudioPipeline::start(&source)
            .map(|(pipeline, packets)| (Box::new(pipeline) as Box<dyn AudioEncoder>, packets))
            .map_err(|e| e.to_string())
    })
}
