//! The gRPC contract between `cloudphone-control` (client) and `cloudphone-node` (server),
//! generated from `proto/cloudphone/node/v1/node.proto`. Only this crate knows that wire format.
#![forbid(unsafe_code)]

/// Version 1 of the node API.
pub mod node_v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cloudphone.node.v1");
}
