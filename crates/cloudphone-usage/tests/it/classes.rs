//! Resolution classes of both APIs: the "at or below" pixel rule, portrait = landscape twin.

use cloudphone_usage::class::{Codec, huawei_spec, volc_class};

/// Each frame size with its Huawei tier and its Volcengine resolution: the tiers' edges (one
/// pixel row either side), portrait twins, and sizes past the top tier.
const CASES: [(u32, u32, &str, &str); 19] = [
    (1, 1, "SD", "480P"),
    (640, 480, "SD", "480P"),
    (480, 640, "SD", "480P"),
    (641, 480, "HD", "720P"),
    (540, 960, "HD", "720P"),
    (1280, 720, "HD", "720P"),
    (720, 1280, "HD", "720P"),
    (1280, 721, "FHD", "1080P"),
    (1080, 1920, "FHD", "1080P"),
    (1920, 1088, "2K", "1080P"),
    (1088, 1920, "2K", "1080P"),
    (1920, 1089, "2K", "2K"),
    (2560, 1440, "2K", "2K"),
    (1440, 2560, "2K", "2K"),
    (2560, 1441, "4K", "4K"),
    (3840, 2160, "4K", "4K"),
    (4096, 2160, "4K", "4K"),
    (7680, 4320, "4K", "4K"),
    (8192, 4320, "4K", "4K"),
];

#[test]
fn tiers_at_or_below() {
    for (w, h, huawei, volc) in CASES {
        for codec in Codec::ALL {
            assert_eq!(
                huawei_spec(codec, w, h),
                format!("{codec}_{huawei}"),
                "Huawei {w}x{h}"
            );
            assert_eq!(
                volc_class(codec, w, h),
                (format!("Normal_{codec}"), volc),
                "Volcengine {w}x{h}"
            );
        }
    }
}
