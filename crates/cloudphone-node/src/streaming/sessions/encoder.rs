//! Shared encoders: one per (instance, codec, definition, fps) profile, started by its first
//! viewer and stopped by its last; RTP fan-out, key-frame merging, and the viewers' bitrate
//! controllers folded into one target.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudphone_core::adaptation::BitrateController;
use cloudphone_core::video::{Codec, VideoSpec};
use tokio::sync::{broadcast, mpsc, watch};

use super::until_true;
use crate::runtime::CaptureSource;

/// Lowest bitrate adaptation may go to, in kbit/s.
pub(super) const MIN_BITRATE_KBPS: u32 = 150;
/// Key frames asked for more often than this are merged into one.
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// How often a running encoder is checked for a failure it did not signal by closing.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Packets buffered per viewer before a slow one starts losing them.
const FANOUT_CAPACITY: usize = 1024;

/// What an encoder is asked to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncoderRequest {
    pub source: CaptureSource,
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

/// The knobs a running encoder offers; implemented over the GStreamer pipeline.
pub(crate) trait Encoder: Send + Sync + 'static {
    fn set_bitrate(&self, kbps: u32);
    fn set_fps(&self, fps: u32);
    fn request_keyframe(&self);
    /// Why the encoder stopped producing, once it has (bus error, capture ended).
    fn failure(&self) -> Option<String> {
        None
    }
    /// Captured frames the encoder never encoded (dropped while it was busy), since it started.
    fn frames_dropped(&self) -> u64 {
        0
    }
}

/// Starts a video encoder for a profile (its packets are PT 96).
pub(crate) type EncoderFactory = super::Factory<EncoderRequest, dyn Encoder>;

#[derive(Default)]
struct KeyframeRequests {
    last: Option<Instant>,
    /// A merged request is scheduled.
    pending: bool,
}

struct Adaptation {
    controllers: HashMap<u64, BitrateController>,
    fps: HashMap<u64, u32>,
    applied_kbps: u32,
    applied_fps: u32,
}

/// One running encoder shared by the viewers of a profile.
pub(crate) struct SharedEncoder {
    encoder: Mutex<Option<Box<dyn Encoder>>>,
    packets: broadcast::Sender<Bytes>,
    adaptation: Mutex<Adaptation>,
    keyframes: Mutex<KeyframeRequests>,
    /// Becomes true when the encoder stops (last viewer left) or dies.
    ended: watch::Sender<bool>,
    pub width: u32,
    pub height: u32,
    /// Current target, for tests and metrics.
    pub bitrate_kbps: AtomicU32,
    /// What the encoder actually sent over the last health tick (1 s), kbit/s: the reference
    /// a REMB is judged against.
    sent_kbps: AtomicU32,
}

impl SharedEncoder {
    pub(super) fn start(
        encoder: Box<dyn Encoder>,
        mut rx: mpsc::Receiver<Bytes>,
        request: EncoderRequest,
        tenant_id: String,
        instance_id: String,
        usage: super::usage::Meter,
    ) -> Arc<Self> {
        let (packets, _) = broadcast::channel(FANOUT_CAPACITY);
        let (ended, _) = watch::channel(false);
        let shared = Arc::new(Self {
            encoder: Mutex::new(Some(encoder)),
            packets: packets.clone(),
            adaptation: Mutex::new(Adaptation {
                controllers: HashMap::new(),
                fps: HashMap::new(),
                applied_kbps: request.bitrate_kbps,
                applied_fps: request.fps,
            }),
            keyframes: Mutex::new(KeyframeRequests::default()),
            ended,
            width: request.width,
            height: request.height,
            bitrate_kbps: AtomicU32::new(request.bitrate_kbps),
            sent_kbps: AtomicU32::new(0),
        });
        tracing::info!(instance = %instance_id, codec = %request.codec, width = request.width, height = request.height, fps = request.fps, kbps = request.bitrate_kbps, "encoder started");
        // Pump: encoder → every viewer. Ends when the encoder stops or fails.
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut health = tokio::time::interval(HEALTH_CHECK_INTERVAL);
            let (mut bytes, mut since) = (0u64, tokio::time::Instant::now());
            let mut dropped_before = 0u64;
            loop {
                tokio::select! {
                    packet = rx.recv() => match packet {
                        Some(packet) => {
                            bytes += packet.len() as u64;
                            let _ = packets.send(packet);
                        }
                        None => break,
                    },
                    _ = health.tick() => {
                        let Some(shared) = weak.upgrade() else { break };
                        let secs = since.elapsed().as_secs_f64().max(0.001);
                        let kbps = (bytes as f64 * 8.0 / 1000.0 / secs).round() as u32;
                        shared.sent_kbps.store(kbps, Ordering::Relaxed);
                        let mut dropped = dropped_before;
                        shared.with_encoder(|e| dropped = e.frames_dropped());
                        crate::metrics::encoder_tick(bytes, dropped.saturating_sub(dropped_before));
                        dropped_before = dropped;
                        (bytes, since) = (0, tokio::time::Instant::now());
                        if *shared.ended.borrow() {
                            break;
                        }
                        let mut failure = None;
                        shared.with_encoder(|e| failure = e.failure());
                        if let Some(failure) = failure {
                            tracing::warn!(%failure, "encoder failed");
                            break;
                        }
                    }
                }
            }
            if let Some(shared) = weak.upgrade() {
                shared.ended.send_replace(true);
            }
        });
        // Usage: one session per encoder run.
        tokio::spawn(super::usage::run_session(
            super::usage::SessionInfo {
                tenant_id,
                instance_id,
                codec: request.codec,
                width: request.width,
                height: request.height,
            },
            until_true(shared.ended.subscribe()),
            usage,
        ));
        shared
    }

    /// What the encoder sent over its last second, kbit/s.
    pub(crate) fn sent_kbps(&self) -> u32 {
        self.sent_kbps.load(Ordering::Relaxed)
    }

    /// A receiver of the encoder's RTP packets.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.packets.subscribe()
    }

    /// Resolves when the encoder has stopped or died.
    pub(crate) fn ended(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }

    fn with_encoder(&self, f: impl FnOnce(&dyn Encoder)) {
        let guard = self
            .encoder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = guard.as_deref() {
            f(e);
        }
    }

    fn adaptation(&self) -> MutexGuard<'_, Adaptation> {
        self.adaptation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for a key frame. Requests closer than `KEYFRAME_MIN_INTERVAL` are merged into
    /// one sent at the end of the interval (never dropped: the later one may come from a
    /// viewer that joined after the earlier key frame went out).
    pub(crate) fn request_keyframe(self: &Arc<Self>) {
        let wait = {
            let mut k = self
                .keyframes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match k.last {
                Some(t) if t.elapsed() < KEYFRAME_MIN_INTERVAL => {
                    if k.pending {
                        return;
                    }
                    k.pending = true;
                    Some(KEYFRAME_MIN_INTERVAL - t.elapsed())
                }
                _ => {
                    k.last = Some(Instant::now());
                    None
                }
            }
        };
        match wait {
            None => self.with_encoder(|e| e.request_keyframe()),
            Some(wait) => {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    {
                        let mut k = this
                            .keyframes
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        k.pending = false;
                        k.last = Some(Instant::now());
                    }
                    this.with_encoder(|e| e.request_keyframe());
                });
            }
        }
    }

    pub(super) fn add_viewer(&self, id: u64, max_kbps: u32) {
        let mut a = self.adaptation();
        a.controllers.insert(
            id,
            BitrateController::new(max_kbps, MIN_BITRATE_KBPS.min(max_kbps)),
        );
        let fps = a.applied_fps;
        a.fps.insert(id, fps);
        self.apply(a);
    }

    /// Returns the viewers left.
    pub(super) fn remove_viewer(&self, id: u64) -> usize {
        let mut a = self.adaptation();
        a.controllers.remove(&id);
        a.fps.remove(&id);
        let left = a.controllers.len();
        if left > 0 {
            self.apply(a);
        }
        left
    }

    /// A receiver report from viewer `id`.
    pub(crate) fn on_receiver_report(
        &self,
        id: u64,
        now_ms: u64,
        fraction_lost: f64,
        rtt_ms: Option<u32>,
    ) {
        let mut a = self.adaptation();
        if let Some(c) = a.controllers.get_mut(&id) {
            c.on_receiver_report(now_ms, fraction_lost, rtt_ms);
            tracing::debug!(
                viewer = id,
                loss = fraction_lost,
                rtt_ms,
                target_kbps = c.target_kbps(),
                decision = ?c.last_decision(),
                "receiver report"
            );
        }
        self.apply(a);
    }

    /// A REMB from viewer `id`.
    pub(crate) fn on_remb(&self, id: u64, now_ms: u64, kbps: u32) {
        let sent_kbps = self.sent_kbps.load(Ordering::Relaxed);
        let mut a = self.adaptation();
        if let Some(c) = a.controllers.get_mut(&id) {
            c.on_remb(now_ms, kbps, sent_kbps);
        }
        self.apply(a);
    }

    pub(super) fn apply_specs(&self, specs: &[(u64, VideoSpec)]) {
        let mut a = self.adaptation();
        for (id, spec) in specs {
            if let Some(c) = a.controllers.get_mut(id) {
                if spec.code_rate_kbps > c.max_kbps() {
                    // An operator raised the ceiling: start from it, as a new stream would,
                    // rather than ramp at the controller's cautious 8 %/s; congestion cuts it
                    // back within a few reports if the path cannot carry it.
                    *c = BitrateController::new(
                        spec.code_rate_kbps,
                        MIN_BITRATE_KBPS.min(spec.code_rate_kbps),
                    );
                } else {
                    c.set_max(spec.code_rate_kbps);
                }
            }
            if let Some(f) = a.fps.get_mut(id) {
                *f = spec.fps;
            }
        }
        self.apply(a);
    }

    /// Sets the encoder to the lowest viewer target and the highest viewer frame rate.
    fn apply(&self, mut a: MutexGuard<'_, Adaptation>) {
        let Some(kbps) = a.controllers.values().map(|c| c.target_kbps()).min() else {
            return;
        };
        let fps = a.fps.values().copied().max().unwrap_or(a.applied_fps);
        let (set_kbps, set_fps) = (kbps != a.applied_kbps, fps != a.applied_fps);
        a.applied_kbps = kbps;
        a.applied_fps = fps;
        drop(a);
        if set_kbps {
            self.bitrate_kbps.store(kbps, Ordering::Relaxed);
            self.with_encoder(|e| e.set_bitrate(kbps));
        }
        if set_fps {
            self.with_encoder(|e| e.set_fps(fps));
        }
    }

    /// Stops the encoder (drops the pipeline) and ends the usage session.
    ///
    /// The pipeline is dropped under the lock, so a second, concurrent `stop` (the last
    /// viewer's leave racing StopInstance) returns only once the capture has let go of the
    /// display: an X server killed under a live `ximagesrc` ends the node through Xlib.
    pub(super) fn stop(&self) {
        let mut guard = self
            .encoder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(guard.take());
        drop(guard);
        self.ended.send_replace(true);
    }
}
