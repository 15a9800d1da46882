//! Test support: real daemons on ephemeral ports, a throwaway PostgreSQL, HTTP helpers and
//! GStreamer clients of the live edge.
//! Never a dependency of production code.
//!
//! # Layout
//! - [`browser`]: headless Chromium driven through `tests/browser/viewer.mjs`, for page tests.
//! - [`fleet`]: control + node processes and a public-API client, for end-to-end tests.
//! - [`live`]: GStreamer clients of the live edge: an RTMP push, FLV/RTMP/HLS/WHEP players
//!   counting decoded frames, webrtcbin as a receiving peer.
//! - [`netns`]: several hosts on one machine (network namespaces on a bridge), partitions.
//! - [`postgres`]: a fresh database on the suite's PostgreSQL server (started here if needed).
//! - [`process`]: building and spawning the workspace's binaries, killed on drop.
#![forbid(unsafe_code)]
// Test support: a failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod fleet;
pub mod live;
pub mod netns;
pub mod postgres;
pub mod process;

/// A TCP port that was free a moment ago on 127.0.0.1 (another process may take it before it
/// is used). Only for servers that cannot report the port they bound (PostgreSQL, coturn) and
/// for a port nobody should listen on; our daemons bind port 0 and report it (`fleet`).
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

/// The interface of the host's default IPv4 route (`/proc/net/route`), e.g. `eth0`. Test
/// nodes and viewers gather ICE candidates only there: other tests create and delete veth and
/// TUN devices, and a pair on one of those died with it (media stopped mid-test).
pub fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"00000000")).then(|| fields[0].to_owned())
    })
}

/// [`default_route_interface`] as a node's `[webrtc] ice_interfaces` (empty when none).
pub fn ice_interfaces() -> Vec<String> {
    default_route_interface().into_iter().collect()
}
