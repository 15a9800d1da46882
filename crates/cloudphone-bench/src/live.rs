//! The live-edge bench against any RTMP/FLV/HLS/WHEP server given its URLs: a GStreamer
//! publisher pushes RTMP (H.264 `zerolatency`, 1 s GOP, CBR with filler, and an AAC track as a
//! real encoder sends) with the clock barcode of [`crate::clock`] burned into every frame at
//! capture; one decoding player per output reads it back (glass-to-glass, p50/p95); then N
//! concurrent byte-reading players per protocol (no decoding, like SRS's benchmark) step up
//! while the server's CPU and the players' loss are measured: players per core of server CPU
//! at < 1 % loss. The `live` bench runs it against nginx-rtmp ([`crate::live_nginx`]);
//! `cloudphone-bench live` against any server (our node).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::stats::{percentile, summarize};
use crate::viewer::{Seen, lock, read_clock_from};

/// The URLs and settings of one run (also the `cloudphone-bench live` command line).
#[derive(Debug, Clone, clap::Args)]
pub struct LiveArgs {
    /// RTMP push URL, e.g. rtmp://10.0.0.5:1935/live/1624428150544871?auth_key=…
    #[arg(long)]
    pub push: String,
    /// RTMP play URL.
    #[arg(long)]
    pub rtmp: Option<String>,
    /// HTTP-FLV play URL (…/{app}/{id}.flv?auth_key=…).
    #[arg(long)]
    pub flv: Option<String>,
    /// HLS playlist URL (…/{app}/{id}.m3u8?auth_key=…).
    #[arg(long)]
    pub hls: Option<String>,
    /// WHEP endpoint (POST application/sdp → 201 + answer).
    #[arg(long)]
    pub whep: Option<String>,
    /// The server's process id: its CPU (with its children's) is measured under load.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// How the server is named in the report.
    #[arg(long, default_value = "cloudphone node")]
    pub server_name: String,
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    #[arg(long, default_value_t = 720)]
    pub height: u32,
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Video bitrate, kbit/s (CBR with filler, so the stream really is this rate; SRS's and
    /// nginx-rtmp's published player counts are for 600 kbit/s streams).
    #[arg(long, default_value_t = 600)]
    pub kbps: u32,
    /// After every player's first frame, before measuring latency.
    #[arg(long, default_value_t = 3.0)]
    pub skip_secs: f64,
    /// The latency window.
    #[arg(long, default_value_t = 15.0)]
    pub seconds: f64,
    /// A player without a first frame after this long has failed.
    #[arg(long, default_value_t = 20.0)]
    pub first_frame_timeout_secs: f64,
    /// Concurrent byte-reading players per step, in order; stepping stops at the first step
    /// with ≥ 1 % loss twice in a row. Empty: no load phase.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50,100,200,400,600,800,1000,1200,1600"
    )]
    pub players: Vec<usize>,
    /// Per load step: after the players connected, before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub load_warmup_secs: f64,
    /// Per load step: the measuring window.
    #[arg(long, default_value_t = 8.0)]
    pub load_secs: f64,
    /// Seconds-long version (1 s windows, two small load steps).
    #[arg(long)]
    pub smoke: bool,
    /// Also write the results as this part (`live-edge` puts them in the report next to
    /// nginx-rtmp's); with `--parts` or CLOUDPHONE_BENCH_PARTS.
    #[arg(long)]
    pub part: Option<String>,
    #[arg(long)]
    pub parts: Option<std::path::PathBuf>,
}

/// `cloudphone-bench live`'s command line on its own, for [`LiveArgs::parse_from`].
#[derive(clap::Parser)]
struct LiveCli {
    #[command(flatten)]
    live: LiveArgs,
}

impl LiveArgs {
    /// The arguments of `cloudphone-bench live …` (without the program name), defaults
    /// filled in.
    pub fn parse_from<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString> + Clone>(
        argv: I,
    ) -> Result<LiveArgs> {
        use clap::Parser;
        let argv = std::iter::once(std::ffi::OsString::from("live"))
            .chain(argv.into_iter().map(Into::into));
        Ok(LiveCli::try_parse_from(argv)?.live)
    }

    /// Smoke mode's short windows and steps, or the arguments as given.
    fn effective(&self) -> LiveArgs {
        let mut a = self.clone();
        if a.smoke {
            a.skip_secs = a.skip_secs.min(1.0);
            a.seconds = a.seconds.min(2.0);
            a.players = vec![5, 10];
            a.load_warmup_secs = a.load_warmup_secs.min(1.0);
            a.load_secs = a.load_secs.min(2.0);
        }
        a
    }
}

/// One of the server's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Rtmp,
    Flv,
    Hls,
    Whep,
}

impl Output {
    pub const ALL: [Output; 4] = [Output::Rtmp, Output::Flv, Output::Hls, Output::Whep];

    pub fn as_str(self) -> &'static str {
        match self {
            Output::Rtmp => "RTMP",
            Output::Flv => "HTTP-FLV",
            Output::Hls => "HLS",
            Output::Whep => "WebRTC (WHEP)",
        }
    }

    fn url(self, a: &LiveArgs) -> Option<&str> {
        match self {
            Output::Rtmp => a.rtmp.as_deref(),
            Output::Flv => a.flv.as_deref(),
            Output::Hls => a.hls.as_deref(),
            Output::Whep => a.whep.as_deref(),
        }
    }

    /// The decoding player's description up to the demuxer (named `demux`; its pads are
    /// linked as they appear, video to the clock reader, anything else to a fakesink).
    fn front(self) -> Option<&'static str> {
        match self {
            Output::Rtmp => Some("rtmp2src name=src ! flvdemux name=demux"),
            Output::Flv => Some("souphttpsrc name=src is-live=true ! flvdemux name=demux"),
            // hlsdemux starts a live playlist three segments from its end, as players do, and
            // fetches as fast as segments appear; with `sync=false` the figure is when a frame
            // can first be shown, not when a player holding a buffer would show it.
            Output::Hls => Some("souphttpsrc name=src ! hlsdemux ! tsdemux name=demux"),
            Output::Whep => None,
        }
    }
}

/// The publisher's stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamSpec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub kbps: u32,
    pub gop_frames: u32,
    pub description: String,
}

/// Glass-to-glass through one output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyCell {
    pub output: Output,
    /// Burned-in clock at capture → decoded frame, ms.
    pub glass_p50_ms: f64,
    pub glass_p95_ms: f64,
    pub glass_p99_ms: f64,
    pub glass_max_ms: f64,
    pub n: usize,
    pub frames: u64,
    pub unreadable: u64,
    /// Player start → first decoded frame.
    pub first_frame_ms: f64,
    pub samples: Vec<f64>,
}

/// One step of the load phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadLevel {
    pub players: usize,
    /// Players that were connected and receiving at the end of the window.
    pub connected: usize,
    /// 1 − video frames received ÷ (players × fps × window), clamped at 0.
    pub loss: f64,
    /// The server's process tree over the window, % of one core.
    pub server_cpu_percent: f64,
    /// This bench's process (publisher and players) over the window, % of one core.
    pub bench_cpu_percent: f64,
    /// Mean received rate per player, kbit/s.
    pub kbps_per_player: f64,
    pub errors: Vec<String>,
    /// The first try of this step lost ≥ 1 %; these are the second's figures.
    #[serde(default)]
    pub repeated: bool,
}

/// The load phase of one protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRun {
    pub output: Output,
    pub levels: Vec<LoadLevel>,
    /// The largest step with < 1 % loss.
    pub max_players: usize,
    /// `max_players` ÷ the server's cores in use at that step.
    pub players_per_core: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveResults {
    pub server: String,
    /// When this run ended (a part can be measured apart from the rest of the report).
    #[serde(default)]
    pub measured_unix_ms: i64,
    pub smoke: bool,
    pub stream: StreamSpec,
    /// Output → URL, queries (keys) removed.
    pub urls: Vec<(Output, String)>,
    pub latency: Vec<LatencyCell>,
    /// The publisher's share of every output's figure over the latency window: frame stamped
    /// → its FLV tag handed to `rtmp2sink` (encode, parse, FLV mux with the audio), ms.
    #[serde(default)]
    pub publisher_ms: crate::stats::Summary,
    pub load: Vec<LoadRun>,
    pub not_run: Vec<(String, String)>,
    pub failures: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub skip_secs: f64,
    pub seconds: f64,
    pub load_warmup_secs: f64,
    pub load_secs: f64,
}

fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// Writes the clock into an I420 frame's luma plane: a white field, then the 64 blocks of
/// [`clock`]'s layout black where a bit is 1 (video-range luma, so it survives conversion).
pub fn stamp_luma(y: &mut [u8], width: u32, height: u32, stride: usize, value: u32) {
    let word = clock::bits(value);
    let (_, _, b) = clock::block_rect(width, 0);
    let field = (b * (clock::GRID + 2)).min(width).min(height);
    let fill = |y: &mut [u8], x0: u32, y0: u32, size: u32, v: u8| {
        for row in y0..(y0 + size).min(height) {
            let start = row as usize * stride + x0 as usize;
            let end = start + size.min(width - x0) as usize;
            if let Some(s) = y.get_mut(start..end) {
                s.fill(v);
            }
        }
    };
    fill(y, 0, 0, field, 235);
    for i in 0..clock::GRID * clock::GRID {
        if word >> i & 1 == 1 {
            let (x, yy, b) = clock::block_rect(width, i);
            fill(y, x, yy, b, 16);
        }
    }
}

/// The RTMP publisher: test pattern with the clock → x264 → FLV ← AAC → `rtmp2sink`.
pub struct Publisher {
    pipeline: gst::Pipeline,
    error: Arc<Mutex<Option<String>>>,
    /// Per video frame: stamped → its FLV tag handed to `rtmp2sink` (encode, parse, mux),
    /// with when it was handed over.
    out_ms: Arc<Mutex<Vec<(Instant, f64)>>>,
}

/// Stamp instants by buffer PTS, for the publisher's own share (last 64 frames).
type Stamped = Arc<Mutex<std::collections::VecDeque<(gst::ClockTime, Instant)>>>;

impl Publisher {
    pub fn description(a: &LiveArgs) -> String {
        format!(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={w},height={h},framerate={f}/1 \
             ! identity name=stamp ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={f} bitrate={k} \
             option-string=nal-hrd=cbr:filler=1 ! h264parse ! queue ! flvmux name=mux streamable=true \
             ! rtmp2sink name=sink async=false \
             audiotestsrc is-live=true wave=sine volume=0.05 ! audio/x-raw,rate=44100,channels=2 \
             ! audioconvert ! avenc_aac bitrate=64000 ! aacparse ! queue ! mux.",
            w = a.width,
            h = a.height,
            f = a.fps,
            k = a.kbps
        )
    }

    pub fn start(a: &LiveArgs) -> Result<Publisher> {
        gst::init()?;
        let pipeline = gst::parse::launch(&Self::description(a))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("not a pipeline"))?;
        let sink = pipeline.by_name("sink").context("sink")?;
        sink.set_property("location", a.push.as_str());
        let (w, h) = (a.width, a.height);
        // I420 luma rows are padded to 4 bytes.
        let stride = (w as usize + 3) & !3;
        let stamped: Stamped = Arc::default();
        let st = Arc::clone(&stamped);
        pipeline
            .by_name("stamp")
            .and_then(|e| e.static_pad("src"))
            .context("stamp pad")?
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
                    let buffer = buffer.make_mut();
                    if let Ok(mut map) = buffer.map_writable() {
                        stamp_luma(map.as_mut_slice(), w, h, stride, clock::now_ticks());
                    }
                    if let Some(pts) = buffer.pts() {
                        let mut q = lock(&st);
                        if q.len() >= 64 {
                            q.pop_front();
                        }
                        q.push_back((pts, Instant::now()));
                    }
                }
                gst::PadProbeReturn::Ok
            });
        // flvmux keeps each video buffer's PTS on its tag: matching PTS is the same frame
        // (audio tags match none).
        let out_ms = Arc::new(Mutex::new(Vec::new()));
        let (st, out) = (Arc::clone(&stamped), Arc::clone(&out_ms));
        sink.static_pad("sink").context("sink pad")?.add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data
                    && let Some(pts) = buffer.pts()
                {
                    let at = lock(&st).iter().find(|(p, _)| *p == pts).map(|(_, at)| *at);
                    if let Some(at) = at {
                        let now = Instant::now();
                        lock(&out).push((now, now.duration_since(at).as_secs_f64() * 1e3));
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        let error = watch_errors(&pipeline)?;
        pipeline.set_state(gst::State::Playing)?;
        Ok(Publisher {
            pipeline,
            error,
            out_ms,
        })
    }

    /// The publisher's own share over `[from, to]`.
    fn out_ms(&self, from: Instant, to: Instant) -> Vec<f64> {
        lock(&self.out_ms)
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, v)| *v)
            .collect()
    }

    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Records the first error on `pipeline`'s bus.
fn watch_errors(pipeline: &gst::Pipeline) -> Result<Arc<Mutex<Option<String>>>> {
    let error = Arc::new(Mutex::new(None));
    let e = Arc::clone(&error);
    let bus = pipeline.bus().context("bus")?;
    bus.set_sync_handler(move |_, msg| {
        if let gst::MessageView::Error(err) = msg.view() {
            let mut e = lock(&e);
            if e.is_none() {
                *e = Some(format!(
                    "{} ({})",
                    err.error(),
                    err.debug().map(|d| d.to_string()).unwrap_or_default()
                ));
            }
        }
        gst::BusSyncReply::Drop
    });
    Ok(error)
}

/// A decoding player reading the clock from every frame.
struct Player {
    output: Output,
    pipeline: gst::Pipeline,
    seen: Arc<Mutex<Seen>>,
    error: Arc<Mutex<Option<String>>>,
    started: Instant,
    /// WHEP: the session to delete when done.
    resource: Option<String>,
}

const VIDEO_TAIL: &str = "queue ! h264parse ! avdec_h264 max-threads=1 ! videoconvert \
    ! video/x-raw,format=GRAY8 ! appsink name=sink sync=false";

impl Player {
    fn start(output: Output, url: &str) -> Result<Player> {
        let front = output
            .front()
            .context("no GStreamer player for this output")?;
        let pipeline = gst::parse::launch(front)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("not a pipeline"))?;
        pipeline
            .by_name("src")
            .context("src")?
            .set_property("location", url);
        let tail = gst::parse::bin_from_description(VIDEO_TAIL, true)?;
        let sink = tail
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .context("appsink")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        read_clock_from(&sink, Arc::clone(&seen), |_, _, _| None);
        pipeline.add(&tail)?;
        let demux = pipeline.by_name("demux").context("demux")?;
        let pl = pipeline.downgrade();
        let tail_sink = tail.static_pad("sink").context("tail sink")?;
        // nginx-rtmp sends audio before the first video tag: an unlinked audio pad would stop
        // the demuxer with not-linked, so every non-video pad gets its own fakesink.
        demux.connect_pad_added(move |_, pad| {
            let Some(pipeline) = pl.upgrade() else { return };
            let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
            let is_h264 = caps
                .structure(0)
                .is_some_and(|s| s.name().as_str() == "video/x-h264");
            if is_h264 && !tail_sink.is_linked() {
                let _ = pad.link(&tail_sink);
                return;
            }
            if let Ok(bin) =
                gst::parse::bin_from_description("queue ! fakesink sync=false async=false", true)
                && pipeline.add(&bin).is_ok()
            {
                let _ = bin.sync_state_with_parent();
                if let Some(p) = bin.static_pad("sink") {
                    let _ = pad.link(&p);
                }
            }
        });
        let error = watch_errors(&pipeline)?;
        let started = Instant::now();
        pipeline.set_state(gst::State::Playing)?;
        Ok(Player {
            output,
            pipeline,
            seen,
            error,
            started,
            resource: None,
        })
    }

    /// The WebRTC player ([`crate::live_whep`]).
    async fn whep(url: &str) -> Result<Player> {
        let started = Instant::now();
        let w = crate::live_whep::start(url).await?;
        let error = watch_errors(&w.pipeline)?;
        Ok(Player {
            output: Output::Whep,
            pipeline: w.pipeline,
            seen: w.seen,
            error,
            started,
            resource: w.resource,
        })
    }

    fn first_frame(&self) -> Option<Instant> {
        lock(&self.seen).first_frame
    }

    fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    /// The cell over `[from, to]`.
    fn cell(&self, from: Instant, to: Instant) -> Result<LatencyCell> {
        let seen = lock(&self.seen);
        let samples: Vec<f64> = seen
            .ages_ms
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, v)| *v)
            .collect();
        if samples.is_empty() {
            bail!(
                "no readable clock in the window ({} frames, {} unreadable{})",
                seen.frames,
                seen.unreadable,
                self.error()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default()
            );
        }
        let s = summarize(&samples);
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        Ok(LatencyCell {
            output: self.output,
            glass_p50_ms: s.p50,
            glass_p95_ms: percentile(&sorted, 0.95),
            glass_p99_ms: s.p99,
            glass_max_ms: s.max,
            n: s.n,
            frames: seen.frames,
            unreadable: seen.unreadable,
            first_frame_ms: seen.first_frame.map_or(f64::NAN, |t| {
                t.duration_since(self.started).as_secs_f64() * 1e3
            }),
            samples,
        })
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// CPU seconds (user + system) of `root` and every descendant, from `/proc`.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
                && let Some(p) = parse_stat(&stat)
            {
                procs.push((pid, p.0, p.1));
            }
        }
    }
    let mut tree = vec![root];
    let mut total = 0.0;
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, ticks) in &procs {
            if pid == parent {
                total += ticks as f64;
            }
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    total / tick
}

/// `(ppid, utime + stime)` from a `/proc/PID/stat` line (the name may hold spaces and
/// parentheses: fields are counted after the last `)`).
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15), 1-based over the whole line.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Counts FLV tags in a byte stream without keeping them: the 9-byte header and the first
/// previous-tag-size, then `[11-byte tag header][data][4-byte previous tag size]` forever.
#[derive(Debug, Default)]
pub(crate) struct FlvCounter {
    started: bool,
    /// Bytes still to skip (header, or the rest of a tag).
    skip: usize,
    head: Vec<u8>,
    pub(crate) video: u64,
    pub(crate) audio: u64,
}

impl FlvCounter {
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        if !self.started {
            self.started = true;
            self.skip = 13;
        }
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (11 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() == 11 {
                match self.head[0] & 0x1f {
                    9 => self.video += 1,
                    8 => self.audio += 1,
                    _ => {}
                }
                let size = u32::from_be_bytes([0, self.head[1], self.head[2], self.head[3]]);
                self.skip = size as usize + 4;
                self.head.clear();
            }
        }
    }
}

/// What one byte-reading player has seen.
#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    bytes: AtomicU64,
    receiving: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, e: anyhow::Error) {
        self.receiving.store(false, Ordering::SeqCst);
        *lock(&self.error) = Some(format!("{e:#}"));
    }
}

async fn flv_reader(client: reqwest::Client, url: String, c: Arc<Counters>) -> Result<()> {
    let mut resp = client.get(&url).send().await?.error_for_status()?;
    let mut flv = FlvCounter::default();
    while let Some(chunk) = resp.chunk().await? {
        let before = flv.video;
        flv.push(&chunk);
        c.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        c.frames.fetch_add(flv.video - before, Ordering::Relaxed);
        if flv.video > 0 {
            c.receiving.store(true, Ordering::Relaxed);
        }
    }
    bail!("stream ended")
}

/// `rtmp://host[:port]/app/stream?query` → (`host:port`, app, `stream?query`, tcUrl).
pub(crate) fn split_rtmp_url(url: &str) -> Result<(String, String, String, String)> {
    let rest = url.strip_prefix("rtmp://").context("not an rtmp:// URL")?;
    let (host, path) = rest.split_once('/').context("no app in the URL")?;
    let (app, stream) = path.split_once('/').context("no stream in the URL")?;
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:1935")
    };
    Ok((
        addr,
        app.to_owned(),
        stream.to_owned(),
        format!("rtmp://{host}/{app}"),
    ))
}

async fn rtmp_reader(url: String, c: Arc<Counters>) -> Result<()> {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (addr, app, stream, tc_url) = split_rtmp_url(&url)?;
    let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
    let mut hs = Handshake::new(PeerType::Client);
    let p0p1 = hs
        .generate_outbound_p0_and_p1()
        .map_err(|e| anyhow!("handshake: {e:?}"))?;
    tcp.write_all(&p0p1).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let remaining = loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        match hs
            .process_bytes(&buf[..n])
            .map_err(|e| anyhow!("handshake: {e:?}"))?
        {
            HandshakeProcessResult::InProgress { response_bytes } => {
                tcp.write_all(&response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                tcp.write_all(&response_bytes).await?;
                break remaining_bytes;
            }
        }
    };
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(tc_url);
    let (mut session, initial) =
        ClientSession::new(config).map_err(|e| anyhow!("session: {e:?}"))?;
    let mut pending = initial;
    pending.push(
        session
            .request_connection(app)
            .map_err(|e| anyhow!("connect: {e:?}"))?,
    );
    let mut input = remaining;
    loop {
        if !input.is_empty() {
            pending.extend(
                session
                    .handle_input(&input)
                    .map_err(|e| anyhow!("rtmp: {e:?}"))?,
            );
            input.clear();
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < pending.len() {
            match &pending[i] {
                ClientSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                ClientSessionResult::RaisedEvent(ClientSessionEvent::ConnectionRequestAccepted) => {
                    pending.push(
                        session
                            .request_playback(stream.clone())
                            .map_err(|e| anyhow!("play: {e:?}"))?,
                    );
                }
                ClientSessionResult::RaisedEvent(
                    ClientSessionEvent::ConnectionRequestRejected { description },
                ) => bail!("connect rejected: {description}"),
                ClientSessionResult::RaisedEvent(ClientSessionEvent::VideoDataReceived {
                    ..
                }) => {
                    c.frames.fetch_add(1, Ordering::Relaxed);
                    c.receiving.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
            i += 1;
        }
        pending.clear();
        if !out.is_empty() {
            tcp.write_all(&out).await?;
        }
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("stream ended");
        }
        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
        input.extend_from_slice(&buf[..n]);
    }
}

/// Loss over a window: 1 − received ÷ expected, clamped to [0, 1].
pub(crate) fn loss(received: u64, players: usize, fps: u32, secs: f64) -> f64 {
    let expected = players as f64 * f64::from(fps) * secs;
    if expected <= 0.0 {
        return 0.0;
    }
    (1.0 - received as f64 / expected).clamp(0.0, 1.0)
}

/// One load step: `n` players of `output` connected at once (in batches, so the listen
/// backlog does not overflow), warmed up, then measured.
async fn load_level(
    output: Output,
    url: &str,
    n: usize,
    a: &LiveArgs,
    client: &reqwest::Client,
) -> LoadLevel {
    let counters: Vec<Arc<Counters>> = (0..n).map(|_| Arc::new(Counters::default())).collect();
    let mut tasks = Vec::with_capacity(n);
    for (i, c) in counters.iter().enumerate() {
        let (c, url) = (Arc::clone(c), url.to_owned());
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = match output {
                Output::Flv => flv_reader(client, url, Arc::clone(&c)).await,
                _ => rtmp_reader(url, Arc::clone(&c)).await,
            };
            if let Err(e) = r {
                c.fail(e);
            }
        }));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Until every player receives (or 10 s), then the warm-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && counters
            .iter()
            .any(|c| !c.receiving.load(Ordering::Relaxed) && lock(&c.error).is_none())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(a.load_warmup_secs)).await;
    let sum = |f: fn(&Counters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
    let frames0 = sum(|c| c.frames.load(Ordering::Relaxed));
    let bytes0 = sum(|c| c.bytes.load(Ordering::Relaxed));
    let server0 = a.server_pid.map(tree_cpu_seconds);
    let bench = crate::stats::CpuMeter::start();
    tokio::time::sleep(Duration::from_secs_f64(a.load_secs)).await;
    let wall = bench.wall_seconds();
    let frames = sum(|c| c.frames.load(Ordering::Relaxed)) - frames0;
    let bytes = sum(|c| c.bytes.load(Ordering::Relaxed)) - bytes0;
    let server_cpu_percent = match (a.server_pid, server0) {
        (Some(pid), Some(s0)) => 100.0 * (tree_cpu_seconds(pid) - s0) / wall,
        _ => f64::NAN,
    };
    let bench_cpu_percent = bench.percent();
    let connected = counters
        .iter()
        .filter(|c| c.receiving.load(Ordering::Relaxed) && lock(&c.error).is_none())
        .count();
    let mut errors: Vec<String> = counters
        .iter()
        .filter_map(|c| lock(&c.error).clone())
        .collect();
    errors.sort();
    errors.dedup();
    errors.truncate(5);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    LoadLevel {
        players: n,
        connected,
        loss: loss(frames, n, a.fps, wall),
        server_cpu_percent,
        bench_cpu_percent,
        kbps_per_player: bytes as f64 * 8.0 / 1e3 / wall / n.max(1) as f64,
        errors,
        repeated: false,
    }
}

/// Under 1 % loss with every player receiving.
fn level_ok(l: &LoadLevel) -> bool {
    l.loss < 0.01 && l.connected == l.players
}

/// Steps the players of `output` up until a step loses ≥ 1 %.
async fn load_run(output: Output, url: &str, a: &LiveArgs) -> LoadRun {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default();
    let mut levels = Vec::new();
    let (mut max_players, mut players_per_core) = (0, 0.0);
    for &n in &a.players {
        let mut level = load_level(output, url, n, a, &client).await;
        if !level_ok(&level) {
            // The players share the machine with the server (and here with whatever else
            // runs): a step that loses once is repeated before it ends the run.
            println!(
                "live load {:<8} {n:>5} players: loss {:.2} %, {} receiving; repeating the step once",
                output.as_str(),
                level.loss * 100.0,
                level.connected
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            let again = load_level(output, url, n, a, &client).await;
            level = LoadLevel {
                repeated: true,
                ..again
            };
        }
        println!(
            "live load {:<8} {:>5} players: {:>5} receiving, loss {:>6.2} %, server CPU {:>5.1} %, bench CPU {:>5.1} %, {:.0} kbit/s each{}",
            output.as_str(),
            n,
            level.connected,
            level.loss * 100.0,
            level.server_cpu_percent,
            level.bench_cpu_percent,
            level.kbps_per_player,
            level
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        let ok = level_ok(&level);
        if ok {
            max_players = n;
            players_per_core = n as f64 / (level.server_cpu_percent / 100.0).max(1e-3);
        }
        levels.push(level);
        // Let the server close the last step's connections before the next.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !ok {
            break;
        }
    }
    LoadRun {
        output,
        levels,
        max_players,
        players_per_core,
    }
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Until the playlist is served: the server lists it only after its first segment closed,
/// and hlsdemux gives up on a 404.
async fn wait_for_playlist(url: &str, timeout_secs: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs_f64(timeout_secs);
    let client = reqwest::Client::new();
    loop {
        let last = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => r.status().to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("playlist not served after {timeout_secs} s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the whole bench: push, one decoding player per output given, then the load steps
/// (RTMP and HTTP-FLV, when given).
pub async fn run(args: &LiveArgs) -> Result<LiveResults> {
    let a = args.effective();
    let load_at_start = loadavg();
    gst::init()?;
    let publisher = Publisher::start(&a)?;
    let mut failures = Vec::new();
    let mut not_run = Vec::new();
    let mut notes = Vec::new();
    // The server needs the publisher before anyone plays (nginx-rtmp answers a play for an
    // unknown stream and then waits; HLS needs segments).
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(e) = publisher.error() {
        bail!("publisher: {e}");
    }

    let mut players = Vec::new();
    for output in Output::ALL {
        let Some(url) = output.url(&a) else {
            not_run.push((output.as_str().to_owned(), "no URL given".to_owned()));
            continue;
        };
        let player = match output {
            Output::Whep => Player::whep(url).await,
            Output::Hls => match wait_for_playlist(url, a.first_frame_timeout_secs).await {
                Ok(()) => Player::start(output, url),
                Err(e) => Err(e),
            },
            _ => Player::start(output, url),
        };
        match player {
            Ok(p) => players.push(p),
            Err(e) => failures.push((output.as_str().to_owned(), format!("{e:#}"))),
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.first_frame_timeout_secs);
    while Instant::now() < deadline
        && players
            .iter()
            .any(|p| p.first_frame().is_none() && p.error().is_none())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let from = Instant::now() + Duration::from_secs_f64(a.skip_secs);
    tokio::time::sleep(Duration::from_secs_f64(a.skip_secs + a.seconds)).await;
    let to = Instant::now();
    let publisher_ms = summarize(&publisher.out_ms(from, to));
    println!(
        "live publisher (stamp → rtmp2sink) p50 {:.1} p90 {:.1} max {:.1} ms",
        publisher_ms.p50, publisher_ms.p90, publisher_ms.max
    );
    let mut latency = Vec::new();
    for p in players.drain(..) {
        if let Some(r) = &p.resource {
            crate::live_whep::delete(r).await;
        }
        match p.cell(from, to) {
            Ok(c) => {
                println!(
                    "live glass {:<14} p50 {:>7.1} p95 {:>7.1} max {:>7.1} ms, {} frames, {} unreadable, first frame {:.0} ms",
                    p.output.as_str(),
                    c.glass_p50_ms,
                    c.glass_p95_ms,
                    c.glass_max_ms,
                    c.frames,
                    c.unreadable,
                    c.first_frame_ms
                );
                latency.push(c);
            }
            Err(e) => {
                println!("live glass {} FAILED: {e:#}", p.output.as_str());
                failures.push((p.output.as_str().to_owned(), format!("{e:#}")));
            }
        }
    }

    let mut load = Vec::new();
    if a.server_pid.is_none() {
        notes.push("no server pid: load steps have no server CPU, so no players per core".into());
    }
    for output in [Output::Rtmp, Output::Flv] {
        let Some(url) = output.url(&a) else { continue };
        if a.players.is_empty() {
            continue;
        }
        load.push(load_run(output, url, &a).await);
    }
    if let Some(e) = publisher.error() {
        failures.push(("publisher".into(), e));
    }
    // Everything here shares the machine: what else ran shows in the load average.
    notes.push(format!(
        "load average (1 min) {load_at_start} at the start, {} at the end, on {} cores",
        loadavg(),
        crate::stats::cores()
    ));
    drop(publisher);
    Ok(LiveResults {
        server: a.server_name.clone(),
        measured_unix_ms: cloudphone_node::unix_ms(),
        smoke: a.smoke,
        stream: StreamSpec {
            width: a.width,
            height: a.height,
            fps: a.fps,
            kbps: a.kbps,
            gop_frames: a.fps,
            description: Publisher::description(&a),
        },
        urls: Output::ALL
            .iter()
            .filter_map(|o| o.url(&a).map(|u| (*o, strip_query(u))))
            .collect(),
        latency,
        publisher_ms,
        load,
        not_run,
        failures,
        notes,
        skip_secs: a.skip_secs,
        seconds: a.seconds,
        load_warmup_secs: a.load_warmup_secs,
        load_secs: a.load_secs,
    })
}

/// `cloudphone-bench live`: runs against the URLs given, prints the results as JSON and, with
/// `--part`, files them for the report.
pub fn main(args: LiveArgs) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(run(&args))?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    if let Some(part) = &args.part {
        let dir = args.parts.clone().unwrap_or_else(crate::parts::parts_dir);
        let path = crate::parts::write_part(&dir, part, &results)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_frame_reads_back() {
        let (w, h) = (1280u32, 720u32);
        let mut y = vec![40u8; (w * h) as usize];
        stamp_luma(&mut y, w, h, w as usize, 0x1234_5678);
        // Video-range luma as GRAY8 after videoconvert: 16 → 0, 235 → 255; the threshold is
        // in the middle either way.
        assert_eq!(clock::read_gray(&y, w, h, w as usize), Some(0x1234_5678));
    }

    #[test]
    fn flv_tags_are_counted_across_any_split() {
        let mut stream = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for (kind, len) in [(8u8, 7usize), (9, 300), (9, 0), (18, 20), (9, 70_000)] {
            let l = (len as u32).to_be_bytes();
            stream.extend_from_slice(&[kind, l[1], l[2], l[3], 0, 0, 0, 0, 0, 0, 0]);
            stream.extend(std::iter::repeat_n(9u8, len));
            stream.extend_from_slice(&((len + 11) as u32).to_be_bytes());
        }
        for step in [1, 7, 13, 4096, stream.len()] {
            let mut c = FlvCounter::default();
            for chunk in stream.chunks(step) {
                c.push(chunk);
            }
            assert_eq!((c.video, c.audio), (3, 1), "step {step}");
        }
    }

    #[test]
    fn rtmp_urls_split_into_address_app_and_key() {
        let (addr, app, key, tc) =
            split_rtmp_url("rtmp://127.0.0.1:19350/live/1624428150544871?auth_key=1-0-0-ab")
                .unwrap();
        assert_eq!(addr, "127.0.0.1:19350");
        assert_eq!(app, "live");
        assert_eq!(key, "1624428150544871?auth_key=1-0-0-ab");
        assert_eq!(tc, "rtmp://127.0.0.1:19350/live");
        assert_eq!(split_rtmp_url("rtmp://h/a/s").unwrap().0, "h:1935");
        assert!(split_rtmp_url("http://h/a/s").is_err());
    }

    #[test]
    fn loss_is_the_missing_share_of_expected_frames() {
        assert_eq!(loss(300, 1, 30, 10.0), 0.0);
        assert!((loss(297, 1, 30, 10.0) - 0.01).abs() < 1e-9);
        assert_eq!(loss(400, 1, 30, 10.0), 0.0);
        assert_eq!(loss(0, 2, 30, 1.0), 1.0);
    }

    #[test]
    fn proc_stat_with_a_name_holding_parentheses() {
        let line = "42 (nginx: a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 120 30 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some((7, 150)));
        let t = Instant::now();
        while crate::stats::process_cpu_seconds() < 0.05 && t.elapsed() < Duration::from_secs(5) {
            std::hint::black_box((0..1000u64).sum::<u64>());
        }
        assert!(tree_cpu_seconds(std::process::id()) >= 0.04);
    }
}
