//! GStreamer encode pipelines: one capture → scale → encode → RTP packetizer per (instance,
//! profile), handing complete RTP packets to the WebRTC side over a bounded channel.
//!
//! Every choice here is for latency first (see `docs/streaming.md`): no B-frames, no lookahead,
//! a VBV of about 1.5 frames, a one-frame leaky queue in front of the encoder, key frames on
//! request with a long GOP otherwise, and a payloader that never waits for more NAL units.
//! Everything runs on GStreamer's own streaming threads (under `SCHED_RR`, see [`super::priority`]);
//! nothing here blocks a tokio runtime.
//! The pipeline is stopped (state `Null`, threads joined) when [`EncodePipeline`] is dropped.

pub(crate) mod adb;
pub(crate) mod audio;
pub mod rtp;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use cloudphone_core::video::Codec;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tokio::sync::mpsc;

use crate::runtime::CaptureSource;

/// What one encoder is asked to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderSettings {
    pub codec: Codec,
    /// Output size; the capture is scaled (letterboxed if the aspect differs) to it.
    pub width: u32,
    pub height: u32,
    /// Output frame rate; the capture is asked for exactly this rate.
    pub fps: u32,
    /// Target bitrate in kbit/s; the ceiling comes from SetVideoConfig, the live value from
    /// the bitrate controller.
    pub bitrate_kbps: u32,
    /// Encoder element override, e.g. "vah264enc"; `None` picks the best available.
    pub encoder: Option<String>,
}

/// Knobs that are not part of a stream's profile; the defaults are what the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineOptions {
    /// `videotestsrc` pattern for [`CaptureSource::TestPattern`], optionally followed by
    /// `property=value` pairs, e.g. `"zone-plate kx2=20 ky2=20 kt=1"`. "ball" (the default) is
    /// cheap to encode (~120–230 kbit/s at 720×1280 whatever the target), so a benchmark of
    /// encoder load or of rate control wants a busier one: a moving zone plate or "snow".
    pub test_pattern: String,
    /// RTP packets buffered towards the WebRTC side before new ones are dropped (and counted).
    /// 1024 is ~2.5 s at 4 Mbit/s: far more than a healthy consumer needs, small enough that a
    /// stalled one does not hoard memory.
    pub channel_capacity: usize,
    /// The adb binary for [`CaptureSource::Adb`].
    pub adb: std::path::PathBuf,
    /// `SCHED_RR` priority of the pipeline's streaming threads (capture, encode, payload);
    /// 0 keeps normal scheduling. See [`super::priority`].
    pub realtime_priority: u8,
    /// Per-frame latency samples [`PipelineStats`] keeps (the most recent ones).
    pub latency_samples: usize,
    /// How long one `screenrecord` run of [`CaptureSource::Adb`] lasts before the next takes
    /// over (Android stops it at 180 s, the default); shorter in tests. See [`adb`].
    pub screenrecord_time_limit: std::time::Duration,
}

/// A [`PipelineOptions::test_pattern`] of our own: black frames that turn white for the first
/// [`audio::BEEP_MS`] of every whole second of the monotonic clock, the instants a beeping
/// [`crate::runtime::AudioSource::TestTone`] sounds: the audio-video sync probe.
pub const FLASH_PATTERN: &str = "flash";
/// Default [`PipelineOptions::test_pattern`].
pub(crate) const DEFAULT_TEST_PATTERN: &str = "ball";
/// Default [`PipelineOptions::channel_capacity`].
pub(crate) const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
/// RTP payload type the packets carry; the WebRTC side rewrites it to the negotiated one.
pub const RTP_PAYLOAD_TYPE: u32 = 96;
/// RTP packet size cap: leaves room under a 1280-byte path MTU for SRTP, TURN and IPv6.
pub(crate) const RTP_MTU: u32 = 1200;
/// Key frames come on request (PLI/FIR); the periodic one is only a safety net, this many
/// seconds apart.
pub const GOP_SECONDS: u32 = 10;
/// VBV size in frames: enough for a P-frame with some motion, small enough that no frame
/// takes more than ~1.5 frame intervals on the wire at the target rate.
pub const VBV_FRAMES: f64 = 1.5;
/// x265 bitrate changes smaller than these ratios are not worth the key frame they cost.
const X265_MIN_DECREASE: f64 = 0.95;
const X265_MIN_INCREASE: f64 = 1.15;
/// Default [`PipelineOptions::latency_samples`]: four seconds at 30 fps.
pub(crate) const DEFAULT_LATENCY_SAMPLES: usize = 120;
/// How many in-flight frame timestamps the latency probes remember; more than any encoder
/// here holds (zero-latency encoders hold none).
const INFLIGHT_FRAMES: usize = 64;

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            test_pattern: DEFAULT_TEST_PATTERN.to_owned(),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            adb: std::path::PathBuf::from("/usr/bin/adb"),
            realtime_priority: super::priority::DEFAULT_REALTIME_PRIORITY,
            latency_samples: DEFAULT_LATENCY_SAMPLES,
            screenrecord_time_limit: adb::SCREENRECORD_TIME_LIMIT,
        }
    }
}

/// Counters and recent figures of one pipeline. Cheap to take; a snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineStats {
    /// Frames out of the capture stage (before the leaky queue).
    pub frames_captured: u64,
    /// Frames out of the encoder. `frames_captured − frames_encoded` is what the leaky queue
    /// dropped because the encoder was busy (plus at most one in flight).
    pub frames_encoded: u64,
    /// RTP packets handed to the channel.
    pub packets_out: u64,
    /// RTP packets dropped because the channel was full or closed.
    pub packets_dropped: u64,
    /// RTP bytes handed to the channel (headers included).
    pub bytes_out: u64,
    /// Current target bitrate (kbit/s) and frame rate.
    pub bitrate_kbps: u32,
    pub fps: u32,
    /// The encoder element in use.
    pub encoder: String,
    /// The first error the pipeline posted on its bus; the pipeline has stopped producing.
    pub error: Option<String>,
    /// The capture ended (end of stream), e.g. the adb child exited.
    pub ended: bool,
    /// Milliseconds each recent frame spent in the encoder (sink pad → src pad).
    pub encode_latency_ms_recent: Vec<f64>,
    /// Milliseconds from capture to the frame's last RTP packet leaving the pipeline.
    pub pipeline_latency_ms_recent: Vec<f64>,
    /// Streaming threads started so far, and how many of them run under `SCHED_RR`.
    pub streaming_threads: u32,
    pub realtime_threads: u32,
}

/// What can go wrong building or starting a pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("GStreamer initialisation failed: {0}")]
    Init(String),
    #[error("GStreamer element {0:?} is not installed")]
    MissingElement(String),
    #[error("no {0} encoder is installed")]
    NoEncoder(Codec),
    #[error("invalid encoder settings: {0}")]
    InvalidSettings(String),
    #[error("building the pipeline failed: {0}")]
    Build(String),
    #[error("starting the pipeline failed: {0}")]
    Start(String),
    #[error("spawning the capture process failed: {0}")]
    Spawn(#[from] std::io::Error),
}

impl From<gst::glib::BoolError> for MediaError {
    fn from(e: gst::glib::BoolError) -> Self {
        MediaError::Build(e.to_string())
    }
}

/// Initialises GStreamer once per process.
pub(crate) fn init() -> Result<(), MediaError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(MediaError::Init)
}

/// The node's one encoder registry: encoders in order of preference per codec, hardware first
/// (used when a host has it), then software. Pipelines pick from it and the node announces
/// what of it the host has (`available_encoders`).
const H264_ENCODERS: [&str; 6] = [
    "vah264enc",
    "vah264lpenc",
    "nvh264enc",
    "v4l2h264enc",
    "x264enc",
    "openh264enc",
];
const H265_ENCODERS: [&str; 4] = ["vah265enc", "vah265lpenc", "nvh265enc", "x265enc"];

/// Every known H.264/H.265 encoder element installed on this host, in preference order.
pub fn available_encoders() -> Vec<String> {
    if init().is_err() {
        return Vec::new();
    }
    H264_ENCODERS
        .iter()
        .chain(H265_ENCODERS.iter())
        .filter(|name| gst::ElementFactory::find(name).is_some())
        .map(|name| (*name).to_owned())
        .collect()
}

fn best_encoder(codec: Codec) -> Option<&'static str> {
    let candidates: &[&'static str] = match codec {
        Codec::H264 => &H264_ENCODERS,
        Codec::H265 => &H265_ENCODERS,
    };
    candidates
        .iter()
        .copied()
        .find(|name| gst::ElementFactory::find(name).is_some())
}

/// How the encoder element takes its settings; they differ in units and property names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EncoderKind {
    /// `bitrate` kbit/s, live; `vbv-buf-capacity` ms, live.
    X264,
    /// `bitrate` kbit/s, live but it re-creates the encoder (new IDR); VBV via `option-string`,
    /// which is fixed once PLAYING.
    X265,
    /// `bitrate` in bit/s.
    OpenH264,
    /// Hardware and unknown encoders: `bitrate` in kbit/s when they have it.
    Other,
}

impl EncoderKind {
    fn of(element: &str) -> Self {
        match element {
            "x264enc" => EncoderKind::X264,
            "x265enc" => EncoderKind::X265,
            "openh264enc" => EncoderKind::OpenH264,
            _ => EncoderKind::Other,
        }
    }
}

/// Frame timestamps (PTS, ns) seen at a probe point with when they passed it; bounded.
#[derive(Default)]
struct Inflight(VecDeque<(u64, Instant)>);

impl Inflight {
    fn push(&mut self, pts: u64, at: Instant) {
        if self.0.len() >= INFLIGHT_FRAMES {
            self.0.pop_front();
        }
        self.0.push_back((pts, at));
    }

    /// Removes and returns the entry for `pts` and anything older (those frames were dropped).
    fn take(&mut self, pts: u64) -> Option<Instant> {
        while let Some(&(p, at)) = self.0.front() {
            if p > pts {
                return None;
            }
            self.0.pop_front();
            if p == pts {
                return Some(at);
            }
        }
        None
    }
}

fn push_sample(ring: &mut VecDeque<f64>, cap: usize, value: f64) {
    while ring.len() >= cap.max(1) {
        ring.pop_front();
    }
    ring.push_back(value);
}

/// What every pipeline of the node, video or audio, records from its streaming threads: the
/// packets it handed on or dropped, and how it stopped. Shared between the owner, the appsink
/// ([`install_sink`]) and the bus handler ([`install_bus`]).
#[derive(Default)]
struct Outlet {
    packets_out: AtomicU64,
    packets_dropped: AtomicU64,
    bytes_out: AtomicU64,
    ended: AtomicBool,
    error: Mutex<Option<String>>,
}

/// Shared between the owner and the streaming-thread callbacks.
#[derive(Default)]
struct Shared {
    frames_captured: AtomicU64,
    frames_encoded: AtomicU64,
    out: Arc<Outlet>,
    bitrate_kbps: AtomicU32,
    fps: AtomicU32,
    latency_samples: usize,
    streaming_threads: AtomicU32,
    realtime_threads: AtomicU32,
    /// Capture time of frames still in the pipeline, for the end-to-end figure.
    captured_at: Mutex<Inflight>,
    /// Encoder-input time of frames inside the encoder.
    encoding_at: Mutex<Inflight>,
    encode_latency: Mutex<VecDeque<f64>>,
    pipeline_latency: Mutex<VecDeque<f64>>,
}

/// A poisoned lock only means a callback panicked mid-update of a statistic; the data is
/// still usable, so take it rather than propagate the panic into GStreamer's threads.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One running capture → encode → RTP pipeline. Dropping it stops the pipeline.
pub struct EncodePipeline {
    /// Unique per process; element names start with it, so do their streaming threads.
    name: String,
    pipeline: gst::Pipeline,
    encoder: gst::Element,
    kind: EncoderKind,
    /// The bitrate at start; x265's VBV cap, so its ceiling.
    start_bitrate_kbps: u32,
    /// Caps right after the source: asks the capture for the frame rate (set_fps changes it).
    source_caps: gst::Element,
    /// Caps in front of the encoder: size, format and rate.
    encode_caps: gst::Element,
    settings: Mutex<EncoderSettings>,
    shared: Arc<Shared>,
    /// The `screenrecord` runs feeding [`CaptureSource::Adb`]; stopped on drop.
    screenrecord: Option<adb::ScreenRecord>,
}

impl std::fmt::Debug for EncodePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodePipeline")
            .field("name", &self.name)
            .field("settings", &*lock(&self.settings))
            .finish_non_exhaustive()
    }
}

fn make(factory: &str, name: String) -> Result<gst::Element, MediaError> {
    if gst::ElementFactory::find(factory).is_none() {
        return Err(MediaError::MissingElement(factory.to_owned()));
    }
    Ok(gst::ElementFactory::make(factory).name(name).build()?)
}

fn validate(settings: &EncoderSettings) -> Result<(), MediaError> {
    let bad = |m: String| Err(MediaError::InvalidSettings(m));
    if settings.width == 0
        || settings.height == 0
        || settings.width > 8192
        || settings.height > 8192
    {
        return bad(format!("size {}x{}", settings.width, settings.height));
    }
    // 4:2:0 chroma needs even dimensions.
    if !settings.width.is_multiple_of(2) || !settings.height.is_multiple_of(2) {
        return bad(format!(
            "size {}x{} is not even",
            settings.width, settings.height
        ));
    }
    if !(1..=120).contains(&settings.fps) {
        return bad(format!("fps {}", settings.fps));
    }
    if !(1..=100_000).contains(&settings.bitrate_kbps) {
        return bad(format!("bitrate {} kbps", settings.bitrate_kbps));
    }
    Ok(())
}

fn raw_caps(width: Option<(u32, u32)>, fps: u32) -> gst::Caps {
    let mut b = gst::Caps::builder("video/x-raw");
    if let Some((w, h)) = width {
        b = b
            .field("format", "I420")
            .field("width", w as i32)
            .field("height", h as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    }
    b.field("framerate", gst::Fraction::new(fps as i32, 1))
        .build()
}

/// VBV in milliseconds for x264 (`vbv-buf-capacity`).
fn vbv_ms(fps: u32) -> u32 {
    ((VBV_FRAMES * 1000.0 / f64::from(fps.max(1))).round() as u32).max(1)
}

/// x265's options: no B-frames or lookahead, headers with every key frame, and a VBV of
/// [`VBV_FRAMES`] (in kbit) capped at the target rate.
fn x265_options(bitrate_kbps: u32, fps: u32) -> String {
    let bufsize =
        ((f64::from(bitrate_kbps) * VBV_FRAMES / f64::from(fps.max(1))).ceil() as u32).max(1);
    format!(
        "bframes=0:b-adapt=0:rc-lookahead=0:repeat-headers=1:vbv-maxrate={bitrate_kbps}:vbv-bufsize={bufsize}"
    )
}

fn configure_encoder(enc: &gst::Element, kind: EncoderKind, s: &EncoderSettings) {
    let gop = s.fps.saturating_mul(GOP_SECONDS);
    match kind {
        EncoderKind::X264 => {
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property_from_str("speed-preset", "ultrafast");
            enc.set_property("bframes", 0u32);
            enc.set_property("key-int-max", gop);
            enc.set_property("rc-lookahead", 0i32);
            // One thread per stream: a host runs many streams, so parallelism comes from
            // running them side by side. Slice threads bought no encode latency here (720P and
            // 1080P p50 within 3 % of one thread, benches/results/REPORT.md) and cost CPU
            // and a tail: a frame waits for the last slice thread the scheduler wakes.
            enc.set_property("threads", 1u32);
            enc.set_property("sliced-threads", false);
            enc.set_property("vbv-buf-capacity", vbv_ms(s.fps));
            enc.set_property("byte-stream", true);
            // Access unit delimiters are for MPEG-TS; RTP frames by marker bit and timestamp.
            enc.set_property("aud", false);
            enc.set_property("bitrate", s.bitrate_kbps);
        }
        EncoderKind::X265 => {
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property_from_str("speed-preset", "ultrafast");
            enc.set_property("key-int-max", gop as i32);
            enc.set_property("option-string", x265_options(s.bitrate_kbps, s.fps));
            enc.set_property("bitrate", s.bitrate_kbps);
        }
        EncoderKind::OpenH264 => {
            enc.set_property("bitrate", s.bitrate_kbps.saturating_mul(1000));
            set_if_exists(enc, "gop-size", gop);
        }
        EncoderKind::Other => {
            set_if_exists(enc, "bitrate", s.bitrate_kbps);
            set_if_exists(enc, "key-int-max", gop);
            set_if_exists(enc, "b-frames", 0u32);
        }
    }
}

/// Sets a property only when the element has it with this value type; hardware encoders
/// differ in what they expose.
fn set_if_exists<V: Into<gst::glib::Value> + StaticType>(el: &gst::Element, name: &str, value: V) {
    if let Some(pspec) = el.find_property(name)
        && pspec.value_type() == V::static_type()
        && pspec.flags().contains(gst::glib::ParamFlags::WRITABLE)
    {
        el.set_property(name, value);
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl EncodePipeline {
    /// Builds and starts a pipeline with the default [`PipelineOptions`].
    pub fn start(
        source: &CaptureSource,
        settings: &EncoderSettings,
    ) -> Result<(EncodePipeline, mpsc::Receiver<Bytes>), MediaError> {
        Self::start_with(source, settings, &PipelineOptions::default())
    }

    /// Builds and starts a pipeline. Each received [`Bytes`] is one complete RTP packet.
    /// Returns once the pipeline is PLAYING; the first packets follow within a few frames.
    pub fn start_with(
        source: &CaptureSource,
        settings: &EncoderSettings,
        options: &PipelineOptions,
    ) -> Result<(EncodePipeline, mpsc::Receiver<Bytes>), MediaError> {
        init()?;
        validate(settings)?;
        let encoder_name = match &settings.encoder {
            Some(name) => name.clone(),
            None => best_encoder(settings.codec)
                .ok_or(MediaError::NoEncoder(settings.codec))?
                .to_owned(),
        };
        let kind = EncoderKind::of(&encoder_name);
        let name = format!("cpenc{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let n = |suffix: &str| format!("{name}-{suffix}");
        let pipeline = gst::Pipeline::with_name(&name);
        // The clock every pipeline of the node runs on (see `audio`'s lip-sync notes).
        pipeline.use_clock(Some(&gst::SystemClock::obtain()));
        let mut screenrecord = None;

        // Capture stage: everything up to raw frames at the source's own size.
        let mut capture: Vec<gst::Element> = Vec::new();
        match source {
            CaptureSource::X11 { display, .. } => {
                let src = make("ximagesrc", n("src"))?;
                src.set_property("display-name", display);
                src.set_property("use-damage", false);
                src.set_property("show-pointer", true);
                capture.push(src);
            }
            CaptureSource::TestPattern { width, height } => {
                let src = make("videotestsrc", n("src"))?;
                src.set_property("is-live", true);
                if options.test_pattern == FLASH_PATTERN {
                    apply_pattern(&src, "black")?;
                } else {
                    apply_pattern(&src, &options.test_pattern)?;
                }
                capture.push(src);
                let size = make("capsfilter", n("size"))?;
                size.set_property(
                    "caps",
                    gst::Caps::builder("video/x-raw")
                        .field("width", *width as i32)
                        .field("height", *height as i32)
                        .build(),
                );
                capture.push(size);
            }
            CaptureSource::Adb {
                serial,
                width,
                height,
            } => {
                // screenrecord writes an H.264 elementary stream on stdout; it is decoded and
                // re-encoded so bitrate, frame rate and key frames stay under our control. Its
                // runs follow one another in one pipe, past its time limit (see `adb`).
                let args = adb::screenrecord_args(
                    serial,
                    *width,
                    *height,
                    options.screenrecord_time_limit,
                );
                let runs = adb::ScreenRecord::start(&options.adb, args, &name)?;
                let Some(fd) = runs.fd() else {
                    return Err(MediaError::Start("adb has no stdout".into()));
                };
                let src = make("fdsrc", n("src"))?;
                src.set_property("fd", fd);
                // The stream has no timestamps; stamp buffers as they arrive.
                src.set_property("do-timestamp", true);
                capture.push(src);
                let parse = make("h264parse", n("adbparse"))?;
                capture.push(parse);
                capture.push(make("avdec_h264", n("adbdec"))?);
                screenrecord = Some(runs);
            }
        }
        let is_adb = matches!(source, CaptureSource::Adb { .. });

        // Asks live sources for exactly the output rate: they then pace themselves and no
        // videorate (which holds one frame to pick the closest, a frame of latency) is needed.
        // adb's stream is variable-rate, so there videorate does the job instead.
        let source_caps = make("capsfilter", n("srccaps"))?;
        if !is_adb {
            source_caps.set_property("caps", raw_caps(None, settings.fps));
        }
        let convert = make("videoconvert", n("convert"))?;
        let scale = make("videoscale", n("scale"))?;
        let encode_caps = make("capsfilter", n("enccaps"))?;
        encode_caps.set_property(
            "caps",
            raw_caps(Some((settings.width, settings.height)), settings.fps),
        );
        // One frame, leaky: when the encoder is busy the stale frame is dropped, so latency
        // never builds up in front of it.
        let queue = make("queue", n("q"))?;
        queue.set_property("max-size-buffers", 1u32);
        queue.set_property("max-size-bytes", 0u32);
        queue.set_property("max-size-time", 0u64);
        queue.set_property_from_str("leaky", "downstream");

        if gst::ElementFactory::find(&encoder_name).is_none() {
            return Err(MediaError::MissingElement(encoder_name));
        }
        let encoder = make(&encoder_name, n("enc"))?;
        configure_encoder(&encoder, kind, settings);
        let (parser_name, pay_name, encoded_caps) = match settings.codec {
            // Constrained baseline: every WebRTC H.264 decoder takes it (profile-level-id
            // 42e01f family); without B-frames High would buy only CABAC's ~10 %.
            Codec::H264 => (
                "h264parse",
                "rtph264pay",
                gst::Caps::builder("video/x-h264")
                    .field("profile", "constrained-baseline")
                    .field("stream-format", "byte-stream")
                    .build(),
            ),
            Codec::H265 => (
                "h265parse",
                "rtph265pay",
                gst::Caps::builder("video/x-h265")
                    .field("stream-format", "byte-stream")
                    .build(),
            ),
        };
        let profile = make("capsfilter", n("profile"))?;
        profile.set_property("caps", encoded_caps);
        let parser = make(parser_name, n("parse"))?;
        parser.set_property("config-interval", -1i32);
        let pay = make(pay_name, n("pay"))?;
        pay.set_property("pt", RTP_PAYLOAD_TYPE);
        pay.set_property("mtu", RTP_MTU);
        pay.set_property("config-interval", -1i32);
        if pay.find_property("aggregate-mode").is_some() {
            pay.set_property_from_str("aggregate-mode", "zero-latency");
        }
        let sink = rtp_sink(n("sink"));

        let mut chain: Vec<gst::Element> = capture;
        chain.push(source_caps.clone());
        chain.push(convert);
        chain.push(scale);
        if is_adb {
            chain.push(make("videorate", n("rate"))?);
        }
        chain.push(encode_caps.clone());
        chain.push(queue);
        chain.push(encoder.clone());
        chain.push(profile);
        chain.push(parser);
        chain.push(pay);
        chain.push(sink.clone().upcast());
        pipeline.add_many(chain.iter())?;
        gst::Element::link_many(chain.iter())?;

        let shared = Arc::new(Shared {
            latency_samples: options.latency_samples,
            ..Shared::default()
        });
        shared
            .bitrate_kbps
            .store(settings.bitrate_kbps, Ordering::Relaxed);
        shared.fps.store(settings.fps, Ordering::Relaxed);
        install_probes(&source_caps, &encoder, &shared)?;
        if options.test_pattern == FLASH_PATTERN
            && matches!(source, CaptureSource::TestPattern { .. })
        {
            install_flash(&encode_caps, &pipeline)?;
        }
        let (tx, rx) = mpsc::channel(options.channel_capacity.max(1));
        let s = Arc::clone(&shared);
        install_sink(&sink, tx, &shared.out, move |sample, packet| {
            s.time_frame(sample, packet);
        });
        let s = Arc::clone(&shared);
        let realtime_priority = options.realtime_priority;
        install_bus(&pipeline, &name, &shared.out, move |msg| {
            s.count_thread(msg, realtime_priority);
        })?;

        let mut settings = settings.clone();
        settings.encoder = Some(encoder_name);
        let this = EncodePipeline {
            name,
            pipeline,
            encoder,
            kind,
            start_bitrate_kbps: settings.bitrate_kbps,
            source_caps,
            encode_caps,
            settings: Mutex::new(settings),
            shared,
            screenrecord,
        };
        // On failure `this` is dropped on return, which stops whatever did start.
        play(&this.pipeline, &this.shared.out)?;
        tracing::info!(pipeline = %this.name, settings = ?*lock(&this.settings), "encode pipeline started");
        Ok((this, rx))
    }

    /// The pipeline's unique name; its elements (and so its streaming threads) are named
    /// `<name>-…`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Changes the target bitrate without a restart. x264 applies it to the next frame.
    ///
    /// x265enc differs in two ways, so on H.265: the bitrate the pipeline started with is a
    /// ceiling (its VBV cap lives in `option-string`, which x265enc accepts only before
    /// PLAYING; a higher ceiling needs a new pipeline), and every change re-creates the
    /// encoder, i.e. costs a key frame, so changes smaller than −5 % / +15 % are ignored.
    /// [`EncodePipeline::settings`] and [`PipelineStats::bitrate_kbps`] show what applies.
    pub fn set_bitrate(&self, kbps: u32) {
        let mut kbps = kbps.clamp(1, 100_000);
        let mut settings = lock(&self.settings);
        if self.kind == EncoderKind::X265 {
            kbps = kbps.min(self.start_bitrate_kbps);
            let ratio = f64::from(kbps) / f64::from(settings.bitrate_kbps.max(1));
            let small = ratio > X265_MIN_DECREASE && ratio < X265_MIN_INCREASE;
            if small && kbps != self.start_bitrate_kbps {
                return;
            }
        }
        if settings.bitrate_kbps == kbps {
            return;
        }
        settings.bitrate_kbps = kbps;
        match self.kind {
            EncoderKind::X264 => self.encoder.set_property("bitrate", kbps),
            EncoderKind::X265 => self.encoder.set_property("bitrate", kbps),
            EncoderKind::OpenH264 => self
                .encoder
                .set_property("bitrate", kbps.saturating_mul(1000)),
            EncoderKind::Other => set_if_exists(&self.encoder, "bitrate", kbps),
        }
        self.shared.bitrate_kbps.store(kbps, Ordering::Relaxed);
        tracing::debug!(pipeline = %self.name, kbps, "bitrate set");
    }

    /// Changes the frame rate without a restart: the capture is renegotiated to the new rate
    /// and the encoder follows the new caps.
    pub fn set_fps(&self, fps: u32) {
        let fps = fps.clamp(1, 120);
        let mut settings = lock(&self.settings);
        if settings.fps == fps {
            return;
        }
        settings.fps = fps;
        match self.kind {
            EncoderKind::X264 => self.encoder.set_property("vbv-buf-capacity", vbv_ms(fps)),
            // x265's VBV (in kbit) stays as sized at start: ~3 frames at double the rate.
            EncoderKind::X265 | EncoderKind::OpenH264 | EncoderKind::Other => {}
        }
        if self
            .source_caps
            .property::<Option<gst::Caps>>("caps")
            .is_some_and(|c| !c.is_any())
        {
            self.source_caps.set_property("caps", raw_caps(None, fps));
        }
        self.encode_caps.set_property(
            "caps",
            raw_caps(Some((settings.width, settings.height)), fps),
        );
        self.shared.fps.store(fps, Ordering::Relaxed);
        tracing::debug!(pipeline = %self.name, fps, "frame rate set");
    }

    /// Asks the encoder for a key frame with its parameter sets as soon as possible (a PLI or
    /// FIR from a viewer, or a new viewer joining).
    pub fn request_keyframe(&self) {
        let event = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        let sent = self
            .encoder
            .static_pad("src")
            .is_some_and(|pad| pad.send_event(event));
        if !sent {
            tracing::warn!(pipeline = %self.name, "key frame request not handled by the encoder");
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PipelineStats {
        let s = &self.shared;
        PipelineStats {
            frames_captured: s.frames_captured.load(Ordering::Relaxed),
            frames_encoded: s.frames_encoded.load(Ordering::Relaxed),
            packets_out: s.out.packets_out.load(Ordering::Relaxed),
            packets_dropped: s.out.packets_dropped.load(Ordering::Relaxed),
            bytes_out: s.out.bytes_out.load(Ordering::Relaxed),
            bitrate_kbps: s.bitrate_kbps.load(Ordering::Relaxed),
            fps: s.fps.load(Ordering::Relaxed),
            encoder: lock(&self.settings).encoder.clone().unwrap_or_default(),
            error: lock(&s.out.error).clone(),
            ended: s.out.ended.load(Ordering::Relaxed),
            encode_latency_ms_recent: lock(&s.encode_latency).iter().copied().collect(),
            pipeline_latency_ms_recent: lock(&s.pipeline_latency).iter().copied().collect(),
            streaming_threads: s.streaming_threads.load(Ordering::Relaxed),
            realtime_threads: s.realtime_threads.load(Ordering::Relaxed),
        }
    }

    /// The current settings, with `encoder` filled in with the element actually used.
    pub fn settings(&self) -> EncoderSettings {
        lock(&self.settings).clone()
    }
}

impl Drop for EncodePipeline {
    fn drop(&mut self) {
        // Setting Null stops and joins every streaming thread before returning.
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            tracing::warn!(pipeline = %self.name, error = %e, "stopping the pipeline failed");
        }
        drop(self.screenrecord.take());
        tracing::debug!(pipeline = %self.name, "encode pipeline stopped");
    }
}

/// A buffer's running time on `pad`: the one timestamp every element keeps for a frame (the
/// encoder re-bases PTS by an hour so DTS cannot go negative, and shifts its segment to match).
fn running_time(pad: &gst::Pad, info: &gst::PadProbeInfo<'_>) -> Option<u64> {
    let pts = info.buffer()?.pts()?;
    let segment = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = segment.segment().downcast_ref::<gst::ClockTime>()?.clone();
    segment.to_running_time(pts).map(|rt| rt.nseconds())
}

/// Counts frames at the capture and around the encoder, and times each frame through the
/// encoder (sink pad → src pad, matched by running time).
fn install_probes(
    source_caps: &gst::Element,
    encoder: &gst::Element,
    shared: &Arc<Shared>,
) -> Result<(), MediaError> {
    let pad = |el: &gst::Element, name: &str| {
        el.static_pad(name)
            .ok_or_else(|| MediaError::Build(format!("{} has no {name} pad", el.name())))
    };
    let s = Arc::clone(shared);
    pad(source_caps, "src")?.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        s.frames_captured.fetch_add(1, Ordering::Relaxed);
        if let Some(rt) = running_time(pad, info) {
            lock(&s.captured_at).push(rt, Instant::now());
        }
        gst::PadProbeReturn::Ok
    });
    let s = Arc::clone(shared);
    pad(encoder, "sink")?.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(rt) = running_time(pad, info) {
            lock(&s.encoding_at).push(rt, Instant::now());
        }
        gst::PadProbeReturn::Ok
    });
    let s = Arc::clone(shared);
    pad(encoder, "src")?.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        s.frames_encoded.fetch_add(1, Ordering::Relaxed);
        if let Some(rt) = running_time(pad, info) {
            let started = lock(&s.encoding_at).take(rt);
            if let Some(at) = started {
                push_sample(
                    &mut lock(&s.encode_latency),
                    s.latency_samples,
                    at.elapsed().as_secs_f64() * 1e3,
                );
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// Paints the luma of each I420 frame white inside a beep window, black outside
/// ([`FLASH_PATTERN`]).
fn install_flash(encode_caps: &gst::Element, pipeline: &gst::Pipeline) -> Result<(), MediaError> {
    on_captured_buffer(encode_caps, pipeline, |pad, buffer, clock_time_ns| {
        let Some(size) = pad
            .current_caps()
            .and_then(|c| gst_video::VideoInfo::from_caps(&c).ok())
            .map(|v| v.width() as usize * v.height() as usize)
        else {
            return;
        };
        let luma = if audio::in_beep(clock_time_ns) {
            235
        } else {
            16
        };
        if let Ok(mut map) = buffer.map_writable() {
            let plane = size.min(map.len());
            map.as_mut_slice()[..plane].fill(luma);
        }
    })
}

/// Runs `f` on each buffer leaving `element`'s src pad, made writable, with the clock time it
/// was captured at: its `PTS + base_time` (every pipeline of the node runs on the system clock,
/// see `audio`'s lip-sync notes). The flash of the test pattern and the beeps of the test tone
/// are drawn this way, on the same instants.
fn on_captured_buffer(
    element: &gst::Element,
    pipeline: &gst::Pipeline,
    f: impl Fn(&gst::Pad, &mut gst::BufferRef, u64) + Send + Sync + 'static,
) -> Result<(), MediaError> {
    let pad = element
        .static_pad("src")
        .ok_or_else(|| MediaError::Build(format!("{} has no src pad", element.name())))?;
    let pipeline = pipeline.downgrade();
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(base) = pipeline.upgrade().and_then(|p| p.base_time()) else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(buffer) = info.buffer_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(pts) = buffer.pts() else {
            return gst::PadProbeReturn::Ok;
        };
        f(pad, buffer.make_mut(), pts.nseconds() + base.nseconds());
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// The appsink that ends every pipeline of the node: no clock sync, and a full queue drops its
/// oldest buffer rather than block a streaming thread.
fn rtp_sink(name: String) -> gst_app::AppSink {
    gst_app::AppSink::builder()
        .name(name)
        .sync(false)
        .drop(true)
        .max_buffers(8)
        .build()
}

/// The appsink's next RTP packet, copied out with its sample; `None` when the sample has no
/// buffer, or one that cannot be read (counted in `dropped`).
fn pull_packet(
    sink: &gst_app::AppSink,
    dropped: &AtomicU64,
) -> Result<Option<(gst::Sample, Bytes)>, gst::FlowError> {
    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
    let packet = match sample.buffer().map(|b| b.map_readable()) {
        None => return Ok(None),
        Some(Err(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        Some(Ok(map)) => Bytes::copy_from_slice(map.as_slice()),
    };
    Ok(Some((sample, packet)))
}

/// Hands each RTP packet to the channel without blocking: when the consumer is behind, the
/// packet is dropped and counted (the viewer recovers with NACK/PLI; a stalled encoder thread
/// would instead delay every viewer). `inspect` sees each packet with its sample first.
fn install_sink(
    sink: &gst_app::AppSink,
    tx: mpsc::Sender<Bytes>,
    out: &Arc<Outlet>,
    inspect: impl Fn(&gst::Sample, &[u8]) + Send + 'static,
) {
    let out = Arc::clone(out);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let Some((sample, packet)) = pull_packet(sink, &out.packets_dropped)? else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                inspect(&sample, &packet);
                let len = packet.len() as u64;
                match tx.try_send(packet) {
                    Ok(()) => {
                        out.packets_out.fetch_add(1, Ordering::Relaxed);
                        out.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(_) => {
                        out.packets_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

impl Shared {
    /// The marker packet ends a frame: times the frame from capture.
    fn time_frame(&self, sample: &gst::Sample, packet: &[u8]) {
        let marker = packet.get(1).is_some_and(|b| b & 0x80 != 0);
        if !marker {
            return;
        }
        let rt = sample
            .segment()
            .and_then(|seg| seg.downcast_ref::<gst::ClockTime>())
            .and_then(|seg| seg.to_running_time(sample.buffer().and_then(|b| b.pts())));
        if let Some(rt) = rt {
            let captured = lock(&self.captured_at).take(rt.nseconds());
            if let Some(at) = captured {
                push_sample(
                    &mut lock(&self.pipeline_latency),
                    self.latency_samples,
                    at.elapsed().as_secs_f64() * 1e3,
                );
            }
        }
    }

    /// Counts the streaming threads as they start, raising each one's priority
    /// ([`super::priority`]).
    fn count_thread(&self, msg: &gst::Message, realtime_priority: u8) {
        if let Some(realtime) = super::priority::elevate_entering_thread(msg, realtime_priority) {
            self.streaming_threads.fetch_add(1, Ordering::Relaxed);
            if realtime {
                self.realtime_threads.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Bus messages are handled synchronously on the posting thread (no main loop needed):
/// errors are logged and kept in the [`Outlet`], never dropped silently. `also` sees every
/// message first.
fn install_bus(
    pipeline: &gst::Pipeline,
    name: &str,
    out: &Arc<Outlet>,
    also: impl Fn(&gst::Message) + Send + Sync + 'static,
) -> Result<(), MediaError> {
    let bus = pipeline
        .bus()
        .ok_or_else(|| MediaError::Build("pipeline has no bus".into()))?;
    let out = Arc::clone(out);
    let name = name.to_owned();
    bus.set_sync_handler(move |_, msg| {
        also(msg);
        match msg.view() {
            gst::MessageView::Error(err) => {
                let source = msg.src().map(|o| o.path_string().to_string()).unwrap_or_default();
                let text = format!("{source}: {}", err.error());
                tracing::error!(pipeline = %name, error = %text, debug = ?err.debug(), "pipeline error");
                lock(&out.error).get_or_insert(text);
            }
            gst::MessageView::Warning(w) => {
                let source = msg.src().map(|o| o.path_string().to_string()).unwrap_or_default();
                tracing::warn!(pipeline = %name, source = %source, warning = %w.error(), "pipeline warning");
            }
            gst::MessageView::Eos(_) => {
                tracing::info!(pipeline = %name, "capture ended");
                out.ended.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        gst::BusSyncReply::Drop
    });
    Ok(())
}

/// Sets the pipeline PLAYING. A failure is reported with the error its bus posted, which says
/// more than the state change does.
fn play(pipeline: &gst::Pipeline, out: &Outlet) -> Result<(), MediaError> {
    match pipeline.set_state(gst::State::Playing) {
        Ok(_) => Ok(()),
        Err(e) => Err(MediaError::Start(
            lock(&out.error).clone().unwrap_or_else(|| e.to_string()),
        )),
    }
}

/// Applies `"<pattern> [property=value]…"` to a `videotestsrc`.
fn apply_pattern(src: &gst::Element, spec: &str) -> Result<(), MediaError> {
    let mut words = spec.split_whitespace();
    let pattern = words.next().unwrap_or(DEFAULT_TEST_PATTERN);
    // Parsed first: set_property_from_str would panic on a bad name or value.
    let settable = |name: &str, value: &str| -> Result<(), MediaError> {
        let pspec = src.find_property(name).ok_or_else(|| {
            MediaError::InvalidSettings(format!("videotestsrc has no property {name:?}"))
        })?;
        let parsed = gst::glib::Value::deserialize_with_pspec(value, &pspec).map_err(|_| {
            MediaError::InvalidSettings(format!("videotestsrc {name}={value:?} does not parse"))
        })?;
        src.set_property_from_value(name, &parsed);
        Ok(())
    };
    settable("pattern", pattern)?;
    for word in words {
        let (name, value) = word.split_once('=').ok_or_else(|| {
            MediaError::InvalidSettings(format!("{word:?} is not property=value"))
        })?;
        settable(name, value)?;
    }
    Ok(())
}
