//! The x11 runtime: each instance is its own `Xvfb` display with a launcher app running in
//! the instance's bwrap sandbox, driven through XTest.
//!
//! # Processes and restarts
//! `start` picks a free display number from [`X11Config::first_display`] up (no
//! `/tmp/.X<n>-lock` held by a live process, not used by this node), runs
//! `Xvfb :n -screen 0 {w}x{h}x24 -nolisten tcp -noreset`, waits (bounded) until an X client
//! can connect, then runs [`X11Config::launcher`] with `/bin/sh -c` inside the sandbox with
//! `DISPLAY=:n`. Both processes are group leaders and are recorded (pid + kernel start time)
//! in `<paths.root>/pids.json`. A later `start` — in particular the first one after a node
//! restart — first kills whatever that file names (after checking the start time, so a
//! reused pid is never hit), then starts fresh: re-adoption is a clean restart and no
//! orphan survives. Process output goes to `xvfb.log` / `launcher.log` next to it,
//! truncated on every start.
//!
//! # Launcher
//! The default launcher is [`DEFAULT_LAUNCHER`]: `xeyes` from x11-apps, sized to the whole
//! screen. x11-apps is the X app set a bare Debian host has (xterm is a separate package
//! and usually missing); of its apps, xeyes is the one that visibly reacts to input (its
//! pupils follow the pointer), which makes input easy to see on the stream. The launcher
//! gets `WIDTH` and `HEIGHT` in its environment and is expected to keep running: if it
//! exits, the instance counts as not running.
//!
//! # Sound
//! Each instance has its own PulseAudio server (when the host has `pulseaudio`), started before
//! the launcher in a sandbox like the apps' (the instance's user and cgroup, no network), with
//! no default modules: a null sink `cloudphone` (the default sink) and the native protocol on
//! a unix socket, anonymous (only who can reach the socket can connect), module loading
//! disallowed. The socket lives in `<paths.root>/pulse/` — node bookkeeping, which the apps
//! never see — bound writable at [`SANDBOX_PULSE_DIR`] into the server's sandbox only; the
//! apps get the socket file alone, read-only at the same place, and `PULSE_SERVER` pointing at
//! it (as they get the X socket and `DISPLAY`). The node captures the sink's monitor through
//! the host path ([`Runtime::audio_source`]). No `pulseaudio`: instances are silent and the
//! stream is video only. The server's pid is recorded in `pids.json` with the others.
//!
//! # Input mapping (XTest)
//! - Touch: every action first moves the pointer to `(x·width, y·height)`; `down` then
//!   presses button 1 and `up` releases it, so a tap is a left click and a drag is a
//!   left-button drag. One pointer only: `pointer_id` is ignored.
//! - Key: the DOM `code` is mapped to a keysym by [`input::keysym_for_code`] (letters, digits,
//!   punctuation, Enter/Escape/Backspace/Tab/Space, arrows, Home/End/PageUp/PageDown/
//!   Insert/Delete, F1–F12, Shift/Control/Alt/Meta left and right, CapsLock), then to a
//!   keycode through the server's keyboard mapping. Unknown codes are rejected.
//! - Text: each character becomes its keysym (Latin-1 directly, `\n` → Return, `\t` → Tab,
//!   anything else `0x0100_0000 + codepoint`); Shift is held when the keysym sits on the
//!   shifted level; a keysym the keymap lacks is bound to a spare keycode for the keystroke.
//! - Phone keys: back → Escape, home → Super_L, recents → Alt+Tab, menu → Menu, volume_up /
//!   volume_down → XF86AudioRaiseVolume / XF86AudioLowerVolume, power → XF86PowerOff.
//! - Multi-touch: none. XTest drives the server's one core pointer; a second finger would move
//!   the first one's pointer (XInput 2 multi-touch devices cannot be faked through XTest).
//!
//! # App packages
//! See [`install_tar_package`]: a tar (optionally gzip)
//! archive with `app.json` at its top level, unpacked to `/data/apps/<name>/`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::process::Child;

pub(super) mod clipboard;
pub(super) mod input;

use clipboard::XClipboard;
use input::XInput;

use super::cgroup::Cgroups;
use super::common::{ensure_data_dir, lock, run_shell, write_atomic};
use super::package::install_tar_package;
use super::sandbox::{
    self, HostLayout, ProcessRecord, SandboxConfig, SandboxRole, SandboxSpec, SandboxUser,
    X11_SOCKET_DIR,
};
use super::{
    AudioSource, CaptureSource, CommandOutput, CommandSpec, InputEvent, InstancePaths,
    InstanceSpec, Runtime, RuntimeError,
};

/// Shown full-screen on every display unless configured otherwise; see the module docs.
pub(crate) const DEFAULT_LAUNCHER: &str = "exec xeyes -geometry ${WIDTH}x${HEIGHT}+0+0";

/// Where the instance's sound server socket dir appears in sandboxes.
pub(crate) const SANDBOX_PULSE_DIR: &str = "/run/cloudphone/pulse";
/// The instance's null sink; the node captures `<PULSE_SINK>.monitor`.
pub(crate) const PULSE_SINK: &str = "cloudphone";
/// How long the sound server gets to open its socket.
const PULSE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long Xvfb gets to accept connections.
const XVFB_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the launcher must survive for `start` to succeed.
const LAUNCHER_SETTLE: Duration = Duration::from_millis(300);
/// SIGTERM → SIGKILL grace when stopping.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Display numbers tried per start before giving up (others may grab numbers concurrently).
const DISPLAY_ATTEMPTS: u32 = 8;
/// Highest display number considered.
const MAX_DISPLAY_SPAN: u32 = 1000;

/// x11 runtime configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X11Config {
    /// Lowest display number to use; high by default to stay clear of desktop sessions.
    pub first_display: u32,
    /// Shell command run inside the sandbox once the display is up.
    pub launcher: String,
    pub xvfb: PathBuf,
    pub bwrap: PathBuf,
    /// The sound server; an instance is silent when it is not installed.
    pub pulseaudio: PathBuf,
    /// Per-instance users, limits and what the sandboxes see (`[sandbox]`).
    pub sandbox: SandboxConfig,
}

impl Default for X11Config {
    fn default() -> Self {
        Self {
            first_display: 100,
            launcher: DEFAULT_LAUNCHER.to_owned(),
            xvfb: PathBuf::from("/usr/bin/Xvfb"),
            bwrap: PathBuf::from("/usr/bin/bwrap"),
            pulseaudio: PathBuf::from("/usr/bin/pulseaudio"),
            sandbox: SandboxConfig::default(),
        }
    }
}

/// What `pids.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PidFile {
    pub display: Option<u32>,
    pub xvfb: Option<ProcessRecord>,
    pub launcher: Option<ProcessRecord>,
    /// The sound server, when the instance has one.
    #[serde(default)]
    pub pulse: Option<ProcessRecord>,
}

/// One running instance's processes and input connection.
struct Live {
    display: u32,
    xvfb: Child,
    launcher: Child,
    pulse: Option<Child>,
    input: Arc<XInput>,
    /// The clipboard agent; `None` when the display has no XFixes (logged at start).
    clipboard: Option<Arc<XClipboard>>,
}

/// Runs phone instances as Xvfb displays.
pub struct X11Runtime {
    config: X11Config,
    layout: HostLayout,
    live: Mutex<HashMap<String, Live>>,
    /// Display numbers this node has handed out; each also holds the host lock file.
    reserved: Mutex<HashSet<u32>>,
    /// Where instance cgroups go; `None` when the host has no usable hierarchy or the node
    /// is not root (logged once at start).
    cgroups: Option<Cgroups>,
    /// The compiled seccomp deny-list, written next to each instance's bookkeeping.
    seccomp: Vec<u8>,
}

impl X11Runtime {
    pub fn new(config: X11Config) -> Result<Self, RuntimeError> {
        let cgroups = if SandboxUser::for_this_node().is_none() {
            tracing::warn!(
                "node is not root: instances share its user and get no cgroup (no per-instance uid, CPU, memory, pids or data-dir limits)"
            );
            None
        } else {
            match Cgroups::detect() {
                Ok(Some(c)) => {
                    tracing::info!(version = c.version(), "instance cgroups enabled");
                    Some(c)
                }
                Ok(None) => {
                    tracing::warn!(
                        "no writable cgroup hierarchy with cpu, memory and pids: instances run without CPU, memory or pids limits"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cgroups unusable: instances run without CPU, memory or pids limits");
                    None
                }
            }
        };
        let seccomp = super::seccomp::deny_list_bpf().map_err(|e| RuntimeError::Process {
            program: "seccomp".to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            config,
            layout: HostLayout::scan()?,
            live: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            cgroups,
            seccomp,
        })
    }

    /// The sandbox for one of the instance's processes, with everything it needs on disk:
    /// the seccomp filter in the instance's (hidden) bookkeeping dir and its cgroup.
    async fn prepare_sandbox(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
        display: Option<u32>,
        role: SandboxRole,
    ) -> Result<SandboxSpec, RuntimeError> {
        let mut sb = sandbox_spec(spec, paths, display);
        sb.role = role;
        if role == SandboxRole::App {
            let socket = pulse_socket(paths);
            if is_socket(&socket) {
                let inside = Path::new(SANDBOX_PULSE_DIR).join("native");
                sb.env.push((
                    "PULSE_SERVER".to_owned(),
                    format!("unix:{}", inside.display()),
                ));
                sb.ro_binds.push((socket, inside));
            }
        }
        let policy = &self.config.sandbox;
        let (limits, file_size) = policy.limits(spec.width, spec.height);
        sb.tmp_size = Some(policy.tmp_size);
        sb.file_size_limit = Some(file_size);
        sb.hidden.clone_from(&policy.hidden);
        sb.bin_binds = policy.bin_binds();
        let filter = paths.root.join("seccomp.bpf");
        write_atomic(&filter, &self.seccomp).await?;
        sb.seccomp = Some(filter);
        if let Some(cgroups) = &self.cgroups {
            let cgroups = cgroups.clone();
            let name = cgroup_name(spec, paths);
            sb.cgroup_procs = tokio::task::spawn_blocking(move || cgroups.create(&name, &limits))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??;
        }
        Ok(sb)
    }

    pub fn config(&self) -> &X11Config {
        &self.config
    }

    /// The running instance's clipboard agent.
    fn clipboard_of(&self, spec: &InstanceSpec) -> Result<Arc<XClipboard>, RuntimeError> {
        let live = lock(&self.live);
        let live = live
            .get(&spec.instance_id)
            .ok_or_else(|| RuntimeError::NotRunning(spec.instance_id.clone()))?;
        live.clipboard.clone().ok_or(RuntimeError::Unsupported(
            "clipboard (no XFixes on the display)",
        ))
    }

    /// The display an instance runs on, while it runs.
    pub(crate) fn display_of(&self, instance_id: &str) -> Option<u32> {
        lock(&self.live).get(instance_id).map(|l| l.display)
    }

    /// Claims the lowest free display number, with its host lock file: the sandboxed Xvfb
    /// has a private `/tmp`, so the node takes the lock X servers use to pick numbers.
    fn reserve_display(&self) -> Result<u32, RuntimeError> {
        let mut reserved = lock(&self.reserved);
        let first = self.config.first_display;
        for n in first..first.saturating_add(MAX_DISPLAY_SPAN) {
            if !reserved.contains(&n) && display_free(n) && claim_display_lock(n) {
                // A dead server's socket: the sandboxed Xvfb runs as the instance's user and
                // may not remove another user's file from the sticky socket dir.
                let _ = std::fs::remove_file(sandbox::x11_socket_path(n));
                reserved.insert(n);
                return Ok(n);
            }
        }
        Err(RuntimeError::NoCapacity(format!(
            "no free X display from :{first}"
        )))
    }

    fn release_display(&self, n: u32) {
        if lock(&self.reserved).remove(&n) && lock_file_pid(n) == Some(std::process::id()) {
            let _ = std::fs::remove_file(lock_file_path(n));
        }
    }

    /// Kills this instance's processes: the live ones and any named in pids.json.
    async fn kill_all(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<(), RuntimeError> {
        let live = lock(&self.live).remove(&spec.instance_id);
        if let Some(mut live) = live {
            stop_child(&mut live.launcher).await;
            if let Some(pulse) = live.pulse.as_mut() {
                stop_child(pulse).await;
            }
            stop_child(&mut live.xvfb).await;
            self.release_display(live.display);
        }
        let pid_file = paths.root.join("pids.json");
        if let Some(stale) = read_pid_file(&pid_file).await {
            for record in [stale.launcher, stale.pulse, stale.xvfb]
                .into_iter()
                .flatten()
            {
                if record.is_alive() {
                    tracing::info!(instance = %spec.instance_id, pid = record.pid, "killing leftover process");
                    record.terminate(STOP_GRACE).await;
                }
            }
        }
        // Whatever is left in the instance's cgroup (a daemonised child, a fork bomb's
        // remains) goes with it.
        if let Some(cgroups) = &self.cgroups {
            cgroups.remove(&cgroup_name(spec, paths)).await;
        }
        match tokio::fs::remove_file(&pid_file).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Starts Xvfb on some free display and waits until it takes connections.
    async fn start_xvfb(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<(u32, Child, Arc<XInput>), RuntimeError> {
        let mut last_err = String::new();
        for _ in 0..DISPLAY_ATTEMPTS {
            let display = self.reserve_display()?;
            match self.try_xvfb(display, spec, paths).await {
                Ok((child, input)) => return Ok((display, child, input)),
                Err(e) => {
                    self.release_display(display);
                    last_err = e;
                }
            }
        }
        Err(RuntimeError::Process {
            program: "Xvfb".to_owned(),
            detail: last_err,
        })
    }

    /// Starts the instance's sound server (see the module docs) and waits until its socket
    /// takes connections. `Ok(None)`: the host has no `pulseaudio`.
    async fn start_pulse(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<Option<Child>, RuntimeError> {
        if !self.config.pulseaudio.exists() {
            return Ok(None);
        }
        let dir = paths.root.join("pulse");
        // A fresh dir each start: no socket or state of a previous server survives.
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        tokio::fs::create_dir(&dir).await?;
        if let Some(user) = SandboxUser::for_instance(paths.owner) {
            user.take_ownership(&dir)?;
        }
        let mut sb = self
            .prepare_sandbox(spec, paths, None, SandboxRole::App)
            .await?;
        sb.rw_binds
            .push((dir.clone(), PathBuf::from(SANDBOX_PULSE_DIR)));
        for var in ["PULSE_RUNTIME_PATH", "PULSE_STATE_PATH", "XDG_CONFIG_HOME"] {
            sb.env.push((var.to_owned(), SANDBOX_PULSE_DIR.to_owned()));
        }
        let mut argv = vec![self.config.pulseaudio.display().to_string()];
        argv.extend(pulse_args());
        let log = std::fs::File::create(paths.root.join("pulse.log"))?;
        let log_err = log.try_clone()?;
        let mut cmd = sandbox::command(&self.config.bwrap, &self.layout, &sb, &argv);
        cmd.stdout(log).stderr(log_err).kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let socket = pulse_socket(paths);
        let deadline = Instant::now() + PULSE_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = tail(&paths.root.join("pulse.log")).await;
                return Err(RuntimeError::Process {
                    program: "pulseaudio".to_owned(),
                    detail: format!("exited with {status}: {log}"),
                });
            }
            if is_socket(&socket) && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(Some(child));
            }
            if Instant::now() >= deadline {
                stop_child(&mut child).await;
                return Err(RuntimeError::Process {
                    program: "pulseaudio".to_owned(),
                    detail: format!("no socket after {PULSE_READY_TIMEOUT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_xvfb(
        &self,
        display: u32,
        spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<(Child, Arc<XInput>), String> {
        let log = std::fs::File::create(paths.root.join("xvfb.log")).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        // The X server parses every client request, so it runs confined like the apps: the
        // instance's user and cgroup, no network, the display socket dir its only writable
        // host path.
        ensure_socket_dir().map_err(|e| format!("{X11_SOCKET_DIR}: {e}"))?;
        let sb = self
            .prepare_sandbox(spec, paths, None, SandboxRole::DisplayServer)
            .await
            .map_err(|e| e.to_string())?;
        let mut argv = vec![self.config.xvfb.display().to_string()];
        argv.extend(xvfb_args(display, spec.width, spec.height));
        let mut cmd = sandbox::command(&self.config.bwrap, &self.layout, &sb, &argv);
        cmd.stdout(log).stderr(log_err).kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", self.config.xvfb))?;
        let record = child.id().and_then(ProcessRecord::of);
        write_pid_file(
            &paths.root,
            &PidFile {
                display: Some(display),
                xvfb: record,
                launcher: None,
                pulse: None,
            },
        )
        .await
        .map_err(|e| e.to_string())?;

        let deadline = Instant::now() + XVFB_READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = tail(&paths.root.join("xvfb.log")).await;
                return Err(format!("Xvfb :{display} exited with {status}: {log}"));
            }
            let connected = tokio::task::spawn_blocking(move || XInput::connect(display)).await;
            if let Ok(Ok(input)) = connected {
                // This node holds the display's lock file, so the server answering on its
                // socket is ours.
                return Ok((child, Arc::new(input)));
            }
            if Instant::now() >= deadline {
                stop_child(&mut child).await;
                return Err(format!(
                    "Xvfb :{display} not ready after {XVFB_READY_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl Runtime for X11Runtime {
    fn name(&self) -> &'static str {
        "x11"
    }

    async fn health(&self) -> Result<(), String> {
        // An instance cannot start without either; a running one's own death is the crash
        // watcher's (it marks the instance failed, which `/healthz` counts).
        if !super::is_executable(&self.config.xvfb) {
            return Err("the X server (Xvfb) is not installed".to_owned());
        }
        if !super::is_executable(&self.config.bwrap) {
            return Err("the sandbox (bwrap) is not installed".to_owned());
        }
        Ok(())
    }

    async fn start(&self, spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError> {
        if self.is_running(spec, paths).await {
            return Ok(());
        }
        self.kill_all(spec, paths).await?;
        ensure_data_dir(paths).await?;

        let (display, mut xvfb, input) = self.start_xvfb(spec, paths).await?;
        let xvfb_record = xvfb.id().and_then(ProcessRecord::of);
        // Sound is best effort: an instance without it still shows and takes input.
        let mut pulse = match self.start_pulse(spec, paths).await {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(instance = %spec.instance_id, error = %e, "no sound server; the instance is silent");
                None
            }
        };
        let pulse_record = pulse
            .as_ref()
            .and_then(|c| c.id())
            .and_then(ProcessRecord::of);

        let launcher = async {
            let log = std::fs::File::create(paths.root.join("launcher.log"))?;
            let log_err = log.try_clone()?;
            let sb = self
                .prepare_sandbox(spec, paths, Some(display), SandboxRole::App)
                .await?;
            let argv = sandbox::shell_argv(&self.config.launcher);
            let mut cmd = sandbox::command(&self.config.bwrap, &self.layout, &sb, &argv);
            cmd.stdout(log).stderr(log_err).kill_on_drop(true);
            let child = cmd.spawn()?;
            Ok::<_, RuntimeError>(child)
        }
        .await;
        let mut launcher = match launcher {
            Ok(child) => child,
            Err(e) => {
                if let Some(p) = pulse.as_mut() {
                    stop_child(p).await;
                }
                stop_child(&mut xvfb).await;
                self.release_display(display);
                return Err(RuntimeError::Process {
                    program: "bwrap".to_owned(),
                    detail: e.to_string(),
                });
            }
        };
        let pids = PidFile {
            display: Some(display),
            xvfb: xvfb_record,
            launcher: launcher.id().and_then(ProcessRecord::of),
            pulse: pulse_record,
        };
        let written = write_pid_file(&paths.root, &pids).await;

        tokio::time::sleep(LAUNCHER_SETTLE).await;
        let exited = launcher.try_wait().ok().flatten();
        if written.is_err() || exited.is_some() {
            stop_child(&mut launcher).await;
            if let Some(p) = pulse.as_mut() {
                stop_child(p).await;
            }
            stop_child(&mut xvfb).await;
            self.release_display(display);
            let _ = tokio::fs::remove_file(paths.root.join("pids.json")).await;
            written?;
            let log = tail(&paths.root.join("launcher.log")).await;
            let status = exited.map(|s| s.to_string()).unwrap_or_default();
            return Err(RuntimeError::Process {
                program: "launcher".to_owned(),
                detail: format!("exited right away ({status}): {log}"),
            });
        }
        let number = display;
        let clipboard = match tokio::task::spawn_blocking(move || XClipboard::start(display)).await
        {
            Ok(Ok(c)) => Some(Arc::new(c)),
            Ok(Err(e)) => {
                tracing::warn!(instance = %spec.instance_id, error = %e, "no clipboard for this instance");
                None
            }
            Err(e) => {
                tracing::warn!(instance = %spec.instance_id, error = %e, "no clipboard for this instance");
                None
            }
        };
        tracing::info!(instance = %spec.instance_id, display = number, "x11 instance started");
        lock(&self.live).insert(
            spec.instance_id.clone(),
            Live {
                display,
                xvfb,
                launcher,
                pulse,
                input,
                clipboard,
            },
        );
        Ok(())
    }

    async fn stop(&self, spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError> {
        self.kill_all(spec, paths).await
    }

    async fn is_running(&self, spec: &InstanceSpec, _paths: &InstancePaths) -> bool {
        let mut live = lock(&self.live);
        let Some(l) = live.get_mut(&spec.instance_id) else {
            return false;
        };
        matches!(l.xvfb.try_wait(), Ok(None)) && matches!(l.launcher.try_wait(), Ok(None))
    }

    async fn run_command(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
        command: &CommandSpec,
    ) -> Result<CommandOutput, RuntimeError> {
        let display = self.display_of(&spec.instance_id);
        let sb = self
            .prepare_sandbox(spec, paths, display, SandboxRole::App)
            .await?;
        run_shell(&self.config.bwrap, &self.layout, &sb, command).await
    }

    async fn install_app(&self, paths: &InstancePaths, package: &Path) -> Result<(), RuntimeError> {
        install_tar_package(&self.config.bwrap, &self.layout, paths, package)
            .await
            .map(|_| ())
    }

    async fn inject_input(
        &self,
        spec: &InstanceSpec,
        _paths: &InstancePaths,
        event: &InputEvent,
    ) -> Result<(), RuntimeError> {
        let input = lock(&self.live)
            .get(&spec.instance_id)
            .map(|l| Arc::clone(&l.input))
            .ok_or_else(|| RuntimeError::NotRunning(spec.instance_id.clone()))?;
        let event = event.clone();
        tokio::task::spawn_blocking(move || input.inject(&event))
            .await
            .map_err(|e| x_err(e.to_string()))?
    }

    async fn set_clipboard(
        &self,
        spec: &InstanceSpec,
        _paths: &InstancePaths,
        text: &str,
    ) -> Result<(), RuntimeError> {
        let agent = self.clipboard_of(spec)?;
        let text = text.to_owned();
        tokio::task::spawn_blocking(move || agent.set(&text))
            .await
            .map_err(|e| x_err(e.to_string()))?
    }

    fn clipboard_changes(
        &self,
        spec: &InstanceSpec,
        _paths: &InstancePaths,
    ) -> Result<tokio::sync::broadcast::Receiver<super::Copied>, RuntimeError> {
        Ok(self.clipboard_of(spec)?.subscribe())
    }

    fn sandbox_uids(&self) -> Option<std::ops::Range<u32>> {
        self.config.sandbox.uids()
    }

    fn data_quota(&self, spec: &InstanceSpec) -> Option<u64> {
        // Mounting takes root, like the per-instance uids and cgroups.
        SandboxUser::for_this_node()?;
        Some(self.config.sandbox.data_quota(spec.width, spec.height))
    }

    fn capture_source(&self, spec: &InstanceSpec, paths: &InstancePaths) -> CaptureSource {
        // While stopped, the display last used (or the first one) is the best answer; the
        // instance manager only asks for running instances.
        let display = self.display_of(&spec.instance_id).or_else(|| {
            std::fs::read(paths.root.join("pids.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<PidFile>(&b).ok())
                .and_then(|p| p.display)
        });
        let display = display.unwrap_or(self.config.first_display);
        CaptureSource::X11 {
            display: format!(":{display}"),
            width: spec.width,
            height: spec.height,
        }
    }

    fn audio_source(&self, spec: &InstanceSpec, paths: &InstancePaths) -> Option<AudioSource> {
        let socket = pulse_socket(paths);
        (self.display_of(&spec.instance_id).is_some() && is_socket(&socket)).then(|| {
            AudioSource::Pulse {
                socket,
                sink: PULSE_SINK.to_owned(),
            }
        })
    }
}

/// The host path of an instance's sound server socket.
fn pulse_socket(paths: &InstancePaths) -> PathBuf {
    paths.root.join("pulse").join("native")
}

/// A unix socket itself (`lstat`: a symlink planted in its place is not followed).
fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// `pulseaudio` arguments: no default modules, a null sink, the native protocol on the
/// socket in [`SANDBOX_PULSE_DIR`]; no realtime, no D-Bus, no SHM (the node is outside the
/// sandbox's IPC namespace), no idle exit, no module loading by clients.
pub(crate) fn pulse_args() -> Vec<String> {
    [
        "-n",
        "--daemonize=no",
        "--use-pid-file=no",
        "--system=no",
        "--exit-idle-time=-1",
        "--disable-shm=yes",
        "--realtime=no",
        "--high-priority=no",
        "--log-target=stderr",
        "--log-level=warning",
        "-L",
        &format!("module-null-sink sink_name={PULSE_SINK} rate=48000 channels=2"),
        "-L",
        &format!("module-native-protocol-unix socket={SANDBOX_PULSE_DIR}/native auth-anonymous=1"),
        "--disallow-module-loading",
        "--disallow-exit",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

/// `Xvfb` arguments for display `n` at `width`×`height`.
pub(crate) fn xvfb_args(display: u32, width: u32, height: u32) -> Vec<String> {
    vec![
        format!(":{display}"),
        "-screen".to_owned(),
        "0".to_owned(),
        format!("{width}x{height}x24"),
        "-nolisten".to_owned(),
        "tcp".to_owned(),
        "-noreset".to_owned(),
    ]
}

/// The sandbox of an instance on `display`: the launcher and commands see its screen size.
fn sandbox_spec(spec: &InstanceSpec, paths: &InstancePaths, display: Option<u32>) -> SandboxSpec {
    let mut sb = SandboxSpec::for_instance(paths);
    sb.display = display;
    sb.env.push(("WIDTH".to_owned(), spec.width.to_string()));
    sb.env.push(("HEIGHT".to_owned(), spec.height.to_string()));
    sb
}

/// The instance's cgroup: its id, and a digest of where this node keeps the instance, so that
/// two nodes on one host (a test suite, a demo next to a system node) that both run an
/// instance `demo` in one parent group never share — or kill — each other's group. Stable
/// across node restarts, so a restarted node finds its leftovers.
fn cgroup_name(spec: &InstanceSpec, paths: &InstancePaths) -> String {
    use sha2::Digest as _;
    let root = std::path::absolute(&paths.root).unwrap_or_else(|_| paths.root.clone());
    let digest = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    format!("{}-{}", spec.instance_id, hex::encode(&digest[..6]))
}

/// Creates the host's X socket dir the way X servers expect it (world-writable and sticky,
/// so each server can remove only its own socket) if no server made it yet.
fn ensure_socket_dir() -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(X11_SOCKET_DIR) {
        Ok(()) => std::fs::set_permissions(X11_SOCKET_DIR, std::fs::Permissions::from_mode(0o1777)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// X servers' lock file for display `n`: it holds the pid of whoever owns the number.
fn lock_file_path(n: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/.X{n}-lock"))
}

/// A display number is free when no live process holds its lock file and no server
/// answers on its socket.
fn display_free(n: u32) -> bool {
    let unlocked = match std::fs::read_to_string(lock_file_path(n)) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(text) => match text.trim().parse::<u32>() {
            // A stale lock.
            Ok(pid) => sandbox::proc_start_time(pid).is_none(),
            Err(_) => false,
        },
    };
    unlocked && std::os::unix::net::UnixStream::connect(sandbox::x11_socket_path(n)).is_err()
}

/// Takes display `n`'s lock file for this node, the way X servers do (created exclusively,
/// `%10d\n` of the owner's pid); a stale one is replaced.
fn claim_display_lock(n: u32) -> bool {
    use std::io::Write;
    let path = lock_file_path(n);
    if lock_file_pid(n).is_some_and(|pid| sandbox::proc_start_time(pid).is_none()) {
        let _ = std::fs::remove_file(&path);
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path);
    match file {
        Ok(mut f) => {
            let written = writeln!(f, "{:>10}", std::process::id());
            if written.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            written.is_ok()
        }
        Err(_) => false,
    }
}

fn lock_file_pid(n: u32) -> Option<u32> {
    std::fs::read_to_string(lock_file_path(n))
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn read_pid_file(path: &Path) -> Option<PidFile> {
    let bytes = tokio::fs::read(path).await.ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable pid file ignored");
            None
        }
    }
}

async fn write_pid_file(root: &Path, pids: &PidFile) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(pids).map_err(std::io::Error::other)?;
    write_atomic(&root.join("pids.json"), &bytes).await
}

/// The last part of a log file, for error messages.
async fn tail(path: &Path) -> String {
    let bytes = tokio::fs::read(path).await.unwrap_or_default();
    let start = bytes.len().saturating_sub(600);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}

/// SIGTERM to the child's process group, SIGKILL after the grace, then reap it.
async fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        sandbox::kill_group(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        if let Some(pid) = child.id() {
            sandbox::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.kill().await;
    }
}

fn x_err(detail: impl Into<String>) -> RuntimeError {
    RuntimeError::Process {
        program: "x11".to_owned(),
        detail: detail.into(),
    }
}

/// One request and its reply: the server has handled every request sent before it (errors
/// surface, events and selection changes are applied) once this returns.
fn round_trip(conn: &x11rb::rust_connection::RustConnection) -> Result<(), RuntimeError> {
    use x11rb::protocol::xproto::ConnectionExt as _;
    conn.get_input_focus()
        .map_err(|e| x_err(e.to_string()))?
        .reply()
        .map_err(|e| x_err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xvfb_command_line() {
        assert_eq!(
            xvfb_args(101, 720, 1280),
            [
                ":101",
                "-screen",
                "0",
                "720x1280x24",
                "-nolisten",
                "tcp",
                "-noreset"
            ]
        );
    }
}
