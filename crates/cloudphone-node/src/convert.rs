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
