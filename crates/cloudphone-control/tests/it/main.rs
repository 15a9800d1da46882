//! Control's integration tests against real daemons, one module per former test file, linked as
//! one binary: one link instead of ten is most of what a cold build of the tests costs.
//! `cargo nextest run -p cloudphone-control --test it -E 'test(/^usage_sdk::/)'` runs one module.
//!
//! # Layout
//! - [`support`]: the clock, Huawei's time format, streaming domains and a viewer, shared by
//!   the usage modules (`console_usage`, `usage_sdk`, `usage_rules`).
//! - one module per feature: `backup`, `console_usage`, `fleet`, `install_app`, `node_trust`,
//!   `operations`, `schemathesis`, `seed_examples`, `shutdown`, `store`, `usage_rules`, `usage_sdk`.

// Test code: a failed unwrap is a failed test (clippy allows it only inside `#[test]` fns).
#![allow(clippy::unwrap_used)]

mod support;

mod backup;
mod console_usage;
mod fleet;
mod install_app;
mod node_trust;
mod operations;
mod schemathesis;
mod seed_examples;
mod shutdown;
mod store;
mod usage_rules;
mod usage_sdk;
