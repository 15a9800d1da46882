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
use tokio::sync::{RwLock, broadcast};

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

/// Runs this node's instances; see the module docs.
pub struct InstanceManager {
    state_dir: PathBuf,
    runtime: Arc<dyn Runtime>,
    capacity: usize,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    events: broadcast::Sender<InstanceView>,
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
        if let Err(e) = self.runtime.stop(&entry.spec, &entry.paths).await {
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
        if let Err(e) = self.runtime.stop(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "reboot: stop failed", e).await);
        }
        self.do_start(&entry).await
    }

    /// Wipes an instance back to a freshly provisioned one and starts it.
    pub async fn reset(&self, id: &str) -> Result<InstanceView, InstanceError> {
        let (entry, _ops) = self.begin(id, Operation::Reset).await?;
        self.set_state(&entry, InstanceState::Resetting, "resetting");
        if let Err(e) = self.runtime.stop(&entry.spec, &entry.paths).await {
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
            match self.runtime.stop(&entry.spec, &entry.paths).await {
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
        match self.runtime.stop(&entry.spec, &entry.paths).await {
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
        crate::runtime::x11::write_atomic(&path, &bytes)
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
            if let Err(e) = self.runtime.stop(&entry.spec, &entry.paths).await {
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
