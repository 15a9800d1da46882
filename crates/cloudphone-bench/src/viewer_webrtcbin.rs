//! A viewer built on GStreamer's `webrtcbin` (libnice ICE, DTLS-SRTP, `rtpbin` with its
//! jitter buffer): the stack a GStreamer-based client uses. It says the same hello as
//! [`crate::viewer`], offers one recvonly video transceiver, and decodes what arrives with the
//! same tail as the webrtc-rs viewer (`rtph26xdepay ! h26xparse ! avdec_h26x max-threads=1 !
//! videoconvert ! GRAY8 appsink`), reading the clock from every decoded frame.
//!
//! Jitter buffer: `webrtcbin`'s `latency` (its `rtpjitterbuffer`s' `latency`) is set by the
//! caller ([`DEFAULT_LATENCY_MS`] unless told otherwise) instead of GStreamer's 200 ms default.
//! `rtpjitterbuffer` pushes a packet as soon as it is the next in sequence; `latency` is how long
//! it waits for a missing one (and what it adds to timestamps, which the `sync=false` sink
//! ignores). So on a clean path it adds nothing either way; on a lossy one it is the time a
//! retransmission has to arrive before the frame is given up.
//!
//! Receiver-side time (`receiver_ms`): the first packet of a frame entering the jitter buffer
//! (after ICE, DTLS and SRTP) → the decoded frame at the appsink. Frames are matched by RTP
//! timestamp → depayloaded PTS → decoded PTS.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cloudphone_signaling::{Candidate, ClientMessage, Hello, NodeMessage};
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;
use tokio::sync::mpsc;

use crate::viewer::{Peer, Seen, Session, decode_tail, lock, read_clock_from, say_hello};

/// The jitter-buffer latency the glass bench gives `webrtcbin`, ms.
pub const DEFAULT_LATENCY_MS: u32 = 10;

/// What webrtcbin's callbacks hand to the signaling loop.
enum FromBin {
    Offer(String),
    Candidate(u32, String),
    Error(String),
}

impl FromBin {
    /// The message for the node, or why webrtcbin failed.
    fn out(self) -> Result<ClientMessage, String> {
        match self {
            FromBin::Offer(sdp) => Ok(ClientMessage::Offer { sdp }),
            FromBin::Candidate(mline, candidate) => Ok(ClientMessage::Candidate(Candidate {
                candidate,
                sdp_mid: None,
                sdp_mline_index: Some(mline as u16),
            })),
            FromBin::Error(e) => Err(format!("webrtcbin: {e}")),
        }
    }
}

/// Frame arrival bookkeeping for `receiver_ms`.
#[derive(Default)]
struct Arrivals {
    /// RTP timestamp → when its first packet entered the jitter buffer (last 64 frames).
    first_packet: VecDeque<(u32, Instant)>,
    /// RTP timestamp of the packet the depayloader is handling.
    at_depay: Option<u32>,
    /// Depayloaded frame PTS → its RTP timestamp (last 64 frames).
    pts: VecDeque<(gst::ClockTime, u32)>,
}

impl Arrivals {
    fn arrival_of(&self, pts: gst::ClockTime) -> Option<Instant> {
        let ts = self.pts.iter().rev().find(|(p, _)| *p == pts)?.1;
        Some(self.first_packet.iter().rev().find(|(t, _)| *t == ts)?.1)
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= 64 {
        q.pop_front();
    }
    q.push_back(v);
}

/// RTP timestamp of a raw RTP packet.
fn rtp_timestamp(buffer: &gst::BufferRef) -> Option<u32> {
    let map = buffer.map_readable().ok()?;
    let b = map.as_slice();
    (b.len() >= 12 && b[0] >> 6 == 2).then(|| u32::from_be_bytes([b[4], b[5], b[6], b[7]]))
}

/// Percent-encodes `:` and `@` (webrtcbin splits TURN user info at `:`).
fn escape_userinfo(s: &str) -> String {
    s.replace('%', "%25")
        .replace(':', "%3A")
        .replace('@', "%40")
}

/// The webrtcbin stack of a [`WebrtcbinViewer`].
pub struct Webrtcbin {
    pipeline: gst::Pipeline,
    bin: gst::Element,
    /// The jitter buffers' `latency`, ms.
    pub latency_ms: u32,
}

/// The GStreamer `webrtcbin` viewer.
pub type WebrtcbinViewer = Session<Webrtcbin>;

impl WebrtcbinViewer {
    /// Says hello, negotiates (webrtcbin offers, the node answers) and starts decoding.
    pub async fn connect(url: &str, hello: Hello, latency_ms: u32) -> Result<WebrtcbinViewer> {
        gst::init()?;
        let h265 = hello.encoding_type == cloudphone_signaling::EncodingType::H265;
        let (name, tail_line) = decode_tail(h265);
        let (ws, hello_at, ice_servers) = say_hello(url, hello).await?;

        let pipeline = gst::Pipeline::new();
        let bin = gst::ElementFactory::make("webrtcbin")
            .property_from_str("bundle-policy", "max-bundle")
            .property("latency", latency_ms)
            .build()
            .context("webrtcbin (gstreamer1.0-plugins-bad + gstreamer1.0-nice)")?;
        for server in ice_servers {
            for u in &server.urls {
                if let Some(rest) = u.strip_prefix("stun:") {
                    bin.set_property("stun-server", format!("stun://{rest}"));
                } else if let Some((scheme, rest)) = u.split_once(':')
                    && (scheme == "turn" || scheme == "turns")
                {
                    let user = escape_userinfo(server.username.as_deref().unwrap_or_default());
                    let pass = escape_userinfo(server.credential.as_deref().unwrap_or_default());
                    let uri = format!("{scheme}://{user}:{pass}@{rest}");
                    let _ = bin.emit_by_name::<bool>("add-turn-server", &[&uri]);
                }
            }
        }
        pipeline.add(&bin)?;
        let mut caps = gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("encoding-name", name)
            .field("clock-rate", 90000i32);
        caps = if name == "H264" {
            caps.field("payload", 102i32)
                .field("packetization-mode", "1")
                .field("profile-level-id", "42e01f")
        } else {
            caps.field("payload", 104i32)
        };
        bin.emit_by_name::<glib::Object>(
            "add-transceiver",
            &[
                &gst_webrtc::WebRTCRTPTransceiverDirection::Recvonly,
                &caps.build(),
            ],
        );

        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        // The jitter buffer's input: when each frame's first packet arrived.
        if let Some(rtpbin) = bin
            .downcast_ref::<gst::Bin>()
            .and_then(|b| b.by_name("rtpbin"))
        {
            let a = Arc::clone(&arrivals);
            rtpbin.connect("new-jitterbuffer", false, move |values| {
                let jb = values[1].get::<gst::Element>().ok()?;
                let a = Arc::clone(&a);
                let record = move |buffer: &gst::BufferRef, now: Instant| {
                    if let Some(ts) = rtp_timestamp(buffer) {
                        let mut a = lock(&a);
                        if !a.first_packet.iter().any(|(t, _)| *t == ts) {
                            push_bounded(&mut a.first_packet, (ts, now));
                        }
                    }
                };
                jb.static_pad("sink")?.add_probe(
                    gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                    move |_, info| {
                        let now = Instant::now();
                        match &info.data {
                            Some(gst::PadProbeData::Buffer(b)) => record(b, now),
                            Some(gst::PadProbeData::BufferList(l)) => {
                                for b in l.iter() {
                                    record(b, now);
                                }
                            }
                            _ => {}
                        }
                        gst::PadProbeReturn::Ok
                    },
                );
                None
            });
        } else {
            eprintln!("webrtcbin viewer: no rtpbin inside webrtcbin; receiver_ms not measured");
        }

        let (to_ws, from_bin) = mpsc::unbounded_channel();
        let offer_tx = to_ws.clone();
        bin.connect("on-negotiation-needed", false, move |values| {
            let bin = values[0].get::<gst::Element>().ok()?;
            let offer_tx = offer_tx.clone();
            let bin2 = bin.clone();
            let promise = gst::Promise::with_change_func(move |reply| {
                let offer = match reply {
                    Ok(Some(reply)) => reply
                        .value("offer")
                        .ok()
                        .and_then(|v| v.get::<gst_webrtc::WebRTCSessionDescription>().ok()),
                    _ => None,
                };
                let Some(offer) = offer else {
                    let _ = offer_tx.send(FromBin::Error(format!("create-offer: {reply:?}")).out());
                    return;
                };
                bin2.emit_by_name::<()>("set-local-description", &[&offer, &None::<gst::Promise>]);
                match offer.sdp().as_text() {
                    Ok(sdp) => {
                        let _ = offer_tx.send(FromBin::Offer(sdp).out());
                    }
                    Err(e) => {
                        let _ = offer_tx.send(FromBin::Error(format!("offer text: {e}")).out());
                    }
                }
            });
            bin.emit_by_name::<()>("create-offer", &[&None::<gst::Structure>, &promise]);
            None
        });
        let cand_tx = to_ws.clone();
        bin.connect("on-ice-candidate", false, move |values| {
            let mline = values[1].get::<u32>().ok()?;
            let candidate = values[2].get::<String>().ok()?;
            let _ = cand_tx.send(FromBin::Candidate(mline, candidate).out());
            None
        });

        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, a, err_tx) = (Arc::clone(&seen), Arc::clone(&arrivals), to_ws);
        cloudphone_testkit::live::on_src_pads(&pipeline, &bin, move |pipeline, pad| {
            if let Err(e) = attach_tail(pipeline, pad, &tail_line, &s, &a) {
                let _ = err_tx.send(FromBin::Error(format!("decoder: {e:#}")).out());
            }
        });
        pipeline.set_state(gst::State::Playing)?;
        Ok(WebrtcbinViewer {
            ws,
            seen,
            hello_at,
            outbox: from_bin,
            peer: Webrtcbin {
                pipeline,
                bin,
                latency_ms,
            },
        })
    }
}

impl Peer for Webrtcbin {
    async fn on_node(&mut self, m: NodeMessage) -> Result<()> {
        match m {
            NodeMessage::Answer { sdp } => {
                let message = gst_sdp::SDPMessage::parse_buffer(sdp.as_bytes())
                    .map_err(|e| anyhow!("answer does not parse: {e}"))?;
                let answer = gst_webrtc::WebRTCSessionDescription::new(
                    gst_webrtc::WebRTCSDPType::Answer,
                    message,
                );
                self.bin.emit_by_name::<()>(
                    "set-remote-description",
                    &[&answer, &None::<gst::Promise>],
                );
            }
            NodeMessage::Candidate(c) => {
                if !c.candidate.is_empty() {
                    let mline = u32::from(c.sdp_mline_index.unwrap_or(0));
                    self.bin
                        .emit_by_name::<()>("add-ice-candidate", &[&mline, &c.candidate]);
                }
            }
            other => bail!("node said {other:?}"),
        }
        Ok(())
    }

    async fn close(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// depayloader → parser → decoder → GRAY8 appsink reading the clock, linked to `pad`.
fn attach_tail(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    line: &str,
    seen: &Arc<Mutex<Seen>>,
    arrivals: &Arc<Mutex<Arrivals>>,
) -> Result<()> {
    let tail = gst::parse::bin_from_description(line, true)?;
    let depay = tail.by_name("depay").context("depay")?;
    let a = Arc::clone(arrivals);
    depay.static_pad("sink").context("depay sink")?.add_probe(
        gst::PadProbeType::BUFFER,
        move |_, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &info.data
                && let Some(ts) = rtp_timestamp(b)
            {
                lock(&a).at_depay = Some(ts);
            }
            gst::PadProbeReturn::Ok
        },
    );
    let a = Arc::clone(arrivals);
    depay.static_pad("src").context("depay src")?.add_probe(
        gst::PadProbeType::BUFFER,
        move |_, info| {
            if let Some(gst::PadProbeData::Buffer(b)) = &info.data
                && let Some(pts) = b.pts()
            {
                let mut a = lock(&a);
                if let Some(ts) = a.at_depay {
                    push_bounded(&mut a.pts, (pts, ts));
                }
            }
            gst::PadProbeReturn::Ok
        },
    );
    let sink = tail
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .context("appsink")?;
    let a = Arc::clone(arrivals);
    read_clock_from(&sink, Arc::clone(seen), move |_, buffer, now| {
        buffer
            .pts()
            .and_then(|pts| lock(&a).arrival_of(pts))
            .map(|at| now.duration_since(at).as_secs_f64() * 1e3)
    });
    pipeline.add(&tail)?;
    tail.sync_state_with_parent()?;
    pad.link(&tail.static_pad("sink").context("tail sink")?)?;
    Ok(())
}
