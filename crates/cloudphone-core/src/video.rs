//! The SetVideoConfig matrix: network type × codec × definition → bitrate and frame rate.
//!
//! KooPhone's `PUT /v1/instances/video-setting` carries one cell per (network_type,
//! encoding_type) pair, each with a spec for 540P, 720P and 1080P. This module owns the typed
//! matrix, its validation rules (which error each bad input maps to) and the defaults an instance
//! streams with before any SetVideoConfig arrives. Pure: no I/O.

/// The viewer's network as the tenant labels it; selects a row of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum NetworkType {
    #[serde(rename = "WIFI")]
    Wifi,
    #[serde(rename = "MOBILE_NETWORK")]
    MobileNetwork,
    #[serde(rename = "WIRED")]
    Wired,
}

impl NetworkType {
    /// Every network type, in the order the matrix stores them.
    pub const ALL: [NetworkType; 3] = [
        NetworkType::Wifi,
        NetworkType::MobileNetwork,
        NetworkType::Wired,
    ];

    /// Parses the seed's spelling (`WIFI`, `MOBILE_NETWORK`, `WIRED`); exact, case-sensitive,
    /// because the seed lists them as an enumeration.
    pub fn parse(s: &str) -> Result<Self, VideoConfigError> {
        match s {
            "WIFI" => Ok(NetworkType::Wifi),
            "MOBILE_NETWORK" => Ok(NetworkType::MobileNetwork),
            "WIRED" => Ok(NetworkType::Wired),
            other => Err(VideoConfigError::UnknownNetworkType(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Wifi => "WIFI",
            NetworkType::MobileNetwork => "MOBILE_NETWORK",
            NetworkType::Wired => "WIRED",
        }
    }

    fn index(self) -> usize {
        match self {
            NetworkType::Wifi => 0,
            NetworkType::MobileNetwork => 1,
            NetworkType::Wired => 2,
        }
    }
}

display_as_str!(NetworkType, Codec, Definition);

/// The video codec (the seed's `encoding_type`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Codec {
    H264,
    H265,
}

impl Codec {
    pub const ALL: [Codec; 2] = [Codec::H264, Codec::H265];

    /// Parses `H264` / `H265` exactly.
    pub fn parse(s: &str) -> Result<Self, VideoConfigError> {
        match s {
            "H264" => Ok(Codec::H264),
            "H265" => Ok(Codec::H265),
            other => Err(VideoConfigError::UnknownEncodingType(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
        }
    }

    fn index(self) -> usize {
        match self {
            Codec::H264 => 0,
            Codec::H265 => 1,
        }
    }
}

/// The resources one phone of a SKU is sold with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkuResources {
    pub vcpus: u32,
    pub memory_gib: u32,
    pub storage_gib: u32,
}

/// A stream resolution class; the phone's screen is scaled to its portrait size.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Definition {
    #[serde(rename = "540P")]
    P540,
    #[serde(rename = "720P")]
    P720,
    #[serde(rename = "1080P")]
    P1080,
}

impl Definition {
    pub const ALL: [Definition; 3] = [Definition::P540, Definition::P720, Definition::P1080];

    /// Parses `540P` / `720P` / `1080P`. The seed's JSON keys are `definition_540P` etc.; the
    /// `definition_` prefix is accepted too so callers can pass the key as is.
    pub fn parse(s: &str) -> Result<Self, VideoConfigError> {
        match s.strip_prefix("definition_").unwrap_or(s) {
            "540P" => Ok(Definition::P540),
            "720P" => Ok(Definition::P720),
            "1080P" => Ok(Definition::P1080),
            _ => Err(VideoConfigError::UnknownDefinition(s.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Definition::P540 => "540P",
            Definition::P720 => "720P",
            Definition::P1080 => "1080P",
        }
    }

    /// Width × height of a portrait phone screen at this definition.
    pub fn portrait_size(self) -> (u32, u32) {
        match self {
            Definition::P540 => (540, 960),
            Definition::P720 => (720, 1280),
            Definition::P1080 => (1080, 1920),
        }
    }

    /// The largest definition whose short side fits the screen's short side, so a stream is
    /// never upscaled beyond the phone's own pixels; 540P for anything smaller.
    pub fn for_screen(width: u32, height: u32) -> Self {
        let short = width.min(height);
        Definition::ALL
            .into_iter()
            .rev()
            .find(|d| d.portrait_size().0 <= short)
            .unwrap_or(Definition::P540)
    }

    /// What the SKU sold at this definition gives a phone: vCPUs, memory and storage. Control
    /// describes its SKUs with it and nodes enforce it (cgroup quotas, the data-dir limit).
    pub fn sku_resources(self) -> SkuResources {
        let (vcpus, memory_gib, storage_gib) = match self {
            Definition::P540 => (2, 4, 16),
            Definition::P720 => (4, 8, 32),
            Definition::P1080 => (8, 16, 64),
        };
        SkuResources {
            vcpus,
            memory_gib,
            storage_gib,
        }
    }

    fn index(self) -> usize {
        match self {
            Definition::P540 => 0,
            Definition::P720 => 1,
            Definition::P1080 => 2,
        }
    }
}

/// What the encoder is asked for at one definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VideoSpec {
    /// Target bitrate in kbit/s (the seed's `code_rate`); also the ceiling of adaptation.
    pub code_rate_kbps: u32,
    /// Output frame rate, 30 or 60.
    pub fps: u32,
}

/// Bounds the seed puts on `code_rate` (kbit/s, inclusive).
pub const CODE_RATE_MIN_KBPS: u32 = 100;
pub const CODE_RATE_MAX_KBPS: u32 = 10_000;
/// `code_rate` must be a multiple of this.
pub const CODE_RATE_STEP_KBPS: u32 = 100;
/// The only frame rates the seed allows.
pub const ALLOWED_FPS: [u32; 2] = [30, 60];

/// One (network_type, encoding_type) entry of a SetVideoConfig request, still as strings so the
/// validator (not the HTTP layer) decides which error a bad value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoCell {
    pub network_type: String,
    pub encoding_type: String,
    /// `(definition, code_rate_kbps, fps)`, e.g. `("540P", 2000, 30)`.
    pub specs: Vec<(String, u32, u32)>,
}

/// Why a SetVideoConfig matrix is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VideoConfigError {
    #[error(
        "network_type {network} with encoding_type {codec} is missing; all 6 combinations are required"
    )]
    MissingCombination { network: NetworkType, codec: Codec },
    #[error("network_type {network} with encoding_type {codec} appears more than once")]
    DuplicateCombination { network: NetworkType, codec: Codec },
    #[error("unknown network_type {0:?}; expected WIFI, MOBILE_NETWORK or WIRED")]
    UnknownNetworkType(String),
    #[error("unknown encoding_type {0:?}; expected H264 or H265")]
    UnknownEncodingType(String),
    #[error("unknown definition {0:?}; expected 540P, 720P or 1080P")]
    UnknownDefinition(String),
    #[error("{network}/{codec}: definition {definition} is missing")]
    MissingDefinition {
        network: NetworkType,
        codec: Codec,
        definition: Definition,
    },
    #[error("{network}/{codec}: definition {definition} appears more than once")]
    DuplicateDefinition {
        network: NetworkType,
        codec: Codec,
        definition: Definition,
    },
    #[error("code_rate {code_rate} is outside 100..=10000 kbps")]
    CodeRateOutOfRange { code_rate: u32 },
    #[error("code_rate {code_rate} is not a multiple of 100")]
    CodeRateNotMultiple { code_rate: u32 },
    #[error("fps {fps} is not 30 or 60")]
    InvalidFps { fps: u32 },
}

impl VideoConfigError {
    /// The KooPhone API error code this rejection is reported as: a missing combination has its
    /// own code (1005); every other malformed value is a plain parameter error (1000).
    pub fn api_code(&self) -> &'static str {
        match self {
            VideoConfigError::MissingCombination { .. } => "KOOPHONE.API.1005",
            _ => "KOOPHONE.API.1000",
        }
    }
}

/// The full 3 × 2 × 3 matrix. Always complete: it is only built from defaults or from a
/// request that passed [`VideoConfig::from_cells`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VideoConfig {
    /// Indexed `[network][codec][definition]` through the enums' private `index()`.
    cells: [[[VideoSpec; 3]; 2]; 3],
}

/// Defaults for WIFI and WIRED, per definition (540P, 720P, 1080P). Chosen as what x264
/// ultrafast needs for a clean phone UI at that size at 30 fps.
const DEFAULT_FIXED: [VideoSpec; 3] = [
    VideoSpec {
        code_rate_kbps: 2000,
        fps: 30,
    },
    VideoSpec {
        code_rate_kbps: 4000,
        fps: 30,
    },
    VideoSpec {
        code_rate_kbps: 8000,
        fps: 30,
    },
];
/// Defaults for MOBILE_NETWORK: about 60 % of the fixed-line rates, because cellular uplinks to
/// the viewer are the usual bottleneck and adaptation starts from the ceiling.
const DEFAULT_MOBILE: [VideoSpec; 3] = [
    VideoSpec {
        code_rate_kbps: 1200,
        fps: 30,
    },
    VideoSpec {
        code_rate_kbps: 2500,
        fps: 30,
    },
    VideoSpec {
        code_rate_kbps: 5000,
        fps: 30,
    },
];
/// H.265 needs roughly 30 % fewer bits for the same quality; its defaults are scaled by this
/// (in percent) and rounded to the 100 kbps step the API requires.
const DEFAULT_H265_PERCENT: u32 = 70;

impl Default for VideoConfig {
    fn default() -> Self {
        let mut cells = [[[VideoSpec {
            code_rate_kbps: 0,
            fps: 0,
        }; 3]; 2]; 3];
        for network in NetworkType::ALL {
            let base = match network {
                NetworkType::MobileNetwork => DEFAULT_MOBILE,
                NetworkType::Wifi | NetworkType::Wired => DEFAULT_FIXED,
            };
            for codec in Codec::ALL {
                for definition in Definition::ALL {
                    let mut spec = base[definition.index()];
                    if codec == Codec::H265 {
                        let scaled = spec.code_rate_kbps * DEFAULT_H265_PERCENT / 100;
                        spec.code_rate_kbps =
                            (scaled / CODE_RATE_STEP_KBPS).max(1) * CODE_RATE_STEP_KBPS;
                    }
                    cells[network.index()][codec.index()][definition.index()] = spec;
                }
            }
        }
        VideoConfig { cells }
    }
}

impl VideoConfig {
    /// The spec for one cell of the matrix.
    pub fn get(&self, network: NetworkType, codec: Codec, definition: Definition) -> VideoSpec {
        self.cells[network.index()][codec.index()][definition.index()]
    }

    /// Validates a SetVideoConfig request's cells and builds the matrix.
    ///
    /// Checked in request order, so the first bad value is the one reported: names must parse,
    /// each (network, codec) pair and each definition within it at most once, each value in
    /// range; after all cells, every one of the 6 pairs and each pair's 3 definitions must be
    /// present. The order matters only for which message the caller sees.
    pub fn from_cells(cells: &[VideoCell]) -> Result<VideoConfig, VideoConfigError> {
        let mut out = VideoConfig::default();
        let mut seen = [[false; 2]; 3];
        for cell in cells {
            let network = NetworkType::parse(&cell.network_type)?;
            let codec = Codec::parse(&cell.encoding_type)?;
            if seen[network.index()][codec.index()] {
                return Err(VideoConfigError::DuplicateCombination { network, codec });
            }
            seen[network.index()][codec.index()] = true;
            let mut have = [false; 3];
            for (name, code_rate, fps) in &cell.specs {
                let definition = Definition::parse(name)?;
                if have[definition.index()] {
                    return Err(VideoConfigError::DuplicateDefinition {
                        network,
                        codec,
                        definition,
                    });
                }
                have[definition.index()] = true;
                let spec = validate_spec(*code_rate, *fps)?;
                out.cells[network.index()][codec.index()][definition.index()] = spec;
            }
            if let Some(definition) = Definition::ALL.into_iter().find(|d| !have[d.index()]) {
                return Err(VideoConfigError::MissingDefinition {
                    network,
                    codec,
                    definition,
                });
            }
        }
        for network in NetworkType::ALL {
            for codec in Codec::ALL {
                if !seen[network.index()][codec.index()] {
                    return Err(VideoConfigError::MissingCombination { network, codec });
                }
            }
        }
        Ok(out)
    }
}

fn validate_spec(code_rate: u32, fps: u32) -> Result<VideoSpec, VideoConfigError> {
    if !(CODE_RATE_MIN_KBPS..=CODE_RATE_MAX_KBPS).contains(&code_rate) {
        return Err(VideoConfigError::CodeRateOutOfRange { code_rate });
    }
    if !code_rate.is_multiple_of(CODE_RATE_STEP_KBPS) {
        return Err(VideoConfigError::CodeRateNotMultiple { code_rate });
    }
    if !ALLOWED_FPS.contains(&fps) {
        return Err(VideoConfigError::InvalidFps { fps });
    }
    Ok(VideoSpec {
        code_rate_kbps: code_rate,
        fps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete, valid request: every pair, every definition, with distinct values so a
    /// mix-up of cells shows.
    fn full() -> Vec<VideoCell> {
        let mut cells = Vec::new();
        for (n, network) in ["WIFI", "MOBILE_NETWORK", "WIRED"].iter().enumerate() {
            for (c, codec) in ["H264", "H265"].iter().enumerate() {
                let base = 1000 * (n as u32 + 1) + 100 * c as u32;
                cells.push(VideoCell {
                    network_type: network.to_string(),
                    encoding_type: codec.to_string(),
                    specs: vec![
                        ("540P".into(), base, 30),
                        ("720P".into(), base + 1000, 30),
                        ("1080P".into(), base + 2000, 60),
                    ],
                });
            }
        }
        cells
    }

    /// Runs `from_cells` on `full()` after `edit` and compares with `expect`.
    fn check(edit: impl FnOnce(&mut Vec<VideoCell>), expect: Result<(), VideoConfigError>) {
        let mut cells = full();
        edit(&mut cells);
        let got = VideoConfig::from_cells(&cells).map(|_| ());
        assert_eq!(got, expect, "cells: {cells:?}");
    }

    #[test]
    fn validation_table() {
        use VideoConfigError as E;
        check(|_| {}, Ok(()));
        check(
            |c| {
                c.remove(3);
            },
            Err(E::MissingCombination {
                network: NetworkType::MobileNetwork,
                codec: Codec::H265,
            }),
        );
        check(
            |c| {
                let dup = c[0].clone();
                c.push(dup);
            },
            Err(E::DuplicateCombination {
                network: NetworkType::Wifi,
                codec: Codec::H264,
            }),
        );
        check(
            |c| c[0].network_type = "wifi".into(),
            Err(E::UnknownNetworkType("wifi".into())),
        );
        check(
            |c| c[1].encoding_type = "VP8".into(),
            Err(E::UnknownEncodingType("VP8".into())),
        );
        check(
            |c| c[2].specs[0].0 = "480P".into(),
            Err(E::UnknownDefinition("480P".into())),
        );
        check(
            |c| {
                c[4].specs.remove(1);
            },
            Err(E::MissingDefinition {
                network: NetworkType::Wired,
                codec: Codec::H264,
                definition: Definition::P720,
            }),
        );
        check(
            |c| c[0].specs[1].0 = "540P".into(),
            Err(E::DuplicateDefinition {
                network: NetworkType::Wifi,
                codec: Codec::H264,
                definition: Definition::P540,
            }),
        );
        check(|c| c[0].specs[0].1 = 100, Ok(()));
        check(|c| c[0].specs[0].1 = 10_000, Ok(()));
        check(
            |c| c[0].specs[0].1 = 0,
            Err(E::CodeRateOutOfRange { code_rate: 0 }),
        );
        check(
            |c| c[0].specs[0].1 = 10_100,
            Err(E::CodeRateOutOfRange { code_rate: 10_100 }),
        );
        check(
            |c| c[0].specs[0].1 = 1050,
            Err(E::CodeRateNotMultiple { code_rate: 1050 }),
        );
        check(|c| c[5].specs[2].2 = 25, Err(E::InvalidFps { fps: 25 }));
        check(|c| c[5].specs[2].2 = 0, Err(E::InvalidFps { fps: 0 }));
        check(|c| c[0].specs[0].0 = "definition_540P".into(), Ok(()));
        check(|c| c.reverse(), Ok(()));
    }

    #[test]
    fn api_codes() {
        assert_eq!(
            VideoConfigError::MissingCombination {
                network: NetworkType::Wifi,
                codec: Codec::H264
            }
            .api_code(),
            "KOOPHONE.API.1005"
        );
        assert_eq!(
            VideoConfigError::InvalidFps { fps: 1 }.api_code(),
            "KOOPHONE.API.1000"
        );
        assert_eq!(
            VideoConfigError::UnknownNetworkType("x".into()).api_code(),
            "KOOPHONE.API.1000"
        );
    }

    #[test]
    fn from_cells_places_each_value_in_its_cell() {
        let config = VideoConfig::from_cells(&full()).expect("valid");
        let cells = [
            (
                NetworkType::MobileNetwork,
                Codec::H265,
                Definition::P1080,
                (4100, 60),
            ),
            (
                NetworkType::Wired,
                Codec::H264,
                Definition::P540,
                (3000, 30),
            ),
        ];
        for (network, codec, definition, (code_rate_kbps, fps)) in cells {
            let spec = config.get(network, codec, definition);
            assert_eq!(
                spec,
                VideoSpec {
                    code_rate_kbps,
                    fps
                }
            );
        }
    }

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let d = VideoConfig::default();
        let get = |n, c, def| d.get(n, c, def);
        use Codec::*;
        use Definition::*;
        use NetworkType::*;
        let documented = [
            (Wifi, H264, P540, 2000),
            (Wired, H264, P720, 4000),
            (Wifi, H264, P1080, 8000),
            (MobileNetwork, H264, P720, 2500),
            (Wifi, H265, P1080, 5600),
            (MobileNetwork, H265, P540, 800),
        ];
        for (n, c, def, code_rate_kbps) in documented {
            let want = VideoSpec {
                code_rate_kbps,
                fps: 30,
            };
            assert_eq!(get(n, c, def), want, "{n}/{c}/{def}");
        }
        for n in NetworkType::ALL {
            for c in Codec::ALL {
                for def in Definition::ALL {
                    let s = d.get(n, c, def);
                    assert_eq!(
                        validate_spec(s.code_rate_kbps, s.fps),
                        Ok(s),
                        "{n}/{c}/{def}"
                    );
                    assert!(
                        d.get(MobileNetwork, c, def).code_rate_kbps <= s.code_rate_kbps,
                        "mobile must not exceed {n}/{c}/{def}"
                    );
                }
            }
        }
    }

    #[test]
    fn parse_round_trips_and_sizes() {
        for n in NetworkType::ALL {
            assert_eq!(NetworkType::parse(n.as_str()), Ok(n));
        }
        for c in Codec::ALL {
            assert_eq!(Codec::parse(c.as_str()), Ok(c));
        }
        for d in Definition::ALL {
            assert_eq!(Definition::parse(d.as_str()), Ok(d));
        }
        assert_eq!(Definition::P540.portrait_size(), (540, 960));
        assert_eq!(Definition::P720.portrait_size(), (720, 1280));
        assert_eq!(Definition::P1080.portrait_size(), (1080, 1920));
        assert_eq!(Definition::for_screen(720, 1280), Definition::P720);
        assert_eq!(Definition::for_screen(1920, 1080), Definition::P1080);
        assert_eq!(Definition::for_screen(800, 1280), Definition::P720);
        assert_eq!(Definition::for_screen(320, 480), Definition::P540);
        assert_eq!(
            serde_json::to_string(&NetworkType::MobileNetwork)
                .ok()
                .as_deref(),
            Some("\"MOBILE_NETWORK\"")
        );
    }
}
