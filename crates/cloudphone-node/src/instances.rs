//! Instance manager.
