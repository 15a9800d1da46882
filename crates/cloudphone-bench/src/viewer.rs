//! viewer (in progress).
