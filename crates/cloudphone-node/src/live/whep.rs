//! WHEP output of a live stream (draft-ietf-wish-whep-01): a player POSTs an SDP offer, gets an
//! SDP answer and a session, and receives the pushed H.264 as RTP without re-encoding.
//!
//! # Media
//! Each FLV video tag's AVC packet is split into NAL units (AVCC length prefixes, see
//! [`avc`](crate::live::avc)); SPS and PPS from the latest sequence header go before every
//! keyframe (RTMP encoders send them once, a WebRTC player needs them at each entry point), and
//! webrtc-rs's H.264 payloader packs them (STAP-A) and fragments large NAL units (FU-A). The RTP
//! timestamp is the tag's presentation time (DTS + composition offset) at 90 kHz; the marker
//! bit closes each frame. Audio is not sent (FLV carries AAC; WebRTC players take Opus).
//!
//! # Start and end
//! Until ICE and DTLS connect, the session keeps only the frames from the latest keyframe on, so
//! the player starts at a keyframe with as little stale video as possible. A lagging player
//! skips to the next keyframe. The session ends on `DELETE`, when the publisher leaves, when
//! the connection fails or closes, or when it does not connect within
//! [`WhepSettings::connect_timeout`].
//!
//! # Peer connections
//! Built by the node's one [`PeerFactory`] (its UDP ports, NAT 1:1 address, interfaces and
//! STUN servers), with the H.264 track it registers (`profile-level-id=42e01f`): browsers
//! decode the higher profiles encoders push under that label, since the decoder follows the
//! SPS. The answer carries every candidate (non-trickle: WHEP's PATCH is not implemented).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use cloudphone_core::video::Codec;
use tokio::sync::{broadcast, watch};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp::packetizer::Payloader;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use crate::live::avc::{self, AvcConfig, AvcError, AvcPacket};
use crate::live::hub::{Hub, Subscription, Tag, TagKind};
use crate::live::output::{LiveOutputError, valid_stream_id};
use crate::streaming::peer::PeerFactory;

/// RTP payload bytes per packet: webrtc-rs's own 1200-byte packets less the RTP header.
const PAYLOAD_MTU: usize = 1200 - 12;

/// Tunables of the WHEP output.
#[derive(Clone, Debug)]
pub(crate) struct WhepSettings {
    /// A session that has not connected by then ends.
    pub(crate) connect_timeout: Duration,
    /// Longest wait for ICE candidate gathering before answering.
    pub(crate) gather_timeout: Duration,
}

impl Default for WhepSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            gather_timeout: Duration::from_secs(5),
        }
    }
}

/// Every WHEP session on this node.
pub(crate) struct Whep {
    hub: Arc<Hub>,
    peers: Arc<PeerFactory>,
    settings: WhepSettings,
    sessions: Arc<Mutex<HashMap<String, WhepSession>>>,
}

struct WhepSession {
    stream_id: String,
    stop: watch::Sender<bool>,
}

impl Whep {
    pub(crate) fn new(hub: Arc<Hub>, peers: Arc<PeerFactory>) -> Self {
        Self::with_settings(hub, peers, WhepSettings::default())
    }

    pub(crate) fn with_settings(
        hub: Arc<Hub>,
        peers: Arc<PeerFactory>,
        settings: WhepSettings,
    ) -> Self {
        Self {
            hub,
            peers,
            settings,
            sessions: Arc::default(),
        }
    }

    /// Answers a player's offer for `stream_id`: the SDP answer and the new session's id (the
    /// router's `Location` names it, e.g. `/{app}/{id}/whep/{session_id}`).
    pub(crate) async fn offer(
        &self,
        stream_id: &str,
        sdp: &str,
    ) -> Result<(String, String), LiveOutputError> {
        if !valid_stream_id(stream_id) {
            return Err(LiveOutputError::NotFound);
        }
        let sub = self
            .hub
            .subscribe(stream_id)
            .ok_or(LiveOutputError::NotFound)?;
        let config = video_config(&sub.first)?;
        let offer = RTCSessionDescription::offer(sdp.to_owned())
            .map_err(|e| LiveOutputError::BadOffer(e.to_string()))?;
        let viewer = self
            .peers
            .new_viewer(Codec::H264)
            .await
            .map_err(|e| LiveOutputError::Internal(e.to_string()))?;
        let pc = viewer.pc;
        // Before the answer, so no state change is missed.
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        pc.on_peer_connection_state_change(Box::new(move |s| {
            let _ = state_tx.send(s);
            Box::pin(async {})
        }));
        let answer = match answer(&pc, offer, self.settings.gather_timeout).await {
            Ok(answer) => answer,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        // The interceptors (receiver reports, NACK responses) run only while RTCP is read.
        let sender = viewer.sender;
        tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
        let (stop_tx, stop) = watch::channel(false);
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                session_id.clone(),
                WhepSession {
                    stream_id: stream_id.to_owned(),
                    stop: stop_tx,
                },
            );
        tracing::info!(stream_id, session_id, "WHEP session started");
        tokio::spawn(run(
            Running {
                session_id: session_id.clone(),
                sessions: Arc::clone(&self.sessions),
                pc,
                track: viewer.track,
                connect_timeout: self.settings.connect_timeout,
            },
            sub,
            config,
            state,
            stop,
        ));
        Ok((answer, session_id))
    }

    /// Ends a session (`DELETE` on its `Location`). `NotFound` when there is no such session.
    pub(crate) async fn delete(&self, session_id: &str) -> Result<(), LiveOutputError> {
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(session_id)
            .ok_or(LiveOutputError::NotFound)?;
        let _ = session.stop.send(true);
        Ok(())
    }

    /// Open sessions as `(session_id, stream_id)`.
    pub(crate) fn sessions(&self) -> Vec<(String, String)> {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, s)| (id.clone(), s.stream_id.clone()))
            .collect()
    }
}

/// The stream's AVC decoder configuration from the tags a player starts with.
fn video_config(first: &[Tag]) -> Result<AvcConfig, LiveOutputError> {
    let header = first
        .iter()
        .rev()
        .find(|t| t.kind == TagKind::Video && t.is_sequence_header())
        .ok_or(LiveOutputError::NotReady)?;
    match avc::parse(&header.data) {
        Ok(AvcPacket::Config(config)) => Ok(config),
        Err(AvcError::NotAvc(codec)) => Err(LiveOutputError::Unsupported(format!(
            "video codec id {codec}: WHEP here sends H.264"
        ))),
        _ => Err(LiveOutputError::Unsupported(
            "malformed AVC sequence header".to_owned(),
        )),
    }
}

/// Applies the offer and returns the complete answer (all candidates gathered).
async fn answer(
    pc: &RTCPeerConnection,
    offer: RTCSessionDescription,
    gather_timeout: Duration,
) -> Result<String, LiveOutputError> {
    let bad = |e: webrtc::Error| LiveOutputError::BadOffer(e.to_string());
    pc.set_remote_description(offer).await.map_err(bad)?;
    let answer = pc.create_answer(None).await.map_err(bad)?;
    // The video m-line must end up sending H.264; an offer without it gets an answer that
    // would play nothing.
    if !answer
        .sdp
        .lines()
        .any(|l| l.starts_with("a=rtpmap:") && l.to_ascii_uppercase().contains("H264/90000"))
        || !answer.sdp.lines().any(|l| l == "a=sendonly")
    {
        return Err(LiveOutputError::BadOffer(
            "the offer does not receive H.264 video".to_owned(),
        ));
    }
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer)
        .await
        .map_err(|e| LiveOutputError::Internal(e.to_string()))?;
    let _ = tokio::time::timeout(gather_timeout, gathered.recv()).await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| LiveOutputError::Internal("no local description".to_owned()))
}

struct Running {
    session_id: String,
    sessions: Arc<Mutex<HashMap<String, WhepSession>>>,
    pc: Arc<RTCPeerConnection>,
    track: Arc<TrackLocalStaticRTP>,
    connect_timeout: Duration,
}

/// One session: waits for the connection keeping the latest GOP, then sends until it ends.
async fn run(
    running: Running,
    mut sub: Subscription,
    config: AvcConfig,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending: Vec<Tag> = Vec::new();
    keep_gop(&mut pending, sub.first.drain(..));
    let connect_deadline = tokio::time::sleep(running.connect_timeout);
    tokio::pin!(connect_deadline);
    let ended = loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    break Some("peer connection gone");
                }
                match *state.borrow_and_update() {
                    RTCPeerConnectionState::Connected => break None,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        break Some("connection failed");
                    }
                    _ => {}
                }
            }
            tag = sub.live.recv() => match tag {
                Ok(tag) => keep_gop(&mut pending, std::iter::once(tag)),
                Err(broadcast::error::RecvError::Lagged(_)) => pending.clear(),
                Err(broadcast::error::RecvError::Closed) => break Some("publisher left"),
            },
            _ = stop.changed() => break Some("deleted"),
            _ = &mut connect_deadline => break Some("did not connect"),
        }
    };
    let why = match ended {
        Some(why) => why,
        None => {
            let mut packetizer =
                H264Packetizer::new(Some(config), random_u32() as u16, random_u32());
            send(&running.track, &mut packetizer, &pending).await;
            drop(pending);
            loop {
                tokio::select! {
                    tag = sub.live.recv() => match tag {
                        Ok(tag) => send(&running.track, &mut packetizer, std::slice::from_ref(&tag)).await,
                        Err(broadcast::error::RecvError::Lagged(_)) => packetizer.skip_to_keyframe(),
                        Err(broadcast::error::RecvError::Closed) => break "publisher left",
                    },
                    changed = state.changed() => {
                        if changed.is_err() {
                            break "peer connection gone";
                        }
                        if matches!(
                            *state.borrow_and_update(),
                            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        ) {
                            break "connection failed";
                        }
                    }
                    _ = stop.changed() => break "deleted",
                }
            }
        }
    };
    tracing::info!(session_id = running.session_id, why, "WHEP session ended");
    running
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&running.session_id);
    let _ = running.pc.close().await;
}

/// Keeps the video tags from the latest keyframe on (sequence headers too: a new one may come
/// mid-stream).
fn keep_gop(pending: &mut Vec<Tag>, tags: impl IntoIterator<Item = Tag>) {
    for tag in tags {
        if tag.kind != TagKind::Video {
            continue;
        }
        if tag.is_keyframe() && !tag.is_sequence_header() {
            pending.retain(Tag::is_sequence_header);
        }
        pending.push(tag);
    }
}

async fn send(track: &TrackLocalStaticRTP, packetizer: &mut H264Packetizer, tags: &[Tag]) {
    for tag in tags {
        for packet in packetizer.push(tag) {
            // Errors here are the connection going away; the state watch ends the session.
            let _ = track.write_rtp(&packet).await;
        }
    }
}

fn random_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// FLV video tags → RTP packets of H.264 (payload type and SSRC are the track's to rewrite).
pub(crate) struct H264Packetizer {
    config: Option<AvcConfig>,
    payloader: H264Payloader,
    sequence: u16,
    rtp_origin: u32,
    /// Presentation time (ms) the RTP origin stands for, set by the first frame sent.
    pts_origin: Option<i64>,
    waiting_for_keyframe: bool,
}

impl H264Packetizer {
    pub(crate) fn new(config: Option<AvcConfig>, first_sequence: u16, rtp_origin: u32) -> Self {
        Self {
            config,
            payloader: H264Payloader::default(),
            sequence: first_sequence,
            rtp_origin,
            pts_origin: None,
            waiting_for_keyframe: true,
        }
    }

    /// Drops frames until the next keyframe (after a gap the next frames cannot decode).
    pub(crate) fn skip_to_keyframe(&mut self) {
        self.waiting_for_keyframe = true;
    }

    /// The RTP packets of one tag: none for audio, metadata, sequence headers (remembered),
    /// frames before the first keyframe, and malformed frames.
    pub(crate) fn push(&mut self, tag: &Tag) -> Vec<Packet> {
        if tag.kind != TagKind::Video {
            return Vec::new();
        }
        let (keyframe, composition_ms, payload) = match avc::parse(&tag.data) {
            Ok(AvcPacket::Config(config)) => {
                self.config = Some(config);
                return Vec::new();
            }
            Ok(AvcPacket::Frame {
                keyframe,
                composition_ms,
                payload,
            }) => (keyframe, composition_ms, payload),
            Ok(AvcPacket::EndOfSequence) | Err(_) => return Vec::new(),
        };
        if self.waiting_for_keyframe && !keyframe {
            return Vec::new();
        }
        let Some(config) = &self.config else {
            return Vec::new();
        };
        let Ok(nalus) = config.nalus(&payload) else {
            return Vec::new();
        };
        self.waiting_for_keyframe = false;
        let mut units: Vec<Bytes> = Vec::with_capacity(nalus.len() + 2);
        if keyframe {
            units.extend(config.sps.iter().cloned());
            units.extend(config.pps.iter().cloned());
        }
        units.extend(nalus);
        let mut payloads = Vec::new();
        for unit in &units {
            // A NAL unit without start codes goes through whole (SPS/PPS are held and packed
            // into a STAP-A with the next unit).
            if let Ok(p) = self.payloader.payload(PAYLOAD_MTU, unit) {
                payloads.extend(p);
            }
        }
        let pts = i64::from(tag.timestamp_ms) + i64::from(composition_ms);
        let origin = *self.pts_origin.get_or_insert(pts);
        // Modulo 2^32, as RTP timestamps are.
        let timestamp = self.rtp_origin.wrapping_add(((pts - origin) * 90) as u32);
        let last = payloads.len().saturating_sub(1);
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                let sequence_number = self.sequence;
                self.sequence = self.sequence.wrapping_add(1);
                Packet {
                    header: Header {
                        version: 2,
                        marker: i == last,
                        payload_type: 96,
                        sequence_number,
                        timestamp,
                        ..Default::default()
                    },
                    payload,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    use gstreamer as gst;
    use gstreamer::prelude::{Cast, ElementExt, GstBinExt};
    use gstreamer_app as gst_app;
    use webrtc::api::APIBuilder;
    use webrtc::api::media_engine::MediaEngine;
    use webrtc::interceptor::registry::Registry;
    use webrtc::peer_connection::configuration::RTCConfiguration;
    use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
    use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
    use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;

    use crate::live::testfeed::{TestPublisher, wait_for_keyframe};
    use crate::streaming::peer::PeerSettings;

    const ID: &str = "1624428150544871";
    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn config_tag() -> Tag {
        let mut data = vec![0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x1f, 0xff, 0xe1];
        data.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        data.extend_from_slice(SPS);
        data.push(1);
        data.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        data.extend_from_slice(PPS);
        Tag::new(TagKind::Video, 0, Bytes::from(data))
    }

    fn frame(ts: u32, keyframe: bool, nalu: &[u8]) -> Tag {
        let mut data = vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        data.extend_from_slice(&(nalu.len() as u32).to_be_bytes());
        data.extend_from_slice(nalu);
        Tag::new(TagKind::Video, ts, Bytes::from(data))
    }

    #[test]
    fn frames_become_rtp_from_a_keyframe_with_parameter_sets_first() {
        let mut p = H264Packetizer::new(None, 65_535, 4_294_967_000);
        assert!(p.push(&config_tag()).is_empty());
        assert!(
            p.push(&frame(1_000, false, &[0x41, 1, 2])).is_empty(),
            "no start before a keyframe"
        );
        let mut idr = vec![0x65];
        idr.extend(std::iter::repeat_n(0xab, 3_000));
        let key = p.push(&frame(1_040, true, &idr));
        // STAP-A (SPS + PPS), then the IDR in FU-A fragments.
        assert_eq!(key[0].payload[0] & 0x1f, 24);
        assert_eq!(&key[0].payload[3..3 + SPS.len()], SPS);
        assert!(key.len() >= 4, "{}", key.len());
        assert!(key[1..].iter().all(|k| k.payload[0] & 0x1f == 28));
        assert!(key.iter().all(|k| k.payload.len() <= PAYLOAD_MTU));
        let markers: Vec<bool> = key.iter().map(|k| k.header.marker).collect();
        assert!(markers[..markers.len() - 1].iter().all(|m| !m) && markers[markers.len() - 1]);
        assert_eq!(key[0].header.sequence_number, 65_535);
        assert_eq!(key[1].header.sequence_number, 0, "wraps");
        assert!(key.iter().all(|k| k.header.timestamp == 4_294_967_000));

        let delta = p.push(&frame(1_080, false, &[0x41, 1, 2]));
        assert_eq!(delta.len(), 1);
        assert!(delta[0].header.marker);
        assert_eq!(
            delta[0].header.timestamp,
            4_294_967_000u32.wrapping_add(3_600)
        );
        assert_eq!(
            delta[0].header.sequence_number,
            key.last().unwrap().header.sequence_number.wrapping_add(1)
        );

        p.skip_to_keyframe();
        assert!(p.push(&frame(1_120, false, &[0x41, 3])).is_empty());
        let audio = Tag::new(TagKind::Audio, 1_120, Bytes::from_static(&[0xaf, 1, 0]));
        assert!(p.push(&audio).is_empty());
        let truncated = Tag::new(
            TagKind::Video,
            1_160,
            Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 50, 0x65]),
        );
        assert!(p.push(&truncated).is_empty(), "a cut frame is dropped");
        assert_eq!(p.push(&frame(1_200, true, &[0x65, 9])).len(), 2);
    }

    #[test]
    fn the_pending_gop_restarts_at_each_keyframe() {
        let mut pending = Vec::new();
        keep_gop(
            &mut pending,
            [
                config_tag(),
                frame(0, true, &[0x65]),
                frame(40, false, &[0x41]),
                frame(80, true, &[0x65]),
                frame(120, false, &[0x41]),
            ],
        );
        let ts: Vec<u32> = pending.iter().map(|t| t.timestamp_ms).collect();
        assert_eq!(ts, [0, 80, 120]);
        assert!(pending[0].is_sequence_header());
    }

    /// A webrtc-rs player (as the existing viewer tests use): recvonly H.264, decoding what
    /// arrives with GStreamer, counting frames.
    struct Player {
        pc: Arc<RTCPeerConnection>,
        frames: Arc<AtomicU64>,
    }

    impl Player {
        async fn new() -> Self {
            gst::init().unwrap();
            let mut media = MediaEngine::default();
            media.register_default_codecs().unwrap();
            let registry =
                webrtc::api::interceptor_registry::configure_rtcp_reports(Registry::new());
            let mut setting = webrtc::api::setting_engine::SettingEngine::default();
            let allowed = cloudphone_testkit::ice_interfaces();
            if !allowed.is_empty() {
                setting
                    .set_interface_filter(Box::new(move |name| allowed.iter().any(|i| i == name)));
            }
            let api = APIBuilder::new()
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_setting_engine(setting)
                .build();
            let pc = Arc::new(
                api.new_peer_connection(RTCConfiguration::default())
                    .await
                    .unwrap(),
            );
            pc.add_transceiver_from_kind(
                RTPCodecType::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .unwrap();
            let frames = Arc::new(AtomicU64::new(0));
            let counter = Arc::clone(&frames);
            pc.on_track(Box::new(move |track, receiver, _| {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move { while receiver.read_rtcp().await.is_ok() {} });
                Box::pin(async move {
                    let pt = track.codec().payload_type;
                    let line = format!(
                        "appsrc name=src is-live=true format=time do-timestamp=true \
                         caps=application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,payload={pt} \
                         ! rtpjitterbuffer latency=50 ! rtph264depay ! h264parse ! avdec_h264 \
                         ! appsink name=sink sync=false"
                    );
                    let pipeline = gst::parse::launch(&line)
                        .unwrap()
                        .downcast::<gst::Pipeline>()
                        .unwrap();
                    let src = pipeline
                        .by_name("src")
                        .unwrap()
                        .downcast::<gst_app::AppSrc>()
                        .unwrap();
                    let sink = pipeline
                        .by_name("sink")
                        .unwrap()
                        .downcast::<gst_app::AppSink>()
                        .unwrap();
                    sink.set_callbacks(
                        gst_app::AppSinkCallbacks::builder()
                            .new_sample(move |sink| {
                                let _ = sink.pull_sample();
                                counter.fetch_add(1, Ordering::Relaxed);
                                Ok(gst::FlowSuccess::Ok)
                            })
                            .build(),
                    );
                    pipeline.set_state(gst::State::Playing).unwrap();
                    use webrtc::util::Marshal;
                    while let Ok((packet, _)) = track.read_rtp().await {
                        let Ok(bytes) = packet.marshal() else { continue };
                        if src.push_buffer(gst::Buffer::from_slice(bytes)).is_err() {
                            break;
                        }
                    }
                    let _ = pipeline.set_state(gst::State::Null);
                })
            }));
            Self { pc, frames }
        }

        /// The offer with every candidate in it (WHEP without trickle).
        async fn offer(&self) -> String {
            let offer = self.pc.create_offer(None).await.unwrap();
            let mut gathered = self.pc.gathering_complete_promise().await;
            self.pc.set_local_description(offer).await.unwrap();
            let _ = gathered.recv().await;
            self.pc.local_description().await.unwrap().sdp
        }

        async fn wait_frames(&self, n: u64, within: Duration) -> u64 {
            let deadline = tokio::time::Instant::now() + within;
            while tokio::time::Instant::now() < deadline {
                if self.frames.load(Ordering::Relaxed) >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.frames.load(Ordering::Relaxed)
        }
    }

    fn whep(hub: &Arc<Hub>) -> Whep {
        let peers = PeerFactory::new(&PeerSettings {
            ice_interfaces: cloudphone_testkit::ice_interfaces(),
            ..Default::default()
        })
        .unwrap();
        Whep::new(Arc::clone(hub), Arc::new(peers))
    }

    async fn wait_no_sessions(whep: &Whep) -> bool {
        for _ in 0..100 {
            if whep.sessions().is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whep_player_decodes_the_pushed_h264_until_the_publisher_leaves() {
        let hub = Arc::new(Hub::default());
        let whep = whep(&hub);
        let player = Player::new().await;
        let offer = player.offer().await;
        assert_eq!(
            whep.offer(ID, &offer).await.err(),
            Some(LiveOutputError::NotFound),
            "nobody publishes it"
        );
        let publisher = TestPublisher::start(&hub, ID, 30);
        wait_for_keyframe(&hub, ID).await;

        let (answer, session) = whep.offer(ID, &offer).await.unwrap();
        assert!(answer.contains("a=candidate"), "{answer}");
        assert!(answer.contains("a=sendonly"), "{answer}");
        assert_eq!(whep.sessions(), [(session.clone(), ID.to_owned())]);
        player
            .pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        let frames = player.wait_frames(60, Duration::from_secs(20)).await;
        assert!(frames >= 60, "decoded {frames} frames");

        drop(publisher);
        assert!(
            wait_no_sessions(&whep).await,
            "the session ends with the publisher"
        );
        assert_eq!(whep.delete(&session).await, Err(LiveOutputError::NotFound));
        player.pc.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_ends_a_session_and_bad_offers_are_refused() {
        let hub = Arc::new(Hub::default());
        let whep = whep(&hub);
        let _publisher = TestPublisher::start(&hub, ID, 30);
        wait_for_keyframe(&hub, ID).await;
        assert!(matches!(
            whep.offer(ID, "not sdp").await,
            Err(LiveOutputError::BadOffer(_))
        ));
        assert_eq!(
            whep.offer("../x", "v=0").await.err(),
            Some(LiveOutputError::NotFound)
        );
        let player = Player::new().await;
        let (answer, session) = whep.offer(ID, &player.offer().await).await.unwrap();
        player
            .pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
        assert!(player.wait_frames(1, Duration::from_secs(20)).await >= 1);
        assert_eq!(whep.delete(&session).await, Ok(()));
        assert!(whep.sessions().is_empty());
        assert_eq!(whep.delete(&session).await, Err(LiveOutputError::NotFound));
        // The node closed its side: the player's connection ends too.
        let mut closed = false;
        for _ in 0..200 {
            let state = player.pc.connection_state();
            if matches!(
                state,
                RTCPeerConnectionState::Closed
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Disconnected
            ) {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(closed, "player still {:?}", player.pc.connection_state());
        player.pc.close().await.unwrap();
    }

    /// The page of the Chromium test: a minimal WHEP player (recvonly H.264, non-trickle).
    const PAGE: &str = r#"<!doctype html><html><body><video id="v" muted autoplay playsinline></video>
<script>
window.whep = { status: 0, error: null };
(async () => {
  try {
    const pc = new RTCPeerConnection();
    window.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (e) => { document.getElementById("v").srcObject = new MediaStream([e.track]); };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((r) => {
      if (pc.iceGatheringState === "complete") r();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
      setTimeout(r, 3000);
    });
    const res = await fetch("/whep", { method: "POST", headers: { "content-type": "application/sdp" },
                                       body: pc.localDescription.sdp });
    window.whep.status = res.status;
    await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  } catch (e) { window.whep.error = String(e); }
})();
window.decoded = async () => {
  if (!window.pc) return { frames: 0, width: 0, ...window.whep };
  const stats = await window.pc.getStats();
  let out = { frames: 0, width: 0, ...window.whep };
  stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video") {
    out.frames = r.framesDecoded || 0; out.width = r.frameWidth || 0; } });
  return out;
};
</script></body></html>"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chromium_plays_a_live_stream_over_whep() {
        use axum::http::{StatusCode, header};
        use axum::response::{Html, IntoResponse};
        use axum::routing::{get, post};

        let hub = Arc::new(Hub::default());
        let whep = Arc::new(whep(&hub));
        let _publisher = TestPublisher::start(&hub, ID, 30);
        wait_for_keyframe(&hub, ID).await;
        // What the encoder pushes is High profile: sent under the registered 42e01f label.
        let config = video_config(&hub.subscribe(ID).unwrap().first).unwrap();
        assert_eq!(config.sps[0][1], 100, "x264's default profile is High");

        let w = Arc::clone(&whep);
        let app = axum::Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route(
                "/whep",
                post(move |body: String| async move {
                    match w.offer(ID, &body).await {
                        Ok((answer, session)) => (
                            StatusCode::CREATED,
                            [
                                (header::CONTENT_TYPE, "application/sdp".to_owned()),
                                (header::LOCATION, format!("/whep/{session}")),
                            ],
                            answer,
                        )
                            .into_response(),
                        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let mut browser =
            cloudphone_testkit::browser::Browser::start(&format!("http://{addr}/"), &[]).await;
        let mut last = serde_json::Value::Null;
        for _ in 0..300 {
            last = browser
                .ok(serde_json::json!({"cmd": "eval", "expr": "window.decoded()"}))
                .await["value"]
                .clone();
            if last["frames"].as_u64().unwrap_or(0) >= 60 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(last["status"], 201, "{last}");
        assert!(last["frames"].as_u64().unwrap_or(0) >= 60, "{last}");
        assert_eq!(last["width"], 320, "{last}");
        assert_eq!(whep.sessions().len(), 1);
        browser.quit().await;
    }
}
