//! What the HLS and WHEP outputs share: their error (and the HTTP status each maps to), stream id
//! checks, and writing hub tags back into an FLV byte stream for GStreamer's `flvdemux`.

use crate::live::hub::Tag;

/// Why an HLS or WHEP request cannot be served. The router maps them to HTTP statuses:
/// - `NotFound` → `404`: nobody publishes the stream, the HLS segment or WHEP session does not
///   exist (or is gone), or the name is not one this node ever writes (never a path).
/// - `NotReady` → `503` with `Retry-After: 1`: the stream is published but has nothing playable
///   yet (no first HLS segment within the wait, no AVC sequence header yet).
/// - `Unsupported` → `406`: the publisher's codec cannot be sent as asked (WHEP needs H.264; HLS
///   takes H.264 video and AAC audio).
/// - `BadOffer` → `400`: the WHEP body is not an SDP offer this node can answer.
/// - `Internal` → `500`: GStreamer or the WebRTC stack failed on the node's side.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LiveOutputError {
    #[error("not found")]
    NotFound,
    #[error("the stream has nothing playable yet")]
    NotReady,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// A stream id the outputs accept: the ids control issues are 16 decimal digits; anything with
/// characters outside `[0-9A-Za-z_-]` (a path separator, `..`) or absurdly long is refused
/// before it names a directory.
pub(crate) fn valid_stream_id(stream_id: &str) -> bool {
    !stream_id.is_empty()
        && stream_id.len() <= 64
        && stream_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The FLV file header and the first `PreviousTagSize0` (always 0).
pub(crate) fn flv_header(audio: bool, video: bool) -> [u8; 13] {
    let flags = (u8::from(audio) << 2) | u8::from(video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// One FLV tag (11-byte header, body, `PreviousTagSize`) with `timestamp_ms` as its timestamp.
pub(crate) fn flv_tag(tag: &Tag, timestamp_ms: u32) -> Vec<u8> {
    let len = tag.data.len();
    let mut out = Vec::with_capacity(11 + len + 4);
    out.push(tag.kind as u8);
    // DataSize is 24 bits: an RTMP message is never larger (its length field is 24 bits too).
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    let ts = timestamp_ms.to_be_bytes();
    out.extend_from_slice(&[ts[1], ts[2], ts[3], ts[0]]);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&tag.data);
    out.extend_from_slice(&((11 + len) as u32).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_that_could_name_a_path_are_refused() {
        assert!(valid_stream_id("1624428150544871"));
        for bad in ["", "..", "a/b", "../1", "a b", "x.m3u8", &"9".repeat(65)] {
            assert!(!valid_stream_id(bad), "{bad}");
        }
    }

    #[test]
    fn header_flags() {
        assert_eq!(flv_header(false, true)[4], 1);
        assert_eq!(flv_header(true, true)[4], 5);
        assert_eq!(&flv_header(true, false)[..4], b"FLV\x01");
    }
}
