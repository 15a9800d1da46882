//! Files in an instance's `/data`, reached from the host without ever leaving it.
//!
//! The data dir belongs to the phone: anything in it may be a symlink the phone planted, and
//! the phone may swap a dir for a symlink while a transfer runs. So no host path under it is
//! ever resolved as a whole: the dir itself is opened once, and every component below it is
//! opened relative to its parent's descriptor with `O_NOFOLLOW` (a symlink anywhere is refused,
//! not followed). An upload goes to a fresh hidden file in the target dir (`O_EXCL`) and is
//! renamed over the final name only once complete: a refused or broken upload leaves nothing
//! behind, and a rename replaces a symlink at the final name instead of writing through it.
//!
//! Paths are relative to `/data`, `/`-separated, at most [`MAX_DEPTH`] components of at most
//! 255 bytes; `.`, `..`, empty components, a leading `/` and NUL are refused.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Most components a path may have.
pub(crate) const MAX_DEPTH: usize = 32;
/// Prefix of in-progress uploads (hidden, never a name a client may ask for).
const UPLOAD_PREFIX: &str = ".cloudphone-upload-";

/// Why a file transfer was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("bad path: {0}")]
    BadPath(&'static str),
    #[error("the path goes through a symlink")]
    Symlink,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the instance's data quota is full")]
    NoSpace,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for FileError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::LOOP => Self::Symlink,
            Errno::NOENT => Self::NotFound,
            Errno::NOTDIR => Self::BadPath("a parent is not a directory"),
            Errno::ISDIR => Self::NotAFile,
            Errno::NOSPC | Errno::DQUOT | Errno::FBIG => Self::NoSpace,
            other => Self::Io(other.into()),
        }
    }
}

/// A checked path below `/data`: its parent dirs and its file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataPath {
    pub dirs: Vec<String>,
    pub name: String,
}

/// Checks a client's path (see the module docs). Pure.
pub(crate) fn parse_path(raw: &str) -> Result<DataPath, FileError> {
    if raw.is_empty() {
        return Err(FileError::BadPath("empty"));
    }
    if raw.starts_with('/') {
        return Err(FileError::BadPath("absolute; paths are relative to /data"));
    }
    if raw.contains('\0') {
        return Err(FileError::BadPath("NUL"));
    }
    let mut parts: Vec<String> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" => return Err(FileError::BadPath("empty component")),
            "." | ".." => return Err(FileError::BadPath("`.` or `..` component")),
            p if p.len() > 255 => return Err(FileError::BadPath("component over 255 bytes")),
            p if p.starts_with(UPLOAD_PREFIX) => {
                return Err(FileError::BadPath("reserved name"));
            }
            p => parts.push(p.to_owned()),
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err(FileError::BadPath("too deep"));
    }
    let name = parts.pop().ok_or(FileError::BadPath("empty"))?;
    Ok(DataPath { dirs: parts, name })
}

/// Opens the data dir itself (a host path the node made).
fn open_root(root: &Path) -> Result<OwnedFd, FileError> {
    Ok(rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `dirs` one by one below `root`, never following a symlink; with `create`, missing
/// dirs are made (owned by that uid).
fn open_dirs(
    root: &Path,
    dirs: &[String],
    create: Option<Option<u32>>,
) -> Result<OwnedFd, FileError> {
    let mut dir = open_root(root)?;
    for name in dirs {
        let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
        let next = match rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty()) {
            Err(Errno::NOENT) if create.is_some() => {
                match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let made = rustix::fs::openat(&dir, name.as_str(), flags, Mode::empty())?;
                chown(&made, create.flatten())?;
                made
            }
            Err(e @ (Errno::NOTDIR | Errno::LOOP)) => return Err(classify(&dir, name, e)),
            other => other?,
        };
        dir = next;
    }
    Ok(dir)
}

/// `O_NOFOLLOW | O_DIRECTORY` on a symlink fails `ENOTDIR` or `ELOOP` depending on the
/// kernel's order of checks: a symlink is named as such.
fn classify(dir: &OwnedFd, name: &str, e: Errno) -> FileError {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat)
            if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                == rustix::fs::FileType::Symlink =>
        {
            FileError::Symlink
        }
        _ => e.into(),
    }
}

fn chown(fd: &OwnedFd, owner: Option<u32>) -> Result<(), FileError> {
    if let Some(uid) = owner {
        std::os::unix::fs::fchown(fd, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Opens a regular file below `root` for reading: the file and its size.
pub(crate) fn open_read(root: &Path, path: &DataPath) -> Result<(std::fs::File, u64), FileError> {
    let dir = open_dirs(root, &path.dirs, None)?;
    let fd = rustix::fs::openat(
        &dir,
        path.name.as_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(FileError::NotAFile);
    }
    Ok((std::fs::File::from(fd), stat.st_size.max(0) as u64))
}

/// An upload in progress: a hidden file in the target dir, removed unless committed.
pub(crate) struct Upload {
    dir: OwnedFd,
    temp: String,
    name: String,
    committed: bool,
}

impl Upload {
    /// Starts an upload of `path` below `root` (missing parent dirs are made, owned by
    /// `owner`): the upload and the file to write into.
    pub(crate) fn begin(
        root: &Path,
        path: &DataPath,
        owner: Option<u32>,
    ) -> Result<(Self, std::fs::File), FileError> {
        let dir = open_dirs(root, &path.dirs, Some(owner))?;
        // Refused before any byte is taken: the final name is a directory or a symlink (the
        // rename would replace a link rather than write through it, but a link in /data is
        // refused everywhere alike).
        if let Ok(stat) = rustix::fs::statat(&dir, path.name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
                rustix::fs::FileType::Directory => return Err(FileError::NotAFile),
                rustix::fs::FileType::Symlink => return Err(FileError::Symlink),
                _ => {}
            }
        }
        let temp = format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let fd = rustix::fs::openat(
            &dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let upload = Self {
            dir,
            temp,
            name: path.name.clone(),
            committed: false,
        };
        chown(&fd, owner)?;
        Ok((upload, std::fs::File::from(fd)))
    }

    /// Puts the complete file (already written and synced) in place.
    pub(crate) fn commit(mut self) -> Result<(), FileError> {
        rustix::fs::renameat(&self.dir, self.temp.as_str(), &self.dir, self.name.as_str())?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(self.dir.as_fd(), self.temp.as_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_data() {
        assert_eq!(
            parse_path("a/b/c.txt").unwrap(),
            DataPath {
                dirs: vec!["a".into(), "b".into()],
                name: "c.txt".into()
            }
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            ".cloudphone-upload-x",
        ] {
            assert!(
                matches!(parse_path(bad), Err(FileError::BadPath(_))),
                "{bad:?}"
            );
        }
        let deepest = "a/".repeat(MAX_DEPTH);
        assert!(parse_path(deepest.trim_end_matches('/')).is_ok());
        let deeper = "a/".repeat(MAX_DEPTH + 1);
        assert!(parse_path(deeper.trim_end_matches('/')).is_err());
    }

    #[test]
    fn symlinks_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host").unwrap();
        let data = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), data.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), data.path().join("file"))
            .unwrap();
        let through = parse_path("link/secret").unwrap();
        assert!(matches!(
            open_read(data.path(), &through),
            Err(FileError::Symlink)
        ));
        assert!(matches!(
            Upload::begin(data.path(), &through, None),
            Err(FileError::Symlink)
        ));
        let at = parse_path("file").unwrap();
        assert!(matches!(
            open_read(data.path(), &at),
            Err(FileError::Symlink)
        ));
        assert!(matches!(
            Upload::begin(data.path(), &at, None),
            Err(FileError::Symlink)
        ));
        // An upload to a new name lands there once committed.
        let new = parse_path("sub/new").unwrap();
        let (upload, mut file) = Upload::begin(data.path(), &new, None).unwrap();
        std::io::Write::write_all(&mut file, b"new").unwrap();
        upload.commit().unwrap();
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"host"
        );
        assert_eq!(std::fs::read(data.path().join("sub/new")).unwrap(), b"new");
        // An abandoned upload leaves nothing.
        let (upload, _file) =
            Upload::begin(data.path(), &parse_path("d/e").unwrap(), None).unwrap();
        drop(upload);
        assert_eq!(std::fs::read_dir(data.path().join("d")).unwrap().count(), 0);
    }
}
