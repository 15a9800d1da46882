//! What the HLS and WHEP outputs share: their error (and the HTTP status each maps to) and the
//! stream id check.

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
}
