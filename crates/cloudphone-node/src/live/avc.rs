//! AVC (H.264) in FLV video tags, as WHEP needs it without a demuxer: the decoder configuration
//! record's SPS/PPS and the length-prefixed (AVCC) NAL units of each frame.
//!
//! A video tag body is `frame type << 4 | codec id` (7 = AVC), `AVCPacketType` (0 = sequence
//! header, 1 = NAL units, 2 = end of sequence), a signed 24-bit composition time offset, then
//! the payload (ISO/IEC 14496-15 §5.2.4.1 record for type 0; NAL units each prefixed with a
//! big-endian length of `lengthSizeMinusOne + 1` bytes for type 1).

use bytes::Bytes;

/// FLV codec id of AVC.
pub(crate) const CODEC_AVC: u8 = 7;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AvcError {
    #[error("truncated AVC data")]
    Truncated,
    #[error("video codec id {0} is not AVC")]
    NotAvc(u8),
    #[error("unknown AVC packet type {0}")]
    PacketType(u8),
}

/// The parameter sets of an `AVCDecoderConfigurationRecord`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AvcConfig {
    /// Bytes of each NAL unit length prefix (1, 2 or 4).
    pub(crate) length_size: usize,
    pub(crate) sps: Vec<Bytes>,
    pub(crate) pps: Vec<Bytes>,
}

/// One parsed AVC video tag.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AvcPacket {
    Config(AvcConfig),
    /// A frame: its NAL units still length-prefixed (split with [`AvcConfig::nalus`]).
    Frame {
        keyframe: bool,
        composition_ms: i32,
        payload: Bytes,
    },
    EndOfSequence,
}

/// Parses a video tag body. Non-AVC codecs (HEVC, legacy codecs) are [`AvcError::NotAvc`].
pub(crate) fn parse(data: &Bytes) -> Result<AvcPacket, AvcError> {
    if data.len() < 5 {
        return Err(AvcError::Truncated);
    }
    let codec = data[0] & 0x0f;
    if codec != CODEC_AVC {
        return Err(AvcError::NotAvc(codec));
    }
    let keyframe = data[0] >> 4 == 1;
    // Sign-extend the 24-bit composition time.
    let composition_ms = (i32::from_be_bytes([data[2], data[3], data[4], 0])) >> 8;
    let payload = data.slice(5..);
    match data[1] {
        0 => Ok(AvcPacket::Config(AvcConfig::parse(&payload)?)),
        1 => Ok(AvcPacket::Frame {
            keyframe,
            composition_ms,
            payload,
        }),
        2 => Ok(AvcPacket::EndOfSequence),
        other => Err(AvcError::PacketType(other)),
    }
}

impl AvcConfig {
    /// Parses an `AVCDecoderConfigurationRecord`.
    pub(crate) fn parse(record: &Bytes) -> Result<Self, AvcError> {
        let byte = |i: usize| record.get(i).copied().ok_or(AvcError::Truncated);
        let length_size = usize::from(byte(4)? & 0x03) + 1;
        let mut at = 5;
        let sets = |at: &mut usize, count: usize| -> Result<Vec<Bytes>, AvcError> {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let len = usize::from(u16::from_be_bytes([byte(*at)?, byte(*at + 1)?]));
                let start = *at + 2;
                let end = start + len;
                if end > record.len() {
                    return Err(AvcError::Truncated);
                }
                out.push(record.slice(start..end));
                *at = end;
            }
            Ok(out)
        };
        let sps_count = usize::from(byte(at)? & 0x1f);
        at += 1;
        let sps = sets(&mut at, sps_count)?;
        let pps_count = usize::from(byte(at)?);
        at += 1;
        let pps = sets(&mut at, pps_count)?;
        Ok(Self {
            length_size,
            sps,
            pps,
        })
    }

    /// Splits a frame's length-prefixed NAL units; a length running past the end is an error
    /// (the whole frame is dropped rather than sent cut).
    pub(crate) fn nalus(&self, payload: &Bytes) -> Result<Vec<Bytes>, AvcError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < payload.len() {
            let prefix = payload
                .get(at..at + self.length_size)
                .ok_or(AvcError::Truncated)?;
            let len = prefix
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            let start = at + self.length_size;
            let end = start.checked_add(len).ok_or(AvcError::Truncated)?;
            if end > payload.len() {
                return Err(AvcError::Truncated);
            }
            if len > 0 {
                out.push(payload.slice(start..end));
            }
            at = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xda];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn record() -> Vec<u8> {
        let mut r = vec![1, 0x42, 0xc0, 0x1f, 0xff, 0xe1];
        r.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
        r.extend_from_slice(SPS);
        r.push(1);
        r.extend_from_slice(&(PPS.len() as u16).to_be_bytes());
        r.extend_from_slice(PPS);
        r
    }

    #[test]
    fn sequence_header_gives_parameter_sets() {
        let mut tag = vec![0x17, 0, 0, 0, 0];
        tag.extend(record());
        let AvcPacket::Config(config) = parse(&Bytes::from(tag)).unwrap() else {
            panic!("a config")
        };
        assert_eq!(config.length_size, 4);
        assert_eq!(config.sps, [Bytes::from_static(SPS)]);
        assert_eq!(config.pps, [Bytes::from_static(PPS)]);
        // Cut anywhere, it is an error, never a panic or a short set.
        let full = record();
        for cut in 0..full.len() {
            assert_eq!(
                AvcConfig::parse(&Bytes::copy_from_slice(&full[..cut])),
                Err(AvcError::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn frames_split_into_nal_units_with_signed_composition_time() {
        let config = AvcConfig::parse(&Bytes::from(record())).unwrap();
        let mut tag = vec![0x27, 1, 0xff, 0xff, 0xd8]; // inter frame, CTS -40
        tag.extend_from_slice(&[0, 0, 0, 2, 0x41, 0x9a, 0, 0, 0, 0, 0, 0, 0, 3, 0x01, 2, 3]);
        let AvcPacket::Frame {
            keyframe,
            composition_ms,
            payload,
        } = parse(&Bytes::from(tag)).unwrap()
        else {
            panic!("a frame")
        };
        assert!(!keyframe);
        assert_eq!(composition_ms, -40);
        let nalus = config.nalus(&payload).unwrap();
        assert_eq!(nalus, [&[0x41, 0x9a][..], &[0x01, 2, 3][..]]);
        assert_eq!(
            config.nalus(&Bytes::from_static(&[0, 0, 0, 9, 1])),
            Err(AvcError::Truncated)
        );
        assert_eq!(
            config.nalus(&Bytes::from_static(&[0, 0])),
            Err(AvcError::Truncated)
        );
    }

    #[test]
    fn other_codecs_and_short_tags_are_refused() {
        assert_eq!(
            parse(&Bytes::from_static(&[0x1c, 0, 0, 0, 0])),
            Err(AvcError::NotAvc(12))
        );
        assert_eq!(
            parse(&Bytes::from_static(&[0x17, 0])),
            Err(AvcError::Truncated)
        );
        assert_eq!(
            parse(&Bytes::from_static(&[0x17, 2, 0, 0, 0])),
            Ok(AvcPacket::EndOfSequence)
        );
    }
}
