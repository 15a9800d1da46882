//! What a viewer reaches in a running phone besides its screen and input: the clipboard, the
//! screen as a picture and the data dir (`crate::phone` serves them over HTTP and the data
//! channel).

use cloudphone_core::lifecycle::Operation;
use tokio::sync::{OwnedRwLockReadGuard, RwLock, broadcast};

use super::{InstanceError, InstanceManager, check};
use crate::runtime::{CaptureSource, Copied, InstancePaths};

/// An instance's data dir, held for a transfer: while the guard lives no start, stop, wipe,
/// backup or restore of the instance runs, so a file never lands in a dir being replaced.
pub(crate) struct DataAccess {
    pub paths: InstancePaths,
    pub _ops: OwnedRwLockReadGuard<()>,
}

impl InstanceManager {
    /// Makes `text` the running instance's clipboard.
    pub(crate) async fn set_clipboard(&self, id: &str, text: &str) -> Result<(), InstanceError> {
        let (entry, _ops) = self
            .begin_with(id, Operation::Stream, RwLock::read_owned)
            .await?;
        Ok(self
            .runtime
            .set_clipboard(&entry.spec, &entry.paths, text)
            .await?)
    }

    /// Text the running instance's apps copy from now on.
    pub(crate) fn clipboard_changes(
        &self,
        id: &str,
    ) -> Result<broadcast::Receiver<Copied>, InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, Operation::Stream)?;
        Ok(self.runtime.clipboard_changes(&entry.spec, &entry.paths)?)
    }

    /// A PNG of the running instance's screen when its runtime takes it itself (see
    /// [`crate::runtime::Runtime::screenshot`]).
    pub(crate) async fn runtime_screenshot(
        &self,
        id: &str,
    ) -> Result<Option<Vec<u8>>, InstanceError> {
        let (entry, _ops) = self
            .begin_with(id, Operation::Stream, RwLock::read_owned)
            .await?;
        Ok(self.runtime.screenshot(&entry.spec, &entry.paths).await?)
    }

    /// Where the running instance's screen is read from, and its size.
    pub(crate) fn screen_of(&self, id: &str) -> Result<CaptureSource, InstanceError> {
        let entry = self.entry(id)?;
        check(&entry, Operation::Stream)?;
        Ok(self.runtime.capture_source(&entry.spec, &entry.paths))
    }

    /// The instance's data dir for a file transfer, when its runtime keeps the phone's files
    /// there (not Android, whose files live on the device): `None`.
    pub(crate) async fn data_access(&self, id: &str) -> Result<Option<DataAccess>, InstanceError> {
        if !self.runtime.data_dir_is_state() {
            return Ok(None);
        }
        let (entry, ops) = self
            .begin_with(id, Operation::RunCommand, RwLock::read_owned)
            .await?;
        Ok(Some(DataAccess {
            paths: entry.paths.clone(),
            _ops: ops,
        }))
    }
}
