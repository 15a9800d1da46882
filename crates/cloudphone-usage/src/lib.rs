//! Transcode usage, pure: metering math, the two documents' time rules, resolution classes,
//! the Huawei (SDK-HMAC-SHA256) and Volcengine (HMAC-SHA256) request signatures, and the wire
//! types of Huawei Live `GET /v2/{project_id}/stats/transcode` (seed 004) and Volcengine
//! `DescribeLiveTranscodeData` (seed 002). No I/O and no clock: time is always an argument.
//!
//! - [`sign`]: signature verification for both schemes.
//! - [`class`]: our encoder runs → each API's transcode class.
//! - [`meter`]: usage records → merged sessions → per-bucket milliseconds.
//! - [`huawei`], [`volc`]: query rules, errors and response bodies.
//! - [`ratelimit`]: the Volcengine per-user request budget.
//! - [`admit`]: which times of a node's record control believes.
#![forbid(unsafe_code)]

pub mod admit;
pub mod class;
pub mod huawei;
pub mod meter;
pub mod ratelimit;
pub mod sign;
pub mod volc;

/// Milliseconds per minute, hour and day.
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;
