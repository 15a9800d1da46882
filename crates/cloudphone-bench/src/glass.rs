//! Glass-to-glass latency and time to first frame through a real node: an in-process node
//! with the x11 runtime whose instance "app" is the clock writer ([`crate::clock`]), the real
//! signaling and WebRTC path, and three receivers reading the clock from decoded frames, each
//! in its own process (`cloudphone-bench glass-viewer`, [`crate::glass_viewer`]): the webrtc-rs
//! viewer ([`crate::viewer`]), GStreamer `webrtcbin` ([`crate::viewer_webrtcbin`]) and headless
//! Chromium ([`crate::viewer_chromium`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cloudphone_core::video::{Codec, Definition, NetworkType, VideoConfig};
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::{EncodePipeline, EncoderSettings};
use cloudphone_node::testing::{InProcessNode, Listeners};
use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::Hello;
use cloudphone_testkit::process::InstanceProcessGuard;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::clock;
use crate::glass_viewer::{Measured, Receiver, ViewerArgs, run_subprocess};
use crate::stats::{Summary, summarize};
use crate::viewer::Viewer;
use crate::viewer_webrtcbin::DEFAULT_LATENCY_MS;

fn webrtc_rs() -> Receiver {
    Receiver::WebrtcRs
}

/// One glass-to-glass cell: one profile into one receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GlassCell {
    pub label: String,
    #[serde(default = "webrtc_rs")]
    pub receiver: Receiver,
    pub codec: Codec,
    pub definition: Definition,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub network: String,
    /// Screen clock → decoded frame (Chromium: → its expected display time), per frame with a
    /// readable clock.
    pub glass_ms: Summary,
    /// The receiver's own share: webrtc-rs, frame's first packet into the GStreamer pipeline →
    /// decoded; webrtcbin, first packet into the jitter buffer → decoded; Chromium, last packet
    /// received → expected display.
    pub receiver_ms: Summary,
    /// Frames decoded (Chromium: presented) in the window.
    pub frames: u64,
    pub unreadable: u64,
    /// Chromium: frames decoded but never presented.
    #[serde(default)]
    pub skipped: u64,
    /// hello sent → first decoded frame, encoder start included.
    #[serde(default)]
    pub first_frame_ms: f64,
    /// The node's process over the window (capture, encode, SRTP, this bench's runtime; Xvfb
    /// and the clock are children, not counted), % of one core.
    pub cpu_percent: f64,
    /// The receiver's process tree over the window, % of one core.
    #[serde(default)]
    pub receiver_cpu_percent: f64,
    /// Further per-frame figures a receiver has (Chromium: `received`, `presented`,
    /// `callback`, `decode`, `receive_to_presented`, `presented_to_display`).
    #[serde(default)]
    pub extra: BTreeMap<String, Summary>,
    #[serde(default)]
    pub notes: Vec<String>,
    pub samples: Vec<f64>,
}

/// The sender's own stages on the same display, from the pipeline's probes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SenderStages {
    /// Capture caps filter → the frame's last RTP packet.
    pub capture_to_rtp_ms: Summary,
    /// Encoder in → out.
    pub encode_ms: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GlassResults {
    pub smoke: bool,
    pub cells: Vec<GlassCell>,
    /// webrtcbin's jitter-buffer `latency`, ms.
    #[serde(default)]
    pub webrtcbin_latency_ms: u32,
    /// Profile × receiver pairs not measured, and why.
    #[serde(default)]
    pub not_run: Vec<(String, String)>,
    /// hello sent → first decoded frame (each trial a new viewer and a fresh encoder).
    pub ttff_ms: Summary,
    pub ttff_samples: Vec<f64>,
    pub sender_720p_h264: SenderStages,
    pub draw_period_ms: f64,
    pub failures: Vec<(String, String)>,
    /// How the network profiles were applied ([`crate::glass_netem`]), or why not.
    pub netem: String,
    /// H.264 720P30 through the impaired link, per network_type profile and receiver.
    #[serde(default)]
    pub netem_cells: Vec<GlassCell>,
}

/// A node running in this process with the x11 runtime ([`InProcessNode`], shared with the
/// node's tests), with its state dir; its fields (`grpc`, `http`, `ws_url`) through `Deref`.
pub struct Node {
    inner: InProcessNode,
    _guard: InstanceProcessGuard,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = InProcessNode;

    fn deref(&self) -> &InProcessNode {
        &self.inner
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut InProcessNode {
        &mut self.inner
    }
}

/// The bench binary's name inside an instance (`[sandbox] ro_binds`).
const BENCH_BIN: &str = "cloudphone-bench";

impl Node {
    /// Starts a node whose x11 instances run `bench_exe clock` (the clock "app").
    pub async fn start(bench_exe: &Path) -> Result<Node> {
        Self::start_on(bench_exe, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// [`Node::start`] with signaling (HTTP) on `http_ip`, e.g. an impaired link's root-side
    /// address so that a viewer in the link's namespace reaches it; gRPC stays on loopback.
    pub async fn start_on(bench_exe: &Path, http_ip: std::net::IpAddr) -> Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("cp-bench-")
            .tempdir_in("/var/tmp")?;
        let listeners = Listeners::bind(http_ip).await?;
        let mut config = listeners.config("bench", dir.path())?;
        config.runtime = "x11".into();
        // Away from the test suites' displays (200–700).
        config.x11.first_display = 900 + std::process::id() % 50 * 4;
        // The sandbox hides /tmp, /root and /home, where checkouts live: the binary goes in
        // read-only through `[sandbox] ro_binds`, at the same path wherever it was built.
        config
            .sandbox
            .ro_binds
            .insert(BENCH_BIN.into(), bench_exe.to_path_buf());
        config.x11.launcher = format!(
            "exec {}/{BENCH_BIN} clock",
            cloudphone_node::runtime::sandbox::RO_BIN_DIR
        );
        Ok(Node {
            inner: InProcessNode::launch(config, listeners, Duration::from_secs(20)).await?,
            _guard: InstanceProcessGuard(dir.path().to_path_buf()),
            dir,
        })
    }

    pub async fn create_instance(&mut self, id: &str, width: u32, height: u32) -> Result<()> {
        self.inner
            .create_running((id, "bench"), (width, height), Duration::from_secs(30))
            .await
    }

    /// The X display the instance got.
    pub fn display_of(&self, id: &str) -> Result<String> {
        let path = self.dir.path().join("instances").join(id).join("pids.json");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let n = v["display"].as_u64().context("pids.json has no display")?;
        Ok(format!(":{n}"))
    }

    pub async fn start_session(
        &mut self,
        instance: &str,
        device_id: &str,
        token: &str,
    ) -> Result<()> {
        self.grpc
            .start_session(pb::StartSessionRequest {
                instance_id: instance.into(),
                device_token_sha256: hex::encode(sha2::Sha256::digest(token.as_bytes())),
                expires_at_unix_ms: cloudphone_node::unix_ms() + 3_600_000,
                user_id: "bench".into(),
                tenant_id: "bench".into(),
                device_id: device_id.into(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    pub async fn shutdown(mut self) -> Result<()> {
        self.inner.stop(Duration::from_secs(30)).await
    }
}

fn hello(device: &str, token: &str, codec: Codec, definition: Definition) -> Hello {
    Hello {
        device_id: device.into(),
        device_token: token.into(),
        network_type: NetworkType::Wifi,
        encoding_type: codec,
        definition,
    }
}

/// What the node streams in a cell: the hello's codec, definition and network type (the row
/// of the node's video matrix).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stream {
    pub(crate) codec: Codec,
    pub(crate) definition: Definition,
    pub(crate) network: NetworkType,
}

/// How long a cell's receiver runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// After the first frame, before measuring (start-up).
    pub(crate) skip: Duration,
    /// The measuring window.
    pub(crate) seconds: Duration,
    /// hello → first frame before the receiver gives up.
    pub(crate) first_frame: Duration,
    /// On top of `skip + seconds` before the whole run is given up.
    pub(crate) slack: Duration,
}

impl Window {
    /// `skip`, `seconds`, `first_frame` and `slack`, in that order, in milliseconds.
    pub(crate) fn from_ms(skip: u64, seconds: u64, first_frame: u64, slack: u64) -> Window {
        Window {
            skip: Duration::from_millis(skip),
            seconds: Duration::from_millis(seconds),
            first_frame: Duration::from_millis(first_frame),
            slack: Duration::from_millis(slack),
        }
    }
}

impl Node {
    /// Grants device `name` a session on `instance` and runs `receiver` on it as a
    /// `glass-viewer` subprocess of `bench_exe`, behind `prefix` (e.g. `ip netns exec <ns>`).
    pub(crate) async fn view(
        &mut self,
        prefix: &[&str],
        bench_exe: &Path,
        (instance, name): (&str, &str),
        receiver: Receiver,
        stream: Stream,
        window: Window,
    ) -> Result<Measured> {
        let token = format!("token-{name}");
        self.start_session(instance, name, &token).await?;
        let args = ViewerArgs {
            receiver,
            signaling: self.ws_url.clone(),
            device_id: name.to_owned(),
            device_token: token,
            codec: stream.codec,
            definition: stream.definition,
            network: stream.network,
            skip_secs: window.skip.as_secs_f64(),
            seconds: window.seconds.as_secs_f64(),
            jitter_ms: DEFAULT_LATENCY_MS,
            first_frame_timeout_secs: window.first_frame.as_secs_f64(),
        };
        let mut argv: Vec<String> = prefix.iter().map(|s| (*s).to_owned()).collect();
        argv.push(bench_exe.display().to_string());
        argv.extend(args.to_argv());
        run_subprocess(&argv, window.skip + window.seconds + window.slack).await
    }
}

/// Streams one profile into one receiver (a `glass-viewer` subprocess) for `window`, and reads
/// the clock.
async fn glass_cell(
    node: &mut Node,
    bench_exe: &Path,
    (instance, n): (&str, usize),
    (codec, definition): (Codec, Definition),
    receiver: Receiver,
    window: Window,
) -> Result<GlassCell> {
    let stream = Stream {
        codec,
        definition,
        network: NetworkType::Wifi,
    };
    let name = format!("glass-{n}");
    let m = node
        .view(&[], bench_exe, (instance, &name), receiver, stream, window)
        .await?;
    GlassCell::from_run(m, receiver, stream, "loopback".into())
}

/// Files a cell's outcome under `label`: printed (`line`) and kept, or a failure; then gives
/// the node time to notice the viewer left and stop the encoder.
pub(crate) async fn file_cell(
    outcome: Result<GlassCell>,
    label: String,
    line: impl Fn(&GlassCell) -> String,
    cells: &mut Vec<GlassCell>,
    failures: &mut Vec<(String, String)>,
) {
    match outcome {
        Ok(c) => {
            println!("{}", line(&c));
            cells.push(c);
        }
        Err(e) => {
            println!("glass {label} FAILED: {e:#}");
            failures.push((label, format!("{e:#}")));
        }
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
}

impl GlassCell {
    /// The cell of one receiver's run of `stream` over `network` (how the link is described);
    /// fails when no frame's clock read.
    pub(crate) fn from_run(
        m: Measured,
        receiver: Receiver,
        stream: Stream,
        network: String,
    ) -> Result<GlassCell> {
        let Stream {
            codec, definition, ..
        } = stream;
        let spec = VideoConfig::default().get(stream.network, codec, definition);
        let run = m.run;
        if run.glass_ms.is_empty() {
            bail!(
                "no readable clock in {} frames ({} unreadable)",
                run.frames,
                run.unreadable
            );
        }
        Ok(GlassCell {
            label: format!("{} {}{}", codec.as_str(), definition.as_str(), spec.fps),
            receiver,
            codec,
            definition,
            fps: spec.fps,
            bitrate_kbps: spec.code_rate_kbps,
            network,
            glass_ms: summarize(&run.glass_ms),
            receiver_ms: summarize(&run.receiver_ms),
            frames: run.frames,
            unreadable: run.unreadable,
            skipped: run.skipped,
            first_frame_ms: run.first_frame_ms,
            cpu_percent: m.local_cpu_percent,
            receiver_cpu_percent: m.receiver_cpu_percent,
            extra: run
                .extra
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), summarize(v)))
                .collect(),
            notes: run.notes,
            samples: run.glass_ms,
        })
    }
}

/// hello → first decoded frame, `trials` times, each with a new viewer (the encoder stops
/// between trials, so each includes its start).
async fn ttff(node: &mut Node, instance: &str, trials: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for i in 0..trials {
        let (device, token) = (format!("ttff-{i}"), format!("token-ttff-{i}"));
        node.start_session(instance, &device, &token).await?;
        let mut viewer = Viewer::connect(
            &node.ws_url,
            hello(&device, &token, Codec::H264, Definition::P720),
        )
        .await?;
        let took = viewer.first_frame(Duration::from_secs(20)).await?;
        out.push(took.as_secs_f64() * 1e3);
        viewer.close().await;
        // Let the node notice the viewer left and stop the encoder.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    Ok(out)
}

/// The node's pipeline on the instance's display on its own, for the sender's stages.
fn sender_stages(display: &str, seconds: Duration) -> Result<SenderStages> {
    let spec = VideoConfig::default().get(NetworkType::Wifi, Codec::H264, Definition::P720);
    let (pipeline, mut rx) = EncodePipeline::start(
        &CaptureSource::X11 {
            display: display.to_owned(),
            width: 720,
            height: 1280,
        },
        &EncoderSettings {
            codec: Codec::H264,
            width: 720,
            height: 1280,
            fps: spec.fps,
            bitrate_kbps: spec.code_rate_kbps,
            encoder: None,
        },
    )?;
    let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    std::thread::sleep(seconds);
    let stats = pipeline.stats();
    drop(pipeline);
    let _ = drain.join();
    Ok(SenderStages {
        capture_to_rtp_ms: summarize(&stats.pipeline_latency_ms_recent),
        encode_ms: summarize(&stats.encode_latency_ms_recent),
    })
}

/// Runs the glass-to-glass cells (each profile into each receiver that decodes it) and time to
/// first frame. `bench_exe` is the `cloudphone-bench` binary: its `clock` subcommand is the
/// instance's app, its `glass-viewer` subcommand each receiver.
pub async fn run(smoke: bool, bench_exe: &Path) -> Result<GlassResults> {
    run_receivers(smoke, bench_exe, &Receiver::ALL).await
}

/// [`run`] with a choice of receivers.
pub async fn run_receivers(
    smoke: bool,
    bench_exe: &Path,
    receivers: &[Receiver],
) -> Result<GlassResults> {
    let mut node = Node::start(bench_exe).await?;
    let mut failures = Vec::new();
    let result = async {
        node.create_instance("g720", 720, 1280).await?;
        let mut profiles = vec![("g720", Codec::H264, Definition::P720)];
        if !smoke {
            profiles.push(("g720", Codec::H265, Definition::P720));
            node.create_instance("g1080", 1080, 1920).await?;
            profiles.push(("g1080", Codec::H264, Definition::P1080));
        }
        let window = if smoke {
            Window::from_ms(300, 1_000, 20_000, 90_000)
        } else {
            Window::from_ms(1_000, 10_000, 20_000, 90_000)
        };
        let mut cells = Vec::new();
        let mut not_run = Vec::new();
        let mut n = 0;
        for (instance, codec, definition) in profiles {
            for &receiver in receivers {
                let label = format!("{} {} × {}", codec.as_str(), definition.as_str(), receiver.as_str());
                if !receiver.decodes(codec) {
                    not_run.push((label, format!("{} has no {codec} decoder on this machine", receiver.as_str())));
                    continue;
                }
                n += 1;
                let outcome = glass_cell(&mut node, bench_exe, (instance, n), (codec, definition), receiver, window).await;
                file_cell(outcome, label, |c| format!(
                    "glass {:<12} {:<9} p50 {:>6.1} p99 {:>6.1} max {:>6.1} ms  (receiver p50 {:.1} ms)  first frame {:.0} ms, {} frames, {} unreadable, {} skipped, cpu node {:.0}% receiver {:.0}%",
                    c.label, receiver.as_str(), c.glass_ms.p50, c.glass_ms.p99, c.glass_ms.max, c.receiver_ms.p50, c.first_frame_ms, c.frames, c.unreadable, c.skipped, c.cpu_percent, c.receiver_cpu_percent
                ), &mut cells, &mut failures).await;
            }
        }
        let trials = if smoke { 2 } else { 10 };
        let ttff_samples = ttff(&mut node, "g720", trials).await?;
        let ttff_ms = summarize(&ttff_samples);
        println!(
            "time to first frame (hello → decoded) p50 {:.0} p99 {:.0} ms over {trials}",
            ttff_ms.p50, ttff_ms.p99
        );
        let display = node.display_of("g720")?;
        let sender = tokio::task::spawn_blocking(move || {
            sender_stages(&display, Duration::from_secs(if smoke { 1 } else { 4 }))
        })
        .await??;
        println!(
            "sender on the clock display (H264 720P30): capture → RTP p50 {:.1} p99 {:.1} ms, encode p50 {:.1} ms",
            sender.capture_to_rtp_ms.p50, sender.capture_to_rtp_ms.p99, sender.encode_ms.p50
        );
        Ok::<_, anyhow::Error>(GlassResults {
            smoke,
            cells,
            webrtcbin_latency_ms: DEFAULT_LATENCY_MS,
            not_run,
            ttff_ms,
            ttff_samples,
            sender_720p_h264: sender,
            draw_period_ms: clock::DRAW_PERIOD.as_secs_f64() * 1e3,
            failures: Vec::new(),
            netem: String::new(),
            netem_cells: Vec::new(),
        })
    }
    .await;
    let stopped = node.shutdown().await;
    let mut results = result?;
    stopped?;
    results.failures.append(&mut failures);
    let netem = crate::glass_netem::run(smoke, bench_exe, receivers).await;
    results.netem = netem.note;
    results.netem_cells = netem.cells;
    results.failures.extend(netem.failures);
    Ok(results)
}
