//! The bench crate's integration tests, one module per former test file, linked as one binary
//! (`cargo nextest run -p cloudphone-bench --test it -E 'test(/^smoke::/)'` runs one of them).

mod impair;
mod smoke;
