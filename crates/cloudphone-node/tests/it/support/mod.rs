//! Helpers shared by the node's test modules; each module uses a part of them.

pub(crate) mod pipeline;
pub(crate) mod streaming;
pub(crate) mod x11;
