//! The live bench's WebRTC player: GStreamer `webrtcbin` as a WHEP client (RFC 9725). One
//! recvonly H.264 video transceiver, the offer sent once ICE gathering is complete (no
//! trickle: WHEP's PATCH is optional), `POST` as `application/sdp` → `201 Created` with the
//! answer; the decoded frames go through the same clock-reading tail as the other receivers.
//! Audio is not offered: the clock is in the video, and a WHEP server may answer only what
//! was offered. The webrtcbin steps are `cloudphone_testkit::live`'s, which control's live
//! end-to-end test plays WHEP with too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use cloudphone_testkit::live;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

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
    let (pipeline, bin) =
        live::recvonly_webrtcbin(&live::h264_rtp_caps(), Some(DEFAULT_LATENCY_MS))?;
    let (_, tail_line) = decode_tail(false);
    let s = Arc::clone(seen);
    live::on_src_pads(&pipeline, &bin, move |pipeline, pad| {
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

/// Starts a WHEP session against `url`.
pub(crate) async fn start(url: &str) -> Result<Whep> {
    gst::init()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (pipeline, bin) = build(&seen)?;
    let resource = match live::whep_negotiate(&bin, url).await {
        Ok(location) => location.map(|l| resolve(url, &l)),
        Err(e) => {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(e);
        }
    };
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
    use gstreamer_webrtc as gst_webrtc;

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
        let sdp = live::local_description(&bin, gst_webrtc::WebRTCSDPType::Offer).unwrap();
        let _ = pipeline.set_state(gst::State::Null);
        assert!(sdp.contains("a=recvonly"), "{sdp}");
        assert!(sdp.contains("H264/90000"), "{sdp}");
        assert!(sdp.contains("a=candidate:"), "{sdp}");
    }
}
