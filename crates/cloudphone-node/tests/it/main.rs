//! The node's integration tests (real GStreamer, X servers, browsers and in-process nodes), one
//! module per former test file, linked as one binary: one link instead of fourteen is most of
//! what a cold build of the tests costs.
//! `cargo nextest run -p cloudphone-node --test it -E 'test(/^pipeline_/)'` runs the pipeline
//! modules.
//!
//! # Layout
//! - [`support`]: RTP collection and checks for the `pipeline_*` modules; an in-process node,
//!   a signaling client and a webrtc-rs viewer for the `streaming_*` modules.
//! - `demo_app`: the demo phone's app in an x11 instance, used through a viewer.
//! - `health`: `/healthz` and `/metrics` with an instance, a viewer and a broken runtime.
//! - `live_rtmp`: the live edge: RTMP push, FLV and RTMP play, control's admission.
//! - `reconnect`: a node restart keeps live tokens (grants on disk); renewals.
//! - `roles`: owner and observer viewers, the viewer cap.
//! - `phone_features`: clipboard, screenshots and files of an x11 phone.
//! - `isolation`: sandboxes attacked from inside (uids, secrets, limits, read-only binds).
//! - `pipeline_*`: the encode pipeline alone; `runtime_*`: instance runtimes;
//!   `streaming_*`: end to end through signaling and WebRTC.

// Test code: a failed unwrap is a failed test (clippy allows it only inside `#[test]` fns).
#![allow(clippy::unwrap_used)]

mod support;

mod demo_app;
mod health;
mod isolation;
mod live_rtmp;
mod phone_features;
mod pipeline_adb;
mod pipeline_encode;
mod pipeline_x11;
mod reconnect;
mod roles;
mod runtime_android;
mod runtime_synthetic;
mod runtime_x11;
mod streaming_audio;
mod streaming_chromium;
mod streaming_console;
mod streaming_definition;
mod streaming_h265;
mod streaming_netem;
mod streaming_turn;
mod streaming_webrtc;
