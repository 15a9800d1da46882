//! The usage session of one encoder run: a zero-length opening record, a partial record every
//! `usage_interval`, and a final one when the encoder stops, each handed to the usage buffer's
//! writer (which puts it on disk before any report stream sends it).

use std::future::Future;
use std::time::Duration;

use cloudphone_core::video::Codec;
use cloudphone_proto::node_v1 as pb;

use crate::usage_buffer::UsageSink;

/// What every record of one usage session says about the encoder.
pub(super) struct SessionInfo {
    pub(super) tenant_id: String,
    pub(super) instance_id: String,
    pub(super) codec: Codec,
    pub(super) width: u32,
    pub(super) height: u32,
}

/// Emits the records of one encoder run until `ended` resolves.
pub(super) async fn run_session(
    info: SessionInfo,
    ended: impl Future<Output = ()>,
    usage: UsageSink,
    usage_interval: Duration,
) {
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let codec = info.codec.as_str().to_owned();
    tokio::pin!(ended);
    let mut from = crate::unix_ms();
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
                let now = crate::unix_ms();
                usage.emit(record(from, now, false));
                from = now;
            }
            _ = &mut ended => break,
        }
    }
    usage.emit(record(from, crate::unix_ms(), true));
    tracing::info!(instance = %info.instance_id, session = %session_id, "encoder stopped");
}
