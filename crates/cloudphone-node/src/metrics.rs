//! The node's Prometheus metrics: every name in one place, each described once at start (the
//! list operators read is docs/deploy.md § Health and metrics). Gauges that mirror state the
//! node already keeps (viewers, encoders, instances, the usage buffer) are read from that
//! state when `/metrics` is scraped rather than kept in step by hand; counters are counted
//! where things happen.

use cloudphone_core::lifecycle::InstanceState;

use crate::instances::InstanceView;

/// Viewers connected (signaling sessions admitted and not yet gone).
pub(crate) const SESSIONS: &str = "cloudphone_node_sessions";
/// Video encoders running (one per instance × codec × definition × fps with viewers).
pub(crate) const ENCODERS: &str = "cloudphone_node_encoders";
/// What the running encoders sent together over their last second, kbit/s.
pub(crate) const ENCODER_BITRATE: &str = "cloudphone_node_encoder_bitrate_kbps";
/// RTP bytes the encoders produced.
pub(crate) const ENCODER_BYTES: &str = "cloudphone_node_encoder_bytes_total";
/// Captured frames dropped in front of a busy encoder.
pub(crate) const FRAMES_DROPPED: &str = "cloudphone_node_frames_dropped_total";
/// Usage records on disk that control has not acknowledged yet.
pub(crate) const USAGE_BUFFER: &str = "cloudphone_node_usage_buffer_records";
/// Instances, by state.
pub(crate) const INSTANCES: &str = "cloudphone_node_instances";
/// Report streams open from control (0: control is not connected).
pub(crate) const REPORT_STREAMS: &str = "cloudphone_node_report_streams";

/// Every state an instance can be in: each gets a series, 0 included, so a state that
/// empties shows 0 rather than its last value.
const STATES: [InstanceState; 7] = [
    InstanceState::Stopped,
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Resetting,
    InstanceState::Failed,
    InstanceState::BackingUp,
    InstanceState::Restoring,
];

/// Describes every metric of this module; call once the recorder is installed.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(SESSIONS, "Viewers connected");
    describe_gauge!(ENCODERS, "Video encoders running");
    describe_gauge!(
        ENCODER_BITRATE,
        metrics::Unit::KilobitsPerSecond,
        "What the running encoders sent together over their last second"
    );
    describe_counter!(
        ENCODER_BYTES,
        metrics::Unit::Bytes,
        "RTP bytes produced by the video encoders"
    );
    describe_counter!(
        FRAMES_DROPPED,
        "Captured frames dropped in front of a busy encoder"
    );
    describe_gauge!(
        USAGE_BUFFER,
        "Usage records on disk not yet acknowledged by control"
    );
    describe_gauge!(INSTANCES, "Instances on this node, by state");
    describe_gauge!(
        REPORT_STREAMS,
        "Report streams open from control (0: control not connected)"
    );
    // Counters show from the start at 0, so a rate over them is defined before the first event.
    metrics::counter!(ENCODER_BYTES).increment(0);
    metrics::counter!(FRAMES_DROPPED).increment(0);
}

/// One second of a running encoder: bytes it produced, frames it dropped.
pub(crate) fn encoder_tick(bytes: u64, frames_dropped: u64) {
    metrics::counter!(ENCODER_BYTES).increment(bytes);
    if frames_dropped > 0 {
        metrics::counter!(FRAMES_DROPPED).increment(frames_dropped);
    }
}

/// The node's state at scrape time.
pub(crate) struct Snapshot<'a> {
    pub sessions: usize,
    pub encoders: usize,
    pub encoder_kbps: u64,
    pub usage_records: usize,
    pub report_streams: usize,
    pub instances: &'a [InstanceView],
}

/// Sets the gauges from a [`Snapshot`].
pub(crate) fn set(snapshot: &Snapshot<'_>) {
    metrics::gauge!(SESSIONS).set(snapshot.sessions as f64);
    metrics::gauge!(ENCODERS).set(snapshot.encoders as f64);
    metrics::gauge!(ENCODER_BITRATE).set(snapshot.encoder_kbps as f64);
    metrics::gauge!(USAGE_BUFFER).set(snapshot.usage_records as f64);
    metrics::gauge!(REPORT_STREAMS).set(snapshot.report_streams as f64);
    for state in STATES {
        let count = snapshot
            .instances
            .iter()
            .filter(|i| i.state == state)
            .count();
        metrics::gauge!(INSTANCES, "state" => state.as_str()).set(count as f64);
    }
}
