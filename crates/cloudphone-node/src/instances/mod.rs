//! The instance manager: owns every instance on this node — its persisted spec and desired
//! state, its lifecycle (checked with `cloudphone_core::lifecycle`), re-adoption after a
//! node restart, and the watcher that notices dead instances.
//!
//! # On disk
//! `<state_dir>/instances/<id>/instance.json` holds the spec and the desired state
//! (`running` or `stopped`), written atomically (temp file + rename). The runtime keeps its
//! own files (pids, logs) next to it, and the instance's data lives in `data/`. A deleted
//! instance's directory is first renamed to `.deleting-…` so a crash mid-delete never
//! leaves a half-removed instance that would be loaded again. When the runtime sets a data
//! quota, `data/` is a mount of the instance's own `data.img` (see `volume`).
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
//!
//! # Layout
//! - this module: the manager's state (entries, events, stop subscribers) and the checks every
//!   operation shares;
//! - `record`: `instance.json` and the instance dirs;
//! - `lifecycle`: open (re-adoption), create, delete, start/stop/reboot/reset, commands,
//!   input, stop notices, shutdown;
//! - `archive`: backup and restore archives;
//! - `volume`: the data-dir quota (a loop-mounted image per instance);
//! - `watch`: the crash watcher.

mod archive;
mod lifecycle;
mod phone;
mod record;
mod volume;
mod watch;

pub(crate) use archive::archive_path;
pub(crate) use phone::DataAccess;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cloudphone_core::lifecycle::{InstanceState, LifecycleError, Operation};
use tokio::sync::{RwLock, broadcast, mpsc, oneshot};

use crate::runtime::{InstancePaths, InstanceSpec, Runtime, RuntimeError};

/// Per-stream output cap applied on top of the caller's, to protect the node's memory.
pub(crate) const MAX_COMMAND_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
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
    /// An instance in `state` with `message`, meant to be `desired`; its paths follow from
    /// `state_dir` and its id.
    fn new(
        state_dir: &Path,
        spec: InstanceSpec,
        state: InstanceState,
        message: &str,
        desired: InstanceState,
    ) -> Self {
        Self {
            paths: InstancePaths::new(state_dir, &spec.instance_id),
            spec,
            ops: Arc::new(RwLock::new(())),
            status: Mutex::new(Status {
                state,
                message: message.to_owned(),
                changed_at_unix_ms: now_ms(),
                desired,
                auto_restarts: 0,
                running_since: None,
                deleted: false,
            }),
        }
    }

    /// The same entry with its sandbox uid (see [`InstancePaths::owner`]).
    fn with_owner(mut self, owner: Option<u32>) -> Self {
        self.paths.owner = owner;
        self
    }

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
pub(crate) struct Stopping {
    pub instance_id: String,
    done: oneshot::Sender<()>,
}

impl Stopping {
    /// Lets the instance's processes stop.
    pub(crate) fn done(self) {
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
    pub async fn status(&self, id: &str) -> Result<InstanceView, InstanceError> {
        Ok(self.entry(id)?.view())
    }

    /// Every instance, ordered by id.
    pub async fn list(&self) -> Vec<InstanceView> {
        self.snapshot().iter().map(|e| e.view()).collect()
    }

    /// Every state change of every instance, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<InstanceView> {
        self.events.subscribe()
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    pub(crate) fn state_dir(&self) -> &Path {
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
        self.begin_with(id, op, RwLock::write_owned).await
    }

    /// [`begin`](Self::begin) with the operation lock taken by `lock`: `RwLock::read_owned` for
    /// the operations that share it (commands, installs, input).
    async fn begin_with<G, F: Future<Output = G>>(
        &self,
        id: &str,
        op: Operation,
        lock: impl FnOnce(Arc<RwLock<()>>) -> F,
    ) -> Result<(Arc<Entry>, G), InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, op)?;
        let ops = lock(Arc::clone(&entry.ops)).await;
        if entry.status().deleted {
            return Err(InstanceError::NotFound(id.to_owned()));
        }
        check(&entry, op)?;
        Ok((entry, ops))
    }

    /// Adds a new instance in `state` if the node has room for it; the caller holds the
    /// entries' lock and has checked that the id is free.
    fn insert_new(
        &self,
        entries: &mut BTreeMap<String, Arc<Entry>>,
        spec: &InstanceSpec,
        state: InstanceState,
        message: &str,
    ) -> Result<Arc<Entry>, InstanceError> {
        if entries.len() >= self.capacity {
            return Err(InstanceError::NoCapacity);
        }
        // Its own sandbox uid, the lowest no other instance holds.
        let owner = record::free_owner(self.runtime.sandbox_uids(), entries.values())?;
        let entry = Entry::new(
            &self.state_dir,
            spec.clone(),
            state,
            message,
            InstanceState::Running,
        );
        let entry = Arc::new(entry.with_owner(owner));
        entries.insert(spec.instance_id.clone(), Arc::clone(&entry));
        Ok(entry)
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
}

fn check(entry: &Entry, op: Operation) -> Result<(), InstanceError> {
    let state = entry.status().state;
    cloudphone_core::lifecycle::check(state, op).map_err(|source| InstanceError::InvalidState {
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
