//! Shared audio encoders: one per instance (sound does not depend on the video profile), started
//! by the instance's first viewer and stopped by its last, its RTP packets fanned out like
//! video's. Audio is best effort: a viewer whose instance has no sound, or whose audio
//! pipeline fails to start, still gets its video.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, watch};

use super::Sessions;
use crate::runtime::AudioSource;

/// Packets buffered per viewer (100 a second) before a slow one starts losing them.
const FANOUT_CAPACITY: usize = 256;
/// How often a running audio encoder is checked for a failure it did not signal by closing.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A running audio encoder; implemented over the GStreamer audio pipeline.
pub(crate) trait AudioEncoder: Send + Sync + 'static {
    /// Why the encoder stopped producing, once it has.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// Starts an audio encoder from the instance's sound source (its packets are PT 111).
pub(crate) type AudioFactory = super::Factory<AudioSource, dyn AudioEncoder>;

/// One instance's audio encoder, shared by its viewers.
pub(crate) struct SharedAudio {
    encoder: Mutex<Option<Box<dyn AudioEncoder>>>,
    packets: broadcast::Sender<Bytes>,
    viewers: Mutex<HashSet<u64>>,
    ended: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedAudio {
    fn start(encoder: Box<dyn AudioEncoder>, mut rx: mpsc::Receiver<Bytes>) -> Arc<Self> {
        let (packets, _) = broadcast::channel(FANOUT_CAPACITY);
        let (ended, _) = watch::channel(false);
        let shared = Arc::new(Self {
            encoder: Mutex::new(Some(encoder)),
            packets: packets.clone(),
            viewers: Mutex::new(HashSet::new()),
            ended,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut health = tokio::time::interval(HEALTH_CHECK_INTERVAL);
            loop {
                tokio::select! {
                    packet = rx.recv() => match packet {
                        Some(packet) => { let _ = packets.send(packet); }
                        None => break,
                    },
                    _ = health.tick() => {
                        let Some(shared) = weak.upgrade() else { break };
                        if *shared.ended.borrow() {
                            break;
                        }
                        let failure = lock(&shared.encoder).as_ref().and_then(|e| e.failure());
                        if let Some(failure) = failure {
                            tracing::warn!(%failure, "audio encoder failed");
                            break;
                        }
                    }
                }
            }
            if let Some(shared) = weak.upgrade() {
                shared.ended.send_replace(true);
            }
        });
        shared
    }

    /// A receiver of the encoder's RTP packets.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.packets.subscribe()
    }

    /// Whether the encoder stopped or died (a new viewer then starts a new one).
    fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Returns the viewers left.
    pub(super) fn remove_viewer(&self, id: u64) -> usize {
        let mut viewers = lock(&self.viewers);
        viewers.remove(&id);
        viewers.len()
    }

    /// Stops the encoder (drops the pipeline).
    /// Dropped under the lock, like [`super::SharedEncoder`]'s: a concurrent second stop
    /// returns once the capture has let go of the sound server.
    pub(super) fn stop(&self) {
        let mut guard = lock(&self.encoder);
        drop(guard.take());
        drop(guard);
        self.ended.send_replace(true);
    }
}

impl Sessions {
    /// Sets what starts audio encoders; without one, streams are video only.
    pub(crate) fn set_audio_factory(&self, factory: AudioFactory) {
        let _ = self.audio_factory.set(factory);
    }

    /// Joins (or starts) the instance's audio encoder. `None`: no sound for this viewer (the
    /// runtime has none, no audio factory, or the pipeline did not start: logged).
    pub(crate) async fn join_audio(&self, viewer: &super::Viewer) -> Option<Arc<SharedAudio>> {
        let factory = Arc::clone(self.audio_factory.get()?);
        let instance_id = &viewer.grant.instance_id;
        let existing = self
            .inner()
            .audio
            .get(instance_id)
            .filter(|a| !a.has_ended())
            .cloned();
        let audio = match existing {
            Some(a) => a,
            None => {
                let source = match self.manager.audio_source(instance_id).await {
                    Ok(Some(source)) => source,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::debug!(instance = %instance_id, error = %e, "no audio source");
                        return None;
                    }
                };
                let started = tokio::task::spawn_blocking(move || factory(&source)).await;
                let (encoder, packets) = match started {
                    Ok(Ok(started)) => started,
                    Ok(Err(e)) => {
                        tracing::warn!(instance = %instance_id, error = %e, "audio did not start; video only");
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!(instance = %instance_id, error = %e, "audio did not start; video only");
                        return None;
                    }
                };
                let started = SharedAudio::start(encoder, packets);
                let mut inner = self.inner();
                match inner.audio.get(instance_id).filter(|a| !a.has_ended()) {
                    // Two first viewers raced; the loser's encoder is dropped unused.
                    Some(a) => {
                        let a = Arc::clone(a);
                        drop(inner);
                        tokio::task::spawn_blocking(move || started.stop());
                        a
                    }
                    None => {
                        inner
                            .audio
                            .insert(instance_id.clone(), Arc::clone(&started));
                        started
                    }
                }
            }
        };
        let mut inner = self.inner();
        let entry = inner.viewers.get_mut(&viewer.id)?;
        entry.audio = Some(Arc::clone(&audio));
        lock(&audio.viewers).insert(viewer.id);
        Some(audio)
    }
}
