//! GStreamer encode pipelines (placeholder until the media work lands).
