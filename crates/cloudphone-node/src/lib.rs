//! The per-host agent: runs phone instances through a runtime and serves control over gRPC.
//!
//! # Layout
//! - [`runtime`]: the `Runtime` trait and its x11 / synthetic / android implementations.
//! - [`instances`]: the instance manager: persistence under the state dir, lifecycle, re-adoption.
#![forbid(unsafe_code)]

pub mod instances;
pub mod runtime;
