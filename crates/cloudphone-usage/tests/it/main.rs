//! The usage crate's integration tests, one module per former test file, linked as one binary
//! (`cargo nextest run -p cloudphone-usage`; one file: `-E 'test(/^signatures::/)'`).

mod classes;
mod metering;
mod signatures;
mod time_rules;
