//! RTMP players served by a few writer tasks per stream (one per core) rather than by a task
//! each: a writer takes each tag from the hub once and writes its shared RTMP chunks to every
//! player of its share with a non-blocking write, several tags in one vectored write when more
//! than one is waiting. With hundreds of players this saves, per tag and player, a task
//! wake-up, the connection's `select!` and the broadcast channel's locking: what is left is
//! the write itself, as in nginx-rtmp's one worker.
//!
//! A player's connection task still owns its protocol (reads, the session's own messages)
//! and finishes what a writer could not write at once: a [`Sink`] queues bytes in order and a
//! writer writes directly only while nothing is queued, so the session's messages and the media
//! never interleave mid-message. A player that falls [`PLAYER_BACKLOG`] messages behind loses
//! its queued media and resumes at the next keyframe, as broadcast players do when they lag.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Buf, Bytes};
use std::borrow::Cow;
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};

use super::hub::{PLAYER_BACKLOG, Tag};

/// Buffers handed to one vectored write at most (well under any `IOV_MAX`).
const MAX_IOVECS: usize = 64;
/// Tags a writer takes from the hub at once when several are waiting.
const WRITE_BATCH: usize = 64;

/// How a player's media is framed, fixed when it starts playing.
pub(crate) struct Framing {
    /// The chunk size the connection's session announced.
    pub(crate) chunk_size: usize,
    /// The RTMP message stream the player plays on.
    pub(crate) stream_id: u32,
    /// Bytes written to the player (the node's bytes-out metric).
    pub(crate) bytes_out: metrics::Counter,
}

/// One RTMP connection's output, shared by its connection task and, while it plays, one
/// writer of its stream.
pub(crate) struct Sink {
    socket: Arc<TcpStream>,
    state: Mutex<SinkState>,
    /// Tells the connection task there is something for it: bytes a writer could not write,
    /// the stream's end, a failed write.
    wake: Notify,
}

#[derive(Default)]
struct SinkState {
    /// What is still to be written, in order (the front one maybe in part).
    queue: VecDeque<Pending>,
    /// Set while playing.
    play: Option<Play>,
    /// After falling behind: media is skipped until a keyframe.
    waiting_for_key: bool,
    /// The publisher left (the writers are gone).
    ended: bool,
    /// A write failed; the connection ends with it.
    failed: Option<std::io::ErrorKind>,
    /// Counts the plays begun: a writer serves only the play it was given (a connection
    /// may stop playing and play again while a writer still holds it).
    plays: u64,
}

struct Play {
    /// Which of the connection's plays.
    id: u64,
    framing: Framing,
    /// The first live tag this player gets (the earlier ones came as its start tags or not
    /// at all).
    start_seq: u64,
}

struct Pending {
    bytes: Bytes,
    /// Media may be dropped when the player is too far behind; the session's messages never.
    media: bool,
}

impl Sink {
    pub(crate) fn new(socket: Arc<TcpStream>) -> Arc<Self> {
        Arc::new(Self {
            socket,
            state: Mutex::default(),
            wake: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one of the session's own messages (written by [`Sink::flush`]).
    pub(crate) fn queue(&self, bytes: Bytes) {
        self.state().queue.push_back(Pending {
            bytes,
            media: false,
        });
    }

    /// Starts playing: `first` (metadata, sequence headers, the current GOP) is queued now;
    /// writers then give it every tag from `start_seq` on. Returns the play's id (see
    /// [`Fanout::add`]).
    pub(crate) fn begin<'a>(
        &self,
        framing: Framing,
        start_seq: u64,
        first: impl Iterator<Item = &'a Tag>,
    ) -> u64 {
        let mut state = self.state();
        for tag in first {
            let bytes = tag.rtmp_chunks(framing.chunk_size, framing.stream_id);
            state.queue.push_back(Pending { bytes, media: true });
        }
        state.plays += 1;
        state.waiting_for_key = false;
        state.ended = false;
        let id = state.plays;
        state.play = Some(Play {
            id,
            framing,
            start_seq,
        });
        id
    }

    /// Stops playing: writers drop this sink at their next tag.
    pub(crate) fn detach(&self) {
        self.state().play = None;
    }

    /// Resolves when a writer left something for the connection task (see [`Sink::flush`],
    /// [`Sink::ended`]).
    pub(crate) async fn notified(&self) {
        self.wake.notified().await;
    }

    /// True once the publisher has left; what is queued is still to be flushed.
    pub(crate) fn ended(&self) -> bool {
        self.state().ended
    }

    /// True while bytes wait for the socket to take them.
    pub(crate) fn pending(&self) -> bool {
        !self.state().queue.is_empty()
    }

    /// Writes what is queued as far as the socket takes it now, without waiting; true when
    /// nothing is left. An error when the socket failed (here or in a writer).
    pub(crate) fn flush(&self) -> std::io::Result<bool> {
        let mut state = self.state();
        if let Some(kind) = state.failed {
            return Err(kind.into());
        }
        while !state.queue.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let count = state.queue.len().min(MAX_IOVECS);
            for (slot, pending) in iov.iter_mut().zip(&state.queue) {
                *slot = IoSlice::new(&pending.bytes);
            }
            match self.socket.try_write_vectored(&iov[..count]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => state.written(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => {
                    state.failed = Some(e.kind());
                    return Err(e);
                }
            }
        }
        Ok(true)
    }

    /// [`Sink::flush`] until nothing is left.
    pub(crate) async fn flush_all(&self) -> std::io::Result<()> {
        while !self.flush()? {
            self.socket.writable().await?;
        }
        Ok(())
    }

    /// A writer's turn for play `play_id`: the tags of `tags` this player is due, written now
    /// when nothing is queued, else queued; `wires` is the writer's scratch space. The bytes
    /// written, or `None` once the play is not the writer's to serve.
    fn deliver<'a>(
        &self,
        play_id: u64,
        tags: &'a [Tag],
        wires: &mut Vec<Cow<'a, Bytes>>,
    ) -> Option<usize> {
        let mut state = self.state();
        let state = &mut *state;
        if state.failed.is_some() {
            return None;
        }
        let play = state.play.as_ref().filter(|p| p.id == play_id)?;
        wires.clear();
        for tag in tags {
            if tag.seq() < play.start_seq {
                continue;
            }
            if state.waiting_for_key {
                if !tag.is_keyframe() {
                    continue;
                }
                state.waiting_for_key = false;
            }
            // Borrowed, not cloned: with hundreds of players on two cores, every clone and
            // drop of one shared `Bytes` is an atomic on a cache line both cores want.
            wires.push(tag.rtmp_wire(play.framing.chunk_size, play.framing.stream_id));
        }
        if wires.is_empty() {
            return Some(0);
        }
        if !state.queue.is_empty() {
            // The connection task is already on it (it was told when the queue filled).
            state.queue.extend(wires.drain(..).map(|wire| Pending {
                bytes: wire.into_owned(),
                media: true,
            }));
            state.trim();
            return Some(0);
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        let count = wires.len().min(MAX_IOVECS);
        for (slot, wire) in iov.iter_mut().zip(wires.iter()) {
            *slot = IoSlice::new(wire);
        }
        let written = match self.socket.try_write_vectored(&iov[..count]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                state.failed = Some(e.kind());
                self.wake.notify_one();
                return None;
            }
        };
        let mut left = written;
        for wire in wires.drain(..) {
            if left >= wire.len() {
                left -= wire.len();
                continue;
            }
            let bytes = wire.into_owned().slice(left..);
            left = 0;
            state.queue.push_back(Pending { bytes, media: true });
        }
        if !state.queue.is_empty() {
            self.wake.notify_one();
        }
        Some(written)
    }

    /// The writer fell behind the hub: media resumes at the next keyframe.
    fn lagged(&self) {
        self.state().waiting_for_key = true;
    }

    /// The publisher of play `play_id` left.
    fn end(&self, play_id: u64) {
        let mut state = self.state();
        if state.play.as_ref().is_some_and(|p| p.id == play_id) {
            state.ended = true;
            self.wake.notify_one();
        }
    }
}

impl SinkState {
    /// `n` bytes of the queue's front were written.
    fn written(&mut self, mut n: usize) {
        if let Some(play) = &self.play {
            play.framing.bytes_out.increment(n as u64);
        }
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if n >= front.bytes.len() {
                n -= front.bytes.len();
                self.queue.pop_front();
            } else {
                front.bytes.advance(n);
                n = 0;
            }
        }
    }

    /// A player too far behind loses its queued media (all but a message begun, which must
    /// end) and resumes at the next keyframe.
    fn trim(&mut self) {
        if self.queue.len() <= PLAYER_BACKLOG {
            return;
        }
        tracing::debug!(
            queued = self.queue.len(),
            "RTMP player fell behind; resuming at a keyframe"
        );
        let front = self.queue.pop_front();
        self.queue.retain(|p| !p.media);
        if let Some(front) = front {
            self.queue.push_front(front);
        }
        self.waiting_for_key = true;
    }
}

/// A stream's writers, each serving its share of the stream's RTMP players.
pub(crate) struct Fanout {
    shards: Vec<Arc<Shard>>,
}

/// A writer's players: each sink with the play it serves.
#[derive(Default)]
struct Shard {
    sinks: Mutex<Vec<(Arc<Sink>, u64)>>,
}

impl Shard {
    fn sinks(&self) -> MutexGuard<'_, Vec<(Arc<Sink>, u64)>> {
        self.sinks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Fanout {
    /// One writer per core, each reading the stream's tags from now on; they end with the
    /// stream, and end its players' plays.
    pub(crate) fn start(tx: &broadcast::Sender<Tag>) -> Self {
        let writers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let shards = (0..writers)
            .map(|_| {
                let shard = Arc::new(Shard::default());
                let bytes_out = super::bytes_out_counter(super::admission::Output::Rtmp);
                tokio::spawn(write(tx.subscribe(), Arc::clone(&shard), bytes_out));
                shard
            })
            .collect();
        Self { shards }
    }

    /// Gives play `play_id` of `sink` to the writer with the fewest players.
    pub(crate) fn add(&self, sink: Arc<Sink>, play_id: u64) {
        if let Some(shard) = self.shards.iter().min_by_key(|s| s.sinks().len()) {
            shard.sinks().push((sink, play_id));
        }
    }
}

/// One writer: every tag of the stream to each of its sinks, until the publisher leaves.
/// `bytes_out` counts what it writes, once per turn rather than per player.
async fn write(mut rx: broadcast::Receiver<Tag>, shard: Arc<Shard>, bytes_out: metrics::Counter) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        batch.clear();
        match rx.recv().await {
            Ok(tag) => batch.push(tag),
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::debug!(skipped, "RTMP writer fell behind; resuming at a keyframe");
                shard.sinks().iter().for_each(|(s, _)| s.lagged());
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
        let mut lagged = false;
        while batch.len() < WRITE_BATCH {
            let next = if batch.last().is_some_and(Tag::more) {
                // The rest of a group the hub releases at once (held audio and the video tag
                // after it): on its way, and worth one write instead of two.
                rx.recv()
                    .await
                    .map_err(|e| matches!(e, broadcast::error::RecvError::Lagged(_)))
            } else {
                rx.try_recv()
                    .map_err(|e| matches!(e, broadcast::error::TryRecvError::Lagged(_)))
            };
            match next {
                Ok(tag) => batch.push(tag),
                Err(fell_behind) => {
                    lagged = fell_behind;
                    // Empty, or closed: what there is goes now; the next turn sees the end.
                    break;
                }
            }
        }
        let mut sinks = shard.sinks();
        let mut wires = Vec::with_capacity(batch.len());
        let mut written = 0;
        sinks.retain(|(sink, play)| {
            sink.deliver(*play, &batch, &mut wires)
                .map(|n| written += n)
                .is_some()
        });
        drop(wires);
        bytes_out.increment(written as u64);
        if lagged {
            sinks.iter().for_each(|(s, _)| s.lagged());
        }
    }
    for (sink, play) in shard.sinks().drain(..) {
        sink.end(play);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::hub::{Hub, TagKind};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn video(ts: u32, key: bool, len: usize) -> Tag {
        let mut data = vec![0u8; len.max(2)];
        data[0] = if key { 0x17 } else { 0x27 };
        data[1] = 1;
        Tag::new(TagKind::Video, ts, Bytes::from(data))
    }

    /// A connected pair: the server's socket (in a sink) and the client's.
    async fn pair() -> (Arc<Sink>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Sink::new(Arc::new(server)), client)
    }

    fn framing() -> Framing {
        Framing {
            chunk_size: 1 << 20,
            stream_id: 1,
            bytes_out: metrics::Counter::noop(),
        }
    }

    /// The video timestamps in what `client` received (every message in one chunk, type 0).
    async fn read_stamps(client: &mut TcpStream, want: usize) -> Vec<u32> {
        let mut stamps = Vec::new();
        let mut header = [0u8; 12];
        while stamps.len() < want {
            client.read_exact(&mut header).await.expect("header");
            let ts = u32::from_be_bytes([0, header[1], header[2], header[3]]);
            let len = u32::from_be_bytes([0, header[4], header[5], header[6]]) as usize;
            let mut body = vec![0u8; len];
            client.read_exact(&mut body).await.expect("body");
            stamps.push(ts);
        }
        stamps
    }

    #[tokio::test]
    async fn a_player_gets_its_session_messages_the_start_tags_then_live_tags_in_order() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.publish("s").expect("free");
        publisher.send(video(0, true, 10));
        publisher.send(video(40, false, 10));
        let (sink, mut client) = pair().await;
        // A session message queued before the play starts goes first.
        sink.queue(
            Tag::new(TagKind::Video, 7, Bytes::from_static(&[0x17, 0])).rtmp_chunks(1 << 20, 1),
        );
        assert!(hub.attach("s", &sink, framing()));
        publisher.send(video(80, false, 10));
        assert!(sink.flush().expect("flush"), "a few bytes go at once");
        publisher.send(video(120, true, 10));
        let stamps = tokio::time::timeout(Duration::from_secs(5), read_stamps(&mut client, 5))
            .await
            .expect("in time");
        assert_eq!(stamps, [7, 0, 40, 80, 120]);
        drop(publisher);
        tokio::time::timeout(Duration::from_secs(5), sink.notified())
            .await
            .expect("told");
        assert!(sink.ended());
    }

    #[tokio::test]
    async fn a_player_that_does_not_read_resumes_at_a_keyframe_without_stalling_the_others() {
        let hub = Arc::new(Hub::default());
        let publisher = hub.publish("s").expect("free");
        publisher.send(video(0, true, 10));
        let (slow, _slow_client) = pair().await;
        let (fast, mut fast_client) = pair().await;
        assert!(hub.attach("s", &slow, framing()));
        assert!(hub.attach("s", &fast, framing()));
        slow.flush().expect("flush");
        fast.flush().expect("flush");
        let reader = tokio::spawn(async move {
            read_stamps(&mut fast_client, 1 + 1000).await;
            fast_client
        });
        // Far more than the socket buffers and the backlog hold, 64 KiB a tag.
        for ts in 1..=1000 {
            publisher.send(video(ts, false, 64 << 10));
            if ts % 16 == 0 {
                tokio::task::yield_now().await;
                let _ = fast.flush();
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !reader.is_finished() {
            let _ = fast.flush();
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fast player stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        reader.await.expect("fast player read everything");
        // The slow one never read: past the backlog its media was dropped, all but the
        // message begun, and it waits for a keyframe.
        assert!(slow.state().waiting_for_key);
        assert_eq!(slow.state().queue.len(), 1);
        publisher.send(video(5000, true, 10));
        publisher.send(video(5001, false, 10));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let state = slow.state();
        let queued: Vec<u32> = state
            .queue
            .iter()
            .skip(1)
            .map(|p| u32::from_be_bytes([0, p.bytes[1], p.bytes[2], p.bytes[3]]))
            .collect();
        assert_eq!(queued, [5000, 5001], "resumed at the keyframe");
        assert!(!state.waiting_for_key);
    }
}
