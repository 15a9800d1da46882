//! Streaming: capture → encode (GStreamer) → WebRTC to viewers, driven by SetVideoConfig.

pub mod pipeline;
