//! glass bench.
fn main() {}
