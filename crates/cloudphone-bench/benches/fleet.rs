//! fleet bench.
fn main() {}
