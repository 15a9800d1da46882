//! The session registry: who may watch which instance (StartSession grants), who is watching
//! (viewers), and the encoders they share.
//!
//! # Grants
//! StartSession stores `device_id → Grant` with the SHA-256 of the device token; a viewer's
//! hello must name a known device id, present a token whose digest matches (compared in
//! constant time), arrive before `expires_at` and find the instance running.
//! ReleaseSession deletes the instance's grants; StopStreaming only ends its live streams.
//!
//! # Shared encoders
//! Viewers of one (instance, codec, definition, fps) profile share one encoder: it starts with
//! the first viewer and stops when the last one leaves. Its RTP packets fan out through a
//! broadcast channel, so a slow viewer loses packets (and asks for a key frame) instead of
//! holding up the others. Each viewer has its own [`BitrateController`](cloudphone_core::adaptation::BitrateController), capped by its cell of
//! the instance's video matrix; the encoder runs at the minimum of their targets.
//!
//! # Audio
//! Sound does not depend on the video profile: one audio encoder per instance (`audio`), started
//! by its first viewer and stopped by its last, fanned out the same way.
//!
//! # Usage
//! Each encoder run is one usage session: a partial [`UsageRecord`](cloudphone_proto::node_v1::UsageRecord) every
//! `usage_interval`, and a final one when it stops, handed to the usage buffer's writer, which
//! puts it on disk before any report stream sends it.
//!
//! # Layout
//! - this module: the registry's state ([`Sessions`]) and the signaling → core conversions;
//! - `grants`: StartSession grants and their checks;
//! - `registry`: viewers: admission, joining an encoder, leaving, ending streams;
//! - `encoder`: the encoders viewers share and their bitrate adaptation;
//! - `audio`: the per-instance audio encoders;
//! - `usage`: the usage session of an encoder run.

mod audio;
mod encoder;
mod grant_file;
mod grants;
mod registry;
mod usage;

pub(crate) use audio::{AudioEncoder, AudioFactory, SharedAudio};
pub(crate) use encoder::{Encoder, EncoderFactory, SharedEncoder};
pub(crate) use grant_file::GrantFile;
pub(crate) use grants::{Grant, SessionError};
pub(crate) use registry::{Retiring, Viewer};

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cloudphone_core::video::{Codec, Definition, NetworkType, VideoConfig, VideoSpec};
use cloudphone_signaling::ByeReason;
use tokio::sync::watch;

use crate::instances::InstanceManager;
use crate::streaming::ice::IceSettings;
use crate::streaming::peer::PeerFactory;
use crate::usage_buffer::UsageSink;

/// Starts an encoder for a request: the handle (`E`) and its RTP packets, one packet per item.
/// The video and audio factories are this with their own request and handle.
pub(crate) type Factory<Request, E> = Arc<
    dyn Fn(&Request) -> Result<(Box<E>, tokio::sync::mpsc::Receiver<bytes::Bytes>), String>
        + Send
        + Sync,
>;

/// Settings of the registry.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    /// `ws(s)://host:port` viewers reach the node at.
    pub public_url: String,
    pub ice: IceSettings,
    pub max_viewers_per_instance: usize,
    pub usage_interval: Duration,
    /// What usage records' times are read from.
    pub clock: crate::clock::Clock,
    /// Where grants are kept across restarts (`None`: memory only, as in unit tests).
    pub grant_file: Option<Arc<GrantFile>>,
}

/// An encoder on its way down.
#[derive(Clone)]
enum Winding {
    Video(Arc<SharedEncoder>),
    Audio(Arc<SharedAudio>),
}

impl Winding {
    fn stop(&self) {
        match self {
            Winding::Video(e) => e.stop(),
            Winding::Audio(a) => a.stop(),
        }
    }

    fn is(&self, other: &Winding) -> bool {
        match (self, other) {
            (Winding::Video(a), Winding::Video(b)) => Arc::ptr_eq(a, b),
            (Winding::Audio(a), Winding::Audio(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The matrix cell of each viewer of one encoder.
type ViewerSpecs = Vec<(u64, VideoSpec)>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProfileKey {
    instance_id: String,
    codec: Codec,
    definition: Definition,
    fps: u32,
}

struct ViewerEntry {
    instance_id: String,
    device_id: String,
    network: NetworkType,
    codec: Codec,
    definition: Definition,
    stop: watch::Sender<Option<ByeReason>>,
    encoder: Option<Arc<SharedEncoder>>,
    audio: Option<Arc<SharedAudio>>,
}

#[derive(Default)]
struct Inner {
    grants: HashMap<String, Grant>,
    configs: HashMap<String, VideoConfig>,
    encoders: HashMap<ProfileKey, Arc<SharedEncoder>>,
    /// Audio encoders by instance id.
    audio: HashMap<String, Arc<SharedAudio>>,
    /// Encoders whose last viewer left, still stopping on a blocking task, by instance id:
    /// an instance stop waits for them too.
    stopping: Vec<(String, Winding)>,
    viewers: HashMap<u64, ViewerEntry>,
    next_viewer: u64,
    /// One gate per profile whose encoder is being started: the viewers arriving together
    /// for a phone wait for the first one's encoder instead of each starting (and then
    /// dropping) a pipeline of their own. Removed once the encoder is in `encoders`.
    starting: HashMap<ProfileKey, Arc<tokio::sync::Mutex<()>>>,
}

/// The node's streaming sessions; see the module docs.
pub(crate) struct Sessions {
    manager: Arc<InstanceManager>,
    peers: Arc<PeerFactory>,
    settings: SessionSettings,
    factory: EncoderFactory,
    audio_factory: OnceLock<AudioFactory>,
    usage: usage::Meter,
    /// The grants' copy on disk (see `grant_file`).
    grant_file: Option<Arc<GrantFile>>,
    inner: Mutex<Inner>,
    closing: AtomicBool,
    epoch: Instant,
}

impl Sessions {
    pub(crate) fn new(
        manager: Arc<InstanceManager>,
        peers: Arc<PeerFactory>,
        settings: SessionSettings,
        factory: EncoderFactory,
        usage: UsageSink,
    ) -> Arc<Self> {
        let usage = usage::Meter {
            sink: usage,
            interval: settings.usage_interval,
            clock: settings.clock,
        };
        let grant_file = settings.grant_file.clone();
        let grants = grant_file
            .as_ref()
            .map(|f| f.load(settings.clock.unix_ms()))
            .unwrap_or_default();
        let sessions = Arc::new(Self {
            manager,
            peers,
            settings,
            factory,
            audio_factory: OnceLock::new(),
            usage,
            grant_file,
            inner: Mutex::new(Inner {
                grants,
                ..Inner::default()
            }),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        tokio::spawn(registry::watch_instances(Arc::downgrade(&sessions)));
        tokio::spawn(registry::end_before_stop(
            Arc::downgrade(&sessions),
            sessions.manager.subscribe_stopping(),
        ));
        sessions
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; a panic cannot tear them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn manager(&self) -> &Arc<InstanceManager> {
        &self.manager
    }

    pub(crate) fn peers(&self) -> &PeerFactory {
        &self.peers
    }

    /// Milliseconds since the registry started: the controllers' clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The instances with at least one viewer right now, each once, sorted: what control shows
    /// as BatchQueryStatus 3 (streaming).
    pub(crate) fn streaming_instances(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner()
            .viewers
            .values()
            .map(|v| v.instance_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// What grants' expiries are compared with (the system clock, or tokio's in tests).
    pub(crate) fn clock(&self) -> crate::clock::Clock {
        self.settings.clock
    }

    /// Viewers connected right now.
    pub(crate) fn live_viewers(&self) -> usize {
        self.inner().viewers.len()
    }

    /// Video encoders running right now, and what they sent together over their last second
    /// (kbit/s): for `/metrics`.
    pub(crate) fn encoder_figures(&self) -> (usize, u64) {
        let inner = self.inner();
        let kbps = inner
            .encoders
            .values()
            .map(|e| u64::from(e.sent_kbps()))
            .sum();
        (inner.encoders.len(), kbps)
    }
}

/// Resolves once the flag is true (or its sender is gone).
pub(crate) async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
