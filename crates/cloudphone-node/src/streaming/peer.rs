//! The node's side of one viewer's WebRTC connection (webrtc-rs 0.17): codec registration,
//! ICE settings, the viewer's send-only video track, and RTCP helpers.
//!
//! # Codecs
//! H.264 is registered as `video/H264` with `packetization-mode=1` and constrained-baseline
//! `profile-level-id=42e01f`, the profile every browser decodes. H.265 is registered as
//! `video/H265` (RFC 7798) with `profile-id=1;tier-flag=0;tx-mode=SRST` (Main profile, Main
//! tier, single RTP stream) and deliberately **no** `level-id`: webrtc-rs matches fmtp lines
//! of codecs other than H.264 by "every parameter both sides name must be equal", and viewers
//! announce different levels (Chromium 180, GStreamer 93...), which all decode our output.
//! Both carry `nack`, `nack pli`, `ccm fir` and `goog-remb` feedback. `transport-cc` is left
//! out on purpose: the node has no TWCC-based estimator, and a browser that negotiates
//! transport-cc stops sending REMB, the receiver-side estimate the bitrate controller uses
//! next to receiver reports.
//!
//! Opus is registered as `audio/opus` 48 kHz stereo (`minptime=10;useinbandfec=1`, what the
//! audio pipeline sends: 10 ms frames with in-band FEC) with no feedback; every peer gets a
//! send-only audio track next to the video one, negotiated only when the viewer's offer has
//! an audio m-line (a video-only viewer is served as before).
//!
//! Packets come from the encoder already payloaded (PT 96); the viewer's
//! [`TrackLocalStaticRTP`] rewrites payload type and SSRC to what this peer negotiated.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudphone_core::video::Codec;
use webrtc::api::API;
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_HEVC, MIME_TYPE_OPUS, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::{PayloadType, RTCPFeedback};
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

/// fmtp of the H.264 codec we offer to send.
pub(crate) const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
/// fmtp of the H.265 codec we offer to send (see the module docs for why no `level-id`).
pub(crate) const H265_FMTP: &str = "profile-id=1;tier-flag=0;tx-mode=SRST";
/// fmtp of the Opus codec we send.
pub(crate) const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
const OPUS_PT: PayloadType = 111;
const H264_PT: PayloadType = 102;
const H265_PT: PayloadType = 104;

/// What can go wrong setting up a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    #[error("bad udp port range {0}..={1}")]
    PortRange(u16, u16),
}

/// The node's ICE settings for its own peers.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerSettings {
    /// STUN servers the node uses to learn its server-reflexive address.
    pub stun_urls: Vec<String>,
    /// Public address under a 1:1 NAT, announced instead of the private host address.
    pub public_ip: String,
    /// Local UDP ports to use (both 0: any).
    pub udp_port_min: u16,
    pub udp_port_max: u16,
    /// Network interfaces ICE candidates come from (empty: all but loopback). Listing `lo`
    /// admits loopback candidates.
    pub ice_interfaces: Vec<String>,
}

fn feedback() -> Vec<RTCPFeedback> {
    [
        ("goog-remb", ""),
        ("ccm", "fir"),
        ("nack", ""),
        ("nack", "pli"),
    ]
    .into_iter()
    .map(|(typ, parameter)| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    })
    .collect()
}

/// The codec capability the node sends `codec` with.
pub(crate) fn capability(codec: Codec) -> RTCRtpCodecCapability {
    let (mime, fmtp) = match codec {
        Codec::H264 => (MIME_TYPE_H264, H264_FMTP),
        Codec::H265 => (MIME_TYPE_HEVC, H265_FMTP),
    };
    RTCRtpCodecCapability {
        mime_type: mime.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: feedback(),
    }
}

/// The codec capability the node sends sound with.
pub(crate) fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.to_owned(),
        rtcp_feedback: Vec::new(),
    }
}

/// Builds peer connections for viewers; one per node.
pub(crate) struct PeerFactory {
    api: API,
    ice_servers: Vec<RTCIceServer>,
}

impl PeerFactory {
    pub(crate) fn new(settings: &PeerSettings) -> Result<Self, PeerError> {
        let mut media = MediaEngine::default();
        for (codec, pt) in [(Codec::H264, H264_PT), (Codec::H265, H265_PT)] {
            media.register_codec(
                RTCRtpCodecParameters {
                    capability: capability(codec),
                    payload_type: pt,
                    ..Default::default()
                },
                RTPCodecType::Video,
            )?;
        }
        media.register_codec(
            RTCRtpCodecParameters {
                capability: opus_capability(),
                payload_type: OPUS_PT,
                ..Default::default()
            },
            RTPCodecType::Audio,
        )?;
        // NACK responder, sender/receiver reports, TWCC header extension.
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let mut setting = SettingEngine::default();
        if !settings.public_ip.is_empty() {
            setting.set_nat_1to1_ips(vec![settings.public_ip.clone()], RTCIceCandidateType::Host);
        }
        if !settings.ice_interfaces.is_empty() {
            // Only these: a host's container bridges and VPN links come and go, and a pair
            // on an interface that disappears leaves the stream dead until ICE fails.
            let allowed = settings.ice_interfaces.clone();
            setting.set_include_loopback_candidate(allowed.iter().any(|i| i == "lo"));
            setting.set_interface_filter(Box::new(move |name| allowed.iter().any(|i| i == name)));
        }
        if settings.udp_port_min != 0 {
            let ephemeral = EphemeralUDP::new(settings.udp_port_min, settings.udp_port_max)
                .map_err(|_| PeerError::PortRange(settings.udp_port_min, settings.udp_port_max))?;
            setting.set_udp_network(UDPNetwork::Ephemeral(ephemeral));
        }
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting)
            .build();
        let ice_servers = if settings.stun_urls.is_empty() {
            Vec::new()
        } else {
            vec![RTCIceServer {
                urls: settings.stun_urls.clone(),
                ..Default::default()
            }]
        };
        Ok(Self { api, ice_servers })
    }

    /// A new peer with a send-only video track for `codec` and a send-only Opus track.
    pub(crate) async fn new_viewer(&self, codec: Codec) -> Result<ViewerPeer, PeerError> {
        let pc = Arc::new(
            self.api
                .new_peer_connection(RTCConfiguration {
                    ice_servers: self.ice_servers.clone(),
                    ..Default::default()
                })
                .await?,
        );
        // The same stream id for both: a browser puts the tracks in one MediaStream and lines
        // them up by their sender reports.
        let new_track = |capability, kind: &str| {
            Arc::new(TrackLocalStaticRTP::new(
                capability,
                kind.to_owned(),
                "cloudphone".to_owned(),
            ))
        };
        let (track, audio) = (
            new_track(capability(codec), "video"),
            new_track(opus_capability(), "audio"),
        );
        let sender = add_track(&pc, &track).await?;
        let audio_sender = add_track(&pc, &audio).await?;
        Ok(ViewerPeer {
            pc,
            track,
            sender,
            audio,
            audio_sender,
        })
    }
}

/// Adds `track` to `pc`, closing the connection when that fails: a half-built peer is never
/// handed out, nor left open.
async fn add_track(
    pc: &RTCPeerConnection,
    track: &Arc<TrackLocalStaticRTP>,
) -> Result<Arc<RTCRtpSender>, PeerError> {
    match pc
        .add_track(Arc::clone(track) as Arc<dyn TrackLocal + Send + Sync>)
        .await
    {
        Ok(sender) => Ok(sender),
        Err(e) => {
            let _ = pc.close().await;
            Err(e.into())
        }
    }
}

/// One viewer's peer connection and its video and audio tracks.
pub(crate) struct ViewerPeer {
    pub pc: Arc<RTCPeerConnection>,
    pub track: Arc<TrackLocalStaticRTP>,
    pub sender: Arc<RTCRtpSender>,
    pub audio: Arc<TrackLocalStaticRTP>,
    pub audio_sender: Arc<RTCRtpSender>,
}

/// The middle 32 bits of the NTP timestamp of `now` (RFC 3550's "compact" form, 1/65536 s).
pub(crate) fn ntp_compact(now: SystemTime) -> u32 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let since = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (((secs & 0xffff) << 16) | (frac >> 16)) as u32
}

/// Round-trip time from a receiver report block (RFC 3550 §6.4.1): arrival − LSR − DLSR.
/// `None` until the viewer has seen a sender report (LSR 0), or when the result is absurd.
pub(crate) fn rtt_ms(arrival_ntp_compact: u32, last_sender_report: u32, delay: u32) -> Option<u32> {
    if last_sender_report == 0 {
        return None;
    }
    let rtt = arrival_ntp_compact
        .wrapping_sub(last_sender_report)
        .wrapping_sub(delay);
    // Above 60 s means clock wrap or a bogus report.
    if rtt > 60 * 65_536 {
        return None;
    }
    Some(((u64::from(rtt) * 1000) >> 16) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_from_report_fields() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let arrival = ntp_compact(now);
        let sent = ntp_compact(now - Duration::from_millis(250));
        // The viewer held the report for 50 ms: RTT 200 ms.
        let delay = (50 * 65_536) / 1000;
        let rtt = rtt_ms(arrival, sent, delay).unwrap();
        assert!((199..=201).contains(&rtt), "{rtt}");
        assert_eq!(rtt_ms(arrival, 0, 0), None);
        assert_eq!(rtt_ms(sent, arrival, 0), None);
    }

    #[tokio::test]
    async fn both_codecs_register() {
        let factory = PeerFactory::new(&PeerSettings::default()).unwrap();
        for codec in [Codec::H264, Codec::H265] {
            let peer = factory.new_viewer(codec).await.unwrap();
            assert_eq!(peer.track.codec().mime_type, capability(codec).mime_type);
            assert_eq!(peer.audio.codec().mime_type, MIME_TYPE_OPUS);
            peer.pc.close().await.unwrap();
        }
        assert!(matches!(
            PeerFactory::new(&PeerSettings {
                udp_port_min: 10,
                udp_port_max: 5,
                ..Default::default()
            }),
            Err(PeerError::PortRange(10, 5))
        ));
    }
}
