//! The tenant-facing REST contract: wire types, error codes and validation, exactly as the
//! KooPhone/CloudDevice and IAM documents define them.
//!
//! This crate imports neither axum nor tonic: handlers in `cloudphone-control` parse into these
//! types, and map [`error::ApiError`] onto HTTP through [`status`].
//!
//! # Layout
//! - [`apps`]: InstallApp's body, rules and answer.
//! - [`error`]: every `KOOPHONE.API.*` code and the error body.
//! - [`iam`]: `POST /v3/auth/tokens` request and response bodies.
//! - [`instances`]: `/v1/instances/*` bodies and query parameters, with their validation.
//! - [`management`]: commands, tasks, status, reset, reboot, assignment, deletion, device tokens.
//! - [`status`]: the 20 operations and the one rule giving each code its HTTP status and body
//!   on each operation's page.
//! - [`timefmt`]: every text form of time the APIs speak (the seeds' `yyyy-MM-dd HH:mm:ss`, IAM's,
//!   the live edge's `YYYY-MM-DDThh:mm:ssZ`).
#![forbid(unsafe_code)]

pub mod apps;
pub mod error;
pub mod iam;
pub mod instances;
pub mod management;
pub mod status;
pub mod timefmt;
