//! HLS output of a live stream: a GStreamer pipeline per stream being played, fed from the hub,
//! writing MPEG-TS segments and a playlist into a temporary directory per stream.
//!
//! # Pipeline
//! `appsrc (FLV: header + the hub's tags) ! flvdemux ! h264parse ! mpegtsmux ! hlssink` (and
//! `flvdemux.audio ! aacparse ! mpegtsmux` when the publisher sends AAC), no re-encode.
//! `hlssink` asks upstream for a key unit every target duration (1 s); `h264parse` answers at
//! the next keyframe with a downstream key-unit event, on which `hlssink` closes the segment
//! and rewrites the playlist at once. (`hlssink2` cuts at the same keyframes but a GOP later:
//! its `splitmuxsink` decides where a segment ends only once the following GOP is complete,
//! so each segment was listed about one GOP after it could have been.) Nothing upstream can
//! make a keyframe, so **a segment lasts max(1 s, the publisher's GOP)**: a camera
//! pushing a keyframe every 2 s gets 2 s segments and `#EXT-X-TARGETDURATION:2`, and the first
//! playlist is ready about one GOP after the pipeline starts (the hub hands over the current GOP
//! from its keyframe; the next keyframe closes the first segment). Publishers that want low HLS
//! latency push a 1 s GOP.
//!
//! # Life cycle
//! A stream's pipeline starts on the first playlist request and stops when the publisher
//! leaves, when nobody asked for its playlist or a segment for [`HlsSettings::idle`], or when
//! the pipeline fails. Stopping deletes the stream's directory; the next request starts afresh
//! in a new directory (named `{stream_id}-{generation}`, so a stopping pipeline never deletes a
//! newer one's files).
//!
//! # URLs
//! The playlist is served at `/{app}/{id}.m3u8`; its segment URIs are rewritten to
//! `{id}/{segment}?{query}` (relative: `/{app}/{id}/{segment}`), so the player's `auth_key`
//! follows every segment request. Segment names are only ever `seg` + digits + `.ts`; any other
//! name is `NotFound` before it reaches the file system.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::{broadcast, watch};

use crate::live::avc::CODEC_AVC;
use crate::live::flv;
use crate::live::hub::{Hub, Subscription, Tag, TagKind};
use crate::live::output::{LiveOutputError, valid_stream_id};

const PLAYLIST: &str = "index.m3u8";
/// FLV bytes queued in a stream's appsrc beyond which the pipeline is taken as stalled
/// (about 30 s of a 4 Mbit/s stream).
const MAX_QUEUED_BYTES: u64 = 16 << 20;

/// Tunables of the HLS output.
#[derive(Clone, Debug)]
pub(crate) struct HlsSettings {
    /// Stop a stream's pipeline this long after its last playlist or segment request.
    pub(crate) idle: Duration,
    /// How long a playlist request waits for the first segment before `NotReady`.
    pub(crate) first_segment_wait: Duration,
    /// `hlssink`'s target duration (whole seconds).
    pub(crate) target_duration_secs: u32,
    /// Segments listed in the playlist.
    pub(crate) playlist_length: u32,
}

impl Default for HlsSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(10),
            first_segment_wait: Duration::from_secs(6),
            target_duration_secs: 1,
            playlist_length: 6,
        }
    }
}

/// Every stream's HLS output on this node.
pub(crate) struct Hls {
    hub: Arc<Hub>,
    dir: PathBuf,
    settings: HlsSettings,
    streams: Arc<Mutex<HashMap<String, Arc<HlsStream>>>>,
    generation: AtomicU64,
}

/// One stream being played over HLS.
struct HlsStream {
    dir: PathBuf,
    last_request: Mutex<Instant>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

impl HlsStream {
    fn touch(&self) {
        *self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *self
            .last_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running pipeline and its directory; dropping it stops the one and deletes the other.
struct Running {
    pipeline: gst::Pipeline,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Hls {
    /// HLS for the streams of `hub`, with per-stream directories under `dir`.
    pub(crate) fn new(hub: Arc<Hub>, dir: PathBuf) -> Self {
        Self::with_settings(hub, dir, HlsSettings::default())
    }

    pub(crate) fn with_settings(hub: Arc<Hub>, dir: PathBuf, settings: HlsSettings) -> Self {
        remove_stale_dirs(&dir);
        Self {
            hub,
            dir,
            settings,
            streams: Arc::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// The stream's playlist with segment URIs carrying `?{query}`; starts the stream's
    /// pipeline on the first request.
    pub(crate) async fn playlist(
        &self,
        app: &str,
        stream_id: &str,
        query: &str,
    ) -> Result<String, LiveOutputError> {
        if !valid_stream_id(stream_id) {
            return Err(LiveOutputError::NotFound);
        }
        let stream = self.stream_or_start(app, stream_id)?;
        stream.touch();
        let path = stream.dir.join(PLAYLIST);
        let deadline = tokio::time::Instant::now() + self.settings.first_segment_wait;
        loop {
            // hlssink replaces the playlist file atomically (`g_file_set_contents` writes a
            // temporary and renames it), so a read never sees half a playlist.
            if let Ok(text) = tokio::fs::read_to_string(&path).await
                && text.contains("#EXTINF")
            {
                return Ok(rewrite_playlist(&text, stream_id, query));
            }
            if *stream.done.borrow() {
                return Err(LiveOutputError::NotFound);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LiveOutputError::NotReady);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A segment of a stream being played (the bytes of one MPEG-TS file).
    pub(crate) async fn segment(
        &self,
        stream_id: &str,
        name: &str,
    ) -> Result<Bytes, LiveOutputError> {
        if !valid_stream_id(stream_id) || !is_segment_name(name) {
            return Err(LiveOutputError::NotFound);
        }
        let stream = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream_id)
            .cloned()
            .ok_or(LiveOutputError::NotFound)?;
        stream.touch();
        match tokio::fs::read(stream.dir.join(name)).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            // Not written yet, or already rotated out of the playlist and deleted.
            Err(_) => Err(LiveOutputError::NotFound),
        }
    }

    /// Streams with a running HLS pipeline.
    #[cfg(test)]
    pub(crate) fn active(&self) -> Vec<String> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Reaps idle streams every second until `stop` turns true (the node's shutdown).
    pub(crate) async fn reap_idle(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.reap(Instant::now()).await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// Stops every stream whose last request is `idle` or more before `now`, and waits until
    /// they have stopped. [`Hls::reap_idle`] calls this with the current time every second;
    /// tests call it with a later time instead of waiting.
    pub(crate) async fn reap(&self, now: Instant) {
        let idle: Vec<Arc<HlsStream>> = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| now.saturating_duration_since(s.idle_since()) >= self.settings.idle)
            .cloned()
            .collect();
        for stream in idle {
            let _ = stream.stop.send(true);
            let mut done = stream.done.clone();
            let _ = done.wait_for(|d| *d).await;
        }
    }

    fn stream_or_start(
        &self,
        app: &str,
        stream_id: &str,
    ) -> Result<Arc<HlsStream>, LiveOutputError> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stream) = streams.get(stream_id)
            && !*stream.done.borrow()
        {
            return Ok(Arc::clone(stream));
        }
        let sub = self
            .hub
            .subscribe(stream_id)
            .ok_or(LiveOutputError::NotFound)?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("{stream_id}-{generation}"));
        let (running, appsrc, audio) = start_pipeline(&dir, &sub.first, &self.settings)?;
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let stream = Arc::new(HlsStream {
            dir,
            last_request: Mutex::new(Instant::now()),
            stop,
            done,
        });
        streams.insert(stream_id.to_owned(), Arc::clone(&stream));
        tracing::info!(app, stream_id, generation, audio, "HLS output started");
        tokio::spawn(feed(
            Feed {
                stream_id: stream_id.to_owned(),
                stream: Arc::clone(&stream),
                streams: Arc::clone(&self.streams),
                idle: self.settings.idle,
                appsrc,
                audio,
            },
            running,
            sub,
            stop_rx,
            done_tx,
        ));
        Ok(stream)
    }
}

/// Deletes the stream directories a previous run of the node left (it may have been killed
/// mid-stream). Only names this module makes (`{stream_id}-{generation}`) are touched, so a
/// misconfigured `dir` loses nothing else.
fn remove_stale_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let ours = name.rsplit_once('-').is_some_and(|(id, generation)| {
            valid_stream_id(id)
                && !generation.is_empty()
                && generation.bytes().all(|b| b.is_ascii_digit())
        });
        if ours && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `seg` + digits + `.ts`: the only names hlssink writes here (see `start_pipeline`).
fn is_segment_name(name: &str) -> bool {
    name.strip_prefix("seg")
        .and_then(|n| n.strip_suffix(".ts"))
        .is_some_and(|digits| {
            !digits.is_empty() && digits.len() <= 12 && digits.bytes().all(|b| b.is_ascii_digit())
        })
}

/// The playlist with each segment URI as `{stream_id}/{name}?{query}`.
fn rewrite_playlist(text: &str, stream_id: &str, query: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(stream_id);
            out.push('/');
            out.push_str(line);
            if !query.is_empty() {
                out.push('?');
                out.push_str(query);
            }
        }
        out.push('\n');
    }
    out
}

/// Builds and starts the pipeline for a stream whose start tags are `first`; returns the
/// running pipeline, its appsrc (already holding the FLV header and `first`) and whether it
/// carries audio.
fn start_pipeline(
    dir: &Path,
    first: &[Tag],
    settings: &HlsSettings,
) -> Result<(Running, gst_app::AppSrc, bool), LiveOutputError> {
    let video_header = first
        .iter()
        .find(|t| t.kind == TagKind::Video && t.is_sequence_header())
        .ok_or(LiveOutputError::NotReady)?;
    let codec = video_header.data.first().map_or(0, |b| b & 0x0f);
    if codec != CODEC_AVC {
        return Err(LiveOutputError::Unsupported(format!(
            "video codec id {codec}: HLS here carries H.264"
        )));
    }
    // AAC only: other FLV audio (MP3, G.711...) is left out rather than failing the video.
    let audio = first
        .iter()
        .any(|t| t.kind == TagKind::Audio && t.is_sequence_header());
    gst::init().map_err(|e| LiveOutputError::Internal(e.to_string()))?;
    // `config-interval=-1`: SPS/PPS before every keyframe, so each segment decodes on its own
    // (RTMP encoders send them once, in the sequence header).
    let mut line = String::from(
        "appsrc name=src format=bytes caps=video/x-flv ! flvdemux name=d \
         d.video ! queue ! h264parse config-interval=-1 ! m. ",
    );
    if audio {
        line.push_str("d.audio ! queue ! aacparse ! m. ");
    }
    line.push_str("mpegtsmux name=m ! hlssink name=h");
    let internal = |e: &dyn std::fmt::Display| LiveOutputError::Internal(e.to_string());
    let pipeline = gst::parse::launch(&line)
        .map_err(|e| internal(&e))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| internal(&"not a pipeline"))?;
    // No clock: hlssink's file sink syncs to it by default, which would hold every buffer
    // until its running time. The hub hands over the current GOP (up to a GOP old) at once,
    // rebased to 0, so with a clock every segment closed that much later for the pipeline's
    // whole life (0 to 1 GOP of extra HLS latency, by when the first player came). The
    // publisher already paces the input.
    pipeline.use_clock(None::<&gst::Clock>);
    std::fs::create_dir_all(dir).map_err(|e| internal(&e))?;
    // From here on, dropping `running` deletes the directory.
    let running = Running {
        pipeline,
        dir: dir.to_owned(),
    };
    let sink = running
        .pipeline
        .by_name("h")
        .ok_or_else(|| internal(&"no hlssink"))?;
    // `%` in the directory would be read as a format directive.
    let dir_text = dir.to_string_lossy().replace('%', "%%");
    sink.set_property("location", format!("{dir_text}/seg%05d.ts"));
    sink.set_property(
        "playlist-location",
        dir.join(PLAYLIST).to_string_lossy().into_owned(),
    );
    sink.set_property("target-duration", settings.target_duration_secs);
    sink.set_property("playlist-length", settings.playlist_length);
    // Keep rotated segments a while: a player holding an older playlist still fetches them.
    sink.set_property("max-files", settings.playlist_length * 2);
    let appsrc = running
        .pipeline
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| internal(&"no appsrc"))?;
    running
        .pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| internal(&e))?;
    let mut rebase = Rebase::new(first);
    let mut bytes = bytes::BytesMut::from(&flv::header(audio)[..]);
    for tag in first {
        if tag.kind != TagKind::Audio || audio {
            flv::put_tag_at(&mut bytes, tag, rebase.apply(tag));
        }
    }
    appsrc
        .push_buffer(gst::Buffer::from_mut_slice(bytes))
        .map_err(|e| internal(&e))?;
    Ok((running, appsrc, audio))
}

/// Shifts the publisher's timestamps so the pipeline starts at 0 (a late joiner's first tag can
/// be hours into the publisher's timeline).
#[derive(Clone, Copy)]
struct Rebase(u32);

impl Rebase {
    /// The earliest frame of the start tags (audio interleaved with the GOP can be a little
    /// older than its keyframe); headers and metadata carry stale or zero timestamps.
    fn new(first: &[Tag]) -> Self {
        Self(
            first
                .iter()
                .filter(|t| t.kind != TagKind::Script && !t.is_sequence_header())
                .map(|t| t.timestamp_ms)
                .min()
                .unwrap_or(0),
        )
    }

    fn apply(&mut self, tag: &Tag) -> u32 {
        tag.timestamp_ms.saturating_sub(self.0)
    }
}

struct Feed {
    stream_id: String,
    stream: Arc<HlsStream>,
    streams: Arc<Mutex<HashMap<String, Arc<HlsStream>>>>,
    idle: Duration,
    appsrc: gst_app::AppSrc,
    audio: bool,
}

/// Feeds the hub's live tags into the pipeline until the publisher leaves, the stream idles,
/// it is told to stop, or the pipeline fails; then tears the stream down.
async fn feed(
    feed: Feed,
    running: Running,
    mut sub: Subscription,
    mut stop: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let mut rebase = Rebase::new(&sub.first);
    let bus = running.pipeline.bus();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // After a lag the next frames would reference ones this pipeline never got.
    let mut skip_to_keyframe = false;
    let why = loop {
        tokio::select! {
            tag = sub.live.recv() => match tag {
                Ok(tag) => {
                    if tag.kind == TagKind::Audio && !feed.audio {
                        continue;
                    }
                    if skip_to_keyframe {
                        if tag.kind == TagKind::Video && tag.is_keyframe() {
                            skip_to_keyframe = false;
                        } else if tag.kind != TagKind::Script && !tag.is_sequence_header() {
                            continue;
                        }
                    }
                    let mut bytes = bytes::BytesMut::new();
                    flv::put_tag_at(&mut bytes, &tag, rebase.apply(&tag));
                    if let Err(e) = feed.appsrc.push_buffer(gst::Buffer::from_slice(bytes.freeze())) {
                        break format!("pipeline refused data: {e}");
                    }
                    // appsrc queues without bound; a pipeline that stopped writing (a full
                    // disk) must not hold the stream in memory.
                    if feed.appsrc.current_level_bytes() > MAX_QUEUED_BYTES {
                        break "pipeline stalled".to_owned();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(stream_id = feed.stream_id, n, "HLS output lagged");
                    skip_to_keyframe = true;
                }
                Err(broadcast::error::RecvError::Closed) => break "publisher left".to_owned(),
            },
            _ = stop.changed() => break "stopped".to_owned(),
            _ = tick.tick() => {
                if feed.stream.idle_since().elapsed() >= feed.idle {
                    break "no player".to_owned();
                }
                if let Some(msg) = bus.as_ref().and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
                    && let gst::MessageView::Error(err) = msg.view()
                {
                    break format!("pipeline error: {}", err.error());
                }
            }
        }
    };
    tracing::info!(stream_id = feed.stream_id, why, "HLS output stopped");
    {
        let mut streams = feed.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if streams
            .get(&feed.stream_id)
            .is_some_and(|s| Arc::ptr_eq(s, &feed.stream))
        {
            streams.remove(&feed.stream_id);
        }
    }
    // Stopping a pipeline blocks on its streaming threads.
    let _ = tokio::task::spawn_blocking(move || drop(running)).await;
    let _ = done.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use crate::live::testfeed::{Decoded, TestPublisher, decode_ts, wait_for_keyframe};

    const ID: &str = "1624428150544871";

    #[test]
    fn only_segment_names_pass() {
        assert!(is_segment_name("seg00001.ts"));
        assert!(is_segment_name("seg123456.ts"));
        for bad in [
            "",
            "seg.ts",
            "../seg00001.ts",
            "seg00001.ts/../../etc/passwd",
            "/etc/passwd",
            "index.m3u8",
            "seg0000a.ts",
            "seg00001.ts.bak",
            "seg%2e%2e.ts",
        ] {
            assert!(!is_segment_name(bad), "{bad}");
        }
    }

    #[test]
    fn segment_uris_carry_the_query() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n\n#EXTINF:1,\nseg00003.ts\n";
        let out = rewrite_playlist(text, ID, "auth_key=1-0-0-abc");
        assert_eq!(
            out,
            format!(
                "#EXTM3U\n#EXT-X-TARGETDURATION:1\n\n#EXTINF:1,\n{ID}/seg00003.ts?auth_key=1-0-0-abc\n"
            )
        );
        assert!(rewrite_playlist(text, ID, "").contains(&format!("\n{ID}/seg00003.ts\n")));
    }

    /// Segment URIs of a playlist, without their query.
    fn segments(playlist: &str) -> Vec<String> {
        playlist
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let path = l.split('?').next().unwrap_or_default();
                path.rsplit('/').next().unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// Waits (bounded) for a playlist of at least three segments and returns it.
    async fn three_segments(hls: &Hls, query: &str) -> String {
        let mut playlist = String::new();
        for _ in 0..100 {
            playlist = hls.playlist("live", ID, query).await.unwrap();
            if segments(&playlist).len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(segments(&playlist).len() >= 3, "{playlist}");
        playlist
    }

    /// A stream published with a keyframe every `gop_frames` frames (and AAC with `audio`),
    /// and HLS over it in a temporary directory.
    async fn published(
        gop_frames: u32,
        audio: bool,
    ) -> (tempfile::TempDir, Arc<Hub>, Hls, TestPublisher) {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Arc::new(Hub::default());
        let hls = Hls::new(Arc::clone(&hub), tmp.path().to_owned());
        let publisher = TestPublisher::start_with(&hub, ID, gop_frames, audio);
        wait_for_keyframe(&hub, ID).await;
        (tmp, hub, hls, publisher)
    }

    /// Each segment decoded alone, as a player joining at any segment of the playlist does.
    async fn decode_each(hls: &Hls, names: &[String]) -> Vec<Decoded> {
        let mut out = Vec::new();
        for name in names {
            let ts = hls.segment(ID, name).await.unwrap();
            out.push(
                tokio::task::spawn_blocking(move || decode_ts(&ts))
                    .await
                    .unwrap(),
            );
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_stream_plays_over_hls_and_stops_with_its_publisher() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Arc::new(Hub::default());
        let hls = Hls::new(Arc::clone(&hub), tmp.path().to_owned());
        assert_eq!(
            hls.playlist("live", ID, "").await,
            Err(LiveOutputError::NotFound),
            "nobody publishes it"
        );
        let publisher = TestPublisher::start(&hub, ID, 30);
        wait_for_keyframe(&hub, ID).await;

        let playlist = three_segments(&hls, "auth_key=k").await;
        let names = segments(&playlist);
        assert!(playlist.contains("#EXT-X-TARGETDURATION:1"), "{playlist}");
        for line in playlist.lines().filter(|l| l.contains(".ts")) {
            assert!(line.starts_with(&format!("{ID}/seg")), "{line}");
            assert!(line.ends_with(".ts?auth_key=k"), "{line}");
        }
        let decoded = decode_each(&hls, &names).await;
        // 1 s segments of a 1 s GOP at 30 fps: about 30 frames each.
        assert!(
            decoded
                .iter()
                .all(|d| d.video_frames >= 15 && d.audio_buffers == 0),
            "{decoded:?}"
        );
        assert!(
            decoded.iter().map(|d| d.video_frames).sum::<usize>() >= 60,
            "{decoded:?}"
        );

        for bad in ["../index.m3u8", "index.m3u8", "seg99999.ts"] {
            assert_eq!(
                hls.segment(ID, bad).await,
                Err(LiveOutputError::NotFound),
                "{bad}"
            );
        }
        assert_eq!(
            hls.segment("../1", &names[0]).await,
            Err(LiveOutputError::NotFound)
        );
        let dirs = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(dirs, 1, "one directory per stream being played");

        drop(publisher);
        let mut stopped = false;
        for _ in 0..100 {
            if hls.active().is_empty() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(stopped, "the pipeline stops when the publisher leaves");
        assert_eq!(
            hls.segment(ID, &names[0]).await,
            Err(LiveOutputError::NotFound)
        );
        assert_eq!(
            hls.playlist("live", ID, "").await,
            Err(LiveOutputError::NotFound)
        );
        // The directory goes with the pipeline (removed just after the map entry).
        for _ in 0..100 {
            if std::fs::read_dir(tmp.path()).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_nobody_plays_stops_after_the_idle_time() {
        let (tmp, _hub, hls, _publisher) = published(30, false).await;
        hls.playlist("live", ID, "").await.unwrap();
        assert_eq!(hls.active(), [ID]);
        // Not yet idle: nothing stops.
        hls.reap(Instant::now()).await;
        assert_eq!(hls.active(), [ID]);
        hls.reap(Instant::now() + HlsSettings::default().idle).await;
        assert!(hls.active().is_empty());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        // A new request starts it again, in a new directory.
        hls.playlist("live", ID, "").await.unwrap();
        assert_eq!(hls.active(), [ID]);
        let dirs: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(dirs, [format!("{ID}-1")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aac_audio_is_carried_next_to_the_video() {
        let (_tmp, _hub, hls, _publisher) = published(30, true).await;
        let names = segments(&three_segments(&hls, "").await);
        let decoded = decode_each(&hls, &names).await;
        assert!(
            decoded
                .iter()
                .all(|d| d.video_frames >= 15 && d.audio_buffers >= 15),
            "{decoded:?}"
        );
    }

    #[test]
    fn directories_of_a_previous_run_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let stale = tmp.path().join(format!("{ID}-7"));
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join("seg00001.ts"), b"x").unwrap();
        for keep in ["keep", "a-b", "notes-1.txt"] {
            if keep.contains('.') {
                std::fs::write(tmp.path().join(keep), b"x").unwrap();
            } else {
                std::fs::create_dir(tmp.path().join(keep)).unwrap();
            }
        }
        let _hls = Hls::new(Arc::new(Hub::default()), tmp.path().to_owned());
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a-b", "keep", "notes-1.txt"]);
    }

    /// GStreamer's HLS client (`souphttpsrc ! hlsdemux`) plays through a router shaped like the
    /// node's (`/{app}/{id}.m3u8`, segments at the rewritten relative URIs), which refuses any
    /// request without the player's `auth_key`: the query follows every segment.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_hls_client_follows_the_segment_uris_with_the_query() {
        use std::sync::atomic::AtomicUsize;

        use axum::extract::{Path as UrlPath, RawQuery};
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;
        use axum::routing::get;
        use gstreamer_app as gst_app;

        let tmp = tempfile::tempdir().unwrap();
        let hub = Arc::new(Hub::default());
        let hls = Arc::new(Hls::new(Arc::clone(&hub), tmp.path().to_owned()));
        let _publisher = TestPublisher::start(&hub, ID, 30);
        wait_for_keyframe(&hub, ID).await;
        let segment_hits = Arc::new(AtomicUsize::new(0));

        let (h1, h2, hits) = (
            Arc::clone(&hls),
            Arc::clone(&hls),
            Arc::clone(&segment_hits),
        );
        let status = |e: LiveOutputError| match e {
            LiveOutputError::NotFound => StatusCode::NOT_FOUND,
            LiveOutputError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let app = axum::Router::new()
            .route(
                "/{app}/{file}",
                get(
                    move |UrlPath((app, file)): UrlPath<(String, String)>,
                          RawQuery(q): RawQuery| async move {
                        let q = q.unwrap_or_default();
                        if q != "auth_key=k" {
                            return StatusCode::FORBIDDEN.into_response();
                        }
                        let Some(id) = file.strip_suffix(".m3u8") else {
                            return StatusCode::NOT_FOUND.into_response();
                        };
                        match h1.playlist(&app, id, &q).await {
                            Ok(text) => (
                                [(header::CONTENT_TYPE, "application/vnd.apple.mpegurl")],
                                text,
                            )
                                .into_response(),
                            Err(e) => status(e).into_response(),
                        }
                    },
                ),
            )
            .route(
                "/{app}/{id}/{segment}",
                get(
                    move |UrlPath((_app, id, segment)): UrlPath<(String, String, String)>,
                          RawQuery(q): RawQuery| async move {
                        if q.as_deref() != Some("auth_key=k") {
                            return StatusCode::FORBIDDEN.into_response();
                        }
                        match h2.segment(&id, &segment).await {
                            Ok(bytes) => {
                                hits.fetch_add(1, Ordering::Relaxed);
                                ([(header::CONTENT_TYPE, "video/mp2t")], bytes).into_response()
                            }
                            Err(e) => status(e).into_response(),
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let url = format!("http://{addr}/live/{ID}.m3u8?auth_key=k");
        let frames = tokio::task::spawn_blocking(move || {
            let pipeline = gst::parse::launch(&format!(
                "souphttpsrc location={url} ! hlsdemux ! decodebin ! appsink name=sink sync=false"
            ))
            .unwrap()
            .downcast::<gst::Pipeline>()
            .unwrap();
            let sink = pipeline
                .by_name("sink")
                .unwrap()
                .downcast::<gst_app::AppSink>()
                .unwrap();
            pipeline.set_state(gst::State::Playing).unwrap();
            let mut frames = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while frames < 90 && Instant::now() < deadline {
                if sink
                    .try_pull_sample(gst::ClockTime::from_mseconds(500))
                    .is_some()
                {
                    frames += 1;
                }
            }
            let _ = pipeline.set_state(gst::State::Null);
            frames
        })
        .await
        .unwrap();
        // 90 frames at 30 fps span at least three 1 s segments: the client reloaded the live
        // playlist and followed its new URIs.
        assert!(frames >= 90, "decoded {frames} frames");
        assert!(segment_hits.load(Ordering::Relaxed) >= 3);
    }

    /// Segments are cut at the publisher's keyframes: a 2 s GOP gives 2 s segments whatever
    /// the 1 s target.
    /// A segment is listed when the keyframe that ends it reaches the pipeline, not a GOP
    /// later: whenever the playlist grows, what the pipeline got and the playlist does not list
    /// yet is well under one GOP (with `hlssink2` it was one to two GOPs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_segment_is_listed_at_the_keyframe_that_ends_it() {
        let (_tmp, hub, hls, _publisher) = published(30, false).await; // 1 s GOP
        // The pipeline starts at the current GOP's keyframe (rebased to 0), as this sees it.
        let mut watch = hub.subscribe(ID).unwrap();
        let start = watch
            .first
            .iter()
            .find(|t| t.is_keyframe())
            .unwrap()
            .timestamp_ms;
        let mut latest = watch.first.last().unwrap().timestamp_ms;
        let mut listed_count = 0;
        let mut checked = 0;
        for _ in 0..400 {
            let playlist = hls.playlist("live", ID, "").await.unwrap();
            while let Ok(tag) = watch.live.try_recv() {
                if tag.kind == TagKind::Video {
                    latest = tag.timestamp_ms;
                }
            }
            let durations: Vec<f64> = playlist
                .lines()
                .filter_map(|l| l.strip_prefix("#EXTINF:"))
                .map(|d| d.trim_end_matches(',').parse().unwrap())
                .collect();
            if durations.len() > listed_count && listed_count > 0 {
                // Segments only ever join the playlist here (fewer than playlist_length).
                let listed: f64 = durations.iter().sum();
                let pushed = f64::from(latest - start) / 1000.0;
                let unlisted = pushed - listed;
                assert!(
                    unlisted < 0.6,
                    "{unlisted:.3} s pushed but unlisted: {playlist}"
                );
                checked += 1;
                if checked == 3 {
                    return;
                }
            }
            listed_count = durations.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the playlist grew {checked} times");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_last_the_publishers_gop_when_it_is_longer_than_the_target() {
        let (_tmp, _hub, hls, _publisher) = published(60, false).await;
        let mut playlist = String::new();
        for _ in 0..100 {
            playlist = hls.playlist("live", ID, "").await.unwrap();
            if segments(&playlist).len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(playlist.contains("#EXT-X-TARGETDURATION:2"), "{playlist}");
        let durations: Vec<f64> = playlist
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .map(|d| d.trim_end_matches(',').parse().unwrap())
            .collect();
        assert!(durations.len() >= 2, "{playlist}");
        assert!(
            durations.iter().all(|d| (1.9..=2.1).contains(d)),
            "{durations:?}"
        );
    }
}
