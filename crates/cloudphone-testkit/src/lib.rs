//! Test support: start the real daemons on ephemeral ports and talk to them.
#![forbid(unsafe_code)]
