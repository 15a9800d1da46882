//! Test support: real daemons on ephemeral ports, a throwaway PostgreSQL, and HTTP helpers.
//! Never a dependency of production code.
//!
//! # Layout
//! - [`browser`]: headless Chromium driven through `tests/browser/viewer.mjs`, for page tests.
//! - [`fleet`]: control + node processes and a public-API client, for end-to-end tests.
//! - [`postgres`]: a fresh database on the suite's PostgreSQL server (started here if needed).
//! - [`process`]: building and spawning the workspace's binaries, killed on drop.
#![forbid(unsafe_code)]

pub mod browser;
pub mod fleet;
pub mod postgres;
pub mod process;

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
