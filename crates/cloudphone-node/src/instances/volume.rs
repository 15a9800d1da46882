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
///
/// An image whose filesystem is still alive (detached lazily by [`unmount`] while a process
/// held it, so its loop device is still attached) comes back as that same live filesystem:
/// mount(8) reuses the loop device a file is already attached to rather than attaching a
/// second one, which would be a stale copy blind to what the first had not flushed yet.
/// `a_lazily_detached_volume_mounts_again_with_its_data` holds the tools to that.
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

/// Unmounts `dir` if it is a mount point. A filesystem still busy is retried for a moment
/// (a sandbox's mount namespace outlives its last process by a little, longer on a loaded
/// host); one still in use after that (a process the runtime could not stop) is detached
/// lazily: it leaves the host's tree at once and goes when its last user does, and [`mount`]
/// takes it up again if the instance starts before then.
pub(super) async fn unmount(dir: &Path) -> std::io::Result<()> {
    if !is_mounted(dir) {
        return Ok(());
    }
    let mut wait = std::time::Duration::from_millis(20);
    let mut last = None;
    for _ in 0..UNMOUNT_TRIES {
        match run(Command::new("umount").arg(dir)).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        if !is_mounted(dir) {
            return Ok(());
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_millis(500));
    }
    if let Some(e) = last {
        tracing::warn!(dir = %dir.display(), error = %e, "unmount failed; detaching lazily");
    }
    run(Command::new("umount").arg("-l").arg(dir)).await
}

/// How many times [`unmount`] tries before detaching lazily: about 2 s of waiting in all.
const UNMOUNT_TRIES: u32 = 8;

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

    /// A volume busy at unmount (a process still inside it) is detached lazily; mounting it
    /// again must show what was written just before, not a stale second copy of the image.
    /// Needs root and the loop driver, as the node does.
    #[tokio::test]
    async fn a_lazily_detached_volume_mounts_again_with_its_data() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let image = image_of(&data);
        create(&image, &data, 64 << 20).await.unwrap();
        // Written and held open from inside: the page cache has it, the image not yet.
        let mut holder = Command::new("sh")
            .args(["-c", "echo persisted > note && exec sleep 60"])
            .current_dir(&data)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let note = data.join("note");
        for _ in 0..100 {
            if std::fs::read_to_string(&note).is_ok_and(|s| s == "persisted\n") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }

        unmount(&data).await.unwrap();
        assert!(!is_mounted(&data), "the busy volume should be detached");
        let attached = |image: &Path| {
            let out = std::process::Command::new("losetup")
                .arg("-j")
                .arg(image)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        assert_eq!(
            attached(&image),
            1,
            "the detached filesystem is still alive"
        );

        mount(&image, &data).await.unwrap();
        assert!(is_mounted(&data));
        assert_eq!(std::fs::read_to_string(&note).unwrap(), "persisted\n");
        assert_eq!(attached(&image), 1, "one loop device, not a second copy");

        holder.kill().await.unwrap();
        let _ = holder.wait().await;
        unmount(&data).await.unwrap();
        assert!(!is_mounted(&data));
    }
}
