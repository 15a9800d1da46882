//! Streaming: capture → encode (GStreamer) → WebRTC to viewers, driven by SetVideoConfig.
//!
//! - [`pipeline`]: the GStreamer encode pipeline.
//! - [`sessions`]: StartSession grants, viewers, shared encoders, usage records.
//! - [`signaling`]: the viewer's WebSocket (`/v1/signaling`).
//! - [`peer`]: webrtc-rs peer connections and codec registration.
//! - [`input`]: the `input` data channel → runtime input events.
//! - [`ice`]: ICE servers and TURN REST credentials for viewers.

pub mod ice;
pub mod input;
pub mod peer;
pub mod pipeline;
pub mod sessions;
pub mod signaling;

use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use cloudphone_core::video::Codec;
use tokio::sync::mpsc;

use crate::runtime::CaptureSource;
use crate::streaming::sessions::{Encoder, EncoderFactory, EncoderRequest};

/// Stopgap encoder until [`pipeline`] lands: `gst-launch-1.0` sending RTP to a loopback UDP
/// socket. It cannot change bitrate or frame rate live and sends a key frame every 2 s.
struct LaunchEncoder {
    _child: tokio::process::Child,
    reader: tokio::task::JoinHandle<()>,
}

impl Encoder for LaunchEncoder {
    fn set_bitrate(&self, kbps: u32) {
        tracing::debug!(kbps, "stopgap encoder ignores set_bitrate");
    }
    fn set_fps(&self, fps: u32) {
        tracing::debug!(fps, "stopgap encoder ignores set_fps");
    }
    fn request_keyframe(&self) {}
}

impl Drop for LaunchEncoder {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn launch(request: &EncoderRequest) -> Result<(Box<dyn Encoder>, mpsc::Receiver<Bytes>), String> {
    let fps = request.fps;
    let source = match &request.source {
        CaptureSource::X11 { display, .. } => format!(
            "ximagesrc display-name={display} use-damage=false show-pointer=false ! video/x-raw,framerate={fps}/1"
        ),
        CaptureSource::TestPattern { width, height } => format!(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1"
        ),
        CaptureSource::Adb { .. } => return Err("adb capture needs the GStreamer pipeline".into()),
    };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    let kbps = request.bitrate_kbps;
    let encode = match request.codec {
        Codec::H264 => format!(
            "x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max=60 ! video/x-h264,profile=constrained-baseline ! rtph264pay pt=96 mtu=1200 config-interval=-1 aggregate-mode=zero-latency"
        ),
        Codec::H265 => format!(
            "x265enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max=60 option-string=repeat-headers=1 ! rtph265pay pt=96 mtu=1200 config-interval=-1"
        ),
    };
    let line = format!(
        "{source} ! videoconvert ! videoscale ! video/x-raw,format=I420,width={},height={} ! {encode} ! udpsink host=127.0.0.1 port={port} sync=false",
        request.width, request.height
    );
    let child = tokio::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(line.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("gst-launch-1.0: {e}"))?;
    let socket = tokio::net::UdpSocket::from_std(socket).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(1024);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = socket.recv(&mut buf).await {
            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                return;
            }
        }
    });
    Ok((
        Box::new(LaunchEncoder {
            _child: child,
            reader,
        }),
        rx,
    ))
}

/// The encoder factory the node runs with.
pub fn default_encoder_factory() -> EncoderFactory {
    Arc::new(launch)
}
