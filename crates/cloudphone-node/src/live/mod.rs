//! The live edge (seed 003): RTMP ingest of the streams control admitted, fanned out to RTMP,
//! HTTP-FLV, HLS and WHEP players. Media stays on the node; control only says what is admitted.
//!
//! # Layout
//! - [`hub`]: one publisher to many players per stream, in FLV tags, with what a late joiner
//!   needs first (metadata, sequence headers, the current GOP).

pub(crate) mod hub;
// HLS and WHEP outputs (helper hlswhep).
pub(crate) mod avc;
pub(crate) mod hls;
pub(crate) mod output;
#[cfg(test)]
pub(crate) mod testfeed;
pub(crate) mod whep;
