//! The instance manager: owns every instance on this node — its persisted spec and desired
//! state, its lifecycle (checked with `cloudphone_core::lifecycle`), re-adoption after a
//! node restart, and the watcher that notices dead instances.
//!
//! # On disk
//! `<state_dir>/instances/<id>/instance.json` holds the spec and the desired state
//! (`running` or `stopped`), written atomically (temp file + rename). The runtime keeps its
//! own files (pids, logs) next to it, and the instance's data lives in `data/`. A deleted
//! instance's directory is first renamed to `.deleting-…` so a crash mid-delete never
//! leaves a half-removed instance that would be loaded again.
//!
//! # Restarts
//! [`InstanceManager::open`] loads every instance and starts again, in the background,
//! each one whose desired state is running; the runtime kills what a previous node run
//! left behind, so re-adoption is a clean restart. A failure there leaves the instance
//! `failed` with a message; instances are never dropped. [`InstanceManager::shutdown`]
//! stops all processes but keeps the desired states, so the next `open` brings them back.
//!
//! # Concurrency
//! Each instance has a read/write lock: lifecycle operations (start, stop, reboot, reset,
//! delete) take it exclusively, commands, installs and input share it. An operation that
//! the current state does not allow is refused at once rather than queued, e.g. a stop
//! during a reset; `delete` is always accepted and waits for the operation in flight.
//! Commands are bounded by their timeout, so a lifecycle operation waits at most that long.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudphone_core::lifecycle::{self, InstanceState, LifecycleError, Operation};
use tokio::sync::{RwLock, broadcast, mpsc, oneshot};

use crate::runtime::{
    CaptureSource, CommandOutput, CommandSpec, InputEvent, InstancePaths, InstanceSpec, Runtime,
    RuntimeError,
};

const INSTANCE_FILE: &str = "instance.json";
const DELETING_PREFIX: &str = ".deleting-";
/// How often the watcher looks at running instances.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Restarts the watcher attempts in a row before leaving an instance failed.
const MAX_AUTO_RESTARTS: u32 = 3;
/// An instance that ran this long before dying gets a fresh restart budget.
const RESTART_BUDGET_RESET: Duration = Duration::from_secs(60);
/// Per-stream output cap applied on top of the caller's, to protect the node's memory.
pub const MAX_COMMAND_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
/// Largest accepted screen side.
const MAX_SCREEN_SIDE: u32 = 8192;

/// An instance as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceView {
    pub spec: InstanceSpec,
    pub state: InstanceState,
    /// Why the instance is in this state (empty when there is nothing to say).
    pub message: String,
    pub changed_at_unix_ms: i64,
}

/// What can go wrong managing instances.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance {0} not found")]
    NotFound(String),
    #[error("instance {0} already exists with a different spec")]
    AlreadyExists(String),
    #[error("node has no capacity for another instance")]
    NoCapacity,
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),
    #[error("instance {id}: {source}")]
    InvalidState {
        id: String,
        #[source]
        source: LifecycleError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(
    context: impl std::fmt::Display,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> InstanceError {
    let context = format!("{context} {}", path.display());
    move |source| InstanceError::Io { context, source }
}

/// `instance.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    spec: InstanceSpec,
    /// `running` or `stopped`: what a node restart brings the instance back to.
    desired: InstanceState,
    /// Last state and message, for operators reading the file; not trusted on load.
    #[serde(default)]
    last_state: Option<InstanceState>,
    #[serde(default)]
    message: String,
}

struct Status {
    state: InstanceState,
    message: String,
    changed_at_unix_ms: i64,
    desired: InstanceState,
    /// Watcher restarts since the last user-initiated start.
    auto_restarts: u32,
    running_since: Option<Instant>,
    deleted: bool,
}

struct Entry {
    spec: InstanceSpec,
    paths: InstancePaths,
    /// In an `Arc` so guards can be owned and returned next to the entry.
    ops: Arc<RwLock<()>>,
    status: Mutex<Status>,
}

impl Entry {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        // Status updates are single assignments; a panic elsewhere cannot leave it torn.
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn view(&self) -> InstanceView {
        let s = self.status();
        InstanceView {
            spec: self.spec.clone(),
            state: s.state,
            message: s.message.clone(),
            changed_at_unix_ms: s.changed_at_unix_ms,
        }
    }
}

/// Notice that an instance's processes are about to stop. They stop once every subscriber
/// has answered with [`Stopping::done`] or dropped the notice.
#[derive(Debug)]
pub struct Stopping {
    pub instance_id: String,
    done: oneshot::Sender<()>,
}

impl Stopping {
    /// Lets the instance's processes stop.
    pub fn done(self) {
        let _ = self.done.send(());
    }
}

/// Runs this node's instances; see the module docs.
pub struct InstanceManager {
    state_dir: PathBuf,
    runtime: Arc<dyn Runtime>,
    capacity: usize,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    events: broadcast::Sender<InstanceView>,
    /// Who must let go of an instance before its processes stop (streaming: capture holds the
    /// instance's display); see [`InstanceManager::subscribe_stopping`].
    stopping: Mutex<Vec<mpsc::Sender<Stopping>>>,
    shutting_down: AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl InstanceManager {
    /// Loads the instances under `state_dir`, restarts in the background those meant to be
    /// running, and starts the watcher. Returns without waiting for the restarts.
    pub async fn open(
        state_dir: PathBuf,
        runtime: Arc<dyn Runtime>,
        capacity: usize,
    ) -> Result<Arc<Self>, InstanceError> {
        let instances_dir = state_dir.join("instances");
        tokio::fs::create_dir_all(&instances_dir)
            .await
            .map_err(io_err("creating", &instances_dir))?;
        let mut entries = BTreeMap::new();
        let mut dir = tokio::fs::read_dir(&instances_dir)
            .await
            .map_err(io_err("reading", &instances_dir))?;
        while let Some(item) = dir
            .next_entry()
            .await
            .map_err(io_err("reading", &instances_dir))?
        {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with(DELETING_PREFIX) {
                // An interrupted delete; finish it.
                if let Err(e) = tokio::fs::remove_dir_all(item.path()).await {
                    tracing::warn!(path = %item.path().display(), error = %e, "could not finish delete");
                }
                continue;
            }
            if name.starts_with('.') {
                continue;
            }
            let file = item.path().join(INSTANCE_FILE);
            let record = match tokio::fs::read(&file).await {
                Ok(bytes) => serde_json::from_slice::<Record>(&bytes),
                Err(e) => {
                    tracing::warn!(path = %file.display(), error = %e, "instance dir without a readable instance.json left alone");
                    continue;
                }
            };
            let record = match record {
                Ok(r) if r.spec.instance_id == name => r,
                Ok(_) => {
                    tracing::warn!(path = %file.display(), "instance.json names another instance; left alone");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %file.display(), error = %e, "corrupt instance.json left alone");
                    continue;
                }
            };
            let desired = match record.desired {
                InstanceState::Running => InstanceState::Running,
                _ => InstanceState::Stopped,
            };
            let paths = InstancePaths::new(&state_dir, &name);
            entries.insert(
                name,
                Arc::new(Entry {
                    spec: record.spec,
                    paths,
                    ops: Arc::new(RwLock::new(())),
                    status: Mutex::new(Status {
                        state: InstanceState::Stopped,
                        message: String::new(),
                        changed_at_unix_ms: now_ms(),
                        desired,
                        auto_restarts: 0,
                        running_since: None,
                        deleted: false,
                    }),
                }),
            );
        }

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
            if entries.len() >= self.capacity {
                return Err(InstanceError::NoCapacity);
            }
            let entry = Arc::new(Entry {
                paths: InstancePaths::new(&self.state_dir, &spec.instance_id),
                spec: spec.clone(),
                ops: Arc::new(RwLock::new(())),
                status: Mutex::new(Status {
                    state: InstanceState::Starting,
                    message: "creating".to_owned(),
                    changed_at_unix_ms: now_ms(),
                    desired: InstanceState::Running,
                    auto_restarts: 0,
                    running_since: None,
                    deleted: false,
                }),
            });
            entries.insert(spec.instance_id.clone(), Arc::clone(&entry));
            entry
        };
        let _ops = entry.ops.write().await;
        let _ = self.events.send(entry.view());

        if let Err(e) = self.create_files(&entry).await {
            self.settle(&entry, InstanceState::Failed, &e.to_string())
                .await;
            return Err(e);
        }
        if let Err(e) = self.runtime.provision(&entry.spec, &entry.paths).await {
            self.settle(
                &entry,
                InstanceState::Failed,
                &format!("provisioning failed: {e}"),
            )
            .await;
            return Err(e.into());
        }
        self.do_start(&entry).await
    }

    async fn create_files(&self, entry: &Entry) -> Result<(), InstanceError> {
        let root = &entry.paths.root;
        // A directory nobody loaded is debris of an interrupted create; start from scratch.
        if tokio::fs::try_exists(root).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(root)
                .await
                .map_err(io_err("clearing", root))?;
        }
        tokio::fs::create_dir_all(&entry.paths.data)
            .await
            .map_err(io_err("creating", &entry.paths.data))?;
        self.persist(entry).await
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
            self.settle(
                &entry,
                InstanceState::Failed,
                &format!("delete: stop failed: {e}"),
            )
            .await;
            return Err(e.into());
        }
        entry.status().deleted = true;
        lock(&self.entries).remove(id);
        let root = &entry.paths.root;
        let graveyard = self
            .state_dir
            .join("instances")
            .join(format!("{DELETING_PREFIX}{id}-{}", uuid::Uuid::new_v4()));
        match tokio::fs::rename(root, &graveyard).await {
            Ok(()) => {
                tokio::fs::remove_dir_all(&graveyard)
                    .await
                    .map_err(io_err("removing", &graveyard))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("moving", root)(e)),
        }
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
        // data dir cannot make this delete anything outside it.
        let wiped = async {
            match tokio::fs::remove_dir_all(data).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            tokio::fs::create_dir_all(data).await
        }
        .await;
        if let Err(e) = wiped {
            let err = io_err("wiping", data)(e);
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

    /// Archives the instance's data dir to `dest` (a `.tar.gz`) and returns the archive's
    /// size. The instance is stopped first and shows `BackingUp` meanwhile; the archive is
    /// written to a temp file and renamed into place, so `dest` is either the old archive or
    /// the complete new one. On success the instance stays stopped in `BackingUp` until
    /// [`release_backed_up`](Self::release_backed_up) removes it (its data now lives in the
    /// archive); on failure it goes back to what it was (started again if it was running).
    pub async fn backup(&self, id: &str, dest: &Path) -> Result<u64, InstanceError> {
        let (entry, _ops) = self.begin(id, Operation::Backup).await?;
        let was_running = entry.status().state == InstanceState::Running;
        self.set_state(&entry, InstanceState::BackingUp, "backing up");
        if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "backup: stop failed", e).await);
        }
        let data = entry.paths.data.clone();
        let target = dest.to_path_buf();
        let written = tokio::task::spawn_blocking(move || archive::write(&data, &target))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match written {
            Ok(bytes) => {
                tracing::info!(instance = id, bytes, dest = %dest.display(), "instance backed up");
                self.set_state(&entry, InstanceState::BackingUp, "backed up");
                Ok(bytes)
            }
            Err(e) => {
                let err = io_err("backup: archiving to", dest)(e);
                tracing::warn!(instance = id, error = %err, "backup failed");
                // Nothing was lost: put the instance back the way it was.
                if was_running {
                    let _ = self.do_start(&entry).await;
                } else {
                    self.settle(&entry, InstanceState::Stopped, &format!("{err}"))
                        .await;
                }
                Err(err)
            }
        }
    }

    /// Removes an instance [`backup`](Self::backup) archived, freeing its slot. Unlike
    /// [`delete`](Self::delete) it sends no final event: control records the instance as
    /// backed up, and a "stopped/deleted" event arriving after that would overwrite it.
    pub async fn release_backed_up(&self, id: &str) -> Result<(), InstanceError> {
        let entry = self.entry(id)?;
        let _ops = entry.ops.write().await;
        let state = entry.status().state;
        if entry.status().deleted || state != InstanceState::BackingUp {
            return Err(InstanceError::InvalidState {
                id: id.to_owned(),
                source: LifecycleError::NotAllowed {
                    state,
                    op: Operation::Delete,
                },
            });
        }
        entry.status().deleted = true;
        lock(&self.entries).remove(id);
        self.discard_dir(id, &entry.paths.root).await?;
        tracing::info!(instance = id, "backed-up instance released");
        Ok(())
    }

    /// Recreates an instance from an archive made by [`backup`](Self::backup) and starts it;
    /// it shows `Restoring` meanwhile. An instance this node does not hold is created from
    /// `spec` (capacity permitting); one it holds has its data replaced. Archives with paths
    /// leaving the data dir, links or device files are refused. A failed restore of a new
    /// instance removes it again, so the slot is not lost.
    pub async fn restore(
        &self,
        spec: InstanceSpec,
        src: &Path,
    ) -> Result<InstanceView, InstanceError> {
        validate_spec(&spec)?;
        let id = spec.instance_id.clone();
        let existing = lock(&self.entries).get(&id).cloned();
        let (entry, _ops, created) = match existing {
            Some(_) => {
                let (entry, ops) = self.begin(&id, Operation::Restore).await?;
                self.set_state(&entry, InstanceState::Restoring, "restoring");
                if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
                    return Err(self.fail(&entry, "restore: stop failed", e).await);
                }
                (entry, ops, false)
            }
            None => {
                let entry = {
                    let mut entries = lock(&self.entries);
                    if entries.contains_key(&id) {
                        return Err(InstanceError::AlreadyExists(id));
                    }
                    if entries.len() >= self.capacity {
                        return Err(InstanceError::NoCapacity);
                    }
                    let entry = Arc::new(Entry {
                        paths: InstancePaths::new(&self.state_dir, &id),
                        spec: spec.clone(),
                        ops: Arc::new(RwLock::new(())),
                        status: Mutex::new(Status {
                            state: InstanceState::Restoring,
                            message: "restoring".to_owned(),
                            changed_at_unix_ms: now_ms(),
                            desired: InstanceState::Running,
                            auto_restarts: 0,
                            running_since: None,
                            deleted: false,
                        }),
                    });
                    entries.insert(id.clone(), Arc::clone(&entry));
                    entry
                };
                let ops = Arc::clone(&entry.ops).write_owned().await;
                let _ = self.events.send(entry.view());
                (entry, ops, true)
            }
        };
        match self.restore_data(&entry, src, created).await {
            Ok(()) => {
                self.set_desired(&entry, InstanceState::Running).await?;
                entry.status().auto_restarts = 0;
                // The data is back: a start failure leaves the instance here, `failed`, and
                // is reported as its state, not as an error.
                match self.do_start(&entry).await {
                    Ok(view) => Ok(view),
                    Err(_) => Ok(entry.view()),
                }
            }
            Err(err) if created => {
                // Gone again without a final event: control records the failed restore, and
                // the instance must not hold a slot here.
                tracing::warn!(instance = %id, error = %err, "restore failed; instance removed");
                entry.status().deleted = true;
                lock(&self.entries).remove(&id);
                if let Err(e) = self.discard_dir(&id, &entry.paths.root).await {
                    tracing::warn!(instance = %id, error = %e, "could not clean up a failed restore");
                }
                Err(err)
            }
            Err(err) => {
                // The old data was never swapped out; the instance stays here, failed.
                tracing::warn!(instance = %id, error = %err, "restore failed");
                Ok(self
                    .settle(&entry, InstanceState::Failed, &format!("restore: {err}"))
                    .await)
            }
        }
    }

    /// Unpacks `src` next to the data dir, then swaps it in; the old data (if any) goes only
    /// once the new data is complete.
    async fn restore_data(
        &self,
        entry: &Entry,
        src: &Path,
        created: bool,
    ) -> Result<(), InstanceError> {
        if created {
            self.create_files(entry).await?;
        }
        let root = entry.paths.root.clone();
        let staging = root.join(format!(".restore-{}", uuid::Uuid::new_v4().simple()));
        let (from, into) = (src.to_path_buf(), staging.clone());
        let unpacked = tokio::task::spawn_blocking(move || archive::unpack(&from, &into))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = unpacked {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(io_err("restore: unpacking", src)(e));
        }
        let data = &entry.paths.data;
        let old = root.join(format!(".replaced-{}", uuid::Uuid::new_v4().simple()));
        match tokio::fs::rename(data, &old).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("restore: moving aside", data)(e)),
        }
        tokio::fs::rename(&staging, data)
            .await
            .map_err(io_err("restore: moving into place", data))?;
        if let Err(e) = tokio::fs::remove_dir_all(&old).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %old.display(), error = %e, "could not remove replaced data");
        }
        if let Some(user) = crate::runtime::sandbox::SandboxUser::for_this_node() {
            let data = data.clone();
            tokio::task::spawn_blocking(move || archive::chown_tree(&data, user))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(io_err(
                    "restore: handing to the sandbox user",
                    &entry.paths.data,
                ))?;
        }
        if let Err(e) = self.runtime.provision(&entry.spec, &entry.paths).await {
            return Err(InstanceError::Runtime(e));
        }
        Ok(())
    }

    /// Moves an instance dir to a `.deleting-` name, then removes it (see the module docs).
    async fn discard_dir(&self, id: &str, root: &Path) -> Result<(), InstanceError> {
        let graveyard = self
            .state_dir
            .join("instances")
            .join(format!("{DELETING_PREFIX}{id}-{}", uuid::Uuid::new_v4()));
        match tokio::fs::rename(root, &graveyard).await {
            Ok(()) => tokio::fs::remove_dir_all(&graveyard)
                .await
                .map_err(io_err("removing", &graveyard)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("moving", root)(e)),
        }
    }

    pub async fn status(&self, id: &str) -> Result<InstanceView, InstanceError> {
        Ok(self.entry(id)?.view())
    }

    /// Every instance, ordered by id.
    pub async fn list(&self) -> Vec<InstanceView> {
        self.snapshot().iter().map(|e| e.view()).collect()
    }

    /// Runs a shell command in a running instance's sandbox.
    pub async fn run_command(
        &self,
        id: &str,
        cmd: CommandSpec,
    ) -> Result<CommandOutput, InstanceError> {
        let (entry, _ops) = self.begin_shared(id, Operation::RunCommand).await?;
        let cmd = CommandSpec {
            max_output_bytes: cmd.max_output_bytes.min(MAX_COMMAND_OUTPUT_BYTES),
            ..cmd
        };
        Ok(self
            .runtime
            .run_command(&entry.spec, &entry.paths, &cmd)
            .await?)
    }

    /// Installs a package into a running instance.
    pub async fn install_app(&self, id: &str, package: &Path) -> Result<(), InstanceError> {
        let (entry, _ops) = self.begin_shared(id, Operation::RunCommand).await?;
        Ok(self
            .runtime
            .install_app(&entry.spec, &entry.paths, package)
            .await?)
    }

    pub async fn inject_input(&self, id: &str, ev: &InputEvent) -> Result<(), InstanceError> {
        let (entry, _ops) = self.begin_shared(id, Operation::Stream).await?;
        Ok(self
            .runtime
            .inject_input(&entry.spec, &entry.paths, ev)
            .await?)
    }

    pub async fn capture_source(&self, id: &str) -> Result<CaptureSource, InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, Operation::Stream)?;
        Ok(self.runtime.capture_source(&entry.spec, &entry.paths))
    }

    /// Every state change of every instance, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<InstanceView> {
        self.events.subscribe()
    }

    /// Notices of instances about to stop, each waiting for the subscriber's answer: every
    /// stop (StopInstance, reboot, reset, backup, restore, delete, a crash restart, node
    /// shutdown) sends one before it stops the processes. A subscriber that stops listening
    /// (drops the receiver) holds nothing up.
    pub fn subscribe_stopping(&self) -> mpsc::Receiver<Stopping> {
        let (tx, rx) = mpsc::channel(16);
        lock(&self.stopping).push(tx);
        rx
    }

    /// Stops an instance's processes once every [`Stopping`] subscriber has let go of it.
    async fn stop_processes(
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
                Ok(()) => self.set_state(&entry, InstanceState::Stopped, "node shut down"),
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

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    // ---------------------------------------------------------------------------------

    fn entry(&self, id: &str) -> Result<Arc<Entry>, InstanceError> {
        lock(&self.entries)
            .get(id)
            .cloned()
            .ok_or_else(|| InstanceError::NotFound(id.to_owned()))
    }

    fn snapshot(&self) -> Vec<Arc<Entry>> {
        lock(&self.entries).values().cloned().collect()
    }

    /// Looks up `id`, refuses `op` if the state forbids it, then takes the exclusive lock
    /// and checks again (the state may have moved while waiting).
    async fn begin(
        &self,
        id: &str,
        op: Operation,
    ) -> Result<(Arc<Entry>, tokio::sync::OwnedRwLockWriteGuard<()>), InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, op)?;
        let ops = Arc::clone(&entry.ops).write_owned().await;
        if entry.status().deleted {
            return Err(InstanceError::NotFound(id.to_owned()));
        }
        check(&entry, op)?;
        Ok((entry, ops))
    }

    /// Like [`begin`](Self::begin) with the shared lock.
    async fn begin_shared(
        &self,
        id: &str,
        op: Operation,
    ) -> Result<(Arc<Entry>, tokio::sync::OwnedRwLockReadGuard<()>), InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, op)?;
        let ops = Arc::clone(&entry.ops).read_owned().await;
        if entry.status().deleted {
            return Err(InstanceError::NotFound(id.to_owned()));
        }
        check(&entry, op)?;
        Ok((entry, ops))
    }

    /// Starts the runtime (the exclusive lock is held by the caller).
    async fn do_start(&self, entry: &Entry) -> Result<InstanceView, InstanceError> {
        if entry.status().state == InstanceState::Running
            && self.runtime.is_running(&entry.spec, &entry.paths).await
        {
            return Ok(entry.view());
        }
        self.set_state(entry, InstanceState::Starting, "starting");
        match self.runtime.start(&entry.spec, &entry.paths).await {
            Ok(()) => {
                entry.status().running_since = Some(Instant::now());
                Ok(self.settle(entry, InstanceState::Running, "").await)
            }
            Err(e) => Err(self.fail(entry, "start failed", e).await),
        }
    }

    async fn do_stop(&self, entry: &Entry, message: &str) -> Result<InstanceView, InstanceError> {
        match self.stop_processes(&entry.spec, &entry.paths).await {
            Ok(()) => Ok(self.settle(entry, InstanceState::Stopped, message).await),
            Err(e) => Err(self.fail(entry, "stop failed", e).await),
        }
    }

    /// Marks the instance failed with `what: err` and returns the error.
    async fn fail(&self, entry: &Entry, what: &str, err: RuntimeError) -> InstanceError {
        tracing::warn!(instance = %entry.spec.instance_id, error = %err, "{what}");
        self.settle(entry, InstanceState::Failed, &format!("{what}: {err}"))
            .await;
        err.into()
    }

    /// Sets the state, tells subscribers and returns the new view.
    fn set_state(&self, entry: &Entry, state: InstanceState, message: &str) -> InstanceView {
        {
            let mut s = entry.status();
            s.state = state;
            s.message = message.to_owned();
            s.changed_at_unix_ms = now_ms();
            if state != InstanceState::Running {
                s.running_since = None;
            }
        }
        let view = entry.view();
        // No subscribers is fine.
        let _ = self.events.send(view.clone());
        view
    }

    /// [`set_state`](Self::set_state) for a settled state, also recorded on disk.
    async fn settle(&self, entry: &Entry, state: InstanceState, message: &str) -> InstanceView {
        let view = self.set_state(entry, state, message);
        if let Err(e) = self.persist(entry).await {
            tracing::warn!(instance = %entry.spec.instance_id, error = %e, "could not record state");
        }
        view
    }

    async fn set_desired(
        &self,
        entry: &Entry,
        desired: InstanceState,
    ) -> Result<(), InstanceError> {
        entry.status().desired = desired;
        self.persist(entry).await
    }

    async fn persist(&self, entry: &Entry) -> Result<(), InstanceError> {
        let record = {
            let s = entry.status();
            if s.deleted {
                return Ok(());
            }
            Record {
                spec: entry.spec.clone(),
                desired: s.desired,
                last_state: Some(s.state),
                message: s.message.clone(),
            }
        };
        let path = entry.paths.root.join(INSTANCE_FILE);
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| InstanceError::Io {
            context: "encoding instance.json".to_owned(),
            source: std::io::Error::other(e),
        })?;
        crate::runtime::common::write_atomic(&path, &bytes)
            .await
            .map_err(io_err("writing", &path))
    }

    /// One watcher pass: instances meant to run whose processes died are marked failed and
    /// restarted, a bounded number of times.
    async fn watch_once(&self) {
        for entry in self.snapshot() {
            if self.shutting_down.load(Ordering::SeqCst) {
                return;
            }
            {
                let s = entry.status();
                if s.state != InstanceState::Running
                    || s.desired != InstanceState::Running
                    || s.deleted
                {
                    continue;
                }
            }
            // Busy means an operation is changing it right now; look again next pass.
            let Ok(_ops) = entry.ops.try_write() else {
                continue;
            };
            if entry.status().state != InstanceState::Running
                || self.runtime.is_running(&entry.spec, &entry.paths).await
            {
                continue;
            }
            let attempt = {
                let mut s = entry.status();
                if s.running_since
                    .is_some_and(|t| t.elapsed() >= RESTART_BUDGET_RESET)
                {
                    s.auto_restarts = 0;
                }
                s.auto_restarts += 1;
                s.auto_restarts
            };
            let id = &entry.spec.instance_id;
            if attempt > MAX_AUTO_RESTARTS {
                tracing::warn!(instance = %id, "instance died; restart budget used up");
                let msg = format!(
                    "processes exited unexpectedly; gave up after {MAX_AUTO_RESTARTS} restarts"
                );
                self.settle(&entry, InstanceState::Failed, &msg).await;
                continue;
            }
            tracing::warn!(instance = %id, attempt, "instance died; restarting");
            self.settle(
                &entry,
                InstanceState::Failed,
                "processes exited unexpectedly; restarting",
            )
            .await;
            if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
                self.fail(&entry, "cleanup before restart failed", e).await;
                continue;
            }
            let _ = self.do_start(&entry).await;
        }
    }
}

async fn watch(manager: Weak<InstanceManager>) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        let Some(m) = manager.upgrade() else { return };
        if m.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        m.watch_once().await;
    }
}

fn check(entry: &Entry, op: Operation) -> Result<(), InstanceError> {
    let state = entry.status().state;
    lifecycle::check(state, op).map_err(|source| InstanceError::InvalidState {
        id: entry.spec.instance_id.clone(),
        source,
    })
}

/// Ids become directory names and appear in logs and commands: keep them boring.
fn validate_spec(spec: &InstanceSpec) -> Result<(), InstanceError> {
    let id = &spec.instance_id;
    let id_ok = (1..=128).contains(&id.len())
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_ok {
        return Err(InstanceError::InvalidSpec(format!(
            "bad instance id {id:?}"
        )));
    }
    let side_ok = |v: u32| (16..=MAX_SCREEN_SIDE).contains(&v);
    if !side_ok(spec.width) || !side_ok(spec.height) {
        return Err(InstanceError::InvalidSpec(format!(
            "screen {}x{} outside 16..={MAX_SCREEN_SIDE}",
            spec.width, spec.height
        )));
    }
    Ok(())
}

/// The local path of a backup archive URI. Only `file://` with an absolute path to a `.tar.gz`
/// is supported (S3 is not yet); `..` is refused so control cannot aim outside its backup dir.
pub fn archive_path(uri: &str) -> Result<PathBuf, InstanceError> {
    let Some(path) = uri.strip_prefix("file://") else {
        return Err(InstanceError::InvalidSpec(format!(
            "unsupported archive URI {uri:?}: only file:// is supported"
        )));
    };
    let path = Path::new(path);
    let plain = path
        .components()
        .all(|c| !matches!(c, std::path::Component::ParentDir));
    if !path.is_absolute() || !plain || !path.to_string_lossy().ends_with(".tar.gz") {
        return Err(InstanceError::InvalidSpec(format!(
            "archive URI {uri:?} must name an absolute .tar.gz path without '..'"
        )));
    }
    Ok(path.to_path_buf())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Backup archives: a gzip'd tar of an instance's data dir, member names relative to it.
mod archive {
    use std::fs::{self, File};
    use std::io::{self, BufReader, BufWriter, Write};
    use std::path::{Component, Path, PathBuf};

    use flate2::Compression;
    use flate2::read::GzDecoder;
    use flate2::write::GzEncoder;

    use crate::runtime::sandbox::SandboxUser;

    fn invalid(message: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, message)
    }

    /// Writes `data` (files, dirs and symlinks; sockets and the like are skipped) to `dest`
    /// through a temp file in the same dir, renamed into place once complete and synced.
    pub fn write(data: &Path, dest: &Path) -> io::Result<u64> {
        let parent = dest
            .parent()
            .ok_or_else(|| invalid(format!("{} has no parent dir", dest.display())))?;
        let name = dest
            .file_name()
            .ok_or_else(|| invalid(format!("{} has no file name", dest.display())))?;
        fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let written = (|| {
            let file = File::create(&tmp)?;
            let gz = GzEncoder::new(BufWriter::new(file), Compression::fast());
            let mut builder = tar::Builder::new(gz);
            builder.follow_symlinks(false);
            builder.mode(tar::HeaderMode::Complete);
            if fs::symlink_metadata(data).is_ok_and(|m| m.is_dir()) {
                add_tree(&mut builder, data, Path::new(""))?;
            }
            let file = builder
                .into_inner()?
                .finish()?
                .into_inner()
                .map_err(|e| e.into_error())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, dest)?;
        // The rename itself must survive a crash too.
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(fs::metadata(dest)?.len())
    }

    fn add_tree<W: Write>(builder: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> io::Result<()> {
        let mut items = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
        items.sort_by_key(|item| item.file_name());
        for item in items {
            let path = item.path();
            let name = rel.join(item.file_name());
            let kind = fs::symlink_metadata(&path)?.file_type();
            if kind.is_dir() {
                builder.append_dir(&name, &path)?;
                add_tree(builder, &path, &name)?;
            } else if kind.is_file() || kind.is_symlink() {
                builder.append_path_with_name(&path, &name)?;
            } else {
                tracing::debug!(path = %path.display(), "not archived: not a file, dir or symlink");
            }
        }
        Ok(())
    }

    /// The member path as a plain relative path, or an error if it is absolute or climbs.
    fn relative(path: &Path) -> io::Result<PathBuf> {
        let mut clean = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(invalid(format!(
                        "archive member {} leaves the data dir",
                        path.display()
                    )));
                }
            }
        }
        Ok(clean)
    }

    /// Unpacks an archive into `into`, which must not exist yet. Only files, dirs and
    /// symlinks are accepted; a member whose path is absolute, contains `..`, or passes
    /// through a symlink (which could point anywhere) fails the whole restore. Ownership and
    /// special permission bits are not taken from the archive.
    pub fn unpack(src: &Path, into: &Path) -> io::Result<()> {
        fs::create_dir(into)?;
        let file = File::open(src)?;
        let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
        archive.set_preserve_permissions(false);
        archive.set_preserve_ownerships(false);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let rel = relative(&path)?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
                return Err(invalid(format!(
                    "archive member {} is a {kind:?}; only files, dirs and symlinks are restored",
                    path.display()
                )));
            }
            let mut at = into.to_path_buf();
            for component in rel.components() {
                at.push(component);
                if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(invalid(format!(
                        "archive member {} goes through a symlink",
                        path.display()
                    )));
                }
            }
            if !entry.unpack_in(into)? {
                return Err(invalid(format!(
                    "archive member {} was refused",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Hands `dir` and everything under it to `user`, never following symlinks.
    pub fn chown_tree(dir: &Path, user: SandboxUser) -> io::Result<()> {
        user.take_ownership(dir)?;
        for item in fs::read_dir(dir)? {
            let path = item?.path();
            user.take_ownership(&path)?;
            if fs::symlink_metadata(&path)?.is_dir() {
                chown_tree(&path, user)?;
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// An archive with one member whose raw name is `name` (bypassing the builder's
        /// own checks, as a hostile archive would).
        /// (raw name, type, body or link target)
        type Member<'a> = (&'a [u8], tar::EntryType, &'a [u8]);

        fn hostile(dir: &Path, members: &[Member<'_>]) -> PathBuf {
            let path = dir.join("hostile.tar.gz");
            let gz = GzEncoder::new(File::create(&path).unwrap(), Compression::fast());
            let mut builder = tar::Builder::new(gz);
            for (name, kind, body) in members {
                let mut header = tar::Header::new_gnu();
                header.as_old_mut().name[..name.len()].copy_from_slice(name);
                header.set_entry_type(*kind);
                header.set_mode(0o644);
                if kind.is_symlink() || *kind == tar::EntryType::Link {
                    header
                        .set_link_name(std::str::from_utf8(body).unwrap())
                        .unwrap();
                    header.set_size(0);
                    header.set_cksum();
                    builder.append(&header, io::empty()).unwrap();
                } else {
                    header.set_size(body.len() as u64);
                    header.set_cksum();
                    builder.append(&header, *body).unwrap();
                }
            }
            builder.into_inner().unwrap().finish().unwrap();
            path
        }

        #[test]
        fn round_trip_keeps_files_dirs_and_links() {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            fs::create_dir_all(data.join("apps/sub")).unwrap();
            fs::write(data.join("x"), b"").unwrap();
            fs::write(data.join("apps/sub/f.txt"), b"hello").unwrap();
            std::os::unix::fs::symlink("apps/sub/f.txt", data.join("link")).unwrap();
            let dest = dir.path().join("backups/t1/i1.tar.gz");
            let bytes = write(&data, &dest).unwrap();
            assert_eq!(bytes, fs::metadata(&dest).unwrap().len());
            let leftovers: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().collect();
            assert_eq!(leftovers.len(), 1, "no temp file left");

            let out = dir.path().join("out");
            unpack(&dest, &out).unwrap();
            assert!(out.join("x").is_file());
            assert_eq!(fs::read(out.join("apps/sub/f.txt")).unwrap(), b"hello");
            assert_eq!(
                fs::read_link(out.join("link")).unwrap(),
                Path::new("apps/sub/f.txt")
            );
            assert!(unpack(&dest, &out).is_err(), "the target must be new");
        }

        #[test]
        fn a_missing_data_dir_makes_an_empty_archive() {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("a.tar.gz");
            write(&dir.path().join("nope"), &dest).unwrap();
            unpack(&dest, &dir.path().join("out")).unwrap();
            assert_eq!(fs::read_dir(dir.path().join("out")).unwrap().count(), 0);
        }

        #[test]
        fn traversal_links_and_devices_are_refused() {
            let dir = tempfile::tempdir().unwrap();
            let outside = dir.path().join("outside");
            fs::create_dir(&outside).unwrap();
            let regular = tar::EntryType::Regular;
            let cases: Vec<(&str, Vec<Member<'_>>)> = vec![
                ("dot-dot", vec![(b"../outside/evil", regular, b"x")]),
                ("absolute", vec![(b"/tmp/evil-abs", regular, b"x")]),
                (
                    "through a symlink",
                    vec![
                        (
                            b"link",
                            tar::EntryType::Symlink,
                            outside.to_str().unwrap().as_bytes(),
                        ),
                        (b"link/evil", regular, b"x"),
                    ],
                ),
                (
                    "hard link",
                    vec![(b"hard", tar::EntryType::Link, b"/etc/passwd")],
                ),
                ("fifo", vec![(b"pipe", tar::EntryType::Fifo, b"")]),
            ];
            for (n, (what, members)) in cases.into_iter().enumerate() {
                let archive = hostile(dir.path(), &members);
                let out = dir.path().join(format!("out{n}"));
                assert!(unpack(&archive, &out).is_err(), "{what} must be refused");
            }
            assert_eq!(
                fs::read_dir(&outside).unwrap().count(),
                0,
                "nothing escaped"
            );
            assert!(!Path::new("/tmp/evil-abs").exists());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> InstanceSpec {
        InstanceSpec {
            instance_id: id.into(),
            tenant_id: "t".into(),
            width: 720,
            height: 1280,
            os: "x".into(),
        }
    }

    #[test]
    fn archive_uris() {
        assert_eq!(
            archive_path("file:///var/b/t/i.tar.gz").unwrap(),
            PathBuf::from("/var/b/t/i.tar.gz")
        );
        for bad in [
            "s3://bucket/i.tar.gz",
            "file://relative/i.tar.gz",
            "file:///var/b/../../etc/i.tar.gz",
            "file:///var/b/i.zip",
            "/var/b/i.tar.gz",
        ] {
            assert!(archive_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_validation() {
        assert!(validate_spec(&spec("abc-123_X")).is_ok());
        assert!(validate_spec(&spec(&uuid::Uuid::new_v4().to_string())).is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "a b", "-x", &"a".repeat(129)] {
            assert!(validate_spec(&spec(bad)).is_err(), "{bad:?}");
        }
        assert!(
            validate_spec(&InstanceSpec {
                width: 0,
                ..spec("a")
            })
            .is_err()
        );
        assert!(
            validate_spec(&InstanceSpec {
                height: 100_000,
                ..spec("a")
            })
            .is_err()
        );
    }
}
