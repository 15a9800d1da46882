//! The manager's operations: opening the state dir (re-adoption), create, delete, start,
//! stop, reboot, reset, the shared-lock calls into a running instance (commands, installs,
//! input, capture), the stop notices streaming waits on, and shutdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cloudphone_core::lifecycle::{InstanceState, Operation};
use tokio::sync::{RwLock, broadcast, mpsc, oneshot};

use super::watch::watch;
use super::{
    Entry, InstanceError, InstanceManager, InstanceView, MAX_COMMAND_OUTPUT_BYTES, Stopping, check,
    io_err, lock, validate_spec,
};
use crate::runtime::{
    AudioSource, CaptureSource, CommandOutput, CommandSpec, InputEvent, InstancePaths,
    InstanceSpec, Runtime, RuntimeError,
};

impl InstanceManager {
    /// Loads the instances under `state_dir`, restarts in the background those meant to be
    /// running, and starts the watcher. Returns without waiting for the restarts.
    pub async fn open(
        state_dir: PathBuf,
        runtime: Arc<dyn Runtime>,
        capacity: usize,
    ) -> Result<Arc<Self>, InstanceError> {
        let entries = super::record::load_entries(&state_dir, runtime.sandbox_uids()).await?;

        let (events, _) = broadcast::channel(256);
        let manager = Arc::new(Self {
            state_dir,
            runtime,
            capacity,
            entries: Mutex::new(entries),
            events,
            stopping: Mutex::new(Vec::new()),
            shutting_down: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });

        // Quota volumes come back first, stopped instances' too (a backup reads them); a
        // failure here is met again, and reported, by whatever next uses the dir.
        for entry in manager.snapshot() {
            if let Err(e) = manager.mount_volume(&entry).await {
                tracing::warn!(instance = %entry.spec.instance_id, error = %e, "could not mount data volume");
            }
        }
        let mut tasks = Vec::new();
        for entry in manager.snapshot() {
            if entry.status().desired != InstanceState::Running {
                continue;
            }
            manager.set_state(
                &entry,
                InstanceState::Starting,
                "restarting after node restart",
            );
            let m = Arc::clone(&manager);
            tasks.push(tokio::spawn(async move {
                let _ops = entry.ops.write().await;
                if entry.status().deleted || m.shutting_down.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = m.do_start(&entry).await {
                    tracing::warn!(instance = %entry.spec.instance_id, error = %e, "re-adoption failed");
                }
            }));
        }
        tasks.push(tokio::spawn(watch(Arc::downgrade(&manager))));
        *lock(&manager.tasks) = tasks;
        tracing::info!(
            instances = manager.snapshot().len(),
            runtime = manager.runtime.name(),
            "instance manager open"
        );
        Ok(manager)
    }

    /// Creates, provisions and starts an instance. Creating an instance that already
    /// exists with the same spec returns it as it is (retries are safe).
    pub async fn create(&self, spec: InstanceSpec) -> Result<InstanceView, InstanceError> {
        validate_spec(&spec)?;
        let entry = {
            let mut entries = lock(&self.entries);
            if let Some(existing) = entries.get(&spec.instance_id) {
                return if existing.spec == spec {
                    Ok(existing.view())
                } else {
                    Err(InstanceError::AlreadyExists(spec.instance_id))
                };
            }
            self.insert_new(&mut entries, &spec, InstanceState::Starting, "creating")?
        };
        let _ops = entry.ops.write().await;
        let _ = self.events.send(entry.view());

        if let Err(e) = self.create_files(&entry).await {
            self.settle(&entry, InstanceState::Failed, &e.to_string())
                .await;
            return Err(e);
        }
        if let Err(e) = self.runtime.provision(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "provisioning failed", e).await);
        }
        self.do_start(&entry).await
    }

    /// Stops and removes an instance with all its data. `Ok(false)` if it did not exist.
    pub async fn delete(&self, id: &str) -> Result<bool, InstanceError> {
        let Some(entry) = lock(&self.entries).get(id).cloned() else {
            return Ok(false);
        };
        let _ops = entry.ops.write().await;
        if entry.status().deleted {
            return Ok(false);
        }
        if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "delete: stop failed", e).await);
        }
        entry.status().deleted = true;
        lock(&self.entries).remove(id);
        self.discard_dir(id, &entry.paths.root).await?;
        self.set_state(&entry, InstanceState::Stopped, "deleted");
        tracing::info!(instance = id, "instance deleted");
        Ok(true)
    }

    /// Starts a stopped or failed instance; a running one is left as it is.
    pub async fn start(&self, id: &str) -> Result<InstanceView, InstanceError> {
        let (entry, _ops) = self.begin(id, Operation::Start).await?;
        self.set_desired(&entry, InstanceState::Running).await?;
        entry.status().auto_restarts = 0;
        self.do_start(&entry).await
    }

    /// Stops an instance, keeping its data.
    pub async fn stop(&self, id: &str) -> Result<InstanceView, InstanceError> {
        let (entry, _ops) = self.begin(id, Operation::Stop).await?;
        self.set_desired(&entry, InstanceState::Stopped).await?;
        self.do_stop(&entry, "stopped").await
    }

    /// Stops and starts an instance.
    pub async fn reboot(&self, id: &str) -> Result<InstanceView, InstanceError> {
        let (entry, _ops) = self.begin(id, Operation::Reboot).await?;
        self.set_desired(&entry, InstanceState::Running).await?;
        entry.status().auto_restarts = 0;
        self.set_state(&entry, InstanceState::Starting, "rebooting");
        if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "reboot: stop failed", e).await);
        }
        self.do_start(&entry).await
    }

    /// Wipes an instance back to a freshly provisioned one and starts it.
    pub async fn reset(&self, id: &str) -> Result<InstanceView, InstanceError> {
        let (entry, _ops) = self.begin(id, Operation::Reset).await?;
        self.set_state(&entry, InstanceState::Resetting, "resetting");
        if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "reset: stop failed", e).await);
        }
        let data = &entry.paths.data;
        // remove_dir_all does not follow symlinks, so links the instance planted in its
        // data dir cannot make this delete anything outside it. A quota volume is unmounted
        // first and replaced by a fresh one, which is also how an instance from before
        // quotas gets one.
        let wiped = async {
            super::volume::unmount(data).await?;
            match tokio::fs::remove_dir_all(data).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            tokio::fs::create_dir_all(data).await
        }
        .await;
        let wiped = match wiped {
            Ok(()) => self.fresh_volume(&entry).await,
            Err(e) => Err(io_err("wiping", data)(e)),
        };
        if let Err(err) = wiped {
            self.settle(&entry, InstanceState::Failed, &format!("reset: {err}"))
                .await;
            return Err(err);
        }
        if let Err(e) = self.runtime.provision(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "reset: provisioning failed", e).await);
        }
        self.set_desired(&entry, InstanceState::Running).await?;
        entry.status().auto_restarts = 0;
        self.do_start(&entry).await
    }

    /// Runs a shell command in a running instance's sandbox.
    pub async fn run_command(
        &self,
        id: &str,
        cmd: CommandSpec,
    ) -> Result<CommandOutput, InstanceError> {
        let cmd = CommandSpec {
            max_output_bytes: cmd.max_output_bytes.min(MAX_COMMAND_OUTPUT_BYTES),
            ..cmd
        };
        self.on_runtime(id, Operation::RunCommand, |rt, e| async move {
            rt.run_command(&e.spec, &e.paths, &cmd).await
        })
        .await
    }

    /// Installs a package into a running instance.
    pub async fn install_app(&self, id: &str, package: &Path) -> Result<(), InstanceError> {
        self.on_runtime(id, Operation::RunCommand, |rt, e| async move {
            rt.install_app(&e.paths, package).await
        })
        .await
    }

    pub async fn inject_input(&self, id: &str, ev: &InputEvent) -> Result<(), InstanceError> {
        self.on_runtime(id, Operation::Stream, |rt, e| async move {
            rt.inject_input(&e.spec, &e.paths, ev).await
        })
        .await
    }

    /// Runs `call` on the instance's runtime once `op` is allowed, holding the operation lock
    /// shared: commands, installs and input run alongside one another, never alongside a
    /// start, stop or wipe.
    async fn on_runtime<T, F: Future<Output = Result<T, RuntimeError>>>(
        &self,
        id: &str,
        op: Operation,
        call: impl FnOnce(Arc<dyn Runtime>, Arc<Entry>) -> F,
    ) -> Result<T, InstanceError> {
        let (entry, _ops) = self.begin_with(id, op, RwLock::read_owned).await?;
        Ok(call(Arc::clone(&self.runtime), entry).await?)
    }

    pub async fn capture_source(&self, id: &str) -> Result<CaptureSource, InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, Operation::Stream)?;
        Ok(self.runtime.capture_source(&entry.spec, &entry.paths))
    }

    /// Where the instance's sound is captured from, if its runtime has any.
    pub(crate) async fn audio_source(
        &self,
        id: &str,
    ) -> Result<Option<AudioSource>, InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, Operation::Stream)?;
        Ok(self.runtime.audio_source(&entry.spec, &entry.paths))
    }

    /// Notices of instances about to stop, each waiting for the subscriber's answer: every
    /// stop (StopInstance, reboot, reset, backup, restore, delete, a crash restart, node
    /// shutdown) sends one before it stops the processes. A subscriber that stops listening
    /// (drops the receiver) holds nothing up.
    pub(crate) fn subscribe_stopping(&self) -> mpsc::Receiver<Stopping> {
        let (tx, rx) = mpsc::channel(16);
        lock(&self.stopping).push(tx);
        rx
    }

    /// Stops an instance's processes once every [`Stopping`] subscriber has let go of it.
    pub(super) async fn stop_processes(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<(), RuntimeError> {
        let subscribers: Vec<mpsc::Sender<Stopping>> = {
            let mut stopping = lock(&self.stopping);
            stopping.retain(|tx| !tx.is_closed());
            stopping.clone()
        };
        for tx in subscribers {
            let (done, answered) = oneshot::channel();
            let notice = Stopping {
                instance_id: spec.instance_id.clone(),
                done,
            };
            if tx.send(notice).await.is_ok() {
                // An error only means the subscriber dropped the notice: nothing to wait for.
                let _ = answered.await;
            }
        }
        self.runtime.stop(spec, paths).await
    }

    /// Stops every instance's processes, keeping desired states on disk so the next
    /// [`open`](Self::open) brings the running ones back. Background work stops too.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            task.abort();
        }
        for entry in self.snapshot() {
            let _ops = entry.ops.write().await;
            if entry.status().deleted {
                continue;
            }
            match self.stop_processes(&entry.spec, &entry.paths).await {
                Ok(()) => {
                    // The next open mounts it again.
                    if let Err(e) = super::volume::unmount(&entry.paths.data).await {
                        tracing::warn!(instance = %entry.spec.instance_id, error = %e, "could not unmount data volume");
                    }
                    self.set_state(&entry, InstanceState::Stopped, "node shut down")
                }
                Err(e) => {
                    tracing::warn!(instance = %entry.spec.instance_id, error = %e, "stop at shutdown failed");
                    self.set_state(
                        &entry,
                        InstanceState::Failed,
                        &format!("stop at shutdown failed: {e}"),
                    )
                }
            };
        }
        tracing::info!("instance manager shut down");
    }

    /// Starts the runtime (the exclusive lock is held by the caller).
    pub(super) async fn do_start(&self, entry: &Entry) -> Result<InstanceView, InstanceError> {
        if entry.status().state == InstanceState::Running
            && self.runtime.is_running(&entry.spec, &entry.paths).await
        {
            return Ok(entry.view());
        }
        self.set_state(entry, InstanceState::Starting, "starting");
        // Never start on the bare dir beneath an unmounted quota volume: that would write to
        // the host's disk without a limit (and out of sight of the volume).
        if let Err(e) = self.mount_volume(entry).await {
            self.settle(entry, InstanceState::Failed, &format!("start failed: {e}"))
                .await;
            return Err(e);
        }
        match self.runtime.start(&entry.spec, &entry.paths).await {
            Ok(()) => {
                entry.status().running_since = Some(Instant::now());
                Ok(self.settle(entry, InstanceState::Running, "").await)
            }
            Err(e) => Err(self.fail(entry, "start failed", e).await),
        }
    }

    pub(super) async fn do_stop(
        &self,
        entry: &Entry,
        message: &str,
    ) -> Result<InstanceView, InstanceError> {
        match self.stop_processes(&entry.spec, &entry.paths).await {
            Ok(()) => Ok(self.settle(entry, InstanceState::Stopped, message).await),
            Err(e) => Err(self.fail(entry, "stop failed", e).await),
        }
    }

    /// Marks the instance failed with `what: err` and returns the error.
    pub(super) async fn fail(&self, entry: &Entry, what: &str, err: RuntimeError) -> InstanceError {
        tracing::warn!(instance = %entry.spec.instance_id, error = %err, "{what}");
        self.settle(entry, InstanceState::Failed, &format!("{what}: {err}"))
            .await;
        err.into()
    }
}
