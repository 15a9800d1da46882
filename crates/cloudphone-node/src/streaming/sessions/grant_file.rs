//! StartSession grants on the node's disk, `<state_dir>/sessions/grants.json`, so a node restart
//! keeps every live device token valid: a viewer whose stream the restart cut says hello again
//! with the token it has, and no new GetDeviceToken is needed.
//!
//! The file holds what memory holds and nothing more: the token's SHA-256 (never the token),
//! the device, instance, tenant, role and expiry. It is rewritten whole after each change
//! (temp file with mode 0600, fsync, rename), so a crash leaves the old set or the new one,
//! never half a file; expired grants are dropped when it is read.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cloudphone_core::role::Role;
use serde::{Deserialize, Serialize};

use super::grants::Grant;

/// The file's format; a file with another version is ignored (and replaced at the next write).
const VERSION: u32 = 1;

/// One grant as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    session_id: String,
    instance_id: String,
    device_id: String,
    /// Hex SHA-256 of the device token, as StartSession handed it over.
    token_sha256: String,
    expires_at_unix_ms: i64,
    tenant_id: String,
    role: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Contents {
    version: u32,
    grants: Vec<Stored>,
}

/// Where the grants live, and the lock that orders writes.
#[derive(Debug)]
pub(crate) struct GrantFile {
    path: PathBuf,
    /// Held from taking a snapshot of the grants to renaming it into place, so a later snapshot
    /// is never overwritten by an earlier one.
    order: Mutex<()>,
    /// Changes to the grants so far, and how many of them the file on disk holds: a change
    /// whose write finds it already covered by a later snapshot (written while it waited for
    /// `order`) skips its own. So a burst of StartSessions shares a few fsyncs (group commit)
    /// instead of queueing one each: one fsync per call held GetDeviceToken to ~270/s here.
    changes: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
}

impl GrantFile {
    /// Counts a change made to the grants (before it is persisted); its number.
    pub(super) fn changed(&self) -> u64 {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// Whether the file already holds change `n`. Call under [`GrantFile::lock`].
    pub(super) fn holds(&self, n: u64) -> bool {
        self.written.load(std::sync::atomic::Ordering::SeqCst) >= n
    }

    /// Every change counted so far; a snapshot taken after this call holds them all.
    pub(super) fn counted(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records that the file holds every change up to `n`. Call under [`GrantFile::lock`].
    pub(super) fn wrote(&self, n: u64) {
        self.written
            .fetch_max(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The grant file of a node whose state dir is `state_dir`.
    pub(crate) fn in_state_dir(state_dir: &Path) -> GrantFile {
        GrantFile {
            path: state_dir.join("sessions").join("grants.json"),
            order: Mutex::new(()),
            changes: Default::default(),
            written: Default::default(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, ()> {
        self.order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The grants unexpired at `now_ms`, by device id. A missing file is no grants; an
    /// unreadable one is logged and read as none (viewers then need a new GetDeviceToken, as
    /// before grants were kept), never a reason not to start.
    pub(super) fn load(&self, now_ms: i64) -> HashMap<String, Grant> {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "grant file unreadable; starting without grants");
                return HashMap::new();
            }
        };
        let contents: Contents = match serde_json::from_slice(&text) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "grant file malformed; starting without grants");
                return HashMap::new();
            }
        };
        if contents.version != VERSION {
            tracing::warn!(
                version = contents.version,
                "grant file of another version ignored"
            );
            return HashMap::new();
        }
        let total = contents.grants.len();
        let grants: HashMap<String, Grant> = contents
            .grants
            .into_iter()
            .filter(|s| s.expires_at_unix_ms > now_ms)
            .filter_map(|s| {
                let digest: [u8; 32] = hex::decode(&s.token_sha256).ok()?.try_into().ok()?;
                let role = Role::parse(&s.role).ok()?;
                Some((
                    s.device_id.clone(),
                    Grant::restored(
                        s.session_id,
                        s.instance_id,
                        s.device_id,
                        digest,
                        s.expires_at_unix_ms,
                        s.tenant_id,
                        role,
                    ),
                ))
            })
            .collect();
        tracing::info!(
            kept = grants.len(),
            dropped = total - grants.len(),
            "grants read from the state dir"
        );
        grants
    }

    /// Replaces the file with `grants`. The caller holds [`GrantFile::lock`] from the snapshot
    /// on.
    pub(super) fn save<'a>(&self, grants: impl Iterator<Item = &'a Grant>) -> std::io::Result<()> {
        let mut stored: Vec<Stored> = grants
            .map(|g| Stored {
                session_id: g.session_id.clone(),
                instance_id: g.instance_id.clone(),
                device_id: g.device_id.clone(),
                token_sha256: hex::encode(g.token_sha256),
                expires_at_unix_ms: g.expires_at_unix_ms,
                tenant_id: g.tenant_id.clone(),
                role: g.role.as_str().to_owned(),
            })
            .collect();
        // A stable order: the same grants give the same file.
        stored.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        let bytes = serde_json::to_vec_pretty(&Contents {
            version: VERSION,
            grants: stored,
        })
        .map_err(std::io::Error::other)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let staged = self.path.with_extension("json.new");
        // A leftover of a crash may have another mode; create it anew with 0600.
        let _ = std::fs::remove_file(&staged);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&staged, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(device: &str, expires: i64, role: Role) -> Grant {
        Grant::restored(
            format!("s-{device}"),
            "i1".into(),
            device.into(),
            [7; 32],
            expires,
            "t".into(),
            role,
        )
    }

    #[test]
    fn grants_round_trip_in_a_0600_file_and_expired_ones_are_dropped_on_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = GrantFile::in_state_dir(dir.path());
        assert!(file.load(0).is_empty(), "no file: no grants");
        let grants = [
            grant("live", 2_000, Role::Observer),
            grant("old", 1_000, Role::Owner),
        ];
        file.save(grants.iter()).unwrap();
        let path = dir.path().join("sessions/grants.json");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&hex::encode([7u8; 32])), "{text}");
        let loaded = file.load(1_000);
        assert_eq!(loaded.len(), 1, "the grant expiring at 1000 is dropped");
        let live = &loaded["live"];
        assert_eq!(live.role, Role::Observer);
        assert_eq!(live.expires_at_unix_ms, 2_000);
        assert!(live.token_sha256 == [7; 32]);
        // A damaged file is no grants, not a failure to start.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(file.load(0).is_empty());
    }
}
