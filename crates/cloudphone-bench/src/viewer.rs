//! A viewer of the node's stream: signaling WebSocket, webrtc-rs peer, GStreamer decoder. For
//! every decoded frame it reads the on-screen clock and records its age; it also records
//! when the first frame came out, for time to first frame.
//!
//! Receiver choices, to measure the sender and not the client: no jitter buffer (on a clean
//! path packets arrive in order; browsers shrink theirs to near zero there too), and the
//! decoder on one thread (libav's frame threading holds a frame per thread).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cloudphone_node::testing::viewer::{forward_rtp, receiving_peer, remote_candidate};
use cloudphone_signaling::{ClientMessage, Hello, IceServer, NodeMessage};
use futures::{SinkExt, StreamExt};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::api::APIBuilder;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

use crate::clock;

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the decoder saw.
#[derive(Default)]
pub struct Seen {
    pub frames: u64,
    pub first_frame: Option<Instant>,
    /// Clock age per decoded frame that carried a readable clock, ms, with its arrival time.
    pub ages_ms: Vec<(Instant, f64)>,
    /// Decoder side only: first packet of the frame pushed → decoded frame out, ms.
    pub receiver_ms: Vec<(Instant, f64)>,
    /// Frames whose clock did not read (torn capture or coding artifacts).
    pub unreadable: u64,
    pub width: u32,
    pub height: u32,
}

/// A receiver's session with the node: its signaling socket, what its decoder saw, and the
/// WebRTC stack `P` that receives (webrtc-rs: [`Viewer`]; GStreamer `webrtcbin`:
/// [`crate::viewer_webrtcbin::WebrtcbinViewer`]).
pub struct Session<P> {
    pub(crate) ws: Ws,
    pub seen: Arc<Mutex<Seen>>,
    /// When hello was sent.
    pub hello_at: Instant,
    /// What the stack hands to signaling (its offer, its candidates), or why it failed.
    pub(crate) outbox: mpsc::UnboundedReceiver<Result<ClientMessage, String>>,
    pub peer: P,
}

/// The part of a receiver that differs between WebRTC stacks.
pub trait Peer: Send {
    /// Takes the node's answer or candidate; any other message ends the session.
    fn on_node(&mut self, m: NodeMessage) -> impl Future<Output = Result<()>> + Send;

    /// Stops receiving.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// The webrtc-rs viewer.
pub type Viewer = Session<Arc<RTCPeerConnection>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) async fn send(ws: &mut Ws, m: &ClientMessage) -> Result<()> {
    ws.send(Message::text(serde_json::to_string(m)?)).await?;
    Ok(())
}

pub(crate) async fn recv(ws: &mut Ws) -> Result<Option<NodeMessage>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(t.as_str())?)),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(_)) => continue,
        }
    }
}

/// Opens the node's signaling socket, says hello and waits for `ready`: the socket, when hello
/// was sent, and the ICE servers `ready` names.
pub(crate) async fn say_hello(url: &str, hello: Hello) -> Result<(Ws, Instant, Vec<IceServer>)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("signaling connect")?;
    let hello_at = Instant::now();
    send(&mut ws, &ClientMessage::Hello(hello)).await?;
    let ready = tokio::time::timeout(Duration::from_secs(20), recv(&mut ws))
        .await
        .context("no reply to hello")??
        .ok_or_else(|| anyhow!("socket closed after hello"))?;
    let NodeMessage::Ready { ice_servers, .. } = ready else {
        bail!("hello refused: {ready:?}");
    };
    Ok((ws, hello_at, ice_servers))
}

/// The RTP encoding name of a codec and the decode tail both Rust viewers use for it:
/// depayloader (named `depay`) → parser → single-threaded libav decoder → GRAY8 appsink (named
/// `sink`).
pub(crate) fn decode_tail(h265: bool) -> (&'static str, String) {
    let (name, depay, parse, dec) = if h265 {
        ("H265", "rtph265depay", "h265parse", "avdec_h265")
    } else {
        ("H264", "rtph264depay", "h264parse", "avdec_h264")
    };
    let line = format!(
        "{depay} name=depay ! {parse} ! {dec} max-threads=1 ! videoconvert \
         ! video/x-raw,format=GRAY8 ! appsink name=sink sync=false max-buffers=4 drop=true"
    );
    (name, line)
}

/// Reads the clock from every GRAY8 frame `sink` hands out and records it in `seen` (frame
/// count, size, first frame, clock age or unreadable), with the receiver-side time
/// `receiver_ms` gives for the frame, if any.
pub(crate) fn read_clock_from(
    sink: &gst_app::AppSink,
    seen: Arc<Mutex<Seen>>,
    receiver_ms: impl Fn(&gst::Sample, &gst::BufferRef, Instant) -> Option<f64> + Send + 'static,
) {
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let now = Instant::now();
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Some(s) = caps.structure(0) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height")) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let (w, h) = (w as u32, h as u32);
                let read = buffer.map_readable().ok().and_then(|map| {
                    // GRAY8 rows are padded to 4 bytes.
                    clock::read_gray(map.as_slice(), w, h, (w as usize + 3) & !3)
                });
                let rx_ms = receiver_ms(&sample, buffer, now);
                let mut seen = lock(&seen);
                seen.frames += 1;
                seen.width = w;
                seen.height = h;
                seen.first_frame.get_or_insert(now);
                match read {
                    Some(value) => seen.ages_ms.push((now, clock::age_ms(value))),
                    None => seen.unreadable += 1,
                }
                if let Some(ms) = rx_ms {
                    seen.receiver_ms.push((now, ms));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

impl<P: Peer> Session<P> {
    /// Runs signaling both ways for `duration`: what the stack hands out goes to the node,
    /// what the node says goes to the stack; fails if the node ends the session.
    pub async fn pump_for(&mut self, duration: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                Some(out) = self.outbox.recv() => match out {
                    Ok(m) => send(&mut self.ws, &m).await?,
                    Err(e) => bail!("{e}"),
                },
                m = recv(&mut self.ws) => match m? {
                    Some(m) => self.peer.on_node(m).await?,
                    None => bail!("signaling closed"),
                },
            }
        }
    }

    /// Pumps until the first frame is decoded; returns hello → first frame.
    pub async fn first_frame(&mut self, within: Duration) -> Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = lock(&self.seen).first_frame {
                return Ok(at.duration_since(self.hello_at));
            }
            if Instant::now() > deadline {
                bail!("no frame within {within:?}");
            }
            self.pump_for(Duration::from_millis(5)).await?;
        }
    }

    /// Frames decoded so far.
    pub fn frames(&self) -> u64 {
        lock(&self.seen).frames
    }

    pub async fn close(mut self) {
        self.peer.close().await;
        let _ = self.ws.close(None).await;
    }
}

impl Viewer {
    /// Says hello, negotiates, and starts decoding whatever arrives.
    pub async fn connect(url: &str, hello: Hello) -> Result<Viewer> {
        gst::init()?;
        let (mut ws, hello_at, ice_servers) = say_hello(url, hello).await?;
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        // Receiver reports only: the node's NACK/PLI paths are not what is measured here.
        let registry = webrtc::api::interceptor_registry::configure_rtcp_reports(Registry::new());
        // Nominate a working pair at once. The node's first STUN check usually arrives before
        // its candidates do (UDP beats the signaling socket), so the viewer first knows the
        // node's address as peer-reflexive, and webrtc-rs waits 1 s before nominating a
        // peer-reflexive pair by default: time to first frame was then ~1050 ms instead of
        // ~50 ms in a third of the trials.
        let mut setting = SettingEngine::default();
        setting.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting)
            .build();
        let (cand_tx, outbox) = mpsc::unbounded_channel();
        let (pc, _input) = receiving_peer(
            &api,
            &ice_servers,
            false,
            &[RTPCodecType::Video],
            move |c| {
                let _ = cand_tx.send(Ok(ClientMessage::Candidate(c)));
            },
        )
        .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = Arc::clone(&seen);
        pc.on_track(Box::new(move |track, _, _| {
            let s = Arc::clone(&s);
            Box::pin(async move {
                let codec = track.codec();
                let h265 = codec
                    .capability
                    .mime_type
                    .eq_ignore_ascii_case("video/H265");
                let (appsrc, pipeline) = match decoder(h265, codec.payload_type, s) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("viewer: decoder: {e:#}");
                        return;
                    }
                };
                forward_rtp(&track, &appsrc, |_, _| {}).await;
                let _ = pipeline.set_state(gst::State::Null);
            })
        }));
        let offer = pc.create_offer(None).await?;
        pc.set_local_description(offer.clone()).await?;
        send(&mut ws, &ClientMessage::Offer { sdp: offer.sdp }).await?;
        match tokio::time::timeout(Duration::from_secs(20), recv(&mut ws))
            .await
            .context("no answer")??
        {
            Some(NodeMessage::Answer { sdp }) => {
                pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
                    .await?;
            }
            other => bail!("expected an answer, got {other:?}"),
        }
        Ok(Viewer {
            ws,
            seen,
            hello_at,
            outbox,
            peer: pc,
        })
    }
}

impl Peer for Arc<RTCPeerConnection> {
    async fn on_node(&mut self, m: NodeMessage) -> Result<()> {
        match m {
            NodeMessage::Candidate(c) => {
                let _ = self.add_ice_candidate(remote_candidate(c)).await;
                Ok(())
            }
            other => bail!("node said {other:?}"),
        }
    }

    async fn close(self) {
        let _ = RTCPeerConnection::close(&self).await;
    }
}

/// appsrc (RTP) → [`decode_tail`], whose appsink reads the clock.
fn decoder(h265: bool, pt: u8, seen: Arc<Mutex<Seen>>) -> Result<(gst_app::AppSrc, gst::Pipeline)> {
    let (name, tail) = decode_tail(h265);
    let line = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true \
         caps=application/x-rtp,media=video,encoding-name={name},clock-rate=90000,payload={pt} \
         ! {tail}"
    );
    let pipeline = gst::parse::launch(&line)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    let appsrc = pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .context("appsrc")?;
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .context("appsink")?;
    let clock_pipeline = pipeline.clone();
    // Running time now minus the PTS appsrc stamped on the frame's first packet.
    read_clock_from(&sink, seen, move |sample, buffer, _| {
        match (
            clock_pipeline.current_running_time(),
            sample
                .segment()
                .and_then(|seg| seg.downcast_ref::<gst::ClockTime>())
                .and_then(|seg| seg.to_running_time(buffer.pts())),
        ) {
            (Some(now_rt), Some(rt)) => Some(now_rt.saturating_sub(rt).nseconds() as f64 / 1e6),
            _ => None,
        }
    });
    pipeline.set_state(gst::State::Playing)?;
    Ok((appsrc, pipeline))
}
