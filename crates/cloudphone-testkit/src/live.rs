//! GStreamer clients of the live edge, shared by control's and the node's tests and the bench:
//! an RTMP publisher (`gst-launch-1.0 … rtmp2sink`), players counting decoded frames (FLV, RTMP
//! and HLS through a demuxer, WHEP through webrtcbin), and the webrtcbin steps a receiving peer
//! takes (a recvonly transceiver, decoders linked to its pads, a local description with its ICE
//! candidates gathered, WHEP's offer/answer exchange).

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;

/// A live H.264 push of a test pattern (320×240, 30 fps, a 1 s GOP) to `url`, with an AAC tone
/// too when `audio`, as the live edge's Done-when runs it; killed on drop. Its stderr is the
/// test's, so a refused push says why.
pub fn rtmp_push(url: &str, audio: bool) -> tokio::process::Child {
    let mut pipeline = format!(
        "flvmux name=m streamable=true ! rtmp2sink location={url} \
         videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency key-int-max=30 speed-preset=ultrafast ! h264parse ! m."
    );
    if audio {
        pipeline.push_str(" audiotestsrc is-live=true ! audioconvert ! avenc_aac ! aacparse ! m.");
    }
    tokio::process::Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("gst-launch-1.0")
}

/// Counts every sample `sink` pulls into `counter`.
pub fn count_samples(sink: &gst_app::AppSink, counter: Arc<AtomicU64>) {
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let _ = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// RTP caps of the H.264 video a WHEP player receives: payload 102, packetization mode 1,
/// constrained baseline (what the node and nginx answer).
pub fn h264_rtp_caps() -> gst::Caps {
    gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("encoding-name", "H264")
        .field("clock-rate", 90000i32)
        .field("payload", 102i32)
        .field("packetization-mode", "1")
        .field("profile-level-id", "42e01f")
        .build()
}

/// A pipeline holding a webrtcbin (bundle-policy max-bundle, a `latency_ms` jitter buffer when
/// given) with one recvonly transceiver of `caps`; not yet playing.
pub fn recvonly_webrtcbin(
    caps: &gst::Caps,
    latency_ms: Option<u32>,
) -> Result<(gst::Pipeline, gst::Element)> {
    gst::init()?;
    let pipeline = gst::Pipeline::new();
    let mut builder =
        gst::ElementFactory::make("webrtcbin").property_from_str("bundle-policy", "max-bundle");
    if let Some(ms) = latency_ms {
        builder = builder.property("latency", ms);
    }
    let bin = builder
        .build()
        .context("webrtcbin (gstreamer1.0-plugins-bad + gstreamer1.0-nice)")?;
    pipeline.add(&bin)?;
    bin.emit_by_name::<glib::Object>(
        "add-transceiver",
        &[&gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly, caps],
    );
    Ok((pipeline, bin))
}

/// Calls `attach` with the pipeline for every RTP source pad `bin` (a webrtcbin in `pipeline`)
/// adds: where a receiver links its depayloader and decoder.
pub fn on_src_pads(
    pipeline: &gst::Pipeline,
    bin: &gst::Element,
    attach: impl Fn(&gst::Pipeline, &gst::Pad) + Send + Sync + 'static,
) {
    let weak = pipeline.downgrade();
    bin.connect_pad_added(move |_, pad| {
        if pad.direction() != gst::PadDirection::Src {
            return;
        }
        if let Some(pipeline) = weak.upgrade() {
            attach(&pipeline, pad);
        }
    });
}

/// Has `bin` create an offer or an answer (`kind`), sets it as the local description and waits
/// (5 s at most) for ICE gathering to complete: the description's SDP with every candidate
/// gathered by then (loopback host candidates come first). Blocks: call it off the runtime.
pub fn local_description(bin: &gst::Element, kind: gst_webrtc::WebRTCSDPType) -> Result<String> {
    let (signal, field) = match kind {
        gst_webrtc::WebRTCSDPType::Answer => ("create-answer", "answer"),
        _ => ("create-offer", "offer"),
    };
    let promise = gst::Promise::new();
    bin.emit_by_name::<()>(signal, &[&None::<gst::Structure>, &promise]);
    promise.wait();
    let description = promise
        .get_reply()
        .and_then(|r| r.value(field).ok())
        .and_then(|v| v.get::<gst_webrtc::WebRTCSessionDescription>().ok())
        .ok_or_else(|| anyhow!("webrtcbin made no {field}"))?;
    bin.emit_by_name::<()>(
        "set-local-description",
        &[&description, &None::<gst::Promise>],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while bin.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state")
        != gst_webrtc::WebRTCICEGatheringState::Complete
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let local = bin
        .property::<Option<gst_webrtc::WebRTCSessionDescription>>("local-description")
        .context("no local description")?;
    Ok(local.sdp().as_text()?)
}

/// Sets `sdp` as `bin`'s remote description of type `kind`, and waits until webrtcbin took it.
pub fn set_remote_description(
    bin: &gst::Element,
    kind: gst_webrtc::WebRTCSDPType,
    sdp: &str,
) -> Result<()> {
    let message = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes())
        .map_err(|e| anyhow!("the {kind:?} does not parse: {e}"))?;
    let description = gst_webrtc::WebRTCSessionDescription::new(kind, message);
    let promise = gst::Promise::new();
    bin.emit_by_name::<()>("set-remote-description", &[&description, &promise]);
    promise.wait();
    Ok(())
}

/// WHEP (RFC 9725) from the player's side, no trickle: `bin`'s offer with its candidates
/// POSTed to `url` as `application/sdp`; the answer of a `201 Created` set as the remote
/// description. The session's resource (the `Location` header, as sent) when there is one.
pub async fn whep_negotiate(bin: &gst::Element, url: &str) -> Result<Option<String>> {
    let b = bin.clone();
    let offer = tokio::task::spawn_blocking(move || {
        local_description(&b, gst_webrtc::WebRTCSDPType::Offer)
    })
    .await??;
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .context("WHEP POST")?;
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answer = response.text().await?;
    if status != reqwest::StatusCode::CREATED {
        bail!("WHEP POST answered {status}: {answer}");
    }
    set_remote_description(bin, gst_webrtc::WebRTCSDPType::Answer, &answer)?;
    Ok(location)
}

/// A GStreamer player of the live edge counting decoded H.264 frames; stopped on drop.
pub struct Player {
    /// Names the player in messages ("FLV", "WHEP").
    name: &'static str,
    pipeline: gst::Pipeline,
    frames: Arc<AtomicU64>,
}

/// Adds the decoding tail (`queue ! h264parse ! avdec_h264 ! appsink`, with `depay` after the
/// queue for RTP) to `pipeline`, counting each decoded frame into `frames`: its sink pad.
fn decode_tail(pipeline: &gst::Pipeline, depay: &str, frames: &Arc<AtomicU64>) -> gst::Pad {
    let tail = gst::parse::bin_from_description(
        &format!("queue {depay} ! h264parse ! avdec_h264 ! appsink name=sink sync=false"),
        true,
    )
    .unwrap();
    let sink = tail
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .unwrap();
    count_samples(&sink, Arc::clone(frames));
    pipeline.add(&tail).unwrap();
    tail.sync_state_with_parent().unwrap();
    tail.static_pad("sink").unwrap()
}

impl Player {
    /// A player of `source`, a pipeline description ending in a demuxer named `d`: the
    /// demuxer's first video pad is decoded and every other pad drained into a fakesink (an
    /// FLV push's AAC comes before its first video tag, and an unlinked audio pad would stop
    /// the demuxer with "not-linked").
    pub fn demuxed(name: &'static str, source: &str) -> Player {
        gst::init().unwrap();
        let pipeline = gst::parse::launch(source)
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
        let frames = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&frames);
        let weak = pipeline.downgrade();
        let video_linked = AtomicBool::new(false);
        pipeline
            .by_name("d")
            .unwrap()
            .connect_pad_added(move |_, pad| {
                let Some(pipeline) = weak.upgrade() else {
                    return;
                };
                let sink = if pad.name().starts_with("video")
                    && !video_linked.swap(true, Ordering::SeqCst)
                {
                    decode_tail(&pipeline, "", &counted)
                } else {
                    let drain =
                        gst::parse::bin_from_description("queue ! fakesink async=false", true)
                            .unwrap();
                    pipeline.add(&drain).unwrap();
                    drain.sync_state_with_parent().unwrap();
                    drain.static_pad("sink").unwrap()
                };
                pad.link(&sink).unwrap();
            });
        pipeline.set_state(gst::State::Playing).unwrap();
        Player {
            name,
            pipeline,
            frames,
        }
    }

    /// HTTP-FLV from `url`.
    pub fn flv(url: &str) -> Player {
        Self::demuxed(
            "FLV",
            &format!("souphttpsrc is-live=true location=\"{url}\" ! flvdemux name=d"),
        )
    }

    /// RTMP play of `url`.
    pub fn rtmp(url: &str) -> Player {
        Self::demuxed(
            "RTMP",
            &format!("rtmp2src location=\"{url}\" ! flvdemux name=d"),
        )
    }

    /// HLS from the playlist at `url` (which must already answer 200: hlsdemux does not wait).
    pub fn hls(url: &str) -> Player {
        Self::demuxed(
            "HLS",
            &format!("souphttpsrc location=\"{url}\" ! hlsdemux ! tsdemux name=d"),
        )
    }

    /// webrtcbin as a WHEP client of `url` ([`whep_negotiate`]) with one recvonly H.264
    /// transceiver; panics when the endpoint does not answer 201 with an answer.
    pub async fn whep(url: &str) -> Player {
        let (pipeline, bin) = recvonly_webrtcbin(&h264_rtp_caps(), None).unwrap();
        let frames = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&frames);
        on_src_pads(&pipeline, &bin, move |pipeline, pad| {
            pad.link(&decode_tail(pipeline, "! rtph264depay", &counted))
                .unwrap();
        });
        pipeline.set_state(gst::State::Playing).unwrap();
        whep_negotiate(&bin, url).await.expect("WHEP offer");
        Player {
            name: "WHEP",
            pipeline,
            frames,
        }
    }

    /// Frames decoded so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Whether `n` frames are decoded within `within` (no assertion).
    pub async fn reaches(&self, n: u64, within: Duration) -> bool {
        let start = Instant::now();
        while self.frames() < n {
            if start.elapsed() >= within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// Fails the test unless `n` frames are decoded within `within`; prints how long it took.
    pub async fn wait_frames(&self, n: u64, within: Duration) {
        let start = Instant::now();
        assert!(
            self.reaches(n, within).await,
            "{}: decoded {} frames, wanted {n}",
            self.name,
            self.frames()
        );
        eprintln!(
            "{}: {} frames decoded after {:?}",
            self.name,
            self.frames(),
            start.elapsed()
        );
    }

    /// The webrtcbin's ICE and connection states, for a failure's message (empty for a player
    /// without one).
    pub fn webrtc_states(&self) -> String {
        self.pipeline
            .iterate_elements()
            .into_iter()
            .flatten()
            .find(|e| e.factory().is_some_and(|f| f.name() == "webrtcbin"))
            .map(|bin| {
                format!(
                    "ice {:?}, connection {:?}",
                    bin.property::<gst_webrtc::WebRTCICEConnectionState>("ice-connection-state"),
                    bin.property::<gst_webrtc::WebRTCPeerConnectionState>("connection-state"),
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}
