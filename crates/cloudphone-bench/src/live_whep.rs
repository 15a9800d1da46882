//! The live bench's WebRTC player: GStreamer `webrtcbin` as a WHEP client (RFC 9725). One
//! recvonly H.264 video transceiver, the offer sent once ICE gathering is complete (no
//! trickle: WHEP's PATCH is optional), `POST` as `application/sdp` → `201 Created` with the
//! answer; the decoded frames go through the same clock-reading tail as the other receivers.
//! Audio is not offered: the clock is in the video, and a WHEP server may answer only what
//! was offered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

use crate::viewer::{Seen, decode_tail, read_clock_from};
use crate::viewer_webrtcbin::DEFAULT_LATENCY_MS;

/// A running WHEP session: its pipeline, what its decoder saw, and the session's resource URL
/// (the `Location` of the 201) to `DELETE` when done.
pub(crate) struct Whep {
    pub(crate) pipeline: gst::Pipeline,
    pub(crate) seen: Arc<Mutex<Seen>>,
    pub(crate) resource: Option<String>,
}

/// webrtcbin with its recvonly transceiver and decode tail, playing (so ICE gathers).
fn build(seen: &Arc<Mutex<Seen>>) -> Result<(gst::Pipeline, gst::Element)> {
    let pipeline = gst::Pipeline::new();
    let bin = gst::ElementFactory::make("webrtcbin")
        .property_from_str("bundle-policy", "max-bundle")
        .property("latency", DEFAULT_LATENCY_MS)
        .build()
        .context("webrtcbin (gstreamer1.0-plugins-bad + gstreamer1.0-nice)")?;
    pipeline.add(&bin)?;
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("encoding-name", "H264")
        .field("clock-rate", 90000i32)
        .field("payload", 102i32)
        .field("packetization-mode", "1")
        .field("profile-level-id", "42e01f")
        .build();
    bin.emit_by_name::<glib::Object>(
        "add-transceiver",
        &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, &caps],
    );
    let (_, tail_line) = decode_tail(false);
    let s = Arc::clone(seen);
    let weak = pipeline.downgrade();
    bin.connect_pad_added(move |_, pad| {
        if pad.direction() != gst::PadDirection::Src {
            return;
        }
        let Some(pipeline) = weak.upgrade() else {
            return;
        };
        let attach = || -> Result<()> {
            let tail = gst::parse::bin_from_description(&tail_line, true)?;
            let sink = tail
                .by_name("sink")
                .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
                .context("appsink")?;
            read_clock_from(&sink, Arc::clone(&s), |_, _, _| None);
            pipeline.add(&tail)?;
            tail.sync_state_with_parent()?;
            pad.link(&tail.static_pad("sink").context("tail sink")?)?;
            Ok(())
        };
        if let Err(e) = attach() {
            eprintln!("whep player: decoder: {e:#}");
        }
    });
    pipeline.set_state(gst::State::Playing)?;
    Ok((pipeline, bin))
}

/// Creates the offer, sets it locally and waits for ICE gathering: the offer's text with
/// every candidate in it.
fn offer(bin: &gst::Element) -> Result<String> {
    let promise = gst::Promise::new();
    bin.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
    promise.wait();
    let offer = promise
        .get_reply()
        .and_then(|r| r.value("offer").ok())
        .and_then(|v| v.get::<gst_webrtc::WebRTCSessionDescription>().ok())
        .ok_or_else(|| anyhow!("webrtcbin made no offer"))?;
    bin.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while bin.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
        != gst_webrtc::WebRTCICEGatheringState::Complete
    {
        if Instant::now() > deadline {
            // Whatever was gathered: loopback host candidates come first.
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let local = bin
        .property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
        .context("no local description")?;
    Ok(local.sdp().as_text()?)
}

/// Starts a WHEP session against `url`.
pub(crate) async fn start(url: &str) -> Result<Whep> {
    gst::init()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (pipeline, bin) = build(&seen)?;
    let b = bin.clone();
    let sdp = tokio::task::spawn_blocking(move || offer(&b)).await??;
    let resp = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .context("WHEP POST")?;
    let status = resp.status();
    let resource = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|l| resolve(url, l));
    let answer = resp.text().await?;
    if status != reqwest::StatusCode::CREATED {
        let _ = pipeline.set_state(gst::State::Null);
        bail!("WHEP POST answered {status}: {answer}");
    }
    let message = gst_sdp::SDPMessage::parse_buffer(answer.as_bytes())
        .map_err(|e| anyhow!("answer does not parse: {e}"))?;
    let answer =
        gst_webrtc::WebRTCSessionDescription::new(gst_webrtc::WebRTCSDPType::Answer, message);
    bin.emit_by_name::<()>("set-remote-description", &[&answer, &None::<gst::Promise>]);
    Ok(Whep {
        pipeline,
        seen,
        resource,
    })
}

/// A `Location` relative to the endpoint, made absolute.
pub(crate) fn resolve(endpoint: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = endpoint
        .find("://")
        .and_then(|i| endpoint[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(endpoint.len());
    if location.starts_with('/') {
        format!("{}{location}", &endpoint[..origin_end])
    } else {
        let base = endpoint.split('?').next().unwrap_or(endpoint);
        let dir = base.rfind('/').map_or(base, |i| &base[..=i]);
        format!("{dir}{location}")
    }
}

/// Ends the session on the server (best effort).
pub(crate) async fn delete(resource: &str) {
    let _ = reqwest::Client::new()
        .delete(resource)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_endpoint() {
        let e = "http://10.0.0.5:8080/live/1624428150544871/whep?auth_key=1-0-0-ab";
        assert_eq!(
            resolve(e, "/live/1624428150544871/whep/abc"),
            "http://10.0.0.5:8080/live/1624428150544871/whep/abc"
        );
        assert_eq!(
            resolve(e, "whep/abc"),
            "http://10.0.0.5:8080/live/1624428150544871/whep/abc"
        );
        assert_eq!(resolve(e, "https://x/y"), "https://x/y");
    }

    /// The offer webrtcbin makes is what a WHEP server gets: recvonly H.264 with candidates.
    #[test]
    fn the_offer_is_recvonly_h264_with_candidates() {
        gst::init().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (pipeline, bin) = build(&seen).unwrap();
        let sdp = offer(&bin).unwrap();
        let _ = pipeline.set_state(gst::State::Null);
        assert!(sdp.contains("a=recvonly"), "{sdp}");
        assert!(sdp.contains("H264/90000"), "{sdp}");
        assert!(sdp.contains("a=candidate:"), "{sdp}");
    }
}
