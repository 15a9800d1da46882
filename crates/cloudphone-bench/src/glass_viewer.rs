//! One glass-to-glass receiver as its own process: `cloudphone-bench glass-viewer --receiver
//! webrtc-rs|webrtcbin|chromium --signaling <ws-url> --device-id … --device-token …`. It says
//! hello to the node's signaling at that URL (any address: loopback, or a node across a
//! namespace's veth), waits for the first decoded frame, skips `--skip-secs`, measures for
//! `--seconds`, and prints JSON lines on stdout:
//!
//! ```text
//! {"event":"first_frame","ms":54.2}          hello sent → first decoded (displayed) frame
//! {"event":"measuring"}                      the window starts
//! {"event":"done","result":{…ViewerRun…}}    per-frame samples of the window
//! {"event":"error","error":"…"}              instead of done; the exit status is 1
//! ```
//!
//! Everything else goes to stderr. [`run_subprocess`] is the other end: it starts the command
//! (optionally behind a prefix such as `ip netns exec <ns>`), follows the events and measures the
//! receiver's CPU (its whole process tree: Chromium's renderer and GPU processes included) over
//! the window.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cloudphone_core::video::{Codec, Definition};
use cloudphone_signaling::{Hello, NetworkType as WireNetwork};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::stats::CpuMeter;
use crate::viewer::{Seen, Viewer, lock};
use crate::viewer_webrtcbin::{DEFAULT_LATENCY_MS, WebrtcbinViewer};

/// Which client receives and decodes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Receiver {
    /// webrtc-rs 0.17 + appsrc → avdec (no jitter buffer).
    WebrtcRs,
    /// GStreamer webrtcbin (libnice, rtpbin + rtpjitterbuffer) → avdec.
    Webrtcbin,
    /// Headless Chromium: `<video>` + requestVideoFrameCallback + canvas.
    Chromium,
}

impl Receiver {
    pub const ALL: [Receiver; 3] = [Receiver::WebrtcRs, Receiver::Webrtcbin, Receiver::Chromium];

    pub fn as_str(self) -> &'static str {
        match self {
            Receiver::WebrtcRs => "webrtc-rs",
            Receiver::Webrtcbin => "webrtcbin",
            Receiver::Chromium => "chromium",
        }
    }

    /// Chromium on this machine (Debian's build) has no H.265 decoder.
    pub fn decodes(self, codec: Codec) -> bool {
        !(self == Receiver::Chromium && codec == Codec::H265)
    }
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::parse(s).map_err(|e| e.to_string())
}

fn parse_definition(s: &str) -> Result<Definition, String> {
    Definition::parse(s).map_err(|e| e.to_string())
}

fn parse_network(s: &str) -> Result<WireNetwork, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| e.to_string())
}

fn network_str(n: WireNetwork) -> String {
    serde_json::to_value(n)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "WIFI".into())
}

/// `cloudphone-bench glass-viewer …`.
#[derive(clap::Args, Debug, Clone)]
pub struct ViewerArgs {
    #[arg(long, value_enum)]
    pub receiver: Receiver,
    /// The node's signaling WebSocket, e.g. ws://10.9.0.1:7000/v1/signaling.
    #[arg(long)]
    pub signaling: String,
    #[arg(long)]
    pub device_id: String,
    #[arg(long)]
    pub device_token: String,
    #[arg(long, default_value = "H264", value_parser = parse_codec)]
    pub codec: Codec,
    #[arg(long, default_value = "720P", value_parser = parse_definition)]
    pub definition: Definition,
    /// WIFI | MOBILE_NETWORK | WIRED (picks the node's video matrix row).
    #[arg(long, default_value = "WIFI", value_parser = parse_network)]
    pub network: WireNetwork,
    /// Seconds after the first frame before the window starts.
    #[arg(long, default_value_t = 1.0)]
    pub skip_secs: f64,
    /// Length of the measuring window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// webrtcbin only: its jitter buffers' `latency`, ms.
    #[arg(long, default_value_t = DEFAULT_LATENCY_MS)]
    pub jitter_ms: u32,
    #[arg(long, default_value_t = 20.0)]
    pub first_frame_timeout_secs: f64,
}

impl ViewerArgs {
    /// The command-line arguments after `glass-viewer` that reproduce these.
    pub fn to_argv(&self) -> Vec<String> {
        let options: [(&str, String); 11] = [
            ("--receiver", self.receiver.as_str().into()),
            ("--signaling", self.signaling.clone()),
            ("--device-id", self.device_id.clone()),
            ("--device-token", self.device_token.clone()),
            ("--codec", self.codec.as_str().into()),
            ("--definition", self.definition.as_str().into()),
            ("--network", network_str(self.network)),
            ("--skip-secs", self.skip_secs.to_string()),
            ("--seconds", self.seconds.to_string()),
            ("--jitter-ms", self.jitter_ms.to_string()),
            (
                "--first-frame-timeout-secs",
                self.first_frame_timeout_secs.to_string(),
            ),
        ];
        let mut argv = vec!["glass-viewer".to_owned()];
        for (flag, value) in options {
            argv.extend([flag.to_owned(), value]);
        }
        argv
    }

    fn hello(&self) -> Hello {
        Hello {
            device_id: self.device_id.clone(),
            device_token: self.device_token.clone(),
            network_type: self.network,
            encoding_type: self.codec,
            definition: self.definition,
        }
    }
}

/// What one receiver measured over its window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ViewerRun {
    pub(crate) receiver: Option<Receiver>,
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// hello sent → first decoded frame (Chromium: first requestVideoFrameCallback).
    pub(crate) first_frame_ms: f64,
    /// Frames decoded (Chromium: presented) in the window.
    pub(crate) frames: u64,
    /// Of those, frames whose clock did not read.
    pub(crate) unreadable: u64,
    /// Frames decoded but never shown (Chromium only: gaps in `presentedFrames`).
    pub(crate) skipped: u64,
    /// Glass-to-glass per frame with a readable clock, ms.
    pub(crate) glass_ms: Vec<f64>,
    /// The receiver's own share per frame, ms (see each receiver's module for where it starts).
    pub(crate) receiver_ms: Vec<f64>,
    /// Further per-frame figures, name → ms.
    pub(crate) extra: BTreeMap<String, Vec<f64>>,
    pub(crate) notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    FirstFrame { ms: f64 },
    Measuring,
    Done { result: Box<ViewerRun> },
    Error { error: String },
}

/// One event line on stdout.
pub fn emit(e: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(e).unwrap_or_else(|_| "{}".into())
    );
    let _ = out.flush();
}

/// The two Rust receivers behind one interface.
enum RustViewer {
    WebrtcRs(Viewer),
    Webrtcbin(WebrtcbinViewer),
}

impl RustViewer {
    fn seen(&self) -> &Arc<Mutex<Seen>> {
        match self {
            RustViewer::WebrtcRs(v) => &v.seen,
            RustViewer::Webrtcbin(v) => &v.seen,
        }
    }

    async fn first_frame(&mut self, within: Duration) -> Result<Duration> {
        match self {
            RustViewer::WebrtcRs(v) => v.first_frame(within).await,
            RustViewer::Webrtcbin(v) => v.first_frame(within).await,
        }
    }

    async fn pump_for(&mut self, d: Duration) -> Result<()> {
        match self {
            RustViewer::WebrtcRs(v) => v.pump_for(d).await,
            RustViewer::Webrtcbin(v) => v.pump_for(d).await,
        }
    }

    async fn close(self) {
        match self {
            RustViewer::WebrtcRs(v) => v.close().await,
            RustViewer::Webrtcbin(v) => v.close().await,
        }
    }
}

async fn run_rust(args: &ViewerArgs) -> Result<ViewerRun> {
    let mut viewer = match args.receiver {
        Receiver::WebrtcRs => {
            RustViewer::WebrtcRs(Viewer::connect(&args.signaling, args.hello()).await?)
        }
        Receiver::Webrtcbin => RustViewer::Webrtcbin(
            WebrtcbinViewer::connect(&args.signaling, args.hello(), args.jitter_ms).await?,
        ),
        Receiver::Chromium => unreachable!(),
    };
    let first = viewer
        .first_frame(Duration::from_secs_f64(args.first_frame_timeout_secs))
        .await?;
    let first_frame_ms = first.as_secs_f64() * 1e3;
    emit(&Event::FirstFrame { ms: first_frame_ms });
    viewer
        .pump_for(Duration::from_secs_f64(args.skip_secs))
        .await?;
    let (frames0, unreadable0) = {
        let s = lock(viewer.seen());
        (s.frames, s.unreadable)
    };
    let from = Instant::now();
    emit(&Event::Measuring);
    viewer
        .pump_for(Duration::from_secs_f64(args.seconds))
        .await?;
    let seen = std::mem::take(&mut *lock(viewer.seen()));
    viewer.close().await;
    let window = |v: &[(Instant, f64)]| -> Vec<f64> {
        v.iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, ms)| *ms)
            .collect()
    };
    let mut notes = Vec::new();
    if args.receiver == Receiver::Webrtcbin {
        notes.push(format!("webrtcbin latency={} ms", args.jitter_ms));
    }
    Ok(ViewerRun {
        receiver: Some(args.receiver),
        width: seen.width,
        height: seen.height,
        first_frame_ms,
        frames: seen.frames - frames0,
        unreadable: seen.unreadable - unreadable0,
        skipped: 0,
        glass_ms: window(&seen.ages_ms),
        receiver_ms: window(&seen.receiver_ms),
        extra: BTreeMap::new(),
        notes,
    })
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs the receiver the arguments name; prints its events. Chromium's driver is handed back
/// still running (it closes the browser after its result): wait for it after reporting.
pub async fn run(args: &ViewerArgs) -> Result<(ViewerRun, Option<tokio::process::Child>)> {
    if !args.receiver.decodes(args.codec) {
        bail!(
            "{} cannot decode {} on this machine",
            args.receiver.as_str(),
            args.codec
        );
    }
    match args.receiver {
        Receiver::Chromium => {
            let query = format!(
                "signaling={}&device_id={}&device_token={}&codec={}&definition={}&network={}",
                encode(&args.signaling),
                encode(&args.device_id),
                encode(&args.device_token),
                args.codec.as_str(),
                args.definition.as_str(),
                network_str(args.network),
            );
            let (run, child) = crate::viewer_chromium::run(
                &query,
                Duration::from_secs_f64(args.skip_secs),
                Duration::from_secs_f64(args.seconds),
                Duration::from_secs_f64(args.first_frame_timeout_secs),
            )
            .await?;
            Ok((run, Some(child)))
        }
        _ => Ok((run_rust(args).await?, None)),
    }
}

/// The `glass-viewer` subcommand: runs and prints `done` or `error`.
pub fn main(args: ViewerArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    match rt.block_on(run(&args)) {
        Ok((result, child)) => {
            emit(&Event::Done {
                result: Box::new(result),
            });
            if let Some(mut child) = child {
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
                });
            }
            Ok(())
        }
        Err(e) => {
            emit(&Event::Error {
                error: format!("{e:#}"),
            });
            Err(e)
        }
    }
}

/// CPU seconds (user + system, children reaped included) of `root` and all its descendants
/// alive now, from `/proc`.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    // /proc counts in USER_HZ, which the kernel fixes at 100 for user space on every arch.
    let tick = 100.0;
    let Some(procs) = crate::procfs::processes() else {
        return f64::NAN;
    };
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(procs.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    procs
        .iter()
        .filter(|p| tree.contains(&p.pid))
        .map(|p| p.cpu_ticks as f64)
        .sum::<f64>()
        / tick
}

/// A receiver's run as seen from the process that started it.
#[derive(Debug, Clone)]
pub struct Measured {
    pub run: ViewerRun,
    /// The receiver's process tree over the window, % of one core.
    pub receiver_cpu_percent: f64,
    /// This (the starting) process over the window, % of one core.
    pub local_cpu_percent: f64,
}

/// Starts `argv` (e.g. `[bench_exe] + args.to_argv()`, or with `ip netns exec ns` in front),
/// follows its events, and fails with the tail of its stderr if it does not finish in `limit`.
pub async fn run_subprocess(argv: &[String], limit: Duration) -> Result<Measured> {
    let (program, rest) = argv.split_first().context("empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id().context("child pid")?;
    let stderr_tail = Arc::new(Mutex::new(std::collections::VecDeque::<String>::new()));
    let tail = Arc::clone(&stderr_tail);
    let mut errs = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let echo = std::env::var_os("CLOUDPHONE_BENCH_VIEWER_STDERR").is_some();
    let stderr_task = tokio::spawn(async move {
        while let Ok(Some(line)) = errs.next_line().await {
            if echo {
                eprintln!("[viewer] {line}");
            }
            let mut t = lock(&tail);
            if t.len() >= 30 {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let followed = tokio::time::timeout(limit, async {
        let mut window: Option<(CpuMeter, f64)> = None;
        while let Some(line) = lines.next_line().await? {
            let Ok(ev) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            match ev {
                Event::FirstFrame { .. } => {}
                Event::Measuring => window = Some((CpuMeter::start(), tree_cpu_seconds(pid))),
                Event::Done { result } => {
                    let (local, receiver) = match window {
                        Some((meter, tree0)) => (
                            meter.percent(),
                            100.0 * (tree_cpu_seconds(pid) - tree0)
                                / meter.wall_seconds().max(1e-9),
                        ),
                        None => (f64::NAN, f64::NAN),
                    };
                    return Ok(Measured {
                        run: *result,
                        receiver_cpu_percent: receiver,
                        local_cpu_percent: local,
                    });
                }
                Event::Error { error } => bail!("{error}"),
            }
        }
        Err(anyhow!("the viewer exited without a result"))
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("no result within {limit:?}")));
    if followed.is_err() {
        let _ = child.start_kill();
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), stderr_task).await;
    followed.map_err(|e| {
        let tail = lock(&stderr_tail)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        anyhow!("{e:#}\n--- viewer stderr (last lines) ---\n{tail}")
    })
}
