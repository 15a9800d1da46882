//! Instance lifecycle states and transitions.
