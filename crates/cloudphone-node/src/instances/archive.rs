//! Backup and restore: an instance's data dir archived to a `.tar.gz` (the instance stopped
//! meanwhile) and recreated from one, with archives that would leave the data dir refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloudphone_core::lifecycle::{InstanceState, LifecycleError, Operation};

use super::{
    Entry, InstanceError, InstanceManager, InstanceView, io_err, lock, validate_spec, volume,
};
use crate::runtime::{InstanceSpec, RuntimeError};

impl InstanceManager {
    /// Archives the instance's data dir to `dest` (a `.tar.gz`) and returns the archive's
    /// size. The instance is stopped first and shows `BackingUp` meanwhile; the archive is
    /// written to a temp file and renamed into place, so `dest` is either the old archive or
    /// the complete new one. On success the instance stays stopped in `BackingUp` until
    /// [`release_backed_up`](Self::release_backed_up) removes it (its data now lives in the
    /// archive); on failure it goes back to what it was (started again if it was running).
    pub async fn backup(&self, id: &str, dest: &Path) -> Result<u64, InstanceError> {
        self.backs_up()?;
        let (entry, _ops) = self.begin(id, Operation::Backup).await?;
        let was_running = entry.status().state == InstanceState::Running;
        self.set_state(&entry, InstanceState::BackingUp, "backing up");
        if let Err(e) = self.stop_processes(&entry.spec, &entry.paths).await {
            return Err(self.fail(&entry, "backup: stop failed", e).await);
        }
        let data = entry.paths.data.clone();
        let target = dest.to_path_buf();
        // The archive holds the dir's contents, so the quota volume must be mounted (after
        // a node restart a stopped instance's may not be yet), or it would archive nothing.
        let written = match self.mount_volume(&entry).await {
            Ok(()) => tokio::task::spawn_blocking(move || tarball::write(&data, &target))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
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

    /// Refuses backup and restore on a runtime whose phones do not live in the data dir.
    fn backs_up(&self) -> Result<(), InstanceError> {
        if self.runtime.data_dir_is_state() {
            Ok(())
        } else {
            Err(RuntimeError::Unsupported("backup and restore of this runtime's instances").into())
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
        self.backs_up()?;
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
                    self.insert_new(&mut entries, &spec, InstanceState::Restoring, "restoring")?
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
    pub(super) async fn restore_data(
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
        if let Some(bytes) = self.runtime.data_quota(&entry.spec) {
            self.restore_into_volume(entry, src, &staging, bytes)
                .await?;
        } else {
            self.restore_into_dir(entry, src, &staging).await?;
        }
        let data = &entry.paths.data;
        if let Some(user) = crate::runtime::sandbox::SandboxUser::for_instance(entry.paths.owner) {
            let data = data.clone();
            tokio::task::spawn_blocking(move || tarball::chown_tree(&data, user))
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

    /// With a data quota: unpacks into a fresh volume of the quota's size mounted at
    /// `staging` (an archive larger than the quota fails here, the old data untouched), then
    /// puts its image in place of the old one, in one rename, and mounts it at the data dir.
    async fn restore_into_volume(
        &self,
        entry: &Entry,
        src: &Path,
        staging: &Path,
        bytes: u64,
    ) -> Result<(), InstanceError> {
        let mut staged_image = staging.as_os_str().to_owned();
        staged_image.push(".img");
        let staged_image = PathBuf::from(staged_image);
        if let Err(e) = volume::create(&staged_image, staging, bytes).await {
            discard_staged(staging, &staged_image).await;
            return Err(io_err("restore: making a data volume at", staging)(e));
        }
        let (from, into) = (src.to_path_buf(), staging.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || tarball::unpack(&from, &into))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = unpacked {
            discard_staged(staging, &staged_image).await;
            return Err(io_err("restore: unpacking", src)(e));
        }
        let data = &entry.paths.data;
        let swapped = async {
            volume::unmount(staging).await?;
            volume::unmount(data).await?;
            tokio::fs::rename(&staged_image, volume::image_of(data)).await?;
            tokio::fs::remove_dir(staging).await?;
            // An instance from before quotas had its data in the plain dir; it goes now.
            match tokio::fs::remove_dir_all(data).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            volume::mount(&volume::image_of(data), data).await
        }
        .await;
        if let Err(e) = swapped {
            discard_staged(staging, &staged_image).await;
            return Err(io_err("restore: swapping in the data volume at", data)(e));
        }
        Ok(())
    }

    /// Without a data quota: unpacks into the plain dir `staging`, then swaps it for the data
    /// dir with renames.
    async fn restore_into_dir(
        &self,
        entry: &Entry,
        src: &Path,
        staging: &Path,
    ) -> Result<(), InstanceError> {
        let root = &entry.paths.root;
        let (from, into) = (src.to_path_buf(), staging.to_path_buf());
        let unpacked = tokio::task::spawn_blocking(move || tarball::unpack(&from, &into))
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
        Ok(())
    }
}

/// Takes down a restore's staging volume; best-effort, as the restore has already failed.
async fn discard_staged(staging: &Path, image: &Path) {
    let _ = volume::unmount(staging).await;
    let _ = tokio::fs::remove_dir(staging).await;
    let _ = tokio::fs::remove_file(image).await;
}

/// The local path of a backup archive URI. Only `file://` with an absolute path to a `.tar.gz`
/// is supported (S3 is not yet); `..` is refused so control cannot aim outside its backup dir.
pub(crate) fn archive_path(uri: &str) -> Result<PathBuf, InstanceError> {
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

/// Backup archives: a gzip'd tar of an instance's data dir, member names relative to it.
mod tarball {
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
    pub(super) fn write(data: &Path, dest: &Path) -> io::Result<u64> {
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
    /// `into` must not exist, or be an empty dir (a fresh quota volume's mount point).
    pub(super) fn unpack(src: &Path, into: &Path) -> io::Result<()> {
        match fs::create_dir(into) {
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && fs::read_dir(into)?.next().is_none() => {}
            created => created?,
        }
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
    pub(super) fn chown_tree(dir: &Path, user: SandboxUser) -> io::Result<()> {
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
}
