//! Control's integration tests against real daemons, one module per former test file, linked as
//! one binary: one link instead of ten is most of what a cold build of the tests costs.
//! `cargo nextest run -p cloudphone-control --test it -E 'test(/^usage_sdk::/)'` runs one module.
//!
//! # Layout
//! - [`support`]: calls and their checks every module makes (`ok`, `get`, `check_refusals` over
//!   a table of refused calls, ListInstances with a chosen request id); the clock, Huawei's time
//!   format, streaming domains and a viewer, shared by the usage modules (`console_usage`,
//!   `usage_sdk`, `usage_rules`); the venv with the official SDKs (`usage_sdk`, `aksk`, `live_api`).
//! - one module per feature: `aksk`, `backup`, `console_live`, `console_usage`, `faults`, `fleet`,
//!   `health`, `hostile_input`, `install_app`, `lifecycle_rules`, `live_api`, `live_e2e`,
//!   `live_store`, `node_trust`, `operations`, `pages`, `reconnect`, `replicas`, `roles`,
//!   `schemathesis`, `sealing_key`, `seed_examples`, `shutdown`, `store`, `tls`,
//!   `usage_rules`, `usage_sdk`.

// Test code: a failed unwrap is a failed test (clippy allows it only inside `#[test]` fns).
#![allow(clippy::unwrap_used)]

mod support;

mod aksk;
mod backup;
mod console_live;
mod console_usage;
mod faults;
mod fleet;
mod health;
mod hostile_input;
mod install_app;
mod leader;
mod lifecycle_rules;
mod live_api;
mod live_e2e;
mod live_store;
mod node_trust;
mod operations;
mod pages;
mod reconnect;
mod replicas;
mod roles;
mod schemathesis;
mod sealing_key;
mod seed_examples;
mod shutdown;
mod signaling_load;
mod store;
mod tls;
mod usage_rules;
mod usage_sdk;
