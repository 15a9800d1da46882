//! x11 runtime end to end: real Xvfb, real bwrap, driven through the instance manager.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudphone_core::lifecycle::InstanceState;
use cloudphone_node::instances::{InstanceError, InstanceManager};
use cloudphone_node::runtime::sandbox::ProcessRecord;
use cloudphone_node::runtime::x11::{PidFile, X11Config, X11Runtime};
use cloudphone_node::runtime::{
    CaptureSource, CommandSpec, InputEvent, InstancePaths, InstanceSpec, PhoneKey, TouchAction,
};
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

const W: u32 = 360;
const H: u32 = 640;

/// Kills every process any instance under the state dir recorded, even when a test
/// panics, so no Xvfb outlives a failed test.
struct ProcessGuard {
    state_dir: PathBuf,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        for record in recorded_processes(&self.state_dir) {
            if record.is_alive() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(record.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        cloudphone_testkit::process::detach_mounts_under(&self.state_dir);
    }
}

fn recorded_processes(state_dir: &Path) -> Vec<ProcessRecord> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(state_dir.join("instances")) else {
        return out;
    };
    for entry in dir.flatten() {
        if let Some(p) = read_pids(&entry.path()) {
            out.extend(p.xvfb);
            out.extend(p.launcher);
        }
    }
    out
}

fn read_pids(root: &Path) -> Option<PidFile> {
    serde_json::from_slice(&std::fs::read(root.join("pids.json")).ok()?).ok()
}

struct Harness {
    // Field order is drop order: kill processes before the directory goes away.
    _guard: ProcessGuard,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        // Under /var/tmp rather than /tmp: the sandbox replaces /tmp anyway, so a state dir
        // there would be hidden even without the state-dir mask this should prove.
        let dir = tempfile::Builder::new()
            .prefix("cp-x11-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Self {
            _guard: ProcessGuard {
                state_dir: dir.path().to_path_buf(),
            },
            dir,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn open(&self) -> Arc<InstanceManager> {
        open_node(self.state_dir(), X11Config::default()).await
    }

    /// A fresh node over a fresh state dir with the named instances created (so running).
    async fn with_instances(ids: &[&str]) -> (Self, Arc<InstanceManager>) {
        let h = Self::new();
        let m = h.open().await;
        for id in ids {
            m.create(spec(id)).await.unwrap();
        }
        (h, m)
    }

    fn paths(&self, id: &str) -> InstancePaths {
        InstancePaths::new(self.dir.path(), id)
    }
}

/// A node on the x11 runtime over `state_dir`; displays from :140 so tests stay clear of a
/// developer's own.
async fn open_node(state_dir: PathBuf, config: X11Config) -> Arc<InstanceManager> {
    let runtime = X11Runtime::new(X11Config {
        first_display: 140,
        ..config
    })
    .unwrap();
    InstanceManager::open(state_dir, Arc::new(runtime), 8)
        .await
        .unwrap()
}

fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: id.to_owned(),
        tenant_id: "tenant-1".to_owned(),
        width: W,
        height: H,
        os: "x11".to_owned(),
    }
}

fn cmd(command: &str) -> CommandSpec {
    CommandSpec {
        command: command.to_owned(),
        timeout: Duration::from_secs(20),
        max_output_bytes: 64 * 1024,
    }
}

pub(crate) async fn wait_for_state(
    m: &InstanceManager,
    id: &str,
    want: InstanceState,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let view = m.status(id).await.unwrap();
        if view.state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {want}; last view {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn xvfb_pid(h: &Harness, id: &str) -> ProcessRecord {
    read_pids(&h.paths(id).root)
        .and_then(|p| p.xvfb)
        .expect("pids.json names the Xvfb")
}

async fn display_of(m: &InstanceManager, id: &str) -> String {
    match m.capture_source(id).await.unwrap() {
        CaptureSource::X11 {
            display,
            width,
            height,
        } => {
            assert_eq!((width, height), (W, H));
            display
        }
        other => panic!("expected an X11 capture source, got {other:?}"),
    }
}

fn screenshot(display: &str) -> Vec<u8> {
    crate::support::x11::screenshot(display, W, H)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_confines_each_instance_to_its_own_data() {
    let (h, m) = Harness::with_instances(&["a", "b"]).await;
    let (a, b) = (h.paths("a"), h.paths("b"));
    let state = h.state_dir();

    // Writes to /data land in the instance's own data dir on the host.
    let out = m
        .run_command("a", cmd("echo hello > /data/hello && echo $HOME"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "/data");
    assert_eq!(
        std::fs::read_to_string(a.data.join("hello")).unwrap(),
        "hello\n"
    );

    // Nothing outside /data is writable.
    let marker = format!("cp-escape-{}", uuid::Uuid::new_v4());
    for target in [
        format!("/tmp/../etc/{marker}"),
        format!("/root/{marker}"),
        format!("/usr/{marker}"),
        format!("/{marker}"),
    ] {
        let out = m
            .run_command("a", cmd(&format!("echo x > {target}")))
            .await
            .unwrap();
        assert_ne!(out.exit_code, 0, "writing {target} should fail: {out:?}");
        assert!(
            !Path::new(&target).exists(),
            "{target} appeared on the host"
        );
    }

    // The state dir (and so instance b's files) is not there at all, by any host path;
    // whatever a command creates at those paths stays inside its sandbox.
    std::fs::write(b.data.join("secret"), "b-secret-value").unwrap();
    let b_data = b.data.display().to_string();
    let probes = [
        format!("cat {b_data}/secret"),
        format!("ls {}/instances", state.display()),
        format!("cat {}/instances/b/instance.json", state.display()),
    ];
    for probe in probes {
        let out = m.run_command("a", cmd(&probe)).await.unwrap();
        assert_ne!(out.exit_code, 0, "{probe} should fail: {out:?}");
        assert!(
            !out.stdout.contains("b-secret-value") && !out.stdout.contains("tenant-1"),
            "{out:?}"
        );
    }
    let writes = [
        format!("mkdir -p {b_data} && echo pwned > {b_data}/pwn"),
        format!("mkdir -p {0} && echo pwned > {0}/pwn", state.display()),
        format!("mkdir -p {0} && echo pwned > {0}/pwn", a.data.display()),
    ];
    for write in writes {
        m.run_command("a", cmd(&write)).await.unwrap();
    }
    assert!(!b.data.join("pwn").exists());
    assert!(!state.join("pwn").exists());
    assert!(!a.data.join("pwn").exists());

    // No network, no capabilities, and b's display is not reachable from a.
    let out = m
        .run_command("a", cmd("cat /proc/net/dev | grep -c :"))
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "1", "only loopback: {out:?}");
    let out = m
        .run_command("a", cmd("grep CapEff /proc/self/status"))
        .await
        .unwrap();
    assert!(out.stdout.contains("0000000000000000"), "{out:?}");
    // Nor real-time scheduling, though the agent itself may use it (LimitRTPRIO=).
    let out = m
        .run_command(
            "a",
            cmd("grep 'realtime priority' /proc/self/limits; chrt -r 5 true"),
        )
        .await
        .unwrap();
    assert!(
        out.stdout.split_whitespace().filter(|w| *w == "0").count() >= 2,
        "{out:?}"
    );
    assert_ne!(out.exit_code, 0, "{out:?}");
    // Not host root either: a root-only host file outside the state dir stays unreadable.
    if nix::unistd::getuid().is_root() {
        let secret = tempfile::Builder::new()
            .prefix("cp-root-only-")
            .tempfile_in("/var/tmp")
            .unwrap();
        std::fs::write(secret.path(), "root-only-secret").unwrap();
        let mut perms = std::fs::metadata(secret.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(secret.path(), perms).unwrap();
        let probe = format!("id -u; cat {}", secret.path().display());
        let out = m.run_command("a", cmd(&probe)).await.unwrap();
        // Its own unprivileged uid (isolation.rs checks that it is unique).
        let uid = out
            .stdout
            .lines()
            .next()
            .and_then(|l| l.parse::<u32>().ok());
        assert!(uid.is_some_and(|u| u != 0), "{out:?}");
        assert!(!out.stdout.contains("root-only-secret"), "{out:?}");
        assert_ne!(out.exit_code, 0, "{out:?}");
    }
    let b_display = display_of(&m, "b").await;
    let b_socket = format!("/tmp/.X11-unix/X{}", &b_display[1..]);
    let out = m
        .run_command("a", cmd(&format!("test -e {b_socket}")))
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0, "b's X socket is visible in a");
    let out = m.run_command("a", cmd("echo $DISPLAY")).await.unwrap();
    assert_eq!(out.stdout.trim(), display_of(&m, "a").await);

    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_capped_and_killed_on_timeout() {
    let (_h, m) = Harness::with_instances(&["c"]).await;

    let out = m
        .run_command(
            "c",
            CommandSpec {
                command: "head -c 200000 /dev/zero | tr '\\0' a; echo done >&2; exit 7".into(),
                timeout: Duration::from_secs(20),
                max_output_bytes: 1000,
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 7);
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout.bytes().all(|b| b == b'a'));
    assert_eq!(out.stderr, "done\n");
    assert!(out.truncated && !out.timed_out);

    // A timeout kills the command and everything it started, even detached children.
    let tag = 600 + (std::process::id() % 300);
    let started = Instant::now();
    let out = m
        .run_command(
            "c",
            CommandSpec {
                command: format!("(setsid sleep {tag}.5 &); echo started; sleep {tag}.25"),
                timeout: Duration::from_millis(700),
                max_output_bytes: 1000,
            },
        )
        .await
        .unwrap();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, -1);
    assert_eq!(out.stdout, "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The detached child (`sleep {tag}.5`, ten minutes) is gone soon after the answer, not when
    // it would have ended.
    let pattern = format!("sleep {tag}\\.");
    cloudphone_testkit::wait_for(
        &format!("no process matching `{pattern}` left behind"),
        Duration::from_secs(5),
        || {
            let pattern = pattern.clone();
            async move {
                let left = std::process::Command::new("pgrep")
                    .args(["-f", &pattern])
                    .output()
                    .unwrap();
                left.stdout.is_empty().then_some(())
            }
        },
    )
    .await;

    // Commands need a running instance.
    m.stop("c").await.unwrap();
    match m.run_command("c", cmd("true")).await {
        Err(InstanceError::InvalidState { .. }) => {}
        other => panic!("expected InvalidState, got {other:?}"),
    }
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_moves_pixels_and_reaches_x_clients() {
    let (_h, m) = Harness::with_instances(&["d"]).await;
    let display = display_of(&m, "d").await;

    // The default launcher is xeyes, whose pupils follow the pointer.
    let touch = |action, x, y| InputEvent::Touch {
        action,
        pointer_id: 0,
        x,
        y,
    };
    m.inject_input("d", &touch(TouchAction::Move, 0.02, 0.02))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = screenshot(&display);
    m.inject_input("d", &touch(TouchAction::Move, 0.98, 0.98))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if screenshot(&display) != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moving the pointer did not change the screen"
        );
    }

    // A full-screen window of our own on top, with focus, sees the injected events.
    let (conn, screen) = RustConnection::connect(Some(&display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let win = conn.generate_id().unwrap();
    let mask = xproto::EventMask::KEY_PRESS
        | xproto::EventMask::BUTTON_PRESS
        | xproto::EventMask::BUTTON_RELEASE
        | xproto::EventMask::EXPOSURE;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        win,
        root,
        0,
        0,
        W as u16,
        H as u16,
        0,
        xproto::WindowClass::INPUT_OUTPUT,
        x11rb::COPY_FROM_PARENT,
        &xproto::CreateWindowAux::new()
            .event_mask(mask)
            .override_redirect(1),
    )
    .unwrap();
    conn.map_window(win).unwrap();
    conn.flush().unwrap();
    wait_event(&conn, |e| matches!(e, Event::Expose(_)));
    conn.set_input_focus(xproto::InputFocus::POINTER_ROOT, win, x11rb::CURRENT_TIME)
        .unwrap();
    conn.sync().unwrap();

    m.inject_input("d", &touch(TouchAction::Down, 0.5, 0.25))
        .await
        .unwrap();
    m.inject_input("d", &touch(TouchAction::Up, 0.5, 0.25))
        .await
        .unwrap();
    let press = wait_event(&conn, |e| matches!(e, Event::ButtonPress(_)));
    let Event::ButtonPress(press) = press else {
        unreachable!()
    };
    assert_eq!((press.detail, press.event_x, press.event_y), (1, 180, 160));
    wait_event(&conn, |e| matches!(e, Event::ButtonRelease(_)));

    let enter = |down| InputEvent::Key {
        code: "Enter".into(),
        down,
    };
    for event in [
        InputEvent::Text {
            text: "aZ!€".into(),
        },
        enter(true),
        enter(false),
        InputEvent::Phone {
            key: PhoneKey::Back,
        },
    ] {
        m.inject_input("d", &event).await.unwrap();
    }
    let typed: Vec<u32> = (0..6).map(|_| next_keysym(&conn)).collect();
    assert_eq!(typed, [0x61, 0x5a, 0x21, 0x0100_20ac, 0xff0d, 0xff1b]);
    // The phone's other keys, one at a time (a keysym the keymap lacks is bound to the spare
    // keycode, which the next one rebinds): Menu, XF86AudioRaiseVolume, XF86AudioLowerVolume,
    // XF86PowerOff.
    for (key, keysym) in [
        (PhoneKey::Menu, 0xff67),
        (PhoneKey::VolumeUp, 0x1008_ff13),
        (PhoneKey::VolumeDown, 0x1008_ff11),
        (PhoneKey::Power, 0x1008_ff2a),
    ] {
        m.inject_input("d", &InputEvent::Phone { key })
            .await
            .unwrap();
        assert_eq!(next_keysym(&conn), keysym, "{key:?}");
    }

    match m
        .inject_input(
            "d",
            &InputEvent::Key {
                code: "NoSuchKey".into(),
                down: true,
            },
        )
        .await
    {
        Err(InstanceError::Runtime(_)) => {}
        other => panic!("unknown key should fail, got {other:?}"),
    }
    m.shutdown().await;
}

/// Waits (bounded) for an event matching `want`, skipping others.
fn wait_event(conn: &RustConnection, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(e) = conn.poll_for_event().unwrap() {
            if want(&e) {
                return e;
            }
            continue;
        }
        assert!(Instant::now() < deadline, "event never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The keysym of the next key press, as a client would resolve it (level 1 with Shift).
fn next_keysym(conn: &RustConnection) -> u32 {
    let Event::KeyPress(press) = wait_event(
        conn,
        |e| matches!(e, Event::KeyPress(k) if !is_modifier(conn, k.detail)),
    ) else {
        unreachable!()
    };
    let shifted = u16::from(press.state) & u16::from(xproto::KeyButMask::SHIFT) != 0;
    let reply = conn
        .get_keyboard_mapping(press.detail, 1)
        .unwrap()
        .reply()
        .unwrap();
    let level = usize::from(shifted);
    let sym = reply.keysyms.get(level).copied().unwrap_or(0);
    if sym == 0 { reply.keysyms[0] } else { sym }
}

fn is_modifier(conn: &RustConnection, keycode: u8) -> bool {
    let reply = conn
        .get_keyboard_mapping(keycode, 1)
        .unwrap()
        .reply()
        .unwrap();
    (0xffe1..=0xffee).contains(&reply.keysyms[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_wipes_data_and_restarts() {
    let (h, m) = Harness::with_instances(&["e"]).await;
    let mut events = m.subscribe();
    let out = m
        .run_command("e", cmd("echo keep > /data/file && mkdir -p /data/deep/er"))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    // A link out of the data dir must not make the wipe reach the host.
    let outside = h.state_dir().join("outside");
    std::fs::write(&outside, "untouched").unwrap();
    std::os::unix::fs::symlink(&outside, h.paths("e").data.join("link")).unwrap();
    let old = xvfb_pid(&h, "e");

    let view = m.reset("e").await.unwrap();
    assert_eq!(view.state, InstanceState::Running);
    let data = h.paths("e").data;
    assert!(!data.join("file").exists() && !data.join("deep").exists());
    assert!(data.join("apps").is_dir(), "provisioned again");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "untouched");
    assert!(!old.is_alive(), "old Xvfb still running");
    assert!(xvfb_pid(&h, "e").is_alive());
    let out = m.run_command("e", cmd("ls -A /data")).await.unwrap();
    assert_eq!(out.stdout.trim(), "apps");

    let mut seen = Vec::new();
    while let Ok(v) = events.try_recv() {
        seen.push(v.state);
    }
    assert!(seen.starts_with(&[InstanceState::Resetting]), "{seen:?}");
    assert_eq!(seen.last(), Some(&InstanceState::Running), "{seen:?}");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restart_readopts_running_instances() {
    let (h, m) = Harness::with_instances(&["f", "g"]).await;
    m.stop("g").await.unwrap();
    m.run_command("f", cmd("echo persisted > /data/note"))
        .await
        .unwrap();
    let old = xvfb_pid(&h, "f");

    m.shutdown().await;
    assert!(!old.is_alive(), "shutdown left Xvfb running");
    drop(m);

    let m = h.open().await;
    wait_for_state(&m, "f", InstanceState::Running, Duration::from_secs(20)).await;
    let new = xvfb_pid(&h, "f");
    assert_ne!(new, old);
    assert!(new.is_alive());
    let out = m.run_command("f", cmd("cat /data/note")).await.unwrap();
    assert_eq!(out.stdout, "persisted\n", "{out:?}");
    // Stopped stays stopped.
    assert_eq!(m.status("g").await.unwrap().state, InstanceState::Stopped);
    assert_eq!(m.list().await.len(), 2);
    m.shutdown().await;
}

/// Env var that turns this test binary into a node that creates an instance and then
/// waits to be killed; used to leave real orphans behind.
const CRASH_CHILD: &str = "CLOUDPHONE_TEST_CRASH_CHILD_STATE_DIR";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_crash_orphans_are_killed_on_readoption() {
    if let Ok(state_dir) = std::env::var(CRASH_CHILD) {
        // Child role: a node that dies without cleaning up.
        let m = open_node(state_dir.into(), X11Config::default()).await;
        m.create(spec("h")).await.unwrap();
        println!("CHILD-READY");
        tokio::time::sleep(Duration::from_secs(120)).await;
        panic!("crash child was not killed");
    }

    let h = Harness::new();
    // The test's own name in this binary: its module path without the crate (`runtime_x11::…`).
    let this_test = format!(
        "{}::node_crash_orphans_are_killed_on_readoption",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            this_test.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD, h.state_dir())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("CHILD-READY"))
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.is_finished() {
        assert!(Instant::now() < deadline, "crash child never got ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = ready.join().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ok, "crash child exited before creating its instance");

    // The node is gone; its Xvfb and launcher are orphans now.
    let orphans = recorded_processes(&h.state_dir());
    assert_eq!(orphans.len(), 2, "{orphans:?}");
    assert!(
        orphans.iter().all(ProcessRecord::is_alive),
        "orphans should survive the crash"
    );

    let m = h.open().await;
    wait_for_state(&m, "h", InstanceState::Running, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while orphans.iter().any(ProcessRecord::is_alive) {
        assert!(
            Instant::now() < deadline,
            "orphans survived re-adoption: {orphans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = m.run_command("h", cmd("echo ok")).await.unwrap();
    assert_eq!(out.stdout, "ok\n");
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_restarts_an_instance_whose_display_died() {
    let (h, m) = Harness::with_instances(&["w"]).await;
    let mut events = m.subscribe();
    let old = xvfb_pid(&h, "w");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_failed = false;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Ok(v)) if v.state == InstanceState::Failed => {
                assert!(v.message.contains("exited"), "{v:?}");
                saw_failed = true;
            }
            Ok(Ok(v)) if v.state == InstanceState::Running && saw_failed => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "watcher did not restart the instance"
        );
    }
    let new = xvfb_pid(&h, "w");
    assert_ne!(new, old);
    assert!(new.is_alive());
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_packages_install_under_data_apps() {
    let (h, m) = Harness::with_instances(&["p"]).await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(
        src.join("app.json"),
        r#"{"name":"demo","version":"1.2","exec":"bin/run"}"#,
    )
    .unwrap();
    std::fs::write(src.join("bin/run"), "#!/bin/sh\necho demo-ran\n").unwrap();
    let good = work.path().join("demo.tar.gz");
    tar(&src, &["-czf", good.to_str().unwrap(), "app.json", "bin"]);

    m.install_app("p", &good).await.unwrap();
    let app = h.paths("p").data.join("apps/demo");
    assert!(app.join("app.json").is_file() && app.join("bin/run").is_file());
    let out = m
        .run_command("p", cmd("sh /data/apps/demo/bin/run"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "demo-ran\n");
    // Installing again replaces the previous version.
    m.install_app("p", &good).await.unwrap();

    // A member escaping with `..` is refused before anything is unpacked.
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let bad = work.path().join("bad.tar");
    tar(
        &src.join("sub"),
        &["-cPf", bad.to_str().unwrap(), "../app.json", "../bin"],
    );
    let err = m.install_app("p", &bad).await.unwrap_err();
    assert!(err.to_string().contains("unsafe member"), "{err}");
    // No manifest: refused.
    let bare = work.path().join("bare.tar");
    tar(&src, &["-cf", bare.to_str().unwrap(), "bin"]);
    assert!(m.install_app("p", &bare).await.is_err());
    // A manifest whose name is a path: refused, nothing left behind.
    std::fs::write(
        src.join("app.json"),
        r#"{"name":"../../x","version":"1","exec":"bin/run"}"#,
    )
    .unwrap();
    let evil = work.path().join("evil.tar");
    tar(&src, &["-cf", evil.to_str().unwrap(), "app.json", "bin"]);
    assert!(m.install_app("p", &evil).await.is_err());
    let apps: Vec<_> = std::fs::read_dir(h.paths("p").data.join("apps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(apps, ["demo"]);
    m.shutdown().await;
}

fn tar(cwd: &Path, args: &[&str]) {
    let status = std::process::Command::new("tar")
        .current_dir(cwd)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "tar {args:?}");
}

/// Whether `dir` is a mount point (on another device than its parent).
fn is_mount(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    matches!((dev(dir), dev(dir.parent().unwrap())), (Ok(a), Ok(b)) if a != b)
}

/// The data-dir quota volume across the instance's life: mounted at create, unmounted at
/// shutdown and mounted again when the node reopens (its data still there), archived by a
/// backup, brought back by a restore onto a fresh volume, kept when an archive larger than the
/// quota is refused, and gone (mount and image) at delete. Needs root, as CI has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_quota_volume_survives_restart_backup_and_restore() {
    let h = Harness::new();
    let open = || async {
        let section = cloudphone_node::config::SandboxSection {
            data_max_mib: 16,
            ..Default::default()
        };
        let config = X11Config {
            sandbox: section.to_runtime(&[]),
            ..X11Config::default()
        };
        open_node(h.state_dir(), config).await
    };
    let paths = h.paths("vol");
    let image = paths.root.join("data.img");
    let m = open().await;
    m.create(spec("vol")).await.unwrap();
    assert!(is_mount(&paths.data) && image.is_file());
    let out = m
        .run_command(
            "vol",
            cmd("echo kept > /data/note && df -m /data | tail -1"),
        )
        .await
        .unwrap();
    let size_mib = crate::support::second_number(&out.stdout);
    assert!((8..=16).contains(&size_mib), "a 16 MiB volume: {out:?}");

    m.shutdown().await;
    drop(m);
    assert!(!is_mount(&paths.data), "unmounted at shutdown");
    let m = open().await;
    wait_for_state(&m, "vol", InstanceState::Running, Duration::from_secs(20)).await;
    assert!(is_mount(&paths.data), "mounted again by the reopened node");
    let out = m.run_command("vol", cmd("cat /data/note")).await.unwrap();
    assert_eq!(out.stdout, "kept\n", "{out:?}");

    let backups = tempfile::tempdir().unwrap();
    let archive = backups.path().join("vol.tar.gz");
    m.backup("vol", &archive).await.unwrap();
    m.release_backed_up("vol").await.unwrap();
    assert!(!paths.root.exists(), "released with its volume");
    let view = m.restore(spec("vol"), &archive).await.unwrap();
    assert_eq!(view.state, InstanceState::Running, "{view:?}");
    assert!(is_mount(&paths.data) && image.is_file());
    let out = m.run_command("vol", cmd("cat /data/note")).await.unwrap();
    assert_eq!(out.stdout, "kept\n", "{out:?}");

    // 32 MiB of zeros: a tiny archive that unpacks past the 16 MiB quota.
    let big_src = backups.path().join("big");
    std::fs::create_dir(&big_src).unwrap();
    std::fs::write(big_src.join("zeros"), vec![0u8; 32 << 20]).unwrap();
    let big = backups.path().join("big.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(&big)
        .arg("-C")
        .arg(&big_src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let view = m.restore(spec("vol"), &big).await.unwrap();
    assert_eq!(view.state, InstanceState::Failed, "{view:?}");
    // The tar crate names the member it could not write, not the ENOSPC under it.
    assert!(view.message.contains("unpacking"), "{view:?}");
    m.start("vol").await.unwrap();
    let out = m.run_command("vol", cmd("cat /data/note")).await.unwrap();
    assert_eq!(out.stdout, "kept\n", "the old data stays: {out:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&paths.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".restore"))
        .collect();
    assert_eq!(
        leftovers,
        Vec::<String>::new(),
        "the staging volume is gone"
    );

    assert!(m.delete("vol").await.unwrap());
    assert!(!paths.root.exists() && !is_mount(&paths.data));
    m.shutdown().await;
}
