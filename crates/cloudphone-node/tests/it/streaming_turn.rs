//! Relay-only ICE through a real coturn (`use-auth-secret`) with the TURN REST credentials the
//! node hands out: the viewer may use nothing but relay candidates, and frames still decode.

use std::process::Stdio;
use std::time::Duration;

use cloudphone_signaling::NodeMessage;

use crate::support::streaming::Node;

/// coturn on a loopback port, killed on drop.
struct Coturn {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coturn(secret: &str) -> Coturn {
    let dir = tempfile::tempdir().unwrap();
    let port = cloudphone_testkit::free_port();
    let child = std::process::Command::new("turnserver")
        .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint"])
        .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
        .args(["--listening-port", &port.to_string()])
        .args(["--min-port", "49160", "--max-port", "49200"])
        .args(["--use-auth-secret", "--static-auth-secret", secret])
        .args(["--realm", "cloudphone.test", "--allow-loopback-peers"])
        .arg("--pidfile")
        .arg(dir.path().join("turnserver.pid"))
        .arg("--log-file")
        .arg(dir.path().join("turn.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnserver (coturn) is installed");
    Coturn {
        child,
        port,
        _dir: dir,
    }
}

/// The expiry (Unix seconds) in the username of a `turn:<expiry>:<device>:<cred>@host` string.
fn turn_expiry(server: &str) -> i64 {
    let rest = server.strip_prefix("turn:").expect("a turn: server");
    rest.split(':').next().unwrap().parse().unwrap()
}

/// A TURN credential is a relay right: it must not outlive the device token it came with, even
/// when the configured TTL (24 h by default) is longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_expire_no_later_than_the_device_token() {
    let mut node = Node::start("synthetic", |c| {
        c.webrtc.turn_urls = vec!["turn:127.0.0.1:3478?transport=udp".into()];
        c.webrtc.turn_secret = "turn-test-secret".into();
        c.webrtc.turn_ttl_secs = 86_400;
    })
    .await;
    node.create_instance("e1", 360, 640).await;
    let before = cloudphone_node::unix_ms();
    let session = node
        .start_session("e1", "dev-e", "token-e", Duration::from_secs(60))
        .await;
    let after = cloudphone_node::unix_ms();
    let expiry_ms = turn_expiry(&session.ice_servers[0]) * 1000;
    assert!(
        expiry_ms <= after + 60_000,
        "TURN credential outlives its device token: {:?}",
        session.ice_servers
    );
    assert!(expiry_ms > before + 58_000, "{:?}", session.ice_servers);

    // A token outliving the TTL leaves the TTL in charge.
    let session = node
        .start_session("e1", "dev-f", "token-f", Duration::from_secs(3 * 86_400))
        .await;
    let expiry_ms = turn_expiry(&session.ice_servers[0]) * 1000;
    assert!(expiry_ms <= cloudphone_node::unix_ms() + 86_400_000);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_through_coturn_with_rest_credentials() {
    let secret = "turn-test-secret";
    let turn = coturn(secret);
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
    let url = turn_url.clone();
    let mut node = Node::start("synthetic", move |c| {
        c.webrtc.turn_urls = vec![url];
        c.webrtc.turn_secret = secret.into();
        c.webrtc.turn_ttl_secs = 600;
    })
    .await;
    node.create_instance("r1", 360, 640).await;
    let session = node.open_session("r1", "dev-r", "token-r").await;
    // StartSession's string form carries the credentials.
    assert_eq!(session.ice_servers.len(), 1);
    assert!(
        session.ice_servers[0].starts_with("turn:")
            && session.ice_servers[0].contains(":dev-r:")
            && session.ice_servers[0].ends_with(&format!("@127.0.0.1:{}?transport=udp", turn.port)),
        "{:?}",
        session.ice_servers
    );

    let mut viewer = node.relay_viewer("dev-r", "token-r").await.unwrap();
    let NodeMessage::Ready { ice_servers, .. } = &viewer.ready else {
        unreachable!()
    };
    assert_eq!(ice_servers[0].urls, vec![turn_url]);
    let started = std::time::Instant::now();
    viewer.wait_frames(30, Duration::from_secs(20)).await;
    assert!(!viewer.local_candidates.is_empty());
    assert!(
        viewer
            .local_candidates
            .iter()
            .all(|c| c.contains("typ relay")),
        "{:?}",
        viewer.local_candidates
    );
    eprintln!(
        "relay-only via coturn: 30 frames {:?} after the answer; candidates {:?}",
        started.elapsed(),
        viewer.local_candidates
    );
    drop(viewer);

    // A wrong secret gives credentials coturn refuses: no relay candidate, no media.
    node.shutdown().await;
    let mut node = Node::start("synthetic", {
        let url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
        move |c| {
            c.webrtc.turn_urls = vec![url];
            c.webrtc.turn_secret = "not-the-secret".into();
        }
    })
    .await;
    node.create_instance("r2", 360, 640).await;
    node.open_session("r2", "dev-x", "token-x").await;
    let mut refused = node.relay_viewer("dev-x", "token-x").await.unwrap();
    assert!(refused.pump_for(Duration::from_secs(5)).await.is_none());
    assert!(
        refused.local_candidates.is_empty(),
        "{:?}",
        refused.local_candidates
    );
    assert_eq!(
        refused
            .counters
            .frames
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(refused);
    node.shutdown().await;
}
