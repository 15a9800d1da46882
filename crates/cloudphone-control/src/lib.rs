//! The control plane: tenant REST API, IAM, durable state and scheduling; a gRPC client of nodes.
#![forbid(unsafe_code)]

pub mod store;
