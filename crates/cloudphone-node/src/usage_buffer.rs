//! At-least-once delivery of usage records: every record is written to disk before it is sent,
//! resent on every new report stream until control acknowledges it, and an encoder session the
//! node did not get to close (a crash, SIGKILL) is closed on the next start up to the last time
//! the node was seen alive, so a restart loses seconds at most, never minutes.
//!
//! # One writer
//! Encoders hand their records to a [`UsageSink`]; one task (spawned by
//! [`UsageBuffer::spawn_keeper`]) writes each to disk and only then publishes it to the report
//! streams ([`UsageBuffer::subscribe`]). A stream subscribes before it reads the backlog, so
//! every record is either in the backlog it reads or published to it afterwards: none can be
//! on disk yet never sent.
//!
//! Layout under `<state_dir>/usage/`: `pending/<record_id>.json` (sent, not yet acknowledged) and
//! `open/<session_id>.json` (a session still encoding: its last record and when the node last
//! checked in). Control stores each `record_id` once, so a record sent twice counts once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudphone_proto::node_v1 as pb;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, IntervalStream};

use crate::clock::Clock;

/// How often open sessions' checkpoints are refreshed: the most a crash can lose.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often an open report stream looks for usage records it has to send again.
pub(crate) const RESEND_EVERY: Duration = Duration::from_secs(5);
/// A record sent on a stream and still unacknowledged this long later is sent again.
pub(crate) const RESEND_UNACKED_AFTER: Duration = Duration::from_secs(30);
/// Records published to report streams that a slow stream may fall behind by before it has
/// to catch up from disk.
const PUBLISHED_CAPACITY: usize = 1024;

/// A record as stored on disk (the proto type has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredRecord {
    record_id: String,
    session_id: String,
    tenant_id: String,
    instance_id: String,
    codec: String,
    width: u32,
    height: u32,
    start_unix_ms: i64,
    end_unix_ms: i64,
    #[serde(rename = "final")]
    is_final: bool,
}

impl From<&pb::UsageRecord> for StoredRecord {
    fn from(r: &pb::UsageRecord) -> Self {
        Self {
            record_id: r.record_id.clone(),
            session_id: r.session_id.clone(),
            tenant_id: r.tenant_id.clone(),
            instance_id: r.instance_id.clone(),
            codec: r.codec.clone(),
            width: r.width,
            height: r.height,
            start_unix_ms: r.start_unix_ms,
            end_unix_ms: r.end_unix_ms,
            is_final: r.r#final,
        }
    }
}

impl From<StoredRecord> for pb::UsageRecord {
    fn from(r: StoredRecord) -> Self {
        Self {
            record_id: r.record_id,
            session_id: r.session_id,
            tenant_id: r.tenant_id,
            instance_id: r.instance_id,
            codec: r.codec,
            width: r.width,
            height: r.height,
            start_unix_ms: r.start_unix_ms,
            end_unix_ms: r.end_unix_ms,
            r#final: r.is_final,
        }
    }
}

/// An encoder session that has not ended yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OpenSession {
    /// The session's latest record; its end is where the next record starts.
    last: StoredRecord,
    /// When this node last confirmed the session was still encoding.
    alive_at_unix_ms: i64,
}

/// The on-disk buffer. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct UsageBuffer {
    pending: PathBuf,
    open: PathBuf,
    /// Open sessions in memory, mirrored to `open/`.
    sessions: Arc<Mutex<HashMap<String, OpenSession>>>,
    /// Records already on disk, for the report streams to send.
    published: broadcast::Sender<pb::UsageRecord>,
}

/// Where encoders hand their usage records: to the buffer's one writer. Cheap to clone.
///
/// Unbounded because sending must never block an encoder's usage task, and the rate is tiny
/// (one record per encoder per usage interval).
#[derive(Debug, Clone)]
pub(crate) struct UsageSink(mpsc::UnboundedSender<pb::UsageRecord>);

impl UsageSink {
    /// A sink whose records go to `tx`, for tests that look at what an encoder run emits.
    #[cfg(test)]
    pub(crate) fn new(tx: mpsc::UnboundedSender<pb::UsageRecord>) -> Self {
        Self(tx)
    }

    /// Queues a record for the writer. Only fails once the writer is gone (node shutdown).
    pub(crate) fn emit(&self, record: pb::UsageRecord) {
        if self.0.send(record).is_err() {
            tracing::warn!("usage writer has stopped; a usage record was dropped");
        }
    }
}

/// A usage record on its way to one report stream.
enum Delivery {
    /// Read from the backlog or published: skipped if this stream already sent it.
    New(pb::UsageRecord),
    /// Due by the resend timer (unacknowledged too long, or never sent): sent.
    Again(pb::UsageRecord),
}

/// Writes `bytes` to `path` atomically (temp file + rename), so a crash leaves old or new, never half.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Record and session ids become file names: only ids of our own making are accepted.
fn safe_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl UsageBuffer {
    /// Opens the buffer and closes the sessions a previous run left open: each gets a final
    /// record from its last record's end to the last time the node was seen alive.
    pub(crate) fn open(state_dir: &Path, now_ms: i64) -> std::io::Result<Self> {
        let root = state_dir.join("usage");
        let buffer = Self {
            pending: root.join("pending"),
            open: root.join("open"),
            sessions: Arc::new(Mutex::new(HashMap::new())),
            published: broadcast::channel(PUBLISHED_CAPACITY).0,
        };
        std::fs::create_dir_all(&buffer.pending)?;
        std::fs::create_dir_all(&buffer.open)?;
        for entry in std::fs::read_dir(&buffer.open)? {
            let path = entry?.path();
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<OpenSession>(&bytes) {
                Ok(open) => {
                    let end = open.alive_at_unix_ms.clamp(open.last.end_unix_ms, now_ms);
                    let closing = StoredRecord {
                        record_id: uuid::Uuid::new_v4().simple().to_string(),
                        start_unix_ms: open.last.end_unix_ms,
                        end_unix_ms: end,
                        is_final: true,
                        ..open.last
                    };
                    tracing::info!(session = %closing.session_id, ms = end - closing.start_unix_ms, "closing a usage session left open by the previous run");
                    buffer.persist(&closing)?;
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable open-session checkpoint")
                }
            }
            std::fs::remove_file(&path)?;
        }
        Ok(buffer)
    }

    fn persist(&self, record: &StoredRecord) -> std::io::Result<()> {
        if !safe_name(&record.record_id) {
            return Err(std::io::Error::other(
                "usage record id is not a safe file name",
            ));
        }
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        write_atomic(
            &self.pending.join(format!("{}.json", record.record_id)),
            &bytes,
        )
    }

    /// Writes a record to disk, then publishes it to the report streams. A record that cannot
    /// be written is still published (logged), so control bills it if a stream is open; only
    /// its resend after a broken stream is lost.
    pub(crate) fn record(&self, record: pb::UsageRecord, now_ms: i64) {
        if let Err(error) = self.write(&record, now_ms) {
            tracing::error!(%error, record = %record.record_id, "could not buffer a usage record; sending it live only");
        }
        let _ = self.published.send(record);
    }

    /// Records published from now on, each already on disk. Subscribe before reading
    /// [`UsageBuffer::pending`], so that no record falls between the two.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<pb::UsageRecord> {
        self.published.subscribe()
    }

    /// Starts the buffer's one writer, fed by the returned sink, and the checkpoint ticker, for
    /// as long as the node runs.
    pub(crate) fn spawn_keeper(&self, clock: Clock) -> UsageSink {
        let (tx, mut rx) = mpsc::unbounded_channel::<pb::UsageRecord>();
        let writer = self.clone();
        tokio::spawn(async move {
            while let Some(record) = rx.recv().await {
                writer.record(record, clock.unix_ms());
            }
        });
        let buffer = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
            loop {
                tick.tick().await;
                if let Err(error) = buffer.checkpoint(clock.unix_ms()) {
                    tracing::warn!(%error, "could not checkpoint open usage sessions");
                }
            }
        });
        UsageSink(tx)
    }

    /// Keeps a record until it is acknowledged, and tracks its session's openness.
    fn write(&self, record: &pb::UsageRecord, now_ms: i64) -> std::io::Result<()> {
        let stored = StoredRecord::from(record);
        self.persist(&stored)?;
        if !safe_name(&stored.session_id) {
            return Ok(());
        }
        let checkpoint = self.open.join(format!("{}.json", stored.session_id));
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if stored.is_final {
            sessions.remove(&stored.session_id);
            match std::fs::remove_file(&checkpoint) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            let open = OpenSession {
                last: stored.clone(),
                alive_at_unix_ms: now_ms,
            };
            write_atomic(
                &checkpoint,
                &serde_json::to_vec(&open).map_err(std::io::Error::other)?,
            )?;
            sessions.insert(stored.session_id, open);
        }
        Ok(())
    }

    /// Notes that every open session is still encoding at `now_ms`.
    pub(crate) fn checkpoint(&self, now_ms: i64) -> std::io::Result<()> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for (id, open) in sessions.iter_mut() {
            open.alive_at_unix_ms = now_ms;
            let bytes = serde_json::to_vec(&*open).map_err(std::io::Error::other)?;
            write_atomic(&self.open.join(format!("{id}.json")), &bytes)?;
        }
        Ok(())
    }

    /// Every record not yet acknowledged, oldest first.
    pub(crate) fn pending(&self) -> Vec<pb::UsageRecord> {
        let Ok(entries) = std::fs::read_dir(&self.pending) else {
            return Vec::new();
        };
        let mut records: Vec<StoredRecord> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        records.sort_by_key(|r| (r.end_unix_ms, r.start_unix_ms));
        records.into_iter().map(Into::into).collect()
    }

    /// The usage records one report stream sends: first every one not yet acknowledged (a
    /// previous stream may have broken before its ack), then new ones as the writer publishes
    /// them, each already on disk. Subscribing before reading the backlog leaves no gap between
    /// the two; a record written in between comes twice and is sent once. Control stores each
    /// id once.
    ///
    /// Every [`RESEND_EVERY`] the stream also sends again what it sent more than
    /// [`RESEND_UNACKED_AFTER`] ago that control still has not acknowledged (a record control
    /// could not store), and what is on disk but was never sent on it: the writer cannot leave
    /// such a record, but one can reach the disk another way (an operator, a test, a restore of
    /// the state dir). A stream that falls behind the publisher catches up from disk.
    pub(crate) fn deliveries(&self) -> impl Stream<Item = pb::UsageRecord> + Send + 'static {
        let published = self.subscribe();
        let backlog = tokio_stream::iter(self.pending()).map(Delivery::New);
        let buffer = self.clone();
        let live = futures::StreamExt::flat_map(BroadcastStream::new(published), move |r| {
            tokio_stream::iter(match r {
                Ok(record) => vec![Delivery::New(record)],
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "report stream fell behind; catching up from disk");
                    buffer.pending().into_iter().map(Delivery::New).collect()
                }
            })
        });
        let sent: Arc<Mutex<HashMap<String, tokio::time::Instant>>> = Arc::default();
        let buffer = self.clone();
        let unacked = Arc::clone(&sent);
        let resend = futures::StreamExt::flat_map(
            IntervalStream::new(tokio::time::interval_at(
                tokio::time::Instant::now() + RESEND_EVERY,
                RESEND_EVERY,
            )),
            move |_| {
                let pending = buffer.pending();
                let mut sent = unacked.lock().unwrap_or_else(|p| p.into_inner());
                sent.retain(|id, _| pending.iter().any(|r| &r.record_id == id));
                let due: Vec<Delivery> = pending
                    .into_iter()
                    .filter(|r| {
                        sent.get(&r.record_id)
                            .is_none_or(|at| at.elapsed() >= RESEND_UNACKED_AFTER)
                    })
                    .map(Delivery::Again)
                    .collect();
                tokio_stream::iter(due)
            },
        );
        backlog
            .chain(live.merge(resend))
            .filter_map(move |delivery| {
                let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                let record = match delivery {
                    Delivery::New(record) if sent.contains_key(&record.record_id) => return None,
                    Delivery::New(record) | Delivery::Again(record) => record,
                };
                sent.insert(record.record_id.clone(), tokio::time::Instant::now());
                Some(record)
            })
    }

    /// How many records wait on disk for control's acknowledgement (`/metrics`): counted from
    /// the directory, without reading the records.
    pub(crate) fn pending_count(&self) -> usize {
        std::fs::read_dir(&self.pending).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
    }

    /// Whether records can still be written (`/healthz`): writes, syncs and removes a probe
    /// file where records go. Not a `.json`, so no reader ever takes it for a record.
    pub(crate) fn check_writable(&self) -> std::io::Result<()> {
        use std::io::Write;
        let probe = self.pending.join(".healthz-probe");
        let result = std::fs::File::create(&probe).and_then(|mut f| {
            f.write_all(b"ok")?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&probe);
        result
    }

    /// Drops acknowledged records.
    pub(crate) fn acknowledge(&self, record_ids: &[String]) -> usize {
        record_ids
            .iter()
            .filter(|id| safe_name(id))
            .filter(|id| std::fs::remove_file(self.pending.join(format!("{id}.json"))).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, session: &str, start: i64, end: i64, is_final: bool) -> pb::UsageRecord {
        pb::UsageRecord {
            record_id: id.into(),
            session_id: session.into(),
            tenant_id: "t".into(),
            instance_id: "i".into(),
            codec: "H264".into(),
            width: 720,
            height: 1280,
            start_unix_ms: start,
            end_unix_ms: end,
            r#final: is_final,
        }
    }

    #[test]
    fn the_depth_counts_unacknowledged_records_and_the_probe_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = UsageBuffer::open(dir.path(), 0).unwrap();
        assert_eq!(buffer.pending_count(), 0);
        buffer
            .write(&rec("r1", "s1", 0, 1_000, false), 1_000)
            .unwrap();
        buffer
            .write(&rec("r2", "s1", 1_000, 2_000, true), 2_000)
            .unwrap();
        buffer.check_writable().unwrap();
        assert_eq!(buffer.pending_count(), 2);
        assert_eq!(buffer.pending().len(), 2);
        buffer.acknowledge(&["r1".to_owned()]);
        assert_eq!(buffer.pending_count(), 1);
    }

    #[test]
    fn records_stay_until_acknowledged_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = UsageBuffer::open(dir.path(), 0).unwrap();
        buffer.write(&rec("r1", "s1", 0, 0, false), 0).unwrap();
        buffer
            .write(&rec("r2", "s1", 0, 30_000, false), 30_000)
            .unwrap();
        assert_eq!(
            buffer
                .pending()
                .iter()
                .map(|r| r.record_id.as_str())
                .collect::<Vec<_>>(),
            ["r1", "r2"]
        );
        assert_eq!(
            buffer.acknowledge(&["r1".into(), "nope".into(), "../x".into()]),
            1
        );
        let ids: Vec<String> = buffer.pending().into_iter().map(|r| r.record_id).collect();
        assert_eq!(ids, ["r2"]);
        buffer
            .write(&rec("r3", "s1", 30_000, 31_000, true), 31_000)
            .unwrap();
        // A clean end leaves nothing open: reopening adds no closing record.
        let reopened = UsageBuffer::open(dir.path(), 40_000).unwrap();
        assert_eq!(
            reopened.pending().len(),
            2,
            "r2 and r3 still wait for their ack"
        );
    }

    #[test]
    fn a_crash_mid_session_is_closed_up_to_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = UsageBuffer::open(dir.path(), 0).unwrap();
        buffer
            .write(&rec("r1", "s1", 1_000, 1_000, false), 1_000)
            .unwrap();
        buffer
            .write(&rec("r2", "s1", 1_000, 31_000, false), 31_000)
            .unwrap();
        buffer.checkpoint(44_000).unwrap();
        buffer.acknowledge(&["r1".into(), "r2".into()]);
        drop(buffer); // The node dies here, its encoder with it.

        let reopened = UsageBuffer::open(dir.path(), 90_000).unwrap();
        let pending = reopened.pending();
        assert_eq!(pending.len(), 1);
        let closing = &pending[0];
        assert_eq!(
            (
                closing.session_id.as_str(),
                closing.start_unix_ms,
                closing.end_unix_ms
            ),
            ("s1", 31_000, 44_000)
        );
        assert!(closing.r#final);
        // Reopening again does not close the same session twice.
        assert_eq!(
            UsageBuffer::open(dir.path(), 95_000)
                .unwrap()
                .pending()
                .len(),
            1
        );
    }

    async fn next_id(stream: &mut (impl Stream<Item = pb::UsageRecord> + Unpin)) -> String {
        stream
            .next()
            .await
            .expect("the stream never ends")
            .record_id
    }

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_records_are_resent_every_30_s_and_acknowledged_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = UsageBuffer::open(dir.path(), 0).unwrap();
        buffer.record(rec("r1", "s1", 0, 0, false), 0);
        let mut stream = Box::pin(buffer.deliveries());
        let start = tokio::time::Instant::now();
        assert_eq!(next_id(&mut stream).await, "r1", "the backlog first");
        buffer.record(rec("r2", "s1", 0, 30_000, false), 30_000);
        assert_eq!(next_id(&mut stream).await, "r2", "then what is published");
        assert_eq!(start.elapsed(), Duration::ZERO);
        buffer.acknowledge(&["r2".into()]);
        // Time only moves when the stream waits: the next record is r1 again, once it has
        // gone unacknowledged for RESEND_UNACKED_AFTER, and never r2.
        assert_eq!(next_id(&mut stream).await, "r1");
        assert_eq!(start.elapsed(), RESEND_UNACKED_AFTER);
        assert_eq!(next_id(&mut stream).await, "r1");
        assert_eq!(start.elapsed(), 2 * RESEND_UNACKED_AFTER);
        // Acknowledged, it is not sent again.
        buffer.acknowledge(&["r1".into()]);
        buffer.record(rec("r3", "s1", 30_000, 31_000, true), 31_000);
        assert_eq!(next_id(&mut stream).await, "r3");
        assert_eq!(start.elapsed(), 2 * RESEND_UNACKED_AFTER);
    }
}
