//! The data-dir quota: an instance's data dir is its own small filesystem, a sparse ext4
//! image (`<root>/data.img`) loop-mounted at `<root>/data`, so what it writes in total (not
//! only per file, which `RLIMIT_FSIZE` caps) stops at the image's size with `ENOSPC`, and the
//! host's disk gives it no more than that.
//!
//! Why an image and not project quotas: it needs nothing of the host's filesystem (no
//! `prjquota` mount option, any fs that holds sparse files) and only what every Debian host
//! has (`mkfs.ext4` from e2fsprogs, the loop driver, root); the image is state on disk, so a
//! restarted node mounts it again and a deleted instance's quota goes with its dir.
//!
//! The mount is made at create (and by a reset or restore, which make a fresh image), kept
//! while the instance is stopped (its data stays there for a backup), taken down at delete
//! and at node shutdown, and made again before anything reads or runs in the dir after a
//! node restart ([`ensure_mounted`]). An instance from before quotas has no image and keeps
//! its plain dir until a reset or restore gives it one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// The image's name in the instance's root dir.
const IMAGE_FILE: &str = "data.img";

/// `<root>/data.img` for the instance whose data dir is `<root>/data`.
pub(super) fn image_of(data: &Path) -> PathBuf {
    data.parent().unwrap_or(data).join(IMAGE_FILE)
}

/// Whether `dir` is a mount point: it sits on another device than its parent.
pub(super) fn is_mounted(dir: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (std::fs::symlink_metadata(dir), dir.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev())
}

/// Makes `image` a fresh, empty filesystem of `bytes` and mounts it at `dir` (created if
/// missing, which must not be mounted). An older image there is replaced.
pub(super) async fn create(image: &Path, dir: &Path, bytes: u64) -> std::io::Result<()> {
    match tokio::fs::remove_file(image).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Sparse: the host gives the image blocks only as the instance writes.
    let file = tokio::fs::File::create(image).await?;
    file.set_len(bytes).await?;
    drop(file);
    // No blocks reserved for root (the instance is never root: its quota is all of it).
    // Nothing is zeroed, neither now nor later (`noinit_itable` at mount): blocks of a sparse
    // file nobody wrote read as zeros already, so an empty volume costs the host a few MiB.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "cloudphone-data"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(image))
    .await?;
    mount(image, dir).await?;
    // An empty data dir is what a runtime provisions; fsck makes lost+found again if it
    // ever needs one.
    match tokio::fs::remove_dir(dir.join("lost+found")).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Mounts `image` at `dir` (created if missing) unless something is mounted there already.
pub(super) async fn mount(image: &Path, dir: &Path) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    if is_mounted(dir) {
        return Ok(());
    }
    // No device files or set-uid programs from a tenant's filesystem. The loop device is
    // released when the filesystem is unmounted (mount sets autoclear).
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,nodev,nosuid,noinit_itable"])
        .arg(image)
        .arg(dir))
    .await
}

/// [`mount`] when the instance has an image and it is not mounted yet; nothing for an
/// instance without one.
pub(super) async fn ensure_mounted(data: &Path) -> std::io::Result<()> {
    let image = image_of(data);
    if tokio::fs::try_exists(&image).await.unwrap_or(false) {
        mount(&image, data).await?;
    }
    Ok(())
}

/// Unmounts `dir` if it is a mount point. A filesystem still in use (a process the runtime
/// could not stop) is detached lazily instead: it leaves the host's tree at once and goes
/// when its last user does.
pub(super) async fn unmount(dir: &Path) -> std::io::Result<()> {
    if !is_mounted(dir) {
        return Ok(());
    }
    if let Err(e) = run(Command::new("umount").arg(dir)).await {
        tracing::warn!(dir = %dir.display(), error = %e, "unmount failed; detaching lazily");
        run(Command::new("umount").arg("-l").arg(dir)).await?;
    }
    Ok(())
}

/// Runs a mount tool; its stderr becomes the error.
async fn run(command: &mut Command) -> std::io::Result<()> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let out = command.kill_on_drop(true).output().await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("{program}: {e} (see docs/deploy.md)"))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_sits_next_to_the_data_dir() {
        assert_eq!(
            image_of(Path::new("/s/instances/a/data")),
            Path::new("/s/instances/a/data.img")
        );
        assert!(!is_mounted(Path::new("/nonexistent/data")));
        assert!(is_mounted(Path::new("/proc")));
    }
}
