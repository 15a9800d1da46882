//! Our encoder runs mapped onto each API's transcode classes.
//!
//! Both documents name tiers by a reference frame size; a run belongs to the smallest tier whose
//! reference frame has at least as many pixels as the run's frame ("at or below"). Counting
//! pixels makes orientation irrelevant, so a portrait 720×1280 phone screen is HD exactly like
//! its landscape twin 1280×720. Frames larger than the top tier count as the top tier (4K).

/// The encoders we run: the video matrix's codec, one type across the workspace.
pub use cloudphone_core::video::Codec;

/// Parses a node's codec name leniently ("H264", "h265", "H.265", "AVC", "HEVC"); `None` for
/// anything else. Usage records are stored as the node sent them, so this reads old spellings.
pub fn parse_codec(text: &str) -> Option<Codec> {
    match text.to_ascii_uppercase().replace('.', "").as_str() {
        "H264" | "AVC" => Some(Codec::H264),
        "H265" | "HEVC" => Some(Codec::H265),
        _ => None,
    }
}

/// Huawei Live tiers (seed 004, TranscodeSpec.type): SD 640×480, HD 1280×720, FHD 1920×1080,
/// 2K 2560×1440, 4K 3840×2160.
const HUAWEI_TIERS: [(&str, u64); 5] = [
    ("SD", 640 * 480),
    ("HD", 1280 * 720),
    ("FHD", 1920 * 1080),
    ("2K", 2560 * 1440),
    ("4K", 3840 * 2160),
];

/// Volcengine tiers (seed 002, Resolution): 480P 640×480, 720P 1280×720, 1080P 1920×1088,
/// 2K 2560×1440, 4K 4096×2160.
const VOLC_TIERS: [(&str, u64); 5] = [
    ("480P", 640 * 480),
    ("720P", 1280 * 720),
    ("1080P", 1920 * 1088),
    ("2K", 2560 * 1440),
    ("4K", 4096 * 2160),
];

fn tier(tiers: &[(&'static str, u64)], width: u32, height: u32) -> &'static str {
    let pixels = u64::from(width) * u64::from(height);
    tiers
        .iter()
        .find(|(_, max)| pixels <= *max)
        .or(tiers.last())
        .map_or("4K", |(name, _)| name)
}

/// Huawei's `type`: `H264_HD`, `H265_FHD`, … (we never run PVC, "high definition low bitrate").
pub fn huawei_spec(codec: Codec, width: u32, height: u32) -> String {
    format!("{}_{}", codec.as_str(), tier(&HUAWEI_TIERS, width, height))
}

/// Volcengine's (`TranscodeType`, `Resolution`): (`Normal_H264`, `720P`), …
pub fn volc_class(codec: Codec, width: u32, height: u32) -> (String, &'static str) {
    (
        format!("Normal_{}", codec.as_str()),
        tier(&VOLC_TIERS, width, height),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_parse() {
        assert_eq!(parse_codec("h264"), Some(Codec::H264));
        assert_eq!(parse_codec("H.265"), Some(Codec::H265));
        assert_eq!(parse_codec("VP8"), None);
    }
}
