//! Sandboxes as real tenants, attacked from inside through the node's own gRPC API: each
//! instance runs as its own uid, cannot read the node's config or the backup storage, and its
//! fork bomb, 2 GiB `/tmp` write, oversized file, flood of small files and memory hog each hit
//! their own limit while a neighbour keeps streaming; a host binary in a private `/tmp` dir runs through
//! `[sandbox] ro_binds`. Real in-process nodes, bwrap, Xvfb, cgroups (run as root, as CI is).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudphone_node::config::NodeConfig;
use cloudphone_proto::node_v1 as pb;
use cloudphone_signaling::EncodingType;

use crate::support::streaming::{Node, RustViewer};

const W: u32 = 360;
const H: u32 = 640;
/// `pids.max` of the limits test's instances.
const PIDS: u64 = 200;
/// The data-dir quota of the quota test's instances, MiB.
const QUOTA_MIB: u64 = 32;

type Client = pb::node_agent_client::NodeAgentClient<tonic::transport::Channel>;

/// Runs `command` in `instance` through the node's gRPC API.
async fn run_on(
    grpc: &mut Client,
    instance: &str,
    command: &str,
    timeout_ms: u32,
) -> pb::CommandResult {
    grpc.run_command(pb::RunCommandRequest {
        instance_id: instance.into(),
        command: command.into(),
        timeout_ms,
        max_output_bytes: 64 * 1024,
    })
    .await
    .unwrap()
    .into_inner()
}

/// [`run_on`] the test node, with a 10 s timeout.
async fn run(node: &mut Node, instance: &str, command: &str) -> pb::CommandResult {
    run_on(&mut node.grpc, instance, command, 10_000).await
}

/// Runs `command` in `instance`, which must print just `ok`.
async fn says_ok(node: &mut Node, instance: &str, command: &str) {
    let out = run(node, instance, command).await;
    assert_eq!(out.stdout, "ok\n", "{command}: {out:?}");
}

/// A temp dir under `parent` with `mode`.
fn temp_dir(prefix: &str, parent: &str, mode: u32) -> tempfile::TempDir {
    assert!(is_root(), "the isolation tests need root, as CI has");
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

fn is_root() -> bool {
    nix::unistd::getuid().is_root()
}

/// An in-process x11 node configured by `tweak`; the sandbox's uids, cgroups and mounts need
/// root, as CI has.
async fn root_x11_node(tweak: impl FnOnce(&mut NodeConfig)) -> Node {
    assert!(is_root(), "the isolation tests need root, as CI has");
    Node::start("x11", tweak).await
}

/// A world-readable file, so only the sandbox (not file permissions) can keep it out.
fn world_readable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_has_its_own_uid_and_sees_no_node_secrets() {
    // The node's config and backup storage where a careless operator might leave them: in a
    // world-readable place the sandbox's read-only root would otherwise show.
    let secrets = temp_dir("cp-iso-secrets-", "/var/tmp", 0o755);
    let config_file = secrets.path().join("node.toml");
    world_readable(
        &config_file,
        "[control]\njoin_token = \"enroll-secret-42\"\n",
    );
    // `NodeConfig::load` hides the file it read; the test node is configured in code, so
    // the path is checked to be hidden the way load records it.
    let loaded = NodeConfig::load(Some(&config_file), |_| None).unwrap();
    assert!(
        loaded.sandbox.hidden_paths.contains(&config_file),
        "{:?}",
        loaded.sandbox.hidden_paths
    );
    let backups = secrets.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    std::fs::set_permissions(&backups, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut node = root_x11_node(|c| {
        c.sandbox.hidden_paths = loaded.sandbox.hidden_paths.clone();
        c.sandbox.hidden_paths.push(backups.clone());
    })
    .await;
    node.create_instance("a", W, H).await;
    node.create_instance("b", W, H).await;
    node.create_instance("victim", W, H).await;
    // A real backup in the backup storage, of an instance holding a secret.
    let out = run(&mut node, "victim", "echo victim-secret-77 > /data/secret").await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let archive = backups.join("victim.tar.gz");
    node.grpc
        .backup_instance(pb::BackupInstanceRequest {
            instance_id: "victim".into(),
            destination_uri: format!("file://{}", archive.display()),
        })
        .await
        .unwrap();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(archive.metadata().unwrap().len() > 0);

    // Own uids: not the node's, not each other's, from the configured range, recorded.
    let defaults = NodeConfig::default().sandbox;
    let range = defaults.uid_base..defaults.uid_base + defaults.uid_count;
    let mut uids = Vec::new();
    for id in ["a", "b"] {
        let out = run(&mut node, id, "id -u; id -g; stat -c %u /data").await;
        assert_eq!(out.exit_code, 0, "{out:?}");
        let ids: Vec<u32> = out
            .stdout
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 3, "{out:?}");
        assert_eq!(ids[0], ids[1], "gid follows uid: {out:?}");
        assert_eq!(
            ids[0], ids[2],
            "the data dir belongs to the instance: {out:?}"
        );
        assert_ne!(ids[0], nix::unistd::getuid().as_raw());
        assert!(range.contains(&ids[0]), "{} outside {range:?}", ids[0]);
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                node.dir
                    .path()
                    .join(format!("instances/{id}/instance.json")),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(record["sandbox_uid"], ids[0], "{record}");
        uids.push(ids[0]);
    }
    assert_ne!(uids[0], uids[1], "two instances share a uid");
    // Xvfb runs as the instance too.
    let pids: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.dir.path().join("instances/a/pids.json")).unwrap(),
    )
    .unwrap();
    let xvfb = pids["xvfb"]["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{xvfb}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains(&uids[0].to_string()), "{uid_line}");

    // The config and the backups: not readable, not even there.
    for probe in [
        format!("cat {}", config_file.display()),
        format!("ls -A {}", backups.display()),
        format!("cat {}", archive.display()),
        format!("tar -tzf {}", archive.display()),
        format!(
            "grep -rl enroll-secret-42 {} 2>/dev/null",
            secrets.path().display()
        ),
    ] {
        let out = run(&mut node, "a", &probe).await;
        assert!(
            !out.stdout.contains("enroll-secret")
                && !out.stdout.contains("victim")
                && !out.stdout.contains("secret"),
            "{probe}: {out:?}"
        );
    }
    let out = run(&mut node, "a", &format!("cat {}", archive.display())).await;
    assert_ne!(out.exit_code, 0, "{out:?}");
    let out = run(&mut node, "a", &format!("ls -A {}", backups.display())).await;
    assert_eq!(
        out.stdout.trim(),
        "",
        "backup storage is empty inside: {out:?}"
    );

    // No nested user namespaces, no mounts: the seccomp deny-list and --disable-userns.
    let out = run(&mut node, "a", "unshare -U true; echo rc=$?").await;
    assert!(out.stdout.contains("rc=1"), "{out:?}");
    let out = run(
        &mut node,
        "a",
        "python3 -c 'import ctypes,os; l=ctypes.CDLL(None,use_errno=True); r=l.syscall(272,0x10000000); print(r, ctypes.get_errno())'").await;
    // unshare(CLONE_NEWUSER) via the raw syscall number: EPERM (1) from the filter.
    assert_eq!(out.stdout.trim(), "-1 1", "{out:?}");
    node.shutdown().await;
}

/// The MiB `du -m` printed on a command's last line.
fn du_mib(out: &pb::CommandResult) -> u64 {
    let last = out.stdout.lines().last().unwrap_or_default();
    let mib = last.split_whitespace().next().unwrap_or_default();
    mib.parse()
        .unwrap_or_else(|_| panic!("no du output: {out:?}"))
}

/// Frames the viewer decodes in `window`.
async fn frames_in(viewer: &mut RustViewer, window: Duration) -> u64 {
    let before = viewer.counters.frames.load(Ordering::Relaxed);
    assert!(viewer.pump_for(window).await.is_none());
    viewer.counters.frames.load(Ordering::Relaxed) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_while_a_neighbour_keeps_streaming() {
    let mut node = root_x11_node(|c| {
        // Caps below the SKU's, so the attacks are cheap for a shared test host; the
        // mechanism is the one the SKU's own sizes go through.
        c.sandbox.pids_max = PIDS;
        c.sandbox.memory_max_mib = 256;
        c.sandbox.cpu_max_millis = 500;
        c.sandbox.file_size_max_mib = 100;
        c.sandbox.tmp_size_mib = 64;
    })
    .await;
    node.create_instance("attacker", W, H).await;
    node.create_instance("neighbour", W, H).await;
    node.open_session("neighbour", "dev-n", "token-n").await;
    let mut viewer = node
        .viewer("dev-n", "token-n", EncodingType::H264)
        .await
        .unwrap();
    viewer.wait_frames(10, Duration::from_secs(30)).await;
    let window = Duration::from_secs(3);
    let baseline = frames_in(&mut viewer, window).await;
    assert!(baseline >= 30, "baseline {baseline} frames in {window:?}");

    // The attacks run one after another in the attacker while the neighbour streams.
    let mut grpc = node.grpc.clone();
    let attacks = tokio::spawn(async move {
        let mut results = Vec::new();
        for script in [
            // Fork bomb: counts how many it got before fork failed (dash exits then).
            "n=0; while :; do sleep 60 & n=$((n+1)); echo $n > /data/forks; done",
            // The classic one, for good measure; killed by the timeout.
            "b() { b | b & }; b; sleep 4",
            // 2 GiB into /tmp.
            "head -c 2G /dev/zero > /tmp/big; echo rc=$?; du -m /tmp/big",
            // A file over the data-dir file limit.
            "head -c 200M /dev/zero > /data/big; echo rc=$?; du -m /data/big; rm -f /data/big",
            // Memory hog: 1 GiB touched.
            "python3 -c 'x = bytearray(1 << 30); print(\"survived\", len(x))'; echo rc=$?",
        ] {
            let out = run_on(&mut grpc, "attacker", script, 8_000).await;
            results.push((script, out));
        }
        results
    });
    let started = Instant::now();
    let mut during = 0;
    while !attacks.is_finished() {
        during += frames_in(&mut viewer, Duration::from_millis(500)).await;
    }
    let attack_time = started.elapsed();
    let results = attacks.await.unwrap();

    // Each attack met its own limit.
    let (_, bomb) = &results[0];
    let forks: u64 = run(&mut node, "attacker", "cat /data/forks")
        .await
        .stdout
        .trim()
        .parse()
        .unwrap();
    assert!(
        forks < PIDS,
        "{forks} processes in a pids.max {PIDS} group: {bomb:?}"
    );
    assert!(forks > PIDS / 2, "only {forks} forks: {bomb:?}");
    assert!(bomb.stderr.contains("fork"), "{bomb:?}");
    let (_, tmp) = &results[2];
    assert!(tmp.stderr.contains("No space left"), "{tmp:?}");
    let tmp_mib = du_mib(tmp);
    assert!(tmp_mib <= 64 && !tmp.stdout.contains("rc=0"), "{tmp:?}");
    let (_, file) = &results[3];
    let file_mib = du_mib(file);
    assert!(file_mib <= 100 && !file.stdout.contains("rc=0"), "{file:?}");
    assert!(file.stderr.contains("File size limit"), "{file:?}");
    let (_, hog) = &results[4];
    assert!(!hog.stdout.contains("survived"), "{hog:?}");
    assert!(
        hog.stdout.contains("rc=137"),
        "killed by the OOM killer: {hog:?}"
    );

    // The attacker is still usable afterwards, and the neighbour kept its frame rate.
    let out = run(&mut node, "attacker", "echo alive").await;
    assert_eq!(out.stdout, "alive\n", "{out:?}");
    let expected = baseline as f64 / window.as_secs_f64() * attack_time.as_secs_f64();
    assert!(
        during as f64 >= 0.75 * expected,
        "neighbour decoded {during} frames in {attack_time:?} under attack, {baseline} in {window:?} before"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_binds_run_a_host_binary_from_a_private_tmp_dir() {
    // Where a checkout under /tmp keeps its binaries: a private temp dir that the sandbox
    // never sees.
    let bin_dir = temp_dir("cp-iso-bin-", "/tmp", 0o700);
    let probe: PathBuf = bin_dir.path().join("probe");
    std::fs::copy("/usr/bin/id", &probe).unwrap();
    let bound = format!("{}/probe", cloudphone_node::runtime::sandbox::RO_BIN_DIR);
    let mut node = root_x11_node(|c| {
        c.sandbox.ro_binds.insert("probe".into(), probe.clone());
        c.sandbox
            .ro_binds
            .insert("xeyes".into(), "/usr/bin/xeyes".into());
        c.x11.launcher = format!(
            "exec {}/xeyes",
            cloudphone_node::runtime::sandbox::RO_BIN_DIR
        );
    })
    .await;
    node.create_instance("r", W, H).await;
    let out = run(
        &mut node,
        "r",
        &format!("{bound} -u; ls {}", probe.display()),
    )
    .await;
    let uid: u32 = out.stdout.lines().next().unwrap().trim().parse().unwrap();
    assert_ne!(uid, 0, "{out:?}");
    assert!(
        out.stderr.contains("No such file"),
        "the private dir stays hidden: {out:?}"
    );
    // Read-only, and the host file is untouched.
    let out = run(
        &mut node,
        "r",
        &format!(
            "echo x > {0}/probe; echo x >> {0}/probe; echo rc=$?",
            cloudphone_node::runtime::sandbox::RO_BIN_DIR
        ),
    )
    .await;
    assert!(
        out.stdout.contains("rc=") && !out.stdout.contains("rc=0"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(&probe).unwrap(),
        std::fs::read("/usr/bin/id").unwrap()
    );
    node.shutdown().await;
}

/// Bytes the host's disk holds for `path` (its allocated blocks, not its apparent size).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo`.
fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

/// `[sandbox] data_max_mib`: many files, each far below the per-file limit, stop at the
/// data-dir quota with ENOSPC; the host gives the instance no more disk than the quota; a
/// neighbour still writes; deleting the instance takes its volume (mount and image) with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_stop_at_the_data_quota() {
    let mut node = root_x11_node(|c| {
        c.sandbox.data_max_mib = QUOTA_MIB;
        // Each file is 64 KiB: the per-file limit cannot be what stops them.
        c.sandbox.file_size_max_mib = 1;
    })
    .await;
    node.create_instance("quota-filler", W, H).await;
    node.create_instance("quota-neighbour", W, H).await;
    let instances = node.dir.path().join("instances");
    let image = instances.join("quota-filler").join("data.img");
    assert_eq!(
        mounts_below(&instances.join("quota-filler")),
        [instances
            .join("quota-filler")
            .join("data")
            .display()
            .to_string()],
        "the data dir is the instance's own volume"
    );

    // Up to 4096 files of 64 KiB (256 MiB, eight times the quota) from one process.
    let fill = r#"python3 -c '
n = 0
try:
    while n < 4096:
        with open("/data/f%d" % n, "wb") as f:
            f.write(b"x" * 65536)
        n += 1
    print("wrote", n)
except OSError as e:
    print("stopped", n, e)
'; du -sm /data"#;
    let out = run_on(&mut node.grpc, "quota-filler", fill, 60_000).await;
    assert!(
        out.stdout.contains("stopped") && out.stdout.contains("No space left"),
        "{out:?}"
    );
    let written = crate::support::second_number(&out.stdout);
    assert!(
        written > 64 && written * 64 <= QUOTA_MIB * 1024,
        "{written} files of 64 KiB under a {QUOTA_MIB} MiB quota: {out:?}"
    );
    assert!(du_mib(&out) <= QUOTA_MIB, "{out:?}");
    // What the host's disk gave the instance: the image's blocks, never past the quota.
    assert!(
        allocated(&image) <= QUOTA_MIB << 20,
        "image holds {} bytes of host disk",
        allocated(&image)
    );

    // The neighbour's quota is its own: 2 MiB more goes in there.
    let writes =
        "for i in 1 2 3 4; do head -c 512K /dev/zero > /data/ok$i || exit 1; done; echo ok";
    says_ok(&mut node, "quota-neighbour", writes).await;
    // And the full instance works again once it frees space.
    says_ok(
        &mut node,
        "quota-filler",
        "rm /data/f1 && echo x > /data/y && echo ok",
    )
    .await;

    node.grpc
        .delete_instance(pb::InstanceRef {
            instance_id: "quota-filler".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        mounts_below(&instances.join("quota-filler")),
        Vec::<String>::new()
    );
    assert!(!image.exists() && !instances.join("quota-filler").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&instances)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers,
        ["quota-neighbour"],
        "nothing of the deleted instance remains"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_host_never_share_an_instance_cgroup() {
    // Two nodes in one parent cgroup (as this suite's nodes are, or a demo beside a system
    // node), each with an instance of the same id: removing one node's instance must not
    // kill the other's (its cgroup is emptied by killing every member).
    let mut a = root_x11_node(|_| {}).await;
    let mut b = root_x11_node(|_| {}).await;
    a.create_instance("twin", W, H).await;
    b.create_instance("twin", W, H).await;
    let pids = |node: &Node| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(node.dir.path().join("instances/twin/pids.json")).unwrap(),
        )
        .unwrap()
    };
    let b_xvfb = pids(&b)["xvfb"]["pid"].as_i64().expect("b's Xvfb pid");
    a.grpc
        .delete_instance(pb::InstanceRef {
            instance_id: "twin".into(),
        })
        .await
        .unwrap();
    // Deleting returns once A's group is empty and removed, so a wrong kill has landed by
    // now: B's Xvfb would be gone or a zombie.
    let stat = std::fs::read_to_string(format!("/proc/{b_xvfb}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
    assert!(
        matches!(state, Some(s) if s != "Z" && s != "X"),
        "deleting node A's twin killed node B's Xvfb: {stat:?}"
    );
    let status = b
        .grpc
        .get_instance_status(pb::InstanceRef {
            instance_id: "twin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.state,
        pb::InstanceState::Running as i32,
        "{status:?}"
    );
}
