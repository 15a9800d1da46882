//! Instance runtimes: how a node boots, stops, wipes and drives one phone instance.
//!
//! Every runtime sits behind [`Runtime`], so the rest of the node (gRPC service, streaming,
//! persistence) never knows whether a phone is an Xvfb display, a test pattern or a real
//! Android device.

pub mod android;
pub(crate) mod cgroup;
pub(crate) mod common;
pub(crate) mod keys;
pub(crate) mod package;
pub mod sandbox;
pub(crate) mod seccomp;
pub mod synthetic;
pub mod x11;

use std::path::PathBuf;

use async_trait::async_trait;

/// Everything a runtime needs to know about one instance. Persisted by the node in the
/// instance's `instance.json`, so it survives a node restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceSpec {
    /// Control-assigned id; also the directory name under the state dir.
    pub instance_id: String,
    /// Owning tenant, kept for usage attribution and logs.
    pub tenant_id: String,
    /// Screen size in pixels (portrait for phones).
    pub width: u32,
    pub height: u32,
    /// Image flavour the tenant ordered (e.g. "AOSP11"); informational off Android.
    pub os: String,
}

/// Where an instance's files live on the host, and who owns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePaths {
    /// `<state_dir>/instances/<instance_id>`: node bookkeeping (spec, pid files, logs).
    pub root: PathBuf,
    /// `<root>/data`: the instance's own writable data; the only writable place in its sandbox.
    pub data: PathBuf,
    /// The instance's own host uid (and gid), from the runtime's [`Runtime::sandbox_uids`]:
    /// its sandboxes run as it and its data dir belongs to it. Allocated by the instance
    /// manager, recorded in `instance.json`, never shared by two instances of a node. `None`:
    /// the runtime has no range (not root, or no sandbox), and today's shared user is used.
    pub owner: Option<u32>,
}

impl InstancePaths {
    pub fn new(state_dir: &std::path::Path, instance_id: &str) -> Self {
        let root = state_dir.join("instances").join(instance_id);
        let data = root.join("data");
        Self {
            root,
            data,
            owner: None,
        }
    }
}

/// A shell command to run inside an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// Passed to `/bin/sh -c` inside the sandbox (or `adb shell` on Android).
    pub command: String,
    /// The command is killed after this long.
    pub timeout: std::time::Duration,
    /// Each of stdout/stderr is cut at this many bytes.
    pub max_output_bytes: usize,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// Exit code; -1 when killed by a signal or the timeout.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// True when either stream was cut at `max_output_bytes`.
    pub truncated: bool,
    pub timed_out: bool,
    pub duration: std::time::Duration,
}

/// One input event from a viewer: the `input` data channel's message itself, which
/// `streaming::input` has checked (coordinates in 0..=1, bounded text and key codes) before a
/// runtime sees it. One type, so the wire and the runtimes cannot drift apart.
pub use cloudphone_signaling::{InputMessage as InputEvent, PhoneKey, TouchAction};

/// Where the streaming pipeline reads an instance's screen from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureSource {
    /// An X display, captured with `ximagesrc display-name=…`.
    X11 {
        display: String,
        width: u32,
        height: u32,
    },
    /// A GStreamer test pattern of this size.
    TestPattern { width: u32, height: u32 },
    /// An Android device captured over adb (`screenrecord --output-format=h264`).
    Adb {
        serial: String,
        width: u32,
        height: u32,
    },
}

/// Where an instance's sound comes from, for the node's audio pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// The monitor of a PulseAudio null sink, reached at the server's unix socket (a host path):
    /// `pulsesrc server=unix:<socket> device=<sink>.monitor`.
    Pulse {
        socket: std::path::PathBuf,
        sink: String,
    },
    /// A sine of this frequency (`audiotestsrc`); `beeps`: sounding only in the first 100 ms
    /// of each whole second of the monotonic clock (the sync probe, see
    /// `streaming::pipeline::audio`).
    TestTone { freq_hz: u32, beeps: bool },
}

/// Text copied inside a phone, as its runtime reports it: the first
/// [`cloudphone_signaling::MAX_CLIPBOARD_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub text: String,
    /// The phone's text was longer and this is its beginning.
    pub truncated: bool,
}

/// What can go wrong in a runtime. Callers map these onto gRPC statuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("instance {0} is not running")]
    NotRunning(String),
    #[error("no free slot: {0}")]
    NoCapacity(String),
    #[error("{program} failed: {detail}")]
    Process { program: String, detail: String },
    #[error("install failed: {0}")]
    Install(String),
    #[error("unsupported on this runtime: {0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One way of running phone instances on this host.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Runtime name as announced to control: "x11", "synthetic" or "android".
    fn name(&self) -> &'static str;

    /// Whether the instance's data dir holds all it keeps, so that archiving the dir backs up
    /// the phone. A runtime whose phones live elsewhere (an Android device) says no, and the
    /// manager refuses backup and restore instead of archiving an empty dir.
    fn data_dir_is_state(&self) -> bool {
        true
    }

    /// Seeds a fresh data dir for a new (or wiped) instance. The dir exists and is empty. By
    /// default, for a runtime whose instances run sandboxed in their data dir: the dir is made
    /// the instance user's (see [`sandbox::prepare_data_dir`]).
    async fn provision(
        &self,
        _spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<(), RuntimeError> {
        // The data dir is fresh and empty here, so creating inside it cannot follow a symlink
        // planted by the instance.
        sandbox::prepare_data_dir(&paths.data, sandbox::SandboxUser::for_instance(paths.owner))
            .await?;
        Ok(())
    }

    /// Boots the instance and returns once it is ready to stream. Idempotent: starting a
    /// running instance is a no-op. Stale processes from a previous node run are cleaned up.
    async fn start(&self, spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError>;

    /// Stops the instance's processes, keeping its data. Idempotent.
    async fn stop(&self, spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError>;

    /// True while the instance's processes are alive.
    async fn is_running(&self, spec: &InstanceSpec, paths: &InstancePaths) -> bool;

    /// Runs a shell command inside the instance's sandbox.
    async fn run_command(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
        command: &CommandSpec,
    ) -> Result<CommandOutput, RuntimeError>;

    /// Installs a downloaded, verified package file into the instance.
    async fn install_app(
        &self,
        paths: &InstancePaths,
        package: &std::path::Path,
    ) -> Result<(), RuntimeError>;

    /// Injects one input event into the running instance.
    async fn inject_input(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
        event: &InputEvent,
    ) -> Result<(), RuntimeError>;

    /// Where to capture the instance's screen from while it runs.
    fn capture_source(&self, spec: &InstanceSpec, paths: &InstancePaths) -> CaptureSource;

    /// Where a running instance's sound is captured from; `None`: the runtime has none (the
    /// stream is then video only).
    fn audio_source(&self, _spec: &InstanceSpec, _paths: &InstancePaths) -> Option<AudioSource> {
        None
    }

    /// The most bytes an instance's data dir may hold in total, when this runtime confines it:
    /// the manager then makes the dir a filesystem of that size (`instances::volume`).
    /// `None`: no such quota (no sandbox, or a node that is not root and cannot mount).
    fn data_quota(&self, _spec: &InstanceSpec) -> Option<u64> {
        None
    }

    /// Makes `text` the running instance's clipboard, as if copied inside the phone.
    async fn set_clipboard(
        &self,
        _spec: &InstanceSpec,
        _paths: &InstancePaths,
        _text: &str,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported("clipboard"))
    }

    /// Text the running instance's apps copy from now on (not what [`Runtime::set_clipboard`]
    /// sets).
    fn clipboard_changes(
        &self,
        _spec: &InstanceSpec,
        _paths: &InstancePaths,
    ) -> Result<tokio::sync::broadcast::Receiver<Copied>, RuntimeError> {
        Err(RuntimeError::Unsupported("clipboard"))
    }

    /// A PNG of the running instance's screen at its native size, when the runtime takes it
    /// itself (an Android device's `screencap`); `None`: the node takes it from
    /// [`Runtime::capture_source`].
    async fn screenshot(
        &self,
        _spec: &InstanceSpec,
        _paths: &InstancePaths,
    ) -> Result<Option<Vec<u8>>, RuntimeError> {
        Ok(None)
    }

    /// The host uids this runtime runs instances as, one per instance; `None` when its
    /// instances share one user (or have no sandbox).
    fn sandbox_uids(&self) -> Option<std::ops::Range<u32>> {
        None
    }

    /// Whether this host can run this runtime's instances now (`/healthz`). `Err` says what is
    /// missing in words fit for an unauthenticated caller: no paths, no host details.
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// True when `path` is a file someone may execute: what a runtime needs of its programs.
pub(crate) fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
