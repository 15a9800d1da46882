//! The bench crate's integration tests, one module per former test file, linked as one binary
//! (`cargo nextest run -p cloudphone-bench --test it -E 'test(/^smoke::/)'` runs one of them).

// Test code: a failed unwrap is a failed test (clippy allows it only inside `#[test]` fns).
#![allow(clippy::unwrap_used)]

mod impair;
mod live;
mod smoke;
