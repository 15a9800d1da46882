//! The gRPC contract between `cloudphone-control` and `cloudphone-node`, generated from
//! `proto/cloudphone/node/v1/node.proto`: `NodeAgent` (served by each node, called by control)
//! and `ControlPlane` (served by control on its node-facing listener, called by nodes to
//! announce themselves). Only this crate knows that wire format.
#![forbid(unsafe_code)]

/// Version 1 of the node API.
pub mod node_v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cloudphone.node.v1");
}

pub mod identity;
