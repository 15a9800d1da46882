//! The live edge (seed 003): RTMP ingest of the streams control admitted, fanned out to RTMP,
//! HTTP-FLV, HLS and WHEP players. Media stays on the node; control only says what is admitted.
//!
//! # Layout
//! - [`hub`]: one publisher to many players per stream, in FLV tags, with what a late joiner
//!   needs first (metadata, sequence headers, the current GOP).
//! - [`admission`]: control's table of streams and the pure push/play rules (`auth_key`, app,
//!   admitted, outputs).
//! - [`codec`]: codec and picture size from a video sequence header.
//! - [`flv`]: the FLV file framing HTTP-FLV players get.
//! - [`rtmp`]: the RTMP server (publish and play) over `rml_rtmp`; [`fanout`]: the few
//!   writer tasks per stream that write each tag to its RTMP players.
//! - [`http`]: the players' HTTP routes on the node's public listener (FLV, HLS, WHEP).
//! - [`hls`]: an HLS pipeline per played stream (GStreamer, no re-encode); [`whep`]: WebRTC
//!   players over WHEP (RTP from the pushed H.264); [`avc`]: H.264 from FLV video tags;
//!   [`output`]: what both share (errors, the FLV writer).
//!
//! [`Live`] ties them: the admission table, who publishes what (so that a stream control
//! forbids loses its publisher at once), the status reports control hears, and the metrics.

pub(crate) mod admission;
pub(crate) mod avc;
pub(crate) mod codec;
pub(crate) mod fanout;
pub(crate) mod flv;
pub(crate) mod hls;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod output;
pub(crate) mod rtmp;
#[cfg(test)]
pub(crate) mod testfeed;
pub(crate) mod whep;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use self::admission::{Admission, Output, PlayRequest, Refusal, StreamRule};
use self::hub::{Hub, Subscription, Tag, TagKind};

/// How often a publishing stream's figures go to control.
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_secs(2);

const PUBLISHERS_METRIC: &str = "cloudphone_node_live_publishers";
const PLAYERS_METRIC: &str = "cloudphone_node_live_players";
const BYTES_IN_METRIC: &str = "cloudphone_node_live_bytes_in_total";
const BYTES_OUT_METRIC: &str = "cloudphone_node_live_bytes_out_total";

/// One publish session's figures, as control hears them (`LiveStreamStatus`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PublishStatus {
    pub(crate) stream_id: String,
    pub(crate) on: bool,
    /// From the video sequence header; `None` until one arrived.
    pub(crate) video: Option<codec::VideoInfo>,
    /// Over the last [`STATUS_INTERVAL`].
    pub(crate) bitrate_bps: u64,
    pub(crate) bytes_in: u64,
    pub(crate) frames_in: u64,
    pub(crate) started_unix_ms: i64,
    pub(crate) stopped_unix_ms: i64,
    pub(crate) publish_id: String,
}

/// The live edge of this node; shared by the RTMP server, the HTTP routes and the gRPC service.
pub(crate) struct Live {
    hub: Arc<Hub>,
    state: Mutex<State>,
    /// Status changes for the report streams (one receiver per open stream).
    reports: broadcast::Sender<PublishStatus>,
    /// Announced so that control can build push and play URLs.
    pub(crate) rtmp_base_url: String,
    pub(crate) http_base_url: String,
}

/// Admission and publishers under one lock, so a publish cannot slip in between a Forbid's
/// check and its disconnect.
#[derive(Default)]
struct State {
    admission: Admission,
    publishing: HashMap<String, Slot>,
}

/// A stream with a publisher.
struct Slot {
    publish_id: String,
    /// Set to true to make the publisher's connection close.
    revoke: watch::Sender<bool>,
    /// Its latest figures, for the announcement.
    status: PublishStatus,
}

impl Live {
    pub(crate) fn new(rtmp_base_url: String, http_base_url: String) -> Arc<Self> {
        Arc::new(Self {
            hub: Arc::new(Hub::default()),
            state: Mutex::default(),
            reports: broadcast::channel(256).0,
            rtmp_base_url,
            http_base_url,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces control's whole table; returns how many publishers lost their admission.
    pub(crate) fn sync(&self, rules: Vec<StreamRule>) -> u32 {
        let mut state = self.state();
        state.admission.replace(rules);
        let State {
            admission,
            publishing,
        } = &mut *state;
        publishing
            .iter()
            .filter(|(id, _)| !admission.admits(id))
            .map(|(_, slot)| u32::from(!slot.revoke.send_replace(true)))
            .sum()
    }

    /// Adds or changes one stream; true when its publisher lost its admission.
    pub(crate) fn put(&self, rule: StreamRule) -> bool {
        let mut state = self.state();
        let id = rule.stream_id.clone();
        state.admission.put(rule);
        !state.admission.admits(&id) && Self::revoke(&state, &id)
    }

    /// Drops one stream; true when it had a publisher.
    pub(crate) fn remove(&self, stream_id: &str) -> bool {
        let mut state = self.state();
        state.admission.remove(stream_id);
        Self::revoke(&state, stream_id)
    }

    fn revoke(state: &State, stream_id: &str) -> bool {
        state
            .publishing
            .get(stream_id)
            .is_some_and(|slot| !slot.revoke.send_replace(true))
    }

    /// Admits a push of `/{app}/{id}`: the stream's one publisher until the [`Ingest`] drops.
    pub(crate) fn publish(
        self: &Arc<Self>,
        app: &str,
        id: &str,
        auth_key: Option<&str>,
    ) -> Result<Ingest, PublishRefusal> {
        let now_ms = crate::unix_ms();
        let mut state = self.state();
        state
            .admission
            .check_publish(app, id, auth_key, now_ms / 1000)?;
        let publisher = self.hub.publish(id).map_err(|_| PublishRefusal::Busy)?;
        let publish_id = uuid::Uuid::new_v4().to_string();
        let status = PublishStatus {
            stream_id: id.to_string(),
            on: true,
            started_unix_ms: now_ms,
            publish_id: publish_id.clone(),
            ..PublishStatus::default()
        };
        let (revoke, revoked) = watch::channel(false);
        state.publishing.insert(
            id.to_string(),
            Slot {
                publish_id,
                revoke,
                status: status.clone(),
            },
        );
        drop(state);
        metrics::gauge!(PUBLISHERS_METRIC).increment(1.0);
        let _ = self.reports.send(status.clone());
        tracing::info!(stream_id = id, app, "publish started");
        Ok(Ingest {
            live: Arc::clone(self),
            publisher,
            revoked,
            status,
            window_start: Instant::now(),
            window_bytes: 0,
        })
    }

    /// Admits a player to the hub's stream (RTMP play, HTTP-FLV).
    pub(crate) fn play(&self, play: &PlayRequest<'_>) -> Result<Player, PlayRefusal> {
        self.check_play(play)?;
        let sub = self
            .hub
            .subscribe(play.id)
            .ok_or(PlayRefusal::NotPublished)?;
        Ok(Player::new(sub, play.output))
    }

    /// Admits an RTMP player: `sink` gets the stream's start tags now, then every later tag
    /// from the stream's writers (framed for the player's `chunk_size` and message
    /// `stream_id`); the player counts as one while the [`PlayerCount`] lives.
    pub(crate) fn play_rtmp(
        &self,
        play: &PlayRequest<'_>,
        sink: &Arc<fanout::Sink>,
        chunk_size: usize,
        stream_id: u32,
    ) -> Result<PlayerCount, PlayRefusal> {
        let count = PlayerCount::new(play.output);
        let framing = fanout::Framing {
            chunk_size,
            stream_id,
            bytes_out: count.bytes_out.clone(),
        };
        if !self.hub.attach(play.id, sink, framing) {
            return Err(PlayRefusal::NotPublished);
        }
        Ok(count)
    }

    /// The admission part of [`Live::play`], for outputs that read the hub themselves (HLS, WHEP).
    pub(crate) fn check_play(&self, play: &PlayRequest<'_>) -> Result<(), PlayRefusal> {
        let now = crate::unix_ms() / 1000;
        self.state().admission.check_play(play, now)?;
        if !self.hub.publishing().iter().any(|s| s == play.id) {
            return Err(PlayRefusal::NotPublished);
        }
        Ok(())
    }

    /// The hub, for HLS and WHEP.
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Status changes from now on.
    pub(crate) fn subscribe_reports(&self) -> broadcast::Receiver<PublishStatus> {
        self.reports.subscribe()
    }

    /// Every stream being published now, with its latest figures.
    pub(crate) fn publishing(&self) -> Vec<PublishStatus> {
        self.state()
            .publishing
            .values()
            .map(|s| s.status.clone())
            .collect()
    }
}

/// Why a push is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishRefusal {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the stream already has a publisher")]
    Busy,
}

/// Why a play is refused: 404 for [`Refusal::NotFound`] and [`PlayRefusal::NotPublished`], 403
/// otherwise.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlayRefusal {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("nobody publishes the stream now")]
    NotPublished,
}

impl PlayRefusal {
    pub(crate) fn not_found(&self) -> bool {
        matches!(
            self,
            PlayRefusal::NotPublished | PlayRefusal::Refused(Refusal::NotFound)
        )
    }
}

fn output_name(output: Output) -> &'static str {
    match output {
        Output::Rtmp => "rtmp",
        Output::Flv => "flv",
        Output::Hls => "hls",
        Output::Webrtc => "webrtc",
    }
}

/// A publish in progress, held by its RTMP connection: counts what arrives, feeds the hub and
/// reports; dropping it ends the publish (players see the end, control hears `on = false`).
pub(crate) struct Ingest {
    live: Arc<Live>,
    publisher: hub::Publisher,
    revoked: watch::Receiver<bool>,
    status: PublishStatus,
    window_start: Instant,
    window_bytes: u64,
}

impl Ingest {
    /// One tag from the publisher.
    pub(crate) fn send(&mut self, tag: Tag) {
        let len = tag.data.len() as u64;
        self.status.bytes_in += len;
        self.window_bytes += len;
        metrics::counter!(BYTES_IN_METRIC).increment(len);
        if tag.kind == TagKind::Video {
            if tag.is_sequence_header() {
                if let Some(info) = codec::sequence_header(&tag.data) {
                    self.status.video = Some(info);
                }
            } else {
                self.status.frames_in += 1;
            }
        }
        self.publisher.send(tag);
    }

    /// Reports the figures of the last interval (called every [`STATUS_INTERVAL`]).
    pub(crate) fn report(&mut self) {
        let elapsed = self.window_start.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            self.status.bitrate_bps = (self.window_bytes as f64 * 8.0 / elapsed) as u64;
        }
        self.window_start = Instant::now();
        self.window_bytes = 0;
        if let Some(slot) = self.live.state().publishing.get_mut(&self.status.stream_id)
            && slot.publish_id == self.status.publish_id
        {
            slot.status = self.status.clone();
        }
        let _ = self.live.reports.send(self.status.clone());
    }

    /// Resolves when control withdraws the stream's admission.
    pub(crate) async fn revoked(&mut self) {
        // An error means the slot is gone, which only happens once this ingest is dropped.
        let _ = self.revoked.wait_for(|r| *r).await;
    }

    pub(crate) fn stream_id(&self) -> &str {
        self.publisher.stream_id()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let mut state = self.live.state();
        if state
            .publishing
            .get(&self.status.stream_id)
            .is_some_and(|s| s.publish_id == self.status.publish_id)
        {
            state.publishing.remove(&self.status.stream_id);
        }
        drop(state);
        self.status.on = false;
        self.status.stopped_unix_ms = crate::unix_ms();
        metrics::gauge!(PUBLISHERS_METRIC).decrement(1.0);
        let _ = self.live.reports.send(self.status.clone());
        tracing::info!(
            stream_id = %self.status.stream_id,
            bytes_in = self.status.bytes_in,
            frames_in = self.status.frames_in,
            "publish ended"
        );
    }
}

/// One player's view of a stream: the start tags, then live ones. After falling behind it
/// resumes at the next keyframe, so its decoder never sees a broken GOP.
pub(crate) struct Player {
    first: VecDeque<Tag>,
    live: broadcast::Receiver<Tag>,
    waiting_for_key: bool,
    count: PlayerCount,
}

/// One player in the players gauge while it lives, and its bytes-out counter.
pub(crate) struct PlayerCount {
    output: Output,
    /// Looked up once: a per-write lookup (label hashing, registry) costs more than the
    /// write's bookkeeping with hundreds of players.
    bytes_out: metrics::Counter,
}

impl PlayerCount {
    fn new(output: Output) -> Self {
        metrics::gauge!(PLAYERS_METRIC, "output" => output_name(output)).increment(1.0);
        Self {
            output,
            bytes_out: bytes_out_counter(output),
        }
    }
}

/// The bytes-out counter of `output`'s players.
pub(crate) fn bytes_out_counter(output: Output) -> metrics::Counter {
    metrics::counter!(BYTES_OUT_METRIC, "output" => output_name(output))
}

impl Drop for PlayerCount {
    fn drop(&mut self) {
        metrics::gauge!(PLAYERS_METRIC, "output" => output_name(self.output)).decrement(1.0);
    }
}

impl Player {
    fn new(sub: Subscription, output: Output) -> Self {
        Self {
            first: sub.first.into(),
            live: sub.live,
            waiting_for_key: false,
            count: PlayerCount::new(output),
        }
    }

    /// The next tag, or `None` once the publisher has gone.
    pub(crate) async fn next(&mut self) -> Option<Tag> {
        if let Some(tag) = self.first.pop_front() {
            return Some(tag);
        }
        loop {
            match self.live.recv().await {
                Ok(tag) => {
                    if self.waiting_for_key {
                        if !tag.is_keyframe() {
                            continue;
                        }
                        self.waiting_for_key = false;
                    }
                    return Some(tag);
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "live player fell behind; resuming at a keyframe");
                    self.waiting_for_key = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Replaces `batch` with the next tag and those already waiting behind it (at most `max`
    /// in all), so that a writer sends them in one write; false once the publisher has gone.
    /// The caller keeps `batch` from call to call: no allocation per wake-up.
    pub(crate) async fn next_batch(&mut self, batch: &mut Vec<Tag>, max: usize) -> bool {
        batch.clear();
        let Some(tag) = self.next().await else {
            return false;
        };
        // Only a live tag's group is waited for: the start tags come all at once anyway.
        let mut group = self.first.is_empty() && tag.more();
        batch.push(tag);
        while batch.len() < max {
            if let Some(tag) = self.first.pop_front() {
                batch.push(tag);
                continue;
            }
            let next = if group {
                // The rest of a group the hub releases at once (held audio and the video tag
                // after it): on its way, and worth one write instead of two.
                self.live.recv().await.map_err(|e| match e {
                    broadcast::error::RecvError::Lagged(_) => {
                        broadcast::error::TryRecvError::Lagged(0)
                    }
                    broadcast::error::RecvError::Closed => broadcast::error::TryRecvError::Closed,
                })
            } else {
                self.live.try_recv()
            };
            match next {
                Ok(tag) => {
                    group = tag.more();
                    if self.waiting_for_key {
                        if !tag.is_keyframe() {
                            continue;
                        }
                        self.waiting_for_key = false;
                    }
                    batch.push(tag);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    group = false;
                    self.waiting_for_key = true;
                }
                // Empty, or closed: what there is goes now; the next call sees the end.
                Err(_) => break,
            }
        }
        true
    }

    /// True when the start tags hold audio (the FLV header's audio flag).
    pub(crate) fn starts_with_audio(&self) -> bool {
        self.first.iter().any(|t| t.kind == TagKind::Audio)
    }

    /// Counts bytes sent to this player.
    pub(crate) fn sent(&self, bytes: usize) {
        self.count.bytes_out.increment(bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cloudphone_core::play_auth;

    use super::admission::test_rule as rule;

    fn push_auth() -> String {
        play_auth::sign("/live/1624428150544871", "push", 4_000_000_000, "0", "0")
    }

    #[tokio::test]
    async fn forbidding_a_stream_revokes_its_publisher_and_refuses_the_next() {
        let live = Live::new(String::new(), String::new());
        let mut reports = live.subscribe_reports();
        live.sync(vec![rule(true)]);
        let auth = push_auth();
        let mut ingest = live
            .publish("live", "1624428150544871", Some(&auth))
            .expect("admitted");
        assert!(reports.recv().await.expect("start").on);
        assert!(matches!(
            live.publish("live", "1624428150544871", Some(&auth)),
            Err(PublishRefusal::Busy)
        ));
        assert!(live.put(rule(false)), "the publisher is dropped");
        tokio::time::timeout(Duration::from_secs(1), ingest.revoked())
            .await
            .expect("revoked at once");
        drop(ingest);
        let stop = reports.recv().await.expect("stop");
        assert!(!stop.on && stop.stopped_unix_ms > 0);
        assert!(live.publishing().is_empty());
        assert!(matches!(
            live.publish("live", "1624428150544871", Some(&auth)),
            Err(PublishRefusal::Refused(Refusal::NotAdmitted))
        ));
        live.put(rule(true));
        let ingest = live.publish("live", "1624428150544871", Some(&auth));
        assert!(ingest.is_ok(), "admitted again");
        assert_eq!(live.sync(vec![]), 1, "a sync without it drops it");
        drop(ingest);
        live.put(rule(true));
        let mut ingest = live
            .publish("live", "1624428150544871", Some(&auth))
            .expect("admitted");
        assert!(live.remove("1624428150544871"), "a remove drops it");
        tokio::time::timeout(Duration::from_secs(1), ingest.revoked())
            .await
            .expect("revoked at once");
        assert!(!live.remove("1624428150544871"));
    }

    #[tokio::test]
    async fn a_player_that_fell_behind_resumes_at_the_next_keyframe_in_one_batch() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.publish("s").expect("free");
        let sub = hub.subscribe("s").expect("published");
        let mut player = Player::new(sub, Output::Flv);
        let video = |ts: u32, key: bool| {
            Tag::new(
                TagKind::Video,
                ts,
                Bytes::from(vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0]),
            )
        };
        for ts in 0..600 {
            publisher.send(video(ts, false));
        }
        publisher.send(video(1000, true));
        publisher.send(video(1001, false));
        let mut batch = Vec::new();
        assert!(player.next_batch(&mut batch, 64).await, "tags");
        let stamps: Vec<u32> = batch.iter().map(|t| t.timestamp_ms).collect();
        assert_eq!(stamps, [1000, 1001]);
        drop(publisher);
        assert!(!player.next_batch(&mut batch, 64).await, "the end");
    }

    #[tokio::test]
    async fn ingest_counts_frames_bytes_and_reads_the_codec() {
        let live = Live::new(String::new(), String::new());
        live.put(rule(true));
        let mut ingest = live
            .publish("live", "1624428150544871", Some(&push_auth()))
            .expect("admitted");
        let header = "0164001fffe1001c6764001facd9405005bb016a02020280000003008000001e478c18cb01000568ebecb22c";
        let mut data = vec![0x17, 0, 0, 0, 0];
        data.extend(hex::decode(header).expect("hex"));
        ingest.send(Tag::new(TagKind::Video, 0, Bytes::from(data)));
        for ts in [0, 33] {
            ingest.send(Tag::new(
                TagKind::Video,
                ts,
                Bytes::from_static(&[0x17, 1, 0, 0, 0, 0xaa]),
            ));
        }
        ingest.report();
        let [status] = live.publishing().try_into().expect("one");
        assert_eq!(status.frames_in, 2);
        assert_eq!(status.bytes_in, (5 + header.len() / 2 + 12) as u64);
        assert_eq!(
            status.video,
            Some(codec::VideoInfo {
                codec: codec::VideoCodec::H264,
                width: 1280,
                height: 720
            })
        );
    }
}
