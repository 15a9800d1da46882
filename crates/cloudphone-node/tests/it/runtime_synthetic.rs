//! Synthetic runtime and the instance manager's lifecycle rules, with real bwrap sandboxes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloudphone_core::lifecycle::InstanceState;
use cloudphone_node::instances::{InstanceError, InstanceManager};
use cloudphone_node::runtime::synthetic::SyntheticRuntime;
use cloudphone_node::runtime::{
    CaptureSource, CommandSpec, InputEvent, InstancePaths, InstanceSpec, PhoneKey, Runtime,
};

fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: id.to_owned(),
        tenant_id: "tenant-s".to_owned(),
        width: 480,
        height: 800,
        os: "synthetic".to_owned(),
    }
}

fn cmd(command: &str) -> CommandSpec {
    CommandSpec {
        command: command.to_owned(),
        timeout: Duration::from_secs(20),
        max_output_bytes: 64 * 1024,
    }
}

fn runtime() -> Arc<SyntheticRuntime> {
    Arc::new(SyntheticRuntime::new(PathBuf::from("/usr/bin/bwrap")).unwrap())
}

async fn open(
    dir: &tempfile::TempDir,
    rt: Arc<SyntheticRuntime>,
    capacity: usize,
) -> Arc<InstanceManager> {
    InstanceManager::open(dir.path().to_path_buf(), rt, capacity)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_commands_and_input() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let m = open(&dir, Arc::clone(&rt), 4).await;
    assert_eq!(m.runtime_name(), "synthetic");

    let view = m.create(spec("s1")).await.unwrap();
    assert_eq!(view.state, InstanceState::Running);
    assert!(view.changed_at_unix_ms > 0);
    let paths = InstancePaths::new(dir.path(), "s1");
    assert!(rt.is_running(&spec("s1"), &paths).await);

    let out = m
        .run_command(
            "s1",
            cmd("echo hi > /data/f; echo \"[$DISPLAY]\"; cat /data/f"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout, "[]\nhi\n", "no display on synthetic");
    assert_eq!(
        std::fs::read_to_string(paths.data.join("f")).unwrap(),
        "hi\n"
    );
    let out = m
        .run_command("s1", cmd("echo x > /etc/escape"))
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0);
    assert!(!std::path::Path::new("/etc/escape").exists());

    m.inject_input(
        "s1",
        &InputEvent::Phone {
            key: PhoneKey::Home,
        },
    )
    .await
    .unwrap();
    m.inject_input("s1", &InputEvent::Text { text: "abc".into() })
        .await
        .unwrap();
    assert_eq!(rt.input_count("s1"), 2);
    assert_eq!(
        m.capture_source("s1").await.unwrap(),
        CaptureSource::TestPattern {
            width: 480,
            height: 800
        }
    );

    let view = m.stop("s1").await.unwrap();
    assert_eq!(view.state, InstanceState::Stopped);
    assert!(!rt.is_running(&spec("s1"), &paths).await);
    // Idempotent.
    assert_eq!(m.stop("s1").await.unwrap().state, InstanceState::Stopped);
    for result in [
        m.run_command("s1", cmd("true")).await.map(|_| ()),
        m.inject_input("s1", &InputEvent::Text { text: "x".into() })
            .await,
        m.capture_source("s1").await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(InstanceError::InvalidState { .. })),
            "{result:?}"
        );
    }
    assert!(matches!(
        m.reboot("s1").await,
        Err(InstanceError::InvalidState { .. })
    ));

    assert_eq!(m.start("s1").await.unwrap().state, InstanceState::Running);
    assert_eq!(
        m.start("s1").await.unwrap().state,
        InstanceState::Running,
        "start is idempotent"
    );
    assert_eq!(m.reboot("s1").await.unwrap().state, InstanceState::Running);
    let out = m.run_command("s1", cmd("cat /data/f")).await.unwrap();
    assert_eq!(out.stdout, "hi\n", "stop/start/reboot keep data");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_capacity_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir, runtime(), 2).await;
    let mut events = m.subscribe();

    m.create(spec("a")).await.unwrap();
    // Same spec again: a safe retry.
    assert_eq!(
        m.create(spec("a")).await.unwrap().state,
        InstanceState::Running
    );
    let other = InstanceSpec {
        width: 720,
        ..spec("a")
    };
    assert!(matches!(
        m.create(other).await,
        Err(InstanceError::AlreadyExists(_))
    ));
    m.create(spec("b")).await.unwrap();
    assert!(matches!(
        m.create(spec("c")).await,
        Err(InstanceError::NoCapacity)
    ));
    assert!(matches!(
        m.create(spec("../evil")).await,
        Err(InstanceError::InvalidSpec(_))
    ));
    assert!(matches!(
        m.status("zzz").await,
        Err(InstanceError::NotFound(_))
    ));
    assert!(matches!(
        m.start("zzz").await,
        Err(InstanceError::NotFound(_))
    ));

    let ids: Vec<_> = m
        .list()
        .await
        .into_iter()
        .map(|v| v.spec.instance_id)
        .collect();
    assert_eq!(ids, ["a", "b"]);

    let root = InstancePaths::new(dir.path(), "a").root;
    assert!(root.join("instance.json").is_file());
    assert!(m.delete("a").await.unwrap());
    assert!(!root.exists());
    assert!(!m.delete("a").await.unwrap(), "delete is idempotent");
    assert!(matches!(
        m.status("a").await,
        Err(InstanceError::NotFound(_))
    ));
    // The freed slot can be used again.
    m.create(spec("c")).await.unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("instances"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    let mut states = Vec::new();
    while let Ok(v) = events.try_recv() {
        states.push((v.spec.instance_id, v.state));
    }
    assert!(
        states.contains(&("a".into(), InstanceState::Starting)),
        "{states:?}"
    );
    assert!(
        states.contains(&("a".into(), InstanceState::Running)),
        "{states:?}"
    );
    assert!(
        states.contains(&("a".into(), InstanceState::Stopped)),
        "{states:?}"
    );
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_wipes_and_restart_restores_desired_state() {
    let dir = tempfile::tempdir().unwrap();
    let m = open(&dir, runtime(), 4).await;
    m.create(spec("r")).await.unwrap();
    m.create(spec("q")).await.unwrap();
    m.run_command("r", cmd("echo 1 > /data/one")).await.unwrap();
    m.run_command("q", cmd("echo 2 > /data/two")).await.unwrap();
    m.stop("q").await.unwrap();

    // Reset works from stopped too, and leaves the instance running.
    let view = m.reset("q").await.unwrap();
    assert_eq!(view.state, InstanceState::Running);
    let q = InstancePaths::new(dir.path(), "q");
    assert!(!q.data.join("two").exists());
    assert!(q.data.join("apps").is_dir());
    m.stop("q").await.unwrap();

    m.shutdown().await;
    drop(m);
    let m = open(&dir, runtime(), 4).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.status("r").await.unwrap().state != InstanceState::Running {
        assert!(std::time::Instant::now() < deadline, "r not re-adopted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.status("q").await.unwrap().state, InstanceState::Stopped);
    let out = m.run_command("r", cmd("cat /data/one")).await.unwrap();
    assert_eq!(out.stdout, "1\n");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_instances_are_left_alone_and_interrupted_deletes_finished() {
    let dir = tempfile::tempdir().unwrap();
    let instances = dir.path().join("instances");
    std::fs::create_dir_all(instances.join("broken")).unwrap();
    std::fs::write(instances.join("broken/instance.json"), "{not json").unwrap();
    std::fs::create_dir_all(instances.join(".deleting-x-1/data")).unwrap();
    let m = open(&dir, runtime(), 4).await;
    assert!(m.list().await.is_empty());
    assert!(
        instances.join("broken/instance.json").exists(),
        "never destroy what we cannot read"
    );
    assert!(!instances.join(".deleting-x-1").exists());
    m.shutdown().await;
}
