//! density bench.
fn main() {}
