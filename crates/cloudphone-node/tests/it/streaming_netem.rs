//! Congestion: the node runs in its own network namespace behind a veth pair; a `tbf` limit of
//! 1 Mbit/s on its egress makes the sender adapt below the limit (loss falls back), and lifting
//! the limit lets it climb back above it. The viewer (webrtc-rs) runs in the test's namespace;
//! the node is the real binary started with `ip netns exec` (so the test needs root, as CI has).
//! `RUST_LOG=cloudphone_node=debug` puts each receiver report and the controller's decision in
//! the node's log, which is printed when the test fails.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudphone_proto::node_v1 as pb;
use cloudphone_proto::node_v1::node_agent_client::NodeAgentClient;
use cloudphone_signaling::{Definition, EncodingType};
use sha2::Digest;

use crate::support::streaming::{RustViewer, hello};

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with one veth to the test's namespace; removed on drop.
struct Netns {
    name: String,
    veth_host: String,
    veth_ns: String,
    node_ip: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id() % 250 + 1;
        let name = format!("cpnetem{id}");
        let (veth_host, veth_ns) = (format!("cpv{id}h"), format!("cpv{id}n"));
        // Leftovers of a killed earlier run with the same id.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &veth_host])
            .output();
        run(&["ip", "netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            veth_host: veth_host.clone(),
            veth_ns: veth_ns.clone(),
            node_ip: format!("10.213.{id}.2"),
        };
        run(&[
            "ip", "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns,
        ]);
        run(&["ip", "link", "set", &veth_ns, "netns", &name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.213.{id}.1/24"),
            "dev",
            &veth_host,
        ]);
        run(&["ip", "link", "set", &veth_host, "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.node_ip),
            "dev",
            &veth_ns,
        ]);
        ns.exec(&["ip", "link", "set", &veth_ns, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Prints the node's log if the test panics.
struct LogOnPanic(std::path::PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- node log (last 200 lines) ---");
            for line in &lines[lines.len().saturating_sub(200)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Received rate (kbit/s) and loss fraction over `window`.
/// One second of a trace: (seconds since the trace began, kbit/s, loss fraction).
type Sample = (f64, f64, f64);

/// Samples the viewer once a second for at most `limit`, until `done` holds for the trace so
/// far: the trace.
async fn trace_until(
    viewer: &mut RustViewer,
    limit: Duration,
    mut done: impl FnMut(&[Sample]) -> bool,
) -> Vec<Sample> {
    let started = Instant::now();
    let mut trace = Vec::new();
    while started.elapsed() < limit {
        let (kbps, loss) = sample(viewer, Duration::from_secs(1)).await;
        trace.push((started.elapsed().as_secs_f64(), kbps, loss));
        if done(&trace) {
            break;
        }
    }
    trace
}

async fn sample(viewer: &mut RustViewer, window: Duration) -> (f64, f64) {
    let c = &viewer.counters;
    let (p0, e0) = (
        c.rtp_packets.load(Ordering::Relaxed),
        c.rtp_expected.load(Ordering::Relaxed),
    );
    let kbps = viewer.measure_kbps(window).await;
    let c = &viewer.counters;
    let received = c.rtp_packets.load(Ordering::Relaxed) - p0;
    let expected = c.rtp_expected.load(Ordering::Relaxed) - e0;
    let loss = if expected == 0 {
        0.0
    } else {
        1.0 - (received.min(expected) as f64 / expected as f64)
    };
    (kbps, loss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_adapts_below_a_1mbit_bottleneck_and_recovers() {
    let ns = Netns::new();
    let dir = tempfile::Builder::new()
        .prefix("cp-netem-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"netem\"\nruntime = \"synthetic\"\nstate_dir = \"{state}\"\n\
             [grpc]\nlisten = \"{ip}:50051\"\nplaintext = true\n[http]\nlisten = \"{ip}:8090\"\n\
             [webrtc]\nsynthetic_pattern = \"zone-plate kx2=20 ky2=20 kt=1\"\n",
            state = dir.path().join("state").display(),
            ip = ns.node_ip
        ),
    )
    .unwrap();
    let node_bin = cloudphone_testkit::process::binary("cloudphone-node");
    let node_bin = node_bin.to_string_lossy().into_owned();
    let config_arg = config.to_string_lossy().into_owned();
    let _node = cloudphone_testkit::process::Daemon::spawn(
        std::path::Path::new("/usr/sbin/ip"),
        &[
            "netns",
            "exec",
            &ns.name,
            &node_bin,
            "--config",
            &config_arg,
        ],
        &dir.path().join("node.log"),
    );
    let _log = LogOnPanic(dir.path().join("node.log"));
    let grpc_url = format!("http://{}:50051", ns.node_ip);
    let mut grpc =
        cloudphone_testkit::wait_for("node in its namespace", Duration::from_secs(30), || {
            let url = grpc_url.clone();
            async move { NodeAgentClient::connect(url).await.ok() }
        })
        .await;
    grpc.create_instance(pb::CreateInstanceRequest {
        instance_id: "n1".into(),
        tenant_id: "t".into(),
        runtime: String::new(),
        width: 360,
        height: 640,
        os: String::new(),
    })
    .await
    .unwrap();
    grpc.start_session(pb::StartSessionRequest {
        instance_id: "n1".into(),
        device_token_sha256: hex::encode(sha2::Sha256::digest(b"tok")),
        expires_at_unix_ms: cloudphone_node::unix_ms() + 600_000,
        user_id: String::new(),
        tenant_id: "t".into(),
        device_id: "dev-n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ws = format!("ws://{}:8090/v1/signaling", ns.node_ip);
    // The viewer's candidates on the link to the node's namespace only.
    let mut viewer = RustViewer::connect_on(
        &ws,
        hello("dev-n", "tok", EncodingType::H264, Definition::P540),
        false,
        vec![ns.veth_host.clone()],
    )
    .await
    .unwrap();
    viewer.wait_frames(10, Duration::from_secs(20)).await;
    let (free, free_loss) = sample(&mut viewer, Duration::from_secs(3)).await;
    eprintln!(
        "unlimited: {free:.0} kbit/s, loss {:.1} %",
        free_loss * 100.0
    );
    assert!(
        free > 1200.0,
        "the stream starts above the coming limit: {free:.0}"
    );

    // 1 Mbit/s with a 100 ms queue on the node's way out.
    ns.exec(&[
        "tc",
        "qdisc",
        "add",
        "dev",
        &ns.veth_ns,
        "root",
        "tbf",
        "rate",
        "1mbit",
        "burst",
        "10kb",
        "latency",
        "100ms",
    ]);
    // Adapted: under the limit with loss back near zero, twice in a row.
    let calm = |s: &Sample| s.1 < 1000.0 && s.2 < 0.02;
    let trace = trace_until(&mut viewer, Duration::from_secs(20), |t| {
        t.len() >= 2 && t[t.len() - 2..].iter().all(calm)
    })
    .await;
    eprintln!("limited (t s, kbit/s, loss): {trace:.2?}");
    // Since the first sample of the calm run the trace ends with.
    let calm_from = trace.iter().rposition(|s| !calm(s)).map_or(0, |i| i + 1);
    let adapted = trace
        .get(calm_from)
        .map(|s| Duration::from_secs_f64(s.0))
        .expect("loss settles under the 1 Mbit/s limit within 20 s");
    // Held: over the next 8 s the controller keeps probing around capacity, so single
    // seconds may lose a few percent; averaged, the stream fits the link.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(sample(&mut viewer, Duration::from_secs(1)).await);
    }
    let mean_kbps = held.iter().map(|h| h.0).sum::<f64>() / held.len() as f64;
    let mean_loss = held.iter().map(|h| h.1).sum::<f64>() / held.len() as f64;
    eprintln!(
        "adapted after {adapted:?}; next 8 s (kbit/s, loss): {held:.2?}; mean {mean_kbps:.0} kbit/s, loss {:.1} %",
        mean_loss * 100.0
    );
    assert!(
        mean_loss < 0.05 && mean_kbps > 300.0 && mean_kbps < 1000.0,
        "{mean_kbps:.0} kbit/s, loss {mean_loss:.3}"
    );

    ns.exec(&["tc", "qdisc", "del", "dev", &ns.veth_ns, "root"]);
    let recovered = |t: &[Sample]| t.last().is_some_and(|s| s.1 > 1200.0);
    let trace = trace_until(&mut viewer, Duration::from_secs(30), recovered).await;
    eprintln!("lifted (t s, kbit/s, loss): {trace:.2?}");
    let recovered = recovered(&trace)
        .then(|| Duration::from_secs_f64(trace[trace.len() - 1].0))
        .expect("the rate climbs back above 1.2 Mbit/s within 30 s");
    eprintln!("recovered above 1200 kbit/s after {recovered:?}");
    drop(viewer);
}
