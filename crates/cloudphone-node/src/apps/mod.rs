//! Application packages: downloading one for an instance on a tenant's behalf, and the size
//! and MD5 checks InstallApp promises, before the runtime installs it.
//!
//! The URL is the tenant's, so the fetch is an SSRF boundary: every URL (the first and each
//! redirect's) passes [`policy`], and a name is checked on the addresses it resolves to by the
//! client's own resolver ([`GuardedResolver`]), so the address checked is the address
//! connected to (no DNS-rebinding window). One deadline covers the whole download, including
//! the wait for one of the node's download slots. What went wrong goes to the node's log; the
//! tenant learns only the InstallApp failure class ([`FetchError::failure`]).

pub(crate) mod policy;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudphone_proto::node_v1 as pb;
use md5::{Digest, Md5};
use policy::{Allowlist, Refusal};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::config::AppsSection;

/// No package may be larger than this (seed: "应用程序包的大小超过限制2G").
pub(crate) const MAX_PACKAGE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Redirects followed at most (each one checked like the first URL).
const MAX_REDIRECTS: usize = 5;
/// Downloads refused by the address policy, for operators (and the tests) to see.
const REFUSED_METRIC: &str = "cloudphone_node_app_downloads_refused_total";
/// Downloads waiting for one of the node's download slots.
const WAITING_METRIC: &str = "cloudphone_node_app_downloads_waiting";

/// Why a package could not be fetched as described. The text is for the node's log only.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("download failed: {0}")]
    Download(String),
    #[error("download did not finish within {0:?}")]
    Timeout(Duration),
    #[error("package size {actual} bytes is outside {expected:?}")]
    Size {
        expected: RangeInclusive<u64>,
        actual: u64,
    },
    #[error("package MD5 is {actual}, {expected} expected")]
    Checksum { expected: String, actual: String },
    #[error("writing the package: {0}")]
    Io(#[from] std::io::Error),
}

impl FetchError {
    /// What InstallApp tells control (and so the tenant): the failure class and a message
    /// that names no address, status, size or digest.
    pub(crate) fn failure(&self) -> (pb::InstallFailure, &'static str) {
        match self {
            FetchError::Io(e) if e.raw_os_error() == Some(28) => {
                (pb::InstallFailure::NoSpace, "insufficient space")
            }
            FetchError::Checksum { .. } => (
                pb::InstallFailure::Checksum,
                "the package does not match the order",
            ),
            FetchError::Size { .. } => (
                pb::InstallFailure::Size,
                "the package does not match the order",
            ),
            _ => (
                pb::InstallFailure::Download,
                "the package could not be downloaded",
            ),
        }
    }
}

/// What a caller expects of the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    /// Lowercase hex MD5; empty skips the check.
    pub md5: String,
    /// The sizes the order admits, in bytes; `None` skips the check (the cap still applies).
    pub size: Option<RangeInclusive<u64>>,
}

/// A downloaded package file, removed when dropped (also when a download is abandoned at its
/// deadline).
#[derive(Debug)]
pub(crate) struct Package {
    pub path: PathBuf,
}

impl Drop for Package {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The node's package fetcher: one per node, so its slots cap the node's downloads.
pub(crate) struct Downloads {
    /// Resolves through [`GuardedResolver`], re-checks redirects, ignores proxy variables.
    client: reqwest::Client,
    /// The operator's exceptions to the address policy.
    allowlist: Arc<Allowlist>,
    /// `[apps] max_concurrent_downloads` permits.
    slots: Semaphore,
    /// `[apps] download_timeout_secs`: slot wait, connect, redirects and body together.
    timeout: Duration,
}

impl Downloads {
    pub(crate) fn new(config: &AppsSection) -> Result<Self, String> {
        let allowlist = Arc::new(Allowlist::new(&config.allow_hosts, &config.allow_cidrs)?);
        let redirects = Arc::clone(&allowlist);
        let client = reqwest::Client::builder()
            // A proxy would resolve and connect on the node's behalf, past the resolver.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                allowlist: Arc::clone(&allowlist),
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error(Refusal::TooManyRedirects(MAX_REDIRECTS));
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => attempt.error(refusal),
                }
            }))
            .referer(false)
            .build()
            .map_err(|e| format!("package download client: {e}"))?;
        let slots = usize::try_from(config.max_concurrent_downloads)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Ok(Self {
            client,
            allowlist,
            slots: Semaphore::new(slots),
            timeout: Duration::from_secs(config.download_timeout_secs),
        })
    }

    /// Downloads `url` into `dir` within the node's deadline, streaming through the MD5 and
    /// stopping at the size cap. Refused URLs fail before any connection is made.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        expected: &Expected,
        dir: &Path,
    ) -> Result<Package, FetchError> {
        let result = match tokio::time::timeout(
            self.timeout,
            self.fetch_in_slot(url, expected, dir),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        };
        if let Err(FetchError::Refused(_)) = &result {
            metrics::counter!(REFUSED_METRIC).increment(1);
        }
        result
    }

    async fn fetch_in_slot(
        &self,
        url: &str,
        expected: &Expected,
        dir: &Path,
    ) -> Result<Package, FetchError> {
        let url = reqwest::Url::parse(url).map_err(|e| FetchError::Download(e.to_string()))?;
        // Checked before waiting for a slot: a refused URL costs no slot and no connection.
        self.allowlist.check_url(&url)?;
        metrics::gauge!(WAITING_METRIC).increment(1.0);
        let slot = self.slots.acquire().await;
        metrics::gauge!(WAITING_METRIC).decrement(1.0);
        let _slot = slot.map_err(|_| FetchError::Download("downloads are closed".into()))?;
        tokio::fs::create_dir_all(dir).await?;
        let package = Package {
            path: dir.join(format!("{}.pkg", uuid::Uuid::new_v4().simple())),
        };
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(request_error)?;
        // Reading stops at the largest size admitted: a longer body is refused as it arrives.
        let cap = expected.size.as_ref().map_or(MAX_PACKAGE_BYTES, |size| {
            (*size.end()).min(MAX_PACKAGE_BYTES)
        });
        let mut file = tokio::fs::File::create(&package.path).await?;
        let mut hasher = Md5::new();
        let mut written: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            written += chunk.len() as u64;
            if written > cap {
                return Err(FetchError::Size {
                    expected: expected.size.clone().unwrap_or(0..=cap),
                    actual: written,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        if let Some(size) = expected
            .size
            .as_ref()
            .filter(|size| !size.contains(&written))
        {
            return Err(FetchError::Size {
                expected: size.clone(),
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
}

/// A refusal from the resolver or the redirect policy, found in reqwest's error chain; any
/// other failure keeps its text (for the log).
fn request_error(error: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return FetchError::Refused(refusal.clone());
        }
        source = e.source();
    }
    FetchError::Download(error.to_string())
}

/// The download client's resolver: resolves a name and keeps only the addresses the policy
/// allows, so the connection goes to an address that was checked — a name that answers a
/// public address to a check and a private one to the connection has no second lookup to win.
struct GuardedResolver {
    allowlist: Arc<Allowlist>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowlist = Arc::clone(&self.allowlist);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .filter(|addr| match allowlist.check_address(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        refused = Some(refusal);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let refusal = refused.unwrap_or(Refusal::NoUsableAddress(host));
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downloads(timeout_secs: u64, allow: &[&str]) -> Downloads {
        Downloads::new(&AppsSection {
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
            download_timeout_secs: timeout_secs,
            ..AppsSection::default()
        })
        .unwrap()
    }

    /// A local server that reads each request's head, then hands the socket to `answer`;
    /// returns the URL of `file` on it.
    async fn serve<F, Fut>(file: &str, answer: F) -> String
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Copy + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                    answer(socket).await;
                });
            }
        });
        format!("http://{addr}/{file}")
    }

    /// A server that sends headers promising 1 MiB, then one chunk, then nothing.
    async fn stalling_server() -> String {
        serve("slow.apk", |mut socket| async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\nfirst bytes";
            let _ = socket.write_all(head.as_bytes()).await;
            std::future::pending::<()>().await;
            drop(socket);
        })
        .await
    }

    /// The whole download has one deadline: a body that stops flowing fails at exactly
    /// `download_timeout_secs` (tokio's paused clock), and the partial file is gone.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_download_ends_at_the_deadline() {
        let url = stalling_server().await;
        let d = downloads(600, &["127.0.0.1"]);
        let dir = tempfile::tempdir().unwrap();
        let expected = Expected {
            md5: String::new(),
            size: None,
        };
        let started = tokio::time::Instant::now();
        let err = d.fetch(&url, &expected, dir.path()).await.unwrap_err();
        assert!(matches!(err, FetchError::Timeout(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(600));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(
            err.failure(),
            (
                pb::InstallFailure::Download,
                "the package could not be downloaded"
            )
        );
    }

    /// A server answering every request with `len` bytes.
    async fn sized_server(len: usize) -> String {
        serve("sized.apk", move |mut socket| async move {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&vec![7u8; len]).await;
        })
        .await
    }

    /// A package inside the order's size range is kept; one below it or above it is a size
    /// failure (the tenant's 62017), and nothing stays on disk.
    #[tokio::test]
    async fn the_size_range_is_checked_at_both_ends() {
        let url = sized_server(1000).await;
        let d = downloads(60, &["127.0.0.1"]);
        let dir = tempfile::tempdir().unwrap();
        let fetch = |size: RangeInclusive<u64>| {
            let expected = Expected {
                md5: String::new(),
                size: Some(size),
            };
            let (d, url, dir) = (&d, &url, dir.path().to_path_buf());
            async move { d.fetch(url, &expected, &dir).await }
        };
        let package = fetch(999..=1001).await.unwrap();
        assert_eq!(std::fs::metadata(&package.path).unwrap().len(), 1000);
        drop(package);
        for size in [1001..=2000, 0..=999] {
            let err = fetch(size.clone()).await.unwrap_err();
            assert!(matches!(err, FetchError::Size { .. }), "{size:?}: {err}");
            assert_eq!(err.failure().0, pb::InstallFailure::Size, "{size:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Refusals are classified as refusals (for the log and the metric) and reach the tenant
    /// as the generic download failure.
    #[tokio::test]
    async fn refusals_happen_before_any_connection() {
        let d = downloads(600, &[]);
        let dir = tempfile::tempdir().unwrap();
        let expected = Expected {
            md5: String::new(),
            size: None,
        };
        for url in [
            "http://127.0.0.1:9/a.apk",
            "http://localhost:9/a.apk",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:10.0.0.1]/a.apk",
            "file:///etc/passwd",
        ] {
            let err = d.fetch(url, &expected, dir.path()).await.unwrap_err();
            assert!(matches!(err, FetchError::Refused(_)), "{url}: {err}");
            assert_eq!(err.failure().0, pb::InstallFailure::Download);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
