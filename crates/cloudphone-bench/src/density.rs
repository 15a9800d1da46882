//! density (in progress).
