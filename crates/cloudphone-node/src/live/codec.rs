//! The codec and picture size of a pushed stream, read from its FLV video sequence header (the
//! AVC or HEVC decoder configuration record and the SPS inside it), for the stream's status.
//!
//! Reads legacy FLV (codec id 7 = AVC, 12 = HEVC as Chinese CDNs extended it) and Enhanced RTMP
//! (`avc1`/`hvc1` FourCC). Pure and bounds-checked: any byte string gives `None` or a size, never
//! a panic, because it comes straight off the network.

/// A video codec the node can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    /// The name `LiveStreamStatus.codec` carries.
    pub(crate) fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "H264",
            VideoCodec::H265 => "H265",
        }
    }
}

/// What a sequence header says about the picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VideoInfo {
    pub(crate) codec: VideoCodec,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

/// Reads an FLV video tag body; `Some` only for a sequence header this module understands.
pub(crate) fn sequence_header(tag: &[u8]) -> Option<VideoInfo> {
    let first = *tag.first()?;
    if first & 0x80 != 0 {
        // Enhanced RTMP: packet type 0 is SequenceStart, then the FourCC and the record.
        if first & 0x0f != 0 {
            return None;
        }
        let record = tag.get(5..)?;
        return match tag.get(1..5)? {
            b"avc1" => avc_record(record),
            b"hvc1" => hevc_record(record),
            _ => None,
        };
    }
    // Legacy: codec id, AVCPacketType 0 (sequence header), 3 bytes of composition time.
    if tag.get(1) != Some(&0) {
        return None;
    }
    let record = tag.get(5..)?;
    match first & 0x0f {
        7 => avc_record(record),
        12 => hevc_record(record),
        _ => None,
    }
}

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3): the first SPS.
fn avc_record(record: &[u8]) -> Option<VideoInfo> {
    if *record.first()? != 1 || record.get(5)? & 0x1f == 0 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*record.get(6)?, *record.get(7)?]));
    let sps = record.get(8..8 + len)?;
    let (width, height) = avc_sps(sps.get(1..)?)?;
    Some(VideoInfo {
        codec: VideoCodec::H264,
        width,
        height,
    })
}

/// HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3): the first SPS (NAL type 33).
fn hevc_record(record: &[u8]) -> Option<VideoInfo> {
    let arrays = *record.get(22)?;
    let mut at = 23;
    for _ in 0..arrays {
        let nal_type = record.get(at)? & 0x3f;
        let count = u16::from_be_bytes([*record.get(at + 1)?, *record.get(at + 2)?]);
        at += 3;
        for _ in 0..count {
            let len = usize::from(u16::from_be_bytes([*record.get(at)?, *record.get(at + 1)?]));
            let nal = record.get(at + 2..at + 2 + len)?;
            at += 2 + len;
            if nal_type == 33 {
                let (width, height) = hevc_sps(nal.get(2..)?)?;
                return Some(VideoInfo {
                    codec: VideoCodec::H265,
                    width,
                    height,
                });
            }
        }
    }
    None
}

/// H.264 SPS (7.3.2.1.1) after its NAL header: the cropped picture size.
fn avc_sps(nal: &[u8]) -> Option<(u32, u32)> {
    let rbsp = unescape(nal);
    let mut r = Bits::new(&rbsp);
    let profile = r.bits(8)?;
    r.skip(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.skip(1)?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.skip(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.skip(1)?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()?.min(255) {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.skip(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = u32::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.skip(1)?; // mb_adaptive_frame_field_flag
    }
    r.skip(1)?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.bit()? {
        (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
    }
    let (crop_x, crop_y) = match chroma_format {
        0 => (1, 2 - frame_mbs_only),
        1 => (2, 2 * (2 - frame_mbs_only)),
        2 => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let width = width_mbs
        .checked_mul(16)?
        .checked_sub(crop_x * left.checked_add(right)?)?;
    let height = height_units
        .checked_mul(16 * (2 - frame_mbs_only))?
        .checked_sub(crop_y * top.checked_add(bottom)?)?;
    Some((width, height))
}

fn skip_scaling_list(r: &mut Bits<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// H.265 SPS (7.3.2.2) after its NAL header: the conformance-window-cropped picture size.
fn hevc_sps(nal: &[u8]) -> Option<(u32, u32)> {
    let rbsp = unescape(nal);
    let mut r = Bits::new(&rbsp);
    r.skip(4)?; // sps_video_parameter_set_id
    let sub_layers = r.bits(3)?; // sps_max_sub_layers_minus1
    r.skip(1)?; // temporal_id_nesting
    // profile_tier_level(1, sub_layers): general profile (88 bits) and level (8).
    r.skip(96)?;
    let mut present = Vec::new();
    for _ in 0..sub_layers {
        present.push((r.bit()?, r.bit()?));
    }
    if sub_layers > 0 {
        for _ in sub_layers..8 {
            r.skip(2)?;
        }
    }
    for (profile, level) in present {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format = r.ue()?;
    let mut separate_planes = false;
    if chroma_format == 3 {
        separate_planes = r.bit()?;
    }
    let width = r.ue()?;
    let height = r.ue()?;
    if !r.bit()? {
        return Some((width, height));
    }
    let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
    let (sub_w, sub_h) = match (chroma_format, separate_planes) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    Some((
        width.checked_sub(sub_w * left.checked_add(right)?)?,
        height.checked_sub(sub_h * top.checked_add(bottom)?)?,
    ))
}

/// The RBSP of a NAL unit: every emulation-prevention byte (`00 00 03`) removed.
fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// A big-endian bit reader with Exp-Golomb codes; `None` past the end.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    fn bit(&mut self) -> Option<bool> {
        let byte = self.data.get(self.at / 8)?;
        let bit = byte >> (7 - self.at % 8) & 1;
        self.at += 1;
        Some(bit == 1)
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = v << 1 | u32::from(self.bit()?);
        }
        Some(v)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        let at = self.at.checked_add(n)?;
        (at <= self.data.len() * 8).then(|| self.at = at)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        (1u32 << zeros).checked_sub(1)?.checked_add(rest)
    }

    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `codec_data` of GStreamer's x264enc / x265enc (`h264parse ! video/x-h264,stream-format=avc`,
    /// `h265parse ! video/x-h265,stream-format=hvc1`) for the sizes named, read with `gst-launch -v`.
    const AVC_330X186_I420: &str = "01640014ffe1001e67640014acd941519e493016a0c0c0d4a0000003002000000791e28532c001000568ebecb22c";
    const AVC_330X186_Y444: &str = "01f4000dffe1001f67f4000d90d9b282a33cf3e02d41818190000003001000000303c8f142996001000668ebec448440";
    const AVC_1280X720: &str =
        "0164001fffe1001c6764001facd9405005bb016a02020280000003008000001e478c18cb01000568ebecb22c";
    const HEVC_330X186_Y444: &str = "0104080000009808000000003ff000fcfffcfc00000f03200001001740010c01ffff040800000300980800000300003f9598092100010033420101040800000300980800000300003f90015101839e7294b2b3492657ff80008000b506060604000003000400000300782022000100074401c172b46240";
    const HEVC_1080X1920: &str = "01016000000090000000000078f000fcfdf8f800000f03200001001840010c01ffff0160000003009000000300000300789598092100010031420101016000000300900000030000030078a0021c801e0596566924cafff000100016a020202080000003008000000f0422000100074401c172b46240";

    fn legacy(codec_id: u8, record: &str) -> Vec<u8> {
        let mut tag = vec![0x10 | codec_id, 0, 0, 0, 0];
        tag.extend(hex::decode(record).unwrap());
        tag
    }

    fn check(tag: &[u8], expect: Option<(VideoCodec, u32, u32)>) {
        let got = sequence_header(tag).map(|i| (i.codec, i.width, i.height));
        assert_eq!(got, expect);
    }

    #[test]
    fn reads_size_and_codec_from_real_encoders_sequence_headers() {
        use VideoCodec::*;
        check(&legacy(7, AVC_330X186_I420), Some((H264, 330, 186)));
        check(&legacy(7, AVC_330X186_Y444), Some((H264, 330, 186)));
        check(&legacy(7, AVC_1280X720), Some((H264, 1280, 720)));
        check(&legacy(12, HEVC_330X186_Y444), Some((H265, 330, 186)));
        check(&legacy(12, HEVC_1080X1920), Some((H265, 1080, 1920)));
        // Enhanced RTMP: SequenceStart + FourCC.
        let mut ext = vec![0x90];
        ext.extend(b"hvc1");
        ext.extend(hex::decode(HEVC_1080X1920).unwrap());
        check(&ext, Some((H265, 1080, 1920)));
    }

    #[test]
    fn anything_else_is_none_never_a_panic() {
        check(&[], None);
        check(&[0x17], None);
        // A coded frame (AVCPacketType 1), not a header.
        let mut frame = legacy(7, AVC_1280X720);
        frame[1] = 1;
        check(&frame, None);
        // Every truncation of every header.
        for record in [AVC_330X186_I420, AVC_1280X720, HEVC_1080X1920] {
            let full = legacy(if record.starts_with("0101") { 12 } else { 7 }, record);
            for len in 0..full.len() - 4 {
                let _ = sequence_header(&full[..len]);
            }
        }
        for garbage in [
            vec![0xff; 64],
            vec![0; 64],
            vec![0x17, 0, 0, 0, 0, 1, 0, 0, 0, 0xe1],
        ] {
            let _ = sequence_header(&garbage);
        }
    }
}
