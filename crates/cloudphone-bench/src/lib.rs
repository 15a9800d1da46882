//! Benchmarks of the streaming path, the fleet and the API: encode latency against the bare
//! encoder, glass-to-glass latency and time to first frame through a real node, encoder
//! density, instance launch through the public API, the tenant API under a load generator, and
//! the live edge (RTMP in; RTMP/FLV/HLS/WHEP out) against nginx-rtmp.
//! The `benches/*.rs` targets run these and write their part of the results;
//! `cloudphone-bench report` turns the parts into `benches/results/{latest.json,REPORT.md,*.png}`.

pub mod api;
pub mod clock;
pub mod density;
pub mod encode;
pub mod fleet;
pub mod glass;
pub mod glass_netem;
pub mod glass_report;
pub mod glass_viewer;
pub mod impair;
pub mod live;
pub mod live_nginx;
pub mod live_node;
pub mod live_report;
pub mod live_whep;
pub mod parts;
mod procfs;
pub mod report;
pub mod stats;
pub mod viewer;
pub mod viewer_chromium;
pub mod viewer_webrtcbin;
