//! Android runtime: wiping a device between tenants and refusing backups, against the adb
//! double (`support/adb-double.sh`, a device kept in files); and the whole lifecycle against a
//! real device, which runs only when `adb devices` lists one (Android hardware or an emulator is
//! not something every host has, so without one that test says why and returns).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudphone_core::lifecycle::InstanceState;
use cloudphone_node::instances::{InstanceError, InstanceManager};
use cloudphone_node::runtime::android::{AndroidConfig, AndroidRuntime};
use cloudphone_node::runtime::{
    CaptureSource, CommandSpec, InputEvent, InstanceSpec, PhoneKey, RuntimeError,
};

use crate::runtime_x11::wait_for_state;

const ADB: &str = "/usr/bin/adb";

fn attached_devices() -> Vec<String> {
    let Ok(out) = std::process::Command::new(ADB).arg("devices").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, state)| state.trim() == "device")
        .map(|(serial, _)| serial.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_device_lifecycle() {
    let serials = attached_devices();
    if serials.is_empty() {
        eprintln!("runtime_android: `adb devices` lists no device; skipping the device test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let runtime = AndroidRuntime::new(AndroidConfig {
        adb: PathBuf::from(ADB),
        serials: serials.clone(),
        clean_snapshot: None,
    });
    let m = InstanceManager::open(dir.path().to_path_buf(), Arc::new(runtime), 1)
        .await
        .unwrap();
    let spec = InstanceSpec {
        instance_id: "droid".into(),
        tenant_id: "t".into(),
        width: 720,
        height: 1280,
        os: "AOSP11".into(),
    };
    assert_eq!(m.create(spec).await.unwrap().state, InstanceState::Running);
    let out = m
        .run_command(
            "droid",
            CommandSpec {
                command: "echo hello-from-device".into(),
                timeout: Duration::from_secs(30),
                max_output_bytes: 4096,
            },
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "hello-from-device");
    m.inject_input(
        "droid",
        &InputEvent::Phone {
            key: PhoneKey::Home,
        },
    )
    .await
    .unwrap();
    match m.capture_source("droid").await.unwrap() {
        CaptureSource::Adb { serial, .. } => assert_eq!(serial, serials[0]),
        other => panic!("expected adb capture, got {other:?}"),
    }
    m.stop("droid").await.unwrap();
    m.delete("droid").await.unwrap();
    m.shutdown().await;
}

/// One device behind the adb double (its state files and an `adb` that reaches it), and the
/// state dir of the node that uses it.
struct Device {
    dir: tempfile::TempDir,
    node: tempfile::TempDir,
}

impl Device {
    /// A device with a few system packages, one holding data (an account).
    fn new() -> Self {
        let d = Device {
            dir: tempfile::tempdir().unwrap(),
            node: tempfile::tempdir().unwrap(),
        };
        std::fs::write(
            d.state("system"),
            "android\ncom.android.shell\ncom.android.contacts\ncom.android.providers.settings\n",
        )
        .unwrap();
        std::fs::write(d.state("third"), "").unwrap();
        std::fs::create_dir_all(d.state("sdcard")).unwrap();
        std::fs::create_dir_all(d.state("appdata/com.android.contacts")).unwrap();
        let double = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/adb-double.sh");
        std::os::unix::fs::symlink(double, d.state("adb")).unwrap();
        d
    }

    fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A device a previous tenant left data on.
    fn after_tenant() -> Self {
        let d = Device::new();
        d.leave_data();
        d
    }

    /// What a tenant leaves: a photo on the shared storage and an account.
    fn leave_data(&self) {
        std::fs::create_dir_all(self.state("sdcard/DCIM")).unwrap();
        std::fs::write(self.state("sdcard/DCIM/photo.jpg"), "tenant a").unwrap();
        std::fs::write(self.state("sdcard/.hidden"), "tenant a").unwrap();
        std::fs::create_dir_all(self.state("appdata/com.android.contacts")).unwrap();
        std::fs::write(
            self.state("appdata/com.android.contacts/accounts.db"),
            "a@example.com",
        )
        .unwrap();
    }

    /// The device with one of its state files set to `text`.
    fn with(self, file: &str, text: &str) -> Self {
        std::fs::write(self.state(file), text).unwrap();
        self
    }

    fn third_party(&self) -> String {
        std::fs::read_to_string(self.state("third")).unwrap()
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.state("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn clear_log(&self) {
        let _ = std::fs::remove_file(self.state("log"));
    }

    /// A node (capacity 1) whose only device is this one, under `serial`.
    async fn manager(&self, serial: &str, clean_snapshot: Option<&str>) -> Arc<InstanceManager> {
        let runtime = AndroidRuntime::new(AndroidConfig {
            adb: self.state("adb"),
            serials: vec![serial.to_owned()],
            clean_snapshot: clean_snapshot.map(str::to_owned),
        });
        InstanceManager::open(self.node.path().to_path_buf(), Arc::new(runtime), 1)
            .await
            .unwrap()
    }
}

fn spec(id: &str, tenant: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: id.into(),
        tenant_id: tenant.into(),
        width: 720,
        height: 1280,
        os: "AOSP11".into(),
    }
}

fn echo(text: &str) -> CommandSpec {
    CommandSpec {
        command: format!("echo {text}"),
        timeout: Duration::from_secs(10),
        max_output_bytes: 4096,
    }
}

/// Tenant A installs an app, takes a photo and adds an account; A's instance is deleted and
/// tenant B's instance gets the device: before B's instance starts, A's app is uninstalled,
/// every remaining package's data cleared (but the framework's and the shell's) and `/sdcard`
/// emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_wiped_before_the_next_tenant() {
    let device = Device::new();
    let m = device.manager("R58M00001", None).await;
    let a = m.create(spec("tenant-a", "a")).await.unwrap();
    assert_eq!(a.state, InstanceState::Running);
    let apk = device.state("chat.apk");
    std::fs::write(&apk, "apk").unwrap();
    m.install_app("tenant-a", &apk).await.unwrap();
    assert_eq!(device.third_party(), "com.tenant.chatapk\n");
    device.leave_data();
    m.delete("tenant-a").await.unwrap();

    device.clear_log();
    let b = m.create(spec("tenant-b", "b")).await.unwrap();
    assert_eq!(b.state, InstanceState::Running);
    assert_eq!(device.third_party(), "");
    assert_eq!(
        std::fs::read_dir(device.state("sdcard")).unwrap().count(),
        0
    );
    assert!(!device.state("appdata/com.android.contacts").exists());
    let log = device.log();
    let at = |line: &str| {
        log.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("no `{line}` in {log:#?}"))
    };
    at("-s R58M00001 shell pm uninstall 'com.tenant.chatapk'");
    at("-s R58M00001 shell pm clear 'com.android.contacts'");
    at("-s R58M00001 shell pm clear 'com.android.providers.settings'");
    let wiped = at("-s R58M00001 shell rm -rf /sdcard/* /sdcard/.[!.]*");
    assert!(
        !log.iter()
            .any(|l| l.ends_with("pm clear 'android'")
                || l.ends_with("pm clear 'com.android.shell'")),
        "{log:#?}"
    );
    // The device is started for B (waited for again) only after the wipe.
    let started = log
        .iter()
        .rposition(|l| l == "-s R58M00001 wait-for-device")
        .unwrap();
    assert!(wiped < started, "{log:#?}");
    m.shutdown().await;
}

/// A device whose wipe fails is not handed out: the new instance fails, and neither a start,
/// a reboot nor a node restart reaches the device; a reset that wipes it successfully does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_wipe_fails_is_not_handed_out() {
    let device = Device::after_tenant().with("fail-clear", "com.android.contacts\n");
    let m = device.manager("R58M00002", None).await;
    assert!(m.create(spec("tenant-c", "c")).await.is_err());
    assert_eq!(
        m.status("tenant-c").await.unwrap().state,
        InstanceState::Failed
    );
    assert!(
        device
            .state("appdata/com.android.contacts/accounts.db")
            .exists()
    );

    device.clear_log();
    assert!(m.start("tenant-c").await.is_err());
    assert!(m.reboot("tenant-c").await.is_err());
    assert!(m.run_command("tenant-c", echo("hi")).await.is_err());
    assert_eq!(device.log(), Vec::<String>::new(), "the device was used");
    m.shutdown().await;

    // A node restart re-adopts the instance (meant to run) without starting it.
    let m = device.manager("R58M00002", None).await;
    wait_for_state(
        &m,
        "tenant-c",
        InstanceState::Failed,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(device.log(), Vec::<String>::new(), "the device was used");

    std::fs::remove_file(device.state("fail-clear")).unwrap();
    assert_eq!(
        m.reset("tenant-c").await.unwrap().state,
        InstanceState::Running
    );
    assert!(!device.state("appdata/com.android.contacts").exists());
    let answered = m.run_command("tenant-c", echo("hi")).await.unwrap();
    assert_eq!(answered.stdout, "hi\n", "the wiped device is handed out");
    m.shutdown().await;
}

/// An emulator with a clean snapshot configured is wiped by loading it, not package by package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulator_is_wiped_by_its_clean_snapshot() {
    let device = Device::after_tenant().with("third", "com.tenant.old\n");
    let m = device.manager("emulator-5554", Some("clean")).await;
    let view = m.create(spec("tenant-d", "d")).await.unwrap();
    assert_eq!(view.state, InstanceState::Running);
    let log = device.log();
    assert!(
        log.iter()
            .any(|l| l == "-s emulator-5554 emu avd snapshot load clean"),
        "{log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains(" pm ")), "{log:#?}");
    assert_eq!(device.third_party(), "");
    assert_eq!(
        std::fs::read_dir(device.state("sdcard")).unwrap().count(),
        0
    );
    m.shutdown().await;
}

/// The phone lives on the device, not in the instance's data dir: a backup is refused (no
/// archive, the instance keeps running on its device), and so is a restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_backup_and_restore_are_refused() {
    let device = Device::new();
    let m = device.manager("R58M00003", None).await;
    m.create(spec("tenant-e", "e")).await.unwrap();
    let archive = device.state("e.tar.gz");
    let refused = m.backup("tenant-e", &archive).await.unwrap_err();
    assert!(
        matches!(
            refused,
            InstanceError::Runtime(RuntimeError::Unsupported(_))
        ),
        "{refused}"
    );
    assert!(!archive.exists());
    assert_eq!(
        m.status("tenant-e").await.unwrap().state,
        InstanceState::Running
    );
    std::fs::write(&archive, "").unwrap();
    let refused = m
        .restore(spec("tenant-e", "e"), &archive)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            InstanceError::Runtime(RuntimeError::Unsupported(_))
        ),
        "{refused}"
    );
    m.shutdown().await;
}
