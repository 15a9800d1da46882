//! One serving control process per SQLite file: SQLite is the single-process embedded store,
//! so a second `serve` on the same file is refused at start (replicas need PostgreSQL).
//!
//! The guard is an exclusive `flock` on `<database>.serve.lock`, held for as long as control
//! serves. SQLite's own `locking_mode = EXCLUSIVE` is not used: it would also shut out this
//! process's other pooled connections and the admin CLI (`tenant create`, `node join-token`),
//! which rightly open the file while control serves. The kernel drops the lock when the
//! process ends however it ends, so a crash leaves nothing stale to clean up (a pid file
//! would).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

/// Why control may not serve on this store.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "another control process is serving the SQLite database {0} (it holds {1}); SQLite \
         allows one control process: stop it, or use PostgreSQL ([store] url = \"postgres://…\") \
         for several replicas"
    )]
    SecondOnSqlite(String, String),
    #[error("cannot lock {0}: {1}")]
    Lock(String, std::io::Error),
}

/// Held while control serves; dropping it releases the lock.
#[derive(Debug)]
pub struct ServeLock {
    _file: Option<File>,
}

/// The file of an SQLite store URL (`sqlite:///a/b.db?mode=rwc` → `/a/b.db`); `None` for
/// PostgreSQL and in-memory SQLite.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Takes the serve lock of `store_url`'s SQLite file; a no-op for PostgreSQL.
pub fn lock_store(store_url: &str) -> Result<ServeLock, ReplicaError> {
    let Some(db) = sqlite_file(store_url) else {
        return Ok(ServeLock { _file: None });
    };
    let mut name = db.clone().into_os_string();
    name.push(".serve.lock");
    let path = PathBuf::from(name);
    let shown = path.display().to_string();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ReplicaError::Lock(shown.clone(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(ServeLock { _file: Some(file) }),
        Err(TryLockError::WouldBlock) => Err(ReplicaError::SecondOnSqlite(
            db.display().to_string(),
            shown,
        )),
        Err(TryLockError::Error(e)) => Err(ReplicaError::Lock(shown, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_file_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/control.db?mode=rwc", dir.path().display());
        let first = lock_store(&url).unwrap();
        let second = lock_store(&url).unwrap_err();
        assert!(
            matches!(second, ReplicaError::SecondOnSqlite(..)),
            "{second}"
        );
        drop(first);
        lock_store(&url).unwrap();
        // PostgreSQL and in-memory stores take no lock.
        let _a = lock_store("postgres://db/x").unwrap();
        let _b = lock_store("postgres://db/x").unwrap();
        let _c = lock_store("sqlite::memory:").unwrap();
        let _d = lock_store("sqlite::memory:").unwrap();
    }
}
