//! Application packages: downloading one for an instance, with the size and MD5 checks
//! InstallApp promises, before the runtime installs it.

use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

/// No package may be larger than this (seed: "应用程序包的大小超过限制2G").
pub(crate) const MAX_PACKAGE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Why a package could not be fetched as described.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("download failed: {0}")]
    Download(String),
    #[error("package is {actual} bytes, {expected} expected")]
    Size { expected: u64, actual: u64 },
    #[error("package MD5 is {actual}, {expected} expected")]
    Checksum { expected: String, actual: String },
    #[error("writing the package: {0}")]
    Io(#[from] std::io::Error),
}

/// What a caller expects of the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    /// Lowercase hex MD5; empty skips the check.
    pub md5: String,
    /// Exact size in bytes; 0 skips the check (the cap still applies).
    pub size_bytes: u64,
}

/// A downloaded package file, removed when dropped.
#[derive(Debug)]
pub(crate) struct Package {
    pub path: PathBuf,
}

impl Drop for Package {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Downloads `url` (http or https only: a tenant must not make the node read its own files) into
/// `dir`, streaming through the MD5 and stopping at the size cap.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    url: &str,
    expected: &Expected,
    dir: &Path,
) -> Result<Package, FetchError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(FetchError::Download(
            "install_package_url must be http or https".into(),
        ));
    }
    tokio::fs::create_dir_all(dir).await?;
    let package = Package {
        path: dir.join(format!("{}.pkg", uuid::Uuid::new_v4().simple())),
    };
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| FetchError::Download(e.without_url().to_string()))?;
    let cap = if expected.size_bytes > 0 {
        expected.size_bytes.min(MAX_PACKAGE_BYTES)
    } else {
        MAX_PACKAGE_BYTES
    };
    let mut file = tokio::fs::File::create(&package.path).await?;
    let mut hasher = Md5::new();
    let mut written: u64 = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Download(e.without_url().to_string()))?
    {
        written += chunk.len() as u64;
        if written > cap {
            return Err(FetchError::Size {
                expected: cap,
                actual: written,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    if expected.size_bytes > 0 && written != expected.size_bytes {
        return Err(FetchError::Size {
            expected: expected.size_bytes,
            actual: written,
        });
    }
    let actual = hex::encode(hasher.finalize());
    if !expected.md5.is_empty() && !expected.md5.eq_ignore_ascii_case(&actual) {
        return Err(FetchError::Checksum {
            expected: expected.md5.clone(),
            actual,
        });
    }
    Ok(package)
}
