//! Our encoder runs mapped onto each API's transcode classes.
//!
//! Both documents name tiers by a reference frame size; a run belongs to the smallest tier whose
//! reference frame has at least as many pixels as the run's frame ("at or below"). Counting
//! pixels makes orientation irrelevant, so a portrait 720×1280 phone screen is HD exactly like
//! its landscape twin 1280×720. Frames larger than the top tier count as the top tier (4K).

/// The encoders we run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    H264,
    H265,
}

impl Codec {
    /// Parses a node's codec name ("H264", "h265", "H.265"); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().replace('.', "").as_str() {
            "H264" | "AVC" => Some(Self::H264),
            "H265" | "HEVC" => Some(Self::H265),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::H264 => "H264",
            Self::H265 => "H265",
        }
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
        assert_eq!(Codec::parse("h264"), Some(Codec::H264));
        assert_eq!(Codec::parse("H.265"), Some(Codec::H265));
        assert_eq!(Codec::parse("VP8"), None);
    }
}
