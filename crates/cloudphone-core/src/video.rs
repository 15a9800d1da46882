//! The SetVideoConfig matrix (placeholder until the media work lands).
