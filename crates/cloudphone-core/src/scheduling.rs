//! Placement of new instances onto nodes.
