//! cloudphone-bench CLI.
fn main() {}
