//! Android capture that does not stop: `adb exec-out screenrecord`, restarted each time it
//! reaches its time limit, into one pipe the encode pipeline reads.
//!
//! `screenrecord` stops after `--time-limit` seconds, 180 at most. Each run's output is a
//! complete H.264 stream (parameter sets, then an IDR frame), so runs written one after the
//! other into the same pipe are one valid byte stream to `h264parse` and the decoder: the
//! decoder restarts from the new run's key frame and our encoder, downstream, never notices;
//! the viewer's stream has no new key frame, no renegotiation, only the last picture held for
//! the successor's start-up time (a few hundred ms on a device; see `docs/streaming.md`).
//!
//! Chosen over the scrcpy server (Debian's `scrcpy` package ships its jar) because: the
//! server is not on our hosts (not installed, and no `scrcpy` package in the host's apt
//! sources), must be pushed to every device and matched to a client of the same version, and
//! speaks its own framing on a forwarded socket; `screenrecord` is on every Android since 4.4,
//! needs nothing pushed, and its one drawback, the time limit, is what this module removes.
//! scrcpy's lower latency matters less here because the node re-encodes anyway.
//!
//! A run that ends before [`MIN_RUN`] or without writing anything is not restarted: the device
//! is gone (or `adb` cannot reach it), and the pipe's end of stream shows in the pipeline's
//! stats as `ended`, as a dead capture always has.

use std::io::{PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest `screenrecord` runs (Android's limit, and its default).
pub(crate) const SCREENRECORD_TIME_LIMIT: Duration = Duration::from_secs(180);
/// A run shorter than this (or one that wrote nothing) means the device is gone: no restart.
pub(crate) const MIN_RUN: Duration = Duration::from_secs(1);

/// The state the copying thread shares with its owner.
#[derive(Default)]
struct Shared {
    /// Set when the owner is dropped: no more runs.
    stop: AtomicBool,
    /// The run in progress, killed on drop.
    child: Mutex<Option<Child>>,
    /// Runs started so far.
    runs: AtomicU32,
}

fn lock(m: &Mutex<Option<Child>>) -> std::sync::MutexGuard<'_, Option<Child>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `screenrecord` runs, one after the other, into a pipe; see the module docs.
pub(crate) struct ScreenRecord {
    /// The read end, for `fdsrc`; closed first on drop so a blocked write fails.
    reader: Option<PipeReader>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ScreenRecord {
    /// Starts the first run; later ones start as each ends. Fails when `adb` cannot be run.
    pub(crate) fn start(
        adb: &Path,
        args: Vec<String>,
        name: &str,
    ) -> std::io::Result<ScreenRecord> {
        let (reader, writer) = std::io::pipe()?;
        let shared = Arc::new(Shared::default());
        let first = spawn(adb, &args)?;
        *lock(&shared.child) = Some(first);
        shared.runs.store(1, Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-adb"))
            .spawn({
                let shared = Arc::clone(&shared);
                let adb = adb.to_owned();
                move || copy_runs(adb, args, writer, shared)
            })?;
        Ok(ScreenRecord {
            reader: Some(reader),
            shared,
            thread: Some(thread),
        })
    }

    /// The pipe's read end.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.reader.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// `screenrecord` runs started so far.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> u32 {
        self.shared.runs.load(Ordering::Relaxed)
    }
}

fn spawn(adb: &Path, args: &[String]) -> std::io::Result<Child> {
    Command::new(adb)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

/// Copies each run's output into the pipe and starts the next run when one reaches its limit.
fn copy_runs(adb: PathBuf, args: Vec<String>, mut writer: PipeWriter, shared: Arc<Shared>) {
    loop {
        let started = Instant::now();
        let stdout = lock(&shared.child).as_mut().and_then(|c| c.stdout.take());
        let copied = match stdout {
            Some(mut out) => std::io::copy(&mut out, &mut writer),
            None => Ok(0),
        };
        if let Some(mut child) = lock(&shared.child).take() {
            let _ = child.wait();
        }
        let ran = started.elapsed();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match copied {
            // The pipeline is gone (its read end closed).
            Err(_) => return,
            Ok(bytes) if bytes == 0 || ran < MIN_RUN => {
                tracing::warn!(bytes, ?ran, "screenrecord ended early; the device is gone");
                return;
            }
            Ok(_) => {}
        }
        match spawn(&adb, &args) {
            Ok(child) => {
                let mut slot = lock(&shared.child);
                *slot = Some(child);
                // Dropped while this run started: end it too.
                if shared.stop.load(Ordering::SeqCst)
                    && let Some(mut child) = slot.take()
                {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "screenrecord could not be restarted");
                return;
            }
        }
        let runs = shared.runs.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(?ran, runs, "screenrecord reached its time limit; restarted");
    }
}

impl Drop for ScreenRecord {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Closing the read end fails a write the thread may be blocked in.
        drop(self.reader.take());
        if let Some(child) = lock(&self.shared.child).as_mut() {
            let _ = child.kill();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `adb -s <serial> exec-out screenrecord …`: raw H.264 on stdout at the device's size, for at
/// most `time_limit` (whole seconds, 1..=180). The high bit rate keeps the first encode
/// near-lossless; our own encoder sets the wire rate.
pub(crate) fn screenrecord_args(
    serial: &str,
    width: u32,
    height: u32,
    time_limit: Duration,
) -> Vec<String> {
    let secs = time_limit
        .as_secs()
        .clamp(1, SCREENRECORD_TIME_LIMIT.as_secs());
    vec![
        "-s".into(),
        serial.into(),
        "exec-out".into(),
        "screenrecord".into(),
        "--output-format=h264".into(),
        format!("--size={width}x{height}"),
        "--bit-rate=20000000".into(),
        format!("--time-limit={secs}"),
        "-".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_limit_is_whole_seconds_within_androids() {
        let args = |d| screenrecord_args("emulator-5554", 720, 1280, d);
        assert!(args(Duration::from_secs(2)).contains(&"--time-limit=2".to_owned()));
        assert!(args(Duration::from_secs(600)).contains(&"--time-limit=180".to_owned()));
        assert!(args(Duration::ZERO).contains(&"--time-limit=1".to_owned()));
        assert_eq!(
            &args(SCREENRECORD_TIME_LIMIT)[..4],
            ["-s", "emulator-5554", "exec-out", "screenrecord"]
        );
    }

    /// A capture command that ends at once is not restarted.
    #[test]
    fn a_run_that_ends_at_once_is_not_restarted() {
        let rec = ScreenRecord::start(Path::new("/bin/true"), Vec::new(), "t").unwrap();
        let mut reader = rec.reader.as_ref().unwrap().try_clone().unwrap();
        // End of stream: the writer is gone.
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(rec.runs(), 1);
    }
}
