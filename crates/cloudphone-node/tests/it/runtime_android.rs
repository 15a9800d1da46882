//! Android runtime against a real device. Runs only when `adb devices` lists one: Android
//! hardware or an emulator is not something every host has, so without one the test says
//! why and returns.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloudphone_core::lifecycle::InstanceState;
use cloudphone_node::instances::InstanceManager;
use cloudphone_node::runtime::android::{AndroidConfig, AndroidRuntime};
use cloudphone_node::runtime::{CaptureSource, CommandSpec, InputEvent, InstanceSpec, PhoneKey};

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
