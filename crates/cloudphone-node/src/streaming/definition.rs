//! Definition switch without reconnecting: a viewer's `definition` message moves its video
//! track from its profile's shared encoder to the new profile's, on the same peer connection.
//!
//! The codec stays the same, so nothing is renegotiated: the track keeps its SSRC and payload
//! type (the peer's `TrackLocalStaticRTP` stamps those), and [`forward`] keeps the sequence
//! numbers and timestamps continuous across the cut, so the browser's jitter buffer sees one
//! stream whose next key frame has a new size. The cut happens at the new encoder's first key
//! frame (asked for at the switch): until then the old encoder keeps feeding the track, so
//! the picture never stops and the browser is never given a frame it cannot decode. The old
//! encoder, if this viewer was its last, is stopped at the cut ([`Retiring`]).
//!
//! A request naming another codec is refused (`definition_refused`, `codec_change`): the
//! negotiated m-line carries one codec, and a renegotiation is what reconnecting already does.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cloudphone_core::video::{Codec, Definition};
use cloudphone_signaling::{DefinitionRefusal, NodeMessage, VideoInfo};
use tokio::sync::{broadcast, mpsc};
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use crate::streaming::pipeline::rtp::{RtpHeader, starts_keyframe};
use crate::streaming::sessions::{Retiring, Sessions, SharedEncoder, Viewer};

/// One encoder's packets on their way to a viewer's track.
pub(crate) struct Feed {
    packets: broadcast::Receiver<Bytes>,
    encoder: Arc<SharedEncoder>,
    /// The encoder this feed replaces, stopped once the track has cut over.
    retiring: Option<Retiring>,
}

impl Feed {
    pub(crate) fn new(encoder: &Arc<SharedEncoder>, retiring: Option<Retiring>) -> Feed {
        Feed {
            packets: encoder.subscribe(),
            encoder: Arc::clone(encoder),
            retiring,
        }
    }

    /// The encoder this feed comes from.
    pub(crate) fn encoder(&self) -> &Arc<SharedEncoder> {
        &self.encoder
    }
}

/// What the viewer is told its stream carries.
pub(crate) fn video_info(viewer: &Viewer, encoder: &SharedEncoder) -> VideoInfo {
    VideoInfo {
        codec: viewer.codec,
        width: encoder.width,
        height: encoder.height,
        fps: viewer.spec.fps,
        bitrate_kbps: viewer.spec.code_rate_kbps,
    }
}

/// Answers a `definition` request: the feed of the new encoder (none when the definition is
/// the current one) and the `video` message, or the `definition_refused` message.
pub(crate) async fn switch(
    sessions: &Arc<Sessions>,
    viewer: &mut Viewer,
    current: &Arc<SharedEncoder>,
    definition: Definition,
    codec: Option<Codec>,
) -> Result<(Option<Feed>, NodeMessage), NodeMessage> {
    let refused = |reason, message: String| NodeMessage::DefinitionRefused {
        definition,
        reason,
        message,
    };
    if let Some(codec) = codec.filter(|c| *c != viewer.codec) {
        return Err(refused(
            DefinitionRefusal::CodecChange,
            format!(
                "the stream is {}; a codec change needs a new connection (hello with encoding_type {codec})",
                viewer.codec
            ),
        ));
    }
    if definition == viewer.definition {
        let video = video_info(viewer, current);
        return Ok((None, NodeMessage::Video { video }));
    }
    match sessions.switch_definition(viewer, definition).await {
        Ok((encoder, retiring)) => {
            // Subscribed before the key frame is asked for, so the feed cannot miss it.
            let feed = Feed::new(&encoder, retiring);
            encoder.request_keyframe();
            let video = video_info(viewer, &encoder);
            Ok((Some(feed), NodeMessage::Video { video }))
        }
        Err(e) => {
            tracing::warn!(instance = %viewer.grant.instance_id, viewer = viewer.id, %definition, error = %e, "definition switch failed");
            Err(refused(
                DefinitionRefusal::Internal,
                "the encoder for this definition could not start".into(),
            ))
        }
    }
}

/// Feeds a viewer's video track: the current encoder's packets, then, after each switch, the
/// new encoder's from its first key frame on, with sequence numbers and timestamps carried on
/// from what the track last sent. Ends when the current encoder ends with no switch pending.
pub(crate) async fn forward(
    track: Arc<TrackLocalStaticRTP>,
    codec: Codec,
    first: Feed,
    mut switches: mpsc::UnboundedReceiver<Feed>,
) {
    let mut current = first;
    let mut current_open = true;
    let mut switches_open = true;
    let mut pending: Option<Feed> = None;
    // Encoders being left: held (running) until the cut.
    let mut leaving: Vec<Retiring> = Vec::new();
    let mut continuity = Continuity::default();
    loop {
        tokio::select! {
            packet = current.packets.recv(), if current_open => match packet {
                Ok(packet) => {
                    let packet = continuity.apply(packet, Instant::now());
                    let _ = track.write(&packet).await;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "viewer fell behind; asking for a key frame");
                    current.encoder.request_keyframe();
                }
                Err(broadcast::error::RecvError::Closed) => {
                    if pending.is_none() {
                        return;
                    }
                    current_open = false;
                }
            },
            packet = async {
                match pending.as_mut() {
                    Some(feed) => feed.packets.recv().await,
                    None => std::future::pending().await,
                }
            } => match packet {
                Ok(packet) if starts_keyframe(codec, &packet) => {
                    let Some(mut next) = pending.take() else { continue };
                    if let Some(header) = RtpHeader::parse(&packet) {
                        continuity.rebase(&header, Instant::now());
                    }
                    leaving.extend(next.retiring.take());
                    current = next;
                    current_open = true;
                    // The track now carries the new encoder: the old ones may stop.
                    leaving.clear();
                    let packet = continuity.apply(packet, Instant::now());
                    let _ = track.write(&packet).await;
                }
                // Before its first key frame the new encoder's packets are of no use.
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(feed) = &pending {
                        feed.encoder.request_keyframe();
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The new encoder died before its first key frame; the stream's end
                    // (`media_error`) follows from its `ended`.
                    pending = None;
                    if !current_open {
                        return;
                    }
                }
            },
            feed = switches.recv(), if switches_open => match feed {
                Some(mut feed) => {
                    // A newer switch replaces one not cut over yet; the encoders it left stay
                    // up until the cut.
                    leaving.extend(feed.retiring.take());
                    if let Some(mut earlier) = pending.replace(feed) {
                        leaving.extend(earlier.retiring.take());
                    }
                }
                None => switches_open = false,
            },
        }
    }
}

/// Keeps one outgoing RTP stream continuous while its source changes: packets of the new
/// source get sequence numbers following the last sent, and timestamps advanced from the last
/// sent by the wall time in between (90 kHz), so the receiver sees neither a gap to NACK nor
/// a timestamp jump.
#[derive(Debug, Default)]
struct Continuity {
    seq_offset: u16,
    ts_offset: u32,
    /// Sequence number and timestamp last sent, and when.
    last: Option<(u16, u32, Instant)>,
}

/// RTP video clock rate.
const VIDEO_CLOCK_HZ: u64 = 90_000;

impl Continuity {
    /// The next packet comes from a new source; `first` is its header.
    fn rebase(&mut self, first: &RtpHeader, now: Instant) {
        let Some((seq, ts, at)) = self.last else {
            return;
        };
        let elapsed = now.saturating_duration_since(at);
        let ticks = (elapsed.as_micros() as u64 * VIDEO_CLOCK_HZ / 1_000_000).max(1) as u32;
        self.seq_offset = seq.wrapping_add(1).wrapping_sub(first.sequence);
        self.ts_offset = ts.wrapping_add(ticks).wrapping_sub(first.timestamp);
    }

    /// The packet as sent: renumbered when the source changed, unchanged (no copy) before.
    fn apply(&mut self, packet: Bytes, now: Instant) -> Bytes {
        let Some(header) = RtpHeader::parse(&packet) else {
            return packet;
        };
        let seq = header.sequence.wrapping_add(self.seq_offset);
        let ts = header.timestamp.wrapping_add(self.ts_offset);
        self.last = Some((seq, ts, now));
        if self.seq_offset == 0 && self.ts_offset == 0 {
            return packet;
        }
        let mut out = BytesMut::from(&packet[..]);
        out[2..4].copy_from_slice(&seq.to_be_bytes());
        out[4..8].copy_from_slice(&ts.to_be_bytes());
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn packet(seq: u16, ts: u32) -> Bytes {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        // SSRC, then the payload.
        p.extend_from_slice(&[0, 0, 0, 1, 0x65, 0xaa]);
        Bytes::from(p)
    }

    fn seq_ts(p: &[u8]) -> (u16, u32) {
        let h = RtpHeader::parse(p).unwrap();
        (h.sequence, h.timestamp)
    }

    /// Before a switch packets pass untouched; after it the new source's numbers follow on from
    /// the last sent (across wrap-around), its timestamps advanced by the time in between.
    #[test]
    fn a_new_source_continues_the_numbering() {
        let t0 = Instant::now();
        let mut c = Continuity::default();
        let first = packet(65_534, 4_294_960_000);
        let out = c.apply(first.clone(), t0);
        assert_eq!(out, first);
        c.apply(packet(65_535, 4_294_963_000), t0);
        // The new encoder numbers from elsewhere; 100 ms later.
        let next = packet(1_000, 50);
        let at = t0 + Duration::from_millis(100);
        c.rebase(&RtpHeader::parse(&next).unwrap(), at);
        assert_eq!(
            seq_ts(&c.apply(next, at)),
            (0, 4_294_963_000u32.wrapping_add(9_000))
        );
        assert_eq!(
            seq_ts(&c.apply(packet(1_001, 3_050), at)),
            (1, 4_294_963_000u32.wrapping_add(12_000))
        );
        // The payload is untouched.
        assert_eq!(&c.apply(packet(1_002, 3_050), at)[12..], &[0x65, 0xaa]);
    }

    #[test]
    fn a_rebase_before_any_packet_changes_nothing() {
        let t0 = Instant::now();
        let mut c = Continuity::default();
        let p = packet(7, 9);
        c.rebase(&RtpHeader::parse(&p).unwrap(), t0);
        assert_eq!(c.apply(p.clone(), t0), p);
    }
}
