//! What every runtime shares: where the node's state dir is, crash-safe file writes, the
//! instance's data dir before a start, a shell command run in the instance's sandbox, and
//! input coordinates as pixels.
//! Runtimes import these from here, not from one another.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::sandbox::{self, HostLayout, SandboxSpec, SandboxUser};
use super::{CommandOutput, CommandSpec, InstancePaths, RuntimeError};

/// `<state_dir>` from `<state_dir>/instances/<id>`.
pub(crate) fn state_dir_of(paths: &InstancePaths) -> PathBuf {
    paths
        .root
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&paths.root)
        .to_path_buf()
}

/// Writes via a temp file and rename, so a crash never leaves a half-written file.
pub(crate) async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Locks a runtime's bookkeeping map. A panic while holding one leaves it consistent (single
/// inserts and removes), so poisoning is not a reason to stop working.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A normalised 0..=1 input coordinate as a pixel on a side of `size` pixels, clamped on
/// screen; out-of-range input is clamped and NaN counts as 0.
pub(crate) fn pixel_of(v: f64, size: u32) -> f64 {
    let unit = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let max = f64::from(size.saturating_sub(1));
    (unit * f64::from(size)).floor().min(max)
}

/// Makes sure the instance's data dir exists and belongs to the sandbox user before a start.
/// Normally it is there since provisioning; recreated (empty) if someone removed it.
pub(crate) async fn ensure_data_dir(paths: &InstancePaths) -> Result<(), RuntimeError> {
    tokio::fs::create_dir_all(&paths.data).await?;
    if let Some(user) = SandboxUser::for_instance(paths.owner) {
        user.take_ownership(&paths.data)?;
    }
    Ok(())
}

/// Runs `command` through `/bin/sh -c` in the sandbox `sb`, with its timeout and output cap.
pub(crate) async fn run_shell(
    bwrap: &Path,
    layout: &HostLayout,
    sb: &SandboxSpec,
    command: &CommandSpec,
) -> Result<CommandOutput, RuntimeError> {
    let cmd = sandbox::command(bwrap, layout, sb, &sandbox::shell_argv(&command.command));
    Ok(sandbox::run_capped(cmd, command.timeout, command.max_output_bytes).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_is_two_levels_up() {
        let paths = InstancePaths::new(Path::new("/var/lib/cp"), "abc");
        assert_eq!(state_dir_of(&paths), Path::new("/var/lib/cp"));
    }
}
