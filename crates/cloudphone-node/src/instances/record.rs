//! `instance.json`: each instance's spec and desired state on disk, written atomically, read
//! back when the manager opens, and the instance dirs made for a create and removed for a
//! delete.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cloudphone_core::lifecycle::InstanceState;

use super::{Entry, InstanceError, InstanceManager, InstanceView, io_err};
use crate::runtime::InstanceSpec;

const INSTANCE_FILE: &str = "instance.json";
/// A directory being deleted is first renamed to this prefix (see the module docs).
pub(super) const DELETING_PREFIX: &str = ".deleting-";

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
    /// The instance's own host uid (`InstancePaths::owner`), kept so a restarted node runs
    /// it as the same user, who owns its data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sandbox_uid: Option<u32>,
}

/// The lowest uid of `range` no entry holds; `Ok(None)` without a range.
pub(super) fn free_owner<'a>(
    range: Option<std::ops::Range<u32>>,
    entries: impl Iterator<Item = &'a Arc<Entry>>,
) -> Result<Option<u32>, InstanceError> {
    let Some(range) = range else {
        return Ok(None);
    };
    let used: std::collections::HashSet<u32> = entries.filter_map(|e| e.paths.owner).collect();
    crate::runtime::sandbox::free_uid(range, &used)
        .map(Some)
        .ok_or(InstanceError::NoCapacity)
}

/// Reads every instance under `<state_dir>/instances`, finishing interrupted deletes. An
/// instance dir whose `instance.json` is missing, corrupt or names another instance is left
/// alone (logged), never removed.
pub(super) async fn load_entries(
    state_dir: &Path,
    uids: Option<std::ops::Range<u32>>,
) -> Result<BTreeMap<String, Arc<Entry>>, InstanceError> {
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
        // A recorded uid is kept while the range holds it and no other instance does; an
        // instance from before per-instance uids (or a clash) gets a fresh one below.
        let owner = record.sandbox_uid.filter(|uid| {
            uids.as_ref().is_some_and(|r| r.contains(uid))
                && !entries
                    .values()
                    .any(|e: &Arc<Entry>| e.paths.owner == Some(*uid))
        });
        // The record names this dir (checked above), so the paths are the dir's.
        entries.insert(
            name,
            Arc::new(
                Entry::new(state_dir, record.spec, InstanceState::Stopped, "", desired)
                    .with_owner(owner),
            ),
        );
    }
    let unowned: Vec<String> = entries
        .iter()
        .filter(|(_, e)| e.paths.owner.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    for id in unowned {
        let owner = free_owner(uids.clone(), entries.values())?;
        if owner.is_none() {
            break;
        }
        if let Some(entry) = entries.remove(&id) {
            let entry = Arc::try_unwrap(entry).unwrap_or_else(|shared| {
                // Nothing else holds entries while loading; rebuild if it ever does.
                Entry::new(
                    state_dir,
                    shared.spec.clone(),
                    InstanceState::Stopped,
                    "",
                    shared.status().desired,
                )
            });
            entries.insert(id, Arc::new(entry.with_owner(owner)));
        }
    }
    Ok(entries)
}

impl InstanceManager {
    pub(super) async fn create_files(&self, entry: &Entry) -> Result<(), InstanceError> {
        let root = &entry.paths.root;
        let data = &entry.paths.data;
        // A directory nobody loaded is debris of an interrupted create; start from scratch
        // (its quota volume unmounted first, or the removal would stop at the mount point).
        if tokio::fs::try_exists(root).await.unwrap_or(false) {
            super::volume::unmount(data)
                .await
                .map_err(io_err("unmounting", data))?;
            tokio::fs::remove_dir_all(root)
                .await
                .map_err(io_err("clearing", root))?;
        }
        tokio::fs::create_dir_all(data)
            .await
            .map_err(io_err("creating", data))?;
        self.fresh_volume(entry).await?;
        self.persist(entry).await
    }

    /// Gives the instance a fresh, empty quota volume at its data dir (which exists and is
    /// not mounted) when the runtime sets a data quota; nothing otherwise.
    pub(super) async fn fresh_volume(&self, entry: &Entry) -> Result<(), InstanceError> {
        let Some(bytes) = self.runtime.data_quota(&entry.spec) else {
            return Ok(());
        };
        let data = &entry.paths.data;
        super::volume::create(&super::volume::image_of(data), data, bytes)
            .await
            .map_err(io_err("making the data quota volume at", data))
    }

    /// Mounts the instance's quota volume if it has one and it is not mounted (after a node
    /// restart), before anything reads or runs in its data dir.
    pub(super) async fn mount_volume(&self, entry: &Entry) -> Result<(), InstanceError> {
        let data = &entry.paths.data;
        super::volume::ensure_mounted(data)
            .await
            .map_err(io_err("mounting the data quota volume at", data))
    }

    /// Unmounts the instance's quota volume, moves its dir to a `.deleting-` name, then
    /// removes it, image and all (see the module docs).
    pub(super) async fn discard_dir(&self, id: &str, root: &Path) -> Result<(), InstanceError> {
        let data = root.join("data");
        super::volume::unmount(&data)
            .await
            .map_err(io_err("unmounting", &data))?;
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

    /// [`set_state`](Self::set_state) for a settled state, also recorded on disk.
    pub(super) async fn settle(
        &self,
        entry: &Entry,
        state: InstanceState,
        message: &str,
    ) -> InstanceView {
        let view = self.set_state(entry, state, message);
        if let Err(e) = self.persist(entry).await {
            tracing::warn!(instance = %entry.spec.instance_id, error = %e, "could not record state");
        }
        view
    }

    pub(super) async fn set_desired(
        &self,
        entry: &Entry,
        desired: InstanceState,
    ) -> Result<(), InstanceError> {
        entry.status().desired = desired;
        self.persist(entry).await
    }

    pub(super) async fn persist(&self, entry: &Entry) -> Result<(), InstanceError> {
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
                sandbox_uid: entry.paths.owner,
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
}
