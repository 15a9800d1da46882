//! The usage crate's integration tests, one module per former test file, linked as one binary
//! (`cargo nextest run -p cloudphone-usage`; one file: `-E 'test(/^signatures::/)'`).

// Test code: a failed unwrap is a failed test (clippy allows it only inside `#[test]` fns).
#![allow(clippy::unwrap_used)]

mod classes;
mod metering;
mod signatures;
mod time_rules;
