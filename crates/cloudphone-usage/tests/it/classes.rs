//! Resolution classes of both APIs: the "at or below" pixel rule, portrait = landscape twin.

use cloudphone_usage::class::{Codec, huawei_spec, volc_class};

#[test]
fn huawei_tiers_at_or_below() {
    let cases = [
        (640, 480, "SD"),
        (480, 640, "SD"),
        (641, 480, "HD"),
        (540, 960, "HD"),
        (1280, 720, "HD"),
        (720, 1280, "HD"),
        (1280, 721, "FHD"),
        (1080, 1920, "FHD"),
        (1920, 1088, "2K"),
        (2560, 1440, "2K"),
        (1440, 2560, "2K"),
        (2560, 1441, "4K"),
        (3840, 2160, "4K"),
        (7680, 4320, "4K"),
        (1, 1, "SD"),
    ];
    for (w, h, tier) in cases {
        assert_eq!(
            huawei_spec(Codec::H264, w, h),
            format!("H264_{tier}"),
            "{w}x{h}"
        );
        assert_eq!(
            huawei_spec(Codec::H265, w, h),
            format!("H265_{tier}"),
            "{w}x{h}"
        );
    }
}

#[test]
fn volcengine_tiers_at_or_below() {
    let cases = [
        (640, 480, "480P"),
        (720, 1280, "720P"),
        (1280, 720, "720P"),
        (1080, 1920, "1080P"),
        (1920, 1088, "1080P"),
        (1088, 1920, "1080P"),
        (1920, 1089, "2K"),
        (2560, 1440, "2K"),
        (3840, 2160, "4K"),
        (4096, 2160, "4K"),
        (8192, 4320, "4K"),
    ];
    for (w, h, tier) in cases {
        assert_eq!(
            volc_class(Codec::H264, w, h),
            ("Normal_H264".to_string(), tier),
            "{w}x{h}"
        );
        assert_eq!(volc_class(Codec::H265, w, h).0, "Normal_H265");
    }
}
