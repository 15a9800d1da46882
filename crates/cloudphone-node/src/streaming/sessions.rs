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
//! holding up the others. Each viewer has its own [`BitrateController`], capped by its cell of
//! the instance's video matrix; the encoder runs at the minimum of their targets.
//!
//! # Usage
//! Each encoder run is one usage session: a partial [`pb::UsageRecord`] every
//! `usage_interval`, and a final one when it stops, sent to every open report stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudphone_core::adaptation::BitrateController;
use cloudphone_core::lifecycle::InstanceState;
use cloudphone_core::video::{Codec, Definition, NetworkType, VideoConfig, VideoSpec};
use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::{ByeReason, ErrorCode, Hello};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, watch};

use crate::instances::InstanceManager;
use crate::runtime::CaptureSource;
use crate::streaming::ice::IceSettings;
use crate::streaming::peer::PeerFactory;

/// Lowest bitrate adaptation may go to, in kbit/s.
pub const MIN_BITRATE_KBPS: u32 = 150;
/// Key frames asked for more often than this are merged into one.
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// Unexpired grants kept per instance: every GetDeviceToken adds one, and only the newest few
/// can matter (a viewer uses its grant once, at hello). Bounds the node's memory however often
/// a tenant asks for tokens.
pub const MAX_GRANTS_PER_INSTANCE: usize = 64;
/// How often a running encoder is checked for a failure it did not signal by closing.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Packets buffered per viewer before a slow one starts losing them.
const FANOUT_CAPACITY: usize = 1024;

/// What an encoder is asked to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderRequest {
    pub source: CaptureSource,
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

/// The knobs a running encoder offers; implemented over the GStreamer pipeline.
pub trait Encoder: Send + Sync + 'static {
    fn set_bitrate(&self, kbps: u32);
    fn set_fps(&self, fps: u32);
    fn request_keyframe(&self);
    /// Why the encoder stopped producing, once it has (bus error, capture ended).
    fn failure(&self) -> Option<String> {
        None
    }
}

/// Starts an encoder: the handle and its RTP packets (one packet per item, PT 96).
pub type EncoderFactory = Arc<
    dyn Fn(&EncoderRequest) -> Result<(Box<dyn Encoder>, mpsc::Receiver<Bytes>), String>
        + Send
        + Sync,
>;

/// Why StartSession was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("device_token_sha256 must be 64 hex digits")]
    BadDigest,
    #[error("device_id must be 1-64 characters of [A-Za-z0-9-_.:]")]
    BadDeviceId,
    #[error("expires_at_unix_ms is in the past")]
    AlreadyExpired,
    #[error("instance {0} not found")]
    UnknownInstance(String),
}

/// An authorised session (StartSession).
#[derive(Debug, Clone)]
pub struct Grant {
    pub session_id: String,
    pub instance_id: String,
    pub device_id: String,
    token_sha256: [u8; 32],
    pub expires_at_unix_ms: i64,
    pub tenant_id: String,
    pub user_id: String,
}

/// Drops every expired grant, then the soonest-expiring grants of `instance_id` beyond `cap`
/// (with one token lifetime, the oldest). Streams already running are not affected: a grant
/// is checked only at hello.
fn prune_grants(grants: &mut HashMap<String, Grant>, instance_id: &str, now_ms: i64, cap: usize) {
    grants.retain(|_, g| g.expires_at_unix_ms > now_ms);
    let mut mine: Vec<(i64, String)> = grants
        .values()
        .filter(|g| g.instance_id == instance_id)
        .map(|g| (g.expires_at_unix_ms, g.device_id.clone()))
        .collect();
    if mine.len() <= cap {
        return;
    }
    mine.sort();
    for (_, device) in &mine[..mine.len() - cap] {
        grants.remove(device);
    }
}

/// What StartSession hands back.
#[derive(Debug, Clone)]
pub struct StartedSession {
    pub session_id: String,
    pub signaling_url: String,
    pub ice_servers: Vec<String>,
}

/// A refused hello: the code and message the viewer gets before the socket closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Equal digests, in time independent of where they differ.
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Settings of the registry.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// `ws(s)://host:port` viewers reach the node at.
    pub public_url: String,
    pub ice: IceSettings,
    pub max_viewers_per_instance: usize,
    pub usage_interval: Duration,
    pub node_id: String,
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
}

#[derive(Default)]
struct Inner {
    grants: HashMap<String, Grant>,
    configs: HashMap<String, VideoConfig>,
    encoders: HashMap<ProfileKey, Arc<SharedEncoder>>,
    viewers: HashMap<u64, ViewerEntry>,
    next_viewer: u64,
}

/// The node's streaming sessions; see the module docs.
pub struct Sessions {
    manager: Arc<InstanceManager>,
    peers: PeerFactory,
    settings: SessionSettings,
    factory: EncoderFactory,
    usage: broadcast::Sender<pb::UsageRecord>,
    inner: Mutex<Inner>,
    closing: AtomicBool,
    epoch: Instant,
}

impl Sessions {
    pub fn new(
        manager: Arc<InstanceManager>,
        peers: PeerFactory,
        settings: SessionSettings,
        factory: EncoderFactory,
    ) -> Arc<Self> {
        let (usage, _) = broadcast::channel(1024);
        let sessions = Arc::new(Self {
            manager,
            peers,
            settings,
            factory,
            usage,
            inner: Mutex::new(Inner::default()),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        tokio::spawn(watch_instances(Arc::downgrade(&sessions)));
        sessions
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent; a panic cannot tear them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn manager(&self) -> &Arc<InstanceManager> {
        &self.manager
    }

    pub fn peers(&self) -> &PeerFactory {
        &self.peers
    }

    /// Milliseconds since the registry started: the controllers' clock.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Usage records as encoders emit them.
    pub fn subscribe_usage(&self) -> broadcast::Receiver<pb::UsageRecord> {
        self.usage.subscribe()
    }

    /// Viewers connected right now.
    pub fn live_viewers(&self) -> usize {
        self.inner().viewers.len()
    }

    /// StartSession: authorises `device_id` to watch the instance until `expires_at`.
    pub async fn start_session(
        &self,
        r: &pb::StartSessionRequest,
    ) -> Result<StartedSession, SessionError> {
        let digest: [u8; 32] = hex::decode(&r.device_token_sha256)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or(SessionError::BadDigest)?;
        let device_ok = !r.device_id.is_empty()
            && r.device_id.len() <= 64
            && r.device_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !device_ok {
            return Err(SessionError::BadDeviceId);
        }
        let now = crate::unix_ms();
        if r.expires_at_unix_ms <= now {
            return Err(SessionError::AlreadyExpired);
        }
        self.manager
            .status(&r.instance_id)
            .await
            .map_err(|_| SessionError::UnknownInstance(r.instance_id.clone()))?;
        let grant = Grant {
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            instance_id: r.instance_id.clone(),
            device_id: r.device_id.clone(),
            token_sha256: digest,
            expires_at_unix_ms: r.expires_at_unix_ms,
            tenant_id: r.tenant_id.clone(),
            user_id: r.user_id.clone(),
        };
        let session_id = grant.session_id.clone();
        {
            let mut inner = self.inner();
            inner.grants.insert(r.device_id.clone(), grant);
            prune_grants(
                &mut inner.grants,
                &r.instance_id,
                now,
                MAX_GRANTS_PER_INSTANCE,
            );
        }
        tracing::info!(instance = %r.instance_id, device = %r.device_id, session = %session_id, "session authorised");
        let servers = self
            .settings
            .ice
            .servers(&r.device_id, (now / 1000).max(0) as u64);
        Ok(StartedSession {
            session_id,
            signaling_url: format!(
                "{}/v1/signaling",
                self.settings.public_url.trim_end_matches('/')
            ),
            ice_servers: crate::streaming::ice::to_strings(&servers),
        })
    }

    /// The ICE servers a viewer of `device_id` gets in its `ready`.
    pub fn ice_servers(&self, device_id: &str) -> Vec<cloudphone_signaling::IceServer> {
        self.settings
            .ice
            .servers(device_id, (crate::unix_ms() / 1000).max(0) as u64)
    }

    /// Checks a hello and registers the viewer. The returned [`Viewer`] unregisters on drop.
    pub async fn admit(self: &Arc<Self>, hello: &Hello) -> Result<Viewer, Refusal> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(refuse(ErrorCode::Busy, "node is shutting down"));
        }
        let grant = self
            .inner()
            .grants
            .get(&hello.device_id)
            .cloned()
            .ok_or_else(|| refuse(ErrorCode::UnknownDevice, "no session for this device"))?;
        let presented: [u8; 32] = Sha256::digest(hello.device_token.as_bytes()).into();
        if !digest_eq(&presented, &grant.token_sha256) {
            tracing::info!(device = %hello.device_id, "hello with a wrong device token");
            return Err(refuse(ErrorCode::BadToken, "device token does not match"));
        }
        if grant.expires_at_unix_ms <= crate::unix_ms() {
            return Err(refuse(ErrorCode::Expired, "session expired"));
        }
        let status = self
            .manager
            .status(&grant.instance_id)
            .await
            .map_err(|_| refuse(ErrorCode::NotRunning, "instance is gone"))?;
        if status.state != InstanceState::Running {
            return Err(refuse(ErrorCode::NotRunning, "instance is not running"));
        }
        let network = hello.network_type;
        let codec = hello.encoding_type;
        let definition = hello.definition;
        let (stop, stop_rx) = watch::channel(None);
        let (id, spec) = {
            let mut inner = self.inner();
            let watching = inner
                .viewers
                .values()
                .filter(|v| v.instance_id == grant.instance_id)
                .count();
            if watching >= self.settings.max_viewers_per_instance {
                return Err(refuse(ErrorCode::Busy, "too many viewers on this instance"));
            }
            let spec = inner
                .configs
                .get(&grant.instance_id)
                .cloned()
                .unwrap_or_default()
                .get(network, codec, definition);
            inner.next_viewer += 1;
            let id = inner.next_viewer;
            inner.viewers.insert(
                id,
                ViewerEntry {
                    instance_id: grant.instance_id.clone(),
                    device_id: grant.device_id.clone(),
                    network,
                    codec,
                    definition,
                    stop,
                    encoder: None,
                },
            );
            (id, spec)
        };
        tracing::info!(instance = %grant.instance_id, device = %grant.device_id, viewer = id, %codec, %definition, "viewer admitted");
        Ok(Viewer {
            sessions: Arc::clone(self),
            id,
            grant,
            codec,
            definition,
            spec,
            stop: stop_rx,
        })
    }

    /// Joins (or starts) the encoder of the viewer's profile.
    pub async fn join_encoder(&self, viewer: &Viewer) -> Result<Arc<SharedEncoder>, String> {
        let instance_id = &viewer.grant.instance_id;
        let key = ProfileKey {
            instance_id: instance_id.clone(),
            codec: viewer.codec,
            definition: viewer.definition,
            fps: viewer.spec.fps,
        };
        let existing = self.inner().encoders.get(&key).cloned();
        let encoder = match existing {
            Some(e) => e,
            None => {
                let source = self
                    .manager
                    .capture_source(instance_id)
                    .await
                    .map_err(|e| e.to_string())?;
                let (width, height) = viewer.definition.portrait_size();
                let tenant_id = self
                    .manager
                    .status(instance_id)
                    .await
                    .map(|v| v.spec.tenant_id)
                    .unwrap_or_else(|_| viewer.grant.tenant_id.clone());
                let request = EncoderRequest {
                    source,
                    codec: viewer.codec,
                    width,
                    height,
                    fps: viewer.spec.fps,
                    bitrate_kbps: viewer.spec.code_rate_kbps,
                };
                // Two first viewers may race here; the loser's encoder is dropped unused.
                // Starting a pipeline blocks until it plays; keep it off the async workers.
                let factory = Arc::clone(&self.factory);
                let spawned_request = request.clone();
                let (handle, packets) =
                    tokio::task::spawn_blocking(move || factory(&spawned_request))
                        .await
                        .map_err(|e| e.to_string())??;
                let started = SharedEncoder::start(
                    handle,
                    packets,
                    request,
                    tenant_id,
                    instance_id.clone(),
                    self.usage.clone(),
                    self.settings.usage_interval,
                );
                let mut inner = self.inner();
                match inner.encoders.get(&key) {
                    Some(e) => {
                        let e = Arc::clone(e);
                        drop(inner);
                        started.stop();
                        e
                    }
                    None => {
                        inner.encoders.insert(key, Arc::clone(&started));
                        started
                    }
                }
            }
        };
        let mut inner = self.inner();
        match inner.viewers.get_mut(&viewer.id) {
            Some(entry) => entry.encoder = Some(Arc::clone(&encoder)),
            // Stopped while the encoder started; leave it to `leave` to clean up.
            None => return Err("viewer was stopped".into()),
        }
        encoder.add_viewer(viewer.id, viewer.spec.code_rate_kbps);
        drop(inner);
        // The key frame this viewer starts from is asked for once its peer connects.
        Ok(encoder)
    }

    fn leave(&self, id: u64) {
        let mut inner = self.inner();
        let Some(entry) = inner.viewers.remove(&id) else {
            return;
        };
        tracing::info!(instance = %entry.instance_id, device = %entry.device_id, viewer = id, "viewer left");
        let Some(encoder) = entry.encoder else {
            return;
        };
        if encoder.remove_viewer(id) == 0 {
            inner.encoders.retain(|_, e| !Arc::ptr_eq(e, &encoder));
            drop(inner);
            // Stopping joins the pipeline's threads; off the async workers when there are any.
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || encoder.stop());
                }
                Err(_) => encoder.stop(),
            }
        }
    }

    fn stop_viewers(&self, pick: impl Fn(&ViewerEntry) -> bool, reason: ByeReason) -> u32 {
        let inner = self.inner();
        let mut n = 0;
        for v in inner.viewers.values().filter(|v| pick(v)) {
            let _ = v.stop.send(Some(reason));
            n += 1;
        }
        n
    }

    /// Says `bye` to the instance's viewers and stops its encoders now, waiting until their
    /// pipelines have shut down (their capture has let go of the instance's display).
    pub async fn end_instance(&self, instance_id: &str, reason: ByeReason) {
        self.stop_viewers(|v| v.instance_id == instance_id, reason);
        let encoders: Vec<Arc<SharedEncoder>> = {
            let mut inner = self.inner();
            let keys: Vec<ProfileKey> = inner
                .encoders
                .keys()
                .filter(|k| k.instance_id == instance_id)
                .cloned()
                .collect();
            keys.iter()
                .filter_map(|k| inner.encoders.remove(k))
                .collect()
        };
        for encoder in encoders {
            // Stopping a pipeline joins its streaming threads: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || encoder.stop()).await;
        }
    }

    /// StopStreaming: ends the instance's live streams; its grants stay valid.
    pub fn stop_streaming(&self, instance_id: &str) -> u32 {
        self.stop_viewers(|v| v.instance_id == instance_id, ByeReason::Stopped)
    }

    /// ReleaseSession: revokes the instance's grants and ends its streams.
    pub fn release(&self, instance_id: &str) -> u32 {
        let released = {
            let mut inner = self.inner();
            let before = inner.grants.len();
            inner.grants.retain(|_, g| g.instance_id != instance_id);
            (before - inner.grants.len()) as u32
        };
        self.stop_viewers(|v| v.instance_id == instance_id, ByeReason::Released);
        released
    }

    /// The current grant of a device, if it still has one.
    pub fn grant(&self, device_id: &str) -> Option<Grant> {
        self.inner().grants.get(device_id).cloned()
    }

    /// SetVideoConfig: stores the matrix and applies it to the instance's live encoders.
    /// Returns how many viewers were updated.
    pub fn set_video_config(&self, instance_id: &str, config: VideoConfig) -> u32 {
        let mut inner = self.inner();
        inner.configs.insert(instance_id.to_owned(), config.clone());
        let mut updated = 0;
        // Viewers grouped by the encoder they share.
        let mut per_encoder: Vec<(Arc<SharedEncoder>, ViewerSpecs)> = Vec::new();
        for (id, v) in inner.viewers.iter() {
            if v.instance_id != instance_id {
                continue;
            }
            let Some(encoder) = &v.encoder else {
                continue;
            };
            let spec = config.get(v.network, v.codec, v.definition);
            match per_encoder
                .iter_mut()
                .find(|(e, _)| Arc::ptr_eq(e, encoder))
            {
                Some((_, specs)) => specs.push((*id, spec)),
                None => per_encoder.push((Arc::clone(encoder), vec![(*id, spec)])),
            }
            updated += 1;
        }
        drop(inner);
        for (encoder, specs) in per_encoder {
            encoder.apply_specs(&specs);
        }
        tracing::info!(
            instance = instance_id,
            viewers = updated,
            "video config applied"
        );
        updated
    }

    /// Refuses new viewers, says `bye` to the live ones and waits (bounded) until they left.
    pub async fn drain(&self, within: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        let n = self.stop_viewers(|_| true, ByeReason::Shutdown);
        if n > 0 {
            tracing::info!(viewers = n, "draining viewers");
        }
        let deadline = Instant::now() + within;
        while self.live_viewers() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Resolves once the flag is true (or its sender is gone).
pub async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Ends the streams of instances that stop running.
async fn watch_instances(sessions: std::sync::Weak<Sessions>) {
    let Some(mut events) = sessions.upgrade().map(|s| s.manager.subscribe()) else {
        return;
    };
    loop {
        match events.recv().await {
            Ok(view) => {
                if view.state == InstanceState::Running {
                    continue;
                }
                let Some(sessions) = sessions.upgrade() else {
                    return;
                };
                sessions.stop_viewers(
                    |v| v.instance_id == view.spec.instance_id,
                    ByeReason::InstanceGone,
                );
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One admitted viewer; leaving the registry when dropped.
pub struct Viewer {
    sessions: Arc<Sessions>,
    pub id: u64,
    pub grant: Grant,
    pub codec: Codec,
    pub definition: Definition,
    /// The matrix cell the viewer started with.
    pub spec: VideoSpec,
    /// Set when the node ends the stream.
    pub stop: watch::Receiver<Option<ByeReason>>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.sessions.leave(self.id);
    }
}

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
pub struct SharedEncoder {
    encoder: Mutex<Option<Box<dyn Encoder>>>,
    packets: broadcast::Sender<Bytes>,
    adaptation: Mutex<Adaptation>,
    keyframes: Mutex<KeyframeRequests>,
    /// Becomes true when the encoder stops (last viewer left) or dies.
    ended: watch::Sender<bool>,
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    /// Current target, for tests and metrics.
    pub bitrate_kbps: AtomicU32,
    /// What the encoder actually sent over the last health tick (1 s), kbit/s: the reference
    /// a REMB is judged against.
    sent_kbps: AtomicU32,
}

impl SharedEncoder {
    fn start(
        encoder: Box<dyn Encoder>,
        mut rx: mpsc::Receiver<Bytes>,
        request: EncoderRequest,
        tenant_id: String,
        instance_id: String,
        usage: broadcast::Sender<pb::UsageRecord>,
        usage_interval: Duration,
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
            codec: request.codec,
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
        let ended_rx = until_true(shared.ended.subscribe());
        let session_id = uuid::Uuid::new_v4().simple().to_string();
        let codec = request.codec.as_str().to_owned();
        let (width, height) = (request.width, request.height);
        tokio::spawn(async move {
            tokio::pin!(ended_rx);
            let mut from = crate::unix_ms();
            let record = |start: i64, end: i64, final_: bool| pb::UsageRecord {
                record_id: uuid::Uuid::new_v4().simple().to_string(),
                session_id: session_id.clone(),
                tenant_id: tenant_id.clone(),
                instance_id: instance_id.clone(),
                codec: codec.clone(),
                width,
                height,
                start_unix_ms: start,
                end_unix_ms: end,
                r#final: final_,
            };
            // A zero-length opening record: the usage buffer learns of the session at once and
            // checkpoints it, so a crash before the first interval still bills what ran.
            let _ = usage.send(record(from, from, false));
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + usage_interval,
                usage_interval,
            );
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = crate::unix_ms();
                        let _ = usage.send(record(from, now, false));
                        from = now;
                    }
                    _ = &mut ended_rx => break,
                }
            }
            let _ = usage.send(record(from, crate::unix_ms(), true));
            tracing::info!(instance = %instance_id, session = %session_id, "encoder stopped");
        });
        shared
    }

    /// A receiver of the encoder's RTP packets.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.packets.subscribe()
    }

    /// Resolves when the encoder has stopped or died.
    pub fn ended(&self) -> watch::Receiver<bool> {
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

    /// Asks for a key frame. Requests closer than [`KEYFRAME_MIN_INTERVAL`] are merged into
    /// one sent at the end of the interval (never dropped: the later one may come from a
    /// viewer that joined after the earlier key frame went out).
    pub fn request_keyframe(self: &Arc<Self>) {
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

    fn add_viewer(&self, id: u64, max_kbps: u32) {
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
    fn remove_viewer(&self, id: u64) -> usize {
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
    pub fn on_receiver_report(
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
    pub fn on_remb(&self, id: u64, now_ms: u64, kbps: u32) {
        let sent_kbps = self.sent_kbps.load(Ordering::Relaxed);
        let mut a = self.adaptation();
        if let Some(c) = a.controllers.get_mut(&id) {
            c.on_remb(now_ms, kbps, sent_kbps);
        }
        self.apply(a);
    }

    fn apply_specs(&self, specs: &[(u64, VideoSpec)]) {
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
    fn stop(&self) {
        let encoder = self
            .encoder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(encoder);
        self.ended.send_replace(true);
    }
}

/// Wraps the node's runtime so that an instance's encoders stop **before** its processes do.
///
/// Capture holds a connection to the instance's display; `ximagesrc` uses Xlib, whose I/O
/// error handler calls `exit()` when the X server goes away under it, which would take the
/// whole node down with one stopped instance. Every stop (StopInstance, reboot, reset,
/// delete, node shutdown) goes through [`Runtime::stop`], so ending the streams there covers
/// them all. A display that crashes on its own is not covered (see `docs/streaming.md`).
pub struct StreamingRuntime {
    inner: Arc<dyn crate::runtime::Runtime>,
    sessions: Arc<std::sync::OnceLock<std::sync::Weak<Sessions>>>,
}

/// Where [`StreamingRuntime`] finds the registry once it exists.
pub type SessionsSlot = Arc<std::sync::OnceLock<std::sync::Weak<Sessions>>>;

impl StreamingRuntime {
    pub fn wrap(inner: Arc<dyn crate::runtime::Runtime>) -> (Arc<Self>, SessionsSlot) {
        let slot: SessionsSlot = Arc::new(std::sync::OnceLock::new());
        (
            Arc::new(Self {
                inner,
                sessions: Arc::clone(&slot),
            }),
            slot,
        )
    }
}

#[async_trait::async_trait]
impl crate::runtime::Runtime for StreamingRuntime {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn provision(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
    ) -> Result<(), crate::runtime::RuntimeError> {
        self.inner.provision(spec, paths).await
    }

    async fn start(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
    ) -> Result<(), crate::runtime::RuntimeError> {
        self.inner.start(spec, paths).await
    }

    async fn stop(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
    ) -> Result<(), crate::runtime::RuntimeError> {
        if let Some(sessions) = self.sessions.get().and_then(std::sync::Weak::upgrade) {
            sessions
                .end_instance(&spec.instance_id, ByeReason::InstanceGone)
                .await;
        }
        self.inner.stop(spec, paths).await
    }

    async fn is_running(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
    ) -> bool {
        self.inner.is_running(spec, paths).await
    }

    async fn run_command(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
        command: &crate::runtime::CommandSpec,
    ) -> Result<crate::runtime::CommandOutput, crate::runtime::RuntimeError> {
        self.inner.run_command(spec, paths, command).await
    }

    async fn install_app(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
        package: &std::path::Path,
    ) -> Result<(), crate::runtime::RuntimeError> {
        self.inner.install_app(spec, paths, package).await
    }

    async fn inject_input(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
        event: &crate::runtime::InputEvent,
    ) -> Result<(), crate::runtime::RuntimeError> {
        self.inner.inject_input(spec, paths, event).await
    }

    fn capture_source(
        &self,
        spec: &crate::runtime::InstanceSpec,
        paths: &crate::runtime::InstancePaths,
    ) -> CaptureSource {
        self.inner.capture_source(spec, paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(instance: &str, device: &str, expires: i64) -> (String, Grant) {
        (
            device.to_owned(),
            Grant {
                session_id: format!("s-{device}"),
                instance_id: instance.to_owned(),
                device_id: device.to_owned(),
                token_sha256: [0; 32],
                expires_at_unix_ms: expires,
                tenant_id: "t".into(),
                user_id: "u".into(),
            },
        )
    }

    #[test]
    fn pruning_drops_expired_grants_and_caps_each_instance_at_its_newest() {
        let mut grants: HashMap<String, Grant> = [
            grant("a", "expired", 999),
            grant("a", "a1", 1_001),
            grant("a", "a2", 1_002),
            grant("a", "a3", 1_003),
            grant("b", "b1", 1_001),
            grant("b", "b-expired", 1_000),
        ]
        .into_iter()
        .collect();
        prune_grants(&mut grants, "a", 1_000, 2);
        let mut left: Vec<&str> = grants.keys().map(String::as_str).collect();
        left.sort_unstable();
        // Another instance's live grants are not touched by a's cap.
        assert_eq!(left, ["a2", "a3", "b1"]);
        prune_grants(&mut grants, "a", 1_000, 2);
        assert_eq!(grants.len(), 3, "idempotent");
    }
}
