//! The live bench's server under test: a real `cloudphone-node` process with `[live]
//! rtmp_listen`, enrolled with a real `cloudphone-control` (a throwaway deployment, as the
//! fleet and api benches start it), its stream admitted through the node's gRPC
//! `PutLiveStream` with a control-role certificate exactly as control sends it, and every
//! push/play URL signed with `cloudphone_core::play_auth::sign` as `DescribeStreamURL` signs
//! them. The node's process (HLS runs GStreamer inside it) is the server whose CPU is measured.

use std::time::Duration;

use anyhow::{Context, Result};
use cloudphone_core::play_auth;
use cloudphone_proto::node_v1::{self as pb, node_agent_client::NodeAgentClient};
use cloudphone_testkit::fleet::{Fleet, NODE_ID};

/// The stream the bench pushes: a 16-digit id as the document's, under the default App.
pub const STREAM_ID: &str = "1624428150544871";
pub const APP: &str = "live";
const GROUP_ID: &str = "1624428150544000";
const PUSH_KEY: &str = "bench-push-key";
const PLAY_KEY: &str = "bench-play-key";
/// Push URLs never expire in practice (control signs them far into the future).
const FAR_FUTURE: i64 = 4_000_000_000;

/// Control + one synthetic node serving the live edge; both stop when this drops.
pub struct LiveNode {
    fleet: Fleet,
    rtmp_base: String,
    http_base: String,
    /// `debug` or `release`: how the node was built.
    pub profile: &'static str,
}

/// Which build of the node the live bench measures: `CLOUDPHONE_BENCH_LIVE_NODE=debug` or
/// `release`; unset, a release node (nginx is built with -O2: a debug node would lose the
/// comparison to its own unoptimised code), except in a smoke run, which only checks that
/// everything works and should not wait for a release build.
pub fn node_profile(smoke: bool) -> &'static str {
    match std::env::var("CLOUDPHONE_BENCH_LIVE_NODE").as_deref() {
        Ok("release") => "release",
        Ok("debug") => "debug",
        _ if smoke => crate::api::daemon_profile(),
        _ => "release",
    }
}

/// The node binary of `profile`: testkit's debug build, or `target/release/cloudphone-node`,
/// built here (the node alone) unless a runner already built it (`CLOUDPHONE_TEST_PREBUILT`).
fn node_binary(profile: &str) -> Result<std::path::PathBuf> {
    const NODE: &str = "cloudphone-node";
    if profile != "release" {
        return crate::api::daemon_binary(NODE, profile);
    }
    let root = cloudphone_testkit::process::workspace_root();
    if std::env::var_os("CLOUDPHONE_TEST_PREBUILT").is_none() {
        let built = std::process::Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "--quiet", "--release", "-p", NODE, "--bin", NODE])
            .status()
            .is_ok_and(|s| s.success());
        anyhow::ensure!(built, "building the release node failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join(NODE))
}

impl LiveNode {
    /// Starts control and the node (daemon builds of [`crate::api::daemon_profile`]), waits for
    /// the node to be up, then admits the bench's stream on it with every output allowed.
    pub async fn start() -> Result<LiveNode> {
        Self::start_as(crate::api::daemon_profile()).await
    }

    /// [`LiveNode::start`] with the node of `profile` (`debug` or `release`); control, which
    /// no player reaches, stays the build of [`crate::api::daemon_profile`].
    pub async fn start_as(profile: &'static str) -> Result<LiveNode> {
        let control_bin =
            crate::api::daemon_binary("cloudphone-control", crate::api::daemon_profile())?;
        let node_bin = node_binary(profile)?;
        let rtmp_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut fleet = Fleet::new(None, "synthetic");
        fleet.node_extra = format!("[live]\nrtmp_listen = \"127.0.0.1:{rtmp_port}\"\n");
        fleet.spawn_control(&control_bin);
        fleet.wait_healthy(&fleet.api.clone()).await;
        fleet.spawn_node(&node_bin);
        fleet.wait_node("up", Duration::from_secs(30)).await;
        let node = LiveNode {
            rtmp_base: format!("rtmp://127.0.0.1:{rtmp_port}"),
            http_base: format!("http://127.0.0.1:{}", fleet.node_ports.1),
            fleet,
            profile,
        };
        node.admit().await?;
        Ok(node)
    }

    /// `PutLiveStream` over mTLS with a control-role certificate. Control sends the whole set
    /// (`SyncLiveStreams`) only when the node's report stream opens, which happened before
    /// [`Fleet::wait_node`] returned, and it knows no streams, so nothing undoes this.
    async fn admit(&self) -> Result<()> {
        let (cert, key, ca) = self.fleet.control_client_cert();
        let name = cloudphone_proto::identity::node_name(NODE_ID).context("node name")?;
        let endpoint = format!("http://127.0.0.1:{}", self.fleet.node_ports.0);
        let channel = Fleet::tls_channel(&endpoint, &name, &ca, Some((&cert, &key)));
        NodeAgentClient::new(channel)
            .put_live_stream(pb::LiveStream {
                stream_id: STREAM_ID.into(),
                app: APP.into(),
                tenant_id: "CIDC-U-bench".into(),
                group_id: GROUP_ID.into(),
                admitted: true,
                out_protocols: ["flv", "hls", "rtmp", "webrtc"].map(Into::into).to_vec(),
                push_key: PUSH_KEY.into(),
                play_keys: vec![PLAY_KEY.into()],
            })
            .await
            .context("PutLiveStream")?;
        Ok(())
    }

    /// The node daemon's process id (its children count with it).
    pub fn pid(&self) -> u32 {
        self.fleet
            .node
            .as_ref()
            .map(|d| d.pid().unsigned_abs())
            .unwrap_or_default()
    }

    fn signed(base: &str, path: &str, key: &str, expires: i64) -> String {
        let auth = play_auth::sign(path, key, expires, "b3nch", "0");
        format!("{base}{path}?auth_key={auth}")
    }

    fn play(base: &str, path: &str) -> String {
        let expires = cloudphone_node::unix_ms() as i64 / 1000 + 3600;
        Self::signed(base, path, PLAY_KEY, expires)
    }

    pub fn push_url(&self) -> String {
        Self::signed(
            &self.rtmp_base,
            &format!("/{APP}/{STREAM_ID}"),
            PUSH_KEY,
            FAR_FUTURE,
        )
    }

    /// The bench's `--push/--rtmp/--flv/--hls/--whep` arguments for this node.
    pub fn url_args(&self) -> Vec<String> {
        let p = format!("/{APP}/{STREAM_ID}");
        vec![
            "--push".into(),
            self.push_url(),
            "--rtmp".into(),
            Self::play(&self.rtmp_base, &p),
            "--flv".into(),
            Self::play(&self.http_base, &format!("{p}.flv")),
            "--hls".into(),
            Self::play(&self.http_base, &format!("{p}.m3u8")),
            "--whep".into(),
            Self::play(&self.http_base, &format!("{p}/whep")),
        ]
    }

    /// The node's log, for a failure's message.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.fleet.path("node.log")
    }
}
