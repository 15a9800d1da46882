//! The video-surveillance API of seed 003 (Alibaba VS, Version `2018-12-12`) as its clients
//! speak it: the common parameters, the error codes with their HTTP statuses and body, the
//! three signature schemes real clients send, each Action's parameters parsed into a typed
//! command, and the answers' field names. Pure: time is an input, nothing here does I/O.
//!
//! # Layout
//! - [`error`]: [`error::VsError`], every code this API answers, its status and the body.
//! - [`sign`]: the document's HMAC-SHA1 scheme (GET, and POST as the SDK's `v2` sends it) and
//!   the SDK's default `ACS3-HMAC-SHA256`.
//! - [`request`]: the common parameters, [`request::Action`], and each Action's typed command.
//! - [`model`]: the answers' JSON shapes.
//! - [`timefmt`]: the document's `YYYY-MM-DDThh:mm:ssZ` and the ±15 min window.
#![forbid(unsafe_code)]

pub mod error;
pub mod model;
pub mod request;
pub mod sign;
pub mod timefmt;

/// The one Version this API answers.
pub const VERSION: &str = "2018-12-12";
