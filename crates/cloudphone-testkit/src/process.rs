//! Building and spawning the workspace's daemons; every child is killed when its guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Runs `command` to completion; panics with `what` and its stderr unless it succeeded.
pub(crate) fn output_of(command: &mut Command, what: &str) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Path of a freshly built workspace binary. Builds the daemons once per test process, so a
/// test of one crate always runs against the current code of the other — unless
/// `CLOUDPHONE_TEST_PREBUILT` is set by a runner (`cargo xtask test`) that built them already.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("CLOUDPHONE_TEST_PREBUILT").is_some() {
            return;
        }
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "cloudphone-control",
                "-p",
                "cloudphone-node",
                "--bins",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the daemons failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join(name)
}

/// A running daemon; SIGKILLed on drop unless already stopped.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `binary args…` with stdout/stderr to `log`.
    pub fn spawn(binary: &Path, args: &[&str], log: &Path) -> Self {
        Self::spawn_in(None, binary, args, log)
    }

    /// [`Daemon::spawn`] in network namespace `netns` when given (`ip netns exec`, which
    /// `exec`s the binary: the child's pid is the daemon's; see [`crate::netns`]).
    pub fn spawn_in(netns: Option<&str>, binary: &Path, args: &[&str], log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("create log");
        let err = file.try_clone().expect("clone log handle");
        let mut command = match netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        Self {
            name: binary.display().to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Sends a signal without waiting (e.g. SIGSTOP to freeze a daemon with its sockets open).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// Sends a signal and waits for the process to exit.
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        child.wait().ok()
    }

    /// The daemon's log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How much of a daemon's log a panicking test prints.
const LOG_TAIL_ON_PANIC: usize = 80;

impl Drop for Daemon {
    /// Stops the daemon the way systemd would: SIGTERM, then SIGKILL after 5 s. A node stopped
    /// gracefully stops its instances' Xvfb and sandboxes; a SIGKILLed one would leave them behind
    /// with nobody to re-adopt them once the test's state dir is gone.
    fn drop(&mut self) {
        // A failing test's message rarely says why a daemon misbehaved; its log's tail does.
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_ON_PANIC).collect();
            eprintln!(
                "--- last {} lines of {} ({}) ---",
                tail.len(),
                self.log.display(),
                self.name
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills every process an in-process node's instances recorded (each `pid` anywhere in
/// `<state_dir>/instances/*/pids.json`), and detaches the instances' data-quota mounts (any
/// mount under the state dir), even when a test panics: the node's own cleanup does not run
/// when its task is dropped mid-test, and a mount left behind would outlive the temp dir.
pub struct InstanceProcessGuard(pub PathBuf);

impl Drop for InstanceProcessGuard {
    fn drop(&mut self) {
        self.kill_processes();
        detach_mounts_under(&self.0);
    }
}

/// Lazily unmounts every mount at or below `dir` (a test node's instances' data-quota
/// volumes), deepest first, so none outlives the test's temp dir.
pub fn detach_mounts_under(dir: &std::path::Path) {
    for mount in mounts_under(dir) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mount)
            .status();
    }
}

/// Mount points at or below `dir`, deepest first (from `/proc/self/mountinfo`, whose field 5
/// is the mount point with spaces and the like escaped as octal).
fn mounts_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_octal(escaped)))
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl InstanceProcessGuard {
    fn kill_processes(&self) {
        let Ok(dir) = std::fs::read_dir(self.0.join("instances")) else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(bytes) = std::fs::read(entry.path().join("pids.json")) else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let mut pids = Vec::new();
            collect_pids(&value, &mut pids);
            for pid in pids {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn collect_pids(v: &serde_json::Value, out: &mut Vec<i32>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "pid" {
                    if let Some(p) = v.as_i64() {
                        out.push(p as i32);
                    }
                } else {
                    collect_pids(v, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_pids(i, out)),
        _ => {}
    }
}
