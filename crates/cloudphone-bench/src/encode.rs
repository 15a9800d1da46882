//! Encode latency per frame on the node's real [`EncodePipeline`], next to a bare
//! `videotestsrc ! x264enc|x265enc` pipeline with the same encoder settings, run back to back
//! in one process so the noise of a shared machine hits both alike.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudphone_core::video::{Codec, Definition, NetworkType, VideoConfig};
use cloudphone_node::runtime::CaptureSource;
use cloudphone_node::streaming::pipeline::{
    EncodePipeline, EncoderSettings, GOP_SECONDS, PipelineOptions, VBV_FRAMES,
};
use cloudphone_node::streaming::priority::{self, DEFAULT_REALTIME_PRIORITY as REALTIME_PRIORITY};
use gstreamer as gst;
use gstreamer::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::{CpuMeter, Summary, summarize};

/// The `videotestsrc` pattern both pipelines encode: the node's own default (a ball moving
/// over a flat background), closest to a phone UI of the patterns GStreamer has.
pub const PATTERN: &str = "ball";

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub codec: Codec,
    pub definition: Definition,
    pub fps: u32,
    /// SetVideoConfig's default code rate for this codec and definition (WIFI row).
    pub bitrate_kbps: u32,
}

impl Cell {
    pub fn new(codec: Codec, definition: Definition, fps: u32) -> Self {
        let spec = VideoConfig::default().get(NetworkType::Wifi, codec, definition);
        Self {
            codec,
            definition,
            fps,
            bitrate_kbps: spec.code_rate_kbps,
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{} {}{}",
            self.codec.as_str(),
            self.definition.as_str(),
            self.fps
        )
    }

    pub fn size(&self) -> (u32, u32) {
        self.definition.portrait_size()
    }

    /// The node pipeline's settings for this cell, encoding with `encoder`.
    pub(crate) fn encoder_settings(&self, encoder: &str) -> EncoderSettings {
        let (width, height) = self.size();
        EncoderSettings {
            codec: self.codec,
            width,
            height,
            fps: self.fps,
            bitrate_kbps: self.bitrate_kbps,
            encoder: Some(encoder.to_owned()),
        }
    }
}

/// The full matrix, or the one cell the smoke run checks. `CLOUDPHONE_BENCH_CELLS` (labels,
/// comma-separated, e.g. `H264 720P30,H265 720P30`) narrows the full matrix for a quick look.
pub fn cells(smoke: bool) -> Vec<Cell> {
    if smoke {
        return vec![Cell::new(Codec::H264, Definition::P540, 30)];
    }
    let only = std::env::var("CLOUDPHONE_BENCH_CELLS").unwrap_or_default();
    let wanted: Vec<&str> = only
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    for codec in Codec::ALL {
        for definition in Definition::ALL {
            for fps in [30, 60] {
                let cell = Cell::new(codec, definition, fps);
                if wanted.is_empty() || wanted.contains(&cell.label().as_str()) {
                    out.push(cell);
                }
            }
        }
    }
    out
}

/// Frames per cell: skipped at the start (encoder start-up, first IDR) and then measured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Frames {
    pub warmup: u64,
    pub measured: u64,
}

impl Frames {
    pub fn for_run(smoke: bool) -> Self {
        if smoke {
            Frames {
                warmup: 5,
                measured: 20,
            }
        } else {
            // 300 frames: the p99 is then the 3rd-slowest frame, not the slowest but one.
            Frames {
                warmup: 30,
                measured: 300,
            }
        }
    }
}

/// What one pipeline did over the measured frames.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measured {
    /// Encoder sink pad → src pad, per frame.
    pub encode_ms: Summary,
    /// Capture caps filter → last RTP packet of the frame (node pipeline) or → encoder output
    /// (bare pipeline, which has no payloader).
    pub capture_to_out_ms: Summary,
    pub frames_captured: u64,
    pub frames_encoded: u64,
    /// Frames captured but never encoded (the leaky queue dropped them: encoder busy).
    pub frames_dropped: u64,
    /// CPU of the whole process over the window, % of one core (one stream runs at a time).
    pub cpu_percent: f64,
    /// Output rate over the window (RTP with headers for the node pipeline).
    pub kbps: f64,
    pub wall_seconds: f64,
    /// The encode samples themselves, for the CDF plots.
    pub encode_samples: Vec<f64>,
    /// Streaming threads the pipeline started, and how many of them ran under `SCHED_RR`.
    #[serde(default)]
    pub streaming_threads: u64,
    #[serde(default)]
    pub realtime_threads: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: Cell,
    pub label: String,
    pub width: u32,
    pub height: u32,
    pub encoder: String,
    pub pipeline: Measured,
    pub bare: Measured,
    /// pipeline / bare, encode p50 and p99.
    pub ratio_p50: f64,
    pub ratio_p99: f64,
}

fn gop(fps: u32) -> u32 {
    fps * GOP_SECONDS
}

fn encoder_element(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "x264enc",
        Codec::H265 => "x265enc",
    }
}

/// The encoder and its output caps exactly as `pipeline.rs` configures them (x264/x265,
/// software), in `gst-launch` syntax.
pub fn bare_encoder_description(cell: &Cell) -> String {
    let fps = cell.fps;
    let kbps = cell.bitrate_kbps;
    match cell.codec {
        Codec::H264 => format!(
            "x264enc name=enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max={} \
             rc-lookahead=0 threads=1 sliced-threads=false vbv-buf-capacity={} byte-stream=true aud=false \
             bitrate={kbps} ! video/x-h264,profile=constrained-baseline,stream-format=byte-stream",
            gop(fps),
            ((VBV_FRAMES * 1000.0 / f64::from(fps)).round() as u32).max(1),
        ),
        Codec::H265 => {
            let bufsize = ((f64::from(kbps) * VBV_FRAMES / f64::from(fps)).ceil() as u32).max(1);
            format!(
                "x265enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max={} \
                 option-string=\"bframes=0:b-adapt=0:rc-lookahead=0:repeat-headers=1:vbv-maxrate={kbps}:vbv-bufsize={bufsize}\" \
                 bitrate={kbps} ! video/x-h265,stream-format=byte-stream",
                gop(fps)
            )
        }
    }
}

/// The whole bare pipeline: source at the output size and rate, the same one-frame leaky
/// queue (so capture and encode run on separate threads as in the node), the encoder.
pub fn bare_description(cell: &Cell, live: bool) -> String {
    let (w, h) = cell.size();
    format!(
        "videotestsrc name=src is-live={live} pattern={PATTERN} \
         ! video/x-raw,format=I420,width={w},height={h},framerate={}/1,pixel-aspect-ratio=1/1 \
         ! capsfilter name=cap ! queue max-size-buffers=1 max-size-bytes=0 max-size-time=0 leaky=downstream \
         ! {} ! fakesink name=sink sync=false",
        cell.fps,
        bare_encoder_description(cell)
    )
}

fn running_time(pad: &gst::Pad, info: &gst::PadProbeInfo<'_>) -> Option<u64> {
    let pts = info.buffer()?.pts()?;
    let segment = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = segment.segment().downcast_ref::<gst::ClockTime>()?.clone();
    segment.to_running_time(pts).map(|rt| rt.nseconds())
}

#[derive(Default)]
struct Probes {
    threads: AtomicU64,
    realtime_threads: AtomicU64,
    captured: AtomicU64,
    encoded: AtomicU64,
    bytes: AtomicU64,
    at_capture: Mutex<VecDeque<(u64, Instant)>>,
    at_encoder: Mutex<VecDeque<(u64, Instant)>>,
    encode_ms: Mutex<Vec<f64>>,
    capture_ms: Mutex<Vec<f64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Finds `rt` (dropping older entries: those frames never came out) and returns its time.
fn take(q: &mut VecDeque<(u64, Instant)>, rt: u64) -> Option<Instant> {
    while let Some(&(p, at)) = q.front() {
        if p > rt {
            return None;
        }
        q.pop_front();
        if p == rt {
            return Some(at);
        }
    }
    None
}

fn push(q: &mut VecDeque<(u64, Instant)>, rt: u64) {
    if q.len() >= 64 {
        q.pop_front();
    }
    q.push_back((rt, Instant::now()));
}

/// A running bare pipeline with probes at the capture caps and around the encoder.
pub struct Bare {
    pipeline: gst::Pipeline,
    probes: Arc<Probes>,
}

impl Bare {
    pub fn start(cell: &Cell, live: bool) -> Result<Bare> {
        gst::init()?;
        let pipeline = gst::parse::launch(&bare_description(cell, live))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
        let probes = Arc::new(Probes::default());
        // The node's scheduling for its streaming threads, so that the two differ only in
        // what runs around the encoder.
        if let Some(bus) = pipeline.bus() {
            let p = Arc::clone(&probes);
            bus.set_sync_handler(move |_, msg| {
                if let Some(rt) = priority::elevate_entering_thread(msg, REALTIME_PRIORITY) {
                    p.threads.fetch_add(1, Ordering::Relaxed);
                    if rt {
                        p.realtime_threads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                gst::BusSyncReply::Pass
            });
        }
        let el = |name: &str| {
            pipeline
                .by_name(name)
                .with_context(|| format!("no element {name}"))
        };
        let pad = |el: &gst::Element, name: &str| {
            el.static_pad(name)
                .with_context(|| format!("{} has no {name} pad", el.name()))
        };
        let (cap, enc) = (el("cap")?, el("enc")?);
        let p = Arc::clone(&probes);
        pad(&cap, "src")?.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            p.captured.fetch_add(1, Ordering::Relaxed);
            if let Some(rt) = running_time(pad, info) {
                push(&mut lock(&p.at_capture), rt);
            }
            gst::PadProbeReturn::Ok
        });
        let p = Arc::clone(&probes);
        pad(&enc, "sink")?.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(rt) = running_time(pad, info) {
                push(&mut lock(&p.at_encoder), rt);
            }
            gst::PadProbeReturn::Ok
        });
        let p = Arc::clone(&probes);
        pad(&enc, "src")?.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            p.encoded.fetch_add(1, Ordering::Relaxed);
            if let Some(size) = info.buffer().map(|b| b.size()) {
                p.bytes.fetch_add(size as u64, Ordering::Relaxed);
            }
            if let Some(rt) = running_time(pad, info) {
                if let Some(at) = take(&mut lock(&p.at_encoder), rt) {
                    lock(&p.encode_ms).push(at.elapsed().as_secs_f64() * 1e3);
                }
                if let Some(at) = take(&mut lock(&p.at_capture), rt) {
                    lock(&p.capture_ms).push(at.elapsed().as_secs_f64() * 1e3);
                }
            }
            gst::PadProbeReturn::Ok
        });
        pipeline
            .set_state(gst::State::Playing)
            .context("starting the bare pipeline")?;
        Ok(Bare { pipeline, probes })
    }

    pub fn frames_encoded(&self) -> u64 {
        self.probes.encoded.load(Ordering::Relaxed)
    }

    pub fn error(&self) -> Option<String> {
        let bus = self.pipeline.bus()?;
        let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
        match msg.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Polls `done` every 5 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn cell_timeout(cell: &Cell, frames: u64) -> Duration {
    // Three times the nominal duration plus start-up: a cell that cannot keep up still ends.
    Duration::from_secs_f64(3.0 * frames as f64 / f64::from(cell.fps) + 10.0)
}

/// The node's pipeline on a test pattern for one cell.
pub fn measure_pipeline(cell: &Cell, frames: Frames) -> Result<(Measured, String)> {
    let (width, height) = cell.size();
    let settings = cell.encoder_settings(encoder_element(cell.codec));
    let options = PipelineOptions {
        test_pattern: PATTERN.to_owned(),
        // Every frame of the window, not just the default's most recent.
        latency_samples: (frames.warmup + frames.measured) as usize,
        ..PipelineOptions::default()
    };
    let (pipeline, mut rx) = EncodePipeline::start_with(
        &CaptureSource::TestPattern { width, height },
        &settings,
        &options,
    )
    .context("starting the node pipeline")?;
    // The WebRTC side's place: take every packet as it comes.
    let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    let total = frames.warmup + frames.measured;
    let timeout = cell_timeout(cell, total);
    if !wait_until(timeout, || pipeline.stats().frames_encoded >= frames.warmup) {
        bail!("{}: no frames ({:?})", cell.label(), pipeline.stats().error);
    }
    let before = pipeline.stats();
    let meter = CpuMeter::start();
    let complete = wait_until(timeout, || {
        let s = pipeline.stats();
        s.frames_encoded >= total || s.error.is_some()
    });
    let cpu_percent = meter.percent();
    let wall = meter.wall_seconds();
    let after = pipeline.stats();
    let encoder = after.encoder.clone();
    drop(pipeline);
    let _ = drain.join();
    if let Some(e) = after.error {
        bail!("{}: pipeline error: {e}", cell.label());
    }
    if !complete {
        bail!(
            "{}: only {} frames in {timeout:?}",
            cell.label(),
            after.frames_encoded
        );
    }
    let encoded = after.frames_encoded - before.frames_encoded;
    let captured = after.frames_captured - before.frames_captured;
    let last = |v: &[f64], n: u64| v[v.len().saturating_sub(n as usize)..].to_vec();
    let encode_samples = last(
        &after.encode_latency_ms_recent,
        encoded.min(frames.measured),
    );
    Ok((
        Measured {
            encode_ms: summarize(&encode_samples),
            capture_to_out_ms: summarize(&last(
                &after.pipeline_latency_ms_recent,
                encoded.min(frames.measured),
            )),
            frames_captured: captured,
            frames_encoded: encoded,
            frames_dropped: captured.saturating_sub(encoded),
            cpu_percent,
            kbps: (after.bytes_out - before.bytes_out) as f64 * 8.0 / wall / 1000.0,
            wall_seconds: wall,
            encode_samples,
            streaming_threads: u64::from(after.streaming_threads),
            realtime_threads: u64::from(after.realtime_threads),
        },
        encoder,
    ))
}

/// The bare encoder for one cell, live at the cell's rate like the node's source.
pub fn measure_bare(cell: &Cell, frames: Frames) -> Result<Measured> {
    let bare = Bare::start(cell, true)?;
    let total = frames.warmup + frames.measured;
    let timeout = cell_timeout(cell, total);
    if !wait_until(timeout, || bare.frames_encoded() >= frames.warmup) {
        bail!(
            "{}: bare pipeline produced nothing ({:?})",
            cell.label(),
            bare.error()
        );
    }
    let p = Arc::clone(&bare.probes);
    let (captured0, bytes0) = (
        p.captured.load(Ordering::Relaxed),
        p.bytes.load(Ordering::Relaxed),
    );
    let (enc0, cap0) = (lock(&p.encode_ms).len(), lock(&p.capture_ms).len());
    let encoded0 = bare.frames_encoded();
    let meter = CpuMeter::start();
    let complete = wait_until(timeout, || bare.frames_encoded() >= total);
    let cpu_percent = meter.percent();
    let wall = meter.wall_seconds();
    let encoded = bare.frames_encoded() - encoded0;
    let captured = p.captured.load(Ordering::Relaxed) - captured0;
    let bytes = p.bytes.load(Ordering::Relaxed) - bytes0;
    let (streaming_threads, realtime_threads) = (
        p.threads.load(Ordering::Relaxed),
        p.realtime_threads.load(Ordering::Relaxed),
    );
    drop(bare);
    if !complete {
        bail!("{}: bare pipeline only {encoded} frames", cell.label());
    }
    let encode_samples = lock(&p.encode_ms)[enc0..].to_vec();
    let capture_samples = lock(&p.capture_ms)[cap0..].to_vec();
    Ok(Measured {
        encode_ms: summarize(&encode_samples),
        capture_to_out_ms: summarize(&capture_samples),
        frames_captured: captured,
        frames_encoded: encoded,
        frames_dropped: captured.saturating_sub(encoded),
        cpu_percent,
        kbps: bytes as f64 * 8.0 / wall / 1000.0,
        wall_seconds: wall,
        encode_samples,
        streaming_threads,
        realtime_threads,
    })
}

/// One cell: the node's pipeline, then the bare encoder, back to back.
pub fn measure_cell(cell: &Cell, frames: Frames) -> Result<CellResult> {
    let (pipeline, encoder) = measure_pipeline(cell, frames)?;
    let bare = measure_bare(cell, frames)?;
    let (width, height) = cell.size();
    Ok(CellResult {
        cell: *cell,
        label: cell.label(),
        width,
        height,
        encoder,
        ratio_p50: pipeline.encode_ms.p50 / bare.encode_ms.p50,
        ratio_p99: pipeline.encode_ms.p99 / bare.encode_ms.p99,
        pipeline,
        bare,
    })
}

/// CPU milliseconds per frame of the bare encoder (source included) as fast as it goes: the
/// figure the density bound is computed from.
pub fn bare_cpu_ms_per_frame(cell: &Cell, frames: u64) -> Result<f64> {
    let bare = Bare::start(cell, false)?;
    if !wait_until(Duration::from_secs(30), || bare.frames_encoded() >= 10) {
        bail!("bare throughput run produced nothing ({:?})", bare.error());
    }
    let start = bare.frames_encoded();
    let meter = CpuMeter::start();
    wait_until(Duration::from_secs(60), || {
        bare.frames_encoded() >= start + frames
    });
    let done = bare.frames_encoded() - start;
    let cpu = meter.cpu_seconds();
    drop(bare);
    Ok(cpu * 1000.0 / done.max(1) as f64)
}

/// Hardware encoders this host has; the benches name what they skip.
pub fn hardware_encoders() -> Vec<String> {
    cloudphone_node::streaming::pipeline::available_encoders()
        .into_iter()
        .filter(|e| !matches!(e.as_str(), "x264enc" | "x265enc" | "openh264enc"))
        .collect()
}

/// The encode bench's part of the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeResults {
    pub smoke: bool,
    pub pattern: String,
    pub frames: Frames,
    pub cells: Vec<CellResult>,
    /// Cells that failed, with why.
    pub failures: Vec<(String, String)>,
    /// "skipped: …" when the host has no hardware encoder.
    pub hardware: String,
}

/// Runs the matrix (or the smoke cell), printing a line per cell.
pub fn run(smoke: bool) -> EncodeResults {
    let frames = Frames::for_run(smoke);
    let mut cells_out = Vec::new();
    let mut failures = Vec::new();
    for cell in cells(smoke) {
        match measure_cell(&cell, frames) {
            Ok(r) => {
                println!(
                    "encode {:<12} {:>5} kbps  pipeline p50 {:>6.2} p99 {:>6.2} ms  bare p50 {:>6.2} p99 {:>6.2} ms  ratio {:.2}  dropped {}  cpu {:.0}%",
                    r.label,
                    r.cell.bitrate_kbps,
                    r.pipeline.encode_ms.p50,
                    r.pipeline.encode_ms.p99,
                    r.bare.encode_ms.p50,
                    r.bare.encode_ms.p99,
                    r.ratio_p50,
                    r.pipeline.frames_dropped,
                    r.pipeline.cpu_percent
                );
                cells_out.push(r);
            }
            Err(e) => {
                println!("encode {:<12} FAILED: {e:#}", cell.label());
                failures.push((cell.label(), format!("{e:#}")));
            }
        }
    }
    let hw = hardware_encoders();
    let hardware = if hw.is_empty() {
        "skipped: no vah264enc/nvh264enc on this host".to_owned()
    } else {
        format!("present but not benchmarked yet: {}", hw.join(", "))
    };
    println!("hardware encoders: {hardware}");
    EncodeResults {
        smoke,
        pattern: PATTERN.to_owned(),
        frames,
        cells: cells_out,
        failures,
        hardware,
    }
}
