//! Conversions between the node API's wire types (`cloudphone-proto`) and the node's own
//! (`cloudphone-core`): the one place the node reads a proto message into a rule's input.

use cloudphone_core::video::{VideoCell, VideoConfig, VideoConfigError};
use cloudphone_proto::node_v1 as pb;

/// SetVideoConfig's profiles as the core's matrix, validated by the core's rules (which error
/// a bad cell maps to is theirs).
pub(crate) fn video_config(
    profiles: Vec<pb::VideoProfile>,
) -> Result<VideoConfig, VideoConfigError> {
    let cells: Vec<VideoCell> = profiles
        .into_iter()
        .map(|p| VideoCell {
            network_type: p.network_type,
            encoding_type: p.encoding_type,
            specs: p
                .specs
                .into_iter()
                .map(|s| (s.definition, s.code_rate_kbps, s.fps))
                .collect(),
        })
        .collect();
    VideoConfig::from_cells(&cells)
}

/// Control's `LiveStream` as the node's admission rule (unknown output names are ignored).
pub(crate) fn live_rule(s: pb::LiveStream) -> crate::live::admission::StreamRule {
    crate::live::admission::StreamRule {
        outputs: s
            .out_protocols
            .iter()
            .filter_map(|p| crate::live::admission::Output::parse(p))
            .collect(),
        stream_id: s.stream_id,
        app: s.app,
        tenant_id: s.tenant_id,
        group_id: s.group_id,
        admitted: s.admitted,
        push_key: s.push_key,
        play_keys: s.play_keys,
    }
}

/// A publish's figures as control hears them.
pub(crate) fn live_status(s: crate::live::PublishStatus) -> pb::LiveStreamStatus {
    pb::LiveStreamStatus {
        stream_id: s.stream_id,
        on: s.on,
        codec: s
            .video
            .map(|v| v.codec.name().to_string())
            .unwrap_or_default(),
        width: s.video.map_or(0, |v| v.width),
        height: s.video.map_or(0, |v| v.height),
        bitrate_bps: s.bitrate_bps,
        bytes_in: s.bytes_in,
        frames_in: s.frames_in,
        started_unix_ms: s.started_unix_ms,
        stopped_unix_ms: s.stopped_unix_ms,
        publish_id: s.publish_id,
    }
}
