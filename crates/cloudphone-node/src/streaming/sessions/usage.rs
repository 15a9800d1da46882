//! The usage session of one encoder run: a zero-length opening record, a partial record every
//! `usage_interval`, and a final one when the encoder stops, each handed to the usage buffer's
//! writer (which puts it on disk before any report stream sends it).

use std::future::Future;
use std::time::Duration;

use cloudphone_core::video::Codec;
use cloudphone_proto::node_v1 as pb;

use crate::clock::Clock;
use crate::usage_buffer::UsageSink;

/// Where an encoder run's usage records go, and how they are timed.
#[derive(Debug, Clone)]
pub(super) struct Meter {
    /// The usage buffer's writer.
    pub(super) sink: UsageSink,
    /// How often a partial record is emitted.
    pub(super) interval: Duration,
    /// What the records' times are read from.
    pub(super) clock: Clock,
}

/// What every record of one usage session says about the encoder.
pub(super) struct SessionInfo {
    pub(super) tenant_id: String,
    pub(super) instance_id: String,
    pub(super) codec: Codec,
    pub(super) width: u32,
    pub(super) height: u32,
}

/// Emits the records of one encoder run until `ended` resolves.
pub(super) async fn run_session(info: SessionInfo, ended: impl Future<Output = ()>, meter: Meter) {
    let Meter {
        sink: usage,
        interval: usage_interval,
        clock,
    } = meter;
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let codec = info.codec.as_str().to_owned();
    tokio::pin!(ended);
    let mut from = clock.unix_ms();
    let record = |start: i64, end: i64, final_: bool| pb::UsageRecord {
        record_id: uuid::Uuid::new_v4().simple().to_string(),
        session_id: session_id.clone(),
        tenant_id: info.tenant_id.clone(),
        instance_id: info.instance_id.clone(),
        codec: codec.clone(),
        width: info.width,
        height: info.height,
        start_unix_ms: start,
        end_unix_ms: end,
        r#final: final_,
    };
    // A zero-length opening record: the usage buffer learns of the session at once and
    // checkpoints it, so a crash before the first interval still bills what ran.
    usage.emit(record(from, from, false));
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + usage_interval, usage_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = clock.unix_ms();
                usage.emit(record(from, now, false));
                from = now;
            }
            _ = &mut ended => break,
        }
    }
    usage.emit(record(from, clock.unix_ms(), true));
    tracing::info!(instance = %info.instance_id, session = %session_id, "encoder stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Usage hours in paused time: records every interval, the last one cut where the
    /// encoder stopped, and no gap or overlap between them.
    #[tokio::test(start_paused = true)]
    async fn an_encoder_run_is_billed_interval_by_interval_up_to_its_end() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let meter = Meter {
            sink: UsageSink::new(tx),
            interval: Duration::from_secs(30),
            clock: Clock::tokio(1_000_000),
        };
        let info = SessionInfo {
            tenant_id: "t".into(),
            instance_id: "i".into(),
            codec: Codec::H264,
            width: 720,
            height: 1280,
        };
        let ended = tokio::time::sleep(Duration::from_secs(65));
        run_session(info, ended, meter).await;
        let mut records = Vec::new();
        while let Ok(r) = rx.try_recv() {
            records.push((r.start_unix_ms, r.end_unix_ms, r.r#final));
        }
        assert_eq!(
            records,
            [
                (1_000_000, 1_000_000, false),
                (1_000_000, 1_030_000, false),
                (1_030_000, 1_060_000, false),
                (1_060_000, 1_065_000, true),
            ]
        );
    }
}
