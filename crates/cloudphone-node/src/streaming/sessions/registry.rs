//! The viewers in the registry: admission at hello, joining (or starting) the profile's
//! encoder, leaving, and the ways the node ends streams (StopStreaming, an instance stopping,
//! a new video matrix, shutdown).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudphone_core::lifecycle::InstanceState;
use cloudphone_core::video::{Codec, Definition, VideoConfig, VideoSpec};
use cloudphone_signaling::{ByeReason, ErrorCode, Hello};
use tokio::sync::{broadcast, mpsc, watch};

use super::encoder::{EncoderRequest, SharedEncoder};
use super::grants::{Grant, Refusal, refuse};
use super::{ProfileKey, Sessions, ViewerEntry, ViewerSpecs, Winding};
use crate::instances::Stopping;

impl Sessions {
    /// Checks a hello and registers the viewer. The returned [`Viewer`] unregisters on drop.
    pub(crate) async fn admit(self: &Arc<Self>, hello: &Hello) -> Result<Viewer, Refusal> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(refuse(ErrorCode::Busy, "node is shutting down"));
        }
        let grant = self
            .inner()
            .grants
            .get(&hello.device_id)
            .cloned()
            .ok_or_else(|| refuse(ErrorCode::UnknownDevice, "no session for this device"))?;
        if !grant.token_matches(&hello.device_token) {
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
                // Refused at hello, before any offer: the viewer learns it before media is
                // negotiated or an encoder is started for it.
                return Err(refuse(
                    ErrorCode::TooManyViewers,
                    format!(
                        "this phone already has {watching} viewers (owners and observers together), the most it streams to; one has to leave first"
                    ),
                ));
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
                    audio: None,
                },
            );
            (id, spec)
        };
        tracing::info!(instance = %grant.instance_id, device = %grant.device_id, viewer = id, role = %grant.role, %codec, %definition, "viewer admitted");
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
    pub(crate) async fn join_encoder(&self, viewer: &Viewer) -> Result<Arc<SharedEncoder>, String> {
        let instance_id = &viewer.grant.instance_id;
        let key = ProfileKey {
            instance_id: instance_id.clone(),
            codec: viewer.codec,
            definition: viewer.definition,
            fps: viewer.spec.fps,
        };
        let existing = self.inner().encoders.get(&key).cloned();
        // A crowd of first viewers (200 players opening 20 phones at once) would otherwise
        // start one pipeline each and drop all but one; they queue behind the first instead.
        let gate = match existing {
            Some(_) => None,
            None => Some(Arc::clone(
                self.inner().starting.entry(key.clone()).or_default(),
            )),
        };
        let _starting = match &gate {
            Some(gate) => Some(gate.lock().await),
            None => None,
        };
        let existing = match existing {
            Some(e) => Some(e),
            None => self.inner().encoders.get(&key).cloned(),
        };
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
                        inner.encoders.insert(key.clone(), Arc::clone(&started));
                        started
                    }
                }
            }
        };
        // Later viewers find the encoder; those already queued hold the gate's Arc.
        self.inner().starting.remove(&key);
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

    fn leave(self: &Arc<Self>, id: u64) {
        let mut inner = self.inner();
        let Some(entry) = inner.viewers.remove(&id) else {
            return;
        };
        tracing::info!(instance = %entry.instance_id, device = %entry.device_id, viewer = id, "viewer left");
        let mut done: Vec<Winding> = Vec::new();
        if let Some(audio) = entry.audio
            && audio.remove_viewer(id) == 0
        {
            inner.audio.retain(|_, a| !Arc::ptr_eq(a, &audio));
            done.push(Winding::Audio(audio));
        }
        if let Some(encoder) = entry.encoder
            && encoder.remove_viewer(id) == 0
        {
            inner.encoders.retain(|_, e| !Arc::ptr_eq(e, &encoder));
            done.push(Winding::Video(encoder));
        }
        if done.is_empty() {
            return;
        }
        for s in &done {
            inner.stopping.push((entry.instance_id.clone(), s.clone()));
        }
        drop(inner);
        self.wind_down(done);
    }

    /// Stops encoders already listed in `stopping`, then unlists them.
    fn wind_down(self: &Arc<Self>, done: Vec<Winding>) {
        // Stopping joins the pipelines' threads; off the async workers when there are any.
        // Listed in `stopping` meanwhile, so an instance stop waits for them.
        let sessions = Arc::clone(self);
        let stop = move || {
            for s in &done {
                s.stop();
            }
            sessions
                .inner()
                .stopping
                .retain(|(_, s)| !done.iter().any(|d| d.is(s)));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(stop);
            }
            Err(_) => stop(),
        }
    }

    pub(super) fn stop_viewers(
        &self,
        pick: impl Fn(&ViewerEntry) -> bool,
        reason: ByeReason,
    ) -> u32 {
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
    pub(crate) async fn end_instance(&self, instance_id: &str, reason: ByeReason) {
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
        // The audio capture holds a connection to the instance's sound server; encoders whose
        // last viewer just left are still stopping: wait for those too (a second stop returns
        // once the first has finished).
        let mut rest: Vec<Winding> = Vec::new();
        {
            let mut inner = self.inner();
            if let Some(audio) = inner.audio.remove(instance_id) {
                rest.push(Winding::Audio(audio));
            }
            rest.extend(
                inner
                    .stopping
                    .iter()
                    .filter(|(id, _)| id == instance_id)
                    .map(|(_, s)| s.clone()),
            );
        }
        for s in rest {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
        for encoder in encoders {
            // Stopping a pipeline joins its streaming threads: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || encoder.stop()).await;
        }
    }

    /// StopStreaming: ends the instance's live streams; its grants stay valid.
    pub(crate) fn stop_streaming(&self, instance_id: &str) -> u32 {
        self.stop_viewers(|v| v.instance_id == instance_id, ByeReason::Stopped)
    }

    /// SetVideoConfig: stores the matrix and applies it to the instance's live encoders.
    /// Returns how many viewers were updated.
    pub(crate) fn set_video_config(&self, instance_id: &str, config: VideoConfig) -> u32 {
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
    pub(crate) async fn drain(&self, within: Duration) {
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

/// Ends the streams of instances that stop running.
pub(super) async fn watch_instances(sessions: std::sync::Weak<Sessions>) {
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

/// Ends an instance's streams **before** its processes stop.
///
/// Capture holds a connection to the instance's display; `ximagesrc` uses Xlib, whose I/O
/// error handler calls `exit()` when the X server goes away under it, which would take the
/// whole node down with one stopped instance. Every stop the instance manager makes
/// (StopInstance, reboot, reset, delete, node shutdown) first sends a [`Stopping`] notice and
/// waits for its answer, so ending the streams here covers them all. A display that crashes on
/// its own is not covered (see `docs/streaming.md`).
pub(super) async fn end_before_stop(
    sessions: std::sync::Weak<Sessions>,
    mut notices: mpsc::Receiver<Stopping>,
) {
    while let Some(notice) = notices.recv().await {
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        // One task per notice: instances stopping at once do not wait for each other.
        tokio::spawn(async move {
            sessions
                .end_instance(&notice.instance_id, ByeReason::InstanceGone)
                .await;
            notice.done();
        });
    }
}

/// One admitted viewer; leaving the registry when dropped.
pub(crate) struct Viewer {
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

/// An encoder a viewer switched away from, whose last viewer that was. It keeps running until
/// the viewer's track has cut over to the new encoder's first key frame (so the picture never
/// stops meanwhile) and is stopped when this is dropped. It is listed in `stopping` from the
/// switch on, so an instance stop waits for (and stops) it like any other encoder.
pub(crate) struct Retiring {
    sessions: Arc<Sessions>,
    encoder: Arc<SharedEncoder>,
}

impl Drop for Retiring {
    fn drop(&mut self) {
        self.sessions
            .wind_down(vec![Winding::Video(Arc::clone(&self.encoder))]);
    }
}

impl Sessions {
    /// A viewer's `definition` request: moves it to the encoder of its new profile (started if
    /// no one watches that profile yet, shared otherwise), under the matrix cell of the new
    /// definition. Returns the new encoder and, when the viewer was the old encoder's last,
    /// that encoder, to be stopped once the track has cut over. On failure the viewer stays
    /// where it was.
    pub(crate) async fn switch_definition(
        self: &Arc<Self>,
        viewer: &mut Viewer,
        definition: Definition,
    ) -> Result<(Arc<SharedEncoder>, Option<Retiring>), String> {
        let (network, config, old) = {
            let inner = self.inner();
            let entry = inner
                .viewers
                .get(&viewer.id)
                .ok_or_else(|| "viewer was stopped".to_owned())?;
            let config = inner
                .configs
                .get(&viewer.grant.instance_id)
                .cloned()
                .unwrap_or_default();
            (entry.network, config, entry.encoder.clone())
        };
        let previous = (viewer.definition, viewer.spec);
        viewer.definition = definition;
        viewer.spec = config.get(network, viewer.codec, definition);
        let encoder = match self.join_encoder(viewer).await {
            Ok(e) => e,
            Err(e) => {
                (viewer.definition, viewer.spec) = previous;
                return Err(e);
            }
        };
        let mut inner = self.inner();
        if let Some(entry) = inner.viewers.get_mut(&viewer.id) {
            // SetVideoConfig reads the viewer's cell by its definition.
            entry.definition = definition;
        }
        let retiring = match old {
            Some(old) if !Arc::ptr_eq(&old, &encoder) && old.remove_viewer(viewer.id) == 0 => {
                // No new viewer joins an encoder on its way out.
                inner.encoders.retain(|_, e| !Arc::ptr_eq(e, &old));
                inner.stopping.push((
                    viewer.grant.instance_id.clone(),
                    Winding::Video(Arc::clone(&old)),
                ));
                Some(Retiring {
                    sessions: Arc::clone(self),
                    encoder: old,
                })
            }
            _ => None,
        };
        drop(inner);
        tracing::info!(instance = %viewer.grant.instance_id, viewer = viewer.id, %definition, width = encoder.width, height = encoder.height, "definition switched");
        Ok((encoder, retiring))
    }
}
