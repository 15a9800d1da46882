//! RTP packet inspection for the encoder's output: the fixed header and whether a packet starts
//! a key frame.
//!
//! The pipeline only counts packets; the WebRTC side needs to know where a key frame starts
//! (a new viewer should be fed from one, and a PLI is answered when one goes out), and the tests
//! check the payloader's output against RFC 3550 / 6184 / 7798 with the same code.

use cloudphone_core::video::Codec;

/// The parts of an RTP fixed header (RFC 3550 §5.1) the media path cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub version: u8,
    /// Set by the payloader on the last packet of a frame.
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Where the payload starts: after CSRCs and any header extension.
    pub payload_offset: usize,
    /// Where the payload ends: before any padding.
    pub payload_end: usize,
}

impl RtpHeader {
    /// Parses the fixed header; `None` when the packet is too short or its lengths are
    /// inconsistent.
    pub fn parse(packet: &[u8]) -> Option<RtpHeader> {
        if packet.len() < 12 {
            return None;
        }
        let b0 = packet[0];
        let csrc_count = usize::from(b0 & 0x0f);
        let mut offset = 12 + 4 * csrc_count;
        if b0 & 0x10 != 0 {
            let ext = packet.get(offset..offset + 4)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            offset += 4 + 4 * words;
        }
        let mut end = packet.len();
        if b0 & 0x20 != 0 {
            let pad = usize::from(*packet.last()?);
            end = end.checked_sub(pad)?;
        }
        if offset > end {
            return None;
        }
        Some(RtpHeader {
            version: b0 >> 6,
            marker: packet[1] & 0x80 != 0,
            payload_type: packet[1] & 0x7f,
            sequence: u16::from_be_bytes([packet[2], packet[3]]),
            timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
            ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            payload_offset: offset,
            payload_end: end,
        })
    }
}

/// H.264 NAL unit type of an IDR slice.
pub(crate) const H264_NAL_IDR: u8 = 5;
/// H.264 sequence parameter set: sent (with the PPS) right before every IDR.
pub(crate) const H264_NAL_SPS: u8 = 7;
/// H.265 video and sequence parameter sets: sent right before every IRAP picture.
pub(crate) const H265_NAL_VPS: u8 = 32;
pub(crate) const H265_NAL_SPS: u8 = 33;
/// H.265 NAL unit types of intra random access points a decoder can start from.
pub(crate) const H265_NAL_IDR_W_RADL: u8 = 19;
pub const H265_NAL_IDR_N_LP: u8 = 20;
pub(crate) const H265_NAL_CRA: u8 = 21;

/// True when this RTP packet carries the start of a key frame: the parameter sets that open
/// it (SPS; VPS/SPS for H.265) or the key picture itself, as a single NAL unit, a fragment
/// that starts one (H.264 FU-A / H.265 FU with the S bit) or inside an aggregation packet
/// (STAP-A / AP). The pipeline sends parameter sets only in front of key frames, so a viewer
/// fed from the first such packet can decode from it.
pub fn starts_keyframe(codec: Codec, packet: &[u8]) -> bool {
    let Some(header) = RtpHeader::parse(packet) else {
        return false;
    };
    let payload = &packet[header.payload_offset..header.payload_end];
    nal_types_starting(codec, payload)
        .into_iter()
        .any(|t| is_keyframe_nal(codec, t))
}

fn is_keyframe_nal(codec: Codec, nal_type: u8) -> bool {
    match codec {
        Codec::H264 => nal_type == H264_NAL_IDR || nal_type == H264_NAL_SPS,
        Codec::H265 => {
            (H265_NAL_IDR_W_RADL..=H265_NAL_CRA).contains(&nal_type)
                || nal_type == H265_NAL_VPS
                || nal_type == H265_NAL_SPS
        }
    }
}

/// The types of the NAL units whose first byte is in this RTP payload.
pub(crate) fn nal_types_starting(codec: Codec, payload: &[u8]) -> Vec<u8> {
    match codec {
        Codec::H264 => h264_nal_types(payload),
        Codec::H265 => h265_nal_types(payload),
    }
}

fn h264_nal_types(payload: &[u8]) -> Vec<u8> {
    let Some(&b0) = payload.first() else {
        return Vec::new();
    };
    match b0 & 0x1f {
        // STAP-A (RFC 6184 §5.7.1): 16-bit size, then the NAL unit, repeated.
        24 => aggregated(&payload[1..], 2, |nal| nal.first().map(|b| b & 0x1f)),
        // FU-A (§5.8): the FU header's S bit marks the fragment that starts the NAL unit.
        28 => match payload.get(1) {
            Some(fu) if fu & 0x80 != 0 => vec![fu & 0x1f],
            _ => Vec::new(),
        },
        t => vec![t],
    }
}

fn h265_nal_types(payload: &[u8]) -> Vec<u8> {
    let Some(&b0) = payload.first() else {
        return Vec::new();
    };
    let h265_type = |nal: &[u8]| nal.first().map(|b| (b >> 1) & 0x3f);
    match (b0 >> 1) & 0x3f {
        // AP (RFC 7798 §4.4.2): after the 2-byte payload header, 16-bit size + NAL unit.
        48 => aggregated(payload.get(2..).unwrap_or_default(), 2, h265_type),
        // FU (§4.4.3): the FU header is the third byte, S bit first.
        49 => match payload.get(2) {
            Some(fu) if fu & 0x80 != 0 => vec![fu & 0x3f],
            _ => Vec::new(),
        },
        t => vec![t],
    }
}

/// Walks `size_len`-byte big-endian size prefixed NAL units.
fn aggregated(mut rest: &[u8], size_len: usize, nal_type: impl Fn(&[u8]) -> Option<u8>) -> Vec<u8> {
    let mut types = Vec::new();
    while rest.len() > size_len {
        let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let Some(nal) = rest.get(size_len..size_len + size) else {
            break;
        };
        types.extend(nal_type(nal));
        rest = &rest[size_len + size..];
    }
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(marker: bool, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, if marker { 0x80 | 96 } else { 96 }];
        p.extend(seq.to_be_bytes());
        p.extend(1234u32.to_be_bytes());
        p.extend(0xdead_beefu32.to_be_bytes());
        p.extend(payload);
        p
    }

    #[test]
    fn header_fields() {
        let h = RtpHeader::parse(&packet(true, 7, &[0x65, 1, 2])).expect("valid");
        assert_eq!(
            (
                h.version,
                h.marker,
                h.payload_type,
                h.sequence,
                h.timestamp,
                h.ssrc
            ),
            (2, true, 96, 7, 1234, 0xdead_beef)
        );
        assert_eq!((h.payload_offset, h.payload_end), (12, 15));
        assert_eq!(RtpHeader::parse(&[0x80; 11]), None);
        // Extension bit set but the extension is cut off.
        let mut p = packet(false, 1, &[]);
        p[0] |= 0x10;
        assert_eq!(RtpHeader::parse(&p), None);
    }

    fn check(codec: Codec, payload: &[u8], key: bool) {
        assert_eq!(
            starts_keyframe(codec, &packet(false, 1, payload)),
            key,
            "{codec} {payload:02x?}"
        );
    }

    #[test]
    fn keyframe_detection() {
        use Codec::*;
        check(H264, &[0x65, 0], true); // IDR slice
        check(H264, &[0x41, 0], false); // non-IDR slice
        check(H264, &[0x7c, 0x85, 0], true); // FU-A start, type 5
        check(H264, &[0x7c, 0x05, 0], false); // FU-A middle
        check(
            H264,
            &[0x78, 0, 2, 0x67, 0, 0, 2, 0x68, 0, 0, 2, 0x65, 0],
            true,
        ); // STAP-A SPS PPS IDR
        check(H264, &[0x78, 0, 2, 0x67, 0, 0, 2, 0x68, 0], true); // STAP-A SPS PPS
        check(H264, &[0x78, 0, 2, 0x09, 0, 0, 2, 0x06, 0], false); // STAP-A AUD SEI
        check(H264, &[0x68, 0], false); // PPS alone
        check(H264, &[], false);
        check(H265, &[19 << 1, 1, 0], true);
        check(H265, &[20 << 1, 1, 0], true);
        check(H265, &[21 << 1, 1, 0], true);
        check(H265, &[1 << 1, 1, 0], false); // TRAIL_R
        check(H265, &[49 << 1, 1, 0x80 | 19, 0], true); // FU start
        check(H265, &[49 << 1, 1, 19, 0], false); // FU continuation
        check(
            H265,
            &[48 << 1, 1, 0, 2, 35 << 1, 1, 0, 2, 39 << 1, 1],
            false,
        ); // AP AUD SEI
        check(H265, &[34 << 1, 1, 0], false); // PPS alone
        check(
            H265,
            &[48 << 1, 1, 0, 2, 32 << 1, 1, 0, 2, 19 << 1, 1],
            true,
        ); // AP VPS IDR
    }
}
