//! FLV file framing (Adobe FLV v10.1, annex E) around the hub's tags, for HTTP-FLV players:
//! the 9-byte header and `PreviousTagSize0`, then each tag with its 11-byte header and trailing
//! size. The tag bodies pass through untouched.

use bytes::{BufMut, Bytes, BytesMut};

use super::hub::Tag;

/// The file header and `PreviousTagSize0`; `audio` sets the header's audio flag, which
/// demuxers use to decide whether to wait for an audio stream.
pub(crate) fn header(audio: bool) -> Bytes {
    let flags = if audio { 0x05 } else { 0x01 };
    Bytes::from(vec![b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0])
}

/// One tag as it sits in a file, followed by its `PreviousTagSize` (players share it: see
/// [`Tag::flv`]).
pub(crate) fn tag(tag: &Tag) -> Bytes {
    let mut out = BytesMut::new();
    put_tag(&mut out, tag);
    out.freeze()
}

/// Appends one tag as it sits in a file, followed by its `PreviousTagSize`.
pub(crate) fn put_tag(out: &mut BytesMut, tag: &Tag) {
    put_tag_at(out, tag, tag.timestamp_ms);
}

/// [`put_tag`] with another timestamp (HLS rebases a player's stream to start at 0).
pub(crate) fn put_tag_at(out: &mut BytesMut, tag: &Tag, timestamp_ms: u32) {
    let len = tag.data.len();
    out.reserve(11 + len + 4);
    out.put_u8(tag.kind as u8);
    // The data size field is 24 bits; an RTMP message cannot be longer.
    out.put_uint((len & 0x00ff_ffff) as u64, 3);
    out.put_uint(u64::from(timestamp_ms & 0x00ff_ffff), 3);
    out.put_u8((timestamp_ms >> 24) as u8);
    out.put_uint(0, 3); // StreamID, always 0
    out.extend_from_slice(&tag.data);
    out.put_u32(((11 + len) & 0xffff_ffff) as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::hub::TagKind;

    #[test]
    fn frames_tags_as_the_spec_lays_them_out() {
        assert_eq!(
            &header(false)[..],
            b"FLV\x01\x01\x00\x00\x00\x09\x00\x00\x00\x00"
        );
        assert_eq!(header(true)[4], 5);
        let t = Tag::new(
            TagKind::Video,
            0x0102_0304,
            Bytes::from_static(&[0x17, 1, 0, 0, 0]),
        );
        assert_eq!(
            &tag(&t)[..],
            &[
                9, 0, 0, 5, 2, 3, 4, 1, 0, 0, 0, 0x17, 1, 0, 0, 0, 0, 0, 0, 16
            ]
        );
    }
}
