//! Glass-to-glass latency and time to first frame through a real node: an in-process node
//! with the x11 runtime whose instance "app" is the clock writer ([`crate::clock`]), the real
//! signaling and WebRTC path, and [`crate::viewer`] decoding and reading the clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudphone_core::video::{Codec, Definition, NetworkType, VideoConfig};
use cloudphone_node::config::NodeConfig;
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::{EncodePipeline, EncoderSettings};
use cloudphone_proto::node_v1 as pb;
use cloudphone_proto::node_v1::node_agent_client::NodeAgentClient;
use cloudphone_signaling::{
    Definition as WireDefinition, EncodingType, Hello, NetworkType as WireNetwork,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::oneshot;

use crate::clock;
use crate::stats::{CpuMeter, Summary, summarize};
use crate::viewer::Viewer;

/// One glass-to-glass cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GlassCell {
    pub label: String,
    pub codec: Codec,
    pub definition: Definition,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub network: String,
    /// Screen clock → decoded frame, per frame with a readable clock.
    pub glass_ms: Summary,
    /// Receiver only: frame's first packet into the decoder pipeline → decoded.
    pub receiver_ms: Summary,
    pub frames: u64,
    pub unreadable: u64,
    /// Whole process (node + viewer + X clients excluded: Xvfb and the clock are children).
    pub cpu_percent: f64,
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
    /// hello sent → first decoded frame (each trial a new viewer and a fresh encoder).
    pub ttff_ms: Summary,
    pub ttff_samples: Vec<f64>,
    pub sender_720p_h264: SenderStages,
    pub draw_period_ms: f64,
    pub failures: Vec<(String, String)>,
    pub netem: String,
}

/// Kills whatever the node's instances recorded in `pids.json`, even on a panic.
struct ProcessGuard(PathBuf);

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir(self.0.join("instances")) else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(bytes) = std::fs::read(entry.path().join("pids.json")) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            for key in ["launcher", "xvfb"] {
                if let Some(pid) = v[key]["pid"].as_i64() {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// A node running in this process with the x11 runtime.
pub struct Node {
    pub grpc: NodeAgentClient<tonic::transport::Channel>,
    pub http: SocketAddr,
    pub ws_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), cloudphone_node::NodeError>>>,
    _guard: ProcessGuard,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node whose x11 instances run `launcher`.
    pub async fn start(launcher: &str) -> Result<Node> {
        let dir = tempfile::Builder::new()
            .prefix("cp-bench-")
            .tempdir_in("/var/tmp")?;
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http = http_listener.local_addr()?;
        let mut config = NodeConfig::load(None, |_| None)?;
        config.node_id = "bench".into();
        config.runtime = "x11".into();
        config.state_dir = dir.path().to_path_buf();
        config.grpc.listen = grpc_addr;
        config.grpc.advertise = format!("http://{grpc_addr}");
        config.http.listen = http;
        config.http.public_url = format!("ws://{http}");
        // Away from the test suites' displays (200–700).
        config.x11.first_display = 900 + std::process::id() % 50 * 4;
        config.x11.launcher = launcher.to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cloudphone_node::run(
            config,
            grpc_listener,
            http_listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        let grpc = loop {
            match NodeAgentClient::connect(format!("http://{grpc_addr}")).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e).context("node gRPC"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        Ok(Node {
            grpc,
            http,
            ws_url: format!("ws://{http}/v1/signaling"),
            stop: Some(stop),
            task: Some(task),
            _guard: ProcessGuard(dir.path().to_path_buf()),
            dir,
        })
    }

    pub async fn create_instance(&mut self, id: &str, width: u32, height: u32) -> Result<()> {
        self.grpc
            .create_instance(pb::CreateInstanceRequest {
                instance_id: id.into(),
                tenant_id: "bench".into(),
                runtime: String::new(),
                width,
                height,
                os: String::new(),
            })
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self
                .grpc
                .get_instance_status(pb::InstanceRef {
                    instance_id: id.into(),
                })
                .await?
                .into_inner();
            if s.state == pb::InstanceState::Running as i32 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("instance {id} not running: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
            })
            .await?;
        Ok(())
    }

    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("node did not stop in 30 s")???;
        }
        Ok(())
    }
}

fn wire_codec(c: Codec) -> EncodingType {
    match c {
        Codec::H264 => EncodingType::H264,
        Codec::H265 => EncodingType::H265,
    }
}

fn wire_definition(d: Definition) -> WireDefinition {
    match d {
        Definition::P540 => WireDefinition::P540,
        Definition::P720 => WireDefinition::P720,
        Definition::P1080 => WireDefinition::P1080,
    }
}

fn hello(device: &str, token: &str, codec: Codec, definition: Definition) -> Hello {
    Hello {
        device_id: device.into(),
        device_token: token.into(),
        network_type: WireNetwork::Wifi,
        encoding_type: wire_codec(codec),
        definition: wire_definition(definition),
    }
}

/// Streams one profile for `seconds` (after `skip` seconds of start-up) and reads the clock.
async fn glass_cell(
    node: &mut Node,
    instance: &str,
    n: usize,
    codec: Codec,
    definition: Definition,
    skip: Duration,
    seconds: Duration,
) -> Result<GlassCell> {
    let spec = VideoConfig::default().get(NetworkType::Wifi, codec, definition);
    let (device, token) = (format!("glass-{n}"), format!("token-glass-{n}"));
    node.start_session(instance, &device, &token).await?;
    let mut viewer =
        Viewer::connect(&node.ws_url, hello(&device, &token, codec, definition)).await?;
    viewer.first_frame(Duration::from_secs(20)).await?;
    viewer.pump_for(skip).await?;
    let from = Instant::now();
    let meter = CpuMeter::start();
    viewer.pump_for(seconds).await?;
    let cpu_percent = meter.percent();
    let seen = std::mem::take(&mut *viewer.seen.lock().unwrap_or_else(|e| e.into_inner()));
    viewer.close().await;
    let samples: Vec<f64> = seen
        .ages_ms
        .iter()
        .filter(|(at, _)| *at >= from)
        .map(|(_, ms)| *ms)
        .collect();
    let receiver: Vec<f64> = seen
        .receiver_ms
        .iter()
        .filter(|(at, _)| *at >= from)
        .map(|(_, ms)| *ms)
        .collect();
    if samples.is_empty() {
        bail!(
            "no readable clock in {} frames ({} unreadable)",
            seen.frames,
            seen.unreadable
        );
    }
    Ok(GlassCell {
        label: format!("{} {}{}", codec.as_str(), definition.as_str(), spec.fps),
        codec,
        definition,
        fps: spec.fps,
        bitrate_kbps: spec.code_rate_kbps,
        network: "loopback".into(),
        glass_ms: summarize(&samples),
        receiver_ms: summarize(&receiver),
        frames: seen.frames,
        unreadable: seen.unreadable,
        cpu_percent,
        samples,
    })
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

/// Runs the glass-to-glass cells and time to first frame. `clock_exe` is the
/// `cloudphone-bench` binary (its `clock` subcommand is the instance's app).
pub async fn run(smoke: bool, clock_exe: &Path) -> Result<GlassResults> {
    let launcher = format!("exec {} clock", clock_exe.display());
    let mut node = Node::start(&launcher).await?;
    let mut failures = Vec::new();
    let result = async {
        node.create_instance("g720", 720, 1280).await?;
        let mut profiles = vec![("g720", Codec::H264, Definition::P720)];
        if !smoke {
            profiles.push(("g720", Codec::H265, Definition::P720));
            node.create_instance("g1080", 1080, 1920).await?;
            profiles.push(("g1080", Codec::H264, Definition::P1080));
        }
        let (skip, seconds) = if smoke {
            (Duration::from_millis(300), Duration::from_secs(2))
        } else {
            (Duration::from_secs(1), Duration::from_secs(10))
        };
        let mut cells = Vec::new();
        for (n, (instance, codec, definition)) in profiles.into_iter().enumerate() {
            match glass_cell(&mut node, instance, n, codec, definition, skip, seconds).await {
                Ok(c) => {
                    println!(
                        "glass {:<12} p50 {:>6.1} p99 {:>6.1} max {:>6.1} ms  (receiver p50 {:.1} ms)  {} frames, {} unreadable, cpu {:.0}%",
                        c.label, c.glass_ms.p50, c.glass_ms.p99, c.glass_ms.max, c.receiver_ms.p50, c.frames, c.unreadable, c.cpu_percent
                    );
                    cells.push(c);
                }
                Err(e) => {
                    let label = format!("{} {}", codec.as_str(), definition.as_str());
                    println!("glass {label} FAILED: {e:#}");
                    failures.push((label, format!("{e:#}")));
                }
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
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
            ttff_ms,
            ttff_samples,
            sender_720p_h264: sender,
            draw_period_ms: clock::DRAW_PERIOD.as_secs_f64() * 1e3,
            failures: Vec::new(),
            netem: "not run: netem profiles (WIFI 20 ms RTT, MOBILE 60 ms RTT 1 % loss 8 Mbit/s) are not implemented in this bench yet".into(),
        })
    }
    .await;
    let stopped = node.shutdown().await;
    let mut results = result?;
    stopped?;
    results.failures.append(&mut failures);
    Ok(results)
}
