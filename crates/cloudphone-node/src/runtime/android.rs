//! The android runtime: each instance is one real (or emulated) Android device reached
//! over `adb`, taken from a fixed pool of serials.
//!
//! # Devices
//! An instance is assigned the first pool serial no other instance of this node holds;
//! the assignment is persisted in `<paths.root>/android.json` (together with whether the
//! instance is meant to be up), so it survives node restarts, and it is released when the
//! instance's directory is removed. Devices are shared hardware: nothing here power-cycles
//! or reflashes them.
//! - `start`: `adb -s S wait-for-device`, then poll `getprop sys.boot_completed` until `1`.
//! - `stop`: only marks the instance stopped; the device stays as it is.
//! - `provision` (new instance, or reset): wipes what a previous tenant left (see "Wiping").
//! - `start` refuses a device whose last wipe did not finish.
//! - `run_command`: `adb -s S shell <command>` with the usual timeout and output cap.
//! - `install_app`: `adb -s S install -r <apk>`.
//!
//! # Wiping
//! A device goes from one tenant to the next, so every assignment (and every reset) starts
//! with a wipe, and the assignment records `wipe_pending` until the wipe has finished: `start`,
//! commands, installs, input and capture refuse a device with a pending wipe, so a device whose
//! wipe failed is never handed out (a reset retries the wipe; a delete frees the device for the
//! next instance, whose provisioning wipes it again). The wipe is either
//! - an emulator (`emulator-N` serial) with `[android] clean_snapshot` set: `adb emu avd
//!   snapshot load <name>` (the whole device back to the operator's clean state); or
//! - any device: every third-party package uninstalled (`pm list packages -3` →
//!   `pm uninstall`), the data of every remaining package cleared (`pm clear`, except
//!   [`KEEP_PACKAGES`]), `/sdcard` emptied, then `pm list packages -3` checked empty.
//!
//! Each step must report success; the first that does not fails the wipe.
//!
//! # Backups
//! A tenant's phone lives on the device, not in the instance's data dir, and adb cannot read
//! another app's private data on a production device, so this runtime does not back up
//! ([`Runtime::data_dir_is_state`] is false): BackupInstance and RestoreInstance are refused
//! rather than archiving an empty dir (and restoring an empty phone).
//!
//! # Input
//! Through `adb shell input`: a touch `down` remembers where it started, `up` sends a
//! `tap` there (or a `swipe` from there when the finger moved); key `down` events send
//! `keyevent` with the Android keycode for the DOM code ([`android_keycode`]; key-up events
//! are dropped because `keyevent` is a full press); text goes to `input text`; phone keys
//! are KEYCODE_BACK (4), KEYCODE_HOME (3), KEYCODE_APP_SWITCH (187), KEYCODE_MENU (82),
//! KEYCODE_VOLUME_UP (24), KEYCODE_VOLUME_DOWN (25) and KEYCODE_POWER (26).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::common::{lock, pixel_of, state_dir_of, write_atomic};
use super::keys::{self, DomKey};
use super::sandbox;
use super::{
    CaptureSource, CommandOutput, CommandSpec, InputEvent, InstancePaths, InstanceSpec, PhoneKey,
    Runtime, RuntimeError, TouchAction,
};

const ASSIGNMENT_FILE: &str = "android.json";
const WAIT_FOR_DEVICE: Duration = Duration::from_secs(120);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const ADB_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const ADB_OUTPUT_CAP: usize = 1024 * 1024;

/// Packages whose data a wipe leaves alone: the framework itself, and the shell package whose
/// uid the wipe's own `adb shell` runs as (clearing it would kill the wipe).
pub(crate) const KEEP_PACKAGES: &[&str] = &["android", "com.android.shell"];

pub(crate) const KEYCODE_HOME: u32 = 3;
pub(crate) const KEYCODE_BACK: u32 = 4;
pub(crate) const KEYCODE_APP_SWITCH: u32 = 187;
pub(crate) const KEYCODE_MENU: u32 = 82;
pub(crate) const KEYCODE_VOLUME_UP: u32 = 24;
pub(crate) const KEYCODE_VOLUME_DOWN: u32 = 25;
pub(crate) const KEYCODE_POWER: u32 = 26;

/// android runtime configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidConfig {
    pub adb: PathBuf,
    /// Devices this node may hand out, one per instance.
    pub serials: Vec<String>,
    /// An emulator snapshot holding a clean device: `emulator-N` serials are wiped by loading
    /// it. `None`: every device is wiped package by package.
    pub clean_snapshot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Assignment {
    serial: String,
    running: bool,
    /// Set before a wipe starts, cleared when it has finished: while set, the device may hold
    /// another tenant's data and is not handed out. (Absent in files written before wipes
    /// were tracked: those devices were wiped when they were assigned.)
    #[serde(default)]
    wipe_pending: bool,
}

/// Runs phone instances on adb-attached devices.
pub struct AndroidRuntime {
    config: AndroidConfig,
    /// Serialises serial assignment so two instances never take the same device.
    assign_lock: tokio::sync::Mutex<()>,
    /// Where each instance's current touch started (normalised), for tap-vs-swipe.
    touches: Mutex<HashMap<String, (f64, f64, Instant)>>,
}

impl AndroidRuntime {
    pub fn new(config: AndroidConfig) -> Self {
        Self {
            config,
            assign_lock: tokio::sync::Mutex::new(()),
            touches: Mutex::new(HashMap::new()),
        }
    }

    /// The serial assigned to an instance, assigning one if needed.
    async fn serial(&self, paths: &InstancePaths) -> Result<String, RuntimeError> {
        if let Some(a) = read_assignment(&paths.root).await {
            return Ok(a.serial);
        }
        let _guard = self.assign_lock.lock().await;
        if let Some(a) = read_assignment(&paths.root).await {
            return Ok(a.serial);
        }
        let mut taken = Vec::new();
        let instances = state_dir_of(paths).join("instances");
        if let Ok(mut dir) = tokio::fs::read_dir(&instances).await {
            while let Some(entry) = dir.next_entry().await? {
                if let Some(a) = read_assignment(&entry.path()).await {
                    taken.push(a.serial);
                }
            }
        }
        let serial = pick_serial(&self.config.serials, &taken).ok_or_else(|| {
            RuntimeError::NoCapacity("every android device is assigned".to_owned())
        })?;
        write_assignment(
            &paths.root,
            &Assignment {
                serial: serial.clone(),
                running: false,
                wipe_pending: true,
            },
        )
        .await?;
        Ok(serial)
    }

    /// The instance's device, if it may be used: assigned, and not waiting for a wipe.
    async fn handed_out(&self, paths: &InstancePaths) -> Result<String, RuntimeError> {
        match read_assignment(&paths.root).await {
            Some(a) if !a.wipe_pending => Ok(a.serial),
            Some(a) => Err(not_wiped(&a.serial)),
            None => Err(RuntimeError::NotRunning(
                "no android device is assigned".to_owned(),
            )),
        }
    }

    async fn set_state(
        &self,
        paths: &InstancePaths,
        serial: &str,
        running: bool,
        wipe_pending: bool,
    ) -> Result<(), RuntimeError> {
        write_assignment(
            &paths.root,
            &Assignment {
                serial: serial.to_owned(),
                running,
                wipe_pending,
            },
        )
        .await?;
        Ok(())
    }

    /// Brings the device back to a clean state (see "Wiping" in the module docs); any step
    /// that does not report success fails the wipe.
    async fn wipe(&self, serial: &str) -> Result<(), RuntimeError> {
        if let Some(snapshot) = &self.config.clean_snapshot
            && is_emulator(serial)
        {
            let out = self
                .adb(snapshot_load_args(serial, snapshot), BOOT_TIMEOUT)
                .await?;
            expect_output(&out, "OK", "snapshot load")?;
            return self.wait_booted(serial).await;
        }
        let listed = self
            .adb(list_user_packages_args(serial), ADB_TIMEOUT)
            .await?;
        for package in parse_package_list(&listed.stdout) {
            let out = self
                .adb(uninstall_args(serial, &package), ADB_TIMEOUT)
                .await?;
            expect_output(&out, "Success", "pm uninstall")?;
        }
        let listed = self
            .adb(list_all_packages_args(serial), ADB_TIMEOUT)
            .await?;
        for package in parse_package_list(&listed.stdout) {
            if KEEP_PACKAGES.contains(&package.as_str()) {
                continue;
            }
            let out = self.adb(clear_args(serial, &package), ADB_TIMEOUT).await?;
            expect_output(&out, "Success", "pm clear")?;
        }
        self.adb(wipe_sdcard_args(serial), ADB_TIMEOUT).await?;
        let left = self
            .adb(list_user_packages_args(serial), ADB_TIMEOUT)
            .await?;
        if !parse_package_list(&left.stdout).is_empty() {
            return Err(RuntimeError::Process {
                program: "adb".to_owned(),
                detail: format!("{serial}: third-party packages left after the wipe"),
            });
        }
        Ok(())
    }

    /// Runs adb with `args`; a non-zero exit is an error.
    async fn adb(
        &self,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<CommandOutput, RuntimeError> {
        let out = self.adb_raw(args.clone(), timeout, ADB_OUTPUT_CAP).await?;
        if out.exit_code != 0 || out.timed_out {
            return Err(RuntimeError::Process {
                program: "adb".to_owned(),
                detail: format!(
                    "{} -> exit {}{}: {}",
                    args.join(" "),
                    out.exit_code,
                    if out.timed_out { " (timed out)" } else { "" },
                    out.stderr.trim()
                ),
            });
        }
        Ok(out)
    }

    async fn adb_raw(
        &self,
        args: Vec<String>,
        timeout: Duration,
        cap: usize,
    ) -> Result<CommandOutput, RuntimeError> {
        let mut cmd = tokio::process::Command::new(&self.config.adb);
        cmd.args(&args).stdin(Stdio::null()).process_group(0);
        Ok(sandbox::run_capped(cmd, timeout, cap).await?)
    }

    async fn wait_booted(&self, serial: &str) -> Result<(), RuntimeError> {
        self.adb(wait_for_device_args(serial), WAIT_FOR_DEVICE)
            .await?;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let out = self
                .adb_raw(boot_completed_args(serial), ADB_TIMEOUT, 1024)
                .await?;
            if out.exit_code == 0 && out.stdout.trim() == "1" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Process {
                    program: "adb".to_owned(),
                    detail: format!("{serial} did not finish booting in {BOOT_TIMEOUT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[async_trait]
impl Runtime for AndroidRuntime {
    fn name(&self) -> &'static str {
        "android"
    }

    async fn health(&self) -> Result<(), String> {
        // `adb version` needs no server and no device: it proves the tool answers, quickly.
        let run = tokio::process::Command::new(&self.config.adb)
            .arg("version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(std::time::Duration::from_millis(800), run).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(_) => Err("adb does not run".to_owned()),
            Err(_) => Err("adb does not answer".to_owned()),
        }
    }

    fn data_dir_is_state(&self) -> bool {
        false
    }

    async fn provision(
        &self,
        _spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<(), RuntimeError> {
        tokio::fs::create_dir_all(&paths.root).await?;
        let serial = self.serial(paths).await?;
        // Recorded before the first adb call, so a wipe cut short leaves the device refused.
        self.set_state(paths, &serial, false, true).await?;
        self.wait_booted(&serial).await?;
        if let Err(error) = self.wipe(&serial).await {
            tracing::warn!(%serial, %error, "android wipe failed; the device is not handed out");
            return Err(error);
        }
        tracing::info!(%serial, "android device wiped");
        self.set_state(paths, &serial, false, false).await
    }

    async fn start(&self, _spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError> {
        let serial = self.handed_out(paths).await?;
        self.wait_booted(&serial).await?;
        self.set_state(paths, &serial, true, false).await
    }

    async fn stop(&self, _spec: &InstanceSpec, paths: &InstancePaths) -> Result<(), RuntimeError> {
        if let Some(a) = read_assignment(&paths.root).await {
            self.set_state(paths, &a.serial, false, a.wipe_pending)
                .await?;
        }
        Ok(())
    }

    async fn is_running(&self, _spec: &InstanceSpec, paths: &InstancePaths) -> bool {
        let Some(a) = read_assignment(&paths.root).await else {
            return false;
        };
        if !a.running || a.wipe_pending {
            return false;
        }
        match self
            .adb_raw(get_state_args(&a.serial), Duration::from_secs(10), 1024)
            .await
        {
            Ok(out) => out.exit_code == 0 && out.stdout.trim() == "device",
            Err(_) => false,
        }
    }

    async fn run_command(
        &self,
        _spec: &InstanceSpec,
        paths: &InstancePaths,
        command: &CommandSpec,
    ) -> Result<CommandOutput, RuntimeError> {
        let serial = self.handed_out(paths).await?;
        self.adb_raw(
            shell_args(&serial, &command.command),
            command.timeout,
            command.max_output_bytes,
        )
        .await
    }

    async fn install_app(&self, paths: &InstancePaths, package: &Path) -> Result<(), RuntimeError> {
        let serial = self.handed_out(paths).await?;
        let out = self
            .adb_raw(
                install_args(&serial, package),
                INSTALL_TIMEOUT,
                ADB_OUTPUT_CAP,
            )
            .await?;
        // Old adb versions exit 0 on failure and only print "Failure [...]".
        if out.exit_code != 0 || out.stdout.contains("Failure") {
            return Err(RuntimeError::Install(format!(
                "{} {}",
                out.stdout.trim(),
                out.stderr.trim()
            )));
        }
        Ok(())
    }

    async fn inject_input(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
        event: &InputEvent,
    ) -> Result<(), RuntimeError> {
        let serial = self.handed_out(paths).await?;
        let args = match event {
            InputEvent::Touch { action, x, y, .. } => {
                let mut touches = lock(&self.touches);
                match action {
                    TouchAction::Down => {
                        touches.insert(spec.instance_id.clone(), (*x, *y, Instant::now()));
                        None
                    }
                    TouchAction::Move => None,
                    TouchAction::Up => {
                        let start = touches.remove(&spec.instance_id);
                        let (sx, sy, held) = start
                            .map(|(sx, sy, at)| (sx, sy, at.elapsed()))
                            .unwrap_or((*x, *y, Duration::ZERO));
                        Some(touch_up_args(
                            &serial,
                            (sx, sy),
                            (*x, *y),
                            held,
                            spec.width,
                            spec.height,
                        ))
                    }
                }
            }
            InputEvent::Key { code, down } => {
                let keycode = android_keycode(code).ok_or_else(|| RuntimeError::Process {
                    program: "adb".to_owned(),
                    detail: format!("unknown key code {code:?}"),
                })?;
                down.then(|| keyevent_args(&serial, keycode))
            }
            InputEvent::Text { text } => Some(text_args(&serial, text)),
            InputEvent::Phone { key } => Some(keyevent_args(&serial, phone_keycode(*key))),
        };
        if let Some(args) = args {
            self.adb(args, ADB_TIMEOUT).await?;
        }
        Ok(())
    }

    async fn screenshot(
        &self,
        spec: &InstanceSpec,
        paths: &InstancePaths,
    ) -> Result<Option<Vec<u8>>, RuntimeError> {
        let CaptureSource::Adb { serial, .. } = self.capture_source(spec, paths) else {
            return Ok(None);
        };
        if serial.is_empty() {
            return Err(RuntimeError::NotRunning(spec.instance_id.clone()));
        }
        // `exec-out`: the PNG's bytes as they are (`shell` would translate line ends).
        let out = tokio::process::Command::new(&self.config.adb)
            .args(["-s", &serial, "exec-out", "screencap", "-p"])
            .output()
            .await?;
        if !out.status.success() || !out.stdout.starts_with(b"\x89PNG") {
            return Err(RuntimeError::Process {
                program: "adb screencap".to_owned(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(Some(out.stdout))
    }

    fn capture_source(&self, spec: &InstanceSpec, paths: &InstancePaths) -> CaptureSource {
        let serial = std::fs::read(paths.root.join(ASSIGNMENT_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Assignment>(&b).ok())
            .filter(|a| !a.wipe_pending)
            .map(|a| a.serial)
            .unwrap_or_default();
        CaptureSource::Adb {
            serial,
            width: spec.width,
            height: spec.height,
        }
    }
}

async fn read_assignment(root: &Path) -> Option<Assignment> {
    let bytes = tokio::fs::read(root.join(ASSIGNMENT_FILE)).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

async fn write_assignment(root: &Path, a: &Assignment) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(a).map_err(std::io::Error::other)?;
    write_atomic(&root.join(ASSIGNMENT_FILE), &bytes).await
}

fn not_wiped(serial: &str) -> RuntimeError {
    RuntimeError::Process {
        program: "adb".to_owned(),
        detail: format!("{serial} has not been wiped since its last tenant; reset the instance"),
    }
}

/// A wipe step's answer must contain `word` (`pm` and the emulator console exit 0 on failure).
fn expect_output(out: &CommandOutput, word: &str, step: &str) -> Result<(), RuntimeError> {
    if out.stdout.contains(word) {
        Ok(())
    } else {
        Err(RuntimeError::Process {
            program: "adb".to_owned(),
            detail: format!("{step}: {} {}", out.stdout.trim(), out.stderr.trim()),
        })
    }
}

/// Emulators are the serials adb names `emulator-<console port>`.
pub(crate) fn is_emulator(serial: &str) -> bool {
    serial
        .strip_prefix("emulator-")
        .is_some_and(|port| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()))
}

/// First pool serial not in `taken`.
pub(crate) fn pick_serial(pool: &[String], taken: &[String]) -> Option<String> {
    pool.iter().find(|s| !taken.contains(s)).cloned()
}

fn with_serial(serial: &str, rest: &[&str]) -> Vec<String> {
    let mut args = vec!["-s".to_owned(), serial.to_owned()];
    args.extend(rest.iter().map(|s| (*s).to_owned()));
    args
}

pub(crate) fn wait_for_device_args(serial: &str) -> Vec<String> {
    with_serial(serial, &["wait-for-device"])
}

pub(crate) fn get_state_args(serial: &str) -> Vec<String> {
    with_serial(serial, &["get-state"])
}

pub(crate) fn boot_completed_args(serial: &str) -> Vec<String> {
    with_serial(serial, &["shell", "getprop", "sys.boot_completed"])
}

/// `adb shell <command>`: adb hands the string to the device's shell as one command line.
pub(crate) fn shell_args(serial: &str, command: &str) -> Vec<String> {
    with_serial(serial, &["shell", command])
}

pub(crate) fn install_args(serial: &str, apk: &Path) -> Vec<String> {
    let mut args = with_serial(serial, &["install", "-r"]);
    args.push(apk.to_string_lossy().into_owned());
    args
}

pub(crate) fn list_user_packages_args(serial: &str) -> Vec<String> {
    with_serial(serial, &["shell", "pm", "list", "packages", "-3"])
}

pub(crate) fn list_all_packages_args(serial: &str) -> Vec<String> {
    with_serial(serial, &["shell", "pm", "list", "packages"])
}

pub(crate) fn clear_args(serial: &str, package: &str) -> Vec<String> {
    with_serial(serial, &["shell", "pm", "clear", &shell_quote(package)])
}

/// The emulator console's `avd snapshot load`, through adb's `emu` passthrough.
pub(crate) fn snapshot_load_args(serial: &str, snapshot: &str) -> Vec<String> {
    with_serial(serial, &["emu", "avd", "snapshot", "load", snapshot])
}

pub(crate) fn uninstall_args(serial: &str, package: &str) -> Vec<String> {
    with_serial(serial, &["shell", "pm", "uninstall", &shell_quote(package)])
}

pub(crate) fn wipe_sdcard_args(serial: &str) -> Vec<String> {
    with_serial(serial, &["shell", "rm -rf /sdcard/* /sdcard/.[!.]*"])
}

/// Package names from `pm list packages` output (`package:com.example`).
pub(crate) fn parse_package_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.trim().strip_prefix("package:"))
        .filter(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

pub(crate) fn keyevent_args(serial: &str, keycode: u32) -> Vec<String> {
    let code = keycode.to_string();
    with_serial(serial, &["shell", "input", "keyevent", &code])
}

/// `input text`, quoted for the device shell; `input` reads `%s` as a space.
pub(crate) fn text_args(serial: &str, text: &str) -> Vec<String> {
    let escaped = text.replace('%', "\\%").replace(' ', "%s");
    with_serial(serial, &["shell", "input", "text", &shell_quote(&escaped)])
}

/// A tap where the touch ended, or a swipe when it moved more than 1% of the screen.
pub(crate) fn touch_up_args(
    serial: &str,
    start: (f64, f64),
    end: (f64, f64),
    held: Duration,
    width: u32,
    height: u32,
) -> Vec<String> {
    let (x1, y1) = (pixel(start.0, width), pixel(start.1, height));
    let (x2, y2) = (pixel(end.0, width), pixel(end.1, height));
    let moved = (start.0 - end.0).abs() > 0.01 || (start.1 - end.1).abs() > 0.01;
    if moved {
        let ms = held.as_millis().clamp(50, 5000).to_string();
        let (x1, y1, x2, y2) = (
            x1.to_string(),
            y1.to_string(),
            x2.to_string(),
            y2.to_string(),
        );
        with_serial(
            serial,
            &["shell", "input", "swipe", &x1, &y1, &x2, &y2, &ms],
        )
    } else {
        let (x2, y2) = (x2.to_string(), y2.to_string());
        with_serial(serial, &["shell", "input", "tap", &x2, &y2])
    }
}

fn pixel(v: f64, size: u32) -> u32 {
    pixel_of(v, size) as u32
}

/// Single-quotes `s` for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub(crate) fn phone_keycode(key: PhoneKey) -> u32 {
    match key {
        PhoneKey::Back => KEYCODE_BACK,
        PhoneKey::Home => KEYCODE_HOME,
        PhoneKey::Recents => KEYCODE_APP_SWITCH,
        PhoneKey::Menu => KEYCODE_MENU,
        PhoneKey::VolumeUp => KEYCODE_VOLUME_UP,
        PhoneKey::VolumeDown => KEYCODE_VOLUME_DOWN,
        PhoneKey::Power => KEYCODE_POWER,
    }
}

/// Android `KEYCODE_*` for a DOM `KeyboardEvent.code`.
pub(crate) fn android_keycode(code: &str) -> Option<u32> {
    Some(match keys::parse(code)? {
        DomKey::Letter(c) => 29 + u32::from(c) - u32::from('A'),
        DomKey::Digit(c) => 7 + u32::from(c) - u32::from('0'),
        DomKey::Function(n) => 131 + n - 1,
        DomKey::Named(codes) => codes.android,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adb_command_lines() {
        assert_eq!(
            wait_for_device_args("emu-1"),
            ["-s", "emu-1", "wait-for-device"]
        );
        assert_eq!(
            boot_completed_args("X"),
            ["-s", "X", "shell", "getprop", "sys.boot_completed"]
        );
        assert_eq!(
            shell_args("X", "ls -l /sdcard"),
            ["-s", "X", "shell", "ls -l /sdcard"]
        );
        assert_eq!(
            install_args("X", Path::new("/tmp/a.apk")),
            ["-s", "X", "install", "-r", "/tmp/a.apk"]
        );
        assert_eq!(
            keyevent_args("X", KEYCODE_BACK),
            ["-s", "X", "shell", "input", "keyevent", "4"]
        );
        assert_eq!(get_state_args("X"), ["-s", "X", "get-state"]);
        assert_eq!(
            uninstall_args("X", "com.a"),
            ["-s", "X", "shell", "pm", "uninstall", "'com.a'"]
        );
        assert_eq!(
            clear_args("X", "com.a"),
            ["-s", "X", "shell", "pm", "clear", "'com.a'"]
        );
        assert_eq!(
            snapshot_load_args("emulator-5554", "clean"),
            [
                "-s",
                "emulator-5554",
                "emu",
                "avd",
                "snapshot",
                "load",
                "clean"
            ]
        );
        assert!(is_emulator("emulator-5554"));
        assert!(!is_emulator("emulator-"));
        assert!(!is_emulator("R58M123ABC"));
        assert!(!is_emulator("127.0.0.1:5555"));
    }

    #[test]
    fn taps_and_swipes() {
        assert_eq!(
            touch_up_args(
                "X",
                (0.5, 0.5),
                (0.5, 0.5),
                Duration::from_millis(80),
                720,
                1280
            ),
            ["-s", "X", "shell", "input", "tap", "360", "640"]
        );
        assert_eq!(
            touch_up_args(
                "X",
                (0.1, 0.9),
                (0.1, 0.1),
                Duration::from_millis(300),
                720,
                1280
            ),
            [
                "-s", "X", "shell", "input", "swipe", "72", "1152", "72", "128", "300"
            ]
        );
        // Clamped on screen.
        assert_eq!(
            touch_up_args("X", (1.0, 1.0), (1.0, 1.0), Duration::ZERO, 720, 1280),
            ["-s", "X", "shell", "input", "tap", "719", "1279"]
        );
    }

    #[test]
    fn text_is_quoted_for_the_device_shell() {
        assert_eq!(text_args("X", "hi there")[5], "'hi%sthere'");
        assert_eq!(text_args("X", "it's;rm -rf")[5], "'it'\\''s;rm%s-rf'");
        assert_eq!(text_args("X", "100%")[5], "'100\\%'");
    }

    #[test]
    fn phone_keycodes() {
        assert_eq!(phone_keycode(PhoneKey::Back), 4);
        assert_eq!(phone_keycode(PhoneKey::Home), 3);
        assert_eq!(phone_keycode(PhoneKey::Recents), 187);
        assert_eq!(phone_keycode(PhoneKey::Menu), 82);
        assert_eq!(phone_keycode(PhoneKey::VolumeUp), 24);
        assert_eq!(phone_keycode(PhoneKey::VolumeDown), 25);
        assert_eq!(phone_keycode(PhoneKey::Power), 26);
    }

    #[test]
    fn serial_pool_and_package_lists() {
        let pool = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(pick_serial(&pool, &[]), Some("a".to_owned()));
        assert_eq!(pick_serial(&pool, &["a".to_owned()]), Some("b".to_owned()));
        assert_eq!(pick_serial(&pool, &["a".to_owned(), "b".to_owned()]), None);
        assert_eq!(
            parse_package_list("package:com.a\npackage:org.b_c\r\nnoise\npackage:bad;rm\n"),
            ["com.a", "org.b_c"]
        );
    }
}
