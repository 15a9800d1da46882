//! Bitrate adaptation (placeholder until the media work lands).
