//! One publisher to many players per stream: FLV tags fan out, late joiners start at a keyframe.
//!
//! The unit is the FLV tag body exactly as RTMP carries it (an RTMP audio/video/data message
//! payload is an FLV tag body), so RTMP play and HTTP-FLV pass tags through untouched and HLS /
//! WHEP demux them with GStreamer's `flvdemux` or parse the AVC packets directly.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use tokio::sync::broadcast;

use super::fanout::{Fanout, Framing, Sink};

/// How many tags a slow player may fall behind before it is told it lagged (about 8 s of 30 fps
/// video plus audio): it then resumes at the next keyframe rather than stalling the publisher.
pub(crate) const PLAYER_BACKLOG: usize = 512;
/// The most a stream keeps for late joiners (its current GOP). A publisher whose keyframes are
/// further apart than this (or that sends none after the first) costs no more memory: late
/// joiners then start at the next keyframe instead.
const MAX_GOP_BYTES: usize = 16 << 20;
/// How long (in the stream's own timestamps) the hub holds audio back for the video tag after
/// it, so that players get both in one write. With 30 fps video and AAC (a message every
/// 23 ms) that halves the messages written per player (73 a second to 30), and a message's
/// TCP send and, on the same host, its receiver's wake-up are most of a player's cost; nginx-rtmp
/// gets the same from Nagle. Video is never held (it is what glass-to-glass waits for); audio
/// waits at most one video frame (≤ 33 ms at 30 fps), which a player's audio buffer absorbs:
/// its timestamps, which A/V sync uses, are untouched.
const AUDIO_HOLD_MS: u32 = 40;

/// FLV tag types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagKind {
    Audio = 8,
    Video = 9,
    /// `onMetaData` and other AMF0 data.
    Script = 18,
}

/// One FLV tag: its type, its timestamp and its body (no FLV tag header).
#[derive(Clone, Debug)]
pub(crate) struct Tag {
    pub(crate) kind: TagKind,
    pub(crate) timestamp_ms: u32,
    pub(crate) data: Bytes,
    /// Its place in its stream (0, 1, … from the publisher's first tag), set as the hub sends
    /// it: RTMP players' writers skip what a player already got as its start.
    seq: u64,
    /// Another tag of the stream follows at once: the hub released held audio together with
    /// the tag after it (see [`AUDIO_HOLD_MS`]), and readers wait for the rest of the group
    /// rather than write what they have.
    more: bool,
    /// The tag as players receive it, made by the first player that needs it and shared by
    /// every other: with hundreds of players the framing is done once per tag, not per player.
    wire: Arc<Wire>,
}

/// A tag's framings for players.
#[derive(Debug, Default)]
struct Wire {
    /// As RTMP chunks, for one (chunk size, message stream id): the one nearly every player
    /// has (this server's chunk size, the first stream its client creates).
    rtmp: OnceLock<(usize, u32, Bytes)>,
    /// As it sits in an FLV file (tag header, body, `PreviousTagSize`).
    flv: OnceLock<Bytes>,
}

impl Tag {
    pub(crate) fn new(kind: TagKind, timestamp_ms: u32, data: Bytes) -> Self {
        Self {
            kind,
            timestamp_ms,
            data,
            seq: 0,
            more: false,
            wire: Arc::default(),
        }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// True when the next tag of the stream is already on its way (see [`Tag::more`]'s field).
    pub(crate) fn more(&self) -> bool {
        self.more
    }

    /// The tag as RTMP chunks for (`chunk_size`, message `stream_id`): shared when a player
    /// before asked for the same, else framed (and kept, when it is the first ask).
    pub(crate) fn rtmp_chunks(&self, chunk_size: usize, stream_id: u32) -> Bytes {
        self.rtmp_wire(chunk_size, stream_id).into_owned()
    }

    /// [`Tag::rtmp_chunks`] borrowed when it is the shared framing (nearly always).
    pub(crate) fn rtmp_wire(&self, chunk_size: usize, stream_id: u32) -> Cow<'_, Bytes> {
        let (size, id, bytes) = self.wire.rtmp.get_or_init(|| {
            let bytes = super::rtmp::chunks(self, chunk_size, stream_id);
            (chunk_size, stream_id, bytes)
        });
        if (*size, *id) == (chunk_size, stream_id) {
            Cow::Borrowed(bytes)
        } else {
            Cow::Owned(super::rtmp::chunks(self, chunk_size, stream_id))
        }
    }

    /// The tag as it sits in an FLV file, framed once and shared.
    pub(crate) fn flv(&self) -> Bytes {
        self.wire.flv.get_or_init(|| super::flv::tag(self)).clone()
    }

    /// A video tag whose frame type is 1 (keyframe).
    pub(crate) fn is_keyframe(&self) -> bool {
        self.kind == TagKind::Video && self.data.first().is_some_and(|b| b >> 4 == 1)
    }

    /// An AVC/HEVC decoder configuration or AAC AudioSpecificConfig (packet type 0).
    pub(crate) fn is_sequence_header(&self) -> bool {
        match self.kind {
            TagKind::Video => {
                self.data.get(1) == Some(&0) && self.data.first().is_some_and(|b| b & 0x0f >= 7)
            }
            TagKind::Audio => {
                self.data.first().is_some_and(|b| b >> 4 == 10) && self.data.get(1) == Some(&0)
            }
            TagKind::Script => false,
        }
    }
}

/// What a player receives first, then the live tags.
pub(crate) struct Subscription {
    /// Metadata, sequence headers, then the current GOP from its keyframe, in order.
    pub(crate) first: Vec<Tag>,
    /// Live tags; `Closed` when the publisher leaves, `Lagged` when this player fell behind.
    pub(crate) live: broadcast::Receiver<Tag>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum PublishError {
    #[error("stream {0} already has a publisher")]
    Busy(String),
}

/// Every stream being published on this node.
#[derive(Default)]
pub(crate) struct Hub {
    streams: Mutex<HashMap<String, Arc<Channel>>>,
}

struct Channel {
    tx: broadcast::Sender<Tag>,
    start: Mutex<Start>,
    /// The writers of its RTMP players, started with the first.
    fanout: OnceLock<Fanout>,
}

/// What a late joiner needs.
#[derive(Default)]
struct Start {
    metadata: Option<Tag>,
    video_header: Option<Tag>,
    audio_header: Option<Tag>,
    gop: Vec<Tag>,
    /// The bytes in `gop`.
    gop_bytes: usize,
    /// The `seq` of the next tag sent.
    next_seq: u64,
    /// Audio held back for the next tag (see [`AUDIO_HOLD_MS`]).
    held: Vec<Tag>,
    /// The stream has video: only then is audio held (an audio-only stream has nothing to
    /// wait for).
    has_video: bool,
}

impl Hub {
    /// Claims `stream_id` for one publisher; the stream ends when the [`Publisher`] drops.
    pub(crate) fn publish(self: &Arc<Self>, stream_id: &str) -> Result<Publisher, PublishError> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if streams.contains_key(stream_id) {
            return Err(PublishError::Busy(stream_id.to_string()));
        }
        let (tx, _) = broadcast::channel(PLAYER_BACKLOG);
        let channel = Arc::new(Channel {
            tx,
            start: Mutex::default(),
            fanout: OnceLock::new(),
        });
        streams.insert(stream_id.to_string(), Arc::clone(&channel));
        Ok(Publisher {
            hub: Arc::clone(self),
            stream_id: stream_id.to_string(),
            channel,
        })
    }

    /// Joins a stream being published, or `None` when nobody publishes it.
    pub(crate) fn subscribe(&self, stream_id: &str) -> Option<Subscription> {
        let channel = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream_id)
            .cloned()?;
        // Under the start lock, so no tag falls between `first` and `live`.
        let start = channel.start.lock().unwrap_or_else(PoisonError::into_inner);
        let live = channel.tx.subscribe();
        let first = start
            .metadata
            .iter()
            .chain(&start.video_header)
            .chain(&start.audio_header)
            .chain(&start.gop)
            .cloned()
            .collect();
        Some(Subscription { first, live })
    }

    /// Adds an RTMP player to a stream being published: `sink` gets the start tags now (see
    /// [`Subscription::first`]), then every later tag from the stream's writers. False when
    /// nobody publishes the stream.
    pub(crate) fn attach(&self, stream_id: &str, sink: &Arc<Sink>, framing: Framing) -> bool {
        let Some(channel) = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream_id)
            .cloned()
        else {
            return false;
        };
        // Under the start lock, as `subscribe`: the writers' receivers and `next_seq` split
        // the tags exactly between the start and the live ones.
        let start = channel.start.lock().unwrap_or_else(PoisonError::into_inner);
        let fanout = channel.fanout.get_or_init(|| Fanout::start(&channel.tx));
        let first = start
            .metadata
            .iter()
            .chain(&start.video_header)
            .chain(&start.audio_header)
            .chain(&start.gop);
        let play = sink.begin(framing, start.next_seq, first);
        fanout.add(Arc::clone(sink), play);
        true
    }

    /// Streams with a publisher now.
    pub(crate) fn publishing(&self) -> Vec<String> {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.keys().cloned().collect()
    }
}

/// The one publisher of a stream. Dropping it ends the stream for every player.
pub(crate) struct Publisher {
    hub: Arc<Hub>,
    stream_id: String,
    channel: Arc<Channel>,
}

impl Publisher {
    /// Sends `tag` to the stream's players, audio possibly a little later with the next tag
    /// (see [`AUDIO_HOLD_MS`]); the order is kept.
    pub(crate) fn send(&self, tag: Tag) {
        let mut start = self
            .channel
            .start
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        start.has_video |= tag.kind == TagKind::Video;
        let hold = tag.kind == TagKind::Audio
            && start.has_video
            && start.held.first().is_none_or(|first| {
                tag.timestamp_ms.wrapping_sub(first.timestamp_ms) < AUDIO_HOLD_MS
            });
        if hold {
            start.held.push(tag);
            return;
        }
        // The whole group under one lock: a player joining sees all of it or none.
        let held = std::mem::take(&mut start.held);
        for mut early in held {
            early.more = true;
            self.release(&mut start, early);
        }
        self.release(&mut start, tag);
    }

    /// Sends what is held, when the publisher leaves.
    fn release_held(&self) {
        let mut start = self
            .channel
            .start
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = std::mem::take(&mut start.held);
        let last = held.len().saturating_sub(1);
        for (i, mut tag) in held.into_iter().enumerate() {
            tag.more = i < last;
            self.release(&mut start, tag);
        }
    }

    /// Into the start (for late joiners) and out to the players, now.
    fn release(&self, start: &mut Start, mut tag: Tag) {
        tag.seq = start.next_seq;
        start.next_seq += 1;
        if tag.kind == TagKind::Script {
            start.metadata = Some(tag.clone());
        } else if tag.is_sequence_header() {
            match tag.kind {
                TagKind::Video => start.video_header = Some(tag.clone()),
                _ => start.audio_header = Some(tag.clone()),
            }
        } else {
            if tag.is_keyframe() || start.gop_bytes + tag.data.len() > MAX_GOP_BYTES {
                start.gop.clear();
                start.gop_bytes = 0;
            }
            // Until the first keyframe there is nothing a player could decode.
            if !start.gop.is_empty() || tag.is_keyframe() {
                start.gop_bytes += tag.data.len();
                start.gop.push(tag.clone());
            }
        }
        // No receivers is fine: nobody is playing.
        let _ = self.channel.tx.send(tag);
    }

    pub(crate) fn stream_id(&self) -> &str {
        &self.stream_id
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.release_held();
        let mut streams = self
            .hub
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only our own entry: a new publisher may already hold the id.
        if streams
            .get(&self.stream_id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.channel))
        {
            streams.remove(&self.stream_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(ts: u32, key: bool) -> Tag {
        Tag::new(
            TagKind::Video,
            ts,
            Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]),
        )
    }

    fn avc_header() -> Tag {
        Tag::new(
            TagKind::Video,
            0,
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
        )
    }

    #[tokio::test]
    async fn late_joiner_starts_with_headers_and_the_current_gop_then_live() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.publish("s1").expect("free");
        assert!(hub.subscribe("s2").is_none());
        publisher.send(video(0, false)); // before any keyframe: dropped from the start
        publisher.send(avc_header());
        publisher.send(video(40, true));
        publisher.send(video(80, false));
        publisher.send(video(120, true));
        publisher.send(video(160, false));
        let mut sub = hub.subscribe("s1").expect("published");
        let firsts: Vec<u32> = sub.first.iter().map(|t| t.timestamp_ms).collect();
        assert_eq!(firsts, [0, 120, 160]);
        assert!(sub.first[0].is_sequence_header());
        publisher.send(video(200, false));
        assert_eq!(sub.live.recv().await.expect("live").timestamp_ms, 200);
    }

    #[test]
    fn the_start_kept_for_late_joiners_is_bounded() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.publish("s1").expect("free");
        let big = |ts: u32, key: bool| {
            Tag::new(
                TagKind::Video,
                ts,
                Bytes::from(vec![if key { 0x17 } else { 0x27 }; 1 << 20]),
            )
        };
        publisher.send(big(0, true));
        for ts in 1..40 {
            publisher.send(big(ts, false));
        }
        // Past the cap the GOP is dropped: nothing decodable until the next keyframe.
        let sub = hub.subscribe("s1").expect("published");
        assert!(sub.first.is_empty(), "{} tags kept", sub.first.len());
        publisher.send(big(100, true));
        let sub = hub.subscribe("s1").expect("published");
        assert_eq!(sub.first.len(), 1);
        assert!(sub.first[0].is_keyframe());
    }

    fn audio(ts: u32) -> Tag {
        Tag::new(TagKind::Audio, ts, Bytes::from_static(&[0xaf, 1, 0x21]))
    }

    /// What `live` has now: (kind, timestamp, more) of each tag.
    fn drain(live: &mut broadcast::Receiver<Tag>) -> Vec<(TagKind, u32, bool)> {
        std::iter::from_fn(|| live.try_recv().ok())
            .map(|t| (t.kind, t.timestamp_ms, t.more()))
            .collect()
    }

    #[test]
    fn audio_waits_for_the_next_video_tag_and_goes_with_it_in_order() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.publish("s1").expect("free");
        let mut sub = hub.subscribe("s1").expect("published");
        // Before any video nothing is held (an audio-only stream has nothing to wait for).
        publisher.send(audio(0));
        assert_eq!(drain(&mut sub.live), [(TagKind::Audio, 0, false)]);
        publisher.send(video(10, true));
        publisher.send(audio(23));
        publisher.send(audio(46));
        assert!(drain(&mut sub.live).len() == 1, "the audio is held");
        publisher.send(video(43, false));
        assert_eq!(
            drain(&mut sub.live),
            [
                (TagKind::Audio, 23, true),
                (TagKind::Audio, 46, true),
                (TagKind::Video, 43, false)
            ],
            "released with the video tag, as a group, in the publisher's order"
        );
        // Never longer than the hold: without video, audio goes once it spans the hold.
        publisher.send(audio(69));
        publisher.send(audio(92));
        publisher.send(audio(115));
        assert_eq!(
            drain(&mut sub.live),
            [
                (TagKind::Audio, 69, true),
                (TagKind::Audio, 92, true),
                (TagKind::Audio, 115, false)
            ]
        );
        // What is held when the publisher leaves still goes out before the end.
        publisher.send(audio(138));
        drop(publisher);
        assert_eq!(drain(&mut sub.live), [(TagKind::Audio, 138, false)]);
        assert!(matches!(
            sub.live.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
    }

    #[tokio::test]
    async fn one_publisher_per_stream_and_players_see_the_end() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.publish("s1").expect("free");
        assert_eq!(
            hub.publish("s1").err(),
            Some(PublishError::Busy("s1".into()))
        );
        let mut sub = hub.subscribe("s1").expect("published");
        drop(publisher);
        assert!(matches!(
            sub.live.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        assert!(hub.publishing().is_empty());
        assert!(
            hub.publish("s1").is_ok(),
            "free again after the publisher left"
        );
    }
}
